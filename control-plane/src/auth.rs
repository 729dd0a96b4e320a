//! Authentication for straitd's TLS xDS port: the CA's own caller check (bootstrap token,
//! ServiceAccount token with `--kubernetes`, or mesh client certificate) behind the xDS
//! server's `Authenticator`.

use strait_ca::CallerAuth;
use strait_xds::server::Authenticator;
use tonic::Status;
use tonic::metadata::MetadataMap;

pub struct XdsAuthenticator {
    auth: CallerAuth,
    trust_domain: String,
}

impl XdsAuthenticator {
    /// `auth` is a `TokenIssuer` alone, or a `CallerAuth` with an external verifier.
    pub fn new(auth: impl Into<CallerAuth>, trust_domain: String) -> Self {
        XdsAuthenticator {
            auth: auth.into(),
            trust_domain,
        }
    }
}

#[tonic::async_trait]
impl Authenticator for XdsAuthenticator {
    async fn authenticate(
        &self,
        metadata: &MetadataMap,
        peer_certificates: Option<&[Vec<u8>]>,
    ) -> Result<String, Status> {
        let (identity, _) =
            strait_ca::authenticate(&self.auth, &self.trust_domain, metadata, peer_certificates)
                .await?;
        if identity.trust_domain != self.trust_domain {
            return Err(Status::permission_denied(format!(
                "{identity} is outside this mesh's trust domain {}",
                self.trust_domain
            )));
        }
        Ok(identity.spiffe_uri())
    }
}
