//! mTLS and authorization: TLS contexts for clusters and inbound listeners (PeerAuthentication)
//! and the RBAC filters of AuthorizationPolicy, in Istio's order, for HTTP and for TCP.

use envoy_types::pb::envoy::config::core::v3::{
    CidrRange, DataSource, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, permission, principal,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, OrMatcher, PathMatcher, RegexMatcher, StringMatcher,
    ValueMatcher, list_matcher, metadata_matcher, path_matcher, string_matcher, value_matcher,
};
use envoy_types::pb::google::protobuf::Any;
use strait_model::{
    AuthorizationPolicy, AuthzAction, AuthzRule, ClientTls, ClientTlsMode, ConditionKey,
    ConditionMatch, OperationMatch, SourceMatch,
};

use crate::MeshSettings;
use crate::proto::{ads, any, boolv, u32v};

/// The SDS names Istio uses: the workload's certificate and the mesh's trust bundle.
pub const WORKLOAD_SECRET: &str = "default";
pub const ROOT_SECRET: &str = "ROOTCA";
/// Endpoint metadata that auto mTLS matches on, as in Istio.
pub const TLS_MODE_MATCH: &str = "envoy.transport_socket_match";

const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const RBAC_FILTER: &str = "envoy.filters.http.rbac";
const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";

pub(crate) fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads()),
    }
}

pub(crate) fn tls_socket(config: Any) -> TransportSocket {
    TransportSocket {
        name: TLS_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(config)),
    }
}

fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(s.to_string())),
        ignore_case: false,
    }
}

/// `spiffe://TD/ns/NS/sa/SA`.
pub fn spiffe(settings: &MeshSettings, namespace: &str, service_account: &str) -> String {
    strait_model::node::spiffe_id(&settings.trust_domain, namespace, service_account)
}

/// Mesh mTLS to a server that must present one of `identities`.
pub fn istio_mutual(identities: &[String], sni: &str) -> TransportSocket {
    let validation = CertificateValidationContext {
        match_typed_subject_alt_names: identities
            .iter()
            .map(|id| SubjectAltNameMatcher {
                san_type: SanType::Uri as i32,
                matcher: Some(exact(id)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(validation),
                        validation_context_sds_secret_config: Some(sds(ROOT_SECRET)),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        sni: sni.to_string(),
        ..Default::default()
    };
    tls_socket(any(&context))
}

/// The server side of mesh mTLS: the workload's certificate, clients verified against the mesh
/// roots.
pub fn downstream_mtls() -> TransportSocket {
    tls_socket(any(&DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                    ROOT_SECRET,
                )),
            ),
            ..Default::default()
        }),
        require_client_certificate: Some(boolv(true)),
        ..Default::default()
    }))
}

/// TLS with the files a DestinationRule names (SIMPLE or MUTUAL).
pub fn file_tls(tls: &ClientTls, default_sni: &str) -> TransportSocket {
    let file = |f: &str| DataSource {
        specifier: Some(data_source::Specifier::Filename(f.to_string())),
        ..Default::default()
    };
    let mut common = CommonTlsContext::default();
    if tls.mode == ClientTlsMode::Mutual
        && let (Some(cert), Some(key)) = (&tls.client_certificate, &tls.private_key)
    {
        common.tls_certificates.push(TlsCertificate {
            certificate_chain: Some(file(cert)),
            private_key: Some(file(key)),
            ..Default::default()
        });
    }
    if !tls.insecure_skip_verify {
        let sans = tls
            .subject_alt_names
            .iter()
            .flat_map(|san| {
                // A SAN may be a DNS name or a URI; accept either kind of entry.
                [SanType::Dns, SanType::Uri].map(|t| SubjectAltNameMatcher {
                    san_type: t as i32,
                    matcher: Some(exact(san)),
                    ..Default::default()
                })
            })
            .collect();
        common.validation_context_type = Some(
            common_tls_context::ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: tls.ca_certificates.as_deref().map(file),
                    match_typed_subject_alt_names: sans,
                    ..Default::default()
                },
            ),
        );
    }
    let context = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: tls.sni.clone().unwrap_or_else(|| default_sni.to_string()),
        ..Default::default()
    };
    tls_socket(any(&context))
}

// === Authorization ===

/// How RBAC's `destination_port` sees a workload's port.
#[derive(Clone, Copy, Debug)]
pub enum PortView {
    /// Explicit inbound: connections arrive on the listener port, which stands for the app's
    /// port, so a policy naming the app's port is written with the listener's (as the app port
    /// would be seen behind Istio's iptables redirect). A gateway's listener stands for its
    /// server's port the same way.
    Explicit { listener: u16, app: u16 },
    /// Captured: connections keep their original destination port.
    Captured,
}

impl PortView {
    fn destination(self, port: u16) -> u32 {
        u32::from(match self {
            PortView::Explicit { listener, app } if port == app => listener,
            _ => port,
        })
    }
}

/// What an RBAC filter sees: HTTP requests, or TCP connections (no method, path, host or
/// headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    Http,
    Tcp,
}

/// One RBAC filter's worth: its label, Envoy's action, and its named policies.
type RbacRules = (&'static str, i32, Vec<(String, Policy)>);

/// Istio's order: DENY, then AUDIT (logging only), then ALLOW. With no ALLOW policy, whatever
/// is not denied is allowed; with one, a request must match an ALLOW rule.
fn rbac_rules(
    policies: &[&AuthorizationPolicy],
    settings: &MeshSettings,
    ports: PortView,
    layer: Layer,
) -> Vec<RbacRules> {
    use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
    [
        (AuthzAction::Deny, Action::Deny, "deny"),
        (AuthzAction::Audit, Action::Log, "audit"),
        (AuthzAction::Allow, Action::Allow, "allow"),
    ]
    .into_iter()
    .filter_map(|(kind, action, label)| {
        let of_kind: Vec<&&AuthorizationPolicy> =
            policies.iter().filter(|p| p.action == kind).collect();
        if of_kind.is_empty() {
            return None;
        }
        let mut named: Vec<(String, Policy)> = Vec::new();
        for p in of_kind {
            for (i, rule) in p.rules.iter().enumerate() {
                let rule = match layer {
                    Layer::Http => Some(rule.clone()),
                    Layer::Tcp => tcp_rule(rule, kind),
                };
                if let Some(rule) = rule {
                    named.push((
                        format!("ns[{}]-policy[{}]-rule[{i}]", p.id.namespace, p.id.name),
                        policy(&rule, settings, ports),
                    ));
                }
            }
        }
        Some((label, action as i32, named))
    })
    .collect()
}

/// A rule as it applies to a TCP connection, as Istio reads it: fields only HTTP has (methods,
/// paths, hosts, request headers) make an ALLOW or AUDIT rule match nothing, and are dropped
/// from a DENY rule, which then denies more. Either way the result is stricter, never looser.
fn tcp_rule(rule: &AuthzRule, action: AuthzAction) -> Option<AuthzRule> {
    let http_only = rule.to.iter().any(|op| {
        !(op.methods.is_empty()
            && op.not_methods.is_empty()
            && op.paths.is_empty()
            && op.not_paths.is_empty()
            && op.hosts.is_empty()
            && op.not_hosts.is_empty())
    }) || rule
        .from
        .iter()
        .any(|s| !(s.request_principals.is_empty() && s.not_request_principals.is_empty()))
        || rule.when.iter().any(http_condition);
    if !http_only {
        return Some(rule.clone());
    }
    if action != AuthzAction::Deny {
        return None;
    }
    let mut rule = rule.clone();
    for op in &mut rule.to {
        op.methods.clear();
        op.not_methods.clear();
        op.paths.clear();
        op.not_paths.clear();
        op.hosts.clear();
        op.not_hosts.clear();
    }
    for s in &mut rule.from {
        s.request_principals.clear();
        s.not_request_principals.clear();
    }
    rule.when.retain(|c| !http_condition(c));
    Some(rule)
}

/// A condition only an HTTP request can meet: a header, or the request's JWT.
fn http_condition(c: &ConditionMatch) -> bool {
    matches!(c.key, ConditionKey::RequestHeader(_)) || c.key.is_request_auth()
}

/// The HTTP RBAC filters for a workload's policies.
pub fn rbac_filters(
    policies: &[&AuthorizationPolicy],
    settings: &MeshSettings,
    ports: PortView,
) -> Vec<HttpFilter> {
    rbac_rules(policies, settings, ports, Layer::Http)
        .into_iter()
        .map(|(label, action, named)| HttpFilter {
            name: format!("{RBAC_FILTER}.{label}"),
            config_type: Some(http_filter::ConfigType::TypedConfig(sorted_rbac(
                action, named, None,
            ))),
            ..Default::default()
        })
        .collect()
}

/// The network RBAC filters for a workload's policies, on connections that are not HTTP.
pub fn network_rbac_filters(
    policies: &[&AuthorizationPolicy],
    settings: &MeshSettings,
    ports: PortView,
    stat_prefix: &str,
) -> Vec<Filter> {
    rbac_rules(policies, settings, ports, Layer::Tcp)
        .into_iter()
        .map(|(label, action, named)| Filter {
            name: format!("{NETWORK_RBAC_FILTER}.{label}"),
            config_type: Some(filter::ConfigType::TypedConfig(sorted_rbac(
                action,
                named,
                Some(&format!("{stat_prefix}.{label}.")),
            ))),
        })
        .collect()
}

/// The RBAC filter config (HTTP, or network with a stat prefix), encoded with its policies in
/// name order. prost encodes protobuf maps in hash order, which would make identical configs
/// differ byte for byte (and resource versions with them); these mirror types are
/// wire-identical with the map's entries sorted.
fn sorted_rbac(action: i32, mut policies: Vec<(String, Policy)>, network: Option<&str>) -> Any {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Entry {
        #[prost(string, tag = "1")]
        key: String,
        #[prost(message, optional, tag = "2")]
        value: Option<Policy>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Rules {
        #[prost(int32, tag = "1")]
        action: i32,
        #[prost(message, repeated, tag = "2")]
        policies: Vec<Entry>,
    }
    /// Both RBAC filters: `rules` is field 1; the network filter's `stat_prefix` is field 3.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Rbac {
        #[prost(message, optional, tag = "1")]
        rules: Option<Rules>,
        #[prost(string, tag = "3")]
        stat_prefix: String,
    }
    policies.sort_by(|a, b| a.0.cmp(&b.0));
    let config = Rbac {
        rules: Some(Rules {
            action,
            policies: policies
                .into_iter()
                .map(|(key, value)| Entry {
                    key,
                    value: Some(value),
                })
                .collect(),
        }),
        stat_prefix: network.unwrap_or_default().to_string(),
    };
    let type_url = match network {
        None => <envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as prost::Name>::type_url(),
        Some(_) => <envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as prost::Name>::type_url(),
    };
    Any {
        type_url,
        value: prost::Message::encode_to_vec(&config),
    }
}

fn policy(rule: &AuthzRule, settings: &MeshSettings, ports: PortView) -> Policy {
    let mut permissions: Vec<Permission> = Vec::new();
    if !rule.to.is_empty() {
        permissions.push(or_rules(
            rule.to.iter().map(|op| operation(op, ports)).collect(),
        ));
    }
    let mut principals: Vec<Principal> = Vec::new();
    if !rule.from.is_empty() {
        principals.push(or_ids(
            rule.from.iter().map(|s| source(s, settings)).collect(),
        ));
    }
    for c in &rule.when {
        match condition(c, settings, ports) {
            Condition::Permission(p) => permissions.push(p),
            Condition::Principal(p) => principals.push(p),
        }
    }
    Policy {
        permissions: vec![and_rules(permissions)],
        principals: vec![and_ids(principals)],
        ..Default::default()
    }
}

fn and_rules(mut rules: Vec<Permission>) -> Permission {
    let rule = match rules.len() {
        0 => permission::Rule::Any(true),
        1 => return rules.remove(0),
        _ => permission::Rule::AndRules(permission::Set { rules }),
    };
    Permission { rule: Some(rule) }
}

fn or_rules(mut rules: Vec<Permission>) -> Permission {
    if rules.len() == 1 {
        return rules.remove(0);
    }
    Permission {
        rule: Some(permission::Rule::OrRules(permission::Set { rules })),
    }
}

fn not_rule(p: Permission) -> Permission {
    Permission {
        rule: Some(permission::Rule::NotRule(Box::new(p))),
    }
}

fn and_ids(mut ids: Vec<Principal>) -> Principal {
    let id = match ids.len() {
        0 => principal::Identifier::Any(true),
        1 => return ids.remove(0),
        _ => principal::Identifier::AndIds(principal::Set { ids }),
    };
    Principal {
        identifier: Some(id),
    }
}

fn or_ids(mut ids: Vec<Principal>) -> Principal {
    if ids.len() == 1 {
        return ids.remove(0);
    }
    Principal {
        identifier: Some(principal::Identifier::OrIds(principal::Set { ids })),
    }
}

fn not_id(p: Principal) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::NotId(Box::new(p))),
    }
}

/// Istio's value syntax: `*` alone, `*suffix`, `prefix*`, or exact.
fn wildcard(value: &str, ignore_case: bool) -> StringMatcher {
    use string_matcher::MatchPattern;
    let pattern = if value == "*" {
        MatchPattern::SafeRegex(RegexMatcher {
            regex: ".+".to_string(),
            ..Default::default()
        })
    } else if let Some(rest) = value.strip_prefix('*') {
        MatchPattern::Suffix(rest.to_string())
    } else if let Some(rest) = value.strip_suffix('*') {
        MatchPattern::Prefix(rest.to_string())
    } else {
        MatchPattern::Exact(value.to_string())
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

fn header(name: &str, value: &str, ignore_case: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(wildcard(
            value,
            ignore_case,
        ))),
        ..Default::default()
    }
}

/// Values OR'ed, negated values excluded.
fn field<T>(values: &[T], not_values: &[T], one: impl Fn(&T) -> Permission) -> Option<Permission> {
    let mut parts = Vec::new();
    if !values.is_empty() {
        parts.push(or_rules(values.iter().map(&one).collect()));
    }
    if !not_values.is_empty() {
        parts.push(not_rule(or_rules(not_values.iter().map(&one).collect())));
    }
    (!parts.is_empty()).then(|| and_rules(parts))
}

fn field_ids<T>(
    values: &[T],
    not_values: &[T],
    one: impl Fn(&T) -> Principal,
) -> Option<Principal> {
    let mut parts = Vec::new();
    if !values.is_empty() {
        parts.push(or_ids(values.iter().map(&one).collect()));
    }
    if !not_values.is_empty() {
        parts.push(not_id(or_ids(not_values.iter().map(&one).collect())));
    }
    (!parts.is_empty()).then(|| and_ids(parts))
}

fn operation(op: &OperationMatch, ports: PortView) -> Permission {
    let method = |m: &String| Permission {
        rule: Some(permission::Rule::Header(header(":method", m, false))),
    };
    let host = |h: &String| Permission {
        rule: Some(permission::Rule::Header(header(":authority", h, true))),
    };
    let port = |p: &u16| Permission {
        rule: Some(permission::Rule::DestinationPort(ports.destination(*p))),
    };
    let path = |p: &String| Permission {
        rule: Some(permission::Rule::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(wildcard(p, false))),
        })),
    };
    let parts: Vec<Permission> = [
        field(&op.methods, &op.not_methods, method),
        field(&op.hosts, &op.not_hosts, host),
        field(&op.ports, &op.not_ports, port),
        field(&op.paths, &op.not_paths, path),
    ]
    .into_iter()
    .flatten()
    .collect();
    and_rules(parts)
}

fn authenticated(matcher: StringMatcher) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Authenticated(
            envoy_types::pb::envoy::config::rbac::v3::principal::Authenticated {
                principal_name: Some(matcher),
            },
        )),
    }
}

/// A principal as Istio writes it (`TD/ns/NS/sa/SA`, wildcards allowed) against the peer's
/// SPIFFE URI.
fn principal_named(value: &str) -> Principal {
    let matcher = if value == "*" {
        wildcard("*", false)
    } else if let Some(rest) = value.strip_prefix('*') {
        wildcard(&format!("*{rest}"), false)
    } else {
        wildcard(&format!("spiffe://{value}"), false)
    };
    authenticated(matcher)
}

fn principal_in_namespace(namespace: &str) -> Principal {
    let ns = if namespace == "*" {
        "[^/]+".to_string()
    } else if let Some(rest) = namespace.strip_prefix('*') {
        format!("[^/]*{}", regex_escape(rest))
    } else if let Some(rest) = namespace.strip_suffix('*') {
        format!("{}[^/]*", regex_escape(rest))
    } else {
        regex_escape(namespace)
    };
    authenticated(StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: format!("spiffe://[^/]+/ns/{ns}/sa/[^/]+"),
            ..Default::default()
        })),
        ignore_case: false,
    })
}

pub(crate) fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

fn cidr(value: &str) -> CidrRange {
    let (ip, len) = match value.split_once('/') {
        Some((ip, len)) => (ip, len.parse().unwrap_or(32)),
        None => (value, if value.contains(':') { 128 } else { 32 }),
    };
    CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(u32v(len)),
    }
}

fn remote_ip(value: &str) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::DirectRemoteIp(cidr(value))),
    }
}

fn source(s: &SourceMatch, _settings: &MeshSettings) -> Principal {
    let parts: Vec<Principal> = [
        field_ids(&s.principals, &s.not_principals, |p| principal_named(p)),
        field_ids(&s.namespaces, &s.not_namespaces, |n| {
            principal_in_namespace(n)
        }),
        field_ids(&s.ip_blocks, &s.not_ip_blocks, |b| remote_ip(b)),
        field_ids(&s.request_principals, &s.not_request_principals, |p| {
            request_principal(p)
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    and_ids(parts)
}

enum Condition {
    Permission(Permission),
    Principal(Principal),
}

fn condition(c: &ConditionMatch, _settings: &MeshSettings, ports: PortView) -> Condition {
    match &c.key {
        ConditionKey::RequestHeader(name) => Condition::Permission(
            field(&c.values, &c.not_values, |v| Permission {
                rule: Some(permission::Rule::Header(header(name, v, false))),
            })
            .unwrap_or(Permission {
                rule: Some(permission::Rule::Any(true)),
            }),
        ),
        ConditionKey::DestinationPort => Condition::Permission(
            field(&c.values, &c.not_values, |v| Permission {
                rule: Some(permission::Rule::DestinationPort(
                    v.parse().map_or(0, |p| ports.destination(p)),
                )),
            })
            .unwrap_or(Permission {
                rule: Some(permission::Rule::Any(true)),
            }),
        ),
        ConditionKey::SourcePrincipal => Condition::Principal(
            field_ids(&c.values, &c.not_values, |v| principal_named(v))
                .unwrap_or(and_ids(Vec::new())),
        ),
        ConditionKey::SourceNamespace => Condition::Principal(
            field_ids(&c.values, &c.not_values, |v| principal_in_namespace(v))
                .unwrap_or(and_ids(Vec::new())),
        ),
        ConditionKey::SourceIp => Condition::Principal(
            field_ids(&c.values, &c.not_values, |v| remote_ip(v)).unwrap_or(and_ids(Vec::new())),
        ),
        ConditionKey::RequestPrincipal => Condition::Principal(
            field_ids(&c.values, &c.not_values, |v| request_principal(v))
                .unwrap_or(and_ids(Vec::new())),
        ),
        ConditionKey::RequestAudiences => Condition::Principal(claim_condition(&["aud"], c)),
        ConditionKey::RequestPresenter => Condition::Principal(claim_condition(&["azp"], c)),
        ConditionKey::RequestClaim(path) => Condition::Principal(claim_condition(path, c)),
    }
}

// === The request's JWT (RequestAuthentication) ===

/// A principal on the verified payload jwt_authn put in the dynamic metadata.
// `metadata` principals are deprecated in the proto; Istio's authz builder writes them.
#[allow(deprecated)]
fn payload_matcher<S: AsRef<str>>(claims: &[S], value: ValueMatcher) -> Principal {
    let path = std::iter::once(crate::jwt::PAYLOAD_KEY)
        .chain(claims.iter().map(AsRef::as_ref))
        .map(|key| metadata_matcher::PathSegment {
            segment: Some(metadata_matcher::path_segment::Segment::Key(
                key.to_string(),
            )),
        })
        .collect();
    Principal {
        identifier: Some(principal::Identifier::Metadata(MetadataMatcher {
            filter: crate::jwt::JWT_FILTER.to_string(),
            path,
            value: Some(value),
            invert: false,
        })),
    }
}

fn string_value(m: StringMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(m)),
    }
}

fn or_values(mut values: Vec<ValueMatcher>) -> ValueMatcher {
    if values.len() == 1 {
        return values.remove(0);
    }
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
            value_matchers: values,
        })),
    }
}

/// `<iss>/<sub>` (split at the last `/`, as an issuer may be a URL) against the payload's
/// `iss` and `sub`, wildcards as Istio reads them.
fn request_principal(value: &str) -> Principal {
    let any = || wildcard("*", false);
    let (iss, sub) = match value.rfind('/') {
        Some(i) => (&value[..i], Some(&value[i + 1..])),
        None => (value, None),
    };
    let (iss, sub) = if value == "*" {
        (any(), any())
    } else if value.starts_with('*') {
        match sub {
            Some(sub) if iss == "*" => (any(), wildcard(sub, false)),
            Some(sub) => (wildcard(iss, false), wildcard(sub, false)),
            None => (any(), wildcard(value, false)),
        }
    } else if value.ends_with('*') {
        match sub {
            Some(sub) => (wildcard(iss, false), wildcard(sub, false)),
            None => (wildcard(value, false), any()),
        }
    } else {
        (
            wildcard(iss, false),
            wildcard(sub.unwrap_or_default(), false),
        )
    };
    and_ids(vec![
        payload_matcher(&["iss"], string_value(iss)),
        payload_matcher(&["sub"], string_value(sub)),
    ])
}

/// A claim (by its path in the payload) equal to one of the values, or holding one of them
/// when it is a list; `notValues` negated.
fn claim_condition<S: AsRef<str>>(path: &[S], c: &ConditionMatch) -> Principal {
    let matcher = |values: &[String]| {
        let value = or_values(
            values
                .iter()
                .map(|v| string_value(wildcard(v, false)))
                .collect(),
        );
        let list = ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
                ListMatcher {
                    match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(value.clone()))),
                },
            ))),
        };
        payload_matcher(path, or_values(vec![list, value]))
    };
    let mut parts = Vec::new();
    if !c.values.is_empty() {
        parts.push(matcher(&c.values));
    }
    if !c.not_values.is_empty() {
        parts.push(not_id(matcher(&c.not_values)));
    }
    and_ids(parts)
}
