//! `Model::derive` (validating a change by what it touches) against `Model::build_with` (the
//! whole set): random sequences of changes over a generated mesh; wherever a model is
//! derived it must equal the whole build's, warnings included. Most changes move endpoints
//! (which are derived); the rest are the changes `derive` must leave to a whole build.

use std::collections::BTreeMap;
use std::sync::Arc;

use pretty_assertions::assert_eq;
use serde_json::{Value, json};
use strait_model::{Change, Credentials, Kind, Model, Object, ObjectId, loader};

/// xorshift64*: deterministic, so that a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn object(doc: Value, origin: &str) -> Object {
    loader::parse_value(doc, origin)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("not empty")
}

fn endpoint(i: usize, j: usize, dns: bool) -> Value {
    let address = if dns {
        format!("backend-{j}.svc-{i}.example.com")
    } else {
        format!("10.{}.{i}.{}", j / 200, 1 + j % 200)
    };
    json!({"address": address, "ports": {"http": 8080},
           "labels": {"app": format!("svc-{i}"), "version": if j.is_multiple_of(2) { "v1" } else { "v2" }}})
}

fn service_entry(i: usize) -> Value {
    let ns = if i.is_multiple_of(2) { "ns-a" } else { "ns-b" };
    let dns = i >= 10;
    let mut ports = vec![json!({"number": 9080, "name": "http", "protocol": "HTTP"})];
    // Two ports where no route names one.
    if i == 5 || i == 9 {
        ports.push(json!({"number": 9090, "name": "grpc-api"}));
    }
    let mut spec = json!({
        "hosts": [format!("svc-{i}.{ns}.svc.cluster.local")],
        "location": "MESH_INTERNAL",
        "ports": ports,
        "resolution": if dns { "DNS" } else { "STATIC" },
        "endpoints": (0..3).map(|j| endpoint(i, j, dns)).collect::<Vec<_>>(),
    });
    if i == 3 {
        spec["addresses"] = json!(["240.0.0.3"]);
    }
    if i == 7 {
        spec["exportTo"] = json!(["."]);
    }
    json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
           "metadata": {"name": format!("svc-{i}"), "namespace": ns}, "spec": spec})
}

const SERVICES: usize = 12;

/// The mesh: services (STATIC and DNS, one with an address, one with a short host, one of
/// gateway workloads, one selecting WorkloadEntries), subsets and splits for a few, a Gateway
/// with a credential when `gateway`.
fn mesh(gateway: bool) -> Vec<Object> {
    let mut docs: Vec<Value> = (0..SERVICES).map(service_entry).collect();
    docs.push(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "short", "namespace": "ns-a"},
        "spec": {"hosts": ["shorty"], "ports": [{"number": 7000, "name": "http"}],
                 "resolution": "STATIC", "endpoints": [{"address": "10.9.0.1"}]}}),
    );
    docs.push(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "ingress", "namespace": "istio-system"},
        "spec": {"hosts": ["ingress.istio-system.svc.cluster.local"],
                 "ports": [{"number": 443, "name": "https", "protocol": "HTTPS"}],
                 "location": "MESH_INTERNAL", "resolution": "STATIC",
                 "endpoints": [{"address": "10.8.0.1", "labels": {"istio": "ingressgateway"}}]}}),
    );
    for w in 0..2 {
        docs.push(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": {"name": format!("we-{w}"), "namespace": "ns-a"},
            "spec": {"address": format!("10.7.0.{}", w + 1), "labels": {"app": "selected"}}}),
        );
    }
    docs.push(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "selected", "namespace": "ns-a"},
        "spec": {"hosts": ["selected.ns-a.svc.cluster.local"],
                 "ports": [{"number": 9080, "name": "http"}], "location": "MESH_INTERNAL",
                 "resolution": "STATIC", "workloadSelector": {"labels": {"app": "selected"}}}}),
    );
    docs.push(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": "ns-b"},
        "spec": {"egress": [{"hosts": ["./*", "istio-system/*"]}]}}),
    );
    for i in 0..4usize {
        let ns = if i.is_multiple_of(2) { "ns-a" } else { "ns-b" };
        let host = format!("svc-{i}.{ns}.svc.cluster.local");
        docs.push(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": format!("svc-{i}"), "namespace": ns},
            "spec": {"host": host, "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                {"name": "v2", "labels": {"version": "v2"}}]}}),
        );
        docs.push(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": format!("svc-{i}"), "namespace": ns},
            "spec": {"hosts": [host], "http": [{"route": [
                {"destination": {"host": host, "subset": "v1"}, "weight": 90},
                {"destination": {"host": host, "subset": "v2"}, "weight": 10}]}]}}),
        );
    }
    if gateway {
        docs.push(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "istio-system"},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
                {"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                 "hosts": ["*/svc-4.ns-a.svc.cluster.local"],
                 "tls": {"mode": "SIMPLE", "credentialName": "gw-cert"}}]}}),
        );
        docs.push(json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "gw-routes", "namespace": "istio-system"},
            "spec": {"hosts": ["svc-4.ns-a.svc.cluster.local"], "gateways": ["gw"],
                     "http": [{"route": [{"destination": {"host": "svc-4.ns-a.svc.cluster.local"}}]}]}}));
    }
    docs.into_iter()
        .enumerate()
        .map(|(n, d)| object(d, &format!("mesh.yaml (document {})", n + 1)))
        .collect()
}

fn credentials() -> Credentials {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["svc-4.example.com".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let data = BTreeMap::from([
        ("tls.crt".to_string(), cert.pem().into_bytes()),
        ("tls.key".to_string(), key.serialize_pem().into_bytes()),
    ]);
    let credential = strait_model::Credential::from_secret(
        strait_model::CredentialId::new("istio-system", "gw-cert"),
        Some("kubernetes.io/tls"),
        &data,
    )
    .expect("a good credential");
    Credentials::from([(credential.id.clone(), Arc::new(credential))])
}

/// One changed version of a random object, or its removal (`None`), or a new object.
fn mutate(rng: &mut Rng, objects: &BTreeMap<ObjectId, Object>) -> (ObjectId, Option<Value>) {
    let ids: Vec<&ObjectId> = objects.keys().collect();
    let of_kind = |kind: Kind| -> Vec<&ObjectId> {
        ids.iter().copied().filter(|id| id.kind == kind).collect()
    };
    let service_entries = of_kind(Kind::ServiceEntry);
    let roll = rng.below(100);
    if roll < 8 {
        // Another kind, or a ServiceEntry added or removed: left to a whole build.
        let id = (*rng.pick(&ids)).clone();
        let mut raw = objects[&id].raw.clone();
        match id.kind {
            Kind::VirtualService if raw["spec"]["http"][0]["route"].get(1).is_some() => {
                let w = rng.below(101);
                raw["spec"]["http"][0]["route"][0]["weight"] = json!(w);
                raw["spec"]["http"][0]["route"][1]["weight"] = json!(100 - w);
                if rng.chance(20) {
                    raw["spec"]["http"][0]["route"][1]["destination"]["subset"] = json!("v9");
                }
            }
            Kind::DestinationRule => {
                raw["spec"]["subsets"][1]["labels"]["version"] =
                    json!(format!("v{}", rng.below(4)));
                if rng.chance(20) {
                    raw["spec"]["subsets"]
                        .as_array_mut()
                        .expect("subsets")
                        .pop();
                }
            }
            Kind::WorkloadEntry => {
                raw["spec"]["address"] = json!(format!("10.7.1.{}", 1 + rng.below(200)));
                if rng.chance(30) {
                    raw["spec"]["labels"]["app"] = json!("other");
                }
            }
            Kind::ServiceEntry if rng.chance(30) => return (id, None),
            _ => {
                let i = SERVICES + rng.below(4);
                let mut doc = service_entry(i);
                if rng.chance(30) {
                    // Taking a host that exists.
                    doc["spec"]["hosts"] = json!(["svc-1.ns-b.svc.cluster.local"]);
                }
                let new_id = ObjectId {
                    kind: Kind::ServiceEntry,
                    namespace: doc["metadata"]["namespace"].as_str().unwrap_or("").into(),
                    name: doc["metadata"]["name"].as_str().unwrap_or("").into(),
                };
                return (new_id, Some(doc));
            }
        }
        return (id, Some(raw));
    }
    let id = (*rng.pick(&service_entries)).clone();
    let mut raw = objects[&id].raw.clone();
    let spec = &mut raw["spec"];
    let dns = spec["resolution"] == "DNS";
    let n = spec["endpoints"].as_array().map_or(0, Vec::len);
    match roll {
        // What is not the endpoints alone.
        8..=10 => spec["ports"][0]["number"] = json!(9080 + rng.below(3)),
        11..=12 => {
            spec["hosts"] = json!([format!("moved-{}.ns-a.svc.cluster.local", rng.below(3))])
        }
        13 => {
            spec["location"] = json!(if rng.chance(50) {
                "MESH_EXTERNAL"
            } else {
                "MESH_INTERNAL"
            })
        }
        14 => raw["metadata"]["labels"] = json!({"team": format!("t{}", rng.below(3))}),
        15 => spec["addresses"] = json!([format!("240.0.1.{}", rng.below(3))]),
        // Endpoints that are not valid.
        16..=18 if n > 0 => spec["endpoints"][rng.below(n)]["address"] = json!("not an address!"),
        19..=20 if n > 0 => spec["endpoints"][rng.below(n)]["weight"] = json!(0),
        21 if n > 0 && !dns => {
            spec["endpoints"][rng.below(n)]["address"] = json!("a-name.example.com")
        }
        22 if n > 0 => spec["endpoints"][rng.below(n)]["locality"] = json!("us/east"),
        // The endpoints alone: what churn is made of.
        _ => {
            let mut endpoints = spec["endpoints"].as_array().cloned().unwrap_or_default();
            match rng.below(7) {
                0 | 1 if !endpoints.is_empty() => {
                    let j = rng.below(endpoints.len());
                    endpoints[j]["address"] = if dns {
                        json!(format!("moved-{}.example.com", rng.below(1000)))
                    } else {
                        json!(format!(
                            "10.{}.{}.{}",
                            100 + rng.below(50),
                            rng.below(256),
                            1 + rng.below(250)
                        ))
                    };
                }
                2 => endpoints.push(endpoint(rng.below(50), 10 + rng.below(100), dns)),
                3 if !endpoints.is_empty() => {
                    endpoints.remove(rng.below(endpoints.len()));
                }
                4 if !endpoints.is_empty() => {
                    // Sometimes a workload of the gateway's: where its credential is looked for.
                    let j = rng.below(endpoints.len());
                    endpoints[j]["labels"] = if rng.chance(40) {
                        json!({"istio": "ingressgateway"})
                    } else {
                        json!({"version": format!("v{}", rng.below(3))})
                    };
                }
                5 if !endpoints.is_empty() => {
                    let j = rng.below(endpoints.len());
                    endpoints[j]["weight"] = json!(1 + rng.below(5));
                    endpoints[j]["serviceAccount"] = json!(format!("sa-{}", rng.below(3)));
                }
                _ => endpoints.reverse(),
            }
            spec["endpoints"] = Value::Array(endpoints);
        }
    }
    (id, Some(raw))
}

struct Run {
    steps: usize,
    derived: usize,
    rejected: usize,
}

/// Applies `steps` random batches; each must validate the same both ways.
fn run(seed: u64, steps: usize, gateway: bool) -> Run {
    let mut rng = Rng(seed);
    let credentials = gateway.then(credentials);
    let credentials = credentials.as_ref();
    let mut objects: BTreeMap<ObjectId, Object> = mesh(gateway)
        .into_iter()
        .map(|o| (o.id.clone(), o))
        .collect();
    let mut model = Model::build_with(objects.values(), credentials).expect("the mesh is valid");
    assert!(!model.warnings.is_empty(), "the short host warns");
    let mut stats = Run {
        steps,
        derived: 0,
        rejected: 0,
    };
    for step in 0..steps {
        let mut next = objects.clone();
        let mut versions: Vec<(Option<Object>, Option<Object>)> = Vec::new();
        let mut extra: Vec<Object> = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let (id, doc) = mutate(&mut rng, &next);
            if versions
                .iter()
                .any(|(b, a)| a.as_ref().or(b.as_ref()).map(|o| &o.id) == Some(&id))
            {
                continue;
            }
            let origin = if rng.chance(10) {
                "admin API (document 1)"
            } else {
                "k"
            };
            let after = doc.map(|d| object(d, origin));
            let before = objects.get(&id).cloned();
            match &after {
                Some(a) => next.insert(id.clone(), a.clone()),
                None => next.remove(&id),
            };
            if let Some(a) = &after
                && rng.chance(3)
            {
                // The same object twice in one batch.
                extra.push(a.clone());
                versions.push((before.clone(), Some(a.clone())));
            }
            versions.push((before, after));
        }
        let changes: Vec<Change<'_>> = versions
            .iter()
            .map(|(before, after)| Change {
                before: before.as_ref(),
                after: after.as_ref(),
            })
            .collect();
        let whole = Model::build_with(next.values().chain(&extra), credentials);
        if let Some(derived) = Model::derive(&model, &changes, credentials) {
            stats.derived += 1;
            assert_eq!(
                Ok(derived),
                whole,
                "seed {seed}, step {step}: {versions:#?}"
            );
        }
        match whole {
            Ok(m) => {
                model = m;
                objects = next;
            }
            Err(_) => stats.rejected += 1,
        }
    }
    stats
}

#[test]
fn a_derived_model_equals_building_everything() {
    let mut derived = 0;
    let mut rejected = 0;
    let mut steps = 0;
    for seed in 1..=6u64 {
        for gateway in [false, true] {
            let run = run(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 120, gateway);
            derived += run.derived;
            rejected += run.rejected;
            steps += run.steps;
        }
    }
    eprintln!("{steps} batches: {derived} derived, {rejected} rejected");
    // Both paths were taken often enough to mean something.
    assert!(derived > steps / 3, "{derived} of {steps} derived");
    assert!(rejected > steps / 20, "{rejected} of {steps} rejected");
    assert!(
        derived + rejected < steps,
        "some whole builds were accepted"
    );
}

#[test]
fn an_endpoint_change_is_derived_and_anything_more_is_not() {
    let objects = mesh(false);
    let model = Model::build(&objects).expect("valid");
    let before = objects
        .iter()
        .find(|o| o.id.name == "svc-2")
        .expect("svc-2");
    let mut raw = before.raw.clone();
    raw["spec"]["endpoints"][0]["address"] = json!("10.200.0.1");
    let moved = object(raw.clone(), "admin API (document 1)");
    fn change<'a>(before: &'a Object, after: &'a Object) -> Change<'a> {
        Change {
            before: Some(before),
            after: Some(after),
        }
    }
    let derived = Model::derive(&model, &[change(before, &moved)], None).expect("derived");
    let host = "svc-2.ns-a.svc.cluster.local";
    assert_eq!(derived.services[host].endpoints[0].address, "10.200.0.1");
    assert_eq!(derived.virtual_services, model.virtual_services);

    // A port is more than endpoints.
    raw["spec"]["ports"][0]["number"] = json!(9081);
    let ported = object(raw, "admin API (document 1)");
    assert!(Model::derive(&model, &[change(before, &ported)], None).is_none());
    // So is a new object, a removed one, and one whose old version had a warning.
    let new = Change {
        before: None,
        after: Some(&moved),
    };
    assert!(Model::derive(&model, &[new], None).is_none());
    let gone = Change {
        before: Some(before),
        after: None,
    };
    assert!(Model::derive(&model, &[gone], None).is_none());
    let short = objects
        .iter()
        .find(|o| o.id.name == "short")
        .expect("short");
    let same = Change {
        before: Some(short),
        after: Some(short),
    };
    assert!(Model::derive(&model, &[same], None).is_none());
    // Other credentials than the model was built with.
    assert!(Model::derive(&model, &[change(before, &moved)], Some(&credentials())).is_none());
}
