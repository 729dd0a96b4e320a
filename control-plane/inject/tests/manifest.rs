//! `inject_manifest` beyond the golden files: opt-outs, `force`, and errors that name the
//! document, the object and the field.

use strait_inject::{InjectError, InjectSettings, inject_manifest};

fn settings() -> InjectSettings {
    InjectSettings::from_yaml("image: strait-proxy:test").expect("settings")
}

fn inject(yaml: &str) -> Result<String, String> {
    inject_manifest(yaml, &settings(), false).map_err(|e| e.to_string())
}

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    metadata:
      annotations: {ANNOTATIONS}
    spec:
      containers: [{name: web, image: nginx}]
";

fn deployment(annotations: &str) -> String {
    DEPLOYMENT.replace("{ANNOTATIONS}", annotations)
}

fn injected(yaml: &str) -> bool {
    inject(yaml).expect("inject").contains("strait-proxy:test")
}

#[test]
fn opt_outs_are_honoured_unless_forced() {
    for opt_out in [
        "{sidecar.istio.io/inject: 'false'}",
        "{sidecar.strait.io/inject: 'false'}",
    ] {
        let yaml = deployment(opt_out);
        assert_eq!(inject(&yaml).unwrap(), yaml, "{opt_out}");
        let forced = inject_manifest(&yaml, &settings(), true).unwrap();
        assert!(forced.contains("name: strait-proxy"), "{forced}");
    }
    assert!(injected(&deployment("{sidecar.istio.io/inject: 'true'}")));
    assert!(injected(&deployment("{}")));
}

#[test]
fn host_network_pods_are_left_alone_even_when_forced() {
    let yaml = "\
apiVersion: v1
kind: Pod
metadata: {name: node-exporter}
spec:
  hostNetwork: true
  containers: [{name: exporter, image: exporter}]
";
    assert_eq!(inject_manifest(yaml, &settings(), true).unwrap(), yaml);
}

#[test]
fn injecting_the_output_again_changes_nothing() {
    let yaml = format!(
        "{}---\n{}",
        deployment("{}"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: a}]}\n"
    );
    let once = inject(&yaml).unwrap();
    assert_ne!(once, yaml);
    assert_eq!(inject(&once).unwrap(), once);
    assert_eq!(inject_manifest(&once, &settings(), true).unwrap(), once);
}

#[test]
fn bad_annotations_name_the_document_object_and_annotation() {
    let yaml = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n---\n{}",
        deployment("{traffic.sidecar.istio.io/excludeInboundPorts: '8080,http'}")
    );
    assert_eq!(
        inject(&yaml).unwrap_err(),
        "document 2: Deployment shop/web: spec.template.metadata.annotations['traffic.sidecar.istio.io/excludeInboundPorts']: \"http\": not a port number (1-65535)"
    );
    assert_eq!(
        inject(&deployment(
            "{traffic.sidecar.istio.io/includeOutboundIPRanges: '10.0.0.0/33'}"
        ))
        .unwrap_err(),
        "document 1: Deployment shop/web: spec.template.metadata.annotations['traffic.sidecar.istio.io/includeOutboundIPRanges']: \"10.0.0.0/33\": prefix length 33 is longer than 32"
    );
    assert_eq!(
        inject(&deployment("{sidecar.istio.io/proxyCPU: lots}")).unwrap_err(),
        "document 1: Deployment shop/web: spec.template.metadata.annotations['sidecar.istio.io/proxyCPU']: \"lots\" is not a resource quantity (a number with an optional suffix: m, k, M, G, Ki, Mi, Gi, …)"
    );
    assert_eq!(
        inject(&deployment("{sidecar.istio.io/inject: sometimes}")).unwrap_err(),
        "document 1: Deployment shop/web: spec.template.metadata.annotations['sidecar.istio.io/inject']: expected \"true\" or \"false\", got \"sometimes\""
    );
}

#[test]
fn shape_errors_name_the_field() {
    let cronjob = "\
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: '@daily'
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - name: a
            image: a
            ports: [{containerPort: eighty}]
";
    let e = inject(cronjob).unwrap_err();
    assert!(
        e.starts_with(
            "document 1: CronJob nightly: spec.jobTemplate.spec.template.spec.containers[0].ports[0].containerPort: "
        ),
        "{e}"
    );
    assert_eq!(
        inject("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n")
            .unwrap_err(),
        "document 1: Deployment d: spec.template: required field is missing"
    );
    assert_eq!(
        inject("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n").unwrap_err(),
        "document 1: Pod p: spec: required field is missing"
    );
    assert_eq!(
        inject("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n").unwrap_err(),
        "document 1: Pod p: spec.containers: a pod needs at least one container"
    );
}

#[test]
fn errors_in_a_list_name_the_item() {
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {{name: c}}\n- {}",
        deployment("{sidecar.istio.io/interceptionMode: TPROXY}")
            .trim_end()
            .replace('\n', "\n  ")
    );
    let e = inject(&list).unwrap_err();
    assert!(
        e.starts_with(
            "document 1: Deployment shop/web: items[1].spec.template.metadata.annotations['sidecar.istio.io/interceptionMode']: TPROXY is not supported"
        ),
        "{e}"
    );
}

#[test]
fn malformed_yaml_names_its_document() {
    let e = inject_manifest(
        "apiVersion: v1\nkind: ConfigMap\n---\nkind: [\n",
        &settings(),
        false,
    )
    .unwrap_err();
    assert!(matches!(e, InjectError::Yaml { document: 2, .. }), "{e}");
    assert!(
        e.to_string().starts_with("document 2: malformed YAML: "),
        "{e}"
    );
}

#[test]
fn non_objects_and_empty_documents_pass_through() {
    for yaml in [
        "",
        "---\n",
        "# only a comment\n",
        "- a\n- b\n",
        "just text\n",
        "{}\n",
    ] {
        assert_eq!(inject(yaml).unwrap(), yaml);
    }
}
