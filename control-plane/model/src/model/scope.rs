//! What a proxy may see: `exportTo` on ServiceEntries, VirtualServices and DestinationRules,
//! and the Sidecar resource's egress hosts. A proxy receives only the configuration its scope
//! holds, so a namespace that imports little costs little.

use std::collections::{BTreeMap, BTreeSet};

use super::{Model, spec_of};
use crate::error::{ObjectId, Report, ValidationError};
use crate::host;
use crate::istio::networking as wire;
use crate::loader::{Object, Spec, check_dns_name};
use crate::mesh::OutboundTrafficPolicy;
use crate::model::security::ROOT_NAMESPACE;

/// The namespaces an object is visible in (`exportTo`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExportTo {
    /// `*`, or no `exportTo`: every namespace.
    #[default]
    All,
    /// These namespaces only (`.` resolved to the object's own); none for `~`.
    Namespaces(BTreeSet<String>),
}

impl ExportTo {
    pub fn includes(&self, namespace: &str) -> bool {
        match self {
            ExportTo::All => true,
            ExportTo::Namespaces(namespaces) => namespaces.contains(namespace),
        }
    }
}

/// Reads `exportTo` as Istio does: `*` (everywhere), `.` (the object's namespace), `~`
/// (nowhere) or namespace names; `*` and `~` stand alone.
pub(crate) fn export_to(
    values: &[String],
    namespace: &str,
    path: &str,
    r: &mut Report<'_>,
) -> ExportTo {
    if values.is_empty() {
        return ExportTo::All;
    }
    let mut namespaces = BTreeSet::new();
    let mut all = false;
    let mut seen = BTreeSet::new();
    for (i, value) in values.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if !seen.insert(value.as_str()) {
            r.error(&at, format!("{value:?} is listed twice"));
            continue;
        }
        match value.as_str() {
            "*" => all = true,
            "~" => {}
            "." => {
                namespaces.insert(namespace.to_string());
            }
            name => match check_dns_name(name) {
                Ok(()) => {
                    namespaces.insert(name.to_string());
                }
                Err(m) => r.error(
                    &at,
                    format!("expected \"*\", \".\", \"~\" or a namespace name: {m}"),
                ),
            },
        }
    }
    if values.len() > 1 && (seen.contains("*") || seen.contains("~")) {
        r.error(
            path,
            "\"*\" (every namespace) and \"~\" (none) cannot be combined with other values",
        );
    }
    if all {
        ExportTo::All
    } else {
        ExportTo::Namespaces(namespaces)
    }
}

// === Sidecar ===

/// An Istio Sidecar: what the sidecars it selects may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sidecar {
    pub id: ObjectId,
    /// `None`: every workload of its namespace without a Sidecar of its own (in the root
    /// namespace: of every namespace without one).
    pub selector: Option<BTreeMap<String, String>>,
    /// `None`: no egress section, every host stays visible.
    pub egress: Option<Vec<EgressHost>>,
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// One egress host, `namespace/dnsName`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressHost {
    pub namespace: EgressNamespace,
    /// A host, `*.suffix` or `*`.
    pub host: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EgressNamespace {
    /// `*`
    Any,
    /// `.`: the Sidecar's namespace, or, for the root namespace's default, the workload's.
    Same,
    /// `~`: none.
    Nothing,
    Named(String),
}

impl Sidecar {
    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }

    /// Whether an object of `namespace` with these hosts is imported, for a workload of
    /// `workload_namespace`.
    fn imports<'a>(
        &self,
        workload_namespace: &str,
        namespace: &str,
        mut hosts: impl Iterator<Item = &'a str>,
    ) -> bool {
        let Some(egress) = &self.egress else {
            return true;
        };
        let own = if self.id.namespace == ROOT_NAMESPACE {
            workload_namespace
        } else {
            self.id.namespace.as_str()
        };
        let hosts: Vec<&str> = hosts.by_ref().collect();
        egress.iter().any(|e| {
            let namespace_matches = match &e.namespace {
                EgressNamespace::Any => true,
                EgressNamespace::Same => namespace == own,
                EgressNamespace::Nothing => false,
                EgressNamespace::Named(n) => n == namespace,
            };
            namespace_matches && hosts.iter().any(|h| host::intersect(&e.host, h))
        })
    }
}

pub(super) fn build_sidecars(
    objects: &[&Object],
    errors: &mut Vec<ValidationError>,
) -> Vec<Sidecar> {
    let mut out: Vec<Sidecar> = Vec::new();
    for o in objects {
        let spec = spec_of(o, |s| match s {
            Spec::Sidecar(s) => Some(s),
            _ => None,
        });
        let mut r = Report {
            origin: &o.origin,
            object: Some(&o.id),
            errors,
        };
        let before = r.count();
        let sidecar = sidecar(o, spec, &mut r);
        // Two Sidecars that would apply to the same workloads: Istio picks the oldest
        // silently (`istioctl analyze` calls it an error); here the later one by name is
        // refused.
        if let Some(other) = out
            .iter()
            .find(|s| s.id.namespace == o.id.namespace && s.selector == sidecar.selector)
        {
            let what = match &sidecar.selector {
                None => "a Sidecar without workloadSelector".to_string(),
                Some(_) => "a Sidecar with the same workloadSelector".to_string(),
            };
            r.error(
                if sidecar.selector.is_some() {
                    "spec.workloadSelector"
                } else {
                    "spec"
                },
                format!(
                    "namespace {:?} already has {what} ({}); only one may apply to a workload",
                    o.id.namespace, other.id.name
                ),
            );
        }
        if r.count() == before {
            out.push(sidecar);
        }
    }
    out
}

fn sidecar(o: &Object, spec: &wire::SidecarSpec, r: &mut Report<'_>) -> Sidecar {
    if spec.ingress.is_some() {
        r.unsupported("spec.ingress", "Sidecar ingress listeners");
    }
    if spec.inbound_connection_pool.is_some() {
        r.unsupported("spec.inboundConnectionPool", "inboundConnectionPool");
    }
    let selector = spec.workload_selector.as_ref().map(|s| {
        if s.labels.is_empty() {
            r.error(
                "spec.workloadSelector.labels",
                "at least one label is required (leave workloadSelector out to select the whole namespace)",
            );
        }
        s.labels.clone()
    });
    let outbound_traffic_policy = spec.outbound_traffic_policy.as_ref().and_then(|p| {
        if p.egress_proxy.is_some() {
            r.unsupported("spec.outboundTrafficPolicy.egressProxy", "egressProxy");
        }
        // The field's enum starts at REGISTRY_ONLY: an empty policy is REGISTRY_ONLY.
        match p.mode.as_deref() {
            None | Some("REGISTRY_ONLY") => Some(OutboundTrafficPolicy::RegistryOnly),
            Some("ALLOW_ANY") => Some(OutboundTrafficPolicy::AllowAny),
            Some(other) => {
                r.error(
                    "spec.outboundTrafficPolicy.mode",
                    format!("unknown mode {other:?}; expected ALLOW_ANY or REGISTRY_ONLY"),
                );
                None
            }
        }
    });
    if spec.egress.len() > 1 {
        r.error(
            "spec.egress",
            "only one egress listener may be given (egress listeners per port are not supported by Strait yet)",
        );
    }
    let egress = spec.egress.first().map(|listener| {
        let at = "spec.egress[0]";
        if listener.port.is_some() {
            r.unsupported(format!("{at}.port"), "egress listeners per port");
        }
        if listener.bind.is_some() {
            r.unsupported(format!("{at}.bind"), "bind");
        }
        if listener.capture_mode.is_some() {
            r.unsupported(format!("{at}.captureMode"), "captureMode");
        }
        if listener.hosts.is_empty() {
            r.error(format!("{at}.hosts"), "at least one host is required");
        }
        listener
            .hosts
            .iter()
            .enumerate()
            .filter_map(|(i, h)| egress_host(h, &format!("{at}.hosts[{i}]"), r))
            .collect()
    });
    if spec.egress.is_empty() && spec.outbound_traffic_policy.is_none() {
        r.error(
            "spec",
            "a Sidecar needs egress or outboundTrafficPolicy (ingress is not supported by Strait yet)",
        );
    }
    Sidecar {
        id: o.id.clone(),
        selector,
        egress,
        outbound_traffic_policy,
    }
}

fn egress_host(value: &str, at: &str, r: &mut Report<'_>) -> Option<EgressHost> {
    let Some((namespace, name)) = value.split_once('/') else {
        r.error(
            at,
            format!("{value:?} is not namespace/dnsName (e.g. \"./*\", \"istio-system/*\", \"*/foo.example.com\")"),
        );
        return None;
    };
    let namespace = match namespace {
        "*" => EgressNamespace::Any,
        "." => EgressNamespace::Same,
        "~" => EgressNamespace::Nothing,
        n => match check_dns_name(n) {
            Ok(()) => EgressNamespace::Named(n.to_string()),
            Err(m) => {
                r.error(at, format!("namespace {n:?}: {m}"));
                return None;
            }
        },
    };
    let name = name.trim().to_ascii_lowercase();
    if let Err(m) = host::check(&name) {
        r.error(at, m);
        return None;
    }
    Some(EgressHost {
        namespace,
        host: name,
    })
}

// === Scopes ===

/// What one proxy sees of the model: a subset of its services, VirtualServices and
/// DestinationRules, and the outbound traffic policy its Sidecar sets. Proxies with equal
/// scopes share one translation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub services: BTreeSet<String>,
    pub virtual_services: BTreeSet<ObjectId>,
    /// By the host the rule names.
    pub destination_rules: BTreeSet<String>,
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

impl Model {
    /// Whether any proxy sees less than the whole model (a Sidecar, or an `exportTo` short
    /// of every namespace). Without, every proxy shares one scope, the whole model.
    pub fn is_scoped(&self) -> bool {
        !self.sidecars.is_empty()
            || self.services.values().any(|s| s.export_to != ExportTo::All)
            || self
                .virtual_services
                .iter()
                .any(|v| v.export_to != ExportTo::All)
            || self
                .destination_rules
                .values()
                .any(|d| d.export_to != ExportTo::All)
    }

    /// The Sidecar that applies to a sidecar proxy of `namespace` with `labels`: one of its
    /// namespace selecting it (the first by name), else its namespace's default, else the
    /// root namespace's default.
    pub fn sidecar_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<&Sidecar> {
        let in_namespace = || self.sidecars.iter().filter(|s| s.id.namespace == namespace);
        in_namespace()
            .find(|s| s.selects(labels))
            .or_else(|| in_namespace().find(|s| s.selector.is_none()))
            .or_else(|| {
                self.sidecars
                    .iter()
                    .find(|s| s.id.namespace == ROOT_NAMESPACE && s.selector.is_none())
            })
    }

    /// The Sidecar that applies to a proxy; none for gateways, which Sidecars do not scope.
    pub fn sidecar_of(&self, node: &crate::ProxyNode) -> Option<&Sidecar> {
        match node.mode {
            crate::ProxyMode::Sidecar => self.sidecar_for(&node.namespace, &node.labels),
            crate::ProxyMode::Gateway => None,
        }
    }

    /// What a proxy of `namespace` sees: what is exported to its namespace and, for a sidecar,
    /// what its Sidecar imports. `None` when that is the whole model.
    pub fn scope_for(&self, namespace: &str, sidecar: Option<&Sidecar>) -> Option<Scope> {
        if !self.is_scoped() {
            return None;
        }
        let imports = |object_namespace: &str, hosts: &mut dyn Iterator<Item = &str>| {
            sidecar.is_none_or(|s| s.imports(namespace, object_namespace, hosts))
        };
        let services = self
            .services
            .values()
            .filter(|s| s.export_to.includes(namespace))
            .filter(|s| imports(&s.namespace, &mut std::iter::once(s.hostname.as_str())))
            .map(|s| s.hostname.clone())
            .collect();
        let virtual_services = self
            .virtual_services
            .iter()
            .filter(|v| v.export_to.includes(namespace))
            .filter(|v| imports(&v.id.namespace, &mut v.hosts.iter().map(String::as_str)))
            .map(|v| v.id.clone())
            .collect();
        let destination_rules = self
            .destination_rules
            .iter()
            .filter(|(_, d)| d.export_to.includes(namespace))
            .map(|(host, _)| host.clone())
            .collect();
        Some(Scope {
            services,
            virtual_services,
            destination_rules,
            outbound_traffic_policy: sidecar.and_then(|s| s.outbound_traffic_policy),
        })
    }

    /// The model as a proxy with this scope sees it. Its routes may name destinations it does
    /// not hold; translation sends those to the BlackHoleCluster (a 503, as Envoy answers for
    /// a cluster Istio did not send).
    pub fn scoped(&self, scope: &Scope) -> Model {
        Model {
            services: self
                .services
                .iter()
                .filter(|(host, _)| scope.services.contains(*host))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            destination_rules: self
                .destination_rules
                .iter()
                .filter(|(host, _)| scope.destination_rules.contains(*host))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            virtual_services: self
                .virtual_services
                .iter()
                .filter(|v| scope.virtual_services.contains(&v.id))
                .cloned()
                .collect(),
            gateways: self.gateways.clone(),
            peer_authentications: self.peer_authentications.clone(),
            authorization_policies: self.authorization_policies.clone(),
            request_authentications: self.request_authentications.clone(),
            rate_limit_policies: self.rate_limit_policies.clone(),
            telemetries: self.telemetries.clone(),
            jwks: self.jwks.clone(),
            sidecars: self.sidecars.clone(),
            credentials: self.credentials.clone(),
            warnings: Vec::new(),
        }
    }

    /// Whether the model holds the cluster a destination names (always, in a whole model;
    /// not in a scoped one whose scope leaves the host or its rule out).
    pub fn holds(&self, destination: &super::Destination) -> bool {
        self.services.contains_key(&destination.host)
            && destination.subset.as_deref().is_none_or(|s| {
                self.subsets_for(&destination.host)
                    .iter()
                    .any(|x| x.name == s)
            })
    }
}
