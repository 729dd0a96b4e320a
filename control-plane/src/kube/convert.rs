//! Kubernetes objects into the model's objects, without I/O.
//!
//! A Service with its endpoints (EndpointSlices, or Endpoints on servers without
//! `discovery.k8s.io/v1`) and the Pods behind them becomes one ServiceEntry with inline
//! endpoints, as Istio's Kubernetes registry sees it: host `NAME.NAMESPACE.svc.DOMAIN`, the
//! ClusterIPs as its addresses (the VIPs captured traffic is routed by), each ready endpoint
//! with its Pod's labels (subsets) and service account (identity). Istio's own kinds are read
//! by the same loader as files. Either way the result goes through the one validator.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use strait_model::{Object, ValidationError, loader};

/// A Pod as the registry needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
}

impl PodInfo {
    pub fn of(pod: &Pod) -> PodInfo {
        PodInfo {
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            service_account: pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_string()),
        }
    }
}

/// One ready endpoint of a Service: an address, the Pod behind it (if the endpoint names
/// one), and its ports by the Service port's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointAddress {
    pub ip: String,
    pub pod: Option<String>,
    pub ports: BTreeMap<String, u16>,
}

/// The ready endpoints of `Endpoints` (core/v1).
pub fn from_endpoints(endpoints: &Endpoints) -> Vec<EndpointAddress> {
    let mut out = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        let ports: BTreeMap<String, u16> = subset
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    u16::try_from(p.port).ok()?,
                ))
            })
            .collect();
        for a in subset.addresses.iter().flatten() {
            out.push(EndpointAddress {
                ip: a.ip.clone(),
                pod: pod_ref(a.target_ref.as_ref()),
                ports: ports.clone(),
            });
        }
    }
    out
}

/// The ready endpoints of one EndpointSlice (discovery/v1).
pub fn from_slice(slice: &EndpointSlice) -> Vec<EndpointAddress> {
    let ports: BTreeMap<String, u16> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.name.clone().unwrap_or_default(),
                u16::try_from(p.port?).ok()?,
            ))
        })
        .collect();
    let mut out = Vec::new();
    for e in &slice.endpoints {
        // Ready unknown counts as ready, as the API documents.
        let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        if !ready {
            continue;
        }
        for ip in &e.addresses {
            out.push(EndpointAddress {
                ip: ip.clone(),
                pod: pod_ref(e.target_ref.as_ref()),
                ports: ports.clone(),
            });
        }
    }
    out
}

fn pod_ref(r: Option<&k8s_openapi::api::core::v1::ObjectReference>) -> Option<String> {
    r.filter(|r| r.kind.as_deref() == Some("Pod"))
        .and_then(|r| r.name.clone())
}

/// The Service a slice belongs to (`kubernetes.io/service-name`).
pub fn slice_service(slice: &EndpointSlice) -> Option<String> {
    slice
        .metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/service-name")
        .cloned()
}

/// The name the ServiceEntry made from Service `name` gets: its own, with a prefix that keeps
/// it apart from a user's ServiceEntry of the same name.
/// The namespaces a Service is visible in, as Istio reads it (`.`, `*`, `~` or names).
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

pub fn service_entry_name(service: &str) -> String {
    format!("k8s-svc-{service}")
}

/// Istio's protocol for a Service port: `appProtocol` when it names one, else none (the
/// model reads the port name's prefix, and an unknown protocol is TCP under capture).
fn app_protocol(app: Option<&str>) -> Option<&'static str> {
    Some(match app?.to_ascii_lowercase().as_str() {
        "http" | "kubernetes.io/ws" => "HTTP",
        "http2" | "kubernetes.io/h2c" => "HTTP2",
        "grpc" => "GRPC",
        "grpc-web" => "GRPC-WEB",
        "https" | "kubernetes.io/wss" => "HTTPS",
        "tls" => "TLS",
        "tcp" => "TCP",
        "mongo" => "MONGO",
        "mysql" => "MYSQL",
        "redis" => "REDIS",
        _ => return None,
    })
}

/// The ServiceEntry for `service` with `endpoints` (ready ones), Pods looked up by name in
/// `pods`; `None` for a Service Strait has nothing to route to (no ports).
pub fn service_entry(
    service: &Service,
    endpoints: &[EndpointAddress],
    pods: &BTreeMap<String, PodInfo>,
    cluster_domain: &str,
) -> Option<Result<Object, ValidationError>> {
    let name = service.metadata.name.as_deref()?;
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let spec = service.spec.as_ref()?;
    let service_ports = spec.ports.as_deref().unwrap_or_default();
    if service_ports.is_empty() {
        return None;
    }
    let host = format!("{name}.{namespace}.svc.{cluster_domain}");
    let mut ports = Vec::new();
    // The Service port's name, as endpoints name their ports ("" for a lone unnamed one).
    let mut endpoint_port_names = Vec::new();
    for p in service_ports {
        // UDP and SCTP are not proxied.
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        let port_name = p
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("port-{}", p.port));
        let mut port = json!({"number": p.port, "name": port_name});
        if let Some(proto) = app_protocol(p.app_protocol.as_deref()) {
            port["protocol"] = json!(proto);
        }
        ports.push(port);
        endpoint_port_names.push((p.name.clone().unwrap_or_default(), port_name));
    }
    if ports.is_empty() {
        return None;
    }
    let external = spec.type_.as_deref() == Some("ExternalName");
    let addresses: Vec<String> = if external {
        Vec::new()
    } else {
        spec.cluster_ips
            .clone()
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| !ip.is_empty() && ip != "None")
            .collect()
    };
    let endpoints: Vec<Value> = if external {
        spec.external_name
            .iter()
            .map(|n| json!({"address": n}))
            .collect()
    } else {
        endpoints
            .iter()
            .map(|e| {
                let pod = e.pod.as_ref().and_then(|p| pods.get(p));
                let ports: BTreeMap<&str, u16> = endpoint_port_names
                    .iter()
                    .filter_map(|(ep_name, se_name)| {
                        e.ports.get(ep_name).map(|port| (se_name.as_str(), *port))
                    })
                    .collect();
                let mut entry = json!({"address": e.ip, "ports": ports});
                if let Some(pod) = pod {
                    entry["labels"] = json!(pod.labels);
                    entry["serviceAccount"] = json!(pod.service_account);
                }
                entry
            })
            .collect()
    };
    let mut document = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": service_entry_name(name), "namespace": namespace},
        "spec": {
            "hosts": [host],
            "addresses": addresses,
            "ports": ports,
            "location": "MESH_INTERNAL",
            "resolution": if external { "DNS" } else { "STATIC" },
            "endpoints": endpoints,
        },
    });
    // Istio's annotation: the namespaces the Service is visible in, comma-separated.
    if let Some(export_to) = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXPORT_TO_ANNOTATION))
    {
        let values: Vec<&str> = export_to
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        document["spec"]["exportTo"] = json!(values);
    }
    let origin = format!("Kubernetes Service {namespace}/{name}");
    Some(loader::parse_value(document, &origin).and_then(|o| {
        o.ok_or_else(|| ValidationError {
            origin: origin.clone(),
            object: None,
            path: String::new(),
            message: "empty document".into(),
        })
    }))
}

/// One of Istio's custom resources (as JSON from the API server) into the model's object,
/// through the loader files use: what the server adds (status, server-side metadata) is left
/// out, the rest must be what Strait accepts.
pub fn istio_object(value: &Value) -> Result<Object, ValidationError> {
    let kind = value["kind"].as_str().unwrap_or_default();
    let meta = &value["metadata"];
    let namespace = meta["namespace"].as_str().unwrap_or("default");
    let name = meta["name"].as_str().unwrap_or_default();
    let mut metadata = json!({"name": name, "namespace": namespace});
    for key in ["labels", "annotations"] {
        if let Some(v) = meta.get(key).filter(|v| !v.is_null()) {
            metadata[key] = v.clone();
        }
    }
    let mut document = json!({
        "apiVersion": value["apiVersion"],
        "kind": kind,
        "metadata": metadata,
    });
    if let Some(spec) = value.get("spec") {
        document["spec"] = spec.clone();
    }
    let origin = format!("Kubernetes {kind} {namespace}/{name}");
    loader::parse_value(document, &origin)?.ok_or_else(|| ValidationError {
        origin,
        object: None,
        path: String::new(),
        message: "empty object".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn service(yaml: &str) -> Service {
        serde_yaml_ng::from_str(yaml).expect("a Service")
    }

    const REVIEWS: &str = "
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports:
  - {name: http, port: 9080, targetPort: 8080}
  - {name: grpc-api, port: 9090, appProtocol: grpc}
  - {name: dns, port: 53, protocol: UDP}
";

    #[test]
    fn the_export_to_annotation_limits_where_a_service_is_seen() {
        let svc = service(&REVIEWS.replace(
            "metadata: {name: reviews, namespace: shop}",
            "metadata: {name: reviews, namespace: shop, annotations: {networking.istio.io/exportTo: '., ops'}}",
        ));
        let object = service_entry(&svc, &[], &BTreeMap::new(), "cluster.local")
            .unwrap()
            .unwrap();
        assert_eq!(object.raw["spec"]["exportTo"], json!([".", "ops"]));
        let model = strait_model::Model::build([&object]).unwrap();
        let reviews = &model.services["reviews.shop.svc.cluster.local"];
        assert!(reviews.export_to.includes("shop") && reviews.export_to.includes("ops"));
        assert!(!reviews.export_to.includes("default"));
        // A bad value is refused with the field it became.
        let svc = service(&REVIEWS.replace(
            "metadata: {name: reviews, namespace: shop}",
            "metadata: {name: reviews, namespace: shop, annotations: {networking.istio.io/exportTo: '*, ops'}}",
        ));
        let object = service_entry(&svc, &[], &BTreeMap::new(), "cluster.local")
            .unwrap()
            .unwrap();
        let err = strait_model::Model::build([&object])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.exportTo") && err.contains("Kubernetes Service shop/reviews"),
            "{err}"
        );
    }

    #[test]
    fn a_service_with_endpoints_becomes_a_service_entry() {
        let svc = service(REVIEWS);
        let endpoints: Endpoints = serde_yaml_ng::from_str(
            "
metadata: {name: reviews, namespace: shop}
subsets:
- addresses:
  - {ip: 10.1.0.5, targetRef: {kind: Pod, name: reviews-v1-abc}}
  - {ip: 10.1.0.6}
  notReadyAddresses: [{ip: 10.1.0.7}]
  ports: [{name: http, port: 8080}, {name: grpc-api, port: 9090}]
",
        )
        .unwrap();
        let pods = BTreeMap::from([(
            "reviews-v1-abc".to_string(),
            PodInfo {
                labels: BTreeMap::from([("version".into(), "v1".into())]),
                service_account: "bookinfo-reviews".into(),
            },
        )]);
        let object = service_entry(&svc, &from_endpoints(&endpoints), &pods, "cluster.local")
            .unwrap()
            .unwrap();
        assert_eq!(object.id.to_string(), "ServiceEntry shop/k8s-svc-reviews");
        assert_eq!(object.origin, "Kubernetes Service shop/reviews");
        let spec = &object.raw["spec"];
        assert_eq!(spec["hosts"], json!(["reviews.shop.svc.cluster.local"]));
        assert_eq!(spec["addresses"], json!(["10.96.0.10"]));
        assert_eq!(
            spec["ports"],
            json!([
                {"number": 9080, "name": "http"},
                {"number": 9090, "name": "grpc-api", "protocol": "GRPC"}
            ]),
            "UDP is left out; appProtocol is the protocol"
        );
        assert_eq!(
            spec["endpoints"],
            json!([
                {"address": "10.1.0.5", "ports": {"http": 8080, "grpc-api": 9090},
                 "labels": {"version": "v1"}, "serviceAccount": "bookinfo-reviews"},
                {"address": "10.1.0.6", "ports": {"http": 8080, "grpc-api": 9090}},
            ]),
            "ready addresses only, with their Pod's labels and identity"
        );
    }

    #[test]
    fn slices_skip_endpoints_that_are_not_ready() {
        let slice: EndpointSlice = serde_yaml_ng::from_str(
            "
metadata: {name: reviews-x1, namespace: shop, labels: {kubernetes.io/service-name: reviews}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.1.0.5], conditions: {ready: true}, targetRef: {kind: Pod, name: p1}}
- {addresses: [10.1.0.6], conditions: {ready: false}}
- {addresses: [10.1.0.8]}
",
        )
        .unwrap();
        assert_eq!(slice_service(&slice).as_deref(), Some("reviews"));
        let ips: Vec<String> = from_slice(&slice).into_iter().map(|e| e.ip).collect();
        assert_eq!(ips, ["10.1.0.5", "10.1.0.8"]);
    }

    #[test]
    fn an_unnamed_port_and_a_headless_service() {
        let svc = service(
            "
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, ports: [{port: 5432}]}
",
        );
        let endpoints = [EndpointAddress {
            ip: "10.1.0.9".into(),
            pod: None,
            ports: BTreeMap::from([(String::new(), 5432)]),
        }];
        let object = service_entry(&svc, &endpoints, &BTreeMap::new(), "cluster.local")
            .unwrap()
            .unwrap();
        assert_eq!(object.raw["spec"]["addresses"], json!([]));
        assert_eq!(
            object.raw["spec"]["ports"],
            json!([{"number": 5432, "name": "port-5432"}])
        );
        assert_eq!(
            object.raw["spec"]["endpoints"][0]["ports"],
            json!({"port-5432": 5432})
        );
    }

    #[test]
    fn istio_objects_lose_server_fields_and_keep_their_errors() {
        let vs = json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "shop", "uid": "u-1",
                         "resourceVersion": "42", "managedFields": []},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]},
            "status": {"conditions": []},
        });
        let object = istio_object(&vs).unwrap();
        assert_eq!(object.id.to_string(), "VirtualService shop/reviews");
        assert_eq!(object.origin, "Kubernetes VirtualService shop/reviews");
        let mut bad = vs.clone();
        bad["spec"]["htp"] = json!([]);
        let e = istio_object(&bad).unwrap_err();
        assert!(e.to_string().contains("htp"), "{e}");
        assert!(e.to_string().contains("shop/reviews"), "{e}");
    }
}
