//! Authorization policies as Envoy's RBAC filters hold them (HTTP and network): typed, evaluated
//! by the authz room.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use super::{HeaderMatcher, StringMatch};

/// One RBAC filter.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rbac {
    pub action: RbacAction,
    /// Sorted by name.
    #[serde(serialize_with = "as_map")]
    pub policies: Arc<[(Arc<str>, Policy)]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RbacAction {
    /// A request must match a policy (none: nothing is allowed).
    Allow,
    /// A request that matches a policy is denied.
    Deny,
    /// Never denies; a match is recorded (Istio's AUDIT, Envoy's `access_log_hint`).
    Log,
}

/// Matches when some permission and some principal match.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Policy {
    pub permissions: Arc<[Permission]>,
    pub principals: Arc<[Principal]>,
}

/// What the request does.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    Any,
    And(Arc<[Permission]>),
    Or(Arc<[Permission]>),
    Not(Box<Permission>),
    /// `:method`, `:authority` (or `host`) or a request header.
    Header(HeaderMatcher),
    /// The path without query or fragment.
    UrlPath(StringMatch),
    /// The local port of the downstream connection.
    DestinationPort(u16),
}

impl Permission {
    /// Whether it looks at something only an HTTP request has.
    pub fn needs_http(&self) -> bool {
        match self {
            Permission::Any | Permission::DestinationPort(_) => false,
            Permission::Header(_) | Permission::UrlPath(_) => true,
            Permission::Not(p) => p.needs_http(),
            Permission::And(all) | Permission::Or(all) => all.iter().any(Permission::needs_http),
        }
    }
}

/// Who sends it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    Any,
    And(Arc<[Principal]>),
    Or(Arc<[Principal]>),
    Not(Box<Principal>),
    /// A TLS peer whose name matches (`None`: any TLS peer). Never matches plaintext.
    Authenticated(Option<StringMatch>),
    /// The TCP peer's address.
    DirectRemoteIp(Cidr),
    /// A value in the request's dynamic metadata (the claims jwt_authn verified).
    Metadata(MetadataMatcher),
}

/// Envoy's metadata matcher: the value at `path` under the `filter` namespace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetadataMatcher {
    pub filter: Arc<str>,
    pub path: Arc<[Arc<str>]>,
    pub value: ValueMatch,
    pub invert: bool,
}

/// Envoy's `ValueMatcher`, as far as straitd uses it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueMatch {
    /// A string equal to (prefix of, ...) this.
    String(StringMatch),
    Bool(bool),
    /// The value is there (`true`) or not.
    Present(bool),
    /// A list with an element that matches.
    ListOneOf(Box<ValueMatch>),
    Or(Arc<[ValueMatch]>),
}

/// An address range; the network address is stored with its host bits cleared, as Envoy does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

fn as_map<S: Serializer>(policies: &Arc<[(Arc<str>, Policy)]>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(policies.iter().map(|(name, p)| (name, p)))
}

// === impl Cidr ===

impl Cidr {
    /// `None` when the prefix is longer than the address.
    pub fn new(address: IpAddr, prefix_len: u8) -> Option<Cidr> {
        let network = match address {
            IpAddr::V4(a) if prefix_len <= 32 => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) if prefix_len <= 128 => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
            _ => return None,
        };
        Some(Cidr {
            network,
            prefix_len,
        })
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Families never mix; an IPv4-mapped IPv6 peer counts as IPv4, as Envoy reports it.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Cidr::new(ip.to_canonical(), self.prefix_len).is_some_and(|c| c.network == self.network)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
