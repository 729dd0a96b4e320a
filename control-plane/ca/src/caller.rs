//! Who is calling: a token in `authorization: Bearer ...` (straitd's own bootstrap token, or one
//! an [`ExternalTokenVerifier`] checks, such as a Kubernetes ServiceAccount token), else the
//! SPIFFE identity of the client certificate presented on the TLS connection. Shared by the
//! certificate API and straitd's TLS xDS port.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::Status;
use tonic::metadata::MetadataMap;
use x509_parser::prelude::{FromDer, GeneralName};

use crate::identity::Identity;
use crate::tokens::{TOKEN_PREFIX, TokenIssuer};

/// How a caller proved its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// One of straitd's own bootstrap tokens.
    Token,
    /// A token an [`ExternalTokenVerifier`] vouched for.
    ExternalToken,
    ClientCert,
}

/// Why an [`ExternalTokenVerifier`] did not vouch for a token. Messages never echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExternalTokenError {
    /// The token is not valid, or not for us: the caller gets `Unauthenticated`.
    #[error("{0}")]
    Refused(String),
    /// The token could not be checked now (its verifier is unreachable or refuses us): the
    /// caller gets `Unavailable` and may retry.
    #[error("{0}")]
    Unavailable(String),
}

/// Checks bearer tokens that are not straitd's own, e.g. Kubernetes ServiceAccount tokens
/// through the API server's TokenReview.
#[tonic::async_trait]
pub trait ExternalTokenVerifier: Send + Sync + 'static {
    /// The namespace and service account the token proves.
    async fn verify(&self, token: &str) -> Result<(String, String), ExternalTokenError>;
}

/// What callers may prove themselves with: straitd's bootstrap tokens, tokens an external
/// verifier vouches for when there is one, and mesh client certificates. Cheap to clone.
#[derive(Clone)]
pub struct CallerAuth {
    tokens: TokenIssuer,
    external: Option<Arc<dyn ExternalTokenVerifier>>,
}

impl std::fmt::Debug for CallerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerAuth")
            .field("tokens", &self.tokens)
            .field("external", &self.external.is_some())
            .finish()
    }
}

impl From<TokenIssuer> for CallerAuth {
    fn from(tokens: TokenIssuer) -> Self {
        Self {
            tokens,
            external: None,
        }
    }
}

// === impl CallerAuth ===

impl CallerAuth {
    /// Bearer tokens that are not bootstrap tokens go to `verifier` as well.
    pub fn with_external(mut self, verifier: Arc<dyn ExternalTokenVerifier>) -> Self {
        self.external = Some(verifier);
        self
    }

    /// Checks a bearer token: one that looks like a bootstrap token (`strait1.`) is checked
    /// as one; any other goes to the external verifier, if there is one.
    async fn verify_token(
        &self,
        token: &str,
        trust_domain: &str,
    ) -> Result<(Identity, AuthMethod), Status> {
        let external = match &self.external {
            Some(external) if !token.starts_with(TOKEN_PREFIX) => external,
            _ => {
                let claims = self.tokens.verify(token, SystemTime::now()).map_err(|e| {
                    Status::unauthenticated(format!("bootstrap token refused: {e}"))
                })?;
                return Ok((claims.identity(trust_domain), AuthMethod::Token));
            }
        };
        let (namespace, service_account) = external.verify(token).await.map_err(|e| match e {
            ExternalTokenError::Refused(why) => Status::unauthenticated(why),
            ExternalTokenError::Unavailable(why) => Status::unavailable(why),
        })?;
        let identity = Identity::new(trust_domain, namespace, service_account).map_err(|e| {
            Status::unauthenticated(format!("the token's identity is not acceptable: {e}"))
        })?;
        Ok((identity, AuthMethod::ExternalToken))
    }
}

/// Authenticates a caller. A presented token is decisive: a bad one is refused even if a
/// certificate would pass. `peer_certificates` is the verified chain, leaf first (DER).
pub async fn authenticate(
    auth: &CallerAuth,
    trust_domain: &str,
    metadata: &MetadataMap,
    peer_certificates: Option<&[Vec<u8>]>,
) -> Result<(Identity, AuthMethod), Status> {
    if let Some(value) = metadata.get("authorization") {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                Status::unauthenticated("authorization metadata is not `Bearer <token>`")
            })?;
        return auth.verify_token(token.trim(), trust_domain).await;
    }
    let certs = peer_certificates.ok_or_else(|| {
        Status::unauthenticated("no credentials: send a bootstrap token or a client certificate")
    })?;
    let leaf = certs.first().ok_or_else(|| {
        Status::unauthenticated("no credentials: the client certificate chain is empty")
    })?;
    let identity = identity_from_cert(leaf).map_err(Status::unauthenticated)?;
    Ok((identity, AuthMethod::ClientCert))
}

/// The one SPIFFE identity named by a client certificate's URI SANs.
pub fn identity_from_cert(der: &[u8]) -> Result<Identity, String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| format!("client certificate does not parse: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("client certificate subjectAltName does not parse: {e}"))?
        .ok_or("client certificate has no subjectAltName")?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
        _ => None,
    });
    let uri = uris
        .next()
        .ok_or("client certificate has no SPIFFE URI SAN")?;
    if uris.next().is_some() {
        return Err("client certificate has more than one SPIFFE URI SAN".to_owned());
    }
    Identity::parse_spiffe(uri).map_err(|e| format!("client certificate identity refused: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Answers from a script and records what it was asked.
    struct FakeVerifier {
        answer: Result<(String, String), ExternalTokenError>,
        asked: Mutex<Vec<String>>,
    }

    impl FakeVerifier {
        fn answering(answer: Result<(&str, &str), ExternalTokenError>) -> Arc<Self> {
            Arc::new(Self {
                answer: answer.map(|(ns, sa)| (ns.to_owned(), sa.to_owned())),
                asked: Mutex::new(Vec::new()),
            })
        }

        fn asked(&self) -> Vec<String> {
            self.asked.lock().unwrap().clone()
        }
    }

    #[tonic::async_trait]
    impl ExternalTokenVerifier for FakeVerifier {
        async fn verify(&self, token: &str) -> Result<(String, String), ExternalTokenError> {
            self.asked.lock().unwrap().push(token.to_owned());
            self.answer.clone()
        }
    }

    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJl";

    fn bearer(token: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        metadata
    }

    fn issuer() -> (tempfile::TempDir, TokenIssuer) {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::load_or_create(dir.path()).unwrap();
        (dir, issuer)
    }

    async fn check(
        auth: &CallerAuth,
        token: &str,
    ) -> Result<(String, AuthMethod), (tonic::Code, String)> {
        authenticate(auth, "cluster.local", &bearer(token), None)
            .await
            .map(|(id, method)| (id.spiffe_uri(), method))
            .map_err(|s| (s.code(), s.message().to_owned()))
    }

    #[tokio::test]
    async fn bootstrap_tokens_are_checked_by_hmac_and_others_go_to_the_verifier() {
        let (_dir, tokens) = issuer();
        let bootstrap = tokens
            .create("default", "web", Duration::from_secs(60))
            .unwrap();
        let verifier = FakeVerifier::answering(Ok(("shop", "reviews")));
        let auth = CallerAuth::from(tokens.clone()).with_external(verifier.clone());

        assert_eq!(
            check(&auth, &bootstrap).await,
            Ok((
                "spiffe://cluster.local/ns/default/sa/web".to_owned(),
                AuthMethod::Token
            ))
        );
        // A forged bootstrap token is refused as one; the verifier never sees it.
        let (signed, _) = bootstrap.rsplit_once('.').unwrap();
        let forged = format!("{signed}.AAAA");
        let (code, message) = check(&auth, &forged).await.unwrap_err();
        assert_eq!(code, tonic::Code::Unauthenticated);
        assert!(message.contains("bootstrap token refused"), "{message}");
        assert!(verifier.asked().is_empty());

        // Anything else is the verifier's to judge.
        assert_eq!(
            check(&auth, JWT).await,
            Ok((
                "spiffe://cluster.local/ns/shop/sa/reviews".to_owned(),
                AuthMethod::ExternalToken
            ))
        );
        assert_eq!(verifier.asked(), [JWT]);

        // Without a verifier such a token is a malformed bootstrap token, as before.
        let plain = CallerAuth::from(tokens);
        let (code, message) = check(&plain, JWT).await.unwrap_err();
        assert_eq!(code, tonic::Code::Unauthenticated);
        assert!(message.contains("bootstrap token refused"), "{message}");
    }

    #[tokio::test]
    async fn verifier_refusals_and_outages_keep_their_codes() {
        let (_dir, tokens) = issuer();
        let cases = [
            (
                Err(ExternalTokenError::Refused(
                    "audience strait-ca not in the token".into(),
                )),
                tonic::Code::Unauthenticated,
                "audience strait-ca",
            ),
            (
                Err(ExternalTokenError::Unavailable(
                    "API server unreachable".into(),
                )),
                tonic::Code::Unavailable,
                "API server unreachable",
            ),
            // A name that cannot be in a SPIFFE ID.
            (
                Ok(("shop", "a/b")),
                tonic::Code::Unauthenticated,
                "identity is not acceptable",
            ),
        ];
        for (answer, code, needle) in cases {
            let auth =
                CallerAuth::from(tokens.clone()).with_external(FakeVerifier::answering(answer));
            let (got, message) = check(&auth, JWT).await.unwrap_err();
            assert_eq!(got, code, "{message}");
            assert!(message.contains(needle), "{message}");
            assert!(
                !message.contains(JWT),
                "the token is never echoed: {message}"
            );
        }
    }

    #[tokio::test]
    async fn a_presented_token_is_decisive_over_a_certificate() {
        let (_dir, tokens) = issuer();
        let auth = CallerAuth::from(tokens).with_external(FakeVerifier::answering(Err(
            ExternalTokenError::Refused("no".into()),
        )));
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://cluster.local/ns/a/sa/b".try_into().unwrap(),
        )];
        let cert = params.self_signed(&key).unwrap().der().to_vec();
        let certs = [cert];
        let refused = authenticate(&auth, "cluster.local", &bearer(JWT), Some(&certs)).await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);
        let (id, method) = authenticate(&auth, "cluster.local", &MetadataMap::new(), Some(&certs))
            .await
            .unwrap();
        assert_eq!(
            (id.spiffe_uri().as_str(), method),
            ("spiffe://cluster.local/ns/a/sa/b", AuthMethod::ClientCert)
        );
    }
}
