//! The service registry: ServiceEntries and the WorkloadEntries they select become services.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{Endpoint, Protocol, Resolution, Service, ServicePort, spec_of};
use crate::error::{Report, ValidationError};
use crate::istio::networking::{Port, ServiceEntrySpec, WorkloadEntrySpec};
use crate::loader::{Object, Spec};
use crate::{Kind, host};

pub(super) fn build(
    service_entries: &[&Object],
    workload_entries: &[&Object],
    errors: &mut Vec<ValidationError>,
    warnings: &mut Vec<ValidationError>,
) -> BTreeMap<String, Service> {
    // WorkloadEntries first: ServiceEntries select them.
    let mut workloads: Vec<(&Object, Endpoint)> = Vec::new();
    for o in workload_entries {
        let spec = spec_of(o, |s| match s {
            Spec::WorkloadEntry(w) => Some(w),
            _ => None,
        });
        let mut r = Report {
            origin: &o.origin,
            object: Some(&o.id),
            errors,
        };
        if let Some(e) = endpoint(spec, "spec", o, &mut r) {
            workloads.push((o, e));
        }
    }

    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    // Captured traffic to an address and port must name one service.
    let mut claims: BTreeMap<(ipnet::IpNet, u16), String> = BTreeMap::new();
    for o in service_entries {
        let spec = spec_of(o, |s| match s {
            Spec::ServiceEntry(se) => Some(se),
            _ => None,
        });
        let mut r = Report {
            origin: &o.origin,
            object: Some(&o.id),
            errors,
        };
        let before = r.count();
        let Some(template) = service_entry(spec, o, &workloads, &mut r, warnings) else {
            continue;
        };
        for (i, h) in spec.hosts.iter().enumerate() {
            // ServiceEntry hosts stand as written, as in Istio.
            let hostname = h.trim().to_ascii_lowercase();
            if let Some(first) = owners.get(&hostname) {
                r.error(
                    format!("spec.hosts[{i}]"),
                    format!("host {hostname:?} is already defined by {first}"),
                );
                continue;
            }
            if r.count() > before {
                continue;
            }
            let mut claimed = false;
            for net in &template.addresses {
                for port in &template.ports {
                    let owner = format!("host {hostname:?} of {}", o.id);
                    if let Some(first) = claims.get(&(*net, port.number)) {
                        r.error(
                            "spec.addresses",
                            format!(
                                "address {net} port {} of host {hostname:?} is already claimed by {first}",
                                port.number
                            ),
                        );
                        claimed = true;
                    } else {
                        claims.insert((*net, port.number), owner);
                    }
                }
            }
            if claimed {
                continue;
            }
            owners.insert(hostname.clone(), format!("{} ({})", o.id, o.origin));
            if !hostname.contains('.') {
                warnings.push(ValidationError {
                    origin: o.origin.clone(),
                    object: Some(o.id.clone()),
                    path: format!("spec.hosts[{i}]"),
                    message: format!(
                        "short host {hostname:?} is taken literally; VirtualServices and DestinationRules in namespace {ns:?} read \"{hostname}\" as {full:?}",
                        ns = o.id.namespace,
                        full = host::resolve(&hostname, &o.id.namespace)
                    ),
                });
            }
            services.insert(
                hostname.clone(),
                Service {
                    hostname,
                    ..template.clone()
                },
            );
        }
    }
    services
}

/// The services of ServiceEntry `after`, a new version of `before` that differs from it in its
/// endpoints alone, given the `services` a valid build made of `before`: the same services
/// with the new endpoints. `None` when the change is anything more, or when the new version
/// is not valid on its own or has a warning (a whole build reports those, in their order).
///
/// Nothing else `build` checks reads endpoints: the hosts, addresses and ports `before` held
/// without conflict are the same, and the workloads a selector picks are not involved (a
/// ServiceEntry with a `workloadSelector` is left to a whole build).
pub(super) fn endpoints_changed(
    before: &Object,
    after: &Object,
    services: &BTreeMap<String, Service>,
) -> Option<Vec<Service>> {
    let (Spec::ServiceEntry(old), Spec::ServiceEntry(new)) = (&before.spec, &after.spec) else {
        return None;
    };
    if before.id != after.id
        || old.workload_selector.is_some()
        || new.workload_selector.is_some()
        || before.meta.labels != after.meta.labels
        || before.meta.annotations != after.meta.annotations
    {
        return None;
    }
    let without_endpoints = |spec: &ServiceEntrySpec| ServiceEntrySpec {
        endpoints: Vec::new(),
        ..spec.clone()
    };
    if without_endpoints(old) != without_endpoints(new) {
        return None;
    }
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut r = Report {
        origin: &after.origin,
        object: Some(&after.id),
        errors: &mut errors,
    };
    let template = service_entry(new, after, &[], &mut r, &mut warnings)?;
    if !errors.is_empty() || !warnings.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(new.hosts.len());
    for h in &new.hosts {
        let hostname = h.trim().to_ascii_lowercase();
        let previous = services.get(&hostname)?;
        let service = Service {
            hostname,
            ..template.clone()
        };
        if previous.source != after.id || !previous.same_but_endpoints(&service) {
            return None;
        }
        out.push(service);
    }
    Some(out)
}

fn service_entry(
    spec: &ServiceEntrySpec,
    o: &Object,
    workloads: &[(&Object, Endpoint)],
    r: &mut Report<'_>,
    warnings: &mut Vec<ValidationError>,
) -> Option<Service> {
    let before = r.count();
    if spec.hosts.is_empty() {
        r.error("spec.hosts", "at least one host is required");
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        if h.starts_with('*') {
            r.unsupported(format!("spec.hosts[{i}]"), "a wildcard ServiceEntry host");
        } else if let Err(m) = host::check(h) {
            r.error(format!("spec.hosts[{i}]"), m);
        }
    }
    let mut addresses = Vec::new();
    for (i, a) in spec.addresses.iter().enumerate() {
        match address(a) {
            Ok(net) if addresses.contains(&net) => r.error(
                format!("spec.addresses[{i}]"),
                format!("address {a:?} is listed twice"),
            ),
            Ok(net) => addresses.push(net),
            Err(m) => r.error(format!("spec.addresses[{i}]"), m),
        }
    }
    let export_to = super::scope::export_to(&spec.export_to, &o.id.namespace, "spec.exportTo", r);
    if !spec.subject_alt_names.is_empty() {
        r.unsupported("spec.subjectAltNames", "subjectAltNames");
    }

    let ports = service_ports(&spec.ports, "spec.ports", r);
    let resolution = match spec.resolution.as_deref() {
        Some("STATIC") => Resolution::Static,
        Some("DNS") => Resolution::Dns,
        None | Some("NONE") => {
            r.error(
                "spec.resolution",
                "resolution NONE (the default) is not supported: Strait routes to endpoints it knows; set STATIC or DNS",
            );
            Resolution::Static
        }
        Some(other) => {
            r.error(
                "spec.resolution",
                format!("unsupported resolution {other:?}; expected STATIC or DNS"),
            );
            Resolution::Static
        }
    };
    let mesh_external = match spec.location.as_deref() {
        None | Some("MESH_EXTERNAL") => true,
        Some("MESH_INTERNAL") => false,
        Some(other) => {
            r.error(
                "spec.location",
                format!("unknown location {other:?}; expected MESH_EXTERNAL or MESH_INTERNAL"),
            );
            true
        }
    };

    let mut endpoints = Vec::new();
    for (i, e) in spec.endpoints.iter().enumerate() {
        if let Some(ep) = endpoint(e, &format!("spec.endpoints[{i}]"), o, r) {
            endpoints.push(ep);
        }
    }
    if let Some(selector) = &spec.workload_selector {
        if !spec.endpoints.is_empty() {
            r.error(
                "spec.workloadSelector",
                "set either endpoints or workloadSelector, not both",
            );
        }
        if selector.labels.is_empty() {
            r.error(
                "spec.workloadSelector.labels",
                "a selector needs at least one label",
            );
        }
        endpoints.extend(
            workloads
                .iter()
                .filter(|(w, e)| {
                    w.id.namespace == o.id.namespace
                        && selector
                            .labels
                            .iter()
                            .all(|(k, v)| e.labels.get(k) == Some(v))
                })
                .map(|(_, e)| e.clone()),
        );
        if endpoints.is_empty() {
            warnings.push(ValidationError {
                origin: o.origin.clone(),
                object: Some(o.id.clone()),
                path: "spec.workloadSelector".into(),
                message: format!("selects no WorkloadEntry in namespace {:?}", o.id.namespace),
            });
        }
    }
    if resolution == Resolution::Static {
        for (i, e) in endpoints.iter().enumerate() {
            if e.address.parse::<IpAddr>().is_err() {
                let path = if spec.workload_selector.is_some() {
                    format!("spec.workloadSelector ({})", e.source)
                } else {
                    format!("spec.endpoints[{i}].address")
                };
                r.error(
                    path,
                    format!("resolution STATIC needs IP addresses, got {:?}", e.address),
                );
            }
        }
    } else if endpoints.is_empty() {
        // DNS with no endpoints resolves the hosts themselves, each on the service port.
        for h in &spec.hosts {
            endpoints.push(Endpoint {
                address: h.to_ascii_lowercase(),
                ports: BTreeMap::new(),
                labels: BTreeMap::new(),
                weight: 1,
                service_account: "default".to_string(),
                source: o.id.clone(),
            });
        }
    }

    if r.count() > before {
        return None;
    }
    Some(Service {
        hostname: String::new(),
        namespace: o.id.namespace.clone(),
        addresses,
        ports,
        resolution,
        mesh_external,
        endpoints: endpoints.into(),
        source: o.id.clone(),
        export_to,
    })
}

/// A service address: an IP (a /32 or /128) or a CIDR range with no host bits set.
pub(super) fn address(a: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(ip) = a.parse::<IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    let net: ipnet::IpNet = a
        .parse()
        .map_err(|_| format!("expected an IP address or CIDR, got {a:?}"))?;
    if net.trunc() != net {
        return Err(format!(
            "CIDR {a:?} has host bits set; did you mean {:?}?",
            net.trunc().to_string()
        ));
    }
    Ok(net)
}

pub(super) fn service_ports(ports: &[Port], path: &str, r: &mut Report<'_>) -> Vec<ServicePort> {
    if ports.is_empty() {
        r.error(path, "at least one port is required");
    }
    let mut out: Vec<ServicePort> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let Some(number) = port_number(p.number, &format!("{path}.number"), r) else {
            continue;
        };
        let name = p.name.clone().unwrap_or_default();
        if name.is_empty() {
            r.error(format!("{path}.name"), "a port name is required");
        }
        let protocol = match protocol(p.protocol.as_deref(), &name) {
            Ok(p) => p,
            Err(m) => {
                r.error(format!("{path}.protocol"), m);
                continue;
            }
        };
        let target_port = match p.target_port {
            None => None,
            Some(t) => port_number(Some(t), &format!("{path}.targetPort"), r),
        };
        if out.iter().any(|q| q.number == number) {
            r.error(
                format!("{path}.number"),
                format!("port {number} is listed twice"),
            );
        }
        if !name.is_empty() && out.iter().any(|q| q.name == name) {
            r.error(
                format!("{path}.name"),
                format!("port name {name:?} is listed twice"),
            );
        }
        out.push(ServicePort {
            number,
            name,
            protocol,
            target_port,
        });
    }
    out
}

pub(super) fn port_number(n: Option<u32>, path: &str, r: &mut Report<'_>) -> Option<u16> {
    match n {
        None => {
            r.error(path, "a port number is required");
            None
        }
        Some(n) => match u16::try_from(n) {
            Ok(p) if p != 0 => Some(p),
            _ => {
                r.error(path, format!("expected a port number 1-65535, got {n}"));
                None
            }
        },
    }
}

/// Istio's protocol names (case-insensitive), else inferred from a `proto-suffix` port name.
pub(super) fn protocol(declared: Option<&str>, port_name: &str) -> Result<Protocol, String> {
    let parse = |s: &str| match s.to_ascii_uppercase().as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTP2" => Some(Protocol::Http2),
        "GRPC" => Some(Protocol::Grpc),
        "GRPC-WEB" => Some(Protocol::GrpcWeb),
        "HTTPS" => Some(Protocol::Https),
        "TLS" => Some(Protocol::Tls),
        "TCP" => Some(Protocol::Tcp),
        "MONGO" => Some(Protocol::Mongo),
        "MYSQL" => Some(Protocol::Mysql),
        "REDIS" => Some(Protocol::Redis),
        _ => None,
    };
    match declared {
        Some(p) => parse(p).ok_or_else(|| {
            format!("unsupported protocol {p:?}; expected HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TLS, TCP, MONGO, MYSQL or REDIS")
        }),
        None => {
            let prefix = port_name.split('-').next().unwrap_or_default();
            Ok(parse(prefix).unwrap_or(Protocol::Unknown))
        }
    }
}

fn endpoint(
    spec: &WorkloadEntrySpec,
    path: &str,
    o: &Object,
    r: &mut Report<'_>,
) -> Option<Endpoint> {
    let before = r.count();
    let address = spec.address.clone().unwrap_or_default();
    if address.is_empty() {
        r.error(format!("{path}.address"), "an address is required");
    } else if address.parse::<IpAddr>().is_err()
        && let Err(m) = host::check(&address)
    {
        r.error(
            format!("{path}.address"),
            format!("expected an IP address or DNS name: {m}"),
        );
    }
    let mut ports = BTreeMap::new();
    for (name, number) in &spec.ports {
        if let Some(p) = port_number(Some(*number), &format!("{path}.ports.{name}"), r) {
            ports.insert(name.clone(), p);
        }
    }
    if spec.weight == Some(0) {
        r.error(
            format!("{path}.weight"),
            "weight must be at least 1 when set",
        );
    }
    if spec.network.is_some() {
        r.unsupported(format!("{path}.network"), "multi-network endpoints");
    }
    if spec.locality.is_some() {
        r.unsupported(format!("{path}.locality"), "locality");
    }
    if r.count() > before {
        return None;
    }
    debug_assert!(o.id.kind == Kind::WorkloadEntry || o.id.kind == Kind::ServiceEntry);
    Some(Endpoint {
        address,
        ports,
        labels: spec.labels.clone(),
        weight: spec.weight.unwrap_or(1),
        service_account: spec
            .service_account
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string()),
        source: o.id.clone(),
    })
}
