//! Envoy's local rate limit filter config -> `config::LocalRateLimit`: token buckets (a default
//! one and per descriptor, wildcards included), the filter's own `rate_limits` actions
//! (generic key, header value match, request headers, remote address), enforced for every
//! request; everything else refused by name.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::{RateLimit as PbRateLimit, rate_limit::action};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::XRateLimitHeadersRfcVersion;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as PbLocalRateLimit;
use envoy_types::pb::envoy::r#type::v3::{
    FractionalPercent, TokenBucket as PbTokenBucket, fractional_percent::DenominatorType,
};

use super::routes::header_matcher;
use super::{At, ConvertError, duration};
use crate::config::{Descriptor, LocalRateLimit, RateLimitAction, TokenBucket};

/// The type of a local rate limit filter's `typed_config`.
pub(super) const TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// Envoy's bounds and defaults.
const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);
const DEFAULT_MAX_DYNAMIC_DESCRIPTORS: u32 = 20;

pub(super) fn local_rate_limit(
    at: &At<'_>,
    proto: &PbLocalRateLimit,
) -> Result<LocalRateLimit, ConvertError> {
    if proto.stat_prefix.is_empty() {
        return Err(at.at("stat_prefix").invalid("must not be empty"));
    }
    for (field, fraction) in [
        ("filter_enabled", &proto.filter_enabled),
        ("filter_enforced", &proto.filter_enforced),
    ] {
        // Unset is 0%: a filter that limits nothing is not what anyone sends on purpose.
        if !fraction.as_ref().is_some_and(everything) {
            return Err(at
                .at(field)
                .unsupported("rate limiting (or enforcing it on) only a share of requests"));
        }
    }
    let mut rest = proto.clone();
    rest.stat_prefix.clear();
    rest.status = None;
    rest.token_bucket = None;
    rest.filter_enabled = None;
    rest.filter_enforced = None;
    rest.descriptors.clear();
    rest.rate_limits.clear();
    rest.always_consume_default_token_bucket = None;
    rest.enable_x_ratelimit_headers = 0;
    rest.enable_retry_after_header = false;
    rest.max_dynamic_descriptors = None;
    if rest != PbLocalRateLimit::default() {
        return Err(at.unsupported(
            "local rate limit settings other than stat_prefix, status, token_bucket, \
             filter_enabled, filter_enforced, descriptors, rate_limits, \
             always_consume_default_token_bucket, enable_x_ratelimit_headers, \
             enable_retry_after_header and max_dynamic_descriptors",
        ));
    }
    let x_ratelimit_headers =
        match XRateLimitHeadersRfcVersion::try_from(proto.enable_x_ratelimit_headers) {
            Ok(XRateLimitHeadersRfcVersion::Off) => false,
            Ok(XRateLimitHeadersRfcVersion::DraftVersion03) => true,
            Err(_) => {
                return Err(at.at("enable_x_ratelimit_headers").invalid(format!(
                    "unknown version {}",
                    proto.enable_x_ratelimit_headers
                )));
            }
        };
    let default_bucket = proto
        .token_bucket
        .as_ref()
        .map(|b| bucket(&at.at("token_bucket"), b))
        .transpose()?;
    let descriptors = proto
        .descriptors
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let at = at.at(format!("descriptors[{i}]"));
            if d.shadow_mode {
                return Err(at.at("shadow_mode").unsupported("shadow mode"));
            }
            if d.entries.is_empty() {
                return Err(at
                    .at("entries")
                    .invalid("a descriptor needs at least one entry"));
            }
            let entries = d
                .entries
                .iter()
                .enumerate()
                .map(|(j, e)| {
                    if e.key.is_empty() {
                        return Err(at
                            .at(format!("entries[{j}].key"))
                            .invalid("must not be empty"));
                    }
                    Ok((
                        Arc::from(e.key.as_str()),
                        (!e.value.is_empty()).then(|| Arc::from(e.value.as_str())),
                    ))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let Some(b) = &d.token_bucket else {
                return Err(at.at("token_bucket").invalid("missing"));
            };
            Ok(Descriptor {
                entries,
                bucket: bucket(&at.at("token_bucket"), b)?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !descriptors.is_empty() && proto.rate_limits.is_empty() {
        return Err(at.at("rate_limits").unsupported(
            "descriptors made by the route's or virtual host's rate_limits (set the filter's own)",
        ));
    }
    let rate_limits = proto
        .rate_limits
        .iter()
        .enumerate()
        .map(|(i, r)| rate_limit(&at.at(format!("rate_limits[{i}]")), r))
        .collect::<Result<Vec<_>, _>>()?;
    let status = proto
        .status
        .as_ref()
        .map(|s| s.code)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c))
        .unwrap_or(429);
    let max_dynamic = proto
        .max_dynamic_descriptors
        .map_or(DEFAULT_MAX_DYNAMIC_DESCRIPTORS, |v| v.value);
    if max_dynamic == 0 {
        return Err(at
            .at("max_dynamic_descriptors")
            .invalid("must be at least 1"));
    }
    Ok(LocalRateLimit {
        stat_prefix: proto.stat_prefix.as_str().into(),
        status,
        default_bucket,
        always_consume_default: proto
            .always_consume_default_token_bucket
            .is_none_or(|b| b.value),
        descriptors,
        rate_limits,
        x_ratelimit_headers,
        retry_after: proto.enable_retry_after_header,
        max_dynamic_descriptors: max_dynamic as usize,
    })
}

fn everything(p: &RuntimeFractionalPercent) -> bool {
    p.default_value
        .as_ref()
        .is_some_and(|f: &FractionalPercent| {
            let whole = match DenominatorType::try_from(f.denominator) {
                Ok(DenominatorType::Hundred) => 100,
                Ok(DenominatorType::TenThousand) => 10_000,
                Ok(DenominatorType::Million) => 1_000_000,
                Err(_) => return false,
            };
            f.numerator >= whole
        })
}

fn bucket(at: &At<'_>, b: &PbTokenBucket) -> Result<TokenBucket, ConvertError> {
    if b.max_tokens == 0 {
        return Err(at.at("max_tokens").invalid("must be at least 1"));
    }
    let tokens_per_fill = b.tokens_per_fill.map_or(1, |v| v.value);
    if tokens_per_fill == 0 {
        return Err(at.at("tokens_per_fill").invalid("must be at least 1"));
    }
    let Some(interval) = &b.fill_interval else {
        return Err(at.at("fill_interval").invalid("missing"));
    };
    let fill_interval = duration(&at.at("fill_interval"), interval)?;
    if fill_interval < MIN_FILL_INTERVAL {
        return Err(at
            .at("fill_interval")
            .invalid(format!("{fill_interval:?} is shorter than 50ms")));
    }
    Ok(TokenBucket {
        max_tokens: b.max_tokens,
        tokens_per_fill,
        fill_interval,
    })
}

fn rate_limit(at: &At<'_>, r: &PbRateLimit) -> Result<Vec<RateLimitAction>, ConvertError> {
    let mut rest = r.clone();
    rest.actions.clear();
    if rest != PbRateLimit::default() {
        return Err(at.unsupported(
            "rate limit settings other than actions (stage, disable_key, limit, hits_addend, \
             apply_on_stream_done, x_ratelimit_option)",
        ));
    }
    if r.actions.is_empty() {
        return Err(at
            .at("actions")
            .invalid("a rate limit needs at least one action"));
    }
    r.actions
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let at = at.at(format!("actions[{i}]"));
            let key = |k: &str, default: &str| -> Arc<str> {
                if k.is_empty() {
                    default.into()
                } else {
                    k.into()
                }
            };
            match &a.action_specifier {
                Some(action::ActionSpecifier::GenericKey(g)) => {
                    if g.descriptor_value.is_empty() {
                        return Err(at
                            .at("generic_key.descriptor_value")
                            .invalid("must not be empty"));
                    }
                    Ok(RateLimitAction::GenericKey {
                        key: key(&g.descriptor_key, "generic_key"),
                        value: g.descriptor_value.as_str().into(),
                    })
                }
                Some(action::ActionSpecifier::HeaderValueMatch(h)) => {
                    let at = at.at("header_value_match");
                    if !h.default_value.is_empty() {
                        return Err(at.at("default_value").unsupported("a default value"));
                    }
                    if h.descriptor_value.is_empty() {
                        return Err(at.at("descriptor_value").invalid("must not be empty"));
                    }
                    let headers = h
                        .headers
                        .iter()
                        .enumerate()
                        .map(|(j, m)| header_matcher(&at.at(format!("headers[{j}]")), m))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(RateLimitAction::HeaderValueMatch {
                        key: key(&h.descriptor_key, "header_match"),
                        value: h.descriptor_value.as_str().into(),
                        expect_match: h.expect_match.is_none_or(|b| b.value),
                        headers,
                    })
                }
                Some(action::ActionSpecifier::RequestHeaders(h)) => {
                    let at = at.at("request_headers");
                    if h.header_name.is_empty() {
                        return Err(at.at("header_name").invalid("must not be empty"));
                    }
                    if h.descriptor_key.is_empty() {
                        return Err(at.at("descriptor_key").invalid("must not be empty"));
                    }
                    Ok(RateLimitAction::RequestHeaders {
                        header: h.header_name.to_ascii_lowercase().into(),
                        key: h.descriptor_key.as_str().into(),
                        skip_if_absent: h.skip_if_absent,
                    })
                }
                Some(action::ActionSpecifier::RemoteAddress(_)) => {
                    Ok(RateLimitAction::RemoteAddress)
                }
                Some(_) => Err(at.unsupported(
                    "rate limit actions other than generic_key, header_value_match, \
                     request_headers and remote_address",
                )),
                None => Err(at.invalid("no action")),
            }
        })
        .collect()
}
