//! Envoy's jwt_authn filter on a request: find each provider's token, verify it (issuer, time,
//! audiences, then the signature, in Envoy's order), judge the requirement, and on success put
//! the payloads in the metadata RBAC reads, set the payload and claim headers, and drop a
//! token the provider does not forward.

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method, Uri};
use jsonwebtoken::Validation;
use serde_json::{Map, Value};

use crate::config::{JwtAuthn, JwtProvider, Requirement};

/// Why a token or request failed, with Envoy's (jwt_verify_lib's) words for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Missing,
    BadFormat,
    UnknownIssuer,
    Expired,
    NotYetValid,
    AudienceNotAllowed,
    KidAlgMismatch,
    VerificationFail,
}

impl Failure {
    pub fn message(self) -> &'static str {
        match self {
            Failure::Missing => "Jwt is missing",
            Failure::BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            Failure::UnknownIssuer => "Jwt issuer is not configured",
            Failure::Expired => "Jwt is expired",
            Failure::NotYetValid => "Jwt not yet valid",
            Failure::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Failure::KidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            Failure::VerificationFail => "Jwt verification fails",
        }
    }

    /// Envoy answers 403 for a token whose audience is not allowed, 401 otherwise.
    pub fn status(self) -> u16 {
        match self {
            Failure::AudienceNotAllowed => 403,
            _ => 401,
        }
    }
}

/// Where a provider's token was found.
#[derive(Clone, Debug)]
enum Location {
    Header(http::HeaderName),
    Other,
}

/// What one provider made of the request.
enum Verdict {
    Missing,
    Verified {
        payload: Map<String, Value>,
        /// The payload segment as sent (base64url).
        encoded: String,
        location: Location,
    },
    Failed(Failure),
}

/// What the request carries for the data path once the filter passed it.
#[derive(Debug, Default)]
pub struct Verified {
    /// The filter's metadata namespace: each verified provider's payload under its key.
    pub metadata: Option<Map<String, Value>>,
}

/// Runs the filter on a request; `Err` is the failure to answer with.
pub fn authenticate(
    filter: &JwtAuthn,
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
) -> Result<Verified, Failure> {
    if filter.bypass_cors_preflight
        && *method == Method::OPTIONS
        && headers.contains_key(http::header::ORIGIN)
        && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return Ok(Verified::default());
    }
    let verdicts: Vec<Verdict> = filter
        .providers
        .iter()
        .map(|(_, p)| verify(p, uri, headers))
        .collect();
    judge(&filter.requirement, &verdicts)?;
    let mut metadata: Option<Map<String, Value>> = None;
    for ((_, p), v) in filter.providers.iter().zip(&verdicts) {
        let Verdict::Verified {
            payload,
            encoded,
            location,
        } = v
        else {
            continue;
        };
        if let Some(key) = &p.payload_in_metadata {
            let normalized = normalize(payload, &p.space_delimited_claims);
            metadata
                .get_or_insert_with(Map::new)
                .insert(key.to_string(), Value::Object(normalized));
        }
        if let Some(name) = &p.forward_payload_header
            && let Ok(value) = HeaderValue::from_str(encoded)
        {
            headers.insert(name.clone(), value);
        }
        for c in p.claim_to_headers.iter() {
            let (name, claim) = (&c.header, &c.claim);
            let text = match claim_at(payload, claim) {
                Some(Value::String(s)) => s.clone(),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
                _ => continue,
            };
            if let Ok(value) = HeaderValue::from_str(&text) {
                headers.insert(name.clone(), value);
            }
        }
        if !p.forward
            && let Location::Header(name) = location
        {
            headers.remove(name);
        }
    }
    Ok(Verified { metadata })
}

/// Met or not; a failure names the most telling reason (a bad token before a missing one).
fn judge(r: &Requirement, verdicts: &[Verdict]) -> Result<(), Failure> {
    let worst = |errors: Vec<Failure>| {
        errors
            .iter()
            .copied()
            .find(|f| *f != Failure::Missing)
            .unwrap_or(Failure::Missing)
    };
    match r {
        Requirement::Provider(i) => match verdicts.get(*i) {
            Some(Verdict::Verified { .. }) => Ok(()),
            Some(Verdict::Failed(f)) => Err(*f),
            Some(Verdict::Missing) | None => Err(Failure::Missing),
        },
        Requirement::AllowMissing => {
            if verdicts.iter().all(|v| matches!(v, Verdict::Missing)) {
                Ok(())
            } else {
                Err(Failure::Missing)
            }
        }
        Requirement::Any(all) => {
            let mut errors = Vec::new();
            for r in all.iter() {
                match judge(r, verdicts) {
                    Ok(()) => return Ok(()),
                    Err(f) => errors.push(f),
                }
            }
            Err(worst(errors))
        }
        Requirement::All(all) => {
            let errors: Vec<Failure> = all
                .iter()
                .filter_map(|r| judge(r, verdicts).err())
                .collect();
            if errors.is_empty() {
                Ok(())
            } else {
                Err(worst(errors))
            }
        }
    }
}

/// The first token found in the provider's locations.
fn extract(p: &JwtProvider, uri: &Uri, headers: &HeaderMap) -> Option<(String, Location)> {
    let defaults =
        p.from_headers.is_empty() && p.from_params.is_empty() && p.from_cookies.is_empty();
    let from_header = |name: &http::HeaderName, prefix: &str| {
        headers.get_all(name).iter().find_map(|v| {
            let v = v.to_str().ok()?;
            let rest = if prefix.is_empty() {
                v
            } else {
                &v[v.find(prefix)? + prefix.len()..]
            };
            let token: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "-_.=".contains(*c))
                .collect();
            (!token.is_empty()).then(|| (token, Location::Header(name.clone())))
        })
    };
    if defaults {
        return from_header(&http::header::AUTHORIZATION, "Bearer ")
            .or_else(|| query_param(uri, "access_token").map(|t| (t, Location::Other)));
    }
    for h in p.from_headers.iter() {
        if let Some(found) = from_header(&h.name, &h.prefix) {
            return Some(found);
        }
    }
    for name in p.from_params.iter() {
        if let Some(t) = query_param(uri, name) {
            return Some((t, Location::Other));
        }
    }
    for name in p.from_cookies.iter() {
        if let Some(t) = cookie(headers, name) {
            return Some((t, Location::Other));
        }
    }
    None
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name && !v.is_empty()).then(|| v.to_string())
    })
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name && !v.is_empty()).then(|| v.trim_matches('"').to_string())
        })
}

fn verify(p: &JwtProvider, uri: &Uri, headers: &HeaderMap) -> Verdict {
    let Some((token, location)) = extract(p, uri, headers) else {
        return Verdict::Missing;
    };
    match check(p, &token) {
        Ok((payload, encoded)) => Verdict::Verified {
            payload,
            encoded,
            location,
        },
        Err(f) => Verdict::Failed(f),
    }
}

fn check(p: &JwtProvider, token: &str) -> Result<(Map<String, Value>, String), Failure> {
    let mut parts = token.split('.');
    let (Some(_), Some(encoded), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Failure::BadFormat);
    };
    let header = jsonwebtoken::decode_header(token).map_err(|_| Failure::BadFormat)?;
    let payload: Map<String, Value> = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(Failure::BadFormat)?;
    if !p.issuer.is_empty() && payload.get("iss").and_then(Value::as_str) != Some(&*p.issuer) {
        return Err(Failure::UnknownIssuer);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let skew = p.clock_skew_seconds;
    let time = |claim: &str| payload.get(claim).and_then(Value::as_u64);
    if time("nbf").is_some_and(|nbf| nbf > now.saturating_add(skew)) {
        return Err(Failure::NotYetValid);
    }
    if time("exp").is_some_and(|exp| exp.saturating_add(skew) < now) {
        return Err(Failure::Expired);
    }
    if !p.audiences.is_empty() {
        let allowed = |a: &str| p.audiences.iter().any(|x| same_audience(x, a));
        let ok = match payload.get("aud") {
            Some(Value::String(a)) => allowed(a),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(allowed),
            _ => false,
        };
        if !ok {
            return Err(Failure::AudienceNotAllowed);
        }
    }
    let candidates: Vec<_> = p
        .keys
        .keys
        .iter()
        .filter(|k| header.kid.is_none() || k.kid == header.kid)
        .filter(|k| k.algorithms.contains(&header.alg))
        .collect();
    if candidates.is_empty() {
        return Err(Failure::KidAlgMismatch);
    }
    // The claims were checked above, as Envoy checks them; the crate checks the signature.
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let verified = candidates
        .iter()
        .any(|k| jsonwebtoken::decode::<serde_json::Value>(token, &k.key, &validation).is_ok());
    if !verified {
        return Err(Failure::VerificationFail);
    }
    Ok((payload, encoded.to_string()))
}

/// Envoy compares audiences without a scheme or trailing slash.
fn same_audience(a: &str, b: &str) -> bool {
    let bare = |s: &str| {
        s.strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(s)
            .trim_end_matches('/')
            .to_string()
    };
    bare(a) == bare(b)
}

/// A claim by name; a dotted name reaches into nested objects (Envoy's claim_name).
fn claim_at<'a>(payload: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = payload.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut v = payload.get(parts.next()?)?;
    for part in parts {
        v = v.get(part)?;
    }
    Some(v)
}

/// The payload as RBAC sees it: space-delimited claims split into lists.
fn normalize(
    payload: &Map<String, Value>,
    space_delimited: &[std::sync::Arc<str>],
) -> Map<String, Value> {
    let mut out = payload.clone();
    for claim in space_delimited {
        if let Some(Value::String(s)) = out.get(&**claim) {
            let list = s
                .split(' ')
                .filter(|p| !p.is_empty())
                .map(|p| Value::String(p.into()))
                .collect();
            out.insert(claim.to_string(), Value::Array(list));
        }
    }
    out
}
