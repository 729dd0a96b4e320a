//! rustls configurations built from the runtime config: verification of peers against the
//! mesh roots (or roots from a file) with SPIFFE/DNS name matching, and the certificate this
//! proxy presents, read at every handshake so a renewal takes effect without dropping
//! connections.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, ResolvesClientCert};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{
    CertificateSource, DownstreamTls, RootsSource, SanKind, SanMatcher, UpstreamTls,
};
use crate::identity::{Identity, dns_sans, uri_sans};

/// Why a TLS setting cannot be put in force.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "uses the workload certificate or mesh roots (SDS default/ROOTCA), but this proxy has no workload identity: start it with --token-file and the TLS xDS address"
    )]
    NoIdentity,
    #[error("SDS secret {0:?} has not come yet")]
    SecretMissing(Arc<str>),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain and its private key.
pub fn load_certified_key(chain: &str, key: &str) -> Result<Arc<CertifiedKey>, String> {
    let certs = CertificateDer::pem_file_iter(chain)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading the certificate chain {chain}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{chain} holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading the private key {key}: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the private key is not usable: {e}"))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| format!("the private key does not match {chain}: {e}"))?;
    Ok(Arc::new(certified))
}

/// A PEM certificate chain and private key given inline (SDS).
pub fn certified_key_from_pem(chain: &[u8], key: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let certs = CertificateDer::pem_slice_iter(chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate chain: {e}"))?;
    if certs.is_empty() {
        return Err("the certificate chain holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("the private key: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the private key is not usable: {e}"))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| format!("the private key does not match the certificate: {e}"))?;
    Ok(Arc::new(certified))
}

/// PEM trust anchors given inline (SDS).
pub fn anchors_from_pem(pem: &[u8]) -> Result<Arc<[TrustAnchor<'static>]>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("trusted CAs: {e}"))?;
    if certs.is_empty() {
        return Err("trusted CAs: no certificate".into());
    }
    certs
        .iter()
        .map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .map(|a| a.to_owned())
                .map_err(|e| format!("not a usable CA certificate: {e:?}"))
        })
        .collect()
}

/// Reads PEM trust anchors.
pub fn load_anchors(path: &str) -> Result<Arc<[TrustAnchor<'static>]>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading trusted CAs from {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path} holds no certificate"));
    }
    certs
        .iter()
        .map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .map(|a| a.to_owned())
                .map_err(|e| format!("{path}: not a usable CA certificate: {e:?}"))
        })
        .collect()
}

// === what to present ===

#[derive(Clone)]
enum Presented {
    Workload(Arc<Identity>),
    Fixed(Arc<CertifiedKey>),
}

impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Presented::Workload(id) => write!(f, "Workload({})", id.spiffe_id()),
            Presented::Fixed(_) => f.write_str("Fixed"),
        }
    }
}

impl Presented {
    fn new(source: &CertificateSource, identity: Option<&Arc<Identity>>) -> Result<Self, TlsError> {
        Ok(match source {
            CertificateSource::Workload => {
                Presented::Workload(identity.ok_or(TlsError::NoIdentity)?.clone())
            }
            CertificateSource::Files { loaded, .. } => Presented::Fixed(loaded.0.clone()),
            CertificateSource::Sds { name, loaded } => Presented::Fixed(
                loaded
                    .as_ref()
                    .ok_or_else(|| TlsError::SecretMissing(name.clone()))?
                    .0
                    .clone(),
            ),
        })
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        match self {
            Presented::Workload(id) => id.current().map(|w| w.certified.clone()),
            Presented::Fixed(key) => Some(key.clone()),
        }
    }
}

impl ResolvesClientCert for Presented {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for Presented {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

// === how to verify ===

#[derive(Clone)]
enum Roots {
    Mesh(Arc<Identity>),
    Fixed(Arc<[TrustAnchor<'static>]>),
}

impl Roots {
    fn new(source: &RootsSource, identity: Option<&Arc<Identity>>) -> Result<Self, TlsError> {
        Ok(match source {
            RootsSource::Mesh => Roots::Mesh(identity.ok_or(TlsError::NoIdentity)?.clone()),
            RootsSource::File { anchors, .. } => Roots::Fixed(anchors.0.clone()),
            RootsSource::Sds { name, anchors } => Roots::Fixed(
                anchors
                    .as_ref()
                    .ok_or_else(|| TlsError::SecretMissing(name.clone()))?
                    .0
                    .clone(),
            ),
        })
    }

    fn anchors(&self) -> Result<Arc<[TrustAnchor<'static>]>, rustls::Error> {
        match self {
            Roots::Mesh(id) => id.current().map(|w| w.anchors.clone()).ok_or_else(|| {
                rustls::Error::General("no workload certificate (and mesh roots) yet".into())
            }),
            Roots::Fixed(anchors) => Ok(anchors.clone()),
        }
    }
}

/// Verifies a peer: the chain against the roots, then one of the names against the matchers.
struct PeerVerifier {
    roots: Roots,
    names: Vec<SanMatcher>,
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerVerifier")
            .field("names", &self.names)
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

fn certificate_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    rustls::Error::InvalidCertificate(match e {
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    })
}

impl PeerVerifier {
    fn new(
        roots: Roots,
        names: Vec<SanMatcher>,
        mandatory: bool,
        provider: &CryptoProvider,
    ) -> Self {
        PeerVerifier {
            roots,
            names,
            mandatory,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), rustls::Error> {
        let anchors = self.roots.anchors()?;
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(certificate_error)?;
        cert.verify_for_usage(
            self.algorithms.all,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(certificate_error)?;
        if self.names.is_empty() {
            return Ok(());
        }
        let (_, parsed) = X509Certificate::from_der(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let uris = uri_sans(&parsed);
        let dns = dns_sans(&parsed);
        let named = self.names.iter().any(|m| {
            let candidates = match m.kind {
                SanKind::Uri => &uris,
                SanKind::Dns => &dns,
            };
            candidates.iter().any(|n| m.matcher.matches(n))
        });
        if named {
            Ok(())
        } else {
            tracing::debug!(uris = ?uris, dns = ?dns, wanted = ?self.names, "peer certificate names no expected identity");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// === configs ===

/// Accepts any certificate (the signatures of the handshake are still checked): how the
/// kubelet probes HTTPS, and so how the proxy performs an app's HTTPS probe for it.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The client side of an app's HTTPS probe: no certificate check, as the kubelet's.
pub fn probe_client_config() -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = AnyCertificate {
        algorithms: provider.signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Arc::new(config)
}

/// The client side of a cluster's TLS (without ALPN: the connector sets it).
pub fn client_config(
    tls: &UpstreamTls,
    identity: Option<&Arc<Identity>>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = PeerVerifier::new(
        Roots::new(&tls.validation.roots, identity)?,
        tls.validation.subject_alt_names.clone(),
        true,
        &provider,
    );
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    Ok(match &tls.certificate {
        Some(source) => {
            builder.with_client_cert_resolver(Arc::new(Presented::new(source, identity)?))
        }
        None => builder.with_no_client_auth(),
    })
}

/// The server side of a filter chain's TLS.
pub fn server_config(
    tls: &DownstreamTls,
    identity: Option<&Arc<Identity>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let presented = Presented::new(&tls.certificate, identity)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.validation {
        Some(v) => builder.with_client_cert_verifier(Arc::new(PeerVerifier::new(
            Roots::new(&v.roots, identity)?,
            v.subject_alt_names.clone(),
            tls.require_client_certificate,
            &provider,
        ))),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(presented));
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

// === the peer of a TLS connection ===

/// What the data path knows of a TLS connection's peer.
#[derive(Clone, Debug, Default)]
pub struct PeerTls {
    /// Envoy's principal: the first URI SAN, else the first DNS SAN, else the subject.
    pub principal: Option<Arc<str>>,
    pub uri: Option<Arc<str>>,
    pub dns: Vec<Arc<str>>,
    /// SHA-256 of the peer's certificate, lowercase hex (XFCC `Hash`).
    pub hash: Option<Arc<str>>,
    /// The URI SAN of the certificate this side presented (XFCC `By`).
    pub local_uri: Option<Arc<str>>,
}

impl PeerTls {
    /// Reads the peer certificate (if any) of an established server-side connection;
    /// `local_uri` is the identity this side presented.
    pub fn of(peer: Option<&[CertificateDer<'_>]>, local_uri: Option<Arc<str>>) -> PeerTls {
        let Some(leaf) = peer.and_then(|chain| chain.first()) else {
            return PeerTls {
                local_uri,
                ..PeerTls::default()
            };
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf);
        let hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
            return PeerTls {
                hash: Some(hash.into()),
                local_uri,
                ..PeerTls::default()
            };
        };
        let uri: Option<Arc<str>> = uri_sans(&cert).first().map(|u| Arc::from(*u));
        let dns: Vec<Arc<str>> = dns_sans(&cert).into_iter().map(Arc::from).collect();
        let principal = uri
            .clone()
            .or_else(|| dns.first().cloned())
            .or_else(|| Some(Arc::from(cert.subject().to_string().as_str())));
        PeerTls {
            principal,
            uri,
            dns,
            hash: Some(hash.into()),
            local_uri,
        }
    }
}
