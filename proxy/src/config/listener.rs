//! Listeners: where connections arrive, what is learnt about each before a filter chain is
//! chosen (original destination, TLS hello), Envoy's rules for choosing it, and what a chain
//! does with the connection (HTTP, or TCP to a cluster).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{Cidr, DownstreamTls, JwtAuthn, Rbac, RouteConfig};

/// A listener: its addresses and the filter chains its connections are matched to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listener {
    pub name: Arc<str>,
    /// `address` and then `additional_addresses`.
    pub addresses: Vec<SocketAddr>,
    /// Bound to its addresses. `false` (Envoy's `bind_to_port: false`): it only takes
    /// connections that a listener using original destinations hands over.
    pub bind: bool,
    /// Hands each connection to the listener for its original destination (Envoy's
    /// `use_original_dst`), when there is one.
    pub use_original_dst: bool,
    pub inspect: Inspect,
    pub chains: Vec<FilterChain>,
}

/// The listener filters: what is read off a connection before a chain is chosen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Inspect {
    /// The original destination (SO_ORIGINAL_DST) becomes the connection's local address.
    pub original_dst: bool,
    /// TLS or not, and the client hello's SNI and ALPN.
    pub tls: bool,
    /// How long the filters may wait for the client's first bytes; `None`: no limit.
    pub timeout: Option<Duration>,
    /// At the timeout, choose a chain with what is known instead of closing.
    pub continue_on_timeout: bool,
}

/// Envoy's `listener_filters_timeout` when a listener sets none.
pub const DEFAULT_INSPECT_TIMEOUT: Duration = Duration::from_secs(15);

/// One way of serving a connection: with or without TLS, then HTTP or TCP.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FilterChain {
    pub name: Arc<str>,
    pub matches: ChainMatch,
    pub tls: Option<Arc<DownstreamTls>>,
    pub serve: Serve,
}

/// What a chain does with a connection.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Serve {
    Http(HttpManager),
    Tcp(TcpProxy),
}

/// Envoy's TCP proxy, after the chain's network RBAC filters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TcpProxy {
    /// Network RBAC filters in order (Istio's: DENY, AUDIT, ALLOW).
    pub rbac: Arc<[Rbac]>,
    /// Where connections go: one cluster, or a weighted choice per connection (never empty;
    /// every weight is at least 1).
    pub clusters: Arc<[TcpCluster]>,
    /// Close a connection idle this long; `None`: never (Envoy's default is an hour).
    pub idle_timeout: Option<Duration>,
    /// Hash on the client's address for consistent-hash clusters.
    pub hash_source_ip: bool,
}

/// A TCP proxy's cluster and its weight among the proxy's clusters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TcpCluster {
    pub name: Arc<str>,
    pub weight: u32,
}

impl TcpProxy {
    /// A proxy to one cluster.
    pub fn to(cluster: impl Into<Arc<str>>) -> TcpProxy {
        TcpProxy {
            rbac: Arc::from([]),
            clusters: Arc::from([TcpCluster {
                name: cluster.into(),
                weight: 1,
            }]),
            idle_timeout: None,
            hash_source_ip: false,
        }
    }

    /// The cluster for a new connection, by weight (Envoy's weighted_clusters).
    pub fn pick(&self) -> &Arc<str> {
        if let [only] = &*self.clusters {
            return &only.name;
        }
        let total: u64 = self.clusters.iter().map(|c| u64::from(c.weight)).sum();
        let mut n = fastrand::u64(..total.max(1));
        for c in self.clusters.iter() {
            if n < u64::from(c.weight) {
                return &c.name;
            }
            n -= u64::from(c.weight);
        }
        &self
            .clusters
            .last()
            .expect("a TCP proxy has a cluster")
            .name
    }
}

/// Envoy's TCP proxy idle timeout when none is set.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Which connections a filter chain takes; empty fields match anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    /// The connection's (original) destination address.
    pub prefix_ranges: Vec<Cidr>,
    /// SNI names, exact or `*.suffix`.
    pub server_names: Vec<Arc<str>>,
    pub transport: Option<Transport>,
    /// ALPN protocols the client offered (TLS).
    pub application_protocols: Vec<Arc<str>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tls,
    Raw,
}

/// What is known of a connection when its chain is chosen.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionInfo<'a> {
    /// Its local address: the original destination when a listener filter restored it.
    pub local: SocketAddr,
    pub transport: Transport,
    pub sni: Option<&'a str>,
    pub alpn: &'a [Vec<u8>],
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
    /// The jwt_authn filter, before RBAC (which reads the claims it verified).
    pub jwt: Option<Arc<JwtAuthn>>,
    /// RBAC filters in order (Istio's: DENY, AUDIT, ALLOW), before routing.
    pub rbac: Arc<[Rbac]>,
    /// The CORS filter is in the chain: routes' CORS policies apply.
    pub cors: bool,
    /// The local rate limit filter, after every other filter but the router.
    pub rate_limit: Option<Arc<super::LocalRateLimit>>,
    /// Each request is logged to stdout in Envoy's default access log format.
    pub access_log: bool,
    /// How big a request's headers may be; a request over a limit is answered 431.
    pub request_headers: HeaderLimits,
    /// How long a request's headers may take to arrive once its first byte has (Envoy's
    /// `request_headers_timeout`); `None`: no limit, Envoy's default.
    pub request_headers_timeout: Option<Duration>,
}

/// Envoy's limits on request headers: `max_request_headers_kb` and
/// `common_http_protocol_options.max_headers_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HeaderLimits {
    /// Bytes of header names and values together.
    pub max_bytes: usize,
    pub max_count: usize,
}

/// Envoy's defaults: 60 KiB, 100 headers.
impl Default for HeaderLimits {
    fn default() -> Self {
        HeaderLimits {
            max_bytes: 60 * 1024,
            max_count: 100,
        }
    }
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

// === impl HttpManager ===

impl HttpManager {
    /// The name of the RDS route configuration this manager needs, if any.
    pub fn rds_name(&self) -> Option<&Arc<str>> {
        match &self.routes {
            RouteSource::Rds(name) => Some(name),
            RouteSource::Inline(_) => None,
        }
    }
}

// === impl FilterChain ===

impl FilterChain {
    pub fn http(&self) -> Option<&HttpManager> {
        match &self.serve {
            Serve::Http(h) => Some(h),
            Serve::Tcp(_) => None,
        }
    }

    /// The clusters a TCP chain proxies to.
    pub fn tcp_clusters(&self) -> impl Iterator<Item = &Arc<str>> {
        let clusters = match &self.serve {
            Serve::Tcp(t) => &t.clusters[..],
            Serve::Http(_) => &[],
        };
        clusters.iter().map(|c| &c.name)
    }
}

// === impl Listener ===

impl Listener {
    /// The RDS route configurations this listener needs.
    pub fn rds_names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.chains
            .iter()
            .filter_map(|c| c.http().and_then(HttpManager::rds_name))
    }

    /// The clusters its TCP chains proxy to.
    pub fn tcp_clusters(&self) -> impl Iterator<Item = &Arc<str>> {
        self.chains.iter().flat_map(FilterChain::tcp_clusters)
    }

    /// The chain for a connection, as Envoy chooses it: the criteria are taken in order
    /// (destination port, destination address, server name, transport, application
    /// protocol), and at each only the chains that match most specifically go on, so a
    /// chain that loses at one step is never chosen later. `None`: no chain takes it.
    pub fn select(&self, c: &ConnectionInfo<'_>) -> Option<usize> {
        let mut left: Vec<usize> = (0..self.chains.len()).collect();
        let m = |i: &usize| &self.chains[*i].matches;
        // Destination port: a chain naming the port beats one naming none.
        let port = c.local.port();
        keep_best(&mut left, |i| match m(i).destination_port {
            None => Some(0),
            Some(p) if p == port => Some(1),
            Some(_) => None,
        });
        // Destination address: the longest matching prefix; no prefix is the shortest.
        let ip = c.local.ip();
        keep_best(&mut left, |i| {
            let ranges = &m(i).prefix_ranges;
            if ranges.is_empty() {
                return Some(0);
            }
            ranges
                .iter()
                .filter(|r| r.contains(ip))
                .map(|r| 1 + usize::from(r.prefix_len()))
                .max()
        });
        // Server name: exact, then the longest wildcard, then chains naming none.
        keep_best(&mut left, |i| {
            let names = &m(i).server_names;
            if names.is_empty() {
                return Some(0);
            }
            let sni = c.sni?;
            names.iter().filter_map(|n| server_name_rank(n, sni)).max()
        });
        keep_best(&mut left, |i| match m(i).transport {
            None => Some(0),
            Some(t) if t == c.transport => Some(1),
            Some(_) => None,
        });
        // Application protocol: the first the client offers that some chain names.
        let offered = c
            .alpn
            .iter()
            .find(|p| left.iter().any(|i| names_protocol(m(i), p)));
        keep_best(&mut left, |i| {
            let protocols = &m(i).application_protocols;
            match offered {
                _ if protocols.is_empty() => Some(0),
                Some(p) if names_protocol(m(i), p) => Some(1),
                _ => None,
            }
        });
        left.first().copied()
    }

    /// Whether a chain distinguishes transports or server names, which needs the TLS inspector.
    pub fn needs_tls_inspector(&self) -> bool {
        self.chains.iter().any(|c| {
            c.matches.transport.is_some()
                || !c.matches.server_names.is_empty()
                || !c.matches.application_protocols.is_empty()
        })
    }
}

fn names_protocol(m: &ChainMatch, protocol: &[u8]) -> bool {
    m.application_protocols
        .iter()
        .any(|p| p.as_bytes() == protocol)
}

/// Keeps the chains that `rank` scores highest; chains it scores `None` never stay.
fn keep_best(left: &mut Vec<usize>, rank: impl Fn(&usize) -> Option<usize>) {
    let best = left.iter().filter_map(&rank).max();
    left.retain(|i| best.is_some() && rank(i) == best);
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
    matches.then_some(1 + suffix.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(m: ChainMatch) -> FilterChain {
        FilterChain {
            name: "c".into(),
            matches: m,
            tls: None,
            serve: Serve::Tcp(TcpProxy::to("x")),
        }
    }

    fn listener(matches: Vec<ChainMatch>) -> Listener {
        Listener {
            name: "l".into(),
            addresses: vec![SocketAddr::from(([0, 0, 0, 0], 15001))],
            bind: true,
            use_original_dst: false,
            inspect: Inspect::default(),
            chains: matches.into_iter().map(chain).collect(),
        }
    }

    fn names(n: &[&str]) -> Vec<Arc<str>> {
        n.iter().map(|s| Arc::from(*s)).collect()
    }

    fn conn<'a>(local: &str, transport: Transport, sni: Option<&'a str>) -> ConnectionInfo<'a> {
        ConnectionInfo {
            local: local.parse().expect("socket address"),
            transport,
            sni,
            alpn: &[],
        }
    }

    fn cidr(s: &str) -> Cidr {
        let (ip, len) = s.split_once('/').expect("a CIDR");
        Cidr::new(ip.parse().expect("ip"), len.parse().expect("len")).expect("valid")
    }

    #[test]
    fn permissive_chains_split_on_the_transport() {
        let l = listener(vec![
            ChainMatch {
                transport: Some(Transport::Tls),
                ..Default::default()
            },
            ChainMatch {
                transport: Some(Transport::Raw),
                ..Default::default()
            },
        ]);
        assert_eq!(
            l.select(&conn("10.0.0.1:80", Transport::Tls, Some("x"))),
            Some(0)
        );
        assert_eq!(
            l.select(&conn("10.0.0.1:80", Transport::Raw, None)),
            Some(1)
        );
        assert!(l.needs_tls_inspector());
    }

    #[test]
    fn sni_picks_exact_then_longest_wildcard_and_unnamed_connections_match_nothing_named() {
        let named = |n: &[&str]| ChainMatch {
            server_names: names(n),
            ..Default::default()
        };
        let l = listener(vec![
            named(&["*.example.com"]),
            named(&["bookinfo.example.com"]),
            named(&["*.shop.example.com"]),
        ]);
        let tls = |sni| l.select(&conn("10.0.0.1:443", Transport::Tls, sni));
        assert_eq!(tls(Some("bookinfo.example.com")), Some(1));
        assert_eq!(tls(Some("Cart.Shop.example.com")), Some(2));
        assert_eq!(tls(Some("other.example.com")), Some(0));
        assert_eq!(tls(Some("example.com")), None);
        assert_eq!(tls(None), None);
        let with_default = listener(vec![named(&["a.test"]), ChainMatch::default()]);
        let tls = |sni| with_default.select(&conn("10.0.0.1:443", Transport::Tls, sni));
        assert_eq!(tls(None), Some(1));
        assert_eq!(tls(Some("a.test")), Some(0));
        assert_eq!(tls(Some("b.test")), Some(1));
    }

    #[test]
    fn a_chain_for_the_port_wins_and_the_choice_never_falls_back_past_it() {
        let l = listener(vec![
            ChainMatch {
                destination_port: Some(9080),
                transport: Some(Transport::Tls),
                ..Default::default()
            },
            ChainMatch::default(),
        ]);
        assert_eq!(
            l.select(&conn("10.0.0.1:9080", Transport::Tls, None)),
            Some(0)
        );
        // The port's only chain wants TLS: a plaintext connection to it gets no chain at all,
        // as in Envoy, rather than the catch-all.
        assert_eq!(l.select(&conn("10.0.0.1:9080", Transport::Raw, None)), None);
        assert_eq!(
            l.select(&conn("10.0.0.1:7000", Transport::Raw, None)),
            Some(1)
        );
    }

    #[test]
    fn the_longest_destination_prefix_wins_and_no_prefix_is_the_fallback() {
        let ranges = |r: &[&str]| ChainMatch {
            prefix_ranges: r.iter().map(|s| cidr(s)).collect(),
            ..Default::default()
        };
        let l = listener(vec![
            ranges(&["10.96.0.0/16"]),
            ranges(&["10.96.0.20/32", "fd96::20/128"]),
            ChainMatch::default(),
        ]);
        let at = |a: &str| l.select(&conn(a, Transport::Raw, None));
        assert_eq!(at("10.96.0.20:7000"), Some(1));
        assert_eq!(at("[fd96::20]:7000"), Some(1));
        assert_eq!(at("10.96.3.4:7000"), Some(0));
        assert_eq!(at("192.0.2.1:7000"), Some(2));
        let no_fallback = listener(vec![ranges(&["10.96.0.0/16"])]);
        assert_eq!(
            no_fallback.select(&conn("192.0.2.1:7000", Transport::Raw, None)),
            None
        );
    }

    #[test]
    fn application_protocols_follow_the_clients_order() {
        let alpn = |p: &[&str]| ChainMatch {
            transport: Some(Transport::Tls),
            application_protocols: names(p),
            ..Default::default()
        };
        let l = listener(vec![
            alpn(&["h2"]),
            alpn(&["http/1.1"]),
            ChainMatch {
                transport: Some(Transport::Tls),
                ..Default::default()
            },
        ]);
        let offer = |protocols: &[&[u8]]| {
            let owned: Vec<Vec<u8>> = protocols.iter().map(|p| p.to_vec()).collect();
            l.select(&ConnectionInfo {
                alpn: &owned,
                ..conn("10.0.0.1:443", Transport::Tls, None)
            })
        };
        assert_eq!(offer(&[b"http/1.1", b"h2"]), Some(1));
        assert_eq!(offer(&[b"h2", b"http/1.1"]), Some(0));
        assert_eq!(offer(&[b"istio"]), Some(2));
        assert_eq!(offer(&[]), Some(2));
    }
}
