//! The service over TLS: callers authenticated by client certificates this CA issued.

use std::net::SocketAddr;
use std::time::Duration;

use rcgen::KeyPair;
use strait_ca::{Identity, IssuedKeyPair};
use strait_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, ServerTlsConfig};

use super::support::*;

/// TLS with the CA's own server certificate; client certificates verified against the CA's
/// roots but optional, so token-only callers can still bootstrap.
fn server_tls(fx: &Fixture) -> ServerTlsConfig {
    let server = fx
        .ca
        .issue_server(&["localhost".to_owned()], Duration::from_secs(3600))
        .expect("server certificate");
    ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            server.cert.chain_pem.concat(),
            server.key_pem.as_str(),
        ))
        .client_ca_root(Certificate::from_pem(fx.ca.roots_pem()))
        .client_auth_optional(true)
}

async fn tls_client(
    addr: SocketAddr,
    roots_pem: &str,
    identity: Option<&IssuedKeyPair>,
) -> Result<IstioCertificateServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(roots_pem))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            id.cert.chain_pem.concat(),
            id.key_pem.as_str(),
        ));
    }
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .expect("uri")
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(IstioCertificateServiceClient::new(channel))
}

#[tokio::test]
async fn client_certificate_authenticates_rotation() {
    let fx = Fixture::new();
    let served = serve(fx.service(), Some(server_tls(&fx))).await;
    let web = Identity::new(TD, "default", "web").unwrap();
    let current = fx.ca.issue(&web, Some(Duration::from_secs(60))).unwrap();
    let mut client = tls_client(served.addr, &fx.ca.roots_pem(), Some(&current))
        .await
        .unwrap();

    // Rotation: a new key, the same identity, no token.
    let key = KeyPair::generate().unwrap();
    let response = client
        .create_certificate(request(csr(&key, &[&web.spiffe_uri()]), 3600, None))
        .await
        .expect("rotation by client certificate")
        .into_inner();
    assert_eq!(uri_sans(&response.cert_chain[0]), vec![web.spiffe_uri()]);
    verify_chain(&response.cert_chain, &fx.ca.roots_pem());
    openssl_verify(&response.cert_chain, &fx.ca.roots_pem(), fx.dir.path());
}

#[tokio::test]
async fn client_certificate_cannot_ask_for_another_identity() {
    let fx = Fixture::new();
    let served = serve(fx.service(), Some(server_tls(&fx))).await;
    let web = Identity::new(TD, "default", "web").unwrap();
    let current = fx.ca.issue(&web, None).unwrap();
    let mut client = tls_client(served.addr, &fx.ca.roots_pem(), Some(&current))
        .await
        .unwrap();

    let key = KeyPair::generate().unwrap();
    let db = spiffe("default", "db");
    let status = client
        .create_certificate(request(csr(&key, &[&db]), 60, None))
        .await
        .expect_err("web may not get db's certificate");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains(&db) && status.message().contains(&web.spiffe_uri()),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn tls_without_client_certificate_needs_a_token() {
    let fx = Fixture::new();
    let served = serve(fx.service(), Some(server_tls(&fx))).await;
    let mut client = tls_client(served.addr, &fx.ca.roots_pem(), None)
        .await
        .unwrap();
    let key = KeyPair::generate().unwrap();
    let uri = spiffe("default", "web");

    let status = client
        .create_certificate(request(csr(&key, &[&uri]), 60, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let token = fx.token("default", "web");
    client
        .create_certificate(request(csr(&key, &[&uri]), 60, Some(&token)))
        .await
        .expect("token over TLS");
}

#[tokio::test]
async fn a_foreign_ca_client_certificate_is_rejected_by_tls() {
    let fx = Fixture::new();
    let served = serve(fx.service(), Some(server_tls(&fx))).await;
    let other = Fixture::new();
    let impostor = other
        .ca
        .issue(&Identity::new(TD, "default", "web").unwrap(), None)
        .unwrap();
    let key = KeyPair::generate().unwrap();
    // The handshake (or the first call on it) fails: the server does not trust that CA.
    let result = match tls_client(served.addr, &fx.ca.roots_pem(), Some(&impostor)).await {
        Err(_) => None,
        Ok(mut client) => Some(
            client
                .create_certificate(request(csr(&key, &[&spiffe("default", "web")]), 60, None))
                .await,
        ),
    };
    assert!(
        !matches!(result, Some(Ok(_))),
        "an untrusted client certificate got a certificate"
    );
}
