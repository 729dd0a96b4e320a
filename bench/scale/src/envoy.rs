//! Stock Envoys among the simulated clients: bootstrapped by `straitctl bootstrap` (the flags
//! the end-to-end tests use), one worker each, as sidecars of the clients' shapes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::straitd::{free_port, http_get};
use crate::xds::{Shape, TYPE_URLS};

pub struct Envoy {
    pub node_id: String,
    /// The index of the shape it is a sidecar of.
    pub shape: usize,
    pub admin_port: u16,
    child: Child,
    log: PathBuf,
}

impl Envoy {
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        envoy: &Path,
        straitctl: &Path,
        xds: std::net::SocketAddr,
        shape: &Shape,
        index: usize,
        sotw: bool,
        workdir: &Path,
    ) -> anyhow::Result<Envoy> {
        let node_id = format!("envoy-{index}.{}", shape.namespace);
        let dir = workdir.join(format!("envoy-{index}"));
        std::fs::create_dir_all(&dir)?;
        let bootstrap = dir.join("bootstrap.json");
        let admin_port = free_port()?;
        let outbound_port = free_port()?;
        let mut cmd = Command::new(straitctl);
        cmd.arg("bootstrap")
            .args(["--node-id", &node_id])
            .args(["--namespace", &shape.namespace])
            .args(["--labels", &shape.labels_arg()])
            .args(["--mode", "sidecar"])
            .args(["--service-account", &shape.app])
            .args(["--xds", &xds.to_string()])
            .args(["--xds-protocol", if sotw { "sotw" } else { "delta" }])
            .args(["--outbound-port", &outbound_port.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .arg("-o")
            .arg(&bootstrap);
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        anyhow::ensure!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = dir.join("envoy.log");
        let file = std::fs::File::create(&log)?;
        let child = Command::new(envoy)
            .arg("-c")
            .arg(&bootstrap)
            .args([
                "--use-dynamic-base-id",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawning {}", envoy.display()))?;
        Ok(Envoy {
            node_id,
            shape: shape.index,
            admin_port,
            child,
            log,
        })
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Envoy's own counters of rejected xDS updates (CDS, LDS, each EDS cluster, each RDS
    /// route), summed; and of accepted ones.
    pub async fn update_counters(&self) -> anyhow::Result<(u64, u64)> {
        let url = format!("http://127.0.0.1:{}/stats?filter=update_", self.admin_port);
        let (status, body) = http_get(&url).await?;
        anyhow::ensure!(status == 200, "{url}: {status}");
        let (mut rejected, mut success) = (0, 0);
        for line in body.lines() {
            let Some((name, value)) = line.split_once(": ") else {
                continue;
            };
            let value: u64 = value.trim().parse().unwrap_or(0);
            if name.ends_with("update_rejected") {
                rejected += value;
            } else if name.ends_with("update_success") {
                success += value;
            }
        }
        Ok((rejected, success))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What straitd's `/debug/proxies` says of a set of nodes: how many have every xDS type
/// ACKed at the version last sent, and every NACK any stream has recorded.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SyncStatus {
    pub streams: usize,
    pub synced: usize,
    /// node id -> what is not synced
    pub unsynced: BTreeMap<String, String>,
    /// NACKs over every stream straitd has (simulated clients never NACK).
    pub nacks: usize,
    pub nack_examples: Vec<String>,
    /// node -> type -> the version it ACKed last.
    pub acked: BTreeMap<String, BTreeMap<String, String>>,
}

pub fn sync_status(proxies: &[serde_json::Value], nodes: &BTreeSet<String>) -> SyncStatus {
    let mut s = SyncStatus::default();
    for p in proxies {
        let node = p["node_id"].as_str().unwrap_or_default();
        let types = p["types"].as_object();
        for (type_url, t) in types.into_iter().flatten() {
            if !t["nack"].is_null() {
                s.nacks += 1;
                if s.nack_examples.len() < 5 {
                    s.nack_examples
                        .push(format!("{node} {type_url}: {}", t["nack"]["error_detail"]));
                }
            }
        }
        if !nodes.contains(node) {
            continue;
        }
        s.streams += 1;
        let mut missing = Vec::new();
        for type_url in TYPE_URLS {
            let t = types.and_then(|m| m.get(type_url));
            match t {
                None => missing.push(format!("{} not asked for", short(type_url))),
                Some(t) => {
                    let sent = t["sent_version"].as_str();
                    let acked = t["acked_version"].as_str();
                    if let Some(v) = acked {
                        s.acked
                            .entry(node.to_string())
                            .or_default()
                            .insert(short(type_url).to_string(), v.to_string());
                    }
                    if sent.is_none() || sent != acked || !t["nack"].is_null() {
                        missing.push(format!(
                            "{} sent {:?} acked {:?}",
                            short(type_url),
                            sent,
                            acked
                        ));
                    }
                }
            }
        }
        if missing.is_empty() {
            s.synced += 1;
        } else {
            s.unsynced.insert(node.to_string(), missing.join("; "));
        }
    }
    s
}

pub fn short(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}
