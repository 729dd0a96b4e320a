//! Tiny hand-built Envoy resources: EDS clusters, their endpoints, an RDS listener and routes.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ConfigSource, SocketAddress, address,
};
use envoy_types::pb::envoy::config::core::v3::Address;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, RequestMirrorPolicy,
};
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, route,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds,
};
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;
use strait_xds::snapshot::Resources;

pub const CLUSTER: &str = "backend";
pub const LISTENER: &str = "http";
pub const ROUTE: &str = "http-routes";

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// An EDS cluster; `timeout_s` lets tests change it without renaming.
pub fn cluster(name: &str, timeout_s: i64) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(Duration {
            seconds: timeout_s,
            nanos: 0,
        }),
        ..Default::default()
    }
}

pub fn load_assignment(name: &str, port: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: "127.0.0.1".into(),
                            port_specifier: Some(PortSpecifier::PortValue(port)),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn hcm(route_specifier: RouteSpecifier) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(
            HttpConnectionManager {
                stat_prefix: "http".into(),
                route_specifier: Some(route_specifier),
                ..Default::default()
            },
        ))),
    }
}

pub fn rds(route_name: &str) -> RouteSpecifier {
    RouteSpecifier::Rds(Rds {
        config_source: Some(ads()),
        route_config_name: route_name.to_string(),
    })
}

pub fn listener(name: &str, route_name: &str) -> Listener {
    Listener {
        name: name.to_string(),
        filter_chains: vec![FilterChain {
            filters: vec![hcm(rds(route_name))],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn route_to(action: ClusterSpecifier) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(action),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn route_config(name: &str, routes: Vec<Route>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn single(cluster: &str) -> ClusterSpecifier {
    ClusterSpecifier::Cluster(cluster.to_string())
}

pub fn weighted(clusters: &[&str]) -> ClusterSpecifier {
    ClusterSpecifier::WeightedClusters(WeightedCluster {
        clusters: clusters
            .iter()
            .map(|name| ClusterWeight {
                name: name.to_string(),
                weight: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 1 }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}

pub fn mirror(cluster: &str) -> RequestMirrorPolicy {
    RequestMirrorPolicy {
        cluster: cluster.to_string(),
        ..Default::default()
    }
}

/// One listener -> one route configuration -> `backend` (EDS) -> one endpoint.
pub fn basic() -> Resources {
    Resources {
        listeners: vec![listener(LISTENER, ROUTE)],
        routes: vec![route_config(ROUTE, vec![route_to(single(CLUSTER))])],
        clusters: vec![cluster(CLUSTER, 1)],
        endpoints: vec![load_assignment(CLUSTER, 8080)],
        secrets: Vec::new(),
        secret_owner: None,
    }
}

/// `basic` plus a second EDS cluster `other` that nothing routes to.
pub fn two_clusters() -> Resources {
    let mut resources = basic();
    resources.clusters.push(cluster("other", 1));
    resources.endpoints.push(load_assignment("other", 9090));
    resources
}
