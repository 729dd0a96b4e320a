//! Gateways: which proxies they select, and the ports, hosts and TLS of their servers.

use std::collections::BTreeMap;

use super::{Gateway, GatewayHost, GatewayServer, Protocol, ServerTls, spec_of};
use crate::error::{ObjectId, Report, ValidationError};
use crate::loader::{Object, Spec};
use crate::{host, loader};

pub(super) fn build(
    objects: &[&Object],
    errors: &mut Vec<ValidationError>,
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
            if let Some(server) = server(s, &path, &mut r) {
                for (j, other) in servers.iter().enumerate() {
                    conflicts(&server, other, &path, j, &mut r);
                }
                servers.push(server);
            }
        }
        if r.count() > before {
            continue;
        }
        out.insert(
            o.id.clone(),
            Gateway {
                id: o.id.clone(),
                selector: spec.selector.clone(),
                servers,
            },
        );
    }
    out
}

fn server(
    s: &crate::istio::networking::Server,
    path: &str,
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
                "a protocol is required (HTTP or HTTPS)",
            );
            None
        }
        Some(p) => match super::registry::protocol(Some(p), "") {
            Ok(pr @ (Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::Https)) => {
                Some(pr)
            }
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
    let tls = match (&s.tls, protocol) {
        (None, Some(Protocol::Https)) => {
            r.error(
                format!("{path}.tls"),
                "an HTTPS server needs tls (mode SIMPLE with serverCertificate and privateKey)",
            );
            None
        }
        (None, _) => None,
        (Some(t), Some(Protocol::Https)) => {
            let tp = format!("{path}.tls");
            if t.credential_name.is_some() || !t.credential_names.is_empty() {
                r.unsupported(format!("{tp}.credentialName"), "credentialName (Kubernetes secrets); use serverCertificate and privateKey files");
            }
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
            match t.mode.as_deref() {
                Some("SIMPLE") => {}
                None => r.error(
                    format!("{tp}.mode"),
                    "a mode is required; Strait supports SIMPLE",
                ),
                Some(m) => r.unsupported(format!("{tp}.mode"), &format!("TLS mode {m}")),
            }
            let file = |v: &Option<String>, field: &str, r: &mut Report<'_>| match v {
                Some(f) if !f.is_empty() => f.clone(),
                _ => {
                    r.error(
                        format!("{tp}.{field}"),
                        "a file path is required for mode SIMPLE",
                    );
                    String::new()
                }
            };
            Some(ServerTls::Simple {
                certificate: file(&t.server_certificate, "serverCertificate", r),
                private_key: file(&t.private_key, "privateKey", r),
            })
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
    let a_tls = a.protocol == Protocol::Https;
    let b_tls = b.protocol == Protocol::Https;
    if a_tls != b_tls {
        r.error(
            format!("{path}.port"),
            format!(
                "port {} mixes plain and HTTPS servers (servers[{other}]); use separate ports",
                a.port
            ),
        );
    } else if a_tls {
        for h in &a.hosts {
            if b.hosts.iter().any(|o| host::intersect(&h.host, &o.host)) {
                r.error(
                    format!("{path}.hosts"),
                    format!("host {:?} on HTTPS port {} overlaps servers[{other}]: SNI cannot tell them apart", h.host, a.port),
                );
            }
        }
    }
}
