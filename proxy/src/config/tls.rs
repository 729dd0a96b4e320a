//! TLS settings of listeners and clusters, as the data path uses them.
//!
//! Two SDS names have a fixed meaning, as behind Istio's agent: `default` is this proxy's own
//! workload certificate (made and renewed by [`crate::identity`]), `ROOTCA` the mesh's trust
//! anchors that came with it. Any other SDS name (a gateway's `kubernetes://NAME`) comes over
//! ADS and is put in place when the config is assembled ([`Secrets`]); until it has come, what
//! uses it waits, as a warming Envoy listener does. Certificates named by file are read when
//! the config is converted.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::TrustAnchor;
use serde::{Serialize, Serializer};

use super::StringMatch;

/// What a client side of TLS does (a cluster's transport socket).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpstreamTls {
    /// The server name sent in the hello; none: no SNI.
    pub sni: Option<Arc<str>>,
    pub alpn: Vec<Arc<str>>,
    /// The certificate presented to the server, if any.
    pub certificate: Option<CertificateSource>,
    pub validation: Validation,
}

/// What a server side of TLS does (a filter chain's transport socket).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DownstreamTls {
    pub certificate: CertificateSource,
    /// How client certificates are checked; none: none are asked for.
    pub validation: Option<Validation>,
    pub require_client_certificate: bool,
    pub alpn: Vec<Arc<str>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateSource {
    /// This proxy's workload certificate (SDS `default`).
    Workload,
    /// A certificate chain and key read from files.
    Files {
        chain: Arc<str>,
        key: Arc<str>,
        #[serde(skip)]
        loaded: Loaded<CertifiedKey>,
    },
    /// A certificate and key that come over SDS; `loaded` once they have.
    Sds {
        name: Arc<str>,
        #[serde(skip)]
        loaded: Option<Loaded<CertifiedKey>>,
    },
}

/// An SDS secret as it came over ADS, converted: what [`CertificateSource::Sds`] and
/// [`RootsSource::Sds`] name.
#[derive(Clone, Debug, PartialEq)]
pub enum SdsSecret {
    Certificate(Loaded<CertifiedKey>),
    Roots(Loaded<[TrustAnchor<'static>]>),
}

/// The SDS secrets held, by name.
pub type Secrets = BTreeMap<Arc<str>, SdsSecret>;

/// How a peer's certificate is verified: its chain against the roots, then (if any are given)
/// one of its subject alternative names against the matchers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Validation {
    pub roots: RootsSource,
    pub subject_alt_names: Vec<SanMatcher>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RootsSource {
    /// The mesh roots that came with the workload certificate (SDS `ROOTCA`).
    Mesh,
    /// Roots read from a PEM file.
    File {
        path: Arc<str>,
        #[serde(skip)]
        anchors: Loaded<[TrustAnchor<'static>]>,
    },
    /// Roots that come over SDS; `anchors` once they have.
    Sds {
        name: Arc<str>,
        #[serde(skip)]
        anchors: Option<Loaded<[TrustAnchor<'static>]>>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SanMatcher {
    pub kind: SanKind,
    pub matcher: StringMatch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SanKind {
    Uri,
    Dns,
}

impl UpstreamTls {
    pub fn uses_workload_identity(&self) -> bool {
        matches!(self.certificate, Some(CertificateSource::Workload))
            || matches!(self.validation.roots, RootsSource::Mesh)
    }
}

impl DownstreamTls {
    pub fn uses_workload_identity(&self) -> bool {
        matches!(self.certificate, CertificateSource::Workload)
            || self
                .validation
                .as_ref()
                .is_some_and(|v| matches!(v.roots, RootsSource::Mesh))
    }

    /// The SDS names (other than the workload's) this needs.
    pub fn sds_names(&self) -> impl Iterator<Item = &Arc<str>> {
        let certificate = match &self.certificate {
            CertificateSource::Sds { name, .. } => Some(name),
            _ => None,
        };
        let roots = match self.validation.as_ref().map(|v| &v.roots) {
            Some(RootsSource::Sds { name, .. }) => Some(name),
            _ => None,
        };
        certificate.into_iter().chain(roots)
    }

    /// The same with its SDS secrets put in place; the name of one that is missing (or of
    /// the wrong kind) if any is.
    pub fn with_secrets(&self, secrets: &Secrets) -> Result<DownstreamTls, Arc<str>> {
        let mut out = self.clone();
        if let CertificateSource::Sds { name, loaded } = &mut out.certificate {
            match secrets.get(name) {
                Some(SdsSecret::Certificate(key)) => *loaded = Some(key.clone()),
                _ => return Err(name.clone()),
            }
        }
        if let Some(Validation {
            roots: RootsSource::Sds { name, anchors },
            ..
        }) = &mut out.validation
        {
            match secrets.get(name) {
                Some(SdsSecret::Roots(roots)) => *anchors = Some(roots.clone()),
                _ => return Err(name.clone()),
            }
        }
        Ok(out)
    }
}

/// Something read from a file at conversion: equal only to itself (a re-read is a change).
pub struct Loaded<T: ?Sized>(pub Arc<T>);

impl<T: ?Sized> Clone for Loaded<T> {
    fn clone(&self) -> Self {
        Loaded(self.0.clone())
    }
}

impl<T: ?Sized> PartialEq for Loaded<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T: ?Sized> fmt::Debug for Loaded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<loaded>")
    }
}

impl<T: ?Sized> Serialize for Loaded<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<loaded>")
    }
}
