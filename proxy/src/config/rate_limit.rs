//! Envoy's local rate limit filter, as the HTTP connection manager's chain carries it: token
//! buckets per descriptor, the descriptors made per request by the filter's own actions.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::HeaderMatcher;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LocalRateLimit {
    /// Names the filter's counters (`<stat_prefix>.http_local_rate_limit.*` in Envoy).
    pub stat_prefix: Arc<str>,
    /// The status of a limited request's answer (429 unless set to 400 or more).
    pub status: u16,
    /// The bucket for requests no descriptor matches; `None`: those pass.
    pub default_bucket: Option<TokenBucket>,
    /// Whether the default bucket is consumed also when a descriptor matched.
    pub always_consume_default: bool,
    pub descriptors: Vec<Descriptor>,
    /// Each makes one descriptor for a request, or none when an action produces no entry.
    pub rate_limits: Vec<Vec<RateLimitAction>>,
    /// `x-ratelimit-limit`, `-remaining` and `-reset` on the responses a bucket counted.
    pub x_ratelimit_headers: bool,
    /// `retry-after` on limited requests' answers.
    pub retry_after: bool,
    /// How many concrete buckets a wildcard descriptor keeps (least recently used evicted).
    pub max_dynamic_descriptors: usize,
}

/// Envoy's token bucket: `tokens_per_fill` every `fill_interval`, added continuously, up to
/// `max_tokens`; it starts full.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TokenBucket {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

impl TokenBucket {
    /// Tokens per second.
    pub fn fill_rate(&self) -> f64 {
        f64::from(self.tokens_per_fill) / self.fill_interval.as_secs_f64()
    }
}

/// A configured descriptor: entries whose `None` value matches any value (a wildcard: each
/// value gets its own bucket).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Descriptor {
    pub entries: Vec<(Arc<str>, Option<Arc<str>>)>,
    pub bucket: TokenBucket,
}

impl Descriptor {
    pub fn is_wildcard(&self) -> bool {
        self.entries.iter().any(|(_, v)| v.is_none())
    }

    /// Whether a request's descriptor (its entries in order) falls under this one.
    pub fn matches(&self, request: &[(Arc<str>, String)]) -> bool {
        self.entries.len() == request.len()
            && self
                .entries
                .iter()
                .zip(request)
                .all(|((k, v), (rk, rv))| k == rk && v.as_deref().is_none_or(|v| v == rv))
    }
}

/// One action of a `rate_limits` entry: an entry of the request's descriptor.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAction {
    /// Always `(key, value)`.
    GenericKey { key: Arc<str>, value: Arc<str> },
    /// `(key, value)` when every header matcher holds (or, `expect_match: false`, when not
    /// all do); otherwise no descriptor.
    HeaderValueMatch {
        key: Arc<str>,
        value: Arc<str>,
        expect_match: bool,
        headers: Vec<HeaderMatcher>,
    },
    /// `(key, the header's value)`; without the header, no descriptor, or (`skip_if_absent`)
    /// no entry.
    RequestHeaders {
        header: Arc<str>,
        key: Arc<str>,
        skip_if_absent: bool,
    },
    /// `("remote_address", the client's address)`.
    RemoteAddress,
}
