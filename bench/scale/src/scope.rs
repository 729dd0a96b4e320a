//! Who should see what: the harness's own reading of the mesh it generated, not straitd's.
//! A client's expected configuration and the clients a change must (and must not) reach are
//! worked out here from the generator's rules (`mesh::Scoping`), so that the harness checks
//! straitd's scoping instead of repeating it. The tests compare this reading with
//! `strait_model::Model::scope_for`, the rule straitd applies.
//!
//! The rule, for the generated mesh (nothing has `exportTo`, so everything is exported to every
//! namespace):
//! - a gateway sees every service: Sidecars do not apply to gateways;
//! - a sidecar sees every service when the mesh is not scoped, or when its namespace has no
//!   generated Sidecar (none is in `istio-system`, so there is no mesh-wide default);
//! - otherwise a sidecar of `ns-N` sees the services of `ns-N` (`./*`), of `istio-system`
//!   (`istio-system/*`) and of the namespaces its Sidecar imports (`ns-M/*`).
//!
//! What a proxy sees it gets a cluster for (and one per subset, for a split service), an
//! endpoint assignment per cluster, and, for a sidecar, a virtual host in its outbound route
//! configuration; what it does not see, none of these.

use crate::xds::Shape;
use strait_scale::mesh::{Mesh, Service};

/// Whether a proxy of `namespace` (a gateway when `gateway`) may reach `service`.
pub fn sees(mesh: &Mesh, namespace: &str, gateway: bool, service: &Service) -> bool {
    if gateway || mesh.scoping.is_none() {
        return true;
    }
    let Some(n) = mesh.namespace_index(namespace) else {
        // No Sidecar in that namespace, and no default in istio-system.
        return true;
    };
    service.namespace == namespace
        || service.shared
        || mesh
            .imports_of(n)
            .into_iter()
            .any(|m| strait_scale::mesh::namespace_name(m) == service.namespace)
}

/// What a proxy of one shape should hold, by service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    /// By service index: whether the shape sees it.
    pub visible: Vec<bool>,
    /// The names of the clusters (and endpoint assignments) it must hold, sorted.
    pub clusters: Vec<String>,
    /// For a sidecar: the services its outbound route configuration has a virtual host for
    /// (indices, ascending). `None` for a gateway, whose routes are its Gateway's.
    pub routed: Option<Vec<u32>>,
}

impl Expectation {
    pub fn of(mesh: &Mesh, shape: &Shape) -> Expectation {
        let visible: Vec<bool> = mesh
            .services
            .iter()
            .map(|s| sees(mesh, &shape.namespace, shape.gateway, s))
            .collect();
        let mut clusters: Vec<String> = mesh
            .services
            .iter()
            .filter(|s| visible[s.index])
            .flat_map(Service::cluster_names)
            .collect();
        clusters.sort_unstable();
        let routed = (!shape.gateway).then(|| {
            mesh.services
                .iter()
                .filter(|s| visible[s.index])
                .map(|s| s.index as u32)
                .collect()
        });
        Expectation {
            visible,
            clusters,
            routed,
        }
    }

    #[cfg(test)]
    pub fn sees(&self, service: usize) -> bool {
        self.visible.get(service).copied().unwrap_or(false)
    }

    pub fn visible_count(&self) -> usize {
        self.visible.iter().filter(|v| **v).count()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use strait_model::{Model, ObjectId, ProxyNode, loader};

    use super::*;
    use crate::xds::shapes;
    use strait_scale::mesh::SHARED_NAMESPACE;

    fn model_of(mesh: &Mesh) -> Model {
        let mut objects = Vec::new();
        for (name, text) in mesh.files() {
            objects.extend(loader::parse(&text, &name).unwrap_or_else(|e| panic!("{name}: {e:?}")));
        }
        Model::build(&objects).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The hosts straitd's model says a proxy of this shape sees.
    fn straitd_sees(model: &Model, shape: &Shape) -> BTreeSet<String> {
        let node = ProxyNode::from_metadata("n", &shape.metadata.to_json()).expect("metadata");
        match model.scope_for(&node.namespace, model.sidecar_of(&node)) {
            Some(scope) => scope.services,
            None => model.services.keys().cloned().collect(),
        }
    }

    fn harness_sees(mesh: &Mesh, shape: &Shape) -> BTreeSet<String> {
        let e = Expectation::of(mesh, shape);
        mesh.services
            .iter()
            .filter(|s| e.sees(s.index))
            .map(Service::host)
            .collect()
    }

    #[test]
    fn the_harness_reads_the_generated_sidecars_as_straitd_does() {
        for imports in [0, 1, 2, 5, 30] {
            let mesh = Mesh::generate(120, 6, 2, 0.2, 2).scoped(imports);
            let model = model_of(&mesh);
            for shape in shapes(60, &mesh) {
                assert_eq!(
                    harness_sees(&mesh, &shape),
                    straitd_sees(&model, &shape),
                    "imports {imports}, shape {shape:?}"
                );
            }
        }
        // Unscoped: everyone sees everything, and straitd has no scopes at all.
        let mesh = Mesh::generate(120, 6, 2, 0.2, 2);
        let model = model_of(&mesh);
        assert!(!model.is_scoped());
        for shape in shapes(60, &mesh) {
            assert_eq!(harness_sees(&mesh, &shape).len(), 122);
        }
    }

    #[test]
    fn a_sidecar_sees_its_namespace_the_shared_one_and_its_imports() {
        let mesh = Mesh::generate(100, 10, 2, 0.2, 2).scoped(2);
        let all = shapes(100, &mesh);
        let sidecar = all
            .iter()
            .find(|s| !s.gateway && s.namespace == "ns-8")
            .expect("a sidecar of ns-8");
        let e = Expectation::of(&mesh, sidecar);
        let namespaces: BTreeSet<&str> = mesh
            .services
            .iter()
            .filter(|s| e.sees(s.index))
            .map(|s| s.namespace.as_str())
            .collect();
        assert_eq!(
            namespaces,
            BTreeSet::from(["ns-8", "ns-9", "ns-0", SHARED_NAMESPACE])
        );
        // 10 services in each of three namespaces, and the two shared ones
        assert_eq!(e.visible_count(), 32);
        assert_eq!(e.routed.as_ref().map(Vec::len), Some(32));
        // a cluster per service, two more per split one; sorted
        let splits = mesh
            .services
            .iter()
            .filter(|s| e.sees(s.index) && s.split)
            .count();
        assert_eq!(e.clusters.len(), 32 + 2 * splits);
        assert!(e.clusters.windows(2).all(|w| w[0] < w[1]));
        assert!(
            e.clusters
                .contains(&"outbound|9080||shared-0.istio-system.svc.cluster.local".to_string())
        );
        // ns-7 imports ns-8 and ns-9 but not ns-0: its sidecars see svc-0 of ns-0 not, svc-8 yes
        let ns7 = all
            .iter()
            .find(|s| !s.gateway && s.namespace == "ns-7")
            .expect("a sidecar of ns-7");
        let e7 = Expectation::of(&mesh, ns7);
        assert!(!e7.sees(0) && e7.sees(8) && e7.sees(7) && !e7.sees(6));
        // A gateway sees every service; its routes are not the mesh's.
        let gateway = all.iter().find(|s| s.gateway).expect("a gateway shape");
        let g = Expectation::of(&mesh, gateway);
        assert_eq!(g.visible_count(), 102);
        assert_eq!(g.routed, None);
    }

    #[test]
    fn who_a_change_reaches_follows_the_scopes() {
        // A split service's VirtualService is seen exactly where the service is, by straitd
        // too: a route change reaches the sidecars that see the service, and no other.
        let mesh = Mesh::generate(60, 6, 2, 0.5, 1).scoped(1);
        let model = model_of(&mesh);
        let all = shapes(30, &mesh);
        for s in mesh.services.iter().filter(|s| s.split) {
            let id = ObjectId {
                kind: strait_model::Kind::VirtualService,
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            };
            for shape in all.iter().filter(|x| !x.gateway) {
                let node =
                    ProxyNode::from_metadata("n", &shape.metadata.to_json()).expect("metadata");
                let scope = model
                    .scope_for(&node.namespace, model.sidecar_of(&node))
                    .expect("scoped");
                assert_eq!(
                    scope.virtual_services.contains(&id),
                    Expectation::of(&mesh, shape).sees(s.index),
                    "{} for {shape:?}",
                    s.name
                );
            }
        }
        // ns-3's service is seen by ns-3 and ns-2 (which imports ns-3) and the gateways.
        let svc = mesh
            .services
            .iter()
            .find(|s| s.namespace == "ns-3")
            .expect("a service of ns-3");
        let reached: BTreeSet<(String, bool)> = all
            .iter()
            .filter(|x| Expectation::of(&mesh, x).sees(svc.index))
            .map(|x| (x.namespace.clone(), x.gateway))
            .collect();
        assert_eq!(
            reached,
            BTreeSet::from([
                ("ns-0".to_string(), true),
                ("ns-2".to_string(), false),
                ("ns-3".to_string(), false),
            ])
        );
    }
}
