//! Pure translation: (validated model, proxy node) -> Envoy listeners, routes, clusters, endpoints.
//!
//! No I/O, no errors: the model is already valid, so every function here is infallible and the
//! same inputs always give the same output (which is what makes snapshots comparable).

mod cluster;
mod listener;
mod proto;
mod route;
mod security;

use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};
use strait_model::{Model, ProxyMode, ProxyNode};

pub use listener::OUTBOUND_ROUTE_NAME;
pub use security::{ROOT_SECRET, WORKLOAD_SECRET, spiffe};

/// Mesh-wide settings that are not policy objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshSettings {
    /// The SPIFFE trust domain of workload identities.
    pub trust_domain: String,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            trust_domain: "cluster.local".to_string(),
        }
    }
}

/// Everything one proxy gets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
}

/// Translates the model for one proxy with default mesh settings.
pub fn translate(model: &Model, node: &ProxyNode) -> Output {
    translate_with(model, node, &MeshSettings::default())
}

/// Translates the model for one proxy.
pub fn translate_with(model: &Model, node: &ProxyNode, settings: &MeshSettings) -> Output {
    let (mut clusters, endpoints) = cluster::clusters(model, settings);
    let (mut listeners, routes) = match node.mode {
        ProxyMode::Sidecar => {
            let routes = vec![route::sidecar_routes(model, node)];
            (vec![listener::sidecar_outbound(node)], routes)
        }
        ProxyMode::Gateway => listener::gateway(model, node),
    };
    if let Some((listener, app)) = security::inbound(model, node, settings) {
        listeners.push(listener);
        clusters.push(app);
    }
    Output {
        listeners,
        routes,
        clusters,
        endpoints,
    }
}
