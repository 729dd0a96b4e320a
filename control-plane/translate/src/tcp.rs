//! The TCP proxy network filter: a connection that is not routed as HTTP, to one cluster or
//! split between a `tcp`/`tls` route's weighted destinations.

use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy,
    tcp_proxy::{ClusterSpecifier, WeightedCluster, weighted_cluster::ClusterWeight},
};
use envoy_types::pb::envoy::r#type::v3::{HashPolicy, hash_policy};
use strait_model::error::ObjectId;
use strait_model::{HashKey, LoadBalancer, Model, WeightedDestination};

use crate::proto::{any, duration};

const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

/// A TCP proxy to `cluster` with Envoy's defaults (an hour's idle timeout).
pub fn to(cluster: &str) -> Filter {
    filter(TcpProxy {
        stat_prefix: cluster.to_string(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
        ..Default::default()
    })
}

/// A TCP proxy to a service's cluster, with what its DestinationRule says applies to TCP: the
/// idle timeout and, for `consistentHash.useSourceIp`, hashing on the client's address.
pub fn to_service(model: &Model, host: &str, port: u16) -> Filter {
    let cluster = strait_model::cluster_name(host, port, None);
    with_policy(
        model,
        host,
        port,
        None,
        cluster.clone(),
        ClusterSpecifier::Cluster(cluster),
    )
}

/// A TCP proxy for a `tcp` or `tls` route of `vs`, as Istio builds it: one destination by its
/// cluster's name, several (those with weight) as weighted clusters with the VirtualService as
/// the stat prefix; the first destination's DestinationRule sets the TCP settings.
pub fn to_route(model: &Model, vs: &ObjectId, route: &[WeightedDestination]) -> Filter {
    let live: Vec<&WeightedDestination> = route.iter().filter(|d| d.weight > 0).collect();
    let first = &live
        .first()
        .expect("a validated route has a destination with weight")
        .destination;
    let (stat_prefix, specifier) = match live.as_slice() {
        [only] => {
            let cluster = crate::route::cluster_for(model, &only.destination);
            (cluster.clone(), ClusterSpecifier::Cluster(cluster))
        }
        _ => (
            format!("{}.{}", vs.name, vs.namespace),
            ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: live
                    .iter()
                    .map(|d| ClusterWeight {
                        name: crate::route::cluster_for(model, &d.destination),
                        weight: d.weight,
                        ..Default::default()
                    })
                    .collect(),
            }),
        ),
    };
    with_policy(
        model,
        &first.host,
        first.port,
        first.subset.as_deref(),
        stat_prefix,
        specifier,
    )
}

fn with_policy(
    model: &Model,
    host: &str,
    port: u16,
    subset: Option<&str>,
    stat_prefix: String,
    specifier: ClusterSpecifier,
) -> Filter {
    let policy = model.policy_for(host, port, subset);
    let idle = policy
        .connection_pool
        .as_ref()
        .and_then(|p| p.tcp_idle_timeout);
    let hash_source_ip = matches!(
        &policy.load_balancer,
        Some(LoadBalancer::ConsistentHash {
            key: HashKey::SourceIp,
            ..
        })
    );
    filter(TcpProxy {
        stat_prefix,
        cluster_specifier: Some(specifier),
        idle_timeout: idle.map(duration),
        hash_policy: if hash_source_ip {
            vec![HashPolicy {
                policy_specifier: Some(hash_policy::PolicySpecifier::SourceIp(
                    hash_policy::SourceIp {},
                )),
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    })
}

fn filter(proxy: TcpProxy) -> Filter {
    Filter {
        name: TCP_PROXY.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
    }
}
