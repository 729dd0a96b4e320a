//! The generated mesh: STATIC ServiceEntries with endpoint addresses (never contacted, only
//! configured), DestinationRules with subsets v1/v2 and 90/10 VirtualServices for a share of
//! the services, and one ingress Gateway; rendered as Istio YAML, one file per namespace.

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

#[derive(Clone, Debug)]
pub struct Mesh {
    pub namespaces: usize,
    pub services: Vec<Service>,
}

impl Mesh {
    /// `services` services over `namespaces` namespaces (service i in namespace i mod n), each
    /// with `endpoints` endpoints; `split_share` of them (spread evenly) split 90/10.
    pub fn generate(
        services: usize,
        namespaces: usize,
        endpoints: usize,
        split_share: f64,
    ) -> Mesh {
        let namespaces = namespaces.max(1);
        // In millionths, so that exactly floor(n * share) services split, spread evenly.
        let share = (split_share.clamp(0.0, 1.0) * 1e6).round() as usize;
        let services = (0..services)
            .map(|i| {
                let split = (i + 1) * share / 1_000_000 > i * share / 1_000_000;
                Service {
                    index: i,
                    name: format!("svc-{i}"),
                    namespace: namespace_name(i % namespaces),
                    split,
                    v1_weight: 90,
                    endpoints: endpoints.clamp(1, 200),
                    moves: 0,
                }
            })
            .collect();
        Mesh {
            namespaces,
            services,
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
        for s in self.services.iter().take(GATEWAY_ROUTES) {
            let _ = writeln!(
                vs,
                "  - match: [{{uri: {{prefix: /{name}/}}}}]\n    route: [{{destination: {{host: {host}, port: {{number: {SERVICE_PORT}}}}}}}]",
                name = s.name,
                host = s.host(),
            );
        }
        if self.services.is_empty() {
            return vec![gateway];
        }
        vec![gateway, vs]
    }

    /// The config directory's files: (file name, multi-document YAML).
    pub fn files(&self) -> Vec<(String, String)> {
        let mut files: Vec<(String, Vec<String>)> = (0..self.namespaces)
            .map(|n| (format!("{}.yaml", namespace_name(n)), Vec::new()))
            .collect();
        for s in &self.services {
            files[s.index % self.namespaces].1.extend(s.documents());
        }
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
        let gateway_vs = usize::from(!self.services.is_empty());
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
        let mesh = Mesh::generate(100, 7, 10, 0.2);
        let (objects, model) = load(&mesh);
        let count = |kind: Kind| objects.iter().filter(|o| o.id.kind == kind).count();
        assert_eq!(count(Kind::ServiceEntry), 100);
        assert_eq!(count(Kind::DestinationRule), 20);
        // 20 splits and the gateway's routes
        assert_eq!(count(Kind::VirtualService), 21);
        assert_eq!(count(Kind::Gateway), 1);
        assert_eq!(mesh.object_counts(), (100, 20, 21));
        assert_eq!(model.services.len(), 100);
        assert!(model.warnings.is_empty(), "{:?}", model.warnings);
        let svc = &mesh.services[3];
        assert_eq!(svc.namespace, "ns-3");
        assert!(model.services.contains_key(&svc.host()));
        // every service's endpoints are distinct addresses in 10/8 or 172.16/12
        for s in &mesh.services {
            let addrs: std::collections::BTreeSet<_> =
                (0..s.endpoints).map(|j| s.address(j)).collect();
            assert_eq!(addrs.len(), 10);
            assert!(addrs.iter().all(|a| a.is_private()), "{addrs:?}");
        }
    }

    #[test]
    fn a_changed_object_still_loads_and_differs() {
        let mut mesh = Mesh::generate(10, 2, 10, 0.5);
        let before = mesh.services[1].service_entry();
        mesh.services[1].moves += 1;
        let after = mesh.services[1].service_entry();
        assert_ne!(before, after);
        assert_ne!(
            mesh.services[1].address(0),
            Mesh::generate(10, 2, 10, 0.5).services[1].address(0)
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
        let mesh = Mesh::generate(1000, 20, 10, 0.2);
        assert_eq!(mesh.services.iter().filter(|s| s.split).count(), 200);
        let none = Mesh::generate(50, 5, 3, 0.0);
        assert_eq!(none.services.iter().filter(|s| s.split).count(), 0);
        let all = Mesh::generate(50, 5, 3, 1.0);
        assert_eq!(all.services.iter().filter(|s| s.split).count(), 50);
    }
}
