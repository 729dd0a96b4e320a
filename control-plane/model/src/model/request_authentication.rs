//! RequestAuthentication: the JWTs a workload verifies (issuer, audiences, keys, where the token
//! is found and what is done with it once verified). A request without a token passes; what it
//! may do is left to AuthorizationPolicy, as in Istio.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::security::{ROOT_NAMESPACE, selects};
use super::spec_of;
use crate::error::{ObjectId, Report, ValidationError};
use crate::istio::security as wire;
use crate::loader::{Object, Spec};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestAuthentication {
    pub id: ObjectId,
    /// Where it was read, for warnings about its `jwksUri`.
    pub origin: String,
    /// `None`: namespace-wide (mesh-wide in the root namespace).
    pub selector: Option<BTreeMap<String, String>>,
    pub rules: Vec<JwtRule>,
}

/// One issuer's tokens (Istio's `JWTRule`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtRule {
    pub issuer: String,
    /// Empty: any audience.
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Empty (with the two below): `Authorization: Bearer <token>` or `?access_token=`.
    pub from_headers: Vec<JwtHeader>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
    /// The verified payload (base64url JSON, as in the token) is sent upstream in this header.
    pub output_payload_to_header: Option<String>,
    /// Keep the token in the request (by default a header it came in is removed).
    pub forward_original_token: bool,
    /// (header, claim): a claim's value copied into a request header.
    pub output_claim_to_headers: Vec<(String, String)>,
    /// Claims whose space-separated string is matched as a list (`scope`, `permission` always).
    pub space_delimited_claims: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtHeader {
    pub name: String,
    pub prefix: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS document given in the policy (`jwks`).
    Inline(String),
    /// Fetched by straitd (`jwksUri`) and inlined into the proxies' config, as istiod does.
    Uri(String),
}

/// What straitd last fetched from one `jwksUri`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchedJwks {
    /// The last good document, kept when a later fetch fails.
    pub keys: Option<Arc<str>>,
    /// Why the latest fetch failed, if it did.
    pub error: Option<String>,
}

/// Fetched JWKS documents by URI.
pub type JwksFetches = BTreeMap<String, FetchedJwks>;

/// The RequestAuthentications that apply to a workload: the root namespace's and its own
/// namespace's whose selector (if any) matches its labels.
pub(super) fn for_workload<'a>(
    policies: &'a [RequestAuthentication],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a RequestAuthentication> {
    policies
        .iter()
        .filter(|p| p.id.namespace == namespace || p.id.namespace == ROOT_NAMESPACE)
        .filter(|p| selects(&p.selector, labels))
        .collect()
}

/// Checks that `text` is a JWKS document: a JSON object with a non-empty `keys` list whose
/// entries each name their `kty`. The keys themselves are the proxies' to read.
pub fn check_jwks(text: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("a JWKS is an object with a \"keys\" list")?;
    if keys.is_empty() {
        return Err("the JWKS has no keys".into());
    }
    for (i, k) in keys.iter().enumerate() {
        if k.get("kty").and_then(|t| t.as_str()).is_none() {
            return Err(format!("keys[{i}] has no \"kty\""));
        }
    }
    Ok(())
}

/// An HTTP header name as Envoy takes it: lowercase token characters.
fn check_header(name: &str, path: &str, r: &mut Report<'_>) {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() {
        r.error(path, "a header name is required");
    } else if !name.chars().all(token) {
        r.error(path, format!("{name:?} is not an HTTP header name"));
    } else if name.eq_ignore_ascii_case("host") {
        r.error(path, "the Host header cannot be set from a token");
    }
}

fn check_uri(uri: &str) -> Result<(), String> {
    let rest = uri
        .strip_prefix("https://")
        .or_else(|| uri.strip_prefix("http://"))
        .ok_or_else(|| format!("expected an http:// or https:// URL, got {uri:?}"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{uri:?} has no host"));
    }
    Ok(())
}

pub(super) fn build(
    objects: &[&Object],
    errors: &mut Vec<ValidationError>,
) -> Vec<RequestAuthentication> {
    let mut out = Vec::new();
    for o in objects {
        let spec = spec_of(o, |s| match s {
            Spec::RequestAuthentication(p) => Some(p),
            _ => None,
        });
        let mut r = Report {
            origin: &o.origin,
            object: Some(&o.id),
            errors,
        };
        let before = r.count();
        for (field, present) in [
            ("targetRef", spec.target_ref.is_some()),
            ("targetRefs", spec.target_refs.is_some()),
        ] {
            if present {
                r.unsupported(format!("spec.{field}"), field);
            }
        }
        let selector = spec.selector.as_ref().map(|s| {
            if s.match_labels.is_empty() {
                r.error(
                    "spec.selector.matchLabels",
                    "a selector needs at least one label",
                );
            }
            s.match_labels.clone()
        });
        let rules: Vec<JwtRule> = spec
            .jwt_rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| jwt_rule(rule, &format!("spec.jwtRules[{i}]"), &mut r))
            .collect();
        let mut issuers = BTreeMap::new();
        for (i, rule) in rules.iter().enumerate() {
            if let Some(first) = issuers.insert(rule.issuer.as_str(), i) {
                r.error(
                    format!("spec.jwtRules[{i}].issuer"),
                    format!(
                        "issuer {:?} is already in spec.jwtRules[{first}]",
                        rule.issuer
                    ),
                );
            }
        }
        if r.count() > before {
            continue;
        }
        out.push(RequestAuthentication {
            id: o.id.clone(),
            origin: o.origin.clone(),
            selector,
            rules,
        });
    }
    out
}

fn jwt_rule(rule: &wire::JwtRule, path: &str, r: &mut Report<'_>) -> Option<JwtRule> {
    let before = r.count();
    if rule.timeout.is_some() {
        r.unsupported(
            format!("{path}.timeout"),
            "timeout (straitd fetches jwksUri with its own timeout)",
        );
    }
    if rule.issuer.is_empty() {
        r.error(format!("{path}.issuer"), "an issuer is required");
    }
    for (i, a) in rule.audiences.iter().enumerate() {
        if a.is_empty() {
            r.error(format!("{path}.audiences[{i}]"), "must not be empty");
        }
    }
    let jwks = match (&rule.jwks, &rule.jwks_uri) {
        (Some(_), Some(_)) => {
            r.error(format!("{path}.jwks"), "set jwks or jwksUri, not both");
            None
        }
        (Some(text), None) => match check_jwks(text) {
            Ok(()) => Some(JwksSource::Inline(text.clone())),
            Err(e) => {
                r.error(format!("{path}.jwks"), e);
                None
            }
        },
        (None, Some(uri)) => match check_uri(uri) {
            Ok(()) => Some(JwksSource::Uri(uri.clone())),
            Err(e) => {
                r.error(format!("{path}.jwksUri"), e);
                None
            }
        },
        (None, None) => {
            r.error(
                path,
                "jwks or jwksUri is required (keys are not discovered from the issuer's OpenID configuration)",
            );
            None
        }
    };
    for (i, h) in rule.from_headers.iter().enumerate() {
        check_header(&h.name, &format!("{path}.fromHeaders[{i}].name"), r);
    }
    for (field, values) in [
        ("fromParams", &rule.from_params),
        ("fromCookies", &rule.from_cookies),
    ] {
        for (i, v) in values.iter().enumerate() {
            if v.is_empty() {
                r.error(format!("{path}.{field}[{i}]"), "must not be empty");
            }
        }
    }
    if let Some(h) = &rule.output_payload_to_header {
        check_header(h, &format!("{path}.outputPayloadToHeader"), r);
    }
    for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
        check_header(
            &c.header,
            &format!("{path}.outputClaimToHeaders[{i}].header"),
            r,
        );
        if c.claim.is_empty() {
            r.error(
                format!("{path}.outputClaimToHeaders[{i}].claim"),
                "a claim is required",
            );
        }
    }
    for (i, c) in rule.space_delimited_claims.iter().enumerate() {
        if c.is_empty() {
            r.error(
                format!("{path}.spaceDelimitedClaims[{i}]"),
                "must not be empty",
            );
        }
    }
    if r.count() > before {
        return None;
    }
    Some(JwtRule {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        jwks: jwks?,
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.to_ascii_lowercase(),
                prefix: h.prefix.clone(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        output_payload_to_header: rule
            .output_payload_to_header
            .as_ref()
            .map(|h| h.to_ascii_lowercase()),
        forward_original_token: rule.forward_original_token,
        output_claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| (c.header.to_ascii_lowercase(), c.claim.clone()))
            .collect(),
        space_delimited_claims: rule.space_delimited_claims.clone(),
    })
}

/// The `jwksUri`s the policies name.
pub(super) fn uris(policies: &[RequestAuthentication]) -> BTreeSet<String> {
    policies
        .iter()
        .flat_map(|p| &p.rules)
        .filter_map(|r| match &r.jwks {
            JwksSource::Uri(u) => Some(u.clone()),
            JwksSource::Inline(_) => None,
        })
        .collect()
}

/// A warning per rule whose `jwksUri` failed at its latest fetch.
pub(super) fn fetch_warnings(
    policies: &[RequestAuthentication],
    fetched: &JwksFetches,
) -> Vec<ValidationError> {
    let mut out = Vec::new();
    for p in policies {
        for (i, rule) in p.rules.iter().enumerate() {
            let JwksSource::Uri(uri) = &rule.jwks else {
                continue;
            };
            let Some(f) = fetched.get(uri) else { continue };
            let Some(error) = &f.error else { continue };
            let kept = if f.keys.is_some() {
                "the last keys fetched stay in force"
            } else {
                "tokens from this issuer are refused until a fetch succeeds"
            };
            out.push(ValidationError {
                origin: p.origin.clone(),
                object: Some(p.id.clone()),
                path: format!("spec.jwtRules[{i}].jwksUri"),
                message: format!("fetching {uri}: {error}; {kept}"),
            });
        }
    }
    out
}

/// Whether a warning is one [`fetch_warnings`] makes.
pub(super) fn is_fetch_warning(w: &ValidationError) -> bool {
    w.object
        .as_ref()
        .is_some_and(|o| o.kind == crate::Kind::RequestAuthentication)
        && w.path.ends_with(".jwksUri")
}
