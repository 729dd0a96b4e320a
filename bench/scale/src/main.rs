//! strait-scale: one straitd, thousands of simulated ADS clients (delta or SotW, one HTTP/2
//! connection each, behaving as Envoy does) and a few stock Envoys, through six scenarios in
//! one run: cold start, steady-state memory, one endpoint change, one route change, sustained
//! churn, and kill -9 with restart. Writes a Markdown table and JSON.

#[allow(
    dead_code,
    reason = "shared with strait-bench, which uses other parts of it"
)]
#[path = "../../src/procfs.rs"]
mod procfs;

mod envoy;
mod report;
mod scope;
mod stats;
mod straitd;
mod xds;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::envoy::{Envoy, sync_status};
use crate::report::{
    Baseline, Change, Churn, ColdStart, EnvoyCheck, EnvoyResult, MemPoint, Report, Restart, Steady,
    Step, Target, secs,
};
use crate::scope::Expectation;
use crate::stats::Summary;
use crate::straitd::Straitd;
use crate::xds::{Client, EDS, Expect, Fleet, RDS, TYPE_NAMES, TYPES};
use strait_scale::mesh;
use strait_scale::mesh::Mesh;

#[derive(Parser, Debug, Serialize)]
#[command(
    name = "strait-scale",
    about = "straitd under many ADS clients: cold start, memory per client, change convergence, churn, restart",
    long_about = "Generates a mesh, starts straitd (release, found beside this binary) on free \
127.0.0.1 ports, opens --clients simulated ADS clients (one HTTP/2 connection each, Envoy's \
subscription order, ACKs and backoff) and --envoys stock Envoys, runs scenarios (a) cold start, \
(b) steady-state memory, (c) one endpoint change, (d) one route weight change, (e) sustained \
churn, (f) kill -9 and restart, and writes bench/results/scale-latest.{md,json}. \
With --scoped every namespace gets a Sidecar (egress ./*, istio-system/* and --scoped-imports \
other namespaces), as users scope a mesh; each client is then checked to hold exactly what its \
scope calls for, and each change to reach the clients whose scope holds the service and no \
other. Run it through scripts/scale.sh, which builds the binaries, installs Envoy and raises \
ulimit -n."
)]
struct Args {
    /// Services (STATIC ServiceEntries).
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Namespaces the services are spread over.
    #[arg(long, default_value_t = 20)]
    namespaces: usize,
    /// Endpoints per service (addresses in 10/8 and 172.16/12, never contacted).
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Share of services with a DestinationRule (v1/v2) and a 90/10 VirtualService.
    #[arg(long, default_value_t = 0.2)]
    split_share: f64,
    /// Shared services in istio-system (besides --services), which every Sidecar of --scoped
    /// imports; there in both variants, so that the two compare on one mesh.
    #[arg(long, default_value_t = 2)]
    shared_services: usize,
    /// Scope the mesh as users do: a Sidecar in every namespace with egress hosts ./*,
    /// istio-system/* and --scoped-imports other namespaces (gateways stay unscoped).
    #[arg(long)]
    scoped: bool,
    /// With --scoped: how many other namespaces each namespace's Sidecar imports (ns-N imports
    /// ns-(N+1) .. ns-(N+K), wrapping around).
    #[arg(long, default_value_t = 2)]
    scoped_imports: usize,
    /// Simulated ADS clients.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Share of the clients (and Envoys) using state-of-the-world instead of delta.
    #[arg(long, default_value_t = 0.0)]
    sotw_share: f64,
    /// Distinct proxy shapes (namespace x app; every 50th an ingress gateway).
    #[arg(long, default_value_t = 100)]
    shapes: usize,
    /// Stock Envoys among the clients (needs $STRAIT_ENVOY or --envoy; 0 for none).
    #[arg(long, default_value_t = 20)]
    envoys: usize,
    /// Connected-client counts at which (b) reads straitd's memory (the last is --clients).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    steps: Vec<usize>,
    /// Seconds of sustained churn (e).
    #[arg(long, default_value_t = 60.0)]
    churn_seconds: f64,
    /// Endpoint changes per second during churn (e).
    #[arg(long, default_value_t = 20.0)]
    churn_rate: f64,
    /// Longest wait for any convergence, seconds; what has not converged by then is reported
    /// as such.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Seconds to wait before reading straitd's memory, so freed memory is returned.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// tokio worker threads for the simulated clients (1: about one core).
    #[arg(long, default_value_t = 1)]
    load_threads: usize,
    /// HTTP/2 stream and connection window of each client, KiB.
    #[arg(long, default_value_t = 1024)]
    h2_window_kib: u32,
    /// Connect timeout of each client's connection, seconds.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Scenarios to skip: any of cold,steady,endpoint,route,churn,restart.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Kill straitd and stop if its RSS exceeds this many MiB [default: 75% of memory].
    #[arg(long)]
    max_straitd_rss_mib: Option<f64>,
    /// The straitd binary [default: beside this binary].
    #[arg(long)]
    straitd: Option<PathBuf>,
    /// The straitctl binary [default: beside this binary].
    #[arg(long)]
    straitctl: Option<PathBuf>,
    /// Stock Envoy.
    #[arg(long, env = "STRAIT_ENVOY")]
    envoy: Option<PathBuf>,
    /// Where the Markdown and JSON reports go.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// Name of the report files: OUT_DIR/NAME.md and NAME.json [default: scale-latest, with
    /// --scoped scale-scoped-latest].
    #[arg(long)]
    name: Option<String>,
    /// Keep straitd's config, data dir and logs here instead of a temporary directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_nofile();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.load_threads.max(1))
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run(args))
}

/// Raises RLIMIT_NOFILE to the hard limit: every client holds a socket.
fn raise_nofile() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if let Err(e) = setrlimit(Resource::Nofile, raised) {
        eprintln!("strait-scale: could not raise the open-file limit: {e}");
    }
}

fn nofile_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

fn log(start: Instant, msg: impl AsRef<str>) {
    eprintln!("[{:7.1}s] {}", start.elapsed().as_secs_f64(), msg.as_ref());
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn meminfo(field: &str) -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0.0, mib)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn beside_me(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn git_commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(workspace_root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}-dirty") } else { c }
        }
        None => "unknown".into(),
    }
}

/// Share of `n` items, spread evenly: item i is in it when this says so.
fn in_share(i: usize, share: f64) -> bool {
    let ppm = (share.clamp(0.0, 1.0) * 1e6).round() as usize;
    (i + 1) * ppm / 1_000_000 > i * ppm / 1_000_000
}

/// Samples straitd's RSS in the background; kills it past the limit.
struct Monitor {
    pid: Arc<AtomicU32>,
    peak_kib: Arc<AtomicU64>,
    over_limit: Arc<AtomicBool>,
}

impl Monitor {
    fn start(limit_mib: f64) -> Monitor {
        let m = Monitor {
            pid: Arc::new(AtomicU32::new(0)),
            peak_kib: Arc::new(AtomicU64::new(0)),
            over_limit: Arc::new(AtomicBool::new(false)),
        };
        let (pid, peak, over) = (m.pid.clone(), m.peak_kib.clone(), m.over_limit.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let p = pid.load(Ordering::Acquire);
                if p == 0 {
                    continue;
                }
                if let Ok(kib) = procfs::rss_kib(p) {
                    peak.fetch_max(kib, Ordering::AcqRel);
                    if mib(kib) > limit_mib && !over.swap(true, Ordering::AcqRel) {
                        eprintln!(
                            "strait-scale: straitd RSS {:.0} MiB is over the limit of {limit_mib:.0} MiB: killing it",
                            mib(kib)
                        );
                        if let Some(pid) = rustix::process::Pid::from_raw(p as i32) {
                            let _ =
                                rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                        }
                    }
                }
            }
        });
        m
    }
}

struct Harness {
    args: Args,
    start: Instant,
    mesh: Mesh,
    config_dir: PathBuf,
    straitd: Straitd,
    monitor: Monitor,
    fleet: Arc<Fleet>,
    /// What a proxy of each shape must hold.
    expects: Vec<Arc<Expect>>,
    clients: Vec<Arc<Client>>,
    tasks: Vec<Option<JoinHandle<()>>>,
    envoys: Vec<Envoy>,
    /// Objects changed through the admin API, by (kind, namespace/name): their latest YAML.
    applied: BTreeMap<String, String>,
    timeout: Duration,
    report: Report,
}

/// A change the Envoys are checked against: what each had ACKed of its type before, and
/// which of them are in its scope (they must ACK a new version; the others must not get one).
struct EnvoyWatch {
    type_index: usize,
    before: BTreeMap<String, String>,
    in_scope: BTreeSet<String>,
}

/// Why a wait ended.
enum Waited {
    Done,
    TimedOut,
}

impl Harness {
    fn log(&self, msg: impl AsRef<str>) {
        log(self.start, msg);
    }

    fn pid(&self) -> u32 {
        self.straitd.pid().unwrap_or(0)
    }

    fn rss_mib(&self) -> f64 {
        procfs::rss_kib(self.pid()).map_or(0.0, mib)
    }

    fn check_straitd(&mut self) -> anyhow::Result<()> {
        if self.monitor.over_limit.load(Ordering::Acquire) {
            anyhow::bail!("straitd was killed: its RSS went over the limit");
        }
        if let Some(status) = self.straitd.exited() {
            anyhow::bail!("straitd exited ({status}):\n{}", self.straitd.log_tail(20));
        }
        Ok(())
    }

    /// Polls `done` every 100 ms until it holds or the timeout passes; logs progress.
    async fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Harness) -> (bool, String),
    ) -> anyhow::Result<Waited> {
        let start = Instant::now();
        let mut last_log = Instant::now();
        loop {
            self.check_straitd()?;
            let (ok, progress) = done(self);
            if ok {
                return Ok(Waited::Done);
            }
            if start.elapsed() > timeout {
                self.log(format!("{what}: not done within {timeout:?}: {progress}"));
                return Ok(Waited::TimedOut);
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                self.log(format!(
                    "{what}: {progress} (straitd RSS {:.0} MiB)",
                    self.rss_mib()
                ));
                last_log = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn settle(&self) {
        tokio::time::sleep(Duration::from_secs_f64(self.args.settle)).await;
    }

    fn spawn_clients(&mut self, range: std::ops::Range<usize>) {
        for i in range {
            if self.tasks[i].is_some() {
                continue;
            }
            let client = self.clients[i].clone();
            client.rearm();
            self.tasks[i] = Some(tokio::spawn(xds::run(self.fleet.clone(), client)));
        }
    }

    async fn stop_clients(&mut self, range: std::ops::Range<usize>) {
        for i in range.clone() {
            self.clients[i].stop();
        }
        for i in range {
            if let Some(task) = self.tasks[i].take() {
                let _ = task.await;
            }
        }
    }

    fn running(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_some()).count()
    }

    /// How many of the first `n` clients hold a complete config, and when the last of them
    /// got there (None until all have).
    fn completion(&self, n: usize) -> (usize, Vec<Instant>) {
        let mut at = Vec::with_capacity(n);
        for c in &self.clients[..n] {
            if let Some(t) = c.state().complete_at {
                at.push(self.fleet.instant(t));
            }
        }
        (at.len(), at)
    }

    fn progress(&self, n: usize) -> (bool, String) {
        let counts = xds::counts(&self.clients[..n]);
        (
            counts.complete == n,
            format!(
                "{}/{} complete, {} connected, {} failures, {:.1} MB received",
                counts.complete,
                n,
                counts.connected,
                counts.failures,
                counts.bytes as f64 / 1e6
            ),
        )
    }

    /// What each Envoy has ACKed of type `t` (short name), before a change.
    async fn envoy_acked(&self, t: usize) -> BTreeMap<String, String> {
        let nodes: BTreeSet<String> = self.envoys.iter().map(|e| e.node_id.clone()).collect();
        let ty = envoy::short(xds::TYPE_URLS[t]);
        match self.straitd.proxies().await {
            Ok(p) => sync_status(&p, &nodes)
                .acked
                .into_iter()
                .filter_map(|(n, v)| Some((n, v.get(ty)?.clone())))
                .collect(),
            Err(_) => BTreeMap::new(),
        }
    }

    /// The Envoys whose scope holds this service.
    fn envoys_seeing(&self, service: usize) -> BTreeSet<String> {
        self.envoys
            .iter()
            .filter(|e| self.expects.get(e.shape).is_some_and(|x| x.sees(service)))
            .map(|e| e.node_id.clone())
            .collect()
    }

    /// Waits (when `wait`) until every Envoy has every type ACKed at the version last sent
    /// and, given a change, every Envoy in its scope a new version of its type; counts the
    /// Envoys outside its scope that got one.
    async fn envoy_check(
        &mut self,
        after: &str,
        wait: bool,
        change: Option<EnvoyWatch>,
    ) -> EnvoyCheck {
        if self.envoys.is_empty() {
            return EnvoyCheck {
                after: after.to_string(),
                ..EnvoyCheck::default()
            };
        }
        let nodes: BTreeSet<String> = self.envoys.iter().map(|e| e.node_id.clone()).collect();
        let deadline = Instant::now() + if wait { self.timeout } else { Duration::ZERO };
        let mut status = Default::default();
        loop {
            match self.straitd.proxies().await {
                Ok(p) => status = sync_status(&p, &nodes),
                Err(e) => self.log(format!("/debug/proxies: {e:#}")),
            }
            let s: &envoy::SyncStatus = &status;
            let moved = change.as_ref().is_none_or(|c| {
                let ty = envoy::short(xds::TYPE_URLS[c.type_index]);
                c.in_scope.iter().all(|n| {
                    let now = s.acked.get(n).and_then(|v| v.get(ty));
                    now.is_some() && now != c.before.get(n)
                })
            });
            let settled = s.synced == self.envoys.len() && moved;
            if settled || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut rejected = 0;
        for e in &self.envoys {
            match e.update_counters().await {
                Ok((r, _)) => rejected += r,
                Err(err) => self.log(format!("{} stats: {err:#}", e.node_id)),
            }
        }
        let alive = self
            .envoys
            .iter_mut()
            .map(|e| e.alive())
            .filter(|a| *a)
            .count();
        let moved_outside: Vec<String> = change
            .as_ref()
            .map(|c| {
                let ty = envoy::short(xds::TYPE_URLS[c.type_index]);
                nodes
                    .iter()
                    .filter(|n| !c.in_scope.contains(*n))
                    .filter(|n| {
                        let now = status.acked.get(*n).and_then(|v| v.get(ty));
                        now.is_some() && now != c.before.get(*n)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let check = EnvoyCheck {
            after: after.to_string(),
            in_scope: change.as_ref().map(|c| c.in_scope.len()),
            moved_outside: moved_outside.len(),
            moved_outside_examples: moved_outside.into_iter().take(3).collect(),
            synced: status.synced,
            of: self.envoys.len(),
            alive,
            rejected_updates: rejected,
            nacks_at_straitd: status.nacks,
            nack_examples: status.nack_examples.clone(),
            unsynced_examples: status
                .unsynced
                .iter()
                .take(3)
                .map(|(n, w)| format!("{n}: {w}"))
                .collect(),
        };
        self.log(format!(
            "Envoys after {after}: {}/{} synced, {} alive, {} rejected updates, {} NACKs at straitd{}",
            check.synced,
            check.of,
            check.alive,
            check.rejected_updates,
            check.nacks_at_straitd,
            match check.in_scope {
                Some(n) => format!(
                    "; {n} in the change's scope, {} outside it got a new version",
                    check.moved_outside
                ),
                None => String::new(),
            }
        ));
        check
    }

    fn push_envoy_check(&mut self, check: EnvoyCheck) {
        if let Some(e) = self.report.envoys.as_mut() {
            e.checks.push(check);
        }
    }

    async fn start_envoys(&mut self) -> anyhow::Result<()> {
        let n = self.args.envoys;
        let Some(envoy) = self.args.envoy.clone().filter(|_| n > 0) else {
            if n > 0 {
                self.report
                    .notes
                    .push("no stock Envoys: neither $STRAIT_ENVOY nor --envoy was given".into());
            }
            return Ok(());
        };
        let straitctl = self
            .args
            .straitctl
            .clone()
            .unwrap_or_else(|| beside_me("straitctl"));
        let shapes = xds::shapes(self.args.shapes, &self.mesh);
        let sidecars: Vec<&xds::Shape> = shapes.iter().filter(|s| !s.gateway).collect();
        let dir = self.config_dir.with_file_name("envoys");
        let t0 = Instant::now();
        let mut sotw = 0;
        for i in 0..n {
            let is_sotw = in_share(i, self.args.sotw_share);
            sotw += usize::from(is_sotw);
            let shape = sidecars[i % sidecars.len().max(1)];
            self.envoys.push(Envoy::spawn(
                &envoy,
                &straitctl,
                self.straitd.xds,
                shape,
                i,
                is_sotw,
                &dir,
            )?);
        }
        self.report.envoys = Some(EnvoyResult {
            count: n,
            delta: n - sotw,
            sotw,
            ..EnvoyResult::default()
        });
        self.log(format!(
            "started {n} Envoys ({sotw} SotW); waiting for them to sync"
        ));
        let check = self.envoy_check("start", true, None).await;
        if let Some(e) = self.report.envoys.as_mut() {
            e.sync_s = (check.synced == n).then(|| t0.elapsed().as_secs_f64());
        }
        for e in &mut self.envoys {
            if !e.alive() {
                self.report
                    .errors
                    .push(format!("{} exited: {}", e.node_id, e.log_tail(10)));
            }
        }
        self.push_envoy_check(check);
        Ok(())
    }

    fn skip(&self, scenario: &str) -> bool {
        self.args.skip.iter().any(|s| s == scenario)
    }

    /// (a): every client connects at once.
    async fn cold_start(&mut self) -> anyhow::Result<()> {
        let n = self.clients.len();
        let pid = self.pid();
        let cpu0 = procfs::cpu_times_of(&[pid])?;
        let sotw = self.clients.iter().filter(|c| c.sotw).count();
        self.log(format!("(a) cold start: {n} clients connect at once"));
        let t0 = Instant::now();
        self.spawn_clients(0..n);
        let waited = self
            .wait("(a) cold start", self.timeout, |h| h.progress(n))
            .await?;
        let cpu = procfs::cpu_times_of(&[pid])?.since(cpu0);
        let hwm = procfs::hwm_kib(pid).map_or(0.0, mib);
        let (converged, at) = self.completion(n);
        let per_client: Vec<f64> = at
            .iter()
            .map(|t| t.saturating_duration_since(t0).as_secs_f64())
            .collect();
        let summary = Summary::of(&per_client);
        let all = matches!(waited, Waited::Done)
            .then_some(summary.max)
            .flatten();
        self.settle().await;
        let counts = xds::counts(&self.clients);
        let cold = ColdStart {
            clients: n,
            sotw_clients: sotw,
            timeout_s: self.timeout.as_secs_f64(),
            converged,
            all_converged_s: all,
            per_client_s: summary,
            straitd_cpu_s: cpu.total() as f64 / 1e6,
            straitd_peak_rss_mib: hwm,
            rss_mib_converged: self.rss_mib(),
            bytes_received: counts.bytes,
            connect_failures: counts.failures,
            errors: xds::error_summary(&self.clients, 5),
        };
        self.log(format!(
            "(a) {converged}/{n} converged, all after {}, straitd CPU {:.1} s, VmHWM {:.0} MiB, RSS {:.0} MiB",
            secs(all),
            cold.straitd_cpu_s,
            hwm,
            cold.rss_mib_converged
        ));
        self.report.cold_start = Some(cold);
        self.record_resources();
        self.scope_check("(a) cold start");
        Ok(())
    }

    /// Whether every client holds what its scope calls for; recorded in the report.
    fn scope_check(&mut self, after: &str) {
        let check = xds::check_scopes(&self.fleet, &self.clients, after);
        self.log(format!(
            "scopes after {after}: {}/{} clients hold what their scope calls for; {} lack something, {} hold something outside it, {} have other routes",
            check.as_expected, check.clients, check.missing, check.outside, check.routes_differ
        ));
        for e in &check.examples {
            self.log(format!("  {e}"));
        }
        self.report.scope_checks.push(check);
    }

    /// The resources a converged sidecar and gateway hold.
    fn record_resources(&mut self) {
        let shapes = xds::shapes(self.args.shapes, &self.mesh);
        let count = |c: &Client| {
            let st = c.state();
            (0..TYPES)
                .map(|t| (TYPE_NAMES[t].to_string(), st.held[t].len()))
                .collect::<BTreeMap<_, _>>()
        };
        if let Some(c) = self.clients.iter().find(|c| !shapes[c.shape].gateway) {
            self.report.mesh.sidecar_resources = count(c);
        }
        if let Some(c) = self.clients.iter().find(|c| shapes[c.shape].gateway) {
            self.report.mesh.gateway_resources = count(c);
        }
    }

    /// (b): memory with none, some and all clients connected, and after they leave.
    async fn steady(&mut self) -> anyhow::Result<()> {
        let n = self.clients.len();
        let baseline = self
            .report
            .baseline
            .as_ref()
            .map_or(0.0, |b| b.rss_mib_envoys_connected);
        self.log("(b) disconnecting every simulated client");
        self.stop_clients(0..n).await;
        self.settle().await;
        let after = self.rss_mib();
        let mut steady = Steady {
            rss_mib_after_disconnect: after,
            after_disconnect_vs_baseline_pct: pct(after, baseline),
            rss_mib_fresh_baseline: 0.0,
            steps: Vec::new(),
        };
        self.log(format!(
            "(b) RSS after disconnect {after:.0} MiB ({:+.1}% of baseline {baseline:.0} MiB)",
            steady.after_disconnect_vs_baseline_pct
        ));
        // The steps run against a fresh straitd, so that what the cold start left behind does
        // not count; the clients start fresh too (no resources, as a new Envoy).
        self.log("(b) restarting straitd for the steps");
        self.straitd.kill();
        self.monitor.pid.store(0, Ordering::Release);
        self.straitd.start()?;
        self.straitd.wait_ready(self.timeout).await?;
        self.monitor.pid.store(self.pid(), Ordering::Release);
        let check = self.envoy_check("(b) fresh straitd", true, None).await;
        self.push_envoy_check(check);
        for c in &self.clients {
            c.reset();
        }
        self.settle().await;
        let baseline = self.rss_mib();
        steady.rss_mib_fresh_baseline = baseline;
        self.log(format!(
            "(b) fresh straitd: RSS {baseline:.0} MiB with the Envoys connected"
        ));
        let mut steps: Vec<usize> = self
            .args
            .steps
            .iter()
            .copied()
            .filter(|s| *s > 0 && *s < n)
            .collect();
        steps.push(n);
        steps.sort_unstable();
        steps.dedup();
        for step in steps {
            let t0 = Instant::now();
            self.spawn_clients(0..step);
            let waited = self
                .wait(&format!("(b) {step} clients"), self.timeout, |h| {
                    h.progress(step)
                })
                .await?;
            let converge_s = matches!(waited, Waited::Done).then(|| t0.elapsed().as_secs_f64());
            let (converged, _) = self.completion(step);
            self.settle().await;
            let rss = self.rss_mib();
            let s = Step {
                clients: step,
                converged,
                converge_s,
                rss_mib: rss,
                mb_per_1000: (rss - baseline) * 1.048_576 / step as f64 * 1000.0,
            };
            self.log(format!(
                "(b) {step} clients: RSS {rss:.0} MiB, {:.1} MB per 1,000 clients",
                s.mb_per_1000
            ));
            steady.steps.push(s);
        }
        self.report.steady = Some(steady);
        let last = format!("(b) {} clients", self.running());
        self.scope_check(&last);
        Ok(())
    }

    async fn apply(&mut self, key: String, yaml: String) -> anyhow::Result<f64> {
        let t = Instant::now();
        self.straitd.apply(yaml.clone()).await?;
        self.applied.insert(key, yaml);
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    }

    /// Applies one object and times the change of `resource` at every client `in_scope`
    /// says should get it; counts the clients outside that scope that got it all the same.
    async fn timed_change(
        &mut self,
        what: &str,
        type_index: usize,
        resource: &str,
        key: String,
        yaml: String,
        in_scope: impl Fn(&Client) -> bool,
    ) -> anyhow::Result<Change> {
        let bytes0: Vec<u64> = self.clients.iter().map(|c| c.state().bytes).collect();
        // A route configuration is named for its listener, not for a service: every sidecar
        // holds its own `outbound`, and only a new version of it outside the scope is a fault.
        let watch = self.fleet.watch(
            type_index,
            resource,
            &self.clients,
            in_scope,
            type_index == RDS,
        );
        let affected = watch.pending();
        {
            let inner = watch
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.log(format!(
                "{what}: {affected} clients in its scope should get {} {resource} ({} of them do not hold it); {} outside ({} of them hold it)",
                TYPE_NAMES[type_index],
                inner.missing_at_t0,
                self.clients.len() - affected,
                inner.held_outside_at_t0,
            ));
        }
        let t0 = Instant::now();
        watch.set_t0(t0);
        let apply = self.apply(key.clone(), yaml).await;
        let apply_ms = match apply {
            Ok(ms) => ms,
            Err(e) => {
                self.fleet.unwatch(&watch);
                return Err(e);
            }
        };
        let w = watch.clone();
        let _ = self
            .wait(what, self.timeout, move |_| {
                let p = w.pending();
                (p == 0, format!("{} of {affected} still to ACK", p))
            })
            .await;
        // Whatever reaches a client outside the scope late is counted too.
        self.settle().await;
        self.fleet.unwatch(&watch);
        let inner = watch
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut outside_with_traffic, mut outside_bytes) = (0, 0);
        for (c, b0) in self.clients.iter().zip(&bytes0) {
            if inner.is_outside(c.id) {
                let got = c.state().bytes.saturating_sub(*b0);
                outside_with_traffic += usize::from(got > 0);
                outside_bytes += got;
            }
        }
        let received_outside_examples = inner
            .received_outside
            .iter()
            .take(3)
            .filter_map(|id| self.clients.get(*id as usize))
            .map(|c| c.node_id.clone())
            .collect();
        let latency = Summary::of(&inner.latencies);
        let bytes: Vec<f64> = inner.bytes.iter().map(|b| *b as f64).collect();
        let bytes = Summary::of(&bytes);
        let bytes_sotw: Vec<f64> = inner.bytes_sotw.iter().map(|b| *b as f64).collect();
        let bytes_sotw = Summary::of(&bytes_sotw);
        let size = inner.resource_size;
        let change = Change {
            what: what.to_string(),
            object: key,
            resource: resource.to_string(),
            apply_ms,
            affected,
            outside_scope: self.clients.len() - affected,
            missing_at_start: inner.missing_at_t0,
            held_outside_at_start: inner.held_outside_at_t0,
            received_outside: inner.received_outside.len(),
            received_outside_examples,
            outside_with_traffic,
            outside_bytes,
            converged: inner.latencies.len(),
            timeout_s: self.timeout.as_secs_f64(),
            latency_s: latency,
            bytes_per_client: bytes,
            bytes_per_sotw_client: bytes_sotw,
            resource_size_bytes: size,
            bytes_ratio: bytes.mean.filter(|_| size > 0).map(|m| m / size as f64),
        };
        drop(inner);
        self.log(format!(
            "{what}: {}/{affected} converged, p50 {} p99 {} max {}, {:.0} B per client for a {size} B resource; outside its scope {} got it, {} got any response ({} B)",
            change.converged,
            secs(latency.p50),
            secs(latency.p99),
            secs(latency.max),
            bytes.mean.unwrap_or(0.0),
            change.received_outside,
            change.outside_with_traffic,
            change.outside_bytes,
        ));
        Ok(change)
    }

    /// (c): one endpoint of one (unsplit) service moves.
    async fn endpoint_change(&mut self) -> anyhow::Result<()> {
        let app = self.mesh.app_services();
        let Some(i) = app
            .iter()
            .position(|s| !s.split && s.index >= app.len() / 2)
            .or_else(|| app.iter().position(|s| !s.split))
            .or(if app.is_empty() { None } else { Some(0) })
        else {
            return Ok(());
        };
        self.mesh.services[i].moves += 1;
        let s = self.mesh.services[i].clone();
        let before = self.envoy_acked(EDS).await;
        let in_scope = self.envoys_seeing(i);
        let change = self
            .timed_change(
                "(c) One endpoint changes",
                EDS,
                &s.cluster_name(),
                format!("ServiceEntry {}/{}", s.namespace, s.name),
                s.service_entry(),
                |c| c.expect.sees(i),
            )
            .await?;
        self.report.endpoint_change = Some(change);
        let watch = EnvoyWatch {
            type_index: EDS,
            before,
            in_scope,
        };
        let check = self
            .envoy_check("(c) endpoint change", true, Some(watch))
            .await;
        self.push_envoy_check(check);
        Ok(())
    }

    /// (d): one VirtualService goes from 90/10 to 80/20.
    async fn route_change(&mut self) -> anyhow::Result<()> {
        let Some(i) = self.mesh.services.iter().position(|s| s.split) else {
            self.report
                .notes
                .push("(d) skipped: no service has a weighted split".into());
            return Ok(());
        };
        // The route configuration a sidecar holds: the one for the service port, if named so.
        let shapes = xds::shapes(self.args.shapes, &self.mesh);
        let routes: Vec<String> = self
            .clients
            .iter()
            .find(|c| !shapes[c.shape].gateway)
            .map(|c| {
                let st = c.state();
                st.subscribed[RDS].clone()
            })
            .unwrap_or_default()
            .into_iter()
            .map(|id| self.fleet.name(id))
            .collect();
        let port = mesh::SERVICE_PORT.to_string();
        let Some(route) = routes
            .iter()
            .find(|r| r.contains(&port))
            .or(routes.first())
            .cloned()
        else {
            self.report
                .notes
                .push("(d) skipped: the sidecars hold no route configuration".into());
            return Ok(());
        };
        self.mesh.services[i].v1_weight = 80;
        let s = self.mesh.services[i].clone();
        let before = self.envoy_acked(RDS).await;
        let in_scope = self.envoys_seeing(i);
        let change = self
            .timed_change(
                "(d) One VirtualService weight changes (90/10 to 80/20)",
                RDS,
                &route,
                format!("VirtualService {}/{}", s.namespace, s.name),
                s.virtual_service(),
                // The sidecars that see the service; a gateway's routes are its Gateway's.
                |c| c.expect.is_sidecar() && c.expect.sees(i),
            )
            .await?;
        self.report.route_change = Some(change);
        let watch = EnvoyWatch {
            type_index: RDS,
            before,
            in_scope,
        };
        let check = self
            .envoy_check("(d) route change", true, Some(watch))
            .await;
        self.push_envoy_check(check);
        Ok(())
    }

    /// (e): endpoint changes at a steady rate, each timed on its own.
    async fn churn(&mut self) -> anyhow::Result<()> {
        let rate = self.args.churn_rate.max(0.1);
        let seconds = self.args.churn_seconds.max(1.0);
        let interval = Duration::from_secs_f64(1.0 / rate);
        let n_services = self.mesh.services.len();
        if n_services == 0 {
            return Ok(());
        }
        self.log(format!(
            "(e) churn: {rate} endpoint changes/s for {seconds} s"
        ));
        // (sent at, service, watch, apply outcome: 0 in flight, 1 applied, 2 failed)
        let mut open: Vec<(f64, usize, Arc<xds::Watch>, Arc<AtomicU8>)> = Vec::new();
        let mut applies: Vec<JoinHandle<anyhow::Result<f64>>> = Vec::new();
        let mut next = n_services / 3;
        let t_start = Instant::now();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut sent = 0usize;
        let mut skipped_busy = 0usize;
        while t_start.elapsed().as_secs_f64() < seconds {
            ticker.tick().await;
            self.check_straitd()?;
            // The next service whose previous change every holder has ACKed.
            let busy: BTreeSet<usize> = open
                .iter()
                .filter(|(_, _, w, a)| w.pending() > 0 && a.load(Ordering::Acquire) != 2)
                .map(|(_, i, _, _)| *i)
                .collect();
            let Some(i) = (0..n_services)
                .map(|k| (next + k) % n_services)
                .find(|i| !busy.contains(i))
            else {
                skipped_busy += 1;
                continue;
            };
            next = i + 1;
            self.mesh.services[i].moves += 1;
            let s = self.mesh.services[i].clone();
            let watch = self.fleet.watch(
                EDS,
                &s.cluster_name(),
                &self.clients,
                |c| c.expect.sees(i),
                false,
            );
            let offset = t_start.elapsed().as_secs_f64();
            let yaml = s.service_entry();
            self.applied.insert(
                format!("ServiceEntry {}/{}", s.namespace, s.name),
                yaml.clone(),
            );
            let url = self.straitd.admin_url("/apply");
            let outcome = Arc::new(AtomicU8::new(0));
            let (w, o) = (watch.clone(), outcome.clone());
            // Each apply on a thread of its own; t0 is taken there, just before it is sent.
            applies.push(tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                w.set_t0(t);
                let result = straitd::post_blocking(&url, &yaml).and_then(|(status, body)| {
                    anyhow::ensure!(status == 200, "POST /apply: {status} {body}");
                    Ok(t.elapsed().as_secs_f64() * 1000.0)
                });
                o.store(if result.is_ok() { 1 } else { 2 }, Ordering::Release);
                result
            }));
            open.push((offset, i, watch, outcome));
            sent += 1;
            if sent.is_multiple_of((rate * 10.0).max(1.0) as usize) {
                let pending: usize = open.iter().map(|(_, _, w, _)| w.pending()).sum();
                self.log(format!(
                    "(e) {sent} changes sent, {pending} (change, client) ACKs outstanding"
                ));
            }
        }
        self.log(format!(
            "(e) {sent} changes sent in {:.1} s; waiting for the last ones",
            t_start.elapsed().as_secs_f64()
        ));
        let watches: Vec<(Arc<xds::Watch>, Arc<AtomicU8>)> = open
            .iter()
            .map(|(_, _, w, a)| (w.clone(), a.clone()))
            .collect();
        let _ = self
            .wait("(e) churn tail", self.timeout, move |_| {
                // Changes whose apply failed are not waited for.
                let p: usize = watches
                    .iter()
                    .filter(|(_, a)| a.load(Ordering::Acquire) != 2)
                    .map(|(w, _)| w.pending())
                    .sum();
                let applying = watches
                    .iter()
                    .filter(|(_, a)| a.load(Ordering::Acquire) == 0)
                    .count();
                (
                    p == 0,
                    format!("{p} (change, client) ACKs outstanding, {applying} applies in flight"),
                )
            })
            .await;
        // Whatever reaches a client outside a change's scope late is counted too.
        self.settle().await;
        let mut apply_ms = Vec::new();
        let mut failed = 0;
        let mut unanswered = 0;
        for a in applies {
            if !a.is_finished() {
                // Still waiting for straitd after the tail: left to finish on its own.
                unanswered += 1;
                continue;
            }
            match a.await {
                Ok(Ok(ms)) => apply_ms.push(ms),
                Ok(Err(e)) => {
                    failed += 1;
                    if failed <= 3 {
                        self.report.errors.push(format!("(e) apply: {e:#}"));
                    }
                }
                Err(e) => {
                    failed += 1;
                    self.report.errors.push(format!("(e) apply thread: {e}"));
                }
            }
        }
        let mut p99s = Vec::new();
        let mut maxes = Vec::new();
        let mut all = Vec::new();
        let mut first = Vec::new();
        let mut last = Vec::new();
        let mut converged = 0;
        let mut unconverged = 0;
        let mut in_scope = Vec::new();
        let (mut missing, mut held_outside, mut received_outside) = (0, 0, 0);
        for (offset, _, w, outcome) in &open {
            self.fleet.unwatch(w);
            if outcome.load(Ordering::Acquire) != 1 {
                // Failed, or still not answered: not a change the clients could converge on.
                continue;
            }
            let inner = w
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let s = Summary::of(&inner.latencies);
            if inner.pending.is_empty() {
                converged += 1;
            }
            unconverged += inner.pending.len();
            in_scope.push(inner.in_scope as f64);
            missing += inner.missing_at_t0;
            held_outside += inner.held_outside_at_t0;
            received_outside += inner.received_outside.len();
            p99s.extend(s.p99);
            maxes.extend(s.max);
            all.extend_from_slice(&inner.latencies);
            if *offset < 10.0 {
                first.extend_from_slice(&inner.latencies);
            }
            if *offset >= seconds - 10.0 {
                last.extend_from_slice(&inner.latencies);
            }
        }
        if skipped_busy > 0 {
            self.report.notes.push(format!(
                "(e) {skipped_busy} churn ticks sent nothing: every service still had a change in flight"
            ));
        }
        let churn = Churn {
            rate_per_s: rate,
            seconds,
            changes: sent,
            applies_failed: failed,
            applies_unanswered: unanswered,
            apply_ms: Summary::of(&apply_ms),
            converged_changes: converged,
            per_change_p99_s: Summary::of(&p99s),
            per_change_max_s: Summary::of(&maxes),
            all_s: Summary::of(&all),
            first_10s: Summary::of(&first),
            last_10s: Summary::of(&last),
            unconverged_clients: unconverged,
            in_scope_per_change: Summary::of(&in_scope),
            missing_at_start: missing,
            held_outside_at_start: held_outside,
            received_outside,
        };
        self.log(format!(
            "(e) {converged}/{sent} changes converged; per-change p99 median {}, max {}; first 10 s p99 {}, last 10 s p99 {}",
            secs(churn.per_change_p99_s.p50),
            secs(churn.per_change_p99_s.max),
            secs(churn.first_10s.p99),
            secs(churn.last_10s.p99)
        ));
        self.report.churn = Some(churn);
        let check = self.envoy_check("(e) churn", true, None).await;
        self.push_envoy_check(check);
        self.scope_check("(e) churn");
        Ok(())
    }

    fn write_config(&self) -> anyhow::Result<()> {
        for (name, text) in self.mesh.files() {
            let path = self.config_dir.join(&name);
            let staged = self.config_dir.with_file_name(format!("staged-{name}"));
            std::fs::write(&staged, text)?;
            std::fs::rename(&staged, &path)?;
        }
        Ok(())
    }

    /// (f): kill -9, restart on the same ports and data dir, everyone back.
    async fn restart(&mut self) -> anyhow::Result<()> {
        let n = self.clients.len();
        // The config directory gets the mesh as it is now, so that the restarted straitd starts
        // from it (the admin API's objects do not survive a restart; they are re-applied too).
        self.write_config()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut before = Vec::with_capacity(n);
        for c in &self.clients {
            let mut st = c.state();
            st.mark();
            before.push((
                st.streams,
                std::array::from_fn::<usize, TYPES, _>(|t| st.held[t].len()),
            ));
        }
        self.log("(f) kill -9 straitd");
        let t_kill = Instant::now();
        self.straitd.kill();
        self.monitor.pid.store(0, Ordering::Release);
        self.straitd.start()?;
        self.straitd.wait_ready(self.timeout).await?;
        self.monitor.pid.store(self.pid(), Ordering::Release);
        let t_ready = Instant::now();
        let objects: Vec<String> = self.applied.values().cloned().collect();
        let reapplied = objects.len();
        if !objects.is_empty() {
            self.straitd.apply(mesh::join_documents(&objects)).await?;
        }
        self.log(format!(
            "(f) straitd ready {:.2} s after the kill; {reapplied} objects re-applied",
            t_ready.duration_since(t_kill).as_secs_f64()
        ));
        let before2 = before.clone();
        let back = |h: &Harness| {
            let mut count = 0;
            for (c, (streams, _)) in h.clients.iter().zip(&before2) {
                let st = c.state();
                count += usize::from(st.streams > *streams && st.complete_at.is_some());
            }
            (count == n, format!("{count}/{n} back and complete"))
        };
        let waited = self.wait("(f) restart", self.timeout, back).await?;
        let mut per_client = Vec::new();
        let mut held_less = 0;
        let mut examples = Vec::new();
        for (c, (streams, counts)) in self.clients.iter().zip(&before) {
            let st = c.state();
            if st.streams > *streams
                && let Some(at) = st.complete_at
            {
                per_client.push(
                    self.fleet
                        .instant(at)
                        .saturating_duration_since(t_kill)
                        .as_secs_f64(),
                );
            }
            let lower: Vec<String> = (0..TYPES)
                .filter(|t| st.min_held[*t] < counts[*t])
                .map(|t| format!("{} {} -> {}", TYPE_NAMES[t], counts[t], st.min_held[t]))
                .collect();
            if !lower.is_empty() {
                held_less += 1;
                if examples.len() < 5 {
                    examples.push(format!("{}: {}", c.node_id, lower.join(", ")));
                }
            }
        }
        let summary = Summary::of(&per_client);
        let all = matches!(waited, Waited::Done)
            .then_some(summary.max)
            .flatten();
        let restart = Restart {
            kill_to_ready_s: t_ready.duration_since(t_kill).as_secs_f64(),
            reapplied_objects: reapplied,
            clients: n,
            back: per_client.len(),
            all_back_s: all,
            all_back_after_ready_s: all.map(|a| a - t_ready.duration_since(t_kill).as_secs_f64()),
            per_client_s: summary,
            timeout_s: self.timeout.as_secs_f64(),
            held_less,
            held_less_examples: examples,
        };
        self.log(format!(
            "(f) {}/{n} back, all after {}; {held_less} clients held less than before",
            restart.back,
            secs(all)
        ));
        self.report.restart = Some(restart);
        let check = self.envoy_check("(f) restart", true, None).await;
        self.push_envoy_check(check);
        self.scope_check("(f) restart");
        Ok(())
    }

    async fn scenarios(&mut self) -> anyhow::Result<()> {
        if !self.skip("cold") {
            self.cold_start().await?;
            let check = self.envoy_check("(a) cold start", true, None).await;
            self.push_envoy_check(check);
        }
        if !self.skip("steady") {
            self.steady().await?;
        }
        // The rest need every client connected and converged.
        let n = self.clients.len();
        if self.running() < n {
            self.spawn_clients(0..n);
            let _ = self
                .wait("connecting everyone", self.timeout, |h| h.progress(n))
                .await?;
        }
        if !self.skip("endpoint") {
            self.endpoint_change().await?;
        }
        if !self.skip("route") {
            self.route_change().await?;
        }
        if !self.skip("churn") {
            self.churn().await?;
        }
        if !self.skip("restart") {
            self.restart().await?;
        }
        Ok(())
    }
}

fn pct(value: f64, baseline: f64) -> f64 {
    if baseline <= 0.0 {
        return 0.0;
    }
    (value - baseline) / baseline * 100.0
}

async fn run(args: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let timeout = Duration::from_secs_f64(args.timeout.max(1.0));
    let mut report = Report {
        generated_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        parameters: serde_json::to_value(&args)?,
        ..Report::default()
    };
    report.machine.nproc = procfs::cores();
    report.machine.mem_total_mib = meminfo("MemTotal");
    report.machine.mem_available_mib_at_start = meminfo("MemAvailable");
    report.machine.loadavg_at_start = loadavg();
    report.machine.kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    report.load.worker_threads = args.load_threads.max(1);
    let needed = (args.clients as u64) * 2 + 1000;
    if let Some(limit) = nofile_limit()
        && limit < needed
    {
        report.notes.push(format!(
            "the open-file limit is {limit}, below the {needed} this many clients need; raise it (ulimit -n)"
        ));
        eprintln!("strait-scale: warning: open-file limit {limit} < {needed}");
    }

    let mut mesh = Mesh::generate(
        args.services,
        args.namespaces,
        args.endpoints,
        args.split_share,
        args.shared_services,
    );
    if args.scoped {
        mesh = mesh.scoped(args.scoped_imports);
    }
    let (se, dr, vs) = mesh.object_counts();
    let shapes = xds::shapes(args.shapes, &mesh);
    let expectations: Vec<Expectation> = shapes.iter().map(|s| Expectation::of(&mesh, s)).collect();
    let sidecar_sees: Vec<usize> = shapes
        .iter()
        .zip(&expectations)
        .filter(|(s, _)| !s.gateway)
        .map(|(_, e)| e.visible_count())
        .collect();
    report.mesh = report::MeshInfo {
        services: args.services,
        shared_services: mesh.shared_services(),
        namespaces: mesh.namespaces,
        endpoints_per_service: mesh.services.first().map_or(0, |s| s.endpoints),
        service_entries: se,
        destination_rules: dr,
        virtual_services: vs,
        sidecars: mesh.sidecar_count(),
        scoped_imports: mesh.scoping.map(|s| s.imports),
        sidecar_sees_services: (
            sidecar_sees.iter().copied().min().unwrap_or(0),
            sidecar_sees.iter().copied().max().unwrap_or(0),
        ),
        shapes: shapes.len(),
        gateway_shapes: shapes.iter().filter(|s| s.gateway).count(),
        ..Default::default()
    };

    let (_tempdir, workdir) = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            (None, dir.clone())
        }
        None => {
            let t = tempfile::Builder::new().prefix("strait-scale-").tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let config_dir = workdir.join("config");
    std::fs::create_dir_all(&config_dir)?;
    for (name, text) in mesh.files() {
        std::fs::write(config_dir.join(name), text)?;
    }

    let binary = args.straitd.clone().unwrap_or_else(|| beside_me("straitd"));
    anyhow::ensure!(
        binary.is_file(),
        "no straitd at {} (build it: cargo build --release -p strait-control-plane --bin straitd, or pass --straitd)",
        binary.display()
    );
    let mut straitd = Straitd::spawn(&binary, &workdir, &config_dir)?;
    report.straitd = report::StraitdInfo {
        version: straitd.version(),
        commit: git_commit(),
        binary: binary.display().to_string(),
    };
    log(
        start,
        format!(
            "straitd pid {} xds {} admin {}; {} services, {} clients; work dir {}",
            straitd.pid().unwrap_or(0),
            straitd.xds,
            straitd.admin,
            args.services,
            args.clients,
            workdir.display()
        ),
    );
    let ready = straitd.wait_ready(timeout).await?;
    let limit = args
        .max_straitd_rss_mib
        .unwrap_or(report.machine.mem_total_mib * 0.75);
    let monitor = Monitor::start(limit);
    monitor
        .pid
        .store(straitd.pid().unwrap_or(0), Ordering::Release);

    let mut fleet = Fleet::new(
        straitd.xds_uri(),
        args.h2_window_kib.max(64) * 1024,
        Duration::from_secs_f64(args.connect_timeout.max(0.1)),
    );
    fleet.know_mesh(&mesh);
    let expects: Vec<Arc<Expect>> = expectations
        .iter()
        .map(|e| Arc::new(fleet.expect(e)))
        .collect();
    let fleet = Arc::new(fleet);
    let clients: Vec<Arc<Client>> = (0..args.clients)
        .map(|i| {
            Arc::new(Client::new(
                i as u32,
                &shapes[i % shapes.len()],
                in_share(i, args.sotw_share),
                expects[i % shapes.len()].clone(),
            ))
        })
        .collect();
    let mut h = Harness {
        tasks: (0..clients.len()).map(|_| None).collect(),
        args,
        start,
        mesh,
        config_dir,
        straitd,
        monitor,
        fleet,
        expects,
        clients,
        envoys: Vec::new(),
        applied: BTreeMap::new(),
        timeout,
        report,
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.settle().await;
    let nothing = h.rss_mib();
    h.log(format!(
        "straitd ready after {:.2} s; RSS {nothing:.0} MiB with nothing connected",
        ready.as_secs_f64()
    ));
    let mut outcome = h.start_envoys().await;
    h.settle().await;
    h.report.baseline = Some(Baseline {
        ready_s: ready.as_secs_f64(),
        rss_mib_nothing_connected: nothing,
        rss_mib_envoys_connected: h.rss_mib(),
    });
    if outcome.is_ok() {
        outcome = h.scenarios().await;
    }
    if let Err(e) = &outcome {
        h.log(format!("stopped early: {e:#}"));
        h.report.errors.push(format!("stopped early: {e:#}"));
    }
    // Everyone leaves; what straitd keeps.
    let n = h.clients.len();
    h.stop_clients(0..n).await;
    if h.check_straitd().is_ok() {
        h.settle().await;
        let rss = h.rss_mib();
        let baseline = h
            .report
            .baseline
            .as_ref()
            .map_or(0.0, |b| b.rss_mib_envoys_connected);
        h.report.final_disconnect = Some(MemPoint {
            rss_mib: rss,
            vs_baseline_pct: pct(rss, baseline),
        });
    }
    h.envoys.clear();
    h.straitd.kill();

    let me = std::process::id();
    h.report.load.cpu_s = procfs::cpu_times_of(&[me]).map_or(0.0, |c| c.total() as f64 / 1e6);
    h.report.load.peak_rss_mib = procfs::hwm_kib(me).map_or(0.0, mib);
    h.report.machine.mem_available_mib_at_end = meminfo("MemAvailable");
    h.report.machine.loadavg_at_end = loadavg();
    h.report.duration_s = start.elapsed().as_secs_f64();
    h.report.notes.push(format!(
        "straitd and this load generator share the machine ({} cores): the clients run on {} tokio worker thread(s), about that many cores, and straitd has the rest",
        h.report.machine.nproc, h.report.load.worker_threads
    ));
    h.report.notes.push(
        "convergence is timed in one process clock: from just before the POST /apply of the changed object to the moment each client has processed the response carrying the new version and queued its ACK".into(),
    );
    h.report.notes.push(
        "who should see what is the harness's own reading of the mesh it generated (bench/scale/src/scope.rs): a gateway sees every service; a sidecar every service when the mesh is not scoped, else those of its namespace, of istio-system and of the namespaces its Sidecar imports. A client is complete once it also holds every cluster its scope calls for; a change is waited for at the clients whose scope holds the service, and any other client that gets it is counted".into(),
    );
    h.report.targets = targets(&h.report);
    let name = h.args.name.clone().unwrap_or_else(|| {
        if h.args.scoped {
            "scale-scoped-latest".into()
        } else {
            "scale-latest".into()
        }
    });
    write_reports(&h.args.out_dir, &name, &h.report)?;
    let md = h.report.markdown();
    println!("{md}");
    outcome
}

fn targets(r: &Report) -> Vec<Target> {
    let mut t = Vec::new();
    let mut push = |figure: &str, target: &str, measured: String, met: Option<bool>| {
        t.push(Target {
            figure: figure.into(),
            target: target.into(),
            measured,
            met,
        });
    };
    if let Some(c) = &r.cold_start {
        let measured = match c.all_converged_s {
            Some(s) => format!("{s:.1} s ({} clients)", c.clients),
            None => format!(
                "not converged within {:.0} s ({} of {})",
                c.timeout_s, c.converged, c.clients
            ),
        };
        push(
            "(a) cold start: every client ACKed a complete config",
            "<= 30 s",
            measured,
            Some(c.all_converged_s.is_some_and(|s| s <= 30.0)),
        );
        push(
            "(a) straitd CPU during cold start",
            "",
            format!("{:.1} s", c.straitd_cpu_s),
            None,
        );
        push(
            "(a) straitd peak RSS (VmHWM)",
            "",
            format!("{:.0} MiB", c.straitd_peak_rss_mib),
            None,
        );
    }
    if let Some(s) = &r.steady {
        if let Some(step) = s.steps.last() {
            let all = s
                .steps
                .iter()
                .map(|x| format!("{:.1} at {}", x.mb_per_1000, x.clients))
                .collect::<Vec<_>>()
                .join(", ");
            push(
                "(b) straitd RSS per 1,000 connected clients",
                "<= 100 MB",
                format!("{all} (MB per 1,000 at N clients)"),
                Some(step.converged == step.clients && step.mb_per_1000 <= 100.0),
            );
        }
        push(
            "(b) RSS after every client disconnected, vs none connected",
            "within 10%",
            format!("{:+.1}%", s.after_disconnect_vs_baseline_pct),
            Some(s.after_disconnect_vs_baseline_pct.abs() <= 10.0),
        );
    }
    for (c, label) in [
        (&r.endpoint_change, "(c) endpoint change"),
        (&r.route_change, "(d) route weight change"),
    ] {
        let Some(c) = c else { continue };
        let converged = c.converged == c.affected;
        let measured = if converged {
            format!(
                "p50 {} / p99 {} / max {}",
                secs(c.latency_s.p50),
                secs(c.latency_s.p99),
                secs(c.latency_s.max)
            )
        } else {
            format!(
                "not converged within {:.0} s ({} of {}); p99 of those that did {}",
                c.timeout_s,
                c.converged,
                c.affected,
                secs(c.latency_s.p99)
            )
        };
        push(
            &format!("{label}: change to ACK at every client in its scope, p99"),
            "<= 1 s",
            measured,
            Some(converged && c.latency_s.p99.is_some_and(|p| p <= 1.0)),
        );
        push(
            &format!("{label}: bytes per affected (delta) client / resource size"),
            "<= 2x",
            c.bytes_ratio.map_or("-".into(), |b| {
                format!(
                    "{b:.2}x ({:.0} B for {} B)",
                    c.bytes_per_client.mean.unwrap_or(0.0),
                    c.resource_size_bytes
                )
            }),
            c.bytes_ratio.map(|b| b <= 2.0),
        );
    }
    if let Some(c) = &r.churn {
        push(
            "(e) churn: p99 convergence of each change (worst change)",
            "<= 1 s",
            format!(
                "median {} / worst {} ({} of {} applied changes converged; {} of {} applies failed or unanswered)",
                secs(c.per_change_p99_s.p50),
                secs(c.per_change_p99_s.max),
                c.converged_changes,
                c.changes - c.applies_failed - c.applies_unanswered,
                c.applies_failed + c.applies_unanswered,
                c.changes
            ),
            Some(
                c.converged_changes == c.changes
                    && c.per_change_p99_s.max.is_some_and(|p| p <= 1.0),
            ),
        );
        let first = c.first_10s.p99;
        let last = c.last_10s.p99;
        push(
            "(e) churn: lag in the last 10 s vs the first 10 s (p99)",
            "not growing (last <= 1.5x first + 50 ms)",
            format!(
                "{} vs {}",
                last.map_or("none converged".into(), |l| secs(Some(l))),
                first.map_or("none converged".into(), |f| secs(Some(f)))
            ),
            match (first, last) {
                (Some(f), Some(l)) => Some(l <= f * 1.5 + 0.05 && c.unconverged_clients == 0),
                (_, None) => Some(false),
                (None, Some(_)) => None,
            },
        );
    }
    if let Some(x) = &r.restart {
        let measured = match x.all_back_s {
            Some(s) => format!(
                "{s:.1} s from the kill ({:.2} s to ready)",
                x.kill_to_ready_s
            ),
            None => format!(
                "not all back within {:.0} s ({} of {})",
                x.timeout_s, x.back, x.clients
            ),
        };
        push(
            "(f) kill -9 and restart: every client back and ACKed",
            "<= 60 s",
            measured,
            Some(x.all_back_s.is_some_and(|s| s <= 60.0)),
        );
        push(
            "(f) clients that held less config than before the kill",
            "0",
            x.held_less.to_string(),
            Some(x.held_less == 0),
        );
    }
    if !r.scope_checks.is_empty() {
        let bad: Vec<String> = r
            .scope_checks
            .iter()
            .filter(|c| c.faults() > 0)
            .map(|c| {
                format!(
                    "after {}: {} of {} lack something, {} hold something outside their scope, {} have other routes",
                    c.after, c.missing, c.clients, c.outside, c.routes_differ
                )
            })
            .collect();
        let measured = if bad.is_empty() {
            format!(
                "all clients at each of {} checks ({})",
                r.scope_checks.len(),
                r.scope_checks
                    .iter()
                    .map(|c| c.after.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            bad.join("; ")
        };
        push(
            "every client holds what its scope calls for (clusters, assignments, a sidecar's virtual hosts), no more, no less",
            "every client, every check",
            measured,
            Some(bad.is_empty()),
        );
    }
    {
        let mut parts = Vec::new();
        let mut clean = true;
        for (c, label) in [(&r.endpoint_change, "(c)"), (&r.route_change, "(d)")] {
            let Some(c) = c else { continue };
            parts.push(format!(
                "{label} {} of {} outside its scope got it",
                c.received_outside, c.outside_scope
            ));
            if c.held_outside_at_start > 0 || c.missing_at_start > 0 {
                parts.push(format!(
                    "{label} before the change {} outside held it, {} inside lacked it",
                    c.held_outside_at_start, c.missing_at_start
                ));
            }
            clean &=
                c.received_outside == 0 && c.held_outside_at_start == 0 && c.missing_at_start == 0;
        }
        if let Some(c) = &r.churn {
            parts.push(format!(
                "(e) {} (change, client) pairs outside a change's scope got it",
                c.received_outside
            ));
            if c.held_outside_at_start > 0 || c.missing_at_start > 0 {
                parts.push(format!(
                    "(e) before their changes {} pairs outside held it, {} inside lacked it",
                    c.held_outside_at_start, c.missing_at_start
                ));
            }
            clean &=
                c.received_outside == 0 && c.held_outside_at_start == 0 && c.missing_at_start == 0;
        }
        if !parts.is_empty() {
            push(
                "a change reaches only the clients whose scope holds it",
                "0 outside",
                parts.join("; "),
                Some(clean),
            );
        }
    }
    if let Some(e) = &r.envoys {
        let nacks = e
            .checks
            .iter()
            .map(|c| c.nacks_at_straitd)
            .max()
            .unwrap_or(0);
        let rejected = e
            .checks
            .iter()
            .map(|c| c.rejected_updates)
            .max()
            .unwrap_or(0);
        let synced = e.checks.iter().all(|c| c.synced == c.of);
        let outside: usize = e.checks.iter().map(|c| c.moved_outside).sum();
        push(
            "stock Envoys: synced after every scenario, 0 NACKs, none outside a change's scope got it",
            "all synced, 0, 0",
            format!(
                "{} ({} NACKs at straitd, {} rejected updates at the Envoys, {} Envoys outside a change's scope got it)",
                if synced {
                    "all synced"
                } else {
                    "**not all synced**"
                },
                nacks,
                rejected,
                outside
            ),
            Some(synced && nacks == 0 && rejected == 0 && outside == 0),
        );
    }
    if let Some(f) = &r.final_disconnect {
        push(
            "RSS after everyone disconnected at the end, vs none connected",
            "within 10%",
            format!("{:+.1}% ({:.0} MiB)", f.vs_baseline_pct, f.rss_mib),
            Some(f.vs_baseline_pct.abs() <= 10.0),
        );
    }
    t
}

fn write_reports(dir: &Path, name: &str, report: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let md = dir.join(format!("{name}.md"));
    let json = dir.join(format!("{name}.json"));
    std::fs::write(&md, report.markdown()).with_context(|| format!("writing {}", md.display()))?;
    std::fs::write(&json, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    eprintln!(
        "strait-scale: wrote {} and {}",
        md.display(),
        json.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_exact_and_spread() {
        let n = (0..1000).filter(|i| in_share(*i, 0.1)).count();
        assert_eq!(n, 100);
        assert_eq!((0..10).filter(|i| in_share(*i, 0.0)).count(), 0);
        assert_eq!((0..10).filter(|i| in_share(*i, 1.0)).count(), 10);
    }

    #[test]
    fn the_cli_parses_its_defaults() {
        let args = Args::try_parse_from(["strait-scale"]).expect("defaults parse");
        assert_eq!(args.clients, 10_000);
        assert_eq!(args.services, 1000);
        assert_eq!(args.load_threads, 1);
        assert!(!args.scoped);
        assert_eq!((args.scoped_imports, args.shared_services), (2, 2));
        let args =
            Args::try_parse_from(["strait-scale", "--skip", "churn,restart"]).expect("skip parses");
        assert_eq!(args.skip, vec!["churn", "restart"]);
        let args = Args::try_parse_from(["strait-scale", "--scoped", "--scoped-imports", "1"])
            .expect("scoped parses");
        assert!(args.scoped);
        assert_eq!(args.scoped_imports, 1);
    }
}
