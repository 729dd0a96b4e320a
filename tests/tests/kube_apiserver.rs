//! The Kubernetes harness against a real kube-apiserver and etcd on 127.0.0.1: core objects,
//! CustomResourceDefinitions, service account tokens, admission, and the tools beside it (helm,
//! kubernetes-validate). Skipped, with a message, when scripts/install-kube-tools.sh has not run;
//! under CI=true they fail instead.

use std::path::Path;

use serde_json::{Value, json};
use strait_tests::kube::{self, KubeApi, Tool};

const CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.strait.dev
spec:
  group: test.strait.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string}
";

fn json(text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).map_err(|e| anyhow::anyhow!("not JSON ({e}): {text}"))
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Namespaces, ConfigMaps (created, read back, patched two ways), a CRD and an instance that its
/// schema checks, a Pod admitted with a projected token volume; and everything killed on drop.
#[test]
fn api_server_stores_core_objects_and_custom_resources() -> anyhow::Result<()> {
    if !kube::available("api_server_stores_core_objects_and_custom_resources") {
        return Ok(());
    }
    let api = KubeApi::start()?;
    assert!(api.server_url().starts_with("https://127.0.0.1:"));

    // Namespace and ConfigMap with kubectl, read back.
    api.ensure_namespace("smoke")?;
    let ns = json(&api.kubectl(&["get", "namespace", "smoke", "-o", "json"])?)?;
    assert_eq!(ns["status"]["phase"], "Active", "{ns}");
    let sa = api.kubectl(&[
        "get",
        "serviceaccount",
        "default",
        "-n",
        "smoke",
        "-o",
        "name",
    ])?;
    assert_eq!(sa.trim(), "serviceaccount/default");
    api.kubectl(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "smoke",
        "--from-literal=mode=mesh",
        "--from-literal=level=3",
    ])?;
    let cm = json(&api.kubectl(&["get", "configmap", "settings", "-n", "smoke", "-o", "json"])?)?;
    assert_eq!(cm["data"], json!({"mode": "mesh", "level": "3"}), "{cm}");

    // Patches go through the server's JSON (de)coding of maps, where a mis-built apiserver
    // (the vendored reflect2 under a new Go) dies.
    api.kubectl(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        "smoke",
        "--type=json",
        "-p",
        r#"[{"op": "add", "path": "/data/extra", "value": "x"}]"#,
    ])?;
    api.kubectl(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        "smoke",
        "--type=merge",
        "-p",
        r#"{"metadata": {"labels": {"app": "smoke"}}, "data": {"mode": "ambient"}}"#,
    ])?;
    let cm = api.request_json("GET", "/api/v1/namespaces/smoke/configmaps/settings", None)?;
    assert_eq!(
        cm["data"],
        json!({"mode": "ambient", "level": "3", "extra": "x"})
    );
    assert_eq!(cm["metadata"]["labels"], json!({"app": "smoke"}));
    let listed = api.kubectl(&[
        "get",
        "configmaps",
        "-n",
        "smoke",
        "-l",
        "app=smoke",
        "-o",
        "name",
    ])?;
    assert_eq!(listed.trim(), "configmap/settings");

    // A CRD, established, then an instance; the schema is enforced.
    api.apply_yaml(CRD)?;
    api.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.test.strait.dev",
        "--timeout=60s",
    ])?;
    // Discovery of a new group can lag the Established condition by a moment.
    strait_tests::eventually_blocking(std::time::Duration::from_secs(30), || {
        api.apply_yaml(
            "apiVersion: test.strait.dev/v1
kind: Widget
metadata: {name: blue, namespace: smoke}
spec: {size: 3, color: blue}
",
        )
        .map(|_| ())
    })?;
    let widget = json(&api.kubectl(&["get", "widget", "blue", "-n", "smoke", "-o", "json"])?)?;
    assert_eq!(
        widget["spec"],
        json!({"size": 3, "color": "blue"}),
        "{widget}"
    );
    let invalid = api.apply_yaml(
        "apiVersion: test.strait.dev/v1
kind: Widget
metadata: {name: broken, namespace: smoke}
spec: {size: 0}
",
    );
    let err = format!(
        "{:#}",
        invalid.expect_err("size 0 is below the schema's minimum")
    );
    assert!(err.contains("spec.size"), "{err}");

    // A Pod is admitted (not run: there is no scheduler or kubelet) with the default service
    // account and a projected token volume, as the ServiceAccount admission plugin gives it.
    api.apply_yaml(
        "apiVersion: v1
kind: Pod
metadata: {name: app, namespace: smoke}
spec:
  containers: [{name: app, image: example.invalid/app:1}]
",
    )?;
    let pod = api.request_json("GET", "/api/v1/namespaces/smoke/pods/app", None)?;
    assert_eq!(pod["spec"]["serviceAccountName"], "default", "{pod}");
    let projected_token = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|v| v["projected"]["sources"].as_array().into_iter().flatten())
        .any(|s| s.get("serviceAccountToken").is_some());
    assert!(projected_token, "no projected token volume: {pod}");

    // A namespace without its `default` ServiceAccount refuses pods, as documented.
    api.kubectl(&["create", "namespace", "bare"])?;
    let refused = api.apply_yaml(
        "apiVersion: v1
kind: Pod
metadata: {name: app, namespace: bare}
spec:
  containers: [{name: app, image: example.invalid/app:1}]
",
    );
    let err = format!(
        "{:#}",
        refused.expect_err("no default ServiceAccount in bare")
    );
    assert!(err.contains("serviceaccount"), "{err}");

    // Everything is gone once the handle drops.
    let pids = api.pids();
    let dir = api.workdir().to_path_buf();
    drop(api);
    for pid in pids {
        assert!(!process_alive(pid), "pid {pid} still running after drop");
    }
    let kept = std::env::var_os("STRAIT_KEEP_LOGS").is_some_and(|v| !v.is_empty() && v != "0");
    if !kept {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    Ok(())
}

/// TokenRequest for the default ServiceAccount (`kubectl create token`), checked with a
/// TokenReview; a token of another audience or a forged one does not authenticate.
#[test]
fn service_account_tokens_are_issued_and_reviewed() -> anyhow::Result<()> {
    if !kube::available("service_account_tokens_are_issued_and_reviewed") {
        return Ok(());
    }
    let api = KubeApi::start()?;
    api.ensure_namespace("tokens")?;
    let token = api.kubectl(&["create", "token", "default", "-n", "tokens"])?;
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");

    let review = |token: &str, audiences: &[&str]| -> anyhow::Result<Value> {
        let mut spec = json!({"token": token});
        if !audiences.is_empty() {
            spec["audiences"] = json!(audiences);
        }
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": spec,
        });
        let answer = api.request_json(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(&body),
        )?;
        Ok(answer["status"].clone())
    };

    let status = review(token, &[])?;
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(
        status["user"]["username"], "system:serviceaccount:tokens:default",
        "{status}"
    );
    let groups = status["user"]["groups"].to_string();
    assert!(groups.contains("system:serviceaccounts:tokens"), "{groups}");
    assert_eq!(status["audiences"], json!([kube::SERVICE_ACCOUNT_ISSUER]));

    // Same token, another audience: not for it.
    let status = review(token, &["istio-ca"])?;
    assert_ne!(status["authenticated"], true, "{status}");

    // A token requested for that audience is.
    let istio = api.kubectl(&[
        "create",
        "token",
        "default",
        "-n",
        "tokens",
        "--audience=istio-ca",
        "--duration=10m",
    ])?;
    let status = review(istio.trim(), &["istio-ca"])?;
    assert_eq!(status["authenticated"], true, "{status}");

    // A signature that isn't the server's.
    let mut forged: Vec<&str> = token.split('.').collect();
    forged[2] = "c2lnbmF0dXJl";
    let status = review(&forged.join("."), &[])?;
    assert_ne!(status["authenticated"], true, "{status}");

    // The token authenticates to the API server itself, and RBAC decides what it may do.
    let as_account = |path: &str, token: &str| api.request_with_token(token, "GET", path, None);
    let configmaps = "/api/v1/namespaces/tokens/configmaps";
    let (status, body) = as_account(configmaps, token)?;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("system:serviceaccount:tokens:default"),
        "{body}"
    );
    let (status, body) = as_account(configmaps, &forged.join("."))?;
    assert_eq!(status, 401, "{body}");
    // (The aggregated ClusterRoles view/edit/admin are empty here: aggregating them is the
    // controller-manager's job. A Role with its own rules works.)
    api.apply_yaml(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: configmap-reader, namespace: tokens}
rules:
- {apiGroups: [\"\"], resources: [configmaps], verbs: [get, list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: configmap-reader, namespace: tokens}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: configmap-reader}
subjects:
- {kind: ServiceAccount, name: default, namespace: tokens}
",
    )?;
    strait_tests::eventually_blocking(std::time::Duration::from_secs(10), || {
        let (status, body) = as_account(configmaps, token)?;
        anyhow::ensure!(status == 200, "{status} {body}");
        anyhow::ensure!(body.contains("kube-root-ca.crt"), "{body}");
        Ok(())
    })?;
    let (status, body) = as_account("/api/v1/namespaces/tokens/secrets", token)?;
    assert_eq!(status, 403, "{body}");
    Ok(())
}

/// helm and kubernetes-validate run; helm installs a chart of its own making into the server and
/// kubernetes-validate tells a valid manifest from an invalid one.
#[test]
fn helm_and_kubernetes_validate_work() -> anyhow::Result<()> {
    let test = "helm_and_kubernetes_validate_work";
    if !kube::available(test)
        || !kube::tools_available(test, &[Tool::Helm, Tool::KubernetesValidate])
    {
        return Ok(());
    }
    let version = kube::run_tool(Tool::Helm, &["version", "--short"], None)?;
    assert!(version.starts_with("v4."), "helm version: {version}");
    let version = kube::run_tool(Tool::KubernetesValidate, &["--version"], None)?;
    assert!(
        !version.trim().is_empty(),
        "kubernetes-validate --version printed nothing"
    );

    let dir = tempfile::tempdir()?;
    let valid = dir.path().join("valid.yaml");
    std::fs::write(
        &valid,
        "apiVersion: v1
kind: ConfigMap
metadata: {name: ok}
data: {a: b}
",
    )?;
    let invalid = dir.path().join("invalid.yaml");
    std::fs::write(
        &invalid,
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: bad}
spec:
  replicas: many
  selector: {matchLabels: {app: x}}
  template:
    metadata: {labels: {app: x}}
    spec: {containers: [{name: x, image: x}]}
",
    )?;
    let validate = |file: &Path| {
        kube::run_tool(
            Tool::KubernetesValidate,
            &[
                "--strict",
                "--kubernetes-version",
                "1.33",
                &file.display().to_string(),
            ],
            None,
        )
    };
    validate(&valid)?;
    let err = format!(
        "{:#}",
        validate(&invalid).expect_err("replicas: many is invalid")
    );
    assert!(err.contains("replicas"), "{err}");

    // A chart made with `helm create`, installed into the real API server.
    let api = KubeApi::start()?;
    api.ensure_namespace("charts")?;
    let chart = dir.path().join("demo");
    api.helm(&["create", &chart.display().to_string()])?;
    api.helm(&["lint", &chart.display().to_string()])?;
    api.helm(&[
        "install",
        "demo",
        &chart.display().to_string(),
        "-n",
        "charts",
        "--set",
        "serviceAccount.create=false",
    ])?;
    let listed = api.helm(&["list", "-n", "charts", "-o", "json"])?;
    let releases = json(&listed)?;
    assert_eq!(releases[0]["name"], "demo", "{releases}");
    assert_eq!(releases[0]["status"], "deployed", "{releases}");
    let deploy =
        json(&api.kubectl(&["get", "deployment", "demo", "-n", "charts", "-o", "json"])?)?;
    assert_eq!(
        deploy["metadata"]["labels"]["app.kubernetes.io/instance"],
        "demo"
    );
    let svc = json(&api.kubectl(&["get", "service", "demo", "-n", "charts", "-o", "json"])?)?;
    let ip = svc["spec"]["clusterIP"].as_str().unwrap_or_default();
    assert!(
        ip.starts_with("10.96."),
        "clusterIP {ip} outside the service range"
    );
    Ok(())
}

/// A mutating webhook at `https://127.0.0.1:PORT` (certificate from the cluster CA, `caBundle`
/// from [`KubeApi::ca_bundle`]) patches pods with a JSONPatch, as sidecar injection will; the
/// apiserver applies it (a mis-built apiserver dies right here).
#[test]
fn mutating_webhook_patches_are_applied() -> anyhow::Result<()> {
    if !kube::available("mutating_webhook_patches_are_applied") {
        return Ok(());
    }
    let api = KubeApi::start()?;
    let (cert, key) = api.issue_cert("webhook", &[], &["127.0.0.1"])?;
    let webhook = webhook::Webhook::start(&cert, &key)?;
    api.ensure_namespace("hooked")?;
    api.kubectl(&["label", "namespace", "hooked", "strait-test-webhook=on"])?;
    api.apply_yaml(&format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: strait-test}}
webhooks:
- name: inject.test.strait.dev
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  timeoutSeconds: 10
  clientConfig:
    url: https://127.0.0.1:{port}/inject
    caBundle: {ca}
  namespaceSelector:
    matchLabels: {{strait-test-webhook: \"on\"}}
  rules:
  - {{apiGroups: [\"\"], apiVersions: [v1], operations: [CREATE], resources: [pods]}}
",
        port = webhook.port(),
        ca = api.ca_bundle(),
    ))?;
    let pod = "apiVersion: v1
kind: Pod
metadata: {name: app, namespace: hooked, labels: {app: demo}}
spec:
  containers: [{name: app, image: example.invalid/app:1}]
";
    // The webhook configuration reaches the admission chain a moment after it is stored:
    // dry-run creates (webhooks run, nothing is stored) until the patch shows.
    strait_tests::eventually_blocking(std::time::Duration::from_secs(30), || {
        let out = api.kubectl_with_input(
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            Some(pod),
        )?;
        anyhow::ensure!(out.contains("strait-sidecar"), "not patched yet");
        Ok(())
    })?;
    api.kubectl_with_input(&["create", "-f", "-"], Some(pod))?;
    let stored = api.request_json("GET", "/api/v1/namespaces/hooked/pods/app", None)?;
    let names: Vec<&str> = stored["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["app", "strait-sidecar"], "{stored}");
    assert_eq!(stored["metadata"]["labels"]["app"], "demo", "{stored}");
    assert_eq!(
        stored["metadata"]["annotations"]["test.strait.dev/injected"], "true",
        "{stored}"
    );
    let reviews = webhook.reviews();
    assert!(
        reviews
            .iter()
            .any(|r| r["request"]["name"] == "app" && r["request"]["namespace"] == "hooked"),
        "the webhook never saw the pod: {reviews:?}"
    );

    // Outside the selected namespace the webhook is not called.
    api.ensure_namespace("plain")?;
    api.kubectl_with_input(
        &["create", "-f", "-"],
        Some(&pod.replace("namespace: hooked", "namespace: plain")),
    )?;
    let plain = api.request_json("GET", "/api/v1/namespaces/plain/pods/app", None)?;
    assert_eq!(
        plain["spec"]["containers"].as_array().map(Vec::len),
        Some(1)
    );
    Ok(())
}

/// A tiny HTTPS admission webhook on its own thread: answers every AdmissionReview with a
/// JSONPatch that adds a container and an annotation, and keeps the reviews it got.
mod webhook {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use anyhow::Context;
    use base64::Engine;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use serde_json::{Value, json};
    use tokio::sync::oneshot;

    pub struct Webhook {
        addr: SocketAddr,
        reviews: Arc<Mutex<Vec<Value>>>,
        shutdown: Option<oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Webhook {
        pub fn start(cert_pem: &str, key_pem: &str) -> anyhow::Result<Webhook> {
            let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .context("webhook certificate")?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("webhook key")?;
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.set_nonblocking(true)?;
            let addr = listener.local_addr()?;
            let reviews = Arc::new(Mutex::new(Vec::new()));
            let (shutdown, mut stopped) = oneshot::channel::<()>();
            let seen = reviews.clone();
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building the webhook runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("webhook listener");
                    loop {
                        let (tcp, _) = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok(a) => a,
                                Err(_) => continue,
                            },
                            _ = &mut stopped => return,
                        };
                        let acceptor = acceptor.clone();
                        let seen = seen.clone();
                        tokio::spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let service = hyper::service::service_fn(move |req| {
                                let seen = seen.clone();
                                async move { answer(req, &seen).await }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                .await;
                        });
                    }
                });
            });
            Ok(Webhook {
                addr,
                reviews,
                shutdown: Some(shutdown),
                thread: Some(thread),
            })
        }

        pub fn port(&self) -> u16 {
            self.addr.port()
        }

        pub fn reviews(&self) -> Vec<Value> {
            self.reviews.lock().map(|r| r.clone()).unwrap_or_default()
        }
    }

    impl Drop for Webhook {
        fn drop(&mut self) {
            if let Some(tx) = self.shutdown.take() {
                let _ = tx.send(());
            }
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    async fn answer(
        req: hyper::Request<hyper::body::Incoming>,
        seen: &Mutex<Vec<Value>>,
    ) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
        let body = req.into_body().collect().await?.to_bytes();
        let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let patch = json!([
            {"op": "add", "path": "/spec/containers/-",
             "value": {"name": "strait-sidecar", "image": "example.invalid/strait:1"}},
            {"op": "add", "path": "/metadata/annotations",
             "value": {"test.strait.dev/injected": "true"}},
        ]);
        let answer = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": review["request"]["uid"],
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD
                    .encode(patch.to_string()),
            },
        });
        if let Ok(mut reviews) = seen.lock() {
            reviews.push(review);
        }
        Ok(hyper::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(answer.to_string())))
            .expect("a valid response"))
    }
}
