//! A captured sidecar's outbound listeners: the virtual listener on the capture port hands each
//! connection to the listener for its original destination port, which tells services apart by
//! address, SNI or Host (Istio's listener model).

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{Address, CidrRange, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::{
    AdditionalAddress, Filter, FilterChain, FilterChainMatch, Listener,
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use ipnet::IpNet;
use strait_model::error::ObjectId;
use strait_model::mesh::OutboundTrafficPolicy;
use strait_model::outbound::{Claim, PortPlan};
use strait_model::{
    CapturedProtocol, GatewayRef, Model, ProxyNode, VirtualService, cluster_name, host,
};

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
    let logs =
        crate::access_log::access_logs(model, node, settings, strait_model::Direction::Client);
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
        if let Some((listener, route)) =
            port_listener(model, node, port, &plan, unknown, fallback, &logs)
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
    logs: &[envoy_types::pb::envoy::config::accesslog::v3::AccessLog],
) -> Option<(Listener, Option<RouteConfiguration>)> {
    let mut chains = Chains::default();
    for claim in &plan.by_address {
        let cidrs = &claim.service.addresses;
        if claim.port.protocol.captured() == CapturedProtocol::Tls {
            tls_chains(model, node, claim, cidrs, &mut chains);
        } else {
            tcp_chains(model, node, claim, cidrs, &mut chains);
        }
    }
    for claim in &plan.by_sni {
        tls_chains(model, node, claim, &[], &mut chains);
    }
    let mut route = None;
    if plan.is_http() {
        let name = port.to_string();
        let services: Vec<_> = plan.http.iter().map(|c| (c.service, c.port)).collect();
        route = Some(port_routes(model, node, port, &services, unknown));
        chains.push(
            format!("{port}-http"),
            FilterChainMatch::default(),
            hcm(
                &format!("outbound_0.0.0.0_{port}"),
                &name,
                false,
                Vec::new(),
                None,
                logs.to_vec(),
            ),
            None,
        );
    } else if let Some(claim) = &plan.default_tcp {
        // Its last chain matches anything: the port's default.
        tcp_chains(model, node, claim, &[], &mut chains);
    } else if chains.0.is_empty() {
        // The virtual listener's own fallback does the same.
        return None;
    } else {
        chains.push(
            format!("{port}-fallthrough"),
            FilterChainMatch::default(),
            tcp::to(fallback),
            None,
        );
    }
    let chains = chains.0;
    let inspect = chains.iter().any(|c| {
        c.filter_chain_match
            .as_ref()
            .is_some_and(|m| !m.server_names.is_empty() || !m.transport_protocol.is_empty())
    });
    let (address, additional_addresses) = listen_addresses(node, port);
    let listener = Listener {
        name: format!("0.0.0.0_{port}"),
        address: Some(address),
        additional_addresses,
        bind_to_port: Some(BoolValue { value: false }),
        listener_filters: if inspect {
            vec![tls_inspector()]
        } else {
            Vec::new()
        },
        filter_chains: chains,
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    };
    Some((listener, route))
}

/// A port listener's filter chains, each match taken by the first chain that claims it (Envoy
/// refuses two chains with the same match, as Istio avoids them).
#[derive(Default)]
struct Chains(Vec<FilterChain>);

impl Chains {
    fn push(
        &mut self,
        name: String,
        matches: FilterChainMatch,
        filter: Filter,
        origin: Option<&ObjectId>,
    ) {
        let matches = (matches != FilterChainMatch::default()).then_some(matches);
        if self.0.iter().any(|c| c.filter_chain_match == matches) {
            return;
        }
        // Names are unique in a listener.
        let name = if self.0.iter().any(|c| c.name == name) {
            format!("{name}-{}", self.0.len())
        } else {
            name
        };
        self.0.push(FilterChain {
            name,
            filter_chain_match: matches,
            filters: vec![filter],
            metadata: origin.and_then(|id| crate::origin::metadata([id])),
            ..Default::default()
        });
    }
}

fn cidr_match(cidrs: &[IpNet]) -> Vec<CidrRange> {
    cidrs
        .iter()
        .map(|net| CidrRange {
            address_prefix: net.addr().to_string(),
            prefix_len: Some(UInt32Value {
                value: u32::from(net.prefix_len()),
            }),
        })
        .collect()
}

/// The mesh VirtualService with `tcp` (or `tls`) routes for a service host: an exact host
/// first, else the narrowest wildcard.
fn l4_virtual_service<'m>(
    model: &'m Model,
    hostname: &str,
    tls: bool,
) -> Option<&'m VirtualService> {
    model
        .virtual_services
        .iter()
        .filter(|vs| vs.applies_to_mesh())
        .filter(|vs| {
            if tls {
                !vs.tls.is_empty()
            } else {
                !vs.tcp.is_empty()
            }
        })
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

/// A TCP service port's chains, as Istio's `buildSidecarOutboundTCPFilterChainOpts`: the first
/// `tcp` route whose match applies to this proxy takes the service's addresses (`cidrs`; none:
/// any); a match with only `destinationSubnets` takes those subnets and the search goes on;
/// without such a route the service's own cluster takes them.
fn tcp_chains(
    model: &Model,
    node: &ProxyNode,
    claim: &Claim<'_>,
    cidrs: &[IpNet],
    chains: &mut Chains,
) {
    let port = claim.port.number;
    let by_cidrs = |c: &[IpNet]| FilterChainMatch {
        prefix_ranges: cidr_match(c),
        ..Default::default()
    };
    let name = claim_cluster(claim);
    let mut default_added = false;
    if let Some(vs) = l4_virtual_service(model, &claim.service.hostname, false) {
        'routes: for tcp in &vs.tcp {
            let filter = || tcp::to_route(model, &vs.id, &tcp.route);
            if tcp.matches.is_empty() {
                chains.push(name.clone(), by_cidrs(cidrs), filter(), Some(&vs.id));
                default_added = true;
                break;
            }
            let mut subnets: Vec<IpNet> = Vec::new();
            for m in &tcp.matches {
                if !m.applies(&GatewayRef::Mesh, port, &node.labels, &node.namespace) {
                    continue;
                }
                if m.destination_subnets.is_empty() {
                    chains.push(name.clone(), by_cidrs(cidrs), filter(), Some(&vs.id));
                    default_added = true;
                    break 'routes;
                }
                subnets.extend(m.destination_subnets.iter().copied());
            }
            if !subnets.is_empty() {
                chains.push(name.clone(), by_cidrs(&subnets), filter(), Some(&vs.id));
                let (mut a, mut b) = (subnets.clone(), cidrs.to_vec());
                a.sort();
                b.sort();
                default_added |= a == b;
            }
        }
    }
    if !default_added {
        chains.push(
            name,
            by_cidrs(cidrs),
            tcp::to_service(model, &claim.service.hostname, port),
            None,
        );
    }
}

/// A TLS service port's chains, as Istio's `buildSidecarOutboundTLSFilterChainOpts`: a chain
/// per applicable `tls` match (its SNI hosts, its `destinationSubnets` or the service's
/// addresses); without one, the service's own cluster for its addresses or, where it has
/// none, for its host name as SNI.
fn tls_chains(
    model: &Model,
    node: &ProxyNode,
    claim: &Claim<'_>,
    cidrs: &[IpNet],
    chains: &mut Chains,
) {
    let port = claim.port.number;
    let name = claim_cluster(claim);
    let by = |sni: &[String], c: &[IpNet]| FilterChainMatch {
        prefix_ranges: cidr_match(c),
        server_names: sni.to_vec(),
        transport_protocol: if sni.is_empty() {
            String::new()
        } else {
            "tls".to_string()
        },
        ..Default::default()
    };
    let mut matched = false;
    if let Some(vs) = l4_virtual_service(model, &claim.service.hostname, true) {
        for tls in &vs.tls {
            for m in &tls.matches {
                if !m
                    .l4
                    .applies(&GatewayRef::Mesh, port, &node.labels, &node.namespace)
                {
                    continue;
                }
                let subnets = if m.l4.destination_subnets.is_empty() {
                    cidrs
                } else {
                    &m.l4.destination_subnets
                };
                chains.push(
                    name.clone(),
                    by(&m.sni_hosts, subnets),
                    tcp::to_route(model, &vs.id, &tls.route),
                    Some(&vs.id),
                );
                matched = true;
            }
        }
    }
    if !matched {
        let sni = if cidrs.is_empty() {
            vec![claim.service.hostname.clone()]
        } else {
            Vec::new()
        };
        chains.push(
            name,
            by(&sni, cidrs),
            tcp::to_service(model, &claim.service.hostname, port),
            None,
        );
    }
}

fn claim_cluster(claim: &Claim<'_>) -> String {
    cluster_name(&claim.service.hostname, claim.port.number, None)
}
