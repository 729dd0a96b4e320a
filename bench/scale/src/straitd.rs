//! The straitd under test: a child process on free loopback ports, its admin API, and a few
//! HTTP helpers (blocking ureq calls, run off the async workers).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

pub struct Straitd {
    binary: PathBuf,
    config_dir: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    pub xds: SocketAddr,
    pub admin: SocketAddr,
    tls: SocketAddr,
    child: Option<Child>,
}

impl Straitd {
    /// Spawns straitd loading `config_dir`, with its data dir and log in `workdir`.
    pub fn spawn(binary: &Path, workdir: &Path, config_dir: &Path) -> anyhow::Result<Straitd> {
        let data_dir = workdir.join("straitd-data");
        std::fs::create_dir_all(&data_dir)?;
        let mut straitd = Straitd {
            binary: binary.to_path_buf(),
            config_dir: config_dir.to_path_buf(),
            data_dir,
            log: workdir.join("straitd.log"),
            xds: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            tls: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            child: None,
        };
        straitd.start()?;
        Ok(straitd)
    }

    /// Starts the process (again) with the same flags, appending to the same log.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config-dir")
            .arg(&self.config_dir)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--xds-addr", &self.xds.to_string()])
            .args(["--admin-addr", &self.admin.to_string()])
            .args(["--xds-tls-addr", &self.tls.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash would, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it exited on its own, and how.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn xds_uri(&self) -> String {
        format!("http://{}", self.xds)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits for `/readyz` to say 200; how long it took.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let url = self.admin_url("/readyz");
        loop {
            if let Some(status) = self.exited() {
                anyhow::bail!(
                    "straitd exited ({status}) before it was ready:\n{}",
                    self.log_tail(30)
                );
            }
            if let Ok((200, _)) = http_get(&url).await {
                return Ok(start.elapsed());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "straitd not ready within {timeout:?}:\n{}",
                self.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /apply` of multi-document YAML; an error unless straitd accepted it.
    pub async fn apply(&self, yaml: String) -> anyhow::Result<String> {
        let (status, body) = http_post(&self.admin_url("/apply"), yaml).await?;
        anyhow::ensure!(status == 200, "POST /apply: {status} {body}");
        Ok(body)
    }

    /// `/debug/proxies`: one entry per ADS stream.
    pub async fn proxies(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let (status, body) = http_get(&self.admin_url("/debug/proxies")).await?;
        anyhow::ensure!(status == 200, "/debug/proxies: {status}");
        serde_json::from_str(&body).context("parsing /debug/proxies")
    }

    pub fn version(&self) -> String {
        Command::new(&self.binary)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }
}

impl Drop for Straitd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

fn read_body(mut response: ureq::http::Response<ureq::Body>) -> anyhow::Result<(u16, String)> {
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .context("reading the response body")?;
    Ok((status, body))
}

pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let response = agent()
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        read_body(response)
    })
    .await
    .context("the HTTP task")?
}

/// A blocking POST of YAML (for a thread of its own).
pub fn post_blocking(url: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let response = agent()
        .post(url)
        .header("content-type", "application/yaml")
        .send(body.as_bytes())
        .with_context(|| format!("POST {url}"))?;
    read_body(response)
}

pub async fn http_post(url: &str, body: String) -> anyhow::Result<(u16, String)> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || post_blocking(&url, &body))
        .await
        .context("the HTTP task")?
}
