//! `istio.v1.auth.IstioCertificateService`: authenticates the caller, then signs its CSR.

// A caller proves who it is with a bootstrap token (`authorization: Bearer strait1...`), another
// bearer token its external verifier vouches for (a Kubernetes ServiceAccount token), or with
// the client certificate of its TLS connection (verified against this CA by the TLS layer,
// which the server's owner configures). The CSR must ask for exactly that identity.

use std::net::SocketAddr;
use std::time::Duration;

use strait_proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use strait_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::authority::{CaError, CertificateAuthority, IssuedCert};
use crate::caller::{self, AuthMethod, CallerAuth};
use crate::csr::CsrError;
use crate::identity::Identity;

/// Istio's metadata key for acting on another identity's behalf; Strait grants that to no one.
const IMPERSONATION_KEY: &str = "ImpersonatedIdentity";

/// Limits on what the service accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceOptions {
    /// Larger CSRs are refused before parsing (an RSA-8192 CSR is about 2.5 KiB of PEM).
    pub max_csr_bytes: usize,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            max_csr_bytes: 16 * 1024,
        }
    }
}

/// The CA's gRPC face.
#[derive(Debug, Clone)]
pub struct CertificateService {
    ca: CertificateAuthority,
    auth: CallerAuth,
    options: ServiceOptions,
}

// === impl CertificateService ===

impl CertificateService {
    /// `auth` is a [`crate::TokenIssuer`] alone, or a [`CallerAuth`] with an external verifier.
    pub fn new(
        ca: CertificateAuthority,
        auth: impl Into<CallerAuth>,
        options: ServiceOptions,
    ) -> Self {
        Self {
            ca,
            auth: auth.into(),
            options,
        }
    }

    /// The tonic service, ready for `Server::add_service`.
    pub fn server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }

    async fn authenticate<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(Identity, AuthMethod), Status> {
        let certificates: Option<Vec<Vec<u8>>> = request
            .peer_certs()
            .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect());
        caller::authenticate(
            &self.auth,
            self.ca.trust_domain(),
            request.metadata(),
            certificates.as_deref(),
        )
        .await
    }

    async fn handle(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<(IssuedCert, Identity, AuthMethod), Status> {
        let (identity, method) = self.authenticate(&request).await?;
        if identity.trust_domain != self.ca.trust_domain() {
            return Err(Status::permission_denied(format!(
                "caller {identity} is outside this CA's trust domain {}",
                self.ca.trust_domain()
            )));
        }
        let request = request.into_inner();
        if request
            .metadata
            .as_ref()
            .is_some_and(|m| m.fields.contains_key(IMPERSONATION_KEY))
        {
            return Err(Status::permission_denied(format!(
                "caller {identity} may not request certificates for another identity ({IMPERSONATION_KEY})"
            )));
        }
        if request.csr.len() > self.options.max_csr_bytes {
            return Err(Status::invalid_argument(format!(
                "csr is {} bytes; at most {} are accepted",
                request.csr.len(),
                self.options.max_csr_bytes
            )));
        }
        let requested = match request.validity_duration {
            0 => None,
            secs if secs > 0 => Some(Duration::from_secs(secs.unsigned_abs())),
            secs => {
                return Err(Status::invalid_argument(format!(
                    "validity_duration must be >= 0 seconds, got {secs}"
                )));
            }
        };

        // Parsing, verifying and signing are CPU work (milliseconds for RSA CA keys): keep
        // them off the async workers.
        let ca = self.ca.clone();
        let id = identity.clone();
        let issued = tokio::task::spawn_blocking(move || ca.sign_csr(&request.csr, &id, requested))
            .await
            .map_err(|_| Status::internal("signing task failed"))?
            .map_err(|e| status_for(&e))?;
        Ok((issued, identity, method))
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CertificateService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request.remote_addr();
        match self.handle(request).await {
            Ok((issued, identity, method)) => {
                info!(
                    peer = %display_peer(peer),
                    %identity,
                    auth = ?method,
                    serial = %issued.serial,
                    "certificate request granted"
                );
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: issued.chain_pem,
                }))
            }
            Err(status) => {
                // Status messages never carry secrets: tokens and keys are not echoed anywhere.
                warn!(peer = %display_peer(peer), code = ?status.code(), reason = %status.message(), "certificate request refused");
                Err(status)
            }
        }
    }
}

fn display_peer(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
}

/// Maps CA errors to gRPC codes: the caller's fault is InvalidArgument, a request for someone
/// else's identity is PermissionDenied, the rest is ours.
fn status_for(error: &CaError) -> Status {
    match error {
        CaError::Csr(CsrError::SanMismatch { .. }) | CaError::ForeignTrustDomain { .. } => {
            Status::permission_denied(error.to_string())
        }
        CaError::Csr(_) | CaError::Identity(_) => Status::invalid_argument(error.to_string()),
        // Details of our own failures go to the log, not to the caller.
        CaError::File(_)
        | CaError::CaFile { .. }
        | CaError::Options(_)
        | CaError::ServerName { .. }
        | CaError::IssuerExpired { .. }
        | CaError::Signing(_)
        | CaError::Crypto(_) => {
            warn!(%error, "certificate signing failed");
            Status::internal("certificate signing failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_follow_the_error_kind() {
        let mismatch = CaError::Csr(CsrError::SanMismatch {
            requested: "spiffe://cluster.local/ns/a/sa/b".into(),
            authenticated: "spiffe://cluster.local/ns/a/sa/c".into(),
        });
        let status = status_for(&mismatch);
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("ns/a/sa/b") && status.message().contains("ns/a/sa/c"));
        assert_eq!(
            status_for(&CaError::Csr(CsrError::BadSignature)).code(),
            tonic::Code::InvalidArgument
        );
        let internal = status_for(&CaError::Crypto("boom".into()));
        assert_eq!(internal.code(), tonic::Code::Internal);
        assert!(!internal.message().contains("boom"));
    }

    #[test]
    fn client_cert_identity_needs_exactly_one_spiffe_uri() {
        use crate::caller::identity_from_cert;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert_with = |sans: Vec<&str>| {
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names = sans
                .into_iter()
                .map(|s| rcgen::SanType::URI(s.try_into().unwrap()))
                .collect();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        let id = identity_from_cert(&cert_with(vec!["spiffe://cluster.local/ns/a/sa/b"])).unwrap();
        assert_eq!(id.spiffe_uri(), "spiffe://cluster.local/ns/a/sa/b");
        assert!(identity_from_cert(&cert_with(vec![])).is_err());
        assert!(identity_from_cert(&cert_with(vec!["https://example.com/"])).is_err());
        assert!(
            identity_from_cert(&cert_with(vec![
                "spiffe://cluster.local/ns/a/sa/b",
                "spiffe://cluster.local/ns/a/sa/c"
            ]))
            .is_err()
        );
        assert!(identity_from_cert(b"garbage").is_err());
    }
}
