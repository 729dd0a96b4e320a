//! Workload identities and their SPIFFE URIs (`spiffe://TD/ns/NS/sa/SA`).

use std::fmt;

/// The longest SPIFFE ID the SPIFFE spec allows.
const MAX_URI_LEN: usize = 2048;

/// Why a SPIFFE URI or identity is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "{uri:?} is not a SPIFFE URI (expected spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT)"
    )]
    NotSpiffe { uri: String },
    #[error("SPIFFE URI {uri:?} has path {path:?}; expected /ns/NAMESPACE/sa/SERVICE_ACCOUNT")]
    BadPath { uri: String, path: String },
    #[error("invalid trust domain {value:?}: {reason}")]
    TrustDomain { value: String, reason: &'static str },
    #[error("invalid {field} {value:?}: {reason}")]
    Segment {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("SPIFFE URI is {len} bytes long; at most {MAX_URI_LEN} are allowed")]
    TooLong { len: usize },
}

/// A workload identity: a Kubernetes-style service account in a namespace of a trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

// === impl Identity ===

impl Identity {
    /// A checked identity: every part must be valid in a SPIFFE ID.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, IdentityError> {
        let id = Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        id.validate()?;
        Ok(id)
    }

    /// `spiffe://TD/ns/NS/sa/SA`.
    pub fn spiffe_uri(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// Parses `spiffe://TD/ns/NS/sa/SA`; anything else (other paths, ports, queries, odd
    /// characters) is refused, so two different strings never name the same identity.
    pub fn parse_spiffe(uri: &str) -> Result<Identity, IdentityError> {
        if uri.len() > MAX_URI_LEN {
            return Err(IdentityError::TooLong { len: uri.len() });
        }
        let not_spiffe = || IdentityError::NotSpiffe {
            uri: uri.to_owned(),
        };
        let rest = uri.strip_prefix("spiffe://").ok_or_else(not_spiffe)?;
        let (trust_domain, path) = rest.split_once('/').ok_or_else(not_spiffe)?;
        validate_trust_domain(trust_domain)?;
        let bad_path = || IdentityError::BadPath {
            uri: uri.to_owned(),
            path: format!("/{path}"),
        };
        let mut parts = path.split('/');
        let (Some("ns"), Some(namespace), Some("sa"), Some(service_account), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad_path());
        };
        Identity::new(trust_domain, namespace, service_account)
    }

    /// Checks every part against the SPIFFE ID character rules.
    pub fn validate(&self) -> Result<(), IdentityError> {
        validate_trust_domain(&self.trust_domain)?;
        validate_segment("namespace", &self.namespace)?;
        validate_segment("service account", &self.service_account)?;
        let len = self.spiffe_uri().len();
        if len > MAX_URI_LEN {
            return Err(IdentityError::TooLong { len });
        }
        Ok(())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// SPIFFE: a trust domain is lowercase letters, digits, `.`, `-` and `_`, nothing else.
pub(crate) fn validate_trust_domain(value: &str) -> Result<(), IdentityError> {
    let err = |reason| IdentityError::TrustDomain {
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(err("must not be empty"));
    }
    if value.len() > 255 {
        return Err(err("must be at most 255 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(err(
            "only lowercase letters, digits, '.', '-' and '_' are allowed",
        ));
    }
    Ok(())
}

/// SPIFFE: a path segment is letters, digits, `.`, `-` and `_`, and not `.` or `..`.
fn validate_segment(field: &'static str, value: &str) -> Result<(), IdentityError> {
    let err = |reason| IdentityError::Segment {
        field,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(err("must not be empty"));
    }
    if value == "." || value == ".." {
        return Err(err("must not be '.' or '..'"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(err("only letters, digits, '.', '-' and '_' are allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = Identity::new("cluster.local", "default", "bookinfo-productpage").unwrap();
        let uri = id.spiffe_uri();
        assert_eq!(
            uri,
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        );
        assert_eq!(id.to_string(), uri);
        assert_eq!(Identity::parse_spiffe(&uri).unwrap(), id);
    }

    #[test]
    fn refuses_anything_but_the_istio_shape() {
        for uri in [
            "",
            "https://cluster.local/ns/a/sa/b",
            "SPIFFE://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa",
            "spiffe://cluster.local/ns/a/sa/",
            "spiffe://cluster.local/ns/a/sa/b/",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/sa/a/ns/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            "spiffe://cluster.local/ns/a/sa/b#f",
            "spiffe://cluster.local:443/ns/a/sa/b",
            "spiffe://user@cluster.local/ns/a/sa/b",
            "spiffe://Cluster.Local/ns/a/sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://cluster.local/ns/a%2Fb/sa/c",
        ] {
            assert!(Identity::parse_spiffe(uri).is_err(), "{uri:?} was accepted");
        }
        let long = format!("spiffe://cluster.local/ns/a/sa/{}", "x".repeat(MAX_URI_LEN));
        assert!(matches!(
            Identity::parse_spiffe(&long),
            Err(IdentityError::TooLong { .. })
        ));
    }

    #[test]
    fn new_validates_each_part_and_names_it() {
        let err = Identity::new("cluster.local", "a/sa/b", "c").unwrap_err();
        assert!(err.to_string().contains("namespace"), "{err}");
        let err = Identity::new("cluster.local", "a", "").unwrap_err();
        assert!(err.to_string().contains("service account"), "{err}");
        let err = Identity::new("Bad Domain", "a", "b").unwrap_err();
        assert!(err.to_string().contains("trust domain"), "{err}");
        // A hand-built identity is checked by validate().
        let id = Identity {
            trust_domain: "cluster.local".into(),
            namespace: "x/sa/y".into(),
            service_account: "z".into(),
        };
        assert!(id.validate().is_err());
    }
}
