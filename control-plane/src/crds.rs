//! CustomResourceDefinitions for the kinds Strait reads (Istio's and its own RateLimitPolicy;
//! `straitctl crds`), generated from
//! the model's own serde types so that what Kubernetes stores and what straitd parses have one
//! source.
//!
//! schemars gives a JSON Schema (draft 2020-12) per spec type; [`structural`] rewrites it into
//! the structural OpenAPI v3 schema a CRD must carry: `$ref`s inlined, `Option<T>` as `T` with
//! `nullable`, free-form JSON as `x-kubernetes-preserve-unknown-fields`, and only the keywords
//! Kubernetes accepts. Anything else schemars might produce is refused by name rather than
//! passed through for the API server to reject at install time.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use strait_model::Kind;
use strait_model::istio::networking::{
    DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, SidecarSpec, VirtualServiceSpec,
    WorkloadEntrySpec,
};
use strait_model::istio::security::{
    AuthorizationPolicySpec, PeerAuthenticationSpec, RequestAuthenticationSpec,
};
use strait_model::istio::telemetry::TelemetrySpec;
use strait_model::policy::RateLimitPolicySpec;

/// The version a kind is stored in (its first: `v1` for Istio's kinds); the others are served
/// with the same schema.
pub fn storage_version(kind: Kind) -> &'static str {
    kind.versions()[0]
}

/// A schema construct that has no structural form, with the JSON path where it was found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{kind} spec schema at {path}: {message}")]
pub struct CrdError {
    pub kind: Kind,
    pub path: String,
    pub message: String,
}

/// How Istio names a kind's resource: plural, singular, short names, `kubectl get` columns.
pub struct Names {
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    /// `(column, JSON path, type, description)`, before Age.
    pub columns: &'static [(&'static str, &'static str, &'static str, &'static str)],
    /// Istio puts Age before Address for WorkloadEntry.
    pub age_first: bool,
    pub description: &'static str,
}

/// Istio's names for each kind (its `crd-all.gen.yaml`), so `kubectl get vs` works as there.
pub fn names(kind: Kind) -> Names {
    const HOSTS: (&str, &str, &str, &str) = (
        "Hosts",
        ".spec.hosts",
        "string",
        "The destination hosts to which traffic is being sent",
    );
    match kind {
        Kind::VirtualService => Names {
            plural: "virtualservices",
            singular: "virtualservice",
            short_names: &["vs"],
            columns: &[
                (
                    "Gateways",
                    ".spec.gateways",
                    "string",
                    "The names of gateways and sidecars that should apply these routes",
                ),
                HOSTS,
            ],
            age_first: false,
            description: "Traffic routing for the hosts named: HTTP routes with matches, \
                          weighted destinations, retries, timeouts, faults, mirrors, rewrites.",
        },
        Kind::DestinationRule => Names {
            plural: "destinationrules",
            singular: "destinationrule",
            short_names: &["dr"],
            columns: &[(
                "Host",
                ".spec.host",
                "string",
                "The name of a service from the service registry",
            )],
            age_first: false,
            description: "Policies for traffic to a service after routing: subsets, load \
                          balancing, connection pools, outlier detection, TLS.",
        },
        Kind::Gateway => Names {
            plural: "gateways",
            singular: "gateway",
            short_names: &["gw"],
            columns: &[],
            age_first: false,
            description: "A load balancer at the edge of the mesh: the ports, protocols and \
                          hosts that gateway proxies whose labels match the selector serve.",
        },
        Kind::ServiceEntry => Names {
            plural: "serviceentries",
            singular: "serviceentry",
            short_names: &["se"],
            columns: &[
                HOSTS,
                (
                    "Location",
                    ".spec.location",
                    "string",
                    "Whether the service is external to the mesh or part of the mesh \
                     (MESH_EXTERNAL or MESH_INTERNAL)",
                ),
                (
                    "Resolution",
                    ".spec.resolution",
                    "string",
                    "Service resolution mode for the hosts (NONE, STATIC or DNS)",
                ),
            ],
            age_first: false,
            description: "A service in the mesh's registry: hosts, addresses, ports, and its \
                          endpoints or the WorkloadEntries it selects.",
        },
        Kind::WorkloadEntry => Names {
            plural: "workloadentries",
            singular: "workloadentry",
            short_names: &["we"],
            columns: &[(
                "Address",
                ".spec.address",
                "string",
                "Address associated with the network endpoint",
            )],
            age_first: true,
            description: "One workload outside the service registry's own discovery: its \
                          address, ports, labels and identity.",
        },
        Kind::PeerAuthentication => Names {
            plural: "peerauthentications",
            singular: "peerauthentication",
            short_names: &["pa"],
            columns: &[(
                "Mode",
                ".spec.mtls.mode",
                "string",
                "Defines the mTLS mode used for peer authentication",
            )],
            age_first: false,
            description: "Whether the selected workloads accept mutual TLS, plaintext or both \
                          (STRICT, PERMISSIVE, DISABLE), also per port.",
        },
        Kind::AuthorizationPolicy => Names {
            plural: "authorizationpolicies",
            singular: "authorizationpolicy",
            short_names: &["ap"],
            columns: &[("Action", ".spec.action", "string", "The operation to take")],
            age_first: false,
            description: "Access control for the selected workloads: ALLOW, DENY or AUDIT \
                          rules on sources, operations and conditions.",
        },
        Kind::RequestAuthentication => Names {
            plural: "requestauthentications",
            singular: "requestauthentication",
            short_names: &["ra"],
            columns: &[],
            age_first: false,
            description: "The JWTs the selected workloads verify: per issuer its audiences, \
                          keys (jwks or jwksUri), where the token is found and what is passed \
                          on once verified.",
        },
        Kind::Sidecar => Names {
            plural: "sidecars",
            singular: "sidecar",
            short_names: &[],
            columns: &[],
            age_first: false,
            description: "What the selected workloads' sidecars may reach: the egress hosts \
                          (namespace/host) whose configuration they receive, and their \
                          outbound traffic policy.",
        },
        Kind::Telemetry => Names {
            plural: "telemetries",
            singular: "telemetry",
            short_names: &["telemetry"],
            columns: &[],
            age_first: false,
            description: "Telemetry configuration for workloads: access logging (on, off, \
                          per client or server side), tracing and metrics.",
        },
        Kind::RateLimitPolicy => Names {
            plural: "ratelimitpolicies",
            singular: "ratelimitpolicy",
            short_names: &["rlp"],
            columns: &[],
            age_first: false,
            description: "Local rate limits for the selected workloads or gateways: token \
                          buckets per limit (requests per interval, burst), counting the \
                          requests a match selects, optionally one bucket per header value \
                          or client address.",
        },
    }
}

/// The JSON Schema schemars derives from the kind's spec type, as it comes.
pub fn spec_json_schema(kind: Kind) -> Value {
    let schema = match kind {
        Kind::VirtualService => schemars::schema_for!(VirtualServiceSpec),
        Kind::DestinationRule => schemars::schema_for!(DestinationRuleSpec),
        Kind::Gateway => schemars::schema_for!(GatewaySpec),
        Kind::ServiceEntry => schemars::schema_for!(ServiceEntrySpec),
        Kind::WorkloadEntry => schemars::schema_for!(WorkloadEntrySpec),
        Kind::PeerAuthentication => schemars::schema_for!(PeerAuthenticationSpec),
        Kind::AuthorizationPolicy => schemars::schema_for!(AuthorizationPolicySpec),
        Kind::RequestAuthentication => schemars::schema_for!(RequestAuthenticationSpec),
        Kind::Sidecar => schemars::schema_for!(SidecarSpec),
        Kind::RateLimitPolicy => schemars::schema_for!(RateLimitPolicySpec),
        Kind::Telemetry => schemars::schema_for!(TelemetrySpec),
    };
    schema.to_value()
}

/// The kind's `spec` as a structural OpenAPI v3 schema.
pub fn spec_schema(kind: Kind) -> Result<Value, CrdError> {
    let mut schema = structural(&spec_json_schema(kind)).map_err(|(path, message)| CrdError {
        kind,
        path,
        message,
    })?;
    if let Some(node) = schema.as_object_mut() {
        node.insert("description".into(), names(kind).description.into());
    }
    Ok(schema)
}

/// The CustomResourceDefinition (apiextensions.k8s.io/v1) for one kind.
pub fn crd(kind: Kind) -> Result<Value, CrdError> {
    let n = names(kind);
    let group = kind.group();
    let category = group.replace('.', "-");
    let schema = json!({
        "openAPIV3Schema": {
            "type": "object",
            "properties": {
                "spec": spec_schema(kind)?,
                // straitd writes what it made of the object; its shape is straitd's business.
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            },
        }
    });
    let age = json!({
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
        "description": "When the object was created",
    });
    let mut columns: Vec<Value> = n
        .columns
        .iter()
        .map(|(name, path, ty, description)| {
            json!({"name": name, "type": ty, "jsonPath": path, "description": description})
        })
        .collect();
    if n.age_first {
        columns.insert(0, age);
    } else {
        columns.push(age);
    }
    let versions: Vec<Value> = kind
        .versions()
        .iter()
        .map(|version| {
            json!({
                "name": version,
                "served": true,
                "storage": *version == storage_version(kind),
                "schema": schema,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
            })
        })
        .collect();
    Ok(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{group}", n.plural),
            "labels": {"app.kubernetes.io/part-of": "strait"},
            // Deleting a CRD deletes every object of its kind: Helm must not do it on uninstall.
            "annotations": {"helm.sh/resource-policy": "keep"},
        },
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "kind": kind.as_str(),
                "listKind": format!("{}List", kind.as_str()),
                "plural": n.plural,
                "singular": n.singular,
                "shortNames": n.short_names,
                "categories": [if group.ends_with(".istio.io") { "istio-io" } else { "strait-io" }, category],
            },
            "versions": versions,
        },
    }))
}

/// Every kind's CRD as one YAML stream, as `straitctl crds` prints it and
/// `charts/strait-base` carries it.
pub fn render_yaml() -> Result<String, CrdError> {
    let mut out = String::from(
        "# Generated by `straitctl crds` from strait-model's serde types; do not edit.\n",
    );
    for kind in Kind::ALL {
        let text = serde_yaml_ng::to_string(&crd(kind)?).expect("JSON values serialize as YAML");
        out.push_str("---\n");
        out.push_str(&text);
    }
    Ok(out)
}

/// Rewrites a schemars JSON Schema into a structural OpenAPI v3 schema, or says where and why it
/// cannot. `Err((json_path, message))`.
pub fn structural(schema: &Value) -> Result<Value, (String, String)> {
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut rewriter = Rewriter {
        defs,
        expanding: BTreeSet::new(),
    };
    rewriter.node(schema, "$", true).map(Value::Object)
}

struct Rewriter {
    defs: Map<String, Value>,
    /// The definitions being inlined on the current path: a recursive type has no structural
    /// form (a CRD schema is a finite tree).
    expanding: BTreeSet<String>,
}

// === impl Rewriter ===

impl Rewriter {
    fn node(
        &mut self,
        schema: &Value,
        path: &str,
        root: bool,
    ) -> Result<Map<String, Value>, (String, String)> {
        let err = |message: String| Err((path.to_string(), message));
        let object = match schema {
            // `true`, or `{}` below: any JSON (serde_json::Value, the fields Strait declares
            // only to refuse them by name). Kubernetes keeps it as it is.
            Value::Bool(true) => {
                let mut any = Map::new();
                any.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
                return Ok(any);
            }
            Value::Object(object) => object,
            other => return err(format!("expected a schema, got {other}")),
        };
        let mut out = Map::new();
        let mut nullable = false;
        for (key, value) in object {
            match key.as_str() {
                "$ref" => {
                    let inlined = self.reference(value, path)?;
                    // The referring node's own keywords (its field's doc comment) win.
                    for (k, v) in inlined {
                        out.entry(k).or_insert(v);
                    }
                }
                "anyOf" => {
                    // `Option<Struct>`: [{$ref}, {type: null}]. Other unions have no structural
                    // form (Kubernetes needs one type per node).
                    let branches = value.as_array().map(Vec::as_slice).unwrap_or_default();
                    let (nulls, others): (Vec<&Value>, Vec<&Value>) = branches
                        .iter()
                        .partition(|b| **b == json!({"type": "null"}));
                    if nulls.len() != 1 || others.len() != 1 {
                        return err(format!(
                            "anyOf is only supported as [T, null] (an Option), got {value}"
                        ));
                    }
                    nullable = true;
                    let inner = self.node(others[0], &format!("{path}.anyOf"), false)?;
                    for (k, v) in inner {
                        out.entry(k).or_insert(v);
                    }
                }
                "type" => match value {
                    Value::String(t) if t != "null" => {
                        out.insert("type".into(), value.clone());
                    }
                    Value::Array(types) => {
                        let named: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                        if named.len() != 1 {
                            return err(format!("a node needs exactly one type, got {value}"));
                        }
                        nullable |= named.len() < types.len();
                        out.insert("type".into(), named[0].clone());
                    }
                    _ => return err(format!("unsupported type {value}")),
                },
                "format" => {
                    let format = value.as_str().unwrap_or_default();
                    for (k, v) in integer_format(format)
                        .ok_or_else(|| (path.to_string(), format!("unknown format {value}")))?
                    {
                        out.insert(k.into(), v);
                    }
                }
                "properties" => {
                    let mut properties = Map::new();
                    for (name, property) in value.as_object().into_iter().flatten() {
                        let child = self.node(property, &format!("{path}.{name}"), false)?;
                        properties.insert(name.clone(), Value::Object(child));
                    }
                    out.insert("properties".into(), Value::Object(properties));
                }
                "additionalProperties" => match value {
                    // deny_unknown_fields. Kubernetes refuses `additionalProperties: false`
                    // (and any additionalProperties beside properties), and would prune
                    // unknown fields silently (servers before 1.25 have no strict field
                    // validation): they are kept instead, so that straitd's validating
                    // webhook and loader refuse a misspelt field by name.
                    Value::Bool(false) => {
                        out.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
                    }
                    _ => {
                        let child = self.node(value, &format!("{path}.*"), false)?;
                        out.insert("additionalProperties".into(), Value::Object(child));
                    }
                },
                "items" => {
                    let child = self.node(value, &format!("{path}[]"), false)?;
                    out.insert("items".into(), Value::Object(child));
                }
                "description" | "required" | "minimum" | "maximum" | "enum" => {
                    out.insert(key.clone(), value.clone());
                }
                // serde(default) fills missing fields when straitd reads the object; as a
                // Kubernetes default it would be written into every stored object instead
                // (and `null` defaults are refused on non-nullable fields).
                "default" => {}
                "title" | "$schema" | "$defs" if root => {}
                other => return err(format!("unsupported JSON Schema keyword {other:?}")),
            }
        }
        if nullable {
            out.insert("nullable".into(), true.into());
        }
        if !out.contains_key("type") {
            if out.keys().any(|k| k != "description" && k != "nullable") {
                return err(format!(
                    "a node with constraints but no type is not structural: {schema}"
                ));
            }
            out.remove("nullable");
            out.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
        }
        Ok(out)
    }

    fn reference(
        &mut self,
        reference: &Value,
        path: &str,
    ) -> Result<Map<String, Value>, (String, String)> {
        let name = reference
            .as_str()
            .and_then(|r| r.strip_prefix("#/$defs/"))
            .ok_or_else(|| (path.to_string(), format!("unsupported $ref {reference}")))?
            .to_string();
        let Some(def) = self.defs.get(&name).cloned() else {
            return Err((
                path.to_string(),
                format!("$ref to a missing definition {name:?}"),
            ));
        };
        if !self.expanding.insert(name.clone()) {
            return Err((
                path.to_string(),
                format!("{name} contains itself; a recursive type has no structural schema"),
            ));
        }
        let inlined = self.node(&def, path, false);
        self.expanding.remove(&name);
        inlined
    }
}

/// What a schemars numeric format becomes: Kubernetes knows int32, int64, float and double,
/// so unsigned integers are int64 with their bounds.
fn integer_format(format: &str) -> Option<Vec<(&'static str, Value)>> {
    let bounded = |max: u64| {
        vec![
            ("format", json!("int64")),
            ("minimum", json!(0)),
            ("maximum", json!(max)),
        ]
    };
    Some(match format {
        "int32" | "int64" | "float" | "double" => vec![("format", json!(format))],
        "uint8" => bounded(u8::MAX.into()),
        "uint16" => bounded(u16::MAX.into()),
        "uint32" => bounded(u32::MAX.into()),
        // Kubernetes integers are int64: larger values cannot be stored anyway.
        "uint64" | "uint" => vec![("format", json!("int64")), ("minimum", json!(0))],
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keywords a structural schema node may carry here.
    const ALLOWED: [&str; 11] = [
        "type",
        "format",
        "description",
        "properties",
        "additionalProperties",
        "items",
        "required",
        "minimum",
        "maximum",
        "nullable",
        "x-kubernetes-preserve-unknown-fields",
    ];

    /// Kubernetes' structural rules, as far as these schemas can break them.
    fn assert_structural(node: &Value, path: &str) {
        let object = node
            .as_object()
            .unwrap_or_else(|| panic!("{path}: not an object"));
        for key in object.keys() {
            assert!(ALLOWED.contains(&key.as_str()), "{path}: keyword {key}");
        }
        let preserve = object.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
        match object.get("type") {
            Some(Value::String(t)) => assert!(
                ["object", "array", "string", "integer", "number", "boolean"].contains(&t.as_str()),
                "{path}: type {t}"
            ),
            None => assert!(preserve, "{path}: a node without a type"),
            Some(other) => panic!("{path}: type {other}"),
        }
        if let Some(properties) = object.get("properties") {
            assert_eq!(object.get("type"), Some(&json!("object")), "{path}");
            assert!(
                !object.contains_key("additionalProperties"),
                "{path}: additionalProperties beside properties"
            );
            for (name, child) in properties.as_object().unwrap() {
                assert_structural(child, &format!("{path}.{name}"));
            }
        }
        if let Some(child) = object.get("additionalProperties") {
            assert!(child.is_object(), "{path}: additionalProperties {child}");
            assert_structural(child, &format!("{path}.*"));
        }
        if let Some(child) = object.get("items") {
            assert_eq!(object.get("type"), Some(&json!("array")), "{path}");
            assert_structural(child, &format!("{path}[]"));
        }
    }

    fn at<'a>(schema: &'a Value, path: &str) -> &'a Value {
        path.split('.').fold(schema, |node, step| match step {
            "[]" => &node["items"],
            "*" => &node["additionalProperties"],
            name => &node["properties"][name],
        })
    }

    #[test]
    fn every_kind_has_a_structural_schema() {
        for kind in Kind::ALL {
            let crd = crd(kind).unwrap();
            for version in crd["spec"]["versions"].as_array().unwrap() {
                let root = &version["schema"]["openAPIV3Schema"];
                assert_structural(root, &format!("{kind} {}", version["name"]));
                assert_eq!(
                    root["properties"]["status"],
                    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
                );
            }
        }
    }

    #[test]
    fn serde_attributes_reach_the_schema() {
        // What schemars makes of rename_all, deny_unknown_fields, default and r#match.
        let raw = spec_json_schema(Kind::VirtualService);
        assert_eq!(raw["additionalProperties"], json!(false));
        assert_eq!(
            raw["$defs"]["HttpRoute"]["additionalProperties"],
            json!(false)
        );
        assert!(raw["properties"].get("exportTo").is_some());
        assert!(raw["properties"].get("export_to").is_none());
        assert!(
            raw["$defs"]["HttpRoute"]["properties"]
                .get("match")
                .is_some()
        );
        assert!(raw["$defs"]["HttpRoute"].get("required").is_none());

        let spec = spec_schema(Kind::VirtualService).unwrap();
        let route = at(&spec, "http.[].route.[]");
        assert_eq!(
            route["properties"]["weight"],
            json!({"type": "integer", "format": "int64", "nullable": true})
        );
        assert_eq!(
            at(route, "destination.port.number"),
            &json!({"type": "integer", "format": "int64", "minimum": 0,
                    "maximum": 4294967295u64, "nullable": true})
        );
        assert_eq!(
            at(&spec, "http.[].match.[].ignoreUriCase")["type"],
            "boolean"
        );
        assert_eq!(
            at(&spec, "http.[].match.[].headers.*.exact")["type"],
            "string"
        );
        assert_eq!(at(&spec, "tls.[].match.[].sniHosts.[]")["type"], "string");
        assert_eq!(at(&spec, "tcp.[].match.[].port")["type"], "integer");
        assert_eq!(at(&spec, "http.[].delegate.name")["type"], "string");
        assert_eq!(
            at(&spec, "http.[].fault.delay.percent")["description"],
            "Deprecated integer percentage, still used by Istio's own samples."
        );
        // A required field stays optional where serde fills it in.
        assert!(
            at(&spec, "http.[].rewrite.uriRegexRewrite")
                .get("required")
                .is_none()
        );
        assert_eq!(spec["description"], names(Kind::VirtualService).description);
    }

    #[test]
    fn names_and_versions_are_istios() {
        let vs = crd(Kind::VirtualService).unwrap();
        assert_eq!(
            vs["metadata"]["name"],
            "virtualservices.networking.istio.io"
        );
        assert_eq!(vs["spec"]["names"]["shortNames"], json!(["vs"]));
        assert_eq!(
            vs["spec"]["names"]["categories"],
            json!(["istio-io", "networking-istio-io"])
        );
        let versions = |crd: &Value| -> Vec<(String, bool)> {
            crd["spec"]["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    assert_eq!(v["served"], true);
                    assert_eq!(v["subresources"], json!({"status": {}}));
                    (
                        v["name"].as_str().unwrap().to_string(),
                        v["storage"] == true,
                    )
                })
                .collect()
        };
        assert_eq!(
            versions(&vs),
            [
                ("v1".into(), true),
                ("v1beta1".into(), false),
                ("v1alpha3".into(), false)
            ]
        );
        let ap = crd(Kind::AuthorizationPolicy).unwrap();
        assert_eq!(
            ap["metadata"]["name"],
            "authorizationpolicies.security.istio.io"
        );
        assert_eq!(ap["spec"]["names"]["shortNames"], json!(["ap"]));
        assert_eq!(
            versions(&ap),
            [("v1".into(), true), ("v1beta1".into(), false)]
        );
        let se = crd(Kind::ServiceEntry).unwrap();
        assert_eq!(se["spec"]["names"]["plural"], "serviceentries");
        let columns: Vec<&str> = se["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Hosts", "Location", "Resolution", "Age"]);
        // The short names are the ones straitctl itself accepts.
        for kind in Kind::ALL {
            for short in names(kind).short_names {
                assert_eq!(Kind::parse_loose(short), Some(kind));
            }
            assert_eq!(Kind::parse_loose(names(kind).plural), Some(kind));
        }
    }

    #[test]
    fn rewriter_refuses_what_has_no_structural_form() {
        let err = |schema: Value| structural(&schema).unwrap_err();
        let recursive = json!({
            "type": "object",
            "properties": {"next": {"$ref": "#/$defs/Node"}},
            "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
        });
        let (path, message) = err(recursive);
        assert_eq!(path, "$.next.next");
        assert!(message.contains("Node contains itself"), "{message}");

        let union = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
        assert!(err(union).1.contains("only supported as [T, null]"));
        let (path, message) = err(json!({"type": "object", "properties": {"a": {"oneOf": []}}}));
        assert_eq!(
            (path.as_str(), message.as_str()),
            ("$.a", "unsupported JSON Schema keyword \"oneOf\"")
        );
        assert!(
            err(json!({"type": "string", "format": "uuid"}))
                .1
                .contains("unknown format")
        );
        assert!(err(json!({"minimum": 0})).1.contains("no type"));
        assert!(
            err(json!({"type": ["string", "integer"]}))
                .1
                .contains("exactly one type")
        );
        assert!(
            err(json!({"$ref": "#/$defs/Missing"}))
                .1
                .contains("missing definition")
        );
        // title and $schema only at the root: elsewhere they would be kept by nobody.
        assert!(
            err(json!({"type": "object", "properties": {"a": {"title": "A", "type": "string"}}}))
                .1
                .contains("title")
        );
    }

    #[test]
    fn options_become_nullable_and_any_json_is_preserved() {
        let schema = json!({
            "type": "object",
            "properties": {
                "a": {"type": ["string", "null"], "default": null},
                "b": {"anyOf": [{"$ref": "#/$defs/B"}, {"type": "null"}], "description": "field"},
                "c": true,
                "d": {"default": null, "description": "raw"},
            },
            "additionalProperties": false,
            "$defs": {"B": {"type": "object", "description": "type", "properties": {}, "additionalProperties": false}},
        });
        assert_eq!(
            structural(&schema).unwrap(),
            json!({
                "type": "object",
                // deny_unknown_fields: unknown fields are kept for straitd to refuse by name.
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {
                    "a": {"type": "string", "nullable": true},
                    "b": {"type": "object", "description": "field", "nullable": true, "properties": {},
                          "x-kubernetes-preserve-unknown-fields": true},
                    "c": {"x-kubernetes-preserve-unknown-fields": true},
                    "d": {"description": "raw", "x-kubernetes-preserve-unknown-fields": true},
                },
            })
        );
    }

    #[test]
    fn rendered_yaml_holds_one_crd_per_kind() {
        let text = render_yaml().unwrap();
        assert!(text.starts_with("# Generated by `straitctl crds`"));
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let kinds: Vec<&str> = docs
            .iter()
            .map(|d| d["spec"]["names"]["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, Kind::ALL.map(Kind::as_str));
        assert_eq!(docs[0], crd(Kind::VirtualService).unwrap());
    }
}
