//! strait-bench: strait-proxy against stock Envoy, same config from one straitd, same machine,
//! alternating rounds, with nginx as a reference in the plaintext section; prints a markdown
//! table and writes it with the raw numbers as JSON.

mod load;
mod nginx;
mod procfs;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use strait_tests::client::{Req, request};
use strait_tests::config::http_service;
use strait_tests::{
    Backend, ConfigDir, DataPlane, Proxy, ProxySpec, Straitd, StraitdOptions, eventually,
};

use crate::load::Target;
use crate::nginx::Nginx;
use crate::report::{Run, Sample};

/// The service every request is for, as the app names it.
const HOST: &str = "ratings:9080";
/// How long a fresh proxy may take to route its first request.
const CONVERGE: Duration = Duration::from_secs(20);

#[derive(Parser, Debug)]
#[command(
    name = "strait-bench",
    about = "strait-proxy against stock Envoy (and nginx as a reference), side by side"
)]
struct Args {
    /// Rounds per data plane; each round runs direct, then every data plane in turn.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    #[arg(long, value_enum, default_value = "all")]
    section: Section,
    /// Data planes to compare, in the order each round runs them: envoy, strait-proxy, and
    /// nginx (a plain reverse proxy, no xDS: a reference in the plaintext section only).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "envoy,strait-proxy,nginx"
    )]
    data_planes: Vec<String>,
    /// Seconds of closed-loop load (wrk) per measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of closed-loop load before measuring, to warm connections and allocators.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Closed-loop connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Open-loop rate for the latency measurement, requests/s.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds of open-loop load per latency measurement.
    #[arg(long, default_value_t = 10)]
    latency_duration: u64,
    /// Open-loop connections (oha keeps them alive and sends on the fixed schedule).
    #[arg(long, default_value_t = 8)]
    latency_connections: u32,
    /// Skip the second open loop per proxy, run with the proxy core kept out of idle.
    #[arg(long)]
    no_awake_latency: bool,
    /// The core for the proxies under test.
    #[arg(long, default_value_t = 1)]
    proxy_core: usize,
    /// The core for everything else: this driver, its backend, straitd, wrk and oha.
    #[arg(long, default_value_t = 0)]
    driver_core: usize,
    #[arg(long, env = "STRAIT_BENCH_WRK", default_value = "wrk")]
    wrk: PathBuf,
    #[arg(long, env = "STRAIT_BENCH_OHA", default_value = "oha")]
    oha: PathBuf,
    /// The nginx binary for the nginx reference subject (scripts/bench.sh installs it).
    #[arg(long, env = "STRAIT_BENCH_NGINX", default_value = "nginx")]
    nginx: PathBuf,
    /// Where latest.md and latest.json go [default: bench/results in the workspace].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Section {
    /// HTTP/1.1 plaintext through one sidecar (outbound).
    Plaintext,
    /// Client sidecar -> mTLS -> server sidecar (PeerAuthentication STRICT) -> backend.
    Mtls,
    All,
}

impl Section {
    fn runs(self, section: Section) -> bool {
        self == Section::All || self == section
    }
}

/// A mesh data plane: configured by straitd over xDS (not nginx).
fn data_plane(name: &str) -> anyhow::Result<Box<dyn DataPlane>> {
    match name {
        "envoy" => Ok(Box::new(strait_tests::envoy::Envoy)),
        "strait-proxy" => Ok(Box::new(strait_tests::strait_proxy::StraitProxy)),
        nginx::NAME => anyhow::bail!("nginx is not a mesh data plane (no xDS, no mesh mTLS)"),
        other => anyhow::bail!("unknown data plane {other:?}: envoy, strait-proxy or nginx"),
    }
}

/// Whether `--data-planes` may name it.
fn known(name: &str) -> anyhow::Result<()> {
    if name == nginx::NAME {
        return Ok(());
    }
    data_plane(name).map(drop)
}

/// Why nginx has no numbers in the mTLS section.
const NGINX_NO_MTLS: &str = "not applicable: nginx has no mesh mTLS (it is no xDS client and \
                             gets no certificates from straitd); it is a reference for plaintext";

/// What is under test in one measurement: the processes to pin and watch, and where to send.
struct Subject {
    name: String,
    pids: Vec<u32>,
    target: Target,
    /// Stopped when the subject is dropped.
    _proxies: Vec<Box<dyn Proxy>>,
    /// Killed and reaped when the subject is dropped.
    _nginx: Option<Nginx>,
}

struct Bench {
    args: Args,
    runtime: tokio::runtime::Runtime,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Everything this process starts inherits the driver's core; proxies are moved off it.
    procfs::pin(std::process::id(), args.driver_core).context("pinning the driver")?;
    if args.data_planes.iter().any(|d| d == "strait-proxy") {
        // Envoy runs with --concurrency 1 (the harness says so); strait-proxy reads this.
        let workers = std::env::var("STRAIT_CONCURRENCY").unwrap_or_default();
        anyhow::ensure!(
            workers == "1",
            "strait-proxy must run one worker, as Envoy runs --concurrency 1: \
             set STRAIT_CONCURRENCY=1 (scripts/bench.sh does), not {workers:?}"
        );
    }
    for name in &args.data_planes {
        known(name)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the driver's runtime")?;
    let bench = Bench { args, runtime };
    let mut run = Run::describe(
        &bench.args.data_planes,
        bench.args.rounds,
        &bench.settings(),
    );
    eprintln!("strait-bench: {}", run.setup.join("; "));
    if bench.args.section.runs(Section::Plaintext) {
        bench.plaintext(&mut run)?;
    }
    if bench.args.section.runs(Section::Mtls) {
        bench.mtls(&mut run)?;
    }
    run.finish();
    let markdown = run.markdown();
    println!("{markdown}");
    let out = bench
        .args
        .out
        .clone()
        .unwrap_or_else(|| strait_tests::bins::workspace_root().join("bench/results"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("latest.md"), &markdown).context("writing latest.md")?;
    let json = serde_json::to_string_pretty(&run).context("encoding the raw results")?;
    std::fs::write(out.join("latest.json"), json + "\n").context("writing latest.json")?;
    eprintln!("strait-bench: wrote {}/latest.{{md,json}}", out.display());
    Ok(())
}

impl Bench {
    fn settings(&self) -> Vec<String> {
        let a = &self.args;
        let proxy = strait_tests::bins::cargo_bin("strait-proxy");
        let mut settings = vec![
            format!(
                "closed loop: wrk -t1 -c{} -d{}s after {}s warm-up",
                a.connections, a.duration, a.warmup
            ),
            format!(
                "open loop: oha -q {} -c {} -z {}s --latency-correction -w",
                a.rate, a.latency_connections, a.latency_duration
            ),
            format!(
                "proxies on core {}, driver/backend/straitd/load generators on core {}",
                a.proxy_core, a.driver_core
            ),
            format!(
                "straitd {}, strait-proxy {} ({}), envoy {}",
                strait_tests::bins::straitd().display(),
                proxy.display(),
                linkage(&proxy),
                strait_tests::bins::try_envoy_path()
                    .map_or_else(|| "missing".into(), |p| p.display().to_string()),
            ),
        ];
        if a.data_planes.iter().any(|d| d == nginx::NAME) {
            settings.push(format!(
                "nginx {} ({}): master_process off, one process, plaintext only",
                a.nginx.display(),
                nginx::version(&a.nginx).unwrap_or_else(|| "not runnable".into()),
            ));
        }
        settings
    }

    /// One sidecar's outbound listener in front of the backend.
    fn plaintext(&self, run: &mut Run) -> anyhow::Result<()> {
        let backend = Backend::start("ratings-v1");
        let config = ConfigDir::new()?;
        config.write(
            "ratings.yaml",
            &http_service("ratings", "default", 9080, &[("v1", backend.port())]),
        )?;
        let straitd = Straitd::start(StraitdOptions::new(config.path()))?;
        let spec = ProxySpec::sidecar("bench-client.default", "default", &[("app", "bench")]);
        for round in 1..=self.args.rounds {
            let direct = Subject {
                name: "direct".into(),
                pids: Vec::new(),
                target: Target {
                    addr: backend.addr(),
                    host: HOST.into(),
                },
                _proxies: Vec::new(),
                _nginx: None,
            };
            run.push(self.measure("plaintext", round, Ok(direct), false));
            for name in &self.args.data_planes {
                let subject = if name == nginx::NAME {
                    // Not configured by straitd: its config routes straight to the backend.
                    Nginx::start(&self.args.nginx, backend.addr()).map(|nginx| Subject {
                        name: name.clone(),
                        pids: vec![nginx.pid()],
                        target: Target {
                            addr: nginx.addr(),
                            host: HOST.into(),
                        },
                        _proxies: Vec::new(),
                        _nginx: Some(nginx),
                    })
                } else {
                    data_plane(name)
                        .and_then(|dp| dp.start(&straitd, &spec))
                        .map(|proxy| Subject {
                            name: name.clone(),
                            pids: vec![proxy.pid()],
                            target: Target {
                                addr: proxy.outbound_addr(),
                                host: HOST.into(),
                            },
                            _proxies: vec![proxy],
                            _nginx: None,
                        })
                };
                let subject = subject.map_err(|e| (name.clone(), e));
                run.push(self.measure("plaintext", round, subject, false));
            }
        }
        Ok(())
    }

    /// Client sidecar -> mTLS -> server sidecar (STRICT) -> backend, both of the same kind.
    fn mtls(&self, run: &mut Run) -> anyhow::Result<()> {
        let backend = Backend::start("ratings-v1");
        let server = ProxySpec::sidecar(
            "ratings-v1.default",
            "default",
            &[("app", "ratings"), ("version", "v1")],
        )
        .workload("bench-ratings", backend.port());
        let inbound = server
            .inbound_port()
            .expect("a workload has an inbound port");
        let client = ProxySpec::sidecar("bench-client.default", "default", &[("app", "bench")])
            .secure("bench-client");
        let config = ConfigDir::new()?;
        config.write("ratings.yaml", &mtls_registry(inbound))?;
        let straitd = Straitd::start(StraitdOptions::new(config.path()))?;
        if self.args.data_planes.iter().any(|d| d == nginx::NAME) {
            run.skip("mtls", nginx::NAME, NGINX_NO_MTLS);
        }
        for round in 1..=self.args.rounds {
            let direct = Subject {
                name: "direct".into(),
                pids: Vec::new(),
                target: Target {
                    addr: backend.addr(),
                    host: HOST.into(),
                },
                _proxies: Vec::new(),
                _nginx: None,
            };
            run.push(self.measure("mtls", round, Ok(direct), false));
            for name in self.args.data_planes.iter().filter(|d| *d != nginx::NAME) {
                let subject = data_plane(name)
                    .and_then(|dp| {
                        let server = dp.start(&straitd, &server)?;
                        let client = dp.start(&straitd, &client)?;
                        Ok(Subject {
                            name: name.clone(),
                            pids: vec![client.pid(), server.pid()],
                            target: Target {
                                addr: client.outbound_addr(),
                                host: HOST.into(),
                            },
                            _proxies: vec![client, server],
                            _nginx: None,
                        })
                    })
                    .map_err(|e| (name.clone(), e));
                if let Err((name, e)) = &subject {
                    eprintln!("strait-bench: {name}: mTLS not available: {e:#}");
                }
                run.push(self.measure("mtls", round, subject, true));
            }
        }
        Ok(())
    }

    /// Pins the subject, then: idle memory, a warm-up, the closed loop (CPU, memory under
    /// load), the open loop (latency). Failures become the sample's error, not the run's.
    fn measure(
        &self,
        section: &'static str,
        round: u32,
        subject: Result<Subject, (String, anyhow::Error)>,
        mtls: bool,
    ) -> Sample {
        let subject = match subject {
            Ok(s) => s,
            Err((name, e)) => {
                let what = if mtls { "mTLS not available" } else { "failed" };
                return Sample::failed(section, &name, round, format!("{what}: {e:#}"));
            }
        };
        eprintln!("strait-bench: {section} round {round}: {}", subject.name);
        let mut sample = Sample::new(section, &subject.name, round, subject.pids.len());
        if let Err(e) = self.measure_into(&subject, mtls, &mut sample) {
            eprintln!("strait-bench: {section} {}: {e:#}", subject.name);
            sample.error = Some(format!("{e:#}"));
        }
        sample
    }

    fn measure_into(&self, s: &Subject, mtls: bool, sample: &mut Sample) -> anyhow::Result<()> {
        let a = &self.args;
        for pid in &s.pids {
            procfs::pin(*pid, a.proxy_core)?;
        }
        if !s.pids.is_empty() {
            // Let start-up work (xDS, certificates) settle before reading idle memory.
            std::thread::sleep(Duration::from_secs(1));
            sample.idle_rss_kib = Some(sum(&s.pids, procfs::rss_kib)?);
            sample.idle_rss_anon_kib = Some(sum(&s.pids, procfs::rss_anon_kib)?);
            sample.threads = Some(sum(&s.pids, procfs::threads)?);
        }
        self.wait_routed(s.target.addr, mtls)?;
        load::wrk(
            &a.wrk,
            &s.target,
            a.connections,
            Duration::from_secs(a.warmup),
        )?;

        let peak = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let cpu_before = procfs::cpu_times_of(&s.pids)?;
        let core_before = procfs::core_busy_micros(a.proxy_core)?;
        let started = Instant::now();
        let pids = s.pids.as_slice();
        let closed = std::thread::scope(|scope| {
            if !pids.is_empty() {
                scope.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(rss) = sum(pids, procfs::rss_kib) {
                            peak.fetch_max(rss, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
            }
            let closed = load::wrk(
                &a.wrk,
                &s.target,
                a.connections,
                Duration::from_secs(a.duration),
            );
            stop.store(true, Ordering::Relaxed);
            closed
        })?;
        let wall_us = started.elapsed().as_micros() as f64;
        let cpu = procfs::cpu_times_of(&s.pids)?.since(cpu_before);
        let (cpu_us, system_us) = (cpu.total() as f64, cpu.system as f64);
        let core_us = procfs::core_busy_micros(a.proxy_core)?.saturating_sub(core_before) as f64;
        if !s.pids.is_empty() {
            sample.cpu_us_per_request = Some(cpu_us / closed.requests.max(1) as f64);
            sample.system_us_per_request = Some(system_us / closed.requests.max(1) as f64);
            sample.proxy_core_busy = Some(cpu_us / wall_us);
            // Whatever else ran on the proxies' core: other users of this shared machine.
            sample.others_on_core = Some((core_us - cpu_us).max(0.0) / wall_us);
            sample.load_rss_kib = Some(peak.load(Ordering::Relaxed));
        }
        sample.closed = Some(closed);
        let open_loop = || {
            load::oha(
                &a.oha,
                &s.target,
                a.rate,
                a.latency_connections,
                Duration::from_secs(a.latency_duration),
            )
        };
        sample.open = Some(open_loop()?);
        if !s.pids.is_empty() && !a.no_awake_latency {
            // Diagnostic: the same open loop with the proxy core never idle (a SCHED_IDLE
            // spinner gives way at once to any proxy thread), so a proxy's wake-ups do not
            // include the hypervisor waking a halted vCPU.
            let _spinner = load::IdleSpinner::start(a.proxy_core)?;
            sample.open_awake = Some(open_loop()?);
        }
        Ok(())
    }

    /// Waits until a request through `addr` reaches the backend (over mTLS when `mtls`: the
    /// backend then sees the client's SPIFFE identity).
    fn wait_routed(&self, addr: SocketAddr, mtls: bool) -> anyhow::Result<()> {
        self.runtime.block_on(eventually(CONVERGE, || async move {
            let resp = request(addr, Req::get(HOST, "/").echo()).await?;
            anyhow::ensure!(resp.status == 200, "{} {}", resp.status, resp.body);
            if mtls {
                let xfcc = resp.json()?["headers"]["x-forwarded-client-cert"].clone();
                anyhow::ensure!(
                    xfcc.as_str().is_some_and(
                        |x| x.contains("spiffe://cluster.local/ns/default/sa/bench-client")
                    ),
                    "the backend saw no client identity (x-forwarded-client-cert: {xfcc})"
                );
            }
            Ok(())
        }))
    }
}

/// How an ELF executable is linked: "dynamically linked" when it names an interpreter (the
/// dynamic loader, which maps shared libraries into it, and they count in its resident
/// memory), else "statically linked".
fn linkage(path: &std::path::Path) -> String {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => return format!("unreadable: {e}"),
    };
    let elf = match ElfFile64::<object::Endianness>::parse(&*data) {
        Ok(elf) => elf,
        Err(e) => return format!("not a 64-bit ELF: {e}"),
    };
    let interp = elf
        .elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(elf.endian()) == object::elf::PT_INTERP);
    if interp {
        "dynamically linked".into()
    } else {
        "statically linked".into()
    }
}

fn sum(pids: &[u32], read: impl Fn(u32) -> anyhow::Result<u64>) -> anyhow::Result<u64> {
    pids.iter().map(|p| read(*p)).sum()
}

/// ratings behind its sidecar's inbound port, mTLS only (auto mTLS picks it for clients).
fn mtls_registry(inbound: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-v1, namespace: default}}
spec:
  address: 127.0.0.1
  ports: {{http: {inbound}}}
  labels: {{app: ratings, version: v1, security.istio.io/tlsMode: istio}}
  serviceAccount: bench-ratings
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec:
  mtls: {{mode: STRICT}}
"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn linkage_reads_the_program_headers() {
        // Test binaries link glibc dynamically (the release strait-proxy is built static-pie).
        let me = std::env::current_exe().expect("the test binary");
        assert_eq!(super::linkage(&me), "dynamically linked");
        let not_elf = std::env::temp_dir().join(format!("strait-bench-{}", std::process::id()));
        std::fs::write(&not_elf, "#!/bin/sh\n").expect("write");
        assert!(super::linkage(&not_elf).starts_with("not a 64-bit ELF"));
        std::fs::remove_file(&not_elf).ok();
    }
}
