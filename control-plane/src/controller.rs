//! The push loop: model changes and connecting proxies in, per-node snapshots out.
//!
//! Each model generation is translated in parts, each encoded once and shared
//! ([`Translations`]): the mesh's clusters and endpoints once for every proxy (once per scope
//! where Sidecars or `exportTo` give proxies different views, shared by equal ones), the outbound
//! side once per outbound shape (mode, namespace, labels, ports), the inbound side once per
//! node shape. A change that moves only endpoints keeps every outbound part as it is. A part
//! that replaces one remembers what changed, so streams compare only those names. A model
//! change is debounced so a burst of edits gives a few pushes, and the cache only wakes the
//! streams whose node's resources actually changed. Workload certificates ride along as SDS
//! secrets and are renewed at half their lifetime by a push of their own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use strait_model::{Model, ObjectId, ProxyNode, Scope};
use strait_translate::MeshSettings;
use strait_xds::cache::SnapshotCache;
use strait_xds::server::NodeEvent;
use strait_xds::snapshot::{InconsistentSnapshot, Part, Resources, Snapshot};
use strait_xds::status::struct_to_json;
use tokio::sync::{mpsc, watch};

use crate::certs::WorkloadCertificates;
use crate::rejections::Rejections;
use crate::store::Published;

/// Quiet time after a model change before pushing, and the longest a burst can delay a push.
const DEBOUNCE_QUIET: Duration = Duration::from_millis(100);
const DEBOUNCE_MAX: Duration = Duration::from_millis(500);

#[derive(Clone)]
struct Metrics {
    translations: Counter,
    translation_seconds: Histogram,
    inconsistent: Counter,
}

pub struct Controller {
    cache: SnapshotCache,
    metrics: Metrics,
    settings: MeshSettings,
    /// The mesh CA's certificates, when straitd runs one.
    certs: Option<WorkloadCertificates>,
    nodes: HashMap<String, Connected>,
    translations: Translations,
    rejections: Rejections,
}

/// Parts by the node (or outbound) shape they were made for.
type Parts = HashMap<ProxyNode, Arc<Part>>;

/// A generation as the proxies of one scope see it: the model cut to their scope (the whole
/// model without Sidecars and `exportTo`), the settings their Sidecar overrides, and the part
/// with its clusters and endpoints.
struct View {
    model: Arc<Model>,
    settings: MeshSettings,
    mesh: Arc<Part>,
}

/// Which scope a proxy has: its namespace and the Sidecar that applies to it.
type ScopeKey = (String, Option<ObjectId>);

/// One model generation, translated in shared parts as proxies need them.
struct Translations {
    model: Arc<Model>,
    /// When the change this generation carries was made.
    origin: Instant,
    /// Every proxy's view when the model scopes none (no Sidecar, no `exportTo`).
    whole: Option<Arc<View>>,
    /// The scoped views made so far, by scope key and by scope (equal scopes share one).
    views: HashMap<ScopeKey, Arc<View>>,
    by_scope: HashMap<Scope, Arc<View>>,
    /// By [`ProxyNode::outbound_shape`].
    outbound: Parts,
    /// By node shape.
    inbound: Parts,
    /// The previous generation's (outbound, inbound) parts, which new ones succeed.
    previous: Option<(Parts, Parts)>,
    /// The previous generation's views, whose mesh parts new ones succeed.
    previous_views: (Option<Arc<View>>, HashMap<ScopeKey, Arc<View>>),
    /// Composed per (node shape, whether a stream of it authenticated).
    snapshots: HashMap<(ProxyNode, bool), Arc<Snapshot>>,
}

impl Translations {
    fn new(
        model: Arc<Model>,
        settings: &MeshSettings,
        origin: Instant,
    ) -> Result<Self, InconsistentSnapshot> {
        Ok(Translations {
            whole: whole_view(&model, settings, None)?,
            model,
            origin,
            views: HashMap::new(),
            by_scope: HashMap::new(),
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            previous: None,
            previous_views: (None, HashMap::new()),
            snapshots: HashMap::new(),
        })
    }

    /// The next generation: the mesh's part made again (as the successor of the last one);
    /// outbound parts kept when only endpoints moved, else made again as proxies need them.
    /// `in_use` are the outbound shapes of connected proxies: parts of no other are kept.
    fn next(
        &mut self,
        model: Arc<Model>,
        settings: &MeshSettings,
        origin: Instant,
        in_use: &std::collections::HashSet<ProxyNode>,
    ) -> Result<(), InconsistentSnapshot> {
        let whole = whole_view(&model, settings, self.whole.as_ref())?;
        let mut outbound = std::mem::take(&mut self.outbound);
        outbound.retain(|shape, _| in_use.contains(shape));
        let inbound = std::mem::take(&mut self.inbound);
        let (outbound, previous_outbound) = if model.same_but_endpoints(&self.model) {
            (outbound, HashMap::new())
        } else {
            (HashMap::new(), outbound)
        };
        let previous_views = (self.whole.take(), std::mem::take(&mut self.views));
        *self = Translations {
            model,
            origin,
            whole,
            views: HashMap::new(),
            by_scope: HashMap::new(),
            outbound,
            inbound: HashMap::new(),
            previous: Some((previous_outbound, inbound)),
            previous_views,
            snapshots: HashMap::new(),
        };
        Ok(())
    }

    /// The view a proxy of this shape has in this generation, made now if it was not yet.
    fn view_for(
        &mut self,
        shape: &ProxyNode,
        settings: &MeshSettings,
    ) -> Result<Arc<View>, InconsistentSnapshot> {
        if let Some(whole) = &self.whole {
            return Ok(whole.clone());
        }
        // A Sidecar applies to sidecars only; gateways see what is exported to them.
        let sidecar = self.model.sidecar_of(shape);
        let key = (shape.namespace.clone(), sidecar.map(|s| s.id.clone()));
        if let Some(view) = self.views.get(&key) {
            return Ok(view.clone());
        }
        let scope = self
            .model
            .scope_for(&shape.namespace, sidecar)
            .expect("a model without scoping has a whole view");
        let view = match self.by_scope.get(&scope) {
            Some(view) => view.clone(),
            None => {
                let model = Arc::new(self.model.scoped(&scope));
                let settings = settings.scoped(&scope);
                let mesh = mesh_part(&model, &settings, self.previous_views.1.get(&key))?;
                let view = Arc::new(View {
                    model,
                    settings,
                    mesh: Arc::new(mesh),
                });
                self.by_scope.insert(scope, view.clone());
                view
            }
        };
        self.views.insert(key, view.clone());
        Ok(view)
    }
}

/// The one view every proxy shares, when the model scopes none; its mesh part succeeds the
/// previous generation's.
fn whole_view(
    model: &Arc<Model>,
    settings: &MeshSettings,
    previous: Option<&Arc<View>>,
) -> Result<Option<Arc<View>>, InconsistentSnapshot> {
    if model.is_scoped() {
        return Ok(None);
    }
    Ok(Some(Arc::new(View {
        model: model.clone(),
        settings: settings.clone(),
        mesh: Arc::new(mesh_part(model, settings, previous)?),
    })))
}

/// The mesh part of `model` as the proxies of one view see it, succeeding `previous`'s. When
/// only endpoints moved since, the clusters and assignments of the services they moved in
/// are translated and the rest is shared with the previous part: an endpoint change costs
/// what changed, not the mesh.
fn mesh_part(
    model: &Model,
    settings: &MeshSettings,
    previous: Option<&Arc<View>>,
) -> Result<Part, InconsistentSnapshot> {
    let Some(old) = previous else {
        return part(strait_translate::mesh(model, settings));
    };
    let mesh = if old.settings == *settings && model.same_but_endpoints(&old.model) {
        let hosts = model.hosts_with_other_endpoints(&old.model);
        let out = strait_translate::mesh_of(model, settings, &hosts);
        old.mesh.patched(Resources {
            clusters: out.clusters,
            endpoints: out.endpoints,
            ..Resources::default()
        })?
    } else {
        part(strait_translate::mesh(model, settings))?
    };
    Ok(mesh.succeeding(&old.mesh))
}

/// The part made for `key` in this generation; made now, as the successor of the previous
/// generation's part for the key, if it was not yet.
fn part_for(
    parts: &mut Parts,
    previous: Option<&Parts>,
    key: ProxyNode,
    translate: impl FnOnce() -> strait_translate::Output,
) -> Result<Arc<Part>, InconsistentSnapshot> {
    if let Some(made) = parts.get(&key) {
        return Ok(made.clone());
    }
    let mut made = part(translate())?;
    if let Some(old) = previous.and_then(|p| p.get(&key)) {
        made = made.succeeding(old);
    }
    let made = Arc::new(made);
    parts.insert(key, made.clone());
    Ok(made)
}

/// Encodes translated resources as a part.
fn part(out: strait_translate::Output) -> Result<Part, InconsistentSnapshot> {
    Part::build(Resources {
        listeners: out.listeners,
        routes: out.routes,
        clusters: out.clusters,
        endpoints: out.endpoints,
        secrets: out.secrets,
        secret_owner: None,
    })
}

/// A connected proxy and whether a stream proved it holds the identity it claims.
#[derive(Clone)]
struct Connected {
    proxy: ProxyNode,
    authenticated: bool,
}

impl Controller {
    pub fn new(
        cache: SnapshotCache,
        registry: &mut Registry,
        settings: MeshSettings,
        certs: Option<WorkloadCertificates>,
    ) -> Self {
        let metrics = Metrics {
            translations: Counter::default(),
            translation_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            inconsistent: Counter::default(),
        };
        registry.register(
            "strait_translations",
            "Per-shape translations of the model into xDS snapshots",
            metrics.translations.clone(),
        );
        registry.register(
            "strait_push_seconds",
            "Time to translate the model and publish snapshots for every connected proxy",
            metrics.translation_seconds.clone(),
        );
        registry.register(
            "strait_inconsistent_snapshots",
            "Snapshots withheld because they failed the consistency check (a translation bug)",
            metrics.inconsistent.clone(),
        );
        let translations = Translations::new(Arc::new(Model::default()), &settings, Instant::now())
            .expect("the empty model translates consistently");
        Controller {
            cache,
            metrics,
            settings,
            certs,
            nodes: HashMap::new(),
            translations,
            rejections: Rejections::default(),
        }
    }

    /// The proxies' rejections, traced to objects, as this controller records them.
    pub fn rejections(&self) -> Rejections {
        self.rejections.clone()
    }

    /// Runs until the model channel closes.
    pub async fn run(
        mut self,
        mut models: watch::Receiver<Arc<Published>>,
        mut events: mpsc::UnboundedReceiver<NodeEvent>,
    ) {
        // Whatever the store holds already is the first generation (a change made before
        // this subscription is not announced again).
        let current = models.borrow_and_update().model.clone();
        self.advance(current, Instant::now());
        let mut burst_started: Option<Instant> = None;
        let mut fire_at = tokio::time::Instant::now();
        loop {
            let renewal = self
                .certs
                .as_ref()
                .and_then(WorkloadCertificates::next_renewal);
            let renew_at = tokio::time::Instant::from_std(renewal.unwrap_or_else(Instant::now));
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => return,
                },
                changed = models.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = Instant::now();
                    let first = *burst_started.get_or_insert(now);
                    let deadline = (now + DEBOUNCE_QUIET).min(first + DEBOUNCE_MAX);
                    fire_at = tokio::time::Instant::from_std(deadline);
                }
                () = tokio::time::sleep_until(fire_at), if burst_started.is_some() => {
                    let origin = burst_started.take().unwrap_or_else(Instant::now);
                    let published = models.borrow_and_update().clone();
                    tracing::info!(generation = published.generation, nodes = self.nodes.len(), "pushing configuration");
                    self.advance(published.model.clone(), origin);
                    self.push(self.nodes.values().cloned().collect());
                }
                () = tokio::time::sleep_until(renew_at), if renewal.is_some() => {
                    // Certificates past half their lifetime are reissued by this push.
                    tracing::info!("renewing workload certificates");
                    self.translations.snapshots.clear();
                    self.push(self.nodes.values().cloned().collect());
                }
            }
        }
    }

    /// Moves to a new model generation. A translation that fails its consistency check (a
    /// bug) keeps the last generation in force.
    fn advance(&mut self, model: Arc<Model>, origin: Instant) {
        let started = Instant::now();
        let in_use = self
            .nodes
            .values()
            .map(|n| n.proxy.outbound_shape())
            .collect();
        self.metrics.translations.inc();
        if let Err(error) = self
            .translations
            .next(model, &self.settings, origin, &in_use)
        {
            self.metrics.inconsistent.inc();
            tracing::error!(%error, "translation of the mesh produced an inconsistent part; keeping the previous configuration");
        }
        tracing::debug!(elapsed = ?started.elapsed(), "mesh translated");
    }

    fn on_event(&mut self, event: NodeEvent) {
        match event {
            NodeEvent::Connected { node, identity } => {
                let metadata = node
                    .metadata
                    .as_ref()
                    .map(struct_to_json)
                    .unwrap_or_default();
                let metadata = metadata.as_object().cloned().unwrap_or_default();
                let connected = ProxyNode::from_metadata(&node.id, &metadata)
                    .map_err(|e| e.to_string())
                    .and_then(|proxy| {
                        let claimed = self.identity_of(&proxy);
                        match &identity {
                            Some(proven) if *proven != claimed => Err(format!(
                                "node {:?} authenticated as {proven} but its metadata claims {claimed}",
                                node.id
                            )),
                            _ => Ok(Connected { proxy, authenticated: identity.is_some() }),
                        }
                    });
                match connected {
                    Ok(connected) => {
                        let proxy = &connected.proxy;
                        if !connected.authenticated && self.uses_credentials(proxy) {
                            tracing::warn!(node = %proxy.id, "gateway serves servers with credentialName but connected without authentication: it gets no private keys, so those servers cannot start; connect to the TLS xDS port with a bootstrap token");
                        }
                        if proxy.inbound.is_some() && !connected.authenticated {
                            tracing::warn!(node = %proxy.id, "proxy serves a workload but connected without authentication: it gets no workload certificate, so mTLS to and from it cannot work; connect to the TLS xDS port with a bootstrap token");
                        }
                        tracing::info!(node = %proxy.id, mode = %proxy.mode, namespace = %proxy.namespace, authenticated = connected.authenticated, "proxy connected");
                        self.nodes.insert(proxy.id.clone(), connected.clone());
                        self.push(vec![connected]);
                    }
                    Err(error) => {
                        tracing::warn!(node = %node.id, %error, "rejecting proxy");
                        self.cache.reject(&node.id, error);
                    }
                }
            }
            NodeEvent::Disconnected { node_id } => {
                tracing::info!(node = %node_id, "proxy disconnected");
                if let Some(gone) = self.nodes.remove(&node_id) {
                    self.forget_identity_if_unused(&gone);
                }
                self.rejections.forget_node(&node_id);
                self.cache.remove(&node_id);
            }
            NodeEvent::Rejected {
                node_id,
                type_url,
                version,
                error,
                names,
            } => {
                let snapshot = self.cache.current(&node_id);
                let rejection = self.rejections.rejected(
                    snapshot.as_deref(),
                    &node_id,
                    &type_url,
                    &version,
                    &error,
                    &names,
                );
                let objects: Vec<String> =
                    rejection.objects.iter().map(|id| id.to_string()).collect();
                tracing::warn!(node = %node_id, type_url, resources = ?rejection.resources, ?objects, "proxy rejection traced");
            }
            NodeEvent::Recovered { node_id, type_url } => {
                self.rejections.recovered(&node_id, &type_url);
            }
        }
    }

    /// Whether a gateway selected by a Gateway uses a credential (Kubernetes Secret).
    fn uses_credentials(&self, proxy: &ProxyNode) -> bool {
        proxy.mode == strait_model::ProxyMode::Gateway
            && self
                .translations
                .model
                .gateways
                .values()
                .filter(|g| g.selects(&proxy.labels))
                .flat_map(|g| &g.servers)
                .any(|s| matches!(s.tls, Some(strait_model::ServerTls::Credential { .. })))
    }

    /// The SPIFFE identity a node claims: its namespace and service account.
    fn identity_of(&self, node: &ProxyNode) -> String {
        strait_translate::spiffe(
            &self.settings,
            &node.namespace,
            node.service_account_or_default(),
        )
    }

    /// Drops a departed proxy's certificate once no authenticated proxy holds its identity.
    fn forget_identity_if_unused(&self, gone: &Connected) {
        let Some(certs) = &self.certs else { return };
        if !gone.authenticated {
            return;
        }
        let identity = self.identity_of(&gone.proxy);
        let still_held = self
            .nodes
            .values()
            .any(|n| n.authenticated && self.identity_of(&n.proxy) == identity);
        if !still_held {
            certs.forget(&identity);
        }
    }

    /// The SDS secrets for a shape: the trust bundle always, the workload key only when a
    /// proxy of that shape proved it holds the identity and does not certify its own key. The
    /// owner, to whom alone private keys go (these and a gateway's credentials), is the
    /// identity such a proxy proved.
    fn secrets(&self, shape: &ProxyNode, authenticated: bool) -> (Vec<Secret>, Option<String>) {
        let owner = authenticated.then(|| self.identity_of(shape));
        let Some(certs) = &self.certs else {
            return (Vec::new(), owner);
        };
        let mut secrets = vec![certs.root_secret()];
        if !authenticated || shape.own_certificate {
            return (secrets, owner);
        }
        let issued = strait_ca::Identity::new(
            self.settings.trust_domain.clone(),
            shape.namespace.clone(),
            shape.service_account_or_default().to_string(),
        )
        .map_err(|e| e.to_string())
        .and_then(|id| certs.workload_secret(&id).map_err(|e| e.to_string()));
        match issued {
            Ok(secret) => secrets.push(secret),
            Err(error) => {
                tracing::error!(%error, namespace = %shape.namespace, "cannot issue a workload certificate");
            }
        }
        (secrets, owner)
    }

    /// The snapshot of a node shape in the current generation: its parts made if this
    /// generation has not made them yet, composed with its secrets, checked.
    fn snapshot_for(
        &mut self,
        shape: &ProxyNode,
        authenticated: bool,
    ) -> Result<Arc<Snapshot>, InconsistentSnapshot> {
        let key = (shape.clone(), authenticated);
        if let Some(snapshot) = self.translations.snapshots.get(&key) {
            return Ok(snapshot.clone());
        }
        let view = self.translations.view_for(shape, &self.settings)?;
        let t = &mut self.translations;
        let (previous_outbound, previous_inbound) = match &t.previous {
            Some((outbound, inbound)) => (Some(outbound), Some(inbound)),
            None => (None, None),
        };
        let outbound = part_for(
            &mut t.outbound,
            previous_outbound,
            shape.outbound_shape(),
            || {
                self.metrics.translations.inc();
                strait_translate::outbound(&view.model, shape, &view.settings)
            },
        )?;
        let inbound = part_for(&mut t.inbound, previous_inbound, shape.clone(), || {
            strait_translate::inbound(&t.model, shape, &self.settings)
        })?;
        let mesh = view.mesh.clone();
        let origin = t.origin;
        let (secrets, secret_owner) = self.secrets(shape, authenticated);
        let secrets = Arc::new(Part::build(Resources {
            secrets,
            ..Resources::default()
        })?);
        let snapshot = Arc::new(
            Snapshot::compose(vec![mesh, outbound, inbound, secrets], secret_owner)?
                .with_origin(origin),
        );
        self.translations.snapshots.insert(key, snapshot.clone());
        Ok(snapshot)
    }

    /// Publishes each node's snapshot (one per shape, shared by its nodes).
    fn push(&mut self, nodes: Vec<Connected>) {
        let _span = tracing::info_span!("xds.push", nodes = nodes.len()).entered();
        let started = Instant::now();
        let mut by_shape: HashMap<ProxyNode, (bool, Vec<String>)> = HashMap::new();
        for node in nodes {
            let entry = by_shape.entry(node.proxy.shape()).or_default();
            entry.0 |= node.authenticated;
            entry.1.push(node.proxy.id);
        }
        for (shape, (authenticated, ids)) in by_shape {
            match self.snapshot_for(&shape, authenticated) {
                Ok(snapshot) => {
                    for id in ids {
                        if self.cache.set(&id, snapshot.clone()) {
                            tracing::debug!(node = %id, "snapshot updated");
                        }
                    }
                }
                Err(error) => {
                    // Never serve an inconsistent snapshot: the nodes keep what they have.
                    self.metrics.inconsistent.inc();
                    tracing::error!(%error, nodes = ?ids, "translation produced an inconsistent snapshot; keeping the previous one");
                }
            }
        }
        self.metrics
            .translation_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    use strait_xds::cache::NodeState;
    use strait_xds::snapshot::SECRET_TYPE;

    use super::*;

    fn node(id: &str, sa: &str, own_certificate: bool) -> Node {
        node_in("default", id, sa, own_certificate)
    }

    fn node_in(namespace: &str, id: &str, sa: &str, own_certificate: bool) -> Node {
        let metadata = strait_model::node::NodeMetadata {
            namespace: namespace.into(),
            service_account: Some(sa.into()),
            outbound_port: 15001,
            own_certificate,
            ..Default::default()
        }
        .to_json();
        let fields = metadata
            .into_iter()
            .filter_map(|(k, v)| {
                let s = v.as_str()?.to_string();
                Some((
                    k,
                    Value {
                        kind: Some(Kind::StringValue(s)),
                    },
                ))
            })
            .collect();
        Node {
            id: id.into(),
            metadata: Some(Struct { fields }),
            ..Default::default()
        }
    }

    fn secrets(cache: &SnapshotCache, id: &str) -> Vec<String> {
        match &*cache.subscribe(id).borrow() {
            NodeState::Ready(s) => s
                .resources(SECRET_TYPE)
                .map(|(name, _)| name.to_string())
                .collect(),
            _ => panic!("{id} has no snapshot"),
        }
    }

    #[test]
    fn keys_go_only_to_proxies_that_take_them_and_departed_identities_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = strait_ca::CertificateAuthority::load(
            strait_ca::CaSource::SelfSigned {
                data_dir: dir.path().to_path_buf(),
            },
            strait_ca::CaOptions::default(),
        )
        .unwrap();
        let certs = WorkloadCertificates::new(ca);
        let cache = SnapshotCache::new();
        let mut controller = Controller::new(
            cache.clone(),
            &mut Registry::default(),
            MeshSettings::default(),
            Some(certs.clone()),
        );
        let identity = |sa: &str| Some(format!("spiffe://cluster.local/ns/default/sa/{sa}"));
        // Envoy takes its key over SDS; strait-proxy certifies its own and gets only the roots.
        controller.on_event(NodeEvent::Connected {
            node: node("envoy-1", "web", false),
            identity: identity("web"),
        });
        controller.on_event(NodeEvent::Connected {
            node: node("strait-1", "api", true),
            identity: identity("api"),
        });
        assert_eq!(secrets(&cache, "envoy-1"), ["ROOTCA", "default"]);
        assert_eq!(secrets(&cache, "strait-1"), ["ROOTCA"]);
        assert!(certs.next_renewal().is_some(), "web's certificate is held");
        // The last proxy holding `web` leaves: nothing stays due for renewal (a stale due time
        // once made the push loop spin).
        controller.on_event(NodeEvent::Disconnected {
            node_id: "envoy-1".into(),
        });
        assert!(certs.next_renewal().is_none());
    }

    fn value(v: &serde_json::Value) -> Value {
        let kind = match v {
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            serde_json::Value::Object(o) => Kind::StructValue(Struct {
                fields: o.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
            }),
            _ => Kind::NullValue(0),
        };
        Value { kind: Some(kind) }
    }

    fn gateway_node(id: &str) -> Node {
        let metadata = strait_model::node::NodeMetadata {
            namespace: "istio-system".into(),
            labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
            service_account: Some("ingress".into()),
            mode: strait_model::ProxyMode::Gateway,
            listen_address: Some("127.0.0.1".parse().unwrap()),
            gateway_ports: [(443, 18443)].into(),
            outbound_port: 15001,
            ..Default::default()
        }
        .to_json();
        Node {
            id: id.into(),
            metadata: Some(Struct {
                fields: metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), value(v)))
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_gateway_credential_goes_only_to_a_stream_authenticated_as_the_gateway() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["bookinfo.example.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let id = strait_model::CredentialId::new("istio-system", "bookinfo");
        let data = [
            ("tls.crt".to_string(), cert.pem().into_bytes()),
            ("tls.key".to_string(), key.serialize_pem().into_bytes()),
        ]
        .into();
        let credential =
            strait_model::Credential::from_secret(id.clone(), Some("kubernetes.io/tls"), &data)
                .unwrap();
        let credentials = [(id, Arc::new(credential))].into();
        let objects = strait_model::loader::parse(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls: {mode: SIMPLE, credentialName: bookinfo}
",
            "test.yaml",
        )
        .unwrap();
        let model = Model::build_with(&objects, Some(&credentials)).unwrap();
        let cache = SnapshotCache::new();
        let mut controller = Controller::new(
            cache.clone(),
            &mut Registry::default(),
            MeshSettings::default(),
            None,
        );
        controller.advance(Arc::new(model), Instant::now());
        let owner = "spiffe://cluster.local/ns/istio-system/sa/ingress";
        controller.on_event(NodeEvent::Connected {
            node: gateway_node("gw-1"),
            identity: Some(owner.to_string()),
        });
        controller.on_event(NodeEvent::Connected {
            node: gateway_node("gw-2"),
            identity: None,
        });
        let seen = |node: &str, identity: Option<&str>| -> Vec<String> {
            ready(&cache, node)
                .for_identity(identity)
                .resources(SECRET_TYPE)
                .map(|(name, _)| name.to_string())
                .collect()
        };
        assert_eq!(seen("gw-1", Some(owner)), ["kubernetes://bookinfo"]);
        assert!(seen("gw-1", None).is_empty());
        assert!(
            seen(
                "gw-1",
                Some("spiffe://cluster.local/ns/istio-system/sa/other")
            )
            .is_empty()
        );
        assert!(seen("gw-2", None).is_empty(), "unauthenticated: no key");
    }

    fn model(reviews_endpoint: &str, weight_v1: u32) -> Arc<Model> {
        let yaml = format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: {reviews_endpoint}, labels: {{version: v1}}}}
  - {{address: 10.0.0.2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.1.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - route:
    - {{destination: {{host: reviews.default.svc.cluster.local, subset: v1}}, weight: {weight_v1}}}
    - {{destination: {{host: reviews.default.svc.cluster.local, subset: v2}}, weight: {}}}
"#,
            100 - weight_v1
        );
        let objects = strait_model::loader::parse(&yaml, "test.yaml").unwrap();
        Arc::new(Model::build(&objects).unwrap())
    }

    fn ready(cache: &SnapshotCache, id: &str) -> Arc<Snapshot> {
        match &*cache.subscribe(id).borrow() {
            NodeState::Ready(s) => s.clone(),
            other => panic!("{id} has no snapshot: {other:?}"),
        }
    }

    #[test]
    fn a_rejection_is_traced_to_the_objects_behind_the_resources_it_names() {
        use strait_model::{Kind, ObjectId};
        use strait_xds::snapshot::{CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE};
        let cache = SnapshotCache::new();
        let mut controller = Controller::new(
            cache.clone(),
            &mut Registry::default(),
            MeshSettings::default(),
            None,
        );
        controller.advance(model("10.0.0.1", 90), Instant::now());
        controller.on_event(NodeEvent::Connected {
            node: node("n1", "web", false),
            identity: None,
        });
        let id = |kind, name: &str| ObjectId {
            kind,
            namespace: "default".into(),
            name: name.into(),
        };
        let rejections = controller.rejections();
        let reject = |controller: &mut Controller, type_url: &str, error: &str, names: &[&str]| {
            controller.on_event(NodeEvent::Rejected {
                node_id: "n1".into(),
                type_url: type_url.into(),
                version: "v9".into(),
                error: error.into(),
                names: names.iter().map(|n| n.to_string()).collect(),
            })
        };
        // A wildcard CDS response; Envoy's message names the cluster: its DestinationRule.
        reject(
            &mut controller,
            CLUSTER_TYPE,
            "Error adding/updating cluster(s) outbound|9080|v1|reviews.default.svc.cluster.local: bad",
            &[],
        );
        let by_object = rejections.by_object();
        assert_eq!(
            by_object.keys().cloned().collect::<Vec<_>>(),
            vec![id(Kind::DestinationRule, "reviews")]
        );
        let rejection = &by_object[&id(Kind::DestinationRule, "reviews")][0];
        assert_eq!(
            rejection.resources,
            ["outbound|9080|v1|reviews.default.svc.cluster.local"]
        );
        assert!(rejection.describe().contains("proxy n1 rejected Cluster"));
        // A message naming nothing: every carried resource counts. Endpoints go by their
        // cluster: ratings has no DestinationRule, so its ServiceEntry.
        reject(
            &mut controller,
            ENDPOINT_TYPE,
            "something went wrong",
            &["outbound|9080||ratings.default.svc.cluster.local"],
        );
        assert!(
            rejections
                .by_object()
                .contains_key(&id(Kind::ServiceEntry, "ratings"))
        );
        // Routes go to their VirtualService.
        let routes = ready(&cache, "n1").resource_names(ROUTE_TYPE);
        reject(&mut controller, ROUTE_TYPE, "no", &[routes[0].as_str()]);
        assert!(
            rejections
                .by_object()
                .contains_key(&id(Kind::VirtualService, "reviews"))
        );
        // Accepting a later version clears that type; leaving clears the node.
        controller.on_event(NodeEvent::Recovered {
            node_id: "n1".into(),
            type_url: CLUSTER_TYPE.into(),
        });
        assert!(
            !rejections
                .by_object()
                .contains_key(&id(Kind::DestinationRule, "reviews"))
        );
        controller.on_event(NodeEvent::Disconnected {
            node_id: "n1".into(),
        });
        assert!(rejections.by_object().is_empty());
    }

    #[test]
    fn proxies_share_parts_and_an_endpoint_change_leaves_outbound_parts_alone() {
        use strait_xds::snapshot::{ENDPOINT_TYPE, ROUTE_TYPE};
        let cache = SnapshotCache::new();
        let mut registry = Registry::default();
        let mut controller =
            Controller::new(cache.clone(), &mut registry, MeshSettings::default(), None);
        controller.advance(model("10.0.0.1", 90), Instant::now());
        for i in 0..50 {
            let sa = if i % 2 == 0 { "web" } else { "api" };
            controller.on_event(NodeEvent::Connected {
                node: node(&format!("n{i}"), sa, false),
                identity: None,
            });
        }
        let translations = || controller_translations(&registry);
        // The mesh once, and one outbound part for both service accounts (it reads neither).
        assert_eq!(
            translations(),
            2,
            "one mesh translation, one outbound shape"
        );
        let (a, b) = (ready(&cache, "n0"), ready(&cache, "n1"));
        let route = |s: &Snapshot| s.get(ROUTE_TYPE, OUTBOUND_ROUTE).unwrap().bytes.as_ptr();
        assert_eq!(
            route(&a),
            route(&b),
            "one encoding of the routes for both shapes"
        );
        let eds = |s: &Snapshot| s.get(ENDPOINT_TYPE, REVIEWS_V1).unwrap().bytes.as_ptr();
        assert_eq!(eds(&a), eds(&b));

        // One endpoint moves: the mesh part is made again, the outbound part is kept, and
        // the new mesh part knows which one assignment changed.
        controller.advance(model("10.0.0.9", 90), Instant::now());
        controller.push(controller.nodes.values().cloned().collect());
        assert_eq!(translations(), 3, "only the mesh again");
        let moved = ready(&cache, "n0");
        assert_eq!(route(&moved), route(&a), "outbound part untouched");
        assert_ne!(moved.version(ENDPOINT_TYPE), a.version(ENDPOINT_TYPE));
        let (old_mesh, new_mesh) = (&a.parts()[0], &moved.parts()[0]);
        let changed: Vec<&str> = new_mesh
            .changed_since(old_mesh, 1)
            .unwrap()
            .iter()
            .map(|n| &**n)
            .collect();
        assert_eq!(
            changed,
            [
                REVIEWS_V1,
                "outbound|9080||reviews.default.svc.cluster.local"
            ]
        );

        // A weight changes: outbound parts are made again.
        controller.advance(model("10.0.0.9", 80), Instant::now());
        controller.push(controller.nodes.values().cloned().collect());
        assert_eq!(translations(), 5, "mesh and the one outbound shape");
        assert_ne!(
            ready(&cache, "n0").version(ROUTE_TYPE),
            moved.version(ROUTE_TYPE)
        );
    }

    #[test]
    fn proxies_of_equal_scopes_share_a_mesh_part_and_a_sidecar_narrows_its_own() {
        use strait_xds::snapshot::{CLUSTER_TYPE, ENDPOINT_TYPE};
        let cache = SnapshotCache::new();
        let mut registry = Registry::default();
        let mut controller =
            Controller::new(cache.clone(), &mut registry, MeshSettings::default(), None);
        let scoped_model = |endpoint: &str| {
            let mut objects = model(endpoint, 90).as_ref().clone();
            let sidecar = strait_model::loader::parse(
                "apiVersion: networking.istio.io/v1\nkind: Sidecar\n\
                 metadata: {name: default, namespace: narrow}\n\
                 spec: {egress: [{hosts: ['default/ratings.default.svc.cluster.local']}]}\n",
                "sidecar.yaml",
            )
            .unwrap();
            let built = Model::build(&sidecar).unwrap();
            objects.sidecars = built.sidecars;
            Arc::new(objects)
        };
        controller.advance(scoped_model("10.0.0.1"), Instant::now());
        for (i, namespace) in ["default", "other", "narrow", "narrow"].iter().enumerate() {
            controller.on_event(NodeEvent::Connected {
                node: node_in(namespace, &format!("n{i}"), "web", false),
                identity: None,
            });
        }
        let (default, other, narrow, narrow2) = (
            ready(&cache, "n0"),
            ready(&cache, "n1"),
            ready(&cache, "n2"),
            ready(&cache, "n3"),
        );
        // Namespaces that see the same share one mesh part; the Sidecar's namespace has its own.
        assert!(Arc::ptr_eq(&default.parts()[0], &other.parts()[0]));
        assert!(Arc::ptr_eq(&narrow.parts()[0], &narrow2.parts()[0]));
        assert!(!Arc::ptr_eq(&default.parts()[0], &narrow.parts()[0]));
        assert_eq!(
            narrow.resource_names(CLUSTER_TYPE),
            ["outbound|9080||ratings.default.svc.cluster.local"]
        );
        assert!(default.get(ENDPOINT_TYPE, REVIEWS_V1).is_some());

        // An endpoint of reviews moves: the narrow part is made again as the successor of its
        // last one, and nothing it holds changed.
        controller.advance(scoped_model("10.0.0.9"), Instant::now());
        controller.push(controller.nodes.values().cloned().collect());
        let moved = ready(&cache, "n2");
        let changed = moved.parts()[0].changed_since(&narrow.parts()[0], 1);
        assert_eq!(changed.map(<[_]>::len), Some(0), "{changed:?}");
        let moved_default = ready(&cache, "n0");
        let changed = moved_default.parts()[0].changed_since(&default.parts()[0], 1);
        assert!(changed.is_some_and(|c| c.iter().any(|n| &**n == REVIEWS_V1)));
    }

    const OUTBOUND_ROUTE: &str = strait_translate::OUTBOUND_ROUTE_NAME;
    const REVIEWS_V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";

    /// A mesh part patched for an endpoint change is the part translated whole from the new
    /// model, and says that only the changed services' resources changed.
    #[test]
    fn an_endpoint_change_patches_the_mesh_part_into_what_a_whole_translation_makes() {
        // Part tables by position in PUSH_ORDER.
        const CDS: usize = 0;
        const EDS: usize = 1;
        fn mesh_model(
            reviews_v1_label: &str,
            db_address: &str,
            ratings: &str,
            weight: u32,
        ) -> Arc<Model> {
            let yaml = format!(
                r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 10.0.0.1, labels: {{version: {reviews_v1_label}}}}}
  - {{address: 10.0.0.2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{ratings}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: default}}
spec:
  hosts: [db.example.com]
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  resolution: DNS
  endpoints: [{{address: {db_address}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  trafficPolicy: {{outlierDetection: {{consecutive5xxErrors: {weight}}}}}
"#
            );
            let objects = strait_model::loader::parse(&yaml, "test.yaml").unwrap();
            Arc::new(Model::build(&objects).unwrap())
        }
        fn entries(part: &Part, i: usize) -> Vec<(String, u64)> {
            part.table(i)
                .iter()
                .map(|(n, e)| (n.to_string(), e.version))
                .collect()
        }
        let settings = MeshSettings::default();
        let steps = [
            // (model, names expected changed in CDS, in EDS)
            (
                mesh_model("v1", "db1.example.com", "{address: 10.0.1.1}", 5),
                vec![],
                vec![],
            ),
            // An endpoint moves from subset v1 to v2 (the service's own assignment, which
            // carries no labels, stays as it was).
            (
                mesh_model("v2", "db1.example.com", "{address: 10.0.1.1}", 5),
                vec![],
                vec![
                    "outbound|9080|v1|reviews.default.svc.cluster.local",
                    "outbound|9080|v2|reviews.default.svc.cluster.local",
                ],
            ),
            // A DNS service's endpoints live in its cluster; another service gains one.
            (
                mesh_model(
                    "v2",
                    "db2.example.com",
                    "{address: 10.0.1.1}, {address: 10.0.1.2}",
                    5,
                ),
                vec!["outbound|5432||db.example.com"],
                vec!["outbound|9080||ratings.default.svc.cluster.local"],
            ),
            // Not an endpoint change: translated whole, and still right.
            (
                mesh_model("v2", "db2.example.com", "{address: 10.0.1.2}", 7),
                vec![
                    "outbound|9080|v1|reviews.default.svc.cluster.local",
                    "outbound|9080|v2|reviews.default.svc.cluster.local",
                    "outbound|9080||reviews.default.svc.cluster.local",
                ],
                vec!["outbound|9080||ratings.default.svc.cluster.local"],
            ),
        ];
        let mut view: Option<Arc<View>> = None;
        for (i, (model, clusters, endpoints)) in steps.into_iter().enumerate() {
            let made = mesh_part(&model, &settings, view.as_ref()).unwrap();
            let whole = part(strait_translate::mesh(&model, &settings)).unwrap();
            for t in [CDS, EDS] {
                assert_eq!(entries(&made, t), entries(&whole, t), "step {i}, table {t}");
                assert_eq!(
                    made.table(t).version(),
                    whole.table(t).version(),
                    "step {i}"
                );
            }
            if let Some(old) = &view {
                for (t, expected) in [(CDS, clusters), (EDS, endpoints)] {
                    let mut changed: Vec<String> = made
                        .changed_since(&old.mesh, t)
                        .unwrap()
                        .iter()
                        .map(|n| n.to_string())
                        .collect();
                    changed.sort();
                    let mut expected: Vec<String> =
                        expected.into_iter().map(String::from).collect();
                    expected.sort();
                    assert_eq!(changed, expected, "step {i}, table {t}");
                }
            }
            // Consistent on its own: every EDS cluster has its assignment.
            Snapshot::compose(
                vec![Arc::new(made.patched(Resources::default()).unwrap())],
                None,
            )
            .unwrap();
            view = Some(Arc::new(View {
                model,
                settings: settings.clone(),
                mesh: Arc::new(made),
            }));
        }
    }

    fn controller_translations(registry: &Registry) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("strait_translations_total "))
            .unwrap()
            .parse()
            .unwrap()
    }
}
