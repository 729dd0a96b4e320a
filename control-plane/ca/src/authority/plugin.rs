//! Plugin mode: Istio's `cacerts` files (an intermediate signing key, its chain, the roots).

use std::path::Path;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::key::CaKey;
use super::{CaError, SigningMaterial, certs};
use crate::files;

/// Longer chains than this are a misconfiguration, not a PKI.
const MAX_CHAIN: usize = 8;

/// The four files, as `CaSource::Plugin` names them.
pub(super) struct PluginFiles<'a> {
    pub(super) root_cert: &'a Path,
    pub(super) cert: &'a Path,
    pub(super) key: &'a Path,
    pub(super) chain: &'a Path,
}

/// Loads and cross-checks the files: the key is ca-cert's, ca-cert is a CA, and a path of
/// valid CA certificates from cert-chain.pem leads from ca-cert to a root in root-cert.pem.
pub(super) fn load(files: PluginFiles<'_>) -> Result<SigningMaterial, CaError> {
    let now = SystemTime::now();
    let roots = certs::parse_bundle(&files::read(files.root_cert)?, files.root_cert)?;
    for der in &roots {
        let root = certs::parse(der).map_err(|e| CaError::ca_file(files.root_cert, e))?;
        certs::check_ca(&root, now).map_err(|e| CaError::ca_file(files.root_cert, e))?;
    }

    let ca_bundle = certs::parse_bundle(&files::read(files.cert)?, files.cert)?;
    let ca_der = ca_bundle[0].clone();
    if ca_bundle.len() > 1 {
        warn!(path = %files.cert.display(), count = ca_bundle.len(), "using the first certificate; the rest belong in cert-chain.pem");
    }
    let ca = certs::parse(&ca_der).map_err(|e| CaError::ca_file(files.cert, e))?;
    certs::check_ca(&ca, now).map_err(|e| CaError::ca_file(files.cert, e))?;

    let key_pem = Zeroizing::new(files::read(files.key)?);
    let key = CaKey::from_pem(&key_pem).map_err(|e| CaError::ca_file(files.key, e.to_string()))?;
    if !certs::key_matches(&key, &ca) {
        return Err(CaError::ca_file(
            files.key,
            format!(
                "does not match the public key of {} ({})",
                files.cert.display(),
                certs::subject(&ca)
            ),
        ));
    }

    let chain = certs::parse_bundle(&files::read(files.chain)?, files.chain)?;
    let path = path_to_root(&ca_der, &chain, &roots, now, &files)?;
    let unused = chain.iter().filter(|c| !path.contains(c)).count();
    if unused > 0 {
        warn!(path = %files.chain.display(), unused, "certificates not on the path from ca-cert to the root are ignored");
    }

    let not_after = certs::not_after(&ca);
    let mut roots_pem = String::new();
    for root in &roots {
        roots_pem.push_str(&certs::to_pem(root));
    }
    info!(
        cert = %files.cert.display(),
        subject = %certs::subject(&ca),
        chain_len = path.len(),
        roots = roots.len(),
        "loaded plugin CA"
    );
    Ok(SigningMaterial {
        key,
        issuer_der: ca_der,
        chain_pem: path.iter().map(|c| certs::to_pem(c)).collect(),
        roots_pem,
        not_after,
    })
}

/// ca-cert, its issuers from cert-chain.pem, then the root: the certificates a leaf's chain
/// carries after the leaf. Tolerates cert-chain.pem with or without ca-cert and the root in it,
/// in any order, since Istio's tooling and hand-made bundles differ.
fn path_to_root(
    ca: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
    now: SystemTime,
    files: &PluginFiles<'_>,
) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let mut path = vec![ca.clone()];
    while path.len() <= MAX_CHAIN {
        let last = path.last().expect("path starts non-empty");
        if roots.contains(last) {
            return Ok(path);
        }
        let current = certs::parse(last).map_err(|e| CaError::ca_file(files.chain, e))?;
        if let Some(root) = roots
            .iter()
            .find(|r| certs::parse(r).is_ok_and(|r| certs::issued_by(&current, &r)))
        {
            path.push(root.clone());
            return Ok(path);
        }
        let mut next = None;
        for candidate in chain.iter().filter(|c| !path.contains(c)) {
            let parsed = certs::parse(candidate).map_err(|e| CaError::ca_file(files.chain, e))?;
            if certs::issued_by(&current, &parsed) {
                certs::check_ca(&parsed, now).map_err(|e| CaError::ca_file(files.chain, e))?;
                next = Some(candidate.clone());
                break;
            }
        }
        match next {
            Some(issuer) => path.push(issuer),
            None => {
                return Err(CaError::ca_file(
                    files.chain,
                    format!(
                        "no certificate here or in {} issued {} (issuer {}); the chain from {} does not reach a root",
                        files.root_cert.display(),
                        certs::subject(&current),
                        current.issuer(),
                        files.cert.display(),
                    ),
                ));
            }
        }
    }
    Err(CaError::ca_file(
        files.chain,
        format!("no root within {MAX_CHAIN} certificates"),
    ))
}
