//! Reads Kubernetes-style YAML (or JSON) documents into typed Istio objects.
//!
//! Shape errors (unknown fields, wrong types, unknown kinds) are found here, each naming the
//! origin, the object and the field path. Meaning is checked later by `Model::build`.

use serde::Deserialize;

use crate::error::{ObjectId, ValidationError};
use crate::istio::networking::{
    DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, SidecarSpec, VirtualServiceSpec,
    WorkloadEntrySpec,
};
use crate::istio::security::{
    AuthorizationPolicySpec, PeerAuthenticationSpec, RequestAuthenticationSpec,
};
use crate::istio::telemetry::TelemetrySpec;
use crate::istio::{Kind, ObjectMeta};
use crate::policy::RateLimitPolicySpec;

/// The spec of one object, by kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    VirtualService(VirtualServiceSpec),
    DestinationRule(DestinationRuleSpec),
    Gateway(GatewaySpec),
    ServiceEntry(ServiceEntrySpec),
    WorkloadEntry(WorkloadEntrySpec),
    PeerAuthentication(PeerAuthenticationSpec),
    AuthorizationPolicy(AuthorizationPolicySpec),
    RequestAuthentication(RequestAuthenticationSpec),
    Sidecar(SidecarSpec),
    RateLimitPolicy(RateLimitPolicySpec),
    Telemetry(TelemetrySpec),
}

/// One object as read, with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub id: ObjectId,
    /// `path/to/file.yaml (document 2)` or `admin API`.
    pub origin: String,
    pub api_version: String,
    pub meta: ObjectMeta,
    pub spec: Spec,
    /// The document as given, for `get`.
    pub raw: serde_json::Value,
}

/// Istio kinds Strait does not implement yet; named so users get a precise answer.
const UNSUPPORTED_KINDS: [&str; 4] = ["EnvoyFilter", "ProxyConfig", "WasmPlugin", "WorkloadGroup"];

/// Parses every document in `text`. `origin` names the source (usually a file path).
/// All documents are checked; any error fails the whole text.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Object>, Vec<ValidationError>> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let doc_origin = format!("{origin} (document {})", index + 1);
        let value = match serde_json::Value::deserialize(document) {
            Ok(v) => v,
            Err(e) => {
                errors.push(error(&doc_origin, None, "", format!("malformed YAML: {e}")));
                // The YAML stream cannot be resynchronised after a syntax error.
                break;
            }
        };
        match parse_value(value, &doc_origin) {
            Ok(Some(object)) => objects.push(object),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

fn error(origin: &str, object: Option<&ObjectId>, path: &str, message: String) -> ValidationError {
    ValidationError {
        origin: origin.to_string(),
        object: object.cloned(),
        path: path.to_string(),
        message,
    }
}

/// Parses one document; `Ok(None)` for an empty document.
pub fn parse_value(
    value: serde_json::Value,
    origin: &str,
) -> Result<Option<Object>, ValidationError> {
    let map = match value {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Object(map) => map,
        other => {
            return Err(error(
                origin,
                None,
                "",
                format!(
                    "expected a Kubernetes object (a map with apiVersion, kind, metadata, spec), got {}",
                    type_name(&other)
                ),
            ));
        }
    };
    let raw = serde_json::Value::Object(map.clone());
    let text_field = |key: &str| -> Result<String, ValidationError> {
        match map.get(key) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(other) => Err(error(
                origin,
                None,
                key,
                format!("expected a string, got {}", type_name(other)),
            )),
            None => Err(error(
                origin,
                None,
                key,
                "required field is missing".to_string(),
            )),
        }
    };
    let kind_name = text_field("kind")?;
    let api_version = text_field("apiVersion")?;

    let (group, version) = api_version
        .split_once('/')
        .unwrap_or(("", api_version.as_str()));
    if UNSUPPORTED_KINDS.contains(&kind_name.as_str()) && group.ends_with(".istio.io") {
        return Err(error(
            origin,
            None,
            "kind",
            format!("{kind_name} is not supported by Strait yet"),
        ));
    }
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind_name)
        .ok_or_else(|| {
            error(
                origin,
                None,
                "kind",
                format!(
                    "unsupported kind {kind_name:?}; expected one of VirtualService, DestinationRule, Gateway, ServiceEntry, WorkloadEntry, PeerAuthentication, AuthorizationPolicy, RequestAuthentication, Sidecar, Telemetry, RateLimitPolicy"
                ),
            )
        })?;
    if group != kind.group() || !kind.versions().contains(&version) {
        return Err(error(
            origin,
            None,
            "apiVersion",
            format!(
                "unsupported apiVersion {api_version:?} for {kind}; expected {}/{}",
                kind.group(),
                kind.versions().join(" or ")
            ),
        ));
    }

    let meta: ObjectMeta = match map.get("metadata") {
        None => {
            return Err(error(
                origin,
                None,
                "metadata.name",
                "required field is missing".to_string(),
            ));
        }
        Some(m) => serde_path_to_error::deserialize(m.clone()).map_err(|e| {
            error(
                origin,
                None,
                &join("metadata", &e.path().to_string()),
                clean(e.inner()),
            )
        })?,
    };
    let namespace = meta
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let id = ObjectId {
        kind,
        namespace: namespace.clone(),
        name: meta.name.clone(),
    };
    if meta.name.is_empty() {
        return Err(error(
            origin,
            Some(&id),
            "metadata.name",
            "required field is missing".to_string(),
        ));
    }
    for (field, value) in [
        ("metadata.name", &meta.name),
        ("metadata.namespace", &namespace),
    ] {
        if let Err(m) = check_dns_name(value) {
            return Err(error(origin, Some(&id), field, m));
        }
    }

    for key in map.keys() {
        if !matches!(
            key.as_str(),
            "apiVersion" | "kind" | "metadata" | "spec" | "status"
        ) {
            return Err(error(
                origin,
                Some(&id),
                key,
                "unknown field; expected apiVersion, kind, metadata, spec (or status)".to_string(),
            ));
        }
    }
    let spec_value = map
        .get("spec")
        .cloned()
        .unwrap_or(serde_json::Value::Object(Default::default()));
    let spec = deserialize_spec(kind, spec_value)
        .map_err(|(path, message)| error(origin, Some(&id), &join("spec", &path), message))?;
    Ok(Some(Object {
        id,
        origin: origin.to_string(),
        api_version,
        meta,
        spec,
        raw,
    }))
}

fn deserialize_spec(kind: Kind, value: serde_json::Value) -> Result<Spec, (String, String)> {
    fn de<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, (String, String)> {
        serde_path_to_error::deserialize(v).map_err(|e| (e.path().to_string(), clean(e.inner())))
    }
    Ok(match kind {
        Kind::VirtualService => Spec::VirtualService(de(value)?),
        Kind::DestinationRule => Spec::DestinationRule(de(value)?),
        Kind::Gateway => Spec::Gateway(de(value)?),
        Kind::ServiceEntry => Spec::ServiceEntry(de(value)?),
        Kind::WorkloadEntry => Spec::WorkloadEntry(de(value)?),
        Kind::PeerAuthentication => Spec::PeerAuthentication(de(value)?),
        Kind::AuthorizationPolicy => Spec::AuthorizationPolicy(de(value)?),
        Kind::RequestAuthentication => Spec::RequestAuthentication(de(value)?),
        Kind::Sidecar => Spec::Sidecar(de(value)?),
        Kind::RateLimitPolicy => Spec::RateLimitPolicy(de(value)?),
        Kind::Telemetry => Spec::Telemetry(de(value)?),
    })
}

/// `spec` + `http[0].weigth` -> `spec.http[0].weigth`; serde_path_to_error says "." for the root.
pub(crate) fn join(prefix: &str, path: &str) -> String {
    if path.is_empty() || path == "." {
        prefix.to_string()
    } else if path.starts_with('[') {
        format!("{prefix}{path}")
    } else {
        format!("{prefix}.{path}")
    }
}

/// serde's messages mention Rust-side details ("at line 0"); keep the part users need.
pub(crate) fn clean(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a map",
    }
}

/// RFC 1123 subdomain, as Kubernetes requires of names.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Object, ValidationError> {
        match parse(text, "t.yaml") {
            Ok(mut v) => Ok(v.remove(0)),
            Err(mut e) => Err(e.remove(0)),
        }
    }

    #[test]
    fn loads_all_three_api_versions_and_defaults_the_namespace() {
        for v in ["v1", "v1beta1", "v1alpha3"] {
            let o = one(&format!(
                "apiVersion: networking.istio.io/{v}\nkind: VirtualService\nmetadata: {{name: r}}\nspec: {{hosts: [r]}}\n"
            ))
            .unwrap();
            assert_eq!(o.id.namespace, "default");
            assert_eq!(o.id.to_string(), "VirtualService default/r");
        }
    }

    #[test]
    fn a_typo_is_an_unknown_field_with_its_path() {
        let e = one(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n      weigth: 10\n",
        )
        .unwrap_err();
        assert_eq!(e.path, "spec.http[0].route[0].weigth");
        assert!(
            e.message.contains("unknown field `weigth`"),
            "{}",
            e.message
        );
        assert_eq!(
            e.to_string().split(": ").take(3).collect::<Vec<_>>(),
            [
                "t.yaml (document 1)",
                "VirtualService default/reviews",
                "spec.http[0].route[0].weigth"
            ]
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = one("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: d, subsets: {name: v1}}\n").unwrap_err();
        assert_eq!(e.path, "spec.subsets");
        assert!(e.message.contains("sequence"), "{}", e.message);
    }

    #[test]
    fn rejects_unknown_kinds_versions_and_security_kinds() {
        let e = one("apiVersion: networking.istio.io/v1\nkind: EnvoyFilter\nmetadata: {name: s}\n")
            .unwrap_err();
        assert_eq!(e.path, "kind");
        let e = one("apiVersion: networking.istio.io/v2\nkind: Gateway\nmetadata: {name: s}\n")
            .unwrap_err();
        assert_eq!(e.path, "apiVersion");
        let e = one(
            "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: s}\n",
        )
        .unwrap_err();
        assert!(
            e.message.contains("not supported by Strait yet"),
            "{}",
            e.message
        );
    }

    #[test]
    fn malformed_yaml_names_the_document_and_line() {
        let e = parse("kind: [unclosed\n", "bad.yaml").unwrap_err();
        assert_eq!(e[0].origin, "bad.yaml (document 1)");
        assert!(
            e[0].message.starts_with("malformed YAML"),
            "{}",
            e[0].message
        );
        assert!(e[0].message.contains("line"), "{}", e[0].message);
    }

    #[test]
    fn requires_a_name_and_checks_it() {
        let e =
            one("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {namespace: x}\n")
                .unwrap_err();
        assert_eq!(e.path, "metadata.name");
        let e =
            one("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: Bad_Name}\n")
                .unwrap_err();
        assert_eq!(e.path, "metadata.name");
    }

    #[test]
    fn skips_empty_documents_and_tolerates_server_fields() {
        let v = parse(
            "---\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, uid: abc, resourceVersion: '12'}\nspec: {}\nstatus: {}\n---\n",
            "x",
        )
        .unwrap();
        assert_eq!(v.len(), 1);
    }
}
