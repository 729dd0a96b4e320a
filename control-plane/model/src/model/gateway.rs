//! Gateways: which proxies they select, and the ports, hosts and TLS of their servers.

use std::collections::{BTreeMap, BTreeSet};

use super::{Gateway, GatewayHost, GatewayServer, Protocol, ServerTls, Service, spec_of};
use crate::credential::Credentials;
use crate::error::{ObjectId, Report, ValidationError};
use crate::loader::{Object, Spec};
use crate::{host, loader};

/// `credentials`: what `credentialName` may name, `None` where there is no Kubernetes.
pub(super) fn build(
    objects: &[&Object],
    services: &BTreeMap<String, Service>,
    credentials: Option<&Credentials>,
    errors: &mut Vec<ValidationError>,
    warnings: &mut Vec<ValidationError>,
) -> BTreeMap<ObjectId, Gateway> {
    let mut out = BTreeMap::new();
    for o in objects {
        let spec = spec_of(o, |s| match s {
            Spec::Gateway(g) => Some(g),
            _ => None,
        });
        let mut r = Report {
            origin: &o.origin,
            object: Some(&o.id),
            errors,
        };
        let before = r.count();
        if spec.servers.is_empty() {
            r.error("spec.servers", "at least one server is required");
        }
        let mut servers: Vec<GatewayServer> = Vec::new();
        for (i, s) in spec.servers.iter().enumerate() {
            let path = format!("spec.servers[{i}]");
            if let Some(server) = server(s, &path, credentials.is_some(), &mut r) {
                for (j, other) in servers.iter().enumerate() {
                    conflicts(&server, other, &path, j, &mut r);
                }
                servers.push(server);
            }
        }
        if r.count() > before {
            continue;
        }
        let gateway = Gateway {
            id: o.id.clone(),
            selector: spec.selector.clone(),
            servers,
        };
        if let Some(credentials) = credentials {
            missing_credentials(&gateway, &o.origin, services, credentials, warnings);
        }
        out.insert(o.id.clone(), gateway);
    }
    out
}

/// Warns (as `istioctl analyze` does) of a `credentialName` that names no credential where
/// the gateway runs: the namespaces of the workloads its selector picks, when the registry
/// knows them; else anywhere. Such a server is not served until the credential appears.
fn missing_credentials(
    gateway: &Gateway,
    origin: &str,
    services: &BTreeMap<String, Service>,
    credentials: &Credentials,
    warnings: &mut Vec<ValidationError>,
) {
    let namespaces: BTreeSet<&str> = services
        .values()
        .filter(|s| s.endpoints.iter().any(|e| gateway.selects(&e.labels)))
        .map(|s| s.namespace.as_str())
        .collect();
    for (i, server) in gateway.servers.iter().enumerate() {
        let Some(ServerTls::Credential { name, mutual }) = &server.tls else {
            continue;
        };
        let named: Vec<_> = credentials
            .values()
            .filter(|c| c.id.name == *name)
            .collect();
        let found: Vec<_> = if namespaces.is_empty() {
            named
        } else {
            named
                .into_iter()
                .filter(|c| namespaces.contains(c.id.namespace.as_str()))
                .collect()
        };
        let place = if namespaces.is_empty() {
            "in any namespace".to_string()
        } else {
            format!(
                "in the gateway's namespace ({})",
                namespaces.iter().copied().collect::<Vec<_>>().join(", ")
            )
        };
        let message = if found.is_empty() {
            Some(format!(
                "credential {name:?} (a Secret) not found {place}; the server is not served until it exists"
            ))
        } else if *mutual && found.iter().all(|c| c.ca_certificates.is_none()) {
            Some(format!(
                "credential {name:?} has no CA (ca.crt or cacert) to verify clients with for mode MUTUAL; the server is not served until it has one"
            ))
        } else {
            None
        };
        if let Some(message) = message {
            warnings.push(ValidationError {
                origin: origin.to_string(),
                object: Some(gateway.id.clone()),
                path: format!("spec.servers[{i}].tls.credentialName"),
                message,
            });
        }
    }
}

fn server(
    s: &crate::istio::networking::Server,
    path: &str,
    kubernetes: bool,
    r: &mut Report<'_>,
) -> Option<GatewayServer> {
    let before = r.count();
    let Some(port) = &s.port else {
        r.error(format!("{path}.port"), "a port is required");
        return None;
    };
    let number = super::registry::port_number(port.number, &format!("{path}.port.number"), r);
    let protocol = match port.protocol.as_deref() {
        None => {
            r.error(
                format!("{path}.port.protocol"),
                "a protocol is required (HTTP, HTTPS, TCP or TLS)",
            );
            None
        }
        Some(p) => match super::registry::protocol(Some(p), "") {
            Ok(
                pr @ (Protocol::Http
                | Protocol::Http2
                | Protocol::Grpc
                | Protocol::Https
                | Protocol::Tcp
                | Protocol::Tls),
            ) => Some(pr),
            Ok(_) => {
                r.unsupported(
                    format!("{path}.port.protocol"),
                    &format!("a {p} gateway server"),
                );
                None
            }
            Err(m) => {
                r.error(format!("{path}.port.protocol"), m);
                None
            }
        },
    };
    if port.target_port.is_some() {
        r.unsupported(
            format!("{path}.port.targetPort"),
            "targetPort on a gateway server",
        );
    }
    if s.bind.is_some() {
        r.unsupported(format!("{path}.bind"), "bind");
    }
    if s.default_endpoint.is_some() {
        r.unsupported(format!("{path}.defaultEndpoint"), "defaultEndpoint");
    }
    if s.hosts.is_empty() {
        r.error(format!("{path}.hosts"), "at least one host is required");
    }
    let mut hosts = Vec::new();
    for (i, h) in s.hosts.iter().enumerate() {
        let hp = format!("{path}.hosts[{i}]");
        let (ns, name) = match h.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, h.as_str()),
        };
        let namespace = match ns {
            None | Some("*") => None,
            Some(".") => Some(r.object.map(|o| o.namespace.clone()).unwrap_or_default()),
            Some(ns) => {
                if let Err(m) = loader::check_dns_name(ns) {
                    r.error(&hp, format!("namespace part: {m}"));
                }
                Some(ns.to_string())
            }
        };
        if let Err(m) = host::check(name) {
            r.error(&hp, m);
        }
        hosts.push(GatewayHost {
            namespace,
            host: name.to_ascii_lowercase(),
        });
    }
    let passthrough = |t: &crate::istio::networking::ServerTlsSettings| {
        matches!(t.mode.as_deref(), Some("PASSTHROUGH" | "AUTO_PASSTHROUGH"))
    };
    let tls = match (&s.tls, protocol) {
        (None, Some(Protocol::Https)) => {
            r.error(
                format!("{path}.tls"),
                "an HTTPS server needs tls (mode SIMPLE with credentialName, or serverCertificate and privateKey)",
            );
            None
        }
        (None, Some(Protocol::Tls)) => {
            r.error(
                format!("{path}.tls"),
                "a TLS server needs tls (mode PASSTHROUGH)",
            );
            None
        }
        (None, _) => None,
        (Some(t), Some(Protocol::Https | Protocol::Tls)) if passthrough(t) => {
            passthrough_tls(t, &format!("{path}.tls"), r)
        }
        (Some(t), Some(Protocol::Https)) => server_tls(t, &format!("{path}.tls"), kubernetes, r),
        (Some(t), Some(Protocol::Tls)) => {
            r.unsupported(
                format!("{path}.tls.mode"),
                &format!(
                    "TLS mode {} on a TLS server (terminating TLS before tcp routes); use PASSTHROUGH, or protocol HTTPS",
                    t.mode.as_deref().unwrap_or("(none)")
                ),
            );
            None
        }
        (Some(_), Some(Protocol::Tcp)) => {
            r.error(
                format!("{path}.tls"),
                "a TCP server carries opaque bytes and takes no tls; use protocol TLS for TLS passthrough",
            );
            None
        }
        (Some(t), _) => {
            if t.mode.is_some() || t.server_certificate.is_some() || t.private_key.is_some() {
                r.error(format!("{path}.tls"), "only httpsRedirect is allowed on a plain HTTP server; use protocol HTTPS to terminate TLS");
            }
            (t.https_redirect == Some(true)).then_some(ServerTls::HttpsRedirect)
        }
    };
    if let Some(name) = &s.name
        && let Err(m) = loader::check_dns_name(name)
    {
        r.error(format!("{path}.name"), m);
    }
    if r.count() > before {
        return None;
    }
    let number = number?;
    Some(GatewayServer {
        port: number,
        port_name: port
            .name
            .clone()
            .unwrap_or_else(|| format!("port-{number}")),
        protocol: protocol?,
        hosts,
        tls,
        name: s.name.clone(),
    })
}

/// `mode: PASSTHROUGH`: nothing of the server's own TLS applies, since it terminates none.
fn passthrough_tls(
    t: &crate::istio::networking::ServerTlsSettings,
    tp: &str,
    r: &mut Report<'_>,
) -> Option<ServerTls> {
    if t.mode.as_deref() == Some("AUTO_PASSTHROUGH") {
        r.unsupported(
            format!("{tp}.mode"),
            "AUTO_PASSTHROUGH (SNI-DNAT to mesh clusters, for multi-network gateways)",
        );
        return None;
    }
    for (field, present) in [
        ("serverCertificate", t.server_certificate.is_some()),
        ("privateKey", t.private_key.is_some()),
        ("caCertificates", t.ca_certificates.is_some()),
        ("credentialName", t.credential_name.is_some()),
        ("credentialNames", !t.credential_names.is_empty()),
    ] {
        if present {
            r.error(
                format!("{tp}.{field}"),
                "mode PASSTHROUGH does not terminate TLS, so the server has no certificate of its own",
            );
        }
    }
    Some(ServerTls::Passthrough)
}

/// An HTTPS server's TLS: a credential (Kubernetes Secret) or certificate files.
fn server_tls(
    t: &crate::istio::networking::ServerTlsSettings,
    tp: &str,
    kubernetes: bool,
    r: &mut Report<'_>,
) -> Option<ServerTls> {
    for (field, present) in [
        ("caCertificates", t.ca_certificates.is_some()),
        ("caCrl", t.ca_crl.is_some()),
        ("subjectAltNames", !t.subject_alt_names.is_empty()),
        (
            "verifyCertificateSpki",
            !t.verify_certificate_spki.is_empty(),
        ),
        (
            "verifyCertificateHash",
            !t.verify_certificate_hash.is_empty(),
        ),
        ("minProtocolVersion", t.min_protocol_version.is_some()),
        ("maxProtocolVersion", t.max_protocol_version.is_some()),
        ("cipherSuites", !t.cipher_suites.is_empty()),
        ("httpsRedirect", t.https_redirect == Some(true)),
    ] {
        if present {
            r.unsupported(format!("{tp}.{field}"), field);
        }
    }
    let credential = match (&t.credential_name, t.credential_names.as_slice()) {
        (None, []) => None,
        (Some(name), []) => Some(("credentialName", name)),
        (None, [name]) => Some(("credentialNames[0]", name)),
        (None, [_, ..]) => {
            r.unsupported(
                format!("{tp}.credentialNames"),
                "more than one credential per server",
            );
            return None;
        }
        (Some(_), [_, ..]) => {
            r.error(
                format!("{tp}.credentialNames"),
                "set credentialName or credentialNames, not both",
            );
            return None;
        }
    };
    let mutual = match t.mode.as_deref() {
        Some("SIMPLE") => false,
        Some("MUTUAL") if credential.is_some() => true,
        None => {
            r.error(
                format!("{tp}.mode"),
                "a mode is required; Strait supports SIMPLE, and MUTUAL with credentialName",
            );
            false
        }
        Some(m) => {
            r.unsupported(format!("{tp}.mode"), &format!("TLS mode {m} here"));
            false
        }
    };
    if let Some((field, name)) = credential {
        if t.server_certificate.is_some() || t.private_key.is_some() {
            r.error(
                format!("{tp}.{field}"),
                "set credentialName or serverCertificate and privateKey, not both",
            );
        }
        if !kubernetes {
            r.error(
                format!("{tp}.{field}"),
                "credentialName names a Kubernetes Secret, which straitd reads only with --kubernetes; without it use serverCertificate and privateKey files",
            );
        }
        if let Err(m) = loader::check_dns_name(name) {
            r.error(format!("{tp}.{field}"), m);
        }
        return Some(ServerTls::Credential {
            name: name.clone(),
            mutual,
        });
    }
    let file = |v: &Option<String>, field: &str, r: &mut Report<'_>| match v {
        Some(f) if !f.is_empty() => f.clone(),
        _ => {
            r.error(
                format!("{tp}.{field}"),
                "a file path (or credentialName) is required for mode SIMPLE",
            );
            String::new()
        }
    };
    Some(ServerTls::Simple {
        certificate: file(&t.server_certificate, "serverCertificate", r),
        private_key: file(&t.private_key, "privateKey", r),
    })
}

fn conflicts(a: &GatewayServer, b: &GatewayServer, path: &str, other: usize, r: &mut Report<'_>) {
    if a.name.is_some() && a.name == b.name {
        r.error(
            format!("{path}.name"),
            format!("server name {:?} is also used by servers[{other}]", a.name),
        );
    }
    if a.port != b.port {
        return;
    }
    let kind = |s: &GatewayServer| {
        if s.is_sni() {
            "TLS (HTTPS or PASSTHROUGH)"
        } else if s.protocol == Protocol::Tcp {
            "TCP"
        } else {
            "plain HTTP"
        }
    };
    let a_tls = a.is_sni();
    if kind(a) != kind(b) {
        r.error(
            format!("{path}.port"),
            format!(
                "port {} mixes {} and {} servers (servers[{other}]); use separate ports",
                a.port,
                kind(a),
                kind(b)
            ),
        );
    } else if a.protocol == Protocol::Tcp {
        r.error(
            format!("{path}.port"),
            format!(
                "port {} has another TCP server (servers[{other}]): a TCP server takes every connection to its port",
                a.port
            ),
        );
    } else if a_tls {
        for h in &a.hosts {
            if b.hosts.iter().any(|o| host::intersect(&h.host, &o.host)) {
                r.error(
                    format!("{path}.hosts"),
                    format!("host {:?} on TLS port {} overlaps servers[{other}]: SNI cannot tell them apart", h.host, a.port),
                );
            }
        }
    }
}
