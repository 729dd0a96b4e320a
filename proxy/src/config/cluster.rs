//! Upstream clusters and their endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::UpstreamTls;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cluster {
    pub name: Arc<str>,
    pub discovery: Discovery,
    pub lb_policy: LbPolicy,
    pub connect_timeout: Duration,
    pub limits: Limits,
    pub outlier: Option<OutlierDetection>,
    /// Below this share of healthy (non-ejected) endpoints, all endpoints are used (Envoy's
    /// panic mode); 0 turns panic mode off.
    pub healthy_panic_threshold: f64,
    /// Speak HTTP/2 (prior knowledge) to the endpoints.
    pub http2: bool,
    /// Close pooled connections idle this long (Envoy's default: 1h).
    pub idle_timeout: Option<Duration>,
    /// Close an upstream connection after it has carried this many requests.
    pub max_requests_per_connection: Option<u32>,
    /// From the load assignment (STATIC, STRICT_DNS) or from EDS.
    pub endpoints: Arc<[Endpoint]>,
    /// Where upstream connections are made from; `None`: wherever the kernel picks.
    pub upstream_bind: Option<UpstreamBind>,
    /// TLS to endpoints that no transport match picks; none: plaintext.
    pub tls: Option<Arc<UpstreamTls>>,
    /// Per-endpoint transport, by the endpoint's `envoy.transport_socket_match` metadata
    /// (Istio's auto mTLS: `tlsMode: istio` endpoints get mTLS). The first match wins.
    pub transport_matches: Vec<TransportMatch>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TransportMatch {
    pub name: Arc<str>,
    /// Every one of these must be in the endpoint's transport labels.
    pub labels: BTreeMap<Arc<str>, Arc<str>>,
    pub tls: Option<Arc<UpstreamTls>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// Endpoints come over EDS under this name.
    Eds {
        service_name: Arc<str>,
    },
    Static,
    /// Endpoint hosts are names, resolved when connecting.
    StrictDns,
    /// No endpoints of its own: each connection goes to its downstream's original destination
    /// (or, with `use_http_header`, to the `x-envoy-original-dst-host` a request names).
    OriginalDst {
        use_http_header: bool,
    },
}

/// The source addresses of upstream connections (Envoy's `upstream_bind_config`), by family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UpstreamBind {
    pub v4: Option<std::net::Ipv4Addr>,
    pub v6: Option<std::net::Ipv6Addr>,
}

/// Consecutive-error ejection (Envoy's outlier detection without the success-rate detectors).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutlierDetection {
    /// Consecutive 5xx (and, unless split, local failures) before ejection; `None`: off.
    pub consecutive_5xx: Option<u32>,
    /// Consecutive 502/503/504 (and, unless split, local failures); `None`: off.
    pub consecutive_gateway_failure: Option<u32>,
    /// With split external/local errors: consecutive connect failures and timeouts.
    pub consecutive_local_origin_failure: Option<u32>,
    pub split_local_origin: bool,
    /// Ejection lasts this times the number of times the endpoint was ejected.
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    /// Consistent hashing on the route's hash policy (Envoy's RING_HASH and MAGLEV both map
    /// here: the same keys stick to the same endpoints, though not to Envoy's choices).
    ConsistentHash {
        ring_size: u64,
    },
    /// The cluster chooses (original destination clusters).
    ClusterProvided,
}

/// Circuit-breaker thresholds (default priority).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for Limits {
    /// Envoy's defaults.
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// An IP literal, or a DNS name for STRICT_DNS clusters.
    pub host: Arc<str>,
    pub port: u16,
    pub weight: u32,
    /// The endpoint's `envoy.transport_socket_match` metadata.
    pub transport_labels: BTreeMap<Arc<str>, Arc<str>>,
}

impl Cluster {
    /// Whether connections go to their downstream's original destination.
    pub fn original_dst(&self) -> bool {
        matches!(self.discovery, Discovery::OriginalDst { .. })
    }

    /// The EDS name this cluster's endpoints arrive under, if it is an EDS cluster.
    pub fn eds_name(&self) -> Option<&Arc<str>> {
        match &self.discovery {
            Discovery::Eds { service_name } => Some(service_name),
            Discovery::Static | Discovery::StrictDns | Discovery::OriginalDst { .. } => None,
        }
    }

    /// The TLS settings for connections to `endpoint`; none: plaintext.
    pub fn transport_for(&self, endpoint: &Endpoint) -> Option<&Arc<UpstreamTls>> {
        self.transport_matches
            .iter()
            .find(|m| {
                m.labels
                    .iter()
                    .all(|(k, v)| endpoint.transport_labels.get(k) == Some(v))
            })
            .map_or(self.tls.as_ref(), |m| m.tls.as_ref())
    }

    /// Every distinct TLS setting some endpoint may use.
    pub fn tls_settings(&self) -> Vec<&Arc<UpstreamTls>> {
        let mut all: Vec<&Arc<UpstreamTls>> = Vec::new();
        let candidates = self
            .transport_matches
            .iter()
            .filter_map(|m| m.tls.as_ref())
            .chain(self.tls.as_ref());
        for tls in candidates {
            if !all.iter().any(|t| t == &tls) {
                all.push(tls);
            }
        }
        all
    }
}
