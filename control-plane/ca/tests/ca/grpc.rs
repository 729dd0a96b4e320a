//! The service over plaintext gRPC with bootstrap tokens: issuance and every refusal code.

use std::time::Duration;

use rcgen::KeyPair;
use tonic::Code;

use super::support::*;

#[tokio::test]
async fn token_happy_path_issues_a_verifiable_spiffe_certificate() {
    let fx = Fixture::new();
    let served = serve(fx.service(), None).await;
    let mut client = plain_client(served.addr).await;

    let key = KeyPair::generate().unwrap();
    let uri = spiffe("default", "web");
    let token = fx.token("default", "web");
    let response = client
        .create_certificate(request(csr(&key, &[&uri]), 7200, Some(&token)))
        .await
        .expect("certificate issued")
        .into_inner();

    let chain = response.cert_chain;
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(chain[1], fx.ca.roots_pem());
    assert_eq!(uri_sans(&chain[0]), vec![uri]);
    let remaining = remaining_secs(&chain[0]);
    assert!(
        (7198..=7201).contains(&remaining),
        "validity as requested: {remaining}s"
    );
    verify_chain(&chain, &fx.ca.roots_pem());
    openssl_verify(&chain, &fx.ca.roots_pem(), fx.dir.path());

    // validity_duration 0 asks for the default (24h).
    let response = client
        .create_certificate(request(
            csr(&key, &[&spiffe("default", "web")]),
            0,
            Some(&token),
        ))
        .await
        .unwrap()
        .into_inner();
    let remaining = remaining_secs(&response.cert_chain[0]);
    assert!((86_398..=86_401).contains(&remaining), "{remaining}");
}

#[tokio::test]
async fn rsa_2048_csr_is_signed() {
    let fx = Fixture::new();
    let served = serve(fx.service(), None).await;
    let mut client = plain_client(served.addr).await;
    let csr = include_str!("../fixtures/rsa-2048.csr.pem").to_owned();
    let token = fx.token("default", "legacy");
    let response = client
        .create_certificate(request(csr, 60, Some(&token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        uri_sans(&response.cert_chain[0]),
        vec![spiffe("default", "legacy")]
    );
    verify_chain(&response.cert_chain, &fx.ca.roots_pem());
}

#[tokio::test]
async fn identity_mismatch_is_permission_denied_naming_both() {
    let fx = Fixture::new();
    let served = serve(fx.service(), None).await;
    let mut client = plain_client(served.addr).await;
    let key = KeyPair::generate().unwrap();
    let token = fx.token("default", "web");
    for (csr_uri, what) in [
        (spiffe("default", "db"), "other service account"),
        (spiffe("kube-system", "web"), "other namespace"),
        (
            "spiffe://other.domain/ns/default/sa/web".to_owned(),
            "other trust domain",
        ),
    ] {
        let status = client
            .create_certificate(request(csr(&key, &[&csr_uri]), 60, Some(&token)))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
        assert!(
            status.message().contains(&csr_uri),
            "{what}: {}",
            status.message()
        );
        assert!(
            status.message().contains(&spiffe("default", "web")),
            "{what}: {}",
            status.message()
        );
    }
}

#[tokio::test]
async fn bad_missing_and_expired_tokens_are_unauthenticated() {
    let fx = Fixture::new();
    let served = serve(fx.service(), None).await;
    let mut client = plain_client(served.addr).await;
    let key = KeyPair::generate().unwrap();
    let uri = spiffe("default", "web");

    let good = fx.token("default", "web");
    let (signed, _) = good.rsplit_once('.').unwrap();
    let forged = format!("{signed}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let other_ca = Fixture::new().token("default", "web");
    let short = fx
        .tokens
        .create("default", "web", Duration::from_secs(1))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;

    for (token, what) in [
        (None, "no credentials"),
        (Some("not-a-token"), "garbage token"),
        (Some(forged.as_str()), "forged signature"),
        (Some(other_ca.as_str()), "another CA's token"),
        (Some(short.as_str()), "expired token"),
    ] {
        let status = client
            .create_certificate(request(csr(&key, &[&uri]), 60, token))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        if let Some(token) = token {
            assert!(
                !status.message().contains(token),
                "the token must not be echoed"
            );
        }
    }
    let status = client
        .create_certificate(request(csr(&key, &[&uri]), 60, Some(&short)))
        .await
        .unwrap_err();
    assert!(status.message().contains("expired"), "{}", status.message());

    // Authorization that is not a bearer token.
    let mut req = request(csr(&key, &[&uri]), 60, None);
    req.metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    let status = client.create_certificate(req).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument() {
    let fx = Fixture::new();
    let served = serve(fx.service(), None).await;
    let mut client = plain_client(served.addr).await;
    let token = fx.token("default", "web");
    let legacy = fx.token("default", "legacy");
    let key = KeyPair::generate().unwrap();
    let uri = spiffe("default", "web");
    let good = csr(&key, &[&uri]);

    // Flip a bit in the signature: the CSR still parses but proves nothing.
    let mut der = pem::parse(&good).unwrap().into_contents();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));

    let cert_not_csr = fx.ca.roots_pem();
    let dns_too = {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![
            rcgen::SanType::URI(uri.as_str().try_into().unwrap()),
            rcgen::SanType::DnsName("web.default.svc".try_into().unwrap()),
        ];
        params.serialize_request(&key).unwrap().pem().unwrap()
    };
    let cases = [
        (
            "garbage PEM",
            "this is not PEM".to_owned(),
            token.as_str(),
            60,
            "no PEM block",
        ),
        (
            "a certificate, not a CSR",
            cert_not_csr,
            token.as_str(),
            60,
            "CERTIFICATE",
        ),
        ("bad signature", tampered, token.as_str(), 60, "signature"),
        (
            "RSA 1024",
            include_str!("../fixtures/rsa-1024.csr.pem").to_owned(),
            legacy.as_str(),
            60,
            "RSA 1024",
        ),
        (
            "no SAN",
            csr(&key, &[]),
            token.as_str(),
            60,
            "no subjectAltName",
        ),
        (
            "extra DNS SAN",
            dns_too,
            token.as_str(),
            60,
            "DNS:web.default.svc",
        ),
        (
            "negative validity",
            good.clone(),
            token.as_str(),
            -5,
            "validity_duration",
        ),
        (
            "oversized CSR",
            "A".repeat(100_000),
            token.as_str(),
            60,
            "bytes",
        ),
    ];
    for (what, csr, token, validity, needle) in cases {
        let status = client
            .create_certificate(request(csr, validity, Some(token)))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{what}: {:?} lacks {needle:?}",
            status.message()
        );
    }

    // The good CSR still goes through: the refusals above were about the requests.
    client
        .create_certificate(request(good, 60, Some(&token)))
        .await
        .expect("good csr signed");
}

#[tokio::test]
async fn impersonation_metadata_is_refused() {
    let fx = Fixture::new();
    let served = serve(fx.service(), None).await;
    let mut client = plain_client(served.addr).await;
    let key = KeyPair::generate().unwrap();
    let token = fx.token("default", "web");
    let mut req = request(csr(&key, &[&spiffe("default", "web")]), 60, Some(&token));
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "ImpersonatedIdentity".to_owned(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(spiffe(
                "default", "db",
            ))),
        },
    );
    req.get_mut().metadata = Some(prost_types::Struct { fields });
    let status = client.create_certificate(req).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}
