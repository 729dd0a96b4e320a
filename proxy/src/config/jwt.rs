//! Envoy's jwt_authn filter as strait-proxy holds it: providers (issuer, audiences, keys, where
//! the token is found, what is done with it) and the requirement a request must meet.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, jwk};
use serde::{Serialize, Serializer};

/// One jwt_authn filter.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JwtAuthn {
    /// Sorted by name; requirements point into it.
    pub providers: Arc<[(Arc<str>, JwtProvider)]>,
    /// What every request must meet (Envoy's rule for the prefix `/`).
    pub requirement: Requirement,
    /// CORS preflights pass without a token.
    pub bypass_cors_preflight: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// An index into the providers: a token for it must be present and valid.
    Provider(usize),
    /// Met when the request carries no token at all; a token present must verify elsewhere.
    AllowMissing,
    Any(Arc<[Requirement]>),
    All(Arc<[Requirement]>),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JwtProvider {
    pub issuer: Arc<str>,
    /// Empty: any audience.
    pub audiences: Arc<[Arc<str>]>,
    pub keys: Jwks,
    /// Where the token is looked for; all three empty: `Authorization: Bearer` and the
    /// `access_token` query parameter (Envoy's default).
    pub from_headers: Arc<[TokenHeader]>,
    pub from_params: Arc<[Arc<str>]>,
    pub from_cookies: Arc<[Arc<str>]>,
    /// Keep the token; otherwise a header it came in is removed once verified.
    pub forward: bool,
    /// The payload (base64url, as in the token) is sent upstream in this header.
    #[serde(serialize_with = "optional_header_name")]
    pub forward_payload_header: Option<http::HeaderName>,
    /// The key under the filter's metadata namespace the verified payload is written to.
    pub payload_in_metadata: Option<Arc<str>>,
    /// Claims whose space-separated string becomes a list in the metadata.
    pub space_delimited_claims: Arc<[Arc<str>]>,
    /// (header, claim): a claim's value copied into a request header.
    pub claim_to_headers: Arc<[ClaimToHeader]>,
    /// Allowed clock skew for `exp` and `nbf` (Envoy's default, 60 s).
    pub clock_skew_seconds: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClaimToHeader {
    #[serde(serialize_with = "header_name")]
    pub header: http::HeaderName,
    pub claim: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenHeader {
    #[serde(serialize_with = "header_name")]
    pub name: http::HeaderName,
    /// The token follows it (`Bearer `); empty: the whole value.
    pub prefix: Arc<str>,
}

/// A provider's keys, parsed once. Keys of a kind that cannot be read are left out; a
/// provider left with none verifies nothing, as in Envoy.
#[derive(Clone)]
pub struct Jwks {
    /// The document as sent, which is what equality compares.
    pub source: Arc<str>,
    pub keys: Arc<[Key]>,
}

#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// The algorithms the key verifies: its `alg` if it names one, else those of its type.
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

fn optional_header_name<S: Serializer>(
    name: &Option<http::HeaderName>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(name.iter().map(http::HeaderName::as_str))
}

fn header_name<S: Serializer>(name: &http::HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name.as_str())
}

// === impl Jwks ===

impl Jwks {
    /// Parses a JWKS document; `Err` when it is not one at all. Keys that cannot be used (an
    /// unknown type or curve) are skipped.
    pub fn parse(source: &str) -> Result<Jwks, String> {
        let set: jwk::JwkSet =
            serde_json::from_str(source).map_err(|e| format!("not a JWKS: {e}"))?;
        let keys = set.keys.iter().filter_map(Key::from_jwk).collect();
        Ok(Jwks {
            source: source.into(),
            keys,
        })
    }
}

impl PartialEq for Jwks {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field(
                "keys",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Serialize for Jwks {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.keys.iter().map(|k| {
            serde_json::json!({
                "kid": k.kid,
                "algorithms": k.algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
            })
        }))
    }
}

// === impl Key ===

impl Key {
    fn from_jwk(j: &jwk::Jwk) -> Option<Key> {
        use jwk::{AlgorithmParameters, EllipticCurve};
        let family: Vec<Algorithm> = match &j.algorithm {
            AlgorithmParameters::RSA(_) => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
            AlgorithmParameters::OctetKey(_) => return None,
        };
        let algorithms = match j
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse().ok())
        {
            Some(alg) if family.contains(&alg) => vec![alg],
            Some(_) => return None,
            None => family,
        };
        let key = DecodingKey::from_jwk(j).ok()?;
        Some(Key {
            kid: j.common.key_id.clone(),
            algorithms,
            key,
        })
    }
}
