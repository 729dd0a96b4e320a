//! Stock Envoy as a data plane: bootstrapped by the real `straitctl bootstrap`, run as a process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use tempfile::TempDir;

use crate::client::get_blocking;
use crate::dataplane::{DataPlane, Proxy, ProxySpec};
use crate::eventually::POLL_INTERVAL;
use crate::ports::free_port;
use crate::process::{ManagedChild, workdir};

/// How long Envoy may take to answer on its admin port, and to become configured.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The Envoy data plane.
pub struct Envoy;

impl DataPlane for Envoy {
    fn name(&self) -> &'static str {
        "envoy"
    }

    fn launch(&self, xds: &XdsTarget, spec: &ProxySpec) -> anyhow::Result<Box<dyn Proxy>> {
        let mut proxy = Envoy::launch(xds, spec)?;
        proxy.process.wait_configured(READY_TIMEOUT)?;
        Ok(Box::new(proxy))
    }
}

impl Envoy {
    /// Bootstraps and spawns Envoy for `spec` against the xDS server at `xds`, and returns once
    /// its admin API answers, without waiting for configuration (see
    /// [`EnvoyProcess::wait_configured`]).
    pub fn launch(xds: &XdsTarget, spec: &ProxySpec) -> anyhow::Result<EnvoyProxy> {
        let workdir = workdir(&format!("envoy-{}-", spec.node_id))?;
        let outbound_port = spec.outbound_port_or(free_port());
        let admin_port = free_port();
        let bootstrap = workdir.path().join("bootstrap.json");
        straitctl_bootstrap(xds, spec, outbound_port, admin_port, &bootstrap)?;
        spec.share_workdir(workdir.path())?;
        let process = EnvoyProcess::spawn_with(
            &format!("envoy {}", spec.node_id),
            spec.proxy_command(&crate::bins::envoy_path())?,
            &bootstrap,
            admin_port,
            workdir,
        )?;
        Ok(EnvoyProxy {
            process,
            spec: spec.clone(),
            outbound_port,
        })
    }
}

/// Runs `straitctl bootstrap` for `spec`, writing the bootstrap to `out`.
/// Where a proxy finds straitd: the plaintext port, or the TLS port with a root and a token.
#[derive(Clone, Debug)]
pub struct XdsTarget {
    pub addr: SocketAddr,
    pub tls: Option<(std::path::PathBuf, String)>,
}

impl XdsTarget {
    pub fn plaintext(addr: SocketAddr) -> XdsTarget {
        XdsTarget { addr, tls: None }
    }

    /// The TLS port with a token for the spec's identity when the spec is secure.
    pub fn for_spec(straitd: &crate::Straitd, spec: &ProxySpec) -> anyhow::Result<XdsTarget> {
        if !spec.secure {
            return Ok(XdsTarget::plaintext(straitd.xds_addr()));
        }
        let sa = spec.service_account.as_deref().unwrap_or("default");
        Ok(XdsTarget {
            addr: straitd.tls_addr(),
            tls: Some((straitd.root_cert(), straitd.token(&spec.namespace, sa)?)),
        })
    }
}

pub fn straitctl_bootstrap(
    xds: &XdsTarget,
    spec: &ProxySpec,
    outbound_port: u16,
    admin_port: u16,
    out: &Path,
) -> anyhow::Result<()> {
    let mut cmd = Command::new(crate::bins::straitctl());
    cmd.arg("bootstrap")
        .args(["--node-id", &spec.node_id])
        .args(["--namespace", &spec.namespace])
        .args(["--labels", &spec.labels_arg()])
        .args(["--mode", &spec.mode.to_string()])
        .args(["--xds", &xds.addr.to_string()])
        .args(["--xds-protocol", spec.xds_protocol.as_str()])
        .args(["--outbound-port", &outbound_port.to_string()])
        .args(["--admin-port", &admin_port.to_string()])
        .arg("-o")
        .arg(out);
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
        cmd.args([
            "--inbound-port",
            &inbound.to_string(),
            "--app-port",
            &app.to_string(),
        ]);
    }
    if let Some((ca, token)) = &xds.tls {
        cmd.arg("--xds-ca-cert")
            .arg(ca)
            .args(["--token", token, "--xds-server-name", "localhost"]);
    }
    let output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{cmd:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// `envoy --mode validate -c FILE`: Ok with Envoy's output if Envoy accepts the bootstrap.
pub fn validate(bootstrap: &Path) -> anyhow::Result<String> {
    let envoy = crate::bins::envoy_path();
    let output = Command::new(&envoy)
        .args([
            "--mode",
            "validate",
            "--use-dynamic-base-id",
            "-l",
            "warning",
            "-c",
        ])
        .arg(bootstrap)
        .output()
        .with_context(|| format!("running {} --mode validate", envoy.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(
        output.status.success(),
        "envoy rejected {} ({}):\n{text}",
        bootstrap.display(),
        output.status
    );
    Ok(text)
}

/// An Envoy process and its admin API.
pub struct EnvoyProcess {
    process: ManagedChild,
    admin_port: u16,
    bootstrap: PathBuf,
    /// Holds the bootstrap and log; dropped after the process (field order).
    _workdir: TempDir,
}

impl EnvoyProcess {
    /// Runs `envoy -c bootstrap` (whose admin listens on 127.0.0.1:`admin_port`), logging into
    /// `workdir`, and returns once the admin API answers (whatever the server state).
    pub fn spawn(
        name: &str,
        bootstrap: &Path,
        admin_port: u16,
        workdir: TempDir,
    ) -> anyhow::Result<EnvoyProcess> {
        let cmd = Command::new(crate::bins::envoy_path());
        Self::spawn_with(name, cmd, bootstrap, admin_port, workdir)
    }

    /// Like [`Self::spawn`], with the command for the Envoy binary given (its user, say).
    pub fn spawn_with(
        name: &str,
        mut cmd: Command,
        bootstrap: &Path,
        admin_port: u16,
        workdir: TempDir,
    ) -> anyhow::Result<EnvoyProcess> {
        let level = std::env::var("STRAIT_ENVOY_LOG_LEVEL").unwrap_or_else(|_| "warning".into());
        cmd.arg("-c")
            .arg(bootstrap)
            // Parallel tests run many Envoys; each needs its own shared-memory base id.
            .args(["--use-dynamic-base-id", "--concurrency", "1", "-l", &level]);
        let log_path = workdir.path().join("envoy.log");
        let process = ManagedChild::spawn(name, cmd, &log_path)?;
        let mut envoy = EnvoyProcess {
            process,
            admin_port,
            bootstrap: bootstrap.to_path_buf(),
            _workdir: workdir,
        };
        let start = Instant::now();
        loop {
            if envoy.process.exited().is_some() {
                return Err(envoy.process.failure("envoy exited during startup"));
            }
            match envoy.ready() {
                Ok(_) => return Ok(envoy),
                Err(e) if start.elapsed() > READY_TIMEOUT => {
                    return Err(envoy.process.failure(&format!(
                        "envoy admin not answering after {READY_TIMEOUT:?} ({e:#})"
                    )));
                }
                Err(_) => std::thread::sleep(POLL_INTERVAL),
            }
        }
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub fn bootstrap_path(&self) -> &Path {
        &self.bootstrap
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Stops Envoy now (SIGKILL); dropping does the same.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// `GET` on the admin API; `path` starts with `/`.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        get_blocking(&format!("{}{path}", self.admin_url()))
    }

    /// `/ready`: 200 `LIVE` once initialized; 503 `PRE_INITIALIZING` while waiting for the
    /// initial CDS, `INITIALIZING` while waiting for the rest (LDS, EDS of initial clusters).
    pub fn ready(&self) -> anyhow::Result<(u16, String)> {
        let (status, body) = self.admin_get("/ready")?;
        Ok((status, body.trim().to_string()))
    }

    /// All counters and gauges (`/stats`, text format); histograms are left out.
    pub fn stats(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let (status, body) = self.admin_get("/stats")?;
        anyhow::ensure!(status == 200, "/stats said {status}: {body}");
        Ok(body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
            .collect())
    }

    /// One stat, 0 if Envoy doesn't have it (yet).
    pub fn stat(&self, name: &str) -> anyhow::Result<u64> {
        Ok(self.stats()?.get(name).copied().unwrap_or(0))
    }

    /// `/config_dump`, with EDS.
    pub fn config_dump(&self) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.admin_get("/config_dump?include_eds")?;
        anyhow::ensure!(status == 200, "/config_dump said {status}: {body}");
        serde_json::from_str(&body).context("/config_dump is not JSON")
    }

    /// Waits until `/ready` says LIVE.
    ///
    /// Envoy also goes LIVE when its initial fetches time out (15 s each for CDS and LDS) with
    /// no control plane at all, so LIVE alone doesn't prove it has config; see
    /// [`Self::wait_configured`].
    pub fn wait_live(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for(timeout, "LIVE", |e| {
            let (status, body) = e.ready()?;
            anyhow::ensure!(
                status == 200 && body == "LIVE",
                "/ready said {status} {body}"
            );
            Ok(())
        })
    }

    /// Waits until Envoy is LIVE with clusters and listeners accepted from the control plane
    /// (`cluster_manager.cds.update_success` and `listener_manager.lds.update_success` >= 1).
    pub fn wait_configured(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for(timeout, "LIVE with CDS and LDS from straitd", |e| {
            let (status, body) = e.ready()?;
            let stats = e.stats()?;
            let get = |k: &str| stats.get(k).copied().unwrap_or(0);
            let (cds, lds) = (
                get("cluster_manager.cds.update_success"),
                get("listener_manager.lds.update_success"),
            );
            anyhow::ensure!(
                status == 200 && body == "LIVE" && cds >= 1 && lds >= 1,
                "/ready said {status} {body}; control_plane.connected_state={}, \
                 cds.update_success={cds} (rejected {}), lds.update_success={lds} (rejected {})",
                get("control_plane.connected_state"),
                get("cluster_manager.cds.update_rejected"),
                get("listener_manager.lds.update_rejected"),
            );
            Ok(())
        })
    }

    fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&EnvoyProcess) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if self.process.exited().is_some() {
                return Err(self.process.failure(&format!("envoy exited before {what}")));
            }
            match check(self) {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() > timeout => {
                    return Err(self
                        .process
                        .failure(&format!("envoy not {what} after {timeout:?}: {e:#}")));
                }
                Err(_) => std::thread::sleep(POLL_INTERVAL),
            }
        }
    }
}

/// Envoy started for a [`ProxySpec`].
pub struct EnvoyProxy {
    pub process: EnvoyProcess,
    spec: ProxySpec,
    outbound_port: u16,
}

impl EnvoyProxy {
    pub fn spec(&self) -> &ProxySpec {
        &self.spec
    }
}

impl Proxy for EnvoyProxy {
    fn outbound_addr(&self) -> SocketAddr {
        self.spec.connect_addr(self.outbound_port)
    }

    fn gateway_addr(&self, server_port: u16) -> SocketAddr {
        self.spec.gateway_addr(server_port)
    }

    fn admin_url(&self) -> String {
        self.process.admin_url()
    }

    fn config_dump(&self) -> anyhow::Result<serde_json::Value> {
        self.process.config_dump()
    }

    fn inbound_port(&self) -> Option<u16> {
        self.spec.inbound_port()
    }

    fn log(&self) -> String {
        self.process.log()
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }
}
