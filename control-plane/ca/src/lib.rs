//! The mesh's certificate authority: SPIFFE workload certificates, bootstrap tokens, and Istio's CA gRPC API.

// CertificateAuthority signs; TokenIssuer authenticates workloads that have no certificate yet
// (beside an ExternalTokenVerifier, e.g. Kubernetes TokenReview, in CallerAuth);
// CertificateService serves istio.v1.auth.IstioCertificateService over both.

mod authority;
pub mod caller;
mod csr;
mod files;
mod identity;
pub mod service;
pub mod tokens;

pub use authority::{
    CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE_ACCOUNT, CaError, CaOptions, CaSource,
    CertificateAuthority, IssuedCert, IssuedKeyPair,
};
pub use caller::{AuthMethod, CallerAuth, ExternalTokenError, ExternalTokenVerifier, authenticate};
pub use csr::CsrError;
pub use files::FileError;
pub use identity::{Identity, IdentityError};
pub use service::{CertificateService, ServiceOptions};
pub use tokens::{TokenClaims, TokenError, TokenIssuer};
