//! Telemetry (`telemetry.istio.io`): access logging per workload, namespace or mesh. The
//! nearest Telemetry that sets `accessLogging` decides for a workload (one selecting it in its
//! namespace, else its namespace's without selector, else the root namespace's), as in Istio;
//! without one, MeshConfig's `accessLogFile` does.

use std::collections::BTreeMap;

use super::security::{ROOT_NAMESPACE, selects};
use super::spec_of;
use crate::error::{ObjectId, Report, ValidationError};
use crate::loader::{Object, Spec};

/// The provider Strait has: Envoy's file logger on stdout (MeshConfig `accessLogEncoding`
/// picks text or JSON), as Istio's built-in `envoy` provider.
pub const ENVOY_PROVIDER: &str = "envoy";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Telemetry {
    pub id: ObjectId,
    /// `None`: namespace-wide (mesh-wide in the root namespace).
    pub selector: Option<BTreeMap<String, String>>,
    /// Empty: the object does not set access logging (it defers to the next level).
    pub access_logging: Vec<AccessLogRule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessLogRule {
    pub mode: LogMode,
    pub enabled: bool,
}

/// Which traffic a rule is for (Istio's `WorkloadMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogMode {
    Client,
    Server,
    ClientAndServer,
}

/// The side of the traffic a proxy's listener carries: a sidecar's outbound side and a
/// gateway are the client, a sidecar's inbound side the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Client,
    Server,
}

impl LogMode {
    fn covers(self, d: Direction) -> bool {
        matches!(
            (self, d),
            (LogMode::ClientAndServer, _)
                | (LogMode::Client, Direction::Client)
                | (LogMode::Server, Direction::Server)
        )
    }
}

/// Whether a workload's `direction` is logged; `mesh_default`: MeshConfig's `accessLogFile`.
pub(super) fn access_log(
    telemetries: &[Telemetry],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    direction: Direction,
    mesh_default: bool,
) -> bool {
    let setting = |t: &&Telemetry| !t.access_logging.is_empty();
    let workload = telemetries
        .iter()
        .filter(|t| t.id.namespace == namespace && t.selector.is_some())
        .filter(|t| selects(&t.selector, labels))
        .find(setting);
    let namespace_wide = || {
        telemetries
            .iter()
            .filter(|t| t.id.namespace == namespace && t.selector.is_none())
            .find(setting)
    };
    let mesh = || {
        telemetries
            .iter()
            .filter(|t| t.id.namespace == ROOT_NAMESPACE && t.selector.is_none())
            .find(setting)
    };
    let Some(t) = workload.or_else(namespace_wide).or_else(mesh) else {
        return mesh_default;
    };
    // The last rule for this side decides; none for it: the mesh's default.
    t.access_logging
        .iter()
        .rev()
        .find(|r| r.mode.covers(direction))
        .map_or(mesh_default, |r| r.enabled)
}

pub(super) fn build(objects: &[&Object], errors: &mut Vec<ValidationError>) -> Vec<Telemetry> {
    let mut out = Vec::new();
    for o in objects {
        let spec = spec_of(o, |s| match s {
            Spec::Telemetry(t) => Some(t),
            _ => None,
        });
        let mut r = Report {
            origin: &o.origin,
            object: Some(&o.id),
            errors,
        };
        let before = r.count();
        for (field, present) in [
            ("targetRef", spec.target_ref.is_some()),
            ("targetRefs", spec.target_refs.is_some()),
            ("tracing", spec.tracing.is_some()),
            ("metrics", spec.metrics.is_some()),
        ] {
            if present {
                r.unsupported(format!("spec.{field}"), field);
            }
        }
        let selector = spec.selector.as_ref().map(|s| {
            if s.match_labels.is_empty() {
                r.error(
                    "spec.selector.matchLabels",
                    "a selector needs at least one label",
                );
            }
            s.match_labels.clone()
        });
        let mut access_logging = Vec::new();
        for (i, a) in spec.access_logging.iter().enumerate() {
            let path = format!("spec.accessLogging[{i}]");
            if a.filter.is_some() {
                r.unsupported(format!("{path}.filter"), "a filter expression (CEL)");
            }
            for (j, p) in a.providers.iter().enumerate() {
                if p.name != ENVOY_PROVIDER {
                    r.error(
                        format!("{path}.providers[{j}].name"),
                        format!(
                            "unknown provider {:?}; Strait's is {ENVOY_PROVIDER:?} (stdout, MeshConfig accessLogEncoding)",
                            p.name
                        ),
                    );
                }
            }
            let mode = match a.r#match.as_ref().and_then(|m| m.mode.as_deref()) {
                None | Some("CLIENT_AND_SERVER") => LogMode::ClientAndServer,
                Some("CLIENT") => LogMode::Client,
                Some("SERVER") => LogMode::Server,
                Some(other) => {
                    r.error(
                        format!("{path}.match.mode"),
                        format!(
                            "unknown mode {other:?}; expected CLIENT, SERVER or CLIENT_AND_SERVER"
                        ),
                    );
                    continue;
                }
            };
            access_logging.push(AccessLogRule {
                mode,
                enabled: !a.disabled.unwrap_or(false),
            });
        }
        if r.count() == before {
            out.push(Telemetry {
                id: o.id.clone(),
                selector,
                access_logging,
            });
        }
    }
    out
}
