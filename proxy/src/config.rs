//! The runtime configuration: plain immutable types, rebuilt whole per xDS change.

mod cluster;
mod jwt;
mod listener;
mod matchers;
mod rate_limit;
mod rbac;
mod route;
mod tls;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

pub use cluster::{
    Cluster, Discovery, Endpoint, LbPolicy, Limits, OutlierDetection, TransportMatch, UpstreamBind,
};
pub use jwt::{ClaimToHeader, Jwks, JwtAuthn, JwtProvider, Key, Requirement, TokenHeader};
pub use listener::{
    ChainMatch, ClientCertDetails, ConnectionInfo, FilterChain, HeaderLimits, HttpManager, Inspect,
    Listener, RouteSource, Serve, TcpCluster, TcpProxy, Transport,
};
/// Envoy's defaults for listener settings left unset.
pub mod listener_defaults {
    pub use super::listener::{DEFAULT_INSPECT_TIMEOUT, DEFAULT_TCP_IDLE_TIMEOUT};
}
pub use matchers::{HeaderMatch, HeaderMatcher, Pattern, QueryMatcher, StringMatch};
pub use rate_limit::{Descriptor, LocalRateLimit, RateLimitAction, TokenBucket};
pub use rbac::{
    Cidr, MetadataMatcher, Permission, Policy, Principal, Rbac, RbacAction, ValueMatch,
};
pub use route::{
    Action, ClusterChoice, Cors, Fault, FaultAbort, FaultDelay, Forward, GrpcRetryOn, HashKey,
    HashPolicy, HeaderAdd, HeaderChanges, Mirror, PathMatch, Redirect, RegexRewrite, RetryOn,
    RetryPolicy, Route, RouteConfig, RouteMatch, VirtualHost, WeightedCluster,
};
pub use tls::{
    CertificateSource, DownstreamTls, Loaded, RootsSource, SanKind, SanMatcher, SdsSecret, Secrets,
    UpstreamTls, Validation,
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

impl Config {
    /// The route configuration an HTTP manager serves.
    pub fn route_config<'a>(&'a self, http: &'a HttpManager) -> Option<&'a Arc<RouteConfig>> {
        match &http.routes {
            RouteSource::Rds(name) => self.routes.get(name),
            RouteSource::Inline(rc) => Some(rc),
        }
    }
}
