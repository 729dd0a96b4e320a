//! Gateway credentials (`credentialName`): the SDS secrets Istio names `kubernetes://NAME`
//! (and `kubernetes://NAME-cacert` for MUTUAL), looked up in the gateway's namespace, and the
//! TLS context of a server that uses one.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, Secret, TlsCertificate,
    common_tls_context, secret,
};
use strait_model::{GatewayServer, Model, ProxyNode, ServerTls};

use crate::proto::{any, boolv};
use crate::security::{sds, tls_socket};

/// How Istio names the SDS secret of a gateway's `credentialName`, and of its CA (MUTUAL).
pub const CREDENTIAL_PREFIX: &str = "kubernetes://";
pub const CREDENTIAL_CA_SUFFIX: &str = "-cacert";

/// The SDS name of a credential's certificate and key, as Istio names it.
pub fn credential_secret_name(name: &str) -> String {
    format!("{CREDENTIAL_PREFIX}{name}")
}

/// The SDS name of a credential's CA (MUTUAL), as Istio names it.
pub fn credential_ca_secret_name(name: &str) -> String {
    format!("{CREDENTIAL_PREFIX}{name}{CREDENTIAL_CA_SUFFIX}")
}

/// The credential a gateway server names, looked up in the gateway's namespace (Istio's rule).
fn credential_for<'m>(
    model: &'m Model,
    node: &ProxyNode,
    name: &str,
) -> Option<&'m strait_model::Credential> {
    model
        .credentials
        .get(&strait_model::CredentialId::new(
            node.namespace.as_str(),
            name,
        ))
        .map(|c| &**c)
}

/// Whether a gateway can serve a server: always, but for a credential it does not hold (or,
/// for MUTUAL, one without a CA).
pub(crate) fn credential_usable(model: &Model, node: &ProxyNode, server: &GatewayServer) -> bool {
    match &server.tls {
        Some(ServerTls::Credential { name, mutual }) => credential_for(model, node, name)
            .is_some_and(|c| !*mutual || c.ca_certificates.is_some()),
        _ => true,
    }
}

/// A gateway server's TLS with its credential over SDS (and client certificates checked
/// against its CA for MUTUAL).
pub(crate) fn credential_socket(name: &str, mutual: bool) -> TransportSocket {
    let validation_context_type = mutual.then(|| {
        common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
            &credential_ca_secret_name(name),
        ))
    });
    tls_socket(any(&DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(&credential_secret_name(name))],
            validation_context_type,
            alpn_protocols: vec!["h2".to_string(), "http/1.1".to_string()],
            ..Default::default()
        }),
        require_client_certificate: mutual.then(|| boolv(true)),
        ..Default::default()
    }))
}

/// The SDS secrets of the credentials a gateway's servers use: certificate and key (a private
/// secret: only a stream authenticated as the gateway gets it), and the CA for MUTUAL.
pub(crate) fn gateway_secrets(model: &Model, node: &ProxyNode) -> Vec<Secret> {
    let inline = |text: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.to_string())),
        ..Default::default()
    };
    let mut wanted: BTreeMap<&str, bool> = BTreeMap::new();
    for gw in model.gateways.values().filter(|g| g.selects(&node.labels)) {
        for server in gw
            .servers
            .iter()
            .filter(|s| credential_usable(model, node, s))
        {
            if let Some(ServerTls::Credential { name, mutual }) = &server.tls {
                *wanted.entry(name).or_default() |= *mutual;
            }
        }
    }
    let mut out = Vec::new();
    for (name, mutual) in wanted {
        let Some(credential) = credential_for(model, node, name) else {
            continue;
        };
        out.push(Secret {
            name: credential_secret_name(name),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(&credential.certificate_chain)),
                private_key: Some(inline(credential.private_key.expose())),
                ..Default::default()
            })),
        });
        if let (true, Some(ca)) = (mutual, &credential.ca_certificates) {
            out.push(Secret {
                name: credential_ca_secret_name(name),
                r#type: Some(secret::Type::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(inline(ca)),
                        ..Default::default()
                    },
                )),
            });
        }
    }
    out
}
