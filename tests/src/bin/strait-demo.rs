//! The README demo: Istio's bookinfo routing, served by straitd to stock Envoy, all on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Deserialize;
use serde_json::Value;
use strait_tests::client::{Req, send_many};
use strait_tests::{
    Backend, ConfigDir, DataPlane, ProxySpec, Straitd, StraitdOptions, XdsProtocol, bins, envoy,
};

/// Istio's `samples/bookinfo/networking/virtual-service-reviews-jason-v2-v3.yaml`, unmodified.
/// Embedded rather than put in `examples/bookinfo/`: straitd loads that whole directory, and
/// this rule is what the demo applies later, at runtime.
const REVIEWS_JASON_V2_V3: &str = "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v3
";

/// The split `examples/bookinfo/virtual-service-reviews-90-10.yaml` configures.
const CONFIGURED_SPLIT: [(&str, u32); 2] = [("reviews-v1", 90), ("reviews-v2", 10)];
/// With 1000 requests one standard deviation of a 10% share is ~1 point; 5 points off means
/// the weights are wrong, not unlucky.
const SPLIT_TOLERANCE_POINTS: f64 = 5.0;
const SPLIT_REQUESTS: usize = 1000;
const MATCH_REQUESTS: usize = 200;
/// How long config may take to reach Envoy and show in its answers.
const CONVERGE: Duration = Duration::from_secs(15);
const NODE_ID: &str = "productpage-v1.default";
const REVIEWS_HOST: &str = "reviews:9080";

/// Set by Ctrl-C, so the demo's own waits stop at once instead of running out their timeouts.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strait-demo: cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The demo runs on its own thread: the harness blocks while it waits for processes, and
    // Ctrl-C must still be noticed then.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("demo".into())
        .spawn(move || {
            let _ = done_tx.send(demo());
        });
    if let Err(e) = spawned {
        eprintln!("strait-demo: cannot spawn the demo thread: {e}");
        return ExitCode::FAILURE;
    }
    rt.block_on(async {
        let mut done_rx = done_rx;
        tokio::select! {
            result = &mut done_rx => finish(
                result.unwrap_or_else(|_| Err(anyhow::anyhow!("the demo thread panicked"))),
            ),
            _ = tokio::signal::ctrl_c() => {
                INTERRUPTED.store(true, Ordering::SeqCst);
                println!("\ninterrupted: stopping straitd and Envoy");
                // straitd and Envoy run in their own process groups (so that a terminal's
                // Ctrl-C can't race the harness's cleanup), so they never saw this SIGINT.
                kill_child_processes();
                // With its processes gone the demo thread fails fast and drops its handles,
                // which stops the backends and removes the temp dirs; a second Ctrl-C or a
                // slow unwind doesn't wait for that.
                tokio::select! {
                    _ = done_rx => {}
                    _ = tokio::signal::ctrl_c() => {}
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
                ExitCode::from(130)
            }
        }
    })
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("\nFAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn interrupted() -> anyhow::Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
    Ok(())
}

fn step(n: u32, title: &str) {
    println!("\n== {n}. {title}");
}

fn demo() -> anyhow::Result<()> {
    let root = bins::workspace_root();
    let example = root.join("examples/bookinfo");
    let envoy_bin = bins::try_envoy_path().with_context(|| {
        format!(
            "no Envoy at $STRAIT_ENVOY or {}: run scripts/install-tools.sh",
            bins::default_envoy_path().display()
        )
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;

    println!("Strait demo: Istio's bookinfo rules from examples/bookinfo/, served by straitd");
    println!("over delta ADS to stock Envoy as productpage's sidecar; all on 127.0.0.1.");

    step(
        1,
        "Backends, one per WorkloadEntry in examples/bookinfo/registry.yaml",
    );
    let workloads = workload_entries(&example.join("registry.yaml"))?;
    let mut backends = Vec::new();
    for (name, addr) in &workloads {
        let backend = Backend::start_at(name, *addr).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {addr} for {name} ({:#}): port {} is taken, \
                 perhaps by an earlier demo; free it and run again",
                e.root_cause(),
                addr.port()
            )
        })?;
        backends.push(backend);
    }
    for b in &backends {
        println!(
            "   {:<15} http://{}  (answers with its name)",
            b.name(),
            b.addr()
        );
    }

    step(2, "straitd and an Envoy sidecar");
    let config = ConfigDir::new()?;
    let files = copy_yaml(&example, &config)?;
    let straitd = Straitd::start(StraitdOptions::new(config.path()))?;
    println!(
        "   straitd        xDS {}, admin {}",
        straitd.xds_addr(),
        straitd.admin_url()
    );
    println!("                  config dir: {}", files.join(", "));
    interrupted()?;
    let spec = ProxySpec::sidecar(
        NODE_ID,
        "default",
        &[("app", "productpage"), ("version", "v1")],
    )
    .with_xds_protocol(XdsProtocol::Delta);
    let proxy = envoy::Envoy.start(&straitd, &spec)?;
    let outbound = proxy.outbound_addr();
    println!(
        "   envoy {:<8} node {NODE_ID} (app=productpage, version=v1), delta ADS",
        envoy_version(&envoy_bin)
    );
    println!(
        "                  outbound listener {outbound}, admin {}",
        proxy.admin_url()
    );

    step(
        3,
        "virtual-service-reviews-90-10.yaml: reviews 90% v1 / 10% v2",
    );
    let plain = Req::get(REVIEWS_HOST, "/");
    let waited = rt.block_on(converge("Envoy routing reviews to v1/v2", || async {
        let tally = send_many(20, outbound, &plain).await;
        ensure!(
            tally.keys().all(|k| k == "reviews-v1" || k == "reviews-v2"),
            "answers: {tally:?}"
        );
        Ok(())
    }))?;
    println!("   routes in place after {}", secs(waited));
    let tally = rt.block_on(send_many(SPLIT_REQUESTS, outbound, &plain));
    interrupted()?;
    println!("   {SPLIT_REQUESTS} x GET http://{REVIEWS_HOST}/ through the sidecar ({outbound}):");
    println!(
        "     {:<12} {:>8} {:>9} {:>11}",
        "backend", "requests", "observed", "configured"
    );
    let configured: BTreeMap<&str, u32> = CONFIGURED_SPLIT.into_iter().collect();
    let mut off = Vec::new();
    for (name, want) in &configured {
        let count = tally.get(*name).copied().unwrap_or(0);
        let observed = percent(count, SPLIT_REQUESTS);
        println!("     {name:<12} {count:>8} {observed:>8.1}% {want:>10}%");
        if (observed - f64::from(*want)).abs() > SPLIT_TOLERANCE_POINTS {
            off.push(format!("{name} got {observed:.1}%, configured {want}%"));
        }
    }
    // Anything else (another version, an error status, a failed exchange) is a failure
    // however rare: it is listed below the table, since its text doesn't fit a column.
    let others: Vec<(&String, &usize)> = tally
        .iter()
        .filter(|(k, _)| !configured.contains_key(k.as_str()))
        .collect();
    for (answer, count) in &others {
        println!("     {count:>5} x unexpected: {answer}");
    }
    ensure!(
        others.is_empty(),
        "{} of {SPLIT_REQUESTS} requests were not answered by reviews-v1 or reviews-v2",
        others.iter().map(|(_, n)| **n).sum::<usize>()
    );
    ensure!(
        off.is_empty(),
        "the split is more than {SPLIT_TOLERANCE_POINTS} points off: {}",
        off.join("; ")
    );
    println!("   ok: within {SPLIT_TOLERANCE_POINTS} points of 90/10");

    step(
        4,
        "Apply virtual-service-reviews-jason-v2-v3.yaml: end-user jason -> v2, everyone else -> v3",
    );
    // Written next to the config dir, not in it: straitd watches that directory.
    let rule = config
        .scratch()
        .join("virtual-service-reviews-jason-v2-v3.yaml");
    std::fs::write(&rule, REVIEWS_JASON_V2_V3)
        .with_context(|| format!("writing {}", rule.display()))?;
    println!(
        "   $ straitctl apply -f virtual-service-reviews-jason-v2-v3.yaml --admin {}",
        straitd.admin_url()
    );
    let mut apply = Command::new(bins::straitctl());
    apply
        .arg("apply")
        .arg("-f")
        .arg(&rule)
        .args(["--admin", &straitd.admin_url()]);
    print_indented(&run(apply)?);
    let jason = Req::get(REVIEWS_HOST, "/").header("end-user", "jason");
    let waited = rt.block_on(converge("the new rule to reach Envoy", || async {
        let j = send_many(10, outbound, &jason).await;
        let p = send_many(10, outbound, &plain).await;
        ensure!(
            j.get("reviews-v2") == Some(&10) && p.get("reviews-v3") == Some(&10),
            "jason: {j:?}, others: {p:?}"
        );
        Ok(())
    }))?;
    println!("   converged after {}", secs(waited));
    let j = rt.block_on(send_many(MATCH_REQUESTS, outbound, &jason));
    let p = rt.block_on(send_many(MATCH_REQUESTS, outbound, &plain));
    interrupted()?;
    println!(
        "   {MATCH_REQUESTS} x with end-user: jason  -> {}",
        tally_line(&j)
    );
    println!(
        "   {MATCH_REQUESTS} x without end-user     -> {}",
        tally_line(&p)
    );
    ensure!(
        j.get("reviews-v2") == Some(&MATCH_REQUESTS),
        "jason's requests did not all go to reviews-v2: {j:?}"
    );
    ensure!(
        p.get("reviews-v3") == Some(&MATCH_REQUESTS),
        "requests without end-user did not all go to reviews-v3: {p:?}"
    );
    println!("   ok: jason on v2, everyone else on v3");

    step(5, "What the control plane and Envoy report");
    println!(
        "   $ straitctl proxy-status --admin {}",
        straitd.admin_url()
    );
    let mut status = Command::new(bins::straitctl());
    status.args(["proxy-status", "--admin", &straitd.admin_url()]);
    print_indented(&run(status)?);
    println!(
        "\n   Envoy's routes for reviews (GET {}/config_dump):",
        proxy.admin_url()
    );
    print_indented(&reviews_routes(&proxy.config_dump()?)?);

    step(6, "Shut down");
    drop(proxy);
    drop(straitd);
    let n = backends.len();
    drop(backends);
    drop(config);
    println!("   stopped Envoy, straitd and {n} backends; removed the temp config dir");
    println!("\nDemo passed.");
    Ok(())
}

/// Retries `f` until it succeeds, for at most [`CONVERGE`]; returns how long that took.
async fn converge<F, Fut>(what: &str, mut f: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    loop {
        interrupted()?;
        match f().await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) if start.elapsed() > CONVERGE => {
                return Err(e.context(format!("waited {CONVERGE:?} for {what}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `(name, address)` of every WorkloadEntry in a registry file, in file order.
fn workload_entries(path: &Path) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let doc = Value::deserialize(doc).with_context(|| format!("parsing {}", path.display()))?;
        if doc["kind"] != "WorkloadEntry" {
            continue;
        }
        let name = doc["metadata"]["name"]
            .as_str()
            .context("a WorkloadEntry without metadata.name")?;
        let addr = doc["spec"]["address"]
            .as_str()
            .with_context(|| format!("WorkloadEntry {name} has no spec.address"))?;
        let port = doc["spec"]["ports"]["http"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .with_context(|| format!("WorkloadEntry {name} has no spec.ports.http"))?;
        let addr: SocketAddr = format!("{addr}:{port}")
            .parse()
            .with_context(|| format!("WorkloadEntry {name}: {addr}:{port} is not an address"))?;
        out.push((name.to_string(), addr));
    }
    ensure!(!out.is_empty(), "no WorkloadEntries in {}", path.display());
    Ok(out)
}

/// Copies the example's YAML files into straitd's config dir; returns their names.
fn copy_yaml(from: &Path, to: &ConfigDir) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let path: PathBuf = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml")
            && let Some(name) = path.file_name().and_then(|n| n.to_str())
        {
            let yaml = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            to.write(name, &yaml)?;
            names.push(name.to_string());
        }
    }
    ensure!(!names.is_empty(), "no *.yaml in {}", from.display());
    names.sort();
    Ok(names)
}

/// `1.40.0` from `envoy --version`, or `?`.
fn envoy_version(envoy: &Path) -> String {
    Command::new(envoy)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            // `PATH  version: SHA/1.40.0/Clean/RELEASE/BoringSSL`
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let (_, rest) = text.split_once("version: ")?;
            rest.split('/').nth(1).map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

/// Runs a command to completion; its stdout, or an error with its stderr.
fn run(mut cmd: Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The virtual hosts for reviews in Envoy's RDS config, one line per route.
fn reviews_routes(dump: &Value) -> anyhow::Result<String> {
    let mut out = String::new();
    let route_dumps = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("RoutesConfigDump"))
        });
    for rd in route_dumps {
        for rc in rd["dynamic_route_configs"].as_array().into_iter().flatten() {
            let rc = &rc["route_config"];
            for vh in rc["virtual_hosts"].as_array().into_iter().flatten() {
                let domains: Vec<&str> = vh["domains"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if !domains.contains(&REVIEWS_HOST) {
                    continue;
                }
                out.push_str(&format!(
                    "route config {}, virtual host {}\n  domains: {}\n",
                    rc["name"].as_str().unwrap_or("?"),
                    vh["name"].as_str().unwrap_or("?"),
                    domains.join(", ")
                ));
                let routes: Vec<(String, String)> = vh["routes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| (describe_match(&r["match"]), describe_action(r)))
                    .collect();
                let width = routes.iter().map(|(m, _)| m.len()).max().unwrap_or(0);
                for (m, action) in routes {
                    out.push_str(&format!("  {m:<width$} -> {action}\n"));
                }
            }
        }
    }
    if out.is_empty() {
        bail!("no virtual host for {REVIEWS_HOST} in Envoy's /config_dump");
    }
    Ok(out)
}

fn describe_match(m: &Value) -> String {
    let mut parts = Vec::new();
    for key in ["prefix", "path", "path_separated_prefix"] {
        if let Some(v) = m[key].as_str() {
            parts.push(format!("{key} {v}"));
        }
    }
    if let Some(re) = m["safe_regex"]["regex"].as_str() {
        parts.push(format!("regex {re}"));
    }
    for h in m["headers"].as_array().into_iter().flatten() {
        let name = h["name"].as_str().unwrap_or("?");
        let sm = &h["string_match"];
        let cond = ["exact", "prefix", "suffix", "contains"]
            .iter()
            .find_map(|k| sm[*k].as_str().map(|v| format!("{k} {v:?}")))
            .unwrap_or_else(|| h.to_string());
        parts.push(format!("{name} {cond}"));
    }
    if parts.is_empty() {
        m.to_string()
    } else {
        parts.join(", ")
    }
}

fn describe_action(route: &Value) -> String {
    let r = &route["route"];
    if let Some(c) = r["cluster"].as_str() {
        return c.to_string();
    }
    if let Some(clusters) = r["weighted_clusters"]["clusters"].as_array() {
        return clusters
            .iter()
            .map(|c| {
                format!(
                    "{} ({})",
                    c["name"].as_str().unwrap_or("?"),
                    c["weight"].as_u64().unwrap_or(0)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
    }
    // Redirects, direct responses: show Envoy's own words.
    route
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| *k != "match" && *k != "name")
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn tally_line(tally: &BTreeMap<String, usize>) -> String {
    tally
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn percent(count: usize, of: usize) -> f64 {
    // Request counts are small; the conversions are exact.
    count as f64 * 100.0 / of as f64
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("     {line}");
    }
}

/// SIGKILLs every child of this process and its process group (the harness starts straitd and
/// Envoy as group leaders). Linux only: children are found in /proc.
fn kill_child_processes() {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses, so parse after
        // the last `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}"), &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
