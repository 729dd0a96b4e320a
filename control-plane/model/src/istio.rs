//! Istio's resources as they appear in YAML: serde types that reject unknown fields.
//!
//! These are the wire form only. Nothing here is validated beyond its shape; `crate::model`
//! turns them into policy (the one validator).

pub mod networking;
pub mod security;
pub mod telemetry;

use std::collections::BTreeMap;

use serde::Deserialize;

/// The kinds Strait reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    WorkloadEntry,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
    Sidecar,
    /// Strait's own (`policy.strait.io`).
    RateLimitPolicy,
    Telemetry,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::Sidecar,
        Kind::RateLimitPolicy,
        Kind::Telemetry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::Sidecar => "Sidecar",
            Kind::RateLimitPolicy => "RateLimitPolicy",
            Kind::Telemetry => "Telemetry",
        }
    }

    /// The API group a kind belongs to.
    pub fn group(self) -> &'static str {
        match self {
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                "security.istio.io"
            }
            Kind::RateLimitPolicy => "policy.strait.io",
            Kind::Telemetry => "telemetry.istio.io",
            _ => "networking.istio.io",
        }
    }

    /// The API versions accepted for the kind's group.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                &SECURITY_VERSIONS
            }
            Kind::RateLimitPolicy => &crate::policy::POLICY_VERSIONS,
            Kind::Telemetry => &TELEMETRY_VERSIONS,
            _ => &NETWORKING_VERSIONS,
        }
    }

    /// Accepts the kind name in any case, plural and short forms (`vs`, `dr`, `gw`, `se`, `we`, `pa`, `ap`, `ra`, `sc`, `rlp`).
    pub fn parse_loose(s: &str) -> Option<Kind> {
        let lower = s.to_ascii_lowercase();
        let k = match lower.trim_end_matches('s') {
            "virtualservice" | "v" => Kind::VirtualService,
            "destinationrule" | "dr" => Kind::DestinationRule,
            "gateway" | "gw" => Kind::Gateway,
            "serviceentry" | "serviceentrie" | "se" => Kind::ServiceEntry,
            "workloadentry" | "workloadentrie" | "we" => Kind::WorkloadEntry,
            "peerauthentication" | "pa" => Kind::PeerAuthentication,
            "authorizationpolicy" | "authorizationpolicie" | "ap" => Kind::AuthorizationPolicy,
            "requestauthentication" | "ra" => Kind::RequestAuthentication,
            "sidecar" | "sc" => Kind::Sidecar,
            "ratelimitpolicy" | "ratelimitpolicie" | "rlp" => Kind::RateLimitPolicy,
            "telemetry" | "telemetrie" => Kind::Telemetry,
            _ => return None,
        };
        Some(k)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Istio API versions accepted for `networking.istio.io`.
pub const NETWORKING_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// Istio API versions accepted for `telemetry.istio.io`.
pub const TELEMETRY_VERSIONS: [&str; 2] = ["v1", "v1alpha1"];

/// Istio API versions accepted for `security.istio.io`.
pub const SECURITY_VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// Kubernetes object metadata. Server-populated fields are tolerated so that
/// `kubectl get -o yaml` output loads as it is; they carry no meaning here.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing)]
    pub uid: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub resource_version: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub generation: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub creation_timestamp: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub managed_fields: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub owner_references: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub finalizers: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub generate_name: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub deletion_timestamp: Option<serde_json::Value>,
}
