//! CDS and EDS: a cluster per service port and per subset, named as Istio names them.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as PbOutlier, UpstreamConnectionOptions,
    circuit_breakers::Thresholds,
    cluster::{
        ClusterDiscoveryType, CommonLbConfig, DiscoveryType, DnsLookupFamily, EdsClusterConfig,
        LbConfig, LbPolicy, MaglevLbConfig, OriginalDstLbConfig, RingHashLbConfig,
    },
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpOptions,
    RoutingPriority, SocketAddress, TcpKeepalive, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as PbEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config},
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use strait_model::{
    ConnectionPool, HashRing, LoadBalancer, Model, OutlierDetection, Resolution, ResolvedPolicy,
    Service, ServicePort, cluster_name,
};

use crate::proto::{any, duration, u32v};
use crate::{MeshSettings, security};
use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use strait_model::ClientTlsMode;

type Labels = BTreeMap<String, String>;

/// Istio's default connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Every cluster of the mesh and the assignments of its EDS clusters.
pub fn clusters(
    model: &Model,
    settings: &MeshSettings,
) -> (Vec<Cluster>, Vec<ClusterLoadAssignment>) {
    clusters_of(model, settings, |_| true)
}

/// [`clusters`] of the services `wanted` picks (by hostname) only: what a change to those
/// services' endpoints alone replaces, since a service's clusters read no other service.
pub fn clusters_of(
    model: &Model,
    settings: &MeshSettings,
    wanted: impl Fn(&str) -> bool,
) -> (Vec<Cluster>, Vec<ClusterLoadAssignment>) {
    let mut clusters = Vec::new();
    let mut assignments = Vec::new();
    for service in model.services.values().filter(|s| wanted(&s.hostname)) {
        for port in &service.ports {
            let mut subsets: Vec<(Option<&str>, Option<&Labels>)> = vec![(None, None)];
            subsets.extend(
                model
                    .subsets_for(&service.hostname)
                    .iter()
                    .map(|s| (Some(s.name.as_str()), Some(&s.labels))),
            );
            for (subset, labels) in subsets {
                let name = cluster_name(&service.hostname, port.number, subset);
                let policy = model.policy_for(&service.hostname, port.number, subset);
                let endpoints = endpoints(model, service, port, labels);
                let (mut cluster, assignment) = cluster(&name, service, port, &policy, endpoints);
                // Its DestinationRule when one shaped it, else the service's own object.
                cluster.metadata = crate::origin::metadata([model
                    .destination_rule_for(&service.hostname)
                    .map_or(&service.source, |dr| &dr.id)]);
                transport(
                    &mut cluster,
                    service,
                    port.number,
                    subset,
                    &policy,
                    settings,
                );
                clusters.push(cluster);
                assignments.extend(assignment);
            }
        }
    }
    (clusters, assignments)
}

fn endpoints(
    model: &Model,
    service: &Service,
    port: &ServicePort,
    labels: Option<&BTreeMap<String, String>>,
) -> Vec<LbEndpoint> {
    service
        .endpoints
        .iter()
        .filter(|e| labels.is_none_or(|l| l.iter().all(|(k, v)| e.labels.get(k) == Some(v))))
        .map(|e| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(PbEndpoint {
                address: Some(socket(&e.address, e.port_for(port))),
                ..Default::default()
            })),
            load_balancing_weight: Some(u32v(e.weight)),
            // Auto mTLS: endpoints whose sidecar accepts mesh mTLS say so, as in Istio.
            metadata: auto_mtls(model, e, port).then(|| Metadata {
                filter_metadata: std::iter::once((
                    security::TLS_MODE_MATCH.to_string(),
                    tls_mode_struct(),
                ))
                .collect(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// Auto mTLS to an endpoint: it runs a sidecar, and its PeerAuthentication does not turn mTLS
/// off (as Istio decides per endpoint).
fn auto_mtls(model: &Model, e: &strait_model::Endpoint, port: &ServicePort) -> bool {
    e.mesh_tls()
        && model.mtls_mode(&e.source.namespace, &e.labels, e.port_for(port))
            != strait_model::MtlsMode::Disable
}

fn tls_mode_struct() -> Struct {
    Struct {
        fields: std::iter::once((
            "tlsMode".to_string(),
            Value {
                kind: Some(value::Kind::StringValue("istio".to_string())),
            },
        ))
        .collect(),
    }
}

/// TLS to the upstream: what the DestinationRule says, else mesh mTLS to the endpoints that
/// have a sidecar (auto mTLS) and plaintext to the others.
fn transport(
    c: &mut Cluster,
    service: &Service,
    port: u16,
    subset: Option<&str>,
    policy: &ResolvedPolicy,
    settings: &MeshSettings,
) {
    let sni = format!(
        "outbound_.{port}_.{}_.{}",
        subset.unwrap_or(""),
        service.hostname
    );
    // The identities the server may present: every endpoint's, or (auto mTLS) those with sidecars.
    let identities = |only_mesh: bool| -> Vec<String> {
        let set: std::collections::BTreeSet<String> = service
            .endpoints
            .iter()
            .filter(|e| !only_mesh || e.mesh_tls())
            .map(|e| security::spiffe(settings, &e.source.namespace, &e.service_account))
            .collect();
        set.into_iter().collect()
    };
    match &policy.tls {
        Some(tls) => match tls.mode {
            ClientTlsMode::Disable => {}
            ClientTlsMode::IstioMutual => {
                c.transport_socket = Some(security::istio_mutual(&identities(false), &sni))
            }
            ClientTlsMode::Simple | ClientTlsMode::Mutual => {
                c.transport_socket = Some(security::file_tls(tls, &service.hostname));
            }
        },
        None if service.endpoints.iter().any(|e| e.mesh_tls()) => {
            c.transport_socket_matches = vec![TransportSocketMatch {
                name: "tlsMode-istio".to_string(),
                r#match: Some(tls_mode_struct()),
                transport_socket: Some(security::istio_mutual(&identities(true), &sni)),
            }];
        }
        None => {}
    }
}

pub(crate) fn socket(host: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn cluster(
    name: &str,
    service: &Service,
    port: &ServicePort,
    policy: &ResolvedPolicy,
    endpoints: Vec<LbEndpoint>,
) -> (Cluster, Option<ClusterLoadAssignment>) {
    let pool = policy.connection_pool.clone().unwrap_or_default();
    let assignment = ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut c = Cluster {
        name: name.to_string(),
        connect_timeout: Some(duration(pool.connect_timeout.unwrap_or(CONNECT_TIMEOUT))),
        lb_policy: LbPolicy::LeastRequest as i32,
        circuit_breakers: Some(circuit_breakers(&pool)),
        ..Default::default()
    };
    let mut eds = None;
    match (service.resolution, &policy.load_balancer) {
        (_, Some(LoadBalancer::Passthrough)) => {
            // The caller names the destination in x-envoy-original-dst-host (explicit proxy mode).
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
            c.lb_policy = LbPolicy::ClusterProvided as i32;
            c.lb_config = Some(LbConfig::OriginalDstLbConfig(OriginalDstLbConfig {
                use_http_header: true,
                ..Default::default()
            }));
        }
        (Resolution::Static, _) => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
            c.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(crate::proto::ads()),
                service_name: String::new(),
            });
            eds = Some(assignment);
        }
        (Resolution::Dns, _) => {
            c.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
            c.dns_lookup_family = DnsLookupFamily::V4Preferred as i32;
            c.load_assignment = Some(assignment);
        }
    }
    match &policy.load_balancer {
        Some(LoadBalancer::RoundRobin) => c.lb_policy = LbPolicy::RoundRobin as i32,
        Some(LoadBalancer::Random) => c.lb_policy = LbPolicy::Random as i32,
        Some(LoadBalancer::ConsistentHash { ring, .. }) => match ring {
            HashRing::RingHash { minimum_ring_size } => {
                c.lb_policy = LbPolicy::RingHash as i32;
                c.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                    minimum_ring_size: minimum_ring_size
                        .map(|v| envoy_types::pb::google::protobuf::UInt64Value { value: v }),
                    ..Default::default()
                }));
            }
            HashRing::Maglev { table_size } => {
                c.lb_policy = LbPolicy::Maglev as i32;
                c.lb_config = Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                    table_size: table_size
                        .map(|v| envoy_types::pb::google::protobuf::UInt64Value { value: v }),
                }));
            }
        },
        Some(LoadBalancer::LeastRequest | LoadBalancer::Passthrough) | None => {}
    }
    if let Some(od) = &policy.outlier_detection {
        c.outlier_detection = Some(outlier_detection(od));
        // Istio disables panic mode unless minHealthPercent asks for it, so ejected hosts stay out.
        c.common_lb_config = Some(CommonLbConfig {
            healthy_panic_threshold: Some(Percent {
                value: f64::from(od.min_health_percent.unwrap_or(0)),
            }),
            ..Default::default()
        });
    }
    if let Some(k) = &pool.tcp_keepalive {
        c.upstream_connection_options = Some(UpstreamConnectionOptions {
            tcp_keepalive: Some(TcpKeepalive {
                keepalive_probes: k.probes.map(u32v),
                keepalive_time: k.time.map(|d| u32v(d.as_secs() as u32)),
                keepalive_interval: k.interval.map(|d| u32v(d.as_secs() as u32)),
            }),
            ..Default::default()
        });
    }
    if let Some(options) = protocol_options(port, &pool) {
        c.typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS.to_string(), any(&options));
    }
    (c, eds)
}

/// connectionPool limits; unset limits are effectively unlimited, as in Istio (Envoy's own
/// defaults, such as 3 concurrent retries, would otherwise surprise users under load).
fn circuit_breakers(pool: &ConnectionPool) -> CircuitBreakers {
    let max = u32::MAX;
    CircuitBreakers {
        thresholds: vec![Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: Some(u32v(pool.max_connections.unwrap_or(max))),
            max_pending_requests: Some(u32v(pool.http1_max_pending_requests.unwrap_or(max))),
            max_requests: Some(u32v(pool.http2_max_requests.unwrap_or(max))),
            max_retries: Some(u32v(pool.max_retries.unwrap_or(max))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn outlier_detection(od: &OutlierDetection) -> PbOutlier {
    let enforcing = |v: Option<u32>| v.map(|n| u32v(if n > 0 { 100 } else { 0 }));
    PbOutlier {
        consecutive_5xx: od.consecutive_5xx.filter(|n| *n > 0).map(u32v),
        enforcing_consecutive_5xx: enforcing(od.consecutive_5xx),
        consecutive_gateway_failure: od.consecutive_gateway_errors.filter(|n| *n > 0).map(u32v),
        enforcing_consecutive_gateway_failure: enforcing(od.consecutive_gateway_errors),
        split_external_local_origin_errors: od.split_external_local_origin_errors,
        consecutive_local_origin_failure: od
            .consecutive_local_origin_failures
            .filter(|n| *n > 0)
            .map(u32v),
        enforcing_consecutive_local_origin_failure: enforcing(od.consecutive_local_origin_failures),
        interval: od.interval.map(duration),
        base_ejection_time: od.base_ejection_time.map(duration),
        max_ejection_percent: od.max_ejection_percent.map(u32v),
        // Istio turns success-rate ejection off; only the consecutive-error detectors apply.
        enforcing_success_rate: Some(u32v(0)),
        ..Default::default()
    }
}

fn protocol_options(port: &ServicePort, pool: &ConnectionPool) -> Option<HttpProtocolOptions> {
    let http2 = port.protocol.is_http2() || (pool.h2_upgrade && port.protocol.is_http());
    let common = CommonHttpOptions {
        idle_timeout: pool.idle_timeout.map(duration),
        max_connection_duration: pool.max_connection_duration.map(duration),
        max_requests_per_connection: pool.max_requests_per_connection.map(u32v),
        ..Default::default()
    };
    let has_common = common != CommonHttpOptions::default();
    if !http2 && !has_common {
        return None;
    }
    let protocol = if http2 {
        explicit_http_config::ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions {
            max_concurrent_streams: pool.max_concurrent_streams.map(u32v),
            ..Default::default()
        })
    } else {
        explicit_http_config::ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())
    };
    Some(HttpProtocolOptions {
        common_http_protocol_options: has_common.then_some(common),
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(protocol),
            },
        )),
        ..Default::default()
    })
}

// === Clusters of captured sidecars ===

/// Where captured traffic for unknown destinations goes under ALLOW_ANY: its original destination.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// A cluster with no endpoints: connections sent to it are closed (REGISTRY_ONLY, loops).
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Inbound connections to ports no service declares, on to the app's original destination.
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// The source address of connections a sidecar makes to its own app, which iptables lets by
/// (Istio's `-o lo -s 127.0.0.6 -j RETURN`); `::6` for IPv6.
pub const INBOUND_SOURCE_V4: &str = "127.0.0.6";
pub const INBOUND_SOURCE_V6: &str = "::6";

fn original_dst(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        connect_timeout: Some(duration(CONNECT_TIMEOUT)),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: LbPolicy::ClusterProvided as i32,
        circuit_breakers: Some(circuit_breakers(&ConnectionPool::default())),
        ..Default::default()
    }
}

/// The clusters every captured sidecar has: passthrough and black hole.
pub fn captured_clusters() -> Vec<Cluster> {
    vec![original_dst(PASSTHROUGH_CLUSTER), blackhole()]
}

/// A cluster without endpoints: what it gets is refused (503 for HTTP).
pub fn blackhole() -> Cluster {
    Cluster {
        name: BLACKHOLE_CLUSTER.to_string(),
        connect_timeout: Some(duration(CONNECT_TIMEOUT)),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        ..Default::default()
    }
}

/// A cluster to the workload itself at the connection's original destination, from 127.0.0.6
/// (and `::6` when the workload has IPv6), so the connection is not captured again.
pub fn inbound_original_dst(name: &str, dual_stack: bool, http2: bool) -> Cluster {
    use envoy_types::pb::envoy::config::core::v3::{BindConfig, ExtraSourceAddress};
    let source = |ip: &str| SocketAddress {
        address: ip.to_string(),
        port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
        ..Default::default()
    };
    let mut c = original_dst(name);
    c.upstream_bind_config = Some(BindConfig {
        source_address: Some(source(INBOUND_SOURCE_V4)),
        extra_source_addresses: if dual_stack {
            vec![ExtraSourceAddress {
                address: Some(source(INBOUND_SOURCE_V6)),
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    });
    if http2 {
        let options = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(
                        explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            )),
            ..Default::default()
        };
        c.typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS.to_string(), any(&options));
    }
    c
}
