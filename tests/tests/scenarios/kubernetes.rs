//! straitd against a real kube-apiserver: discovery from Services, Endpoints and Pods into a
//! captured sidecar (the ClusterIP is the VIP), the injection webhook, the validating webhook.
//!
//! Everything runs in network namespaces of the test's own (`strait_tests::netns`): etcd, the
//! API server and straitd in the hub (the API server reaches straitd's webhooks on the hub's
//! 127.0.0.1), backends on the hub's bridge address (Kubernetes refuses loopback endpoints),
//! the sidecar in a pod. Needs the kube tools (`scripts/install-kube-tools.sh`) and root.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use strait_tests::client::{HttpClient, Req, Resp};
use strait_tests::envoy::XdsTarget;
use strait_tests::kube::KubeApi;
use strait_tests::netns::{HUB_V4, Network, Pod, PodProxy};
use strait_tests::ports::free_port;
use strait_tests::{Backend, ConfigDir, ProxySpec, Straitd, data_plane, eventually_blocking};

/// How fast a change in the API server must reach the proxies.
const PROPAGATION: Duration = Duration::from_secs(2);
const WEB_VIP: &str = "10.96.0.50";

struct Cluster {
    proxy: Option<PodProxy>,
    straitd: Straitd,
    _config: ConfigDir,
    kube: KubeApi,
    webhook_port: u16,
    backends: Vec<Backend>,
    pod: Pod,
    net: Network,
}

impl Cluster {
    fn start(test: &str) -> anyhow::Result<Option<Cluster>> {
        Self::start_with(test, &[])
    }

    /// With `extra` flags for straitd.
    fn start_with(test: &str, extra: &[&str]) -> anyhow::Result<Option<Cluster>> {
        if !strait_tests::netns::available(test) || !strait_tests::kube::available(test) {
            return Ok(None);
        }
        let net = Network::new()?;
        let pod = net.pod("client")?;
        let hub = net.hub().clone();
        let kube = KubeApi::start_in(&hub)?;
        let at_hub = SocketAddr::new(IpAddr::V4(HUB_V4), 0);
        let backends = hub.enter(|| -> anyhow::Result<Vec<Backend>> {
            Ok(vec![
                Backend::start_at("web-v1", at_hub)?,
                Backend::start_at("web-v2", at_hub)?,
            ])
        })?;
        let config = ConfigDir::new()?;
        let webhook_port = hub.enter(free_port);
        let mut options = kube.straitd_options(config.path());
        options.extra_args.extend([
            "--webhook-addr".to_string(),
            format!("127.0.0.1:{webhook_port}"),
        ]);
        options
            .extra_args
            .extend(extra.iter().map(|a| a.to_string()));
        let straitd = hub.spawn_from(move || Straitd::start(options))??;
        Ok(Some(Cluster {
            proxy: None,
            straitd,
            _config: config,
            kube,
            webhook_port,
            backends,
            pod,
            net,
        }))
    }

    fn start_sidecar(&mut self) -> anyhow::Result<()> {
        self.pod.capture(&[])?;
        // With an identity: a captured sidecar's inbound side speaks mTLS (PERMISSIVE).
        let spec =
            ProxySpec::sidecar("client-1.shop", "shop", &[("app", "client")]).secure("client");
        let xds = XdsTarget::for_spec(&self.straitd, &spec)?;
        self.proxy = Some(self.pod.start_proxy(&*data_plane(), &xds, spec)?);
        Ok(())
    }

    fn get_web(&self) -> anyhow::Result<Resp> {
        let addr = SocketAddr::new(WEB_VIP.parse()?, 80);
        self.pod.block_on(async {
            HttpClient::without_pooling()
                // Until the Service is known, the request passes through to its (absent) VIP:
                // a short timeout lets the next attempt find it.
                .request(
                    addr,
                    &Req::get("web.shop", "/").timeout(Duration::from_millis(500)),
                )
                .await
        })
    }

    fn tally_web(&self, n: usize) -> std::collections::BTreeMap<String, usize> {
        let addr = SocketAddr::new(WEB_VIP.parse().expect("a VIP"), 80);
        self.pod.block_on(strait_tests::client::send_many(
            n,
            addr,
            &Req::get("web.shop", "/"),
        ))
    }

    /// The Endpoints of Service `web`: one address per backend in `which`.
    fn endpoints(&self, which: &[usize]) -> String {
        let addresses: Vec<String> = which
            .iter()
            .map(|i| format!("  - {{ip: {HUB_V4}, targetRef: {{kind: Pod, name: web-v{}, namespace: shop}}}}", i + 1))
            .collect();
        // One subset per port number: the backends listen on different ports.
        let subsets: Vec<String> = which
            .iter()
            .zip(addresses)
            .map(|(i, a)| {
                format!(
                    "- addresses:\n{a}\n  ports: [{{name: http, port: {}}}]",
                    self.backends[*i].port()
                )
            })
            .collect();
        format!(
            "apiVersion: v1\nkind: Endpoints\nmetadata: {{name: web, namespace: shop}}\nsubsets:\n{}\n",
            subsets.join("\n")
        )
    }
}

const WEB: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.50
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-v1, namespace: shop, labels: {app: web, version: v1}}
spec: {containers: [{name: web, image: web:1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-v2, namespace: shop, labels: {app: web, version: v2}}
spec: {containers: [{name: web, image: web:2}]}
";

/// A Service, its Pods and Endpoints created with kubectl reach a captured sidecar within
/// 2 s: the ClusterIP answers, endpoints added and removed are followed.
#[test]
fn services_and_endpoints_from_the_api_server_reach_the_sidecar() -> anyhow::Result<()> {
    let Some(mut cluster) =
        Cluster::start("services_and_endpoints_from_the_api_server_reach_the_sidecar")?
    else {
        return Ok(());
    };
    cluster.kube.ensure_namespace("shop")?;
    cluster.start_sidecar()?;
    cluster.kube.apply_yaml(WEB)?;
    cluster.kube.apply_yaml(&cluster.endpoints(&[0]))?;
    let resp = eventually_blocking(PROPAGATION, || {
        let resp = cluster.get_web()?;
        anyhow::ensure!(resp.status == 200, "{resp:?}");
        Ok(resp)
    })?;
    anyhow::ensure!(resp.body == "web-v1", "{resp:?}");
    let proxy = cluster.proxy.as_ref().expect("started");
    let dump = proxy.config_dump()?.to_string();
    anyhow::ensure!(
        dump.contains("outbound|80||web.shop.svc.cluster.local") && dump.contains(WEB_VIP),
        "the Service's cluster and VIP are in the sidecar's config"
    );

    // A second endpoint appears.
    cluster.kube.apply_yaml(&cluster.endpoints(&[0, 1]))?;
    eventually_blocking(PROPAGATION, || {
        let tally = cluster.tally_web(20);
        anyhow::ensure!(
            tally.contains_key("web-v1") && tally.contains_key("web-v2"),
            "{tally:?}"
        );
        Ok(())
    })?;
    // The first one goes.
    cluster.kube.apply_yaml(&cluster.endpoints(&[1]))?;
    eventually_blocking(PROPAGATION, || {
        let tally = cluster.tally_web(10);
        anyhow::ensure!(tally.get("web-v2") == Some(&10), "{tally:?}");
        Ok(())
    })?;
    let hub = cluster.net.hub().clone();
    hub.block_on(crate::common::assert_no_nacks(&cluster.straitd))
}

fn webhook_configuration(port: u16, ca_bundle: &str) -> String {
    webhook_configuration_with(port, ca_bundle, "Fail")
}

fn webhook_configuration_with(port: u16, ca_bundle: &str, failure_policy: &str) -> String {
    format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: strait-injector}}
webhooks:
- name: inject.strait.io
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: {failure_policy}
  timeoutSeconds: 3
  clientConfig: {{url: 'https://127.0.0.1:{port}/inject', caBundle: {ca_bundle}}}
  namespaceSelector: {{matchLabels: {{strait-injection: enabled}}}}
  rules: [{{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [pods]}}]
"
    )
}

fn containers(pod_json: &str) -> anyhow::Result<Vec<String>> {
    let pod: serde_json::Value = serde_json::from_str(pod_json)?;
    let spec = &pod["spec"];
    Ok(spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect())
}

/// Pods created in a labelled namespace get the sidecar and the capture step through
/// straitd's webhook; an unlabelled namespace and an opted-out pod are left alone.
#[test]
fn the_injection_webhook_adds_the_sidecar_where_asked() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::start("the_injection_webhook_adds_the_sidecar_where_asked")?
    else {
        return Ok(());
    };
    use base64::Engine as _;
    let root = std::fs::read(cluster.straitd.root_cert())?;
    let bundle = base64::engine::general_purpose::STANDARD.encode(root);
    cluster.kube.ensure_namespace("meshed")?;
    cluster.kube.ensure_namespace("plain")?;
    cluster
        .kube
        .kubectl(&["label", "namespace", "meshed", "strait-injection=enabled"])?;
    cluster
        .kube
        .apply_yaml(&webhook_configuration(cluster.webhook_port, &bundle))?;
    let pod = |ns: &str, name: &str, annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}{annotations}}}\nspec: {{containers: [{{name: app, image: app:1, ports: [{{containerPort: 8080}}]}}]}}\n"
        )
    };
    cluster.kube.apply_yaml(&pod("meshed", "app", ""))?;
    cluster.kube.apply_yaml(&pod("plain", "app", ""))?;
    cluster.kube.apply_yaml(&pod(
        "meshed",
        "opted-out",
        ", annotations: {sidecar.istio.io/inject: 'false'}",
    ))?;
    let get = |ns: &str, name: &str| {
        cluster
            .kube
            .kubectl(&["get", "pod", "-n", ns, name, "-o", "json"])
    };
    let injected = containers(&get("meshed", "app")?)?;
    anyhow::ensure!(
        injected.contains(&"strait-proxy".to_string())
            && injected.contains(&"strait-init".to_string())
            && injected.contains(&"app".to_string()),
        "a pod in a labelled namespace gets the sidecar: {injected:?}"
    );
    let plain = containers(&get("plain", "app")?)?;
    anyhow::ensure!(
        plain == ["app"],
        "an unlabelled namespace is left alone: {plain:?}"
    );
    let opted_out = containers(&get("meshed", "opted-out")?)?;
    anyhow::ensure!(
        opted_out == ["app"],
        "the opt-out is honoured: {opted_out:?}"
    );

    // The mesh root the injected sidecar mounts is published in every namespace.
    cluster.kube.ensure_namespace("strait-system")?;
    let root = std::fs::read_to_string(cluster.straitd.root_cert())?;
    eventually_blocking(Duration::from_secs(10), || {
        let json: serde_json::Value = serde_json::from_str(&cluster.kube.kubectl(&[
            "get",
            "configmap",
            "-n",
            "meshed",
            "strait-ca-root",
            "-o",
            "json",
        ])?)?;
        anyhow::ensure!(
            json["data"]["root-cert.pem"].as_str() == Some(root.as_str()),
            "{}",
            json["data"]
        );
        Ok(())
    })?;

    // With straitd gone: failurePolicy Fail refuses the pod, Ignore lets it in uninjected.
    let mut cluster = cluster;
    cluster.straitd.kill();
    let refused = cluster.kube.apply_yaml(&pod("meshed", "while-down", ""));
    anyhow::ensure!(
        refused.is_err(),
        "failurePolicy Fail refuses pods while the webhook is down: {refused:?}"
    );
    cluster.kube.apply_yaml(&webhook_configuration_with(
        cluster.webhook_port,
        &bundle,
        "Ignore",
    ))?;
    cluster.kube.apply_yaml(&pod("meshed", "while-down", ""))?;
    let json = cluster
        .kube
        .kubectl(&["get", "pod", "-n", "meshed", "while-down", "-o", "json"])?;
    let uninjected = containers(&json)?;
    anyhow::ensure!(
        uninjected == ["app"],
        "failurePolicy Ignore admits the pod as it is: {uninjected:?}"
    );
    Ok(())
}

/// Istio's CRDs, as `straitctl crds` makes them, installed and established.
fn install_crds(cluster: &Cluster) -> anyhow::Result<()> {
    let out = std::process::Command::new(strait_tests::bins::straitctl())
        .arg("crds")
        .output()?;
    anyhow::ensure!(out.status.success(), "straitctl crds: {out:?}");
    cluster.kube.apply_yaml(&String::from_utf8(out.stdout)?)?;
    cluster.kube.kubectl(&[
        "wait",
        "--for=condition=established",
        "--timeout=30s",
        "crd/virtualservices.networking.istio.io",
        "crd/destinationrules.networking.istio.io",
    ])?;
    Ok(())
}

fn reviews_vs(route: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: shop}}
spec:
  hosts: [web.shop.svc.cluster.local]
  http:
  - route:
    - {route}
"
    )
}

const WEB_DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

fn rate_limit_policy(interval: &str) -> String {
    format!(
        "apiVersion: policy.strait.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: web, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  limits:
  - {{name: all, requests: 100, interval: {interval}}}
"
    )
}

/// The `Reconciled` condition straitd wrote into an object's status: (status, message).
fn reconciled(cluster: &Cluster, kind: &str, name: &str) -> anyhow::Result<(String, String)> {
    let json: serde_json::Value = serde_json::from_str(
        &cluster
            .kube
            .kubectl(&["get", kind, "-n", "shop", name, "-o", "json"])?,
    )?;
    let condition = json["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Reconciled")
        .ok_or_else(|| anyhow::anyhow!("no Reconciled condition yet: {}", json["status"]))?;
    Ok((
        condition["status"].as_str().unwrap_or_default().to_string(),
        condition["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ))
}

fn validating_webhook(port: u16, ca_bundle: &str) -> String {
    format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: strait-validator}}
webhooks:
- name: validate.strait.io
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  clientConfig: {{url: 'https://127.0.0.1:{port}/validate', caBundle: {ca_bundle}}}
  rules:
  - {{operations: [CREATE, UPDATE], apiGroups: [networking.istio.io, security.istio.io, policy.strait.io], apiVersions: ['*'], resources: ['*']}}
"
    )
}

/// Istio objects from the API server: a bad field is refused by the validating webhook with
/// the validator's message; applied with the webhook off, it is refused alone (its status
/// says why, the last good version stays in force) while a good change after it still reaches
/// the proxy; a fixed version goes into force. A proxy's rejection of a cluster shows in the
/// status of the DestinationRule that made it, until that proxy is gone.
#[test]
fn istio_objects_are_validated_refused_alone_and_get_a_status() -> anyhow::Result<()> {
    let Some(mut cluster) =
        Cluster::start("istio_objects_are_validated_refused_alone_and_get_a_status")?
    else {
        return Ok(());
    };
    install_crds(&cluster)?;
    cluster.kube.ensure_namespace("shop")?;
    cluster.kube.ensure_namespace("strait-system")?;
    cluster.start_sidecar()?;
    cluster.kube.apply_yaml(WEB)?;
    cluster.kube.apply_yaml(&cluster.endpoints(&[0, 1]))?;
    cluster.kube.apply_yaml(WEB_DR)?;
    cluster.kube.apply_yaml(&reviews_vs(
        "destination: {host: web.shop.svc.cluster.local, subset: v1}",
    ))?;
    eventually_blocking(Duration::from_secs(5), || {
        let tally = cluster.tally_web(10);
        anyhow::ensure!(tally.get("web-v1") == Some(&10), "{tally:?}");
        Ok(())
    })?;
    eventually_blocking(Duration::from_secs(10), || {
        let (status, message) = reconciled(&cluster, "virtualservice", "web")?;
        anyhow::ensure!(status == "True", "{message}");
        Ok(())
    })?;

    // The validating webhook refuses a misspelt field with the validator's message.
    use base64::Engine as _;
    let bundle = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(cluster.straitd.root_cert())?);
    cluster
        .kube
        .apply_yaml(&validating_webhook(cluster.webhook_port, &bundle))?;
    let bad = reviews_vs(
        "destination: {host: web.shop.svc.cluster.local, subset: v2}\n      weigth: 100",
    );
    let refused = cluster
        .kube
        .apply_yaml(&bad)
        .expect_err("the webhook refuses a misspelt field");
    let message = format!("{refused:#}");
    anyhow::ensure!(
        message.contains("weigth") && message.contains("VirtualService shop/web"),
        "{message}"
    );
    // Strait's own kind goes through the same validator.
    let refused = cluster
        .kube
        .apply_yaml(&rate_limit_policy("1s, per: 1s"))
        .expect_err("the webhook refuses an unknown field");
    let message = format!("{refused:#}");
    anyhow::ensure!(
        message.contains("RateLimitPolicy shop/web") && message.contains("spec.limits[0].per"),
        "{message}"
    );

    // Without the webhook the API server stores it; straitd refuses it alone.
    cluster.kube.kubectl(&[
        "delete",
        "validatingwebhookconfiguration",
        "strait-validator",
    ])?;
    cluster.kube.apply_yaml(&bad)?;
    eventually_blocking(Duration::from_secs(10), || {
        let (status, message) = reconciled(&cluster, "virtualservice", "web")?;
        anyhow::ensure!(
            status == "False"
                && message.contains("weigth")
                && message.contains("last good version stays in force"),
            "{status}: {message}"
        );
        Ok(())
    })?;
    let tally = cluster.tally_web(10);
    anyhow::ensure!(
        tally.get("web-v1") == Some(&10),
        "the last good version routes: {tally:?}"
    );
    // A RateLimitPolicy too: refused alone with its field in its status, then in force.
    cluster.kube.apply_yaml(&rate_limit_policy("10ms"))?;
    eventually_blocking(Duration::from_secs(10), || {
        let (status, message) = reconciled(&cluster, "ratelimitpolicy", "web")?;
        anyhow::ensure!(
            status == "False" && message.contains("spec.limits[0].interval"),
            "{status}: {message}"
        );
        Ok(())
    })?;
    cluster.kube.apply_yaml(&rate_limit_policy("1s"))?;
    eventually_blocking(Duration::from_secs(10), || {
        let (status, message) = reconciled(&cluster, "ratelimitpolicy", "web")?;
        anyhow::ensure!(status == "True", "{status}: {message}");
        Ok(())
    })?;
    // A good change after it still reaches the proxy: a new Service answers on its VIP.
    cluster.kube.apply_yaml(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: shop}}\nspec: {{clusterIP: 10.96.0.51, ports: [{{name: http, port: 80}}]}}\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: api, namespace: shop}}\nsubsets: [{{addresses: [{{ip: {HUB_V4}}}], ports: [{{name: http, port: {}}}]}}]\n",
        cluster.backends[1].port()
    ))?;
    eventually_blocking(PROPAGATION + Duration::from_secs(1), || {
        let addr = SocketAddr::new("10.96.0.51".parse()?, 80);
        let resp = cluster.pod.block_on(async {
            HttpClient::without_pooling()
                // Until the Service is known, the request passes through to its (absent) VIP.
                .request(
                    addr,
                    &Req::get("api.shop", "/").timeout(Duration::from_millis(500)),
                )
                .await
        })?;
        anyhow::ensure!(resp.status == 200 && resp.body == "web-v2", "{resp:?}");
        Ok(())
    })?;
    // The fixed version goes into force.
    cluster.kube.apply_yaml(&reviews_vs(
        "destination: {host: web.shop.svc.cluster.local, subset: v2}",
    ))?;
    eventually_blocking(PROPAGATION, || {
        let tally = cluster.tally_web(10);
        anyhow::ensure!(tally.get("web-v2") == Some(&10), "{tally:?}");
        Ok(())
    })?;
    // A Sidecar from the API server narrows the namespace's sidecars to web: api's VIP is no
    // longer a service of theirs (the request passes through to the absent address), web
    // still routes; the Sidecar's status says it is in force. Deleting it brings api back.
    cluster.kube.apply_yaml(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: shop}\n\
         spec: {egress: [{hosts: ['./web.shop.svc.cluster.local']}]}\n",
    )?;
    let api_answers = || {
        let addr = SocketAddr::new("10.96.0.51".parse()?, 80);
        cluster.pod.block_on(async {
            HttpClient::without_pooling()
                .request(
                    addr,
                    &Req::get("api.shop", "/").timeout(Duration::from_millis(500)),
                )
                .await
        })
    };
    eventually_blocking(PROPAGATION + Duration::from_secs(1), || {
        let resp = api_answers();
        anyhow::ensure!(
            resp.as_ref().map_or(true, |r| r.status != 200),
            "api is outside the Sidecar's egress: {resp:?}"
        );
        let (status, message) = reconciled(&cluster, "sidecar", "default")?;
        anyhow::ensure!(status == "True", "{message}");
        Ok(())
    })?;
    let tally = cluster.tally_web(10);
    anyhow::ensure!(
        tally.get("web-v2") == Some(&10),
        "web is imported: {tally:?}"
    );
    cluster
        .kube
        .kubectl(&["delete", "sidecar", "-n", "shop", "default"])?;
    eventually_blocking(PROPAGATION + Duration::from_secs(1), || {
        let resp = api_answers()?;
        anyhow::ensure!(resp.status == 200 && resp.body == "web-v2", "{resp:?}");
        Ok(())
    })?;

    let hub = cluster.net.hub().clone();
    hub.block_on(crate::common::assert_no_nacks(&cluster.straitd))?;

    // A proxy that rejects a cluster the DestinationRule shapes: the DestinationRule's status
    // says which proxy rejected what, until that proxy goes away.
    let xds = cluster.straitd.xds_addr();
    hub.block_on(async {
        let mut rejecting = RejectingProxy::open(xds, "rejecting-1.shop").await?;
        rejecting
            .reject_clusters(&format!(
                "Error adding/updating cluster(s) {WEB_V1_CLUSTER}: refused by the test"
            ))
            .await?;
        // Polled with the async `eventually`, so the stream's connection keeps running (and
        // the NACK goes out) between polls.
        strait_tests::eventually(Duration::from_secs(10), || async {
            let (status, message) = reconciled(&cluster, "destinationrule", "web")?;
            anyhow::ensure!(
                status == "False"
                    && message.contains("proxy rejecting-1.shop rejected Cluster")
                    && message.contains(WEB_V1_CLUSTER)
                    && message.contains("refused by the test"),
                "{status}: {message}"
            );
            Ok(())
        })
        .await?;
        // The VirtualService made no cluster: its status is untouched.
        let (status, message) = reconciled(&cluster, "virtualservice", "web")?;
        anyhow::ensure!(status == "True", "{message}");
        drop(rejecting);
        anyhow::Ok(())
    })?;
    eventually_blocking(Duration::from_secs(10), || {
        let (status, message) = reconciled(&cluster, "destinationrule", "web")?;
        anyhow::ensure!(status == "True", "once the proxy left: {status}: {message}");
        Ok(())
    })
}

const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const WEB_V1_CLUSTER: &str = "outbound|80|v1|web.shop.svc.cluster.local";

/// A bare SotW ADS client that rejects the clusters it is sent, as an Envoy does whose build
/// cannot take them (no stock Envoy rejects what Strait sends).
struct RejectingProxy {
    requests: tokio::sync::mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
}

impl RejectingProxy {
    async fn open(xds: SocketAddr, node_id: &str) -> anyhow::Result<RejectingProxy> {
        use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
        let channel = tonic::transport::Channel::from_shared(format!("http://{xds}"))?
            .connect()
            .await?;
        let (requests, rx) = tokio::sync::mpsc::channel(4);
        let namespace = Value {
            kind: Some(Kind::StringValue("shop".into())),
        };
        requests
            .send(DiscoveryRequest {
                node: Some(Node {
                    id: node_id.into(),
                    metadata: Some(Struct {
                        fields: [("NAMESPACE".to_string(), namespace)].into_iter().collect(),
                    }),
                    ..Default::default()
                }),
                type_url: CLUSTER_TYPE.into(),
                ..Default::default()
            })
            .await?;
        let responses = AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(RejectingProxy {
            requests,
            responses,
        })
    }

    /// Waits for the first CDS response and NACKs it with `message`.
    async fn reject_clusters(&mut self, message: &str) -> anyhow::Result<()> {
        let response = tokio::time::timeout(Duration::from_secs(5), self.responses.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the stream ended before any CDS response"))?;
        anyhow::ensure!(response.type_url == CLUSTER_TYPE, "{}", response.type_url);
        self.requests
            .send(DiscoveryRequest {
                type_url: CLUSTER_TYPE.into(),
                response_nonce: response.nonce,
                error_detail: Some(envoy_types::pb::google::rpc::Status {
                    code: 3,
                    message: message.into(),
                    details: Vec::new(),
                }),
                ..Default::default()
            })
            .await?;
        Ok(())
    }
}

fn lease_holder(cluster: &Cluster) -> anyhow::Result<String> {
    let json: serde_json::Value = serde_json::from_str(&cluster.kube.kubectl(&[
        "get",
        "lease",
        "-n",
        "strait-system",
        "straitd-status",
        "-o",
        "json",
    ])?)?;
    Ok(json["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Two straitd replicas: both serve xDS from the API server; one holds the Lease and writes
/// status; killed, the Lease moves to the other, which then writes status.
#[test]
fn two_replicas_serve_and_the_lease_moves_when_the_leader_dies() -> anyhow::Result<()> {
    let Some(mut cluster) = Cluster::start_with(
        "two_replicas_serve_and_the_lease_moves_when_the_leader_dies",
        &["--lease-duration", "4s", "--replica-id", "first"],
    )?
    else {
        return Ok(());
    };
    install_crds(&cluster)?;
    cluster.kube.ensure_namespace("shop")?;
    cluster.kube.ensure_namespace("strait-system")?;
    eventually_blocking(Duration::from_secs(10), || {
        let holder = lease_holder(&cluster)?;
        anyhow::ensure!(holder == "first", "holder {holder:?}");
        Ok(())
    })?;
    let config = ConfigDir::new()?;
    let mut options = cluster.kube.straitd_options(config.path());
    options
        .extra_args
        .extend(["--lease-duration", "4s", "--replica-id", "second"].map(String::from));
    let second = cluster
        .net
        .hub()
        .spawn_from(move || Straitd::start(options))??;
    // The second replica serves too: a sidecar on it gets the Service from the API server.
    cluster.pod.capture(&[])?;
    let spec = ProxySpec::sidecar("client-1.shop", "shop", &[("app", "client")]).secure("client");
    let xds = XdsTarget::for_spec(&second, &spec)?;
    cluster.proxy = Some(cluster.pod.start_proxy(&*data_plane(), &xds, spec)?);
    cluster.kube.apply_yaml(WEB)?;
    cluster.kube.apply_yaml(&cluster.endpoints(&[0]))?;
    eventually_blocking(PROPAGATION, || {
        let resp = cluster.get_web()?;
        anyhow::ensure!(resp.status == 200, "{resp:?}");
        Ok(())
    })?;
    anyhow::ensure!(
        lease_holder(&cluster)? == "first",
        "the first keeps the Lease"
    );

    cluster.straitd.kill();
    eventually_blocking(Duration::from_secs(15), || {
        let holder = lease_holder(&cluster)?;
        anyhow::ensure!(holder == "second", "holder {holder:?}");
        Ok(())
    })?;
    // The new leader writes status.
    cluster.kube.apply_yaml(WEB_DR)?;
    eventually_blocking(Duration::from_secs(10), || {
        let (status, message) = reconciled(&cluster, "destinationrule", "web")?;
        anyhow::ensure!(status == "True", "{message}");
        Ok(())
    })?;
    drop(second);
    Ok(())
}
