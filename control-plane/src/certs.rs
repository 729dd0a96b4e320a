//! Workload certificates for SDS: issued by the mesh CA per identity, renewed at half their
//! lifetime, and turned into the `default` and `ROOTCA` secrets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use strait_ca::{CaError, CertificateAuthority, Identity};
use strait_translate::{ROOT_SECRET, WORKLOAD_SECRET};

struct Issued {
    chain_pem: String,
    key_pem: zeroize::Zeroizing<String>,
    renew_at: Instant,
}

/// Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct WorkloadCertificates {
    ca: CertificateAuthority,
    issued: Arc<Mutex<HashMap<String, Issued>>>,
}

fn inline(text: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.to_string())),
        ..Default::default()
    }
}

impl WorkloadCertificates {
    pub fn new(ca: CertificateAuthority) -> Self {
        WorkloadCertificates {
            ca,
            issued: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn trust_domain(&self) -> &str {
        self.ca.trust_domain()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Issued>> {
        // A panic while holding the lock leaves a consistent map (entries are replaced whole).
        self.issued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The trust bundle secret; carries no private key.
    pub fn root_secret(&self) -> Secret {
        Secret {
            name: ROOT_SECRET.to_string(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(inline(&self.ca.roots_pem())),
                    ..Default::default()
                },
            )),
        }
    }

    /// The identity's key and certificate, issued now if there is none or it is past half its
    /// lifetime, so a new one is always in place well before the old one expires.
    pub fn workload_secret(&self, identity: &Identity) -> Result<Secret, CaError> {
        let key = identity.spiffe_uri();
        let mut issued = self.lock();
        let fresh = issued
            .get(&key)
            .is_some_and(|i| Instant::now() < i.renew_at);
        if !fresh {
            let pair = self.ca.issue(identity, None)?;
            let lifetime = pair
                .cert
                .not_after
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            // The root stays out of the chain a workload presents; peers hold it in ROOTCA.
            let presented = match pair.cert.chain_pem.len() {
                0 | 1 => pair.cert.chain_pem.clone(),
                n => pair.cert.chain_pem[..n - 1].to_vec(),
            };
            tracing::info!(identity = %key, serial = %pair.cert.serial, lifetime_secs = lifetime.as_secs(), "workload certificate ready for SDS");
            issued.insert(
                key.clone(),
                Issued {
                    chain_pem: presented.concat(),
                    key_pem: pair.key_pem.clone(),
                    renew_at: Instant::now() + lifetime / 2,
                },
            );
        }
        let entry = issued
            .get(&key)
            .expect("inserted above when missing or stale");
        Ok(Secret {
            name: WORKLOAD_SECRET.to_string(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(&entry.chain_pem)),
                private_key: Some(inline(&entry.key_pem)),
                ..Default::default()
            })),
        })
    }

    /// When the next certificate is due for renewal, if any was issued.
    pub fn next_renewal(&self) -> Option<Instant> {
        self.lock().values().map(|i| i.renew_at).min()
    }

    /// Forgets an identity (its SPIFFE URI) no connected proxy holds any more: its key leaves
    /// memory, and its renewal time stops driving the controller's renewal pushes.
    pub fn forget(&self, spiffe_uri: &str) {
        self.lock().remove(spiffe_uri);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_identity_no_longer_schedules_renewals() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load(
            strait_ca::CaSource::SelfSigned {
                data_dir: dir.path().to_path_buf(),
            },
            strait_ca::CaOptions::default(),
        )
        .unwrap();
        let certs = WorkloadCertificates::new(ca);
        let web = Identity::new("cluster.local", "default", "web").unwrap();
        assert!(certs.next_renewal().is_none());
        certs.workload_secret(&web).unwrap();
        assert!(certs.next_renewal().is_some());
        certs.forget(&web.spiffe_uri());
        assert!(
            certs.next_renewal().is_none(),
            "a departed identity must not keep a renewal due"
        );
    }
}
