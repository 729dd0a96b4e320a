//! Envoy's CORS filter: a preflight from an allowed origin is answered here, and responses to
//! an allowed origin say so.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::{ProxyBody, empty};
use crate::config::Cors;

const ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");
const REQUEST_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-private-network");

/// What the CORS filter does with a request.
pub(super) enum Decision<'a> {
    /// The request goes on; its response is marked for the allowed origin.
    Allow(Allowed<'a>),
    /// A preflight, answered by the proxy.
    Answer(Response<ProxyBody>),
}

/// A request from an allowed origin: its response carries the CORS headers.
#[derive(Debug)]
pub(super) struct Allowed<'a> {
    policy: &'a Cors,
    origin: HeaderValue,
}

/// The decision for a request on a route with `policy`; `None` when it is no CORS request of
/// an allowed origin and goes on untouched (including a preflight from an origin not allowed,
/// when such preflights are forwarded).
pub(super) fn decide<'a>(
    policy: &'a Cors,
    method: &Method,
    headers: &HeaderMap,
) -> Option<Decision<'a>> {
    let origin = headers.get(header::ORIGIN).filter(|o| !o.is_empty())?;
    let allowed = origin
        .to_str()
        .is_ok_and(|o| origin_allowed(policy, o))
        .then(|| origin.clone());
    let request_method = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .filter(|m| !m.is_empty());
    let preflight = *method == Method::OPTIONS && request_method.is_some();
    if !preflight {
        return allowed.map(|origin| Decision::Allow(Allowed { policy, origin }));
    }
    if allowed.is_none() && policy.forward_not_matching_preflights {
        return None;
    }
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    let echo = |h: &mut HeaderMap, name: HeaderName, asked: HeaderName| {
        let value = headers
            .get(asked)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static(""));
        h.insert(name, value);
    };
    if let Some(origin) = &allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    if policy.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    match &*policy.allow_methods {
        "" => {}
        "*" => echo(
            h,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_REQUEST_METHOD,
        ),
        methods => set(h, header::ACCESS_CONTROL_ALLOW_METHODS, methods),
    }
    match &*policy.allow_headers {
        "" => {}
        "*" => echo(
            h,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_REQUEST_HEADERS,
        ),
        names => set(h, header::ACCESS_CONTROL_ALLOW_HEADERS, names),
    }
    if !policy.max_age.is_empty() {
        set(h, header::ACCESS_CONTROL_MAX_AGE, &policy.max_age);
    }
    if policy.allow_private_network_access
        && headers
            .get(REQUEST_PRIVATE_NETWORK)
            .is_some_and(|v| v == "true")
    {
        h.insert(ALLOW_PRIVATE_NETWORK, HeaderValue::from_static("true"));
    }
    // Envoy's answer goes back through the filter's own response path too.
    if let Some(origin) = allowed {
        Allowed { policy, origin }.mark(h);
    }
    Some(Decision::Answer(resp))
}

/// Envoy's rule: allowed when a matcher matches the origin, or matches `*` itself.
fn origin_allowed(policy: &Cors, origin: &str) -> bool {
    policy
        .allow_origins
        .iter()
        .any(|m| m.matches("*") || m.matches(origin))
}

// === impl Allowed ===

impl Allowed<'_> {
    /// Marks a response for the allowed origin, replacing what the upstream said.
    pub(super) fn mark(&self, headers: &mut HeaderMap) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.origin.clone());
        if self.policy.allow_credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if !self.policy.expose_headers.is_empty()
            && let Ok(v) = HeaderValue::from_str(&self.policy.expose_headers)
        {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::{Pattern, StringMatch};

    fn policy() -> Cors {
        Cors {
            allow_origins: Arc::from([
                StringMatch::Exact {
                    value: "https://app.example".into(),
                    ignore_case: false,
                },
                StringMatch::Regex(Pattern::new(r"https://.*\.trusted\.example").expect("valid")),
            ]),
            allow_methods: "GET,POST".into(),
            allow_headers: "x-token,content-type".into(),
            expose_headers: "x-request-id".into(),
            max_age: "600".into(),
            allow_credentials: true,
            allow_private_network_access: false,
            forward_not_matching_preflights: true,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    const PREFLIGHT: [(&str, &str); 3] = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "x-token"),
    ];

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered() {
        let p = policy();
        let Some(Decision::Answer(resp)) = decide(&p, &Method::OPTIONS, &headers(&PREFLIGHT))
        else {
            panic!("answered");
        };
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert_eq!(h["access-control-allow-methods"], "GET,POST");
        assert_eq!(h["access-control-allow-headers"], "x-token,content-type");
        assert_eq!(h["access-control-max-age"], "600");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-expose-headers"], "x-request-id");
        assert!(!h.contains_key(header::VARY), "Envoy adds no Vary");
    }

    #[test]
    fn wildcards_echo_what_the_preflight_asks_for() {
        let mut p = policy();
        p.allow_methods = "*".into();
        p.allow_headers = "*".into();
        p.max_age = "".into();
        p.allow_credentials = false;
        let Some(Decision::Answer(resp)) = decide(&p, &Method::OPTIONS, &headers(&PREFLIGHT))
        else {
            panic!("answered");
        };
        let h = resp.headers();
        assert_eq!(h["access-control-allow-methods"], "POST");
        assert_eq!(h["access-control-allow-headers"], "x-token");
        assert!(!h.contains_key("access-control-max-age"));
        assert!(!h.contains_key("access-control-allow-credentials"));
    }

    #[test]
    fn a_preflight_from_another_origin_is_forwarded_or_answered_without_allowing() {
        let mut p = policy();
        let other = headers(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ]);
        assert!(decide(&p, &Method::OPTIONS, &other).is_none(), "forwarded");
        p.forward_not_matching_preflights = false;
        let Some(Decision::Answer(resp)) = decide(&p, &Method::OPTIONS, &other) else {
            panic!("answered");
        };
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(!resp.headers().contains_key("access-control-allow-origin"));
        assert!(!resp.headers().contains_key("access-control-expose-headers"));
        // Envoy still lists what the policy allows.
        assert_eq!(resp.headers()["access-control-allow-methods"], "GET,POST");
    }

    #[test]
    fn requests_from_allowed_origins_are_marked_and_others_are_not() {
        let p = policy();
        let get = headers(&[("origin", "https://a.trusted.example")]);
        let Some(Decision::Allow(allowed)) = decide(&p, &Method::GET, &get) else {
            panic!("allowed");
        };
        let mut h = headers(&[("access-control-allow-origin", "*")]);
        allowed.mark(&mut h);
        assert_eq!(
            h["access-control-allow-origin"],
            "https://a.trusted.example"
        );
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-expose-headers"], "x-request-id");
        for other in [
            headers(&[("origin", "https://trusted.example.evil")]),
            headers(&[("origin", "")]),
            HeaderMap::new(),
        ] {
            assert!(decide(&p, &Method::GET, &other).is_none(), "{other:?}");
        }
        // OPTIONS without a requested method is no preflight: it goes on, marked.
        let options = headers(&[("origin", "https://app.example")]);
        assert!(matches!(
            decide(&p, &Method::OPTIONS, &options),
            Some(Decision::Allow(_))
        ));
    }

    #[test]
    fn a_matcher_that_matches_a_star_allows_every_origin() {
        let mut p = policy();
        p.allow_origins = Arc::from([StringMatch::Prefix {
            value: "*".into(),
            ignore_case: false,
        }]);
        let get = headers(&[("origin", "https://anyone.example")]);
        assert!(matches!(
            decide(&p, &Method::GET, &get),
            Some(Decision::Allow(_))
        ));
    }
}
