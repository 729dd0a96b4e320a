//! Kubernetes Ingresses into a Gateway and VirtualServices, without I/O, as Istio's ingress
//! controller converts them.
//!
//! An Ingress is Strait's when the class it names (`spec.ingressClassName`, or the older
//! annotation `kubernetes.io/ingress.class`, which wins when both are set) has an IngressClass
//! whose `spec.controller` is `strait.io/ingress-controller` or Istio's
//! `istio.io/ingress-controller`, or, without such an IngressClass, is called `strait` or
//! `istio`; an Ingress naming no class is Strait's when Strait's IngressClass is the
//! cluster's default (`ingressclass.kubernetes.io/is-default-class: "true"`). It becomes:
//!
//! - a Gateway `k8s-ingress-NAME` in the Ingress's namespace, selecting the ingress gateway
//!   (`istio: ingressgateway` unless configured), with one HTTP server on port 80 for the
//!   Ingress's hosts (`*` for a rule without a host, and for the default backend), and one
//!   HTTPS server on port 443 per `spec.tls` entry, for its hosts (`*` when it names none),
//!   with `credentialName: secretName` (so, as in Istio, the Secret is looked up in the
//!   ingress gateway's namespace);
//! - one VirtualService `k8s-ingress-NAME-I` per host, bound to that Gateway, with a route per
//!   path in the order Kubernetes gives precedence (the longest path first; Exact before
//!   Prefix for the same path) and the default backend, if any, as the last, catch-all route.
//!
//! `pathType: Prefix` matches path elements, as Kubernetes defines it: `/foo` (or `/foo/`)
//! matches `/foo` and `/foo/bar`, not `/foobar` — an exact match on `/foo` or a prefix match on
//! `/foo/`. `ImplementationSpecific` is a plain prefix. A backend is a Service:
//! `NAME.NAMESPACE.svc.DOMAIN` at `port.number`, or at the Service port named `port.name`.
//!
//! A `spec.tls` entry without a `secretName` is skipped with a warning. Resource backends are
//! refused.
//!
//! Everything made goes through the loader, so the one validator sees it as any other object.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use serde_json::{Value, json};
use strait_model::{Object, ValidationError, ValidationErrors, loader};

/// The class names Strait serves when no IngressClass of that name says otherwise.
pub const CLASSES: [&str; 2] = ["strait", "istio"];

/// The `spec.controller` of IngressClasses Strait serves: its own, and Istio's.
pub const CONTROLLERS: [&str; 2] = [
    "strait.io/ingress-controller",
    "istio.io/ingress-controller",
];

/// The annotation that makes an IngressClass the cluster's default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// The annotation that named the class before `spec.ingressClassName`.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// The prefix of every object made from an Ingress, which keeps them apart from a user's.
pub const NAME_PREFIX: &str = "k8s-ingress-";

/// The Gateway's port for plain HTTP, as in Istio.
const HTTP_PORT: u16 = 80;
const HTTPS_PORT: u16 = 443;

/// The class an Ingress names: the annotation, else `spec.ingressClassName`.
pub fn class(ingress: &Ingress) -> Option<&str> {
    ingress
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CLASS_ANNOTATION))
        .or_else(|| ingress.spec.as_ref()?.ingress_class_name.as_ref())
        .map(String::as_str)
}

/// Which Ingress classes are Strait's, from the cluster's IngressClass objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Classes {
    /// IngressClass names and whether their controller is Strait's (or Istio's).
    known: BTreeMap<String, bool>,
    /// An IngressClass of Strait's is the cluster's default: Ingresses without a class are ours.
    default_is_ours: bool,
}

impl Classes {
    pub fn new<'a>(classes: impl IntoIterator<Item = &'a IngressClass>) -> Classes {
        let mut out = Classes::default();
        for class in classes {
            let Some(name) = class.metadata.name.clone() else {
                continue;
            };
            let ours = class
                .spec
                .as_ref()
                .and_then(|s| s.controller.as_deref())
                .is_some_and(|c| CONTROLLERS.contains(&c));
            let default = class
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true");
            out.default_is_ours |= ours && default;
            out.known.insert(name, ours);
        }
        out
    }

    /// Whether the class named `name` is Strait's: its IngressClass's controller says so,
    /// else (no such IngressClass) its name is one of [`CLASSES`].
    fn serves(&self, name: &str) -> bool {
        match self.known.get(name) {
            Some(ours) => *ours,
            None => CLASSES.contains(&name),
        }
    }
}

/// Whether Strait serves `ingress`: the class it names is Strait's, or it names none and
/// Strait's IngressClass is the cluster's default (else it is the default controller's).
pub fn is_ours(ingress: &Ingress, classes: &Classes) -> bool {
    match class(ingress) {
        Some(name) => classes.serves(name),
        None => classes.default_is_ours,
    }
}

/// The name of the Gateway made from Ingress `name`.
pub fn gateway_name(ingress: &str) -> String {
    format!("{NAME_PREFIX}{ingress}")
}

/// What conversion needs besides the Ingress.
#[derive(Clone, Copy, Debug)]
pub struct IngressOptions<'a> {
    /// The ingress gateway's labels: the Gateway's selector.
    pub selector: &'a BTreeMap<String, String>,
    /// Service hosts are `NAME.NAMESPACE.svc.DOMAIN`.
    pub cluster_domain: &'a str,
}

/// An Ingress's objects, and what of it is not served.
#[derive(Clone, Debug)]
pub struct Converted {
    /// The Gateway first, then the VirtualServices; empty when the Ingress routes nothing.
    pub objects: Vec<Object>,
    /// Parts of the Ingress left out (for the log).
    pub warnings: Vec<ValidationError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathKind {
    Exact,
    /// Kubernetes' element-wise prefix.
    Prefix,
    /// A plain string prefix.
    ImplementationSpecific,
}

/// One path of a rule, ready to be a route.
struct PathRoute {
    kind: PathKind,
    /// Normalized: no trailing '/' on a Prefix path other than `/`.
    path: String,
    destination: Value,
}

impl PathRoute {
    fn matches(&self) -> Value {
        match self.kind {
            PathKind::Exact => json!([{"uri": {"exact": self.path}}]),
            PathKind::Prefix if self.path == "/" => json!([{"uri": {"prefix": "/"}}]),
            PathKind::Prefix => json!([
                {"uri": {"exact": self.path}},
                {"uri": {"prefix": format!("{}/", self.path)}},
            ]),
            PathKind::ImplementationSpecific => json!([{"uri": {"prefix": self.path}}]),
        }
    }
}

/// Converts an Ingress Strait serves (see [`is_ours`]); `service` looks up a Service of the
/// Ingress's namespace by name (to resolve a port by name). Errors name the Ingress and the
/// field; nothing is made then.
pub fn convert<'s>(
    ingress: &Ingress,
    service: impl Fn(&str) -> Option<&'s Service>,
    options: IngressOptions<'_>,
) -> Result<Converted, ValidationErrors> {
    let namespace = ingress.metadata.namespace.as_deref().unwrap_or("default");
    let name = ingress.metadata.name.as_deref().unwrap_or_default();
    let origin = format!("Kubernetes Ingress {namespace}/{name}");
    let problem = |path: &str, message: String| ValidationError {
        origin: origin.clone(),
        object: None,
        path: path.to_string(),
        message,
    };
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let backend =
        |b: &IngressBackend, path: &str, errors: &mut Vec<ValidationError>| match destination(
            b,
            namespace,
            &service,
            options.cluster_domain,
        ) {
            Ok(d) => Some(d),
            Err((field, message)) => {
                let at = if field.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}.{field}")
                };
                errors.push(problem(&at, message));
                None
            }
        };

    let default_spec = Default::default();
    let spec = ingress.spec.as_ref().unwrap_or(&default_spec);
    // Hosts in the order they first appear, with their paths.
    let mut hosts: Vec<(String, Vec<PathRoute>)> = Vec::new();
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        let host = rule
            .host
            .as_deref()
            .filter(|h| !h.is_empty())
            .unwrap_or("*")
            .to_ascii_lowercase();
        let Some(http) = &rule.http else {
            continue;
        };
        let at = match hosts.iter().position(|(h, _)| *h == host) {
            Some(at) => at,
            None => {
                hosts.push((host, Vec::new()));
                hosts.len() - 1
            }
        };
        for (j, p) in http.paths.iter().enumerate() {
            let path_at = format!("spec.rules[{i}].http.paths[{j}]");
            let kind = match p.path_type.as_str() {
                "Exact" => Some(PathKind::Exact),
                "Prefix" => Some(PathKind::Prefix),
                "ImplementationSpecific" => Some(PathKind::ImplementationSpecific),
                other => {
                    errors.push(problem(
                        &format!("{path_at}.pathType"),
                        format!(
                            "unknown pathType {other:?}: Exact, Prefix or ImplementationSpecific"
                        ),
                    ));
                    None
                }
            };
            let path = p.path.clone().filter(|p| !p.is_empty());
            if let Some(path) = &path
                && !path.starts_with('/')
            {
                errors.push(problem(
                    &format!("{path_at}.path"),
                    format!("{path:?} must start with '/'"),
                ));
                continue;
            }
            let path = path.unwrap_or_else(|| "/".to_string());
            let path = match kind {
                Some(PathKind::Prefix) if path != "/" => {
                    let trimmed = path.trim_end_matches('/');
                    if trimmed.is_empty() { "/" } else { trimmed }.to_string()
                }
                _ => path,
            };
            let destination = backend(&p.backend, &format!("{path_at}.backend"), &mut errors);
            if let (Some(kind), Some(destination)) = (kind, destination) {
                hosts[at].1.push(PathRoute {
                    kind,
                    path,
                    destination,
                });
            }
        }
    }
    let default = spec
        .default_backend
        .as_ref()
        .and_then(|b| backend(b, "spec.defaultBackend", &mut errors));
    // Istio's ingress controller: one SIMPLE HTTPS server on 443 per TLS entry.
    let mut https_servers = Vec::new();
    for (i, tls) in spec.tls.iter().flatten().enumerate() {
        let Some(secret) = tls.secret_name.as_deref().filter(|s| !s.is_empty()) else {
            warnings.push(problem(
                &format!("spec.tls[{i}].secretName"),
                "no Secret named: this entry serves no HTTPS".to_string(),
            ));
            continue;
        };
        let hosts = match tls.hosts.as_deref() {
            None | Some([]) => vec!["*".to_string()],
            Some(hosts) => hosts.to_vec(),
        };
        https_servers.push(json!({
            "port": {"number": HTTPS_PORT, "protocol": "HTTPS", "name": format!("https-{i}")},
            "hosts": hosts,
            "tls": {"mode": "SIMPLE", "credentialName": secret},
        }));
    }
    if !errors.is_empty() {
        return Err(ValidationErrors(errors));
    }
    if default.is_some() && !hosts.iter().any(|(h, _)| h == "*") {
        hosts.push(("*".to_string(), Vec::new()));
    }
    hosts.retain(|(_, paths)| !paths.is_empty() || default.is_some());
    if hosts.is_empty() {
        return Ok(Converted {
            objects: Vec::new(),
            warnings,
        });
    }

    let gateway = gateway_name(name);
    let mut server_hosts: Vec<&str> = hosts.iter().map(|(h, _)| h.as_str()).collect();
    // Broadest first: the gateway binds a VirtualService's host to the first server host that
    // intersects it, which must then be the host itself or one that covers it.
    server_hosts.sort_by_key(|h| breadth(h));
    let mut servers = vec![json!({
        "port": {"number": HTTP_PORT, "protocol": "HTTP", "name": "http"},
        "hosts": server_hosts,
    })];
    servers.extend(https_servers);
    let mut documents = vec![json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": gateway, "namespace": namespace},
        "spec": {
            "selector": options.selector,
            "servers": servers,
        },
    })];
    for (i, (host, mut paths)) in hosts.into_iter().enumerate() {
        // Kubernetes: the longest matching path wins, Exact before Prefix for the same path.
        paths.sort_by_key(|p| (std::cmp::Reverse(p.path.len()), p.kind != PathKind::Exact));
        let mut http: Vec<Value> = paths
            .iter()
            .map(|p| json!({"match": p.matches(), "route": [{"destination": p.destination}]}))
            .collect();
        if let Some(d) = &default {
            http.push(json!({"route": [{"destination": d}]}));
        }
        documents.push(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": format!("{gateway}-{i}"), "namespace": namespace},
            "spec": {
                "hosts": [host],
                "gateways": [format!("{namespace}/{gateway}")],
                "http": http,
            },
        }));
    }
    let mut objects = Vec::new();
    for document in documents {
        match loader::parse_value(document, &origin) {
            Ok(Some(o)) => objects.push(o),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(ValidationErrors(errors));
    }
    Ok(Converted { objects, warnings })
}

/// Sorts hosts broadest first: `*`, then wildcards with fewer labels, then names.
fn breadth(host: &str) -> (u8, usize) {
    match host {
        "*" => (0, 0),
        h if h.starts_with("*.") => (1, h.split('.').count()),
        _ => (2, 0),
    }
}

/// A backend's destination, or the field (under the backend) that is wrong and why.
fn destination<'s>(
    b: &IngressBackend,
    namespace: &str,
    service: &impl Fn(&str) -> Option<&'s Service>,
    cluster_domain: &str,
) -> Result<Value, (&'static str, String)> {
    if b.resource.is_some() {
        return Err((
            "resource",
            "resource backends are not supported: Strait's gateway routes to Services; use \
             service (name and port)"
                .to_string(),
        ));
    }
    let Some(svc) = &b.service else {
        return Err(("", "a service backend is required".to_string()));
    };
    let mut destination = json!({"host": format!("{}.{namespace}.svc.{cluster_domain}", svc.name)});
    let port = svc.port.as_ref();
    let number = match (
        port.and_then(|p| p.number),
        port.and_then(|p| p.name.as_deref()),
    ) {
        (Some(n), _) => Some(
            u16::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or(("service.port.number", format!("{n} is not a port number")))?,
        ),
        (None, Some(port_name)) if !port_name.is_empty() => {
            let Some(s) = service(&svc.name) else {
                return Err((
                    "service.port.name",
                    format!(
                        "Service {namespace}/{} does not exist, so its port {port_name:?} cannot be resolved",
                        svc.name
                    ),
                ));
            };
            let ports = s.spec.as_ref().and_then(|s| s.ports.as_ref());
            let found = ports
                .into_iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(port_name))
                .and_then(|p| u16::try_from(p.port).ok());
            Some(found.ok_or((
                "service.port.name",
                format!(
                    "Service {namespace}/{} has no port named {port_name:?}",
                    svc.name
                ),
            ))?)
        }
        // No port: the Service's only one (the validator says if it has several).
        _ => None,
    };
    if let Some(n) = number {
        destination["port"] = json!({"number": n});
    }
    Ok(destination)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use strait_model::{Kind, Model};

    fn ingress(yaml: &str) -> Ingress {
        serde_yaml_ng::from_str(yaml).expect("an Ingress")
    }

    fn selector() -> BTreeMap<String, String> {
        BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())])
    }

    fn web_services() -> BTreeMap<String, Service> {
        ["web", "api", "fallback"]
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let svc: Service = serde_yaml_ng::from_str(&format!(
                    "metadata: {{name: {name}, namespace: shop}}\n\
                     spec: {{clusterIP: 10.96.0.{i}, ports: [{{name: http, port: 8080}}, {{name: admin, port: 9000}}]}}"
                ))
                .unwrap();
                (name.to_string(), svc)
            })
            .collect()
    }

    fn convert_with(
        ing: &Ingress,
        services: &BTreeMap<String, Service>,
    ) -> Result<Converted, ValidationErrors> {
        let selector = selector();
        convert(
            ing,
            |name| services.get(name),
            IngressOptions {
                selector: &selector,
                cluster_domain: "cluster.local",
            },
        )
    }

    /// The objects' specs by name.
    fn specs(c: &Converted) -> BTreeMap<String, Value> {
        c.objects
            .iter()
            .map(|o| (o.id.name.clone(), o.raw["spec"].clone()))
            .collect()
    }

    fn host(name: &str) -> String {
        format!("{name}.shop.svc.cluster.local")
    }

    const SHOP: &str = "
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  ingressClassName: strait
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 8080}}}}
      - {path: /api/, pathType: Prefix, backend: {service: {name: api, port: {name: http}}}}
      - {path: /api/health, pathType: Exact, backend: {service: {name: api, port: {number: 9000}}}}
      - {path: /api, pathType: Exact, backend: {service: {name: web, port: {number: 8080}}}}
      - {path: /static, pathType: ImplementationSpecific, backend: {service: {name: web, port: {number: 8080}}}}
  - http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 8080}}}}
";

    #[test]
    fn an_ingress_becomes_a_gateway_and_a_virtual_service_per_host() {
        let c = convert_with(&ingress(SHOP), &web_services()).unwrap();
        let ids: Vec<String> = c.objects.iter().map(|o| o.id.to_string()).collect();
        assert_eq!(
            ids,
            [
                "Gateway shop/k8s-ingress-shop",
                "VirtualService shop/k8s-ingress-shop-0",
                "VirtualService shop/k8s-ingress-shop-1",
            ]
        );
        assert!(
            c.objects
                .iter()
                .all(|o| o.origin == "Kubernetes Ingress shop/shop")
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let specs = specs(&c);
        assert_eq!(
            specs["k8s-ingress-shop"],
            json!({
                "selector": {"istio": "ingressgateway"},
                "servers": [{"port": {"number": 80, "protocol": "HTTP", "name": "http"},
                             "hosts": ["*", "shop.example.com"]}],
            }),
            "one HTTP server for the hosts, `*` for the rule without one (first: it is broadest)"
        );
        let vs = &specs["k8s-ingress-shop-0"];
        assert_eq!(vs["hosts"], json!(["shop.example.com"]));
        assert_eq!(vs["gateways"], json!(["shop/k8s-ingress-shop"]));
        let dest = |name: &str, port: u16| json!([{"destination": {"host": host(name), "port": {"number": port}}}]);
        assert_eq!(
            vs["http"],
            json!([
                {"match": [{"uri": {"exact": "/api/health"}}], "route": dest("api", 9000)},
                {"match": [{"uri": {"prefix": "/static"}}], "route": dest("web", 8080)},
                {"match": [{"uri": {"exact": "/api"}}], "route": dest("web", 8080)},
                {"match": [{"uri": {"exact": "/api"}}, {"uri": {"prefix": "/api/"}}], "route": dest("api", 8080)},
                {"match": [{"uri": {"prefix": "/"}}], "route": dest("web", 8080)},
            ]),
            "longest path first, Exact before Prefix for the same path; Prefix is element-wise; \
             ImplementationSpecific a plain prefix; a port by name is the Service's port"
        );
        assert_eq!(specs["k8s-ingress-shop-1"]["hosts"], json!(["*"]));
    }

    #[test]
    fn prefix_semantics_are_kubernetes_element_wise() {
        // Through the model: the routes made validate, and match as Kubernetes says.
        let c = convert_with(&ingress(SHOP), &web_services()).unwrap();
        let vs = &specs(&c)["k8s-ingress-shop-0"];
        let route_for = |path: &str| -> Option<Value> {
            vs["http"].as_array().unwrap().iter().find_map(|r| {
                let hit = r["match"].as_array().is_none_or(|ms| {
                    ms.iter()
                        .any(|m| match (&m["uri"]["exact"], &m["uri"]["prefix"]) {
                            (Value::String(e), _) => path == e,
                            (_, Value::String(p)) => path.starts_with(p.as_str()),
                            _ => false,
                        })
                });
                hit.then(|| r["route"][0]["destination"].clone())
            })
        };
        let api = json!({"host": host("api"), "port": {"number": 8080}});
        let web = json!({"host": host("web"), "port": {"number": 8080}});
        assert_eq!(route_for("/api/x"), Some(api.clone()));
        assert_eq!(route_for("/api/"), Some(api));
        assert_eq!(
            route_for("/apix"),
            Some(web.clone()),
            "/api does not match /apix"
        );
        assert_eq!(route_for("/api"), Some(web.clone()), "Exact /api wins");
        assert_eq!(route_for("/"), Some(web));
    }

    #[test]
    fn the_objects_validate_with_the_services_they_name() {
        let services = web_services();
        let mut objects = convert_with(&ingress(SHOP), &services).unwrap().objects;
        for svc in services.values() {
            let se =
                crate::kube::convert::service_entry(svc, &[], &BTreeMap::new(), "cluster.local")
                    .unwrap()
                    .unwrap();
            objects.push(se);
        }
        let model = Model::build(&objects).expect("the Ingress's objects validate");
        assert_eq!(model.gateways.len(), 1);
        assert_eq!(model.virtual_services.len(), 2);
    }

    #[test]
    fn the_default_backend_is_the_last_route_of_every_host() {
        let c = convert_with(
            &ingress(
                "
metadata: {name: shop, namespace: shop, annotations: {kubernetes.io/ingress.class: istio}}
spec:
  defaultBackend: {service: {name: fallback, port: {name: http}}}
  rules:
  - host: '*.example.com'
    http:
      paths:
      - {path: /a, pathType: Prefix, backend: {service: {name: web, port: {number: 8080}}}}
",
            ),
            &web_services(),
        )
        .unwrap();
        let specs = specs(&c);
        let fallback = json!({"route": [{"destination": {"host": host("fallback"), "port": {"number": 8080}}}]});
        assert_eq!(
            specs["k8s-ingress-shop"]["servers"][0]["hosts"],
            json!(["*", "*.example.com"])
        );
        let vs0 = &specs["k8s-ingress-shop-0"];
        assert_eq!(vs0["hosts"], json!(["*.example.com"]));
        assert_eq!(vs0["http"].as_array().unwrap().len(), 2);
        assert_eq!(vs0["http"][1], fallback);
        let vs1 = &specs["k8s-ingress-shop-1"];
        assert_eq!(vs1["hosts"], json!(["*"]));
        assert_eq!(vs1["http"], json!([fallback]), "every other host");

        // A default backend alone.
        let c = convert_with(
            &ingress(
                "
metadata: {name: only, namespace: shop}
spec: {ingressClassName: strait, defaultBackend: {service: {name: web, port: {number: 8080}}}}
",
            ),
            &web_services(),
        )
        .unwrap();
        assert_eq!(
            self::tests::specs(&c)["k8s-ingress-only-0"],
            json!({"hosts": ["*"], "gateways": ["shop/k8s-ingress-only"],
                   "http": [{"route": [{"destination": {"host": host("web"), "port": {"number": 8080}}}]}]})
        );
    }

    #[test]
    fn rules_with_the_same_host_share_its_virtual_service() {
        let c = convert_with(
            &ingress(
                "
metadata: {name: two, namespace: shop}
spec:
  rules:
  - host: a.example.com
    http: {paths: [{path: /x, pathType: Prefix, backend: {service: {name: web, port: {number: 8080}}}}]}
  - host: A.example.com
    http: {paths: [{path: /longer, pathType: Prefix, backend: {service: {name: api, port: {number: 8080}}}}]}
  - host: b.example.com
",
            ),
            &web_services(),
        )
        .unwrap();
        let specs = specs(&c);
        assert_eq!(
            specs.len(),
            2,
            "a rule without http routes nothing: {specs:?}"
        );
        let vs = &specs["k8s-ingress-two-0"];
        assert_eq!(vs["hosts"], json!(["a.example.com"]));
        assert_eq!(vs["http"][0]["match"][0]["uri"]["exact"], "/longer");
        assert_eq!(vs["http"][1]["match"][0]["uri"]["exact"], "/x");
    }

    fn ingress_class(yaml: &str) -> IngressClass {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn ingress_classes_decide_by_controller_and_the_default_takes_unclassed_ingresses() {
        let edge = ingress_class(
            "metadata: {name: edge, annotations: {ingressclass.kubernetes.io/is-default-class: 'true'}}\nspec: {controller: strait.io/ingress-controller}",
        );
        let nginx =
            ingress_class("metadata: {name: strait}\nspec: {controller: k8s.io/ingress-nginx}");
        let mesh = ingress_class(
            "metadata: {name: mesh}\nspec: {controller: istio.io/ingress-controller}",
        );
        let classes = Classes::new([&edge, &nginx, &mesh]);
        let with = |spec: &str, classes: &Classes| {
            is_ours(
                &ingress(&format!(
                    "metadata: {{name: i, namespace: shop}}\nspec: {{{spec}}}"
                )),
                classes,
            )
        };
        assert!(
            with("ingressClassName: edge", &classes),
            "a class of Strait's controller"
        );
        assert!(
            with("ingressClassName: mesh", &classes),
            "Istio's controller"
        );
        assert!(
            !with("ingressClassName: strait", &classes),
            "an IngressClass named strait that is nginx's is nginx's"
        );
        assert!(
            with("ingressClassName: istio", &classes),
            "no such IngressClass: by name"
        );
        assert!(with("", &classes), "Strait's class is the default");
        assert!(!with("ingressClassName: nginx", &classes));
        // The default annotation counts only on a class of ours.
        let nginx_default = ingress_class(
            "metadata: {name: nginx, annotations: {ingressclass.kubernetes.io/is-default-class: 'true'}}\nspec: {controller: k8s.io/ingress-nginx}",
        );
        assert!(!with("", &Classes::new([&nginx_default, &mesh])));
    }

    #[test]
    fn classes_other_than_strait_and_istio_are_not_ours() {
        let with = |meta: &str, spec: &str| {
            is_ours(
                &ingress(&format!(
                    "metadata: {{name: i, namespace: shop{meta}}}\nspec: {{{spec}}}"
                )),
                &Classes::default(),
            )
        };
        assert!(with("", "ingressClassName: strait"));
        assert!(with("", "ingressClassName: istio"));
        assert!(with(
            ", annotations: {kubernetes.io/ingress.class: strait}",
            ""
        ));
        assert!(!with("", "ingressClassName: nginx"));
        assert!(
            !with("", ""),
            "no class: the cluster's default controller's"
        );
        assert!(
            !with(
                ", annotations: {kubernetes.io/ingress.class: nginx}",
                "ingressClassName: strait"
            ),
            "the annotation wins, as in Istio"
        );
    }

    #[test]
    fn a_resource_backend_is_refused_naming_the_ingress_and_field() {
        let e = convert_with(
            &ingress(
                "
metadata: {name: bucket, namespace: shop}
spec:
  ingressClassName: strait
  rules:
  - http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 8080}}}}
      - path: /assets
        pathType: Prefix
        backend: {resource: {apiGroup: k8s.example.com, kind: StorageBucket, name: assets}}
",
            ),
            &web_services(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Kubernetes Ingress shop/bucket"), "{e}");
        assert!(
            e.contains("spec.rules[0].http.paths[1].backend.resource"),
            "{e}"
        );
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn a_port_name_must_be_one_of_the_services() {
        let yaml = |svc: &str, port: &str| {
            format!(
                "metadata: {{name: p, namespace: shop}}\nspec: {{defaultBackend: {{service: {{name: {svc}, port: {{name: {port}}}}}}}}}"
            )
        };
        let e = convert_with(&ingress(&yaml("web", "grpc")), &web_services())
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.defaultBackend.service.port.name"), "{e}");
        assert!(e.contains("no port named \"grpc\""), "{e}");
        let e = convert_with(&ingress(&yaml("gone", "http")), &web_services())
            .unwrap_err()
            .to_string();
        assert!(e.contains("Service shop/gone does not exist"), "{e}");
        let c = convert_with(&ingress(&yaml("web", "admin")), &web_services()).unwrap();
        assert_eq!(
            c.objects[1].raw["spec"]["http"][0]["route"][0]["destination"]["port"],
            json!({"number": 9000})
        );
    }

    #[test]
    fn tls_becomes_an_https_server_with_the_secret_as_credential() {
        let c = convert_with(
            &ingress(
                "
metadata: {name: secure, namespace: shop}
spec:
  ingressClassName: strait
  tls:
  - {hosts: [shop.example.com], secretName: shop-cert}
  - {secretName: any-cert}
  - {hosts: [none.example.com]}
  rules:
  - host: shop.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 8080}}}}]}
",
            ),
            &web_services(),
        )
        .unwrap();
        assert_eq!(c.objects[0].id.kind, Kind::Gateway);
        let servers = &c.objects[0].raw["spec"]["servers"];
        assert_eq!(
            *servers,
            json!([
                {"port": {"number": 80, "protocol": "HTTP", "name": "http"}, "hosts": ["shop.example.com"]},
                {
                    "port": {"number": 443, "protocol": "HTTPS", "name": "https-0"},
                    "hosts": ["shop.example.com"],
                    "tls": {"mode": "SIMPLE", "credentialName": "shop-cert"},
                },
                {
                    "port": {"number": 443, "protocol": "HTTPS", "name": "https-1"},
                    "hosts": ["*"],
                    "tls": {"mode": "SIMPLE", "credentialName": "any-cert"},
                },
            ])
        );
        let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [
                "Kubernetes Ingress shop/secure: spec.tls[2].secretName: no Secret named: this entry serves no HTTPS"
            ]
        );
    }

    #[test]
    fn an_ingress_that_routes_nothing_makes_nothing() {
        let c = convert_with(
            &ingress(
                "metadata: {name: e, namespace: shop}\nspec: {rules: [{host: a.example.com}]}",
            ),
            &web_services(),
        )
        .unwrap();
        assert!(c.objects.is_empty());
    }
}
