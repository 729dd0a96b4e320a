//! Records what a stream sent, and what the client ACKed or NACKed, into its shared status.

use std::sync::{Arc, Mutex, MutexGuard};

use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;

use super::NodeEvent;
use crate::metrics::XdsMetrics;
use crate::status::{NackStatus, ProxyStatus, TypeStatus, unix_ms_now};

/// One stream's view of its `/debug/proxies` entry, plus the metrics its events count toward
/// and the controller, which hears of rejections (to tell the objects behind them).
pub(crate) struct Ledger {
    status: Arc<Mutex<ProxyStatus>>,
    metrics: XdsMetrics,
    events: mpsc::UnboundedSender<NodeEvent>,
}

impl Ledger {
    pub(crate) fn new(
        status: Arc<Mutex<ProxyStatus>>,
        metrics: XdsMetrics,
        events: mpsc::UnboundedSender<NodeEvent>,
    ) -> Self {
        Self {
            status,
            metrics,
            events,
        }
    }

    fn tell(&self, event: NodeEvent) {
        // Without a controller (some tests) nobody needs to hear it.
        let _ = self.events.send(event);
    }

    fn update<R>(&self, type_url: &str, f: impl FnOnce(&ProxyStatus, &mut TypeStatus) -> R) -> R {
        let mut status = lock(&self.status);
        let mut entry = status.types.remove(type_url).unwrap_or_default();
        let result = f(&status, &mut entry);
        status.types.insert(type_url.to_string(), entry);
        result
    }

    /// The client asked for the type: it shows up in the status even before any answer.
    pub(crate) fn opened(&self, type_url: &str) {
        self.update(type_url, |_, _| ());
    }

    pub(crate) fn sent(&self, type_url: &str, version: &str, nonce: &str, resources: usize) {
        self.update(type_url, |_, entry| {
            entry.sent_version = Some(version.to_string());
            entry.sent_nonce = Some(nonce.to_string());
            entry.resources = resources;
        });
    }

    pub(crate) fn set_resources(&self, type_url: &str, resources: usize) {
        self.update(type_url, |_, entry| entry.resources = resources);
    }

    /// `latency`: from the change the response carried to its ACK.
    pub(crate) fn acked(&self, type_url: &str, version: &str, latency: std::time::Duration) {
        self.metrics.acked(type_url, latency);
        let recovered = self.update(type_url, |status, entry| {
            entry.acked_version = Some(version.to_string());
            entry.last_ack_unix_ms = Some(unix_ms_now());
            match &mut entry.nack {
                Some(nack) if !nack.superseded => {
                    nack.superseded = true;
                    Some(status.node_id.clone())
                }
                _ => None,
            }
        });
        if let Some(node_id) = recovered {
            self.tell(NodeEvent::Recovered {
                node_id,
                type_url: type_url.to_string(),
            });
        }
    }

    /// Records a rejection; warns only the first time a stream rejects a given version of a
    /// type, as Envoy repeats its NACK on every later request until the version changes.
    /// `names`: the resources the rejected response carried (empty: all of the type).
    pub(crate) fn nacked(
        &self,
        type_url: &str,
        version: &str,
        error: &RpcStatus,
        names: Vec<String>,
    ) {
        self.metrics.nacked(type_url);
        let first = self.update(type_url, |status, entry| {
            let (count, first) = match &entry.nack {
                Some(previous) if previous.version == version => (previous.count + 1, None),
                _ => {
                    tracing::warn!(
                        node = %status.node_id,
                        stream = status.stream_id,
                        type_url,
                        version,
                        code = error.code,
                        error = %error.message,
                        "proxy rejected configuration"
                    );
                    (1, Some(status.node_id.clone()))
                }
            };
            entry.nack = Some(NackStatus {
                version: version.to_string(),
                error_detail: error.message.clone(),
                code: error.code,
                at_unix_ms: unix_ms_now(),
                count,
                superseded: false,
            });
            first
        });
        if let Some(node_id) = first {
            self.tell(NodeEvent::Rejected {
                node_id,
                type_url: type_url.to_string(),
                version: version.to_string(),
                error: error.message.clone(),
                names,
            });
        }
    }

    pub(crate) fn stream_id(&self) -> u64 {
        lock(&self.status).stream_id
    }
}

pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Status entries are plain data; one left half-updated by a panic is still worth showing.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
