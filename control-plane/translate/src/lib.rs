//! Pure translation: (validated model, proxy node) -> Envoy listeners, routes, clusters, endpoints.
//!
//! No I/O, no errors: the model is already valid, so every function here is infallible and the
//! same inputs always give the same output (which is what makes snapshots comparable).

mod cluster;
mod listener;
mod proto;
mod route;

use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};
use strait_model::{Model, ProxyMode, ProxyNode};

pub use listener::OUTBOUND_ROUTE_NAME;

/// Everything one proxy gets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
}

/// Translates the model for one proxy.
pub fn translate(model: &Model, node: &ProxyNode) -> Output {
    let (clusters, endpoints) = cluster::clusters(model);
    let (listeners, routes) = match node.mode {
        ProxyMode::Sidecar => {
            let routes = vec![route::sidecar_routes(model, node)];
            (vec![listener::sidecar_outbound(node)], routes)
        }
        ProxyMode::Gateway => listener::gateway(model, node),
    };
    Output {
        listeners,
        routes,
        clusters,
        endpoints,
    }
}
