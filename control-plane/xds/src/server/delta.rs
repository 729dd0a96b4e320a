//! Incremental (delta) ADS: what each client holds per resource, and the diffs to send it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::ledger::Ledger;
use super::{Outgoing, Protocol, WILDCARD, Warming, is_known_type, is_wildcard_type};
use crate::snapshot::{CLUSTER_TYPE, ENDPOINT_TYPE, PUSH_ORDER, Snapshot};

/// A response the client has not ACKed or NACKed yet.
struct InFlight {
    nonce: String,
    system_version: String,
    /// Each resource sent: name, what the client held before, the version sent.
    sent: Vec<(String, Option<String>, String)>,
}

#[derive(Default)]
struct TypeState {
    wildcard: bool,
    subscribed: BTreeSet<String>,
    /// What the client holds: name -> resource version.
    held: BTreeMap<String, String>,
    /// Resource versions the client rejected: not sent again until the snapshot changes them.
    rejected: BTreeMap<String, String>,
    /// The type version whose response was rejected. Once the type changes, rejected resources
    /// are offered again with the change, as state-of-the-world resends the whole set (a
    /// rejection may have had a cause outside the resource, such as a port in use).
    rejected_at: Option<String>,
    in_flight: Vec<InFlight>,
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
}

/// One delta stream's protocol state.
pub(crate) struct Delta {
    ledger: Ledger,
    types: BTreeMap<String, TypeState>,
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

    fn on_request(&mut self, request: DeltaDiscoveryRequest, now: Instant) {
        let type_url = request.type_url.as_str();
        if !is_known_type(type_url) {
            tracing::debug!(
                stream = self.ledger.stream_id(),
                type_url,
                "ignoring request for unsupported type"
            );
            return;
        }
        let state = match self.types.get_mut(type_url) {
            Some(state) => state,
            None => {
                self.ledger.opened(type_url);
                let state = self.types.entry(type_url.to_string()).or_default();
                // Legacy wildcard: LDS and CDS subscribe to everything when the first request
                // names nothing.
                state.wildcard =
                    is_wildcard_type(type_url) && request.resource_names_subscribe.is_empty();
                // Reconnecting clients say what they already have, so it is not sent again.
                state.held = request
                    .initial_resource_versions
                    .iter()
                    .map(|(name, version)| (name.clone(), version.clone()))
                    .collect();
                state.answer_first = true;
                state.due = Some(now);
                state
            }
        };

        for name in &request.resource_names_subscribe {
            if name == WILDCARD {
                state.wildcard = true;
            } else {
                state.subscribed.insert(name.clone());
            }
            state.due = Some(now);
        }
        for name in &request.resource_names_unsubscribe {
            if name == WILDCARD {
                state.wildcard = false;
                // Everything held only through the wildcard is dropped by the client.
                let subscribed = &state.subscribed;
                state.held.retain(|held, _| subscribed.contains(held));
                state.rejected.retain(|held, _| subscribed.contains(held));
            } else {
                state.subscribed.remove(name);
                if !state.in_scope(name) {
                    // A later re-subscription must send the resource again.
                    state.held.remove(name);
                    state.rejected.remove(name);
                }
            }
        }

        if !request.resource_names_unsubscribe.is_empty() {
            self.ledger.set_resources(type_url, state.held.len());
        }

        if request.response_nonce.is_empty() {
            return;
        }
        let Some(position) = state
            .in_flight
            .iter()
            .position(|f| f.nonce == request.response_nonce)
        else {
            tracing::debug!(
                stream = self.ledger.stream_id(),
                type_url,
                nonce = %request.response_nonce,
                "ignoring ack for unknown nonce"
            );
            return;
        };
        // Envoy answers responses in order, so older ones still in flight were superseded.
        let settled = state
            .in_flight
            .drain(..=position)
            .next_back()
            .expect("position is in range");
        match &request.error_detail {
            Some(error) => {
                for (name, previous, version) in settled.sent {
                    // Only undo our bookkeeping if nothing newer was sent since.
                    if state.held.get(&name) == Some(&version) {
                        match previous {
                            Some(previous) => state.held.insert(name.clone(), previous),
                            None => state.held.remove(&name),
                        };
                    }
                    state.rejected.insert(name, version);
                }
                state.rejected_at = Some(settled.system_version.clone());
                self.ledger.nacked(type_url, &settled.system_version, error);
                self.ledger.set_resources(type_url, state.held.len());
            }
            None => {
                // The client moved on to what we sent; older rejections no longer matter.
                for (name, _, _) in &settled.sent {
                    state.rejected.remove(name);
                }
                self.ledger.acked(type_url, &settled.system_version);
            }
        }
    }

    fn next_response(
        &mut self,
        snapshot: &Snapshot,
        published_at: Instant,
        nonce: &mut dyn FnMut() -> String,
    ) -> Option<Outgoing<DeltaDiscoveryResponse>> {
        for type_url in PUSH_ORDER {
            let Some(state) = self.types.get_mut(type_url) else {
                continue;
            };
            if state.rejected_at.is_some()
                && state.rejected_at.as_deref() != snapshot.version(type_url)
            {
                state.rejected.clear();
                state.rejected_at = None;
            }
            let state = &*state;
            let (resources, removed) = diff(state, snapshot, type_url);
            if resources.is_empty() && removed.is_empty() && !state.answer_first {
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
                for resource in &resources {
                    if let Some(service) = snapshot.eds_service_name(&resource.name) {
                        eds.held.remove(service);
                    }
                }
            }

            let state = self
                .types
                .get_mut(type_url)
                .expect("type state looked up above");
            let version = snapshot.version(type_url).unwrap_or_default().to_string();
            let nonce = nonce();
            let mut sent = Vec::with_capacity(resources.len());
            for resource in &resources {
                let previous = state
                    .held
                    .insert(resource.name.clone(), resource.version.clone());
                sent.push((resource.name.clone(), previous, resource.version.clone()));
            }
            for name in &removed {
                state.held.remove(name);
                state.rejected.remove(name);
            }
            state.in_flight.push(InFlight {
                nonce: nonce.clone(),
                system_version: version.clone(),
                sent,
            });
            state.answer_first = false;
            self.ledger
                .sent(type_url, &version, &nonce, state.held.len());
            let start = state
                .due
                .take()
                .map_or(published_at, |due| due.max(published_at));
            return Some(Outgoing {
                type_url,
                start,
                response: DeltaDiscoveryResponse {
                    system_version_info: version,
                    resources,
                    type_url: type_url.to_string(),
                    removed_resources: removed,
                    nonce,
                    ..Default::default()
                },
            });
        }
        None
    }
}

/// The resources in scope whose version differs from what the client holds (and was not
/// rejected), and the held names in scope that the snapshot no longer has.
fn diff(state: &TypeState, snapshot: &Snapshot, type_url: &str) -> (Vec<Resource>, Vec<String>) {
    let changed = |name: &str, version: &str| {
        state.held.get(name).map(String::as_str) != Some(version)
            && state.rejected.get(name).map(String::as_str) != Some(version)
    };
    let resource =
        |name: &str, version: &str, any: &envoy_types::pb::google::protobuf::Any| Resource {
            name: name.to_string(),
            version: version.to_string(),
            resource: Some(any.clone()),
            ..Default::default()
        };
    let mut resources = Vec::new();
    if state.wildcard {
        for (name, version, any) in snapshot.resources(type_url) {
            if changed(name, version) {
                resources.push(resource(name, version, any));
            }
        }
        // Explicit names beyond the wildcard are all in the snapshot's set already.
    } else {
        for name in &state.subscribed {
            if let (Some(version), Some(any)) = (
                snapshot.resource_version(type_url, name),
                snapshot.get(type_url, name),
            ) && changed(name, version)
            {
                resources.push(resource(name, version, any));
            }
        }
    }
    let removed = state
        .held
        .keys()
        .filter(|name| state.in_scope(name) && snapshot.get(type_url, name).is_none())
        .cloned()
        .collect();
    (resources, removed)
}

impl Delta {
    fn warming(&self, snapshot: &Snapshot) -> Warming {
        let cds = self.types.get(CLUSTER_TYPE);
        let eds = self.types.get(ENDPOINT_TYPE);
        // The client holds every cluster of the snapshot at its current version.
        let cds_current = cds.is_some_and(|c| {
            c.in_flight.is_empty()
                && snapshot
                    .resources(CLUSTER_TYPE)
                    .all(|(name, version, _)| c.held.get(name).map(String::as_str) == Some(version))
        });
        Warming {
            cds_unacked: cds.is_some_and(|c| !c.in_flight.is_empty()),
            eds_unacked: eds.is_some_and(|e| !e.in_flight.is_empty()),
            eds_missing: cds_current
                && eds.is_some_and(|e| {
                    !e.wildcard
                        && snapshot
                            .eds_service_names()
                            .iter()
                            .any(|name| !e.subscribed.contains(name))
                }),
        }
    }
}
