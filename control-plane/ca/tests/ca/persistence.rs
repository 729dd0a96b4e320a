//! A restarted CA keeps its root and token key, so earlier certificates and tokens stay valid.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use strait_ca::{CaOptions, CaSource, CertificateAuthority, Identity, TokenIssuer};

use super::support::*;

#[test]
fn restart_keeps_root_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("state");
    let load = || {
        CertificateAuthority::load(
            CaSource::SelfSigned {
                data_dir: data.clone(),
            },
            CaOptions::default(),
        )
        .unwrap()
    };
    let first = load();
    let id = Identity::new(TD, "default", "web").unwrap();
    let issued = first.issue(&id, Some(Duration::from_secs(300))).unwrap();
    let token = TokenIssuer::load_or_create(&data)
        .unwrap()
        .create("default", "web", Duration::from_secs(60))
        .unwrap();
    drop(first);

    let second = load();
    assert_eq!(
        second.roots_pem(),
        std::fs::read_to_string(data.join("root-cert.pem")).unwrap()
    );
    verify_chain(&issued.cert.chain_pem, &second.roots_pem());
    let claims = TokenIssuer::load_or_create(&data)
        .unwrap()
        .verify(&token, SystemTime::now())
        .unwrap();
    assert_eq!(claims.service_account, "web");

    for (file, mode) in [("root-key.pem", 0o600), ("token-hmac.key", 0o600)] {
        let actual = std::fs::metadata(data.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(actual, mode, "{file}");
    }
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
}
