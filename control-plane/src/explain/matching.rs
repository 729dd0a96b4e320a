//! Envoy's matching rules on its own xDS types, for `straitctl explain`: virtual host domains
//! (exact, then the longest `*.suffix`, the longest `prefix*`, then `*`), route matches (path
//! prefix/exact/regex/separated prefix, case, headers, query parameters; first match wins),
//! filter chain choice (most specific criterion first) and RBAC permissions and principals.
//! Pure: no I/O. strait-proxy's `http/routing.rs` and `config/matchers.rs` follow the same
//! rules on its runtime types.

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::FilterChain;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Principal, permission, principal};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, RouteMatch, VirtualHost};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{PathMatcher, StringMatcher, path_matcher};

/// The request as the matchers see it.
#[derive(Clone, Debug, Default)]
pub struct RequestView {
    pub method: String,
    pub authority: String,
    /// Path with its query, as sent.
    pub path: String,
    pub scheme: String,
    /// Names lowercase, in order; repeated names are joined with `,` when matched.
    pub headers: Vec<(String, String)>,
    /// The caller's certificate identity (`spiffe://...`); `None`: plaintext.
    pub principal: Option<String>,
    /// The port the connection reached.
    pub destination_port: u32,
    /// The caller's address, if told (`None`: address conditions never match).
    pub source_ip: Option<std::net::IpAddr>,
}

impl RequestView {
    /// The path without the query.
    pub fn path_only(&self) -> &str {
        self.path.split(['?', '#']).next().unwrap_or("")
    }

    pub fn query(&self) -> Option<&str> {
        let after = self.path.split_once('?')?.1;
        Some(after.split('#').next().unwrap_or(after))
    }

    /// A header (or pseudo-header) as Envoy matches it: repeated values joined by `,`.
    pub fn header(&self, name: &str) -> Option<String> {
        match name {
            ":method" => return Some(self.method.clone()),
            ":authority" | "host" => return Some(self.authority.clone()),
            ":path" => return Some(self.path.clone()),
            ":scheme" => return Some(self.scheme.clone()),
            _ => {}
        }
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

/// Host without its port (`a:80` -> `a`, `[::1]:80` -> `[::1]`), as Envoy strips it.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// How a domain matched the authority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainMatch {
    Exact,
    Suffix,
    Prefix,
    Any,
}

/// The virtual host Envoy picks for `authority` (as sent, port included), with the domain
/// that matched and how.
pub fn virtual_host<'a>(
    hosts: &'a [VirtualHost],
    authority: &str,
) -> Option<(&'a VirtualHost, &'a str, DomainMatch)> {
    let host = authority.to_ascii_lowercase();
    let mut suffix: Option<(usize, &VirtualHost, &str)> = None;
    let mut prefix: Option<(usize, &VirtualHost, &str)> = None;
    let mut any: Option<(&VirtualHost, &str)> = None;
    for vh in hosts {
        for domain in &vh.domains {
            let d = domain.to_ascii_lowercase();
            if d == host {
                return Some((vh, domain, DomainMatch::Exact));
            }
            if d == "*" {
                any = any.or(Some((vh, domain)));
            } else if let Some(s) = d.strip_prefix('*') {
                if host.len() > s.len()
                    && host.ends_with(s)
                    && suffix.is_none_or(|(l, _, _)| s.len() > l)
                {
                    suffix = Some((s.len(), vh, domain));
                }
            } else if let Some(p) = d.strip_suffix('*')
                && host.len() > p.len()
                && host.starts_with(p)
                && prefix.is_none_or(|(l, _, _)| p.len() > l)
            {
                prefix = Some((p.len(), vh, domain));
            }
        }
    }
    suffix
        .map(|(_, vh, d)| (vh, d, DomainMatch::Suffix))
        .or(prefix.map(|(_, vh, d)| (vh, d, DomainMatch::Prefix)))
        .or(any.map(|(vh, d)| (vh, d, DomainMatch::Any)))
}

/// Whether a route's match accepts the request: `Ok(conditions that held)`, or `Err(the
/// first that did not)`, in words.
pub fn route_matches(m: &RouteMatch, req: &RequestView) -> Result<Vec<String>, String> {
    let mut why = Vec::new();
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|c| c.value);
    let path = req.path_only();
    let cased = |a: &str, b: &str| {
        if case_sensitive {
            a == b
        } else {
            a.eq_ignore_ascii_case(b)
        }
    };
    match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => {
            // A prefix is matched against the whole `:path`, query included (Envoy); the
            // other path matches drop the query first.
            let full = req.path.as_str();
            let hit = full.len() >= p.len()
                && full.is_char_boundary(p.len())
                && cased(&full[..p.len()], p);
            if !hit {
                return Err(format!("path {path:?} does not start with {p:?}"));
            }
            why.push(format!("path {path:?} starts with {p:?}"));
        }
        Some(PathSpecifier::Path(p)) => {
            if !cased(path, p) {
                return Err(format!("path {path:?} is not {p:?}"));
            }
            why.push(format!("path is {p:?}"));
        }
        Some(PathSpecifier::SafeRegex(r)) => {
            if !regex_matches(&r.regex, path) {
                return Err(format!("path {path:?} does not match regex {:?}", r.regex));
            }
            why.push(format!("path {path:?} matches regex {:?}", r.regex));
        }
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            let hit = path.len() >= p.len()
                && path.is_char_boundary(p.len())
                && cased(&path[..p.len()], p)
                && matches!(path.as_bytes().get(p.len()), None | Some(b'/'));
            if !hit {
                return Err(format!("path {path:?} is not {p:?} or below it"));
            }
            why.push(format!("path {path:?} is {p:?} or below it"));
        }
        Some(other) => return Err(format!("path match {other:?} is not evaluated")),
        None => why.push("any path".into()),
    }
    for h in &m.headers {
        match header_matches(h, req) {
            Ok(reason) => why.push(reason),
            Err(reason) => return Err(reason),
        }
    }
    for q in &m.query_parameters {
        let found = req
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == q.name).then_some(v)
            });
        let hit = match (&q.query_parameter_match_specifier, found) {
            (_, None) => false,
            (Some(QueryParameterMatchSpecifier::StringMatch(sm)), Some(v)) => string_matches(sm, v),
            (Some(QueryParameterMatchSpecifier::PresentMatch(_)) | None, Some(_)) => true,
        };
        if !hit {
            return Err(format!("query parameter {:?} does not match", q.name));
        }
        why.push(format!("query parameter {:?} matches", q.name));
    }
    if m.runtime_fraction.is_some() {
        why.push("runtime fraction not evaluated (taken as matching)".into());
    }
    Ok(why)
}

/// One header condition, in words either way.
pub fn header_matches(h: &HeaderMatcher, req: &RequestView) -> Result<String, String> {
    let name = h.name.to_ascii_lowercase();
    let value = req
        .header(&name)
        .or_else(|| h.treat_missing_header_as_empty.then(String::new));
    let (hit, what) = match (&h.header_match_specifier, &value) {
        (Some(HeaderMatchSpecifier::PresentMatch(want)), v) => (
            v.is_some() == *want,
            if *want { "present" } else { "absent" }.to_string(),
        ),
        (None, v) => (v.is_some(), "present".to_string()),
        // A missing header never matches a value, inverted or not (Envoy).
        (Some(spec), None) => {
            return Err(format!(
                "header {name} is missing (needed: {})",
                describe_header(spec)
            ));
        }
        (Some(spec), Some(v)) => (header_value_matches(spec, v), describe_header(spec)),
    };
    let shown = value.as_deref().unwrap_or("<missing>");
    if hit != h.invert_match {
        Ok(format!(
            "header {name} {}{what} ({shown:?})",
            if h.invert_match { "not " } else { "" }
        ))
    } else {
        Err(format!(
            "header {name} {}{what} does not hold ({shown:?})",
            if h.invert_match { "not " } else { "" }
        ))
    }
}

#[allow(deprecated)]
fn header_value_matches(spec: &HeaderMatchSpecifier, v: &str) -> bool {
    match spec {
        HeaderMatchSpecifier::ExactMatch(e) => v == e,
        HeaderMatchSpecifier::SafeRegexMatch(r) => regex_matches(&r.regex, v),
        HeaderMatchSpecifier::RangeMatch(r) => {
            v.parse::<i64>().is_ok_and(|n| n >= r.start && n < r.end)
        }
        HeaderMatchSpecifier::PresentMatch(want) => *want,
        HeaderMatchSpecifier::PrefixMatch(p) => v.starts_with(p.as_str()),
        HeaderMatchSpecifier::SuffixMatch(s) => v.ends_with(s.as_str()),
        HeaderMatchSpecifier::ContainsMatch(c) => v.contains(c.as_str()),
        HeaderMatchSpecifier::StringMatch(sm) => string_matches(sm, v),
    }
}

#[allow(deprecated)]
fn describe_header(spec: &HeaderMatchSpecifier) -> String {
    match spec {
        HeaderMatchSpecifier::ExactMatch(e) => format!("= {e:?}"),
        HeaderMatchSpecifier::SafeRegexMatch(r) => format!("~ {:?}", r.regex),
        HeaderMatchSpecifier::RangeMatch(r) => format!("in [{}, {})", r.start, r.end),
        HeaderMatchSpecifier::PresentMatch(true) => "present".into(),
        HeaderMatchSpecifier::PresentMatch(false) => "absent".into(),
        HeaderMatchSpecifier::PrefixMatch(p) => format!("starts with {p:?}"),
        HeaderMatchSpecifier::SuffixMatch(s) => format!("ends with {s:?}"),
        HeaderMatchSpecifier::ContainsMatch(c) => format!("contains {c:?}"),
        HeaderMatchSpecifier::StringMatch(sm) => describe_string(sm),
    }
}

/// A string matcher in words: `= "x"`, `starts with "/a"`, `~ "re"`.
pub fn describe_string(sm: &StringMatcher) -> String {
    let case = if sm.ignore_case { " (any case)" } else { "" };
    match &sm.match_pattern {
        Some(MatchPattern::Exact(e)) => format!("= {e:?}{case}"),
        Some(MatchPattern::Prefix(p)) => format!("starts with {p:?}{case}"),
        Some(MatchPattern::Suffix(s)) => format!("ends with {s:?}{case}"),
        Some(MatchPattern::Contains(c)) => format!("contains {c:?}{case}"),
        Some(MatchPattern::SafeRegex(r)) => format!("~ {:?}", r.regex),
        Some(MatchPattern::Custom(c)) => format!("custom {}", c.name),
        None => "anything".into(),
    }
}

/// Envoy's string matcher: ASCII case folding with `ignore_case`, regexes on the whole input.
pub fn string_matches(sm: &StringMatcher, input: &str) -> bool {
    let fold = |s: &str| {
        if sm.ignore_case {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    let input_f = fold(input);
    match &sm.match_pattern {
        Some(MatchPattern::Exact(e)) => input_f == fold(e),
        Some(MatchPattern::Prefix(p)) => input_f.starts_with(&fold(p)),
        Some(MatchPattern::Suffix(s)) => input_f.ends_with(&fold(s)),
        Some(MatchPattern::Contains(c)) => input_f.contains(&fold(c)),
        Some(MatchPattern::SafeRegex(r)) => regex_matches(&r.regex, input),
        Some(MatchPattern::Custom(_)) | None => false,
    }
}

/// RE2 as Envoy uses it: the whole input must match. An invalid pattern matches nothing.
pub fn regex_matches(pattern: &str, input: &str) -> bool {
    regex::Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|r| r.is_match(input))
}

fn path_matcher(pm: &PathMatcher, req: &RequestView) -> bool {
    match &pm.rule {
        Some(path_matcher::Rule::Path(sm)) => string_matches(sm, req.path_only()),
        None => false,
    }
}

/// The connection as filter chain matching sees it.
#[derive(Clone, Debug, Default)]
pub struct ConnectionView {
    pub destination_port: u32,
    pub destination_ip: Option<std::net::IpAddr>,
    pub server_name: Option<String>,
    /// `tls` or `raw_buffer`.
    pub transport_protocol: String,
    pub application_protocols: Vec<String>,
}

/// The filter chain Envoy picks, by its order of criteria (destination port, destination
/// address, server name, transport protocol, application protocol): at each, the chains that
/// name a matching value if any, else those that name none. `None` when none is left (the
/// default chain then applies, if the listener has one).
pub fn filter_chain<'a>(
    chains: &'a [FilterChain],
    conn: &ConnectionView,
) -> Option<&'a FilterChain> {
    let mut left: Vec<&FilterChain> = chains.iter().collect();
    let m = |c: &FilterChain| c.filter_chain_match.clone().unwrap_or_default();
    // destination_port
    narrow(&mut left, |c| {
        m(c).destination_port
            .map(|p| p.value == conn.destination_port)
    });
    // prefix_ranges: the longest matching prefix wins
    let best = left
        .iter()
        .flat_map(|c| m(c).prefix_ranges)
        .filter(|r| conn.destination_ip.is_some_and(|ip| cidr_contains(r, ip)))
        .map(|r| prefix_len(&r))
        .max();
    narrow(&mut left, |c| {
        let ranges = m(c).prefix_ranges;
        (!ranges.is_empty()).then(|| {
            ranges.iter().any(|r| {
                conn.destination_ip.is_some_and(|ip| cidr_contains(r, ip))
                    && Some(prefix_len(r)) == best
            })
        })
    });
    narrow(&mut left, |c| {
        let names = m(c).server_names;
        (!names.is_empty()).then(|| {
            conn.server_name.as_deref().is_some_and(|sni| {
                names.iter().any(|n| match n.strip_prefix('*') {
                    Some(suffix) => sni.ends_with(suffix),
                    None => n.eq_ignore_ascii_case(sni),
                })
            })
        })
    });
    narrow(&mut left, |c| {
        let t = m(c).transport_protocol;
        (!t.is_empty()).then(|| t == conn.transport_protocol)
    });
    narrow(&mut left, |c| {
        let a = m(c).application_protocols;
        (!a.is_empty()).then(|| a.iter().any(|p| conn.application_protocols.contains(p)))
    });
    left.first().copied()
}

/// Keeps the chains for which `test` says `Some(true)`, or if there are none, those for which
/// it says `None` (the criterion is not set).
fn narrow(left: &mut Vec<&FilterChain>, test: impl Fn(&FilterChain) -> Option<bool>) {
    let specific: Vec<&FilterChain> = left
        .iter()
        .copied()
        .filter(|c| test(c) == Some(true))
        .collect();
    if specific.is_empty() {
        left.retain(|c| test(c).is_none());
    } else {
        *left = specific;
    }
}

fn prefix_len(range: &CidrRange) -> u32 {
    range.prefix_len.as_ref().map_or(0, |l| l.value)
}

pub fn cidr_contains(range: &CidrRange, ip: std::net::IpAddr) -> bool {
    let Ok(network) = range.address_prefix.parse::<std::net::IpAddr>() else {
        return false;
    };
    let len = prefix_len(range);
    match (network, ip.to_canonical()) {
        (std::net::IpAddr::V4(n), std::net::IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - len.min(32)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (std::net::IpAddr::V6(n), std::net::IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - len.min(128)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Whether an RBAC permission holds for the request.
pub fn permission_matches(p: &Permission, req: &RequestView) -> bool {
    use permission::Rule;
    match &p.rule {
        Some(Rule::Any(any)) => *any,
        Some(Rule::AndRules(set)) => set.rules.iter().all(|r| permission_matches(r, req)),
        Some(Rule::OrRules(set)) => set.rules.iter().any(|r| permission_matches(r, req)),
        Some(Rule::NotRule(inner)) => !permission_matches(inner, req),
        Some(Rule::Header(h)) => header_matches(h, req).is_ok(),
        Some(Rule::UrlPath(pm)) => path_matcher(pm, req),
        Some(Rule::DestinationPort(port)) => *port == req.destination_port,
        Some(Rule::DestinationPortRange(r)) => {
            let port = i64::from(req.destination_port);
            port >= i64::from(r.start) && port < i64::from(r.end)
        }
        // What explain is not told (addresses, metadata, server names) never matches.
        _ => false,
    }
}

/// Whether an RBAC principal holds for the caller.
pub fn principal_matches(p: &Principal, req: &RequestView) -> bool {
    use principal::Identifier;
    match &p.identifier {
        Some(Identifier::Any(any)) => *any,
        Some(Identifier::AndIds(set)) => set.ids.iter().all(|i| principal_matches(i, req)),
        Some(Identifier::OrIds(set)) => set.ids.iter().any(|i| principal_matches(i, req)),
        Some(Identifier::NotId(inner)) => !principal_matches(inner, req),
        Some(Identifier::Authenticated(a)) => match (&req.principal, &a.principal_name) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(name), Some(sm)) => string_matches(sm, name),
        },
        Some(Identifier::Header(h)) => header_matches(h, req).is_ok(),
        Some(Identifier::UrlPath(pm)) => path_matcher(pm, req),
        #[allow(deprecated)]
        Some(
            Identifier::SourceIp(range)
            | Identifier::DirectRemoteIp(range)
            | Identifier::RemoteIp(range),
        ) => req.source_ip.is_some_and(|ip| cidr_contains(range, ip)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::listener::v3::FilterChainMatch;
    use envoy_types::pb::envoy::config::rbac::v3::{
        permission::Set as PSet, principal::Authenticated,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;

    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> RequestView {
        RequestView {
            method: "GET".into(),
            authority: "reviews:9080".into(),
            path: path.into(),
            scheme: "http".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            principal: None,
            destination_port: 9080,
            source_ip: None,
        }
    }

    fn exact(value: &str) -> StringMatcher {
        StringMatcher {
            match_pattern: Some(MatchPattern::Exact(value.into())),
            ..Default::default()
        }
    }

    #[test]
    fn domains_exact_then_longest_suffix_then_longest_prefix_then_any() {
        let hosts = vec![
            vh("any", &["*"]),
            vh("prefix", &["reviews*"]),
            vh("short-suffix", &["*.com"]),
            vh("suffix", &["*.example.com"]),
            vh("exact", &["reviews:9080", "reviews"]),
        ];
        let pick =
            |host: &str| virtual_host(&hosts, host).map(|(vh, d, how)| (vh.name.as_str(), d, how));
        assert_eq!(
            pick("reviews:9080"),
            Some(("exact", "reviews:9080", DomainMatch::Exact))
        );
        assert_eq!(
            pick("REVIEWS"),
            Some(("exact", "reviews", DomainMatch::Exact))
        );
        assert_eq!(
            pick("a.example.com"),
            Some(("suffix", "*.example.com", DomainMatch::Suffix))
        );
        assert_eq!(
            pick("a.b.com"),
            Some(("short-suffix", "*.com", DomainMatch::Suffix))
        );
        // A wildcard never matches the empty remainder.
        assert_eq!(pick("example.com").map(|p| p.0), Some("short-suffix"));
        assert_eq!(pick("reviews.other:80").map(|p| p.0), Some("prefix"));
        assert_eq!(pick("ratings:9080"), Some(("any", "*", DomainMatch::Any)));
        // The port counts: reviews:9081 is not reviews:9080.
        assert_eq!(pick("reviews:9081").map(|p| p.0), Some("prefix"));
        assert!(virtual_host(&hosts[4..], "ratings").is_none());
    }

    #[test]
    fn paths_prefix_exact_regex_and_case() {
        let m = |p: PathSpecifier| RouteMatch {
            path_specifier: Some(p),
            ..Default::default()
        };
        let r = req("/api/v1?x=1", &[]);
        assert!(route_matches(&m(PathSpecifier::Prefix("/api".into())), &r).is_ok());
        assert!(route_matches(&m(PathSpecifier::Prefix("/API".into())), &r).is_err());
        let mut insensitive = m(PathSpecifier::Prefix("/API".into()));
        insensitive.case_sensitive =
            Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
        assert!(route_matches(&insensitive, &r).is_ok());
        assert!(
            route_matches(&m(PathSpecifier::Path("/api/v1".into())), &r).is_ok(),
            "query is not part of the path"
        );
        assert!(route_matches(&m(PathSpecifier::Path("/api".into())), &r).is_err());
        let re = |s: &str| {
            m(PathSpecifier::SafeRegex(RegexMatcher {
                regex: s.into(),
                ..Default::default()
            }))
        };
        assert!(route_matches(&re("/api/v[0-9]"), &r).is_ok());
        assert!(route_matches(&re("/api"), &r).is_err(), "whole path");
        assert!(route_matches(&m(PathSpecifier::PathSeparatedPrefix("/api".into())), &r).is_ok());
        assert!(route_matches(&m(PathSpecifier::PathSeparatedPrefix("/ap".into())), &r).is_err());
        let why = route_matches(&m(PathSpecifier::Prefix("/".into())), &r).unwrap();
        assert_eq!(why, ["path \"/api/v1\" starts with \"/\""]);
    }

    #[test]
    fn headers_and_query_parameters() {
        let header = |name: &str, spec: HeaderMatchSpecifier, invert: bool| HeaderMatcher {
            name: name.into(),
            header_match_specifier: Some(spec),
            invert_match: invert,
            ..Default::default()
        };
        let jason = header(
            "end-user",
            HeaderMatchSpecifier::StringMatch(exact("jason")),
            false,
        );
        let route = RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            headers: vec![jason.clone()],
            ..Default::default()
        };
        assert!(route_matches(&route, &req("/", &[("end-user", "jason")])).is_ok());
        let err = route_matches(&route, &req("/", &[])).unwrap_err();
        assert!(err.contains("end-user is missing"), "{err}");
        assert!(route_matches(&route, &req("/", &[("end-user", "bob")])).is_err());
        // Inverted: a different value matches, a missing header still does not.
        let not_jason = header(
            "end-user",
            HeaderMatchSpecifier::StringMatch(exact("jason")),
            true,
        );
        assert!(header_matches(&not_jason, &req("/", &[("end-user", "bob")])).is_ok());
        assert!(header_matches(&not_jason, &req("/", &[])).is_err());
        // Repeated headers are one comma-joined value; pseudo-headers are the request's.
        let joined = header("x", HeaderMatchSpecifier::StringMatch(exact("a,b")), false);
        assert!(header_matches(&joined, &req("/", &[("x", "a"), ("x", "b")])).is_ok());
        let method = header(
            ":method",
            HeaderMatchSpecifier::StringMatch(exact("GET")),
            false,
        );
        assert!(header_matches(&method, &req("/", &[])).is_ok());
        let absent = header("x-debug", HeaderMatchSpecifier::PresentMatch(false), false);
        assert!(header_matches(&absent, &req("/", &[])).is_ok());
        assert!(header_matches(&absent, &req("/", &[("x-debug", "1")])).is_err());

        use envoy_types::pb::envoy::config::route::v3::QueryParameterMatcher;
        let q = RouteMatch {
            query_parameters: vec![QueryParameterMatcher {
                name: "v".into(),
                query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                    exact("2"),
                )),
            }],
            ..Default::default()
        };
        assert!(route_matches(&q, &req("/x?a=1&v=2", &[])).is_ok());
        assert!(route_matches(&q, &req("/x?v=3", &[])).is_err());
        assert!(route_matches(&q, &req("/x", &[])).is_err());
    }

    #[test]
    fn strings_fold_ascii_case_and_regexes_are_anchored() {
        let sm = |p: MatchPattern, ignore_case| StringMatcher {
            match_pattern: Some(p),
            ignore_case,
        };
        assert!(string_matches(
            &sm(MatchPattern::Exact("AbC".into()), true),
            "abc"
        ));
        assert!(!string_matches(
            &sm(MatchPattern::Exact("AbC".into()), false),
            "abc"
        ));
        assert!(string_matches(
            &sm(MatchPattern::Suffix(".COM".into()), true),
            "a.com"
        ));
        assert!(string_matches(
            &sm(MatchPattern::Contains("mid".into()), false),
            "amidb"
        ));
        let re = sm(
            MatchPattern::SafeRegex(RegexMatcher {
                regex: "a+b".into(),
                ..Default::default()
            }),
            false,
        );
        assert!(string_matches(&re, "aab") && !string_matches(&re, "aabc"));
        assert!(
            !regex_matches("(", "("),
            "an invalid pattern matches nothing"
        );
    }

    #[test]
    fn filter_chains_most_specific_first() {
        let chain = |port: Option<u32>, transport: &str, name: &str| FilterChain {
            name: name.into(),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: port
                    .map(|value| envoy_types::pb::google::protobuf::UInt32Value { value }),
                transport_protocol: transport.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let chains = vec![
            chain(None, "tls", "any-tls"),
            chain(None, "raw_buffer", "any-plain"),
            chain(Some(9080), "tls", "9080-tls"),
            chain(Some(9080), "raw_buffer", "9080-plain"),
        ];
        let conn = |port, transport: &str| ConnectionView {
            destination_port: port,
            transport_protocol: transport.into(),
            ..Default::default()
        };
        let pick = |c: ConnectionView| filter_chain(&chains, &c).map(|c| c.name.as_str());
        assert_eq!(pick(conn(9080, "tls")), Some("9080-tls"));
        assert_eq!(pick(conn(9080, "raw_buffer")), Some("9080-plain"));
        assert_eq!(pick(conn(8080, "tls")), Some("any-tls"));
        // Once the port narrowed to its chains, no falling back to the others (Envoy).
        assert_eq!(filter_chain(&chains[2..3], &conn(9080, "raw_buffer")), None);
        assert_eq!(
            filter_chain(&[FilterChain::default()], &conn(1, "raw_buffer"))
                .map(|c| c.name.as_str()),
            Some("")
        );
    }

    #[test]
    fn rbac_permissions_and_principals() {
        let path = |p: &str| Permission {
            rule: Some(permission::Rule::UrlPath(PathMatcher {
                rule: Some(path_matcher::Rule::Path(StringMatcher {
                    match_pattern: Some(MatchPattern::Prefix(p.into())),
                    ..Default::default()
                })),
            })),
        };
        let r = req("/private/x?y", &[]);
        assert!(permission_matches(&path("/private"), &r));
        assert!(!permission_matches(&path("/public"), &r));
        let and = Permission {
            rule: Some(permission::Rule::AndRules(PSet {
                rules: vec![
                    path("/private"),
                    Permission {
                        rule: Some(permission::Rule::DestinationPort(9080)),
                    },
                ],
            })),
        };
        assert!(permission_matches(&and, &r));
        let not = Permission {
            rule: Some(permission::Rule::NotRule(Box::new(path("/private")))),
        };
        assert!(!permission_matches(&not, &r));

        let who = |name: &str| Principal {
            identifier: Some(principal::Identifier::Authenticated(Authenticated {
                principal_name: Some(exact(name)),
            })),
        };
        let pp = "spiffe://cluster.local/ns/default/sa/productpage";
        let mut caller = r.clone();
        assert!(
            !principal_matches(&who(pp), &caller),
            "plaintext has no principal"
        );
        caller.principal = Some(pp.into());
        assert!(principal_matches(&who(pp), &caller));
        assert!(!principal_matches(
            &who("spiffe://cluster.local/ns/default/sa/x"),
            &caller
        ));
    }
}
