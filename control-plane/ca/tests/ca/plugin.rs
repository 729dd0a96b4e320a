//! Plugin mode: Istio's cacerts files (root, intermediate, its key, the chain) made here with rcgen.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use strait_ca::{CaError, CaOptions, CaSource, CertificateAuthority, Identity};

use super::support::*;

struct Pki {
    root_pem: String,
    root_key: KeyPair,
    ca_pem: String,
    ca_key_pem: String,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "example");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// A P-384 root and a P-256 intermediate it signed.
fn make_pki() -> Pki {
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("root key");
    let root = ca_params("Example Root")
        .self_signed(&root_key)
        .expect("root");
    let ca_key = KeyPair::generate().expect("intermediate key");
    let root_issuer = Issuer::new(ca_params("Example Root"), &root_key);
    let ca = ca_params("Example Intermediate")
        .signed_by(&ca_key, &root_issuer)
        .expect("intermediate");
    Pki {
        root_pem: root.pem(),
        root_key,
        ca_pem: ca.pem(),
        ca_key_pem: ca_key.serialize_pem(),
    }
}

fn write_cacerts(dir: &Path, root: &str, ca: &str, key: &str, chain: &str) -> CaSource {
    for (name, contents) in [
        ("root-cert.pem", root),
        ("ca-cert.pem", ca),
        ("ca-key.pem", key),
        ("cert-chain.pem", chain),
    ] {
        std::fs::write(dir.join(name), contents).expect("write cacerts file");
    }
    CaSource::plugin_dir(dir)
}

fn load(source: CaSource) -> Result<CertificateAuthority, CaError> {
    CertificateAuthority::load(source, CaOptions::default())
}

#[test]
fn plugin_ca_issues_leaf_intermediate_root_chains() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki();
    // Istio's Makefile layout: cert-chain.pem = ca-cert.pem + root-cert.pem.
    let chain = format!("{}{}", pki.ca_pem, pki.root_pem);
    let ca = load(write_cacerts(
        dir.path(),
        &pki.root_pem,
        &pki.ca_pem,
        &pki.ca_key_pem,
        &chain,
    ))
    .unwrap();
    assert_eq!(
        der(&ca.roots_pem()),
        der(&pki.root_pem),
        "trust bundle is root-cert.pem"
    );

    let id = Identity::new(TD, "default", "web").unwrap();
    let key = KeyPair::generate().unwrap();
    let issued = ca
        .sign_csr(
            &csr(&key, &[&id.spiffe_uri()]),
            &id,
            Some(Duration::from_secs(600)),
        )
        .unwrap();
    assert_eq!(issued.chain_pem.len(), 3, "leaf, intermediate, root");
    assert_eq!(der(&issued.chain_pem[1]), der(&pki.ca_pem));
    assert_eq!(der(&issued.chain_pem[2]), der(&pki.root_pem));
    verify_chain(&issued.chain_pem, &ca.roots_pem());
    openssl_verify(&issued.chain_pem, &ca.roots_pem(), dir.path());

    // The leaf is signed by the intermediate, not the root.
    let root_only = vec![issued.chain_pem[0].clone(), issued.chain_pem[2].clone()];
    let result = std::panic::catch_unwind(|| verify_chain(&root_only, &pki.root_pem));
    assert!(
        result.is_err(),
        "leaf must not verify without the intermediate"
    );
}

#[test]
fn chain_file_without_the_root_or_in_reverse_order_still_ends_at_the_root() {
    let pki = make_pki();
    for chain in [
        pki.ca_pem.clone(),
        format!("{}{}", pki.root_pem, pki.ca_pem),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ca = load(write_cacerts(
            dir.path(),
            &pki.root_pem,
            &pki.ca_pem,
            &pki.ca_key_pem,
            &chain,
        ))
        .unwrap();
        let issued = ca
            .issue(&Identity::new(TD, "default", "web").unwrap(), None)
            .unwrap();
        assert_eq!(issued.cert.chain_pem.len(), 3);
        verify_chain(&issued.cert.chain_pem, &ca.roots_pem());
    }
}

fn expect_error_naming(source: CaSource, file: &str, needle: &str) {
    let err = load(source).expect_err(needle).to_string();
    assert!(err.contains(file), "{err:?} does not name {file}");
    assert!(err.contains(needle), "{err:?} does not say {needle:?}");
}

#[test]
fn inconsistent_files_are_refused_naming_the_file() {
    let pki = make_pki();
    let other = make_pki();
    let chain = format!("{}{}", pki.ca_pem, pki.root_pem);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // Key of another intermediate.
    expect_error_naming(
        write_cacerts(d, &pki.root_pem, &pki.ca_pem, &other.ca_key_pem, &chain),
        "ca-key.pem",
        "does not match",
    );
    // The chain reaches a root that root-cert.pem does not hold.
    expect_error_naming(
        write_cacerts(
            d,
            &other.root_pem,
            &pki.ca_pem,
            &pki.ca_key_pem,
            &pki.ca_pem,
        ),
        "cert-chain.pem",
        "does not reach a root",
    );
    // A leaf where the CA certificate should be.
    let leaf = ca_params("not a ca");
    let mut leaf = leaf;
    leaf.is_ca = IsCa::ExplicitNoCa;
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_pem = leaf
        .signed_by(
            &leaf_key,
            &Issuer::new(ca_params("Example Root"), &pki.root_key),
        )
        .unwrap()
        .pem();
    expect_error_naming(
        write_cacerts(
            d,
            &pki.root_pem,
            &leaf_pem,
            &leaf_key.serialize_pem(),
            &chain,
        ),
        "ca-cert.pem",
        "not a CA certificate",
    );
    // Not PEM at all.
    expect_error_naming(
        write_cacerts(d, &pki.root_pem, &pki.ca_pem, "nonsense", &chain),
        "ca-key.pem",
        "no private key",
    );
    expect_error_naming(
        write_cacerts(d, "nonsense", &pki.ca_pem, &pki.ca_key_pem, &chain),
        "root-cert.pem",
        "no CERTIFICATE",
    );
    // A missing file is an IO error naming it.
    write_cacerts(d, &pki.root_pem, &pki.ca_pem, &pki.ca_key_pem, &chain);
    load(CaSource::plugin_dir(d)).expect("the good files load");
    std::fs::remove_file(d.join("cert-chain.pem")).unwrap();
    expect_error_naming(CaSource::plugin_dir(d), "cert-chain.pem", "No such file");
}

/// Istio's sample cacerts and pre-3.0 `openssl genrsa` give PKCS#1 RSA keys; they must work.
#[test]
fn pkcs1_rsa_intermediate_from_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let key_path: PathBuf = dir.path().join("rsa.pem");
    let Ok(status) = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key_path)
        .arg("3072")
        .stderr(std::process::Stdio::null())
        .status()
    else {
        eprintln!("openssl not on PATH; skipping the PKCS#1 plugin check");
        return;
    };
    assert!(status.success());
    let pub_pem = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key_path)
        .output()
        .unwrap();
    assert!(pub_pem.status.success());
    let public =
        rcgen::SubjectPublicKeyInfo::from_pem(std::str::from_utf8(&pub_pem.stdout).unwrap())
            .unwrap();

    let root_key = KeyPair::generate().unwrap();
    let root = ca_params("RSA test root").self_signed(&root_key).unwrap();
    let ca = ca_params("RSA intermediate")
        .signed_by(&public, &Issuer::new(ca_params("RSA test root"), &root_key))
        .unwrap();
    let key_pem = std::fs::read_to_string(&key_path).unwrap();
    assert!(key_pem.contains("BEGIN RSA PRIVATE KEY"));
    let chain = format!("{}{}", ca.pem(), root.pem());
    let authority = load(write_cacerts(
        dir.path(),
        &root.pem(),
        &ca.pem(),
        &key_pem,
        &chain,
    ))
    .unwrap();
    let issued = authority
        .issue(&Identity::new(TD, "default", "web").unwrap(), None)
        .unwrap();
    verify_chain(&issued.cert.chain_pem, &authority.roots_pem());
    openssl_verify(&issued.cert.chain_pem, &authority.roots_pem(), dir.path());
}
