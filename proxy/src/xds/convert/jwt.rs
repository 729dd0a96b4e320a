//! Envoy's jwt_authn filter config -> `config::JwtAuthn`: what straitd emits (local JWKS, token
//! locations, forwarding, the payload in metadata, one requirement for every path), everything
//! else refused.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::data_source;
use envoy_types::pb::envoy::config::route::v3::{RouteMatch, route_match};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtProvider as PbProvider, JwtRequirement, jwt_provider,
    jwt_requirement::RequiresType, requirement_rule,
};

use super::{At, ConvertError};
use crate::config::{ClaimToHeader, Jwks, JwtAuthn, JwtProvider, Requirement, TokenHeader};

/// The type of a jwt_authn filter's `typed_config`.
pub(super) const TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";

/// The filter's name: the metadata namespace its verified payloads are written to.
pub(crate) const FILTER_NAME: &str = "envoy.filters.http.jwt_authn";

/// Envoy's allowed clock skew when a provider sets none.
const DEFAULT_CLOCK_SKEW: u64 = 60;

pub(super) fn jwt_authn(at: &At<'_>, proto: &JwtAuthentication) -> Result<JwtAuthn, ConvertError> {
    if proto.filter_state_rules.is_some() {
        return Err(at
            .at("filter_state_rules")
            .unsupported("filter state rules"));
    }
    if !proto.requirement_map.is_empty() {
        return Err(at
            .at("requirement_map")
            .unsupported("per-route requirements (requirement_map)"));
    }
    if proto.strip_failure_response {
        return Err(at
            .at("strip_failure_response")
            .unsupported("strip_failure_response"));
    }
    if !proto.stat_prefix.is_empty() {
        return Err(at.at("stat_prefix").unsupported("jwt_authn stat prefixes"));
    }
    let mut named: Vec<(&String, &PbProvider)> = proto.providers.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    let providers = named
        .iter()
        .map(|(name, p)| {
            Ok((
                Arc::from(name.as_str()),
                provider(&at.at(format!("providers[{name:?}]")), p)?,
            ))
        })
        .collect::<Result<Arc<[_]>, ConvertError>>()?;
    let [rule] = proto.rules.as_slice() else {
        return Err(at
            .at("rules")
            .unsupported("other than one rule (a requirement for every path, prefix \"/\")"));
    };
    let at_rule = at.at("rules[0]");
    let every_path = rule.r#match.as_ref()
        == Some(&RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        });
    if !every_path {
        return Err(at_rule
            .at("match")
            .unsupported("a rule matching other than the prefix \"/\""));
    }
    let requirement = match &rule.requirement_type {
        Some(requirement_rule::RequirementType::Requires(r)) => {
            requirement(&at_rule.at("requires"), r, &providers)?
        }
        Some(requirement_rule::RequirementType::RequirementName(_)) => {
            return Err(at_rule
                .at("requirement_name")
                .unsupported("named requirements (requirement_map)"));
        }
        None => {
            return Err(at_rule.invalid("a rule without a requirement"));
        }
    };
    Ok(JwtAuthn {
        providers,
        requirement,
        bypass_cors_preflight: proto.bypass_cors_preflight,
    })
}

fn requirement(
    at: &At<'_>,
    r: &JwtRequirement,
    providers: &[(Arc<str>, JwtProvider)],
) -> Result<Requirement, ConvertError> {
    let list =
        |at: &At<'_>, items: &[JwtRequirement]| -> Result<Arc<[Requirement]>, ConvertError> {
            if items.is_empty() {
                return Err(at.at("requirements").invalid("must not be empty"));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, r)| requirement(&at.at(format!("requirements[{i}]")), r, providers))
                .collect()
        };
    Ok(match &r.requires_type {
        Some(RequiresType::ProviderName(name)) => Requirement::Provider(
            providers
                .iter()
                .position(|(n, _)| **n == **name)
                .ok_or_else(|| {
                    at.at("provider_name")
                        .invalid(format!("no provider named {name:?}"))
                })?,
        ),
        Some(RequiresType::AllowMissing(_)) => Requirement::AllowMissing,
        Some(RequiresType::RequiresAny(any)) => {
            Requirement::Any(list(&at.at("requires_any"), &any.requirements)?)
        }
        Some(RequiresType::RequiresAll(all)) => {
            Requirement::All(list(&at.at("requires_all"), &all.requirements)?)
        }
        Some(RequiresType::ProviderAndAudiences(_)) => {
            return Err(at
                .at("provider_and_audiences")
                .unsupported("audiences per requirement"));
        }
        Some(RequiresType::AllowMissingOrFailed(_)) => {
            return Err(at
                .at("allow_missing_or_failed")
                .unsupported("allow_missing_or_failed"));
        }
        Some(RequiresType::ExtractOnlyWithoutValidation(_)) => {
            return Err(at
                .at("extract_only_without_validation")
                .unsupported("extracting without validation"));
        }
        None => return Err(at.invalid("a requirement without a type")),
    })
}

fn header(at: &At<'_>, name: &str) -> Result<http::HeaderName, ConvertError> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| at.invalid(format!("{name:?} is not a header name")))
}

fn provider(at: &At<'_>, p: &PbProvider) -> Result<JwtProvider, ConvertError> {
    let mut rest = p.clone();
    rest.issuer.clear();
    rest.audiences.clear();
    rest.forward = false;
    rest.from_headers.clear();
    rest.from_params.clear();
    rest.from_cookies.clear();
    rest.forward_payload_header.clear();
    rest.payload_in_metadata.clear();
    rest.normalize_payload_in_metadata = None;
    rest.claim_to_headers.clear();
    rest.clock_skew_seconds = 0;
    rest.jwks_source_specifier = None;
    if rest != PbProvider::default() {
        return Err(at.unsupported(
            "provider settings other than issuer, audiences, local_jwks, from_headers, from_params, from_cookies, forward, forward_payload_header, payload_in_metadata, normalize_payload_in_metadata, claim_to_headers and clock_skew_seconds",
        ));
    }
    let keys = match &p.jwks_source_specifier {
        Some(jwt_provider::JwksSourceSpecifier::LocalJwks(ds)) => match &ds.specifier {
            Some(data_source::Specifier::InlineString(s)) => s.clone(),
            Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone())
                .map_err(|_| at.at("local_jwks.inline_bytes").invalid("not UTF-8"))?,
            _ => {
                return Err(at
                    .at("local_jwks")
                    .unsupported("a JWKS other than inline (inline_string, inline_bytes)"));
            }
        },
        Some(jwt_provider::JwksSourceSpecifier::RemoteJwks(_)) => {
            return Err(at
                .at("remote_jwks")
                .unsupported("remote JWKS (straitd inlines jwksUri)"));
        }
        None => return Err(at.at("jwks_source_specifier").invalid("missing")),
    };
    // A document that is no JWKS verifies nothing, as in Envoy (which logs it); not a NACK.
    let keys = Jwks::parse(&keys).unwrap_or_else(|error| {
        tracing::warn!(%error, "a jwt_authn provider's JWKS cannot be read; its tokens fail");
        Jwks {
            source: keys.as_str().into(),
            keys: Arc::from([]),
        }
    });
    for (i, c) in p.claim_to_headers.iter().enumerate() {
        if !c.claim_path.is_empty() {
            return Err(at
                .at(format!("claim_to_headers[{i}].claim_path"))
                .unsupported("claim paths (use claim_name)"));
        }
    }
    Ok(JwtProvider {
        issuer: p.issuer.as_str().into(),
        audiences: p.audiences.iter().map(|a| Arc::from(a.as_str())).collect(),
        keys,
        from_headers: p
            .from_headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                Ok(TokenHeader {
                    name: header(&at.at(format!("from_headers[{i}].name")), &h.name)?,
                    prefix: h.value_prefix.as_str().into(),
                })
            })
            .collect::<Result<_, ConvertError>>()?,
        from_params: p
            .from_params
            .iter()
            .map(|s| Arc::from(s.as_str()))
            .collect(),
        from_cookies: p
            .from_cookies
            .iter()
            .map(|s| Arc::from(s.as_str()))
            .collect(),
        forward: p.forward,
        forward_payload_header: (!p.forward_payload_header.is_empty())
            .then(|| header(&at.at("forward_payload_header"), &p.forward_payload_header))
            .transpose()?,
        payload_in_metadata: (!p.payload_in_metadata.is_empty())
            .then(|| Arc::from(p.payload_in_metadata.as_str())),
        space_delimited_claims: p
            .normalize_payload_in_metadata
            .iter()
            .flat_map(|n| &n.space_delimited_claims)
            .map(|s| Arc::from(s.as_str()))
            .collect(),
        claim_to_headers: p
            .claim_to_headers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Ok(ClaimToHeader {
                    header: header(
                        &at.at(format!("claim_to_headers[{i}].header_name")),
                        &c.header_name,
                    )?,
                    claim: Arc::from(c.claim_name.as_str()),
                })
            })
            .collect::<Result<_, ConvertError>>()?,
        clock_skew_seconds: if p.clock_skew_seconds == 0 {
            DEFAULT_CLOCK_SKEW
        } else {
            u64::from(p.clock_skew_seconds)
        },
    })
}
