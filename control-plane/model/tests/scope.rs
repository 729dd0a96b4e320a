//! What a proxy sees: `exportTo` and the Sidecar resource, through the one validator.

use std::collections::{BTreeMap, BTreeSet};

use strait_model::mesh::OutboundTrafficPolicy;
use strait_model::{Destination, Model, Scope, loader};

fn se(namespace: &str, name: &str, host: &str, export_to: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: {name}, namespace: {namespace}}}\n\
         spec: {{hosts: [{host}], ports: [{{number: 80, name: http, protocol: HTTP}}], \
         resolution: STATIC, endpoints: [{{address: 127.0.0.1, labels: {{version: v1}}}}], \
         exportTo: {export_to}}}\n---\n"
    )
}

/// Namespaces a and b; db is private to a, ext is exported to a only, api's route and rule
/// are private to b.
fn mesh() -> String {
    let mut y = String::new();
    y += &se("a", "web", "web.a.svc.cluster.local", "['*']");
    y += &se("a", "db", "db.a.svc.cluster.local", "['.']");
    y += &se("b", "api", "api.b.svc.cluster.local", "[]");
    y += &se("b", "ext", "ext.example.com", "[a]");
    y += &se(
        "istio-system",
        "telemetry",
        "telemetry.istio-system.svc.cluster.local",
        "[]",
    );
    y += "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api, namespace: b}\n\
          spec: {host: api, exportTo: ['.'], subsets: [{name: v1, labels: {version: v1}}]}\n---\n";
    y += "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: api, namespace: b}\n\
          spec: {hosts: [api], exportTo: ['.'], http: [{route: [{destination: {host: api, subset: v1}}]}]}\n---\n";
    y += "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: a}\n\
          spec: {hosts: [web], http: [{route: [{destination: {host: web}, weight: 90}, \
          {destination: {host: db}, weight: 10}]}]}\n---\n";
    y
}

fn build(extra: &str) -> Result<Model, String> {
    let text = mesh() + extra;
    let objects = loader::parse(&text, "test.yaml").map_err(|e| {
        e.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    Model::build(&objects).map_err(|e| e.to_string())
}

#[track_caller]
fn rejects(extra: &str, fragments: &[&str]) {
    let err = build(extra).expect_err("configuration should be rejected");
    for f in fragments {
        assert!(err.contains(f), "error should contain {f:?}:\n{err}");
    }
}

fn sidecar(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n---\n"
    )
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn scope(model: &Model, namespace: &str, pod_labels: &[(&str, &str)]) -> Scope {
    let sidecar = model.sidecar_for(namespace, &labels(pod_labels));
    model
        .scope_for(namespace, sidecar)
        .expect("the mesh is scoped")
}

fn hosts(scope: &Scope) -> Vec<&str> {
    scope.services.iter().map(String::as_str).collect()
}

#[test]
fn export_to_limits_services_routes_and_rules_to_namespaces() {
    let m = build("").unwrap();
    let a = scope(&m, "a", &[]);
    assert_eq!(
        hosts(&a),
        [
            "api.b.svc.cluster.local",
            "db.a.svc.cluster.local",
            "ext.example.com",
            "telemetry.istio-system.svc.cluster.local",
            "web.a.svc.cluster.local",
        ]
    );
    let vs: BTreeSet<String> = a.virtual_services.iter().map(|v| v.name.clone()).collect();
    assert_eq!(vs, BTreeSet::from(["web".to_string()]));
    assert!(a.destination_rules.is_empty());
    let b = scope(&m, "b", &[]);
    assert_eq!(
        hosts(&b),
        [
            "api.b.svc.cluster.local",
            "telemetry.istio-system.svc.cluster.local",
            "web.a.svc.cluster.local",
        ]
    );
    assert_eq!(b.destination_rules.len(), 1);
    assert_eq!(b.virtual_services.len(), 2);
    // Another namespace sees what is exported everywhere only.
    let c = scope(&m, "c", &[]);
    assert_eq!(c.services.len(), 3);

    // The scoped model holds only that; a subset whose rule a scope leaves out is not held.
    let seen_from_a = m.scoped(&a);
    let subset = Destination {
        host: "api.b.svc.cluster.local".into(),
        subset: Some("v1".into()),
        port: 80,
    };
    assert!(m.holds(&subset));
    assert!(!seen_from_a.holds(&subset));
    assert!(seen_from_a.holds(&Destination {
        subset: None,
        ..subset.clone()
    }));
    assert!(m.scoped(&b).holds(&subset));
}

#[test]
fn without_sidecars_or_export_to_no_proxy_is_scoped() {
    let objects = loader::parse(
        &se("a", "web", "web.a.svc.cluster.local", "['*']"),
        "test.yaml",
    )
    .unwrap();
    let m = Model::build(&objects).unwrap();
    assert!(!m.is_scoped());
    assert_eq!(m.scope_for("a", None), None);
    assert!(build("").unwrap().is_scoped());
}

#[test]
fn export_to_values_are_checked() {
    rejects(
        &se("a", "x", "x.a.svc.cluster.local", "['*', b]"),
        &["spec.exportTo", "cannot be combined"],
    );
    rejects(
        &se("a", "x", "x.a.svc.cluster.local", "['~', '.']"),
        &["spec.exportTo", "cannot be combined"],
    );
    rejects(
        &se("a", "x", "x.a.svc.cluster.local", "[b, b]"),
        &["spec.exportTo[1]", "listed twice"],
    );
    rejects(
        &se("a", "x", "x.a.svc.cluster.local", "[Not_A_Namespace]"),
        &["spec.exportTo[0]", "namespace name"],
    );
    // `~` alone: visible nowhere.
    let m = build(&se("a", "x", "x.a.svc.cluster.local", "['~']")).unwrap();
    assert!(
        !scope(&m, "a", &[])
            .services
            .contains("x.a.svc.cluster.local")
    );
}

#[test]
fn a_sidecar_imports_its_egress_hosts_and_the_most_specific_one_applies() {
    let m = build(
        &[
            sidecar(
                "istio-system",
                "default",
                "{egress: [{hosts: ['./*', 'istio-system/*']}]}",
            ),
            sidecar(
                "a",
                "narrow",
                "{egress: [{hosts: ['./web.a.svc.cluster.local', '*/ext.example.com']}]}",
            ),
            sidecar(
                "a",
                "special",
                "{workloadSelector: {labels: {app: special}}, egress: [{hosts: ['*/*']}], outboundTrafficPolicy: {mode: REGISTRY_ONLY}}",
            ),
        ]
        .concat(),
    )
    .unwrap();
    // The namespace's default: its own web (and the route naming web) and ext from b.
    let a = scope(&m, "a", &[("app", "client")]);
    assert_eq!(hosts(&a), ["ext.example.com", "web.a.svc.cluster.local"]);
    assert_eq!(a.virtual_services.len(), 1);
    assert_eq!(a.outbound_traffic_policy, None);
    // The workload its selector picks: everything exported to a, REGISTRY_ONLY.
    let special = scope(&m, "a", &[("app", "special")]);
    assert_eq!(special.services.len(), 5);
    assert_eq!(
        special.outbound_traffic_policy,
        Some(OutboundTrafficPolicy::RegistryOnly)
    );
    // b has no Sidecar: the root namespace's default, where `.` is the workload's namespace.
    let b = scope(&m, "b", &[]);
    assert_eq!(
        hosts(&b),
        [
            "api.b.svc.cluster.local",
            "telemetry.istio-system.svc.cluster.local"
        ]
    );
    assert_eq!(
        m.sidecar_for("b", &labels(&[])).map(|s| s.id.name.as_str()),
        Some("default")
    );
}

#[test]
fn sidecar_fields_are_checked_and_unsupported_ones_named() {
    rejects(
        &sidecar("a", "s", "{egress: [{hosts: ['web.a.svc.cluster.local']}]}"),
        &["spec.egress[0].hosts[0]", "namespace/dnsName"],
    );
    rejects(
        &sidecar("a", "s", "{egress: [{hosts: []}]}"),
        &["spec.egress[0].hosts", "at least one host"],
    );
    rejects(
        &sidecar("a", "s", "{egress: [{hosts: ['Bad_NS/*']}]}"),
        &["spec.egress[0].hosts[0]", "namespace"],
    );
    rejects(
        &sidecar("a", "s", "{egress: [{hosts: ['./bad_host']}]}"),
        &["spec.egress[0].hosts[0]", "invalid host"],
    );
    rejects(
        &sidecar(
            "a",
            "s",
            "{egress: [{port: {number: 80, protocol: HTTP, name: http}, hosts: ['./*']}]}",
        ),
        &["spec.egress[0].port", "not supported by Strait yet"],
    );
    rejects(
        &sidecar(
            "a",
            "s",
            "{ingress: [{port: {number: 80, protocol: HTTP, name: http}, defaultEndpoint: '127.0.0.1:8080'}]}",
        ),
        &["spec.ingress", "not supported by Strait yet"],
    );
    rejects(&sidecar("a", "s", "{}"), &["spec", "needs egress"]);
    rejects(
        &sidecar("a", "s", "{outboundTrafficPolicy: {mode: SOMETIMES}}"),
        &["spec.outboundTrafficPolicy.mode", "SOMETIMES"],
    );
    rejects(
        &sidecar(
            "a",
            "s",
            "{workloadSelector: {labels: {}}, egress: [{hosts: ['./*']}]}",
        ),
        &["spec.workloadSelector.labels", "at least one label"],
    );
    rejects(
        &sidecar("a", "s", "{egress: [{hosts: ['./*']}, {hosts: ['*/*']}]}"),
        &["spec.egress", "only one egress listener"],
    );
    // Two that would apply to the same workloads: the later by name is refused.
    rejects(
        &[
            sidecar("a", "one", "{egress: [{hosts: ['./*']}]}"),
            sidecar("a", "two", "{egress: [{hosts: ['*/*']}]}"),
        ]
        .concat(),
        &[
            "Sidecar a/two",
            "already has a Sidecar without workloadSelector (one)",
        ],
    );
    rejects(
        &[
            sidecar(
                "a",
                "one",
                "{workloadSelector: {labels: {app: x}}, egress: [{hosts: ['./*']}]}",
            ),
            sidecar(
                "a",
                "two",
                "{workloadSelector: {labels: {app: x}}, egress: [{hosts: ['*/*']}]}",
            ),
        ]
        .concat(),
        &["spec.workloadSelector", "same workloadSelector (one)"],
    );
    // An outbound traffic policy alone is a Sidecar too; an empty one is REGISTRY_ONLY.
    let m = build(&sidecar("a", "s", "{outboundTrafficPolicy: {}}")).unwrap();
    let a = scope(&m, "a", &[]);
    assert_eq!(
        a.outbound_traffic_policy,
        Some(OutboundTrafficPolicy::RegistryOnly)
    );
    assert_eq!(a.services.len(), 5);
}
