//! Unit tests for the authority: root persistence, leaf contents, TTLs and refusals.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use rcgen::{CertificateParams, KeyPair};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::pem::parse_x509_pem;

use super::*;

fn self_signed(dir: &Path) -> CertificateAuthority {
    CertificateAuthority::load(
        CaSource::SelfSigned {
            data_dir: dir.to_owned(),
        },
        CaOptions::default(),
    )
    .unwrap()
}

fn workload() -> Identity {
    Identity::new("cluster.local", "default", "web").unwrap()
}

fn csr_for(key: &KeyPair, uri: &str) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// Parses PEM and hands the certificate to `f` (x509-parser borrows from the DER).
fn with_cert<R>(pem: &str, f: impl FnOnce(&X509Certificate<'_>) -> R) -> R {
    let (_, pem) = parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    f(&cert)
}

fn uris(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::URI(u) => format!("URI:{u}"),
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn self_signed_root_is_created_private_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let first = self_signed(&dir);
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let key_mode = fs::metadata(dir.join("root-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(!first.roots_pem().contains("PRIVATE"));

    let second = self_signed(&dir);
    assert_eq!(first.roots_pem(), second.roots_pem());

    with_cert(&first.roots_pem(), |root| {
        assert!(root.is_ca());
        assert_eq!(root.subject().to_string(), "O=strait, CN=Strait Root CA");
        let years = (root.validity().not_after.timestamp()
            - root.validity().not_before.timestamp())
            / (365 * 24 * 3600);
        assert_eq!(years, 10);
        assert!(root.key_usage().unwrap().unwrap().value.key_cert_sign());
    });

    // A certificate from the first instance verifies under the second's root.
    let issued = first.issue(&workload(), None).unwrap();
    with_cert(&issued.cert.chain_pem[0], |leaf| {
        with_cert(&second.roots_pem(), |root| {
            leaf.verify_signature(Some(root.public_key())).unwrap();
        });
    });
}

#[test]
fn missing_root_key_is_an_error_naming_it_and_a_stray_key_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = self_signed(tmp.path());
    drop(ca);
    fs::remove_file(tmp.path().join("root-key.pem")).unwrap();
    let err = CertificateAuthority::load(
        CaSource::SelfSigned {
            data_dir: tmp.path().to_owned(),
        },
        CaOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("root-key.pem"), "{err}");

    // Key without certificate: an interrupted first start; a fresh root is made.
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("root-key.pem"), "stale").unwrap();
    let ca = self_signed(tmp.path());
    assert!(ca.roots_pem().contains("BEGIN CERTIFICATE"));
    assert!(
        fs::read_to_string(tmp.path().join("root-key.pem"))
            .unwrap()
            .contains("PRIVATE KEY")
    );
}

#[test]
fn mismatched_root_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    self_signed(tmp.path());
    fs::write(
        tmp.path().join("root-key.pem"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let err = CertificateAuthority::load(
        CaSource::SelfSigned {
            data_dir: tmp.path().to_owned(),
        },
        CaOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn signed_leaf_has_istio_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = self_signed(tmp.path());
    let key = KeyPair::generate().unwrap();
    let before = SystemTime::now();
    let issued = ca
        .sign_csr(
            &csr_for(&key, &workload().spiffe_uri()),
            &workload(),
            Some(Duration::from_secs(3600)),
        )
        .unwrap();
    assert_eq!(issued.chain_pem.len(), 2);
    assert_eq!(issued.chain_pem[1], ca.roots_pem());

    with_cert(&issued.chain_pem[0], |leaf| {
        assert_eq!(leaf.version().0, 2, "X.509 v3");
        assert!(
            leaf.subject().as_raw().len() <= 2,
            "empty subject: {}",
            leaf.subject()
        );
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical, "SAN must be critical with an empty subject");
        assert_eq!(uris(leaf), vec![format!("URI:{}", workload().spiffe_uri())]);
        assert!(!leaf.is_ca());
        let ku = leaf.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert_eq!(
            leaf.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        assert_eq!(leaf.tbs_certificate.serial.to_str_radix(16), issued.serial);
        assert!(leaf.tbs_certificate.raw_serial().len() <= 17);

        let not_before = leaf.validity().not_before.timestamp();
        let not_after = leaf.validity().not_after.timestamp();
        let before = i64::try_from(unix_secs(before)).unwrap();
        assert!(
            (before - 62..=before - 58).contains(&not_before),
            "{not_before} vs {before}"
        );
        assert!(
            (before + 3600..=before + 3602).contains(&not_after),
            "{not_after} vs {before}"
        );
        assert_eq!(
            u64::try_from(not_after).unwrap(),
            unix_secs(issued.not_after)
        );
        // Verified by the root's key.
        with_cert(&ca.roots_pem(), |root| {
            leaf.verify_signature(Some(root.public_key())).unwrap()
        });
        // rcgen names the issuer by the root's subject and links the key identifiers.
        assert!(leaf.extensions().iter().any(|e| matches!(
            e.parsed_extension(),
            ParsedExtension::AuthorityKeyIdentifier(_)
        )));
    });

    // Serials are random.
    let again = ca
        .sign_csr(&csr_for(&key, &workload().spiffe_uri()), &workload(), None)
        .unwrap();
    assert_ne!(again.serial, issued.serial);
}

#[test]
fn ttl_defaults_and_clamps() {
    let tmp = tempfile::tempdir().unwrap();
    let options = CaOptions {
        workload_ttl: Duration::from_secs(600),
        max_workload_ttl: Duration::from_secs(3600),
        ..CaOptions::default()
    };
    let ca = CertificateAuthority::load(
        CaSource::SelfSigned {
            data_dir: tmp.path().to_owned(),
        },
        options,
    )
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let csr = csr_for(&key, &workload().spiffe_uri());
    let lifetime = |requested| {
        let now = unix_secs(SystemTime::now());
        let issued = ca.sign_csr(&csr, &workload(), requested).unwrap();
        unix_secs(issued.not_after) - now
    };
    assert!((600..=601).contains(&lifetime(None)));
    assert!((600..=601).contains(&lifetime(Some(Duration::ZERO))));
    assert!((3600..=3601).contains(&lifetime(Some(Duration::from_secs(86_400)))));
    assert!((1..=2).contains(&lifetime(Some(Duration::from_millis(1)))));
    assert!((5..=6).contains(&lifetime(Some(Duration::from_secs(5)))));
    assert!((3600..=3601).contains(&lifetime(Some(Duration::MAX))));
}

#[test]
fn short_lived_certificate_really_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = self_signed(tmp.path());
    let issued = ca.issue(&workload(), Some(Duration::from_secs(1))).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    assert!(SystemTime::now() > issued.cert.not_after);
    with_cert(&issued.cert.chain_pem[0], |leaf| {
        assert!(!leaf.validity().is_valid())
    });
}

#[test]
fn refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = self_signed(tmp.path());
    let key = KeyPair::generate().unwrap();
    let other = Identity::new("cluster.local", "default", "db").unwrap();

    let err = ca
        .sign_csr(&csr_for(&key, &other.spiffe_uri()), &workload(), None)
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CaError::Csr(CsrError::SanMismatch { .. })));
    assert!(
        msg.contains(&other.spiffe_uri()) && msg.contains(&workload().spiffe_uri()),
        "{msg}"
    );

    let foreign = Identity::new("evil.example", "default", "web").unwrap();
    let err = ca
        .sign_csr(&csr_for(&key, &foreign.spiffe_uri()), &foreign, None)
        .unwrap_err();
    assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err}");
    assert!(matches!(
        ca.issue(&foreign, None),
        Err(CaError::ForeignTrustDomain { .. })
    ));

    let bad = Identity {
        namespace: "a/b".into(),
        ..workload()
    };
    assert!(matches!(ca.issue(&bad, None), Err(CaError::Identity(_))));

    assert!(matches!(
        ca.sign_csr("garbage", &workload(), None),
        Err(CaError::Csr(CsrError::NoPemBlock))
    ));
}

#[test]
fn issue_returns_a_matching_key_that_debug_hides() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = self_signed(tmp.path());
    let issued = ca.issue(&workload(), None).unwrap();
    let key = KeyPair::from_pem(&issued.key_pem).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    with_cert(&issued.cert.chain_pem[0], |leaf| {
        assert_eq!(
            leaf.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        assert_eq!(uris(leaf), vec![format!("URI:{}", workload().spiffe_uri())]);
    });
    let debug = format!("{issued:?}");
    assert!(
        debug.contains("<redacted>") && !debug.contains("PRIVATE KEY"),
        "{debug}"
    );
}

#[test]
fn server_certificate_names() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = self_signed(tmp.path());
    let names = vec![
        "straitd.strait-system.svc".to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    let issued = ca.issue_server(&names, Duration::from_secs(3600)).unwrap();
    with_cert(&issued.cert.chain_pem[0], |leaf| {
        assert_eq!(
            uris(leaf),
            vec![
                "DNS:straitd.strait-system.svc".to_owned(),
                "DNS:localhost".to_owned(),
                "IP:[127, 0, 0, 1]".to_owned(),
                "URI:spiffe://cluster.local/ns/strait-system/sa/straitd".to_owned(),
            ]
        );
    });
    for bad in ["", "a b", "-x..y", "ünïcode.example"] {
        let err = ca
            .issue_server(&[bad.to_owned()], Duration::from_secs(60))
            .unwrap_err();
        assert!(matches!(err, CaError::ServerName { .. }), "{bad:?}: {err}");
    }
}

#[test]
fn options_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let load = |options| {
        CertificateAuthority::load(
            CaSource::SelfSigned {
                data_dir: tmp.path().to_owned(),
            },
            options,
        )
    };
    for options in [
        CaOptions {
            trust_domain: "Not Valid".into(),
            ..CaOptions::default()
        },
        CaOptions {
            workload_ttl: Duration::ZERO,
            ..CaOptions::default()
        },
        CaOptions {
            workload_ttl: Duration::from_secs(100),
            max_workload_ttl: Duration::from_secs(10),
            ..CaOptions::default()
        },
    ] {
        assert!(matches!(load(options), Err(CaError::Options(_))));
    }
}

#[test]
fn serial_hex_has_no_leading_zeros() {
    let rng = SystemRandom::new();
    for _ in 0..200 {
        let (serial, hex) = random_serial_with(&rng).unwrap();
        assert_eq!(serial.len(), 16);
        assert!(!hex.starts_with('0') || hex == "0");
    }
}
