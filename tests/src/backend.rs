//! Real HTTP backends on 127.0.0.1 that say who they are and misbehave on request.
//!
//! Each [`Backend`] serves on its own thread and tokio runtime, so it works the same from sync
//! and async tests and keeps answering while the test thread blocks. Every answer carries
//! `x-backend: NAME`; the body is the name, or, when the request has `x-echo: 1`, a JSON echo
//! of the request as received (to check rewrites and header changes), or a document set with
//! [`Backend::set_document`] (a key server's JWKS).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::oneshot;

use crate::config::BookinfoPorts;

/// The request header that asks for a JSON echo instead of the name.
pub const ECHO_HEADER: &str = "x-echo";
/// The response header naming the backend that answered.
pub const BACKEND_HEADER: &str = "x-backend";

#[derive(Default)]
struct Behaviour {
    /// Requests still to fail, and with which status.
    fail_next: u64,
    fail_status: u16,
    status: Option<u16>,
    delay: Option<Duration>,
    /// A JSON document served instead of the name (a JWKS, say).
    document: Option<String>,
}

struct Shared {
    name: String,
    requests: AtomicU64,
    behaviour: Mutex<Behaviour>,
}

impl Shared {
    fn behaviour(&self) -> std::sync::MutexGuard<'_, Behaviour> {
        // A panic while holding this lock can only come from a bug here; keep serving.
        self.behaviour
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend on a free port of 127.0.0.1.
    pub fn start(name: &str) -> Backend {
        Self::start_at(name, SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("starting a backend on 127.0.0.1:0")
    }

    /// Starts a backend on a given address: loopback (e.g. to bring one back on its old port),
    /// or one of a test network's own (see `netns`), from a thread inside that namespace.
    pub fn start_at(name: &str, addr: SocketAddr) -> anyhow::Result<Backend> {
        anyhow::ensure!(
            addr.ip().is_loopback() || crate::netns::is_test_address(addr.ip()),
            "backends only listen on loopback or a test network's addresses, not {addr}"
        );
        let listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        listener
            .set_nonblocking(true)
            .context("making the listener non-blocking")?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            requests: AtomicU64::new(0),
            behaviour: Mutex::new(Behaviour::default()),
        });
        let (shutdown, stopped) = oneshot::channel();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building a backend runtime");
                rt.block_on(serve(listener, serving, stopped));
                // Dropping the runtime here cancels open connections.
            })
            .context("spawning the backend thread")?;
        Ok(Backend {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The next `n` requests are answered with `status` (before any [`Self::set_status`]).
    pub fn fail_next(&self, n: u64, status: u16) {
        let mut b = self.shared.behaviour();
        b.fail_next = n;
        b.fail_status = status;
    }

    /// Every request is answered with this status; `None` restores 200.
    pub fn set_status(&self, status: Option<u16>) {
        self.shared.behaviour().status = status;
    }

    /// Every request waits this long before it is answered; `None` answers at once.
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.shared.behaviour().delay = delay;
    }

    /// Every request is answered with this JSON document instead of the name (and no echo),
    /// as a key server serves its JWKS; `None` restores the name.
    pub fn set_document(&self, document: Option<&str>) {
        self.shared.behaviour().document = document.map(str::to_string);
    }

    /// Requests received so far (counted on arrival, so delayed ones count too).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    pub fn reset_count(&self) {
        self.shared.requests.store(0, Ordering::SeqCst);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .finish()
    }
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(name = %shared.name, "backend cannot listen: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(shared.clone(), req));
                    // HTTP/1.1, and h2c with prior knowledge for data planes that pool over h2.
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let (delay, status, document) = {
        let mut b = shared.behaviour();
        let status = if b.fail_next > 0 {
            b.fail_next -= 1;
            b.fail_status
        } else {
            b.status.unwrap_or(200)
        };
        (b.delay, status, b.document.clone())
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let echo = req
        .headers()
        .get(ECHO_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    let (body, content_type) = if let Some(document) = document {
        (document, "application/json")
    } else if echo {
        let mut headers = BTreeMap::<String, String>::new();
        for (k, v) in req.headers() {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            headers
                .entry(k.as_str().to_string())
                .and_modify(|old| {
                    old.push_str(", ");
                    old.push_str(&v);
                })
                .or_insert(v);
        }
        let method = req.method().to_string();
        let path = req.uri().path_and_query().map_or_else(
            || req.uri().path().to_string(),
            |pq| pq.as_str().to_string(),
        );
        let version = format!("{:?}", req.version());
        let body = match req.into_body().collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(e) => format!("<error reading body: {e}>"),
        };
        let json = serde_json::json!({
            "backend": shared.name,
            "method": method,
            "path": path,
            "version": version,
            "headers": headers,
            "body": body,
        });
        (json.to_string(), "application/json")
    } else {
        (shared.name.clone(), "text/plain")
    };
    let resp = Response::builder()
        .status(status)
        .header(BACKEND_HEADER, shared.name.as_str())
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|e| {
            // Only a status outside 100-999 gets here; say so instead of hanging up.
            let mut r = Response::new(Full::new(Bytes::from(format!("bad backend status: {e}"))));
            *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            r
        });
    Ok(resp)
}

/// The bookinfo services, one backend per version, named like their WorkloadEntries.
pub struct Bookinfo {
    pub productpage: Backend,
    pub details: Backend,
    pub ratings: Backend,
    pub reviews_v1: Backend,
    pub reviews_v2: Backend,
    pub reviews_v3: Backend,
}

impl Bookinfo {
    pub fn start() -> Bookinfo {
        Bookinfo {
            productpage: Backend::start("productpage-v1"),
            details: Backend::start("details-v1"),
            ratings: Backend::start("ratings-v1"),
            reviews_v1: Backend::start("reviews-v1"),
            reviews_v2: Backend::start("reviews-v2"),
            reviews_v3: Backend::start("reviews-v3"),
        }
    }

    pub fn ports(&self) -> BookinfoPorts {
        BookinfoPorts {
            productpage: self.productpage.port(),
            details: self.details.port(),
            ratings: self.ratings.port(),
            reviews_v1: self.reviews_v1.port(),
            reviews_v2: self.reviews_v2.port(),
            reviews_v3: self.reviews_v3.port(),
        }
    }

    /// ServiceEntries and WorkloadEntries pointing at these backends.
    pub fn registry_yaml(&self) -> String {
        crate::config::bookinfo_registry(&self.ports())
    }

    pub fn all(&self) -> [&Backend; 6] {
        [
            &self.productpage,
            &self.details,
            &self.ratings,
            &self.reviews_v1,
            &self.reviews_v2,
            &self.reviews_v3,
        ]
    }
}

/// A TCP echo server: answers each connection with `NAME: ` and then every byte it reads, and
/// half-closes when the client does (so a half-close that crosses a proxy is seen).
pub struct TcpEcho {
    addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpEcho {
    /// Listens on `addr` (loopback, or a test network's address from inside its namespace).
    pub fn start_at(name: &str, addr: SocketAddr) -> anyhow::Result<TcpEcho> {
        anyhow::ensure!(
            addr.ip().is_loopback() || crate::netns::is_test_address(addr.ip()),
            "echo servers only listen on loopback or a test network's addresses, not {addr}"
        );
        let listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let greeting = format!("{name}: ");
        let thread = std::thread::Builder::new()
            .name(format!("echo-{name}"))
            .spawn(move || {
                while !stopping.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let greeting = greeting.clone();
                            std::thread::spawn(move || echo(stream, &greeting));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(TcpEcho {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn echo(stream: std::net::TcpStream, greeting: &str) {
    use std::io::Write;
    let _ = stream.set_nonblocking(false);
    let Ok(mut reader) = stream.try_clone() else {
        return;
    };
    let mut writer = stream;
    if writer.write_all(greeting.as_bytes()).is_ok() {
        let _ = std::io::copy(&mut reader, &mut writer);
    }
    let _ = writer.shutdown(std::net::Shutdown::Write);
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
