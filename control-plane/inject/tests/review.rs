//! The admission review: the patch it returns, applied to the pod as sent, gives the pod
//! `inject_pod` makes.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Pod;
use pretty_assertions::assert_eq;
use serde_json::{Value, json};
use strait_inject::{Decision, InjectSettings, inject_pod, review};

fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "reviews-v1-5c4b8f9d7-",
            "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "5c4b8f9d7"},
            "annotations": {"traffic.sidecar.istio.io/excludeOutboundPorts": "6379"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "reviews-v1-5c4b8f9d7", "uid": "u-1", "controller": true}]
        },
        "spec": {
            "serviceAccountName": "bookinfo-reviews",
            "initContainers": [{"name": "migrate", "image": "migrate:1"}],
            "containers": [{
                "name": "reviews",
                "image": "reviews:1",
                "ports": [{"containerPort": 9080, "protocol": "TCP"}],
                "resources": {"limits": {"cpu": "1", "memory": "64Mi"}},
                "aFieldFromANewerKubernetes": {"kept": true}
            }],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": []}}]
        }
    })
}

fn request(object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": object,
            "dryRun": false
        }
    })
}

fn ask(review_json: &Value, ns: Option<&BTreeMap<String, String>>) -> Value {
    let bytes = review(
        &serde_json::to_vec(review_json).expect("JSON"),
        ns,
        &InjectSettings::default(),
    );
    serde_json::from_slice(&bytes).expect("the answer is JSON")
}

fn enabled() -> BTreeMap<String, String> {
    BTreeMap::from([("istio-injection".to_string(), "enabled".to_string())])
}

#[test]
fn the_patch_gives_the_injected_pod() {
    let original = pod();
    let answer = ask(&request(original.clone()), Some(&enabled()));
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch_bytes = STANDARD
        .decode(response["patch"].as_str().expect("a patch"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch_bytes).unwrap();
    let mut patched = original.clone();
    json_patch::patch(&mut patched, &patch).unwrap();

    // What inject_pod says, for the same pod in the same namespace.
    let typed: Pod = serde_json::from_value(original.clone()).unwrap();
    let mut meta = typed.metadata.clone();
    meta.namespace = Some("shop".into());
    let Decision::Injected(injection) = inject_pod(
        &meta,
        typed.spec.as_ref().unwrap(),
        Some(&enabled()),
        &InjectSettings::default(),
    )
    .unwrap() else {
        panic!("not injected")
    };
    let patched_pod: Pod = serde_json::from_value(patched.clone()).unwrap();
    assert_eq!(patched_pod.spec.as_ref(), Some(&injection.spec));
    let mut expected_meta = typed.metadata.clone();
    injection.apply_to(&mut expected_meta);
    assert_eq!(patched_pod.metadata, expected_meta);

    // And nothing else moved: fields unknown to the types are still there.
    assert_eq!(
        patched["spec"]["containers"][0]["aFieldFromANewerKubernetes"],
        json!({"kept": true})
    );
    assert_eq!(
        patched["spec"]["containers"],
        original["spec"]["containers"]
    );
    assert_eq!(patched["metadata"]["namespace"], Value::Null, "not added");
}

#[test]
fn the_injected_pod_is_not_patched_again() {
    let original = pod();
    let answer = ask(&request(original.clone()), None);
    let patch: json_patch::Patch = serde_json::from_slice(
        &STANDARD
            .decode(answer["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut patched = original;
    json_patch::patch(&mut patched, &patch).unwrap();
    let again = ask(&request(patched), None);
    assert_eq!(
        again["response"],
        json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true})
    );
}

#[test]
fn skipped_pods_are_allowed_unchanged() {
    let plain = json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true});
    // The namespace does not ask for injection.
    assert_eq!(
        ask(&request(pod()), Some(&BTreeMap::new()))["response"],
        plain
    );
    let disabled = BTreeMap::from([("strait-injection".to_string(), "disabled".to_string())]);
    assert_eq!(ask(&request(pod()), Some(&disabled))["response"], plain);
    // The pod opts out.
    let mut out = pod();
    out["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("false");
    assert_eq!(ask(&request(out), Some(&enabled()))["response"], plain);
    // hostNetwork.
    let mut host = pod();
    host["spec"]["hostNetwork"] = json!(true);
    assert_eq!(ask(&request(host), None)["response"], plain);
    // Not a pod creation.
    let mut update = request(pod());
    update["request"]["operation"] = json!("UPDATE");
    assert_eq!(ask(&update, None)["response"], plain);
    let mut deployment = request(pod());
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    assert_eq!(ask(&deployment, None)["response"], plain);
}

#[test]
fn a_pod_that_cannot_be_injected_is_refused_with_the_reason() {
    let mut bad = pod();
    bad["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeOutboundIPRanges"] =
        json!("10.0.0.0/33");
    let response = &ask(&request(bad), None)["response"];
    assert_eq!(response["allowed"], false);
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["status"]["code"], 400);
    assert_eq!(
        response["status"]["message"],
        "metadata.annotations['traffic.sidecar.istio.io/excludeOutboundIPRanges']: \"10.0.0.0/33\": prefix length 33 is longer than 32"
    );
    assert_eq!(response.get("patch"), None);

    let mut shape = pod();
    shape["spec"]["containers"][0]["ports"] = json!([{"containerPort": "eighty"}]);
    let response = &ask(&request(shape), None)["response"];
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("spec.containers[0].ports[0].containerPort: "),
        "{message}"
    );
}

#[test]
fn malformed_reviews_are_refused() {
    let answer = |bytes: &[u8]| -> Value {
        serde_json::from_slice(&review(bytes, None, &InjectSettings::default())).unwrap()
    };
    let not_json = answer(b"{not json");
    assert_eq!(not_json["kind"], "AdmissionReview");
    assert_eq!(not_json["response"]["uid"], "");
    assert_eq!(not_json["response"]["allowed"], false);
    assert!(
        not_json["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .starts_with("the AdmissionReview is not JSON: ")
    );
    let mut v1beta1 = request(pod());
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let response = &answer(&serde_json::to_vec(&v1beta1).unwrap())["response"];
    assert_eq!(response["allowed"], false);
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(
        response["status"]["message"],
        "expected an AdmissionReview of admission.k8s.io/v1, got kind \"AdmissionReview\" of \"admission.k8s.io/v1beta1\""
    );
    let no_uid =
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}});
    assert_eq!(
        answer(&serde_json::to_vec(&no_uid).unwrap())["response"]["status"]["message"],
        "request.uid: required field is missing"
    );
    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    assert_eq!(
        answer(&serde_json::to_vec(&no_request).unwrap())["response"]["status"]["message"],
        "request: required field is missing"
    );
}
