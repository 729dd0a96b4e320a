//! Authorization as Envoy's RBAC filters decide it: the policies (`config::Rbac`) evaluated on a
//! request or a connection.
//!
//! A filter's policies are kept in name order, which is also the order Envoy examines them in
//! (a `std::map`), so the policy a decision names is the one Envoy would name.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderMap;

use crate::config::{
    HeaderMatch, HeaderMatcher, MetadataMatcher, Permission, Policy, Principal, Rbac, RbacAction,
    ValueMatch,
};

/// What Envoy answers a request an RBAC filter denies.
pub const DENIED_STATUS: u16 = 403;
pub const DENIED_BODY: &str = "RBAC: access denied";

/// What a decision looks at, borrowed from the connection and the request.
#[derive(Clone, Copy, Debug)]
pub struct RbacInput<'a> {
    pub method: &'a str,
    /// The path as sent, without query and fragment (straitd asks for no normalization).
    pub path: &'a str,
    /// The Host or :authority, as sent (port included).
    pub authority: &'a str,
    pub headers: &'a HeaderMap,
    /// The local port of the downstream connection (the listener's port), as Envoy matches it.
    pub destination_port: u16,
    /// The TCP peer (`direct_remote_ip`).
    pub direct_remote_ip: IpAddr,
    /// `None` on plaintext. On TLS, the peer certificate's name as Envoy's `principal_name`
    /// sees it: its URI SAN, else its DNS SAN, else its subject.
    pub principal: Option<&'a str>,
    /// The jwt_authn filter's metadata namespace (verified payloads), if it wrote any.
    pub jwt: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// The outcome of one filter, or of a chain of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    pub allowed: bool,
    /// The policy that decided: the ALLOW policy that allowed, or the DENY policy that denied.
    /// `None` when no policy matched (denied by an ALLOW filter, or allowed with no ALLOW one).
    pub policy: Option<&'a str>,
    /// The LOG (AUDIT) policy that matched, if any: the request should be logged.
    pub audit: Option<&'a str>,
}

// === impl Rbac ===

impl Rbac {
    pub fn evaluate<'a>(&'a self, input: &RbacInput<'_>) -> Decision<'a> {
        let matched = self
            .policies
            .iter()
            .find(|(_, p)| p.matches(input))
            .map(|(name, _)| &**name);
        match self.action {
            RbacAction::Allow => Decision {
                allowed: matched.is_some(),
                policy: matched,
                audit: None,
            },
            RbacAction::Deny => Decision {
                allowed: matched.is_none(),
                policy: matched,
                audit: None,
            },
            RbacAction::Log => Decision {
                allowed: true,
                policy: None,
                audit: matched,
            },
        }
    }
}

/// Runs filters in order (Istio's: DENY, AUDIT, ALLOW) and stops at the first that denies.
pub fn authorize<'a>(filters: &'a [Rbac], input: &RbacInput<'_>) -> Decision<'a> {
    let mut out = Decision {
        allowed: true,
        policy: None,
        audit: None,
    };
    for filter in filters {
        let d = filter.evaluate(input);
        out.audit = out.audit.or(d.audit);
        if !d.allowed {
            return Decision {
                audit: out.audit,
                ..d
            };
        }
        if filter.action == RbacAction::Allow {
            out.policy = d.policy;
        }
    }
    out
}

// === impl Policy ===

impl Policy {
    pub fn matches(&self, input: &RbacInput<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(input))
            && self.principals.iter().any(|p| p.matches(input))
    }
}

impl Permission {
    pub fn matches(&self, input: &RbacInput<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::And(all) => all.iter().all(|p| p.matches(input)),
            Permission::Or(any) => any.iter().any(|p| p.matches(input)),
            Permission::Not(p) => !p.matches(input),
            Permission::Header(h) => header_matches(h, input),
            Permission::UrlPath(sm) => {
                // The contract is a path without them; stripping again costs nothing.
                let path = input.path.split(['?', '#']).next().unwrap_or_default();
                sm.matches(path)
            }
            Permission::DestinationPort(port) => input.destination_port == *port,
        }
    }
}

impl Principal {
    pub fn matches(&self, input: &RbacInput<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::And(all) => all.iter().all(|p| p.matches(input)),
            Principal::Or(any) => any.iter().any(|p| p.matches(input)),
            Principal::Not(p) => !p.matches(input),
            Principal::Authenticated(name) => input
                .principal
                .is_some_and(|peer| name.as_ref().is_none_or(|sm| sm.matches(peer))),
            Principal::DirectRemoteIp(cidr) => cidr.contains(input.direct_remote_ip),
            Principal::Metadata(m) => metadata_matches(m, input),
        }
    }
}

/// Envoy's metadata matcher on the request's dynamic metadata; jwt_authn's is the only
/// namespace a request has here (conversion refuses matchers on others).
fn metadata_matches(m: &MetadataMatcher, input: &RbacInput<'_>) -> bool {
    let mut path = m.path.iter();
    let value = path.next().and_then(|first| {
        let start = input.jwt?.get(&**first)?;
        path.try_fold(start, |v, key| v.get(&**key))
    });
    m.value.matches(value) != m.invert
}

impl ValueMatch {
    pub fn matches(&self, value: Option<&serde_json::Value>) -> bool {
        use serde_json::Value;
        match self {
            ValueMatch::String(sm) => matches!(value, Some(Value::String(s)) if sm.matches(s)),
            ValueMatch::Bool(b) => matches!(value, Some(Value::Bool(v)) if v == b),
            ValueMatch::Present(want) => value.is_some_and(|v| !v.is_null()) == *want,
            ValueMatch::ListOneOf(one) => matches!(
                value,
                Some(Value::Array(items)) if items.iter().any(|i| one.matches(Some(i)))
            ),
            ValueMatch::Or(any) => any.iter().any(|m| m.matches(value)),
        }
    }
}

/// Envoy's header match: repeated headers are one comma-joined value; a missing header matches
/// no value, inverted or not.
fn header_matches(h: &HeaderMatcher, input: &RbacInput<'_>) -> bool {
    let value = header_value(&h.name, input);
    let hit = match (&h.matches, value) {
        (HeaderMatch::Present(want), v) => v.is_some() == *want,
        (HeaderMatch::Value(_), None) => return false,
        (HeaderMatch::Value(sm), Some(v)) => sm.matches(&v),
    };
    hit != h.invert
}

/// Borrowed unless the header is repeated (or not UTF-8).
fn header_value<'a>(name: &str, input: &RbacInput<'a>) -> Option<Cow<'a, str>> {
    match name {
        ":method" => return Some(Cow::Borrowed(input.method)),
        // Envoy's request header map serves `host` as `:authority`.
        ":authority" | "host" => return Some(Cow::Borrowed(input.authority)),
        _ => {}
    }
    let text = |v: &'a http::HeaderValue| String::from_utf8_lossy(v.as_bytes());
    let mut values = input.headers.get_all(name).iter();
    let first = values.next()?;
    match values.next() {
        None => Some(text(first)),
        Some(second) => {
            let mut joined = format!("{},{}", text(first), text(second));
            for v in values {
                joined.push(',');
                joined.push_str(&text(v));
            }
            Some(Cow::Owned(joined))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::config::{Cidr, StringMatch};

    fn input(headers: &HeaderMap) -> RbacInput<'_> {
        RbacInput {
            method: "GET",
            path: "/",
            authority: "Ratings.Default:9080",
            headers,
            destination_port: 15006,
            direct_remote_ip: "10.1.2.3".parse().expect("ip"),
            principal: None,
            jwt: None,
        }
    }

    fn header(name: &str, matches: HeaderMatch) -> Permission {
        Permission::Header(HeaderMatcher {
            name: name.into(),
            matches,
            invert: false,
        })
    }

    fn filter(action: RbacAction, policies: &[(&str, Permission)]) -> Rbac {
        Rbac {
            action,
            policies: policies
                .iter()
                .map(|(name, p)| {
                    (
                        Arc::from(*name),
                        Policy {
                            permissions: Arc::from([p.clone()]),
                            principals: Arc::from([Principal::Any]),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn cidr_masks_and_keeps_families_apart() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let c = Cidr::new(ip("10.1.2.3"), 8).expect("valid");
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.200.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(
            c.contains(ip("::ffff:10.0.0.1")),
            "IPv4-mapped counts as IPv4"
        );
        assert!(!c.contains(ip("::1")));
        let all = Cidr::new(ip("0.0.0.0"), 0).expect("valid");
        assert!(all.contains(ip("255.255.255.255")));
        assert!(!all.contains(ip("2001:db8::1")));
        let v6 = Cidr::new(ip("2001:db8::1"), 32).expect("valid");
        assert!(v6.contains(ip("2001:db8:ffff::")));
        assert!(Cidr::new(ip("10.0.0.1"), 33).is_none());
        assert!(Cidr::new(ip("::1"), 129).is_none());
        let host = Cidr::new(ip("10.0.0.1"), 32).expect("valid");
        assert!(host.contains(ip("10.0.0.1")) && !host.contains(ip("10.0.0.2")));
    }

    #[test]
    fn headers_join_repeats_and_read_pseudo_headers() {
        let mut h = HeaderMap::new();
        h.append("x-tag", "a".parse().expect("value"));
        h.append("x-tag", "b".parse().expect("value"));
        let joined = header(
            "x-tag",
            HeaderMatch::Value(StringMatch::Exact {
                value: "a,b".into(),
                ignore_case: false,
            }),
        );
        assert!(joined.matches(&input(&h)));
        let host = header(
            "host",
            HeaderMatch::Value(StringMatch::Prefix {
                value: "ratings.default".into(),
                ignore_case: true,
            }),
        );
        assert!(host.matches(&input(&h)), "host is :authority, case folded");
        let absent = |invert| {
            Permission::Header(HeaderMatcher {
                name: "x-missing".into(),
                matches: HeaderMatch::Value(StringMatch::Exact {
                    value: "v".into(),
                    ignore_case: false,
                }),
                invert,
            })
        };
        assert!(!absent(false).matches(&input(&h)));
        assert!(
            !absent(true).matches(&input(&h)),
            "missing matches no inversion"
        );
        assert!(header(":method", HeaderMatch::Present(true)).matches(&input(&h)));
    }

    #[test]
    fn ignore_case_matches_without_copying() {
        let sm = |m: fn(Arc<str>) -> StringMatch, input: &str| m("ab".into()).matches(input);
        let exact = |value| StringMatch::Exact {
            value,
            ignore_case: true,
        };
        let suffix = |value| StringMatch::Suffix {
            value,
            ignore_case: true,
        };
        let contains = |value| StringMatch::Contains {
            value,
            ignore_case: true,
        };
        assert!(sm(exact, "AB") && !sm(exact, "ABC"));
        assert!(sm(suffix, "xAb") && !sm(suffix, "b"));
        assert!(sm(contains, "xaBy") && !sm(contains, "a-b"));
        // Multi-byte input does not split a character.
        assert!(!sm(suffix, "é") && sm(contains, "éAB"));
    }

    #[test]
    fn actions_and_the_chain() {
        let h = HeaderMap::new();
        let get = header(
            ":method",
            HeaderMatch::Value(StringMatch::Exact {
                value: "GET".into(),
                ignore_case: false,
            }),
        );
        let deny = filter(
            RbacAction::Deny,
            &[("b-get", get.clone()), ("c", Permission::Any)],
        );
        let audit = filter(RbacAction::Log, &[("audit", Permission::Any)]);
        let allow = filter(RbacAction::Allow, &[("a", Permission::Not(Box::new(get)))]);
        let req = input(&h);
        // The first matching policy by name decides, as in Envoy.
        assert_eq!(deny.evaluate(&req).policy, Some("b-get"));
        assert!(!allow.evaluate(&req).allowed);
        let chain = [audit.clone(), allow.clone()];
        assert_eq!(
            authorize(&chain, &req),
            Decision {
                allowed: false,
                policy: None,
                audit: Some("audit")
            }
        );
        let post = RbacInput {
            method: "POST",
            ..req
        };
        assert_eq!(
            authorize(&chain, &post),
            Decision {
                allowed: true,
                policy: Some("a"),
                audit: Some("audit")
            }
        );
        let none = Rbac {
            action: RbacAction::Allow,
            policies: Arc::from([]),
        };
        assert!(
            !none.evaluate(&post).allowed,
            "ALLOW with no policy allows nothing"
        );
        assert!(authorize(&[], &post).allowed);
        let json = serde_json::to_value(&deny).expect("serialize");
        assert_eq!(json["action"], "deny");
        assert_eq!(json["policies"]["c"]["permissions"][0], "any");
    }
}
