//! Authentication for straitd's TLS xDS port: the CA's own caller check (bootstrap token or
//! mesh client certificate) behind the xDS server's `Authenticator`.

use strait_ca::TokenIssuer;
use strait_xds::server::Authenticator;
use tonic::Status;
use tonic::metadata::MetadataMap;

pub struct XdsAuthenticator {
    tokens: TokenIssuer,
    trust_domain: String,
}

impl XdsAuthenticator {
    pub fn new(tokens: TokenIssuer, trust_domain: String) -> Self {
        XdsAuthenticator {
            tokens,
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
        let (identity, _) = strait_ca::authenticate(
            &self.tokens,
            &self.trust_domain,
            metadata,
            peer_certificates,
        )?;
        if identity.trust_domain != self.trust_domain {
            return Err(Status::permission_denied(format!(
                "{identity} is outside this mesh's trust domain {}",
                self.trust_domain
            )));
        }
        Ok(identity.spiffe_uri())
    }
}
