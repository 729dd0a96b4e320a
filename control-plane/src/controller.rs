//! The push loop: model changes and connecting proxies in, per-node snapshots out.
//!
//! Nodes with the same shape (mode, namespace, labels, ports) share one translation. A model
//! change is debounced so a burst of edits gives a few pushes, and the cache only wakes the
//! streams whose node's resources actually changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use strait_model::{Model, ProxyNode};
use strait_xds::cache::SnapshotCache;
use strait_xds::server::NodeEvent;
use strait_xds::snapshot::{Resources, Snapshot};
use strait_xds::status::struct_to_json;
use tokio::sync::{mpsc, watch};

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
    nodes: HashMap<String, ProxyNode>,
}

impl Controller {
    pub fn new(cache: SnapshotCache, registry: &mut Registry) -> Self {
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
            }
        }
    }

    fn on_event(&mut self, event: NodeEvent, model: &Model) {
        match event {
            NodeEvent::Connected { node } => {
                let metadata = node
                    .metadata
                    .as_ref()
                    .map(struct_to_json)
                    .unwrap_or_default();
                let metadata = metadata.as_object().cloned().unwrap_or_default();
                match ProxyNode::from_metadata(&node.id, &metadata) {
                    Ok(proxy) => {
                        tracing::info!(node = %proxy.id, mode = %proxy.mode, namespace = %proxy.namespace, "proxy connected");
                        self.nodes.insert(proxy.id.clone(), proxy.clone());
                        self.push(model, vec![proxy]);
                    }
                    Err(error) => {
                        tracing::warn!(node = %node.id, %error, "rejecting proxy with invalid metadata");
                        self.cache.reject(&node.id, error.to_string());
                    }
                }
            }
            NodeEvent::Disconnected { node_id } => {
                tracing::info!(node = %node_id, "proxy disconnected");
                self.nodes.remove(&node_id);
                self.cache.remove(&node_id);
            }
        }
    }

    /// Translates once per node shape, checks each snapshot, and publishes it to its nodes.
    fn push(&self, model: &Model, nodes: Vec<ProxyNode>) {
        let started = Instant::now();
        let mut by_shape: BTreeMap<String, (ProxyNode, Vec<String>)> = BTreeMap::new();
        for node in nodes {
            let shape = node.shape();
            let key = format!("{shape:?}");
            by_shape
                .entry(key)
                .or_insert_with(|| (shape, Vec::new()))
                .1
                .push(node.id);
        }
        for (shape, ids) in by_shape.into_values() {
            self.metrics.translations.inc();
            match snapshot(model, &shape) {
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
) -> Result<Snapshot, strait_xds::snapshot::InconsistentSnapshot> {
    let out = strait_translate::translate(model, node);
    Snapshot::build(Resources {
        listeners: out.listeners,
        routes: out.routes,
        clusters: out.clusters,
        endpoints: out.endpoints,
    })
}
