//! Who is calling: a bootstrap token in `authorization: Bearer ...`, else the SPIFFE identity of
//! the client certificate presented on the TLS connection. Shared by the certificate API and
//! straitd's TLS xDS port.

use std::time::SystemTime;

use tonic::Status;
use tonic::metadata::MetadataMap;
use x509_parser::prelude::{FromDer, GeneralName};

use crate::identity::Identity;
use crate::tokens::TokenIssuer;

/// How a caller proved its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Token,
    ClientCert,
}

/// Authenticates a caller. A presented token is decisive: a bad one is refused even if a
/// certificate would pass. `peer_certificates` is the verified chain, leaf first (DER).
pub fn authenticate(
    tokens: &TokenIssuer,
    trust_domain: &str,
    metadata: &MetadataMap,
    peer_certificates: Option<&[Vec<u8>]>,
) -> Result<(Identity, AuthMethod), Status> {
    if let Some(value) = metadata.get("authorization") {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                Status::unauthenticated("authorization metadata is not `Bearer <token>`")
            })?;
        let claims = tokens
            .verify(token.trim(), SystemTime::now())
            .map_err(|e| Status::unauthenticated(format!("bootstrap token refused: {e}")))?;
        return Ok((claims.identity(trust_domain), AuthMethod::Token));
    }
    let certs = peer_certificates.ok_or_else(|| {
        Status::unauthenticated("no credentials: send a bootstrap token or a client certificate")
    })?;
    let leaf = certs.first().ok_or_else(|| {
        Status::unauthenticated("no credentials: the client certificate chain is empty")
    })?;
    let identity = identity_from_cert(leaf).map_err(Status::unauthenticated)?;
    Ok((identity, AuthMethod::ClientCert))
}

/// The one SPIFFE identity named by a client certificate's URI SANs.
pub fn identity_from_cert(der: &[u8]) -> Result<Identity, String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| format!("client certificate does not parse: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("client certificate subjectAltName does not parse: {e}"))?
        .ok_or("client certificate has no subjectAltName")?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
        _ => None,
    });
    let uri = uris
        .next()
        .ok_or("client certificate has no SPIFFE URI SAN")?;
    if uris.next().is_some() {
        return Err("client certificate has more than one SPIFFE URI SAN".to_owned());
    }
    Identity::parse_spiffe(uri).map_err(|e| format!("client certificate identity refused: {e}"))
}
