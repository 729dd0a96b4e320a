//! Shared helpers: a CA in a temp dir, a served CertificateService, CSRs, chain verification.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use strait_ca::{
    CaOptions, CaSource, CertificateAuthority, CertificateService, ServiceOptions, TokenIssuer,
};
use strait_proto::istio::v1::auth::IstioCertificateRequest;
use strait_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, ServerTlsConfig};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

pub const TD: &str = "cluster.local";

/// A self-signed CA and token issuer in a fresh temp dir.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
    pub tokens: TokenIssuer,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::load(
            CaSource::SelfSigned {
                data_dir: dir.path().join("ca"),
            },
            CaOptions::default(),
        )
        .expect("self-signed CA loads");
        let tokens = TokenIssuer::load_or_create(&dir.path().join("ca")).expect("token key");
        Self { dir, ca, tokens }
    }

    pub fn service(&self) -> CertificateService {
        CertificateService::new(
            self.ca.clone(),
            self.tokens.clone(),
            ServiceOptions::default(),
        )
    }

    pub fn token(&self, ns: &str, sa: &str) -> String {
        self.tokens
            .create(ns, sa, Duration::from_secs(600))
            .expect("token")
    }
}

/// A served CertificateService; stops when dropped.
pub struct Served {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// Serves `service` on 127.0.0.1:0, over TLS when `tls` is given.
pub async fn serve(service: CertificateService, tls: Option<ServerTlsConfig>) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).expect("server tls config");
    }
    let router = builder.add_service(service.server());
    tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
    });
    Served { addr, _stop: stop }
}

pub async fn plain_client(addr: SocketAddr) -> IstioCertificateServiceClient<Channel> {
    IstioCertificateServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

/// A CreateCertificate request, with a bearer token when given.
pub fn request(
    csr: String,
    validity_secs: i64,
    token: Option<&str>,
) -> tonic::Request<IstioCertificateRequest> {
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: validity_secs,
        metadata: None,
    });
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("ascii metadata");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

pub fn spiffe(ns: &str, sa: &str) -> String {
    format!("spiffe://{TD}/ns/{ns}/sa/{sa}")
}

/// A PEM CSR for `key` with the given URI SANs and an empty subject, as istio-agent sends.
pub fn csr(key: &KeyPair, uris: &[&str]) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().expect("ascii uri")))
        .collect();
    params
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
}

pub fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("one certificate")
}

/// Verifies `chain` (leaf first) up to one of `roots_pem` with webpki, for client and server
/// use, and checks the chain ends with that root.
pub fn verify_chain(chain: &[String], roots_pem: &str) {
    assert!(chain.len() >= 2, "chain has the leaf and at least the root");
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(roots_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("roots parse");
    let last = der(chain.last().expect("non-empty"));
    assert!(
        roots.contains(&last),
        "chain must end with a trust-bundle root"
    );
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| {
            webpki::anchor_from_trusted_cert(r)
                .expect("anchor")
                .to_owned()
        })
        .collect();
    let leaf = der(&chain[0]);
    let intermediates: Vec<_> = chain[1..chain.len() - 1].iter().map(|p| der(p)).collect();
    let ee = webpki::EndEntityCert::try_from(&leaf).expect("leaf parses for webpki");
    let now = UnixTime::since_unix_epoch(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970"),
    );
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            now,
            usage,
            None,
            None,
        )
        .expect("chain verifies with webpki");
    }
}

/// `openssl verify` as a second, independent opinion; skipped (with a note) without openssl.
pub fn openssl_verify(chain: &[String], roots_pem: &str, dir: &Path) {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl not on PATH; skipping the openssl verify check");
        return;
    }
    let write = |name: &str, contents: String| {
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write pem");
        path
    };
    let roots = write("verify-roots.pem", roots_pem.to_owned());
    let untrusted = write("verify-untrusted.pem", chain[1..chain.len() - 1].concat());
    let leaf = write("verify-leaf.pem", chain[0].clone());
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(&roots);
    if chain.len() > 2 {
        cmd.arg("-untrusted").arg(&untrusted);
    }
    let out = cmd
        .arg("-purpose")
        .arg("sslclient")
        .arg(&leaf)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The URI SANs of a PEM certificate.
pub fn uri_sans(pem: &str) -> Vec<String> {
    let (_, pem) = parse_x509_pem(pem.as_bytes()).expect("pem");
    let cert = pem.parse_x509().expect("x509");
    cert.subject_alternative_name()
        .expect("san parses")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// notAfter - now, in seconds, of a PEM certificate.
pub fn remaining_secs(pem: &str) -> i64 {
    let (_, pem) = parse_x509_pem(pem.as_bytes()).expect("pem");
    let cert = pem.parse_x509().expect("x509");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    cert.validity().not_after.timestamp() - i64::try_from(now).expect("fits")
}
