//! A real straitd process on loopback ports, started per test and killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use tempfile::TempDir;

use crate::client::{get_blocking, post_blocking};
use crate::ports::free_port;
use crate::process::{ManagedChild, workdir};

/// How long straitd may take to answer `/readyz` with 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
pub struct StraitdOptions {
    /// The `--config-dir` straitd watches (see `ConfigDir`).
    pub config_dir: PathBuf,
    /// Appended to the command line after the harness's own flags.
    pub extra_args: Vec<String>,
    /// Where the xDS ports (plaintext and TLS) listen: 127.0.0.1 unless set (a hub's bridge
    /// address, so pods in other namespaces reach them). The admin API stays on 127.0.0.1.
    pub xds_ip: Option<std::net::IpAddr>,
    /// Environment variables for the process (e.g. `KUBECONFIG`).
    pub env: Vec<(String, String)>,
}

impl StraitdOptions {
    pub fn new(config_dir: impl Into<PathBuf>) -> Self {
        Self {
            config_dir: config_dir.into(),
            extra_args: Vec::new(),
            xds_ip: None,
            env: Vec::new(),
        }
    }
}

pub struct Straitd {
    process: ManagedChild,
    binary: PathBuf,
    options: StraitdOptions,
    xds_addr: SocketAddr,
    admin_addr: SocketAddr,
    tls_addr: SocketAddr,
    /// Holds the log file and the data dir (kept across restarts); dropped after the process.
    workdir: TempDir,
}

impl Straitd {
    /// Starts the workspace's straitd and waits until it is ready.
    pub fn start(options: StraitdOptions) -> anyhow::Result<Straitd> {
        let binary = crate::bins::straitd();
        let workdir = workdir("straitd-")?;
        let xds_ip = options
            .xds_ip
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let xds_addr = SocketAddr::new(xds_ip, free_port());
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let tls_addr = SocketAddr::new(xds_ip, free_port());
        let log_path = workdir.path().join("straitd.log");
        let addrs = Addrs {
            xds: xds_addr,
            admin: admin_addr,
            tls: tls_addr,
        };
        let process = spawn(
            &binary,
            &options,
            addrs,
            &workdir.path().join("data"),
            &log_path,
        )?;
        let mut straitd = Straitd {
            process,
            binary,
            options,
            xds_addr,
            admin_addr,
            tls_addr,
            workdir,
        };
        straitd.wait_ready()?;
        Ok(straitd)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.admin_url());
        self.process
            .wait_for("ready", READY_TIMEOUT, || match get_blocking(&url)? {
                (200, _) => Ok(()),
                (status, body) => anyhow::bail!("/readyz said {status} {}", body.trim()),
            })
    }

    /// Kills straitd (SIGKILL, no goodbye to its proxies), as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Kills straitd and starts it again on the same addresses, appending to the same log;
    /// returns once it is ready. Proxies reconnect to the same xDS address.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        let log_path = self.process.log_path().to_path_buf();
        let addrs = Addrs {
            xds: self.xds_addr,
            admin: self.admin_addr,
            tls: self.tls_addr,
        };
        self.process = spawn(
            &self.binary,
            &self.options,
            addrs,
            &self.data_dir(),
            &log_path,
        )?;
        self.wait_ready()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn xds_addr(&self) -> SocketAddr {
        self.xds_addr
    }

    /// straitd's TLS port: xDS with SDS keys, and the certificate API.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr
    }

    /// `--data-dir`: the CA root and the token key live here, and survive `restart`.
    pub fn data_dir(&self) -> PathBuf {
        self.workdir.path().join("data")
    }

    /// The mesh root certificate, for verifying straitd and workload certificates.
    pub fn root_cert(&self) -> PathBuf {
        self.data_dir().join("root-cert.pem")
    }

    /// A bootstrap token for an identity, from `straitctl token create` (valid 24h).
    pub fn token(&self, namespace: &str, service_account: &str) -> anyhow::Result<String> {
        self.token_valid_for(namespace, service_account, "24h")
    }

    /// A bootstrap token valid for `ttl` (`straitctl`'s syntax: `3s`, `1h`).
    pub fn token_valid_for(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: &str,
    ) -> anyhow::Result<String> {
        let output = Command::new(crate::bins::straitctl())
            .args([
                "token",
                "create",
                "--namespace",
                namespace,
                "--service-account",
                service_account,
                "--ttl",
                ttl,
            ])
            .arg("--data-dir")
            .arg(self.data_dir())
            .output()
            .context("running straitctl token create")?;
        anyhow::ensure!(
            output.status.success(),
            "straitctl token create failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    pub fn config_dir(&self) -> &Path {
        &self.options.config_dir
    }

    /// Everything straitd has logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// `GET` on the admin API; `path` starts with `/`.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        get_blocking(&format!("{}{path}", self.admin_url()))
    }

    /// `POST` on the admin API, e.g. `admin_post("/apply", yaml)`.
    pub fn admin_post(&self, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
        post_blocking(
            &format!("{}{path}", self.admin_url()),
            "application/yaml",
            body,
        )
    }

    /// `/debug/proxies`: one status object per connected proxy (`node_id`, `types`, ...).
    pub fn proxies(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let (status, body) = self.admin_get("/debug/proxies")?;
        anyhow::ensure!(status == 200, "/debug/proxies said {status}: {body}");
        serde_json::from_str(&body)
            .with_context(|| format!("/debug/proxies is not a JSON array: {body}"))
    }

    /// The `/debug/proxies` entry of one proxy, if it is connected.
    pub fn proxy_status(&self, node_id: &str) -> anyhow::Result<Option<serde_json::Value>> {
        Ok(self
            .proxies()?
            .into_iter()
            .find(|p| p.get("node_id").and_then(|v| v.as_str()) == Some(node_id)))
    }
}

#[derive(Clone, Copy)]
struct Addrs {
    xds: SocketAddr,
    admin: SocketAddr,
    tls: SocketAddr,
}

fn spawn(
    binary: &Path,
    options: &StraitdOptions,
    addrs: Addrs,
    data_dir: &Path,
    log_path: &Path,
) -> anyhow::Result<ManagedChild> {
    let mut cmd = Command::new(binary);
    cmd.arg("--config-dir")
        .arg(&options.config_dir)
        .arg("--xds-addr")
        .arg(addrs.xds.to_string())
        .arg("--admin-addr")
        .arg(addrs.admin.to_string())
        .arg("--xds-tls-addr")
        .arg(addrs.tls.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--log-format", "text"]);
    if let Some(ip) = options.xds_ip {
        // The serving certificate must name the address proxies dial.
        cmd.arg("--server-names")
            .arg(format!("localhost,127.0.0.1,straitd,{ip}"));
    }
    cmd.args(&options.extra_args);
    cmd.envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    ManagedChild::spawn("straitd", cmd, log_path)
}
