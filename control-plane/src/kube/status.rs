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
use crate::rejections::{Rejection, Rejections};
use crate::store::ConfigStore;
use crate::store::kube::KubeObjectStatus;

/// Names of objects the source derives from Kubernetes' own kinds.
pub const DERIVED_PREFIXES: [&str; 2] = ["k8s-svc-", "k8s-ingress-"];

/// How often the writer looks for changed statuses while leading.
const INTERVAL: Duration = Duration::from_millis(500);

/// Proxies' rejections shown in one status, at most.
const REJECTIONS_SHOWN: usize = 20;

/// The `status` for one object's standing and the proxies' rejections of what it made. An
/// object straitd accepted but a proxy rejected is not reconciled: the proxy runs without it.
pub fn status_for(standing: &KubeObjectStatus, rejections: &[Rejection]) -> Value {
    match standing {
        KubeObjectStatus::Accepted { warnings } if !rejections.is_empty() => {
            let shown = &rejections[..rejections.len().min(REJECTIONS_SHOWN)];
            let mut message = format!("accepted, but {}", shown[0].describe());
            if rejections.len() > 1 {
                message.push_str(&format!(
                    " ({} rejections in all, in validationMessages)",
                    rejections.len()
                ));
            }
            let mut messages: Vec<Value> = shown
                .iter()
                .map(|r| {
                    json!({
                        "level": "ERROR",
                        "type": {"code": "STRAIT0003", "name": "ProxyRejection"},
                        "description": r.describe(),
                    })
                })
                .collect();
            messages.extend(warnings.iter().map(|w| {
                json!({
                    "level": "WARNING",
                    "type": {"code": "STRAIT0001", "name": "ValidationWarning"},
                    "description": w.to_string(),
                })
            }));
            json!({
                "conditions": [{
                    "type": "Reconciled",
                    "status": "False",
                    "reason": "ProxyRejected",
                    "message": message,
                }],
                "validationMessages": messages,
            })
        }
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
pub async fn run(
    client: kube::Client,
    store: ConfigStore,
    rejections: Rejections,
    leader: watch::Receiver<bool>,
) {
    let apis: BTreeMap<Kind, ApiResource> = istio_resources().into_iter().collect();
    let mut written: BTreeMap<ObjectId, Value> = BTreeMap::new();
    let mut leading = Leading::new(leader, INTERVAL);
    while let Some(fresh) = leading.tick().await {
        if fresh {
            written.clear();
        }
        let rejected = rejections.by_object();
        for (id, standing) in store.kube_statuses() {
            // Objects made from Services and Ingresses have no object of their own to write to.
            let Some(resource) = apis.get(&id.kind) else {
                continue;
            };
            if DERIVED_PREFIXES.iter().any(|p| id.name.starts_with(p)) {
                continue;
            }
            let status = status_for(
                &standing,
                rejected.get(&id).map(Vec::as_slice).unwrap_or_default(),
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxys_rejection_unreconciles_an_accepted_object() {
        let accepted = KubeObjectStatus::Accepted {
            warnings: Vec::new(),
        };
        assert_eq!(
            status_for(&accepted, &[])["conditions"][0]["status"],
            "True"
        );
        let rejection = Rejection {
            node_id: "gw-1.default".into(),
            type_url: "type.googleapis.com/envoy.config.listener.v3.Listener".into(),
            version: "v7".into(),
            error: "cannot bind 0.0.0.0:80: permission denied".into(),
            resources: vec!["0.0.0.0_80".into()],
            objects: Vec::new(),
        };
        let status = status_for(&accepted, &[rejection.clone(), rejection]);
        let condition = &status["conditions"][0];
        assert_eq!(condition["status"], "False");
        assert_eq!(condition["reason"], "ProxyRejected");
        let message = condition["message"].as_str().unwrap();
        assert!(
            message.starts_with("accepted, but proxy gw-1.default rejected Listener 0.0.0.0_80 (version v7): cannot bind")
                && message.ends_with("(2 rejections in all, in validationMessages)"),
            "{message}"
        );
        assert_eq!(status["validationMessages"].as_array().unwrap().len(), 2);
    }
}
