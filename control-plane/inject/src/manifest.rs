//! `inject_manifest`: workload YAML in, the same YAML with sidecars out (`straitctl
//! kube-inject`). Offline, so no namespace label is consulted: every pod template that does
//! not opt out is injected.

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_yaml_ng::{Mapping, Value};

use crate::documents;
use crate::error::{InjectError, join, typed};
use crate::merge;
use crate::pod::{Decision, inject_in};
use crate::policy::Scope;
use crate::settings::InjectSettings;

/// Where a kind keeps its pod (template), from the object's root; `None`: not a workload.
fn template_path(api_version: &str, kind: &str) -> Option<&'static [&'static str]> {
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    match (group, kind) {
        ("", "Pod") => Some(&[]),
        ("", "ReplicationController")
        | ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("extensions", "Deployment" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job") => Some(&["spec", "template"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Injects every workload in a multi-document YAML stream: Pods, Deployments, StatefulSets,
/// DaemonSets, ReplicaSets, ReplicationControllers, Jobs and CronJobs, and those in a `List`'s
/// items. Everything else, and every document nothing was injected into, is written back as
/// it was, byte for byte. `force` injects pods that opt out too (`sidecar.istio.io/inject:
/// "false"`). Any error fails the whole stream.
pub fn inject_manifest(
    yaml: &str,
    settings: &InjectSettings,
    force: bool,
) -> Result<String, InjectError> {
    settings.validate()?;
    let scope = Scope::Anywhere { force };
    let mut out = String::with_capacity(yaml.len() * 2);
    for doc in documents::split(yaml) {
        let Some(number) = doc.number else {
            out.push_str(doc.text);
            continue;
        };
        let mut value: Value =
            serde_yaml_ng::from_str(doc.text).map_err(|e| InjectError::Yaml {
                document: number,
                message: e.to_string(),
            })?;
        let changed = match &mut value {
            Value::Mapping(object) => inject_object(object, settings, scope)
                .map_err(|e| e.located(number, object_name(object).as_deref()))?,
            _ => false,
        };
        if !changed {
            out.push_str(doc.text);
            continue;
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        if doc.marked || !out.is_empty() {
            out.push_str("---\n");
        }
        let text = serde_yaml_ng::to_string(&value).map_err(|e| InjectError::Yaml {
            document: number,
            message: format!("writing: {e}"),
        })?;
        out.push_str(&text);
    }
    Ok(out)
}

/// `true` when something was injected.
fn inject_object(
    object: &mut Mapping,
    settings: &InjectSettings,
    scope: Scope<'_>,
) -> Result<bool, InjectError> {
    let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_string);
    let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
        return Ok(false);
    };
    if api_version == "v1" && kind == "List" {
        return inject_list(object, settings, scope);
    }
    let Some(path) = template_path(&api_version, &kind) else {
        return Ok(false);
    };
    let namespace = object
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut node = &mut *object;
    let mut at = String::new();
    for key in path {
        at = join(&at, key);
        node = match node.get_mut(*key) {
            Some(Value::Mapping(m)) => m,
            Some(_) => return Err(InjectError::field(at, "expected a mapping")),
            None => return Err(InjectError::field(at, "required field is missing")),
        };
    }
    inject_template(node, namespace, settings, scope).map_err(|e| e.within(&at))
}

fn inject_list(
    list: &mut Mapping,
    settings: &InjectSettings,
    scope: Scope<'_>,
) -> Result<bool, InjectError> {
    let items = match list.get_mut("items") {
        None | Some(Value::Null) => return Ok(false),
        Some(Value::Sequence(items)) => items,
        Some(_) => return Err(InjectError::field("items", "expected a list")),
    };
    let mut changed = false;
    for (i, item) in items.iter_mut().enumerate() {
        let at = format!("items[{i}]");
        if let Value::Mapping(object) = item {
            let name = object_name(object);
            changed |= inject_object(object, settings, scope)
                .map_err(|e| e.located_object(name.as_deref()).within(&at))?;
        }
    }
    Ok(changed)
}

/// A pod or pod template: a mapping with `metadata` and `spec`.
fn inject_template(
    template: &mut Mapping,
    namespace: Option<String>,
    settings: &InjectSettings,
    scope: Scope<'_>,
) -> Result<bool, InjectError> {
    let mut meta: ObjectMeta = match template.get("metadata") {
        None | Some(Value::Null) => ObjectMeta::default(),
        Some(m) => typed(m.clone(), "metadata")?,
    };
    let spec: PodSpec = match template.get("spec") {
        None | Some(Value::Null) => {
            return Err(InjectError::field("spec", "required field is missing"));
        }
        Some(s) => typed(s.clone(), "spec")?,
    };
    // A template has no namespace of its own: its workload's decides (kube-system …).
    if meta.namespace.is_none() {
        meta.namespace = namespace;
    }
    match inject_in(&meta, &spec, scope, settings)? {
        Decision::Skipped(_) => Ok(false),
        Decision::Injected(injection) => {
            merge::apply(template, &spec, &injection)?;
            Ok(true)
        }
    }
}

/// `Deployment shop/web`, `Pod web`, or the kind alone.
fn object_name(object: &Mapping) -> Option<String> {
    let kind = object.get("kind").and_then(Value::as_str)?;
    let meta = object.get("metadata");
    let field = |key: &str| meta.and_then(|m| m.get(key)).and_then(Value::as_str);
    Some(match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => kind.to_string(),
    })
}
