//! Publishes the mesh root certificate in every namespace as a ConfigMap (Istio's
//! `istio-ca-root-cert`; here `strait-ca-root`, key `root-cert.pem`), which injected sidecars
//! mount to verify straitd. Written by the leader only; kept current when the root changes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams};
use tokio::sync::watch;

use super::lease::Leading;

/// How often namespaces are looked over while leading.
const INTERVAL: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct RootCertOptions {
    pub config_map: String,
    pub key: String,
    /// The roots, PEM.
    pub pem: String,
}

/// The ConfigMap as it must be in `namespace`.
pub fn config_map(options: &RootCertOptions, namespace: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(options.config_map.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "straitd".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(options.key.clone(), options.pem.clone())])),
        ..ConfigMap::default()
    }
}

/// Keeps the ConfigMap in every namespace while `leader` is true; forever.
pub async fn run(client: kube::Client, options: RootCertOptions, leader: watch::Receiver<bool>) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // Namespaces written with the current root; forgotten when leadership is lost.
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut leading = Leading::new(leader, INTERVAL);
    while let Some(fresh) = leading.tick().await {
        if fresh {
            done.clear();
        }
        match namespaces.list(&ListParams::default()).await {
            Ok(list) => {
                for ns in list.items {
                    let Some(name) = ns.metadata.name else {
                        continue;
                    };
                    if done.contains(&name) {
                        continue;
                    }
                    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
                    let patch = Patch::Apply(config_map(&options, &name));
                    let params = PatchParams::apply("straitd").force();
                    match api.patch(&options.config_map, &params, &patch).await {
                        Ok(_) => {
                            done.insert(name);
                        }
                        Err(e) => {
                            tracing::warn!(namespace = %name, "publishing the mesh root: {e}")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("listing namespaces to publish the mesh root: {e}"),
        }
    }
}
