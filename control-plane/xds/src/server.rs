//! The ADS gRPC service: one task per stream serving the node's snapshot from the cache.

mod delta;
mod ledger;
mod requests;
mod service;
mod sotw;

pub use service::AdsService;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use prost::bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use crate::cache::{NodeState, SnapshotCache};
use crate::metrics::XdsMetrics;
use crate::snapshot::{CLUSTER_TYPE, LISTENER_TYPE, PUSH_ORDER, ROUTE_TYPE, Snapshot};
use crate::status::{HeldConfig, HeldResource, ProxyStatus};
use ledger::{Ledger, lock};

/// Responses (framed for the wire) queued per stream before the stream task waits for the
/// client to read. Small:
/// a client that does not read only holds up its own task.
const RESPONSE_BUFFER: usize = 8;

/// Streams in their initial sync at once, by default: later ones wait their turn (their
/// client sees a slow first response, not a refusal), so a reconnect wave of thousands of
/// proxies converges steadily instead of all of them holding half-sent configurations.
pub const DEFAULT_ADMISSION_LIMIT: usize = 256;

/// The longest one stream holds an admission slot: a client that never ACKs lets others in.
const ADMISSION_HOLD_MAX: std::time::Duration = std::time::Duration::from_secs(20);

/// Subscribing to this name means "everything of the type".
const WILDCARD: &str = "*";

/// What the controller hears about proxies coming and going.
#[derive(Clone, Debug)]
// Events are rare (one per connect/disconnect) and the controller wants the node by value.
#[allow(clippy::large_enum_variant)]
pub enum NodeEvent {
    /// The first stream of this node id opened; the controller should `set` or `reject` it.
    /// `identity` is the SPIFFE identity the stream authenticated as (TLS port only).
    Connected {
        node: Node,
        identity: Option<String>,
    },
    /// The last stream of this node id closed.
    Disconnected { node_id: String },
    /// A stream of this node rejected a response: `names` are the resources it carried (empty:
    /// every resource of the type), `error` the client's message.
    Rejected {
        node_id: String,
        type_url: String,
        version: String,
        error: String,
        names: Vec<String>,
    },
    /// A stream of this node that had rejected the type accepted a later response of it.
    Recovered { node_id: String, type_url: String },
}

/// Why a stream ends with an error status.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("the first request must carry the node field")]
    MissingNode,
    #[error("the first request must carry a non-empty node.id")]
    MissingNodeId,
}

impl From<StreamError> for Status {
    fn from(error: StreamError) -> Self {
        Status::invalid_argument(error.to_string())
    }
}

/// Decides who a stream's client is, from its request metadata (a bearer token) and the
/// certificates it presented on the TLS connection (DER, leaf first). Asynchronous: checking a
/// token may take a call to another server (Kubernetes TokenReview).
#[tonic::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The caller's SPIFFE identity, or a status that ends the stream.
    async fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        peer_certificates: Option<&[Vec<u8>]>,
    ) -> Result<String, Status>;
}

/// One open stream, as the status pages see it: its ledger and its protocol state (which the
/// stream task owns and locks for each request and response; a reader locks it briefly).
struct StreamEntry {
    status: Arc<Mutex<ProxyStatus>>,
    held: Option<SharedHeld>,
}

/// What a stream's client holds of a type, by reference to the encodings it was sent.
/// A stream's acknowledged resources, readable from outside the stream.
type SharedHeld = Arc<Mutex<dyn HeldView>>;

trait HeldView: Send {
    /// The resources it accepted, sorted by name within each part; `None` for a type it has
    /// not accepted a response of.
    fn held(&self, type_url: &str) -> Option<Vec<HeldResource>>;
}

/// The ADS server. Clones share streams and status.
#[derive(Clone)]
pub struct AdsServer {
    inner: Arc<Inner>,
    /// Set for the TLS port: every stream must authenticate.
    authenticator: Option<Arc<dyn Authenticator>>,
}

struct Inner {
    cache: SnapshotCache,
    events: mpsc::UnboundedSender<NodeEvent>,
    metrics: XdsMetrics,
    next_stream: AtomicU64,
    next_nonce: AtomicU64,
    streams: Mutex<BTreeMap<u64, StreamEntry>>,
    /// Open streams per node id.
    nodes: Mutex<HashMap<String, usize>>,
    /// Slots for streams in their initial sync.
    admission: Arc<tokio::sync::Semaphore>,
}

impl AdsServer {
    pub fn new(
        cache: SnapshotCache,
        events: mpsc::UnboundedSender<NodeEvent>,
        metrics: XdsMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                cache,
                events,
                metrics,
                next_stream: AtomicU64::new(1),
                next_nonce: AtomicU64::new(1),
                streams: Mutex::new(BTreeMap::new()),
                nodes: Mutex::new(HashMap::new()),
                admission: Arc::new(tokio::sync::Semaphore::new(DEFAULT_ADMISSION_LIMIT)),
            }),
            authenticator: None,
        }
    }

    /// How many streams may be in their initial sync at once (the others wait).
    pub fn with_admission_limit(mut self, limit: usize) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("set before the server is shared");
        inner.admission = Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
        self
    }

    /// The same server (shared cache, streams and status) for a port where every stream must
    /// authenticate; only such streams can receive private keys.
    pub fn authenticated(&self, authenticator: Arc<dyn Authenticator>) -> AdsServer {
        AdsServer {
            inner: self.inner.clone(),
            authenticator: Some(authenticator),
        }
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn service(&self) -> AdsService {
        AdsService::new(self.clone())
    }

    /// Every open stream, by stream id.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        lock(&self.inner.streams)
            .values()
            .map(|entry| lock(&entry.status).clone())
            .collect()
    }

    /// What each open stream of `node_id` has acknowledged, by stream id: the resources its
    /// client holds, shared with the snapshots they were sent from (nothing is copied but the
    /// list).
    pub fn held(&self, node_id: &str) -> Vec<HeldConfig> {
        let entries: Vec<(Arc<Mutex<ProxyStatus>>, Option<SharedHeld>)> = lock(&self.inner.streams)
            .values()
            .map(|e| (e.status.clone(), e.held.clone()))
            .filter(|(status, _)| lock(status).node_id == node_id)
            .collect();
        entries
            .into_iter()
            .map(|(status, held)| {
                let status = lock(&status).clone();
                let types = status
                    .types
                    .keys()
                    .map(|type_url| {
                        let resources = held.as_ref().and_then(|h| lock(h).held(type_url));
                        (type_url.clone(), resources)
                    })
                    .collect();
                HeldConfig { status, types }
            })
            .collect()
    }

    async fn start<P: Protocol>(
        &self,
        request: Request<requests::Requests<P::Request>>,
    ) -> Result<ReceiverStream<Result<Bytes, Status>>, Status> {
        let identity = match &self.authenticator {
            None => None,
            Some(authenticator) => {
                let certificates: Option<Vec<Vec<u8>>> = request
                    .peer_certs()
                    .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect());
                match authenticator
                    .authenticate(request.metadata(), certificates.as_deref())
                    .await
                {
                    Ok(identity) => Some(identity),
                    Err(status) => {
                        tracing::warn!(%status, remote = ?request.remote_addr(), "refusing unauthenticated xDS stream");
                        return Err(status);
                    }
                }
            }
        };
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        tokio::spawn(serve_stream::<P>(
            self.inner.clone(),
            request.into_inner(),
            identity,
            tx,
        ));
        Ok(ReceiverStream::new(rx))
    }
}

/// A response ready to go, with the type it is for and when it became due.
struct Outgoing<R> {
    type_url: &'static str,
    start: Instant,
    response: R,
}

/// The protocol-specific half of a stream: requests in, responses out, no I/O.
trait Protocol: HeldView + Send + Sized + 'static {
    type Request: Send + 'static;
    type Response: prost::Message + Send + 'static;
    const NAME: &'static str;

    fn new(ledger: Ledger) -> Self;
    fn node(request: &Self::Request) -> Option<&Node>;
    /// `snapshot` is the node's current one, if any: streams keep its copies of names.
    fn on_request(&mut self, request: Self::Request, now: Instant, snapshot: Option<&Snapshot>);
    /// The next response due for `snapshot`, in push order, respecting warming and at most
    /// one un-ACKed response per type; `None` when nothing more is due. A response may keep
    /// `snapshot` (a reference) to tell later what its client accepted.
    fn next_response(
        &mut self,
        snapshot: &Arc<Snapshot>,
        nonce: &mut dyn FnMut() -> String,
    ) -> Option<Outgoing<Self::Response>>;
    /// The client has answered everything sent to it and nothing is due: its initial sync
    /// is over (once at least one response went out).
    fn settled(&self) -> bool;
}

/// Whether listeners and routes must wait so that they never name a cluster Envoy is still
/// warming. A NACK settles a response, so it releases the hold instead of deadlocking.
struct Warming {
    cds_unacked: bool,
    eds_unacked: bool,
    /// CDS is current on the client, which has not yet asked for the endpoints of some
    /// EDS cluster of the snapshot.
    eds_missing: bool,
}

impl Warming {
    fn holds(type_url: &str) -> bool {
        type_url == LISTENER_TYPE || type_url == ROUTE_TYPE
    }

    fn hold(&self) -> bool {
        self.cds_unacked || self.eds_unacked || self.eds_missing
    }
}

fn is_known_type(type_url: &str) -> bool {
    PUSH_ORDER.contains(&type_url)
}

/// LDS and CDS subscribe to everything when they name nothing.
fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER_TYPE || type_url == CLUSTER_TYPE
}

/// A SotW subscription: (wildcard, explicit names).
fn subscription(type_url: &str, names: &[String]) -> (bool, BTreeSet<String>) {
    let wildcard =
        names.iter().any(|n| n == WILDCARD) || (names.is_empty() && is_wildcard_type(type_url));
    let names = names.iter().filter(|n| *n != WILDCARD).cloned().collect();
    (wildcard, names)
}

/// Keeps a stream's status entry and its node's stream count; dropping it (however the
/// stream task ends) cleans both up.
struct Registration {
    inner: Arc<Inner>,
    stream_id: u64,
    node_id: String,
}

impl Registration {
    fn new(
        inner: &Arc<Inner>,
        node: &Node,
        protocol: &'static str,
        identity: Option<String>,
    ) -> (Self, Ledger) {
        let stream_id = inner.next_stream.fetch_add(1, Ordering::Relaxed);
        let status = Arc::new(Mutex::new(ProxyStatus::new(
            stream_id,
            node,
            protocol,
            identity.clone(),
        )));
        lock(&inner.streams).insert(
            stream_id,
            StreamEntry {
                status: status.clone(),
                held: None,
            },
        );
        {
            // Events are sent under the lock so Connected and Disconnected of one node id
            // reach the controller in the order the streams opened and closed.
            let mut nodes = lock(&inner.nodes);
            let count = nodes.entry(node.id.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                inner.cache.clear_rejection(&node.id);
                if inner
                    .events
                    .send(NodeEvent::Connected {
                        node: node.clone(),
                        identity,
                    })
                    .is_err()
                {
                    tracing::debug!(node = %node.id, "no controller listening for node events");
                }
            }
        }
        inner.metrics.stream_opened();
        tracing::info!(node = %node.id, stream = stream_id, protocol, "proxy connected");
        let registration = Self {
            inner: inner.clone(),
            stream_id,
            node_id: node.id.clone(),
        };
        (
            registration,
            Ledger::new(status, inner.metrics.clone(), inner.events.clone()),
        )
    }
}

impl Registration {
    /// Lets the status pages read what the stream's client holds.
    fn expose(&self, held: SharedHeld) {
        if let Some(entry) = lock(&self.inner.streams).get_mut(&self.stream_id) {
            entry.held = Some(held);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.inner.streams).remove(&self.stream_id);
        {
            let mut nodes = lock(&self.inner.nodes);
            let last = match nodes.get_mut(&self.node_id) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                _ => true,
            };
            if last {
                nodes.remove(&self.node_id);
                let event = NodeEvent::Disconnected {
                    node_id: self.node_id.clone(),
                };
                if self.inner.events.send(event).is_err() {
                    tracing::debug!(node = %self.node_id, "no controller listening for node events");
                }
            }
        }
        self.inner.metrics.stream_closed();
        tracing::info!(node = %self.node_id, stream = self.stream_id, "proxy disconnected");
    }
}

/// Runs one stream to its end: waits for the node's snapshot, answers requests and pushes
/// snapshot changes, until the client goes away or the node is rejected.
async fn serve_stream<P: Protocol>(
    inner: Arc<Inner>,
    mut requests: requests::Requests<P::Request>,
    identity: Option<String>,
    tx: mpsc::Sender<Result<Bytes, Status>>,
) {
    let first = match requests.next().await {
        Some(Ok(request)) => request,
        Some(Err(status)) => {
            tracing::debug!(%status, "stream failed before its first request");
            return;
        }
        None => return,
    };
    let node = match P::node(&first) {
        Some(node) if !node.id.is_empty() => node.clone(),
        missing => {
            let error = match missing {
                None => StreamError::MissingNode,
                Some(_) => StreamError::MissingNodeId,
            };
            tracing::warn!(%error, "refusing stream");
            // The client may already be gone; nothing more to do either way.
            let _ = tx.send(Err(error.into())).await;
            return;
        }
    };

    // Wait for a slot: the stream is open, its client waits for the first response.
    let waiting = inner.metrics.admission_waiting();
    let Ok(permit) = inner.admission.clone().acquire_owned().await else {
        return;
    };
    drop(waiting);
    let mut admission = Some(permit);
    let admission_deadline = tokio::time::sleep(ADMISSION_HOLD_MAX);
    tokio::pin!(admission_deadline);

    let (registration, ledger) = Registration::new(&inner, &node, P::NAME, identity.clone());
    let mut state = inner.cache.subscribe(&node.id);
    let protocol = Arc::new(Mutex::new(P::new(ledger)));
    registration.expose(protocol.clone());
    let current_snapshot = |state: &tokio::sync::watch::Receiver<NodeState>| match &*state.borrow()
    {
        NodeState::Ready(snapshot) => Some(snapshot.clone()),
        _ => None,
    };
    lock(&protocol).on_request(first, Instant::now(), current_snapshot(&state).as_deref());
    let mut next_nonce = || format!("{:x}", inner.next_nonce.fetch_add(1, Ordering::Relaxed));

    loop {
        let current = state.borrow_and_update().clone();
        match current {
            NodeState::Pending => {}
            NodeState::Rejected(reason) => {
                tracing::info!(node = %node.id, stream = registration.stream_id, %reason, "ending stream of rejected node");
                let _ = tx.send(Err(Status::invalid_argument(reason))).await;
                return;
            }
            NodeState::Ready(snapshot) => {
                // Private keys only ever go to a stream authenticated as their owner.
                let snapshot = snapshot.for_identity(identity.as_deref());
                loop {
                    // Not held across the send: a status reader may want the lock meanwhile.
                    let next = lock(&protocol).next_response(&snapshot, &mut next_nonce);
                    let Some(out) = next else { break };
                    let framed = service::frame(&out.response);
                    let bytes = framed.len();
                    if tx.send(Ok(framed)).await.is_err() {
                        return;
                    }
                    inner
                        .metrics
                        .pushed(out.type_url, out.start.elapsed(), bytes);
                }
            }
        }

        if admission.is_some() && lock(&protocol).settled() {
            admission = None;
        }
        tokio::select! {
            () = &mut admission_deadline, if admission.is_some() => {
                tracing::debug!(node = %node.id, stream = registration.stream_id, "initial sync still unsettled; freeing its admission slot");
                admission = None;
            }
            request = requests.next() => match request {
                Some(Ok(request)) => {
                    let snapshot = current_snapshot(&state);
                    lock(&protocol).on_request(request, Instant::now(), snapshot.as_deref());
                }
                Some(Err(status)) => {
                    tracing::debug!(node = %node.id, stream = registration.stream_id, %status, "stream ended with error");
                    return;
                }
                None => return,
            },
            changed = state.changed() => {
                if changed.is_err() {
                    // The entry went away under us; watch a fresh one so a later `set` still
                    // reaches this stream.
                    state = inner.cache.subscribe(&node.id);
                }
            }
        }
    }
}
