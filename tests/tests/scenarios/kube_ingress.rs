//! Kubernetes Ingresses served by the ingress gateway: an Ingress of class `strait` (or
//! `istio`) created with kubectl becomes a Gateway and VirtualServices, and requests to the
//! gateway reach the backend its paths name; an Ingress of another class is left alone;
//! deleting an Ingress takes its routes away. Gateway servers with `credentialName` (and an
//! Ingress's `spec.tls`) serve the certificate of a TLS Secret made in the test, and a
//! replaced Secret is served without a restart.
//!
//! As in `kubernetes.rs`: etcd, the API server, straitd and the gateway run in the hub of a
//! network of the test's own, the backends on the hub's bridge address (Kubernetes refuses
//! loopback endpoints). Needs the kube tools (`scripts/install-kube-tools.sh`) and root.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use strait_tests::client::{HttpClient, Req, Resp, https_request};
use strait_tests::envoy::XdsTarget;
use strait_tests::kube::KubeApi;
use strait_tests::netns::{HUB_V4, Network};
use strait_tests::{
    Backend, ConfigDir, Proxy, ProxySpec, Straitd, data_plane, eventually_blocking,
};

/// The ingress gateway's Service, whose addresses Ingresses of ours show in their status.
const GATEWAY_SERVICE: &str = "istio-system/ingressgateway";

/// How fast a change in the API server must reach the gateway.
const PROPAGATION: Duration = Duration::from_secs(2);
/// How long the first configuration may take (the gateway and the watches are just up).
const FIRST: Duration = Duration::from_secs(20);

struct Hub {
    /// Stopped before straitd and the network (field order).
    gateway: Box<dyn Proxy>,
    straitd: Straitd,
    _config: ConfigDir,
    kube: KubeApi,
    backends: Vec<Backend>,
    net: Network,
}

impl Hub {
    fn start(test: &str) -> anyhow::Result<Option<Hub>> {
        Hub::start_with(test, &[80], false)
    }

    /// With the gateway serving `ports`; when `istio`, Istio's CRDs installed before straitd
    /// watches and the gateway authenticated (a bootstrap token), as credentials need.
    fn start_with(test: &str, ports: &[u16], istio: bool) -> anyhow::Result<Option<Hub>> {
        if !strait_tests::netns::available(test) || !strait_tests::kube::available(test) {
            return Ok(None);
        }
        let net = Network::new()?;
        let hub = net.hub().clone();
        let kube = KubeApi::start_in(&hub)?;
        let at_hub = SocketAddr::new(IpAddr::V4(HUB_V4), 0);
        let backends = hub.enter(|| -> anyhow::Result<Vec<Backend>> {
            Ok(vec![
                Backend::start_at("api", at_hub)?,
                Backend::start_at("web", at_hub)?,
            ])
        })?;
        if istio {
            install_crds(&kube)?;
        }
        let config = ConfigDir::new()?;
        let mut options = kube.straitd_options(config.path());
        options
            .extra_args
            .push(format!("--ingress-service={GATEWAY_SERVICE}"));
        let straitd = hub.spawn_from(move || Straitd::start(options))??;
        // The ingress gateway, on the hub's loopback, with the labels Ingresses select.
        let mut spec = ProxySpec::gateway(
            "ingress-1.istio-system",
            "istio-system",
            &[("istio", "ingressgateway")],
            ports,
        );
        if istio {
            spec = spec.secure("istio-ingressgateway");
        }
        let xds = XdsTarget::for_spec(&straitd, &spec)?;
        let plane = data_plane().name();
        let gateway =
            hub.spawn_from(move || strait_tests::dataplane::named(plane).launch(&xds, &spec))??;
        Ok(Some(Hub {
            gateway,
            straitd,
            _config: config,
            kube,
            backends,
            net,
        }))
    }

    /// `GET path` with `Host: host` at the gateway's port 80.
    fn get(&self, host: &str, path: &str) -> anyhow::Result<Resp> {
        let addr = self.gateway.gateway_addr(80);
        self.net.hub().block_on(async {
            HttpClient::without_pooling()
                .request(addr, &Req::get(host, path))
                .await
        })
    }

    /// What answered `GET path`: the backend's name, or the status when it is not 200.
    fn who(&self, host: &str, path: &str) -> String {
        match self.get(host, path) {
            Ok(r) if r.status == 200 => r.body,
            Ok(r) => r.status.to_string(),
            Err(e) => format!("error: {e:#}"),
        }
    }

    /// The objects of `kind` straitd has in force: `NAME (ORIGIN)`.
    fn objects(&self, kind: &str) -> anyhow::Result<Vec<String>> {
        let (status, body) = self
            .net
            .hub()
            .enter(|| self.straitd.admin_get(&format!("/objects/{kind}")))?;
        anyhow::ensure!(status == 200, "/objects/{kind} said {status}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body)?;
        Ok(json
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                format!(
                    "{} ({})",
                    o["name"].as_str().unwrap_or_default(),
                    o["origin"].as_str().unwrap_or_default()
                )
            })
            .collect())
    }

    /// A Service with a ClusterIP, its Pod, and Endpoints at backend `i` on the hub.
    fn service(&self, name: &str, ip: &str, i: usize) -> String {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  clusterIP: {ip}
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}-1, namespace: shop, labels: {{app: {name}}}}}
spec: {{containers: [{{name: {name}, image: {name}:1}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: {name}, namespace: shop}}
subsets:
- addresses: [{{ip: {HUB_V4}, targetRef: {{kind: Pod, name: {name}-1, namespace: shop}}}}]
  ports: [{{name: http, port: {}}}]
",
            self.backends[i].port()
        )
    }
}

/// `/api` (Prefix) to the api Service, by port name; `/` to web.
const SHOP: &str = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  ingressClassName: strait
  rules:
  - http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
      - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {name: http}}}}
";

/// Another controller's: must change nothing.
const NGINX: &str = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: theirs, namespace: shop}
spec:
  ingressClassName: nginx
  rules:
  - http:
      paths:
      - {path: /only-nginx, pathType: Exact, backend: {service: {name: api, port: {number: 80}}}}
";

/// Class by the legacy annotation, for one host: keeps port 80 served once `shop` is gone.
const ADMIN: &str = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: admin
  namespace: shop
  annotations: {kubernetes.io/ingress.class: istio}
spec:
  rules:
  - host: admin.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
";

/// Ingresses of class strait (or istio) are served by the gateway with Kubernetes' path
/// semantics; another class is ignored; a deleted Ingress's routes go within 2 s; an Ingress
/// without a class is served once Strait's IngressClass is the cluster's default.
#[test]
fn ingresses_are_served_by_the_ingress_gateway() -> anyhow::Result<()> {
    let Some(hub) = Hub::start("ingresses_are_served_by_the_ingress_gateway")? else {
        return Ok(());
    };
    hub.kube.ensure_namespace("shop")?;
    hub.kube.apply_yaml(&hub.service("api", "10.96.0.60", 0))?;
    hub.kube.apply_yaml(&hub.service("web", "10.96.0.61", 1))?;
    hub.kube.apply_yaml(NGINX)?;
    hub.kube.apply_yaml(SHOP)?;
    hub.kube.apply_yaml(ADMIN)?;

    eventually_blocking(FIRST, || {
        let got = [
            hub.who("shop.example.com", "/api/x"),
            hub.who("admin.example.com", "/"),
        ];
        anyhow::ensure!(got == ["api", "api"], "{got:?}");
        Ok(())
    })?;
    for (path, expect) in [
        ("/api/x", "api"),
        ("/api", "api"),
        ("/api/", "api"),
        ("/apix", "web"),
        ("/", "web"),
        ("/web/page", "web"),
        // The nginx Ingress's Exact path is not routed: `/` of `shop` answers it.
        ("/only-nginx", "web"),
    ] {
        let got = hub.who("shop.example.com", path);
        anyhow::ensure!(got == expect, "{path}: {expect} expected, got {got}");
    }
    let gateways = hub.objects("Gateway")?;
    anyhow::ensure!(
        gateways
            == [
                "k8s-ingress-admin (Kubernetes Ingress shop/admin)",
                "k8s-ingress-shop (Kubernetes Ingress shop/shop)"
            ],
        "one Gateway per Ingress of ours, none for nginx's: {gateways:?}"
    );

    hub.kube
        .kubectl(&["delete", "ingress", "-n", "shop", "shop"])?;
    eventually_blocking(PROPAGATION, || {
        let got = [
            hub.who("shop.example.com", "/api/x"),
            hub.who("shop.example.com", "/"),
        ];
        anyhow::ensure!(got == ["404", "404"], "{got:?}");
        Ok(())
    })?;
    let got = hub.who("admin.example.com", "/");
    anyhow::ensure!(got == "api", "the other Ingress still answers: {got}");
    let gateways = hub.objects("Gateway")?;
    anyhow::ensure!(
        gateways == ["k8s-ingress-admin (Kubernetes Ingress shop/admin)"],
        "{gateways:?}"
    );

    // An Ingress naming no class is the default class's: nobody's until Strait's
    // IngressClass is made the cluster's default.
    hub.kube.apply_yaml(UNCLASSED)?;
    std::thread::sleep(PROPAGATION);
    let got = hub.who("plain.example.com", "/");
    anyhow::ensure!(got == "404", "an unclassed Ingress is not ours yet: {got}");
    hub.kube.apply_yaml(DEFAULT_CLASS)?;
    eventually_blocking(PROPAGATION, || {
        let got = hub.who("plain.example.com", "/");
        anyhow::ensure!(got == "web", "{got}");
        Ok(())
    })?;

    // The gateway Service's load balancer address (written by hand: no cloud controller
    // runs here) shows in the status of Ingresses of ours, and changes with it.
    // (The replica writing status holds the Lease in strait-system.)
    hub.kube.ensure_namespace("strait-system")?;
    hub.kube.ensure_namespace("istio-system")?;
    hub.kube.apply_yaml(GATEWAY_LB)?;
    for (address, within) in [
        (r#"{"ip":"192.0.2.10"}"#, FIRST),
        (r#"{"hostname":"lb.example.com"}"#, PROPAGATION),
    ] {
        hub.kube.kubectl(&[
            "patch",
            "service",
            "ingressgateway",
            "-n",
            "istio-system",
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(r#"{{"status":{{"loadBalancer":{{"ingress":[{address}]}}}}}}"#),
        ])?;
        eventually_blocking(within, || {
            for ingress in ["admin", "plain"] {
                let got = hub.kube.kubectl(&[
                    "get",
                    "ingress",
                    "-n",
                    "shop",
                    ingress,
                    "-o",
                    "jsonpath={.status.loadBalancer.ingress}",
                ])?;
                anyhow::ensure!(
                    got.replace(' ', "") == format!("[{address}]"),
                    "{ingress}: {address} expected, got {got:?}"
                );
            }
            Ok(())
        })?;
    }
    let theirs = hub.kube.kubectl(&[
        "get",
        "ingress",
        "-n",
        "shop",
        "theirs",
        "-o",
        "jsonpath={.status.loadBalancer}",
    ])?;
    anyhow::ensure!(
        theirs.trim().is_empty() || theirs.trim() == "{}",
        "another controller's Ingress is left alone: {theirs:?}"
    );

    let net_hub = hub.net.hub().clone();
    net_hub.block_on(crate::common::assert_no_nacks(&hub.straitd))
}

/// The ingress gateway's Service ([`GATEWAY_SERVICE`]), of type LoadBalancer.
const GATEWAY_LB: &str = "apiVersion: v1
kind: Service
metadata: {name: ingressgateway, namespace: istio-system}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.70
  selector: {istio: ingressgateway}
  ports: [{name: http2, port: 80, targetPort: 8080}]
";

/// No class at all: the cluster's default IngressClass decides.
const UNCLASSED: &str = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: plain, namespace: shop}
spec:
  rules:
  - host: plain.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
";

/// Strait's IngressClass under a name of the user's, as the cluster's default.
const DEFAULT_CLASS: &str = "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: edge
  annotations: {ingressclass.kubernetes.io/is-default-class: 'true'}
spec: {controller: strait.io/ingress-controller}
";
/// Istio's CRDs, as `straitctl crds` makes them, installed and established.
fn install_crds(kube: &KubeApi) -> anyhow::Result<()> {
    let out = std::process::Command::new(strait_tests::bins::straitctl())
        .arg("crds")
        .output()?;
    anyhow::ensure!(out.status.success(), "straitctl crds: {out:?}");
    kube.apply_yaml(&String::from_utf8(out.stdout)?)?;
    kube.kubectl(&[
        "wait",
        "--for=condition=established",
        "--timeout=30s",
        "crd/virtualservices.networking.istio.io",
        "crd/gateways.networking.istio.io",
    ])?;
    Ok(())
}

/// A certificate for `host` signed by `ca`: (certificate PEM, key PEM).
fn ca_and_leaf(
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    host: &str,
) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec![host.to_string()])?.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A `kubernetes.io/tls` Secret in the gateway's namespace.
fn tls_secret(name: &str, cert: &str, key: &str) -> String {
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n    ");
    format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: istio-system}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
    {}
  tls.key: |
    {}
",
        indent(cert),
        indent(key)
    )
}

const BOOKINFO: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [bookinfo.example.com]
    tls: {mode: SIMPLE, credentialName: bookinfo-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: shop}
spec:
  hosts: [bookinfo.example.com]
  gateways: [istio-system/bookinfo]
  http:
  - route: [{destination: {host: web.shop.svc.cluster.local, port: {number: 80}}}]
";

/// nginx-ingress style TLS: the Secret named by `secretName`.
const SECURE_INGRESS: &str = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: secure, namespace: shop}
spec:
  ingressClassName: strait
  tls: [{hosts: [shop.example.com], secretName: shop-cert}]
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
";

/// Gateway `credentialName` and Ingress `secretName` take their certificates from Kubernetes
/// TLS Secrets (in the gateway's namespace): the gateway serves them by SNI, verified against
/// the test's CA, and routes to the backends; a replaced Secret is served within 2 s; the
/// proxy holds the secret, and no debug endpoint of straitd prints a private key.
#[test]
fn gateway_credentials_come_from_kubernetes_secrets_and_follow_their_rotation() -> anyhow::Result<()>
{
    let Some(hub) = Hub::start_with(
        "gateway_credentials_come_from_kubernetes_secrets_and_follow_their_rotation",
        &[80, 443],
        true,
    )?
    else {
        return Ok(());
    };
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
    let ca_pem = ca.pem();
    let (bookinfo_cert, bookinfo_key) = ca_and_leaf(&ca, "bookinfo.example.com")?;
    let (shop_cert, shop_key) = ca_and_leaf(&ca, "shop.example.com")?;

    hub.kube.ensure_namespace("shop")?;
    hub.kube.ensure_namespace("istio-system")?;
    hub.kube.apply_yaml(&hub.service("api", "10.96.0.70", 0))?;
    hub.kube.apply_yaml(&hub.service("web", "10.96.0.71", 1))?;
    // The Gateway first: its server waits (a warning) until the Secret exists.
    hub.kube.apply_yaml(BOOKINFO)?;
    hub.kube.apply_yaml(SECURE_INGRESS)?;
    hub.kube
        .apply_yaml(&tls_secret("bookinfo-cert", &bookinfo_cert, &bookinfo_key))?;
    hub.kube
        .apply_yaml(&tls_secret("shop-cert", &shop_cert, &shop_key))?;

    let https = hub.gateway.gateway_addr(443);
    let fetch = |host: &str| -> anyhow::Result<(String, Vec<u8>)> {
        let (resp, served) =
            hub.net
                .hub()
                .block_on(https_request(https, host, &ca_pem, &Req::get(host, "/")))?;
        anyhow::ensure!(resp.status == 200, "{host}: {resp:?}");
        Ok((resp.body, served))
    };
    let der = |pem_text: &str| -> anyhow::Result<Vec<u8>> {
        Ok(pem::parse(pem_text)?.contents().to_vec())
    };
    for (host, backend, cert) in [
        ("bookinfo.example.com", "web", &bookinfo_cert),
        ("shop.example.com", "api", &shop_cert),
    ] {
        let (body, served) = eventually_blocking(FIRST, || fetch(host))?;
        anyhow::ensure!(body == backend, "{host}: answered by {body}");
        anyhow::ensure!(
            served == der(cert)?,
            "{host}: the gateway served another certificate"
        );
    }
    // The HTTP server of the Ingress stays.
    let got = hub.who("shop.example.com", "/");
    anyhow::ensure!(got == "api", "HTTP on 80: {got}");

    // The proxy holds the secret by Istio's name; no private key in its dump.
    let dump = hub
        .net
        .hub()
        .enter(|| hub.gateway.config_dump())?
        .to_string();
    anyhow::ensure!(
        dump.contains("kubernetes://bookinfo-cert"),
        "the gateway's config dump names the secret"
    );
    let key_body = |key: &str| key.lines().nth(1).unwrap_or_default().to_string();
    anyhow::ensure!(
        !dump.contains(&key_body(&bookinfo_key)),
        "the gateway's config dump printed a private key"
    );
    // straitd's debug endpoints never print a key.
    for path in [
        "/debug/proxies",
        "/objects",
        "/config/status",
        "/config/kubernetes",
        "/metrics",
    ] {
        let (_, body) = hub.net.hub().enter(|| hub.straitd.admin_get(path))?;
        anyhow::ensure!(
            !body.contains("PRIVATE KEY") && !body.contains(&key_body(&bookinfo_key)),
            "{path} printed a private key"
        );
    }

    // Rotation: a new certificate and key in the same Secret.
    let (rotated_cert, rotated_key) = ca_and_leaf(&ca, "bookinfo.example.com")?;
    hub.kube
        .apply_yaml(&tls_secret("bookinfo-cert", &rotated_cert, &rotated_key))?;
    let rotated = der(&rotated_cert)?;
    eventually_blocking(PROPAGATION, || {
        let (body, served) = fetch("bookinfo.example.com")?;
        anyhow::ensure!(body == "web", "answered by {body}");
        anyhow::ensure!(served == rotated, "the old certificate is still served");
        Ok(())
    })?;

    let net_hub = hub.net.hub().clone();
    net_hub.block_on(crate::common::assert_no_nacks(&hub.straitd))
}
