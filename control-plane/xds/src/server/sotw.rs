//! State-of-the-world ADS: per-type subscriptions, ACK/NACK bookkeeping and what to send next.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::ledger::Ledger;
use super::{HeldView, Outgoing, Protocol, Warming, is_known_type, subscription};
use crate::snapshot::{CLUSTER_TYPE, ENDPOINT_TYPE, PUSH_ORDER, Snapshot, version_string};
use crate::status::HeldResource;
use crate::wire::{Any, DiscoveryResponse};

/// What one response carried, by reference: the snapshot it was cut from and the
/// subscription it answered (both shared, never copied).
#[derive(Clone)]
struct Delivered {
    version: String,
    snapshot: Arc<Snapshot>,
    wildcard: bool,
    names: Arc<BTreeSet<String>>,
}

struct Sent {
    delivered: Delivered,
    nonce: String,
    /// When the change it carries was made (for the convergence histogram).
    since: Instant,
}

struct TypeState {
    wildcard: bool,
    /// Shared with the responses that answered it, so remembering them copies nothing.
    names: Arc<BTreeSet<String>>,
    /// Set when a request calls for an answer whatever the versions (first request, new
    /// subscription); the instant it did so.
    due: Option<Instant>,
    sent: Option<Sent>,
    awaiting_ack: bool,
    /// The last response the client accepted: what it holds (for `/debug/proxies`).
    acked: Option<Delivered>,
    /// A version the client rejected: not sent again unless the subscription changes.
    rejected_version: Option<String>,
}

/// One SotW stream's protocol state.
pub(crate) struct Sotw {
    ledger: Ledger,
    types: BTreeMap<String, TypeState>,
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const NAME: &'static str = "sotw";

    fn new(ledger: Ledger) -> Self {
        Self {
            ledger,
            types: BTreeMap::new(),
        }
    }

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        request: DiscoveryRequest,
        now: Instant,
        _snapshot: Option<&Snapshot>,
    ) {
        let type_url = request.type_url.as_str();
        if !is_known_type(type_url) {
            tracing::debug!(
                stream = self.ledger.stream_id(),
                type_url,
                "ignoring request for unsupported type"
            );
            return;
        }
        let (wildcard, names) = subscription(type_url, &request.resource_names);
        let Some(state) = self.types.get_mut(type_url) else {
            // The client's first request opens the type; any nonce in it is from an earlier
            // stream and means nothing here.
            self.ledger.opened(type_url);
            self.types.insert(
                type_url.to_string(),
                TypeState {
                    wildcard,
                    names: Arc::new(names),
                    due: Some(now),
                    sent: None,
                    awaiting_ack: false,
                    acked: None,
                    rejected_version: None,
                },
            );
            return;
        };

        match (&state.sent, request.response_nonce.as_str()) {
            // A nonce before any answer on this stream comes from an earlier stream: it neither
            // ACKs nor makes the request stale.
            (None, _) => {}
            (Some(_), "") => {
                // An empty nonce after answers means the client lost track (or re-opens the
                // type): answer it again.
                state.due.get_or_insert(now);
            }
            (Some(sent), nonce) if sent.nonce != nonce => {
                tracing::debug!(
                    stream = self.ledger.stream_id(),
                    type_url,
                    nonce,
                    "ignoring request with stale nonce"
                );
                return;
            }
            (Some(sent), _) => {
                // Later requests may repeat the nonce (e.g. a new EDS subscription): only the
                // first one after a response settles it.
                if state.awaiting_ack {
                    state.awaiting_ack = false;
                    match &request.error_detail {
                        Some(error) => {
                            let names = if state.wildcard {
                                Vec::new()
                            } else {
                                state.names.iter().map(|n| n.to_string()).collect()
                            };
                            let version = &sent.delivered.version;
                            self.ledger.nacked(type_url, version, error, names);
                            state.rejected_version = Some(version.clone());
                        }
                        None => {
                            self.ledger.acked(
                                type_url,
                                &sent.delivered.version,
                                sent.since.elapsed(),
                            );
                            state.acked = Some(sent.delivered.clone());
                            state.rejected_version = None;
                        }
                    }
                }
            }
        }

        if state.wildcard != wildcard || *state.names != names {
            state.wildcard = wildcard;
            state.names = Arc::new(names);
            state.due.get_or_insert(now);
        }
    }

    fn next_response(
        &mut self,
        snapshot: &Arc<Snapshot>,
        nonce: &mut dyn FnMut() -> String,
    ) -> Option<Outgoing<DiscoveryResponse>> {
        let published_at = snapshot.origin();
        for type_url in PUSH_ORDER {
            let Some(state) = self.types.get(type_url) else {
                continue;
            };
            // One response of a type at a time: a new version waits for the ACK of the last
            // one and goes out then, with whatever else changed meanwhile. A request that
            // makes an answer due (a new subscription) still gets one.
            if state.awaiting_ack && state.due.is_none() {
                continue;
            }
            let version = snapshot.version(type_url).unwrap_or_default();
            let new_version = state
                .sent
                .as_ref()
                .is_none_or(|s| s.delivered.version != version)
                && state.rejected_version.as_deref() != Some(version);
            if state.due.is_none() && !new_version {
                continue;
            }
            if Warming::holds(type_url) && self.warming(snapshot).hold() {
                continue;
            }

            // Envoy re-warms every cluster whose definition changed and finishes only on an
            // EDS response, even one identical to what it has: follow a CDS change with EDS.
            let clusters_changed = type_url == CLUSTER_TYPE
                && state
                    .sent
                    .as_ref()
                    .is_some_and(|s| s.delivered.version != version);
            if clusters_changed
                && let Some(eds) = self.types.get_mut(ENDPOINT_TYPE)
                && eds.sent.is_some()
            {
                eds.due.get_or_insert(published_at);
            }

            let state = self
                .types
                .get_mut(type_url)
                .expect("type state looked up above");
            let any = |e: &crate::snapshot::Encoded| Any {
                type_url: type_url.to_string(),
                value: e.bytes.clone(),
            };
            let resources: Vec<Any> = if state.wildcard {
                snapshot.resources(type_url).map(|(_, e)| any(e)).collect()
            } else {
                state
                    .names
                    .iter()
                    .filter_map(|name| snapshot.get(type_url, name).map(any))
                    .collect()
            };
            let nonce = nonce();
            self.ledger.sent(type_url, version, &nonce, resources.len());
            let start = state
                .due
                .take()
                .map_or(published_at, |due| due.max(published_at));
            state.sent = Some(Sent {
                delivered: Delivered {
                    version: version.to_string(),
                    snapshot: snapshot.clone(),
                    wildcard: state.wildcard,
                    names: state.names.clone(),
                },
                nonce: nonce.clone(),
                since: start,
            });
            state.awaiting_ack = true;
            return Some(Outgoing {
                type_url,
                start,
                response: DiscoveryResponse {
                    version_info: version.to_string(),
                    resources,
                    type_url: type_url.to_string(),
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
                .all(|t| t.sent.is_some() && !t.awaiting_ack && t.due.is_none())
    }
}

impl Sotw {
    fn warming(&self, snapshot: &Snapshot) -> Warming {
        let cds = self.types.get(CLUSTER_TYPE);
        let eds = self.types.get(ENDPOINT_TYPE);
        let cds_current = cds.is_some_and(|c| {
            c.acked.as_ref().map(|a| a.version.as_str()) == snapshot.version(CLUSTER_TYPE)
                && !c.awaiting_ack
        });
        Warming {
            cds_unacked: cds.is_some_and(|c| c.awaiting_ack),
            eds_unacked: eds.is_some_and(|e| e.awaiting_ack),
            // Envoy asks for the endpoints of clusters it accepted; until it has, a listener or
            // route naming one of them would point at a cluster still warming.
            eds_missing: cds_current
                && eds.is_some_and(|e| {
                    !e.wildcard
                        && snapshot
                            .eds_service_names()
                            .any(|name| !e.names.contains(&**name))
                }),
        }
    }
}

impl HeldView for Sotw {
    fn held(&self, type_url: &str) -> Option<Vec<HeldResource>> {
        let acked = self.types.get(type_url)?.acked.as_ref()?;
        let resource = |name: &std::sync::Arc<str>, e: &crate::snapshot::Encoded| HeldResource {
            name: name.clone(),
            version: version_string(e.version),
            bytes: Some(e.bytes.clone()),
        };
        let snapshot = &acked.snapshot;
        Some(if acked.wildcard {
            snapshot
                .resources(type_url)
                .map(|(name, e)| resource(name, e))
                .collect()
        } else {
            acked
                .names
                .iter()
                .filter_map(|name| {
                    let shared = snapshot.name(type_url, name)?;
                    Some(resource(shared, snapshot.get(type_url, name)?))
                })
                .collect()
        })
    }
}
