//! Writes each Istio object's standing into its `status`, as istiod does: the leader replica
//! only, whenever what the store says about an object changes.
//!
//! `status.conditions` holds one `Reconciled` condition (True: in force; False: refused, with
//! the validator's errors as the message, saying whether an earlier version stays in force),
//! and `status.validationMessages` the warnings (as `istioctl analyze` reports them).

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use strait_model::{Kind, ObjectId, ValidationErrors};
use tokio::sync::watch;

use super::lease::Leading;
use super::source::istio_resources;
use crate::store::ConfigStore;
use crate::store::kube::KubeObjectStatus;

/// Names of objects the source derives from Kubernetes' own kinds.
pub const DERIVED_PREFIXES: [&str; 2] = ["k8s-svc-", "k8s-ingress-"];

/// How often the writer looks for changed statuses while leading.
const INTERVAL: Duration = Duration::from_millis(500);

/// The `status` for one object's standing.
pub fn status_for(standing: &KubeObjectStatus) -> Value {
    match standing {
        KubeObjectStatus::Accepted { warnings } => json!({
            "conditions": [{
                "type": "Reconciled",
                "status": "True",
                "reason": "Accepted",
                "message": "in force",
            }],
            "validationMessages": warnings.iter().map(|w| json!({
                "level": "WARNING",
                "type": {"code": "STRAIT0001", "name": "ValidationWarning"},
                "description": w.to_string(),
            })).collect::<Vec<_>>(),
        }),
        KubeObjectStatus::Refused {
            errors,
            last_good_in_force,
        } => {
            let why = ValidationErrors(errors.clone()).to_string();
            let message = if *last_good_in_force {
                format!("refused: {why}; the last good version stays in force")
            } else {
                format!("refused: {why}")
            };
            json!({
                "conditions": [{
                    "type": "Reconciled",
                    "status": "False",
                    "reason": "Invalid",
                    "message": message,
                }],
                "validationMessages": errors.iter().map(|e| json!({
                    "level": "ERROR",
                    "type": {"code": "STRAIT0002", "name": "ValidationError"},
                    "description": e.to_string(),
                })).collect::<Vec<_>>(),
            })
        }
    }
}

/// Writes statuses while `leader` is true; forever.
pub async fn run(client: kube::Client, store: ConfigStore, leader: watch::Receiver<bool>) {
    let apis: BTreeMap<Kind, ApiResource> = istio_resources().into_iter().collect();
    let mut written: BTreeMap<ObjectId, Value> = BTreeMap::new();
    let mut leading = Leading::new(leader, INTERVAL);
    while let Some(fresh) = leading.tick().await {
        if fresh {
            written.clear();
        }
        for (id, standing) in store.kube_statuses() {
            // Objects made from Services and Ingresses have no object of their own to write to.
            let Some(resource) = apis.get(&id.kind) else {
                continue;
            };
            if DERIVED_PREFIXES.iter().any(|p| id.name.starts_with(p)) {
                continue;
            }
            let status = status_for(&standing);
            if written.get(&id) == Some(&status) {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &id.namespace, resource);
            let patch = Patch::Merge(json!({"status": status}));
            match api
                .patch_status(&id.name, &PatchParams::default(), &patch)
                .await
            {
                Ok(_) => {
                    written.insert(id, status);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    // Deleted meanwhile, or the CRD has no status subresource.
                    written.insert(id, status);
                }
                Err(e) => tracing::warn!(object = %id, "writing status: {e}"),
            }
        }
    }
}
