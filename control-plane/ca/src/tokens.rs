//! Bootstrap tokens: HMAC-signed, expiring claims that let a workload get its first certificate.

// Format: `strait1.<base64url(json claims)>.<base64url(hmac-sha256)>`, the MAC covering
// everything before the last dot. The key is 32 random bytes kept 0600 in the data directory,
// so tokens outlive restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::files::{self, FileError};
use crate::identity::{Identity, IdentityError};

/// The HMAC key's file name in the data directory.
pub const TOKEN_KEY_FILE: &str = "token-hmac.key";
const KEY_LEN: usize = 32;
const PREFIX: &str = "strait1";
/// How every bootstrap token starts; other bearer tokens (Kubernetes ones) never do.
pub(crate) const TOKEN_PREFIX: &str = "strait1.";
/// Far larger than any real token; bounds the work an attacker can ask for.
const MAX_TOKEN_LEN: usize = 4096;
/// Year 9999: keeps `UNIX_EPOCH + exp` representable everywhere.
const MAX_EXP: u64 = 253_402_300_799;

/// Why a token was not issued or not accepted. Messages never echo the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired at unix time {expired_at}")]
    Expired { expired_at: u64 },
    #[error("token claims are invalid: {0}")]
    InvalidClaims(#[from] IdentityError),
    #[error("token ttl {0:?} is out of range")]
    TtlOutOfRange(Duration),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("invalid token key file {}: {reason}", path.display())]
    KeyFile { path: PathBuf, reason: String },
    #[error("the system random source failed")]
    Random,
}

/// What a valid token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub namespace: String,
    pub service_account: String,
    pub expires_at: SystemTime,
}

impl TokenClaims {
    /// The bearer's identity in `trust_domain`.
    pub fn identity(&self, trust_domain: &str) -> Identity {
        Identity {
            trust_domain: trust_domain.to_owned(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireClaims {
    ns: String,
    sa: String,
    /// Unix seconds.
    exp: u64,
}

/// Creates and verifies bootstrap tokens. Cheap to clone.
#[derive(Clone)]
pub struct TokenIssuer {
    key: Arc<hmac::Key>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenIssuer { key: <redacted> }")
    }
}

// === impl TokenIssuer ===

impl TokenIssuer {
    /// Loads the HMAC key from `data_dir`, creating it (0600, dir 0700) on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, TokenError> {
        files::ensure_private_dir(data_dir)?;
        let path = data_dir.join(TOKEN_KEY_FILE);
        if !files::exists(&path)? {
            let mut fresh = Zeroizing::new(vec![0u8; KEY_LEN]);
            SystemRandom::new()
                .fill(&mut fresh)
                .map_err(|_| TokenError::Random)?;
            // straitd and straitctl may both get here first; whoever loses uses the winner's key.
            if files::create_atomic(&path, &fresh, 0o600)? {
                info!(path = %path.display(), "generated a new token key");
            }
        }
        let loose = files::loose_mode_bits(&path)?;
        if loose != 0 {
            warn!(path = %path.display(), mode = format!("{loose:03o}"), "token key file is readable by group or others");
        }
        let bytes = Zeroizing::new(files::read(&path)?);
        if bytes.len() != KEY_LEN {
            return Err(TokenError::KeyFile {
                path,
                reason: format!("expected {KEY_LEN} bytes, found {}", bytes.len()),
            });
        }
        Ok(Self {
            key: Arc::new(hmac::Key::new(hmac::HMAC_SHA256, &bytes)),
        })
    }

    /// A token for `namespace`/`service_account`, valid for `ttl` from now.
    pub fn create(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        // Any trust domain will do: only the namespace and service account are checked here.
        Identity::new("x", namespace, service_account)?;
        let exp = SystemTime::now()
            .checked_add(ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .filter(|exp| ttl >= Duration::from_secs(1) && *exp <= MAX_EXP)
            .ok_or(TokenError::TtlOutOfRange(ttl))?;
        let claims = WireClaims {
            ns: namespace.to_owned(),
            sa: service_account.to_owned(),
            exp,
        };
        let json =
            serde_json::to_vec(&claims).expect("claims of plain strings and an integer serialize");
        let signed = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(json));
        let tag = hmac::sign(&self.key, signed.as_bytes());
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())))
    }

    /// Checks the MAC (in constant time), then the claims, then expiry against `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<TokenClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let (signed, tag) = token
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("expected three dot-separated parts"))?;
        let (prefix, claims) = signed
            .split_once('.')
            .ok_or(TokenError::Malformed("expected three dot-separated parts"))?;
        if prefix != PREFIX {
            return Err(TokenError::Malformed("unknown token version"));
        }
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        hmac::verify(&self.key, signed.as_bytes(), &tag).map_err(|_| TokenError::BadSignature)?;

        // Only MAC-authenticated bytes are parsed from here on.
        let json = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        let claims: WireClaims = serde_json::from_slice(&json)
            .map_err(|_| TokenError::Malformed("claims are not valid JSON"))?;
        Identity::new("x", claims.ns.as_str(), claims.sa.as_str())?;
        if claims.exp > MAX_EXP {
            return Err(TokenError::Malformed("expiry out of range"));
        }
        let expires_at = UNIX_EPOCH + Duration::from_secs(claims.exp);
        if now >= expires_at {
            return Err(TokenError::Expired {
                expired_at: claims.exp,
            });
        }
        Ok(TokenClaims {
            namespace: claims.ns,
            service_account: claims.sa,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn issuer() -> (tempfile::TempDir, TokenIssuer) {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::load_or_create(dir.path()).unwrap();
        (dir, issuer)
    }

    #[test]
    fn round_trip_and_survives_restart() {
        let (dir, issuer) = issuer();
        let token = issuer
            .create("default", "web", Duration::from_secs(60))
            .unwrap();
        assert!(token.starts_with("strait1."));
        let claims = issuer.verify(&token, SystemTime::now()).unwrap();
        assert_eq!(
            (claims.namespace.as_str(), claims.service_account.as_str()),
            ("default", "web")
        );
        assert!(claims.expires_at > SystemTime::now() + Duration::from_secs(58));
        assert_eq!(
            claims.identity("cluster.local").spiffe_uri(),
            "spiffe://cluster.local/ns/default/sa/web"
        );

        let key_path = dir.path().join(TOKEN_KEY_FILE);
        assert_eq!(
            std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let reloaded = TokenIssuer::load_or_create(dir.path()).unwrap();
        assert_eq!(reloaded.verify(&token, SystemTime::now()).unwrap(), claims);

        // A different key refuses it.
        let (_other_dir, other) = super::tests::issuer();
        assert!(matches!(
            other.verify(&token, SystemTime::now()),
            Err(TokenError::BadSignature)
        ));
    }

    #[test]
    fn expiry_is_checked_against_now() {
        let (_dir, issuer) = issuer();
        let token = issuer
            .create("default", "web", Duration::from_secs(1))
            .unwrap();
        let later = SystemTime::now() + Duration::from_secs(3);
        assert!(matches!(
            issuer.verify(&token, later),
            Err(TokenError::Expired { .. })
        ));
        assert!(issuer.verify(&token, SystemTime::now()).is_ok());
    }

    #[test]
    fn tampering_is_detected() {
        let (_dir, issuer) = issuer();
        let token = issuer
            .create("default", "web", Duration::from_secs(60))
            .unwrap();
        let (signed, tag) = token.rsplit_once('.').unwrap();
        // Swap the claims for another identity's, keeping the old MAC.
        let forged_claims =
            URL_SAFE_NO_PAD.encode(br#"{"ns":"kube-system","sa":"admin","exp":99999999999}"#);
        let forged = format!("strait1.{forged_claims}.{tag}");
        assert!(matches!(
            issuer.verify(&forged, SystemTime::now()),
            Err(TokenError::BadSignature)
        ));
        // Flip one MAC bit.
        let mut mac = URL_SAFE_NO_PAD.decode(tag).unwrap();
        mac[0] ^= 1;
        let flipped = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac));
        assert!(matches!(
            issuer.verify(&flipped, SystemTime::now()),
            Err(TokenError::BadSignature)
        ));
        // Truncated MAC.
        let short = format!("{signed}.{}", &tag[..12]);
        assert!(matches!(
            issuer.verify(&short, SystemTime::now()),
            Err(TokenError::BadSignature)
        ));
    }

    #[test]
    fn malformed_tokens_are_named_as_such() {
        let (_dir, issuer) = issuer();
        for bad in [
            "",
            "strait1",
            "strait1.abc",
            "strait2.abc.def",
            "strait1.abc.!!!",
            &"a".repeat(5000),
        ] {
            let err = issuer.verify(bad, SystemTime::now()).unwrap_err();
            assert!(matches!(err, TokenError::Malformed(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn create_refuses_bad_names_and_zero_ttl() {
        let (_dir, issuer) = issuer();
        assert!(matches!(
            issuer.create("a/sa/b", "c", Duration::from_secs(60)),
            Err(TokenError::InvalidClaims(_))
        ));
        assert!(matches!(
            issuer.create("a", "", Duration::from_secs(60)),
            Err(TokenError::InvalidClaims(_))
        ));
        assert!(matches!(
            issuer.create("a", "b", Duration::ZERO),
            Err(TokenError::TtlOutOfRange(_))
        ));
        assert!(matches!(
            issuer.create("a", "b", Duration::MAX),
            Err(TokenError::TtlOutOfRange(_))
        ));
    }

    #[test]
    fn key_file_of_wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKEN_KEY_FILE), b"short").unwrap();
        let err = TokenIssuer::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains(TOKEN_KEY_FILE), "{err}");
    }
}
