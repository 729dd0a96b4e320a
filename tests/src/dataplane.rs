//! The data plane under test, behind a trait, so every scenario runs against each of them.
//!
//! `STRAIT_DATA_PLANE` picks it: `envoy` (stock Envoy, the default) or `strait-proxy`
//! (Strait's own proxy).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use strait_model::ProxyMode;

use crate::ports::free_port;
use crate::straitd::Straitd;

/// Which ADS variant a proxy speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdsProtocol {
    #[default]
    Delta,
    Sotw,
}

impl XdsProtocol {
    /// The value of `straitctl bootstrap --xds-protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delta => "delta",
            Self::Sotw => "sotw",
        }
    }
}

/// Who a proxy is, as its node metadata tells straitd. Ports the data plane picks itself
/// (outbound, admin) are not part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySpec {
    pub node_id: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub mode: ProxyMode,
    pub xds_protocol: XdsProtocol,
    /// Gateway server port -> the port actually bound.
    pub gateway_ports: BTreeMap<u16, u16>,
    /// `None`: straitd's default for the mode.
    pub listen_address: Option<IpAddr>,
    /// The workload's service account (its identity), `default` when `None`.
    pub service_account: Option<String>,
    /// The sidecar's inbound side: (inbound port, the app's port on 127.0.0.1).
    pub inbound: Option<(u16, u16)>,
    /// Connect to straitd's TLS port with a bootstrap token (needed for mTLS keys).
    pub secure: bool,
    /// Traffic captured by iptables (`--interception redirect`): the capture ports are
    /// Istio's (15001 out, 15006 in) and the proxy runs in a pod's namespace (see `netns`).
    pub capture: Option<Capture>,
}

/// How a captured sidecar runs: the pod's addresses (`--instance-ips`), and the user and group
/// the proxy runs as, which the capture rules leave alone (`strait-proxy iptables
/// --proxy-uid/--proxy-gid`). Its binary, workdir and root certificate are made readable to
/// that user (see `netns::readable`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    pub instance_ips: Vec<IpAddr>,
    pub uid: u32,
    pub gid: u32,
}

/// The capture ports the rules redirect to by default, as Istio's.
pub const CAPTURE_OUTBOUND_PORT: u16 = 15001;
pub const CAPTURE_INBOUND_PORT: u16 = 15006;
/// The proxy's user and group, which the capture rules exclude by default.
pub const PROXY_UID: u32 = 1337;
pub const PROXY_GID: u32 = 1337;

impl ProxySpec {
    pub fn sidecar(node_id: &str, namespace: &str, labels: &[(&str, &str)]) -> ProxySpec {
        ProxySpec {
            node_id: node_id.to_string(),
            namespace: namespace.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mode: ProxyMode::Sidecar,
            xds_protocol: XdsProtocol::default(),
            gateway_ports: BTreeMap::new(),
            listen_address: None,
            service_account: None,
            inbound: None,
            secure: false,
            capture: None,
        }
    }

    /// A gateway on loopback that binds each Gateway server port in `server_ports` to a free
    /// port (read it back with [`Proxy::gateway_addr`]).
    pub fn gateway(
        node_id: &str,
        namespace: &str,
        labels: &[(&str, &str)],
        server_ports: &[u16],
    ) -> ProxySpec {
        ProxySpec {
            mode: ProxyMode::Gateway,
            gateway_ports: server_ports.iter().map(|p| (*p, free_port())).collect(),
            // Gateways default to 0.0.0.0; tests keep everything on loopback.
            listen_address: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ..ProxySpec::sidecar(node_id, namespace, labels)
        }
    }

    /// A workload with an identity, an inbound side in front of `app_port` (a free inbound port is
    /// picked), connected over straitd's TLS port.
    pub fn workload(mut self, service_account: &str, app_port: u16) -> ProxySpec {
        self.service_account = Some(service_account.to_string());
        self.inbound = Some((free_port(), app_port));
        self.secure = true;
        self
    }

    /// Connects over straitd's TLS port with a token for the spec's identity.
    pub fn secure(mut self, service_account: &str) -> ProxySpec {
        self.service_account = Some(service_account.to_string());
        self.secure = true;
        self
    }

    /// A sidecar whose traffic the pod's iptables rules capture; `instance_ips` are the pod's.
    pub fn captured(mut self, instance_ips: &[IpAddr]) -> ProxySpec {
        self.capture = Some(Capture {
            instance_ips: instance_ips.to_vec(),
            uid: PROXY_UID,
            gid: PROXY_GID,
        });
        self
    }

    /// The outbound listener's port: the capture port, or `free` in explicit mode.
    pub fn outbound_port_or(&self, free: u16) -> u16 {
        if self.capture.is_some() {
            CAPTURE_OUTBOUND_PORT
        } else {
            free
        }
    }

    /// `--interception` and `--instance-ips`, for straitctl bootstrap and strait-proxy alike.
    pub fn interception_args(&self) -> Vec<String> {
        match &self.capture {
            None => Vec::new(),
            Some(c) => {
                let ips: Vec<String> = c.instance_ips.iter().map(IpAddr::to_string).collect();
                vec![
                    "--interception".into(),
                    "redirect".into(),
                    "--instance-ips".into(),
                    ips.join(","),
                ]
            }
        }
    }

    /// The command for a proxy `program`: run as the capture's user and group, from a copy
    /// that user can run, when captured; as it is otherwise.
    pub fn proxy_command(
        &self,
        program: &std::path::Path,
    ) -> anyhow::Result<std::process::Command> {
        let Some(c) = &self.capture else {
            return Ok(std::process::Command::new(program));
        };
        let mut cmd = std::process::Command::new(crate::netns::readable(program)?);
        std::os::unix::process::CommandExt::uid(&mut cmd, c.uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, c.gid);
        Ok(cmd)
    }

    /// Lets the proxy's user into its workdir (a no-op without capture).
    pub fn share_workdir(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        if self.capture.is_some() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(())
    }

    /// The port a sidecar accepts its workload's traffic on.
    pub fn inbound_port(&self) -> Option<u16> {
        match self.capture {
            Some(_) => Some(CAPTURE_INBOUND_PORT),
            None => self.inbound.map(|(port, _)| port),
        }
    }

    pub fn with_xds_protocol(mut self, protocol: XdsProtocol) -> ProxySpec {
        self.xds_protocol = protocol;
        self
    }

    /// `k=v,k2=v2`, as `straitctl bootstrap --labels` takes them.
    pub fn labels_arg(&self) -> String {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `80=18080,443=18443`, as `straitctl bootstrap --gateway-ports` takes them.
    pub fn gateway_ports_arg(&self) -> String {
        self.gateway_ports
            .iter()
            .map(|(s, b)| format!("{s}={b}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The address to connect to for something the proxy binds on `port`.
    pub fn connect_addr(&self, port: u16) -> SocketAddr {
        let ip = match self.listen_address {
            Some(ip) if !ip.is_unspecified() => ip,
            _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        SocketAddr::new(ip, port)
    }

    /// Where a gateway listens for a Gateway server port.
    pub fn gateway_addr(&self, server_port: u16) -> SocketAddr {
        self.connect_addr(
            self.gateway_ports
                .get(&server_port)
                .copied()
                .unwrap_or(server_port),
        )
    }
}

/// A running proxy. Dropping it stops it.
pub trait Proxy: Send + Sync {
    /// Where the app sends outbound traffic (a sidecar's outbound listener).
    fn outbound_addr(&self) -> SocketAddr;
    /// Where the sidecar accepts its workload's traffic, when it has an inbound side.
    fn inbound_port(&self) -> Option<u16>;
    /// Where a gateway listens for a Gateway server port.
    fn gateway_addr(&self, server_port: u16) -> SocketAddr;
    /// The admin API, `http://127.0.0.1:PORT`.
    fn admin_url(&self) -> String;
    /// The proxy's view of its configuration.
    fn config_dump(&self) -> anyhow::Result<serde_json::Value>;
    /// Everything the proxy has logged so far.
    fn log(&self) -> String;
    /// The proxy's process id (to pin it to a core, read its CPU time and memory).
    fn pid(&self) -> u32;

    /// Serial numbers of the workload (SPIFFE) certificates the proxy holds, from its `/certs`
    /// admin page (Envoy's, and strait-proxy's in the same shape).
    fn certificate_serials(&self) -> anyhow::Result<Vec<String>> {
        let (status, body) = crate::client::get_blocking(&format!("{}/certs", self.admin_url()))?;
        anyhow::ensure!(status == 200, "/certs said {status}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body)?;
        Ok(json["certificates"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["cert_chain"].as_array().cloned().unwrap_or_default())
            .filter(|c| c["subject_alt_names"].to_string().contains("spiffe://"))
            .filter_map(|c| c["serial_number"].as_str().map(str::to_string))
            .collect())
    }
}

/// A kind of proxy that can be started against a straitd.
pub trait DataPlane: Send + Sync {
    fn name(&self) -> &'static str;
    /// Starts a proxy connected to `straitd` and returns once it has its initial configuration.
    fn start(&self, straitd: &Straitd, spec: &ProxySpec) -> anyhow::Result<Box<dyn Proxy>> {
        let target = crate::envoy::XdsTarget::for_spec(straitd, spec)?;
        self.launch(&target, spec)
    }
    /// Starts a proxy connected to the xDS server at `xds` and returns once it has its initial
    /// configuration. Runs in the calling thread's network namespace (a pod's, for capture).
    fn launch(
        &self,
        xds: &crate::envoy::XdsTarget,
        spec: &ProxySpec,
    ) -> anyhow::Result<Box<dyn Proxy>>;
}

/// The data plane chosen by `STRAIT_DATA_PLANE` (`envoy`, the default, or `strait-proxy`).
pub fn data_plane() -> Box<dyn DataPlane> {
    named(&std::env::var("STRAIT_DATA_PLANE").unwrap_or_default())
}

/// A data plane by its [`DataPlane::name`] (`""` is the default, Envoy).
pub fn named(name: &str) -> Box<dyn DataPlane> {
    match name {
        "" | "envoy" => Box::new(crate::envoy::Envoy),
        "strait-proxy" => Box::new(crate::strait_proxy::StraitProxy),
        other => panic!(
            "STRAIT_DATA_PLANE={other:?}: known data planes are \"envoy\" and \"strait-proxy\""
        ),
    }
}
