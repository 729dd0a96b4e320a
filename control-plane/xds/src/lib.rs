//! Versioned xDS snapshots and the ADS server that serves them; knows nothing of how snapshots are made.

pub mod cache;
pub mod metrics;
pub mod server;
pub mod snapshot;
pub mod status;
pub mod wire;

pub use cache::{NodeState, SnapshotCache};
pub use metrics::XdsMetrics;
pub use server::{AdsServer, NodeEvent};
pub use snapshot::{InconsistentSnapshot, Resources, Snapshot};
pub use status::{HeldConfig, HeldResource, NackStatus, ProxyStatus, TypeStatus, struct_to_json};
