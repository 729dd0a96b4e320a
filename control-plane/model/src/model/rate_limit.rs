//! RateLimitPolicy (`policy.strait.io`): local token buckets on the requests a workload's
//! sidecar receives, or a gateway serves. Each limit counts the requests its match selects, in
//! one bucket or one per value of a header or per source address.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::security::{ROOT_NAMESPACE, selects};
use super::virtual_service::{check_header_name, header_match, string_match};
use super::{HeaderMatch, StringMatch, spec_of};
use crate::error::{ObjectId, Report, ValidationError};
use crate::loader::{Object, Spec};
use crate::policy as wire;

/// Envoy refills a local rate limit's bucket no more often than this.
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitPolicy {
    pub id: ObjectId,
    /// `None`: namespace-wide (mesh-wide in the root namespace).
    pub selector: Option<BTreeMap<String, String>>,
    pub limits: Vec<RateLimit>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub name: String,
    pub matches: RateLimitMatch,
    /// Tokens added per `interval`, continuously (Envoy's token bucket).
    pub requests: u32,
    pub interval: Duration,
    /// The most tokens the bucket holds; it starts full.
    pub burst: u32,
    pub by: Option<RateLimitKey>,
}

/// Every part given must match; empty: every request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimitMatch {
    pub path: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub headers: Vec<(String, HeaderMatch)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateLimitKey {
    /// A bucket per value of this request header; requests without it share one.
    Header(String),
    /// A bucket per client address.
    SourceAddress,
}

impl RateLimitPolicy {
    /// Names a limit across the mesh: `namespace/policy/limit`.
    pub fn limit_id(&self, limit: &RateLimit) -> String {
        format!("{}/{}/{}", self.id.namespace, self.id.name, limit.name)
    }
}

/// The RateLimitPolicies that apply to a workload: the root namespace's and its own
/// namespace's whose selector (if any) matches its labels, in id order.
pub(super) fn for_workload<'a>(
    policies: &'a [RateLimitPolicy],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a RateLimitPolicy> {
    policies
        .iter()
        .filter(|p| p.id.namespace == namespace || p.id.namespace == ROOT_NAMESPACE)
        .filter(|p| selects(&p.selector, labels))
        .collect()
}

pub(super) fn build(
    objects: &[&Object],
    errors: &mut Vec<ValidationError>,
) -> Vec<RateLimitPolicy> {
    let mut out = Vec::new();
    for o in objects {
        let spec = spec_of(o, |s| match s {
            Spec::RateLimitPolicy(p) => Some(p),
            _ => None,
        });
        let mut r = Report {
            origin: &o.origin,
            object: Some(&o.id),
            errors,
        };
        let before = r.count();
        let selector = spec.selector.as_ref().map(|s| {
            if s.match_labels.is_empty() {
                r.error(
                    "spec.selector.matchLabels",
                    "a selector needs at least one label",
                );
            }
            s.match_labels.clone()
        });
        if spec.limits.is_empty() {
            r.error("spec.limits", "a RateLimitPolicy needs at least one limit");
        }
        let mut names = BTreeSet::new();
        let mut limits = Vec::new();
        for (i, l) in spec.limits.iter().enumerate() {
            let path = format!("spec.limits[{i}]");
            if !names.insert(l.name.as_str()) {
                r.error(
                    format!("{path}.name"),
                    format!("{:?} names another limit of this policy", l.name),
                );
            }
            if let Some(limit) = limit(l, &path, &mut r) {
                limits.push(limit);
            }
        }
        if r.count() == before {
            out.push(RateLimitPolicy {
                id: o.id.clone(),
                selector,
                limits,
            });
        }
    }
    out
}

fn limit(l: &wire::RateLimitSpec, path: &str, r: &mut Report<'_>) -> Option<RateLimit> {
    let before = r.count();
    if let Err(m) = crate::loader::check_dns_name(&l.name) {
        r.error(format!("{path}.name"), m);
    } else if l.name.contains('.') {
        r.error(
            format!("{path}.name"),
            format!("{:?} must not contain '.'", l.name),
        );
    }
    let requests = match l.requests {
        None => {
            r.error(format!("{path}.requests"), "required field is missing");
            0
        }
        Some(0) => {
            r.error(format!("{path}.requests"), "must be at least 1");
            0
        }
        Some(n) => n,
    };
    let interval = match &l.interval {
        None => {
            r.error(format!("{path}.interval"), "required field is missing");
            None
        }
        Some(s) => r.duration(s, format!("{path}.interval")),
    };
    if let Some(d) = interval {
        if d < MIN_INTERVAL {
            r.error(
                format!("{path}.interval"),
                format!("{d:?} is shorter than 50ms, the shortest refill Envoy allows"),
            );
        } else if d.subsec_nanos() % 1_000_000 != 0 {
            r.error(format!("{path}.interval"), "must be whole milliseconds");
        }
    }
    let burst = match l.burst {
        Some(0) => {
            r.error(format!("{path}.burst"), "must be at least 1");
            0
        }
        Some(n) => n,
        None => requests,
    };
    let mut matches = RateLimitMatch::default();
    if let Some(m) = &l.r#match {
        let at = format!("{path}.match");
        matches.path = m
            .uri
            .as_ref()
            .and_then(|s| string_match(s, &format!("{at}.uri"), false, r));
        matches.method = m
            .method
            .as_ref()
            .and_then(|s| string_match(s, &format!("{at}.method"), false, r));
        for (name, sm) in &m.headers {
            let hpath = format!("{at}.headers.{name}");
            if name.starts_with(':') {
                r.error(
                    &hpath,
                    "match the path and method with uri and method, not pseudo-headers",
                );
                continue;
            }
            if let Some(h) = header_match(name, sm, &hpath, r) {
                matches.headers.push((name.clone(), h));
            }
        }
    }
    let by = match &l.by {
        None => None,
        Some(k) => match (&k.header, k.source_address) {
            (Some(h), None | Some(false)) => {
                check_header_name(h, &format!("{path}.by.header"), false, r);
                Some(RateLimitKey::Header(h.clone()))
            }
            (None, Some(true)) => Some(RateLimitKey::SourceAddress),
            (None, None | Some(false)) => {
                r.error(format!("{path}.by"), "set header or sourceAddress: true");
                None
            }
            (Some(_), Some(true)) => {
                r.error(
                    format!("{path}.by"),
                    "set only one of header and sourceAddress",
                );
                None
            }
        },
    };
    (r.count() == before).then(|| RateLimit {
        name: l.name.clone(),
        matches,
        requests,
        interval: interval.unwrap_or(MIN_INTERVAL),
        burst,
        by,
    })
}
