//! RDS: virtual hosts from services and VirtualServices, and each HTTP route's Envoy form.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    HashPolicy, RequestMirrorPolicy, hash_policy,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction,
    RetryPolicy as PbRetry, Route, RouteAction as PbRouteAction, RouteConfiguration,
    RouteMatch as PbRouteMatch, VirtualHost, WeightedCluster, header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier, redirect_action, retry_policy,
    retry_policy::RetryHostPredicate, route, route_action, route_match,
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    FaultDelay as PbDelay, fault_delay,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as PbCors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort as PbAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use strait_model::{
    CorsPolicy, Destination, Fault, FaultStatus, GatewayRef, HashKey, HeaderMatch, HeaderOps,
    HttpRoute, LoadBalancer, Model, ProxyNode, Redirect, RetryPolicy, RouteAction, RouteMatch,
    Service, ServicePort, StringMatch, VirtualService, cluster_name, host,
};

use crate::cluster::{BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER};
use crate::listener::OUTBOUND_ROUTE_NAME;
use crate::proto::{any, boolv, duration, headers_to_add, percent, u32v};

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// Where a route config is served and who is asking: decides which matches apply.
pub struct Context<'a> {
    pub scope: GatewayRef,
    pub node: &'a ProxyNode,
    /// The port requests arrive for: the service port (sidecar) or the server port (gateway).
    pub port: Option<u16>,
}

/// The sidecar's one outbound route config: a virtual host per service port, picked by Host.
pub fn sidecar_routes(model: &Model, node: &ProxyNode) -> RouteConfiguration {
    let mut ports: Vec<(&Service, &ServicePort, bool)> = Vec::new();
    for service in model.services.values() {
        let http = service.ports.iter().filter(|p| p.protocol.is_http());
        // Names without a port go to the service's first HTTP port.
        ports.extend(http.enumerate().map(|(i, p)| (service, p, i == 0)));
    }
    let mut hosts = ServiceHosts::new(model, node);
    for (service, port, portless) in ports {
        hosts.add(service, port, portless, false);
    }
    let mut virtual_hosts = hosts.finish();
    // VirtualService hosts that name no service get a virtual host of their own.
    let mut used: BTreeSet<String> = virtual_hosts
        .iter()
        .flat_map(|vh| vh.domains.iter().cloned())
        .collect();
    for vs in model
        .virtual_services
        .iter()
        .filter(|v| v.applies_to_mesh())
    {
        for h in &vs.hosts {
            if model.services.keys().any(|s| host::covers(h, s)) || !used.insert(h.clone()) {
                continue;
            }
            let cx = Context {
                scope: GatewayRef::Mesh,
                node,
                port: None,
            };
            virtual_hosts.push(VirtualHost {
                name: h.clone(),
                domains: vec![h.clone()],
                routes: virtual_service_routes(model, vs, &cx),
                ..Default::default()
            });
        }
    }
    RouteConfiguration {
        name: OUTBOUND_ROUTE_NAME.to_string(),
        virtual_hosts,
        ..Default::default()
    }
}

/// A captured sidecar's route config for one destination port (named by the port, as Istio's
/// `9080`): the HTTP services on that port by name and by address, then what happens to a
/// request for any other host.
pub fn port_routes(
    model: &Model,
    node: &ProxyNode,
    port: u16,
    services: &[(&Service, &ServicePort)],
    unknown: Unknown,
) -> RouteConfiguration {
    let mut hosts = ServiceHosts::new(model, node);
    for (service, service_port) in services {
        hosts.add(service, service_port, true, true);
    }
    let mut virtual_hosts = hosts.finish();
    let catch_all = |name: &str, action: route::Action| VirtualHost {
        name: name.to_string(),
        domains: vec!["*".to_string()],
        routes: vec![Route {
            name: name.to_string(),
            r#match: Some(PbRouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
                ..Default::default()
            }),
            action: Some(action),
            ..Default::default()
        }],
        ..Default::default()
    };
    virtual_hosts.push(match unknown {
        Unknown::Passthrough => catch_all(
            "allow_any",
            route::Action::Route(PbRouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                    PASSTHROUGH_CLUSTER.to_string(),
                )),
                timeout: Some(duration(Duration::ZERO)),
                ..Default::default()
            }),
        ),
        Unknown::Refuse => catch_all(
            "block_all",
            route::Action::DirectResponse(DirectResponseAction {
                status: 502,
                ..Default::default()
            }),
        ),
    });
    RouteConfiguration {
        name: port.to_string(),
        virtual_hosts,
        ..Default::default()
    }
}

/// What a captured sidecar does with traffic for a destination the mesh does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unknown {
    /// ALLOW_ANY: on to the original destination.
    Passthrough,
    /// REGISTRY_ONLY: refused (502 for HTTP, closed for TCP).
    Refuse,
}

/// Virtual hosts for service ports, with each domain given to one of them only: a service's
/// own names first, then short names and addresses where they are still free.
struct ServiceHosts<'a> {
    model: &'a Model,
    node: &'a ProxyNode,
    used: BTreeSet<String>,
    hosts: Vec<(VirtualHost, Vec<String>)>,
}

impl<'a> ServiceHosts<'a> {
    fn new(model: &'a Model, node: &'a ProxyNode) -> Self {
        ServiceHosts {
            model,
            node,
            used: BTreeSet::new(),
            hosts: Vec::new(),
        }
    }

    /// `portless`: also the names without a port; `addresses`: also the service's addresses,
    /// as an HTTP client that called an address sends them in Host.
    fn add(&mut self, service: &Service, port: &ServicePort, portless: bool, addresses: bool) {
        let cx = Context {
            scope: GatewayRef::Mesh,
            node: self.node,
            port: Some(port.number),
        };
        let routes = match mesh_virtual_service(self.model, &service.hostname) {
            Some(vs) => virtual_service_routes(self.model, vs, &cx),
            None => vec![default_route(self.model, service, port)],
        };
        let explicit = [
            service.hostname.clone(),
            format!("{}:{}", service.hostname, port.number),
        ];
        self.used.extend(explicit.iter().cloned());
        let vh = VirtualHost {
            name: format!("{}:{}", service.hostname, port.number),
            domains: explicit.to_vec(),
            routes,
            ..Default::default()
        };
        let mut others = aliases(service, port.number, portless, self.node);
        if addresses {
            for ip in service
                .addresses
                .iter()
                .filter(|a| a.prefix_len() == a.max_prefix_len())
            {
                let ip = match ip.addr() {
                    std::net::IpAddr::V4(v4) => v4.to_string(),
                    std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                };
                others.push(format!("{ip}:{}", port.number));
                others.push(ip);
            }
        }
        self.hosts.push((vh, others));
    }

    /// Short names only where they name one service: an explicit host always wins.
    fn finish(mut self) -> Vec<VirtualHost> {
        for (vh, others) in &mut self.hosts {
            for alias in others.drain(..) {
                if self.used.insert(alias.clone()) {
                    vh.domains.push(alias);
                }
            }
        }
        self.hosts.into_iter().map(|(vh, _)| vh).collect()
    }
}

/// The names a client in `node`'s namespace may use for a Kubernetes-style service host.
fn aliases(service: &Service, port: u16, default_port: bool, node: &ProxyNode) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(rest) = service
        .hostname
        .strip_suffix(&format!(".svc.{}", host::DOMAIN_SUFFIX))
        && let Some((name, ns)) = rest.split_once('.')
        && !ns.contains('.')
    {
        names.push(format!("{name}.{ns}.svc"));
        names.push(format!("{name}.{ns}"));
        if ns == node.namespace {
            names.push(name.to_string());
        }
    }
    let mut out: Vec<String> = names.iter().map(|n| format!("{n}:{port}")).collect();
    if default_port {
        out.extend(names);
    }
    out
}

/// The VirtualService that routes a service host for the mesh: exact, else the narrowest wildcard.
fn mesh_virtual_service<'m>(model: &'m Model, hostname: &str) -> Option<&'m VirtualService> {
    model
        .virtual_services
        .iter()
        .filter(|vs| vs.applies_to_mesh())
        .filter_map(|vs| {
            vs.hosts
                .iter()
                .filter(|h| host::covers(h, hostname))
                .map(|h| (h.len(), vs))
                .max_by_key(|(l, _)| *l)
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, vs)| vs)
}

fn default_route(model: &Model, service: &Service, port: &ServicePort) -> Route {
    let cluster = cluster_name(&service.hostname, port.number, None);
    Route {
        name: "default".to_string(),
        r#match: Some(PbRouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(PbRouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
            timeout: Some(duration(Duration::ZERO)),
            hash_policy: hash_policy_for(model, &service.hostname, port.number, None),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Envoy routes for one VirtualService in one context, in order; each match block becomes a
/// route (they are OR'ed) and blocks that cannot apply here are left out.
pub fn virtual_service_routes(model: &Model, vs: &VirtualService, cx: &Context<'_>) -> Vec<Route> {
    let mut out = Vec::new();
    for (i, http) in vs.http.iter().enumerate() {
        let name = http
            .name
            .clone()
            .unwrap_or_else(|| format!("{}.{}.{i}", vs.id.name, vs.id.namespace));
        let matches: Vec<Option<&RouteMatch>> = if http.matches.is_empty() {
            vec![None]
        } else {
            http.matches
                .iter()
                .filter(|m| applies(m, cx))
                .map(Some)
                .collect()
        };
        for m in matches {
            let mut r = route(model, http, m, &name);
            // A route merged from a delegate comes from both objects.
            r.metadata = crate::origin::metadata(std::iter::once(&vs.id).chain(&http.delegate));
            out.push(r);
        }
    }
    out
}

fn applies(m: &RouteMatch, cx: &Context<'_>) -> bool {
    m.applies_to(&cx.scope)
        && m.port.is_none_or(|p| cx.port.is_none_or(|q| p == q))
        && m.source_labels
            .iter()
            .all(|(k, v)| cx.node.labels.get(k) == Some(v))
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| ns == &cx.node.namespace)
}

/// The cluster a destination names; the BlackHoleCluster where the proxy's scope (its Sidecar,
/// `exportTo`) leaves the service or subset out, so that share of requests gets a 503 as in
/// Istio, where Envoy finds no such cluster.
pub(crate) fn cluster_for(model: &Model, destination: &Destination) -> String {
    if model.holds(destination) {
        destination.cluster_name()
    } else {
        BLACKHOLE_CLUSTER.to_string()
    }
}

/// Whether a route configuration sends anything to `cluster`.
pub(crate) fn uses_cluster(config: &RouteConfiguration, cluster: &str) -> bool {
    config
        .virtual_hosts
        .iter()
        .flat_map(|v| &v.routes)
        .any(|r| match &r.action {
            Some(route::Action::Route(action)) => match &action.cluster_specifier {
                Some(route_action::ClusterSpecifier::Cluster(c)) => c == cluster,
                Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                    w.clusters.iter().any(|c| c.name == cluster)
                }
                _ => false,
            },
            _ => false,
        })
}

fn route(model: &Model, http: &HttpRoute, m: Option<&RouteMatch>, name: &str) -> Route {
    let mut r = Route {
        name: name.to_string(),
        r#match: Some(route_match_for(m)),
        request_headers_to_add: headers_to_add(&http.headers.request),
        request_headers_to_remove: http.headers.request.remove.clone(),
        response_headers_to_add: headers_to_add(&http.headers.response),
        response_headers_to_remove: http.headers.response.remove.clone(),
        ..Default::default()
    };
    if let Some(f) = &http.fault {
        r.typed_per_filter_config
            .insert(FAULT_FILTER.to_string(), any(&fault(f)));
    }
    if let Some(c) = &http.cors {
        r.typed_per_filter_config
            .insert(CORS_FILTER.to_string(), any(&cors(c)));
    }
    r.action = Some(match &http.action {
        RouteAction::Route(dests) => {
            let live: Vec<_> = dests.iter().filter(|d| d.weight > 0).collect();
            let specifier = match live.as_slice() {
                [only] => {
                    // A lone destination's header changes ride on the route itself.
                    merge_headers(&mut r, &only.headers);
                    route_action::ClusterSpecifier::Cluster(cluster_for(model, &only.destination))
                }
                _ => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
                    clusters: live
                        .iter()
                        .map(|d| ClusterWeight {
                            name: cluster_for(model, &d.destination),
                            weight: Some(u32v(d.weight)),
                            request_headers_to_add: headers_to_add(&d.headers.request),
                            request_headers_to_remove: d.headers.request.remove.clone(),
                            response_headers_to_add: headers_to_add(&d.headers.response),
                            response_headers_to_remove: d.headers.response.remove.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
            };
            let first = &live[0].destination;
            let mut action = PbRouteAction {
                cluster_specifier: Some(specifier),
                // Istio's default: no route timeout unless the VirtualService sets one.
                timeout: Some(duration(http.timeout.unwrap_or(Duration::ZERO))),
                retry_policy: http.retries.as_ref().and_then(retry_policy),
                request_mirror_policies: http
                    .mirrors
                    .iter()
                    .filter(|m| model.holds(&m.destination))
                    .map(|m| RequestMirrorPolicy {
                        cluster: m.destination.cluster_name(),
                        runtime_fraction: Some(RuntimeFractionalPercent {
                            default_value: Some(percent(m.percent)),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
                hash_policy: hash_policy_for(
                    model,
                    &first.host,
                    first.port,
                    first.subset.as_deref(),
                ),
                ..Default::default()
            };
            if let Some(rw) = &http.rewrite {
                if let Some(uri) = &rw.uri {
                    action.prefix_rewrite = uri.clone();
                }
                if let Some((pattern, substitution)) = &rw.uri_regex {
                    action.regex_rewrite = Some(RegexMatchAndSubstitute {
                        pattern: Some(regex(pattern)),
                        substitution: substitution.clone(),
                    });
                }
                if let Some(authority) = &rw.authority {
                    action.host_rewrite_specifier = Some(
                        route_action::HostRewriteSpecifier::HostRewriteLiteral(authority.clone()),
                    );
                }
            }
            route::Action::Route(action)
        }
        RouteAction::Redirect(rd) => route::Action::Redirect(redirect(rd)),
        RouteAction::DirectResponse { status, body } => {
            route::Action::DirectResponse(DirectResponseAction {
                status: u32::from(*status),
                body: body.as_ref().map(|b| DataSource {
                    specifier: Some(Specifier::InlineString(b.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }
    });
    r
}

/// Istio's translation: lists comma-joined, `maxAge` in seconds, always enabled, and
/// `unmatchedPreflights` as whether a preflight from an origin not allowed goes upstream.
fn cors(c: &CorsPolicy) -> PbCors {
    PbCors {
        allow_origin_string_match: c.allow_origins.iter().map(string_matcher).collect(),
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(boolv),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 100,
                denominator: DenominatorType::Hundred as i32,
            }),
            ..Default::default()
        }),
        forward_not_matching_preflights: Some(boolv(c.forward_unmatched_preflights)),
        ..Default::default()
    }
}

fn merge_headers(r: &mut Route, ops: &HeaderOps) {
    r.request_headers_to_add
        .extend(headers_to_add(&ops.request));
    r.request_headers_to_remove
        .extend(ops.request.remove.iter().cloned());
    r.response_headers_to_add
        .extend(headers_to_add(&ops.response));
    r.response_headers_to_remove
        .extend(ops.response.remove.iter().cloned());
}

fn route_match_for(m: Option<&RouteMatch>) -> PbRouteMatch {
    let Some(m) = m else {
        return PbRouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        };
    };
    let path = match &m.uri {
        None => route_match::PathSpecifier::Prefix("/".to_string()),
        Some(StringMatch::Exact(p)) => route_match::PathSpecifier::Path(p.clone()),
        Some(StringMatch::Prefix(p)) => route_match::PathSpecifier::Prefix(p.clone()),
        Some(StringMatch::Regex(p)) => route_match::PathSpecifier::SafeRegex(regex(p)),
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|(n, hm)| header_matcher(n, hm, false))
        .collect();
    headers.extend(
        m.without_headers
            .iter()
            .map(|(n, hm)| header_matcher(n, hm, true)),
    );
    for (pseudo, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            headers.push(header_matcher(
                pseudo,
                &HeaderMatch::Value(sm.clone()),
                false,
            ));
        }
    }
    PbRouteMatch {
        path_specifier: Some(path),
        case_sensitive: m.ignore_uri_case.then(|| boolv(false)),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|(name, sm)| QueryParameterMatcher {
                name: name.clone(),
                query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                    string_matcher(sm),
                )),
            })
            .collect(),
        ..Default::default()
    }
}

pub(crate) fn header_matcher(name: &str, hm: &HeaderMatch, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        invert_match: invert,
        header_match_specifier: Some(match hm {
            HeaderMatch::Present => HeaderMatchSpecifier::PresentMatch(true),
            HeaderMatch::Value(sm) => HeaderMatchSpecifier::StringMatch(string_matcher(sm)),
        }),
        ..Default::default()
    }
}

pub(crate) fn string_matcher(sm: &StringMatch) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(match sm {
            StringMatch::Exact(s) => string_matcher::MatchPattern::Exact(s.clone()),
            StringMatch::Prefix(s) => string_matcher::MatchPattern::Prefix(s.clone()),
            StringMatch::Regex(s) => string_matcher::MatchPattern::SafeRegex(regex(s)),
        }),
        ignore_case: false,
    }
}

fn regex(pattern: &str) -> RegexMatcher {
    RegexMatcher {
        regex: pattern.to_string(),
        ..Default::default()
    }
}

fn retry_policy(r: &RetryPolicy) -> Option<PbRetry> {
    if r.attempts == 0 {
        return None;
    }
    Some(PbRetry {
        retry_on: r.retry_on.join(","),
        num_retries: Some(u32v(r.attempts)),
        per_try_timeout: r.per_try_timeout.map(duration),
        retriable_status_codes: r
            .retriable_status_codes
            .iter()
            .map(|c| u32::from(*c))
            .collect(),
        // As Istio: retry on another host when there is one.
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_string(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                any(&PreviousHostsPredicate::default()),
            )),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    })
}

fn fault(f: &Fault) -> HttpFault {
    HttpFault {
        delay: f.delay.as_ref().map(|d| PbDelay {
            percentage: Some(percent(d.percent)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                d.fixed,
            ))),
        }),
        abort: f.abort.as_ref().map(|a| PbAbort {
            percentage: Some(percent(a.percent)),
            error_type: Some(match a.status {
                FaultStatus::Http(s) => fault_abort::ErrorType::HttpStatus(u32::from(s)),
                FaultStatus::Grpc(s) => fault_abort::ErrorType::GrpcStatus(s),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn redirect(rd: &Redirect) -> RedirectAction {
    use redirect_action::RedirectResponseCode as Code;
    let code = match rd.code {
        302 => Code::Found,
        303 => Code::SeeOther,
        307 => Code::TemporaryRedirect,
        308 => Code::PermanentRedirect,
        _ => Code::MovedPermanently,
    };
    RedirectAction {
        host_redirect: rd.authority.clone().unwrap_or_default(),
        port_redirect: rd.port.map(u32::from).unwrap_or(0),
        response_code: code as i32,
        scheme_rewrite_specifier: rd
            .scheme
            .clone()
            .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: rd
            .uri
            .clone()
            .map(redirect_action::PathRewriteSpecifier::PathRedirect),
        ..Default::default()
    }
}

/// Consistent hashing is chosen by the DestinationRule but keyed on the route.
fn hash_policy_for(model: &Model, host: &str, port: u16, subset: Option<&str>) -> Vec<HashPolicy> {
    let Some(LoadBalancer::ConsistentHash { key, .. }) =
        model.policy_for(host, port, subset).load_balancer
    else {
        return Vec::new();
    };
    let specifier =
        match key {
            HashKey::Header(name) => hash_policy::PolicySpecifier::Header(hash_policy::Header {
                header_name: name,
                ..Default::default()
            }),
            HashKey::Cookie { name, path, ttl } => {
                hash_policy::PolicySpecifier::Cookie(hash_policy::Cookie {
                    name,
                    path: path.unwrap_or_default(),
                    ttl: ttl.map(duration),
                    ..Default::default()
                })
            }
            HashKey::SourceIp => hash_policy::PolicySpecifier::ConnectionProperties(
                hash_policy::ConnectionProperties { source_ip: true },
            ),
            HashKey::QueryParameter(name) => {
                hash_policy::PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name })
            }
        };
    vec![HashPolicy {
        policy_specifier: Some(specifier),
        terminal: false,
    }]
}

/// Virtual hosts for a gateway server: every VirtualService bound to one of `gateways` whose
/// host fits one of the server's hosts.
pub fn gateway_virtual_hosts(
    model: &Model,
    node: &ProxyNode,
    servers: &[(&strait_model::Gateway, &strait_model::GatewayServer)],
    port: u16,
) -> Vec<VirtualHost> {
    let mut by_domain: BTreeMap<String, VirtualHost> = BTreeMap::new();
    for (gw, server) in servers {
        let cx = Context {
            scope: GatewayRef::Gateway(gw.id.clone()),
            node,
            port: Some(server.port),
        };
        for vs in model
            .virtual_services
            .iter()
            .filter(|v| v.applies_to_gateway(&gw.id))
        {
            for vs_host in &vs.hosts {
                let Some(gh) = server.hosts.iter().find(|gh| {
                    gh.namespace
                        .as_ref()
                        .is_none_or(|ns| ns == &vs.id.namespace)
                        && host::intersect(&gh.host, vs_host)
                }) else {
                    continue;
                };
                let domain = host::narrower(&gh.host, vs_host).to_string();
                if by_domain.contains_key(&domain) {
                    continue;
                }
                let domains = vec![domain.clone()];
                let require_tls =
                    matches!(server.tls, Some(strait_model::ServerTls::HttpsRedirect));
                by_domain.insert(
                    domain.clone(),
                    VirtualHost {
                        name: format!("{domain}:{port}"),
                        domains,
                        routes: virtual_service_routes(model, vs, &cx),
                        require_tls: if require_tls { 2 } else { 0 },
                        ..Default::default()
                    },
                );
            }
        }
    }
    by_domain.into_values().collect()
}
