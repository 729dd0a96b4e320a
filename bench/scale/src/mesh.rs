//! The generated mesh: STATIC ServiceEntries with endpoint addresses (never contacted, only
//! configured), DestinationRules with subsets v1/v2 and 90/10 VirtualServices for a share of
//! the services, a few shared services in `istio-system`, one ingress Gateway and, when
//! scoped, a Sidecar in every namespace; rendered as Istio YAML, one file per namespace.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// The port every service is known by, and the port its endpoints listen on.
pub const SERVICE_PORT: u16 = 9080;
pub const ENDPOINT_PORT: u16 = 8080;
/// The ingress Gateway, in the first namespace, and the label that selects its proxies.
pub const GATEWAY_NAME: &str = "ingress";
pub const GATEWAY_LABEL: (&str, &str) = ("istio", "ingressgateway");
/// Gateway routes: one prefix per service, for the first this many services.
const GATEWAY_ROUTES: usize = 20;
/// Where the shared services live: Istio's root namespace, which every generated Sidecar
/// imports (`istio-system/*`).
pub const SHARED_NAMESPACE: &str = "istio-system";

#[derive(Clone, Debug)]
pub struct Service {
    pub index: usize,
    pub name: String,
    pub namespace: String,
    /// Has a DestinationRule (subsets v1, v2) and a weighted VirtualService.
    pub split: bool,
    /// The v1 weight of the split (v2 gets the rest).
    pub v1_weight: u32,
    pub endpoints: usize,
    /// How often endpoint 0 has moved to another address.
    pub moves: u32,
    /// One of the shared services in [`SHARED_NAMESPACE`] (after the others).
    pub shared: bool,
}

impl Service {
    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }

    /// The name of the cluster (and its ClusterLoadAssignment) straitd makes for this service:
    /// Istio's `outbound|PORT||HOST`.
    pub fn cluster_name(&self) -> String {
        format!("outbound|{SERVICE_PORT}||{}", self.host())
    }

    /// Every cluster straitd makes for this service: the service's and, for a split one, a
    /// cluster per subset (`outbound|PORT|SUBSET|HOST`).
    pub fn cluster_names(&self) -> Vec<String> {
        let mut names = vec![self.cluster_name()];
        if self.split {
            for subset in ["v1", "v2"] {
                names.push(format!("outbound|{SERVICE_PORT}|{subset}|{}", self.host()));
            }
        }
        names
    }

    /// Endpoint `j`'s address: 10.x.y.h for even services, 172.16-31.y.h for odd ones; endpoint
    /// 0 takes another host octet each time it moves.
    pub fn address(&self, j: usize) -> Ipv4Addr {
        let i = self.index;
        let (a, b) = if i.is_multiple_of(2) {
            (10, ((i >> 8) & 255) as u8)
        } else {
            (172, 16 + ((i >> 8) & 15) as u8)
        };
        let c = (i & 255) as u8;
        let spare = 253usize.saturating_sub(self.endpoints).max(1);
        let h = if j == 0 && self.moves > 0 {
            1 + self.endpoints + (self.moves as usize - 1) % spare
        } else {
            1 + j
        };
        Ipv4Addr::new(a, b, c, h.min(254) as u8)
    }

    pub fn version_of(j: usize) -> &'static str {
        if j.is_multiple_of(2) { "v1" } else { "v2" }
    }

    pub fn service_entry(&self) -> String {
        let mut doc = format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  ports: [{{number: {SERVICE_PORT}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
",
            name = self.name,
            ns = self.namespace,
            host = self.host(),
        );
        for j in 0..self.endpoints {
            // Writing to a String cannot fail.
            let _ = writeln!(
                doc,
                "  - {{address: {addr}, ports: {{http: {ENDPOINT_PORT}}}, labels: {{app: {name}, version: {v}}}}}",
                addr = self.address(j),
                name = self.name,
                v = Self::version_of(j),
            );
        }
        doc
    }

    pub fn destination_rule(&self) -> String {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {ns}}}
spec:
  host: {host}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
",
            name = self.name,
            ns = self.namespace,
            host = self.host(),
        )
    }

    pub fn virtual_service(&self) -> String {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {ns}}}
spec:
  hosts: [{host}]
  http:
  - route:
    - {{destination: {{host: {host}, subset: v1}}, weight: {w1}}}
    - {{destination: {{host: {host}, subset: v2}}, weight: {w2}}}
",
            name = self.name,
            ns = self.namespace,
            host = self.host(),
            w1 = self.v1_weight,
            w2 = 100 - self.v1_weight.min(100),
        )
    }

    /// Every document of this service.
    pub fn documents(&self) -> Vec<String> {
        let mut docs = vec![self.service_entry()];
        if self.split {
            docs.push(self.destination_rule());
            docs.push(self.virtual_service());
        }
        docs
    }
}

/// How the mesh is scoped: a Sidecar (no workloadSelector) in every namespace `ns-N`, whose
/// egress hosts are `./*`, `istio-system/*` and `ns-M/*` for the next `imports` namespaces
/// (`ns-(N+1)` .. `ns-(N+imports)`, wrapping around). No Sidecar in `istio-system`, so none is
/// a mesh-wide default; gateways are not scoped by Sidecars. Nothing has `exportTo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scoping {
    pub imports: usize,
}

#[derive(Clone, Debug)]
pub struct Mesh {
    pub namespaces: usize,
    /// The services of the namespaces (service i in `ns-(i mod namespaces)`), then the shared
    /// ones in [`SHARED_NAMESPACE`]; `services[i].index == i`.
    pub services: Vec<Service>,
    pub scoping: Option<Scoping>,
}

impl Mesh {
    /// `services` services over `namespaces` namespaces (service i in namespace i mod n), each
    /// with `endpoints` endpoints; `split_share` of them (spread evenly) split 90/10; then
    /// `shared` unsplit services `shared-J` in [`SHARED_NAMESPACE`]. Not scoped.
    pub fn generate(
        services: usize,
        namespaces: usize,
        endpoints: usize,
        split_share: f64,
        shared: usize,
    ) -> Mesh {
        let namespaces = namespaces.max(1);
        // In millionths, so that exactly floor(n * share) services split, spread evenly.
        let share = (split_share.clamp(0.0, 1.0) * 1e6).round() as usize;
        let endpoints = endpoints.clamp(1, 200);
        let mut all: Vec<Service> = (0..services)
            .map(|i| {
                let split = (i + 1) * share / 1_000_000 > i * share / 1_000_000;
                Service {
                    index: i,
                    name: format!("svc-{i}"),
                    namespace: namespace_name(i % namespaces),
                    split,
                    v1_weight: 90,
                    endpoints,
                    moves: 0,
                    shared: false,
                }
            })
            .collect();
        all.extend((0..shared).map(|j| Service {
            index: services + j,
            name: format!("shared-{j}"),
            namespace: SHARED_NAMESPACE.to_string(),
            split: false,
            v1_weight: 90,
            endpoints,
            moves: 0,
            shared: true,
        }));
        Mesh {
            namespaces,
            services: all,
            scoping: None,
        }
    }

    /// The same mesh with a Sidecar in every namespace (see [`Scoping`]).
    pub fn scoped(mut self, imports: usize) -> Mesh {
        self.scoping = Some(Scoping { imports });
        self
    }

    /// The services of the namespaces, without the shared ones.
    pub fn app_services(&self) -> &[Service] {
        let n = self.services.iter().take_while(|s| !s.shared).count();
        &self.services[..n]
    }

    pub fn shared_services(&self) -> usize {
        self.services.iter().filter(|s| s.shared).count()
    }

    /// N for a namespace `ns-N` of this mesh.
    pub fn namespace_index(&self, namespace: &str) -> Option<usize> {
        let n: usize = namespace.strip_prefix("ns-")?.parse().ok()?;
        (n < self.namespaces && namespace_name(n) == namespace).then_some(n)
    }

    /// The other namespaces `ns-N`'s Sidecar imports (none when the mesh is not scoped).
    pub fn imports_of(&self, n: usize) -> Vec<usize> {
        let Some(scoping) = self.scoping else {
            return Vec::new();
        };
        let k = scoping.imports.min(self.namespaces.saturating_sub(1));
        (1..=k).map(|d| (n + d) % self.namespaces).collect()
    }

    /// The Sidecar of namespace `ns-N`, when scoped.
    pub fn sidecar_document(&self, n: usize) -> Option<String> {
        self.scoping?;
        let mut hosts = vec!["\"./*\"".to_string(), format!("\"{SHARED_NAMESPACE}/*\"")];
        hosts.extend(
            self.imports_of(n)
                .into_iter()
                .map(|m| format!("\"{}/*\"", namespace_name(m))),
        );
        Some(format!(
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: {ns}}}
spec:
  egress:
  - hosts: [{hosts}]
",
            ns = namespace_name(n),
            hosts = hosts.join(", "),
        ))
    }

    pub fn sidecar_count(&self) -> usize {
        if self.scoping.is_some() {
            self.namespaces
        } else {
            0
        }
    }

    /// The ingress Gateway and its VirtualService (a prefix route per service, for the first
    /// few services).
    pub fn gateway_documents(&self) -> Vec<String> {
        let ns = namespace_name(0);
        let gateway = format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {GATEWAY_NAME}, namespace: {ns}}}
spec:
  selector: {{{k}: {v}}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [\"*\"]
",
            k = GATEWAY_LABEL.0,
            v = GATEWAY_LABEL.1,
        );
        let mut vs = format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {GATEWAY_NAME}, namespace: {ns}}}
spec:
  hosts: [\"*\"]
  gateways: [{GATEWAY_NAME}]
  http:
"
        );
        for s in self.app_services().iter().take(GATEWAY_ROUTES) {
            let _ = writeln!(
                vs,
                "  - match: [{{uri: {{prefix: /{name}/}}}}]\n    route: [{{destination: {{host: {host}, port: {{number: {SERVICE_PORT}}}}}}}]",
                name = s.name,
                host = s.host(),
            );
        }
        if self.app_services().is_empty() {
            return vec![gateway];
        }
        vec![gateway, vs]
    }

    /// The config directory's files: (file name, multi-document YAML).
    pub fn files(&self) -> Vec<(String, String)> {
        let mut files: Vec<(String, Vec<String>)> = (0..self.namespaces)
            .map(|n| {
                let docs = self.sidecar_document(n).into_iter().collect();
                (format!("{}.yaml", namespace_name(n)), docs)
            })
            .collect();
        let mut shared = Vec::new();
        for s in &self.services {
            match self.namespace_index(&s.namespace) {
                Some(n) => files[n].1.extend(s.documents()),
                None => shared.extend(s.documents()),
            }
        }
        files.push((format!("{SHARED_NAMESPACE}.yaml"), shared));
        files.push(("gateway.yaml".into(), self.gateway_documents()));
        files
            .into_iter()
            .filter(|(_, docs)| !docs.is_empty())
            .map(|(name, docs)| (name, join_documents(&docs)))
            .collect()
    }

    /// Counts: (ServiceEntries, DestinationRules, VirtualServices) including the gateway's.
    pub fn object_counts(&self) -> (usize, usize, usize) {
        let splits = self.services.iter().filter(|s| s.split).count();
        let gateway_vs = usize::from(!self.app_services().is_empty());
        (self.services.len(), splits, splits + gateway_vs)
    }
}

pub fn namespace_name(n: usize) -> String {
    format!("ns-{n}")
}

pub fn join_documents(docs: &[String]) -> String {
    docs.iter()
        .map(|d| d.trim_end().to_string() + "\n")
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_model::{Kind, Model, loader};

    fn load(mesh: &Mesh) -> (Vec<strait_model::Object>, Model) {
        let mut objects = Vec::new();
        for (name, text) in mesh.files() {
            objects.extend(
                loader::parse(&text, &name).unwrap_or_else(|e| panic!("{name}: {e:?}\n{text}")),
            );
        }
        let model = Model::build(&objects).unwrap_or_else(|e| panic!("{e}"));
        (objects, model)
    }

    #[test]
    fn the_generated_mesh_is_what_straitd_accepts() {
        let mesh = Mesh::generate(100, 7, 10, 0.2, 2);
        let (objects, model) = load(&mesh);
        let count = |kind: Kind| objects.iter().filter(|o| o.id.kind == kind).count();
        assert_eq!(count(Kind::ServiceEntry), 102);
        assert_eq!(count(Kind::DestinationRule), 20);
        // 20 splits and the gateway's routes
        assert_eq!(count(Kind::VirtualService), 21);
        assert_eq!(count(Kind::Gateway), 1);
        assert_eq!(count(Kind::Sidecar), 0);
        assert_eq!(mesh.object_counts(), (102, 20, 21));
        assert_eq!(model.services.len(), 102);
        assert!(!model.is_scoped());
        assert!(model.warnings.is_empty(), "{:?}", model.warnings);
        let svc = &mesh.services[3];
        assert_eq!(svc.namespace, "ns-3");
        assert!(model.services.contains_key(&svc.host()));
        assert_eq!(mesh.app_services().len(), 100);
        assert_eq!(mesh.shared_services(), 2);
        let shared = &mesh.services[101];
        assert!(shared.shared && shared.index == 101);
        assert_eq!(shared.host(), "shared-1.istio-system.svc.cluster.local");
        assert!(model.services.contains_key(&shared.host()));
        // every service's endpoints are distinct addresses in 10/8 or 172.16/12
        for s in &mesh.services {
            let addrs: std::collections::BTreeSet<_> =
                (0..s.endpoints).map(|j| s.address(j)).collect();
            assert_eq!(addrs.len(), 10);
            assert!(addrs.iter().all(|a| a.is_private()), "{addrs:?}");
        }
        let all: std::collections::BTreeSet<_> = mesh
            .services
            .iter()
            .flat_map(|s| (0..s.endpoints).map(|j| s.address(j)))
            .collect();
        assert_eq!(all.len(), 102 * 10, "no two services share an address");
    }

    #[test]
    fn the_scoped_mesh_has_a_sidecar_per_namespace_that_straitd_accepts() {
        let mesh = Mesh::generate(100, 7, 10, 0.2, 2).scoped(2);
        let (objects, model) = load(&mesh);
        let sidecars: Vec<_> = objects
            .iter()
            .filter(|o| o.id.kind == Kind::Sidecar)
            .collect();
        assert_eq!(sidecars.len(), 7);
        assert_eq!(mesh.sidecar_count(), 7);
        assert!(sidecars.iter().all(|o| o.id.namespace.starts_with("ns-")));
        assert!(model.is_scoped());
        assert_eq!(model.sidecars.len(), 7);
        assert!(model.warnings.is_empty(), "{:?}", model.warnings);
        let ns6 = mesh.sidecar_document(6).expect("scoped");
        assert!(
            ns6.contains(r#"hosts: ["./*", "istio-system/*", "ns-0/*", "ns-1/*"]"#),
            "{ns6}"
        );
        assert_eq!(mesh.imports_of(3), vec![4, 5]);
        // more imports than other namespaces: each of the others once
        let wide = Mesh::generate(10, 3, 1, 0.0, 0).scoped(5);
        assert_eq!(wide.imports_of(1), vec![2, 0]);
        assert!(
            Mesh::generate(10, 3, 1, 0.0, 0)
                .sidecar_document(0)
                .is_none()
        );
        assert_eq!(mesh.namespace_index("ns-6"), Some(6));
        assert_eq!(mesh.namespace_index("ns-7"), None);
        assert_eq!(mesh.namespace_index("ns-06"), None);
        assert_eq!(mesh.namespace_index(SHARED_NAMESPACE), None);
    }

    #[test]
    fn a_changed_object_still_loads_and_differs() {
        let mut mesh = Mesh::generate(10, 2, 10, 0.5, 0);
        let before = mesh.services[1].service_entry();
        mesh.services[1].moves += 1;
        let after = mesh.services[1].service_entry();
        assert_ne!(before, after);
        assert_ne!(
            mesh.services[1].address(0),
            Mesh::generate(10, 2, 10, 0.5, 0).services[1].address(0)
        );
        let split = mesh
            .services
            .iter_mut()
            .find(|s| s.split)
            .expect("a split service");
        split.v1_weight = 80;
        let vs = split.virtual_service();
        assert!(
            vs.contains("weight: 80") && vs.contains("weight: 20"),
            "{vs}"
        );
        let (_, model) = load(&mesh);
        assert_eq!(model.services.len(), 10);
        // each move gives endpoint 0 an address no other endpoint has
        for moves in 1..600 {
            mesh.services[1].moves = moves;
            let s = &mesh.services[1];
            let first = s.address(0);
            assert!(
                (1..s.endpoints).all(|j| s.address(j) != first),
                "move {moves}"
            );
        }
    }

    #[test]
    fn the_split_share_is_spread_evenly() {
        let mesh = Mesh::generate(1000, 20, 10, 0.2, 0);
        assert_eq!(mesh.services.iter().filter(|s| s.split).count(), 200);
        let none = Mesh::generate(50, 5, 3, 0.0, 0);
        assert_eq!(none.services.iter().filter(|s| s.split).count(), 0);
        let all = Mesh::generate(50, 5, 3, 1.0, 0);
        assert_eq!(all.services.iter().filter(|s| s.split).count(), 50);
    }
}
