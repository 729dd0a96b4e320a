//! The certificate authority: loads its signing key (self-signed or Istio plugin files) and signs.

mod certs;
mod key;
mod plugin;
mod self_signed;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tracing::{debug, info};
use zeroize::Zeroizing;

use crate::csr::{self, CsrError};
use crate::files::FileError;
use crate::identity::{self, Identity, IdentityError};

use self::key::CaKey;

/// The namespace and service account in straitd's own SPIFFE identity.
pub const CONTROL_PLANE_NAMESPACE: &str = "strait-system";
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "straitd";

/// Certificates are back-dated this much so a peer whose clock lags still accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
const MIN_TTL: Duration = Duration::from_secs(1);

/// Why the CA could not load or sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("invalid CA file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("invalid CA options: {0}")]
    Options(String),
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("invalid identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("identity {identity} is outside this CA's trust domain {trust_domain}")]
    ForeignTrustDomain {
        identity: String,
        trust_domain: String,
    },
    #[error("invalid server name {name:?}: {reason}")]
    ServerName { name: String, reason: String },
    #[error("the CA's signing certificate expired at unix time {expired_at}")]
    IssuerExpired { expired_at: u64 },
    #[error("signing failed: {0}")]
    Signing(rcgen::Error),
    #[error("crypto failure: {0}")]
    Crypto(String),
}

impl CaError {
    fn ca_file(path: &Path, reason: impl Into<String>) -> Self {
        Self::CaFile {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// How the CA signs and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    /// The trust domain of every identity this CA certifies.
    pub trust_domain: String,
    /// Workload certificate lifetime when the request names none.
    pub workload_ttl: Duration,
    /// Longer requests are cut to this.
    pub max_workload_ttl: Duration,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_owned(),
            workload_ttl: Duration::from_secs(24 * 60 * 60),
            // Istio's default maximum workload certificate TTL.
            max_workload_ttl: Duration::from_secs(90 * 24 * 60 * 60),
        }
    }
}

impl CaOptions {
    fn validate(&self) -> Result<(), CaError> {
        identity::validate_trust_domain(&self.trust_domain)
            .map_err(|e| CaError::Options(e.to_string()))?;
        if self.max_workload_ttl < MIN_TTL {
            return Err(CaError::Options(format!(
                "max_workload_ttl {:?} is below the minimum of 1s",
                self.max_workload_ttl
            )));
        }
        if self.workload_ttl < MIN_TTL || self.workload_ttl > self.max_workload_ttl {
            return Err(CaError::Options(format!(
                "workload_ttl {:?} must be between 1s and max_workload_ttl {:?}",
                self.workload_ttl, self.max_workload_ttl
            )));
        }
        Ok(())
    }
}

/// Where the CA's signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// A root generated on first start and kept in `data_dir` (root-cert.pem, root-key.pem).
    SelfSigned { data_dir: PathBuf },
    /// Istio's cacerts: root-cert.pem, ca-cert.pem, ca-key.pem, cert-chain.pem.
    Plugin {
        root_cert: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        chain: PathBuf,
    },
}

impl CaSource {
    /// Plugin mode from a directory laid out as Istio's `cacerts` secret.
    pub fn plugin_dir(dir: &Path) -> Self {
        Self::Plugin {
            root_cert: dir.join("root-cert.pem"),
            cert: dir.join("ca-cert.pem"),
            key: dir.join("ca-key.pem"),
            chain: dir.join("cert-chain.pem"),
        }
    }
}

/// A signed certificate and the chain that proves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// PEM certificates: the leaf, intermediates, the root last.
    pub chain_pem: Vec<String>,
    /// The serial number, lowercase hex without leading zeros.
    pub serial: String,
    pub not_after: SystemTime,
}

/// A certificate with the private key generated for it.
#[derive(Clone)]
pub struct IssuedKeyPair {
    pub cert: IssuedCert,
    /// PKCS#8 PEM; wiped from memory on drop and never printed.
    pub key_pem: Zeroizing<String>,
}

impl fmt::Debug for IssuedKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKeyPair")
            .field("cert", &self.cert)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// What a loader hands over: the key, its certificate and what follows a leaf in chains.
struct SigningMaterial {
    key: CaKey,
    issuer_der: CertificateDer<'static>,
    /// The issuing certificate .. the root, PEM.
    chain_pem: Vec<String>,
    roots_pem: String,
    not_after: SystemTime,
}

/// The mesh's certificate authority. Cheap to clone; safe to share across threads.
#[derive(Clone)]
pub struct CertificateAuthority {
    inner: Arc<Inner>,
}

struct Inner {
    options: CaOptions,
    issuer: Issuer<'static, CaKey>,
    chain_pem: Vec<String>,
    roots_pem: String,
    issuer_not_after: SystemTime,
    rng: SystemRandom,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.inner.options.trust_domain)
            .field("chain_len", &self.inner.chain_pem.len())
            .finish_non_exhaustive()
    }
}

// === impl CertificateAuthority ===

impl CertificateAuthority {
    /// Loads (or, self-signed, creates) the signing key and checks it is fit to sign.
    pub fn load(source: CaSource, options: CaOptions) -> Result<Self, CaError> {
        options.validate()?;
        let material = match &source {
            CaSource::SelfSigned { data_dir } => self_signed::load_or_create(data_dir)?,
            CaSource::Plugin {
                root_cert,
                cert,
                key,
                chain,
            } => plugin::load(plugin::PluginFiles {
                root_cert,
                cert,
                key,
                chain,
            })?,
        };
        let issuer = Issuer::from_ca_cert_der(&material.issuer_der, material.key)
            .map_err(|e| CaError::Crypto(format!("reading the issuing certificate: {e}")))?;
        info!(trust_domain = %options.trust_domain, chain_len = material.chain_pem.len(), "certificate authority ready");
        Ok(Self {
            inner: Arc::new(Inner {
                options,
                issuer,
                chain_pem: material.chain_pem,
                roots_pem: material.roots_pem,
                issuer_not_after: material.not_after,
                rng: SystemRandom::new(),
            }),
        })
    }

    /// The trust bundle: every root certificate, PEM.
    pub fn roots_pem(&self) -> String {
        self.inner.roots_pem.clone()
    }

    pub fn trust_domain(&self) -> &str {
        &self.inner.options.trust_domain
    }

    pub fn options(&self) -> &CaOptions {
        &self.inner.options
    }

    /// straitd's own identity: `spiffe://TD/ns/strait-system/sa/straitd`.
    pub fn control_plane_identity(&self) -> Identity {
        Identity {
            trust_domain: self.inner.options.trust_domain.clone(),
            namespace: CONTROL_PLANE_NAMESPACE.to_owned(),
            service_account: CONTROL_PLANE_SERVICE_ACCOUNT.to_owned(),
        }
    }

    /// Signs a CSR for `identity` (already authenticated by the caller). Verifies the CSR's own
    /// signature, key type (ECDSA P-256/P-384, RSA >= 2048), and that its SANs are exactly the
    /// identity's SPIFFE URI (no DNS/IP/other URIs). Returns the chain leaf..root as PEM certs.
    ///
    /// `requested` of `None` or zero means the default TTL; others are clamped to
    /// `[1s, max_workload_ttl]`.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        requested: Option<Duration>,
    ) -> Result<IssuedCert, CaError> {
        self.check_identity(identity)?;
        let csr = csr::parse(csr_pem)?;
        if csr.requested != *identity {
            return Err(CsrError::SanMismatch {
                requested: csr.requested.spiffe_uri(),
                authenticated: identity.spiffe_uri(),
            }
            .into());
        }
        let ttl = self.workload_ttl(requested);
        let cert = self.sign_leaf(&csr.public_key, vec![spiffe_san(identity)?], ttl)?;
        // The service logs each grant with its peer; this is for direct library callers.
        debug!(
            %identity,
            serial = %cert.serial,
            key = %csr.key_kind,
            ttl_secs = ttl.as_secs(),
            "signed workload certificate"
        );
        Ok(cert)
    }

    /// Generates a fresh ECDSA P-256 key and a certificate for it (for SDS to stock Envoy, whose
    /// key must come from straitd). The key is returned to the caller only.
    pub fn issue(
        &self,
        identity: &Identity,
        ttl: Option<Duration>,
    ) -> Result<IssuedKeyPair, CaError> {
        self.check_identity(identity)?;
        let key = new_key()?;
        let ttl = self.workload_ttl(ttl);
        let cert = self.sign_leaf(&*key, vec![spiffe_san(identity)?], ttl)?;
        info!(identity = %identity, serial = %cert.serial, ttl_secs = ttl.as_secs(), "issued workload key and certificate");
        Ok(IssuedKeyPair {
            cert,
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }

    /// A server certificate for straitd's own TLS port: DNS SANs (IP SANs for entries that parse
    /// as addresses) plus its SPIFFE identity. `ttl` is not capped by `max_workload_ttl`.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<IssuedKeyPair, CaError> {
        let mut sans = Vec::with_capacity(dns_names.len() + 1);
        for name in dns_names {
            sans.push(server_san(name)?);
        }
        let identity = self.control_plane_identity();
        sans.push(spiffe_san(&identity)?);
        let key = new_key()?;
        let cert = self.sign_leaf(&*key, sans, ttl.max(MIN_TTL))?;
        info!(identity = %identity, names = ?dns_names, serial = %cert.serial, "issued control plane server certificate");
        Ok(IssuedKeyPair {
            cert,
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }

    fn check_identity(&self, identity: &Identity) -> Result<(), CaError> {
        identity.validate()?;
        if identity.trust_domain != self.inner.options.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                identity: identity.spiffe_uri(),
                trust_domain: self.inner.options.trust_domain.clone(),
            });
        }
        Ok(())
    }

    fn workload_ttl(&self, requested: Option<Duration>) -> Duration {
        let options = &self.inner.options;
        match requested {
            None => options.workload_ttl,
            Some(d) if d.is_zero() => options.workload_ttl,
            Some(d) => {
                let ttl = d.clamp(MIN_TTL, options.max_workload_ttl);
                if ttl != d {
                    debug!(requested = ?d, granted = ?ttl, "clamped requested certificate ttl");
                }
                ttl
            }
        }
    }

    /// Signs an end-entity certificate: empty subject, critical SAN, serverAuth + clientAuth.
    fn sign_leaf(
        &self,
        public_key: &impl PublicKeyData,
        sans: Vec<SanType>,
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        let inner = &*self.inner;
        let now = SystemTime::now();
        if now >= inner.issuer_not_after {
            return Err(CaError::IssuerExpired {
                expired_at: unix_secs(inner.issuer_not_after),
            });
        }
        // A leaf outliving its issuer would be unverifiable for the difference; stop with it.
        let not_after = ceil_seconds(now.checked_add(ttl).unwrap_or(inner.issuer_not_after))
            .min(inner.issuer_not_after);
        let (serial, serial_hex) = random_serial_with(&inner.rng)?;

        let mut params = CertificateParams::default();
        // Istio leaves the subject empty; rcgen then marks the SAN critical (RFC 5280 4.2.1.6).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_offset(now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH));
        params.not_after = to_offset(not_after);
        params.serial_number = Some(serial);

        let cert = params
            .signed_by(public_key, &inner.issuer)
            .map_err(CaError::Signing)?;
        let mut chain_pem = Vec::with_capacity(inner.chain_pem.len() + 1);
        chain_pem.push(certs::to_pem(cert.der()));
        chain_pem.extend(inner.chain_pem.iter().cloned());
        Ok(IssuedCert {
            chain_pem,
            serial: serial_hex,
            not_after,
        })
    }
}

fn spiffe_san(identity: &Identity) -> Result<SanType, CaError> {
    let uri = identity.spiffe_uri();
    let ia5 = uri
        .as_str()
        .try_into()
        .map_err(|_| IdentityError::NotSpiffe { uri: uri.clone() })?;
    Ok(SanType::URI(ia5))
}

fn server_san(name: &str) -> Result<SanType, CaError> {
    let err = |reason: &str| CaError::ServerName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(err("not a DNS name or IP address"));
    }
    let ia5 = name.try_into().map_err(|_| err("not ASCII"))?;
    Ok(SanType::DnsName(ia5))
}

/// A fresh P-256 key, wiped from memory when dropped.
fn new_key() -> Result<Zeroizing<rcgen::KeyPair>, CaError> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map(Zeroizing::new)
        .map_err(|e| CaError::Crypto(format!("generating a key: {e}")))
}

fn random_serial() -> Result<(SerialNumber, String), CaError> {
    random_serial_with(&SystemRandom::new())
}

/// 128 random bits, as Istio does; rcgen encodes them as a positive DER INTEGER.
fn random_serial_with(rng: &SystemRandom) -> Result<(SerialNumber, String), CaError> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes)
        .map_err(|_| CaError::Crypto("the system random source failed".into()))?;
    // DER drops leading zero bytes; the hex must match what the certificate shows.
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hex = hex.trim_start_matches('0');
    let hex = if hex.is_empty() {
        "0".to_owned()
    } else {
        hex.to_owned()
    };
    Ok((SerialNumber::from_slice(&bytes), hex))
}

/// X.509 times have whole seconds; round up so a certificate never expires before `t`.
fn ceil_seconds(t: SystemTime) -> SystemTime {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whole seconds, rounded down, as rcgen wants them.
fn to_offset(t: SystemTime) -> OffsetDateTime {
    let secs = i64::try_from(unix_secs(t)).unwrap_or(i64::MAX);
    // Out-of-range only past year 9999, which ceil/min against the issuer rule out.
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests;
