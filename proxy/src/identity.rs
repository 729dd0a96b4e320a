//! The workload's identity: a private key made in this process, certified through straitd's
//! certificate API (Istio's `CreateCertificate`), renewed at half its lifetime. The key never
//! leaves the process; the mesh roots come back with the certificate.
//!
//! Calls to straitd's TLS port (the CA and xDS) prove the workload with its certificate while
//! one is valid, and with the bootstrap token before that (or if the certificate is refused):
//! the token is needed once, so its expiry does not end renewals.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, TrustAnchor};
use strait_proto::istio::v1::auth::IstioCertificateRequest;
use strait_proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use tokio::sync::watch;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use zeroize::Zeroizing;

const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Where and as whom the proxy asks for its certificate.
#[derive(Clone, Debug)]
pub struct IdentitySettings {
    /// straitd's TLS port, `https://HOST:PORT`.
    pub ca_address: String,
    /// PEM roots that straitd's serving certificate chains to.
    pub ca_root: PathBuf,
    /// A file holding the bootstrap token; read at every request, so it can be replaced.
    pub token_file: PathBuf,
    /// The SPIFFE ID to ask for (must be the one the token proves).
    pub spiffe_id: String,
    /// Requested lifetime; none: the CA's default.
    pub ttl: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading {what} from {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building the certificate request for {spiffe_id}: {source}")]
    Csr {
        spiffe_id: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("connecting to the CA at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the bootstrap token in {0} is not valid header text")]
    Token(String),
    #[error("the CA refused the certificate request: {0}")]
    Refused(#[source] Box<tonic::Status>),
    #[error("the CA's answer is unusable: {0}")]
    Answer(String),
    #[error("with the workload certificate: {certificate}; then with the bootstrap token: {token}")]
    BothRefused {
        certificate: Box<IdentityError>,
        token: Box<IdentityError>,
    },
}

/// A certified workload key and the roots it came with.
pub struct Workload {
    pub spiffe_id: Arc<str>,
    pub certified: Arc<CertifiedKey>,
    pub anchors: Arc<[TrustAnchor<'static>]>,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When it came: the CA back-dates `not_before` (for peers whose clocks lag), so the
    /// lifetime that counts for renewal starts here.
    received: SystemTime,
    /// The certificate (and intermediates) and key as PEM, to present to straitd.
    client_pem: (String, Zeroizing<String>),
}

/// How a call to straitd's TLS port proves the workload.
pub enum Proof {
    /// Its certificate, as the TLS client certificate.
    Certificate(tonic::transport::Identity),
    /// The bootstrap token, as `authorization: Bearer`.
    Token(AsciiMetadataValue),
}

impl Proof {
    /// Adds the token to a call, if that is the proof.
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) {
        if let Proof::Token(bearer) = self {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
    }

    fn is_certificate(&self) -> bool {
        matches!(self, Proof::Certificate(_))
    }
}

impl Workload {
    /// Valid now, with a little time to spare for the call it proves.
    fn usable_as_proof(&self) -> bool {
        let now = SystemTime::now();
        self.not_before <= now && now + Duration::from_secs(1) < self.not_after
    }

    /// When to ask for the next certificate: half way through this one's life as we hold it
    /// (from its arrival, not its back-dated `not_before`).
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.received)
            .unwrap_or_default();
        self.received + life / 2
    }
}

/// The current workload certificate, swapped in place on renewal: TLS handshakes read it, so
/// established connections are untouched and new ones use the new certificate.
pub struct Identity {
    settings: IdentitySettings,
    current: ArcSwapOption<Workload>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.settings.spiffe_id)
            .field("ca_address", &self.settings.ca_address)
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn new(settings: IdentitySettings) -> Identity {
        Identity {
            settings,
            current: ArcSwapOption::empty(),
        }
    }

    pub fn spiffe_id(&self) -> &str {
        &self.settings.spiffe_id
    }

    pub fn current(&self) -> Option<Arc<Workload>> {
        self.current.load_full()
    }

    /// A channel to straitd's TLS port at `address` (the CA's, or the xDS server's),
    /// trusting the CA root and presenting the certificate if that is the proof.
    pub fn endpoint(&self, address: &str, proof: &Proof) -> Result<Endpoint, IdentityError> {
        let client = match proof {
            Proof::Certificate(identity) => Some(identity.clone()),
            Proof::Token(_) => None,
        };
        tls_port(address, &self.settings.ca_root, client)
    }

    /// The workload certificate while it is valid, else the bootstrap token.
    pub fn proof(&self) -> Result<Proof, IdentityError> {
        match self.current().filter(|w| w.usable_as_proof()) {
            Some(w) => {
                let (cert, key) = &w.client_pem;
                Ok(Proof::Certificate(tonic::transport::Identity::from_pem(
                    cert,
                    key.as_bytes(),
                )))
            }
            None => self.token(),
        }
    }

    fn token(&self) -> Result<Proof, IdentityError> {
        bearer(&self.settings.token_file).map(Proof::Token)
    }

    /// Makes a new key, has it certified, and puts it in force.
    pub async fn refresh(&self) -> Result<Arc<Workload>, IdentityError> {
        let workload = Arc::new(self.request().await?);
        tracing::info!(
            spiffe_id = %workload.spiffe_id,
            serial = %workload.serial,
            "workload certificate in force"
        );
        self.current.store(Some(workload.clone()));
        Ok(workload)
    }

    /// Renews at half life until `shutdown`; failures are retried with backoff while the
    /// current certificate stays in force.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut retry = RETRY_MIN;
        loop {
            let wait = match self.current() {
                Some(w) => w
                    .renew_at()
                    .duration_since(SystemTime::now())
                    .unwrap_or_default(),
                None => Duration::ZERO,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            match self.refresh().await {
                Ok(_) => retry = RETRY_MIN,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?retry, "renewing the workload certificate failed");
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = shutdown.changed() => return,
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// A new certificate, asked for with the current one if it is valid, else (or if that is
    /// refused) with the bootstrap token.
    async fn request(&self) -> Result<Workload, IdentityError> {
        let proof = self.proof()?;
        if !proof.is_certificate() {
            return self.request_with(&proof).await;
        }
        match self.request_with(&proof).await {
            Ok(w) => Ok(w),
            Err(certificate) => {
                tracing::warn!(error = %certificate, "renewing with the workload certificate failed; trying the bootstrap token");
                // A token file removed after bootstrap is reported beside the first error.
                let with_token = match self.token() {
                    Ok(token) => self.request_with(&token).await,
                    Err(unreadable) => Err(unreadable),
                };
                with_token.map_err(|token| IdentityError::BothRefused {
                    certificate: Box::new(certificate),
                    token: Box::new(token),
                })
            }
        }
    }

    async fn request_with(&self, proof: &Proof) -> Result<Workload, IdentityError> {
        let s = &self.settings;
        let key = KeyPair::generate().map_err(|source| IdentityError::Csr {
            spiffe_id: s.spiffe_id.clone(),
            source,
        })?;
        let csr = csr_pem(&s.spiffe_id, &key).map_err(|source| IdentityError::Csr {
            spiffe_id: s.spiffe_id.clone(),
            source,
        })?;
        let channel = self
            .endpoint(&s.ca_address, proof)?
            .connect()
            .await
            .map_err(|source| IdentityError::Connect {
                address: s.ca_address.clone(),
                source,
            })?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: s.ttl.map_or(0, |t| t.as_secs() as i64),
            metadata: None,
        });
        proof.authorize(&mut request);
        let response = IstioCertificateServiceClient::new(channel)
            .create_certificate(request)
            .await
            .map_err(|status| IdentityError::Refused(Box::new(status)))?
            .into_inner();
        workload(&s.spiffe_id, key, &response.cert_chain)
    }
}

/// A tonic endpoint for straitd's TLS port, trusting `ca_root`, presenting `client` if given.
fn tls_port(
    address: &str,
    ca_root: &std::path::Path,
    client: Option<tonic::transport::Identity>,
) -> Result<Endpoint, IdentityError> {
    let pem = std::fs::read(ca_root).map_err(|source| IdentityError::Read {
        what: "straitd's root certificate",
        path: ca_root.display().to_string(),
        source,
    })?;
    let invalid = |source| IdentityError::Connect {
        address: address.to_string(),
        source,
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
    if let Some(identity) = client {
        tls = tls.identity(identity);
    }
    Endpoint::from_shared(address.to_string())
        .map_err(invalid)?
        .tls_config(tls)
        .map_err(invalid)
        .map(|e| {
            e.connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
        })
}

/// `Bearer <the bootstrap token in path>`, for the `authorization` metadata.
fn bearer(path: &std::path::Path) -> Result<AsciiMetadataValue, IdentityError> {
    let token = std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        what: "the bootstrap token",
        path: path.display().to_string(),
        source,
    })?;
    format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| IdentityError::Token(path.display().to_string()))
}

fn csr_pem(spiffe_id: &str, key: &KeyPair) -> Result<String, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
    params.serialize_request(key)?.pem()
}

/// Checks the CA's answer (leaf for our key and identity, root last) and makes it usable.
fn workload(
    spiffe_id: &str,
    key: KeyPair,
    chain_pem: &[String],
) -> Result<Workload, IdentityError> {
    let answer = |m: String| IdentityError::Answer(m);
    let mut chain = Vec::new();
    for (i, block) in chain_pem.iter().enumerate() {
        for cert in CertificateDer::pem_slice_iter(block.as_bytes()) {
            chain.push(cert.map_err(|e| answer(format!("cert_chain[{i}]: {e}")))?);
        }
    }
    if chain.len() < 2 {
        return Err(answer(format!(
            "expected the certificate and its chain up to the root, got {} certificate(s)",
            chain.len()
        )));
    }
    let (_, leaf) = X509Certificate::from_der(&chain[0])
        .map_err(|e| answer(format!("the certificate does not parse: {e}")))?;
    if *leaf.public_key().subject_public_key.data != *key.public_key_raw() {
        return Err(answer("the certificate is not for the key we sent".into()));
    }
    let uris = uri_sans(&leaf);
    if uris != [spiffe_id] {
        return Err(answer(format!(
            "the certificate names {uris:?}, not {spiffe_id:?}"
        )));
    }
    let serial = leaf.tbs_certificate.raw_serial_as_string().replace(':', "");
    let not_before = to_system_time(leaf.validity().not_before.timestamp());
    let not_after = to_system_time(leaf.validity().not_after.timestamp());
    let root = chain.pop().ok_or_else(|| answer("no root".into()))?;
    // Leaf and intermediates: what a client presents (the root is the verifier's to have).
    let presented = pem::encode_many(
        &chain
            .iter()
            .map(|c| pem::Pem::new("CERTIFICATE", c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let anchor = webpki::anchor_from_trusted_cert(&root)
        .map_err(|e| answer(format!("the root is not a usable trust anchor: {e:?}")))?
        .to_owned();
    let client_pem = (presented, Zeroizing::new(key.serialize_pem()));
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| answer(format!("the key is unusable for TLS: {e}")))?;
    Ok(Workload {
        spiffe_id: spiffe_id.into(),
        certified: Arc::new(CertifiedKey::new(chain, signing)),
        anchors: Arc::from(vec![anchor]),
        serial,
        not_before,
        not_after,
        received: SystemTime::now(),
        client_pem,
    })
}

fn to_system_time(unix: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64)
}

/// The URI subject alternative names of a certificate.
pub fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    names(cert, |n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    })
}

/// The DNS subject alternative names of a certificate.
pub fn dns_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    names(cert, |n| match n {
        GeneralName::DNSName(d) => Some(*d),
        _ => None,
    })
}

fn names<'a>(
    cert: &'a X509Certificate<'_>,
    pick: impl Fn(&'a GeneralName<'_>) -> Option<&'a str>,
) -> Vec<&'a str> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().filter_map(pick).collect(),
        _ => Vec::new(),
    }
}
