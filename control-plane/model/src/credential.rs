//! Credentials for gateway TLS (`credentialName`): Kubernetes Secrets read into a certificate
//! chain, its private key and an optional CA, checked here (PEM that parses, a key that matches
//! its certificate) so a malformed Secret is refused alone, naming the field. No I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A Secret's namespace and name: Istio resolves `credentialName` in the gateway workload's
/// namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialId {
    pub namespace: String,
    pub name: String,
}

impl CredentialId {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        CredentialId {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// PEM text of a private key: never printed (`Debug` says only that it is there).
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKeyPem(zeroize::Zeroizing<String>);

impl PrivateKeyPem {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<private key>")
    }
}

/// A checked certificate chain, its key, and the CA that verifies clients (MUTUAL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub id: CredentialId,
    pub certificate_chain: String,
    pub private_key: PrivateKeyPem,
    pub ca_certificates: Option<String>,
}

/// The credentials `credentialName` may name, by namespace and name.
pub type Credentials = BTreeMap<CredentialId, Arc<Credential>>;

/// Why a Secret cannot be used as a credential: names the Secret and the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Secret {secret}: {field}: {message}")]
pub struct CredentialError {
    pub secret: CredentialId,
    pub field: String,
    pub message: String,
}

/// The Secret type whose keys are `tls.crt`, `tls.key` and `ca.crt`.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// The key names of one Secret layout: certificate chain, private key, CA.
struct Layout {
    cert: &'static str,
    key: &'static str,
    ca: &'static str,
}

const KUBERNETES_TLS: Layout = Layout {
    cert: "tls.crt",
    key: "tls.key",
    ca: "ca.crt",
};
/// Istio's generic form (any Secret type).
const ISTIO_GENERIC: Layout = Layout {
    cert: "cert",
    key: "key",
    ca: "cacert",
};

impl Credential {
    /// Whether a Secret is meant as a credential at all (other Secrets are none of Strait's
    /// business): of type `kubernetes.io/tls`, or holding Istio's generic `cert` and `key`.
    pub fn is_candidate(secret_type: Option<&str>, data: &BTreeMap<String, Vec<u8>>) -> bool {
        secret_type == Some(TLS_SECRET_TYPE)
            || data.contains_key(ISTIO_GENERIC.cert)
            || data.contains_key(ISTIO_GENERIC.key)
    }

    /// Reads and checks a Secret's data (as decoded from base64 by the API client).
    pub fn from_secret(
        id: CredentialId,
        secret_type: Option<&str>,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Credential, CredentialError> {
        let fail = |field: &str, message: String| CredentialError {
            secret: id.clone(),
            field: format!("data[{field:?}]"),
            message,
        };
        let layout = if secret_type == Some(TLS_SECRET_TYPE) || data.contains_key("tls.crt") {
            KUBERNETES_TLS
        } else {
            ISTIO_GENERIC
        };
        let text = |field: &'static str| -> Result<Option<String>, CredentialError> {
            match data.get(field) {
                None => Ok(None),
                Some(bytes) => String::from_utf8(bytes.clone())
                    .map(Some)
                    .map_err(|_| fail(field, "not PEM text (not UTF-8)".into())),
            }
        };
        let required = |field: &'static str| {
            text(field)?.ok_or_else(|| fail(field, "missing: a TLS credential needs it".into()))
        };
        let chain_pem = required(layout.cert)?;
        let key_pem = zeroize::Zeroizing::new(required(layout.key)?);
        let ca_pem = text(layout.ca)?;

        let chain = certificates(&chain_pem).map_err(|m| fail(layout.cert, m))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| fail(layout.key, format!("no PEM private key: {e}")))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| fail(layout.key, format!("not a usable private key: {e}")))?;
        rustls::sign::CertifiedKey::new(chain, signing)
            .keys_match()
            .map_err(|e| {
                fail(
                    layout.key,
                    format!("does not match the certificate in {}: {e}", layout.cert),
                )
            })?;
        if let Some(ca) = &ca_pem {
            certificates(ca).map_err(|m| fail(layout.ca, m))?;
        }
        Ok(Credential {
            id,
            certificate_chain: chain_pem,
            private_key: PrivateKeyPem(key_pem),
            ca_certificates: ca_pem,
        })
    }
}

fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("malformed PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pair(host: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn data(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn id() -> CredentialId {
        CredentialId::new("istio-system", "bookinfo")
    }

    #[test]
    fn both_layouts_are_read() {
        let (cert, key) = pair("bookinfo.example.com");
        let tls = Credential::from_secret(
            id(),
            Some(TLS_SECRET_TYPE),
            &data(&[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &cert)]),
        )
        .unwrap();
        assert_eq!(tls.certificate_chain, cert);
        assert_eq!(tls.ca_certificates.as_deref(), Some(cert.as_str()));
        let generic = Credential::from_secret(
            id(),
            Some("Opaque"),
            &data(&[("cert", &cert), ("key", &key)]),
        )
        .unwrap();
        assert_eq!(generic.private_key.expose(), key);
        assert_eq!(generic.ca_certificates, None);
        assert!(
            !format!("{generic:?}").contains("PRIVATE KEY"),
            "Debug must not print the key"
        );
    }

    #[test]
    fn a_malformed_secret_is_refused_naming_the_field() {
        let (cert, key) = pair("a.example.com");
        let (_, other_key) = pair("b.example.com");
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case<'_>; 5] = [
            (&[("tls.key", &key)], "data[\"tls.crt\"]", "missing"),
            (
                &[
                    (
                        "tls.crt",
                        "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
                    ),
                    ("tls.key", &key),
                ],
                "data[\"tls.crt\"]",
                "PEM",
            ),
            (
                &[("tls.crt", &cert), ("tls.key", "junk")],
                "data[\"tls.key\"]",
                "no PEM private key",
            ),
            (
                &[("tls.crt", &cert), ("tls.key", &other_key)],
                "data[\"tls.key\"]",
                "does not match the certificate in tls.crt",
            ),
            (
                &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", "nothing")],
                "data[\"ca.crt\"]",
                "no PEM certificate",
            ),
        ];
        for (entries, field, message) in cases {
            let e =
                Credential::from_secret(id(), Some(TLS_SECRET_TYPE), &data(entries)).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(message), "{e}");
            assert!(
                e.to_string().starts_with("Secret istio-system/bookinfo: "),
                "{e}"
            );
        }
    }

    #[test]
    fn only_tls_shaped_secrets_are_candidates() {
        assert!(Credential::is_candidate(Some(TLS_SECRET_TYPE), &data(&[])));
        assert!(Credential::is_candidate(
            Some("Opaque"),
            &data(&[("cert", "x"), ("key", "y")])
        ));
        assert!(!Credential::is_candidate(
            Some("kubernetes.io/service-account-token"),
            &data(&[("token", "x")])
        ));
    }
}
