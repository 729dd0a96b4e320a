//! The runtime configuration: plain immutable types, rebuilt whole per xDS change.

mod cluster;
mod matchers;
mod rbac;
mod route;
mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

pub use cluster::{
    Cluster, Discovery, Endpoint, LbPolicy, Limits, OutlierDetection, TransportMatch,
};
pub use matchers::{HeaderMatch, HeaderMatcher, Pattern, QueryMatcher, StringMatch};
pub use rbac::{Cidr, Permission, Policy, Principal, Rbac, RbacAction};
pub use route::{
    Action, ClusterChoice, Fault, FaultAbort, FaultDelay, Forward, GrpcRetryOn, HashKey,
    HashPolicy, HeaderAdd, HeaderChanges, Mirror, PathMatch, Redirect, RegexRewrite, RetryOn,
    RetryPolicy, Route, RouteConfig, RouteMatch, VirtualHost, WeightedCluster,
};
pub use tls::{
    CertificateSource, DownstreamTls, Loaded, RootsSource, SanKind, SanMatcher, UpstreamTls,
    Validation,
};

/// Everything the data path needs, complete: every route names an existing cluster and every
/// cluster has its endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Config {
    /// The xDS version each resource type was last accepted at.
    pub versions: BTreeMap<&'static str, Arc<str>>,
    pub listeners: BTreeMap<Arc<str>, Listener>,
    pub routes: BTreeMap<Arc<str>, Arc<RouteConfig>>,
    pub clusters: BTreeMap<Arc<str>, Arc<Cluster>>,
}

/// A listener: an address and the filter chains its connections are matched to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listener {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub chains: Vec<FilterChain>,
}

/// One way of serving a connection: with or without TLS, then HTTP.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FilterChain {
    pub matches: ChainMatch,
    pub tls: Option<Arc<DownstreamTls>>,
    pub http: HttpManager,
}

/// Which connections a filter chain takes; empty fields match anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChainMatch {
    pub transport: Option<Transport>,
    /// SNI names, exact or `*.suffix`.
    pub server_names: Vec<Arc<str>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tls,
    Raw,
}

/// What the HTTP connection manager of a filter chain does.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HttpManager {
    pub routes: RouteSource,
    /// Match virtual hosts on the Host header without its port (gateways).
    pub strip_any_host_port: bool,
    /// WebSocket upgrades are proxied (HTTP/1.1 `Upgrade: websocket`).
    pub websocket: bool,
    /// What happens to `x-forwarded-client-cert`.
    pub client_cert_details: ClientCertDetails,
    /// RBAC filters in order (Istio's: DENY, AUDIT, ALLOW), before routing.
    pub rbac: Arc<[Rbac]>,
}

/// Envoy's `forward_client_cert_details` with `set_current_client_cert_details`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertDetails {
    /// Remove the header (Envoy's SANITIZE, its default).
    #[default]
    Sanitize,
    /// Replace it with the current peer's details on mTLS connections, remove it otherwise.
    SanitizeSet { uri: bool, dns: bool },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    /// A route configuration fetched over RDS, by name.
    Rds(Arc<str>),
    Inline(Arc<RouteConfig>),
}

impl HttpManager {
    /// The name of the RDS route configuration this manager needs, if any.
    pub fn rds_name(&self) -> Option<&Arc<str>> {
        match &self.routes {
            RouteSource::Rds(name) => Some(name),
            RouteSource::Inline(_) => None,
        }
    }
}

impl Listener {
    /// The RDS route configurations this listener needs.
    pub fn rds_names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.chains.iter().filter_map(|c| c.http.rds_name())
    }

    /// Whether a connection must be looked at (TLS or not, SNI) before a chain is chosen.
    pub fn inspects(&self) -> bool {
        self.chains.len() > 1
            || self
                .chains
                .iter()
                .any(|c| c.matches != ChainMatch::default())
    }

    /// The chain for a connection: TLS or not, with the SNI it sent. Envoy's order: a chain
    /// naming the server beats one naming none; an explicit transport beats none.
    pub fn select(&self, tls: bool, sni: Option<&str>) -> Option<usize> {
        let transport = if tls { Transport::Tls } else { Transport::Raw };
        self.chains
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let names = if c.matches.server_names.is_empty() {
                    Some(0)
                } else {
                    let sni = sni?;
                    c.matches
                        .server_names
                        .iter()
                        .filter_map(|n| server_name_rank(n, sni))
                        .max()
                }?;
                let proto = match c.matches.transport {
                    None => 0,
                    Some(t) if t == transport => 1,
                    Some(_) => return None,
                };
                Some(((names, proto), i))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, i)| i)
    }

    /// Whether any chain serves TLS.
    pub fn serves_tls(&self) -> bool {
        self.chains.iter().any(|c| c.tls.is_some())
    }
}

/// How well `pattern` (exact, or `*.suffix`) names `sni`: exact beats the longest wildcard.
fn server_name_rank(pattern: &str, sni: &str) -> Option<usize> {
    if pattern.eq_ignore_ascii_case(sni) {
        return Some(usize::MAX);
    }
    let suffix = pattern.strip_prefix('*')?;
    let matches = sni.len() > suffix.len()
        && sni
            .get(sni.len() - suffix.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix));
    matches.then_some(suffix.len())
}

impl Config {
    /// The route configuration an HTTP manager serves.
    pub fn route_config<'a>(&'a self, http: &'a HttpManager) -> Option<&'a Arc<RouteConfig>> {
        match &http.routes {
            RouteSource::Rds(name) => self.routes.get(name),
            RouteSource::Inline(rc) => Some(rc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(transport: Option<Transport>, names: &[&str]) -> FilterChain {
        FilterChain {
            matches: ChainMatch {
                transport,
                server_names: names.iter().map(|n| Arc::from(*n)).collect(),
            },
            tls: None,
            http: HttpManager {
                routes: RouteSource::Rds("r".into()),
                strip_any_host_port: false,
                websocket: false,
                client_cert_details: ClientCertDetails::default(),
                rbac: Arc::from([]),
            },
        }
    }

    fn listener(chains: Vec<FilterChain>) -> Listener {
        Listener {
            name: "l".into(),
            address: SocketAddr::from(([127, 0, 0, 1], 1)),
            chains,
        }
    }

    #[test]
    fn permissive_chains_split_on_the_transport() {
        let l = listener(vec![
            chain(Some(Transport::Tls), &[]),
            chain(Some(Transport::Raw), &[]),
        ]);
        assert_eq!(l.select(true, Some("x")), Some(0));
        assert_eq!(l.select(false, None), Some(1));
        assert!(l.inspects());
    }

    #[test]
    fn sni_picks_exact_then_longest_wildcard_and_unnamed_connections_match_nothing_named() {
        let l = listener(vec![
            chain(None, &["*.example.com"]),
            chain(None, &["bookinfo.example.com"]),
            chain(None, &["*.shop.example.com"]),
        ]);
        assert_eq!(l.select(true, Some("bookinfo.example.com")), Some(1));
        assert_eq!(l.select(true, Some("Cart.Shop.example.com")), Some(2));
        assert_eq!(l.select(true, Some("other.example.com")), Some(0));
        assert_eq!(l.select(true, Some("example.com")), None);
        assert_eq!(l.select(true, None), None);
        let with_default = listener(vec![chain(None, &["a.test"]), chain(None, &[])]);
        assert_eq!(with_default.select(true, None), Some(1));
        assert_eq!(with_default.select(true, Some("a.test")), Some(0));
    }
}
