//! LDS: the sidecar's outbound HTTP listener and a gateway's listeners per server port.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TrafficDirection, data_source::Specifier,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
    http_connection_manager::{CodecType, RouteSpecifier, StripPortMode, UpgradeConfig},
    http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, TlsCertificate,
};
use strait_model::{
    Direction, Gateway, GatewayRef, GatewayServer, L4Match, Model, Protocol, ProxyNode, ServerTls,
    VirtualService, host,
};

use crate::credential::{credential_socket, credential_usable};

use crate::access_log::access_logs;
use crate::cluster::socket;
use crate::jwt::jwt_filter;
use crate::proto::{ads, any, duration};
use crate::route::{CORS_FILTER, FAULT_FILTER, gateway_virtual_hosts};
use crate::security::{PortView, network_rbac_filters, rbac_filters};
use crate::{MeshSettings, rate_limit, tcp};

/// How long a request's headers may take to arrive once they have begun (Envoy's
/// `request_headers_timeout`, off by default there): a client trickling its headers is answered
/// 408 and cut off. Every HTTP connection manager gets it, so both data planes agree.
pub const REQUEST_HEADERS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The route config the sidecar's outbound listener serves.
pub const OUTBOUND_ROUTE_NAME: &str = "outbound";
const HCM: &str = "envoy.filters.network.http_connection_manager";

pub fn sidecar_outbound(model: &Model, node: &ProxyNode, settings: &MeshSettings) -> Listener {
    Listener {
        name: format!("outbound_{}", node.outbound_port),
        address: Some(socket(&node.listen_address.to_string(), node.outbound_port)),
        filter_chains: vec![FilterChain {
            filters: vec![hcm(
                "outbound",
                OUTBOUND_ROUTE_NAME,
                false,
                Vec::new(),
                None,
                access_logs(model, node, settings, Direction::Client),
            )],
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// An HTTP connection manager that takes its routes over RDS: a gateway's JWT and
/// authorization filters (`auth`), the filters routes configure (faults, then CORS, as Istio
/// orders them), then a gateway's rate limits. Gateways ignore the Host header's port, as
/// clients reach them on mapped or defaulted ports.
pub(crate) fn hcm(
    stat_prefix: &str,
    route_config: &str,
    strip_port: bool,
    auth: Vec<HttpFilter>,
    rate_limit: Option<HttpFilter>,
    access_log: Vec<AccessLog>,
) -> Filter {
    let manager = HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.to_string(),
        })),
        http_filters: auth
            .into_iter()
            .chain([
                HttpFilter {
                    name: FAULT_FILTER.to_string(),
                    config_type: Some(http_filter::ConfigType::TypedConfig(any(
                        &HttpFault::default(),
                    ))),
                    ..Default::default()
                },
                HttpFilter {
                    name: CORS_FILTER.to_string(),
                    config_type: Some(http_filter::ConfigType::TypedConfig(any(&Cors::default()))),
                    ..Default::default()
                },
            ])
            .chain(rate_limit)
            .chain([HttpFilter {
                name: "envoy.filters.http.router".to_string(),
                config_type: Some(http_filter::ConfigType::TypedConfig(
                    any(&Router::default()),
                )),
                ..Default::default()
            }])
            .collect(),
        upgrade_configs: vec![UpgradeConfig {
            upgrade_type: "websocket".to_string(),
            ..Default::default()
        }],
        strip_port_mode: strip_port.then_some(StripPortMode::StripAnyHostPort(true)),
        request_headers_timeout: Some(duration(REQUEST_HEADERS_TIMEOUT)),
        access_log,
        ..Default::default()
    };
    Filter {
        name: HCM.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&manager))),
    }
}

/// A gateway's listeners (one per server port of the Gateways that select it) and their routes.
/// The RequestAuthentications, AuthorizationPolicies and RateLimitPolicies that select the
/// gateway apply to what it serves: JWTs and RBAC on HTTP (a policy's ports are the servers'),
/// RBAC on the connection for TCP and passthrough servers.
pub fn gateway(
    model: &Model,
    node: &ProxyNode,
    settings: &MeshSettings,
) -> (Vec<Listener>, Vec<RouteConfiguration>) {
    let mut by_port: BTreeMap<u16, Vec<(&Gateway, &GatewayServer)>> = BTreeMap::new();
    for gw in model.gateways.values().filter(|g| g.selects(&node.labels)) {
        // A server whose credential is not in the gateway's namespace is not served: Envoy
        // would hold the whole listener warming until the secret came.
        for server in gw
            .servers
            .iter()
            .filter(|s| credential_usable(model, node, s))
        {
            by_port.entry(server.port).or_default().push((gw, server));
        }
    }
    let mut listeners = Vec::new();
    let mut routes = Vec::new();
    let rate_limits = model.rate_limits_for(&node.namespace, &node.labels);
    // A gateway is the client side of what it carries, as Istio's Telemetry reads it.
    let logs = access_logs(model, node, settings, Direction::Client);
    let policies = model.authorization_for(&node.namespace, &node.labels);
    let jwt = jwt_filter(
        model,
        &model.request_authentication_for(&node.namespace, &node.labels),
    );
    for (port, servers) in by_port {
        let bind = node.gateway_bind_port(port);
        // A policy naming the server's port is written with the port the listener binds.
        let ports = PortView::Explicit {
            listener: bind,
            app: port,
        };
        let auth = || -> Vec<HttpFilter> {
            jwt.clone()
                .into_iter()
                .chain(rbac_filters(&policies, settings, ports))
                .collect()
        };
        let address = node.listen_address.to_string();
        let sni = servers.iter().any(|(_, s)| s.is_sni());
        let tcp = servers.iter().any(|(_, s)| s.protocol == Protocol::Tcp);
        let mut listener = Listener {
            name: format!("{address}_{bind}"),
            address: Some(socket(&address, bind)),
            traffic_direction: TrafficDirection::Inbound as i32,
            metadata: crate::origin::metadata(servers.iter().map(|(gw, _)| &gw.id)),
            ..Default::default()
        };
        if sni {
            // One filter chain per HTTPS server and per passthrough tls match, chosen by SNI.
            listener.listener_filters.push(ListenerFilter {
                name: "envoy.filters.listener.tls_inspector".to_string(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                    &TlsInspector::default(),
                ))),
                ..Default::default()
            });
            let mut used: Vec<Vec<String>> = Vec::new();
            for (i, (gw, server)) in servers.iter().enumerate() {
                if server.is_passthrough() {
                    for chain in passthrough_chains(model, gw, server, &mut used) {
                        listener.filter_chains.push(chain);
                    }
                    continue;
                }
                let label = server.name.clone().unwrap_or_else(|| i.to_string());
                let name = format!("https.{port}.{label}.{}.{}", gw.id.name, gw.id.namespace);
                routes.push(RouteConfiguration {
                    name: name.clone(),
                    virtual_hosts: gateway_virtual_hosts(model, node, &[(gw, server)], port),
                    ..Default::default()
                });
                let server_names: Vec<String> = server
                    .hosts
                    .iter()
                    .map(|h| h.host.clone())
                    .filter(|h| h != "*")
                    .collect();
                used.push(server_names.clone());
                listener.filter_chains.push(FilterChain {
                    filter_chain_match: Some(FilterChainMatch {
                        server_names,
                        ..Default::default()
                    }),
                    filters: vec![hcm(
                        &name,
                        &name,
                        true,
                        auth(),
                        rate_limit::filter(&rate_limits, &name),
                        logs.clone(),
                    )],
                    transport_socket: server.tls.as_ref().and_then(tls_socket),
                    ..Default::default()
                });
            }
        } else if tcp {
            if let Some(chain) = servers
                .iter()
                .find_map(|(gw, server)| tcp_server_chain(model, gw, server))
            {
                listener.filter_chains.push(chain);
            }
        } else {
            let name = format!("http.{port}");
            routes.push(RouteConfiguration {
                name: name.clone(),
                virtual_hosts: gateway_virtual_hosts(model, node, &servers, port),
                ..Default::default()
            });
            listener.filter_chains.push(FilterChain {
                filters: vec![hcm(
                    &name,
                    &name,
                    true,
                    auth(),
                    rate_limit::filter(&rate_limits, &name),
                    logs.clone(),
                )],
                ..Default::default()
            });
        }
        // TCP and passthrough chains: authorization on the connection, before the TCP proxy.
        for chain in &mut listener.filter_chains {
            if chain.filters.first().is_some_and(|f| f.name != HCM) {
                let prefix = format!("gateway_{bind}");
                let mut filters = network_rbac_filters(&policies, settings, ports, &prefix);
                filters.append(&mut chain.filters);
                chain.filters = filters;
            }
        }
        // A TCP or passthrough server no VirtualService routes takes no connection (Istio
        // leaves its chain out; Envoy refuses a listener without one).
        if !listener.filter_chains.is_empty() {
            listeners.push(listener);
        }
    }
    (listeners, routes)
}

/// The VirtualServices bound to `gw` with a host its server may serve (the server's
/// `namespace/host` rules), in model order.
fn bound<'m>(
    model: &'m Model,
    gw: &'m Gateway,
    server: &'m GatewayServer,
) -> impl Iterator<Item = &'m VirtualService> {
    model
        .virtual_services
        .iter()
        .filter(|v| v.applies_to_gateway(&gw.id))
        .filter(move |vs| {
            vs.hosts.iter().any(|vh| {
                server.hosts.iter().any(|gh| {
                    gh.namespace
                        .as_ref()
                        .is_none_or(|ns| ns == &vs.id.namespace)
                        && host::intersect(&gh.host, vh)
                })
            })
        })
}

/// A TCP server's one chain: the first `tcp` route of a bound VirtualService whose matches
/// apply on this port and gateway (Istio's `buildGatewayNetworkFiltersFromTCPRoutes`).
fn tcp_server_chain(model: &Model, gw: &Gateway, server: &GatewayServer) -> Option<FilterChain> {
    let context = GatewayRef::Gateway(gw.id.clone());
    let applies = |m: &L4Match| {
        (m.gateways.is_empty() || m.gateways.contains(&context))
            && m.port.is_none_or(|p| p == server.port)
    };
    bound(model, gw, server).find_map(|vs| {
        vs.tcp
            .iter()
            .find(|t| t.matches.is_empty() || t.matches.iter().any(applies))
            .map(|t| FilterChain {
                filters: vec![tcp::to_route(model, &vs.id, &t.route)],
                metadata: crate::origin::metadata([&vs.id]),
                ..Default::default()
            })
    })
}

/// A passthrough server's chains: one per applicable `tls` match of a bound VirtualService,
/// on its SNI hosts, unterminated (Istio's `buildGatewayNetworkFiltersFromTLSRoutes`). A
/// match naming an SNI host another chain of the port has is left out, as Istio leaves it.
fn passthrough_chains(
    model: &Model,
    gw: &Gateway,
    server: &GatewayServer,
    used: &mut Vec<Vec<String>>,
) -> Vec<FilterChain> {
    let context = GatewayRef::Gateway(gw.id.clone());
    let mut out = Vec::new();
    for vs in bound(model, gw, server) {
        for tls in &vs.tls {
            for m in &tls.matches {
                let applies = (m.l4.gateways.is_empty() || m.l4.gateways.contains(&context))
                    && m.l4.port.is_none_or(|p| p == server.port);
                let taken = used.iter().flatten().any(|h| m.sni_hosts.contains(h));
                if !applies || taken {
                    continue;
                }
                used.push(m.sni_hosts.clone());
                out.push(FilterChain {
                    filter_chain_match: Some(FilterChainMatch {
                        server_names: m.sni_hosts.clone(),
                        ..Default::default()
                    }),
                    filters: vec![tcp::to_route(model, &vs.id, &tls.route)],
                    metadata: crate::origin::metadata([&vs.id]),
                    ..Default::default()
                });
            }
        }
    }
    out
}

fn tls_socket(tls: &ServerTls) -> Option<TransportSocket> {
    let (certificate, private_key) = match tls {
        ServerTls::Simple {
            certificate,
            private_key,
        } => (certificate, private_key),
        ServerTls::Credential { name, mutual } => return Some(credential_socket(name, *mutual)),
        ServerTls::HttpsRedirect | ServerTls::Passthrough => return None,
    };
    let file = |f: &str| DataSource {
        specifier: Some(Specifier::Filename(f.to_string())),
        ..Default::default()
    };
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![TlsCertificate {
                certificate_chain: Some(file(certificate)),
                private_key: Some(file(private_key)),
                ..Default::default()
            }],
            alpn_protocols: vec!["h2".to_string(), "http/1.1".to_string()],
            ..Default::default()
        }),
        ..Default::default()
    };
    Some(TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
    })
}
