//! Parsing and checking PKCS#10 CSRs: proof of possession, key type and size, and the requested SAN.

use std::fmt;

use rustls_pki_types::pem::{self, PemObject, SectionKind};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::identity::{Identity, IdentityError};

/// RSA keys below this are refused (NIST SP 800-131A); above the max, ring cannot verify them.
const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

/// Why a CSR is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("csr is not valid PEM: {0}")]
    Pem(String),
    #[error("csr contains no PEM block; expected -----BEGIN CERTIFICATE REQUEST-----")]
    NoPemBlock,
    #[error("expected a CERTIFICATE REQUEST PEM block, found {0}")]
    NotACsr(String),
    #[error("csr PEM holds more than one block; send exactly one CERTIFICATE REQUEST")]
    MultipleBlocks,
    #[error("csr is not a valid PKCS#10 certification request: {0}")]
    Der(String),
    #[error("unsupported csr key {0}; accepted: ECDSA P-256, ECDSA P-384, RSA 2048 to 8192 bits")]
    UnsupportedKey(String),
    #[error(
        "unsupported csr signature algorithm {0}; accepted: ECDSA with SHA-256/384, RSA PKCS#1 v1.5 with SHA-256/384/512, RSA-PSS"
    )]
    UnsupportedSignatureAlgorithm(String),
    #[error("csr signature does not verify with the public key it carries")]
    BadSignature,
    #[error("csr has no subjectAltName; it must request exactly one SPIFFE URI")]
    MissingSan,
    #[error("csr requests subjectAltName {0}; only one SPIFFE URI is allowed")]
    UnexpectedSan(String),
    #[error("csr URI SAN is not an acceptable SPIFFE ID: {0}")]
    InvalidSpiffe(IdentityError),
    #[error("csr requests identity {requested} but the caller is authenticated as {authenticated}")]
    SanMismatch {
        requested: String,
        authenticated: String,
    },
}

/// The kind of key a CSR carries, for errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Rsa { bits: usize },
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::EcdsaP384 => f.write_str("ECDSA P-384"),
            Self::Rsa { bits } => write!(f, "RSA {bits}"),
        }
    }
}

/// A CSR that proved possession of an acceptable key and asks for one SPIFFE identity.
#[derive(Debug)]
pub(crate) struct CheckedCsr {
    /// The key to certify, re-encoded by rcgen from the CSR's SubjectPublicKeyInfo.
    pub(crate) public_key: rcgen::SubjectPublicKeyInfo,
    pub(crate) key_kind: KeyKind,
    /// The identity named by the CSR's only SAN.
    pub(crate) requested: Identity,
}

/// Parses a PEM CSR and checks everything that does not depend on who is asking.
pub(crate) fn parse(csr_pem: &str) -> Result<CheckedCsr, CsrError> {
    let der = pem_to_der(csr_pem)?;
    let (rest, csr) =
        X509CertificationRequest::from_der(&der).map_err(|e| CsrError::Der(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Der(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }

    let spki = &csr.certification_request_info.subject_pki;
    let key_kind = key_kind(&csr)?;
    check_signature_algorithm(&csr, key_kind)?;
    // The CSR must be signed by the key it asks us to certify (proof of possession).
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let requested = requested_identity(&csr)?;
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| CsrError::UnsupportedKey(format!("({e})")))?;
    Ok(CheckedCsr {
        public_key,
        key_kind,
        requested,
    })
}

fn pem_to_der(csr_pem: &str) -> Result<Vec<u8>, CsrError> {
    let mut sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(csr_pem.as_bytes());
    let (kind, der) = match sections.next() {
        None => return Err(CsrError::NoPemBlock),
        Some(Err(e)) => return Err(CsrError::Pem(pem_error(&e))),
        Some(Ok(section)) => section,
    };
    if kind != SectionKind::Csr {
        return Err(CsrError::NotACsr(section_name(kind)));
    }
    match sections.next() {
        None => Ok(der),
        Some(Err(e)) => Err(CsrError::Pem(pem_error(&e))),
        Some(Ok(_)) => Err(CsrError::MultipleBlocks),
    }
}

fn pem_error(e: &pem::Error) -> String {
    match e {
        // The default rendering dumps the offending line as bytes; the message is enough.
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line".to_owned(),
        pem::Error::MissingSectionEnd { .. } => "missing END line".to_owned(),
        other => other.to_string(),
    }
}

fn section_name(kind: SectionKind) -> String {
    match kind {
        SectionKind::Certificate => "a CERTIFICATE".to_owned(),
        SectionKind::PublicKey => "a PUBLIC KEY".to_owned(),
        SectionKind::RsaPrivateKey | SectionKind::PrivateKey | SectionKind::EcPrivateKey => {
            // Never echo key material; naming the kind is enough to explain the refusal.
            "a private key (never send private keys to the CA)".to_owned()
        }
        SectionKind::Crl => "an X509 CRL".to_owned(),
        other => format!("{other:?}"),
    }
}

fn key_kind(csr: &X509CertificationRequest<'_>) -> Result<KeyKind, CsrError> {
    let spki = &csr.certification_request_info.subject_pki;
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".to_owned()))?;
        if curve == OID_EC_P256 {
            Ok(KeyKind::EcdsaP256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(KeyKind::EcdsaP384)
        } else {
            Err(CsrError::UnsupportedKey(format!("EC curve {curve}")))
        }
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => modulus_bits(rsa.modulus),
            _ => {
                return Err(CsrError::UnsupportedKey(
                    "RSA key that does not parse".to_owned(),
                ));
            }
        };
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(CsrError::UnsupportedKey(format!("RSA {bits} bits")));
        }
        Ok(KeyKind::Rsa { bits })
    } else {
        Err(CsrError::UnsupportedKey(format!("algorithm {alg}")))
    }
}

/// Bits in an unsigned big-endian modulus (DER may prefix a zero byte).
fn modulus_bits(modulus: &[u8]) -> usize {
    let significant = modulus
        .iter()
        .position(|b| *b != 0)
        .map_or(&[][..], |i| &modulus[i..]);
    match significant.first() {
        None => 0,
        Some(first) => (significant.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
    }
}

/// Refuses SHA-1 and anything else outside a short list, before any verification is attempted.
fn check_signature_algorithm(
    csr: &X509CertificationRequest<'_>,
    key: KeyKind,
) -> Result<(), CsrError> {
    let oid = &csr.signature_algorithm.algorithm;
    let ok = match key {
        KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => {
            *oid == OID_SIG_ECDSA_WITH_SHA256 || *oid == OID_SIG_ECDSA_WITH_SHA384
        }
        KeyKind::Rsa { .. } => {
            *oid == OID_PKCS1_SHA256WITHRSA
                || *oid == OID_PKCS1_SHA384WITHRSA
                || *oid == OID_PKCS1_SHA512WITHRSA
                || *oid == OID_PKCS1_RSASSAPSS
        }
    };
    if ok {
        Ok(())
    } else {
        Err(CsrError::UnsupportedSignatureAlgorithm(oid.to_id_string()))
    }
}

/// The CSR must carry exactly one SAN extension naming exactly one SPIFFE URI.
fn requested_identity(csr: &X509CertificationRequest<'_>) -> Result<Identity, CsrError> {
    let mut names = None;
    for attr in csr.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(request) = attr.parsed_attribute() else {
            continue;
        };
        for ext in &request.extensions {
            if ext.oid != OID_X509_EXT_SUBJECT_ALT_NAME {
                // Other requested extensions are never copied into certificates, so they are moot.
                continue;
            }
            let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
                return Err(CsrError::Der(
                    "subjectAltName extension does not parse".to_owned(),
                ));
            };
            if names.replace(&san.general_names).is_some() {
                return Err(CsrError::UnexpectedSan(
                    "a second subjectAltName extension".to_owned(),
                ));
            }
        }
    }
    let names = names.ok_or(CsrError::MissingSan)?;
    let mut uri = None;
    for name in names {
        match name {
            GeneralName::URI(u) if uri.is_none() => uri = Some(*u),
            other => return Err(CsrError::UnexpectedSan(describe(other))),
        }
    }
    let uri = uri.ok_or(CsrError::MissingSan)?;
    Identity::parse_spiffe(uri).map_err(CsrError::InvalidSpiffe)
}

fn describe(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(ip) => {
            let addr = <[u8; 4]>::try_from(*ip)
                .map(std::net::IpAddr::from)
                .or_else(|_| <[u8; 16]>::try_from(*ip).map(std::net::IpAddr::from));
            addr.map_or_else(
                |_| "a malformed IP address".to_owned(),
                |a| format!("IP:{a}"),
            )
        }
        GeneralName::DirectoryName(_) => "a directory name".to_owned(),
        GeneralName::OtherName(oid, _) => format!("an otherName ({oid})"),
        _ => "an unsupported name type".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

    const URI: &str = "spiffe://cluster.local/ns/default/sa/web";

    fn csr_with(key: &KeyPair, sans: Vec<SanType>) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    fn uri(u: &str) -> SanType {
        SanType::URI(u.try_into().unwrap())
    }

    #[test]
    fn accepts_p256_p384_and_rsa_2048() {
        for (alg, kind) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, KeyKind::EcdsaP256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, KeyKind::EcdsaP384),
        ] {
            let key = KeyPair::generate_for(alg).unwrap();
            let csr = parse(&csr_with(&key, vec![uri(URI)])).unwrap();
            assert_eq!(csr.key_kind, kind);
            assert_eq!(csr.requested.spiffe_uri(), URI);
            assert_eq!(
                rcgen::PublicKeyData::der_bytes(&csr.public_key),
                key.public_key_raw()
            );
        }
    }

    #[test]
    fn pem_errors_are_distinct() {
        assert_eq!(parse("").unwrap_err(), CsrError::NoPemBlock);
        assert_eq!(parse("hello world").unwrap_err(), CsrError::NoPemBlock);
        let broken =
            "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n";
        assert!(
            matches!(parse(broken), Err(CsrError::Pem(_))),
            "{:?}",
            parse(broken)
        );
        let key = KeyPair::generate().unwrap();
        let err = parse(&key.serialize_pem()).unwrap_err();
        assert!(
            matches!(&err, CsrError::NotACsr(found) if found.contains("private key")),
            "{err}"
        );
        let not_der =
            "-----BEGIN CERTIFICATE REQUEST-----\naGVsbG8=\n-----END CERTIFICATE REQUEST-----\n";
        assert!(matches!(parse(not_der), Err(CsrError::Der(_))));
        let csr = csr_with(&key, vec![uri(URI)]);
        assert_eq!(
            parse(&format!("{csr}{csr}")).unwrap_err(),
            CsrError::MultipleBlocks
        );
    }

    #[test]
    fn san_must_be_exactly_one_spiffe_uri() {
        let key = KeyPair::generate().unwrap();
        assert_eq!(
            parse(&csr_with(&key, vec![])).unwrap_err(),
            CsrError::MissingSan
        );
        let err = parse(&csr_with(
            &key,
            vec![uri(URI), SanType::DnsName("web".try_into().unwrap())],
        ))
        .unwrap_err();
        assert_eq!(err, CsrError::UnexpectedSan("DNS:web".into()));
        let err = parse(&csr_with(&key, vec![uri(URI), uri(URI)])).unwrap_err();
        assert!(matches!(err, CsrError::UnexpectedSan(_)));
        let err = parse(&csr_with(
            &key,
            vec![SanType::IpAddress([10, 0, 0, 1].into())],
        ))
        .unwrap_err();
        assert_eq!(err, CsrError::UnexpectedSan("IP:10.0.0.1".into()));
        let err = parse(&csr_with(&key, vec![uri("https://example.com/")])).unwrap_err();
        assert!(matches!(err, CsrError::InvalidSpiffe(_)), "{err}");
    }

    #[test]
    fn modulus_bits_ignores_der_padding() {
        assert_eq!(modulus_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(modulus_bits(&[0x01, 0x00]), 9);
        assert_eq!(modulus_bits(&[0x00, 0x00]), 0);
        assert_eq!(modulus_bits(&[]), 0);
    }
}
