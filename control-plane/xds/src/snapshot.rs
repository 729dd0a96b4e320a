//! Immutable, versioned sets of xDS resources, checked for internal consistency when built.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, RequestMirrorPolicy,
};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// SDS: workload certificates and trust bundles. Never logged: a secret may hold a private key.
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The types a snapshot carries, in the order ADS pushes them: a cluster must exist before its
/// endpoints, and both before a listener or route can point at it.
pub const PUSH_ORDER: [&str; 5] = [
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    SECRET_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
];

/// What translation produced for one node, before versioning.
#[derive(Default, Clone, Debug)]
pub struct Resources {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    pub secrets: Vec<Secret>,
    /// The only SPIFFE identity allowed to receive the secrets that hold a private key.
    pub secret_owner: Option<String>,
}

/// Why a set of resources cannot be served: Envoy would reject it or route to nowhere.
#[derive(Debug, thiserror::Error)]
pub enum InconsistentSnapshot {
    #[error("{kind} #{index} has an empty name")]
    EmptyName { kind: &'static str, index: usize },
    #[error("duplicate {kind} {name:?}")]
    DuplicateName { kind: &'static str, name: String },
    #[error("listener {listener:?} has an http connection manager that cannot be decoded: {error}")]
    UndecodableConnectionManager {
        listener: String,
        #[source]
        error: prost::DecodeError,
    },
    #[error("listener {listener:?} uses route configuration {route:?}, which does not exist")]
    MissingRouteConfiguration { listener: String, route: String },
    #[error(
        "{route} (virtual host {virtual_host:?}) targets cluster {cluster:?}, which does not exist"
    )]
    MissingCluster {
        route: String,
        virtual_host: String,
        cluster: String,
    },
    #[error("eds cluster {cluster:?} has no cluster load assignment named {service_name:?}")]
    MissingLoadAssignment {
        cluster: String,
        service_name: String,
    },
}

/// One type's resources: the type version and each resource's own version and packed form.
#[derive(Clone, Debug, Default)]
struct TypeResources {
    version: String,
    resources: BTreeMap<String, (String, Any)>,
}

impl TypeResources {
    fn build<T: Message + Name>(
        kind: &'static str,
        items: &[T],
        name_of: impl Fn(&T) -> &str,
    ) -> Result<Self, InconsistentSnapshot> {
        let mut resources = BTreeMap::new();
        for (index, item) in items.iter().enumerate() {
            let name = name_of(item);
            if name.is_empty() {
                return Err(InconsistentSnapshot::EmptyName { kind, index });
            }
            let value = item.encode_to_vec();
            let version = format!("{:016x}", xxh3_64(&value));
            let any = Any {
                type_url: T::type_url(),
                value,
            };
            if resources.insert(name.to_string(), (version, any)).is_some() {
                return Err(InconsistentSnapshot::DuplicateName {
                    kind,
                    name: name.to_string(),
                });
            }
        }
        // BTreeMap iteration is sorted by name, so the type version does not depend on the
        // order translation emitted the resources in.
        let mut hasher = Xxh3::new();
        for (name, (version, _)) in &resources {
            hasher.update(name.as_bytes());
            hasher.update(&[0]);
            hasher.update(version.as_bytes());
            hasher.update(&[0]);
        }
        Ok(Self {
            version: format!("{:016x}", hasher.digest()),
            resources,
        })
    }
}

/// An immutable, internally consistent set of listeners, routes, clusters and endpoints.
#[derive(Debug, Clone)]
pub struct Snapshot {
    listeners: TypeResources,
    routes: TypeResources,
    clusters: TypeResources,
    endpoints: TypeResources,
    secrets: TypeResources,
    secret_owner: Option<String>,
    /// Secrets holding a private key.
    private_secrets: BTreeSet<String>,
    /// `ClusterLoadAssignment` names that EDS clusters of this snapshot will ask for.
    eds_service_names: BTreeSet<String>,
    /// EDS cluster name -> the assignment name it asks for.
    eds_clusters: BTreeMap<String, String>,
}

impl Snapshot {
    /// Versions the resources and checks that every reference between them resolves.
    pub fn build(resources: Resources) -> Result<Snapshot, InconsistentSnapshot> {
        let listeners =
            TypeResources::build("listener", &resources.listeners, |l| l.name.as_str())?;
        let routes = TypeResources::build("route configuration", &resources.routes, |r| {
            r.name.as_str()
        })?;
        let clusters = TypeResources::build("cluster", &resources.clusters, |c| c.name.as_str())?;
        let endpoints =
            TypeResources::build("cluster load assignment", &resources.endpoints, |e| {
                e.cluster_name.as_str()
            })?;
        let secrets = TypeResources::build("secret", &resources.secrets, |s| s.name.as_str())?;
        let private_secrets = resources
            .secrets
            .iter()
            .filter(|s| matches!(s.r#type, Some(secret::Type::TlsCertificate(_))))
            .map(|s| s.name.clone())
            .collect();

        let cluster_names: BTreeSet<&str> =
            resources.clusters.iter().map(|c| c.name.as_str()).collect();
        for listener in &resources.listeners {
            for chain in listener
                .filter_chains
                .iter()
                .chain(listener.default_filter_chain.iter())
            {
                check_filter_chain(listener, chain, &routes, &cluster_names)?;
            }
        }
        for route in &resources.routes {
            check_route_configuration(
                &format!("route configuration {:?}", route.name),
                route,
                &cluster_names,
            )?;
        }

        let mut eds_clusters = BTreeMap::new();
        for cluster in &resources.clusters {
            let is_eds = matches!(
                cluster.cluster_discovery_type,
                Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
            );
            if !is_eds {
                continue;
            }
            let service_name = cluster
                .eds_cluster_config
                .as_ref()
                .map(|eds| eds.service_name.as_str())
                .filter(|name| !name.is_empty())
                .unwrap_or(cluster.name.as_str());
            if !endpoints.resources.contains_key(service_name) {
                return Err(InconsistentSnapshot::MissingLoadAssignment {
                    cluster: cluster.name.clone(),
                    service_name: service_name.to_string(),
                });
            }
            eds_clusters.insert(cluster.name.clone(), service_name.to_string());
        }

        Ok(Snapshot {
            listeners,
            routes,
            clusters,
            endpoints,
            secrets,
            secret_owner: resources.secret_owner,
            private_secrets,
            eds_service_names: eds_clusters.values().cloned().collect(),
            eds_clusters,
        })
    }

    /// What a stream authenticated as `identity` may see: the whole snapshot for the secrets'
    /// owner, else the snapshot without any private key.
    pub fn for_identity(self: &Arc<Self>, identity: Option<&str>) -> Arc<Snapshot> {
        let owner = self.secret_owner.as_deref();
        if self.private_secrets.is_empty() || (identity.is_some() && identity == owner) {
            return self.clone();
        }
        let mut visible = (**self).clone();
        visible
            .secrets
            .resources
            .retain(|name, _| !self.private_secrets.contains(name));
        Arc::new(visible)
    }

    fn of_type(&self, type_url: &str) -> Option<&TypeResources> {
        match type_url {
            LISTENER_TYPE => Some(&self.listeners),
            ROUTE_TYPE => Some(&self.routes),
            CLUSTER_TYPE => Some(&self.clusters),
            ENDPOINT_TYPE => Some(&self.endpoints),
            SECRET_TYPE => Some(&self.secrets),
            _ => None,
        }
    }

    /// The type version: changes exactly when some resource of the type is added, removed or
    /// changed. `None` for a type this snapshot does not carry.
    pub fn version(&self, type_url: &str) -> Option<&str> {
        self.of_type(type_url).map(|t| t.version.as_str())
    }

    /// Resource names of a type, sorted.
    pub fn resource_names(&self, type_url: &str) -> Vec<String> {
        self.of_type(type_url)
            .map(|t| t.resources.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&Any> {
        self.of_type(type_url)
            .and_then(|t| t.resources.get(name))
            .map(|(_, any)| any)
    }

    /// A resource's own version (hash of its encoding).
    pub fn resource_version(&self, type_url: &str, name: &str) -> Option<&str> {
        self.of_type(type_url)
            .and_then(|t| t.resources.get(name))
            .map(|(version, _)| version.as_str())
    }

    /// Every resource of a type as (name, resource version, packed resource), sorted by name.
    pub fn resources(&self, type_url: &str) -> impl Iterator<Item = (&str, &str, &Any)> {
        self.of_type(type_url).into_iter().flat_map(|t| {
            t.resources
                .iter()
                .map(|(name, (version, any))| (name.as_str(), version.as_str(), any))
        })
    }

    /// Names of the `ClusterLoadAssignment`s that this snapshot's EDS clusters subscribe to.
    pub fn eds_service_names(&self) -> &BTreeSet<String> {
        &self.eds_service_names
    }

    /// The `ClusterLoadAssignment` name an EDS cluster asks for; `None` for other clusters.
    pub fn eds_service_name(&self, cluster: &str) -> Option<&str> {
        self.eds_clusters.get(cluster).map(String::as_str)
    }
}

fn check_filter_chain(
    listener: &Listener,
    chain: &FilterChain,
    routes: &TypeResources,
    clusters: &BTreeSet<&str>,
) -> Result<(), InconsistentSnapshot> {
    let hcm_type = HttpConnectionManager::full_name();
    for filter in &chain.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
            continue;
        };
        // Envoy accepts any host before the last '/', so compare only the message name.
        if any.type_url.rsplit('/').next() != Some(hcm_type.as_str()) {
            continue;
        }
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|error| {
            InconsistentSnapshot::UndecodableConnectionManager {
                listener: listener.name.clone(),
                error,
            }
        })?;
        match &hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => {
                if !routes.resources.contains_key(&rds.route_config_name) {
                    return Err(InconsistentSnapshot::MissingRouteConfiguration {
                        listener: listener.name.clone(),
                        route: rds.route_config_name.clone(),
                    });
                }
            }
            Some(RouteSpecifier::RouteConfig(inline)) => check_route_configuration(
                &format!("inline route configuration of listener {:?}", listener.name),
                inline,
                clusters,
            )?,
            // Scoped routes are not produced by Strait; nothing to check.
            Some(RouteSpecifier::ScopedRoutes(_)) | None => {}
        }
    }
    Ok(())
}

fn check_route_configuration(
    label: &str,
    config: &RouteConfiguration,
    clusters: &BTreeSet<&str>,
) -> Result<(), InconsistentSnapshot> {
    let check = |virtual_host: &str, cluster: &str| {
        // An empty name means the cluster comes from a header at request time.
        if cluster.is_empty() || clusters.contains(cluster) {
            Ok(())
        } else {
            Err(InconsistentSnapshot::MissingCluster {
                route: label.to_string(),
                virtual_host: virtual_host.to_string(),
                cluster: cluster.to_string(),
            })
        }
    };
    let check_mirrors = |virtual_host: &str, mirrors: &[RequestMirrorPolicy]| {
        mirrors
            .iter()
            .try_for_each(|mirror| check(virtual_host, &mirror.cluster))
    };
    check_mirrors("", &config.request_mirror_policies)?;
    for vhost in &config.virtual_hosts {
        check_mirrors(&vhost.name, &vhost.request_mirror_policies)?;
        for route in &vhost.routes {
            let Some(route::Action::Route(action)) = &route.action else {
                continue;
            };
            match &action.cluster_specifier {
                Some(ClusterSpecifier::Cluster(name)) => check(&vhost.name, name)?,
                Some(ClusterSpecifier::WeightedClusters(weighted)) => {
                    for weight in &weighted.clusters {
                        check(&vhost.name, &weight.name)?;
                    }
                }
                _ => {}
            }
            check_mirrors(&vhost.name, &action.request_mirror_policies)?;
        }
    }
    Ok(())
}
