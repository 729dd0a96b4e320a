//! Strait's own proxy as a data plane: the `strait-proxy` binary, run as a process.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tempfile::TempDir;

use crate::client::get_blocking;
use crate::dataplane::{DataPlane, Proxy, ProxySpec};
use crate::ports::free_port;
use crate::process::{ManagedChild, workdir};

/// How long strait-proxy may take to have its first complete config.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The strait-proxy data plane.
pub struct StraitProxy;

impl DataPlane for StraitProxy {
    fn name(&self) -> &'static str {
        "strait-proxy"
    }

    fn launch(
        &self,
        xds: &crate::envoy::XdsTarget,
        spec: &ProxySpec,
    ) -> anyhow::Result<Box<dyn Proxy>> {
        Ok(Box::new(StraitProxyProcess::spawn(xds, spec)?))
    }
}

/// A running `strait-proxy` for one [`ProxySpec`].
pub struct StraitProxyProcess {
    process: ManagedChild,
    spec: ProxySpec,
    outbound_port: u16,
    admin_port: u16,
    /// Holds the log; dropped after the process (field order).
    _workdir: TempDir,
}

impl StraitProxyProcess {
    /// Spawns strait-proxy against straitd (the plaintext port, or the TLS port with a root
    /// and a token) and returns once `/ready` answers 200 (it has a complete config, its
    /// listeners are bound and, on the TLS port, its workload certificate).
    pub fn spawn(
        xds: &crate::envoy::XdsTarget,
        spec: &ProxySpec,
    ) -> anyhow::Result<StraitProxyProcess> {
        let workdir = workdir(&format!("strait-proxy-{}-", spec.node_id))?;
        let outbound_port = spec.outbound_port_or(free_port());
        let admin_port = free_port();
        spec.share_workdir(workdir.path())?;
        let mut cmd = spec.proxy_command(&crate::bins::cargo_bin("strait-proxy"))?;
        match &xds.tls {
            None => {
                cmd.args(["--xds", &format!("http://{}", xds.addr)]);
            }
            Some((root, token)) => {
                let token_file = workdir.path().join("token");
                std::fs::write(&token_file, token).context("writing the token file")?;
                cmd.args(["--xds", &format!("https://{}", xds.addr)])
                    .arg("--ca-root")
                    .arg(root)
                    .arg("--token-file")
                    .arg(token_file);
            }
        }
        cmd.args(["--xds-protocol", spec.xds_protocol.as_str()])
            .args(["--node-id", &spec.node_id])
            .args(["--namespace", &spec.namespace])
            .args(["--labels", &spec.labels_arg()])
            .args(["--mode", &spec.mode.to_string()])
            .args(["--outbound-port", &outbound_port.to_string()])
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .env(
                "RUST_LOG",
                std::env::var("STRAIT_PROXY_LOG").unwrap_or_else(|_| "info".into()),
            );
        if let Some(ip) = spec.listen_address {
            cmd.args(["--listen-address", &ip.to_string()]);
        }
        if !spec.gateway_ports.is_empty() {
            cmd.args(["--gateway-ports", &spec.gateway_ports_arg()]);
        }
        if let Some(sa) = &spec.service_account {
            cmd.args(["--service-account", sa]);
        }
        cmd.args(spec.interception_args());
        if let Some((inbound, app)) = spec.inbound {
            cmd.args(["--inbound-port", &inbound.to_string()])
                .args(["--app-port", &app.to_string()]);
        }
        let log = workdir.path().join("strait-proxy.log");
        let process = ManagedChild::spawn(format!("strait-proxy {}", spec.node_id), cmd, &log)?;
        let mut proxy = StraitProxyProcess {
            process,
            spec: spec.clone(),
            outbound_port,
            admin_port,
            _workdir: workdir,
        };
        proxy.wait_ready(READY_TIMEOUT)?;
        Ok(proxy)
    }

    fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        get_blocking(&format!("http://127.0.0.1:{}{path}", self.admin_port))
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/ready", self.admin_port);
        self.process
            .wait_for("ready", timeout, || match get_blocking(&url)? {
                (200, _) => Ok(()),
                (status, body) => anyhow::bail!("/ready said {status} {}", body.trim()),
            })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

impl Proxy for StraitProxyProcess {
    fn outbound_addr(&self) -> SocketAddr {
        self.spec.connect_addr(self.outbound_port)
    }

    fn inbound_port(&self) -> Option<u16> {
        self.spec.inbound_port()
    }

    fn gateway_addr(&self, server_port: u16) -> SocketAddr {
        self.spec.gateway_addr(server_port)
    }

    fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    fn config_dump(&self) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.admin_get("/config_dump")?;
        anyhow::ensure!(status == 200, "/config_dump said {status}: {body}");
        serde_json::from_str(&body).context("/config_dump is not JSON")
    }

    fn log(&self) -> String {
        self.process.log()
    }

    fn pid(&self) -> u32 {
        StraitProxyProcess::pid(self)
    }
}
