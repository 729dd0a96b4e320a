//! The strait-proxy binary serving the app's probes (`STRAIT_APP_PROBERS`, as the injector
//! writes it) on its admin port, against a real loopback backend and a closed port.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strait_tests::client::{get_blocking, post_blocking};
use strait_tests::ports::free_port;

/// An HTTP backend on 127.0.0.1 answering every request with `status`; `/slow` after 3 s.
/// Keeps each request's head.
struct Backend {
    port: u16,
    status: Arc<AtomicU16>,
    heads: Arc<Mutex<Vec<String>>>,
}

fn backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let status = Arc::new(AtomicU16::new(200));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (answer, seen) = (status.clone(), heads.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (answer, seen) = (answer.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut head = String::new();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    head.push_str(&line);
                    line.clear();
                }
                if head.is_empty() {
                    return; // a tcpSocket probe: connect, then close
                }
                if head.starts_with("GET /slow ") {
                    std::thread::sleep(Duration::from_secs(3));
                }
                seen.lock().expect("lock").push(head);
                let status = answer.load(Ordering::SeqCst);
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            });
        }
    });
    Backend {
        port,
        status,
        heads,
    }
}

/// An HTTPS backend on 127.0.0.1 with a self-signed certificate (for `localhost`, so nothing
/// would verify it), answering 204 to every request.
fn tls_backend() -> u16 {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .expect("server config");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).expect("tls");
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut line = String::new();
                let mut reader = BufReader::new(&mut tls);
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = write!(tls, "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    port
}

fn strait_proxy(admin: &str, probers: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_strait-proxy"))
        .env_clear()
        .env("STRAIT_APP_PROBERS", probers)
        // No control plane: the proxy never gets ready, and its probes work all the same.
        .args(["--xds", &format!("http://127.0.0.1:{}", free_port())])
        .args(["--node-id", "web-1.default", "--admin-addr", admin])
        .args(["--outbound-port", &free_port().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strait-proxy")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(admin: &str, path: &str) -> u16 {
    get_blocking(&format!("http://{admin}{path}"))
        .expect("the admin API answers")
        .0
}

#[test]
fn app_probes_are_performed_against_the_app_on_loopback() {
    let app = backend();
    let closed = free_port();
    let port = app.port;
    let tls = tls_backend();
    let probers = format!(
        r#"{{
        "/app-health/web/livez": {{"httpGet": {{"path": "/healthz?deep=1", "port": {port}, "scheme": "HTTP",
                                   "httpHeaders": [{{"name": "X-Probe", "value": "kubelet"}}]}}, "timeoutSeconds": 2}},
        "/app-health/web/readyz": {{"tcpSocket": {{"port": {port}}}, "timeoutSeconds": 1}},
        "/app-health/web/startupz": {{"httpGet": {{"path": "/slow", "port": {port}}}, "timeoutSeconds": 1}},
        "/app-health/down/livez": {{"httpGet": {{"path": "/", "port": {closed}}}, "timeoutSeconds": 1}},
        "/app-health/down/readyz": {{"tcpSocket": {{"port": {closed}}}, "timeoutSeconds": 1}},
        "/app-health/tls/livez": {{"httpGet": {{"path": "/", "port": {tls}, "scheme": "HTTPS"}}, "timeoutSeconds": 2}},
        "/app-health/tls/readyz": {{"httpGet": {{"path": "/", "port": {tls}, "scheme": "HTTP"}}, "timeoutSeconds": 1}}
    }}"#
    );
    let admin = format!("127.0.0.1:{}", free_port());
    let _proxy = Killed(strait_proxy(&admin, &probers));
    let started = Instant::now();
    while get_blocking(&format!("http://{admin}/healthz")).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "admin never up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status(&admin, "/ready"), 503, "no control plane: not ready");

    assert_eq!(status(&admin, "/app-health/web/livez"), 200);
    let head = app
        .heads
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("a request");
    assert!(
        head.starts_with("GET /healthz?deep=1 HTTP/1.1\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("x-probe: kubelet\r\n"), "{head}");
    assert!(
        lower.contains(&format!("host: 127.0.0.1:{port}\r\n")),
        "{head}"
    );
    assert_eq!(status(&admin, "/app-health/web/readyz"), 200);

    // A redirect is a success, as for the kubelet; a failure is passed on.
    app.status.store(302, Ordering::SeqCst);
    assert_eq!(status(&admin, "/app-health/web/livez"), 200);
    app.status.store(500, Ordering::SeqCst);
    assert_eq!(status(&admin, "/app-health/web/livez"), 500);
    app.status.store(200, Ordering::SeqCst);
    assert_eq!(status(&admin, "/app-health/web/livez"), 200);

    // No answer within the probe's timeout, nothing listening: 503.
    let before = Instant::now();
    assert_eq!(status(&admin, "/app-health/web/startupz"), 503);
    assert!(
        before.elapsed() < Duration::from_millis(2500),
        "the 1 s timeout holds"
    );
    assert_eq!(status(&admin, "/app-health/down/livez"), 503);
    assert_eq!(status(&admin, "/app-health/down/readyz"), 503);

    // HTTPS without a certificate check, as the kubelet; plain HTTP to it fails.
    assert_eq!(status(&admin, "/app-health/tls/livez"), 200);
    assert_eq!(status(&admin, "/app-health/tls/readyz"), 503);

    assert_eq!(status(&admin, "/app-health/web/healthz"), 404);
    assert_eq!(status(&admin, "/app-health/other/livez"), 404);
    let posted = post_blocking(
        &format!("http://{admin}/app-health/web/livez"),
        "text/plain",
        "",
    )
    .expect("answer");
    assert_eq!(posted.0, 405);
}

#[test]
fn a_malformed_probers_variable_stops_the_start_naming_it() {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut proxy = strait_proxy(
        &admin,
        r#"{"/app-health/web/livez": {"httpGet": {"port": 8080, "scheme": "GOPHER"}}}"#,
    );
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = proxy.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "strait-proxy kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut proxy.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(
        stderr.contains(
            "STRAIT_APP_PROBERS: /app-health/web/livez: httpGet.scheme: \"GOPHER\" is not HTTP or HTTPS"
        ),
        "{stderr}"
    );
}
