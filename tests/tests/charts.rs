//! The Helm charts (`charts/strait-base`, `charts/strait`) and the images (`images/*/Dockerfile`):
//! `helm lint --strict`, every rendering checked by `kubernetes-validate` against Kubernetes
//! 1.33's schemas, what the rendered objects say (replicas, ports, selectors, RBAC, injector
//! settings, the CA straitd is given), and that the Dockerfiles build what the chart runs.
//!
//! The charts are also installed on a real kube-apiserver (the kube harness): the CRDs become
//! established, Istio's samples are stored through them, upgrades keep the CA.
//!
//! The tools are the kube harness's (`STRAIT_HELM`, `STRAIT_KUBERNETES_VALIDATE`, ... else the
//! tools cache of scripts/install-kube-tools.sh). Without them a test says it was skipped,
//! unless `CI=true`, where it fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use strait_tests::eventually_blocking;
use strait_tests::kube::{self, KubeApi, Tool};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// A tool of the kube harness (`$STRAIT_HELM`, ... else the tools cache), or `None` after
/// saying the test was skipped (under `CI=true`, a panic instead).
fn tool(test: &str, tool: Tool) -> Option<PathBuf> {
    kube::tools_available(test, &[tool]).then(|| tool.path().expect("just found"))
}

fn helm(test: &str) -> Option<PathBuf> {
    tool(test, Tool::Helm)
}

fn run(program: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(text)
    }
}

/// `helm template` of a chart in strait-system with `--set` values, as text.
fn template_text(helm: &Path, chart: &str, sets: &[&str]) -> Result<String, String> {
    let chart = format!("charts/{chart}");
    let mut args = vec!["template", "strait", chart.as_str(), "-n", "strait-system"];
    for set in sets {
        args.extend(["--set", set]);
    }
    run(helm, &args)
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("helm renders YAML"))
        .filter(|d| !d.is_null())
        .collect()
}

fn render(helm: &Path, chart: &str, sets: &[&str]) -> Vec<Value> {
    let text = template_text(helm, chart, sets)
        .unwrap_or_else(|e| panic!("helm template {chart} {sets:?}: {e}"));
    documents(&text)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn get<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    find(docs, kind, name).unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn container_ports(container: &Value) -> BTreeSet<u64> {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect()
}

fn service_ports(service: &Value) -> Vec<(String, u64)> {
    service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["port"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn unb64(value: &Value) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str().expect("base64 text"))
        .expect("base64");
    String::from_utf8(bytes).expect("PEM is text")
}

// === helm lint, kubernetes-validate ===

#[test]
fn charts_lint_strictly() {
    let Some(helm) = helm("charts_lint_strictly") else {
        return;
    };
    for (chart, sets) in [
        ("strait-base", &[][..]),
        ("strait", &[][..]),
        (
            "strait",
            &["gateway.enabled=true", "xds.plaintext.enabled=true"][..],
        ),
    ] {
        let path = format!("charts/{chart}");
        let mut args = vec!["lint", "--strict", path.as_str()];
        for set in sets {
            args.extend(["--set", set]);
        }
        let out = run(&helm, &args).unwrap_or_else(|e| panic!("helm lint {chart} {sets:?}:\n{e}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn rendered_charts_pass_kubernetes_validate() {
    let test = "rendered_charts_pass_kubernetes_validate";
    let (Some(helm), Some(validate)) = (helm(test), tool(test, Tool::KubernetesValidate)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let renderings: [(&str, &[&str]); 5] = [
        ("strait-base", &[]),
        ("strait", &[]),
        ("strait", &["gateway.enabled=true", "straitd.replicas=3"]),
        (
            "strait",
            &[
                "xds.plaintext.enabled=true",
                "webhook.failurePolicy=Ignore",
                "gateway.enabled=true",
                "gateway.podDisruptionBudget.enabled=true",
                "gateway.service.type=ClusterIP",
            ],
        ),
        (
            "strait",
            &[
                "straitd.podDisruptionBudget.enabled=false",
                "straitd.replicas=1",
            ],
        ),
    ];
    for (i, (chart, sets)) in renderings.iter().enumerate() {
        let text = template_text(&helm, chart, sets)
            .unwrap_or_else(|e| panic!("helm template {chart} {sets:?}: {e}"));
        // Helm's text as it is (re-serializing would change what YAML 1.1 readers see).
        // Instances of the Istio kinds would be unknown to the Kubernetes schemas; the charts
        // make none, but the CRDs themselves are checked as CustomResourceDefinitions.
        let docs: Vec<&str> = text
            .split("\n---\n")
            .filter(|doc| {
                documents(doc).first().is_some_and(|d| {
                    !d["apiVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("istio.io/")
                })
            })
            .collect();
        let text = docs.join("\n---\n");
        let file = dir.path().join(format!("{i}-{chart}.yaml"));
        std::fs::write(&file, text).unwrap();
        let file = file.to_string_lossy().to_string();
        let out = run(
            &validate,
            &["--strict", "--kubernetes-version", "1.33", &file],
        )
        .unwrap_or_else(|e| panic!("kubernetes-validate {chart} {sets:?}:\n{e}"));
        let passed = out.lines().filter(|l| l.contains(" passed ")).count();
        assert_eq!(
            passed,
            docs.len(),
            "{chart} {sets:?}: not every object passed:\n{out}"
        );
    }
}

#[test]
fn values_are_checked_against_the_schema() {
    let Some(helm) = helm("values_are_checked_against_the_schema") else {
        return;
    };
    for (set, expected) in [
        ("gateway.enabeld=true", "'enabeld' not allowed"),
        ("webhook.failurePolicy=Sometimes", "failurePolicy"),
        ("straitd.replicas=0", "replicas"),
        ("meshConfig.outboundTrafficPolicy.mode=ALLOW", "mode"),
        (
            "injection.tokenExpirationSeconds=60",
            "tokenExpirationSeconds",
        ),
    ] {
        let refused = template_text(&helm, "strait", &[set]).unwrap_err();
        assert!(refused.contains(expected), "--set {set}: {refused}");
    }
}

// === straitd ===

#[test]
fn straitd_runs_as_the_values_say() {
    let Some(helm) = helm("straitd_runs_as_the_values_say") else {
        return;
    };
    let docs = render(&helm, "strait", &[]);
    let deployment = get(&docs, "Deployment", "straitd");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(pod_labels["sidecar.istio.io/inject"], "false");
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    let pdb = get(&docs, "PodDisruptionBudget", "straitd");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    for (key, value) in selector.as_object().unwrap() {
        assert_eq!(&pod_labels[key], value, "the selector picks the pods");
    }
    assert_eq!(
        &get(&docs, "Service", "straitd")["spec"]["selector"],
        selector
    );

    let straitd = container(deployment, "straitd");
    assert!(
        straitd.get("command").is_none(),
        "the image's entrypoint is straitd"
    );
    let args = strings(&straitd["args"]);
    for expected in [
        "--kubernetes",
        "--cluster-domain=cluster.local",
        "--xds-addr=127.0.0.1:15010",
        "--xds-tls-addr=0.0.0.0:15012",
        "--admin-addr=0.0.0.0:15014",
        "--plugin-ca-dir=/etc/cacerts",
        "--mesh-config=/etc/strait/mesh/mesh.yaml",
        "--injection-settings=/etc/strait/injector/settings.yaml",
        "--server-names=straitd,straitd.strait-system,straitd.strait-system.svc,straitd.strait-system.svc.cluster.local",
    ] {
        assert!(args.contains(&expected), "{expected} missing from {args:?}");
    }
    assert_eq!(
        container_ports(straitd),
        BTreeSet::from([15012, 15014, 15017])
    );
    assert_eq!(
        service_ports(get(&docs, "Service", "straitd")),
        [
            ("grpc-xds-tls".to_string(), 15012),
            ("https-webhook".to_string(), 15017),
            ("http-monitoring".to_string(), 15014)
        ]
    );
    assert_eq!(straitd["readinessProbe"]["httpGet"]["path"], "/readyz");
    let mesh: Value = serde_yaml_ng::from_str(
        get(&docs, "ConfigMap", "strait-mesh")["data"]["mesh.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        mesh,
        json!({"trustDomain": "cluster.local", "outboundTrafficPolicy": {"mode": "ALLOW_ANY"}})
    );

    let docs = render(
        &helm,
        "strait",
        &[
            "straitd.replicas=3",
            "xds.plaintext.enabled=true",
            "clusterDomain=example.internal",
        ],
    );
    let deployment = get(&docs, "Deployment", "straitd");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let straitd = container(deployment, "straitd");
    let args = strings(&straitd["args"]);
    assert!(args.contains(&"--xds-addr=0.0.0.0:15010"), "{args:?}");
    assert!(
        args.contains(&"--cluster-domain=example.internal"),
        "{args:?}"
    );
    assert_eq!(
        container_ports(straitd),
        BTreeSet::from([15010, 15012, 15014, 15017])
    );
    assert!(service_ports(get(&docs, "Service", "straitd")).contains(&("grpc-xds".into(), 15010)));

    let docs = render(
        &helm,
        "strait",
        &["straitd.podDisruptionBudget.enabled=false"],
    );
    assert!(find(&docs, "PodDisruptionBudget", "straitd").is_none());
}

/// Whether some rule grants `verb` on `group`/`resource` (optionally only for `name`).
fn allows(role: &Value, group: &str, resource: &str, verb: &str) -> bool {
    role["rules"].as_array().unwrap().iter().any(|rule| {
        strings(&rule["apiGroups"]).contains(&group)
            && strings(&rule["resources"]).contains(&resource)
            && strings(&rule["verbs"]).contains(&verb)
    })
}

#[test]
fn rbac_grants_what_straitd_needs() {
    let Some(helm) = helm("rbac_grants_what_straitd_needs") else {
        return;
    };
    let docs = render(&helm, "strait", &[]);
    let cluster_role = get(&docs, "ClusterRole", "straitd-strait-system");
    let read = [
        ("", "services"),
        ("", "endpoints"),
        ("", "pods"),
        ("", "namespaces"),
        // Gateway credentials (credentialName, Ingress secretName).
        ("", "secrets"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.k8s.io", "ingresses"),
        ("networking.k8s.io", "ingressclasses"),
    ];
    let crds = documents(
        &std::fs::read_to_string(root().join("charts/strait-base/files/crds.yaml")).unwrap(),
    );
    let istio: Vec<(String, String)> = crds
        .iter()
        .map(|c| {
            (
                c["spec"]["group"].as_str().unwrap().to_string(),
                c["spec"]["names"]["plural"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(istio.len(), strait_model::Kind::ALL.len());
    for (group, resource) in read
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .chain(istio.iter().cloned())
    {
        for verb in ["get", "list", "watch"] {
            assert!(
                allows(cluster_role, &group, &resource, verb),
                "{verb} {group}/{resource}"
            );
        }
        assert!(
            !allows(cluster_role, &group, &resource, "delete"),
            "delete {group}/{resource}"
        );
    }
    // The ingress gateway's addresses into Ingresses' status.loadBalancer.
    let ingresses = ("networking.k8s.io".to_string(), "ingresses".to_string());
    for (group, plural) in istio.iter().chain([&ingresses]) {
        for verb in ["update", "patch"] {
            let status = format!("{plural}/status");
            assert!(
                allows(cluster_role, group, &status, verb),
                "{verb} {group}/{status}"
            );
        }
        assert!(
            !allows(cluster_role, group, plural, "update"),
            "straitd writes status only"
        );
    }
    assert!(allows(
        cluster_role,
        "authentication.k8s.io",
        "tokenreviews",
        "create"
    ));
    assert!(allows(cluster_role, "", "configmaps", "create"));
    for verb in ["create", "update", "patch"] {
        assert!(
            !allows(cluster_role, "", "secrets", verb),
            "straitd reads Secrets, never writes them ({verb}); its CA comes from a volume"
        );
    }
    let webhook_rule = cluster_role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| strings(&r["resources"]) == ["mutatingwebhookconfigurations"])
        .unwrap();
    assert_eq!(
        strings(&webhook_rule["resourceNames"]),
        ["strait-sidecar-injector-strait-system"]
    );
    let binding = get(&docs, "ClusterRoleBinding", "straitd-strait-system");
    assert_eq!(binding["roleRef"]["name"], "straitd-strait-system");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "straitd", "namespace": "strait-system"}])
    );
    let role = get(&docs, "Role", "straitd");
    assert_eq!(role["metadata"]["namespace"], "strait-system");
    for verb in ["get", "create", "update"] {
        assert!(
            allows(role, "coordination.k8s.io", "leases", verb),
            "{verb} leases"
        );
    }
    assert_eq!(
        get(&docs, "RoleBinding", "straitd")["roleRef"]["name"],
        "straitd"
    );
    let deployment = get(&docs, "Deployment", "straitd");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "straitd"
    );
    assert!(find(&docs, "ServiceAccount", "straitd").is_some());
}

// === webhooks and the CA ===

#[test]
fn webhooks_select_and_trust_as_istio_does() {
    let Some(helm) = helm("webhooks_select_and_trust_as_istio_does") else {
        return;
    };
    let docs = render(&helm, "strait", &[]);
    let root_pem = unb64(&get(&docs, "Secret", "cacerts")["data"]["root-cert.pem"]);
    assert!(
        root_pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "{root_pem}"
    );

    let mutating = get(
        &docs,
        "MutatingWebhookConfiguration",
        "strait-sidecar-injector-strait-system",
    );
    let hooks = mutating["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2, "one per injection label, as Istio");
    let selectors: Vec<&Value> = hooks
        .iter()
        .map(|h| &h["namespaceSelector"]["matchExpressions"])
        .collect();
    assert_eq!(
        selectors,
        [
            &json!([{"key": "strait-injection", "operator": "In", "values": ["enabled"]}]),
            &json!([
                {"key": "istio-injection", "operator": "In", "values": ["enabled"]},
                {"key": "strait-injection", "operator": "DoesNotExist"},
            ]),
        ]
    );
    for hook in hooks {
        assert_eq!(
            hook["objectSelector"]["matchExpressions"],
            json!([{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}])
        );
        assert_eq!(
            hook["clientConfig"]["service"],
            json!({"name": "straitd", "namespace": "strait-system", "path": "/inject", "port": 15017})
        );
        assert_eq!(hook["clientConfig"]["caBundle"], b64(&root_pem));
        assert_eq!(hook["failurePolicy"], "Fail");
        assert_eq!(hook["sideEffects"], "None");
        assert_eq!(
            hook["rules"],
            json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                    "resources": ["pods"], "scope": "Namespaced"}])
        );
    }

    let validating = get(
        &docs,
        "ValidatingWebhookConfiguration",
        "strait-validator-strait-system",
    );
    let hook = &validating["webhooks"][0];
    assert_eq!(hook["clientConfig"]["service"]["path"], "/validate");
    assert_eq!(hook["clientConfig"]["caBundle"], b64(&root_pem));
    assert_eq!(hook["failurePolicy"], "Fail");
    let mut covered = BTreeSet::new();
    for rule in hook["rules"].as_array().unwrap() {
        assert_eq!(strings(&rule["operations"]), ["CREATE", "UPDATE"]);
        assert_eq!(strings(&rule["apiVersions"]), ["*"]);
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                covered.insert(format!("{resource}.{group}"));
            }
        }
    }
    let crds = documents(
        &std::fs::read_to_string(root().join("charts/strait-base/files/crds.yaml")).unwrap(),
    );
    let names: BTreeSet<String> = crds
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(covered, names, "the validating webhook covers every CRD");

    // Values change what they say they change.
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let docs = render(
        &helm,
        "strait",
        &[
            "webhook.failurePolicy=Ignore",
            "webhook.validationFailurePolicy=Ignore",
            &format!("webhook.caBundle={pem}"),
        ],
    );
    let mutating = get(
        &docs,
        "MutatingWebhookConfiguration",
        "strait-sidecar-injector-strait-system",
    );
    for hook in mutating["webhooks"].as_array().unwrap() {
        assert_eq!(hook["failurePolicy"], "Ignore");
        assert_eq!(hook["clientConfig"]["caBundle"], b64(pem));
    }
    let validating = get(
        &docs,
        "ValidatingWebhookConfiguration",
        "strait-validator-strait-system",
    );
    assert_eq!(validating["webhooks"][0]["failurePolicy"], "Ignore");

    // A CA of your own: mounted as it is, and the caBundle must come from somewhere.
    let refused = template_text(&helm, "strait", &["ca.existingSecret=my-cacerts"]).unwrap_err();
    assert!(refused.contains("webhook.caBundle"), "{refused}");
    let docs = render(
        &helm,
        "strait",
        &[
            "ca.existingSecret=my-cacerts",
            &format!("webhook.caBundle={pem}"),
        ],
    );
    assert!(find(&docs, "Secret", "cacerts").is_none());
    let volumes = &get(&docs, "Deployment", "straitd")["spec"]["template"]["spec"]["volumes"];
    assert!(
        volumes
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "my-cacerts"),
        "{volumes}"
    );
}

#[test]
fn the_generated_ca_is_one_straitd_loads() {
    let Some(helm) = helm("the_generated_ca_is_one_straitd_loads") else {
        return;
    };
    let docs = render(&helm, "strait", &[]);
    let secret = get(&docs, "Secret", "cacerts");
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "root-cert.pem",
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
    ] {
        std::fs::write(dir.path().join(file), unb64(&secret["data"][file])).unwrap();
    }
    // What `straitd --plugin-ca-dir` does with the mounted Secret.
    let ca = strait_ca::CertificateAuthority::load(
        strait_ca::CaSource::plugin_dir(dir.path()),
        strait_ca::CaOptions::default(),
    )
    .unwrap_or_else(|e| panic!("straitd refuses the chart's CA: {e}"));
    assert_eq!(
        ca.roots_pem().trim(),
        unb64(&secret["data"]["root-cert.pem"]).trim()
    );
    // The webhooks trust what straitd serves with.
    let serving = ca
        .issue_server(
            &["straitd.strait-system.svc".to_string()],
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
    assert!(!serving.cert.chain_pem.is_empty());
}

// === injection ===

fn injector_text(docs: &[Value]) -> String {
    get(docs, "ConfigMap", "strait-injector")["data"]["settings.yaml"]
        .as_str()
        .unwrap()
        .to_string()
}

fn injector_settings(docs: &[Value]) -> Value {
    serde_yaml_ng::from_str(&injector_text(docs)).unwrap()
}

#[test]
fn injector_settings_come_from_the_values() {
    let Some(helm) = helm("injector_settings_come_from_the_values") else {
        return;
    };
    let docs = render(&helm, "strait", &[]);
    // Read as straitd reads --injection-settings (unknown fields refused, values checked): the
    // chart's defaults are the injector's own, with the chart's image pull policy.
    let parsed = strait_inject::InjectSettings::from_yaml(&injector_text(&docs))
        .unwrap_or_else(|e| panic!("straitd refuses the chart's injection settings: {e}"));
    let defaults = strait_inject::InjectSettings::default();
    assert_eq!(
        parsed,
        strait_inject::InjectSettings {
            image_pull_policy: Some("IfNotPresent".into()),
            ..defaults.clone()
        }
    );
    // And every field is spelt out, so values.yaml documents them all.
    let settings = injector_settings(&docs);
    let fields = serde_json::to_value(&defaults).unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&settings), keys(&fields));
    assert_eq!(keys(&settings["capture"]), keys(&fields["capture"]));
    assert_eq!(
        settings["image"],
        format!("ghcr.io/strait-mesh/strait-proxy:{VERSION}")
    );
    assert_eq!(settings["imagePullPolicy"], "IfNotPresent");
    assert_eq!(settings["xdsAddress"], "straitd.strait-system.svc:15012");
    assert_eq!(settings["caRootConfigMap"], "strait-ca-root");
    assert_eq!(
        (settings["proxyUid"].clone(), settings["proxyGid"].clone()),
        (json!(1337), json!(1337))
    );
    assert_eq!(
        settings["ports"],
        json!({"outbound": 15001, "inbound": 15006, "admin": 15000})
    );
    assert_eq!(settings["nativeSidecars"], true);
    assert_eq!(settings["trustDomain"], "cluster.local");

    let docs = render(
        &helm,
        "strait",
        &[
            "injection.xdsAddress=straitd.mesh.svc:15012",
            "injection.nativeSidecars=false",
            "meshConfig.trustDomain=example.org",
            "images.proxy.tag=dev",
        ],
    );
    let parsed = strait_inject::InjectSettings::from_yaml(&injector_text(&docs)).unwrap();
    assert_eq!(parsed.xds_address, "straitd.mesh.svc:15012");
    assert!(!parsed.native_sidecars);
    let settings = injector_settings(&docs);
    assert_eq!(settings["xdsAddress"], "straitd.mesh.svc:15012");
    assert_eq!(settings["nativeSidecars"], false);
    assert_eq!(settings["trustDomain"], "example.org");
    assert_eq!(settings["image"], "ghcr.io/strait-mesh/strait-proxy:dev");
}

// === the ingress gateway ===

#[test]
fn the_gateway_is_strait_proxy_in_gateway_mode() {
    let Some(helm) = helm("the_gateway_is_strait_proxy_in_gateway_mode") else {
        return;
    };
    let docs = render(&helm, "strait", &[]);
    assert!(
        find(&docs, "Deployment", "strait-ingressgateway").is_none(),
        "off by default"
    );
    assert!(find(&docs, "Service", "strait-ingressgateway").is_none());

    let docs = render(&helm, "strait", &["gateway.enabled=true"]);
    let deployment = get(&docs, "Deployment", "strait-ingressgateway");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(
        labels["istio"], "ingressgateway",
        "bookinfo's Gateway selects it"
    );
    let proxy = container(deployment, "strait-proxy");
    assert!(
        proxy.get("command").is_none(),
        "the image's entrypoint is strait-proxy"
    );
    assert_eq!(
        proxy["image"],
        format!("ghcr.io/strait-mesh/strait-proxy:{VERSION}")
    );
    let args = strings(&proxy["args"]);
    for expected in [
        "--mode=gateway",
        "--xds=https://straitd.strait-system.svc:15012",
        "--ca-root=/etc/strait/ca/root-cert.pem",
        "--token-file=/var/run/secrets/strait/token",
        "--node-id=$(POD_NAME).$(POD_NAMESPACE)",
        "--labels=app=strait-ingressgateway,istio=ingressgateway",
        "--gateway-ports=80=8080,443=8443",
        "--admin-addr=0.0.0.0:15000",
    ] {
        assert!(args.contains(&expected), "{expected} missing from {args:?}");
    }
    assert_eq!(container_ports(proxy), BTreeSet::from([8080, 8443, 15000]));
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/ready");
    let service = get(&docs, "Service", "strait-ingressgateway");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(
        service_ports(service),
        [("http2".into(), 80), ("https".into(), 443)]
    );
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[key], value);
    }
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let token = volumes
        .iter()
        .find(|v| v["name"] == "strait-token")
        .unwrap();
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "strait-ca"
    );
    assert!(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"] == "strait-ca-root")
    );
}

// === images ===

/// The parts of a Dockerfile the chart depends on.
#[derive(Debug, Default)]
struct Dockerfile {
    stages: Vec<String>,
    labels: Vec<(String, String)>,
    expose: BTreeSet<u64>,
    entrypoint: Vec<String>,
    user: String,
    run: String,
}

fn dockerfile(image: &str) -> Dockerfile {
    let path = root().join("images").join(image).join("Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Continuation lines joined, comments dropped.
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    let mut file = Dockerfile::default();
    for line in lines {
        let line = line.trim();
        let Some((instruction, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let rest = rest.trim();
        match instruction {
            "FROM" => file.stages.push(rest.to_string()),
            "EXPOSE" => file
                .expose
                .extend(rest.split_whitespace().map(|p| p.parse::<u64>().unwrap())),
            "ENTRYPOINT" => file.entrypoint = serde_json::from_str(rest).unwrap(),
            "USER" => file.user = rest.to_string(),
            "RUN" => file.run.push_str(rest),
            "LABEL" => {
                for pair in rest.split("\" ") {
                    let (key, value) = pair.trim().split_once('=').unwrap();
                    file.labels
                        .push((key.to_string(), value.trim_matches('"').to_string()));
                }
            }
            _ => {}
        }
    }
    file
}

fn label<'a>(file: &'a Dockerfile, key: &str) -> &'a str {
    file.labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no LABEL {key}"))
}

#[test]
fn dockerfiles_build_what_the_chart_runs() {
    let Some(helm) = helm("dockerfiles_build_what_the_chart_runs") else {
        return;
    };
    let docs = render(
        &helm,
        "strait",
        &["gateway.enabled=true", "xds.plaintext.enabled=true"],
    );
    let straitd_pod = &get(&docs, "Deployment", "straitd")["spec"]["template"]["spec"];
    let gateway_pod =
        &get(&docs, "Deployment", "strait-ingressgateway")["spec"]["template"]["spec"];
    let settings = injector_settings(&docs);

    for (image, pod, container_name, binary, package) in [
        (
            "straitd",
            straitd_pod,
            "straitd",
            "straitd",
            "strait-control-plane",
        ),
        (
            "strait-proxy",
            gateway_pod,
            "strait-proxy",
            "strait-proxy",
            "strait-proxy",
        ),
    ] {
        let file = dockerfile(image);
        assert_eq!(
            file.stages[0], "rust:1-bookworm AS build",
            "{image}: the builder"
        );
        assert_eq!(label(&file, "org.opencontainers.image.title"), image);
        assert_eq!(label(&file, "org.opencontainers.image.version"), VERSION);
        // The chart runs the image by its name and version.
        let container = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == container_name)
            .unwrap();
        assert_eq!(
            container["image"],
            format!("ghcr.io/strait-mesh/{image}:{VERSION}")
        );
        // The chart gives args only: the entrypoint is the binary, built static.
        assert!(container.get("command").is_none());
        assert_eq!(file.entrypoint, [format!("/usr/local/bin/{binary}")]);
        assert!(
            file.run.contains(&format!(
                "cargo rustc --locked --release -p {package} --bin {binary} -- -C target-feature=+crt-static"
            )),
            "{image}: {}",
            file.run
        );
        // Non-root, as the chart's pods run.
        assert_eq!(file.user, "1337:1337");
        assert_eq!(pod["securityContext"]["runAsUser"], 1337);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    }

    let straitd = dockerfile("straitd");
    assert_eq!(straitd.stages[1], "gcr.io/distroless/static-debian12");
    assert!(
        straitd.run.contains("--bin straitctl"),
        "straitctl ships beside straitd"
    );
    assert_eq!(
        straitd.expose,
        container_ports(container(get(&docs, "Deployment", "straitd"), "straitd")),
        "EXPOSE and the chart's straitd ports"
    );

    let proxy = dockerfile("strait-proxy");
    assert_eq!(proxy.stages[1], "debian:bookworm-slim");
    assert!(
        proxy.run.contains("apt-get install") && proxy.run.contains("iptables"),
        "{}",
        proxy.run
    );
    let mut ports = container_ports(container(
        get(&docs, "Deployment", "strait-ingressgateway"),
        "strait-proxy",
    ));
    for port in ["outbound", "inbound", "admin"] {
        ports.insert(settings["ports"][port].as_u64().unwrap());
    }
    assert_eq!(
        proxy.expose, ports,
        "EXPOSE and the gateway's and sidecar's ports"
    );
    assert_eq!(
        settings["proxyUid"], 1337,
        "the image's user is the uid capture leaves alone"
    );
}

#[test]
fn chart_versions_are_the_workspace_version() {
    for chart in ["strait-base", "strait"] {
        let path = root().join("charts").join(chart).join("Chart.yaml");
        let meta: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(meta["apiVersion"], "v2", "{chart}");
        assert_eq!(meta["name"], chart);
        assert_eq!(meta["version"], VERSION, "{chart}");
        assert_eq!(meta["appVersion"], VERSION, "{chart}");
    }
}

// === on a real API server ===

/// A CRD's name and its status conditions as (type, status).
type CrdConditions = (String, Vec<(String, String)>);

fn crd_conditions(api: &KubeApi) -> anyhow::Result<Vec<CrdConditions>> {
    let list: Value = serde_json::from_str(&api.kubectl(&[
        "get",
        "crd",
        "-l",
        "app.kubernetes.io/part-of=strait",
        "-o",
        "json",
    ])?)?;
    Ok(list["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|crd| {
            let conditions = crd["status"]["conditions"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|c| {
                    let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                    (field("type"), field("status"))
                })
                .collect();
            (
                crd["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                conditions,
            )
        })
        .collect())
}

fn secret_data(api: &KubeApi, name: &str) -> anyhow::Result<Value> {
    let secret: Value = serde_json::from_str(&api.kubectl(&[
        "get",
        "secret",
        name,
        "-n",
        "strait-system",
        "-o",
        "json",
    ])?)?;
    Ok(secret["data"].clone())
}

#[test]
fn charts_install_on_a_real_api_server() -> anyhow::Result<()> {
    let test = "charts_install_on_a_real_api_server";
    if !kube::available(test) || !kube::tools_available(test, &[Tool::Helm]) {
        return Ok(());
    }
    let api = KubeApi::start()?;
    let base = root().join("charts/strait-base").display().to_string();
    let chart = root().join("charts/strait").display().to_string();
    api.helm(&["install", "strait-base", &base])?;
    // Every CRD is taken as it is: names accepted, established, and structural (a
    // non-structural schema would show as NonStructuralSchema, and v1 CRDs would be refused).
    let crds = eventually_blocking(std::time::Duration::from_secs(60), || {
        let crds = crd_conditions(&api)?;
        anyhow::ensure!(
            crds.len() == strait_model::Kind::ALL.len(),
            "{} CRDs so far",
            crds.len()
        );
        for (name, conditions) in &crds {
            for wanted in ["NamesAccepted", "Established"] {
                anyhow::ensure!(
                    conditions.contains(&(wanted.to_string(), "True".to_string())),
                    "{name}: {conditions:?}"
                );
            }
        }
        Ok(crds)
    })?;
    for (name, conditions) in &crds {
        assert!(
            !conditions.iter().any(|(t, _)| t == "NonStructuralSchema"),
            "{name}: {conditions:?}"
        );
    }

    api.ensure_namespace("strait-system")?;
    // This API server is 1.20: no policy/v1 PodDisruptionBudget yet (1.21). straitd is not
    // running, so the validation webhook is told to let objects through.
    let sets = [
        "--set",
        "straitd.podDisruptionBudget.enabled=false",
        "--set",
        "webhook.validationFailurePolicy=Ignore",
        "--set",
        "gateway.enabled=true",
    ];
    let mut install = vec!["install", "strait", chart.as_str(), "-n", "strait-system"];
    install.extend(sets);
    api.helm(&install)?;
    let deployment: Value = serde_json::from_str(&api.kubectl(&[
        "get",
        "deployment",
        "straitd",
        "-n",
        "strait-system",
        "-o",
        "json",
    ])?)?;
    assert_eq!(deployment["spec"]["replicas"], 2);
    let ca = secret_data(&api, "cacerts")?;
    let webhook: Value = serde_json::from_str(&api.kubectl(&[
        "get",
        "validatingwebhookconfiguration",
        "strait-validator-strait-system",
        "-o",
        "json",
    ])?)?;
    assert_eq!(
        webhook["webhooks"][0]["clientConfig"]["caBundle"],
        ca["root-cert.pem"]
    );

    // Istio's own YAML is stored through the CRDs, in whichever served version it is written.
    let samples = root().join("tests/istio-samples");
    api.ensure_namespace("default")?;
    let applied = api.kubectl(&[
        "apply",
        "-n",
        "default",
        "-f",
        &samples.display().to_string(),
    ])?;
    assert!(
        applied.contains("virtualservice.networking.istio.io/reviews"),
        "{applied}"
    );
    let listed = api.kubectl(&["get", "vs,dr,gw", "-n", "default", "-o", "name"])?;
    for name in [
        "virtualservice.networking.istio.io/reviews",
        "destinationrule.networking.istio.io/reviews",
        "gateway.networking.istio.io/bookinfo-gateway",
    ] {
        assert!(listed.lines().any(|l| l == name), "{name} not in {listed}");
    }
    // Every served version, the status subresource, and a field straitd will refuse by name:
    // kept for it to see, not pruned away.
    api.ensure_namespace("mesh")?;
    for version in ["v1", "v1beta1", "v1alpha3"] {
        api.apply_yaml(&format!(
            "apiVersion: networking.istio.io/{version}\nkind: DestinationRule\nmetadata: {{name: r-{version}, namespace: mesh}}\nspec: {{host: r, subsets: [{{name: v1, labels: {{version: v1}}}}]}}\n"
        ))?;
    }
    api.apply_yaml(
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: mesh}\nspec: {action: DENY, rules: [{from: [{source: {namespaces: [other]}}]}]}\n",
    )?;
    let refused = api
        .apply_yaml("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bad, namespace: mesh}\nspec: {host: r, trafficPolicy: {connectionPool: {tcp: {maxConnections: lots}}}}\n")
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("maxConnections"),
        "{refused:#}"
    );
    api.kubectl_with_input(
        &["apply", "--validate=false", "-f", "-"],
        Some("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: typo, namespace: mesh}\nspec: {hosts: [r], http: [{route: [{destination: {host: r}, weigth: 1}]}]}\n"),
    )?;
    let stored: Value =
        serde_json::from_str(&api.kubectl(&["get", "vs", "typo", "-n", "mesh", "-o", "json"])?)?;
    assert_eq!(
        stored["spec"]["http"][0]["route"][0]["weigth"], 1,
        "{stored}"
    );
    api.kubectl(&[
        "patch",
        "dr",
        "r-v1",
        "-n",
        "mesh",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"Accepted","status":"True"}]}}"#,
    ])?;
    let status = api.kubectl(&[
        "get",
        "dr",
        "r-v1",
        "-n",
        "mesh",
        "-o",
        "jsonpath={.status.conditions[0].type}",
    ])?;
    assert_eq!(status.trim(), "Accepted");

    // An upgrade keeps the mesh CA (lookup), so workload certificates stay trusted.
    let mut upgrade = vec!["upgrade", "strait", chart.as_str(), "-n", "strait-system"];
    upgrade.extend(sets);
    upgrade.extend(["--set", "straitd.replicas=3"]);
    api.helm(&upgrade)?;
    assert_eq!(
        secret_data(&api, "cacerts")?,
        ca,
        "the CA changed on upgrade"
    );
    let replicas = api.kubectl(&[
        "get",
        "deployment",
        "straitd",
        "-n",
        "strait-system",
        "-o",
        "jsonpath={.spec.replicas}",
    ])?;
    assert_eq!(replicas.trim(), "3");

    // Uninstalling keeps the CA and the CRDs (and so every Istio object).
    api.helm(&["uninstall", "strait", "-n", "strait-system"])?;
    api.helm(&["uninstall", "strait-base"])?;
    assert_eq!(secret_data(&api, "cacerts")?, ca);
    assert_eq!(crd_conditions(&api)?.len(), strait_model::Kind::ALL.len());
    assert!(
        api.kubectl(&["get", "deployment", "straitd", "-n", "strait-system"])
            .is_err()
    );
    Ok(())
}

/// Writes a pod's volumes under `dir` as the kubelet would mount them (ConfigMap keys, Secret
/// keys decoded, emptyDir), and returns (mountPath, local path) for the container's mounts.
fn mount_volumes(
    docs: &[Value],
    pod: &Value,
    container: &Value,
    dir: &Path,
) -> Vec<(String, PathBuf)> {
    let volumes = pod["volumes"].as_array().unwrap();
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|mount| {
            let mount_path = mount["mountPath"].as_str().unwrap().to_string();
            let local = dir.join(mount_path.trim_start_matches('/'));
            std::fs::create_dir_all(&local).unwrap();
            let volume = volumes
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("no volume for {mount}"));
            let files: Vec<(String, String)> =
                if let Some(name) = volume["configMap"]["name"].as_str() {
                    let data = get(docs, "ConfigMap", name)["data"].as_object().unwrap();
                    data.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect()
                } else if let Some(name) = volume["secret"]["secretName"].as_str() {
                    let data = get(docs, "Secret", name)["data"].as_object().unwrap();
                    data.iter().map(|(k, v)| (k.clone(), unb64(v))).collect()
                } else {
                    assert!(volume.get("emptyDir").is_some(), "volume kind of {volume}");
                    Vec::new()
                };
            for (file, text) in files {
                std::fs::write(local.join(file), text).unwrap();
            }
            (mount_path, local)
        })
        .collect()
}

/// straitd takes the chart's command line as it is, with the chart's files in place: only the
/// mount paths and listen ports are moved (to a temp dir and free loopback ports). It becomes
/// ready against a real API server, and its webhook port serves the name the API server calls
/// with a certificate that chains to the caBundle the chart gives the webhooks.
#[test]
fn straitd_starts_with_the_charts_command_line() -> anyhow::Result<()> {
    let test = "straitd_starts_with_the_charts_command_line";
    let Some(helm) = helm(test) else {
        return Ok(());
    };
    if !kube::available(test) {
        return Ok(());
    }
    let docs = render(&helm, "strait", &[]);
    let deployment = get(&docs, "Deployment", "straitd");
    let pod = &deployment["spec"]["template"]["spec"];
    let straitd = container(deployment, "straitd");
    let dir = strait_tests::process::workdir("strait-chart-straitd")?;
    let mounts = mount_volumes(&docs, pod, straitd, dir.path());
    let mut ports = std::collections::BTreeMap::new();
    let args: Vec<String> = strings(&straitd["args"])
        .into_iter()
        .map(|arg| {
            let mut arg = arg.to_string();
            for (mount_path, local) in &mounts {
                arg = arg.replace(&format!("={mount_path}"), &format!("={}", local.display()));
            }
            if let Some((flag, addr)) = arg.split_once('=')
                && let Ok(addr) = addr.parse::<std::net::SocketAddr>()
            {
                let port = strait_tests::ports::free_port();
                ports.insert(addr.port(), port);
                arg = format!("{flag}=127.0.0.1:{port}");
            }
            arg
        })
        .collect();
    assert!(args.iter().any(|a| a == "--kubernetes"), "{args:?}");

    let api = KubeApi::start()?;
    api.kubectl(&[
        "apply",
        "-f",
        &root()
            .join("charts/strait-base/files/crds.yaml")
            .display()
            .to_string(),
    ])?;
    api.ensure_namespace("strait-system")?;
    let mut cmd = Command::new(strait_tests::bins::straitd());
    cmd.args(&args)
        .env("KUBECONFIG", api.kubeconfig_path())
        .env("POD_NAME", "straitd-0")
        .env("POD_NAMESPACE", "strait-system");
    let mut child = strait_tests::process::ManagedChild::spawn(
        "straitd (chart)",
        cmd,
        &dir.path().join("straitd.log"),
    )?;
    let admin = format!("http://127.0.0.1:{}/readyz", ports[&15014]);
    child.wait_for("ready", std::time::Duration::from_secs(60), || {
        match strait_tests::client::get_blocking(&admin)? {
            (200, _) => Ok(()),
            (status, body) => anyhow::bail!("/readyz said {status} {body}"),
        }
    })?;

    // The webhooks, as the API server reaches them: https://straitd.strait-system.svc:15017,
    // trusting the caBundle. A DestinationRule with a misspelt field is refused by name.
    let ca_bundle = unb64(
        &get(
            &docs,
            "ValidatingWebhookConfiguration",
            "strait-validator-strait-system",
        )["webhooks"][0]["clientConfig"]["caBundle"],
    );
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "operation": "CREATE",
            "object": {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": "r", "namespace": "default"},
                "spec": {"host": "r", "subsets": [{"name": "v1", "lables": {"version": "v1"}}]},
            },
        },
    });
    let webhook: std::net::SocketAddr = format!("127.0.0.1:{}", ports[&15017]).parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let req = strait_tests::Req::post("straitd.strait-system.svc", "/validate", review.to_string())
        .header("content-type", "application/json");
    let (resp, _) = runtime.block_on(strait_tests::client::https_request(
        webhook,
        "straitd.strait-system.svc",
        &ca_bundle,
        &req,
    ))?;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let answer: Value = serde_json::from_str(&resp.body)?;
    assert_eq!(answer["response"]["uid"], "u-1");
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let message = answer["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("lables"), "{answer}");
    child.kill();
    Ok(())
}
