//! RequestAuthentication as Istio builds it: one `envoy.filters.http.jwt_authn` filter per
//! workload, a provider per JWT rule (keys inline), and a requirement that lets a request
//! without a token through (AuthorizationPolicy decides on it) but not one with a bad token.

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::route::v3::{RouteMatch, route_match};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement,
    JwtRequirementAndList, JwtRequirementOrList, RequirementRule, jwt_provider,
    jwt_requirement::RequiresType, requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, Empty};
use strait_model::{JwtRule, Model, RequestAuthentication};

/// The filter's name, which is also the dynamic metadata namespace RBAC reads claims from.
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// The key under that namespace holding the verified payload (Istio's).
pub const PAYLOAD_KEY: &str = "payload";

/// Keys no one holds the private half of: a rule whose `jwksUri` has not been fetched yet
/// verifies no token, as istiod's fake JWKS does.
pub const UNFETCHED_JWKS: &str = r#"{"keys":[{"kty":"RSA","alg":"RS256","kid":"strait-unfetched","e":"AQAB","n":"rbvaSc9ykuW20yPfY5iVuKWQ4gtohHW9Q1nOsM2DI7Sn__UsCMO7vNNQxLhQdq9zJx9A8fGwBryMKlXDNt_W5OfciBs96Fb-ZY-HJ_dMO-_c5mFn-3ELCI7ZPxAuZNG1zXgxqG0ReXvlXt5YgQ9UX6USD__dlYpblkhVUgN_BiAOPc-5ru-YM96u9U_QCFa3RsNyjzw8mMM5SCOl113RbuvCKRKIws5vVw0irQlqgGK43Acz4juzrMI_3Jk1waO1U-3gxMfs7-p0F754VU3oN8Yi-znUQpUVuWJgjAFibzcvMfFIzFHqUGR9lnXvmD3QJENG638IrXzkO4FgFDuPTQ"}]}"#;

/// Claims whose space-separated strings RBAC sees as lists, always (Istio's defaults).
const SPACE_DELIMITED: [&str; 2] = ["permission", "scope"];

/// The jwt_authn filter for a workload's RequestAuthentications, if any has a rule.
pub fn jwt_filter(model: &Model, policies: &[&RequestAuthentication]) -> Option<HttpFilter> {
    let mut rules: Vec<&JwtRule> = policies.iter().flat_map(|p| &p.rules).collect();
    if rules.is_empty() {
        return None;
    }
    // By issuer, as Istio sorts them, so provider names are stable.
    rules.sort_by(|a, b| a.issuer.cmp(&b.issuer));
    let providers: Vec<(String, JwtProvider)> = rules
        .iter()
        .enumerate()
        .map(|(i, rule)| (format!("origins-{i}"), provider(model, rule)))
        .collect();
    let name = |n: &str| JwtRequirement {
        requires_type: Some(RequiresType::ProviderName(n.to_string())),
    };
    // Per provider: its token, if it has one, must verify.
    let each: Vec<JwtRequirement> = providers
        .iter()
        .map(|(n, _)| JwtRequirement {
            requires_type: Some(RequiresType::RequiresAny(JwtRequirementOrList {
                requirements: vec![
                    name(n),
                    JwtRequirement {
                        requires_type: Some(RequiresType::AllowMissing(Empty {})),
                    },
                ],
            })),
        })
        .collect();
    let requires = if each.len() == 1 {
        each.into_iter().next().expect("one requirement")
    } else {
        // Any one provider's token, or every provider's token valid where present: the first
        // half serves providers that share a location (the second then always fails).
        let mut any: Vec<JwtRequirement> = providers.iter().map(|(n, _)| name(n)).collect();
        any.push(JwtRequirement {
            requires_type: Some(RequiresType::RequiresAll(JwtRequirementAndList {
                requirements: each,
            })),
        });
        JwtRequirement {
            requires_type: Some(RequiresType::RequiresAny(JwtRequirementOrList {
                requirements: any,
            })),
        }
    };
    let rule = RequirementRule {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        }),
        requirement_type: Some(requirement_rule::RequirementType::Requires(requires)),
    };
    Some(HttpFilter {
        name: JWT_FILTER.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(sorted(
            providers,
            vec![rule],
        ))),
        ..Default::default()
    })
}

fn provider(model: &Model, rule: &JwtRule) -> JwtProvider {
    let jwks = model.jwks_of(rule).unwrap_or(UNFETCHED_JWKS);
    let mut space_delimited: Vec<String> = rule
        .space_delimited_claims
        .iter()
        .cloned()
        .chain(SPACE_DELIMITED.map(String::from))
        .collect();
    space_delimited.sort();
    space_delimited.dedup();
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token,
        forward_payload_header: rule.output_payload_to_header.clone().unwrap_or_default(),
        payload_in_metadata: PAYLOAD_KEY.to_string(),
        normalize_payload_in_metadata: Some(jwt_provider::NormalizePayload {
            space_delimited_claims: space_delimited,
        }),
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.clone(),
                value_prefix: h.prefix.clone(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|(header, claim)| JwtClaimToHeader {
                header_name: header.clone(),
                claim_name: claim.clone(),
                ..Default::default()
            })
            .collect(),
        jwks_source_specifier: Some(jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(jwks.to_string())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The filter config with its providers in name order. prost encodes protobuf maps in hash
/// order, which would make equal configs differ byte for byte (and their versions with them);
/// this mirror is wire-identical with the map's entries sorted.
fn sorted(mut providers: Vec<(String, JwtProvider)>, rules: Vec<RequirementRule>) -> Any {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Entry {
        #[prost(string, tag = "1")]
        key: String,
        #[prost(message, optional, tag = "2")]
        value: Option<JwtProvider>,
    }
    /// `JwtAuthentication`: `providers` is field 1, `rules` 2, `bypass_cors_preflight` 4.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Config {
        #[prost(message, repeated, tag = "1")]
        providers: Vec<Entry>,
        #[prost(message, repeated, tag = "2")]
        rules: Vec<RequirementRule>,
        #[prost(bool, tag = "4")]
        bypass_cors_preflight: bool,
    }
    providers.sort_by(|a, b| a.0.cmp(&b.0));
    let config = Config {
        providers: providers
            .into_iter()
            .map(|(key, value)| Entry {
                key,
                value: Some(value),
            })
            .collect(),
        rules,
        bypass_cors_preflight: true,
    };
    Any {
        type_url: <JwtAuthentication as prost::Name>::type_url(),
        value: prost::Message::encode_to_vec(&config),
    }
}
