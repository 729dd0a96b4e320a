//! mTLS and authorization: upstream TLS for clusters, the sidecar's inbound listener
//! (PeerAuthentication) and its RBAC filters (AuthorizationPolicy, in Istio's order).

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster, cluster::ClusterDiscoveryType, cluster::DiscoveryType,
};
use envoy_types::pb::envoy::config::core::v3::{
    CidrRange, DataSource, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, permission, principal,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, header_matcher,
    route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
    http_connection_manager::{
        CodecType, ForwardClientCertDetails, RouteSpecifier, SetCurrentClientCertDetails,
    },
    http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, RegexMatcher, StringMatcher, path_matcher, string_matcher,
};
use envoy_types::pb::google::protobuf::Any;
use strait_model::{
    AuthorizationPolicy, AuthzAction, AuthzRule, ClientTls, ClientTlsMode, ConditionKey,
    ConditionMatch, Model, MtlsMode, OperationMatch, ProxyNode, SourceMatch,
};

use crate::MeshSettings;
use crate::cluster::socket;
use crate::proto::{ads, any, boolv, duration, u32v};

/// The SDS names Istio uses: the workload's certificate and the mesh's trust bundle.
pub const WORKLOAD_SECRET: &str = "default";
pub const ROOT_SECRET: &str = "ROOTCA";
/// Endpoint metadata that auto mTLS matches on, as in Istio.
pub const TLS_MODE_MATCH: &str = "envoy.transport_socket_match";

const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const HCM: &str = "envoy.filters.network.http_connection_manager";
const RBAC_FILTER: &str = "envoy.filters.http.rbac";

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads()),
    }
}

fn tls_socket(config: Any) -> TransportSocket {
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

/// The sidecar's inbound listener and the cluster to its app, when it serves a workload.
pub fn inbound(
    model: &Model,
    node: &ProxyNode,
    settings: &MeshSettings,
) -> Option<(Listener, Cluster)> {
    let (inbound_port, app_port) = node.inbound?;
    let cluster_name = format!("inbound|{app_port}||");
    let app = Cluster {
        name: cluster_name.clone(),
        connect_timeout: Some(duration(std::time::Duration::from_secs(10))),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: cluster_name.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                        envoy_types::pb::envoy::config::endpoint::v3::Endpoint {
                            address: Some(socket("127.0.0.1", app_port)),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let policies = model.authorization_for(&node.namespace, &node.labels);
    let hcm = inbound_hcm(
        &format!("inbound_{inbound_port}"),
        &cluster_name,
        &policies,
        settings,
        InboundPorts {
            listener: inbound_port,
            app: app_port,
        },
    );
    let mtls = FilterChain {
        filters: vec![hcm.clone()],
        transport_socket: Some(tls_socket(any(&DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_SECRET)],
                validation_context_type: Some(
                    common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                        sds(ROOT_SECRET),
                    ),
                ),
                ..Default::default()
            }),
            require_client_certificate: Some(boolv(true)),
            ..Default::default()
        }))),
        ..Default::default()
    };
    let plain = FilterChain {
        filters: vec![hcm],
        ..Default::default()
    };
    let matching = |chain: FilterChain, protocol: &str| FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            transport_protocol: protocol.to_string(),
            ..Default::default()
        }),
        ..chain
    };
    let mode = model.mtls_mode(&node.namespace, &node.labels, app_port);
    let (filter_chains, inspect) = match mode {
        MtlsMode::Strict => (vec![mtls], false),
        MtlsMode::Disable => (vec![plain], false),
        // Both on one port: the TLS inspector tells a TLS hello from plaintext.
        MtlsMode::Permissive => (
            vec![matching(mtls, "tls"), matching(plain, "raw_buffer")],
            true,
        ),
    };
    let listener = Listener {
        name: format!("inbound_{inbound_port}"),
        address: Some(socket(&node.listen_address.to_string(), inbound_port)),
        filter_chains,
        listener_filters: if inspect {
            vec![ListenerFilter {
                name: "envoy.filters.listener.tls_inspector".to_string(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                    &TlsInspector::default(),
                ))),
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        traffic_direction: envoy_types::pb::envoy::config::core::v3::TrafficDirection::Inbound
            as i32,
        ..Default::default()
    };
    Some((listener, app))
}

fn inbound_hcm(
    stat_prefix: &str,
    cluster: &str,
    policies: &[&AuthorizationPolicy],
    settings: &MeshSettings,
    ports: InboundPorts,
) -> Filter {
    let mut http_filters = rbac_filters(policies, settings, ports);
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(
            any(&Router::default()),
        )),
        ..Default::default()
    });
    let manager = HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
            name: stat_prefix.to_string(),
            virtual_hosts: vec![VirtualHost {
                name: "inbound".to_string(),
                domains: vec!["*".to_string()],
                routes: vec![Route {
                    name: "default".to_string(),
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            cluster.to_string(),
                        )),
                        timeout: Some(duration(std::time::Duration::ZERO)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })),
        http_filters,
        // The app learns the caller's SPIFFE identity, as behind an Istio sidecar.
        forward_client_cert_details: ForwardClientCertDetails::SanitizeSet as i32,
        set_current_client_cert_details: Some(SetCurrentClientCertDetails {
            uri: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    Filter {
        name: HCM.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&manager))),
    }
}

// === Authorization ===

/// Istio's order: DENY, then AUDIT (logging only), then ALLOW. With no ALLOW policy, whatever
/// is not denied is allowed; with one, a request must match an ALLOW rule.
/// The sidecar's inbound port and the app port behind it. Envoy's RBAC `destination_port` is the
/// port the connection arrived on: with no traffic redirection, that is the inbound port, so a
/// policy naming the app's port is written with the inbound port (as the app port would be seen
/// behind Istio's iptables redirect).
#[derive(Clone, Copy, Debug)]
pub struct InboundPorts {
    pub listener: u16,
    pub app: u16,
}

impl InboundPorts {
    fn destination(self, port: u16) -> u32 {
        u32::from(if port == self.app {
            self.listener
        } else {
            port
        })
    }
}

pub fn rbac_filters(
    policies: &[&AuthorizationPolicy],
    settings: &MeshSettings,
    ports: InboundPorts,
) -> Vec<HttpFilter> {
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
                named.push((
                    format!("ns[{}]-policy[{}]-rule[{i}]", p.id.namespace, p.id.name),
                    policy(rule, settings, ports),
                ));
            }
        }
        Some(HttpFilter {
            name: format!("{RBAC_FILTER}.{label}"),
            config_type: Some(http_filter::ConfigType::TypedConfig(sorted_rbac(
                action as i32,
                named,
            ))),
            ..Default::default()
        })
    })
    .collect()
}

/// The RBAC filter config, encoded with its policies in name order. prost encodes protobuf maps
/// in hash order, which would make identical configs differ byte for byte (and resource
/// versions with them); these mirror types are wire-identical with the map's entries sorted.
fn sorted_rbac(action: i32, mut policies: Vec<(String, Policy)>) -> Any {
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
    #[derive(Clone, PartialEq, prost::Message)]
    struct HttpRbac {
        #[prost(message, optional, tag = "1")]
        rules: Option<Rules>,
    }
    policies.sort_by(|a, b| a.0.cmp(&b.0));
    let config = HttpRbac {
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
    };
    Any {
        type_url: <envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as prost::Name>::type_url(),
        value: prost::Message::encode_to_vec(&config),
    }
}

fn policy(rule: &AuthzRule, settings: &MeshSettings, ports: InboundPorts) -> Policy {
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

fn operation(op: &OperationMatch, ports: InboundPorts) -> Permission {
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

fn regex_escape(s: &str) -> String {
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

fn condition(c: &ConditionMatch, _settings: &MeshSettings, ports: InboundPorts) -> Condition {
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
    }
}
