//! Envoy's RBAC filter configs (HTTP and network) -> `config::Rbac`: what straitd emits, everything
//! else refused.

use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission as PbPermission, Policy as PbPolicy, Principal as PbPrincipal, Rbac as PbRules,
    permission, principal, rbac::Action as PbAction,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as PbRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as PbNetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher as PbMetadataMatcher, ValueMatcher as PbValueMatcher, list_matcher,
    metadata_matcher, path_matcher, value_matcher,
};

use super::{At, ConvertError, header_matcher, string_match};
use crate::config::{
    Cidr, MetadataMatcher, Permission, Policy, Principal, Rbac, RbacAction, ValueMatch,
};

/// The type of an RBAC HTTP filter's `typed_config`.
pub(super) const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

/// The type of an RBAC network filter's `typed_config`.
pub(super) const NETWORK_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

/// One RBAC network filter's config: as the HTTP filter's, for connections. It is evaluated
/// when the connection is accepted, before the upstream is connected (Envoy waits for the
/// first byte; for the rules straitd emits, which never look at data, the answer is the same).
pub(super) fn network_rbac(at: &At<'_>, proto: &PbNetworkRbac) -> Result<Rbac, ConvertError> {
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::rbac::EnforcementType;
    let mut rest = proto.clone();
    rest.rules = None;
    rest.stat_prefix.clear();
    rest.enforcement_type = EnforcementType::OneTimeOnFirstByte as i32;
    if rest != Default::default() {
        return Err(at.unsupported(
            "network RBAC settings other than rules and stat_prefix (matchers, shadow rules, continuous enforcement, delayed denial)",
        ));
    }
    let Some(rules) = &proto.rules else {
        return Err(at
            .at("rules")
            .unsupported("an RBAC filter without rules (it would enforce nothing)"));
    };
    let rbac = rules_of(&at.at("rules"), rules)?;
    for (name, p) in rbac.policies.iter() {
        if p.permissions.iter().any(Permission::needs_http) {
            return Err(at
                .at(format!("rules.policies[{name:?}].permissions"))
                .invalid("a header or path permission never matches a TCP connection"));
        }
    }
    Ok(rbac)
}

/// One RBAC filter's config. Its policies are sorted by name, the order Envoy examines them in.
pub(super) fn rbac(at: &At<'_>, proto: &PbRbac) -> Result<Rbac, ConvertError> {
    if proto.matcher.is_some() {
        return Err(at
            .at("matcher")
            .unsupported("the RBAC matcher tree (use rules)"));
    }
    if proto.shadow_matcher.is_some() {
        return Err(at.at("shadow_matcher").unsupported("shadow matchers"));
    }
    if proto.shadow_rules.is_some() {
        return Err(at.at("shadow_rules").unsupported("shadow rules"));
    }
    if !proto.shadow_rules_stat_prefix.is_empty() {
        return Err(at
            .at("shadow_rules_stat_prefix")
            .unsupported("RBAC stat prefixes"));
    }
    if !proto.rules_stat_prefix.is_empty() {
        return Err(at.at("rules_stat_prefix").unsupported("RBAC stat prefixes"));
    }
    if proto.track_per_rule_stats {
        return Err(at
            .at("track_per_rule_stats")
            .unsupported("per-rule RBAC stats"));
    }
    // Envoy enforces nothing without rules; straitd always sends them, so absent ones are a
    // mistake better refused than silently allowing everything.
    let Some(rules) = &proto.rules else {
        return Err(at
            .at("rules")
            .unsupported("an RBAC filter without rules (it would enforce nothing)"));
    };
    rules_of(&at.at("rules"), rules)
}

fn rules_of(at: &At<'_>, rules: &PbRules) -> Result<Rbac, ConvertError> {
    let action = match PbAction::try_from(rules.action) {
        Ok(PbAction::Allow) => RbacAction::Allow,
        Ok(PbAction::Deny) => RbacAction::Deny,
        Ok(PbAction::Log) => RbacAction::Log,
        Err(_) => {
            return Err(at
                .at("action")
                .invalid(format!("unknown action {}", rules.action)));
        }
    };
    if rules.audit_logging_options.is_some() {
        return Err(at
            .at("audit_logging_options")
            .unsupported("RBAC audit loggers"));
    }
    let mut named: Vec<(&String, &PbPolicy)> = rules.policies.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    let policies = named
        .into_iter()
        .map(|(name, p)| {
            Ok((
                Arc::from(name.as_str()),
                policy(&at.at(format!("policies[{name:?}]")), p)?,
            ))
        })
        .collect::<Result<Arc<[_]>, ConvertError>>()?;
    Ok(Rbac { action, policies })
}

fn policy(at: &At<'_>, p: &PbPolicy) -> Result<Policy, ConvertError> {
    if p.condition.is_some() {
        return Err(at.at("condition").unsupported("CEL conditions"));
    }
    if p.checked_condition.is_some() {
        return Err(at.at("checked_condition").unsupported("CEL conditions"));
    }
    if p.cel_config.is_some() {
        return Err(at.at("cel_config").unsupported("CEL conditions"));
    }
    Ok(Policy {
        permissions: each(at, "permissions", &p.permissions, permission)?,
        principals: each(at, "principals", &p.principals, principal)?,
    })
}

/// Converts `at.field`'s items, each named `field[i]`; Envoy requires at least one.
fn each<P, T>(
    at: &At<'_>,
    field: &str,
    items: &[P],
    one: fn(&At<'_>, &P) -> Result<T, ConvertError>,
) -> Result<Arc<[T]>, ConvertError> {
    if items.is_empty() {
        return Err(at.at(field).invalid("must not be empty"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| one(&at.at(format!("{field}[{i}]")), item))
        .collect()
}

// Metadata permissions are deprecated in the proto; refused all the same.
#[allow(deprecated)]
fn permission(at: &At<'_>, p: &PbPermission) -> Result<Permission, ConvertError> {
    use permission::Rule;
    Ok(match &p.rule {
        None => return Err(at.at("rule").invalid("missing")),
        Some(Rule::Any(true)) => Permission::Any,
        Some(Rule::Any(false)) => return Err(at.at("any").invalid("must be true")),
        Some(Rule::AndRules(set)) => {
            Permission::And(each(&at.at("and_rules"), "rules", &set.rules, permission)?)
        }
        Some(Rule::OrRules(set)) => {
            Permission::Or(each(&at.at("or_rules"), "rules", &set.rules, permission)?)
        }
        Some(Rule::NotRule(p)) => Permission::Not(Box::new(permission(&at.at("not_rule"), p)?)),
        Some(Rule::Header(h)) => {
            let at = at.at("header");
            let name = h.name.to_ascii_lowercase();
            if name.starts_with(':') && name != ":method" && name != ":authority" {
                return Err(at.at("name").unsupported(format!(
                    "pseudo-header {name:?} (only :method and :authority)"
                )));
            }
            Permission::Header(header_matcher(&at, h)?)
        }
        Some(Rule::UrlPath(pm)) => {
            let at = at.at("url_path");
            match &pm.rule {
                Some(path_matcher::Rule::Path(sm)) => {
                    Permission::UrlPath(string_match(&at.at("path"), sm)?)
                }
                None => return Err(at.at("rule").invalid("missing")),
            }
        }
        Some(Rule::DestinationPort(port)) => {
            Permission::DestinationPort(u16::try_from(*port).map_err(|_| {
                at.at("destination_port")
                    .invalid(format!("{port} is not a port"))
            })?)
        }
        Some(Rule::DestinationIp(_)) => {
            return Err(at
                .at("destination_ip")
                .unsupported("destination IP permissions"));
        }
        Some(Rule::DestinationPortRange(_)) => {
            return Err(at
                .at("destination_port_range")
                .unsupported("destination port ranges"));
        }
        Some(Rule::Metadata(_)) => {
            return Err(at.at("metadata").unsupported("metadata permissions"));
        }
        Some(Rule::RequestedServerName(_)) => {
            return Err(at
                .at("requested_server_name")
                .unsupported("SNI permissions"));
        }
        Some(Rule::Matcher(m)) => {
            return Err(at
                .at("matcher")
                .unsupported(format!("permission extension {:?}", m.name)));
        }
        Some(Rule::UriTemplate(_)) => {
            return Err(at.at("uri_template").unsupported("URI templates"));
        }
        Some(Rule::SourcedMetadata(_)) => {
            return Err(at
                .at("sourced_metadata")
                .unsupported("metadata permissions"));
        }
    })
}

// source_ip and metadata principals are deprecated in the proto; refused all the same.
#[allow(deprecated)]
fn principal(at: &At<'_>, p: &PbPrincipal) -> Result<Principal, ConvertError> {
    use principal::Identifier;
    Ok(match &p.identifier {
        None => return Err(at.at("identifier").invalid("missing")),
        Some(Identifier::Any(true)) => Principal::Any,
        Some(Identifier::Any(false)) => return Err(at.at("any").invalid("must be true")),
        Some(Identifier::AndIds(set)) => {
            Principal::And(each(&at.at("and_ids"), "ids", &set.ids, principal)?)
        }
        Some(Identifier::OrIds(set)) => {
            Principal::Or(each(&at.at("or_ids"), "ids", &set.ids, principal)?)
        }
        Some(Identifier::NotId(p)) => Principal::Not(Box::new(principal(&at.at("not_id"), p)?)),
        Some(Identifier::Authenticated(a)) => Principal::Authenticated(
            a.principal_name
                .as_ref()
                .map(|sm| string_match(&at.at("authenticated.principal_name"), sm))
                .transpose()?,
        ),
        Some(Identifier::DirectRemoteIp(c)) => {
            Principal::DirectRemoteIp(cidr(&at.at("direct_remote_ip"), c)?)
        }
        // The client address after x-forwarded-for handling: the HCM settings that derive it
        // are not modelled, and straitd matches the TCP peer (direct_remote_ip) only.
        Some(Identifier::RemoteIp(_)) => {
            return Err(at.at("remote_ip").unsupported(
                "remote_ip (the address from x-forwarded-for; use direct_remote_ip)",
            ));
        }
        Some(Identifier::SourceIp(_)) => {
            return Err(at
                .at("source_ip")
                .unsupported("source_ip (deprecated; use direct_remote_ip)"));
        }
        Some(Identifier::Header(_)) => {
            return Err(at.at("header").unsupported("header principals"));
        }
        Some(Identifier::UrlPath(_)) => {
            return Err(at.at("url_path").unsupported("URL path principals"));
        }
        Some(Identifier::Metadata(m)) => Principal::Metadata(metadata(&at.at("metadata"), m)?),
        Some(Identifier::FilterState(_)) => {
            return Err(at.at("filter_state").unsupported("filter state principals"));
        }
        Some(Identifier::SourcedMetadata(_)) => {
            return Err(at.at("sourced_metadata").unsupported("metadata principals"));
        }
        Some(Identifier::Custom(c)) => {
            return Err(at
                .at("custom")
                .unsupported(format!("principal extension {:?}", c.name)));
        }
    })
}

/// The metadata a request carries here is jwt_authn's; a matcher on another filter's would
/// never match, so it is refused rather than silently false.
fn metadata(at: &At<'_>, m: &PbMetadataMatcher) -> Result<MetadataMatcher, ConvertError> {
    if m.filter != super::jwt::FILTER_NAME {
        return Err(at.at("filter").unsupported(format!(
            "metadata of filter {:?} (only {:?})",
            m.filter,
            super::jwt::FILTER_NAME
        )));
    }
    if m.path.is_empty() {
        return Err(at.at("path").invalid("must not be empty"));
    }
    let path = m
        .path
        .iter()
        .enumerate()
        .map(|(i, s)| match &s.segment {
            Some(metadata_matcher::path_segment::Segment::Key(k)) => Ok(Arc::from(k.as_str())),
            None => Err(at.at(format!("path[{i}]")).invalid("missing key")),
        })
        .collect::<Result<_, _>>()?;
    let value = m
        .value
        .as_ref()
        .ok_or_else(|| at.at("value").invalid("missing"))?;
    Ok(MetadataMatcher {
        filter: m.filter.as_str().into(),
        path,
        value: value_match(&at.at("value"), value)?,
        invert: m.invert,
    })
}

fn value_match(at: &At<'_>, v: &PbValueMatcher) -> Result<ValueMatch, ConvertError> {
    use value_matcher::MatchPattern;
    Ok(match &v.match_pattern {
        Some(MatchPattern::StringMatch(sm)) => {
            ValueMatch::String(string_match(&at.at("string_match"), sm)?)
        }
        Some(MatchPattern::BoolMatch(b)) => ValueMatch::Bool(*b),
        Some(MatchPattern::PresentMatch(p)) => ValueMatch::Present(*p),
        Some(MatchPattern::ListMatch(l)) => match &l.match_pattern {
            Some(list_matcher::MatchPattern::OneOf(one)) => {
                ValueMatch::ListOneOf(Box::new(value_match(&at.at("list_match.one_of"), one)?))
            }
            None => return Err(at.at("list_match").invalid("missing one_of")),
        },
        Some(MatchPattern::OrMatch(or)) => {
            if or.value_matchers.is_empty() {
                return Err(at
                    .at("or_match.value_matchers")
                    .invalid("must not be empty"));
            }
            ValueMatch::Or(
                or.value_matchers
                    .iter()
                    .enumerate()
                    .map(|(i, v)| value_match(&at.at(format!("or_match.value_matchers[{i}]")), v))
                    .collect::<Result<_, _>>()?,
            )
        }
        Some(MatchPattern::NullMatch(_)) => {
            return Err(at.at("null_match").unsupported("null matches"));
        }
        Some(MatchPattern::DoubleMatch(_)) => {
            return Err(at.at("double_match").unsupported("number matches"));
        }
        None => return Err(at.invalid("missing match_pattern")),
    })
}

pub(super) fn cidr(at: &At<'_>, c: &CidrRange) -> Result<Cidr, ConvertError> {
    let address: IpAddr = c.address_prefix.parse().map_err(|_| {
        at.at("address_prefix")
            .invalid(format!("{:?} is not an IP address", c.address_prefix))
    })?;
    // Unset means 0, as in Envoy: the whole address family.
    let len = c.prefix_len.as_ref().map_or(0, |l| l.value);
    u8::try_from(len)
        .ok()
        .and_then(|len| Cidr::new(address, len))
        .ok_or_else(|| {
            at.at("prefix_len")
                .invalid(format!("{len} is too long for {address}"))
        })
}
