//! The ADS client: subscribes like Envoy, converts, ACKs or NACKs, publishes complete configs.

pub mod convert;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, ListValue, Struct, Value, value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

use crate::accept::Sockets;
use crate::config::{Cluster, Config, Endpoint, Listener, RouteConfig, SdsSecret, Secrets};
use crate::identity::Proof;
use crate::stats::Stats;
use crate::xds::convert::{Assignment, Resource};

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Envoy's subscription order.
const TYPES: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET];

/// google.rpc.Code INVALID_ARGUMENT, as Envoy sends in a NACK.
const INVALID_ARGUMENT: i32 = 3;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    #[default]
    Delta,
    Sotw,
}

/// Who this proxy is, as straitd reads it from node metadata.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug)]
pub struct XdsSettings {
    /// `http://HOST:PORT`, or `https://HOST:PORT` (straitd's TLS port) with `identity`.
    pub server: String,
    pub protocol: Protocol,
    pub node: NodeInfo,
    /// With an `https` server (straitd's TLS port): the workload identity, whose certificate
    /// (or, before it has one, bootstrap token) each connection presents.
    pub identity: Option<Arc<crate::identity::Identity>>,
}

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("invalid xds server address {0:?}: {1}")]
    Address(String, #[source] tonic::transport::Error),
    #[error("connecting to the xds server: {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("the xds stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the xds stream was closed by the server")]
    Closed,
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
}

// === State: what has been accepted, independent of the wire protocol ===

/// One response's worth of resources for one type.
pub struct Update<'a> {
    pub type_url: &'a str,
    pub version: &'a str,
    /// (name as the response gives it, if it does; resource version (delta); the resource).
    pub resources: Vec<(Option<&'a str>, Option<&'a str>, &'a Any)>,
    pub removed: Vec<&'a str>,
    /// State of the world: the resources replace everything held of this type.
    pub full: bool,
}

/// Everything accepted so far, by type and name.
#[derive(Debug, Default)]
pub struct State {
    listeners: BTreeMap<String, Listener>,
    routes: BTreeMap<String, Arc<RouteConfig>>,
    clusters: BTreeMap<String, Cluster>,
    endpoints: BTreeMap<String, Arc<[Endpoint]>>,
    /// SDS secrets fetched over ADS (not `default`/`ROOTCA`, which this proxy makes itself).
    secrets: Secrets,
    versions: BTreeMap<&'static str, Arc<str>>,
    /// Delta: the version of each resource held, per type.
    held: BTreeMap<&'static str, BTreeMap<String, String>>,
    /// Binds listener addresses before a listener update is accepted; `None` in pure tests.
    sockets: Option<Arc<Sockets>>,
    /// Whether this proxy has a workload identity (SDS `default` and `ROOTCA` can be served).
    identity: bool,
}

fn known(type_url: &str) -> Option<&'static str> {
    TYPES.into_iter().find(|t| *t == type_url)
}

fn convert_all<R: Resource>(update: &Update<'_>) -> Result<Vec<(String, R)>, String> {
    let mut ok = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for (name, _, any) in &update.resources {
        match R::from_any(any) {
            Ok((decoded, r)) => {
                if let Some(name) = name
                    && *name != decoded
                {
                    errors.push(format!("resource {name:?} holds one named {decoded:?}"));
                } else {
                    ok.push((decoded, r));
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(errors.join("; "))
    }
}

fn merge<T>(map: &mut BTreeMap<String, T>, update: &Update<'_>, items: Vec<(String, T)>) {
    if update.full {
        map.clear();
    }
    for name in &update.removed {
        map.remove(*name);
    }
    map.extend(items);
}

impl State {
    /// State whose listener updates are accepted only once their addresses are bound.
    pub fn binding(sockets: Arc<Sockets>) -> State {
        State {
            sockets: Some(sockets),
            ..State::default()
        }
    }

    /// Lets resources use the workload certificate and mesh roots.
    pub fn with_identity(mut self, identity: bool) -> State {
        self.identity = identity;
        self
    }

    /// Refuses TLS that needs a workload identity this proxy does not have.
    fn check_identity<'a>(
        &self,
        kind: &str,
        uses: impl IntoIterator<Item = (&'a String, bool)>,
    ) -> Result<(), String> {
        if self.identity {
            return Ok(());
        }
        match uses.into_iter().find(|(_, uses)| *uses) {
            Some((name, _)) => Err(format!(
                "{kind} {name:?}: {}",
                crate::tls::TlsError::NoIdentity
            )),
            None => Ok(()),
        }
    }

    /// Applies an update whole, or rejects it whole with the reason (the NACK's message).
    pub fn apply(&mut self, update: &Update<'_>) -> Result<(), String> {
        let Some(type_url) = known(update.type_url) else {
            return Err(format!("unsupported resource type {}", update.type_url));
        };
        match type_url {
            CLUSTER => {
                let items = convert_all::<Cluster>(update)?;
                self.check_identity(
                    "cluster",
                    items.iter().map(|(n, c)| {
                        let uses = c.tls_settings().iter().any(|t| t.uses_workload_identity());
                        (n, uses)
                    }),
                )?;
                merge(&mut self.clusters, update, items);
                let wanted = self.wanted_eds();
                self.endpoints.retain(|n, _| wanted.contains(n));
            }
            ENDPOINT => {
                let items = convert_all::<Assignment>(update)?
                    .into_iter()
                    .map(|(n, a)| (n, a.0))
                    .collect();
                merge(&mut self.endpoints, update, items);
            }
            LISTENER => {
                let items = convert_all::<Listener>(update)?;
                self.check_identity(
                    "listener",
                    items.iter().map(|(n, l)| {
                        let uses = l
                            .chains
                            .iter()
                            .filter_map(|c| c.tls.as_ref())
                            .any(|t| t.uses_workload_identity());
                        (n, uses)
                    }),
                )?;
                let mut addresses = BTreeMap::new();
                for (name, l) in &items {
                    for address in &l.addresses {
                        if let Some(other) = addresses.insert(*address, name) {
                            return Err(format!(
                                "listeners {other:?} and {name:?} both have the address {address}"
                            ));
                        }
                    }
                }
                if let Some(sockets) = &self.sockets {
                    let mut next = self.listeners.clone();
                    merge(&mut next, update, items);
                    sockets.reserve(
                        next.iter()
                            .filter(|(_, l)| l.bind)
                            .flat_map(|(n, l)| l.addresses.iter().map(move |a| (n.as_str(), *a))),
                    )?;
                    self.listeners = next;
                } else {
                    merge(&mut self.listeners, update, items);
                }
                let wanted = self.wanted_rds();
                self.routes.retain(|n, _| wanted.contains(n));
                let wanted = self.wanted_sds();
                self.secrets.retain(|n, _| wanted.contains(&**n));
            }
            SECRET => {
                let items: Vec<(Arc<str>, SdsSecret)> = convert_all::<SdsSecret>(update)?
                    .into_iter()
                    .map(|(n, s)| (Arc::from(n.as_str()), s))
                    .collect();
                if update.full {
                    self.secrets.clear();
                }
                for name in &update.removed {
                    self.secrets.remove(*name);
                }
                self.secrets.extend(items);
            }
            _ => {
                let items = convert_all::<RouteConfig>(update)?
                    .into_iter()
                    .map(|(n, r)| (n, Arc::new(r)))
                    .collect();
                merge(&mut self.routes, update, items);
            }
        }
        self.versions.insert(type_url, update.version.into());
        let held = self.held.entry(type_url).or_default();
        if update.full {
            held.clear();
        }
        for name in &update.removed {
            held.remove(*name);
        }
        for (name, version, _) in &update.resources {
            if let (Some(n), Some(v)) = (name, version) {
                held.insert(n.to_string(), v.to_string());
            }
        }
        Ok(())
    }

    /// The EDS names the clusters need.
    pub fn wanted_eds(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| c.eds_name().map(|n| n.to_string()))
            .collect()
    }

    /// The RDS names the listeners need.
    pub fn wanted_rds(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| l.rds_names().map(|n| n.to_string()))
            .collect()
    }

    /// The SDS names the listeners need (fetched over ADS).
    pub fn wanted_sds(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| l.chains.iter().filter_map(|c| c.tls.as_deref()))
            .flat_map(|t| t.sds_names().map(|n| n.to_string()))
            .collect()
    }

    /// Resource versions held of a type (delta's `initial_resource_versions` on reconnect).
    fn held(&self, type_url: &'static str) -> BTreeMap<String, String> {
        self.held.get(type_url).cloned().unwrap_or_default()
    }

    /// A complete config, or `None` while something referenced has not arrived.
    pub fn assemble(&self) -> Option<Config> {
        if !self.versions.contains_key(CLUSTER) || !self.versions.contains_key(LISTENER) {
            return None;
        }
        let mut clusters = BTreeMap::new();
        for (name, c) in &self.clusters {
            let mut c = c.clone();
            if let Some(eds) = c.eds_name() {
                c.endpoints = self.endpoints.get(&**eds)?.clone();
            }
            clusters.insert(Arc::from(name.as_str()), Arc::new(c));
        }
        let mut routes = BTreeMap::new();
        let mut listeners = BTreeMap::new();
        for (name, l) in &self.listeners {
            // A listener whose SDS secrets have not come is not served yet (Envoy's warming).
            let l = match with_secrets(l, &self.secrets) {
                Ok(l) => l,
                Err(secret) => {
                    tracing::debug!(listener = %name, %secret, "listener waits for its SDS secret");
                    continue;
                }
            };
            // A TCP chain's cluster must be there, as a route's must.
            if l.tcp_clusters().any(|c| !clusters.contains_key(c)) {
                return None;
            }
            for http in l.chains.iter().filter_map(|c| c.http()) {
                let rc = match &http.routes {
                    crate::config::RouteSource::Rds(rds) => {
                        let rc = self.routes.get(&**rds)?;
                        routes.insert(rds.clone(), rc.clone());
                        rc.clone()
                    }
                    crate::config::RouteSource::Inline(rc) => rc.clone(),
                };
                let complete = rc.virtual_hosts.iter().all(|vh| {
                    vh.routes.iter().all(|r| match &r.action {
                        crate::config::Action::Forward(f) => {
                            f.cluster_names().iter().all(|c| clusters.contains_key(*c))
                        }
                        _ => true,
                    })
                });
                if !complete {
                    return None;
                }
            }
            listeners.insert(Arc::from(name.as_str()), l);
        }
        Some(Config {
            versions: self.versions.clone(),
            listeners,
            routes,
            clusters,
        })
    }
}

/// A listener with the SDS secrets its chains name put in place.
fn with_secrets(l: &Listener, secrets: &Secrets) -> Result<Listener, Arc<str>> {
    if !l
        .chains
        .iter()
        .filter_map(|c| c.tls.as_deref())
        .any(|t| t.sds_names().next().is_some())
    {
        return Ok(l.clone());
    }
    let mut out = l.clone();
    for chain in &mut out.chains {
        if let Some(tls) = &chain.tls {
            chain.tls = Some(Arc::new(tls.with_secrets(secrets)?));
        }
    }
    Ok(out)
}

// === The client ===

/// Runs the ADS client until `shutdown`, reconnecting with jittered exponential backoff and
/// publishing each new complete config. The last good config stays published throughout.
pub async fn run(
    settings: XdsSettings,
    publish: watch::Sender<Option<Arc<Config>>>,
    stats: Arc<Stats>,
    sockets: Arc<Sockets>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), XdsError> {
    let server = match &settings.identity {
        Some(identity) => Server::Tls(identity.clone()),
        None => Server::Plain(
            TonicEndpoint::from_shared(settings.server.clone())
                .map_err(|e| XdsError::Address(settings.server.clone(), e))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10)),
        ),
    };
    let mut state = State::binding(sockets).with_identity(settings.identity.is_some());
    let mut backoff = BACKOFF_BASE;
    loop {
        let mut session = Session {
            settings: &settings,
            state: &mut state,
            publish: &publish,
            stats: &stats,
            responses: 0,
        };
        let result = tokio::select! {
            r = session.run(&server) => r,
            _ = shutdown.changed() => return Ok(()),
        };
        let responses = session.responses;
        stats.set_connected(false);
        match result {
            Ok(()) => tracing::warn!(server = %settings.server, "xds stream closed; reconnecting"),
            Err(error) => {
                tracing::warn!(server = %settings.server, %error, "xds stream failed; reconnecting")
            }
        }
        if responses > 0 {
            backoff = BACKOFF_BASE;
        }
        // Full jitter on the upper half keeps reconnecting proxies from moving in step.
        let sleep = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// straitd's plaintext port, or its TLS port with the identity to prove.
enum Server {
    Plain(TonicEndpoint),
    Tls(Arc<crate::identity::Identity>),
}

struct Session<'a> {
    settings: &'a XdsSettings,
    state: &'a mut State,
    publish: &'a watch::Sender<Option<Arc<Config>>>,
    stats: &'a Stats,
    responses: u64,
}

/// The stream request, with the bootstrap token if that is what proves the workload.
fn authorized<T>(stream: T, proof: Option<&Proof>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(stream);
    if let Some(proof) = proof {
        proof.authorize(&mut request);
    }
    request
}

fn nack_status(message: &str) -> RpcStatus {
    RpcStatus {
        code: INVALID_ARGUMENT,
        message: message.to_string(),
        details: Vec::new(),
    }
}

impl Session<'_> {
    /// One stream; on the TLS port proving the workload identity as it stands at this
    /// connect (its certificate once it has one, so an expired bootstrap token is no matter).
    async fn run(&mut self, server: &Server) -> Result<(), XdsError> {
        let (channel, proof) = match server {
            Server::Plain(endpoint) => (endpoint.connect().await.map_err(XdsError::Connect)?, None),
            Server::Tls(identity) => {
                let proof = identity.proof()?;
                let endpoint = identity.endpoint(&self.settings.server, &proof)?;
                (
                    endpoint.connect().await.map_err(XdsError::Connect)?,
                    Some(proof),
                )
            }
        };
        let client = AggregatedDiscoveryServiceClient::new(channel);
        match self.settings.protocol {
            Protocol::Sotw => self.sotw(client, proof.as_ref()).await,
            Protocol::Delta => self.delta(client, proof.as_ref()).await,
        }
    }

    /// Applies one update and records the outcome; `Err` carries the NACK message.
    fn apply(&mut self, update: &Update<'_>) -> Result<(), String> {
        self.responses += 1;
        let type_url = known(update.type_url).unwrap_or("unknown");
        match self.state.apply(update) {
            Ok(()) => {
                tracing::debug!(
                    type_url,
                    version = update.version,
                    resources = update.resources.len(),
                    "xds update accepted"
                );
                self.stats.xds_accepted(type_url, update.version);
                self.publish_if_complete();
                Ok(())
            }
            Err(error) => {
                tracing::warn!(type_url = update.type_url, version = update.version, %error, "xds update rejected");
                self.stats.xds_rejected(type_url, &error);
                Err(error)
            }
        }
    }

    fn publish_if_complete(&self) {
        let Some(config) = self.state.assemble() else {
            return;
        };
        self.publish.send_if_modified(|current| {
            if current.as_deref() == Some(&config) {
                return false;
            }
            tracing::info!(
                listeners = config.listeners.len(),
                routes = config.routes.len(),
                clusters = config.clusters.len(),
                "publishing config"
            );
            *current = Some(Arc::new(config));
            true
        });
    }

    async fn sotw(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<Channel>,
        proof: Option<&Proof>,
    ) -> Result<(), XdsError> {
        let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
        let mut subs: BTreeMap<&'static str, SotwSub> = BTreeMap::new();
        let mut first = Some(node(&self.settings.node));
        for type_url in [CLUSTER, LISTENER] {
            let sub = subs.entry(type_url).or_default();
            sub.sent = true;
            let _ = tx.send(sotw_request(type_url, sub, first.take()));
        }
        // After a reconnect, also ask for what the accepted clusters and listeners need.
        sotw_resubscribe(self.state, &mut subs, &tx);
        let mut stream = client
            .stream_aggregated_resources(authorized(UnboundedReceiverStream::new(rx), proof))
            .await?
            .into_inner();
        self.stats.set_connected(true);
        tracing::info!(server = %self.settings.server, protocol = "sotw", "xds stream open");
        while let Some(resp) = stream.message().await? {
            let resp: DiscoveryResponse = resp;
            let update = Update {
                type_url: &resp.type_url,
                version: &resp.version_info,
                resources: resp.resources.iter().map(|a| (None, None, a)).collect(),
                removed: Vec::new(),
                full: true,
            };
            let result = self.apply(&update);
            let Some(type_url) = known(&resp.type_url) else {
                continue;
            };
            let sub = subs.entry(type_url).or_default();
            sub.nonce = resp.nonce.clone();
            // An ACK carries the new version; a NACK the last accepted one and the reason.
            if result.is_ok() {
                sub.version = resp.version_info.clone();
            }
            let mut req = sotw_request(type_url, sub, None);
            req.error_detail = result.err().map(|m| nack_status(&m));
            let _ = tx.send(req);
            sotw_resubscribe(self.state, &mut subs, &tx);
        }
        Ok(())
    }

    async fn delta(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<Channel>,
        proof: Option<&Proof>,
    ) -> Result<(), XdsError> {
        let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
        let mut subscribed: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
        let mut first = Some(node(&self.settings.node));
        for type_url in [CLUSTER, LISTENER] {
            let _ = tx.send(DeltaDiscoveryRequest {
                node: first.take(),
                type_url: type_url.to_string(),
                initial_resource_versions: self.state.held(type_url).into_iter().collect(),
                ..Default::default()
            });
        }
        for (type_url, wanted) in [
            (ENDPOINT, self.state.wanted_eds()),
            (ROUTE, self.state.wanted_rds()),
            (SECRET, self.state.wanted_sds()),
        ] {
            if wanted.is_empty() {
                continue;
            }
            let held = self.state.held(type_url);
            let _ = tx.send(DeltaDiscoveryRequest {
                type_url: type_url.to_string(),
                resource_names_subscribe: wanted.iter().cloned().collect(),
                initial_resource_versions: held
                    .into_iter()
                    .filter(|(n, _)| wanted.contains(n))
                    .collect(),
                ..Default::default()
            });
            subscribed.insert(type_url, wanted);
        }
        let mut stream = client
            .delta_aggregated_resources(authorized(UnboundedReceiverStream::new(rx), proof))
            .await?
            .into_inner();
        self.stats.set_connected(true);
        tracing::info!(server = %self.settings.server, protocol = "delta", "xds stream open");
        while let Some(resp) = stream.message().await? {
            let resp: DeltaDiscoveryResponse = resp;
            let mut missing = None;
            let resources: Vec<_> = resp
                .resources
                .iter()
                .filter_map(|r| match &r.resource {
                    Some(any) => Some((Some(r.name.as_str()), Some(r.version.as_str()), any)),
                    None => {
                        missing = Some(r.name.clone());
                        None
                    }
                })
                .collect();
            let update = Update {
                type_url: &resp.type_url,
                version: &resp.system_version_info,
                resources,
                removed: resp.removed_resources.iter().map(String::as_str).collect(),
                full: false,
            };
            let result = match missing {
                Some(name) => Err(format!("resource {name:?} has no body")),
                None => self.apply(&update),
            };
            let _ = tx.send(DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                error_detail: result.err().map(|m| nack_status(&m)),
                ..Default::default()
            });
            for (type_url, wanted) in [
                (ENDPOINT, self.state.wanted_eds()),
                (ROUTE, self.state.wanted_rds()),
                (SECRET, self.state.wanted_sds()),
            ] {
                let current = subscribed.entry(type_url).or_default();
                if *current == wanted {
                    continue;
                }
                let _ = tx.send(DeltaDiscoveryRequest {
                    type_url: type_url.to_string(),
                    resource_names_subscribe: wanted.difference(current).cloned().collect(),
                    resource_names_unsubscribe: current.difference(&wanted).cloned().collect(),
                    ..Default::default()
                });
                *current = wanted;
            }
        }
        Ok(())
    }
}

/// What a SotW stream asked for of one type, and the last response it answered.
#[derive(Debug, Default)]
struct SotwSub {
    sent: bool,
    names: BTreeSet<String>,
    version: String,
    nonce: String,
}

fn sotw_request(type_url: &str, sub: &SotwSub, node: Option<Node>) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: sub.version.clone(),
        node,
        resource_names: sub.names.iter().cloned().collect(),
        type_url: type_url.to_string(),
        response_nonce: sub.nonce.clone(),
        ..Default::default()
    }
}

/// Asks for the EDS, RDS and SDS names the accepted clusters and listeners need, when they
/// changed.
fn sotw_resubscribe(
    state: &State,
    subs: &mut BTreeMap<&'static str, SotwSub>,
    tx: &mpsc::UnboundedSender<DiscoveryRequest>,
) {
    for (type_url, wanted) in [
        (ENDPOINT, state.wanted_eds()),
        (ROUTE, state.wanted_rds()),
        (SECRET, state.wanted_sds()),
    ] {
        let sub = subs.entry(type_url).or_default();
        if sub.names == wanted && (sub.sent || wanted.is_empty()) {
            continue;
        }
        sub.names = wanted;
        sub.sent = true;
        let _ = tx.send(sotw_request(type_url, sub, None));
    }
}

/// The node straitd sees: id, cluster and metadata (as `straitctl bootstrap` writes them).
pub fn node(info: &NodeInfo) -> Node {
    Node {
        id: info.id.clone(),
        cluster: info.cluster.clone(),
        metadata: Some(to_struct(&info.metadata)),
        user_agent_name: "strait-proxy".to_string(),
        ..Default::default()
    }
}

fn to_struct(map: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

fn to_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => value::Kind::NullValue(0),
        serde_json::Value::Bool(b) => value::Kind::BoolValue(*b),
        serde_json::Value::Number(n) => value::Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => value::Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => value::Kind::ListValue(ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(o) => value::Kind::StructValue(to_struct(o)),
    };
    Value { kind: Some(kind) }
}
