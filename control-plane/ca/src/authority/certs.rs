//! Checks on the CA's own certificates: PEM bundles, CA constraints, validity, key and chain links.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::CaError;
use super::key::CaKey;

/// Parses every CERTIFICATE block in `pem`; at least one is required.
pub(super) fn parse_bundle(
    pem: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::ca_file(path, format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(CaError::ca_file(path, "no CERTIFICATE PEM block found"));
    }
    for (i, der) in certs.iter().enumerate() {
        parse(der).map_err(|e| CaError::ca_file(path, format!("certificate #{}: {e}", i + 1)))?;
    }
    Ok(certs)
}

/// Parses one DER certificate, refusing trailing bytes.
pub(super) fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, String> {
    match X509Certificate::from_der(der) {
        Ok((rest, _)) if !rest.is_empty() => Err("trailing bytes after the certificate".to_owned()),
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(format!("not an X.509 certificate: {e}")),
    }
}

/// LF-terminated PEM, as Envoy and istio-agent expect.
pub(crate) fn to_pem(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), config)
}

/// The subject, for messages.
pub(super) fn subject(cert: &X509Certificate<'_>) -> String {
    let s = cert.subject().to_string();
    if s.is_empty() {
        "(empty subject)".to_owned()
    } else {
        s
    }
}

/// The certificate's notAfter as a `SystemTime`.
pub(super) fn not_after(cert: &X509Certificate<'_>) -> SystemTime {
    let secs = cert.validity().not_after.timestamp();
    // Pre-1970 notAfter is simply expired.
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// Refuses a certificate that is not a CA allowed to sign certificates, or is outside its validity.
pub(super) fn check_ca(cert: &X509Certificate<'_>, now: SystemTime) -> Result<(), String> {
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    if !is_ca {
        return Err(format!(
            "{} is not a CA certificate (basicConstraints CA:TRUE missing)",
            subject(cert)
        ));
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            return Err(format!(
                "{} has keyUsage without keyCertSign",
                subject(cert)
            ));
        }
        Err(e) => return Err(format!("{}: keyUsage does not parse: {e}", subject(cert))),
        _ => {}
    }
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let now_secs = i64::try_from(now_secs).unwrap_or(i64::MAX);
    let validity = cert.validity();
    if validity.not_after.timestamp() <= now_secs {
        return Err(format!(
            "{} expired at {}",
            subject(cert),
            validity.not_after
        ));
    }
    // Tolerate the same skew we grant workloads, for a CA minted seconds ago elsewhere.
    if validity.not_before.timestamp() > now_secs + 60 {
        return Err(format!(
            "{} is not valid until {}",
            subject(cert),
            validity.not_before
        ));
    }
    Ok(())
}

/// Whether `key` is the private half of `cert`'s public key.
pub(super) fn key_matches(key: &CaKey, cert: &X509Certificate<'_>) -> bool {
    rcgen::PublicKeyData::der_bytes(key) == cert.public_key().subject_public_key.data.as_ref()
}

/// Whether `issuer` issued `cert`: names chain and `issuer`'s key verifies the signature.
pub(super) fn issued_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}
