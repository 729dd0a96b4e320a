//! `strait-proxy iptables`: the flags, and the run that validates, plans, checks and commits.

use std::io::{self, Write};

use crate::backend::{Backend, BackendError, Choice};
use crate::restore::{self, NatTable};
use crate::rules::{self, Family, RuleSet};
use crate::settings::{Raw, Settings, SettingsError, defaults};

/// Install the sidecar's traffic capture (Istio's istio-iptables contract, REDIRECT mode).
///
/// Lists are comma-separated; `*` means all. Every flag can also be set by the environment
/// variable shown; a flag on the command line wins.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The proxy's uids; their traffic is never captured (Istio: -u).
    #[arg(long, env = "STRAIT_CAPTURE_PROXY_UID", value_name = "UIDS", default_value = defaults::PROXY_UID)]
    pub proxy_uid: String,
    /// The proxy's gids [default: the uids] (Istio: -g).
    #[arg(long, env = "STRAIT_CAPTURE_PROXY_GID", value_name = "GIDS")]
    pub proxy_gid: Option<String>,
    /// Where captured outbound connections go (Istio: -p).
    #[arg(long, env = "STRAIT_CAPTURE_OUTBOUND_PORT", value_name = "PORT", default_value = defaults::OUTBOUND_PORT)]
    pub outbound_port: String,
    /// Where captured inbound connections go (Istio: -z).
    #[arg(long, env = "STRAIT_CAPTURE_INBOUND_PORT", value_name = "PORT", default_value = defaults::INBOUND_PORT)]
    pub inbound_port: String,
    /// The HBONE tunnel port, never captured inbound (Istio: -e).
    #[arg(long, env = "STRAIT_CAPTURE_INBOUND_TUNNEL_PORT", value_name = "PORT", default_value = defaults::INBOUND_TUNNEL_PORT)]
    pub inbound_tunnel_port: String,
    /// Destinations whose outbound traffic is captured; empty: none (Istio: -i,
    /// traffic.sidecar.istio.io/includeOutboundIPRanges).
    #[arg(long, env = "STRAIT_CAPTURE_INCLUDE_OUTBOUND_CIDRS", value_name = "CIDRS", default_value = defaults::INCLUDE_OUTBOUND_CIDRS)]
    pub include_outbound_cidrs: String,
    /// Destinations never captured (Istio: -x, excludeOutboundIPRanges).
    #[arg(
        long,
        env = "STRAIT_CAPTURE_EXCLUDE_OUTBOUND_CIDRS",
        value_name = "CIDRS",
        default_value = ""
    )]
    pub exclude_outbound_cidrs: String,
    /// Destination ports captured whatever the address (Istio: -q, includeOutboundPorts).
    #[arg(
        long,
        env = "STRAIT_CAPTURE_INCLUDE_OUTBOUND_PORTS",
        value_name = "PORTS",
        default_value = ""
    )]
    pub include_outbound_ports: String,
    /// Destination ports never captured, TCP and UDP (Istio: -o, excludeOutboundPorts).
    #[arg(
        long,
        env = "STRAIT_CAPTURE_EXCLUDE_OUTBOUND_PORTS",
        value_name = "PORTS",
        default_value = ""
    )]
    pub exclude_outbound_ports: String,
    /// Inbound ports captured; empty: no inbound capture (Istio: -b, includeInboundPorts).
    #[arg(long, env = "STRAIT_CAPTURE_INCLUDE_INBOUND_PORTS", value_name = "PORTS", default_value = defaults::INCLUDE_INBOUND_PORTS)]
    pub include_inbound_ports: String,
    /// Inbound ports not captured when all are (Istio: -d, excludeInboundPorts).
    #[arg(long, env = "STRAIT_CAPTURE_EXCLUDE_INBOUND_PORTS", value_name = "PORTS", default_value = defaults::EXCLUDE_INBOUND_PORTS)]
    pub exclude_inbound_ports: String,
    /// Also capture IPv6, with ip6tables; IPv6 ranges in the lists go there only.
    #[arg(long, env = "STRAIT_CAPTURE_IPV6")]
    pub ipv6: bool,
    /// Print the iptables-restore input for each family and change nothing.
    #[arg(long, env = "STRAIT_CAPTURE_DRY_RUN", conflicts_with = "clean")]
    pub dry_run: bool,
    /// Remove the ISTIO_* chains and the jumps to them, in both families; nothing else.
    #[arg(long, env = "STRAIT_CAPTURE_CLEAN")]
    pub clean: bool,
    /// Which iptables to run: auto prefers legacy when it already holds rules, else nft.
    #[arg(
        long,
        env = "STRAIT_CAPTURE_IPTABLES",
        value_enum,
        default_value = "auto"
    )]
    pub iptables: Choice,
}

/// Each message is whole (no `source` chain to print twice) and says what was left changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}; nothing was changed")]
    Settings(SettingsError),
    #[error("{0}; nothing was changed")]
    Prepare(BackendError),
    #[error("committing the {family} rules: {error}{}", if *.earlier { "; the IPv4 rules were committed" } else { "; nothing was changed" })]
    Commit {
        family: &'static str,
        /// A transaction for the other family was committed before this one failed.
        earlier: bool,
        error: BackendError,
    },
    #[error("writing the output: {0}")]
    Output(#[from] io::Error),
}

impl From<SettingsError> for Error {
    fn from(error: SettingsError) -> Self {
        Error::Settings(error)
    }
}

impl From<BackendError> for Error {
    fn from(error: BackendError) -> Self {
        Error::Prepare(error)
    }
}

/// What will happen to one family's nat table.
struct Step {
    backend: Backend,
    transaction: Option<String>,
    report: Option<String>,
}

// === impl Args ===

impl Args {
    pub fn raw(&self) -> Raw<'_> {
        Raw {
            proxy_uid: &self.proxy_uid,
            proxy_gid: self.proxy_gid.as_deref(),
            outbound_port: &self.outbound_port,
            inbound_port: &self.inbound_port,
            inbound_tunnel_port: &self.inbound_tunnel_port,
            include_outbound_cidrs: &self.include_outbound_cidrs,
            exclude_outbound_cidrs: &self.exclude_outbound_cidrs,
            include_outbound_ports: &self.include_outbound_ports,
            exclude_outbound_ports: &self.exclude_outbound_ports,
            include_inbound_ports: &self.include_inbound_ports,
            exclude_inbound_ports: &self.exclude_inbound_ports,
            ipv6: self.ipv6,
        }
    }
}

/// Validates every flag, then (unless `--dry-run`) reads each family's nat table, plans one
/// transaction per family, checks them all with `--test` and commits them. Nothing is changed
/// until everything has been validated and planned.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), Error> {
    let settings = Settings::parse(&args.raw())?;
    let sets = rules::build(&settings);
    if args.dry_run {
        for set in &sets {
            let tool = match set.family {
                Family::V4 => "iptables",
                Family::V6 => "ip6tables",
            };
            writeln!(out, "# {}: {tool}-restore --noflush", set.family.name())?;
            out.write_all(set.to_restore().as_bytes())?;
        }
        return Ok(());
    }

    let mut steps = Vec::new();
    for family in [Family::V4, Family::V6] {
        let set = sets.iter().find(|s| s.family == family);
        let wanted = args.clean || set.is_some();
        let backend = match Backend::detect(family, args.iptables) {
            Ok(backend) => backend,
            // Without --ipv6, ip6tables is only looked at to remove what an earlier run put there.
            Err(error) if family == Family::V6 && !settings.ipv6 => {
                tracing::debug!(%error, "no ip6tables; skipping IPv6");
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let current = NatTable::parse(&backend.save_nat()?);
        let step = match set.filter(|_| !args.clean) {
            Some(set) => install_step(backend, set, &current),
            None => clean_step(backend, &current, wanted),
        };
        steps.push(step);
    }

    for step in &steps {
        if let Some(transaction) = &step.transaction {
            tracing::debug!(binary = %step.backend.binary, %transaction, "checking");
            step.backend.restore(transaction, true)?;
        }
    }
    let mut committed = false;
    for step in &steps {
        if let Some(transaction) = &step.transaction {
            step.backend
                .restore(transaction, false)
                .map_err(|error| Error::Commit {
                    family: step.backend.family.name(),
                    earlier: committed,
                    error,
                })?;
            committed = true;
        }
    }
    for report in steps.iter().filter_map(|s| s.report.as_ref()) {
        writeln!(out, "{report}")?;
    }
    Ok(())
}

fn install_step(backend: Backend, set: &RuleSet, current: &NatTable) -> Step {
    let replacing = if current.has_owned_chains() {
        ", replacing the previous ISTIO_* chains"
    } else {
        ""
    };
    let report = format!(
        "{}: installed {} nat rules with {backend}{replacing}",
        set.family.name(),
        set.rules.len()
    );
    Step {
        transaction: Some(restore::install(set, current)),
        report: Some(report),
        backend,
    }
}

fn clean_step(backend: Backend, current: &NatTable, asked: bool) -> Step {
    let transaction = restore::clean(current);
    let family = backend.family.name();
    let report = match (&transaction, asked) {
        (Some(_), true) => Some(format!(
            "{family}: removed the ISTIO_* chains and the jumps to them with {backend}"
        )),
        (Some(_), false) => Some(format!(
            "{family}: removed the ISTIO_* chains an earlier run installed (no --ipv6) with {backend}"
        )),
        (None, true) => Some(format!(
            "{family}: nothing to remove (checked with {backend})"
        )),
        // IPv6 without --ipv6, and nothing left from an earlier run: not worth a line.
        (None, false) => None,
    };
    Step {
        backend,
        transaction,
        report,
    }
}
