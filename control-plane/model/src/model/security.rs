//! PeerAuthentication, RequestAuthentication and AuthorizationPolicy: who must use mTLS, which
//! JWTs a workload verifies, and who may do what.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::spec_of;
use crate::error::{ObjectId, Report, ValidationError};
use crate::istio::security as wire;
use crate::loader::{Object, Spec};

/// Policies here apply to the whole mesh, as in Istio's default `rootNamespace`.
pub const ROOT_NAMESPACE: &str = "istio-system";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MtlsMode {
    Disable,
    Permissive,
    Strict,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAuthentication {
    pub id: ObjectId,
    /// `None`: namespace-wide (mesh-wide in the root namespace).
    pub selector: Option<BTreeMap<String, String>>,
    /// `None` (UNSET): inherit from the enclosing scope.
    pub mode: Option<MtlsMode>,
    pub port_level: BTreeMap<u16, MtlsMode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthzAction {
    Allow,
    Deny,
    Audit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    pub id: ObjectId,
    pub selector: Option<BTreeMap<String, String>>,
    pub action: AuthzAction,
    /// OR'ed. An ALLOW policy with no rules allows nothing; a DENY policy with none denies nothing.
    pub rules: Vec<AuthzRule>,
}

/// Every part must match (`from` entries are OR'ed among themselves, as are `to` entries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthzRule {
    pub from: Vec<SourceMatch>,
    pub to: Vec<OperationMatch>,
    pub when: Vec<ConditionMatch>,
}

/// Within one source, fields are AND'ed and each field's values OR'ed. Principals are
/// SPIFFE identities without the scheme (`cluster.local/ns/default/sa/productpage`); a value
/// may start or end with `*`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceMatch {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    /// `<iss>/<sub>` of a verified JWT (RequestAuthentication); wildcards as for principals.
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub ip_blocks: Vec<String>,
    pub not_ip_blocks: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperationMatch {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConditionKey {
    RequestHeader(String),
    SourcePrincipal,
    SourceNamespace,
    SourceIp,
    DestinationPort,
    /// `request.auth.principal`: `<iss>/<sub>` of the verified JWT.
    RequestPrincipal,
    /// `request.auth.audiences`: the JWT's `aud`.
    RequestAudiences,
    /// `request.auth.presenter`: the JWT's `azp`.
    RequestPresenter,
    /// `request.auth.claims[a][b]`: a claim, by its path in the payload.
    RequestClaim(Vec<String>),
}

impl ConditionKey {
    /// Whether the key reads a request's JWT (HTTP only).
    pub fn is_request_auth(&self) -> bool {
        matches!(
            self,
            ConditionKey::RequestPrincipal
                | ConditionKey::RequestAudiences
                | ConditionKey::RequestPresenter
                | ConditionKey::RequestClaim(_)
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionMatch {
    pub key: ConditionKey,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

pub(super) fn selects(
    selector: &Option<BTreeMap<String, String>>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector
        .as_ref()
        .is_none_or(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The mTLS mode for a workload's port: workload policy (its port level first), then the
/// namespace's, then the mesh's, else PERMISSIVE — Istio's order, UNSET inheriting.
pub(super) fn mtls_mode(
    policies: &[PeerAuthentication],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    port: u16,
) -> MtlsMode {
    let workload = policies.iter().find(|p| {
        p.id.namespace == namespace && p.selector.is_some() && selects(&p.selector, labels)
    });
    if let Some(mode) = workload.and_then(|p| p.port_level.get(&port)) {
        return *mode;
    }
    let namespace_wide = policies
        .iter()
        .find(|p| p.id.namespace == namespace && p.selector.is_none());
    let mesh_wide = policies
        .iter()
        .find(|p| p.id.namespace == ROOT_NAMESPACE && p.selector.is_none());
    [workload, namespace_wide, mesh_wide]
        .into_iter()
        .flatten()
        .find_map(|p| p.mode)
        .unwrap_or(MtlsMode::Permissive)
}

/// The AuthorizationPolicies that apply to a workload: those of the root namespace and of the
/// workload's own namespace whose selector (if any) matches its labels.
pub(super) fn authorization_for<'a>(
    policies: &'a [AuthorizationPolicy],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a AuthorizationPolicy> {
    policies
        .iter()
        .filter(|p| p.id.namespace == namespace || p.id.namespace == ROOT_NAMESPACE)
        .filter(|p| selects(&p.selector, labels))
        .collect()
}

fn selector(
    s: &Option<wire::WorkloadSelector>,
    r: &mut Report<'_>,
) -> Option<BTreeMap<String, String>> {
    let s = s.as_ref()?;
    if s.match_labels.is_empty() {
        r.error(
            "spec.selector.matchLabels",
            "a selector needs at least one label",
        );
    }
    Some(s.match_labels.clone())
}

fn mode(m: &wire::MutualTls, path: &str, r: &mut Report<'_>) -> Option<MtlsMode> {
    match m.mode.as_deref() {
        None | Some("UNSET") => None,
        Some("DISABLE") => Some(MtlsMode::Disable),
        Some("PERMISSIVE") => Some(MtlsMode::Permissive),
        Some("STRICT") => Some(MtlsMode::Strict),
        Some(other) => {
            r.error(
                path,
                format!("unknown mode {other:?}; expected UNSET, DISABLE, PERMISSIVE or STRICT"),
            );
            None
        }
    }
}

pub(super) fn peer_authentications(
    objects: &[&Object],
    errors: &mut Vec<ValidationError>,
) -> Vec<PeerAuthentication> {
    let mut out: Vec<PeerAuthentication> = Vec::new();
    for o in objects {
        let spec = spec_of(o, |s| match s {
            Spec::PeerAuthentication(p) => Some(p),
            _ => None,
        });
        let mut r = Report {
            origin: &o.origin,
            object: Some(&o.id),
            errors,
        };
        let before = r.count();
        let sel = selector(&spec.selector, &mut r);
        let m = spec
            .mtls
            .as_ref()
            .and_then(|m| mode(m, "spec.mtls.mode", &mut r));
        let mut port_level = BTreeMap::new();
        for (port, m) in &spec.port_level_mtls {
            let path = format!("spec.portLevelMtls.{port}");
            if sel.is_none() {
                r.error(&path, "portLevelMtls needs a selector (as in Istio)");
            }
            match port.parse::<u16>() {
                Ok(p) if p != 0 => match mode(m, &format!("{path}.mode"), &mut r) {
                    Some(mode) => {
                        port_level.insert(p, mode);
                    }
                    None => r.error(format!("{path}.mode"), "a port-level mode must be set"),
                },
                _ => r.error(
                    &path,
                    format!("expected a port number 1-65535, got {port:?}"),
                ),
            }
        }
        if sel.is_none()
            && let Some(other) = out
                .iter()
                .find(|p| p.id.namespace == o.id.namespace && p.selector.is_none())
        {
            let scope = if o.id.namespace == ROOT_NAMESPACE {
                "the mesh"
            } else {
                "the namespace"
            };
            r.error(
                "spec.selector",
                format!("{} already sets mTLS for {scope}; merge them", other.id),
            );
        }
        if r.count() > before {
            continue;
        }
        out.push(PeerAuthentication {
            id: o.id.clone(),
            selector: sel,
            mode: m,
            port_level,
        });
    }
    out
}

pub(super) fn authorization_policies(
    objects: &[&Object],
    errors: &mut Vec<ValidationError>,
) -> Vec<AuthorizationPolicy> {
    let mut out = Vec::new();
    for o in objects {
        let spec = spec_of(o, |s| match s {
            Spec::AuthorizationPolicy(p) => Some(p),
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
            ("provider", spec.provider.is_some()),
        ] {
            if present {
                r.unsupported(format!("spec.{field}"), field);
            }
        }
        let sel = selector(&spec.selector, &mut r);
        let action = match spec.action.as_deref() {
            None | Some("ALLOW") => AuthzAction::Allow,
            Some("DENY") => AuthzAction::Deny,
            Some("AUDIT") => AuthzAction::Audit,
            Some("CUSTOM") => {
                r.unsupported("spec.action", "action CUSTOM (external authorization)");
                AuthzAction::Deny
            }
            Some(other) => {
                r.error(
                    "spec.action",
                    format!("unknown action {other:?}; expected ALLOW, DENY or AUDIT"),
                );
                AuthzAction::Deny
            }
        };
        let rules = spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| authz_rule(rule, &format!("spec.rules[{i}]"), &mut r))
            .collect();
        if r.count() > before {
            continue;
        }
        out.push(AuthorizationPolicy {
            id: o.id.clone(),
            selector: sel,
            action,
            rules,
        });
    }
    out
}

fn authz_rule(rule: &wire::Rule, path: &str, r: &mut Report<'_>) -> AuthzRule {
    let mut out = AuthzRule::default();
    for (i, f) in rule.from.iter().enumerate() {
        let p = format!("{path}.from[{i}].source");
        let Some(s) = &f.source else {
            r.error(&p, "a source is required");
            continue;
        };
        for (field, values) in [
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ] {
            if !values.is_empty() {
                r.unsupported(format!("{p}.{field}"), field);
            }
        }
        let principals =
            |values: &[String], accounts: &[String], field: &str, r: &mut Report<'_>| {
                let mut out = values.to_vec();
                for (j, sa) in accounts.iter().enumerate() {
                    match sa.split_once('/') {
                        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                            out.push(format!("*/ns/{ns}/sa/{name}"));
                        }
                        _ => r.error(
                            format!("{p}.{field}[{j}]"),
                            format!("expected NAMESPACE/NAME, got {sa:?}"),
                        ),
                    }
                }
                out
            };
        let mut source = SourceMatch {
            principals: principals(&s.principals, &s.service_accounts, "serviceAccounts", r),
            not_principals: principals(
                &s.not_principals,
                &s.not_service_accounts,
                "notServiceAccounts",
                r,
            ),
            request_principals: s.request_principals.clone(),
            not_request_principals: s.not_request_principals.clone(),
            namespaces: s.namespaces.clone(),
            not_namespaces: s.not_namespaces.clone(),
            ip_blocks: s.ip_blocks.clone(),
            not_ip_blocks: s.not_ip_blocks.clone(),
        };
        for (field, values) in [
            ("ipBlocks", &mut source.ip_blocks),
            ("notIpBlocks", &mut source.not_ip_blocks),
        ] {
            for (j, v) in values.iter().enumerate() {
                if !is_cidr(v) {
                    r.error(
                        format!("{p}.{field}[{j}]"),
                        format!("expected an IP address or CIDR, got {v:?}"),
                    );
                }
            }
        }
        for (field, values) in [
            ("principals", &source.principals),
            ("notPrincipals", &source.not_principals),
            ("requestPrincipals", &source.request_principals),
            ("notRequestPrincipals", &source.not_request_principals),
            ("namespaces", &source.namespaces),
            ("notNamespaces", &source.not_namespaces),
        ] {
            for (j, v) in values.iter().enumerate() {
                check_wildcard(v, &format!("{p}.{field}[{j}]"), r);
            }
        }
        out.from.push(source);
    }
    for (i, t) in rule.to.iter().enumerate() {
        let p = format!("{path}.to[{i}].operation");
        let Some(op) = &t.operation else {
            r.error(&p, "an operation is required");
            continue;
        };
        let ports = |values: &[String], field: &str, r: &mut Report<'_>| -> Vec<u16> {
            values
                .iter()
                .enumerate()
                .filter_map(|(j, v)| match v.parse::<u16>() {
                    Ok(n) if n != 0 => Some(n),
                    _ => {
                        r.error(
                            format!("{p}.{field}[{j}]"),
                            format!("expected a port number, got {v:?}"),
                        );
                        None
                    }
                })
                .collect()
        };
        let operation = OperationMatch {
            hosts: op.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            not_hosts: op
                .not_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            ports: ports(&op.ports, "ports", r),
            not_ports: ports(&op.not_ports, "notPorts", r),
            methods: op.methods.clone(),
            not_methods: op.not_methods.clone(),
            paths: op.paths.clone(),
            not_paths: op.not_paths.clone(),
        };
        for (field, values) in [
            ("hosts", &operation.hosts),
            ("notHosts", &operation.not_hosts),
            ("methods", &operation.methods),
            ("notMethods", &operation.not_methods),
            ("paths", &operation.paths),
            ("notPaths", &operation.not_paths),
        ] {
            for (j, v) in values.iter().enumerate() {
                check_wildcard(v, &format!("{p}.{field}[{j}]"), r);
            }
        }
        out.to.push(operation);
    }
    for (i, c) in rule.when.iter().enumerate() {
        let p = format!("{path}.when[{i}]");
        let key = if let Some(name) = c
            .key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'))
        {
            if name.is_empty() {
                r.error(
                    format!("{p}.key"),
                    "a header name is required in request.headers[...]",
                );
            }
            Some(ConditionKey::RequestHeader(name.to_ascii_lowercase()))
        } else if let Some(path) = c.key.strip_prefix("request.auth.claims") {
            match claim_path(path) {
                Some(claims) => Some(ConditionKey::RequestClaim(claims)),
                None => {
                    r.error(
                        format!("{p}.key"),
                        format!(
                            "expected request.auth.claims[NAME] or nested request.auth.claims[A][B], got {:?}",
                            c.key
                        ),
                    );
                    None
                }
            }
        } else {
            match c.key.as_str() {
                "request.auth.principal" => Some(ConditionKey::RequestPrincipal),
                "request.auth.audiences" => Some(ConditionKey::RequestAudiences),
                "request.auth.presenter" => Some(ConditionKey::RequestPresenter),
                "source.principal" => Some(ConditionKey::SourcePrincipal),
                "source.namespace" => Some(ConditionKey::SourceNamespace),
                "source.ip" => Some(ConditionKey::SourceIp),
                "destination.port" => Some(ConditionKey::DestinationPort),
                "" => {
                    r.error(format!("{p}.key"), "a key is required");
                    None
                }
                other => {
                    r.unsupported(format!("{p}.key"), &format!("condition key {other:?}"));
                    None
                }
            }
        };
        if c.values.is_empty() && c.not_values.is_empty() {
            r.error(&p, "values or notValues is required");
        }
        for v in c.values.iter().chain(&c.not_values) {
            match key {
                Some(ConditionKey::SourceIp) if !is_cidr(v) => {
                    r.error(&p, format!("source.ip values are IPs or CIDRs, got {v:?}"));
                }
                Some(ConditionKey::DestinationPort) if v.parse::<u16>().is_err() => {
                    r.error(
                        &p,
                        format!("destination.port values are port numbers, got {v:?}"),
                    );
                }
                _ => check_wildcard(v, &p, r),
            }
        }
        if let Some(key) = key {
            out.when.push(ConditionMatch {
                key,
                values: c.values.clone(),
                not_values: c.not_values.clone(),
            });
        }
    }
    out
}

/// `[a][b]` -> `["a", "b"]`: names in brackets, none empty, nothing between them.
fn claim_path(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') {
            return None;
        }
        out.push(name.to_string());
        rest = &inner[end + 1..];
    }
    (!out.is_empty()).then_some(out)
}

fn is_cidr(v: &str) -> bool {
    match v.split_once('/') {
        Some((ip, len)) => match (ip.parse::<IpAddr>(), len.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(l)) => l <= 32,
            (Ok(IpAddr::V6(_)), Ok(l)) => l <= 128,
            _ => false,
        },
        None => v.parse::<IpAddr>().is_ok(),
    }
}

/// Istio allows `*` only as a whole value, a prefix or a suffix.
fn check_wildcard(v: &str, path: &str, r: &mut Report<'_>) {
    if v.is_empty() {
        r.error(path, "must not be empty");
        return;
    }
    let inner = v.trim_start_matches('*').trim_end_matches('*');
    if inner.contains('*') || (v.starts_with('*') && v.ends_with('*') && v.len() > 1 && v != "*") {
        r.error(
            path,
            format!("{v:?}: '*' may only be the whole value, a prefix or a suffix"),
        );
    }
}
