//! The CA's signing key: PKCS#8 (any rcgen key type) or a PKCS#1 RSA key as older cacerts ship.

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// A loaded CA key. Never printed: `Debug` names only the algorithm.
pub(crate) enum CaKey {
    Pkcs8(rcgen::KeyPair),
    /// ring reads PKCS#1 directly; rcgen (on ring) reads only PKCS#8, and Istio's sample
    /// cacerts and `openssl genrsa` before 3.0 write `RSA PRIVATE KEY`.
    RsaPkcs1 {
        key: RsaKeyPair,
        public_der: Vec<u8>,
    },
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pkcs8(k) => write!(f, "CaKey::Pkcs8({:?})", k.algorithm()),
            Self::RsaPkcs1 { .. } => f.write_str("CaKey::RsaPkcs1"),
        }
    }
}

/// Why a key file cannot be used; the caller names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("no private key PEM block found")]
    NoKey,
    #[error(
        "EC PRIVATE KEY (SEC1) is not supported; convert it with `openssl pkcs8 -topk8 -nocrypt`"
    )]
    Sec1,
    #[error("private key is not usable: {0}")]
    Unusable(String),
}

impl CaKey {
    /// Parses a PEM private key (PKCS#8, or PKCS#1 RSA).
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| KeyError::NoKey)?;
        match &der {
            PrivateKeyDer::Pkcs8(pkcs8) => rcgen::KeyPair::try_from(pkcs8.secret_pkcs8_der())
                .map(Self::Pkcs8)
                .map_err(|e| KeyError::Unusable(e.to_string())),
            PrivateKeyDer::Pkcs1(pkcs1) => {
                let key = RsaKeyPair::from_der(pkcs1.secret_pkcs1_der())
                    .map_err(|e| KeyError::Unusable(e.to_string()))?;
                let public_der = key.public_key().as_ref().to_vec();
                Ok(Self::RsaPkcs1 { key, public_der })
            }
            PrivateKeyDer::Sec1(_) => Err(KeyError::Sec1),
            _ => Err(KeyError::NoKey),
        }
    }
}

impl rcgen::PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            Self::Pkcs8(k) => k.der_bytes(),
            Self::RsaPkcs1 { public_der, .. } => public_der,
        }
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::Pkcs8(k) => k.algorithm(),
            Self::RsaPkcs1 { .. } => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            Self::Pkcs8(k) => k.sign(msg),
            Self::RsaPkcs1 { key, .. } => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut signature)
                    .map_err(|_| rcgen::Error::RingUnspecified)?;
                Ok(signature)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{PublicKeyData, SigningKey};
    use ring::signature::{ECDSA_P256_SHA256_ASN1, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    #[test]
    fn pkcs8_key_signs_verifiably() {
        let generated = rcgen::KeyPair::generate().unwrap();
        let key = CaKey::from_pem(generated.serialize_pem().as_bytes()).unwrap();
        assert_eq!(key.der_bytes(), generated.public_key_raw());
        let sig = key.sign(b"msg").unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.der_bytes())
            .verify(b"msg", &sig)
            .unwrap();
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn pkcs1_rsa_key_signs_verifiably() {
        // openssl, when present, writes the legacy PKCS#1 form cacerts often use.
        let Ok(out) = std::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "2048"])
            .stderr(std::process::Stdio::null())
            .output()
        else {
            eprintln!("openssl not on PATH; skipping the PKCS#1 check");
            return;
        };
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("BEGIN RSA PRIVATE KEY"));
        let key = CaKey::from_pem(&out.stdout).unwrap();
        assert!(matches!(key, CaKey::RsaPkcs1 { .. }));
        let sig = key.sign(b"msg").unwrap();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.der_bytes())
            .verify(b"msg", &sig)
            .unwrap();
    }

    #[test]
    fn refuses_non_keys_and_sec1() {
        assert!(matches!(
            CaKey::from_pem(b"nothing here"),
            Err(KeyError::NoKey)
        ));
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n";
        assert!(matches!(
            CaKey::from_pem(sec1.as_bytes()),
            Err(KeyError::Sec1)
        ));
    }
}
