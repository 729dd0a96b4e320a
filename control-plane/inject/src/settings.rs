//! The injection settings: the mesh-wide choices a pod's annotations start from. The chart's
//! injection ConfigMap holds them as YAML; every field has a default, so `{}` is a valid file.

use serde::{Deserialize, Serialize};

use crate::capture::{CidrList, PortList, Selection};
use crate::error::SettingsError;
use crate::quantity::Quantity;

/// The image used when the settings name none: the strait-proxy of this release.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/strait-mesh/strait-proxy:",
    env!("CARGO_PKG_VERSION")
);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct InjectSettings {
    /// The strait-proxy image, for the proxy and for the init container (its entrypoint is
    /// `strait-proxy`).
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never` [default: left to Kubernetes].
    pub image_pull_policy: Option<String>,
    /// straitd's TLS port, as HOST:PORT: the proxy gets its certificate and its xDS there.
    pub xds_address: String,
    /// The ConfigMap holding the mesh root (PEM), mounted read-only into the proxy.
    pub ca_root_config_map: String,
    /// The ConfigMap's key for the root.
    pub ca_root_key: String,
    /// The mesh's trust domain (`spiffe://<trust-domain>/ns/…`).
    pub trust_domain: String,
    /// The audience of the projected ServiceAccount token the proxy proves its identity with.
    pub token_audience: String,
    pub token_expiration_seconds: i64,
    /// The proxy's user and group: their traffic is never captured.
    pub proxy_uid: i64,
    pub proxy_gid: i64,
    pub ports: ProxyPorts,
    pub resources: ProxyResources,
    /// Run the proxy as a native sidecar (an init container with `restartPolicy: Always`,
    /// Kubernetes 1.29 and later): it starts before the app and ends after it, and Jobs
    /// complete. Without: a regular container.
    pub native_sidecars: bool,
    /// Without native sidecars: start the proxy first and hold the app until it is ready.
    pub hold_application_until_proxy_starts: bool,
    /// Send the app's httpGet and tcpSocket probes through the proxy (`/app-health/…` on the
    /// admin port), which performs them from inside the pod: with capture, the kubelet's own
    /// would meet the proxy (and STRICT mTLS). Istio's name; a pod's
    /// `sidecar.istio.io/rewriteAppHTTPProbers` annotation overrides it.
    #[serde(rename = "rewriteAppHTTPProbe")]
    pub rewrite_app_http_probe: bool,
    pub capture: CaptureSettings,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProxyPorts {
    /// Where captured outbound connections go.
    pub outbound: u16,
    /// Where captured inbound connections go.
    pub inbound: u16,
    /// The admin API (`/ready`); bound on all addresses so the kubelet can probe it, and never
    /// captured.
    pub admin: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProxyResources {
    pub requests: CpuMemory,
    pub limits: CpuMemory,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CpuMemory {
    pub cpu: Option<Quantity>,
    pub memory: Option<Quantity>,
}

/// The capture defaults; a pod's `traffic.sidecar.istio.io/*` annotation replaces the matching
/// one, except `excludeInboundPorts`, which adds to it (as Istio's fixed exclusions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CaptureSettings {
    pub include_outbound_cidrs: Selection<CidrList>,
    pub exclude_outbound_cidrs: CidrList,
    pub include_outbound_ports: PortList,
    pub exclude_outbound_ports: PortList,
    pub include_inbound_ports: Selection<PortList>,
    /// Never captured inbound, whatever the pod says (the admin port is added to them).
    pub exclude_inbound_ports: PortList,
    /// Capture IPv6 as well (ip6tables); IPv6 ranges in the lists need it.
    pub ipv6: bool,
}

// === impl InjectSettings ===

impl Default for InjectSettings {
    fn default() -> Self {
        InjectSettings {
            image: DEFAULT_IMAGE.to_string(),
            image_pull_policy: None,
            xds_address: "straitd.strait-system.svc:15012".to_string(),
            ca_root_config_map: "strait-ca-root".to_string(),
            ca_root_key: "root-cert.pem".to_string(),
            trust_domain: "cluster.local".to_string(),
            token_audience: "strait-ca".to_string(),
            token_expiration_seconds: 43200,
            proxy_uid: 1337,
            proxy_gid: 1337,
            ports: ProxyPorts::default(),
            resources: ProxyResources::default(),
            native_sidecars: true,
            hold_application_until_proxy_starts: true,
            rewrite_app_http_probe: true,
            capture: CaptureSettings::default(),
        }
    }
}

impl Default for ProxyPorts {
    fn default() -> Self {
        ProxyPorts {
            outbound: 15001,
            inbound: 15006,
            admin: 15000,
        }
    }
}

impl Default for ProxyResources {
    /// Istio's sidecar defaults.
    fn default() -> Self {
        let q = |text: &str| Quantity::parse(text).ok();
        ProxyResources {
            requests: CpuMemory {
                cpu: q("100m"),
                memory: q("128Mi"),
            },
            limits: CpuMemory {
                cpu: q("2000m"),
                memory: q("1Gi"),
            },
        }
    }
}

impl Default for CaptureSettings {
    fn default() -> Self {
        CaptureSettings {
            include_outbound_cidrs: Selection::All,
            exclude_outbound_cidrs: CidrList::default(),
            include_outbound_ports: PortList::default(),
            exclude_outbound_ports: PortList::default(),
            include_inbound_ports: Selection::All,
            // Istio's: Envoy's Prometheus port, the health port, pilot-agent's status port.
            exclude_inbound_ports: PortList(vec![15090, 15021, 15020]),
            ipv6: false,
        }
    }
}

impl InjectSettings {
    /// Reads settings YAML (empty text: the defaults) and checks them.
    pub fn from_yaml(text: &str) -> Result<InjectSettings, SettingsError> {
        let value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| SettingsError {
                path: String::new(),
                message: format!("malformed YAML: {e}"),
            })?;
        let settings: InjectSettings = if value.is_null() {
            InjectSettings::default()
        } else {
            // From the value, so messages carry the field path only once.
            serde_path_to_error::deserialize(value).map_err(|e| SettingsError {
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?
        };
        settings.validate()?;
        Ok(settings)
    }

    /// What the types cannot say: addresses, distinct ports, ids, IPv6 ranges without IPv6.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let err = |path: &str, message: String| {
            Err(SettingsError {
                path: path.to_string(),
                message,
            })
        };
        if self.image.trim().is_empty() {
            return err("image", "must name an image".into());
        }
        if let Some(policy) = &self.image_pull_policy
            && !["Always", "IfNotPresent", "Never"].contains(&policy.as_str())
        {
            return err(
                "imagePullPolicy",
                format!("expected Always, IfNotPresent or Never, got {policy:?}"),
            );
        }
        if let Err(message) = check_host_port(&self.xds_address) {
            return err("xdsAddress", message);
        }
        for (path, value) in [
            ("caRootConfigMap", &self.ca_root_config_map),
            ("caRootKey", &self.ca_root_key),
            ("trustDomain", &self.trust_domain),
            ("tokenAudience", &self.token_audience),
        ] {
            if value.trim().is_empty() {
                return err(path, "must not be empty".into());
            }
        }
        if self.token_expiration_seconds < 600 {
            return err(
                "tokenExpirationSeconds",
                format!(
                    "{} is below Kubernetes' minimum of 600",
                    self.token_expiration_seconds
                ),
            );
        }
        for (path, id) in [("proxyUid", self.proxy_uid), ("proxyGid", self.proxy_gid)] {
            if !(1..=i64::from(u32::MAX)).contains(&id) {
                return err(
                    path,
                    format!("{id}: the proxy runs as a non-root id (1 and up)"),
                );
            }
        }
        let ports = [
            ("ports.outbound", self.ports.outbound),
            ("ports.inbound", self.ports.inbound),
            ("ports.admin", self.ports.admin),
        ];
        for (i, (path, port)) in ports.iter().enumerate() {
            if *port == 0 {
                return err(path, "port 0 is not a port".into());
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                return err(path, format!("{port} is also {other}"));
            }
        }
        let capture = &self.capture;
        for (path, v6) in [
            (
                "capture.includeOutboundCidrs",
                capture.include_outbound_cidrs.has_ipv6(),
            ),
            (
                "capture.excludeOutboundCidrs",
                capture.exclude_outbound_cidrs.has_ipv6(),
            ),
        ] {
            if v6 && !capture.ipv6 {
                return err(path, "an IPv6 range needs capture.ipv6: true".into());
            }
        }
        Ok(())
    }
}

/// HOST:PORT, an IPv6 host in brackets.
fn check_host_port(text: &str) -> Result<(), String> {
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("expected HOST:PORT, got {text:?}"));
    };
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.is_empty() || (host.contains(':') && !bracketed) || host.contains('/') {
        return Err(format!(
            "expected HOST:PORT (an IPv6 address in brackets), got {text:?}"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("{port:?} is not a port number (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_settings_are_the_defaults() {
        let settings = InjectSettings::from_yaml("").unwrap();
        assert_eq!(settings, InjectSettings::default());
        assert_eq!(InjectSettings::from_yaml("{}\n").unwrap(), settings);
        assert!(settings.image.ends_with(env!("CARGO_PKG_VERSION")));
        assert_eq!(settings.xds_address, "straitd.strait-system.svc:15012");
    }

    #[test]
    fn settings_round_trip_through_yaml() {
        let settings = InjectSettings::default();
        let text = serde_yaml_ng::to_string(&settings).unwrap();
        assert_eq!(InjectSettings::from_yaml(&text).unwrap(), settings);
    }

    #[test]
    fn errors_name_the_field() {
        let err = |text: &str| InjectSettings::from_yaml(text).unwrap_err().to_string();
        assert!(
            err("image: x\nimagee: y\n").starts_with("imagee: unknown field `imagee`"),
            "{}",
            err("image: x\nimagee: y\n")
        );
        let e = err("capture:\n  excludeInboundPorts: '15020,http'\n");
        assert!(
            e.starts_with("capture.excludeInboundPorts: \"http\": not a port number"),
            "{e}"
        );
        let e = err("resources:\n  limits:\n    cpu: 2 cores\n");
        assert!(e.starts_with("resources.limits.cpu: \"2 cores\""), "{e}");
        assert_eq!(
            err("xdsAddress: straitd\n"),
            "xdsAddress: expected HOST:PORT, got \"straitd\""
        );
        assert_eq!(
            err("ports: {admin: 15001}\n"),
            "ports.admin: 15001 is also ports.outbound"
        );
        assert_eq!(
            err("proxyUid: 0\n"),
            "proxyUid: 0: the proxy runs as a non-root id (1 and up)"
        );
        assert_eq!(
            err("capture: {excludeOutboundCidrs: 'fd00::/8'}\n"),
            "capture.excludeOutboundCidrs: an IPv6 range needs capture.ipv6: true"
        );
        assert!(
            InjectSettings::from_yaml("capture: {excludeOutboundCidrs: 'fd00::/8', ipv6: true}")
                .is_ok()
        );
        assert_eq!(
            err("tokenExpirationSeconds: 60\n"),
            "tokenExpirationSeconds: 60 is below Kubernetes' minimum of 600"
        );
        assert!(check_host_port("[::1]:15012").is_ok());
        assert!(check_host_port("::1:15012").is_err());
    }
}
