//! The strait-proxy binary as a Job's sidecar without native sidecars: `POST /quitquitquit`
//! makes it drain and exit 0 (GET does not), and `strait-proxy run-app` waits for `/ready`,
//! runs the app, stops the proxy and exits with the app's code.

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
        let xds = xds.map_or_else(|| format!("127.0.0.1:{}", free_port()), |x| x.to_string());
        let child = strait_proxy()
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
    strait_proxy()
        .args(["run-app", "--admin-addr", admin, "--wait-timeout", "30s"])
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
