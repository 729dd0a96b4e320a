//! The push loop: model changes and connecting proxies in, per-node snapshots out.
//!
//! Nodes with the same shape (mode, namespace, labels, ports) share one translation. A model
//! change is debounced so a burst of edits gives a few pushes, and the cache only wakes the
//! streams whose node's resources actually changed. Workload certificates ride along as SDS
//! secrets and are renewed at half their lifetime by a push of their own.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use strait_model::{Model, ProxyNode};
use strait_translate::MeshSettings;
use strait_xds::cache::SnapshotCache;
use strait_xds::server::NodeEvent;
use strait_xds::snapshot::{InconsistentSnapshot, Resources, Snapshot};
use strait_xds::status::struct_to_json;
use tokio::sync::{mpsc, watch};

use crate::certs::WorkloadCertificates;
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
        Controller {
            cache,
            metrics,
            settings,
            certs,
            nodes: HashMap::new(),
        }
    }

    /// Runs until the model channel closes.
    pub async fn run(
        mut self,
        mut models: watch::Receiver<Arc<Published>>,
        mut events: mpsc::UnboundedReceiver<NodeEvent>,
    ) {
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
                    Some(event) => {
                        let model = models.borrow().model.clone();
                        self.on_event(event, &model);
                    }
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
                    burst_started = None;
                    let published = models.borrow_and_update().clone();
                    tracing::info!(generation = published.generation, nodes = self.nodes.len(), "pushing configuration");
                    self.push(&published.model, self.nodes.values().cloned().collect());
                }
                () = tokio::time::sleep_until(renew_at), if renewal.is_some() => {
                    // Certificates past half their lifetime are reissued by this push.
                    let model = models.borrow().model.clone();
                    tracing::info!("renewing workload certificates");
                    self.push(&model, self.nodes.values().cloned().collect());
                }
            }
        }
    }

    fn on_event(&mut self, event: NodeEvent, model: &Model) {
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
                        if proxy.inbound.is_some() && !connected.authenticated {
                            tracing::warn!(node = %proxy.id, "proxy serves a workload but connected without authentication: it gets no workload certificate, so mTLS to and from it cannot work; connect to the TLS xDS port with a bootstrap token");
                        }
                        tracing::info!(node = %proxy.id, mode = %proxy.mode, namespace = %proxy.namespace, authenticated = connected.authenticated, "proxy connected");
                        self.nodes.insert(proxy.id.clone(), connected.clone());
                        self.push(model, vec![connected]);
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
                self.cache.remove(&node_id);
            }
        }
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
    /// proxy of that shape proved it holds the identity and does not certify its own key.
    fn secrets(&self, shape: &ProxyNode, authenticated: bool) -> (Vec<Secret>, Option<String>) {
        let Some(certs) = &self.certs else {
            return (Vec::new(), None);
        };
        let mut secrets = vec![certs.root_secret()];
        if !authenticated || shape.own_certificate {
            return (secrets, None);
        }
        let issued = strait_ca::Identity::new(
            self.settings.trust_domain.clone(),
            shape.namespace.clone(),
            shape.service_account_or_default().to_string(),
        )
        .map_err(|e| e.to_string())
        .and_then(|id| certs.workload_secret(&id).map_err(|e| e.to_string()));
        match issued {
            Ok(secret) => {
                secrets.push(secret);
                (secrets, Some(self.identity_of(shape)))
            }
            Err(error) => {
                tracing::error!(%error, namespace = %shape.namespace, "cannot issue a workload certificate");
                (secrets, None)
            }
        }
    }

    /// Translates once per node shape, checks each snapshot, and publishes it to its nodes.
    fn push(&self, model: &Model, nodes: Vec<Connected>) {
        let _span = tracing::info_span!("xds.push", nodes = nodes.len()).entered();
        let started = Instant::now();
        let mut by_shape: BTreeMap<String, (ProxyNode, bool, Vec<String>)> = BTreeMap::new();
        for node in nodes {
            let shape = node.proxy.shape();
            let key = format!("{shape:?}");
            let entry = by_shape
                .entry(key)
                .or_insert_with(|| (shape, false, Vec::new()));
            entry.1 |= node.authenticated;
            entry.2.push(node.proxy.id);
        }
        for (shape, authenticated, ids) in by_shape.into_values() {
            self.metrics.translations.inc();
            let (secrets, secret_owner) = self.secrets(&shape, authenticated);
            match snapshot(model, &shape, &self.settings, secrets, secret_owner) {
                Ok(snapshot) => {
                    let snapshot = Arc::new(snapshot);
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

/// The snapshot for one node: translation, then the consistency check.
pub fn snapshot(
    model: &Model,
    node: &ProxyNode,
    settings: &MeshSettings,
    secrets: Vec<Secret>,
    secret_owner: Option<String>,
) -> Result<Snapshot, InconsistentSnapshot> {
    let out = strait_translate::translate_with(model, node, settings);
    Snapshot::build(Resources {
        listeners: out.listeners,
        routes: out.routes,
        clusters: out.clusters,
        endpoints: out.endpoints,
        secrets,
        secret_owner,
    })
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
        let metadata = strait_model::node::NodeMetadata {
            namespace: "default".into(),
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
                .map(|(name, _, _)| name.to_string())
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
        let model = Model::default();
        let identity = |sa: &str| Some(format!("spiffe://cluster.local/ns/default/sa/{sa}"));
        // Envoy takes its key over SDS; strait-proxy certifies its own and gets only the roots.
        controller.on_event(
            NodeEvent::Connected {
                node: node("envoy-1", "web", false),
                identity: identity("web"),
            },
            &model,
        );
        controller.on_event(
            NodeEvent::Connected {
                node: node("strait-1", "api", true),
                identity: identity("api"),
            },
            &model,
        );
        assert_eq!(secrets(&cache, "envoy-1"), ["ROOTCA", "default"]);
        assert_eq!(secrets(&cache, "strait-1"), ["ROOTCA"]);
        assert!(certs.next_renewal().is_some(), "web's certificate is held");
        // The last proxy holding `web` leaves: nothing stays due for renewal (a stale due time
        // once made the push loop spin).
        controller.on_event(
            NodeEvent::Disconnected {
                node_id: "envoy-1".into(),
            },
            &model,
        );
        assert!(certs.next_renewal().is_none());
    }
}
