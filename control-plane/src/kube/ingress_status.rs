//! Writes the ingress gateway's addresses into `status.loadBalancer` of every Ingress Strait
//! serves, as Istio's ingress status syncer does, so `kubectl get ingress` shows an ADDRESS
//! and tools that wait for one (cert-manager's HTTP-01 solver, external-dns, Argo CD's health
//! checks) go on. Written by the leader only.
//!
//! The addresses are those of the ingress gateway's Service (`--ingress-service`, Istio's
//! `meshConfig.ingressService`): its `status.loadBalancer.ingress` when a load balancer has
//! given it one; else its `spec.externalIPs`; else the addresses of the nodes its ready pods
//! run on (their `status.hostIP`), as Istio falls back to for a NodePort gateway. An Ingress
//! that is no longer Strait's keeps what it has: its new controller writes its own.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::{
    Ingress, IngressClass, IngressLoadBalancerIngress, IngressLoadBalancerStatus,
};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;

use super::ingress::{Classes, is_ours};
use super::lease::Leading;

/// How often the gateway Service and the Ingresses are looked over while leading.
const INTERVAL: Duration = Duration::from_secs(1);

/// The ingress gateway's Service, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressService {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for IngressService {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
                Ok(IngressService {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!("{s:?}: expected NAMESPACE/NAME")),
        }
    }
}

/// The addresses Ingresses served by the gateway behind `service` are reachable at; `pods`
/// are the pods of the Service's namespace (those its selector picks are used). Sorted and
/// without duplicates, so that an unchanged gateway gives an unchanged status.
pub fn addresses(service: &Service, pods: &[Pod]) -> Vec<IngressLoadBalancerIngress> {
    let balanced: Vec<IngressLoadBalancerIngress> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|i| i.ip.is_some() || i.hostname.is_some())
        .map(|i| IngressLoadBalancerIngress {
            ip: i.ip.clone(),
            hostname: i.hostname.clone(),
            ..IngressLoadBalancerIngress::default()
        })
        .collect();
    if !balanced.is_empty() {
        return sorted(balanced);
    }
    let spec = service.spec.as_ref();
    let external: Vec<IngressLoadBalancerIngress> = spec
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|ip| by_ip(ip))
        .collect();
    if !external.is_empty() {
        return sorted(external);
    }
    // A selector-less Service selects no pod (its endpoints are managed by hand).
    let Some(selector) = spec
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return Vec::new();
    };
    let nodes = pods
        .iter()
        .filter(|pod| {
            let labels = pod.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .filter(|pod| is_ready(pod))
        .filter_map(|pod| pod.status.as_ref()?.host_ip.as_deref())
        .map(by_ip)
        .collect();
    sorted(nodes)
}

fn by_ip(ip: &str) -> IngressLoadBalancerIngress {
    IngressLoadBalancerIngress {
        ip: Some(ip.to_string()),
        ..IngressLoadBalancerIngress::default()
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn sorted(list: Vec<IngressLoadBalancerIngress>) -> Vec<IngressLoadBalancerIngress> {
    let set: BTreeSet<(Option<String>, Option<String>)> =
        list.into_iter().map(|i| (i.ip, i.hostname)).collect();
    set.into_iter()
        .map(|(ip, hostname)| IngressLoadBalancerIngress {
            ip,
            hostname,
            ..IngressLoadBalancerIngress::default()
        })
        .collect()
}

/// Keeps the status of Strait's Ingresses current while `leader` is true; forever.
pub async fn run(client: kube::Client, service: IngressService, leader: watch::Receiver<bool>) {
    let services: Api<Service> = Api::namespaced(client.clone(), &service.namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &service.namespace);
    let ingresses: Api<Ingress> = Api::all(client.clone());
    let classes: Api<IngressClass> = Api::all(client.clone());
    let mut leading = Leading::new(leader, INTERVAL);
    let mut missing_logged = false;
    while leading.tick().await.is_some() {
        let gateway = match services.get_opt(&service.name).await {
            Ok(Some(gateway)) => {
                missing_logged = false;
                gateway
            }
            Ok(None) => {
                if !missing_logged {
                    tracing::warn!(
                        service = %format!("{}/{}", service.namespace, service.name),
                        "the ingress gateway's Service (--ingress-service) does not exist; Ingress status is not written"
                    );
                    missing_logged = true;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!("reading the ingress gateway's Service: {e}");
                continue;
            }
        };
        let listed = async {
            let pods = pods.list(&ListParams::default()).await?;
            let classes = classes.list(&ListParams::default()).await?;
            let ingresses = ingresses.list(&ListParams::default()).await?;
            Ok::<_, kube::Error>((pods.items, classes.items, ingresses.items))
        };
        let (pods, class_list, ingress_list) = match listed.await {
            Ok(lists) => lists,
            Err(e) => {
                tracing::warn!("listing for Ingress status: {e}");
                continue;
            }
        };
        let want = IngressLoadBalancerStatus {
            ingress: Some(addresses(&gateway, &pods)),
        };
        let classes = Classes::new(&class_list);
        for ingress in ingress_list.iter().filter(|i| is_ours(i, &classes)) {
            let (Some(name), Some(namespace)) = (
                ingress.metadata.name.as_deref(),
                ingress.metadata.namespace.as_deref(),
            ) else {
                continue;
            };
            let has = ingress
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref());
            let normalized = has.map(|lb| IngressLoadBalancerStatus {
                ingress: Some(sorted(lb.ingress.clone().unwrap_or_default())),
            });
            if normalized.as_ref() == Some(&want)
                || (has.is_none() && want.ingress.as_ref().is_some_and(Vec::is_empty))
            {
                continue;
            }
            let api: Api<Ingress> = Api::namespaced(client.clone(), namespace);
            let patch = Patch::Merge(json!({"status": {"loadBalancer": want}}));
            if let Err(e) = api
                .patch_status(name, &PatchParams::default(), &patch)
                .await
            {
                tracing::warn!(ingress = %format!("{namespace}/{name}"), "writing status: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::Value;

    fn service(value: Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    fn pod(name: &str, labels: Value, host_ip: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {
                "hostIP": host_ip,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            },
        }))
        .unwrap()
    }

    fn ips(list: &[IngressLoadBalancerIngress]) -> Vec<String> {
        list.iter()
            .map(|i| i.ip.clone().or(i.hostname.clone()).unwrap())
            .collect()
    }

    #[test]
    fn a_load_balancers_addresses_come_first() {
        let svc = service(json!({
            "spec": {"selector": {"istio": "ingressgateway"}, "externalIPs": ["10.1.0.9"]},
            "status": {"loadBalancer": {"ingress": [
                {"hostname": "lb.example.com"}, {"ip": "10.1.0.2"}, {"ip": "10.1.0.2"},
            ]}},
        }));
        let pods = [pod(
            "gw",
            json!({"istio": "ingressgateway"}),
            "10.2.0.1",
            true,
        )];
        assert_eq!(ips(&addresses(&svc, &pods)), ["lb.example.com", "10.1.0.2"]);
    }

    #[test]
    fn then_external_ips_then_the_nodes_of_ready_gateway_pods() {
        let external = service(json!({
            "spec": {"selector": {"istio": "ingressgateway"}, "externalIPs": ["10.1.0.9", "10.1.0.8"]},
        }));
        assert_eq!(ips(&addresses(&external, &[])), ["10.1.0.8", "10.1.0.9"]);

        let node_port = service(json!({
            "spec": {"type": "NodePort", "selector": {"istio": "ingressgateway"}},
        }));
        let pods = [
            pod(
                "gw-1",
                json!({"istio": "ingressgateway", "x": "y"}),
                "10.2.0.2",
                true,
            ),
            pod("gw-2", json!({"istio": "ingressgateway"}), "10.2.0.1", true),
            pod("gw-3", json!({"istio": "ingressgateway"}), "10.2.0.1", true),
            pod(
                "starting",
                json!({"istio": "ingressgateway"}),
                "10.2.0.5",
                false,
            ),
            pod("app", json!({"app": "web"}), "10.2.0.6", true),
        ];
        assert_eq!(ips(&addresses(&node_port, &pods)), ["10.2.0.1", "10.2.0.2"]);
        let selectorless = service(json!({"spec": {"type": "ClusterIP"}}));
        assert!(addresses(&selectorless, &pods).is_empty());
    }

    #[test]
    fn the_service_is_named_namespace_slash_name() {
        let parsed: IngressService = "istio-system/istio-ingressgateway".parse().unwrap();
        assert_eq!(parsed.namespace, "istio-system");
        assert_eq!(parsed.name, "istio-ingressgateway");
        assert!("istio-ingressgateway".parse::<IngressService>().is_err());
        assert!("/x".parse::<IngressService>().is_err());
    }
}
