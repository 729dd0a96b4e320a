//! A proxy as the control plane sees it: identity, mode and ports, read from xDS node metadata.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Node metadata keys. `NAMESPACE` and `LABELS` are Istio's own; the rest are Strait's.
pub mod keys {
    pub const NAMESPACE: &str = "NAMESPACE";
    pub const LABELS: &str = "LABELS";
    pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
    pub const MODE: &str = "STRAIT_MODE";
    pub const OUTBOUND_PORT: &str = "STRAIT_OUTBOUND_PORT";
    pub const LISTEN_ADDRESS: &str = "STRAIT_LISTEN_ADDRESS";
    /// `80=18080,443=18443`: where a gateway binds each Gateway server port, as a Kubernetes
    /// Service's targetPort would map it.
    pub const GATEWAY_PORTS: &str = "STRAIT_GATEWAY_PORTS";
    /// Where a sidecar accepts traffic for its workload (mTLS per PeerAuthentication).
    pub const INBOUND_PORT: &str = "STRAIT_INBOUND_PORT";
    /// The workload's own port on 127.0.0.1, where inbound traffic is forwarded.
    pub const APP_PORT: &str = "STRAIT_APP_PORT";
    /// `"true"`: the proxy makes its own key and has it certified through the CA API (as
    /// strait-proxy does), so straitd sends it no private key over SDS.
    pub const OWN_CERTIFICATE: &str = "STRAIT_OWN_CERTIFICATE";
    /// Istio's: `REDIRECT` when iptables sends the pod's traffic to the sidecar, `NONE` when the
    /// app talks to the sidecar explicitly (the default here).
    pub const INTERCEPTION_MODE: &str = "INTERCEPTION_MODE";
    /// Istio's: the workload's own addresses, comma-separated. A captured sidecar serves the
    /// service ports whose endpoints are these addresses.
    pub const INSTANCE_IPS: &str = "INSTANCE_IPS";
}

pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// Where captured inbound connections arrive (Istio's 15006).
pub const DEFAULT_INBOUND_CAPTURE_PORT: u16 = 15006;

/// How the workload's traffic reaches its sidecar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Interception {
    /// The app sends to the sidecar's outbound port and names the service in Host.
    #[default]
    None,
    /// iptables redirects the pod's TCP to the outbound port and, for inbound connections, to
    /// `inbound_port`; the sidecar routes by each connection's original destination.
    Redirect { inbound_port: u16 },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    #[default]
    Sidecar,
    Gateway,
}

impl std::str::FromStr for ProxyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sidecar" => Ok(Self::Sidecar),
            "gateway" | "router" => Ok(Self::Gateway),
            other => Err(format!(
                "expected \"sidecar\" or \"gateway\", got {other:?}"
            )),
        }
    }
}

impl std::fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sidecar => "sidecar",
            Self::Gateway => "gateway",
        })
    }
}

/// Everything translation needs to know about one proxy. Two nodes with equal `ProxyNode`s
/// (ignoring `id`) get identical configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ProxyNode {
    pub id: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    pub mode: ProxyMode,
    pub outbound_port: u16,
    pub listen_address: IpAddr,
    pub gateway_ports: BTreeMap<u16, u16>,
    /// The sidecar's inbound side, when it serves a workload: (inbound port, app port).
    pub inbound: Option<(u16, u16)>,
    /// The proxy certifies its own key; straitd sends it only the trust bundle.
    pub own_certificate: bool,
    pub interception: Interception,
    /// The workload's addresses (`INSTANCE_IPS`).
    pub instance_ips: Vec<IpAddr>,
}

/// What a proxy tells straitd about itself: the writer's side of [`ProxyNode::from_metadata`],
/// shared by `straitctl bootstrap` and strait-proxy so the two never drift apart. Unset
/// options are left out and take straitd's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeMetadata {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    pub mode: ProxyMode,
    pub outbound_port: u16,
    pub listen_address: Option<IpAddr>,
    pub gateway_ports: BTreeMap<u16, u16>,
    /// (inbound port, app port).
    pub inbound: Option<(u16, u16)>,
    pub own_certificate: bool,
    pub interception: Interception,
    pub instance_ips: Vec<IpAddr>,
}

impl NodeMetadata {
    /// The node metadata as JSON (the xDS edge turns it into a protobuf `Struct`). Values are
    /// strings, as Istio's node metadata is.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::Value;
        let mut m = serde_json::Map::new();
        m.insert(
            keys::NAMESPACE.into(),
            Value::String(self.namespace.clone()),
        );
        m.insert(
            keys::LABELS.into(),
            Value::Object(
                self.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
        if let Some(sa) = &self.service_account {
            m.insert(keys::SERVICE_ACCOUNT.into(), Value::String(sa.clone()));
        }
        m.insert(keys::MODE.into(), Value::String(self.mode.to_string()));
        m.insert(
            keys::OUTBOUND_PORT.into(),
            Value::String(self.outbound_port.to_string()),
        );
        if let Some(addr) = self.listen_address {
            m.insert(keys::LISTEN_ADDRESS.into(), Value::String(addr.to_string()));
        }
        if !self.gateway_ports.is_empty() {
            m.insert(
                keys::GATEWAY_PORTS.into(),
                Value::String(format_gateway_ports(&self.gateway_ports)),
            );
        }
        if let Some((inbound, app)) = self.inbound {
            m.insert(
                keys::INBOUND_PORT.into(),
                Value::String(inbound.to_string()),
            );
            m.insert(keys::APP_PORT.into(), Value::String(app.to_string()));
        }
        if self.own_certificate {
            m.insert(keys::OWN_CERTIFICATE.into(), Value::String("true".into()));
        }
        if let Interception::Redirect { inbound_port } = self.interception {
            m.insert(
                keys::INTERCEPTION_MODE.into(),
                Value::String("REDIRECT".into()),
            );
            m.insert(
                keys::INBOUND_PORT.into(),
                Value::String(inbound_port.to_string()),
            );
        }
        if !self.instance_ips.is_empty() {
            let ips: Vec<String> = self.instance_ips.iter().map(ToString::to_string).collect();
            m.insert(keys::INSTANCE_IPS.into(), Value::String(ips.join(",")));
        }
        m
    }
}

/// `--interception` as `straitctl bootstrap` and strait-proxy take it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InterceptionMode {
    #[default]
    None,
    Redirect,
}

impl std::str::FromStr for InterceptionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "redirect" => Ok(Self::Redirect),
            other => Err(format!("expected \"redirect\" or \"none\", got {other:?}")),
        }
    }
}

/// A sidecar's inbound side from its flags (`--interception`, `--inbound-port`, `--app-port`):
/// explicit (both ports) or none without capture; with capture, the inbound capture port
/// (default 15006), the app's ports coming from the registry.
pub fn inbound_from_flags(
    mode: InterceptionMode,
    inbound_port: Option<u16>,
    app_port: Option<u16>,
) -> Result<(Interception, Option<(u16, u16)>), String> {
    match (mode, inbound_port, app_port) {
        (InterceptionMode::None, Some(i), Some(a)) => Ok((Interception::None, Some((i, a)))),
        (InterceptionMode::None, None, None) => Ok((Interception::None, None)),
        (InterceptionMode::None, Some(_), None) => {
            Err("--inbound-port needs --app-port (or --interception redirect)".into())
        }
        (InterceptionMode::None, None, Some(_)) => Err("--app-port needs --inbound-port".into()),
        (InterceptionMode::Redirect, _, Some(_)) => Err(
            "--app-port is for the explicit sidecar: with --interception redirect the workload's ports come from the registry (its --instance-ips)".into(),
        ),
        (InterceptionMode::Redirect, port, None) => Ok((
            Interception::Redirect {
                inbound_port: port.unwrap_or(DEFAULT_INBOUND_CAPTURE_PORT),
            },
            None,
        )),
    }
}

/// `80=18080,443=18443`, as [`ProxyNode::from_metadata`] reads gateway ports.
/// A workload's SPIFFE ID: `spiffe://TD/ns/NS/sa/SA` (the one writer of the format for
/// translation and strait-proxy).
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

pub fn format_gateway_ports(ports: &BTreeMap<u16, u16>) -> String {
    ports
        .iter()
        .map(|(s, b)| format!("{s}={b}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("node {node:?}: metadata.{key}: {message}")]
pub struct NodeError {
    pub node: String,
    pub key: &'static str,
    pub message: String,
}

impl ProxyNode {
    /// The shape of the configuration this node gets: the node without its id.
    pub fn shape(&self) -> ProxyNode {
        ProxyNode {
            id: String::new(),
            ..self.clone()
        }
    }

    /// What of the node its outbound configuration depends on (`strait_translate::outbound`):
    /// mode, capture, ports, listen address, namespace and labels, and whether it has an
    /// IPv6 address; not its service account, inbound side or exact addresses. Captured pods
    /// of one Deployment share it, so they share one translation of the mesh's outbound side.
    pub fn outbound_shape(&self) -> ProxyNode {
        let v6 = self.instance_ips.iter().find(|ip| ip.is_ipv6()).copied();
        ProxyNode {
            id: String::new(),
            service_account: None,
            inbound: None,
            own_certificate: false,
            instance_ips: v6
                .map(|_| IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED))
                .into_iter()
                .collect(),
            ..self.clone()
        }
    }

    /// Reads a node from its metadata, given as JSON (the xDS edge converts the protobuf
    /// `Struct`). Missing keys take defaults; present but malformed keys are errors.
    pub fn from_metadata(
        id: &str,
        metadata: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, NodeError> {
        let err = |key: &'static str, message: String| NodeError {
            node: id.to_string(),
            key,
            message,
        };
        let string = |key: &'static str| -> Result<Option<String>, NodeError> {
            match metadata.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
                Some(other) => Err(err(key, format!("expected a string, got {other}"))),
            }
        };
        let port = |key: &'static str, value: &str| -> Result<u16, NodeError> {
            value
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    err(
                        key,
                        format!("expected a port number 1-65535, got {value:?}"),
                    )
                })
        };

        let namespace = string(keys::NAMESPACE)?.unwrap_or_else(|| "default".to_string());
        if namespace.is_empty() {
            return Err(err(keys::NAMESPACE, "must not be empty".to_string()));
        }
        let mut labels = BTreeMap::new();
        match metadata.get(keys::LABELS) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Object(map)) => {
                for (k, v) in map {
                    match v {
                        serde_json::Value::String(s) => {
                            labels.insert(k.clone(), s.clone());
                        }
                        other => {
                            return Err(err(
                                keys::LABELS,
                                format!("label {k:?}: expected a string, got {other}"),
                            ));
                        }
                    }
                }
            }
            Some(other) => {
                return Err(err(
                    keys::LABELS,
                    format!("expected a map of strings, got {other}"),
                ));
            }
        }
        let mode = match string(keys::MODE)? {
            None => ProxyMode::Sidecar,
            Some(m) => m.parse().map_err(|e| err(keys::MODE, e))?,
        };
        let outbound_port = match string(keys::OUTBOUND_PORT)? {
            None => DEFAULT_OUTBOUND_PORT,
            Some(p) => port(keys::OUTBOUND_PORT, &p)?,
        };
        let redirect = match string(keys::INTERCEPTION_MODE)?.as_deref() {
            None | Some("NONE") => false,
            Some("REDIRECT") => true,
            Some("TPROXY") => {
                return Err(err(
                    keys::INTERCEPTION_MODE,
                    "TPROXY is not supported by Strait yet; use REDIRECT".into(),
                ));
            }
            Some(other) => {
                return Err(err(
                    keys::INTERCEPTION_MODE,
                    format!("expected \"REDIRECT\" or \"NONE\", got {other:?}"),
                ));
            }
        };
        if redirect && mode == ProxyMode::Gateway {
            return Err(err(
                keys::INTERCEPTION_MODE,
                "gateways are not captured; REDIRECT is for sidecars".into(),
            ));
        }
        let listen_address = match string(keys::LISTEN_ADDRESS)? {
            None => match mode {
                ProxyMode::Sidecar if !redirect => IpAddr::from([127, 0, 0, 1]),
                _ => IpAddr::from([0, 0, 0, 0]),
            },
            Some(a) => a.parse().map_err(|_| {
                err(
                    keys::LISTEN_ADDRESS,
                    format!("expected an IP address, got {a:?}"),
                )
            })?,
        };
        let mut gateway_ports = BTreeMap::new();
        if let Some(map) = string(keys::GATEWAY_PORTS)? {
            for pair in map.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (from, to) = pair.split_once('=').ok_or_else(|| {
                    err(
                        keys::GATEWAY_PORTS,
                        format!("expected PORT=PORT pairs, got {pair:?}"),
                    )
                })?;
                gateway_ports.insert(
                    port(keys::GATEWAY_PORTS, from.trim())?,
                    port(keys::GATEWAY_PORTS, to.trim())?,
                );
            }
        }
        let mut instance_ips = Vec::new();
        for ip in string(keys::INSTANCE_IPS)?
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|ip| !ip.is_empty())
        {
            instance_ips.push(ip.parse().map_err(|_| {
                err(
                    keys::INSTANCE_IPS,
                    format!("expected comma-separated IP addresses, got {ip:?}"),
                )
            })?);
        }
        let interception = if redirect {
            if string(keys::APP_PORT)?.is_some() {
                return Err(err(
                    keys::APP_PORT,
                    "not used with INTERCEPTION_MODE REDIRECT: the workload's ports come from the services whose endpoints are its INSTANCE_IPS".into(),
                ));
            }
            let inbound_port = match string(keys::INBOUND_PORT)? {
                None => DEFAULT_INBOUND_CAPTURE_PORT,
                Some(p) => port(keys::INBOUND_PORT, &p)?,
            };
            if inbound_port == outbound_port {
                return Err(err(
                    keys::INBOUND_PORT,
                    format!(
                        "the inbound capture port must differ from the outbound one ({outbound_port})"
                    ),
                ));
            }
            Interception::Redirect { inbound_port }
        } else {
            Interception::None
        };
        let inbound = match (string(keys::INBOUND_PORT)?, string(keys::APP_PORT)?) {
            _ if redirect => None,
            (None, None) => None,
            (Some(i), Some(a)) => Some((port(keys::INBOUND_PORT, &i)?, port(keys::APP_PORT, &a)?)),
            (Some(_), None) => {
                return Err(err(
                    keys::APP_PORT,
                    "required with STRAIT_INBOUND_PORT".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(err(
                    keys::INBOUND_PORT,
                    "required with STRAIT_APP_PORT".into(),
                ));
            }
        };
        if inbound.is_some() && mode == ProxyMode::Gateway {
            return Err(err(
                keys::INBOUND_PORT,
                "gateways have no inbound side".into(),
            ));
        }
        let own_certificate = match string(keys::OWN_CERTIFICATE)?.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(err(
                    keys::OWN_CERTIFICATE,
                    format!("expected \"true\" or \"false\", got {other:?}"),
                ));
            }
        };
        Ok(ProxyNode {
            inbound,
            own_certificate,
            interception,
            instance_ips,
            id: id.to_string(),
            namespace,
            labels,
            service_account: string(keys::SERVICE_ACCOUNT)?,
            mode,
            outbound_port,
            listen_address,
            gateway_ports,
        })
    }

    /// The identity the workload holds: its namespace and service account (`default` if none).
    pub fn service_account_or_default(&self) -> &str {
        self.service_account
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
    }

    /// Whether iptables sends this sidecar its workload's traffic.
    pub fn captured(&self) -> bool {
        self.interception != Interception::None
    }

    /// The port a gateway binds for a Gateway server port.
    pub fn gateway_bind_port(&self, server_port: u16) -> u16 {
        self.gateway_ports
            .get(&server_port)
            .copied()
            .unwrap_or(server_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn defaults_make_a_sidecar_in_default() {
        let n = ProxyNode::from_metadata("a", &meta(json!({}))).unwrap();
        assert_eq!(n.namespace, "default");
        assert_eq!(n.mode, ProxyMode::Sidecar);
        assert_eq!(n.outbound_port, 15001);
        assert_eq!(n.listen_address, IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn reads_gateway_metadata() {
        let n = ProxyNode::from_metadata(
            "gw",
            &meta(
                json!({"NAMESPACE": "istio-system", "LABELS": {"istio": "ingressgateway"},
                "STRAIT_MODE": "gateway", "STRAIT_GATEWAY_PORTS": "80=18080, 443=18443"}),
            ),
        )
        .unwrap();
        assert_eq!(n.mode, ProxyMode::Gateway);
        assert_eq!(n.labels["istio"], "ingressgateway");
        assert_eq!(n.gateway_bind_port(80), 18080);
        assert_eq!(n.gateway_bind_port(8080), 8080);
    }

    #[test]
    fn written_metadata_reads_back() {
        let written = NodeMetadata {
            namespace: "shop".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            service_account: Some("web".into()),
            mode: ProxyMode::Gateway,
            outbound_port: 16001,
            listen_address: Some(IpAddr::from([127, 0, 0, 1])),
            gateway_ports: [(80, 18080), (443, 18443)].into(),
            inbound: None,
            own_certificate: true,
            ..Default::default()
        };
        let n = ProxyNode::from_metadata("gw-1", &written.to_json()).unwrap();
        assert_eq!(
            (n.namespace.as_str(), n.mode, n.outbound_port),
            ("shop", ProxyMode::Gateway, 16001)
        );
        assert_eq!(n.labels, written.labels);
        assert_eq!(n.service_account.as_deref(), Some("web"));
        assert_eq!(n.gateway_ports, written.gateway_ports);
        assert!(n.own_certificate);
        let sidecar = NodeMetadata {
            namespace: "default".into(),
            inbound: Some((15006, 8080)),
            outbound_port: 15001,
            ..Default::default()
        };
        let n = ProxyNode::from_metadata("s", &sidecar.to_json()).unwrap();
        assert_eq!(n.inbound, Some((15006, 8080)));
        assert!(!n.own_certificate);
        assert!(!n.captured());
        let captured = NodeMetadata {
            namespace: "default".into(),
            outbound_port: 15001,
            interception: Interception::Redirect {
                inbound_port: 15106,
            },
            instance_ips: vec![IpAddr::from([10, 77, 1, 2]), "fd77::2".parse().unwrap()],
            ..Default::default()
        };
        let n = ProxyNode::from_metadata("c", &captured.to_json()).unwrap();
        assert_eq!(n.interception, captured.interception);
        assert_eq!(n.instance_ips, captured.instance_ips);
        assert_eq!(n.inbound, None);
        assert_eq!(n.listen_address, IpAddr::from([0, 0, 0, 0]));
    }

    #[test]
    fn captured_sidecars_default_to_istio_ports_and_refuse_what_does_not_apply() {
        let n =
            ProxyNode::from_metadata("c", &meta(json!({"INTERCEPTION_MODE": "REDIRECT"}))).unwrap();
        assert_eq!(
            n.interception,
            Interception::Redirect {
                inbound_port: 15006
            }
        );
        for (metadata, key, fragment) in [
            (
                json!({"INTERCEPTION_MODE": "TPROXY"}),
                keys::INTERCEPTION_MODE,
                "use REDIRECT",
            ),
            (
                json!({"INTERCEPTION_MODE": "redirect"}),
                keys::INTERCEPTION_MODE,
                "\"REDIRECT\" or \"NONE\"",
            ),
            (
                json!({"INTERCEPTION_MODE": "REDIRECT", "STRAIT_MODE": "gateway"}),
                keys::INTERCEPTION_MODE,
                "gateways are not captured",
            ),
            (
                json!({"INTERCEPTION_MODE": "REDIRECT", "STRAIT_APP_PORT": "8080"}),
                keys::APP_PORT,
                "INSTANCE_IPS",
            ),
            (
                json!({"INTERCEPTION_MODE": "REDIRECT", "STRAIT_INBOUND_PORT": "15001"}),
                keys::INBOUND_PORT,
                "must differ",
            ),
            (
                json!({"INSTANCE_IPS": "10.0.0.1,nope"}),
                keys::INSTANCE_IPS,
                "\"nope\"",
            ),
        ] {
            let e = ProxyNode::from_metadata("x", &meta(metadata)).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.to_string().contains(fragment), "{e}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = ProxyNode::from_metadata("x", &meta(json!({"STRAIT_OUTBOUND_PORT": "99999"})))
            .unwrap_err();
        assert_eq!(e.key, keys::OUTBOUND_PORT);
        assert!(
            e.to_string().contains("metadata.STRAIT_OUTBOUND_PORT"),
            "{e}"
        );
        let e =
            ProxyNode::from_metadata("x", &meta(json!({"STRAIT_MODE": "ambient"}))).unwrap_err();
        assert!(e.to_string().contains("sidecar"), "{e}");
        let e = ProxyNode::from_metadata("x", &meta(json!({"LABELS": {"a": 1}}))).unwrap_err();
        assert!(e.to_string().contains("label \"a\""), "{e}");
    }
}
