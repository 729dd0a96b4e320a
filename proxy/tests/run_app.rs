//! The strait-proxy binary as a Job's sidecar without native sidecars: `POST /quitquitquit`
//! makes it drain and exit 0 (GET does not), and `strait-proxy run-app` waits for `/ready`,
//! runs the app, stops the proxy and exits with the app's code; with several run-app
//! containers the proxy stops once all have ended; run-app reaps the orphans the app leaves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_model::{Model, ProxyNode, loader};
use strait_tests::ports::free_port;
use strait_xds::{AdsServer, Resources, Snapshot, SnapshotCache, XdsMetrics};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

const NODE: &str = "pi-x7k2p.default";

/// straitd's ADS server in process, serving `NODE` the translation of an empty mesh: enough
/// for a sidecar to have a complete config and be ready.
struct Xds {
    addr: SocketAddr,
    _server: AdsServer,
    _cache: SnapshotCache,
    _events: tokio::sync::mpsc::UnboundedReceiver<strait_xds::NodeEvent>,
}

async fn xds(outbound_port: u16) -> Xds {
    let cache = SnapshotCache::new();
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let server = AdsServer::new(cache.clone(), tx, XdsMetrics::unregistered());
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind xds");
    let addr = socket.local_addr().expect("addr");
    let service = server.service();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(socket))
            .await
            .expect("xds server");
    });
    let metadata: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({
            "NAMESPACE": "default",
            "LABELS": {"app": "pi"},
            "STRAIT_MODE": "sidecar",
            "STRAIT_OUTBOUND_PORT": outbound_port.to_string(),
        }))
        .expect("metadata");
    let node = ProxyNode::from_metadata(NODE, &metadata).expect("node");
    let model = Model::build(&loader::parse("", "empty.yaml").expect("parse")).expect("model");
    let out = strait_translate::translate(&model, &node);
    let snapshot = Snapshot::build(Resources {
        listeners: out.listeners,
        routes: out.routes,
        clusters: out.clusters,
        endpoints: out.endpoints,
        ..Default::default()
    })
    .expect("consistent snapshot");
    cache.set(NODE, Arc::new(snapshot));
    Xds {
        addr,
        _server: server,
        _cache: cache,
        _events: events,
    }
}

/// A free port below the ephemeral range, for the admin API: run-app polls it before the proxy
/// listens, and a connect to a free ephemeral port can pick that very port as its source and
/// connect to itself (TCP simultaneous open), holding it. 15000 is below the range too.
fn admin_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let start = 20000 + (std::process::id() % 5000) as u16;
    loop {
        let port = start + NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn strait_proxy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strait-proxy"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info");
    cmd
}

/// The proxy process; killed if the test ends before it exits.
struct ProxyProcess {
    child: Child,
    admin: String,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl ProxyProcess {
    /// On `admin`, against `xds` (or a port nothing listens on: never ready); returns once
    /// the admin API answers (or it has exited).
    fn spawn(xds: Option<SocketAddr>, admin: &str, outbound_port: u16) -> ProxyProcess {
        ProxyProcess::spawn_for(xds, admin, outbound_port, &[])
    }

    /// As `spawn`, told that `run_apps` are the containers under run-app (as the injector
    /// tells it: `STRAIT_RUN_APP_CONTAINERS`).
    fn spawn_for(
        xds: Option<SocketAddr>,
        admin: &str,
        outbound_port: u16,
        run_apps: &[&str],
    ) -> ProxyProcess {
        let xds = xds.map_or_else(|| format!("127.0.0.1:{}", free_port()), |x| x.to_string());
        let mut cmd = strait_proxy();
        if !run_apps.is_empty() {
            cmd.env("STRAIT_RUN_APP_CONTAINERS", run_apps.join(","));
        }
        let child = cmd
            .args(["--xds", &format!("http://{xds}")])
            .args(["--node-id", NODE, "--labels", "app=pi"])
            .args(["--outbound-port", &outbound_port.to_string()])
            .args(["--admin-addr", admin])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn strait-proxy");
        let mut proxy = ProxyProcess {
            child,
            admin: admin.to_string(),
        };
        let started = Instant::now();
        while get(&proxy.admin, "/healthz").0 != 200 {
            // Exited already: a run-app waiting for it may have been that quick; the caller
            // checks how it exited.
            if proxy.child.try_wait().expect("try_wait").is_some() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "admin never up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        proxy
    }
}

fn request(method: &str, admin: &str, path: &str) -> (u16, String) {
    let url = format!("http://{admin}{path}");
    let resp = match method {
        "GET" => strait_tests::client::get_blocking(&url),
        _ => strait_tests::client::post_blocking(&url, "text/plain", ""),
    };
    resp.unwrap_or((0, String::new()))
}

fn get(admin: &str, path: &str) -> (u16, String) {
    request("GET", admin, path)
}

/// Its exit status, if it exits within `within`.
fn exited_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn marker(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("strait-run-app-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// `strait-proxy run-app` for `script` (run by sh with `$1` = hello, `$MARKER` and
/// `$GREETING` = world set).
fn run_app(admin: &str, marker: &PathBuf, script: &str) -> Child {
    run_app_with(admin, marker, script, &[])
}

/// As `run_app`, with more run-app flags (`--container NAME`).
fn run_app_with(admin: &str, marker: &PathBuf, script: &str, flags: &[&str]) -> Child {
    strait_proxy()
        .args(["run-app", "--admin-addr", admin, "--wait-timeout", "30s"])
        .args(flags)
        .args(["--", "sh", "-c", script, "sh", "hello"])
        .env("MARKER", marker)
        .env("GREETING", "world")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run-app")
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
    }
    text
}

#[test]
fn post_quitquitquit_stops_the_proxy_and_get_does_not() {
    let admin = format!("127.0.0.1:{}", admin_port());
    let mut proxy = ProxyProcess::spawn(None, &admin, free_port());
    assert_eq!(get(&admin, "/quitquitquit").0, 405);
    assert_eq!(request("POST", &admin, "/ready").0, 405);
    assert_eq!(
        exited_within(&mut proxy.child, Duration::from_millis(500)),
        None,
        "GET /quitquitquit must not stop the proxy"
    );
    assert_eq!(
        request("POST", &admin, "/quitquitquit"),
        (200, "OK\n".into())
    );
    let status = exited_within(&mut proxy.child, Duration::from_secs(5))
        .expect("the proxy exits after POST /quitquitquit");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_app_waits_for_the_proxy_runs_the_app_and_stops_the_proxy() {
    let outbound = free_port();
    let xds = xds(outbound).await;
    let xds_addr = xds.addr;
    tokio::task::spawn_blocking(move || {
        let admin = format!("127.0.0.1:{}", admin_port());
        let marker = marker("exit");
        let mut app = run_app(
            &admin,
            &marker,
            r#"echo "$1 $GREETING" > "$MARKER"; exit 3"#,
        );
        // No proxy yet: the app must not start.
        std::thread::sleep(Duration::from_secs(1));
        assert!(!marker.exists(), "the app ran before the proxy was ready");
        assert_eq!(app.try_wait().expect("try_wait"), None);

        let mut proxy = ProxyProcess::spawn(Some(xds_addr), &admin, outbound);
        let status = exited_within(&mut app, Duration::from_secs(30)).expect("run-app exits");
        assert_eq!(status.code(), Some(3), "{}", stderr_of(&mut app));
        assert_eq!(
            std::fs::read_to_string(&marker).expect("the app ran"),
            "hello world\n",
            "the app gets its arguments and environment"
        );
        let _ = std::fs::remove_file(&marker);
        let status = exited_within(&mut proxy.child, Duration::from_secs(5))
            .expect("the proxy exits once the app has");
        assert!(status.success(), "{status}");
    })
    .await
    .expect("test body");
    drop(xds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_app_passes_sigterm_on_to_the_app() {
    let outbound = free_port();
    let xds = xds(outbound).await;
    let xds_addr = xds.addr;
    tokio::task::spawn_blocking(move || {
        let admin = format!("127.0.0.1:{}", admin_port());
        let mut proxy = ProxyProcess::spawn(Some(xds_addr), &admin, outbound);
        let marker = marker("term");
        let mut app = run_app(
            &admin,
            &marker,
            r#"trap 'echo TERM > "$MARKER"; exit 7' TERM; echo started > "$MARKER"; while :; do sleep 0.05; done"#,
        );
        let started = Instant::now();
        while std::fs::read_to_string(&marker).unwrap_or_default() != "started\n" {
            assert!(started.elapsed() < Duration::from_secs(30), "the app never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let killed = Command::new("kill")
            .args(["-TERM", &app.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let status = exited_within(&mut app, Duration::from_secs(10)).expect("run-app exits");
        assert_eq!(status.code(), Some(7), "{}", stderr_of(&mut app));
        assert_eq!(std::fs::read_to_string(&marker).expect("marker"), "TERM\n");
        let _ = std::fs::remove_file(&marker);
        let status = exited_within(&mut proxy.child, Duration::from_secs(5))
            .expect("the proxy exits once the app has");
        assert!(status.success(), "{status}");
    })
    .await
    .expect("test body");
    drop(xds);
}

fn wait_for(marker: &PathBuf, text: &str) {
    let started = Instant::now();
    while std::fs::read_to_string(marker).unwrap_or_default() != text {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} never said {text:?}",
            marker.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_run_app_containers_the_proxy_stops_after_both() {
    let outbound = free_port();
    let xds = xds(outbound).await;
    let xds_addr = xds.addr;
    tokio::task::spawn_blocking(move || {
        let admin = format!("127.0.0.1:{}", admin_port());
        let mut proxy = ProxyProcess::spawn_for(Some(xds_addr), &admin, outbound, &["a", "b"]);
        let marker_a = marker("two-a");
        let marker_b = marker("two-b");
        let go_b = marker("two-b-go");
        let mut a = run_app_with(
            &admin,
            &marker_a,
            r#"echo ran > "$MARKER""#,
            &["--container", "a"],
        );
        // b runs until told to finish (its GO file exists).
        let mut b = strait_proxy()
            .args(["run-app", "--admin-addr", &admin, "--wait-timeout", "30s"])
            .args(["--container", "b", "--"])
            .args([
                "sh",
                "-c",
                r#"echo started > "$MARKER"; while [ ! -e "$GO" ]; do sleep 0.05; done"#,
            ])
            .env("MARKER", &marker_b)
            .env("GO", &go_b)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn run-app b");
        wait_for(&marker_b, "started\n");
        let status = exited_within(&mut a, Duration::from_secs(30)).expect("run-app a exits");
        assert_eq!(status.code(), Some(0), "{}", stderr_of(&mut a));
        assert_eq!(std::fs::read_to_string(&marker_a).expect("a ran"), "ran\n");

        // a has ended, b has not: the proxy goes on serving.
        assert_eq!(
            exited_within(&mut proxy.child, Duration::from_millis(500)),
            None,
            "the proxy stopped while b still runs"
        );
        assert_eq!(get(&admin, "/ready"), (200, "LIVE\n".into()));
        // A second report from a changes nothing; an unknown container is refused by name.
        assert_eq!(
            request("POST", &admin, "/quitquitquit?container=a"),
            (200, "a has ended; waiting for b\n".into())
        );
        let (status, body) = request("POST", &admin, "/quitquitquit?container=c");
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("unknown container \"c\""), "{body}");
        assert_eq!(get(&admin, "/ready").0, 200);

        std::fs::write(&go_b, "").expect("tell b to finish");
        let status = exited_within(&mut b, Duration::from_secs(10)).expect("run-app b exits");
        assert_eq!(status.code(), Some(0), "{}", stderr_of(&mut b));
        let status = exited_within(&mut proxy.child, Duration::from_secs(5))
            .expect("the proxy exits once both have ended");
        assert!(status.success(), "{status}");
        for path in [marker_a, marker_b, go_b] {
            let _ = std::fs::remove_file(path);
        }
    })
    .await
    .expect("test body");
    drop(xds);
}

/// `/proc/PID/stat`: the process's name, state and parent.
fn stat(pid: u32) -> Option<(String, char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = text.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((name, state, ppid))
}

/// The children of `parent`: pid, name, state.
fn children(parent: u32) -> Vec<(u32, String, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some((name, state, ppid)) = stat(pid)
            && ppid == parent
        {
            out.push((pid, name, state));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_app_reaps_the_orphans_the_app_leaves() {
    let outbound = free_port();
    let xds = xds(outbound).await;
    let xds_addr = xds.addr;
    tokio::task::spawn_blocking(move || {
        let admin = format!("127.0.0.1:{}", admin_port());
        let mut proxy = ProxyProcess::spawn(Some(xds_addr), &admin, outbound);
        let marker = marker("orphan");
        // The subshell starts `sleep 1` and exits at once: the sleep is orphaned, and run-app
        // (a child subreaper) becomes its parent. The app itself lives on for 3 s.
        let mut app = run_app(
            &admin,
            &marker,
            r#"(sleep 1 &); echo started > "$MARKER"; sleep 3; exit 3"#,
        );
        let run_app_pid = app.id();
        wait_for(&marker, "started\n");
        let orphan = children(run_app_pid)
            .into_iter()
            .find(|(_, name, _)| name == "sleep")
            .map(|(pid, ..)| pid)
            .unwrap_or_else(|| {
                panic!(
                    "the orphan was not reparented to run-app; its children: {:?}",
                    children(run_app_pid)
                )
            });
        // The orphan ends after 1 s; run-app, still running the app, must have reaped it.
        let started = Instant::now();
        while stat(orphan).is_some_and(|(_, state, _)| state != 'Z') {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the orphan never ended"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            app.try_wait().expect("try_wait"),
            None,
            "the app is still running"
        );
        let zombies: Vec<_> = children(run_app_pid)
            .into_iter()
            .filter(|(.., state)| *state == 'Z')
            .collect();
        assert!(
            zombies.is_empty(),
            "zombie children of run-app: {zombies:?}"
        );
        assert_eq!(
            stat(orphan).map(|(_, state, _)| state),
            None,
            "the orphan was reaped"
        );

        let status = exited_within(&mut app, Duration::from_secs(10)).expect("run-app exits");
        assert_eq!(status.code(), Some(3), "{}", stderr_of(&mut app));
        let _ = std::fs::remove_file(&marker);
        let status = exited_within(&mut proxy.child, Duration::from_secs(5))
            .expect("the proxy exits once the app has");
        assert!(status.success(), "{status}");
    })
    .await
    .expect("test body");
    drop(xds);
}
