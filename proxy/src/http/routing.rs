//! Picks a virtual host by Host and a route by path, headers and query, as Envoy does.

use http::HeaderMap;

use crate::config::{
    HeaderMatch, HeaderMatcher, PathMatch, QueryMatcher, Route, RouteConfig, RouteMatch,
    VirtualHost,
};

/// What a route match looks at, borrowed from the request.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The Host (or :authority), as sent.
    pub authority: &'a str,
    pub scheme: &'a str,
    /// The path without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The virtual host for `host`: an exact domain, else the longest `*.suffix`, else the longest
/// `prefix.*`, else `*`. Case-insensitive; `host` is matched as given (with its port, unless the
/// listener strips it).
pub fn virtual_host<'a>(rc: &'a RouteConfig, host: &str) -> Option<&'a VirtualHost> {
    // Domains are lowercase (conversion makes them so); compare without copying `host`.
    let host = host.as_bytes();
    let mut suffix: Option<(usize, &VirtualHost)> = None;
    let mut prefix: Option<(usize, &VirtualHost)> = None;
    let mut any: Option<&VirtualHost> = None;
    for vh in rc.virtual_hosts.iter() {
        for d in vh.domains.iter() {
            let d: &str = d;
            if host.eq_ignore_ascii_case(d.as_bytes()) {
                return Some(vh);
            }
            if d == "*" {
                any = any.or(Some(vh));
            } else if let Some(s) = d.strip_prefix('*') {
                if host.len() > s.len()
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
                    && suffix.is_none_or(|(l, _)| s.len() > l)
                {
                    suffix = Some((s.len(), vh));
                }
            } else if let Some(p) = d.strip_suffix('*')
                && host.len() > p.len()
                && host[..p.len()].eq_ignore_ascii_case(p.as_bytes())
                && prefix.is_none_or(|(l, _)| p.len() > l)
            {
                prefix = Some((p.len(), vh));
            }
        }
    }
    suffix.or(prefix).map(|(_, vh)| vh).or(any)
}

/// The first route of `vh` that matches.
pub fn route<'a>(vh: &'a VirtualHost, req: &RequestView<'_>) -> Option<&'a Route> {
    vh.routes.iter().find(|r| matches(&r.matcher, req))
}

pub fn matches(m: &RouteMatch, req: &RequestView<'_>) -> bool {
    let path_ok = match &m.path {
        PathMatch::Prefix(p) => {
            if m.case_sensitive {
                req.path.starts_with(&**p)
            } else {
                req.path.len() >= p.len()
                    && req.path.is_char_boundary(p.len())
                    && req.path[..p.len()].eq_ignore_ascii_case(p)
            }
        }
        PathMatch::Exact(p) => {
            if m.case_sensitive {
                req.path == &**p
            } else {
                req.path.eq_ignore_ascii_case(p)
            }
        }
        PathMatch::Regex(r) => r.matches(req.path),
    };
    path_ok
        && m.headers.iter().all(|h| header_matches(h, req))
        && m.query.iter().all(|q| query_matches(q, req.query))
}

pub(crate) fn header_matches(h: &HeaderMatcher, req: &RequestView<'_>) -> bool {
    let value: Option<String> = match &*h.name {
        ":method" => Some(req.method.to_string()),
        ":authority" | "host" => Some(req.authority.to_string()),
        ":scheme" => Some(req.scheme.to_string()),
        ":path" => Some(match req.query {
            Some(q) => format!("{}?{q}", req.path),
            None => req.path.to_string(),
        }),
        name => {
            // Envoy matches repeated headers as one comma-joined value.
            let values: Vec<&str> = req
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        }
    };
    let hit = match (&h.matches, &value) {
        (HeaderMatch::Present(want), v) => v.is_some() == *want,
        (HeaderMatch::Value(_), None) => {
            // A missing header never matches, inverted or not (Envoy).
            return false;
        }
        (HeaderMatch::Value(sm), Some(v)) => sm.matches(v),
    };
    hit != h.invert
}

fn query_matches(q: &QueryMatcher, query: Option<&str>) -> bool {
    let found = query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == &*q.name).then_some(v)
    });
    match (&q.value, found) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(sm), Some(v)) => sm.matches(v),
    }
}

/// Host without its port (`a:80` -> `a`, `[::1]:80` -> `[::1]`).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::config::StringMatch;

    use super::*;
    use crate::config::{Action, HeaderChanges, Pattern};

    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| Arc::from(*d)).collect(),
            routes: Arc::from([]),
            require_tls: false,
        }
    }

    fn rc(hosts: Vec<VirtualHost>) -> RouteConfig {
        RouteConfig {
            name: "rc".into(),
            virtual_hosts: hosts.into(),
        }
    }

    fn view<'a>(path: &'a str, query: Option<&'a str>, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method: "GET",
            authority: "reviews:9080",
            scheme: "http",
            path,
            query,
            headers,
        }
    }

    fn route_with(m: RouteMatch) -> Route {
        Route {
            name: "r".into(),
            matcher: m,
            action: Action::Direct {
                status: 200,
                body: None,
            },
            headers: HeaderChanges::default(),
            fault: None,
            cors: None,
        }
    }

    fn prefix(p: &str) -> RouteMatch {
        RouteMatch {
            path: PathMatch::Prefix(p.into()),
            case_sensitive: true,
            headers: Arc::from([]),
            query: Arc::from([]),
        }
    }

    #[test]
    fn domains_exact_then_suffix_then_prefix_then_any() {
        let config = rc(vec![
            vh("any", &["*"]),
            vh("prefix", &["api.*"]),
            vh("short-suffix", &["*.com"]),
            vh("suffix", &["*.example.com"]),
            vh("exact", &["reviews", "reviews:9080"]),
        ]);
        let name = |h: &str| virtual_host(&config, h).map(|v| v.name.to_string());
        assert_eq!(name("reviews").as_deref(), Some("exact"));
        assert_eq!(name("REVIEWS:9080").as_deref(), Some("exact"));
        assert_eq!(name("reviews:9081").as_deref(), Some("any"));
        assert_eq!(name("a.example.com").as_deref(), Some("suffix"));
        assert_eq!(name("a.other.com").as_deref(), Some("short-suffix"));
        assert_eq!(name("api.example.org").as_deref(), Some("prefix"));
        // A suffix wildcard wins over a prefix wildcard.
        assert_eq!(name("api.example.com").as_deref(), Some("suffix"));
        assert_eq!(name("nosuch").as_deref(), Some("any"));
        let no_any = rc(vec![vh("exact", &["reviews"])]);
        assert!(virtual_host(&no_any, "nosuch").is_none());
        // `*.example.com` does not match `example.com` itself.
        let only_suffix = rc(vec![vh("suffix", &["*.example.com"])]);
        assert!(virtual_host(&only_suffix, ".example.com").is_none());
        assert!(virtual_host(&only_suffix, "example.com").is_none());
    }

    #[test]
    fn paths_prefix_exact_regex_and_case() {
        let h = HeaderMap::new();
        assert!(matches(&prefix("/api"), &view("/api/v1", None, &h)));
        assert!(!matches(&prefix("/api"), &view("/API/v1", None, &h)));
        let mut insensitive = prefix("/api");
        insensitive.case_sensitive = false;
        assert!(matches(&insensitive, &view("/API/v1", None, &h)));
        let mut exact = prefix("/");
        exact.path = PathMatch::Exact("/login".into());
        assert!(matches(&exact, &view("/login", Some("a=b"), &h)));
        assert!(!matches(&exact, &view("/login/x", None, &h)));
        let mut regex = prefix("/");
        regex.path = PathMatch::Regex(Pattern::new("/products/[0-9]+").expect("valid"));
        assert!(matches(&regex, &view("/products/12", None, &h)));
        // The whole path must match.
        assert!(!matches(&regex, &view("/products/12/x", None, &h)));
    }

    #[test]
    fn headers_exact_prefix_regex_present_and_invert() {
        let mut h = HeaderMap::new();
        h.insert("end-user", "jason".parse().expect("valid"));
        let m = |matches: HeaderMatch, invert: bool| {
            let mut r = prefix("/");
            r.headers = Arc::from([HeaderMatcher {
                name: "end-user".into(),
                matches,
                invert,
            }]);
            r
        };
        let exact = |v: &str| {
            HeaderMatch::Value(StringMatch::Exact {
                value: v.into(),
                ignore_case: false,
            })
        };
        let req = view("/", None, &h);
        assert!(matches(&m(exact("jason"), false), &req));
        assert!(!matches(&m(exact("maria"), false), &req));
        assert!(matches(&m(exact("maria"), true), &req));
        assert!(matches(
            &m(
                HeaderMatch::Value(StringMatch::Prefix {
                    value: "ja".into(),
                    ignore_case: false
                }),
                false
            ),
            &req
        ));
        assert!(matches(
            &m(
                HeaderMatch::Value(StringMatch::Regex(Pattern::new("j.*n").expect("valid"))),
                false
            ),
            &req
        ));
        assert!(matches(&m(HeaderMatch::Present(true), false), &req));
        let empty = HeaderMap::new();
        let none = view("/", None, &empty);
        assert!(!matches(&m(exact("jason"), false), &none));
        // A missing header matches neither a value nor its inversion.
        assert!(!matches(&m(exact("jason"), true), &none));
        assert!(matches(&m(HeaderMatch::Present(true), true), &none));
        let r = route_with(m(exact("jason"), false));
        assert!(matches(&r.matcher, &req));
    }

    #[test]
    fn query_parameters() {
        let h = HeaderMap::new();
        let mut r = prefix("/");
        r.query = Arc::from([QueryMatcher {
            name: "v".into(),
            value: Some(StringMatch::Exact {
                value: "2".into(),
                ignore_case: false,
            }),
        }]);
        assert!(matches(&r, &view("/", Some("a=1&v=2"), &h)));
        assert!(!matches(&r, &view("/", Some("v=3"), &h)));
        assert!(!matches(&r, &view("/", None, &h)));
        r.query = Arc::from([QueryMatcher {
            name: "debug".into(),
            value: None,
        }]);
        assert!(matches(&r, &view("/", Some("debug"), &h)));
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("a:80"), "a");
        assert_eq!(strip_port("a"), "a");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
