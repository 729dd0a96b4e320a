//! `straitctl explain`: walks what one proxy has acknowledged for one request, step by step
//! (listener and filter chain, authorization, route configuration, virtual host, route, split,
//! clusters and their settings, endpoints, faults, CORS), each step with the reasons and the
//! objects it comes from. Pure: the configuration and the request in, the explanation out.

pub mod matching;

use std::fmt::Write as _;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{TrafficDirection, address, socket_address};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter, listener_filter};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action;
use envoy_types::pb::envoy::config::route::v3::rate_limit::{Action as RateLimitAction, action as rate_limit_action};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::LocalRateLimitDescriptor;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::{FilterConfig, Route, RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtProvider, JwtRequirement, PerRouteConfig as JwtPerRoute, jwt_requirement,
    per_route_config as jwt_per_route, requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::ratelimit::v3::RateLimit as GlobalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::{
    Rbac as HttpRbac, RbacPerRoute,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::StripPortMode;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpCluster;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket, fractional_percent};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::Duration;
use prost::{Message, Name};
use serde::Serialize;
use serde_json::{Value, json};
use strait_model::{Kind, ObjectId};

use crate::proxy_config::{AckedConfig, chain_match, connection_manager, endpoint_address, health};
use matching::{ConnectionView, RequestView};

/// The request to explain, as `straitctl explain` takes it.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub method: String,
    pub authority: String,
    pub path: String,
    /// `name: value` pairs; names are matched without regard to case.
    pub headers: Vec<(String, String)>,
    /// The caller's identity (`spiffe://...`); a caller with one connects with mTLS.
    pub source_principal: Option<String>,
    /// The port the request reaches on the proxy (a listener's); default: its outbound one.
    pub port: Option<u16>,
    /// The caller's address, for policies' `ipBlocks` (`None`: they never match).
    pub source_ip: Option<std::net::IpAddr>,
}

/// The walk, step by step, and where it ends.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub proxy: String,
    pub request: Value,
    pub steps: Vec<Step>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// listener, filter_chain, authorization, route_configuration, virtual_host, route,
    /// fault, cors, split, cluster, endpoints.
    pub step: &'static str,
    pub name: String,
    /// Why this one: the conditions that held (and, for routes, why earlier ones did not).
    pub why: Vec<String>,
    pub details: Value,
    /// The objects it comes from, `Kind namespace/name`.
    pub from: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// routed, denied, direct_response, redirect, no_listener, no_filter_chain,
    /// no_virtual_host, no_route, tls_required.
    pub kind: &'static str,
    /// The status the proxy answers with itself, if it does.
    pub status: Option<u32>,
    /// Where the request goes: each cluster with its weight (of `total_weight`).
    pub clusters: Vec<Destination>,
    pub total_weight: u32,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Destination {
    pub cluster: String,
    pub weight: u32,
    pub subset: Option<String>,
}

fn names(ids: &[ObjectId]) -> Vec<String> {
    ids.iter().map(ObjectId::to_string).collect()
}

fn seconds(d: Option<&Duration>) -> Option<String> {
    let d = d?;
    let total = d.seconds as f64 + f64::from(d.nanos) / 1e9;
    Some(format!("{total}s"))
}

fn port_of(listener: &Listener) -> Option<u32> {
    match listener.address.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(s) => match s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => Some(p),
            _ => None,
        },
        _ => None,
    }
}

fn address_of(listener: &Listener) -> String {
    match listener.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => {
            format!("{}:{}", s.address, port_of(listener).unwrap_or(0))
        }
        _ => "-".into(),
    }
}

/// The port an authority names (`reviews:9080`), else the scheme's.
fn authority_port(authority: &str) -> u32 {
    authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(80)
}

/// The RBAC policies' objects: Istio names them `ns[NS]-policy[NAME]-rule[N]`.
fn policy_object(policy: &str) -> Option<ObjectId> {
    let rest = policy.strip_prefix("ns[")?;
    let (namespace, rest) = rest.split_once("]-policy[")?;
    let (name, _) = rest.split_once(']')?;
    Some(ObjectId {
        kind: Kind::AuthorizationPolicy,
        namespace: namespace.into(),
        name: name.into(),
    })
}

struct Walk<'a> {
    config: &'a AckedConfig,
    view: RequestView,
    steps: Vec<Step>,
    /// The connection is TLS to the proxy (a chain that terminates it).
    tls: bool,
}

/// Explains how the proxy whose acknowledged configuration is `config` handles `request`.
pub fn explain(config: &AckedConfig, request: &Request) -> Explanation {
    let view = RequestView {
        method: request.method.clone(),
        authority: request.authority.clone(),
        path: request.path.clone(),
        scheme: "http".into(),
        headers: request
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        principal: request.source_principal.clone(),
        destination_port: 0,
        source_ip: request.source_ip,
    };
    let mut walk = Walk {
        config,
        view,
        steps: Vec::new(),
        tls: false,
    };
    let outcome = walk.run(request);
    Explanation {
        proxy: config.node_id.clone(),
        request: json!({
            "method": request.method,
            "authority": request.authority,
            "path": request.path,
            "headers": request.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "source_principal": request.source_principal,
            "port": request.port,
            "source_ip": request.source_ip,
        }),
        steps: walk.steps,
        outcome,
    }
}

fn stop(kind: &'static str, status: Option<u32>, message: String) -> Outcome {
    Outcome {
        kind,
        status,
        clusters: Vec::new(),
        total_weight: 0,
        message,
    }
}

impl Walk<'_> {
    fn step(
        &mut self,
        step: &'static str,
        name: String,
        why: Vec<String>,
        details: Value,
        from: Vec<String>,
    ) {
        self.steps.push(Step {
            step,
            name,
            why,
            details,
            from,
        });
    }

    fn run(&mut self, request: &Request) -> Outcome {
        let config = self.config;
        // The listener: the one on --port, else the outbound one (the first listener that
        // says so, else the first).
        let listener = match request.port {
            Some(port) => config
                .listeners
                .iter()
                .find(|l| port_of(l) == Some(u32::from(port))),
            None => config
                .listeners
                .iter()
                .find(|l| l.traffic_direction == TrafficDirection::Outbound as i32)
                .or(config
                    .listeners
                    .iter()
                    .find(|l| l.traffic_direction != TrafficDirection::Inbound as i32))
                .or(config.listeners.first()),
        };
        let Some(mut listener) = listener else {
            let message = match request.port {
                Some(port) => format!("the proxy has no listener on port {port}"),
                None => "the proxy has no listener".into(),
            };
            return stop("no_listener", None, message);
        };
        let mut why = vec![match request.port {
            Some(port) => format!("bound on port {port}"),
            None => "the proxy's outbound listener".into(),
        }];
        // A captured outbound listener hands the connection on by its original destination.
        let mut destination_port = port_of(listener).unwrap_or(0);
        if listener.use_original_dst.as_ref().is_some_and(|b| b.value) {
            let target = authority_port(&request.authority);
            if let Some(next) = config
                .listeners
                .iter()
                .find(|l| port_of(l) == Some(target) && l.name != listener.name)
            {
                why.push(format!(
                    "{} reads the original destination and hands port {target} to {}",
                    listener.name, next.name
                ));
                listener = next;
            }
            destination_port = target;
        } else if listener.listener_filters.iter().any(|f| {
            f.name == "envoy.filters.listener.original_dst"
                || matches!(&f.config_type, Some(listener_filter::ConfigType::TypedConfig(any)) if any.type_url.ends_with("OriginalDst"))
        }) {
            // A captured inbound listener matches its chains on the port the caller dialed.
            let target = authority_port(&request.authority);
            why.push(format!(
                "its original_dst filter reads the port the caller dialed: {target}"
            ));
            destination_port = target;
        }
        self.view.destination_port = destination_port;
        self.step(
            "listener",
            listener.name.clone(),
            why,
            json!({"address": address_of(listener), "direction": TrafficDirection::try_from(listener.traffic_direction).map(|d| d.as_str_name()).unwrap_or("UNSPECIFIED")}),
            names(&strait_translate::origins_of(listener.metadata.as_ref())),
        );

        // The filter chain.
        let mtls = self.view.principal.is_some();
        let conn = ConnectionView {
            destination_port,
            destination_ip: None,
            server_name: None,
            transport_protocol: if mtls { "tls" } else { "raw_buffer" }.into(),
            application_protocols: if mtls {
                vec!["istio".into(), "istio-http/1.1".into(), "http/1.1".into()]
            } else {
                Vec::new()
            },
        };
        let chain = matching::filter_chain(&listener.filter_chains, &conn)
            .or(listener.default_filter_chain.as_ref());
        let Some(chain) = chain else {
            return stop(
                "no_filter_chain",
                None,
                format!(
                    "no filter chain of {} takes a {} connection to port {destination_port}; the proxy closes it",
                    listener.name, conn.transport_protocol
                ),
            );
        };
        let tls = chain_tls(chain);
        self.tls = tls.is_some();
        self.step(
            "filter_chain",
            if chain.name.is_empty() {
                chain_match(chain)
            } else {
                chain.name.clone()
            },
            vec![format!(
                "match {} for a {} connection to port {destination_port}",
                chain_match(chain),
                conn.transport_protocol
            )],
            json!({"tls": tls}),
            names(&strait_translate::origins_of(chain.metadata.as_ref())),
        );
        if tls.is_some() && !mtls {
            return stop(
                "tls_required",
                None,
                "the chain terminates (m)TLS and the request comes in plaintext: the handshake fails (give --source-principal for a mesh caller)".into(),
            );
        }

        // Network RBAC (TCP-level AuthorizationPolicy).
        for f in &chain.filters {
            if let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type
                && any.type_url.ends_with(&NetworkRbac::full_name())
                && let Ok(rbac) = NetworkRbac::decode(any.value.as_slice())
                && let Some(rules) = &rbac.rules
                && let Some(denied) = self.rbac(&f.name, rules, true)
            {
                return denied;
            }
        }

        let Some(hcm) = connection_manager(chain) else {
            return self.tcp(chain);
        };
        // The port leaves the authority before any filter or the routing sees it, when the
        // connection manager says so (a gateway's).
        let strip = match hcm.strip_port_mode {
            Some(StripPortMode::StripAnyHostPort(any)) => any,
            None => false,
        } || (hcm.strip_matching_host_port
            && authority_port(&self.view.authority) == destination_port);
        if strip {
            self.view.authority = matching::strip_port(&self.view.authority).to_string();
        }

        let inline;
        let rc: &RouteConfiguration = match &hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => {
                match config.route_configuration(&rds.route_config_name) {
                    Some(rc) => rc,
                    None => {
                        return stop(
                            "no_route",
                            Some(404),
                            format!(
                                "route configuration {:?} is not held by the proxy",
                                rds.route_config_name
                            ),
                        );
                    }
                }
            }
            Some(RouteSpecifier::RouteConfig(rc)) => {
                inline = rc.clone();
                &inline
            }
            _ => {
                return stop(
                    "no_route",
                    Some(404),
                    "the connection manager has no routes".into(),
                );
            }
        };
        self.step(
            "route_configuration",
            rc.name.clone(),
            vec![match &hcm.route_specifier {
                Some(RouteSpecifier::Rds(_)) => "named by the connection manager (RDS)".into(),
                _ => "inline in the connection manager".into(),
            }],
            json!({"virtual_hosts": rc.virtual_hosts.len()}),
            names(&strait_translate::origins_of(rc.metadata.as_ref())),
        );

        // Envoy picks the route before the filters that want it run; a filter that answers
        // (RBAC's 403, JWT's 401) still answers before the router's 404.
        let selected = self.select_route(rc);

        for f in &hcm.http_filters {
            let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            let route = selected.as_ref().ok().map(|(vh, route)| (*vh, *route));
            // A filter disabled in the chain runs only where a route's config enables it.
            if f.disabled && route.is_none_or(|(vh, r)| per_filter(vh, r, &f.name).is_none()) {
                continue;
            }
            let denied = if any.type_url.ends_with(&HttpRbac::full_name()) {
                let override_rbac = route
                    .and_then(|(vh, r)| per_filter(vh, r, &f.name))
                    .and_then(|a| RbacPerRoute::decode(a.value.as_slice()).ok())
                    .and_then(|p| p.rbac);
                match override_rbac.or_else(|| HttpRbac::decode(any.value.as_slice()).ok()) {
                    Some(HttpRbac {
                        rules: Some(rules), ..
                    }) => self.rbac(&f.name, &rules, false),
                    _ => None,
                }
            } else if any.type_url.ends_with(&JwtAuthentication::full_name()) {
                match JwtAuthentication::decode(any.value.as_slice()) {
                    Ok(jwt) => self.jwt(&f.name, &jwt, route),
                    Err(_) => None,
                }
            } else if any.type_url.ends_with(&LocalRateLimit::full_name()) {
                let local = route
                    .and_then(|(vh, r)| per_filter(vh, r, &f.name))
                    .unwrap_or(any.clone());
                if let Ok(limit) = LocalRateLimit::decode(local.value.as_slice()) {
                    self.local_rate_limit(&f.name, &limit, route);
                }
                None
            } else if any.type_url.ends_with(&GlobalRateLimit::full_name()) {
                if let Ok(limit) = GlobalRateLimit::decode(any.value.as_slice()) {
                    self.global_rate_limit(&f.name, &limit, route);
                }
                None
            } else {
                None
            };
            if let Some(denied) = denied {
                return denied;
            }
        }

        let (_, route) = match selected {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        let route_from = names(&strait_translate::origins_of(route.metadata.as_ref()));
        self.filters_of(route, &route_from);

        match &route.action {
            Some(Action::Route(action)) => {
                let (destinations, total) = match &action.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(c)) => (vec![destination(c, 1)], 1),
                    Some(ClusterSpecifier::WeightedClusters(w)) => {
                        let list: Vec<Destination> = w
                            .clusters
                            .iter()
                            .map(|c| destination(&c.name, c.weight.as_ref().map_or(0, |w| w.value)))
                            .collect();
                        let total = list.iter().map(|d| d.weight).sum();
                        (list, total)
                    }
                    Some(ClusterSpecifier::ClusterHeader(h)) => {
                        match self.view.header(&h.to_ascii_lowercase()) {
                            Some(c) => (vec![destination(&c, 1)], 1),
                            None => {
                                return stop(
                                    "no_route",
                                    Some(503),
                                    format!("cluster header {h} is missing"),
                                );
                            }
                        }
                    }
                    _ => return stop("no_route", Some(503), "the route names no cluster".into()),
                };
                let split_why = if destinations.len() > 1 {
                    destinations
                        .iter()
                        .map(|d| format!("{} takes {} of {total}", d.cluster, d.weight))
                        .collect()
                } else {
                    vec!["one destination".into()]
                };
                self.step(
                    "split",
                    destinations
                        .iter()
                        .map(|d| d.cluster.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    split_why,
                    json!({"clusters": destinations, "total_weight": total}),
                    route_from,
                );
                self.routed(destinations, total)
            }
            Some(Action::Redirect(r)) => {
                use envoy_types::pb::envoy::config::route::v3::redirect_action::{
                    PathRewriteSpecifier, SchemeRewriteSpecifier,
                };
                let mut parts = Vec::new();
                match &r.scheme_rewrite_specifier {
                    Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => {
                        parts.push("to https".into())
                    }
                    Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => {
                        parts.push(format!("to {s}"))
                    }
                    _ => {}
                }
                if !r.host_redirect.is_empty() {
                    parts.push(format!("host {}", r.host_redirect));
                }
                if r.port_redirect != 0 {
                    parts.push(format!("port {}", r.port_redirect));
                }
                match &r.path_rewrite_specifier {
                    Some(PathRewriteSpecifier::PathRedirect(p)) => parts.push(format!("path {p}")),
                    Some(PathRewriteSpecifier::PrefixRewrite(p)) => {
                        parts.push(format!("prefix rewritten to {p}"))
                    }
                    _ => {}
                }
                stop(
                    "redirect",
                    Some(redirect_status(r.response_code)),
                    format!("the proxy redirects {}", parts.join(", ")),
                )
            }
            Some(Action::DirectResponse(d)) => stop(
                "direct_response",
                Some(d.status),
                format!("the proxy answers {} itself", d.status),
            ),
            _ => stop("no_route", Some(404), "the route has no action".into()),
        }
    }

    /// The virtual host and route Envoy picks, as steps; the outcome when there is none.
    fn select_route<'r>(
        &mut self,
        rc: &'r RouteConfiguration,
    ) -> Result<(&'r VirtualHost, &'r Route), Outcome> {
        let authority = if rc.ignore_port_in_host_matching {
            matching::strip_port(&self.view.authority).to_string()
        } else {
            self.view.authority.clone()
        };
        let Some((vh, domain, how)) = matching::virtual_host(&rc.virtual_hosts, &authority) else {
            return Err(stop(
                "no_virtual_host",
                Some(404),
                format!(
                    "no virtual host of {} has a domain for {authority:?}",
                    rc.name
                ),
            ));
        };
        self.step(
            "virtual_host",
            vh.name.clone(),
            vec![format!(
                "authority {authority:?} matches domain {domain:?} ({how:?})"
            )],
            json!({"domains": vh.domains, "require_tls": vh.require_tls != 0}),
            names(&strait_translate::origins_of(vh.metadata.as_ref())),
        );
        // EXTERNAL_ONLY (1) and ALL (2): a plaintext request is redirected to https (a
        // caller through the gateway is external).
        if vh.require_tls != 0 && !self.tls {
            return Err(stop(
                "redirect",
                Some(301),
                format!(
                    "virtual host {} requires TLS: the proxy redirects to https",
                    vh.name
                ),
            ));
        }

        let mut skipped = Vec::new();
        let mut chosen: Option<(&Route, Vec<String>)> = None;
        for (i, route) in vh.routes.iter().enumerate() {
            let label = if route.name.is_empty() {
                format!("#{i}")
            } else {
                route.name.clone()
            };
            match route
                .r#match
                .as_ref()
                .map(|m| matching::route_matches(m, &self.view))
            {
                Some(Ok(why)) => {
                    chosen = Some((route, why));
                    break;
                }
                Some(Err(why)) => skipped.push(format!("route {label} skipped: {why}")),
                None => skipped.push(format!("route {label} skipped: it has no match")),
            }
        }
        let Some((route, mut why)) = chosen else {
            let mut message = format!("no route of virtual host {} matches", vh.name);
            for s in &skipped {
                let _ = write!(message, "; {s}");
            }
            return Err(stop("no_route", Some(404), message));
        };
        why.splice(0..0, skipped);
        let (details, timing) = route_details(vh, route);
        why.extend(timing);
        self.step(
            "route",
            if route.name.is_empty() {
                "-".into()
            } else {
                route.name.clone()
            },
            why,
            details,
            names(&strait_translate::origins_of(route.metadata.as_ref())),
        );
        Ok((vh, route))
    }

    /// A chain that proxies TCP: its cluster(s), with their settings and endpoints.
    fn tcp(&mut self, chain: &FilterChain) -> Outcome {
        let Some(tcp) = crate::proxy_config::tcp_proxy(chain) else {
            return stop(
                "no_route",
                None,
                "the chain has neither an HTTP connection manager nor a TCP proxy".into(),
            );
        };
        let (destinations, total) = match &tcp.cluster_specifier {
            Some(TcpCluster::Cluster(c)) => (vec![destination(c, 1)], 1),
            Some(TcpCluster::WeightedClusters(w)) => {
                let list: Vec<Destination> = w
                    .clusters
                    .iter()
                    .map(|c| destination(&c.name, c.weight))
                    .collect();
                let total = list.iter().map(|d| d.weight).sum();
                (list, total)
            }
            None => {
                return stop("no_route", None, "the TCP proxy names no cluster".into());
            }
        };
        self.step(
            "split",
            tcp.stat_prefix.clone(),
            vec!["the chain proxies TCP; no HTTP routing applies".into()],
            json!({
                "clusters": destinations,
                "total_weight": total,
                "idle_timeout": seconds(tcp.idle_timeout.as_ref()),
            }),
            Vec::new(),
        );
        self.routed(destinations, total)
    }

    /// The clusters a request goes to, each step with its settings and endpoints.
    fn routed(&mut self, destinations: Vec<Destination>, total: u32) -> Outcome {
        for d in &destinations {
            self.cluster(&d.cluster);
        }
        let message = match destinations.as_slice() {
            [one] => format!("routed to {}", one.cluster),
            many => format!(
                "split between {}",
                many.iter()
                    .map(|d| format!("{} ({}/{total})", d.cluster, d.weight))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Outcome {
            kind: "routed",
            status: None,
            clusters: destinations,
            total_weight: total,
            message,
        }
    }

    /// Envoy's JWT filter: which requirement applies (the route's, else the first rule whose
    /// match holds) and whether the request carries what it needs. Explain sees whether a
    /// token is there, not whether it verifies: the outcome is the proxy's for a token that
    /// does (and a 401 for one that does not).
    fn jwt(
        &mut self,
        filter_name: &str,
        config: &JwtAuthentication,
        route: Option<(&VirtualHost, &Route)>,
    ) -> Option<Outcome> {
        use jwt_per_route::RequirementSpecifier;
        use requirement_rule::RequirementType;
        let mut why = Vec::new();
        let per_route = route
            .and_then(|(vh, r)| per_filter(vh, r, filter_name))
            .and_then(|a| JwtPerRoute::decode(a.value.as_slice()).ok());
        let requirement: Option<(String, &JwtRequirement)> = match per_route
            .as_ref()
            .and_then(|p| p.requirement_specifier.as_ref())
        {
            Some(RequirementSpecifier::Disabled(true)) => {
                why.push("the route disables it".into());
                None
            }
            Some(RequirementSpecifier::RequirementName(name)) => {
                why.push(format!("the route names requirement {name:?}"));
                config.requirement_map.get(name).map(|r| (name.clone(), r))
            }
            _ => config.rules.iter().enumerate().find_map(|(i, rule)| {
                let m = rule.r#match.as_ref()?;
                let held = matching::route_matches(m, &self.view).ok()?;
                let requirement = match rule.requirement_type.as_ref()? {
                    RequirementType::Requires(r) => r,
                    RequirementType::RequirementName(n) => config.requirement_map.get(n)?,
                };
                why.push(format!("rule #{i} applies: {}", held.join(", ")));
                Some((format!("rule #{i}"), requirement))
            }),
        };
        let providers: Vec<Value> = {
            let mut list: Vec<(&String, &JwtProvider)> = config.providers.iter().collect();
            list.sort_by_key(|(name, _)| name.as_str());
            list.into_iter()
                .map(|(name, p)| {
                    json!({
                        "name": name,
                        "issuer": p.issuer,
                        "audiences": p.audiences,
                        "token_from": token_locations(p),
                        "token_present": self.token(p),
                    })
                })
                .collect()
        };
        let verdict = match &requirement {
            None => {
                if why.is_empty() {
                    why.push("no rule applies: no token is required or verified".into());
                }
                Verdict::Pass
            }
            Some((_, r)) => {
                let verdict = self.requirement(config, r);
                why.push(format!("requires {}", describe_requirement(r)));
                why.push(match verdict {
                    Verdict::Pass => {
                        "the request carries what it requires (a token is checked by the proxy: signature, issuer, audience, expiry)".into()
                    }
                    Verdict::Missing => "no token where the requirement looks: the proxy answers 401".into(),
                });
                verdict
            }
        };
        self.step(
            "jwt",
            filter_name.to_string(),
            why,
            json!({
                "requirement": requirement.map(|(name, r)| json!({"name": name, "requires": describe_requirement(r)})),
                "providers": providers,
            }),
            Vec::new(),
        );
        (verdict == Verdict::Missing).then(|| {
            stop(
                "denied",
                Some(401),
                format!("{filter_name}: Jwt is missing"),
            )
        })
    }

    /// Whether the request has a token where `provider` looks for one.
    fn token(&self, provider: &JwtProvider) -> bool {
        let from_header = |name: &str, prefix: &str| {
            self.view
                .header(&name.to_ascii_lowercase())
                .is_some_and(|v| prefix.is_empty() || v.starts_with(prefix))
        };
        let from_param = |name: &str| {
            self.view.query().is_some_and(|q| {
                q.split('&').any(|kv| {
                    kv.split_once('=')
                        .is_some_and(|(k, v)| k == name && !v.is_empty())
                })
            })
        };
        if provider.from_headers.is_empty()
            && provider.from_params.is_empty()
            && provider.from_cookies.is_empty()
        {
            // Envoy's defaults.
            return from_header("authorization", "Bearer ") || from_param("access_token");
        }
        provider
            .from_headers
            .iter()
            .any(|h| from_header(&h.name, &h.value_prefix))
            || provider.from_params.iter().any(|p| from_param(p))
            || provider.from_cookies.iter().any(|c| {
                self.view.header("cookie").is_some_and(|cookies| {
                    cookies
                        .split(';')
                        .any(|kv| kv.trim().split_once('=').is_some_and(|(k, _)| k == c))
                })
            })
    }

    fn requirement(&self, config: &JwtAuthentication, r: &JwtRequirement) -> Verdict {
        use jwt_requirement::RequiresType;
        let provider = |name: &str| {
            if config.providers.get(name).is_some_and(|p| self.token(p)) {
                Verdict::Pass
            } else {
                Verdict::Missing
            }
        };
        match &r.requires_type {
            Some(RequiresType::ProviderName(name)) => provider(name),
            Some(RequiresType::ProviderAndAudiences(p)) => provider(&p.provider_name),
            Some(RequiresType::RequiresAny(any)) => {
                if any
                    .requirements
                    .iter()
                    .any(|r| self.requirement(config, r) == Verdict::Pass)
                {
                    Verdict::Pass
                } else {
                    Verdict::Missing
                }
            }
            Some(RequiresType::RequiresAll(all)) => {
                if all
                    .requirements
                    .iter()
                    .all(|r| self.requirement(config, r) == Verdict::Pass)
                {
                    Verdict::Pass
                } else {
                    Verdict::Missing
                }
            }
            // allow_missing, allow_missing_or_failed, extraction only: never a 401 for none.
            _ => Verdict::Pass,
        }
    }

    /// Envoy's local rate limit: the descriptors the filter's actions make of this request,
    /// the buckets they fall in (a RateLimitPolicy's limits), the default bucket (the route's,
    /// else the filter's), and how much of the traffic it is enabled and enforced for.
    fn local_rate_limit(
        &mut self,
        filter_name: &str,
        limit: &LocalRateLimit,
        route: Option<(&VirtualHost, &Route)>,
    ) {
        let percent = |p: Option<&RuntimeFractionalPercent>| {
            p.and_then(|p| p.default_value.as_ref())
                .map_or(0.0, fractional_percent)
        };
        let enabled = percent(limit.filter_enabled.as_ref());
        let enforced = percent(limit.filter_enforced.as_ref());
        let bucket_json = |b: &TokenBucket| {
            json!({
                "max_tokens": b.max_tokens,
                "tokens_per_fill": b.tokens_per_fill.as_ref().map_or(1, |t| t.value),
                "fill_interval": seconds(b.fill_interval.as_ref()),
            })
        };
        let bucket = limit.token_bucket.as_ref().map(bucket_json);
        let status = limit.status.as_ref().map_or(429, |s| s.code);
        let describe = |b: &Value| {
            format!(
                "{} requests at most, {} more every {}; past that the proxy answers {status} ({enabled}% enabled, {enforced}% enforced)",
                b["max_tokens"],
                b["tokens_per_fill"],
                b["fill_interval"].as_str().unwrap_or("?")
            )
        };
        let mut why = Vec::new();
        let mut counted = Vec::new();
        let mut from = Vec::new();
        for (i, rl) in limit.rate_limits.iter().enumerate() {
            let entries = match self.descriptor(&rl.actions) {
                Ok(entries) => entries,
                Err(reason) => {
                    why.push(format!("rate_limits[{i}] makes no descriptor: {reason}"));
                    continue;
                }
            };
            let shown = entries
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let Some(d) = find_descriptor(&limit.descriptors, &entries) else {
                why.push(format!("descriptor [{shown}] matches no configured bucket"));
                continue;
            };
            let Some(b) = d.token_bucket.as_ref().map(bucket_json) else {
                continue;
            };
            let policy = entries
                .iter()
                .find(|(k, _)| k == RATE_LIMIT_KEY)
                .and_then(|(_, v)| rate_limit_object(v));
            if let Some(id) = &policy {
                from.push(format!("{} {}/{}", id.kind, id.namespace, id.name));
            }
            let per_value = d.entries.iter().any(|e| e.value.is_empty());
            why.push(format!(
                "counted as [{shown}]{}: {}",
                if per_value {
                    " (a bucket of its own per value)"
                } else {
                    ""
                },
                describe(&b)
            ));
            counted.push(json!({"descriptor": shown, "token_bucket": b, "per_value": per_value}));
        }
        let default_consumed = counted.is_empty()
            || limit
                .always_consume_default_token_bucket
                .as_ref()
                .is_none_or(|b| b.value);
        if default_consumed && let Some(b) = &bucket {
            let from_route = route.is_some_and(|(vh, r)| per_filter(vh, r, filter_name).is_some());
            why.push(format!(
                "{}: {}",
                if from_route {
                    "the route's (or virtual host's) limit"
                } else {
                    "the filter's limit"
                },
                describe(b)
            ));
        }
        if enabled <= 0.0 {
            why.push("not enabled for this request: no limit applies".into());
        } else if counted.is_empty() && !(default_consumed && bucket.is_some()) {
            why.push("no limit counts this request".into());
        }
        from.dedup();
        self.step(
            "rate_limit",
            filter_name.to_string(),
            why,
            json!({
                "kind": "local",
                "token_bucket": bucket,
                "limits": counted,
                "enabled_percent": enabled,
                "enforced_percent": enforced,
                "status": status,
                "descriptors": limit.descriptors.len(),
            }),
            from,
        );
    }

    /// The descriptor a local rate limit's `actions` make of the request, or why none.
    fn descriptor(&self, actions: &[RateLimitAction]) -> Result<Vec<(String, String)>, String> {
        use rate_limit_action::ActionSpecifier;
        let key = |k: &str, default: &str| if k.is_empty() { default } else { k }.to_string();
        let mut entries = Vec::new();
        for a in actions {
            match &a.action_specifier {
                Some(ActionSpecifier::GenericKey(g)) => {
                    entries.push((
                        key(&g.descriptor_key, "generic_key"),
                        g.descriptor_value.clone(),
                    ));
                }
                Some(ActionSpecifier::HeaderValueMatch(h)) => {
                    let failed = h
                        .headers
                        .iter()
                        .find_map(|m| matching::header_matches(m, &self.view).err());
                    let expect = h.expect_match.as_ref().is_none_or(|b| b.value);
                    if failed.is_none() != expect {
                        return Err(failed.unwrap_or_else(|| "the headers match".into()));
                    }
                    entries.push((
                        key(&h.descriptor_key, "header_match"),
                        h.descriptor_value.clone(),
                    ));
                }
                Some(ActionSpecifier::RequestHeaders(h)) => {
                    match self.view.header(&h.header_name) {
                        Some(v) => entries.push((h.descriptor_key.clone(), v)),
                        None if h.skip_if_absent => {}
                        None => return Err(format!("header {} is missing", h.header_name)),
                    }
                }
                Some(ActionSpecifier::RemoteAddress(_)) => match self.view.source_ip {
                    Some(ip) => entries.push(("remote_address".into(), ip.to_string())),
                    None => {
                        return Err("the caller's address is not known (give --source-ip)".into());
                    }
                },
                _ => return Err("an action explain does not evaluate".into()),
            }
        }
        Ok(entries)
    }

    /// Envoy's global rate limit filter: the service it asks and the route's descriptors.
    fn global_rate_limit(
        &mut self,
        filter_name: &str,
        limit: &GlobalRateLimit,
        route: Option<(&VirtualHost, &Route)>,
    ) {
        let actions = route
            .map(|(vh, r)| {
                let on_route = match &r.action {
                    Some(Action::Route(a)) => a.rate_limits.len(),
                    _ => 0,
                };
                on_route + vh.rate_limits.len()
            })
            .unwrap_or(0);
        let service = limit
            .rate_limit_service
            .as_ref()
            .and_then(|s| s.grpc_service.as_ref())
            .map(|g| format!("{:?}", g.target_specifier));
        self.step(
            "rate_limit",
            filter_name.to_string(),
            vec![if actions == 0 {
                "the route and virtual host have no rate limit actions: nothing is asked".into()
            } else {
                format!(
                    "{actions} rate limit action(s) ask the service for domain {:?}",
                    limit.domain
                )
            }],
            json!({"kind": "global", "domain": limit.domain, "service": service, "actions": actions}),
            Vec::new(),
        );
    }

    /// Runs one RBAC filter; the outcome if it denies.
    fn rbac(
        &mut self,
        filter_name: &str,
        rules: &envoy_types::pb::envoy::config::rbac::v3::Rbac,
        network: bool,
    ) -> Option<Outcome> {
        let mut policies: Vec<(&String, &envoy_types::pb::envoy::config::rbac::v3::Policy)> =
            rules.policies.iter().collect();
        policies.sort_by_key(|(name, _)| name.as_str());
        let matched: Vec<&String> = policies
            .iter()
            .filter(|(_, p)| {
                p.permissions
                    .iter()
                    .any(|perm| matching::permission_matches(perm, &self.view))
                    && p.principals
                        .iter()
                        .any(|who| matching::principal_matches(who, &self.view))
            })
            .map(|(name, _)| *name)
            .collect();
        let action = RbacAction::try_from(rules.action).unwrap_or(RbacAction::Allow);
        let allowed = match action {
            RbacAction::Allow => !matched.is_empty(),
            RbacAction::Deny => matched.is_empty(),
            RbacAction::Log => true,
        };
        let verdict = if allowed { "ALLOW" } else { "DENY" };
        let mut from: Vec<ObjectId> = Vec::new();
        for name in &matched {
            if let Some(id) = policy_object(name)
                && !from.contains(&id)
            {
                from.push(id);
            }
        }
        let why = if matched.is_empty() {
            vec![format!(
                "no {} policy matches (of {})",
                action.as_str_name(),
                policies.len()
            )]
        } else {
            matched
                .iter()
                .map(|m| format!("policy {m} matches"))
                .collect()
        };
        self.step(
            "authorization",
            filter_name.to_string(),
            why,
            json!({
                "action": action.as_str_name(),
                "policies": policies.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                "matched": matched,
                "verdict": verdict,
                "principal": self.view.principal,
            }),
            names(&from),
        );
        (!allowed).then(|| {
            stop(
                "denied",
                if network { None } else { Some(403) },
                format!(
                    "denied by {filter_name} ({}): {}",
                    action.as_str_name(),
                    if matched.is_empty() {
                        "no ALLOW policy matches".to_string()
                    } else {
                        matched
                            .iter()
                            .map(|m| m.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            )
        })
    }

    fn filters_of(&mut self, route: &Route, from: &[String]) {
        if let Some(any) = route
            .typed_per_filter_config
            .get("envoy.filters.http.fault")
            && let Ok(fault) = HttpFault::decode(any.value.as_slice())
        {
            let mut why = Vec::new();
            let mut details = json!({});
            if let Some(delay) = &fault.delay {
                let pct = delay
                    .percentage
                    .as_ref()
                    .map(|p| p.numerator)
                    .unwrap_or(100);
                let d = match &delay.fault_delay_secifier {
                    Some(envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier::FixedDelay(d)) => seconds(Some(d)),
                    _ => None,
                };
                why.push(format!(
                    "delay {} for {pct}% of requests",
                    d.clone().unwrap_or_default()
                ));
                details["delay"] = json!({"fixed": d, "percent": pct});
            }
            if let Some(abort) = &fault.abort {
                let pct = abort
                    .percentage
                    .as_ref()
                    .map(|p| p.numerator)
                    .unwrap_or(100);
                let status = match abort.error_type {
                    Some(envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType::HttpStatus(s)) => Some(s),
                    _ => None,
                };
                why.push(format!(
                    "abort with {} for {pct}% of requests",
                    status.unwrap_or(0)
                ));
                details["abort"] = json!({"status": status, "percent": pct});
            }
            self.step(
                "fault",
                "envoy.filters.http.fault".into(),
                why,
                details,
                from.to_vec(),
            );
        }
        if let Some(any) = route.typed_per_filter_config.get("envoy.filters.http.cors")
            && let Ok(cors) = CorsPolicy::decode(any.value.as_slice())
        {
            let origins: Vec<String> = cors
                .allow_origin_string_match
                .iter()
                .map(matching::describe_string)
                .collect();
            let origin = self.view.header("origin");
            let allowed = origin.as_deref().is_some_and(|o| {
                cors.allow_origin_string_match
                    .iter()
                    .any(|sm| matching::string_matches(sm, o))
            });
            let why = match &origin {
                None => vec!["no Origin header: CORS does not apply".into()],
                Some(o) if allowed => vec![format!("origin {o:?} is allowed")],
                Some(o) => vec![format!(
                    "origin {o:?} is not allowed: the response is not marked"
                )],
            };
            self.step(
                "cors",
                "envoy.filters.http.cors".into(),
                why,
                json!({
                    "allow_origins": origins,
                    "allow_methods": cors.allow_methods,
                    "allow_headers": cors.allow_headers,
                    "expose_headers": cors.expose_headers,
                    "max_age": cors.max_age,
                    "allow_credentials": cors.allow_credentials.as_ref().map(|b| b.value),
                }),
                from.to_vec(),
            );
        }
    }

    fn cluster(&mut self, name: &str) {
        let config = self.config;
        let Some(cluster) = config.cluster(name) else {
            self.step(
                "cluster",
                name.to_string(),
                vec!["not held by the proxy: requests for it fail (503)".into()],
                Value::Null,
                Vec::new(),
            );
            return;
        };
        let from = strait_translate::origins_of(cluster.metadata.as_ref());
        self.step(
            "cluster",
            name.to_string(),
            vec![format!(
                "{} cluster",
                crate::proxy_config::discovery_type(cluster)
            )],
            cluster_details(cluster),
            names(&from),
        );
        let Some(cla) = config.assignment(cluster) else {
            return;
        };
        let endpoints: Vec<Value> = cla
            .endpoints
            .iter()
            .flat_map(|l| {
                l.lb_endpoints.iter().map(move |e| {
                    json!({
                        "address": endpoint_address(e),
                        "health": health(e.health_status),
                        "weight": e.load_balancing_weight.as_ref().map_or(1, |w| w.value),
                        "locality": l.locality.as_ref().map(|l| format!("{}/{}/{}", l.region, l.zone, l.sub_zone)),
                    })
                })
            })
            .collect();
        let healthy = endpoints
            .iter()
            .filter(|e| e["health"] == "HEALTHY")
            .count();
        self.step(
            "endpoints",
            cla.cluster_name.clone(),
            vec![format!("{healthy} of {} healthy", endpoints.len())],
            json!({"endpoints": endpoints}),
            names(&from),
        );
    }
}

fn destination(cluster: &str, weight: u32) -> Destination {
    let subset = match cluster.split('|').collect::<Vec<_>>().as_slice() {
        [_, _, subset, _] if !subset.is_empty() => Some(subset.to_string()),
        _ => None,
    };
    Destination {
        cluster: cluster.to_string(),
        weight,
        subset,
    }
}

fn redirect_status(code: i32) -> u32 {
    match code {
        1 => 302,
        2 => 303,
        3 => 307,
        4 => 308,
        _ => 301,
    }
}

/// A route's timeouts, retries and rewrites (its details), and the timing in words: Envoy's
/// defaults where the route says nothing, the virtual host's retries where it has none.
fn route_details(vh: &VirtualHost, route: &Route) -> (Value, Vec<String>) {
    let Some(Action::Route(action)) = &route.action else {
        return (json!({}), Vec::new());
    };
    let mut why = Vec::new();
    let timeout = match action.timeout.as_ref() {
        None => {
            why.push("timeout 15s (Envoy's default: the route sets none)".into());
            "15s".to_string()
        }
        Some(d) if d.seconds == 0 && d.nanos == 0 => {
            why.push("no timeout (0s: disabled)".into());
            "0s".into()
        }
        Some(d) => {
            let text = seconds(Some(d)).unwrap_or_default();
            why.push(format!("timeout {text}"));
            text
        }
    };
    let (policy, policy_from) = match (&action.retry_policy, &vh.retry_policy) {
        (Some(r), _) => (Some(r), "route"),
        (None, Some(r)) => (Some(r), "virtual_host"),
        (None, None) => (None, ""),
    };
    let retry = policy.map(|r| {
        let attempts = r.num_retries.as_ref().map_or(1, |n| n.value);
        let per_try = seconds(r.per_try_timeout.as_ref());
        why.push(format!(
            "{attempts} retr{} on {} (the {policy_from}'s policy){}",
            if attempts == 1 { "y" } else { "ies" },
            if r.retry_on.is_empty() {
                "-"
            } else {
                &r.retry_on
            },
            per_try
                .as_ref()
                .map(|t| format!(", {t} per try"))
                .unwrap_or_default()
        ));
        json!({
            "retry_on": r.retry_on,
            "num_retries": attempts,
            "per_try_timeout": per_try,
            "retriable_status_codes": r.retriable_status_codes,
            "from": policy_from,
        })
    });
    if retry.is_none() {
        why.push("no retries (no retry policy on the route or its virtual host)".into());
    }
    let rewrite = match (&action.prefix_rewrite, &action.regex_rewrite) {
        (p, _) if !p.is_empty() => Some(json!({"prefix": p})),
        (_, Some(r)) => Some(json!({
            "regex": r.pattern.as_ref().map(|p| p.regex.clone()),
            "substitution": r.substitution,
        })),
        _ => None,
    };
    let host_rewrite = match &action.host_rewrite_specifier {
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(h.clone()),
        _ => None,
    };
    let details = json!({
        "timeout": timeout,
        "idle_timeout": seconds(action.idle_timeout.as_ref()),
        "retries": retry,
        "rewrite": rewrite,
        "host_rewrite": host_rewrite,
        "mirrors": action.request_mirror_policies.iter().map(|m| &m.cluster).collect::<Vec<_>>(),
        "rate_limits": action.rate_limits.len() + vh.rate_limits.len(),
    });
    (details, why)
}

/// The filter config a route (else its virtual host) gives filter `name`, unwrapped from
/// Envoy's `FilterConfig` if it is in one.
fn per_filter(
    vh: &VirtualHost,
    route: &Route,
    name: &str,
) -> Option<envoy_types::pb::google::protobuf::Any> {
    let any = route
        .typed_per_filter_config
        .get(name)
        .or_else(|| vh.typed_per_filter_config.get(name))?;
    if any.type_url.ends_with(&FilterConfig::full_name()) {
        let wrapped = FilterConfig::decode(any.value.as_slice()).ok()?;
        if wrapped.disabled {
            return None;
        }
        return wrapped.config;
    }
    Some(any.clone())
}

/// A JWT's place in a provider: `Authorization: Bearer`, or the headers, parameters and
/// cookies it names.
fn token_locations(p: &JwtProvider) -> Vec<String> {
    if p.from_headers.is_empty() && p.from_params.is_empty() && p.from_cookies.is_empty() {
        return vec![
            "header Authorization: Bearer".into(),
            "query access_token".into(),
        ];
    }
    let mut out: Vec<String> = p
        .from_headers
        .iter()
        .map(|h| format!("header {}: {}", h.name, h.value_prefix.trim_end()))
        .collect();
    out.extend(p.from_params.iter().map(|q| format!("query {q}")));
    out.extend(p.from_cookies.iter().map(|c| format!("cookie {c}")));
    out
}

fn describe_requirement(r: &JwtRequirement) -> String {
    use jwt_requirement::RequiresType;
    match &r.requires_type {
        Some(RequiresType::ProviderName(p)) => format!("a token from {p}"),
        Some(RequiresType::ProviderAndAudiences(p)) => format!(
            "a token from {} for {}",
            p.provider_name,
            p.audiences.join(", ")
        ),
        Some(RequiresType::RequiresAny(any)) => format!(
            "any of ({})",
            any.requirements
                .iter()
                .map(describe_requirement)
                .collect::<Vec<_>>()
                .join(" | ")
        ),
        Some(RequiresType::RequiresAll(all)) => format!(
            "all of ({})",
            all.requirements
                .iter()
                .map(describe_requirement)
                .collect::<Vec<_>>()
                .join(" & ")
        ),
        Some(RequiresType::AllowMissingOrFailed(_)) => "nothing (missing or failed allowed)".into(),
        Some(RequiresType::AllowMissing(_)) => {
            "nothing if absent (a token present must verify)".into()
        }
        Some(RequiresType::ExtractOnlyWithoutValidation(_)) => {
            "nothing (extracted, not verified)".into()
        }
        None => "nothing".into(),
    }
}

/// The descriptor entry naming a RateLimitPolicy's limit (`namespace/policy/limit`).
const RATE_LIMIT_KEY: &str = "strait_limit";

fn rate_limit_object(value: &str) -> Option<ObjectId> {
    let mut parts = value.splitn(3, '/');
    let (namespace, name) = (parts.next()?, parts.next()?);
    parts.next()?;
    Some(ObjectId {
        kind: Kind::RateLimitPolicy,
        namespace: namespace.into(),
        name: name.into(),
    })
}

/// The configured descriptor a request's falls in, as Envoy finds it: an exact one, else one
/// whose empty values match any value.
fn find_descriptor<'d>(
    descriptors: &'d [LocalRateLimitDescriptor],
    entries: &[(String, String)],
) -> Option<&'d LocalRateLimitDescriptor> {
    let fits = |d: &LocalRateLimitDescriptor, wildcard: bool| {
        d.entries.len() == entries.len()
            && d.entries.iter().zip(entries).all(|(e, (k, v))| {
                e.key == *k && (e.value == *v || (wildcard && e.value.is_empty()))
            })
    };
    descriptors
        .iter()
        .find(|d| fits(d, false))
        .or_else(|| descriptors.iter().find(|d| fits(d, true)))
}

fn fractional_percent(p: &FractionalPercent) -> f64 {
    let denominator = match fractional_percent::DenominatorType::try_from(p.denominator) {
        Ok(fractional_percent::DenominatorType::TenThousand) => 10_000.0,
        Ok(fractional_percent::DenominatorType::Million) => 1_000_000.0,
        _ => 100.0,
    };
    f64::from(p.numerator) * 100.0 / denominator
}

/// Whether a JWT requirement is met by what the request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    Missing,
}

/// (m)TLS on a downstream chain: `None` for plaintext.
fn chain_tls(chain: &FilterChain) -> Option<Value> {
    let socket = chain.transport_socket.as_ref()?;
    let envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any) =
        socket.config_type.as_ref()?;
    let tls = DownstreamTlsContext::decode(any.value.as_slice()).ok()?;
    let mutual = tls
        .require_client_certificate
        .as_ref()
        .is_some_and(|b| b.value);
    Some(json!({"mode": if mutual { "MUTUAL" } else { "SIMPLE" }}))
}

/// The TLS mode a cluster originates, as a DestinationRule would say it.
fn upstream_tls(cluster: &Cluster) -> Value {
    let sni_of = |any: &envoy_types::pb::google::protobuf::Any| {
        UpstreamTlsContext::decode(any.value.as_slice()).ok()
    };
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    let describe = |tls: UpstreamTlsContext| {
        let common = tls.common_tls_context.unwrap_or_default();
        let sds: Vec<String> = common
            .tls_certificate_sds_secret_configs
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let mode = if sds.iter().any(|s| s == "default") {
            "ISTIO_MUTUAL"
        } else if !sds.is_empty() || !common.tls_certificates.is_empty() {
            "MUTUAL"
        } else {
            "SIMPLE"
        };
        json!({"mode": mode, "sni": tls.sni, "alpn": common.alpn_protocols})
    };
    if let Some(socket) = &cluster.transport_socket
        && let Some(ConfigType::TypedConfig(any)) = &socket.config_type
        && let Some(tls) = sni_of(any)
    {
        return describe(tls);
    }
    if !cluster.transport_socket_matches.is_empty() {
        let matches: Vec<Value> = cluster
            .transport_socket_matches
            .iter()
            .map(|m| {
                let tls = m
                    .transport_socket
                    .as_ref()
                    .and_then(|s| match &s.config_type {
                        Some(ConfigType::TypedConfig(any)) => sni_of(any),
                        None => None,
                    })
                    .map(describe);
                json!({"name": m.name, "tls": tls.unwrap_or(json!({"mode": "DISABLE"}))})
            })
            .collect();
        return json!({"mode": "AUTO (per endpoint's tlsMode)", "matches": matches});
    }
    json!({"mode": "DISABLE"})
}

fn cluster_details(cluster: &Cluster) -> Value {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
    let breakers = cluster.circuit_breakers.as_ref().map(|cb| {
        cb.thresholds
            .iter()
            .map(|t| {
                json!({
                    "max_connections": t.max_connections.as_ref().map(|v| v.value),
                    "max_pending_requests": t.max_pending_requests.as_ref().map(|v| v.value),
                    "max_requests": t.max_requests.as_ref().map(|v| v.value),
                    "max_retries": t.max_retries.as_ref().map(|v| v.value),
                })
            })
            .collect::<Vec<_>>()
    });
    let outlier = cluster.outlier_detection.as_ref().map(|o| {
        json!({
            "consecutive_5xx": o.consecutive_5xx.as_ref().map(|v| v.value),
            "consecutive_gateway_failure": o.consecutive_gateway_failure.as_ref().map(|v| v.value),
            "interval": seconds(o.interval.as_ref()),
            "base_ejection_time": seconds(o.base_ejection_time.as_ref()),
            "max_ejection_percent": o.max_ejection_percent.as_ref().map(|v| v.value),
        })
    });
    json!({
        "type": crate::proxy_config::discovery_type(cluster),
        "connect_timeout": seconds(cluster.connect_timeout.as_ref()),
        "lb_policy": LbPolicy::try_from(cluster.lb_policy).map(|p| p.as_str_name()).unwrap_or("ROUND_ROBIN"),
        "circuit_breakers": breakers,
        "outlier_detection": outlier,
        "tls": upstream_tls(cluster),
    })
}

/// The explanation as text: a numbered step per line, its reasons, details and origins below.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}{} on {}",
        e.request["method"].as_str().unwrap_or("GET"),
        e.request["authority"].as_str().unwrap_or(""),
        e.request["path"].as_str().unwrap_or(""),
        e.proxy
    );
    for (i, s) in e.steps.iter().enumerate() {
        let _ = writeln!(out, "{}. {} {}", i + 1, s.step, s.name);
        for why in &s.why {
            let _ = writeln!(out, "     {why}");
        }
        if let Value::Object(details) = &s.details {
            for (key, value) in details {
                if value.is_null() || value.as_array().is_some_and(Vec::is_empty) {
                    continue;
                }
                let shown = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let _ = writeln!(out, "     {key}: {shown}");
            }
        }
        if !s.from.is_empty() {
            let _ = writeln!(out, "     from: {}", s.from.join(", "));
        }
    }
    let status = e
        .outcome
        .status
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    let _ = writeln!(out, "=> {}{status}: {}", e.outcome.kind, e.outcome.message);
    out
}

#[cfg(test)]
mod tests {
    //! The walk over real translations (the translator's golden cases), so explain reads what
    //! straitd serves; JWT and rate limits, which the translator does not write yet, are added
    //! to a real connection manager by hand.

    use std::path::Path;

    use envoy_types::pb::envoy::config::route::v3::RouteMatch;
    use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
        JwtHeader, RequirementRule,
    };
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, HttpFilter,
    };
    use envoy_types::pb::envoy::r#type::v3::TokenBucket;
    use envoy_types::pb::google::protobuf::Any;
    use strait_model::{Model, ProxyNode, loader};

    use super::*;

    fn translated(case: &str) -> AckedConfig {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("translate/tests/golden")
            .join(case);
        let text = std::fs::read_to_string(dir.join("config.yaml")).unwrap();
        let objects = loader::parse(&text, "config.yaml").unwrap();
        let model = Model::build_with(&objects, None).unwrap();
        let node: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("node.json")).unwrap()).unwrap();
        let id = node["id"].as_str().unwrap();
        let node = ProxyNode::from_metadata(id, node["metadata"].as_object().unwrap()).unwrap();
        let out = strait_translate::translate(&model, &node);
        AckedConfig {
            node_id: id.into(),
            listeners: out.listeners,
            routes: out.routes,
            clusters: out.clusters,
            endpoints: out.endpoints,
            secrets: out.secrets,
            unknown: Vec::new(),
        }
    }

    fn get(authority: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            authority: authority.into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn clusters(e: &Explanation) -> Vec<(&str, u32)> {
        e.outcome
            .clusters
            .iter()
            .map(|d| (d.cluster.as_str(), d.weight))
            .collect()
    }

    fn step<'a>(e: &'a Explanation, kind: &str) -> &'a Step {
        e.steps
            .iter()
            .find(|s| s.step == kind)
            .unwrap_or_else(|| panic!("no {kind} step in\n{}", render(e)))
    }

    const V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
    const V2: &str = "outbound|9080|v2|reviews.default.svc.cluster.local";
    const V3: &str = "outbound|9080|v3|reviews.default.svc.cluster.local";

    #[test]
    fn header_route_then_weighted_split_with_their_objects() {
        let config = translated("sidecar-bookinfo");
        let jason = explain(&config, &get("reviews:9080", "/", &[("End-User", "jason")]));
        assert_eq!(jason.outcome.kind, "routed", "{}", render(&jason));
        assert_eq!(clusters(&jason), [(V2, 1)]);
        assert_eq!(
            step(&jason, "route").from,
            ["VirtualService default/reviews"]
        );
        assert_eq!(jason.outcome.clusters[0].subset.as_deref(), Some("v2"));
        assert_eq!(
            step(&jason, "cluster").from,
            ["DestinationRule default/reviews"]
        );
        let endpoints = &step(&jason, "endpoints").details["endpoints"];
        assert_eq!(endpoints[0]["address"], "127.0.0.1:19082", "{endpoints}");

        for authority in [
            "reviews:9080",
            "reviews",
            "REVIEWS.default.svc.cluster.local:9080",
        ] {
            let split = explain(&config, &get(authority, "/", &[("end-user", "bob")]));
            assert_eq!(clusters(&split), [(V1, 90), (V3, 10)], "{}", render(&split));
            let why = step(&split, "route").why.join("\n");
            assert!(
                why.contains("skipped: header end-user = \"jason\" does not hold"),
                "{why}"
            );
            // Istio writes no retries by default here, and turns the 15s default off.
            assert!(why.contains("no retries"), "{why}");
        }
        // The port is part of the authority: another port is another host.
        let other_port = explain(&config, &get("reviews:9081", "/", &[]));
        assert_ne!(clusters(&other_port), [(V1, 90), (V3, 10)]);
        let text = render(&jason);
        assert!(
            text.contains("from: VirtualService default/reviews"),
            "{text}"
        );
        assert!(
            text.starts_with("GET reviews:9080/ on productpage-1"),
            "{text}"
        );
    }

    #[test]
    fn faults_on_the_route_are_shown() {
        let config = translated("sidecar-bookinfo");
        let e = explain(&config, &get("ratings:9080", "/", &[("end-user", "jason")]));
        let fault = step(&e, "fault");
        assert_eq!(fault.details["abort"]["status"], 500, "{}", render(&e));
        assert_eq!(fault.details["delay"]["fixed"], "7s");
    }

    #[test]
    fn rate_limit_policies_show_the_limits_that_count_a_request() {
        let config = translated("sidecar-rate-limit");
        let inbound = |method: &str, path: &str, headers: &[(&str, &str)], ip: Option<&str>| {
            let mut r = get("ratings:9080", path, headers);
            r.method = method.into();
            r.port = Some(15108);
            r.source_ip = ip.map(|ip| ip.parse().unwrap());
            explain(&config, &r)
        };
        let write = inbound(
            "POST",
            "/ratings/1?x=1",
            &[("x-tier", "free-plus"), ("x-api-key", "k1")],
            None,
        );
        assert_eq!(write.outcome.kind, "routed", "{}", render(&write));
        let rate = step(&write, "rate_limit");
        let limits: Vec<&str> = rate.details["limits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["descriptor"].as_str().unwrap())
            .collect();
        assert_eq!(
            limits,
            [
                "strait_limit=default/ratings/writes",
                "strait_limit=istio-system/mesh/per-key, strait_key=k1"
            ],
            "{}",
            render(&write)
        );
        assert_eq!(
            rate.from,
            [
                "RateLimitPolicy default/ratings",
                "RateLimitPolicy istio-system/mesh"
            ]
        );
        assert!(
            rate.why
                .iter()
                .any(|w| w.contains("rate_limits[1] makes no descriptor: header :path")),
            "{:?}",
            rate.why
        );
        let blind = inbound("GET", "/search/abc", &[], None);
        assert!(
            step(&blind, "rate_limit")
                .why
                .iter()
                .any(|w| w.contains("caller's address is not known")),
            "{}",
            render(&blind)
        );
        // A GET is no write; with an address the search limit counts it per client.
        let search = inbound("GET", "/search/abc", &[], Some("10.1.2.3"));
        let rate = step(&search, "rate_limit");
        let limits: Vec<&str> = rate.details["limits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["descriptor"].as_str().unwrap())
            .collect();
        assert_eq!(
            limits,
            [
                "strait_limit=default/ratings/search, remote_address=10.1.2.3",
                "strait_limit=istio-system/mesh/per-key"
            ],
            "{}",
            render(&search)
        );
        assert!(rate.details["limits"][0]["per_value"].as_bool().unwrap());
    }

    #[test]
    fn inbound_authorization_verdicts_and_mtls() {
        let config = translated("sidecar-mtls");
        let inbound = |path: &str, method: &str, principal: Option<&str>| {
            let mut r = get("ratings:9080", path, &[]);
            r.method = method.into();
            r.port = Some(15108);
            r.source_principal = principal.map(str::to_string);
            r.source_ip = Some("127.0.0.1".parse().unwrap());
            explain(&config, &r)
        };
        let pp = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
        let ok = inbound("/ratings/1", "GET", Some(pp));
        assert_eq!(ok.outcome.kind, "routed", "{}", render(&ok));
        let allow = ok
            .steps
            .iter()
            .find(|s| s.step == "authorization" && s.details["action"] == "ALLOW")
            .unwrap_or_else(|| panic!("{}", render(&ok)));
        assert_eq!(allow.from, ["AuthorizationPolicy default/ratings-viewer"]);

        let admin = inbound("/admin/x", "GET", Some(pp));
        assert_eq!(
            (admin.outcome.kind, admin.outcome.status),
            ("denied", Some(403)),
            "{}",
            render(&admin)
        );
        assert_eq!(
            step(&admin, "authorization").from,
            ["AuthorizationPolicy istio-system/no-admin"],
            "{}",
            render(&admin)
        );
        let post = inbound("/ratings/1", "POST", Some(pp));
        assert_eq!(post.outcome.kind, "denied", "{}", render(&post));
        let stranger = inbound(
            "/ratings/1",
            "GET",
            Some("spiffe://cluster.local/ns/default/sa/other"),
        );
        assert_eq!(stranger.outcome.kind, "denied", "{}", render(&stranger));
        let plain = inbound("/ratings/1", "GET", None);
        assert_eq!(plain.outcome.kind, "tls_required", "{}", render(&plain));
    }

    #[test]
    fn a_captured_connection_is_handed_on_by_its_original_destination() {
        let config = translated("sidecar-captured");
        let mut r = get("reviews:9080", "/", &[]);
        r.port = Some(15001);
        let e = explain(&config, &r);
        assert_eq!(e.outcome.kind, "routed", "{}", render(&e));
        let listener = step(&e, "listener");
        assert!(
            listener.why.iter().any(|w| w.contains("hands port 9080")),
            "{}",
            render(&e)
        );
        assert_eq!(
            clusters(&e),
            [
                ("outbound|9080|v1|reviews.default.svc.cluster.local", 90),
                ("outbound|9080|v2|reviews.default.svc.cluster.local", 10)
            ]
        );
    }

    #[test]
    fn captured_inbound_matches_chains_on_the_dialed_port() {
        let config = translated("sidecar-captured");
        let mut r = get("productpage:9080", "/admin/x", &[]);
        r.port = Some(15006);
        r.source_principal = Some("spiffe://cluster.local/ns/default/sa/sleep".into());
        let e = explain(&config, &r);
        let chain = step(&e, "filter_chain");
        assert!(chain.why[0].contains("9080"), "{}", render(&e));
        assert_eq!(
            (e.outcome.kind, e.outcome.status),
            ("denied", Some(403)),
            "{}",
            render(&e)
        );
        assert_eq!(
            step(&e, "authorization").from,
            ["AuthorizationPolicy default/no-admin"]
        );
    }

    #[test]
    fn unknown_listener_and_host() {
        let config = translated("sidecar-bookinfo");
        let mut r = get("reviews:9080", "/", &[]);
        r.port = Some(1);
        assert_eq!(explain(&config, &r).outcome.kind, "no_listener");
        let e = explain(&config, &get("nowhere.example:80", "/", &[]));
        assert!(
            matches!(e.outcome.kind, "no_virtual_host" | "routed"),
            "{}",
            render(&e)
        );
    }

    /// The outbound connection manager of a translation, to add filters to.
    fn with_filters(config: &mut AckedConfig, filters: Vec<HttpFilter>) {
        let listener = config
            .listeners
            .iter_mut()
            .find(|l| l.traffic_direction == TrafficDirection::Outbound as i32)
            .or(None)
            .expect("an outbound listener");
        let chain = &mut listener.filter_chains[0];
        let f = &mut chain.filters[0];
        let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
            panic!("typed config");
        };
        let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        let mut all = filters;
        all.append(&mut hcm.http_filters);
        hcm.http_filters = all;
        any.value = hcm.encode_to_vec();
    }

    fn typed<M: Message + Name>(name: &str, m: &M) -> HttpFilter {
        HttpFilter {
            name: name.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(Any {
                type_url: M::type_url(),
                value: m.encode_to_vec(),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn jwt_requirements_and_rate_limits() {
        let mut config = translated("sidecar-bookinfo");
        let provider = JwtProvider {
            issuer: "https://issuer.example".into(),
            from_headers: vec![JwtHeader {
                name: "x-jwt".into(),
                value_prefix: String::new(),
            }],
            ..Default::default()
        };
        let jwt = JwtAuthentication {
            providers: [("example".to_string(), provider)].into_iter().collect(),
            rules: vec![RequirementRule {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/api".into())),
                    ..Default::default()
                }),
                requirement_type: Some(requirement_rule::RequirementType::Requires(
                    JwtRequirement {
                        requires_type: Some(jwt_requirement::RequiresType::ProviderName(
                            "example".into(),
                        )),
                    },
                )),
            }],
            ..Default::default()
        };
        let limit = LocalRateLimit {
            stat_prefix: "local".into(),
            token_bucket: Some(TokenBucket {
                max_tokens: 10,
                tokens_per_fill: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 5 }),
                fill_interval: Some(Duration {
                    seconds: 1,
                    nanos: 0,
                }),
            }),
            filter_enabled: Some(RuntimeFractionalPercent {
                default_value: Some(FractionalPercent {
                    numerator: 100,
                    denominator: 0,
                }),
                runtime_key: String::new(),
            }),
            ..Default::default()
        };
        with_filters(
            &mut config,
            vec![
                typed("envoy.filters.http.jwt_authn", &jwt),
                typed("envoy.filters.http.local_ratelimit", &limit),
            ],
        );
        let missing = explain(&config, &get("reviews:9080", "/api/x", &[]));
        assert_eq!(
            (missing.outcome.kind, missing.outcome.status),
            ("denied", Some(401)),
            "{}",
            render(&missing)
        );
        let with_token = explain(
            &config,
            &get("reviews:9080", "/api/x", &[("x-jwt", "a.b.c")]),
        );
        assert_eq!(with_token.outcome.kind, "routed", "{}", render(&with_token));
        assert_eq!(
            step(&with_token, "jwt").details["requirement"]["name"],
            "rule #0"
        );
        let rate = step(&with_token, "rate_limit");
        assert_eq!(rate.details["token_bucket"]["max_tokens"], 10);
        assert_eq!(rate.details["enabled_percent"], 100.0);
        assert!(
            rate.why
                .iter()
                .any(|w| w.contains("the filter's limit") && w.contains("answers 429")),
            "{:?}",
            rate.why
        );
        // Outside the rule's prefix no token is needed.
        let open = explain(&config, &get("reviews:9080", "/", &[]));
        assert_eq!(open.outcome.kind, "routed", "{}", render(&open));
        // Steps come in Envoy's order: routing is looked up, then the filters run.
        let order: Vec<&str> = with_token.steps.iter().map(|s| s.step).collect();
        let pos = |k: &str| order.iter().position(|s| *s == k).unwrap();
        assert!(
            pos("route") < pos("jwt")
                && pos("jwt") < pos("rate_limit")
                && pos("rate_limit") < pos("split"),
            "{order:?}"
        );
    }

    #[test]
    fn a_gateway_strips_the_port_before_matching() {
        let config = translated("gateway");
        // Domain `shop.example.com` (no port): only a stripped authority matches it.
        let mut r = get("shop.example.com:8081", "/cart", &[]);
        r.port = Some(8081);
        let e = explain(&config, &r);
        let vh = step(&e, "virtual_host");
        assert_eq!(vh.name, "shop.example.com:8081", "{}", render(&e));
        assert!(
            vh.why[0].contains("\"shop.example.com\" (Exact)"),
            "{:?}",
            vh.why
        );
        // httpsRedirect: the gateway answers 301 itself.
        assert_eq!(
            (e.outcome.kind, e.outcome.status),
            ("redirect", Some(301)),
            "{}",
            render(&e)
        );
        let mut r = get("anything:80", "/productpage", &[]);
        r.port = Some(18080);
        let e = explain(&config, &r);
        assert_eq!(step(&e, "virtual_host").name, "*:80", "{}", render(&e));
        assert_eq!(e.outcome.kind, "routed", "{}", render(&e));
    }
}
