//! The runtime snapshot: a config with the balancers, pools and TLS server configs built beside
//! it, swapped whole; and what every listener and the admin API share.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::uri::{Authority, Scheme};
use hyper_rustls::{FixedServerNameResolver, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::server::ServerConfig;

use crate::config::{Cluster, Config, Listener};
use crate::http::rate_limit::{Counters, Limiter};
use crate::identity::Identity;
use crate::run_apps::RunApps;
use crate::stats::{ClusterGauges, ClusterStats, Stats};
use crate::trace::Tracing;
use crate::upstream::balance::Balancer;
use crate::upstream::breaker::Breaker;
use crate::upstream::pool::{Connector, Endpoint, Pool};

/// A config with what the data path builds beside it: balancers, connection pools and the
/// TLS server configs of filter chains.
pub struct Runtime {
    pub config: Arc<Config>,
    /// Keys come from config, not from requests, so a fast hasher is safe.
    pub(crate) upstreams: HashMap<Arc<str>, Arc<Upstream>, foldhash::fast::RandomState>,
    /// By (listener, chain index).
    pub(crate) chain_tls: HashMap<(Arc<str>, usize), Arc<ServerConfig>>,
    /// Listener names by each of their addresses, for original-destination hand-offs.
    by_address: HashMap<SocketAddr, Arc<str>, foldhash::fast::RandomState>,
    /// The local rate limit filters' buckets, by (listener, chain index).
    limiters: HashMap<(Arc<str>, usize), Arc<Limiter>>,
}

/// A cluster's balancer, connection pools, circuit breakers and stats.
pub struct Upstream {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) balancer: Arc<Balancer>,
    /// Why there is no pool: TLS settings that cannot be put in force.
    pub(crate) pool: Result<Arc<Pool>, Arc<str>>,
    pub(crate) breaker: Arc<Breaker>,
    pub(crate) stats: Arc<ClusterStats>,
    /// Each endpoint's connections (`https` when its transport is TLS), by the balancer's
    /// endpoint index; `None` for an endpoint that makes no valid authority, or when there is
    /// no pool.
    pub(crate) endpoints: Box<[Option<Arc<Endpoint>>]>,
    /// TLS for TCP connections to the cluster's TLS endpoints (the same settings as the pool's).
    pub(crate) tls: Option<TlsClient>,
    /// An original-destination cluster's pools, by destination, made as requests need them.
    original: Mutex<HashMap<SocketAddr, Arc<Endpoint>>>,
}

/// A rustls client config and the SNI to send, for TCP connections.
#[derive(Clone)]
pub(crate) struct TlsClient {
    pub config: Arc<rustls::ClientConfig>,
    pub sni: Option<rustls_pki_types::ServerName<'static>>,
}

/// Original-destination pools kept before unused ones are dropped.
const ORIGINAL_DST_POOLS: usize = 256;

impl Upstream {
    pub(crate) fn endpoint(&self, index: usize) -> Option<&Arc<Endpoint>> {
        self.endpoints.get(index)?.as_ref()
    }

    /// The pool for `destination` of an original-destination cluster (plaintext). Pools no
    /// request holds are dropped once there are many, so passthrough traffic to ever new
    /// addresses does not grow without bound (Envoy's original-dst host cleanup).
    pub(crate) fn original_dst_endpoint(&self, destination: SocketAddr) -> Option<Arc<Endpoint>> {
        let pool = self.pool.as_ref().ok()?;
        let mut original = self.original.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = original.get(&destination) {
            return Some(e.clone());
        }
        if original.len() >= ORIGINAL_DST_POOLS {
            original.retain(|_, e| Arc::strong_count(e) > 1);
        }
        let authority = Authority::try_from(destination.to_string()).ok()?;
        let endpoint = pool.endpoint(Scheme::HTTP, authority);
        original.insert(destination, endpoint.clone());
        Some(endpoint)
    }
}

/// The endpoints' pools of `cluster`, keeping those of `old` (same pool, same origin) with
/// their open connections.
fn endpoints(
    cluster: &Cluster,
    pool: &Result<Arc<Pool>, Arc<str>>,
    old: Option<&Upstream>,
) -> Box<[Option<Arc<Endpoint>>]> {
    let Ok(pool) = pool else {
        return cluster.endpoints.iter().map(|_| None).collect();
    };
    let kept: HashMap<(Scheme, Authority), &Arc<Endpoint>> = old
        .filter(|o| o.pool.as_ref().is_ok_and(|p| Arc::ptr_eq(p, pool)))
        .map(|o| {
            o.endpoints
                .iter()
                .flatten()
                .filter_map(|e| Some(((e.scheme()?.clone(), e.authority()?.clone()), e)))
                .collect()
        })
        .unwrap_or_default();
    cluster
        .endpoints
        .iter()
        .map(|e| {
            let scheme = match cluster.transport_for(e) {
                Some(_) => Scheme::HTTPS,
                None => Scheme::HTTP,
            };
            let authority = Authority::try_from(format!("{}:{}", e.host, e.port)).ok()?;
            Some(match kept.get(&(scheme.clone(), authority.clone())) {
                Some(endpoint) => Arc::clone(endpoint),
                None => pool.endpoint(scheme, authority),
            })
        })
        .collect()
}

impl Runtime {
    /// Builds a runtime for `config`, keeping pools and counters of unchanged clusters.
    pub fn build(
        config: Arc<Config>,
        previous: Option<&Runtime>,
        identity: Option<&Arc<Identity>>,
    ) -> Runtime {
        let upstreams = config
            .clusters
            .iter()
            .map(|(name, cluster)| {
                let old = previous.and_then(|p| p.upstreams.get(name));
                let stats = old.map(|u| u.stats.clone()).unwrap_or_default();
                let upstream = match old {
                    Some(u) if u.cluster == *cluster => u.clone(),
                    _ => {
                        let pool = match old {
                            Some(u)
                                if u.cluster.connect_timeout == cluster.connect_timeout
                                    && u.cluster.http2 == cluster.http2
                                    && u.cluster.idle_timeout == cluster.idle_timeout
                                    && u.cluster.tls_settings() == cluster.tls_settings()
                                    && u.cluster.max_requests_per_connection
                                        == cluster.max_requests_per_connection
                                    && u.cluster.upstream_bind == cluster.upstream_bind =>
                            {
                                (u.pool.clone(), u.tls.clone())
                            }
                            _ => pool(cluster, identity, &stats),
                        };
                        let (pool, tls) = pool;
                        Arc::new(Upstream {
                            cluster: cluster.clone(),
                            balancer: match old {
                                Some(u) if u.balancer.fits(cluster) => u.balancer.clone(),
                                _ => Arc::new(Balancer::new(cluster)),
                            },
                            endpoints: endpoints(cluster, &pool, old.map(|u| &**u)),
                            pool,
                            tls,
                            original: Mutex::default(),
                            breaker: match old {
                                Some(u) if u.breaker.fits(cluster) => u.breaker.clone(),
                                _ => Arc::new(Breaker::new(cluster)),
                            },
                            stats,
                        })
                    }
                };
                (name.clone(), upstream)
            })
            .collect();
        let mut chain_tls = HashMap::new();
        for (name, l) in &config.listeners {
            for (i, chain) in l.chains.iter().enumerate() {
                let Some(tls) = &chain.tls else { continue };
                match crate::tls::server_config(tls, identity) {
                    Ok(server) => {
                        chain_tls.insert((name.clone(), i), server);
                    }
                    Err(error) => {
                        tracing::error!(listener = %name, chain = i, %error, "TLS for this filter chain is not available; its connections are refused");
                    }
                }
            }
        }
        let limiters = limiters(&config, previous);
        let by_address = config
            .listeners
            .iter()
            .flat_map(|(name, l)| l.addresses.iter().map(move |a| (*a, name.clone())))
            .collect();
        Runtime {
            config,
            upstreams,
            chain_tls,
            by_address,
            limiters,
        }
    }

    /// The local rate limit state of a filter chain that has the filter.
    pub(crate) fn limiter(&self, listener: &Arc<str>, chain: usize) -> Option<&Arc<Limiter>> {
        self.limiters.get(&(listener.clone(), chain))
    }

    /// The local rate limit counters by stat prefix.
    pub fn rate_limit_counters(&self) -> BTreeMap<Arc<str>, Arc<Counters>> {
        self.limiters
            .values()
            .map(|l| (l.config.stat_prefix.clone(), l.counters.clone()))
            .collect()
    }

    /// The listener a connection to `destination` is handed to by a listener that uses
    /// original destinations, as Envoy finds it: one on exactly that address, else one on the
    /// unspecified address of the same family and port.
    pub fn listener_for(&self, destination: SocketAddr) -> Option<(&Arc<str>, &Listener)> {
        let wildcard = match destination {
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], destination.port())),
            SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], destination.port())),
        };
        let name = self
            .by_address
            .get(&destination)
            .or_else(|| self.by_address.get(&wildcard))?;
        Some((name, self.config.listeners.get(name)?))
    }

    /// Each cluster's stats, with what its breaker and balancer hold now.
    pub fn cluster_stats(&self) -> Vec<(Arc<str>, Arc<ClusterStats>, ClusterGauges)> {
        let mut out: Vec<_> = self
            .upstreams
            .iter()
            .map(|(name, u)| {
                let gauges = ClusterGauges {
                    pending_requests: u.breaker.pending_requests(),
                    active_requests: u.breaker.active_requests(),
                    ejected_endpoints: u.balancer.ejected(),
                };
                (name.clone(), u.stats.clone(), gauges)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Envoy's default idle timeout for upstream connections.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A cluster's connection pool (its connections counted in `stats`), and the TLS client its
/// TCP connections use.
type PoolAndTls = (Result<Arc<Pool>, Arc<str>>, Option<TlsClient>);

fn pool(
    cluster: &Cluster,
    identity: Option<&Arc<Identity>>,
    stats: &Arc<ClusterStats>,
) -> PoolAndTls {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cluster.connect_timeout));
    connector.set_nodelay(true);
    if let Some(bind) = &cluster.upstream_bind {
        connector.set_local_addresses(
            bind.v4.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            bind.v6.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED),
        );
    }
    let pool = |connector| {
        Ok(Arc::new(Pool::new(
            connector,
            cluster.http2,
            cluster.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
            cluster.max_requests_per_connection,
            stats.clone(),
        )))
    };
    let settings = cluster.tls_settings();
    let [tls] = settings.as_slice() else {
        // Conversion allows at most one TLS setting per cluster.
        return match settings.len() {
            0 => (pool(Connector::Plain(connector)), None),
            n => (Err(format!("{n} different TLS settings").into()), None),
        };
    };
    let failed = |e: String| -> PoolAndTls {
        tracing::error!(cluster = %cluster.name, error = %e, "TLS to this cluster is not available");
        (Err(e.into()), None)
    };
    let config = match crate::tls::client_config(tls, identity) {
        Ok(c) => c,
        Err(e) => return failed(e.to_string()),
    };
    let sni = match &tls.sni {
        Some(sni) => match rustls_pki_types::ServerName::try_from(sni.to_string()) {
            Ok(name) => Some(name),
            Err(e) => return failed(format!("SNI {sni:?}: {e}")),
        },
        None => None,
    };
    let tcp = TlsClient {
        config: Arc::new(config.clone()),
        sni: sni.clone(),
    };
    connector.enforce_http(false);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let https = match sni {
        Some(name) => https.with_server_name_resolver(FixedServerNameResolver::new(name)),
        None => https,
    };
    let connector = if cluster.http2 {
        https.enable_http2().wrap_connector(connector)
    } else {
        https.enable_http1().wrap_connector(connector)
    };
    (pool(Connector::Tls(connector)), Some(tcp))
}

/// What every listener and the admin API share.
#[derive(Default)]
pub struct Shared {
    pub runtime: ArcSwapOption<Runtime>,
    pub stats: Arc<Stats>,
    /// Set once the first complete config is in force with its listeners bound.
    pub ready: AtomicBool,
    /// Span export, when an OTLP endpoint is configured.
    pub tracing: Option<Tracing>,
    /// This proxy's workload identity, when it has one (mTLS).
    pub identity: Option<Arc<Identity>>,
    /// Notified by the admin `POST /quitquitquit`: drain and exit (the app has finished).
    pub quit: tokio::sync::Notify,
    /// The containers under `run-app` whose ends `/quitquitquit?container=` counts.
    pub run_apps: Arc<RunApps>,
    /// Connections a listener holds at most (per bound address); more are closed at accept.
    /// `None`: no limit.
    pub max_connections_per_listener: Option<usize>,
}

impl Shared {
    pub fn new(identity: Option<Arc<Identity>>) -> Shared {
        Shared {
            identity,
            ..Shared::default()
        }
    }

    /// A complete config is in force and, if the proxy has an identity, its certificate too.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && self.identity.as_ref().is_none_or(|i| i.current().is_some())
    }
}

/// A limiter per filter chain with the local rate limit filter: the previous runtime's where
/// the chain's filter config is unchanged (its buckets go on), else new buckets. Chains with
/// one stat prefix share their counters, as Envoy's stats of one name are one counter, and
/// keep them across updates.
fn limiters(
    config: &Config,
    previous: Option<&Runtime>,
) -> HashMap<(Arc<str>, usize), Arc<Limiter>> {
    let mut counters: HashMap<Arc<str>, Arc<Counters>> = previous
        .map(|p| {
            p.limiters
                .values()
                .map(|l| (l.config.stat_prefix.clone(), l.counters.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut out = HashMap::new();
    for (name, l) in &config.listeners {
        for (i, chain) in l.chains.iter().enumerate() {
            let Some(rl) = chain.http().and_then(|h| h.rate_limit.as_ref()) else {
                continue;
            };
            let key = (name.clone(), i);
            let limiter = match previous.and_then(|p| p.limiters.get(&key)) {
                Some(old) if *old.config == **rl => old.clone(),
                _ => {
                    let shared = counters.entry(rl.stat_prefix.clone()).or_default().clone();
                    Arc::new(Limiter::new(rl.clone(), shared))
                }
            };
            out.insert(key, limiter);
        }
    }
    out
}
