//! Envoy's local rate limit filter: the request's descriptors (made by the filter's actions)
//! pick token buckets; the slowest-filling is consumed first, and the first empty one answers
//! the request (429 by default). Buckets live in the runtime across config updates that leave
//! the filter's config as it was.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use lru::LruCache;

use super::routing::{RequestView, header_matches};
use crate::body::ProxyBody;
use crate::config::{LocalRateLimit, RateLimitAction, TokenBucket};

/// The body of a limited request's answer, as Envoy's.
pub const LIMITED_BODY: &str = "local_rate_limited";
const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The filter's counters (Envoy's `http_local_rate_limit.ok` and `.rate_limited`), kept across
/// config updates by stat prefix.
#[derive(Debug, Default)]
pub struct Counters {
    pub ok: AtomicU64,
    pub rate_limited: AtomicU64,
}

/// One bucket's state: tokens refill continuously at the configured rate.
#[derive(Debug)]
struct Bucket {
    spec: TokenBucket,
    state: Mutex<(f64, Instant)>,
}

/// What one bucket said: after the request, how many whole tokens are left and how many
/// seconds until the next one (0 while tokens remain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
}

impl Bucket {
    fn new(spec: TokenBucket, now: Instant) -> Bucket {
        Bucket {
            spec,
            state: Mutex::new((f64::from(spec.max_tokens), now)),
        }
    }

    fn consume(&self, now: Instant) -> Outcome {
        let rate = self.spec.fill_rate();
        let max = f64::from(self.spec.max_tokens);
        let mut state = lock(&self.state);
        let (tokens, at) = *state;
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        let mut tokens = (tokens + elapsed * rate).min(max);
        let allowed = tokens >= 1.0;
        if allowed {
            tokens -= 1.0;
        }
        *state = (tokens, now.max(at));
        let remaining = tokens.floor() as u32;
        let reset_secs = if remaining >= 1 {
            0
        } else {
            ((1.0 - tokens) / rate).ceil() as u64
        };
        Outcome {
            allowed,
            limit: self.spec.max_tokens,
            remaining,
            reset_secs,
        }
    }
}

/// A request's descriptor: its entries in order.
type Entries = Vec<(Arc<str>, String)>;

/// The filter's state for one filter chain: its config and buckets.
#[derive(Debug)]
pub struct Limiter {
    pub config: Arc<LocalRateLimit>,
    pub counters: Arc<Counters>,
    default: Option<Bucket>,
    /// Per configured descriptor: its bucket, or (a wildcard) a bucket per value.
    buckets: Vec<Buckets>,
}

#[derive(Debug)]
enum Buckets {
    Fixed(Arc<Bucket>),
    Dynamic(Mutex<LruCache<Entries, Arc<Bucket>>>),
}

/// What the filter does with a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The bucket the headers report on; `None` when no bucket counted the request.
    pub outcome: Option<Outcome>,
}

impl Limiter {
    pub fn new(config: Arc<LocalRateLimit>, counters: Arc<Counters>) -> Limiter {
        let now = Instant::now();
        let capacity =
            NonZeroUsize::new(config.max_dynamic_descriptors).unwrap_or(NonZeroUsize::MIN);
        Limiter {
            default: config.default_bucket.map(|b| Bucket::new(b, now)),
            buckets: config
                .descriptors
                .iter()
                .map(|d| {
                    if d.is_wildcard() {
                        Buckets::Dynamic(Mutex::new(LruCache::new(capacity)))
                    } else {
                        Buckets::Fixed(Arc::new(Bucket::new(d.bucket, now)))
                    }
                })
                .collect(),
            config,
            counters,
        }
    }

    /// Decides on a request (`remote`: the client's address as Envoy's `remote_address`
    /// action reads it) and counts the decision.
    pub fn check(&self, req: &RequestView<'_>, remote: IpAddr) -> Decision {
        let now = Instant::now();
        let mut matched: Vec<Arc<Bucket>> = Vec::new();
        for actions in &self.config.rate_limits {
            let Some(entries) = descriptor(actions, req, remote) else {
                continue;
            };
            if let Some(bucket) = self.bucket_for(entries, now) {
                matched.push(bucket);
            }
        }
        // The slowest-filling bucket first, as Envoy orders them.
        matched.sort_by(|a, b| a.spec.fill_rate().total_cmp(&b.spec.fill_rate()));
        let mut first = None;
        for bucket in &matched {
            let outcome = bucket.consume(now);
            if !outcome.allowed {
                return self.count(Decision {
                    allowed: false,
                    outcome: Some(outcome),
                });
            }
            first = first.or(Some(outcome));
        }
        if (matched.is_empty() || self.config.always_consume_default)
            && let Some(bucket) = &self.default
        {
            let outcome = bucket.consume(now);
            if !outcome.allowed {
                return self.count(Decision {
                    allowed: false,
                    outcome: Some(outcome),
                });
            }
            first = first.or(Some(outcome));
        }
        self.count(Decision {
            allowed: true,
            outcome: first,
        })
    }

    fn count(&self, d: Decision) -> Decision {
        let counter = if d.allowed {
            &self.counters.ok
        } else {
            &self.counters.rate_limited
        };
        counter.fetch_add(1, Ordering::Relaxed);
        d
    }

    /// The bucket a request descriptor falls in: an exact descriptor's, else the first
    /// wildcard's for its values.
    fn bucket_for(&self, entries: Entries, now: Instant) -> Option<Arc<Bucket>> {
        let descriptors = &self.config.descriptors;
        let exact = descriptors
            .iter()
            .position(|d| !d.is_wildcard() && d.matches(&entries));
        let index = exact.or_else(|| {
            descriptors
                .iter()
                .position(|d| d.is_wildcard() && d.matches(&entries))
        })?;
        match &self.buckets[index] {
            Buckets::Fixed(b) => Some(b.clone()),
            Buckets::Dynamic(cache) => {
                let mut cache = lock(cache);
                let spec = descriptors[index].bucket;
                Some(
                    cache
                        .get_or_insert(entries, || Arc::new(Bucket::new(spec, now)))
                        .clone(),
                )
            }
        }
    }

    /// The answer to a request the filter refused.
    pub fn refusal(&self, outcome: Option<Outcome>) -> Response<ProxyBody> {
        let status =
            StatusCode::from_u16(self.config.status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
        let mut resp = super::local(status, LIMITED_BODY);
        if let Some(o) = outcome {
            if self.config.retry_after && status == StatusCode::TOO_MANY_REQUESTS {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(o.reset_secs.max(1)));
            }
            self.mark(resp.headers_mut(), Some(o));
        }
        resp
    }

    /// The `x-ratelimit-*` headers on a response the filter counted.
    pub fn mark(&self, headers: &mut HeaderMap, outcome: Option<Outcome>) {
        if let (true, Some(o)) = (self.config.x_ratelimit_headers, outcome) {
            headers.insert(LIMIT, HeaderValue::from(o.limit));
            headers.insert(REMAINING, HeaderValue::from(o.remaining));
            headers.insert(RESET, HeaderValue::from(o.reset_secs));
        }
    }
}

/// The descriptor `actions` make for a request, or `None` when one of them makes none.
fn descriptor(
    actions: &[RateLimitAction],
    req: &RequestView<'_>,
    remote: IpAddr,
) -> Option<Entries> {
    let mut entries = Vec::with_capacity(actions.len());
    for action in actions {
        match action {
            RateLimitAction::GenericKey { key, value } => {
                entries.push((key.clone(), value.to_string()));
            }
            RateLimitAction::HeaderValueMatch {
                key,
                value,
                expect_match,
                headers,
            } => {
                let all = headers.iter().all(|h| header_matches(h, req));
                if all != *expect_match {
                    return None;
                }
                entries.push((key.clone(), value.to_string()));
            }
            RateLimitAction::RequestHeaders {
                header,
                key,
                skip_if_absent,
            } => match req.headers.get(&**header).and_then(|v| v.to_str().ok()) {
                Some(v) => entries.push((key.clone(), v.to_string())),
                None if *skip_if_absent => {}
                None => return None,
            },
            RateLimitAction::RemoteAddress => {
                entries.push((Arc::from("remote_address"), remote.to_string()));
            }
        }
    }
    Some(entries)
}

/// The client's address as Envoy's connection manager sets it without `use_remote_address`:
/// the last `x-forwarded-for` entry, else the connection's peer.
pub fn remote_address(headers: &HeaderMap, peer: IpAddr) -> IpAddr {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Descriptor, HeaderMatch, HeaderMatcher, StringMatch};

    fn bucket(max: u32, per: u32, secs: u64) -> TokenBucket {
        TokenBucket {
            max_tokens: max,
            tokens_per_fill: per,
            fill_interval: Duration::from_secs(secs),
        }
    }

    fn config(
        descriptors: Vec<Descriptor>,
        rate_limits: Vec<Vec<RateLimitAction>>,
    ) -> LocalRateLimit {
        LocalRateLimit {
            stat_prefix: "test".into(),
            status: 429,
            default_bucket: None,
            always_consume_default: false,
            descriptors,
            rate_limits,
            x_ratelimit_headers: true,
            retry_after: true,
            max_dynamic_descriptors: 2,
        }
    }

    fn entry(k: &str, v: Option<&str>) -> (Arc<str>, Option<Arc<str>>) {
        (k.into(), v.map(Arc::from))
    }

    fn view<'a>(path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method: "GET",
            authority: "a",
            scheme: "http",
            path,
            query: None,
            headers,
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn a_bucket_refills_continuously_and_reports_when_the_next_token_comes() {
        let b = Bucket::new(bucket(3, 3, 60), Instant::now());
        let t0 = Instant::now();
        let got: Vec<Outcome> = (0..4).map(|_| b.consume(t0)).collect();
        assert_eq!(
            got.iter()
                .map(|o| (o.allowed, o.remaining))
                .collect::<Vec<_>>(),
            [(true, 2), (true, 1), (true, 0), (false, 0)]
        );
        assert_eq!((got[1].reset_secs, got[2].reset_secs), (0, 20));
        // 20 s is one token at 3 per minute.
        let later = b.consume(t0 + Duration::from_secs(21));
        assert!(later.allowed, "{later:?}");
        assert!(!b.consume(t0 + Duration::from_secs(21)).allowed);
    }

    #[test]
    fn matched_descriptors_split_by_header_with_a_shared_bucket_for_requests_without_it() {
        let descriptors = vec![
            Descriptor {
                entries: vec![entry("limit", Some("api"))],
                bucket: bucket(1, 1, 60),
            },
            Descriptor {
                entries: vec![entry("limit", Some("api")), entry("key", None)],
                bucket: bucket(2, 2, 60),
            },
        ];
        let actions = vec![vec![
            RateLimitAction::HeaderValueMatch {
                key: "limit".into(),
                value: "api".into(),
                expect_match: true,
                headers: vec![HeaderMatcher {
                    name: ":path".into(),
                    matches: HeaderMatch::Value(StringMatch::Prefix {
                        value: "/api".into(),
                        ignore_case: false,
                    }),
                    invert: false,
                }],
            },
            RateLimitAction::RequestHeaders {
                header: "x-key".into(),
                key: "key".into(),
                skip_if_absent: true,
            },
        ]];
        let limiter = Limiter::new(Arc::new(config(descriptors, actions)), Arc::default());
        let none = HeaderMap::new();
        let mut alice = HeaderMap::new();
        alice.insert("x-key", HeaderValue::from_static("alice"));
        let mut bob = HeaderMap::new();
        bob.insert("x-key", HeaderValue::from_static("bob"));
        let allowed = |path: &str, h: &HeaderMap| limiter.check(&view(path, h), LOCAL).allowed;
        assert!(allowed("/api", &none));
        assert!(!allowed("/api", &none), "no key: the shared bucket of 1");
        assert!(allowed("/api", &alice) && allowed("/api", &alice));
        assert!(!allowed("/api", &alice), "alice's own bucket of 2");
        assert!(allowed("/api", &bob), "bob's bucket is his own");
        let other = limiter.check(&view("/other", &none), LOCAL);
        assert_eq!(
            other,
            Decision {
                allowed: true,
                outcome: None
            },
            "nothing counts /other"
        );
        assert_eq!(limiter.counters.rate_limited.load(Ordering::Relaxed), 2);
        assert_eq!(limiter.counters.ok.load(Ordering::Relaxed), 5);
        // Two values fit; a third evicts the least recently used (alice), whose bucket is new.
        let mut carol = HeaderMap::new();
        carol.insert("x-key", HeaderValue::from_static("carol"));
        assert!(allowed("/api", &carol));
        assert!(allowed("/api", &alice), "alice was evicted and starts full");
    }

    #[test]
    fn the_slowest_bucket_is_consumed_first_and_a_refusal_stops_there() {
        let descriptors = vec![
            Descriptor {
                entries: vec![entry("a", Some("1"))],
                bucket: bucket(5, 5, 1),
            },
            Descriptor {
                entries: vec![entry("b", Some("1"))],
                bucket: bucket(1, 1, 60),
            },
        ];
        let key = |k: &str| {
            vec![RateLimitAction::GenericKey {
                key: k.into(),
                value: "1".into(),
            }]
        };
        let limiter = Limiter::new(
            Arc::new(config(descriptors, vec![key("a"), key("b")])),
            Arc::default(),
        );
        let h = HeaderMap::new();
        let first = limiter.check(&view("/", &h), LOCAL);
        assert_eq!(first.outcome.map(|o| o.limit), Some(1), "{first:?}");
        let second = limiter.check(&view("/", &h), LOCAL);
        assert!(!second.allowed);
        let resp = limiter.refusal(second.outcome);
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "60");
        assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
    }

    #[test]
    fn the_remote_address_is_the_last_forwarded_hop_else_the_peer() {
        let mut h = HeaderMap::new();
        assert_eq!(remote_address(&h, LOCAL), LOCAL);
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("10.0.0.1, 10.0.0.2"),
        );
        assert_eq!(remote_address(&h, LOCAL).to_string(), "10.0.0.2");
        h.append("x-forwarded-for", HeaderValue::from_static("bogus"));
        assert_eq!(remote_address(&h, LOCAL), LOCAL);
    }
}
