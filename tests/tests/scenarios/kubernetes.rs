//! straitd against a real kube-apiserver: discovery from Services, Endpoints and Pods into a
//! captured sidecar (the ClusterIP is the VIP), the injection webhook, the validating webhook.
//!
//! Everything runs in network namespaces of the test's own (`strait_tests::netns`): etcd, the
//! API server and straitd in the hub (the API server reaches straitd's webhooks on the hub's
//! 127.0.0.1), backends on the hub's bridge address (Kubernetes refuses loopback endpoints),
//! the sidecar in a pod. Needs the kube tools (`scripts/install-kube-tools.sh`) and root.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use strait_tests::client::{HttpClient, Req, Resp};
use strait_tests::envoy::XdsTarget;
use strait_tests::kube::KubeApi;
use strait_tests::netns::{HUB_V4, Network, Pod, PodProxy};
use strait_tests::ports::free_port;
use strait_tests::{
    Backend, ConfigDir, ProxySpec, Straitd, StraitdOptions, data_plane, eventually_blocking,
};

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
        if !strait_tests::netns::available(test) || !strait_tests::kube::available(test) {
            return Ok(None);
        }
        let net = Network::new()?;
        let pod = net.pod("client")?;
        let hub = net.hub().clone();
        let kube = hub.spawn_from(KubeApi::start)??;
        let at_hub = SocketAddr::new(IpAddr::V4(HUB_V4), 0);
        let backends = hub.enter(|| -> anyhow::Result<Vec<Backend>> {
            Ok(vec![
                Backend::start_at("web-v1", at_hub)?,
                Backend::start_at("web-v2", at_hub)?,
            ])
        })?;
        let config = ConfigDir::new()?;
        let webhook_port = hub.enter(free_port);
        let mut options = StraitdOptions::new(config.path());
        options.xds_ip = Some(IpAddr::V4(HUB_V4));
        options.extra_args = vec![
            "--kubernetes".into(),
            "--webhook-addr".into(),
            format!("127.0.0.1:{webhook_port}"),
        ];
        options.env = vec![(
            "KUBECONFIG".into(),
            kube.kubeconfig_path().display().to_string(),
        )];
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

    fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.net.hub().enter(|| self.kube.kubectl(args))
    }

    fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        self.net.hub().enter(|| self.kube.apply_yaml(yaml))
    }

    fn namespace(&self, name: &str) -> anyhow::Result<()> {
        self.net.hub().enter(|| self.kube.ensure_namespace(name))
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
                .request(addr, &Req::get("web.shop", "/"))
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
    cluster.namespace("shop")?;
    cluster.start_sidecar()?;
    cluster.apply(WEB)?;
    cluster.apply(&cluster.endpoints(&[0]))?;
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
    cluster.apply(&cluster.endpoints(&[0, 1]))?;
    eventually_blocking(PROPAGATION, || {
        let tally = cluster.tally_web(20);
        anyhow::ensure!(
            tally.contains_key("web-v1") && tally.contains_key("web-v2"),
            "{tally:?}"
        );
        Ok(())
    })?;
    // The first one goes.
    cluster.apply(&cluster.endpoints(&[1]))?;
    eventually_blocking(PROPAGATION, || {
        let tally = cluster.tally_web(10);
        anyhow::ensure!(tally.get("web-v2") == Some(&10), "{tally:?}");
        Ok(())
    })?;
    let hub = cluster.net.hub().clone();
    hub.block_on(crate::common::assert_no_nacks(&cluster.straitd))
}

fn webhook_configuration(port: u16, ca_bundle: &str) -> String {
    format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: strait-injector}}
webhooks:
- name: inject.strait.io
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
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
    cluster.namespace("meshed")?;
    cluster.namespace("plain")?;
    cluster.kubectl(&["label", "namespace", "meshed", "strait-injection=enabled"])?;
    cluster.apply(&webhook_configuration(cluster.webhook_port, &bundle))?;
    let pod = |ns: &str, name: &str, annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}{annotations}}}\nspec: {{containers: [{{name: app, image: app:1, ports: [{{containerPort: 8080}}]}}]}}\n"
        )
    };
    cluster.apply(&pod("meshed", "app", ""))?;
    cluster.apply(&pod("plain", "app", ""))?;
    cluster.apply(&pod(
        "meshed",
        "opted-out",
        ", annotations: {sidecar.istio.io/inject: 'false'}",
    ))?;
    let get = |ns: &str, name: &str| cluster.kubectl(&["get", "pod", "-n", ns, name, "-o", "json"]);
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
    Ok(())
}
