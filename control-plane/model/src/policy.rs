//! Strait's own kinds, in the `policy.strait.io` group: what Istio leaves to EnvoyFilter.
//! Wire form only, as in [`crate::istio`]; `crate::model` gives it meaning.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::istio::networking::StringMatch;
use crate::istio::security::WorkloadSelector;

/// API versions accepted for `policy.strait.io`.
pub const POLICY_VERSIONS: [&str; 1] = ["v1alpha1"];

/// Local rate limits for the selected workloads' inbound requests (a sidecar) or a gateway's
/// requests: token buckets per limit, each optionally split by a header or the source address.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RateLimitPolicySpec {
    /// The workloads (or gateways) it applies to; absent: every workload in the namespace
    /// (in the root namespace, the mesh).
    pub selector: Option<WorkloadSelector>,
    pub limits: Vec<RateLimitSpec>,
}

/// One token bucket: `requests` per `interval`, up to `burst` at once.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RateLimitSpec {
    /// Unique in the policy; names the limit in errors and in the proxies' config.
    pub name: String,
    /// The requests it counts; absent: every request.
    #[serde(rename = "match")]
    pub r#match: Option<RateLimitMatch>,
    /// Tokens added per interval.
    pub requests: Option<u32>,
    /// A duration (`1s`, `1m`), at least 50ms.
    pub interval: Option<String>,
    /// The most tokens the bucket holds; defaults to `requests`.
    pub burst: Option<u32>,
    /// A separate bucket per value of this.
    pub by: Option<RateLimitKey>,
}

/// Every field given must match (as a VirtualService's `HTTPMatchRequest`).
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RateLimitMatch {
    pub uri: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub headers: std::collections::BTreeMap<String, StringMatch>,
}

/// What splits a limit into buckets: one of the two.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RateLimitKey {
    /// A request header (a consumer's API key); requests without it share one bucket.
    pub header: Option<String>,
    /// The client's address as the proxy sees it.
    pub source_address: Option<bool>,
}
