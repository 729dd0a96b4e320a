//! The sidecar's inbound side: an explicit listener in front of one app port, or (captured)
//! the virtual inbound listener that takes every connection iptables redirects to the pod.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster, cluster::ClusterDiscoveryType, cluster::DiscoveryType,
};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
    http_connection_manager::{
        CodecType, ForwardClientCertDetails, RouteSpecifier, SetCurrentClientCertDetails,
    },
    http_filter,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use strait_model::{
    AuthorizationPolicy, CapturedProtocol, Direction, Model, MtlsMode, Protocol, ProxyNode,
};

use crate::access_log::access_logs;
use crate::cluster::{
    BLACKHOLE_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER, inbound_original_dst, socket,
};
use crate::jwt::jwt_filter;
use crate::outbound::listen_addresses;
use crate::proto::{any, duration};
use crate::security::{self, PortView, network_rbac_filters, rbac_filters};
use crate::{MeshSettings, rate_limit, tcp};

const HCM: &str = "envoy.filters.network.http_connection_manager";
/// The captured inbound listener's name, as Istio's.
pub const VIRTUAL_INBOUND: &str = "virtualInbound";

pub fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// The sidecar's inbound listener and the cluster to its app, when it serves a workload.
pub fn explicit(
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
    let jwt = jwt_filter(
        model,
        &model.request_authentication_for(&node.namespace, &node.labels),
    );
    let rate_limits = model.rate_limits_for(&node.namespace, &node.labels);
    let prefix = format!("inbound_{inbound_port}");
    let hcm = inbound_hcm(
        &prefix,
        &cluster_name,
        Extras {
            jwt,
            rate_limit: rate_limit::filter(&rate_limits, &prefix),
            access_log: access_logs(model, node, settings, Direction::Server),
        },
        &policies,
        settings,
        PortView::Explicit {
            listener: inbound_port,
            app: app_port,
        },
    );
    let mtls = FilterChain {
        filters: vec![hcm.clone()],
        transport_socket: Some(security::downstream_mtls()),
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
            vec![tls_inspector()]
        } else {
            Vec::new()
        },
        traffic_direction: envoy_types::pb::envoy::config::core::v3::TrafficDirection::Inbound
            as i32,
        ..Default::default()
    };
    Some((listener, app))
}

/// What an inbound connection manager has beside authorization: the JWT filter, the rate
/// limits and the access log, each where policy asks for it.
struct Extras {
    jwt: Option<HttpFilter>,
    rate_limit: Option<HttpFilter>,
    access_log: Vec<AccessLog>,
}

fn inbound_hcm(
    stat_prefix: &str,
    cluster: &str,
    extras: Extras,
    policies: &[&AuthorizationPolicy],
    settings: &MeshSettings,
    ports: PortView,
) -> Filter {
    let Extras {
        jwt,
        rate_limit,
        access_log,
    } = extras;
    // The JWT is verified before RBAC reads its claims, as in Istio's chain; a request is
    // counted against rate limits only once it is allowed.
    let mut http_filters: Vec<HttpFilter> = jwt.into_iter().collect();
    http_filters.extend(rbac_filters(policies, settings, ports));
    http_filters.extend(rate_limit);
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
        request_headers_timeout: Some(duration(crate::listener::REQUEST_HEADERS_TIMEOUT)),
        access_log,
        ..Default::default()
    };
    Filter {
        name: HCM.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&manager))),
    }
}

// === Captured ===

/// The ports the workload serves: the target ports of the service ports whose endpoints are
/// its own addresses, with the protocol the first such service declares.
fn workload_ports(model: &Model, node: &ProxyNode) -> BTreeMap<u16, Protocol> {
    let mut ports = BTreeMap::new();
    for service in model.services.values() {
        for e in service.endpoints.iter() {
            let Ok(ip) = e.address.parse::<IpAddr>() else {
                continue;
            };
            if !node.instance_ips.contains(&ip) {
                continue;
            }
            for port in &service.ports {
                ports.entry(e.port_for(port)).or_insert(port.protocol);
            }
        }
    }
    ports
}

/// Filter chains for one kind of inbound connection, as PeerAuthentication says: mTLS only
/// (STRICT), plaintext only (DISABLE), or both, told apart by the TLS inspector (PERMISSIVE).
fn by_mtls(
    name: &str,
    destination_port: Option<u16>,
    mode: MtlsMode,
    filters: Vec<Filter>,
) -> Vec<FilterChain> {
    let chain = |label: &str, transport: &str, tls: bool| FilterChain {
        name: format!("{name}|{label}"),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: destination_port.map(|p| UInt32Value {
                value: u32::from(p),
            }),
            transport_protocol: transport.to_string(),
            ..Default::default()
        }),
        filters: filters.clone(),
        transport_socket: tls.then(security::downstream_mtls),
        ..Default::default()
    };
    match mode {
        MtlsMode::Strict => vec![chain("mtls", "", true)],
        MtlsMode::Disable => vec![chain("plaintext", "", false)],
        MtlsMode::Permissive => vec![
            chain("mtls", "tls", true),
            chain("plaintext", "raw_buffer", false),
        ],
    }
}

/// The virtual inbound listener and its clusters: a chain per workload port (HTTP with the
/// workload's authorization and XFCC, or TCP with authorization on the connection), other
/// ports passed through to the app as TCP, each under PeerAuthentication.
pub fn captured(
    model: &Model,
    node: &ProxyNode,
    settings: &MeshSettings,
    inbound_port: u16,
) -> (Listener, Vec<Cluster>) {
    let dual_stack = node.instance_ips.iter().any(IpAddr::is_ipv6);
    let policies = model.authorization_for(&node.namespace, &node.labels);
    let jwt = jwt_filter(
        model,
        &model.request_authentication_for(&node.namespace, &node.labels),
    );
    let rate_limits = model.rate_limits_for(&node.namespace, &node.labels);
    let logs = access_logs(model, node, settings, Direction::Server);
    let mut chains = vec![FilterChain {
        // A connection to the capture port itself would loop.
        name: format!("{VIRTUAL_INBOUND}-blackhole"),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value {
                value: u32::from(inbound_port),
            }),
            ..Default::default()
        }),
        filters: vec![tcp::to(BLACKHOLE_CLUSTER)],
        ..Default::default()
    }];
    let mut clusters = Vec::new();
    for (port, protocol) in workload_ports(model, node) {
        if port == inbound_port {
            continue;
        }
        let cluster = format!("inbound|{port}||");
        let name = format!("inbound|{port}");
        let filters = match protocol.captured() {
            CapturedProtocol::Http => vec![inbound_hcm(
                &format!("inbound_0.0.0.0_{port}"),
                &cluster,
                Extras {
                    jwt: jwt.clone(),
                    rate_limit: rate_limit::filter(
                        &rate_limits,
                        &format!("inbound_0.0.0.0_{port}"),
                    ),
                    access_log: logs.clone(),
                },
                &policies,
                settings,
                PortView::Captured,
            )],
            CapturedProtocol::Tls | CapturedProtocol::Tcp => {
                tcp_filters(&policies, settings, &name, &cluster)
            }
        };
        let mode = model.mtls_mode(&node.namespace, &node.labels, port);
        chains.extend(by_mtls(&name, Some(port), mode, filters));
        clusters.push(inbound_original_dst(
            &cluster,
            dual_stack,
            protocol.is_http2(),
        ));
    }
    // Ports no service declares: workload-wide mTLS mode, passed through as TCP.
    let mode = model.mtls_mode(&node.namespace, &node.labels, 0);
    chains.extend(by_mtls(
        VIRTUAL_INBOUND,
        None,
        mode,
        tcp_filters(
            &policies,
            settings,
            VIRTUAL_INBOUND,
            INBOUND_PASSTHROUGH_CLUSTER,
        ),
    ));
    clusters.push(inbound_original_dst(
        INBOUND_PASSTHROUGH_CLUSTER,
        dual_stack,
        false,
    ));
    let inspect = chains.iter().any(|c| {
        c.filter_chain_match
            .as_ref()
            .is_some_and(|m| !m.transport_protocol.is_empty())
    });
    let mut listener_filters = vec![ListenerFilter {
        name: "envoy.filters.listener.original_dst".to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &OriginalDst::default(),
        ))),
        ..Default::default()
    }];
    if inspect {
        listener_filters.push(tls_inspector());
    }
    let (address, additional_addresses) = listen_addresses(node, inbound_port);
    let listener = Listener {
        name: VIRTUAL_INBOUND.to_string(),
        address: Some(address),
        additional_addresses,
        filter_chains: chains,
        listener_filters,
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    };
    (listener, clusters)
}

/// Authorization on the connection, then on to `cluster`.
fn tcp_filters(
    policies: &[&AuthorizationPolicy],
    settings: &MeshSettings,
    stat_prefix: &str,
    cluster: &str,
) -> Vec<Filter> {
    let mut filters = network_rbac_filters(policies, settings, PortView::Captured, stat_prefix);
    filters.push(tcp::to(cluster));
    filters
}
