//! The data path: a hyper server per listener; route, balance, retry and forward, bodies streamed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::service::service_fn;
use hyper_rustls::{FixedServerNameResolver, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::server::{Acceptor, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::LazyConfigAcceptor;

use crate::balance::{Balancer, Outcome, Pick};
use crate::breaker::{Breaker, ConnectionSlot, RequestSlot};
use crate::config::{
    Action, Cluster, ClusterChoice, Config, Forward, HeaderChanges, Redirect, RetryPolicy, Route,
};
use crate::identity::Identity;
use crate::pool::{Connector, Endpoint, Lease, Pool, SendError};
use crate::routing::{self, RequestView};
use crate::stats::{ClusterGauges, ClusterStats, RequestKey, Stats};
use crate::tls::PeerTls;
use crate::trace::{ServerSpan, Tracing};

/// Errors of streamed bodies: the peer's, or the route timeout cutting a response short.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// How long a TLS client may take to say hello and finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake (the client hello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How long a removed listener or a draining proxy waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Headers that describe one hop and are never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// A config with what the data path builds beside it: balancers, connection pools and the
/// TLS server configs of filter chains.
pub struct Runtime {
    pub config: Arc<Config>,
    /// Keys come from config, not from requests, so a fast hasher is safe.
    upstreams: HashMap<Arc<str>, Arc<Upstream>, foldhash::fast::RandomState>,
    /// By (listener, chain index).
    chain_tls: HashMap<(Arc<str>, usize), Arc<ServerConfig>>,
}

/// A cluster's balancer, connection pools, circuit breakers and stats.
pub struct Upstream {
    cluster: Arc<Cluster>,
    balancer: Arc<Balancer>,
    /// Why there is no pool: TLS settings that cannot be put in force.
    pool: Result<Arc<Pool>, Arc<str>>,
    breaker: Arc<Breaker>,
    stats: Arc<ClusterStats>,
    /// Each endpoint's connections (`https` when its transport is TLS), by the balancer's
    /// endpoint index; `None` for an endpoint that makes no valid authority, or when there is
    /// no pool.
    endpoints: Box<[Option<Arc<Endpoint>>]>,
}

impl Upstream {
    fn endpoint(&self, index: usize) -> Option<&Arc<Endpoint>> {
        self.endpoints.get(index)?.as_ref()
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
                                        == cluster.max_requests_per_connection =>
                            {
                                u.pool.clone()
                            }
                            _ => pool(cluster, identity, &stats),
                        };
                        Arc::new(Upstream {
                            cluster: cluster.clone(),
                            balancer: match old {
                                Some(u) if u.balancer.fits(cluster) => u.balancer.clone(),
                                _ => Arc::new(Balancer::new(cluster)),
                            },
                            endpoints: endpoints(cluster, &pool, old.map(|u| &**u)),
                            pool,
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
        Runtime {
            config,
            upstreams,
            chain_tls,
        }
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

/// A cluster's connection pool; its connections are counted in `stats`.
fn pool(
    cluster: &Cluster,
    identity: Option<&Arc<Identity>>,
    stats: &Arc<ClusterStats>,
) -> Result<Arc<Pool>, Arc<str>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cluster.connect_timeout));
    connector.set_nodelay(true);
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
            0 => pool(Connector::Plain(connector)),
            n => Err(format!("{n} different TLS settings").into()),
        };
    };
    let failed = |e: String| -> Arc<str> {
        tracing::error!(cluster = %cluster.name, error = %e, "TLS to this cluster is not available");
        e.into()
    };
    let config = crate::tls::client_config(tls, identity).map_err(|e| failed(e.to_string()))?;
    connector.enforce_http(false);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let https = match &tls.sni {
        Some(sni) => {
            let name = rustls_pki_types::ServerName::try_from(sni.to_string())
                .map_err(|e| failed(format!("SNI {sni:?}: {e}")))?;
            https.with_server_name_resolver(FixedServerNameResolver::new(name))
        }
        None => https,
    };
    let connector = if cluster.http2 {
        https.enable_http2().wrap_connector(connector)
    } else {
        https.enable_http1().wrap_connector(connector)
    };
    pool(Connector::Tls(connector))
}

/// What every listener and the admin API share.
#[derive(Default)]
pub struct Shared {
    pub runtime: ArcSwapOption<Runtime>,
    pub stats: Arc<Stats>,
    /// Set once the first complete config is in force with its listeners bound.
    pub ready: AtomicBool,
    /// Listener sockets bound by the xDS client before it ACKed them.
    pub sockets: Arc<crate::sockets::Sockets>,
    /// Span export, when an OTLP endpoint is configured.
    pub tracing: Option<Tracing>,
    /// This proxy's workload identity, when it has one (mTLS).
    pub identity: Option<Arc<Identity>>,
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

/// What the data path knows of a downstream connection.
#[derive(Debug)]
pub struct Conn {
    pub listener: Arc<str>,
    /// The filter chain it was matched to.
    pub chain: usize,
    pub peer: SocketAddr,
    /// Set on TLS connections.
    pub tls: Option<PeerTls>,
    /// The peer's IP as `x-forwarded-for` names it, made once per connection.
    pub peer_ip: HeaderValue,
}

impl Conn {
    pub fn new(listener: Arc<str>, chain: usize, peer: SocketAddr, tls: Option<PeerTls>) -> Conn {
        let peer_ip = HeaderValue::try_from(peer.ip().to_string())
            .expect("an IP address is a valid header value");
        Conn {
            listener,
            chain,
            peer,
            tls,
            peer_ip,
        }
    }
}

struct ListenerHandle {
    address: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Applies each published config: swaps the runtime, binds new listeners, closes removed ones.
/// Returns when `shutdown` fires, after draining every listener.
pub async fn run(
    shared: Arc<Shared>,
    mut configs: watch::Receiver<Option<Arc<Config>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut listeners: HashMap<Arc<str>, ListenerHandle> = HashMap::new();
    loop {
        let config = configs.borrow_and_update().clone();
        if let Some(config) = config {
            let previous = shared.runtime.load_full();
            let runtime = Runtime::build(
                config.clone(),
                previous.as_deref(),
                shared.identity.as_ref(),
            );
            shared.runtime.store(Some(Arc::new(runtime)));
            reconcile(&shared, &config, &mut listeners).await;
            if listeners.len() == config.listeners.len() {
                shared.ready.store(true, Ordering::Relaxed);
            }
        }
        tokio::select! {
            changed = configs.changed() => if changed.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    tracing::info!(listeners = listeners.len(), "draining");
    for handle in listeners.values() {
        let _ = handle.stop.send(true);
    }
    for (_, handle) in listeners {
        let _ = handle.task.await;
    }
}

async fn reconcile(
    shared: &Arc<Shared>,
    config: &Config,
    listeners: &mut HashMap<Arc<str>, ListenerHandle>,
) {
    listeners.retain(|name, handle| {
        let keep = config
            .listeners
            .get(name)
            .is_some_and(|l| l.address == handle.address);
        if !keep {
            tracing::info!(listener = %name, address = %handle.address, "closing listener");
            let _ = handle.stop.send(true);
            shared.sockets.set_active(handle.address, false);
        }
        keep
    });
    for (name, l) in &config.listeners {
        if listeners.contains_key(name) {
            continue;
        }
        let mut bound =
            shared
                .sockets
                .take(l.address)
                .and_then(|s| match TcpListener::from_std(s) {
                    Ok(s) => Some(s),
                    Err(error) => {
                        tracing::warn!(listener = %name, %error, "cannot use the reserved socket");
                        None
                    }
                });
        // A closing listener may still hold the address for a moment.
        for _ in 0..20 {
            if bound.is_some() {
                break;
            }
            match TcpListener::bind(l.address).await {
                Ok(socket) => {
                    bound = Some(socket);
                    break;
                }
                Err(error) => {
                    tracing::warn!(listener = %name, address = %l.address, %error, "cannot bind listener yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let Some(socket) = bound else {
            tracing::error!(listener = %name, address = %l.address, "giving up binding listener until the next update");
            continue;
        };
        tracing::info!(listener = %name, address = %l.address, "listening");
        shared.sockets.set_active(l.address, true);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(shared.clone(), name.clone(), socket, stop_rx));
        listeners.insert(
            name.clone(),
            ListenerHandle {
                address: l.address,
                stop,
                task,
            },
        );
    }
}

/// Accepts connections until `stop`, then lets open connections finish (up to the drain timeout).
async fn serve(
    shared: Arc<Shared>,
    name: Arc<str>,
    socket: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        tokio::select! {
            accepted = socket.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        tracing::warn!(listener = %name, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection = connection(
                    shared.clone(),
                    name.clone(),
                    stream,
                    peer,
                    builder.clone(),
                    graceful.watcher(),
                );
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(socket);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = %name, "drain timed out; closing remaining connections");
    }
}

/// Matches a connection to a filter chain (TLS or not, SNI), terminates TLS if the chain says
/// so, and serves HTTP on it.
async fn connection(
    shared: Arc<Shared>,
    listener: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) -> Result<(), BoxError> {
    let Some(runtime) = shared.runtime.load_full() else {
        return Ok(());
    };
    let Some(l) = runtime.config.listeners.get(&listener) else {
        return Ok(());
    };
    let tls = if l.inspects() {
        let mut first = [0u8; 1];
        let n = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await??;
        n == 1 && first[0] == TLS_HANDSHAKE_RECORD
    } else {
        l.serves_tls()
    };
    if !tls {
        let Some(chain) = l.select(false, None).filter(|i| l.chains[*i].tls.is_none()) else {
            tracing::debug!(%listener, %peer, "no filter chain takes a plaintext connection; closing it");
            return Ok(());
        };
        let conn = Conn::new(listener, chain, peer, None);
        drop(runtime);
        return serve_http(shared, conn, TokioIo::new(stream), &builder, watcher).await;
    }
    let handshake = async {
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
        let sni = start.client_hello().server_name().map(str::to_string);
        let chain = l.select(true, sni.as_deref());
        let Some((chain, config)) =
            chain.and_then(|i| Some((i, runtime.chain_tls.get(&(listener.clone(), i))?.clone())))
        else {
            tracing::debug!(%listener, %peer, ?sni, "no filter chain takes this TLS connection; closing it");
            return Ok::<_, std::io::Error>(None);
        };
        let local_uri = match l.chains[chain].tls.as_ref().map(|t| &t.certificate) {
            Some(crate::config::CertificateSource::Workload) => shared
                .identity
                .as_ref()
                .and_then(|i| i.current())
                .map(|w| w.spiffe_id.clone()),
            _ => None,
        };
        let stream = start.into_stream(config).await?;
        let peer_tls = PeerTls::of(stream.get_ref().1.peer_certificates(), local_uri);
        Ok(Some((chain, stream, peer_tls)))
    };
    let Some((chain, stream, peer_tls)) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await??
    else {
        return Ok(());
    };
    let conn = Conn::new(listener, chain, peer, Some(peer_tls));
    drop(runtime);
    serve_http(shared, conn, TokioIo::new(stream), &builder, watcher).await
}

async fn serve_http<I>(
    shared: Arc<Shared>,
    conn: Conn,
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) -> Result<(), BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(&shared, &conn, req).await) }
    });
    let connection = builder.serve_connection_with_upgrades(io, service);
    watcher.watch(connection.into_owned()).await
}

fn local(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp
}

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// What routing decided about a request, for stats and its span.
#[derive(Default)]
struct Served {
    virtual_host: Option<Arc<str>>,
    route: Option<Arc<str>>,
    cluster: Option<Arc<str>>,
    stats: Option<Arc<ClusterStats>>,
}

/// The request's authority: from the URI (HTTP/2, absolute form) or the Host header; empty
/// if neither is there as text. A header value, so that it goes upstream without a copy.
fn authority_of<B>(req: &Request<B>) -> HeaderValue {
    let value = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req
            .headers()
            .get(header::HOST)
            .filter(|h| h.to_str().is_ok())
            .cloned(),
    };
    value.unwrap_or_else(|| HeaderValue::from_static(""))
}

/// `authority_of`'s value as text (it is text by construction).
fn text(value: &HeaderValue) -> &str {
    value.to_str().unwrap_or_default()
}

/// One request, start to finish. Loads the runtime once.
pub async fn handle(
    shared: &Shared,
    conn: &Conn,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    static NONE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    let started = Instant::now();
    let mut span = shared.tracing.as_ref().map(|t| {
        // Envoy's default operation name: host and path.
        let name = format!("{}{}", text(&authority_of(&req)), req.uri().path());
        let method = req.method().clone();
        t.start(name, method.as_str(), req.headers_mut())
    });
    let Some(runtime) = shared.runtime.load_full() else {
        return local(StatusCode::SERVICE_UNAVAILABLE, "no configuration");
    };
    let (resp, served) = route_and_forward(&runtime, conn, req).await;
    let status = resp.status().as_u16();
    let name = |n: &Option<Arc<str>>| n.clone().unwrap_or_else(|| NONE.clone());
    shared.stats.request(RequestKey {
        virtual_host: name(&served.virtual_host),
        route: name(&served.route),
        cluster: name(&served.cluster),
        code: status,
    });
    if let Some(span) = &mut span {
        if let Some(route) = &served.route {
            span.routed(route, served.cluster.as_deref());
        }
        span.responded(status);
    }
    if span.is_none() && served.stats.is_none() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let body = Finished {
        inner: body,
        started,
        stats: served.stats,
        _span: span,
    };
    Response::from_parts(parts, body.boxed())
}

async fn route_and_forward(
    runtime: &Runtime,
    conn: &Conn,
    mut req: Request<Incoming>,
) -> (Response<ProxyBody>, Served) {
    let config = &runtime.config;
    let none = Served::default;
    let peer = conn.peer;
    let Some(l) = config.listeners.get(&conn.listener) else {
        return (local(StatusCode::NOT_FOUND, ""), none());
    };
    // The chain the connection was matched to, unless an update changed what it does with TLS:
    // then the connection is closed and the client reconnects to the new chains.
    let Some(http) = l
        .chains
        .get(conn.chain)
        .filter(|c| c.tls.is_some() == conn.tls.is_some())
        .map(|c| &c.http)
    else {
        let mut resp = local(StatusCode::SERVICE_UNAVAILABLE, "listener changed");
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return (resp, none());
    };
    client_cert_details(
        req.headers_mut(),
        http.client_cert_details,
        conn.tls.as_ref(),
    );
    if conn.tls.is_some() {
        req.headers_mut()
            .entry("x-forwarded-proto")
            .or_insert(HeaderValue::from_static("https"));
    }
    let Some(rc) = config.route_config(http) else {
        return (local(StatusCode::NOT_FOUND, ""), none());
    };
    let authority_value = authority_of(&req);
    let authority = text(&authority_value);
    let host = if http.strip_any_host_port {
        routing::strip_port(authority)
    } else {
        authority
    };
    let Some(vh) = routing::virtual_host(rc, host) else {
        return (local(StatusCode::NOT_FOUND, ""), none());
    };
    let mut served = Served {
        virtual_host: Some(vh.name.clone()),
        ..Served::default()
    };
    if !http.rbac.is_empty() {
        let input = crate::rbac::RbacInput {
            method: req.method().as_str(),
            path: req.uri().path(),
            authority,
            headers: req.headers(),
            destination_port: l.address.port(),
            direct_remote_ip: peer.ip(),
            principal: conn.tls.as_ref().and_then(|t| t.principal.as_deref()),
        };
        let decision = crate::rbac::authorize(&http.rbac, &input);
        if !decision.allowed {
            tracing::debug!(policy = ?decision.policy, %peer, "RBAC denied the request");
            return (
                local(StatusCode::FORBIDDEN, crate::rbac::DENIED_BODY),
                served,
            );
        }
    }
    let upgrade = wants_websocket(req.headers());
    if upgrade && !http.websocket {
        return (local(StatusCode::FORBIDDEN, "upgrade failed"), served);
    }
    if vh.require_tls {
        let location = format!(
            "https://{authority}{}",
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        return (
            redirect_response(StatusCode::MOVED_PERMANENTLY, &location),
            served,
        );
    }
    let view = RequestView {
        method: req.method().as_str(),
        authority,
        scheme: "http",
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let Some(route) = routing::route(vh, &view) else {
        return (local(StatusCode::NOT_FOUND, ""), served);
    };
    served.route = Some(route.name.clone());
    if let Some(fault) = &route.fault {
        let hit = |per_million: u32| fastrand::u32(..1_000_000) < per_million;
        if let Some(delay) = &fault.delay
            && hit(delay.per_million)
        {
            tokio::time::sleep(delay.fixed).await;
        }
        if let Some(abort) = &fault.abort
            && hit(abort.per_million)
        {
            let status =
                StatusCode::from_u16(abort.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (local(status, "fault filter abort"), served);
        }
    }
    match &route.action {
        Action::Direct { status, body } => {
            let mut resp = Response::new(full(body.as_deref().unwrap_or("").to_string()));
            *resp.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            apply_response_headers(resp.headers_mut(), &route.headers);
            (resp, served)
        }
        Action::Redirect(rd) => {
            let location = redirect_location(rd, authority, req.uri());
            let status = StatusCode::from_u16(rd.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            let mut resp = redirect_response(status, &location);
            apply_response_headers(resp.headers_mut(), &route.headers);
            (resp, served)
        }
        Action::Forward(fwd) => {
            let (cluster, extra) = choose_cluster(fwd);
            let Some(upstream) = runtime.upstreams.get(&cluster) else {
                // Assembly guarantees every route's clusters exist; keep failing closed anyway.
                served.cluster = Some(cluster);
                return (
                    local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                    served,
                );
            };
            let downstream = Downstream {
                authority: &authority_value,
                peer,
                peer_ip: &conn.peer_ip,
            };
            let resp = forward(
                runtime, upstream, route, fwd, extra, downstream, upgrade, req,
            )
            .await;
            served.stats = Some(upstream.stats.clone());
            served.cluster = Some(cluster);
            (resp, served)
        }
    }
}

const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Envoy's SANITIZE / SANITIZE_SET of `x-forwarded-client-cert`: whatever the client sent is
/// dropped; on mTLS connections the peer's certificate is described (`By`, `Hash`, `URI`,
/// `DNS`).
fn client_cert_details(
    headers: &mut HeaderMap,
    mode: crate::config::ClientCertDetails,
    tls: Option<&PeerTls>,
) {
    // Looking is cheaper than removing a name that is not there (a hash and a probe).
    if headers.keys().any(|k| *k == XFCC) {
        headers.remove(&XFCC);
    }
    let crate::config::ClientCertDetails::SanitizeSet { uri, dns } = mode else {
        return;
    };
    let Some(peer) = tls.filter(|t| t.hash.is_some()) else {
        return;
    };
    let mut parts = Vec::new();
    if let Some(by) = &peer.local_uri {
        parts.push(format!("By={by}"));
    }
    if let Some(hash) = &peer.hash {
        parts.push(format!("Hash={hash}"));
    }
    if uri && let Some(u) = &peer.uri {
        parts.push(format!("URI={u}"));
    }
    if dns {
        parts.extend(peer.dns.iter().map(|d| format!("DNS={d}")));
    }
    if let Ok(v) = HeaderValue::from_str(&parts.join(";")) {
        headers.insert(XFCC, v);
    }
}

fn redirect_response(status: StatusCode, location: &str) -> Response<ProxyBody> {
    let mut resp = local(status, "");
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn redirect_location(rd: &Redirect, authority: &str, uri: &Uri) -> String {
    let scheme = rd.scheme.as_deref().unwrap_or("http");
    let original_host = routing::strip_port(authority);
    let host = rd.host.as_deref().unwrap_or(original_host);
    let port = match (rd.port, rd.host.is_some()) {
        (Some(p), _) => format!(":{p}"),
        // A new host drops the original port; otherwise it stays.
        (None, true) => String::new(),
        (None, false) => authority[original_host.len()..].to_string(),
    };
    let path = match &rd.path {
        Some(p) => p.to_string(),
        None => uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
    };
    format!("{scheme}://{host}{port}{path}")
}

/// The cluster for this request and, for a weighted choice, that entry's header changes.
fn choose_cluster(fwd: &Forward) -> (Arc<str>, Option<&HeaderChanges>) {
    match &fwd.clusters {
        ClusterChoice::Single(name) => (name.clone(), None),
        ClusterChoice::Weighted { clusters, total } => {
            let mut n = fastrand::u32(..*total);
            for c in clusters.iter() {
                if n < c.weight {
                    return (c.name.clone(), Some(&c.headers));
                }
                n -= c.weight;
            }
            // Unreachable: total is the sum of the weights.
            let last = clusters.last().expect("a weighted choice has clusters");
            (last.name.clone(), Some(&last.headers))
        }
    }
}

/// How one attempt ended.
enum Attempt {
    Response(Response<Incoming>, Pick, ConnectionSlot, Lease),
    /// The per-try timeout fired.
    TimedOut,
    ConnectFailed(SendError),
    Reset(SendError),
}

/// Whether `retry` says to try again after `attempt`.
fn retriable(retry: &RetryPolicy, attempt: &Attempt) -> bool {
    let on = &retry.retry_on;
    match attempt {
        Attempt::TimedOut => on.server_error || on.gateway_error,
        Attempt::ConnectFailed(_) => on.server_error || on.gateway_error || on.connect_failure,
        Attempt::Reset(_) => on.server_error || on.gateway_error || on.reset,
        Attempt::Response(resp, ..) => {
            let status = resp.status().as_u16();
            (on.server_error && status >= 500)
                || (on.gateway_error && matches!(status, 502..=504))
                || (on.retriable_4xx && status == 409)
                || (on.retriable_status_codes && retry.retriable_status_codes.contains(&status))
                || grpc_retriable(&on.grpc, resp.headers())
        }
    }
}

fn grpc_retriable(on: &crate::config::GrpcRetryOn, headers: &HeaderMap) -> bool {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
    else {
        return false;
    };
    match code {
        1 => on.cancelled,
        4 => on.deadline_exceeded,
        8 => on.resource_exhausted,
        13 => on.internal,
        14 => on.unavailable,
        _ => false,
    }
}

/// An endpoint for the next attempt: with `other_host`, one not tried yet when there is one.
fn pick_for_attempt(
    balancer: &Arc<Balancer>,
    hash: Option<u64>,
    retry: Option<&RetryPolicy>,
    tried: &[(Arc<str>, u16)],
) -> Option<Pick> {
    let tries = match retry {
        Some(r) if r.other_host && !tried.is_empty() => r.host_selection_attempts.max(1),
        _ => 1,
    };
    let mut pick = balancer.pick(hash)?;
    for _ in 1..tries {
        let e = pick.endpoint();
        if !tried.iter().any(|(h, p)| *h == e.host && *p == e.port) {
            break;
        }
        // Another host: the hash would only find the same one again.
        pick = balancer.pick(None)?;
    }
    Some(pick)
}

fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Envoy's default per-connection buffer limit (1 MiB): a request body up to this size is held
/// for retries and mirrors; a larger one streams once, with neither (Envoy's
/// `retry_or_shadow_abandoned`).
pub const RETRY_BUFFER_LIMIT: usize = 1 << 20;

/// A request body held in memory, sent again for each attempt and mirror.
#[derive(Clone, Debug, Default)]
struct Buffered {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Buffered {
    fn body(&self) -> ProxyBody {
        match &self.trailers {
            None if self.data.is_empty() => empty(),
            None => full(self.data.clone()),
            Some(trailers) => {
                let frames = [
                    Ok(Frame::data(self.data.clone())),
                    Ok(Frame::trailers(trailers.clone())),
                ];
                http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed()
            }
        }
    }
}

/// The request body as the attempts see it.
enum RequestBody {
    /// Empty, or buffered whole: every attempt and mirror gets a copy.
    Replay(Buffered),
    /// Streamed: one attempt only.
    Once(Option<ProxyBody>),
}

impl RequestBody {
    /// Reads `body` into memory if it ends within `limit` bytes; otherwise what was read, then
    /// the rest, streamed once.
    async fn buffer(mut body: Incoming, limit: usize) -> Result<RequestBody, hyper::Error> {
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut size = 0;
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = match frame?.into_data() {
                Ok(data) => {
                    size += data.len();
                    chunks.push(data);
                    if size > limit {
                        let read = chunks.into_iter().map(|c| Ok(Frame::data(c)));
                        let rest = http_body_util::BodyStream::new(body.map_err(BoxError::from));
                        let stream = futures::StreamExt::chain(futures::stream::iter(read), rest);
                        let once = http_body_util::StreamBody::new(stream).boxed();
                        return Ok(RequestBody::Once(Some(once)));
                    }
                    continue;
                }
                Err(frame) => frame,
            };
            if let Ok(t) = frame.into_trailers() {
                trailers = Some(t);
            }
        }
        let data = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => chunks.concat().into(),
        };
        Ok(RequestBody::Replay(Buffered { data, trailers }))
    }

    /// The body for the next attempt.
    fn take(&mut self) -> ProxyBody {
        match self {
            RequestBody::Replay(b) => b.body(),
            RequestBody::Once(b) => b.take().unwrap_or_else(empty),
        }
    }
}

/// Envoy's answer when a circuit breaker turns a request away.
fn overflow() -> Response<ProxyBody> {
    let mut resp = local(StatusCode::SERVICE_UNAVAILABLE, "upstream overflow");
    resp.headers_mut()
        .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    resp
}

/// Who sent a request, and for which authority, as `forward` passes it on.
struct Downstream<'a> {
    /// As `authority_of` found it.
    authority: &'a HeaderValue,
    peer: SocketAddr,
    peer_ip: &'a HeaderValue,
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    runtime: &Runtime,
    upstream: &Upstream,
    route: &Route,
    fwd: &Forward,
    extra: Option<&HeaderChanges>,
    downstream: Downstream<'_>,
    upgrade: bool,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Downstream {
        authority,
        peer,
        peer_ip,
    } = downstream;
    let cluster = &upstream.cluster.name;
    let stats = &upstream.stats;
    let Ok(request_slot) = upstream.breaker.request(stats) else {
        return overflow();
    };
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let hash = request_hash(&fwd.hash_policy, &parts.headers, parts.uri.query(), peer);
    let copies_wanted = !upgrade && (fwd.retry.is_some() || !fwd.mirrors.is_empty());
    let mut body = if body.is_end_stream() {
        RequestBody::Replay(Buffered::default())
    } else if copies_wanted {
        match RequestBody::buffer(body, RETRY_BUFFER_LIMIT).await {
            Ok(body) => body,
            Err(error) => {
                tracing::debug!(%error, "reading the request body failed");
                return local(StatusCode::BAD_REQUEST, "");
            }
        }
    } else {
        RequestBody::Once(Some(body.map_err(BoxError::from).boxed()))
    };
    // As Envoy's, the route timeout starts once the request has been read (here: buffered).
    let deadline = fwd.timeout.map(|t| tokio::time::Instant::now() + t);
    let replayable = matches!(body, RequestBody::Replay(_));
    let retry = fwd.retry.as_ref().filter(|_| replayable && !upgrade);
    let Some(path_and_query) = rewrite_path(route, fwd, &parts.uri) else {
        tracing::warn!("cannot build upstream uri: invalid path");
        return local(StatusCode::BAD_REQUEST, "");
    };
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let host = fwd.host_rewrite.as_deref().unwrap_or(text(authority));
    let host_value = match fwd.host_rewrite.as_deref() {
        Some(rewrite) => HeaderValue::from_str(rewrite).ok(),
        None => Some(authority.clone()),
    };
    if let Some(v) = host_value {
        headers.insert(header::HOST, v);
    }
    append_forwarded_for(headers, peer_ip);
    headers
        .entry("x-forwarded-proto")
        .or_insert(HeaderValue::from_static("http"));
    apply_request_headers(headers, &route.headers);
    if let Some(extra) = extra {
        apply_request_headers(headers, extra);
    }
    if let Some(timeout) = fwd.timeout
        && let Ok(v) = HeaderValue::from_str(&timeout.as_millis().to_string())
    {
        headers.insert("x-envoy-expected-rq-timeout-ms", v);
    }
    if let RequestBody::Replay(buffered) = &body {
        for m in fwd.mirrors.iter() {
            if fastrand::u32(..1_000_000) < m.per_million
                && let Some(target) = runtime.upstreams.get(&m.cluster)
            {
                mirror(
                    target.clone(),
                    &parts,
                    path_and_query.clone(),
                    host,
                    fwd.timeout,
                    buffered,
                );
            }
        }
    }
    let attempts = 1 + retry.map_or(0, |r| r.num_retries);
    let mut tried: Vec<(Arc<str>, u16)> = Vec::new();
    let mut outcome = None;
    // The retry in progress, counted against max_retries until its attempt has ended.
    let mut retrying = None;
    for n in 0..attempts {
        let Some(pick) = pick_for_attempt(&upstream.balancer, hash, retry, &tried) else {
            return local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
        };
        // A pending request waits for a connection at most until the route timeout.
        let connection = match deadline {
            Some(at) => tokio::time::timeout_at(at, upstream.breaker.connection(stats)).await,
            None => Ok(upstream.breaker.connection(stats).await),
        };
        let connection = match connection {
            Err(_) => return local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
            Ok(Err(_)) => return overflow(),
            Ok(Ok(slot)) => slot,
        };
        let endpoint = pick.endpoint();
        if retry.is_some_and(|r| r.other_host) {
            tried.push((endpoint.host.clone(), endpoint.port));
        }
        if let Err(reason) = &upstream.pool {
            tracing::debug!(cluster = %cluster, %reason, "no connection pool");
            return local(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream TLS is not available",
            );
        }
        let Some(connections) = upstream.endpoint(pick.index()) else {
            tracing::warn!(host = %endpoint.host, port = endpoint.port, "cannot build upstream uri");
            return local(StatusCode::BAD_REQUEST, "");
        };
        let mut attempt_req = Request::new(body.take());
        *attempt_req.method_mut() = parts.method.clone();
        *attempt_req.uri_mut() = connections.uri(path_and_query.clone());
        // The last attempt takes the headers; earlier ones copy them.
        *attempt_req.headers_mut() = if n + 1 < attempts {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        *attempt_req.version_mut() = if upstream.cluster.http2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        let call = connections.send(attempt_req);
        let now = tokio::time::Instant::now();
        let per_try = retry.and_then(|r| r.per_try_timeout).map(|t| now + t);
        let limit = match (per_try, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let result = match limit {
            Some(at) => tokio::time::timeout_at(at, call).await,
            None => Ok(call.await),
        };
        let ejected = pick.report(match &result {
            Ok(Ok((resp, _))) => Outcome::Status(resp.status().as_u16()),
            _ => Outcome::LocalFailure,
        });
        if ejected {
            stats.ejections.fetch_add(1, Ordering::Relaxed);
        }
        let attempt = match result {
            Err(_) if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) => {
                return local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
            }
            Err(_) => Attempt::TimedOut,
            Ok(Ok((resp, lease))) => Attempt::Response(resp, pick, connection, lease),
            Ok(Err(error @ SendError::Connect(_))) => Attempt::ConnectFailed(error),
            Ok(Err(error)) => Attempt::Reset(error),
        };
        retrying = None;
        let again = n + 1 < attempts && retry.is_some_and(|r| retriable(r, &attempt));
        if !again {
            outcome = Some(attempt);
            break;
        }
        let Some(slot) = upstream.breaker.retry(stats) else {
            tracing::debug!(cluster = %cluster, "max_retries reached: not retrying");
            outcome = Some(attempt);
            break;
        };
        retrying = Some(slot);
        stats.retries.fetch_add(1, Ordering::Relaxed);
        // The failed attempt's connection is free for others during the back-off.
        drop(attempt);
        tracing::debug!(cluster = %cluster, attempt = n + 1, "retrying");
        // Envoy's default back-off: 25ms base, jittered, doubling.
        let backoff = Duration::from_millis(25 * (1 << n.min(3))).mul_f64(fastrand::f64());
        if deadline.is_some_and(|d| tokio::time::Instant::now() + backoff >= d) {
            return local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
        }
        tokio::time::sleep(backoff).await;
    }
    drop(retrying);
    let (mut resp, pick, connection, lease) = match outcome {
        Some(Attempt::Response(resp, pick, connection, lease)) => (resp, pick, connection, lease),
        Some(Attempt::TimedOut) => {
            return local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
        }
        Some(Attempt::ConnectFailed(error) | Attempt::Reset(error)) => {
            tracing::debug!(cluster = %cluster, %error, "upstream request failed");
            return local(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers",
            );
        }
        None => return local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
    };
    if let Some(downstream) = downstream_upgrade
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let upstream_io = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream_io) else {
                tracing::debug!("websocket upgrade did not complete");
                return;
            };
            let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
            if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                tracing::debug!(%error, "websocket tunnel ended with an error");
            }
            // In flight until the tunnel closes; the connection is the tunnel's now.
            drop((pick, request_slot, connection, lease));
        });
        let (mut parts, _) = resp.into_parts();
        apply_response_headers(&mut parts.headers, &route.headers);
        return Response::from_parts(parts, empty());
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    apply_response_headers(&mut parts.headers, &route.headers);
    if let Some(extra) = extra {
        apply_response_headers(&mut parts.headers, extra);
    }
    // The route timeout covers the whole response, as Envoy's does.
    let body = Guarded {
        inner: body,
        deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        lease: Some(lease),
        _held: (pick, request_slot, connection),
    };
    Response::from_parts(parts, body.boxed())
}

/// Sends a copy of a request (its body buffered) to `target`, with `-shadow` added to the host
/// (as Envoy does), and ignores the answer. The copy is subject to the target's breakers.
fn mirror(
    target: Arc<Upstream>,
    parts: &http::request::Parts,
    path_and_query: PathAndQuery,
    host: &str,
    timeout: Option<Duration>,
    body: &Buffered,
) {
    let Some(pick) = target.balancer.pick(None) else {
        return;
    };
    let shadow = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => format!("{h}-shadow:{port}"),
        _ => format!("{host}-shadow"),
    };
    let Some(endpoint) = target.endpoint(pick.index()).cloned() else {
        return;
    };
    let mut req = Request::new(body.body());
    if target.cluster.http2 {
        *req.version_mut() = http::Version::HTTP_2;
    }
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = endpoint.uri(path_and_query);
    *req.headers_mut() = parts.headers.clone();
    if let Ok(v) = HeaderValue::from_str(&shadow) {
        req.headers_mut().insert(header::HOST, v);
    }
    let limit = timeout.unwrap_or(Duration::from_secs(15));
    tokio::spawn(async move {
        let Ok(_request) = target.breaker.request(&target.stats) else {
            return;
        };
        let result = tokio::time::timeout(limit, async {
            let Ok(_connection) = target.breaker.connection(&target.stats).await else {
                return Ok(());
            };
            let (resp, lease) = endpoint.send(req).await?;
            // Read the answer so the connection can be reused.
            if resp.into_body().collect().await.is_ok() {
                lease.release();
            }
            Ok::<_, SendError>(())
        })
        .await;
        if let Ok(Err(error)) = result {
            tracing::debug!(cluster = %target.cluster.name, %error, "mirrored request failed");
        }
        drop(pick);
    });
}

/// The request's hash for consistent-hash clusters: each policy that finds its key adds to it.
fn request_hash(
    policies: &[crate::config::HashPolicy],
    headers: &HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
) -> Option<u64> {
    use crate::config::HashKey;
    let mut hash: Option<u64> = None;
    for p in policies {
        let value: Option<String> = match &p.key {
            HashKey::Header(name) => {
                let values: Vec<&str> = headers
                    .get_all(&**name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                (!values.is_empty()).then(|| values.join(","))
            }
            HashKey::Cookie(name) => headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == &**name).then(|| v.to_string())
                }),
            HashKey::SourceIp => Some(peer.ip().to_string()),
            HashKey::QueryParameter(name) => query.and_then(|q| {
                q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == &**name).then(|| v.to_string())
                })
            }),
        };
        if let Some(v) = value {
            let h = crate::balance::hash_of(v.as_str());
            hash = Some(hash.map_or(h, |acc| acc.rotate_left(1) ^ h));
            if p.terminal {
                break;
            }
        }
    }
    hash
}

/// An HTTP/1.1 WebSocket upgrade request.
fn wants_websocket(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The path to send upstream: the route's prefix rewrite applied to the matched part; `None`
/// if that makes no valid path.
fn rewrite_path(route: &Route, fwd: &Forward, uri: &Uri) -> Option<PathAndQuery> {
    let path = uri.path();
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let rewritten = if let Some(rw) = &fwd.regex_rewrite {
        let path = rw.pattern.regex.replace_all(path, &*rw.substitution);
        format!("{path}{query}")
    } else if let Some(rewrite) = &fwd.prefix_rewrite {
        let matched = match &route.matcher.path {
            crate::config::PathMatch::Prefix(p) => p.len(),
            crate::config::PathMatch::Exact(p) => p.len(),
            crate::config::PathMatch::Regex(_) => 0,
        };
        let rest = path.get(matched.min(path.len())..).unwrap_or("");
        format!("{rewrite}{rest}{query}")
    } else if let Some(pq) = uri.path_and_query() {
        // Unchanged: as sent.
        return Some(pq.clone());
    } else {
        format!("{path}{query}")
    };
    PathAndQuery::try_from(rewritten).ok()
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // `upgrade` goes too; a WebSocket upgrade puts it back.
    let hop = |k: &HeaderName| *k == header::UPGRADE || HOP_BY_HOP.contains(k);
    // Most messages carry none, or just `connection: keep-alive`: looking is cheaper than
    // removing every name (each removal hashes it), so only what is there is removed.
    if !headers.keys().any(hop) {
        return;
    }
    let mut present: Vec<HeaderName> = headers.keys().filter(|k| hop(k)).cloned().collect();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',').map(str::trim) {
            // Listed names that are hop-by-hop anyway (`keep-alive`) are handled above;
            // others are removed if the message has them.
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
                && !hop(&name)
                && headers.keys().any(|k| *k == name)
            {
                present.push(name);
            }
        }
    }
    for name in &present {
        headers.remove(name);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Appends the peer's IP (`peer_ip`, as a header value) to `x-forwarded-for`.
fn append_forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) => HeaderValue::from_str(&format!("{existing}, {}", text(peer_ip))),
        None => Ok(peer_ip.clone()),
    };
    if let Ok(v) = value {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

fn apply(headers: &mut HeaderMap, add: &[crate::config::HeaderAdd], remove: &[Arc<str>]) {
    for name in remove {
        headers.remove(&**name);
    }
    for h in add {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) else {
            continue;
        };
        if h.append {
            headers.append(name, value);
        } else {
            headers.insert(name, value);
        }
    }
}

fn apply_request_headers(headers: &mut HeaderMap, changes: &HeaderChanges) {
    apply(headers, &changes.request_add, &changes.request_remove);
}

fn apply_response_headers(headers: &mut HeaderMap, changes: &HeaderChanges) {
    apply(headers, &changes.response_add, &changes.response_remove);
}

/// An upstream response body that keeps its endpoint, request and connection counted as busy
/// until it is done, and is cut off (the stream reset) if the route timeout passes before it
/// ends. Read to its end, it hands its connection back to the pool.
struct Guarded {
    inner: Incoming,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    lease: Option<Lease>,
    _held: (Pick, RequestSlot, ConnectionSlot),
}

impl Guarded {
    fn release_if_done(&mut self) {
        if self.inner.is_end_stream()
            && let Some(lease) = self.lease.take()
        {
            lease.release();
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // A body with nothing to read is never polled.
        self.release_if_done();
    }
}

/// The response body as sent downstream: when it is done (or dropped), the request's duration
/// is recorded and its span ends.
struct Finished {
    inner: ProxyBody,
    started: Instant,
    stats: Option<Arc<ClusterStats>>,
    _span: Option<ServerSpan>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(stats) = &self.stats {
            stats.duration.observe(self.started.elapsed());
        }
    }
}

impl Body for Finished {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream response not complete within the route timeout")]
struct ResponseTimeout;

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            match &frame {
                Some(Ok(_)) => self.release_if_done(),
                None => self.release_if_done(),
                Some(Err(_)) => {}
            }
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            self.deadline = None;
            return Poll::Ready(Some(Err(Box::new(ResponseTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_what_they_do_not_change() {
        let uri: Uri = "/a?b=1".parse().expect("valid");
        let rd = Redirect {
            scheme: None,
            host: Some("new.example".into()),
            port: None,
            path: None,
            status: 301,
        };
        assert_eq!(
            redirect_location(&rd, "old.example:8080", &uri),
            "http://new.example/a?b=1"
        );
        let rd = Redirect {
            scheme: Some("https".into()),
            host: None,
            port: None,
            path: Some("/v2".into()),
            status: 302,
        };
        assert_eq!(
            redirect_location(&rd, "old.example:8080", &uri),
            "https://old.example:8080/v2"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: std::collections::BTreeSet<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-length", "x-kept"].into());
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let peer = HeaderValue::from_static("10.0.0.1");
        append_forwarded_for(&mut h, &peer);
        append_forwarded_for(&mut h, &peer);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.1");
    }
}
