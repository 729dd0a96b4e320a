//! The system's iptables commands: which variant to use (nft or legacy), reading the nat
//! table with `-save`, and applying a transaction with `-restore --noflush`.

use std::fmt;
use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::rules::Family;

/// Which binaries to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// Like Istio: legacy if it already holds rules, else nft, else plain `iptables`.
    Auto,
    Nft,
    Legacy,
}

/// A usable set of binaries for one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub family: Family,
    /// `iptables-nft`, `ip6tables-legacy`, `iptables`...; `-save` and `-restore` are beside it.
    pub binary: String,
    /// `v1.8.9 (nf_tables)`: what `--version` prints after the program's name.
    pub version: String,
    pub nft: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "no usable {family} iptables: tried {tried} (install the `iptables` package; \
         the nat table needs kernel support)"
    )]
    NotFound { family: &'static str, tried: String },
    #[error("running {command}: {error}")]
    Spawn {
        command: String,
        error: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

// === impl Backend ===

impl Backend {
    /// Chooses the binaries as Istio's `DetectIptablesVersion` does: the legacy variant when it
    /// already holds rules (the host's or a CNI's), else nft, else the plain name. Reads only.
    pub fn detect(family: Family, choice: Choice) -> Result<Backend, BackendError> {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let legacy = format!("{base}-legacy");
        let nft = format!("{base}-nft");
        let candidates: Vec<&str> = match choice {
            Choice::Legacy => vec![&legacy],
            Choice::Nft => vec![&nft],
            Choice::Auto => vec![&legacy, &nft, base],
        };
        let mut tried = Vec::new();
        for (i, binary) in candidates.iter().enumerate() {
            tried.push(format!("{binary}-save"));
            let Ok(dump) = run(&format!("{binary}-save"), &[], None) else {
                continue;
            };
            // Istio counts lines (three or more); an empty table that some earlier probe
            // loaded prints that many, so count rules instead.
            let has_rules = dump.lines().any(|l| l.starts_with("-A "));
            let legacy_without_rules = choice == Choice::Auto && i == 0 && !has_rules;
            if legacy_without_rules {
                continue;
            }
            let version = run(binary, &["--version"], None)
                .map(|v| {
                    let v = v.trim();
                    v.split_once(' ').map_or(v, |(_, rest)| rest).to_string()
                })
                .unwrap_or_default();
            let backend = Backend {
                family,
                binary: binary.to_string(),
                nft: version.contains("nf_tables"),
                version,
            };
            tracing::debug!(binary = %backend.binary, version = %backend.version, has_rules, "iptables chosen");
            return Ok(backend);
        }
        Err(BackendError::NotFound {
            family: family.name(),
            tried: tried.join(", "),
        })
    }

    /// `-save -t nat`.
    pub fn save_nat(&self) -> Result<String, BackendError> {
        run(&format!("{}-save", self.binary), &["-t", "nat"], None)
    }

    /// `-restore --noflush`: the transaction commits whole or not at all. `test` parses and
    /// checks it without committing.
    pub fn restore(&self, input: &str, test: bool) -> Result<(), BackendError> {
        let mut args = vec!["--noflush"];
        if test {
            args.push("--test");
        }
        if !self.nft {
            // Legacy takes the xtables lock; wait for it rather than fail beside kube-proxy.
            args.push("--wait=30");
        }
        run(&format!("{}-restore", self.binary), &args, Some(input)).map(drop)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.version.is_empty() {
            f.write_str(&self.binary)
        } else {
            write!(f, "{} {}", self.binary, self.version)
        }
    }
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, BackendError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let spawn = |error| BackendError::Spawn {
        command: command.clone(),
        error,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes()).map_err(spawn)?;
    }
    let output = child.wait_with_output().map_err(spawn)?;
    if !output.status.success() {
        return Err(BackendError::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
