//! A child process owned by a test: own process group, output in a log file, killed on drop.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::Context;
use tempfile::TempDir;

/// How many log lines failure messages and drop dumps show.
pub const LOG_TAIL_LINES: usize = 60;

pub struct ManagedChild {
    /// Names the process in messages ("straitd", "envoy sidecar-1").
    name: String,
    child: Child,
    log_path: PathBuf,
}

impl ManagedChild {
    /// Spawns `cmd` in a new process group with stdout and stderr appended to `log_path`.
    pub fn spawn(
        name: impl Into<String>,
        mut cmd: Command,
        log_path: &Path,
    ) -> anyhow::Result<Self> {
        let name = name.into();
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening log file {}", log_path.display()))?;
        let log2 = log.try_clone().context("duplicating the log file handle")?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        // Its own group, so a kill reaches anything it spawned and a Ctrl-C in the
        // terminal running the tests doesn't race our cleanup.
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        tracing::debug!(%name, pid = child.id(), "spawned");
        Ok(Self {
            name,
            child,
            log_path: log_path.to_path_buf(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// The log's last `n` lines.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Polls `check` every `POLL_INTERVAL` until it passes; fails, with the log tail, if the
    /// process exits first or `timeout` passes (saying what `check` last said).
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: std::time::Duration,
        mut check: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        loop {
            if self.exited().is_some() {
                let name = self.name.clone();
                return Err(self.failure(&format!("{name} exited before {what}")));
            }
            match check() {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() > timeout => {
                    let name = self.name.clone();
                    return Err(
                        self.failure(&format!("{name} not {what} after {timeout:?}: {e:#}"))
                    );
                }
                Err(_) => std::thread::sleep(crate::eventually::POLL_INTERVAL),
            }
        }
    }

    /// An error for "it exited early" or "it never became ready", carrying the log tail.
    pub fn failure(&mut self, what: &str) -> anyhow::Error {
        let status = match self.exited() {
            Some(s) => format!("{} exited ({s})", self.name),
            None => format!("{} is still running", self.name),
        };
        anyhow::anyhow!(
            "{what}: {status}; last lines of {}:\n{}",
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    /// SIGKILLs the process group and reaps the process. Idempotent.
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            let group = format!("-{}", self.child.id());
            let by_group = Command::new("kill")
                .args(["-KILL", "--", &group])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !by_group {
                // No `kill` binary: at least the leader goes.
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.kill();
        // Always, not only when panicking: a test that returns `Err` fails without a panic.
        // libtest shows captured output only for failing tests, so passing ones stay quiet.
        let why = if std::thread::panicking() {
            ", test panicking"
        } else {
            ""
        };
        eprintln!(
            "---- {} (pid {}{why}) log tail, {} ----\n{}\n---- end of {} log ----",
            self.name,
            self.child.id(),
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES),
            self.name
        );
    }
}

/// A temp dir for a process's files (config, log). With `STRAIT_KEEP_LOGS=1` it is kept after
/// the test, for reading whole logs.
pub fn workdir(prefix: &str) -> anyhow::Result<TempDir> {
    let keep = std::env::var_os("STRAIT_KEEP_LOGS").is_some_and(|v| !v.is_empty() && v != "0");
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(keep)
        .tempdir()
        .with_context(|| format!("creating a temp dir for {prefix}"))?;
    if keep {
        eprintln!("keeping {}", dir.path().display());
    }
    Ok(dir)
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
