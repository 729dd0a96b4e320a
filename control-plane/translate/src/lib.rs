//! Pure translation: (validated model, proxy node) -> Envoy listeners, routes, clusters, endpoints.
//!
//! No I/O, no errors: the model is already valid, so every function here is infallible and the
//! same inputs always give the same output (which is what makes snapshots comparable).

mod access_log;
mod cluster;
mod credential;
mod inbound;
mod jwt;
mod listener;
mod origin;
mod outbound;
mod proto;
mod rate_limit;
mod route;
mod security;
mod tcp;

use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use std::collections::BTreeSet;

use strait_model::mesh::{MeshConfig, OutboundTrafficPolicy};
use strait_model::node::Interception;
use strait_model::{Model, ProxyMode, ProxyNode, Scope};

pub use cluster::{BLACKHOLE_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER};
pub use credential::{CREDENTIAL_PREFIX, credential_ca_secret_name, credential_secret_name};
pub use inbound::VIRTUAL_INBOUND;
pub use listener::OUTBOUND_ROUTE_NAME;
pub use origin::{
    Encoded, METADATA_KEY, config_path, of as origins_of, origins, parse_config_path,
};
pub use outbound::VIRTUAL_OUTBOUND;
pub use security::{ROOT_SECRET, WORKLOAD_SECRET, spiffe};

/// Mesh-wide settings that are not policy objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshSettings {
    /// The SPIFFE trust domain of workload identities.
    pub trust_domain: String,
    /// What captured traffic to destinations the mesh does not know gets.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// MeshConfig's `accessLogFile`: proxies log unless a Telemetry says not.
    pub access_log_file: bool,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            trust_domain: "cluster.local".to_string(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            access_log_file: false,
        }
    }
}

impl MeshSettings {
    /// The settings for proxies of a scope: their Sidecar's outbound traffic policy, if it
    /// sets one, over the mesh's.
    pub fn scoped(&self, scope: &Scope) -> MeshSettings {
        MeshSettings {
            outbound_traffic_policy: scope
                .outbound_traffic_policy
                .unwrap_or(self.outbound_traffic_policy),
            ..self.clone()
        }
    }

    /// The settings a MeshConfig gives, over the defaults.
    pub fn from_mesh_config(config: &MeshConfig) -> Self {
        let defaults = MeshSettings::default();
        MeshSettings {
            trust_domain: config.trust_domain.clone().unwrap_or(defaults.trust_domain),
            outbound_traffic_policy: config.outbound_traffic_policy,
            access_log_file: config.access_log_file,
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
    /// SDS secrets a gateway's credentials (`credentialName`) make; those with a private key
    /// go only to a stream authenticated as the gateway.
    pub secrets: Vec<Secret>,
}

/// Translates the model for one proxy with default mesh settings.
pub fn translate(model: &Model, node: &ProxyNode) -> Output {
    translate_with(model, node, &MeshSettings::default())
}

/// Translates the model for one proxy: the mesh's part and its outbound part as its scope
/// (Sidecar, `exportTo`) lets it see the model, and its inbound part.
pub fn translate_with(model: &Model, node: &ProxyNode, settings: &MeshSettings) -> Output {
    let scoped = model
        .scope_for(&node.namespace, model.sidecar_of(node))
        .map(|scope| (model.scoped(&scope), settings.scoped(&scope)));
    let (view, view_settings) = match &scoped {
        Some((model, settings)) => (model, settings),
        None => (model, settings),
    };
    let mut out = mesh(view, view_settings);
    for part in [
        outbound(view, node, view_settings),
        inbound(model, node, settings),
    ] {
        out.listeners.extend(part.listeners);
        out.routes.extend(part.routes);
        out.clusters.extend(part.clusters);
        out.endpoints.extend(part.endpoints);
        out.secrets.extend(part.secrets);
    }
    out
}

/// What every proxy gets alike: a cluster per service port and subset, and the endpoints
/// of the EDS ones. Reads no node, so it is made once per model for all of them.
pub fn mesh(model: &Model, settings: &MeshSettings) -> Output {
    let (clusters, endpoints) = cluster::clusters(model, settings);
    Output {
        clusters,
        endpoints,
        ..Output::default()
    }
}

/// [`mesh`]'s resources of the services `hosts` names only: with the mesh part of a model
/// that differs from this one in those services' endpoints alone, the mesh part of this one.
pub fn mesh_of(model: &Model, settings: &MeshSettings, hosts: &BTreeSet<String>) -> Output {
    let (clusters, endpoints) = cluster::clusters_of(model, settings, |h| hosts.contains(h));
    Output {
        clusters,
        endpoints,
        ..Output::default()
    }
}

/// A proxy's outbound side: its listeners and routes to the mesh (and a captured sidecar's
/// passthrough and blackhole clusters). Reads no endpoint, so an endpoint change leaves it
/// as it is; and of the node only what [`ProxyNode::outbound_shape`] keeps.
pub fn outbound(model: &Model, node: &ProxyNode, settings: &MeshSettings) -> Output {
    let mut clusters = Vec::new();
    let mut secrets = Vec::new();
    let (listeners, routes) = match (node.mode, node.interception) {
        (ProxyMode::Sidecar, Interception::Redirect { inbound_port }) => {
            clusters.extend(cluster::captured_clusters());
            outbound::captured(model, node, settings, inbound_port)
        }
        (ProxyMode::Sidecar, Interception::None) => {
            let routes = vec![route::sidecar_routes(model, node)];
            (
                vec![listener::sidecar_outbound(model, node, settings)],
                routes,
            )
        }
        (ProxyMode::Gateway, _) => {
            secrets = credential::gateway_secrets(model, node);
            listener::gateway(model, node, settings)
        }
    };
    // A route to what the proxy's scope leaves out goes to the BlackHoleCluster, which
    // captured sidecars always have.
    if !clusters.iter().any(|c| c.name == BLACKHOLE_CLUSTER)
        && routes
            .iter()
            .any(|r| route::uses_cluster(r, BLACKHOLE_CLUSTER))
    {
        clusters.push(cluster::blackhole());
    }
    Output {
        listeners,
        routes,
        clusters,
        endpoints: Vec::new(),
        secrets,
    }
}

/// A sidecar's inbound side: the listener its workload's callers reach and the clusters to
/// the workload. A captured sidecar serves the ports whose endpoints are its addresses, so
/// this part follows endpoint changes.
pub fn inbound(model: &Model, node: &ProxyNode, settings: &MeshSettings) -> Output {
    let mut out = Output::default();
    if let (ProxyMode::Sidecar, Interception::Redirect { inbound_port }) =
        (node.mode, node.interception)
    {
        let (virtual_inbound, inbound_clusters) =
            inbound::captured(model, node, settings, inbound_port);
        out.listeners.push(virtual_inbound);
        out.clusters.extend(inbound_clusters);
    }
    if let Some((listener, app)) = inbound::explicit(model, node, settings) {
        out.listeners.push(listener);
        out.clusters.push(app);
    }
    out
}
