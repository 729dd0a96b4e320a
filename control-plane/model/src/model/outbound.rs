//! Captured outbound traffic, port by port: which services a sidecar tells apart, and how.
//!
//! A captured connection carries only its original destination (address and port), then what
//! the app sends. As in Istio: HTTP is routed by its Host header, app-originated TLS by its SNI
//! when the service has no address, anything else by the destination address. The plan is
//! computed once here so that translation and the validator's warnings agree.

use std::collections::BTreeMap;

use super::{CapturedProtocol, Service, ServicePort};
use crate::error::ValidationError;

/// One service port, as captured traffic reaches it.
#[derive(Clone, Copy, Debug)]
pub struct Claim<'m> {
    pub service: &'m Service,
    pub port: &'m ServicePort,
}

/// How captured connections to one destination port are told apart.
#[derive(Clone, Debug, Default)]
pub struct PortPlan<'m> {
    /// Services that take connections to one of their addresses, whatever they carry (TCP
    /// and TLS ports with addresses).
    pub by_address: Vec<Claim<'m>>,
    /// HTTP services on this port, routed by Host (their names and addresses).
    pub http: Vec<Claim<'m>>,
    /// TLS services without addresses, told apart by the SNI the app sends.
    pub by_sni: Vec<Claim<'m>>,
    /// The one TCP service without addresses, which takes every other connection to this
    /// port (when no HTTP service is on it).
    pub default_tcp: Option<Claim<'m>>,
}

impl PortPlan<'_> {
    /// Whether the port is routed as HTTP for destinations no address claims.
    pub fn is_http(&self) -> bool {
        !self.http.is_empty()
    }
}

/// The plan for every port some service uses, and the services it cannot reach (warnings).
pub fn plan(
    services: &BTreeMap<String, Service>,
) -> (BTreeMap<u16, PortPlan<'_>>, Vec<ValidationError>) {
    let mut plans: BTreeMap<u16, PortPlan<'_>> = BTreeMap::new();
    let mut addressless_tcp: BTreeMap<u16, Vec<Claim<'_>>> = BTreeMap::new();
    for service in services.values() {
        for port in &service.ports {
            let claim = Claim { service, port };
            let plan = plans.entry(port.number).or_default();
            match port.protocol.captured() {
                CapturedProtocol::Http => plan.http.push(claim),
                _ if !service.addresses.is_empty() => plan.by_address.push(claim),
                CapturedProtocol::Tls => plan.by_sni.push(claim),
                CapturedProtocol::Tcp => {
                    addressless_tcp.entry(port.number).or_default().push(claim)
                }
            }
        }
    }
    let mut warnings = Vec::new();
    let mut warn = |claim: &Claim<'_>, message: String| {
        warnings.push(ValidationError {
            origin: String::new(),
            object: Some(claim.service.source.clone()),
            path: "spec.addresses".into(),
            message: format!(
                "host {:?} port {} ({}): {message}",
                claim.service.hostname, claim.port.number, claim.port.name
            ),
        });
    };
    for (number, claims) in addressless_tcp {
        let plan = plans.entry(number).or_default();
        if let Some(http) = plan.http.first() {
            for c in &claims {
                warn(
                    c,
                    format!(
                        "captured traffic cannot reach it: port {number} is HTTP for {:?}, so connections to addresses no service claims are read as HTTP; give the ServiceEntry addresses",
                        http.service.hostname
                    ),
                );
            }
        } else if let [only] = claims.as_slice() {
            plan.default_tcp = Some(*only);
        } else {
            let hosts: Vec<&str> = claims.iter().map(|c| c.service.hostname.as_str()).collect();
            for c in &claims {
                warn(
                    c,
                    format!(
                        "captured traffic cannot reach it: TCP services {hosts:?} share port {number} without addresses, so a connection cannot tell them apart; give the ServiceEntries addresses"
                    ),
                );
            }
        }
    }
    (plans, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Model, loader};

    fn model(yaml: &str) -> Model {
        Model::build(&loader::parse(yaml, "test.yaml").expect("parse")).expect("valid")
    }

    fn entry(name: &str, port: &str, addresses: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{name}.example.com]\n  addresses: [{addresses}]\n  ports: [{port}]\n  resolution: DNS\n---\n"
        )
    }

    #[test]
    fn http_by_host_tcp_by_address_tls_by_sni_and_a_lone_tcp_service_takes_the_port() {
        let m = model(
            &[
                entry("web", "{number: 80, name: http}", "10.96.0.1"),
                entry("db", "{number: 3306, name: tcp-mysql}", "10.96.0.2"),
                entry("api", "{number: 443, name: tls}", ""),
                entry("cache", "{number: 6379, name: redis}", ""),
            ]
            .concat(),
        );
        let (plans, warnings) = plan(&m.services);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(plans[&80].http[0].service.hostname, "web.example.com");
        assert_eq!(
            plans[&3306].by_address[0].service.hostname,
            "db.example.com"
        );
        assert_eq!(plans[&443].by_sni[0].service.hostname, "api.example.com");
        assert_eq!(
            plans[&6379]
                .default_tcp
                .map(|c| c.service.hostname.as_str()),
            Some("cache.example.com")
        );
        assert!(plans[&80].is_http() && !plans[&3306].is_http());
    }

    #[test]
    fn addressless_tcp_services_that_cannot_be_told_apart_are_warned_about_not_picked() {
        let m = model(
            &[
                entry("a", "{number: 9000, name: tcp}", ""),
                entry("b", "{number: 9000, name: tcp}", ""),
                entry("web", "{number: 8080, name: http}", ""),
                entry("raw", "{number: 8080, name: tcp-raw}", ""),
            ]
            .concat(),
        );
        let (plans, warnings) = plan(&m.services);
        assert!(plans[&9000].default_tcp.is_none());
        assert!(plans[&8080].default_tcp.is_none());
        let text: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(
            text[0].contains("port 8080 is HTTP for \"web.example.com\""),
            "{}",
            text[0]
        );
        assert!(text[1].contains("share port 9000"), "{}", text[1]);
    }
}
