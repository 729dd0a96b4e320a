//! The latest snapshot (or rejection) per node id, which streams of that node watch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::snapshot::{PUSH_ORDER, Snapshot};

/// What a node's streams should serve.
#[derive(Clone, Debug)]
pub enum NodeState {
    /// Nothing decided yet: streams hold their requests until a snapshot or a rejection comes.
    Pending,
    Ready(Arc<Snapshot>),
    /// The node cannot be served; its streams end with `invalid_argument` and this reason.
    Rejected(String),
}

struct Entry {
    state: watch::Sender<NodeState>,
}

impl Entry {
    fn new() -> Self {
        Self {
            state: watch::Sender::new(NodeState::Pending),
        }
    }
}

/// Per-node snapshots. Cheap to clone; every clone sees the same nodes.
#[derive(Clone, Default)]
pub struct SnapshotCache {
    nodes: Arc<Mutex<HashMap<String, Entry>>>,
}

impl SnapshotCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic elsewhere while holding the lock leaves the map itself intact, so keep serving.
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes a snapshot for a node. Returns true when any type version changed (or the node
    /// had no snapshot); an unchanged snapshot is dropped and wakes no stream.
    pub fn set(&self, node_id: &str, snapshot: Arc<Snapshot>) -> bool {
        let mut nodes = self.lock();
        let entry = nodes.entry(node_id.to_string()).or_insert_with(Entry::new);
        entry.state.send_if_modified(|state| {
            if let NodeState::Ready(current) = state
                && PUSH_ORDER
                    .iter()
                    .all(|t| current.version(t) == snapshot.version(t))
            {
                return false;
            }
            *state = NodeState::Ready(snapshot);
            true
        })
    }

    /// Marks a node as unservable; its open streams end with `invalid_argument(reason)`.
    pub fn reject(&self, node_id: &str, reason: String) {
        let mut nodes = self.lock();
        let entry = nodes.entry(node_id.to_string()).or_insert_with(Entry::new);
        entry.state.send_replace(NodeState::Rejected(reason));
    }

    /// Forgets a node. Streams still watching it (a reconnect racing the removal) are put back
    /// to `Pending` instead of being cut off, so the next `set` reaches them.
    pub fn remove(&self, node_id: &str) {
        let mut nodes = self.lock();
        let Some(entry) = nodes.get(node_id) else {
            return;
        };
        if entry.state.receiver_count() == 0 {
            nodes.remove(node_id);
        } else {
            entry.state.send_replace(NodeState::Pending);
        }
    }

    /// The snapshot a node is served now, if any.
    pub fn current(&self, node_id: &str) -> Option<Arc<Snapshot>> {
        match &*self.lock().get(node_id)?.state.borrow() {
            NodeState::Ready(snapshot) => Some(snapshot.clone()),
            NodeState::Pending | NodeState::Rejected(_) => None,
        }
    }

    pub fn subscribe(&self, node_id: &str) -> watch::Receiver<NodeState> {
        self.lock()
            .entry(node_id.to_string())
            .or_insert_with(Entry::new)
            .state
            .subscribe()
    }

    /// Node ids with an entry (a snapshot, a rejection, or a stream waiting), sorted.
    pub fn node_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// A node reconnecting after a rejection gets a fresh decision: the controller hears
    /// `Connected` and translates again, so an old rejection must not end the new stream first.
    pub(crate) fn clear_rejection(&self, node_id: &str) {
        let nodes = self.lock();
        if let Some(entry) = nodes.get(node_id) {
            entry.state.send_if_modified(|state| {
                if matches!(state, NodeState::Rejected(_)) {
                    *state = NodeState::Pending;
                    true
                } else {
                    false
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Resources;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn snapshot(clusters: &[&str]) -> Arc<Snapshot> {
        let resources = Resources {
            clusters: clusters
                .iter()
                .map(|name| Cluster {
                    name: name.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        Arc::new(Snapshot::build(resources).expect("consistent"))
    }

    #[test]
    fn set_reports_changes_and_skips_identical_snapshots() {
        let cache = SnapshotCache::new();
        let mut rx = cache.subscribe("n1");
        assert!(matches!(*rx.borrow_and_update(), NodeState::Pending));
        assert!(cache.set("n1", snapshot(&["a"])));
        assert!(rx.has_changed().expect("sender alive"));
        rx.borrow_and_update();
        // Same content, different Arc: not a change, no wake-up.
        assert!(!cache.set("n1", snapshot(&["a"])));
        assert!(!rx.has_changed().expect("sender alive"));
        assert!(cache.set("n1", snapshot(&["a", "b"])));
        assert!(rx.has_changed().expect("sender alive"));
    }

    #[test]
    fn reject_then_clear_and_remove() {
        let cache = SnapshotCache::new();
        cache.reject("n1", "bad metadata".into());
        let rx = cache.subscribe("n1");
        assert!(matches!(&*rx.borrow(), NodeState::Rejected(r) if r == "bad metadata"));
        cache.clear_rejection("n1");
        assert!(matches!(*rx.borrow(), NodeState::Pending));
        assert_eq!(cache.node_ids(), vec!["n1".to_string()]);
        // A watcher keeps the entry alive.
        cache.set("n1", snapshot(&["a"]));
        cache.remove("n1");
        assert!(matches!(*rx.borrow(), NodeState::Pending));
        assert_eq!(cache.node_ids().len(), 1);
        drop(rx);
        cache.remove("n1");
        assert!(cache.node_ids().is_empty());
    }
}
