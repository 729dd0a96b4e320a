//! The README demo: Istio's bookinfo routing, served by straitd to stock Envoy and strait-proxy
//! side by side, then mTLS between sidecars with their identities shown; all on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Deserialize;
use serde_json::Value;
use strait_tests::client::{HttpClient, Req, get_blocking, send_many};
use strait_tests::{
    Backend, ConfigDir, Proxy, ProxySpec, Straitd, StraitdOptions, XdsProtocol, bins, eventually,
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
const ENVOY_NODE: &str = "productpage-v1.default";
const STRAIT_NODE: &str = "productpage-v1-strait.default";
const RATINGS_NODE: &str = "ratings-v2.default";
const PRODUCTPAGE_SA: &str = "bookinfo-productpage";
const RATINGS_SA: &str = "bookinfo-ratings";
const REVIEWS_HOST: &str = "reviews:9080";
const RATINGS_HOST: &str = "ratings:9080";
const XFCC: &str = "x-forwarded-client-cert";

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
                println!("\ninterrupted: stopping straitd and the proxies");
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

/// The two sidecars of productpage, one per data plane, side by side.
struct Sidecar {
    /// `envoy` or `strait-proxy`.
    plane: &'static str,
    proxy: Box<dyn Proxy>,
}

impl Sidecar {
    fn outbound(&self) -> SocketAddr {
        self.proxy.outbound_addr()
    }
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
    println!("over delta ADS to two sidecars of productpage side by side, stock Envoy and");
    println!("strait-proxy, with the same requests through each; then mTLS between sidecars.");
    println!("All on 127.0.0.1.");

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

    step(
        2,
        "straitd, and productpage's sidecars: stock Envoy and strait-proxy",
    );
    let config = ConfigDir::new()?;
    let files = copy_yaml(&example, &config)?;
    let straitd = Straitd::start(StraitdOptions::new(config.path()))?;
    println!(
        "   straitd        xDS {} (TLS {}), admin {}",
        straitd.xds_addr(),
        straitd.tls_addr(),
        straitd.admin_url()
    );
    println!("                  config dir: {}", files.join(", "));
    interrupted()?;
    let mut sidecars = Vec::new();
    for (plane, node_id) in [("envoy", ENVOY_NODE), ("strait-proxy", STRAIT_NODE)] {
        // Over straitd's TLS port with a bootstrap token: each gets its identity's certificate.
        let spec = ProxySpec::sidecar(
            node_id,
            "default",
            &[("app", "productpage"), ("version", "v1")],
        )
        .secure(PRODUCTPAGE_SA)
        .with_xds_protocol(XdsProtocol::Delta);
        let proxy = strait_tests::dataplane::named(plane).start(&straitd, &spec)?;
        let version = match plane {
            "envoy" => format!("envoy {}", envoy_version(&envoy_bin)),
            _ => plane.to_string(),
        };
        println!("   {version:<14} node {node_id} (app=productpage, version=v1), delta ADS");
        println!(
            "                  outbound listener {}, admin {}",
            proxy.outbound_addr(),
            proxy.admin_url()
        );
        sidecars.push(Sidecar { plane, proxy });
        interrupted()?;
    }

    step(
        3,
        "virtual-service-reviews-90-10.yaml: reviews 90% v1 / 10% v2, through each sidecar",
    );
    let plain = Req::get(REVIEWS_HOST, "/");
    let mut tallies = Vec::new();
    for sidecar in &sidecars {
        let waited = rt.block_on(converge(
            &format!("{} routing reviews to v1/v2", sidecar.plane),
            || async {
                let tally = send_many(20, sidecar.outbound(), &plain).await;
                ensure!(
                    tally.keys().all(|k| k == "reviews-v1" || k == "reviews-v2"),
                    "answers: {tally:?}"
                );
                Ok(())
            },
        ))?;
        println!(
            "   {:<13} routes in place after {}",
            sidecar.plane,
            secs(waited)
        );
        tallies.push(rt.block_on(send_many(SPLIT_REQUESTS, sidecar.outbound(), &plain)));
        interrupted()?;
    }
    println!("   {SPLIT_REQUESTS} x GET http://{REVIEWS_HOST}/ through each sidecar:");
    println!(
        "     {:<12} {:>14} {:>14} {:>11}",
        "backend", "envoy", "strait-proxy", "configured"
    );
    let configured: BTreeMap<&str, u32> = CONFIGURED_SPLIT.into_iter().collect();
    let mut off = Vec::new();
    for (name, want) in &configured {
        let mut cells = Vec::new();
        for (sidecar, tally) in sidecars.iter().zip(&tallies) {
            let count = tally.get(*name).copied().unwrap_or(0);
            let observed = percent(count, SPLIT_REQUESTS);
            cells.push(format!("{count:>5} {observed:>5.1}%"));
            if (observed - f64::from(*want)).abs() > SPLIT_TOLERANCE_POINTS {
                off.push(format!(
                    "{}: {name} got {observed:.1}%, configured {want}%",
                    sidecar.plane
                ));
            }
        }
        println!(
            "     {name:<12} {:>14} {:>14} {want:>10}%",
            cells[0], cells[1]
        );
    }
    // Anything else (another version, an error status, a failed exchange) is a failure
    // however rare: it is listed below the table, since its text doesn't fit a column.
    let mut unexpected = 0;
    for (sidecar, tally) in sidecars.iter().zip(&tallies) {
        for (answer, count) in tally
            .iter()
            .filter(|(k, _)| !configured.contains_key(k.as_str()))
        {
            println!(
                "     {count:>5} x unexpected through {}: {answer}",
                sidecar.plane
            );
            unexpected += count;
        }
    }
    ensure!(
        unexpected == 0,
        "{unexpected} requests were not answered by reviews-v1 or reviews-v2"
    );
    ensure!(
        off.is_empty(),
        "the split is more than {SPLIT_TOLERANCE_POINTS} points off: {}",
        off.join("; ")
    );
    println!("   ok: both within {SPLIT_TOLERANCE_POINTS} points of 90/10");

    step(
        4,
        "Apply virtual-service-reviews-jason-v2-v3.yaml: end-user jason -> v2, everyone else -> v3",
    );
    apply(
        &straitd,
        &config,
        "virtual-service-reviews-jason-v2-v3.yaml",
        REVIEWS_JASON_V2_V3,
    )?;
    let jason = Req::get(REVIEWS_HOST, "/").header("end-user", "jason");
    for sidecar in &sidecars {
        let waited = rt.block_on(converge(
            &format!("the new rule to reach {}", sidecar.plane),
            || async {
                let j = send_many(10, sidecar.outbound(), &jason).await;
                let p = send_many(10, sidecar.outbound(), &plain).await;
                ensure!(
                    j.get("reviews-v2") == Some(&10) && p.get("reviews-v3") == Some(&10),
                    "jason: {j:?}, others: {p:?}"
                );
                Ok(())
            },
        ))?;
        let j = rt.block_on(send_many(MATCH_REQUESTS, sidecar.outbound(), &jason));
        let p = rt.block_on(send_many(MATCH_REQUESTS, sidecar.outbound(), &plain));
        interrupted()?;
        println!("   {} (converged after {}):", sidecar.plane, secs(waited));
        println!(
            "     {MATCH_REQUESTS} x with end-user: jason  -> {}",
            tally_line(&j)
        );
        println!(
            "     {MATCH_REQUESTS} x without end-user     -> {}",
            tally_line(&p)
        );
        ensure!(
            j.get("reviews-v2") == Some(&MATCH_REQUESTS),
            "{}: jason's requests did not all go to reviews-v2: {j:?}",
            sidecar.plane
        );
        ensure!(
            p.get("reviews-v3") == Some(&MATCH_REQUESTS),
            "{}: requests without end-user did not all go to reviews-v3: {p:?}",
            sidecar.plane
        );
    }
    println!("   ok: through both, jason on v2, everyone else on v3");

    step(
        5,
        "mTLS: ratings-v2 behind its own sidecar (strait-proxy), STRICT PeerAuthentication",
    );
    let ratings_app = Backend::start("ratings-v2");
    let server_spec = ProxySpec::sidecar(
        RATINGS_NODE,
        "default",
        &[("app", "ratings"), ("version", "v2")],
    )
    .workload(RATINGS_SA, ratings_app.port())
    .with_xds_protocol(XdsProtocol::Delta);
    let inbound = server_spec
        .inbound_port()
        .context("a workload sidecar has an inbound port")?;
    apply(
        &straitd,
        &config,
        "ratings-mtls.yaml",
        &ratings_mtls(inbound),
    )?;
    let server = strait_tests::dataplane::named("strait-proxy").start(&straitd, &server_spec)?;
    println!(
        "   ratings-v2     app http://{}, its sidecar's inbound port 127.0.0.1:{inbound}",
        ratings_app.addr()
    );
    let peers: Vec<(&str, &dyn Proxy)> = sidecars
        .iter()
        .map(|s| (s.plane, &*s.proxy))
        .chain([("ratings-v2's strait-proxy", &*server)])
        .collect();
    println!("   identities (the SPIFFE URI in each sidecar's certificate, from straitd's CA):");
    for (name, proxy) in &peers {
        let ids = rt.block_on(eventually(CONVERGE, || async {
            let ids = identities(*proxy)?;
            ensure!(!ids.is_empty(), "{name} has no workload certificate yet");
            Ok(ids)
        }))?;
        println!("     {name:<26} {}", ids.join(", "));
    }
    let echo = Req::get(RATINGS_HOST, "/").echo();
    for sidecar in &sidecars {
        let resp = rt.block_on(eventually(CONVERGE, || async {
            let resp = HttpClient::without_pooling()
                .request(sidecar.outbound(), &echo)
                .await?;
            ensure!(
                resp.status == 200 && resp.header("x-backend") == Some("ratings-v2"),
                "{} {}",
                resp.status,
                resp.body
            );
            Ok(resp)
        }))?;
        let xfcc = resp.json()?["headers"][XFCC]
            .as_str()
            .unwrap_or_default()
            .to_string();
        println!(
            "   GET http://{RATINGS_HOST}/ through {}: {} from ratings-v2, which saw",
            sidecar.plane, resp.status
        );
        for part in xfcc.split(';') {
            println!("     {XFCC}: {part}");
        }
        let caller = format!("URI={}", spiffe(PRODUCTPAGE_SA));
        let by = format!("By={}", spiffe(RATINGS_SA));
        ensure!(
            xfcc.split(';').any(|p| p == caller) && xfcc.split(';').any(|p| p == by),
            "through {}: ratings-v2 did not see the caller as {caller} and itself as {by}: {xfcc:?}",
            sidecar.plane
        );
    }
    let plaintext = rt.block_on(HttpClient::without_pooling().request(
        SocketAddr::from(([127, 0, 0, 1], inbound)),
        &Req::get(RATINGS_HOST, "/"),
    ));
    let refused = match &plaintext {
        Ok(r) if r.status == 200 => bail!("STRICT let a plaintext request through: {r:?}"),
        Ok(r) => format!("answered {}", r.status),
        Err(e) => format!("refused ({})", e.root_cause()),
    };
    println!("   plaintext straight to the inbound port 127.0.0.1:{inbound}: {refused}");
    println!("   ok: mTLS both ways, each side's identity checked; plaintext refused");

    step(6, "What the control plane and the sidecars report");
    println!(
        "   $ straitctl proxy-status --admin {}",
        straitd.admin_url()
    );
    let mut status = Command::new(bins::straitctl());
    status.args(["proxy-status", "--admin", &straitd.admin_url()]);
    print_indented(&run(status)?);
    for sidecar in &sidecars {
        let dump = sidecar.proxy.config_dump()?;
        println!(
            "\n   {}'s routes for reviews (GET {}/config_dump):",
            sidecar.plane,
            sidecar.proxy.admin_url()
        );
        match sidecar.plane {
            "envoy" => print_indented(&reviews_routes(&dump)?),
            _ => print_indented(&strait_reviews_routes(&dump)?),
        }
    }

    step(7, "Shut down");
    drop(server);
    drop(ratings_app);
    drop(sidecars);
    drop(straitd);
    let n = backends.len() + 1;
    drop(backends);
    drop(config);
    println!(
        "   stopped Envoy, both strait-proxies, straitd and {n} backends; removed the temp config dir"
    );
    println!("\nDemo passed.");
    Ok(())
}

/// Writes `yaml` beside the config dir (straitd watches the dir itself) and applies it with
/// `straitctl apply`, printing the command and its answer.
fn apply(straitd: &Straitd, config: &ConfigDir, name: &str, yaml: &str) -> anyhow::Result<()> {
    let rule = config.scratch().join(name);
    std::fs::write(&rule, yaml).with_context(|| format!("writing {}", rule.display()))?;
    println!(
        "   $ straitctl apply -f {name} --admin {}",
        straitd.admin_url()
    );
    let mut apply = Command::new(bins::straitctl());
    apply
        .arg("apply")
        .arg("-f")
        .arg(&rule)
        .args(["--admin", &straitd.admin_url()]);
    print_indented(&run(apply)?);
    Ok(())
}

fn spiffe(service_account: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{service_account}")
}

/// ratings-v2 as a mesh workload (the `istio` TLS mode: clients use mTLS to it), the only
/// ratings that STRICT applies to, and the route to it.
fn ratings_mtls(inbound: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-v2}}
spec:
  address: 127.0.0.1
  ports: {{http: {inbound}}}
  labels: {{app: ratings, version: v2, security.istio.io/tlsMode: istio}}
  serviceAccount: {RATINGS_SA}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: ratings}}
spec:
  selector: {{matchLabels: {{app: ratings}}}}
  mtls: {{mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings}}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {{host: ratings, subset: v2}}
"
    )
}

/// The SPIFFE URIs of a sidecar's workload certificate, from its admin `/certs`.
fn identities(proxy: &dyn Proxy) -> anyhow::Result<Vec<String>> {
    let (status, body) = get_blocking(&format!("{}/certs", proxy.admin_url()))?;
    ensure!(status == 200, "/certs said {status}: {body}");
    let json: Value = serde_json::from_str(&body).context("/certs is not JSON")?;
    Ok(json["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["cert_chain"].as_array().into_iter().flatten())
        .flat_map(|c| c["subject_alt_names"].as_array().into_iter().flatten())
        .filter_map(|san| san["uri"].as_str())
        .filter(|uri| uri.starts_with("spiffe://"))
        .map(str::to_string)
        // Envoy lists the certificate once per TLS context that uses it.
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect())
}

/// strait-proxy's own `/config_dump` (its typed config): the routes of reviews' virtual host.
fn strait_reviews_routes(dump: &Value) -> anyhow::Result<String> {
    let mut out = String::new();
    for (name, rc) in dump["config"]["routes"].as_object().into_iter().flatten() {
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
                "route config {name}, virtual host {}\n",
                vh["name"].as_str().unwrap_or("?")
            ));
            for r in vh["routes"].as_array().into_iter().flatten() {
                let m = &r["matcher"];
                let mut matcher = format!("path {}", m["path"]);
                if m["headers"].as_array().is_some_and(|h| !h.is_empty()) {
                    matcher.push_str(&format!(", headers {}", m["headers"]));
                }
                let action = match &r["action"]["forward"]["clusters"] {
                    Value::Null => r["action"].to_string(),
                    clusters => clusters.to_string(),
                };
                out.push_str(&format!("  {matcher}\n    -> {action}\n"));
            }
        }
    }
    if out.is_empty() {
        bail!("no virtual host for {REVIEWS_HOST} in strait-proxy's /config_dump");
    }
    Ok(out)
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
