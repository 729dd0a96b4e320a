//! A captured sidecar's outbound listeners: the virtual listener on the capture port hands each
//! connection to the listener for its original destination port, which tells services apart by
//! address, SNI or Host (Istio's listener model).

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{Address, CidrRange, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::{
    AdditionalAddress, FilterChain, FilterChainMatch, Listener,
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use strait_model::mesh::OutboundTrafficPolicy;
use strait_model::outbound::{Claim, PortPlan};
use strait_model::{Model, ProxyNode, cluster_name};

use crate::cluster::{BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER, socket};
use crate::inbound::tls_inspector;
use crate::listener::hcm;
use crate::route::{Unknown, port_routes};
use crate::{MeshSettings, tcp};

/// The capture port's listener, as Istio names it.
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";

/// The node's listen address for `port`, and `[::]` beside `0.0.0.0` when the workload has an
/// IPv6 address (a dual-stack pod).
pub fn listen_addresses(node: &ProxyNode, port: u16) -> (Address, Vec<AdditionalAddress>) {
    let dual_stack = node.instance_ips.iter().any(IpAddr::is_ipv6)
        && node.listen_address == IpAddr::from([0, 0, 0, 0]);
    let additional = if dual_stack {
        vec![AdditionalAddress {
            address: Some(socket("::", port)),
            ..Default::default()
        }]
    } else {
        Vec::new()
    };
    (socket(&node.listen_address.to_string(), port), additional)
}

/// The virtual outbound listener, a listener per destination port that some service uses, and
/// a route config per HTTP port.
pub fn captured(
    model: &Model,
    node: &ProxyNode,
    settings: &MeshSettings,
    inbound_port: u16,
) -> (Vec<Listener>, Vec<RouteConfiguration>) {
    let (unknown, fallback) = match settings.outbound_traffic_policy {
        OutboundTrafficPolicy::AllowAny => (Unknown::Passthrough, PASSTHROUGH_CLUSTER),
        OutboundTrafficPolicy::RegistryOnly => (Unknown::Refuse, BLACKHOLE_CLUSTER),
    };
    let capture = node.outbound_port;
    let (address, additional_addresses) = listen_addresses(node, capture);
    let mut listeners = vec![Listener {
        name: VIRTUAL_OUTBOUND.to_string(),
        address: Some(address),
        additional_addresses,
        use_original_dst: Some(BoolValue { value: true }),
        filter_chains: vec![
            FilterChain {
                // A connection to the capture port itself would loop.
                name: format!("{VIRTUAL_OUTBOUND}-blackhole"),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value {
                        value: u32::from(capture),
                    }),
                    ..Default::default()
                }),
                filters: vec![tcp::to(BLACKHOLE_CLUSTER)],
                ..Default::default()
            },
            FilterChain {
                name: format!("{VIRTUAL_OUTBOUND}-catchall-tcp"),
                filters: vec![tcp::to(fallback)],
                ..Default::default()
            },
        ],
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }];
    let mut routes = Vec::new();
    for (port, plan) in model.outbound_plan() {
        // The capture ports are the proxy's own: nothing captured can reach a service there.
        if port == capture || port == inbound_port {
            continue;
        }
        if let Some((listener, route)) = port_listener(model, node, port, &plan, unknown, fallback)
        {
            listeners.push(listener);
            routes.extend(route);
        }
    }
    (listeners, routes)
}

/// The listener for connections whose original destination port is `port` (`0.0.0.0_9080`),
/// not bound itself: the virtual listener hands connections to it.
fn port_listener(
    model: &Model,
    node: &ProxyNode,
    port: u16,
    plan: &PortPlan<'_>,
    unknown: Unknown,
    fallback: &str,
) -> Option<(Listener, Option<RouteConfiguration>)> {
    let mut chains = Vec::new();
    for claim in &plan.by_address {
        chains.push(FilterChain {
            name: claim_cluster(claim),
            filter_chain_match: Some(FilterChainMatch {
                prefix_ranges: claim
                    .service
                    .addresses
                    .iter()
                    .map(|net| CidrRange {
                        address_prefix: net.addr().to_string(),
                        prefix_len: Some(UInt32Value {
                            value: u32::from(net.prefix_len()),
                        }),
                    })
                    .collect(),
                ..Default::default()
            }),
            filters: vec![tcp::to_service(model, &claim.service.hostname, port)],
            ..Default::default()
        });
    }
    for claim in &plan.by_sni {
        chains.push(FilterChain {
            name: claim_cluster(claim),
            filter_chain_match: Some(FilterChainMatch {
                server_names: vec![claim.service.hostname.clone()],
                transport_protocol: "tls".to_string(),
                ..Default::default()
            }),
            filters: vec![tcp::to_service(model, &claim.service.hostname, port)],
            ..Default::default()
        });
    }
    let mut route = None;
    let default = if plan.is_http() {
        let name = port.to_string();
        let services: Vec<_> = plan.http.iter().map(|c| (c.service, c.port)).collect();
        route = Some(port_routes(model, node, port, &services, unknown));
        FilterChain {
            name: format!("{port}-http"),
            filters: vec![hcm(&format!("outbound_0.0.0.0_{port}"), &name, false)],
            ..Default::default()
        }
    } else if let Some(claim) = &plan.default_tcp {
        FilterChain {
            name: claim_cluster(claim),
            filters: vec![tcp::to_service(model, &claim.service.hostname, port)],
            ..Default::default()
        }
    } else if chains.is_empty() {
        // The virtual listener's own fallback does the same.
        return None;
    } else {
        FilterChain {
            name: format!("{port}-fallthrough"),
            filters: vec![tcp::to(fallback)],
            ..Default::default()
        }
    };
    chains.push(default);
    let (address, additional_addresses) = listen_addresses(node, port);
    let listener = Listener {
        name: format!("0.0.0.0_{port}"),
        address: Some(address),
        additional_addresses,
        bind_to_port: Some(BoolValue { value: false }),
        listener_filters: if plan.by_sni.is_empty() {
            Vec::new()
        } else {
            vec![tls_inspector()]
        },
        filter_chains: chains,
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    };
    Some((listener, route))
}

fn claim_cluster(claim: &Claim<'_>) -> String {
    cluster_name(&claim.service.hostname, claim.port.number, None)
}
