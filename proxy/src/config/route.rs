//! Route configurations: virtual hosts, ordered routes, their matches and actions.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{HeaderMatcher, Pattern, QueryMatcher, StringMatch};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteConfig {
    pub name: Arc<str>,
    pub virtual_hosts: Arc<[VirtualHost]>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VirtualHost {
    pub name: Arc<str>,
    /// Exact names (`reviews`, `reviews:9080`), `*.suffix`, `prefix.*` or `*`, lowercased.
    pub domains: Arc<[Arc<str>]>,
    pub routes: Arc<[Route]>,
    /// Plaintext requests are redirected to https.
    pub require_tls: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: RouteMatch,
    pub action: Action,
    pub headers: HeaderChanges,
    /// Injected before the action runs (Envoy's fault filter, configured per route).
    pub fault: Option<Fault>,
    /// Envoy's CORS filter, configured per route; applies where the connection manager has it.
    pub cors: Option<Cors>,
}

/// A route's CORS policy (Envoy's `CorsPolicy`). Empty strings are unset; the lists are as
/// they are sent, comma-joined.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cors {
    /// An origin is allowed when one of these matches it, or matches `*`.
    pub allow_origins: Arc<[StringMatch]>,
    /// `*` answers with the method the preflight asks for.
    pub allow_methods: Arc<str>,
    /// `*` answers with the headers the preflight asks for.
    pub allow_headers: Arc<str>,
    pub expose_headers: Arc<str>,
    /// Seconds, as sent.
    pub max_age: Arc<str>,
    pub allow_credentials: bool,
    pub allow_private_network_access: bool,
    /// A preflight from an origin not allowed goes upstream; otherwise the proxy answers it
    /// without `access-control-allow-origin`.
    pub forward_not_matching_preflights: bool,
}

/// A delay and/or an abort, each applied to a fraction of requests; the delay comes first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FaultDelay {
    pub fixed: Duration,
    /// Out of 1,000,000.
    pub per_million: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FaultAbort {
    pub status: u16,
    /// Out of 1,000,000.
    pub per_million: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Arc<[HeaderMatcher]>,
    pub query: Arc<[QueryMatcher]>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Prefix(Arc<str>),
    Exact(Arc<str>),
    /// Matches the whole path.
    Regex(Pattern),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    Direct { status: u16, body: Option<Arc<str>> },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Forward {
    pub clusters: ClusterChoice,
    /// `None`: no timeout (Envoy's `0s`).
    pub timeout: Option<Duration>,
    /// Replaces the matched prefix (or the exact path).
    pub prefix_rewrite: Option<Arc<str>>,
    pub host_rewrite: Option<Arc<str>>,
    /// Replaces every match in the path (not the query).
    pub regex_rewrite: Option<RegexRewrite>,
    pub retry: Option<RetryPolicy>,
    /// Copies of the request sent to other clusters, answers ignored.
    pub mirrors: Arc<[Mirror]>,
    /// What consistent-hash clusters hash on.
    pub hash_policy: Arc<[HashPolicy]>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HashPolicy {
    pub key: HashKey,
    /// Stop at this policy when it produced a hash.
    pub terminal: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    Header(Arc<str>),
    Cookie(Arc<str>),
    SourceIp,
    QueryParameter(Arc<str>),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RegexRewrite {
    /// Unanchored; matches anywhere in the path.
    pub pattern: Pattern,
    /// In Rust's `$1` syntax (converted from Envoy's `\1`).
    pub substitution: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mirror {
    pub cluster: Arc<str>,
    /// Out of 1,000,000.
    pub per_million: u32,
}

/// When and how often a failed attempt is tried again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    pub num_retries: u32,
    pub retry_on: RetryOn,
    pub retriable_status_codes: Arc<[u16]>,
    /// Each attempt's own timeout, within the route timeout.
    pub per_try_timeout: Option<Duration>,
    /// Retry on a host not tried before, when there is one (`previous_hosts`).
    pub other_host: bool,
    /// Picks per attempt to find such a host.
    pub host_selection_attempts: u32,
}

/// The `retry_on` conditions, parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RetryOn {
    /// Any 5xx, and a timed-out attempt or a connection failure.
    pub server_error: bool,
    /// 502, 503, 504, and connection failures.
    pub gateway_error: bool,
    pub connect_failure: bool,
    /// The connection was reset or closed before a response.
    pub reset: bool,
    pub retriable_4xx: bool,
    pub retriable_status_codes: bool,
    /// gRPC statuses (`grpc-status` header): cancelled, deadline-exceeded, internal,
    /// resource-exhausted, unavailable.
    pub grpc: GrpcRetryOn,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GrpcRetryOn {
    pub cancelled: bool,
    pub deadline_exceeded: bool,
    pub internal: bool,
    pub resource_exhausted: bool,
    pub unavailable: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterChoice {
    Single(Arc<str>),
    Weighted {
        clusters: Arc<[WeightedCluster]>,
        total: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightedCluster {
    pub name: Arc<str>,
    pub weight: u32,
    pub headers: HeaderChanges,
}

impl Forward {
    /// Every cluster this forward may send to, mirrors included.
    pub fn cluster_names(&self) -> Vec<&Arc<str>> {
        let mut names = self.clusters.names();
        names.extend(self.mirrors.iter().map(|m| &m.cluster));
        names
    }
}

impl ClusterChoice {
    /// Every cluster this choice may send to.
    pub fn names(&self) -> Vec<&Arc<str>> {
        match self {
            ClusterChoice::Single(name) => vec![name],
            ClusterChoice::Weighted { clusters, .. } => clusters.iter().map(|c| &c.name).collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Redirect {
    pub scheme: Option<Arc<str>>,
    pub host: Option<Arc<str>>,
    pub port: Option<u16>,
    pub path: Option<Arc<str>>,
    pub status: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HeaderChanges {
    pub request_add: Arc<[HeaderAdd]>,
    pub request_remove: Arc<[Arc<str>]>,
    pub response_add: Arc<[HeaderAdd]>,
    pub response_remove: Arc<[Arc<str>]>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeaderAdd {
    pub name: Arc<str>,
    pub value: Arc<str>,
    /// Append to existing values instead of replacing them.
    pub append: bool,
}

impl HeaderChanges {
    pub fn is_empty(&self) -> bool {
        self.request_add.is_empty()
            && self.request_remove.is_empty()
            && self.response_add.is_empty()
            && self.response_remove.is_empty()
    }
}
