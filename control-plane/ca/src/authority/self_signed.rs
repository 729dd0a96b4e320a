//! Self-signed mode: a P-256 root generated on first start and kept in the data directory.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::key::CaKey;
use super::{CaError, SigningMaterial, certs, random_serial, to_offset};
use crate::files;

pub(crate) const ROOT_CERT_FILE: &str = "root-cert.pem";
pub(crate) const ROOT_KEY_FILE: &str = "root-key.pem";

const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Loads the root from `data_dir`, or makes one if there is none.
///
/// `root-cert.pem` is written last and marks a complete root: a key without it is the debris of
/// an interrupted first start (no certificate ever named that key) and is replaced.
pub(super) fn load_or_create(data_dir: &Path) -> Result<SigningMaterial, CaError> {
    files::ensure_private_dir(data_dir)?;
    let cert_path = data_dir.join(ROOT_CERT_FILE);
    let key_path = data_dir.join(ROOT_KEY_FILE);
    if files::exists(&cert_path)? {
        return load(&cert_path, &key_path);
    }
    create(&cert_path, &key_path)
}

fn load(cert_path: &Path, key_path: &Path) -> Result<SigningMaterial, CaError> {
    if !files::exists(key_path)? {
        return Err(CaError::ca_file(
            key_path,
            format!(
                "missing, but {} exists; restore the key or move both aside to make a new root (which invalidates every issued certificate)",
                cert_path.display()
            ),
        ));
    }
    let loose = files::loose_mode_bits(key_path)?;
    if loose != 0 {
        warn!(path = %key_path.display(), mode = format!("{loose:03o}"), "root key file is readable by group or others");
    }
    let cert_pem = files::read(cert_path)?;
    let bundle = certs::parse_bundle(&cert_pem, cert_path)?;
    let [root] = <[CertificateDer<'static>; 1]>::try_from(bundle)
        .map_err(|_| CaError::ca_file(cert_path, "expected exactly one certificate"))?;
    let key_pem = Zeroizing::new(files::read(key_path)?);
    let key = CaKey::from_pem(&key_pem).map_err(|e| CaError::ca_file(key_path, e.to_string()))?;

    let parsed = certs::parse(&root).map_err(|e| CaError::ca_file(cert_path, e))?;
    certs::check_ca(&parsed, SystemTime::now()).map_err(|e| CaError::ca_file(cert_path, e))?;
    if !certs::key_matches(&key, &parsed) {
        return Err(CaError::ca_file(
            key_path,
            format!("does not match the public key of {}", cert_path.display()),
        ));
    }
    let not_after = certs::not_after(&parsed);
    let pem = certs::to_pem(&root);
    info!(path = %cert_path.display(), subject = %certs::subject(&parsed), "loaded self-signed root");
    Ok(SigningMaterial {
        key,
        issuer_der: root.clone(),
        chain_pem: vec![pem.clone()],
        roots_pem: pem,
        not_after,
    })
}

fn create(cert_path: &Path, key_path: &Path) -> Result<SigningMaterial, CaError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::Crypto(format!("generating the root key: {e}")))?;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "strait");
    name.push(DnType::CommonName, "Strait Root CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = to_offset(now - Duration::from_secs(60));
    params.not_after = to_offset(now + ROOT_VALIDITY);
    params.serial_number = Some(random_serial()?.0);
    let cert = params.self_signed(&key).map_err(CaError::Signing)?;

    let key_pem = Zeroizing::new(key.serialize_pem());
    files::write_atomic(key_path, key_pem.as_bytes(), 0o600)?;
    files::write_atomic(cert_path, cert.pem().as_bytes(), 0o644)?;
    info!(path = %cert_path.display(), "generated a new self-signed root");

    let pem = certs::to_pem(cert.der());
    let parsed = certs::parse(cert.der()).map_err(|e| CaError::ca_file(cert_path, e))?;
    let not_after = certs::not_after(&parsed);
    Ok(SigningMaterial {
        key: CaKey::Pkcs8(key),
        issuer_der: cert.der().clone(),
        chain_pem: vec![pem.clone()],
        roots_pem: pem,
        not_after,
    })
}
