//! RateLimitPolicy -> Envoy's local rate limit filter, in the HTTP connection manager's chain
//! (not per route): one descriptor per limit, produced by the filter's own `rate_limits`
//! actions, so the same filter serves a sidecar's inbound side and a gateway's routes.
//!
//! A limit's descriptor starts with `strait_limit: <namespace>/<policy>/<limit>`, produced
//! only when its match holds (a `header_value_match` on `:path`, `:method` and headers, or a
//! `generic_key` without a match). `by.header` adds the header's value (absent: the entry is
//! skipped, and such requests share the limit's plain bucket); `by.sourceAddress` adds the
//! client's address. A wildcard descriptor (an entry without a value) gives each value its own
//! bucket, as Envoy's dynamic descriptors do.

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RateLimit as PbRateLimit,
    header_matcher::HeaderMatchSpecifier,
    rate_limit::{Action, action},
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    LocalRateLimitDescriptor, XRateLimitHeadersRfcVersion, rate_limit_descriptor::Entry,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::v3::{
    FractionalPercent, TokenBucket, fractional_percent::DenominatorType,
};
use strait_model::{HeaderMatch, RateLimit, RateLimitKey, RateLimitPolicy, StringMatch};

use crate::proto::{any, boolv, duration, u32v};
use crate::route::{header_matcher, string_matcher};
use crate::security::regex_escape;

pub const LOCAL_RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
/// The descriptor entry naming a limit.
pub const LIMIT_KEY: &str = "strait_limit";
/// The descriptor entry carrying `by.header`'s value.
pub const HEADER_KEY: &str = "strait_key";
/// Envoy's name for the entry the `remote_address` action produces.
pub const REMOTE_ADDRESS_KEY: &str = "remote_address";
/// How many values of one split limit keep their own bucket (least recently used go first).
pub const MAX_DYNAMIC_DESCRIPTORS: u32 = 1024;

/// The filter for the policies that apply, or `None` when there are none.
pub fn filter(policies: &[&RateLimitPolicy], stat_prefix: &str) -> Option<HttpFilter> {
    if policies.iter().all(|p| p.limits.is_empty()) {
        return None;
    }
    let mut descriptors = Vec::new();
    let mut rate_limits = Vec::new();
    for p in policies {
        for limit in &p.limits {
            let id = p.limit_id(limit);
            let bucket = TokenBucket {
                max_tokens: limit.burst,
                tokens_per_fill: Some(u32v(limit.requests)),
                fill_interval: Some(duration(limit.interval)),
            };
            let entry = |key: &str, value: &str| Entry {
                key: key.to_string(),
                value: value.to_string(),
            };
            // Requests the limit counts without a value to split by share this bucket.
            descriptors.push(LocalRateLimitDescriptor {
                entries: vec![entry(LIMIT_KEY, &id)],
                token_bucket: Some(bucket),
                shadow_mode: false,
            });
            let mut actions = vec![first_action(limit, &id)];
            match &limit.by {
                None => {}
                Some(RateLimitKey::Header(name)) => {
                    descriptors.push(LocalRateLimitDescriptor {
                        entries: vec![entry(LIMIT_KEY, &id), entry(HEADER_KEY, "")],
                        token_bucket: Some(bucket),
                        shadow_mode: false,
                    });
                    actions.push(Action {
                        action_specifier: Some(action::ActionSpecifier::RequestHeaders(
                            action::RequestHeaders {
                                header_name: name.clone(),
                                descriptor_key: HEADER_KEY.to_string(),
                                skip_if_absent: true,
                            },
                        )),
                    });
                }
                Some(RateLimitKey::SourceAddress) => {
                    // Every request has an address: the plain bucket above is never used.
                    descriptors.last_mut().expect("pushed above").entries =
                        vec![entry(LIMIT_KEY, &id), entry(REMOTE_ADDRESS_KEY, "")];
                    actions.push(Action {
                        action_specifier: Some(action::ActionSpecifier::RemoteAddress(
                            action::RemoteAddress {},
                        )),
                    });
                }
            }
            rate_limits.push(PbRateLimit {
                actions,
                ..Default::default()
            });
        }
    }
    let all = |key: &str| RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: DenominatorType::Hundred as i32,
        }),
        runtime_key: key.to_string(),
    };
    let config = LocalRateLimit {
        stat_prefix: stat_prefix.to_string(),
        filter_enabled: Some(all("strait_rate_limit_enabled")),
        filter_enforced: Some(all("strait_rate_limit_enforced")),
        descriptors,
        rate_limits,
        // No default bucket: a request no limit counts is not limited.
        always_consume_default_token_bucket: Some(boolv(false)),
        enable_x_ratelimit_headers: XRateLimitHeadersRfcVersion::DraftVersion03 as i32,
        enable_retry_after_header: true,
        max_dynamic_descriptors: Some(u32v(MAX_DYNAMIC_DESCRIPTORS)),
        ..Default::default()
    };
    Some(HttpFilter {
        name: LOCAL_RATE_LIMIT_FILTER.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&config))),
        ..Default::default()
    })
}

/// The action that names the limit: produced only for the requests its match selects.
fn first_action(limit: &RateLimit, id: &str) -> Action {
    let m = &limit.matches;
    let mut headers: Vec<HeaderMatcher> = Vec::new();
    if let Some(path) = &m.path {
        headers.push(path_matcher(path));
    }
    if let Some(method) = &m.method {
        headers.push(header_matcher(
            ":method",
            &HeaderMatch::Value(method.clone()),
            false,
        ));
    }
    headers.extend(m.headers.iter().map(|(n, hm)| header_matcher(n, hm, false)));
    let specifier = if headers.is_empty() {
        action::ActionSpecifier::GenericKey(action::GenericKey {
            descriptor_key: LIMIT_KEY.to_string(),
            descriptor_value: id.to_string(),
            ..Default::default()
        })
    } else {
        action::ActionSpecifier::HeaderValueMatch(action::HeaderValueMatch {
            descriptor_key: LIMIT_KEY.to_string(),
            descriptor_value: id.to_string(),
            expect_match: Some(boolv(true)),
            headers,
            ..Default::default()
        })
    };
    Action {
        action_specifier: Some(specifier),
    }
}

/// `:path` carries the query: a prefix matches as it is; an exact path or a regex matches the
/// path with any query after it, as a route's path match does.
fn path_matcher(path: &StringMatch) -> HeaderMatcher {
    let with_query = |re: String| StringMatch::Regex(format!("{re}(\\?.*)?"));
    let sm = match path {
        StringMatch::Prefix(_) => path.clone(),
        StringMatch::Exact(p) => with_query(regex_escape(p)),
        StringMatch::Regex(re) => with_query(format!("(?:{re})")),
    };
    HeaderMatcher {
        name: ":path".to_string(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(string_matcher(&sm))),
        ..Default::default()
    }
}
