//! Incremental (delta) ADS: what each client holds per resource, and the diffs to send it.
//!
//! A stream remembers what its client holds by reference: the parts of the snapshot it was
//! last brought up to date with, plus the few names that differ from them. A part that
//! replaced one the client holds knows which names changed, so an endpoint change costs each
//! stream a look at that one name, not at every resource of the mesh.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::ledger::Ledger;
use super::{HeldView, Outgoing, Protocol, WILDCARD, Warming, is_wildcard_type};
use crate::snapshot::{
    CLUSTER_TYPE, ENDPOINT_TYPE, Encoded, PUSH_ORDER, Part, Snapshot, parse_version, type_index,
    version_string,
};
use crate::status::HeldResource;
use crate::wire::{Any, DeltaDiscoveryResponse, Resource};

/// What a client holds of one type.
#[derive(Clone, Default)]
struct Held {
    /// Parts of the snapshot the client was last brought up to date with: it holds every
    /// resource of these in its subscription, at the part's version...
    base: Vec<Arc<Part>>,
    /// ...except these: held at another version (`Some`) or not held (`None`).
    exceptions: HashMap<Arc<str>, Option<u64>>,
    /// The encodings of exceptions held at a version `base` does not have (the client
    /// rejected their successors), so the status pages can show what it holds.
    kept: HashMap<Arc<str>, Encoded>,
}

impl Held {
    fn version(&self, index: usize, name: &str) -> Option<u64> {
        match self.exceptions.get(name) {
            Some(exception) => *exception,
            None => self
                .base
                .iter()
                .find_map(|p| p.table(index).get(name).map(|e| e.version)),
        }
    }

    /// The encoding of what the client holds of `name`, if this stream still has it.
    fn encoded(&self, index: usize, name: &str) -> Option<&Encoded> {
        let version = self.version(index, name)?;
        self.kept
            .get(name)
            .filter(|e| e.version == version)
            .or_else(|| {
                self.base
                    .iter()
                    .find_map(|p| p.table(index).get(name))
                    .filter(|e| e.version == version)
            })
    }

    /// The client holds exactly the snapshot's resources of the type (a pointer comparison
    /// of parts; `false` means "not known", not "no").
    fn is(&self, snapshot: &Snapshot, index: usize) -> bool {
        self.exceptions.is_empty()
            && self.base.iter().map(Arc::as_ptr).eq(snapshot
                .parts()
                .iter()
                .filter(|p| !p.table(index).is_empty())
                .map(Arc::as_ptr))
    }

    /// Every name held in `scope`, with its version.
    fn materialize(
        &self,
        index: usize,
        scope: impl Fn(&str) -> bool,
    ) -> HashMap<Arc<str>, Option<u64>> {
        let mut all: HashMap<Arc<str>, Option<u64>> = HashMap::new();
        for part in &self.base {
            for (name, e) in part.table(index).iter() {
                if scope(name) {
                    all.entry(name.clone()).or_insert(Some(e.version));
                }
            }
        }
        for (name, v) in &self.exceptions {
            all.insert(name.clone(), *v);
        }
        all.retain(|_, v| v.is_some());
        all
    }
}

/// A response the client has not ACKed or NACKed yet (at most one per type).
struct InFlight {
    nonce: String,
    system_version: String,
    /// What the client held before it, restored if it is rejected.
    previous: Held,
    /// Each resource sent and its version.
    sent: Vec<(Arc<str>, u64)>,
    /// When the change it carries was made (for the convergence histogram).
    since: Instant,
}

#[derive(Default)]
struct TypeState {
    index: usize,
    wildcard: bool,
    subscribed: BTreeSet<Arc<str>>,
    held: Held,
    /// Resource versions the client rejected: not sent again until the snapshot changes them.
    rejected: HashMap<Arc<str>, u64>,
    /// The type version whose response was rejected. Once the type changes, rejected resources
    /// are offered again with the change, as state-of-the-world resends the whole set (a
    /// rejection may have had a cause outside the resource, such as a port in use).
    rejected_at: Option<String>,
    in_flight: Option<InFlight>,
    /// The first request is always answered, even with nothing in it: Envoy's initial fetch
    /// of the type waits for a response.
    answer_first: bool,
    /// When a request last widened the subscription (for push latency).
    due: Option<Instant>,
}

impl TypeState {
    fn in_scope(&self, name: &str) -> bool {
        self.wildcard || self.subscribed.contains(name)
    }

    /// What the client holds through its explicit subscription, spelled out name by name
    /// (for the rare changes of the wildcard, after which the held parts no longer say it).
    fn spell_out_explicit(&mut self) {
        let subscribed = &self.subscribed;
        let held = self
            .held
            .materialize(self.index, |n| subscribed.contains(n));
        let kept = held
            .keys()
            .filter_map(|n| Some((n.clone(), self.held.encoded(self.index, n)?.clone())))
            .collect();
        self.held = Held {
            base: Vec::new(),
            exceptions: held,
            kept,
        };
    }

    /// A name comes into or leaves the subscription: whatever the base says, the client does
    /// not hold it (now, or when it comes back).
    fn forget(&mut self, name: Arc<str>) {
        self.held.exceptions.insert(name.clone(), None);
        self.rejected.remove(&name);
        if let Some(in_flight) = &mut self.in_flight {
            in_flight.previous.exceptions.insert(name, None);
        }
    }
}

/// One delta stream's protocol state.
pub(crate) struct Delta {
    ledger: Ledger,
    types: BTreeMap<&'static str, TypeState>,
}

/// The snapshot's copy of a name when it has one, so streams share names instead of each
/// keeping its own.
fn shared_name(snapshot: Option<&Snapshot>, type_url: &str, name: &str) -> Arc<str> {
    snapshot
        .and_then(|s| s.name(type_url, name))
        .cloned()
        .unwrap_or_else(|| Arc::from(name))
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";

    fn new(ledger: Ledger) -> Self {
        Self {
            ledger,
            types: BTreeMap::new(),
        }
    }

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        now: Instant,
        snapshot: Option<&Snapshot>,
    ) {
        let Some(index) = type_index(&request.type_url) else {
            tracing::debug!(
                stream = self.ledger.stream_id(),
                type_url = request.type_url,
                "ignoring request for unsupported type"
            );
            return;
        };
        let type_url = PUSH_ORDER[index];
        let state = match self.types.get_mut(type_url) {
            Some(state) => state,
            None => {
                self.ledger.opened(type_url);
                let state = self.types.entry(type_url).or_default();
                state.index = index;
                // Legacy wildcard: LDS and CDS subscribe to everything when the first request
                // names nothing.
                state.wildcard =
                    is_wildcard_type(type_url) && request.resource_names_subscribe.is_empty();
                // Reconnecting clients say what they already have, so it is not sent again.
                state.held.exceptions = request
                    .initial_resource_versions
                    .iter()
                    .map(|(name, version)| {
                        (
                            shared_name(snapshot, type_url, name),
                            Some(parse_version(version)),
                        )
                    })
                    .collect();
                state.answer_first = true;
                state.due = Some(now);
                state
            }
        };

        for name in &request.resource_names_subscribe {
            if name == WILDCARD {
                if !state.wildcard {
                    // Names not held so far come into scope.
                    state.spell_out_explicit();
                }
                state.wildcard = true;
            } else {
                let name = shared_name(snapshot, type_url, name);
                if !state.in_scope(&name) {
                    let held = request
                        .initial_resource_versions
                        .get(&*name)
                        .map(|v| parse_version(v));
                    state.forget(name.clone());
                    state.held.exceptions.insert(name.clone(), held);
                }
                state.subscribed.insert(name);
            }
            state.due = Some(now);
        }
        for name in &request.resource_names_unsubscribe {
            if name == WILDCARD {
                if state.wildcard {
                    // Everything held only through the wildcard is dropped by the client.
                    state.spell_out_explicit();
                    let subscribed = &state.subscribed;
                    state.rejected.retain(|held, _| subscribed.contains(held));
                }
                state.wildcard = false;
            } else if let Some(name) = state.subscribed.take(name.as_str())
                && !state.in_scope(&name)
            {
                // A later re-subscription must send the resource again.
                state.forget(name);
            }
        }

        if !request.resource_names_unsubscribe.is_empty() {
            let held = held_count(state, snapshot);
            self.ledger.set_resources(type_url, held);
        }

        if request.response_nonce.is_empty() {
            return;
        }
        let matches = state
            .in_flight
            .as_ref()
            .is_some_and(|f| f.nonce == request.response_nonce);
        if !matches {
            tracing::debug!(
                stream = self.ledger.stream_id(),
                type_url,
                nonce = %request.response_nonce,
                "ignoring ack for unknown nonce"
            );
            return;
        }
        let settled = state.in_flight.take().expect("matched above");
        match &request.error_detail {
            Some(error) => {
                state.held = settled.previous;
                let mut names = Vec::with_capacity(settled.sent.len());
                for (name, version) in settled.sent {
                    names.push(name.to_string());
                    state.rejected.insert(name, version);
                }
                state.rejected_at = Some(settled.system_version.clone());
                self.ledger
                    .nacked(type_url, &settled.system_version, error, names);
                let held = held_count(state, snapshot);
                self.ledger.set_resources(type_url, held);
            }
            None => {
                // The client moved on to what we sent; older rejections no longer matter.
                if !state.rejected.is_empty() {
                    for (name, _) in &settled.sent {
                        state.rejected.remove(name);
                    }
                }
                self.ledger
                    .acked(type_url, &settled.system_version, settled.since.elapsed());
            }
        }
    }

    fn next_response(
        &mut self,
        snapshot: &Arc<Snapshot>,
        nonce: &mut dyn FnMut() -> String,
    ) -> Option<Outgoing<DeltaDiscoveryResponse>> {
        for type_url in PUSH_ORDER {
            let Some(state) = self.types.get_mut(type_url) else {
                continue;
            };
            // One response of a type at a time: later changes wait for its ACK and go out
            // together in the next one.
            if state.in_flight.is_some() {
                continue;
            }
            if state.rejected_at.is_some()
                && state.rejected_at.as_deref() != snapshot.version(type_url)
            {
                state.rejected.clear();
                state.rejected_at = None;
            }
            let diff = diff(state, snapshot);
            if diff.changed.is_empty() && diff.removed.is_empty() && !state.answer_first {
                // Nothing to send, but the client is up to date with these parts now.
                rebase(state, snapshot, diff.skipped);
                continue;
            }
            if Warming::holds(type_url) && self.warming(snapshot).hold() {
                continue;
            }

            // Envoy re-warms every cluster it is sent and finishes only on an EDS response,
            // even one identical to what it has: forget that it holds those assignments so
            // they follow the clusters.
            if type_url == CLUSTER_TYPE
                && let Some(eds) = self.types.get_mut(ENDPOINT_TYPE)
            {
                for name in diff.changed.keys() {
                    if let Some(service) = snapshot.eds_service_name(name)
                        && eds.in_scope(service)
                    {
                        eds.forget(service.clone());
                    }
                }
            }

            let state = self
                .types
                .get_mut(type_url)
                .expect("type state looked up above");
            let version = snapshot.version(type_url).unwrap_or_default().to_string();
            let nonce = nonce();
            let previous = state.held.clone();
            rebase(state, snapshot, diff.skipped);
            let sent: Vec<(Arc<str>, u64)> = diff
                .changed
                .iter()
                .map(|(name, e)| (name.clone(), e.version))
                .collect();
            let resources: Vec<Resource> = diff
                .changed
                .into_iter()
                .map(|(name, e)| Resource {
                    name: name.to_string(),
                    version: version_string(e.version),
                    resource: Some(Any {
                        type_url: type_url.to_string(),
                        value: e.bytes,
                    }),
                })
                .collect();
            let removed: Vec<String> = diff.removed.iter().map(|n| n.to_string()).collect();
            for name in &diff.removed {
                state.rejected.remove(name);
            }
            let start = state
                .due
                .take()
                .map_or(snapshot.origin(), |due| due.max(snapshot.origin()));
            state.in_flight = Some(InFlight {
                nonce: nonce.clone(),
                system_version: version.clone(),
                previous,
                sent,
                since: start,
            });
            state.answer_first = false;
            let held = held_count(state, Some(snapshot));
            self.ledger.sent(type_url, &version, &nonce, held);
            return Some(Outgoing {
                type_url,
                start,
                response: DeltaDiscoveryResponse {
                    system_version_info: version,
                    resources,
                    type_url: type_url.to_string(),
                    removed_resources: removed,
                    nonce,
                },
            });
        }
        None
    }

    fn settled(&self) -> bool {
        !self.types.is_empty()
            && self
                .types
                .values()
                .all(|t| t.in_flight.is_none() && !t.answer_first)
    }
}

/// How many resources the client holds, for the status page: everything of the snapshot
/// under a wildcard, else the names it subscribed to. O(1): it is counted on every push.
fn held_count(state: &TypeState, snapshot: Option<&Snapshot>) -> usize {
    if state.wildcard {
        snapshot.map_or(0, |s| s.len(PUSH_ORDER[state.index]))
    } else {
        state.subscribed.len()
    }
}

/// After a response computed from `snapshot`: the client holds the snapshot's version of
/// everything in scope, except the names skipped because the client rejected that version.
fn rebase(state: &mut TypeState, snapshot: &Snapshot, skipped: Vec<Arc<str>>) {
    let index = state.index;
    let mut kept = HashMap::new();
    let exceptions = skipped
        .into_iter()
        .map(|name| {
            let held = state.held.version(index, &name);
            if let Some(e) = state.held.encoded(index, &name) {
                kept.insert(name.clone(), e.clone());
            }
            (name, held)
        })
        .collect();
    state.held = Held {
        base: snapshot
            .parts()
            .iter()
            .filter(|p| !p.table(index).is_empty())
            .cloned()
            .collect(),
        exceptions,
        kept,
    };
}

struct Diff {
    /// In scope and at another version than the client holds (and not rejected).
    changed: BTreeMap<Arc<str>, Encoded>,
    /// Held, in scope, and gone from the snapshot.
    removed: BTreeSet<Arc<str>>,
    /// In scope, changed, but at the version the client rejected.
    skipped: Vec<Arc<str>>,
}

/// What to send: looks only at the names a part changed since the part the client holds,
/// when it knows them, else at every resource in scope.
fn diff(state: &TypeState, snapshot: &Snapshot) -> Diff {
    let index = state.index;
    let mut out = Diff {
        changed: BTreeMap::new(),
        removed: BTreeSet::new(),
        skipped: Vec::new(),
    };
    let consider = |out: &mut Diff, name: &Arc<str>, e: &Encoded| {
        if !state.in_scope(name) || state.held.version(index, name) == Some(e.version) {
            return;
        }
        if state.rejected.get(name) == Some(&e.version) {
            out.skipped.push(name.clone());
        } else {
            out.changed.insert(name.clone(), e.clone());
        }
    };
    for part in snapshot.parts() {
        let table = part.table(index);
        if table.is_empty() {
            continue;
        }
        let known = state
            .held
            .base
            .iter()
            .find_map(|held| part.changed_since(held, index));
        match known {
            Some(changed) => {
                for name in changed {
                    if let Some(e) = table.get(name) {
                        consider(&mut out, name, e);
                    }
                }
            }
            None if state.wildcard || table.len() <= state.subscribed.len() => {
                for (name, e) in table.iter() {
                    consider(&mut out, name, e);
                }
            }
            None => {
                for name in &state.subscribed {
                    if let Some(e) = table.get(name) {
                        consider(&mut out, name, e);
                    }
                }
            }
        }
    }
    for name in state.held.exceptions.keys() {
        if let Some(e) = snapshot.get(PUSH_ORDER[index], name) {
            consider(&mut out, name, e);
        }
    }

    // Removals: held names in scope that no part of the snapshot has.
    let type_url = PUSH_ORDER[index];
    let gone = |out: &mut Diff, name: &Arc<str>| {
        if state.in_scope(name)
            && snapshot.get(type_url, name).is_none()
            && state.held.version(index, name).is_some()
        {
            out.removed.insert(name.clone());
        }
    };
    for held in &state.held.base {
        let successor = snapshot
            .parts()
            .iter()
            .find_map(|p| p.changed_since(held, index));
        match successor {
            Some(changed) => {
                for name in changed {
                    gone(&mut out, name);
                }
            }
            None => {
                for (name, _) in held.table(index).iter() {
                    gone(&mut out, name);
                }
            }
        }
    }
    for name in state.held.exceptions.keys() {
        gone(&mut out, name);
    }
    out
}

impl HeldView for Delta {
    /// What the client accepted: what it holds now, or before the response still in flight.
    fn held(&self, type_url: &str) -> Option<Vec<HeldResource>> {
        let state = self.types.get(type_url)?;
        let held = state
            .in_flight
            .as_ref()
            .map_or(&state.held, |f| &f.previous);
        let mut names: Vec<(Arc<str>, u64)> = held
            .materialize(state.index, |name| state.in_scope(name))
            .into_iter()
            .filter_map(|(name, version)| Some((name, version?)))
            .collect();
        names.sort();
        Some(
            names
                .into_iter()
                .map(|(name, version)| {
                    // A version a reconnecting client reported may be one this server never
                    // had.
                    let bytes = held.encoded(state.index, &name).map(|e| e.bytes.clone());
                    HeldResource {
                        name,
                        version: version_string(version),
                        bytes,
                    }
                })
                .collect(),
        )
    }
}

impl Delta {
    fn warming(&self, snapshot: &Snapshot) -> Warming {
        let cds = self.types.get(CLUSTER_TYPE);
        let eds = self.types.get(ENDPOINT_TYPE);
        // The client holds every cluster of the snapshot at its current version.
        let cds_current = cds.is_some_and(|c| {
            c.in_flight.is_none()
                && (c.held.is(snapshot, c.index)
                    || snapshot
                        .resources(CLUSTER_TYPE)
                        .all(|(name, e)| c.held.version(c.index, name) == Some(e.version)))
        });
        Warming {
            cds_unacked: cds.is_some_and(|c| c.in_flight.is_some()),
            eds_unacked: eds.is_some_and(|e| e.in_flight.is_some()),
            eds_missing: cds_current
                && eds.is_some_and(|e| {
                    !e.wildcard
                        && snapshot
                            .eds_service_names()
                            .any(|name| !e.subscribed.contains(name))
                }),
        }
    }
}
