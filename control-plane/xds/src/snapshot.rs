//! Immutable, versioned sets of xDS resources, encoded once and shared, checked for internal
//! consistency when composed.
//!
//! A [`Part`] is a piece of configuration encoded once: the mesh's clusters and endpoints,
//! the listeners and routes of one proxy shape, a workload's inbound side. A [`Snapshot`] is
//! what one node gets: a few parts, referenced rather than copied, so a thousand proxies of a
//! hundred shapes hold one copy of the mesh's clusters between them. A part built to replace
//! another remembers which resources differ from it ([`Part::succeeding`]), so a stream that
//! holds the older part finds what to send by looking at those names only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::Instant;

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
use prost::bytes::Bytes;
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

/// Where a type's table sits in a part.
pub fn type_index(type_url: &str) -> Option<usize> {
    PUSH_ORDER.iter().position(|t| *t == type_url)
}

/// A part's tables, by position in PUSH_ORDER.
const CLUSTERS: usize = 0;
const ENDPOINTS: usize = 1;
const SECRETS: usize = 2;
const LISTENERS: usize = 3;
const ROUTES: usize = 4;

/// What errors call a resource of each type, by position in PUSH_ORDER.
const KINDS: [&str; 5] = [
    "cluster",
    "cluster load assignment",
    "secret",
    "listener",
    "route configuration",
];

/// A resource version as sent on the wire: 16 hex digits of the xxh3 of its encoding.
pub fn version_string(version: u64) -> String {
    format!("{version:016x}")
}

/// Reads a version a client reports (delta's `initial_resource_versions`). One that is not
/// ours still gets a value, which matches no resource.
pub fn parse_version(version: &str) -> u64 {
    if version.len() == 16
        && let Ok(v) = u64::from_str_radix(version, 16)
    {
        return v;
    }
    xxh3_64(version.as_bytes()) ^ 0x9e37_79b9_7f4a_7c15
}

/// What translation produced for one node (or one part), before versioning.
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

/// One encoded resource: its version and its bytes, shared by every response that carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub version: u64,
    pub bytes: Bytes,
}

/// One type's resources in a part, sorted by name, and a version over all of them.
#[derive(Clone, Debug, Default)]
pub struct Table {
    version: u64,
    entries: BTreeMap<Arc<str>, Encoded>,
}

impl Table {
    fn build<T: Message>(
        kind: &'static str,
        items: &[T],
        name_of: impl Fn(&T) -> &str,
    ) -> Result<Self, InconsistentSnapshot> {
        let mut entries = BTreeMap::new();
        for (index, item) in items.iter().enumerate() {
            let name = name_of(item);
            if name.is_empty() {
                return Err(InconsistentSnapshot::EmptyName { kind, index });
            }
            let bytes = Bytes::from(item.encode_to_vec());
            let version = xxh3_64(&bytes);
            if entries
                .insert(Arc::from(name), Encoded { version, bytes })
                .is_some()
            {
                return Err(InconsistentSnapshot::DuplicateName {
                    kind,
                    name: name.to_string(),
                });
            }
        }
        let mut table = Table {
            version: 0,
            entries,
        };
        table.version = table.digest();
        Ok(table)
    }

    /// BTreeMap iteration is sorted by name, so the version does not depend on the order
    /// translation emitted the resources in.
    fn digest(&self) -> u64 {
        let mut hasher = Xxh3::new();
        for (name, encoded) in &self.entries {
            hasher.update(name.as_bytes());
            hasher.update(&[0]);
            hasher.update(&encoded.version.to_le_bytes());
        }
        hasher.digest()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Encoded> {
        self.entries.get(name)
    }

    /// The table's own copy of a name (shared, so streams can remember it without copying).
    pub fn name(&self, name: &str) -> Option<&Arc<str>> {
        self.entries.get_key_value(name).map(|(k, _)| k)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Encoded)> {
        self.entries.iter()
    }
}

/// A route's reference to a cluster, kept to check it against the snapshot it ends up in.
#[derive(Clone, Debug)]
struct ClusterRef {
    /// `route configuration "x"` or `inline route configuration of listener "y"`.
    route: Arc<str>,
    virtual_host: String,
    cluster: String,
}

/// How many generations back a part remembers what changed.
const ANCESTRY: usize = 16;

/// A part this one (indirectly) replaced, and the names of each type that differ since.
#[derive(Debug)]
struct Ancestor {
    /// Compared by address only. Whoever compares holds the ancestor itself, so the address
    /// cannot have been reused.
    part: Weak<Part>,
    changed: [Arc<[Arc<str>]>; 5],
}

/// A piece of configuration encoded once and shared by every snapshot that includes it.
#[derive(Debug, Default)]
pub struct Part {
    tables: [Table; 5],
    /// (listener, route configuration) for every connection manager that uses RDS.
    route_refs: Vec<(String, String)>,
    cluster_refs: Vec<ClusterRef>,
    /// EDS cluster -> the assignment name it asks for.
    eds_clusters: BTreeMap<Arc<str>, Arc<str>>,
    /// Secrets holding a private key.
    private_secrets: BTreeSet<String>,
    /// What of the above this part does not resolve itself, for a snapshot to check against
    /// its other parts: indexes of `route_refs` and `cluster_refs` (one per name), and the
    /// EDS clusters whose assignment is not here. Composing checks these alone, so the
    /// mesh part (which resolves its own) costs nothing per snapshot.
    open: OpenRefs,
    /// The parts this one replaced, nearest first.
    ancestors: Vec<Ancestor>,
}

#[derive(Clone, Debug, Default)]
struct OpenRefs {
    routes: Vec<usize>,
    clusters: Vec<usize>,
    eds: Vec<Arc<str>>,
}

impl OpenRefs {
    fn of(
        tables: &[Table; 5],
        route_refs: &[(String, String)],
        cluster_refs: &[ClusterRef],
        eds_clusters: &BTreeMap<Arc<str>, Arc<str>>,
    ) -> OpenRefs {
        let mut seen = BTreeSet::new();
        let routes = (0..route_refs.len())
            .filter(|&i| {
                let route = route_refs[i].1.as_str();
                !tables[ROUTES].entries.contains_key(route) && seen.insert(route)
            })
            .collect();
        let mut seen = BTreeSet::new();
        let clusters = (0..cluster_refs.len())
            .filter(|&i| {
                let cluster = cluster_refs[i].cluster.as_str();
                !tables[CLUSTERS].entries.contains_key(cluster) && seen.insert(cluster)
            })
            .collect();
        let eds = eds_clusters
            .iter()
            .filter(|(_, service)| !tables[ENDPOINTS].entries.contains_key(&***service))
            .map(|(cluster, _)| cluster.clone())
            .collect();
        OpenRefs {
            routes,
            clusters,
            eds,
        }
    }
}

impl Part {
    /// Encodes and versions the resources, and records what they reference so a snapshot
    /// made of parts can be checked without decoding anything again.
    pub fn build(resources: Resources) -> Result<Part, InconsistentSnapshot> {
        let listeners = Table::build(KINDS[LISTENERS], &resources.listeners, |l| l.name.as_str())?;
        let routes = Table::build(KINDS[ROUTES], &resources.routes, |r| r.name.as_str())?;
        let clusters = Table::build(KINDS[CLUSTERS], &resources.clusters, |c| c.name.as_str())?;
        let endpoints = Table::build(KINDS[ENDPOINTS], &resources.endpoints, |e| {
            e.cluster_name.as_str()
        })?;
        let secrets = Table::build(KINDS[SECRETS], &resources.secrets, |s| s.name.as_str())?;
        let private_secrets = resources
            .secrets
            .iter()
            .filter(|s| matches!(s.r#type, Some(secret::Type::TlsCertificate(_))))
            .map(|s| s.name.clone())
            .collect();

        let mut route_refs = Vec::new();
        let mut cluster_refs = Vec::new();
        for listener in &resources.listeners {
            for chain in listener
                .filter_chains
                .iter()
                .chain(listener.default_filter_chain.iter())
            {
                references_of_chain(listener, chain, &mut route_refs, &mut cluster_refs)?;
            }
        }
        for route in &resources.routes {
            let label: Arc<str> = Arc::from(format!("route configuration {:?}", route.name));
            references_of_routes(&label, route, &mut cluster_refs);
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
            let service: Arc<str> = endpoints
                .name(service_name)
                .cloned()
                .unwrap_or_else(|| Arc::from(service_name));
            let name = clusters
                .name(&cluster.name)
                .cloned()
                .unwrap_or_else(|| Arc::from(cluster.name.as_str()));
            eds_clusters.insert(name, service);
        }

        // By position in PUSH_ORDER (CLUSTERS, ENDPOINTS, ...).
        let tables = [clusters, endpoints, secrets, listeners, routes];
        let open = OpenRefs::of(&tables, &route_refs, &cluster_refs, &eds_clusters);
        Ok(Part {
            tables,
            route_refs,
            cluster_refs,
            eds_clusters,
            private_secrets,
            open,
            ancestors: Vec::new(),
        })
    }

    /// This part with the clusters and endpoints of `replacements` in place of those of the
    /// same names (added where it has none): encodes only what is given and shares every
    /// other resource with this part. For parts without listeners or routes (the mesh part),
    /// whose references are only EDS clusters' to assignments; the result is what
    /// [`Part::build`] makes of the same resources. Not yet a successor of this part: see
    /// [`Part::succeeding`].
    pub fn patched(&self, replacements: Resources) -> Result<Part, InconsistentSnapshot> {
        assert!(
            self.tables[LISTENERS].is_empty()
                && self.tables[ROUTES].is_empty()
                && replacements.listeners.is_empty()
                && replacements.routes.is_empty()
                && replacements.secrets.is_empty(),
            "Part::patched replaces clusters and endpoints of a part of clusters and endpoints"
        );
        let new = Part::build(replacements)?;
        let mut tables = self.tables.clone();
        for i in [CLUSTERS, ENDPOINTS] {
            if new.tables[i].is_empty() {
                continue;
            }
            for (name, encoded) in &new.tables[i].entries {
                tables[i].entries.insert(name.clone(), encoded.clone());
            }
            tables[i].version = tables[i].digest();
        }
        let mut eds_clusters = self.eds_clusters.clone();
        for name in new.tables[CLUSTERS].entries.keys() {
            eds_clusters.remove(name);
        }
        eds_clusters.extend(new.eds_clusters.iter().map(|(k, v)| (k.clone(), v.clone())));
        let open = OpenRefs::of(&tables, &[], &[], &eds_clusters);
        Ok(Part {
            tables,
            route_refs: Vec::new(),
            cluster_refs: Vec::new(),
            eds_clusters,
            private_secrets: self.private_secrets.clone(),
            open,
            ancestors: Vec::new(),
        })
    }

    /// This part as the successor of `previous`: it records which names differ from it (and
    /// from the parts `previous` replaced), so streams holding one of those compare only
    /// those names.
    pub fn succeeding(mut self, previous: &Arc<Part>) -> Part {
        let changed: [Vec<Arc<str>>; 5] =
            std::array::from_fn(|i| changed_names(&previous.tables[i], &self.tables[i]));
        let mut ancestors = vec![Ancestor {
            part: Arc::downgrade(previous),
            changed: changed.clone().map(Arc::from),
        }];
        for older in previous.ancestors.iter().take(ANCESTRY - 1) {
            let merged: [Vec<Arc<str>>; 5] = std::array::from_fn(|i| {
                let mut names: Vec<Arc<str>> = older.changed[i]
                    .iter()
                    .chain(&changed[i])
                    .cloned()
                    .collect();
                names.sort();
                names.dedup();
                names
            });
            // Past a quarter of the part, looking at everything is as cheap.
            let too_many =
                (0..5).any(|i| merged[i].len() > 64 && merged[i].len() > self.tables[i].len() / 4);
            if too_many {
                break;
            }
            ancestors.push(Ancestor {
                part: older.part.clone(),
                changed: merged.map(Arc::from),
            });
        }
        self.ancestors = ancestors;
        self
    }

    /// The names of a type that differ from `held`, when `held` is this part or one it
    /// replaced in its last generations. `None` when the relation is not known.
    pub fn changed_since(&self, held: &Arc<Part>, type_index: usize) -> Option<&[Arc<str>]> {
        if std::ptr::eq(self, Arc::as_ptr(held)) {
            return Some(&[]);
        }
        self.ancestors
            .iter()
            .find(|a| a.part.as_ptr() == Arc::as_ptr(held))
            .map(|a| &*a.changed[type_index])
    }

    pub fn table(&self, type_index: usize) -> &Table {
        &self.tables[type_index]
    }

    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(Table::is_empty)
    }
}

/// An immutable, internally consistent set of listeners, routes, clusters and endpoints: the
/// parts that make it, each shared with other snapshots.
#[derive(Debug, Clone)]
pub struct Snapshot {
    parts: Vec<Arc<Part>>,
    /// Per type (PUSH_ORDER), over every part.
    versions: [String; 5],
    secret_owner: Option<String>,
    /// When the change this snapshot carries was made (convergence is measured from here).
    origin: Instant,
}

impl Snapshot {
    /// Versions the resources and checks that every reference between them resolves.
    pub fn build(resources: Resources) -> Result<Snapshot, InconsistentSnapshot> {
        let owner = resources.secret_owner.clone();
        Snapshot::compose(vec![Arc::new(Part::build(resources)?)], owner)
    }

    /// A snapshot made of parts, checked: no name twice, every route configuration a listener
    /// uses, every cluster a route targets and every assignment an EDS cluster asks for is in
    /// one of the parts.
    pub fn compose(
        parts: Vec<Arc<Part>>,
        secret_owner: Option<String>,
    ) -> Result<Snapshot, InconsistentSnapshot> {
        let parts: Vec<Arc<Part>> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        let has = |type_index: usize, name: &str| {
            parts
                .iter()
                .any(|p| p.tables[type_index].entries.contains_key(name))
        };
        for (i, kind) in KINDS.iter().enumerate() {
            for (a, part) in parts.iter().enumerate() {
                for other in &parts[a + 1..] {
                    let (small, large) = if part.tables[i].len() <= other.tables[i].len() {
                        (part, other)
                    } else {
                        (other, part)
                    };
                    if let Some(name) = small.tables[i]
                        .entries
                        .keys()
                        .find(|n| large.tables[i].entries.contains_key(&***n))
                    {
                        return Err(InconsistentSnapshot::DuplicateName {
                            kind,
                            name: name.to_string(),
                        });
                    }
                }
            }
        }
        for part in &parts {
            for (listener, route) in part.open.routes.iter().map(|&i| &part.route_refs[i]) {
                if !has(ROUTES, route) {
                    return Err(InconsistentSnapshot::MissingRouteConfiguration {
                        listener: listener.clone(),
                        route: route.clone(),
                    });
                }
            }
            for r in part.open.clusters.iter().map(|&i| &part.cluster_refs[i]) {
                if !has(CLUSTERS, &r.cluster) {
                    return Err(InconsistentSnapshot::MissingCluster {
                        route: r.route.to_string(),
                        virtual_host: r.virtual_host.clone(),
                        cluster: r.cluster.clone(),
                    });
                }
            }
            for (cluster, service) in part
                .open
                .eds
                .iter()
                .filter_map(|c| part.eds_clusters.get_key_value(c))
            {
                if !has(ENDPOINTS, service) {
                    return Err(InconsistentSnapshot::MissingLoadAssignment {
                        cluster: cluster.to_string(),
                        service_name: service.to_string(),
                    });
                }
            }
        }
        let versions = std::array::from_fn(|i| {
            let mut hasher = Xxh3::new();
            for part in &parts {
                if !part.tables[i].is_empty() {
                    hasher.update(&part.tables[i].version.to_le_bytes());
                }
            }
            version_string(hasher.digest())
        });
        Ok(Snapshot {
            parts,
            versions,
            secret_owner,
            origin: Instant::now(),
        })
    }

    /// What a stream authenticated as `identity` may see: the whole snapshot for the secrets'
    /// owner, else the snapshot without any private key.
    pub fn for_identity(self: &Arc<Self>, identity: Option<&str>) -> Arc<Snapshot> {
        let owner = self.secret_owner.as_deref();
        let has_private = self.parts.iter().any(|p| !p.private_secrets.is_empty());
        if !has_private || (identity.is_some() && identity == owner) {
            return self.clone();
        }
        let parts = self
            .parts
            .iter()
            .map(|part| {
                if part.private_secrets.is_empty() {
                    return part.clone();
                }
                let mut table = part.tables[SECRETS].clone();
                table
                    .entries
                    .retain(|name, _| !part.private_secrets.contains(&**name));
                table.version = table.digest();
                let mut tables = part.tables.clone();
                tables[SECRETS] = table;
                Arc::new(Part {
                    tables,
                    route_refs: part.route_refs.clone(),
                    cluster_refs: part.cluster_refs.clone(),
                    eds_clusters: part.eds_clusters.clone(),
                    open: part.open.clone(),
                    private_secrets: BTreeSet::new(),
                    ancestors: Vec::new(),
                })
            })
            .collect();
        // Removing entries cannot break a reference: secrets are referenced by name only.
        Snapshot::compose(parts, self.secret_owner.clone())
            .map(|s| Arc::new(s.with_origin(self.origin)))
            .unwrap_or_else(|_| self.clone())
    }

    /// The same snapshot, carrying a change made at `origin` (by default, when it was composed).
    pub fn with_origin(mut self, origin: Instant) -> Snapshot {
        self.origin = origin;
        self
    }

    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// The parts, for streams that remember what they hold by part.
    pub fn parts(&self) -> &[Arc<Part>] {
        &self.parts
    }

    /// The type version: changes exactly when some resource of the type is added, removed or
    /// changed. `None` for a type this snapshot does not carry.
    pub fn version(&self, type_url: &str) -> Option<&str> {
        type_index(type_url).map(|i| self.versions[i].as_str())
    }

    /// Resource names of a type, sorted.
    pub fn resource_names(&self, type_url: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .resources(type_url)
            .map(|(name, _)| name.to_string())
            .collect();
        names.sort();
        names
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&Encoded> {
        let i = type_index(type_url)?;
        self.parts.iter().find_map(|p| p.tables[i].get(name))
    }

    /// The snapshot's shared copy of a resource name.
    pub fn name(&self, type_url: &str, name: &str) -> Option<&Arc<str>> {
        let i = type_index(type_url)?;
        self.parts.iter().find_map(|p| p.tables[i].name(name))
    }

    /// A resource's own version (hash of its encoding), as sent on the wire.
    pub fn resource_version(&self, type_url: &str, name: &str) -> Option<String> {
        self.get(type_url, name).map(|e| version_string(e.version))
    }

    /// Every resource of a type as (name, encoded), part by part (each part sorted by name).
    pub fn resources(&self, type_url: &str) -> impl Iterator<Item = (&Arc<str>, &Encoded)> {
        let i = type_index(type_url);
        self.parts
            .iter()
            .filter_map(move |p| i.map(|i| &p.tables[i]))
            .flat_map(Table::iter)
    }

    /// How many resources of a type.
    pub fn len(&self, type_url: &str) -> usize {
        type_index(type_url)
            .map(|i| self.parts.iter().map(|p| p.tables[i].len()).sum())
            .unwrap_or(0)
    }

    /// Names of the `ClusterLoadAssignment`s that this snapshot's EDS clusters subscribe to.
    pub fn eds_service_names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.parts.iter().flat_map(|p| p.eds_clusters.values())
    }

    /// The `ClusterLoadAssignment` name an EDS cluster asks for; `None` for other clusters.
    pub fn eds_service_name(&self, cluster: &str) -> Option<&Arc<str>> {
        self.parts.iter().find_map(|p| p.eds_clusters.get(cluster))
    }
}

/// Names added, changed or removed between two tables (a merge of the sorted entries).
fn changed_names(old: &Table, new: &Table) -> Vec<Arc<str>> {
    let mut names = Vec::new();
    if old.version == new.version {
        return names;
    }
    let mut a = old.entries.iter().peekable();
    let mut b = new.entries.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((name, _)), None) => {
                names.push((*name).clone());
                a.next();
            }
            (None, Some((name, _))) => {
                names.push((*name).clone());
                b.next();
            }
            (Some((na, ea)), Some((nb, eb))) => match na.cmp(nb) {
                std::cmp::Ordering::Less => {
                    names.push((*na).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    names.push((*nb).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if ea.version != eb.version {
                        names.push((*nb).clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    names
}

fn references_of_chain(
    listener: &Listener,
    chain: &FilterChain,
    route_refs: &mut Vec<(String, String)>,
    cluster_refs: &mut Vec<ClusterRef>,
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
                route_refs.push((listener.name.clone(), rds.route_config_name.clone()));
            }
            Some(RouteSpecifier::RouteConfig(inline)) => {
                let label: Arc<str> = Arc::from(format!(
                    "inline route configuration of listener {:?}",
                    listener.name
                ));
                references_of_routes(&label, inline, cluster_refs);
            }
            // Scoped routes are not produced by Strait; nothing to check.
            Some(RouteSpecifier::ScopedRoutes(_)) | None => {}
        }
    }
    Ok(())
}

fn references_of_routes(label: &Arc<str>, config: &RouteConfiguration, refs: &mut Vec<ClusterRef>) {
    let mut add = |virtual_host: &str, cluster: &str| {
        // An empty name means the cluster comes from a header at request time.
        if !cluster.is_empty() {
            refs.push(ClusterRef {
                route: label.clone(),
                virtual_host: virtual_host.to_string(),
                cluster: cluster.to_string(),
            });
        }
    };
    fn mirrors(vhost: &str, mirrors: &[RequestMirrorPolicy], add: &mut impl FnMut(&str, &str)) {
        for mirror in mirrors {
            add(vhost, &mirror.cluster);
        }
    }
    mirrors("", &config.request_mirror_policies, &mut add);
    for vhost in &config.virtual_hosts {
        mirrors(&vhost.name, &vhost.request_mirror_policies, &mut add);
        for route in &vhost.routes {
            let Some(route::Action::Route(action)) = &route.action else {
                continue;
            };
            match &action.cluster_specifier {
                Some(ClusterSpecifier::Cluster(name)) => add(&vhost.name, name),
                Some(ClusterSpecifier::WeightedClusters(weighted)) => {
                    for weight in &weighted.clusters {
                        add(&vhost.name, &weight.name);
                    }
                }
                _ => {}
            }
            mirrors(&vhost.name, &action.request_mirror_policies, &mut add);
        }
    }
}
