//! Writing an injection into the object as it was given (untyped), touching only what the
//! injection changed: the app's containers, fields this crate's Kubernetes types do not know,
//! numbers written as numbers and the order of keys all stay as they were.

use k8s_openapi::api::core::v1::PodSpec;
use serde_yaml_ng::{Mapping, Value};

use crate::error::InjectError;
use crate::pod::Injection;

/// The lists whose items the injection adds to; their items are matched by name.
const NAMED_LISTS: [&str; 3] = ["initContainers", "containers", "volumes"];

/// `pod` is a pod or a pod template (a mapping with `metadata` and `spec`); `original` is its
/// spec as it was typed for injection.
pub(crate) fn apply(
    pod: &mut Mapping,
    original: &PodSpec,
    injection: &Injection,
) -> Result<(), InjectError> {
    let before = typed_mapping(original)?;
    let after = typed_mapping(&injection.spec)?;
    write_changes(child_mapping(pod, "spec"), &before, &after, true);

    let metadata = child_mapping(pod, "metadata");
    for (field, entries) in [
        ("annotations", &injection.annotations),
        ("labels", &injection.labels),
    ] {
        if entries.is_empty() {
            continue;
        }
        let map = child_mapping(metadata, field);
        for (k, v) in entries {
            map.insert(Value::String(k.clone()), Value::String(v.clone()));
        }
    }
    Ok(())
}

/// Writes into `raw` what changed from `before` to `after` (both typed, serialized): a
/// changed key takes its new value, a removed one goes, and keys the types do not know stay.
/// With `lists`, the named lists are merged item by item.
fn write_changes(raw: &mut Mapping, before: &Mapping, after: &Mapping, lists: bool) {
    for (key, new) in after {
        if before.get(key) == Some(new) {
            continue;
        }
        let merged = match (key.as_str(), new) {
            (Some(list), Value::Sequence(items)) if lists && NAMED_LISTS.contains(&list) => {
                let raw_items = match raw.get(key) {
                    Some(Value::Sequence(raw_items)) => raw_items.as_slice(),
                    _ => &[],
                };
                Value::Sequence(merge_named(raw_items, before.get(key), items))
            }
            _ => new.clone(),
        };
        raw.insert(key.clone(), merged);
    }
    for key in before.keys() {
        if !after.contains_key(key) {
            raw.remove(key);
        }
    }
}

/// The injected list: an item that was there before is the raw item, with what the injection
/// changed in it written in (an app's container keeps fields the types do not know); new items
/// start with their name, as people write them.
fn merge_named(raw: &[Value], typed_before: Option<&Value>, injected: &[Value]) -> Vec<Value> {
    let name = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_string);
    let before: &[Value] = match typed_before {
        Some(Value::Sequence(items)) => items,
        _ => &[],
    };
    injected
        .iter()
        .map(|item| {
            let Some(n) = name(item) else {
                return item.clone();
            };
            let was = before.iter().find(|b| name(b).as_ref() == Some(&n));
            let raw_item = raw.iter().find(|r| name(r).as_ref() == Some(&n));
            match (was, raw_item) {
                (Some(was), Some(raw_item)) if was == item => raw_item.clone(),
                (Some(Value::Mapping(was)), Some(Value::Mapping(raw_item)))
                    if item.is_mapping() =>
                {
                    let mut out = raw_item.clone();
                    if let Value::Mapping(now) = item {
                        write_changes(&mut out, was, now, false);
                    }
                    Value::Mapping(out)
                }
                _ => name_first(item),
            }
        })
        .collect()
}

fn name_first(item: &Value) -> Value {
    let Value::Mapping(fields) = item else {
        return item.clone();
    };
    let key = Value::String("name".into());
    let mut out = Mapping::new();
    if let Some(name) = fields.get(&key) {
        out.insert(key.clone(), name.clone());
    }
    for (k, v) in fields {
        if *k != key {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Mapping(out)
}

fn typed_mapping(spec: &PodSpec) -> Result<Mapping, InjectError> {
    match serde_yaml_ng::to_value(spec) {
        Ok(Value::Mapping(m)) => Ok(m),
        Ok(_) => Err(InjectError::field("spec", "did not serialize to a mapping")),
        Err(e) => Err(InjectError::field("spec", format!("serializing: {e}"))),
    }
}

/// `parent[key]` as a mapping, made one if it is missing or null.
pub(crate) fn child_mapping<'a>(parent: &'a mut Mapping, key: &str) -> &'a mut Mapping {
    let slot = parent
        .entry(Value::String(key.to_string()))
        .or_insert(Value::Null);
    if !slot.is_mapping() {
        *slot = Value::Mapping(Mapping::new());
    }
    match slot {
        Value::Mapping(m) => m,
        _ => unreachable!("made a mapping above"),
    }
}
