//! The generated CustomResourceDefinitions against real Istio YAML and against straitd's own
//! parser, and the chart's copy against the generator.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};
use strait_control_plane::crds;
use strait_model::{Kind, loader};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the control-plane crate sits in the workspace")
        .to_path_buf()
}

/// The JSON Schema a Kubernetes API server applies with strict field validation: an unknown
/// field is an error (pruning would drop it; `kubectl` and `fieldValidation=Strict` refuse it),
/// `nullable` admits null, and `apiVersion`, `kind` and `metadata` are implicit at the root.
fn as_strict_json_schema(node: &Value) -> Value {
    let mut out = node.as_object().cloned().unwrap_or_default();
    let preserve = out
        .remove("x-kubernetes-preserve-unknown-fields")
        .is_some_and(|v| v == true);
    if out.remove("nullable").is_some_and(|v| v == true)
        && let Some(t) = out.get("type").cloned()
    {
        out.insert("type".into(), json!([t, "null"]));
    }
    if let Some(Value::Object(properties)) = out.get_mut("properties") {
        for child in properties.values_mut() {
            *child = as_strict_json_schema(child);
        }
        if !preserve {
            out.insert("additionalProperties".into(), false.into());
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = out.get(key).filter(|c| c.is_object()) {
            let child = as_strict_json_schema(child);
            out.insert(key.into(), child);
        }
    }
    Value::Object(out)
}

fn object_validator(kind: Kind, version: &str) -> jsonschema::Validator {
    let crd = crds::crd(kind).unwrap();
    let served = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == version && v["served"] == true)
        .unwrap_or_else(|| panic!("{kind} is not served at {version}"));
    let mut root = as_strict_json_schema(&served["schema"]["openAPIV3Schema"]);
    for implicit in ["apiVersion", "kind"] {
        root["properties"][implicit] = json!({"type": "string"});
    }
    root["properties"]["metadata"] = json!({"type": "object"});
    jsonschema::validator_for(&root).expect("the CRD schema is a valid JSON Schema")
}

fn errors(validator: &jsonschema::Validator, object: &Value) -> Vec<String> {
    validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn kind_and_version(object: &Value) -> Option<(Kind, String)> {
    let kind = Kind::ALL
        .into_iter()
        .find(|k| object["kind"] == k.as_str())?;
    let (group, version) = object["apiVersion"].as_str()?.split_once('/')?;
    (group == kind.group()).then(|| (kind, version.to_string()))
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("YAML"))
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn chart_crds_are_up_to_date() {
    let path = workspace().join("charts/strait-base/files/crds.yaml");
    let checked_in = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        checked_in == crds::render_yaml().unwrap(),
        "{} differs from `straitctl crds`: regenerate it with\n  \
         cargo run -p strait-control-plane --bin straitctl -- crds -o charts/strait-base/files/crds.yaml",
        path.display()
    );
}

#[test]
fn istio_samples_validate_against_the_crd_schemas() {
    // Istio's samples as the repository keeps them (unmodified; see tests/istio-samples/).
    let dir = workspace().join("tests/istio-samples");
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the Istio samples at {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("listing the samples").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for object in documents(&text) {
            let Some((kind, version)) = kind_and_version(&object) else {
                continue;
            };
            let found = errors(&object_validator(kind, &version), &object);
            assert!(
                found.is_empty(),
                "{}: {kind} {}: {found:#?}",
                file.display(),
                object["metadata"]["name"]
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 8,
        "only {checked} Istio objects found in {}",
        dir.display()
    );
}

/// The CRD schema and straitd's parser agree on shape: what one refuses, the other refuses;
/// except unknown fields, which the schema keeps (the API server would prune them silently)
/// so that straitd refuses them by name.
#[test]
fn the_api_server_and_straitd_agree_on_shape() {
    let cases: [(&str, &str, bool); 12] = [
        (
            "VirtualService",
            "{hosts: [r], http: [{route: [{destination: {host: r}, weight: 100}]}]}",
            true,
        ),
        (
            "VirtualService",
            "{hosts: [r], http: [{route: [{destination: {host: r}, weigth: 100}]}]}",
            false,
        ),
        (
            "VirtualService",
            "{hosts: [r], http: [{route: [{destination: {host: r}, weight: '100'}]}]}",
            false,
        ),
        ("VirtualService", "{hosts: r}", false),
        // Declared to be refused later by name ("not supported"), so the shape passes.
        (
            "VirtualService",
            "{hosts: [r], tcp: [{route: [{destination: {host: r}}]}]}",
            true,
        ),
        (
            "VirtualService",
            "{hosts: [r], http: [{match: [{uri: {prefix: /a}, ignoreUriCase: true}], route: [{destination: {host: r, port: {number: 9080}}}]}]}",
            true,
        ),
        (
            "VirtualService",
            "{hosts: [r], http: [{route: [{destination: {host: r, port: {number: -1}}}]}]}",
            false,
        ),
        (
            "DestinationRule",
            "{host: r, subsets: [{name: v1, labels: {version: v1}}]}",
            true,
        ),
        (
            "DestinationRule",
            "{host: r, subsets: [{name: v1, labels: {version: 1}}]}",
            false,
        ),
        (
            "DestinationRule",
            "{host: r, trafficPolicy: {connectionPool: {tcp: {maxConnections: 10}}}}",
            true,
        ),
        (
            "PeerAuthentication",
            "{mtls: {mode: STRICT}, portLevelMtls: {'8080': {mode: DISABLE}}}",
            true,
        ),
        (
            "AuthorizationPolicy",
            "{rules: [{from: [{source: {principal: [x]}}]}]}",
            false,
        ),
    ];
    // Misspelt fields: kept by the schema, refused by straitd.
    let unknown_field = |spec: &str| spec.contains("weigth") || spec.contains("principal:");
    for (kind, spec, accepted) in cases {
        let text = format!(
            "apiVersion: {}/v1\nkind: {kind}\nmetadata: {{name: x, namespace: default}}\nspec: {spec}\n",
            Kind::ALL
                .into_iter()
                .find(|k| k.as_str() == kind)
                .unwrap()
                .group()
        );
        let object = documents(&text).remove(0);
        let (kind, version) = kind_and_version(&object).unwrap();
        let by_schema = errors(&object_validator(kind, &version), &object);
        let by_straitd = loader::parse(&text, "case.yaml");
        assert_eq!(
            by_schema.is_empty(),
            accepted || unknown_field(spec),
            "schema on {spec}: {by_schema:?}"
        );
        assert_eq!(
            by_straitd.is_ok(),
            accepted,
            "straitd on {spec}: {by_straitd:?}"
        );
    }
}
