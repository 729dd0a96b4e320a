//! The TCP proxy network filter: a captured connection that is not routed as HTTP, to one cluster.

use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use envoy_types::pb::envoy::r#type::v3::{HashPolicy, hash_policy};
use strait_model::{HashKey, LoadBalancer, Model};

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
    let policy = model.policy_for(host, port, None);
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
        stat_prefix: cluster.clone(),
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
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
