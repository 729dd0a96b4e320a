//! strait-proxy's limits on downstream clients, in process against the real xDS server: the
//! connection limit per listener, and the header limits and header timeout an HTTP connection
//! manager sets (converted at the xDS edge).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use strait_model::{Model, ProxyNode, loader};
use strait_proxy::app::{self, Running, Settings};
use strait_proxy::xds::{NodeInfo, Protocol, XdsSettings};
use strait_tests::ports::free_port;
use strait_xds::{AdsServer, Resources, Snapshot, SnapshotCache, XdsMetrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;

const NODE: &str = "productpage-1.default";
const HOST: &str = "api.default.svc.cluster.local:8080";
const WAIT: Duration = Duration::from_secs(10);
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// A backend that answers 200 "api" and counts what it answered.
async fn backend() -> (u16, Arc<AtomicU64>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = socket.local_addr().expect("addr").port();
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = socket.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("api")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (port, seen)
}

struct World {
    cache: SnapshotCache,
    _server: AdsServer,
    _events: tokio::sync::mpsc::UnboundedReceiver<strait_xds::NodeEvent>,
    xds: SocketAddr,
    node: ProxyNode,
    metadata: serde_json::Map<String, serde_json::Value>,
    outbound: SocketAddr,
    seen: Arc<AtomicU64>,
    backend_port: u16,
}

impl World {
    async fn start() -> World {
        let (backend_port, seen) = backend().await;
        let cache = SnapshotCache::new();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let server = AdsServer::new(cache.clone(), tx, XdsMetrics::unregistered());
        let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind xds");
        let xds = socket.local_addr().expect("addr");
        let service = server.service();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(socket))
                .await
                .expect("xds server");
        });
        let port = free_port();
        let metadata: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(serde_json::json!({
                "NAMESPACE": "default",
                "LABELS": {"app": "productpage"},
                "STRAIT_MODE": "sidecar",
                "STRAIT_OUTBOUND_PORT": port.to_string(),
            }))
            .expect("metadata");
        let node = ProxyNode::from_metadata(NODE, &metadata).expect("node");
        World {
            cache,
            _server: server,
            _events: events,
            xds,
            node,
            metadata,
            outbound: SocketAddr::from(([127, 0, 0, 1], port)),
            seen,
            backend_port,
        }
    }

    /// Publishes the api service, with `edit` applied to every HTTP connection manager.
    fn publish(&self, edit: impl Fn(&mut HttpConnectionManager)) {
        let yaml = format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]
"#,
            self.backend_port
        );
        let objects = loader::parse(&yaml, "test.yaml").expect("parse");
        let model = Model::build(&objects).expect("valid model");
        let mut out = strait_translate::translate(&model, &self.node);
        for listener in &mut out.listeners {
            edit_managers(listener, &edit);
        }
        let snapshot = Snapshot::build(Resources {
            listeners: out.listeners,
            routes: out.routes,
            clusters: out.clusters,
            endpoints: out.endpoints,
            ..Default::default()
        })
        .expect("consistent snapshot");
        self.cache.set(NODE, Arc::new(snapshot));
    }

    async fn proxy(&self, max_connections_per_listener: usize) -> Running {
        let running = app::start(Settings {
            xds: XdsSettings {
                server: format!("http://{}", self.xds),
                protocol: Protocol::Delta,
                node: NodeInfo {
                    id: NODE.to_string(),
                    cluster: "productpage".to_string(),
                    metadata: self.metadata.clone(),
                },
                identity: None,
            },
            admin: "127.0.0.1:0".parse().expect("addr"),
            otlp_endpoint: None,
            app_probers: Default::default(),
            run_apps: Default::default(),
            max_connections_per_listener,
        })
        .await
        .expect("proxy starts");
        let start = Instant::now();
        while !running.shared.is_ready() {
            assert!(start.elapsed() < WAIT, "proxy not ready in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running
    }
}

fn edit_managers(listener: &mut Listener, edit: &impl Fn(&mut HttpConnectionManager)) {
    for chain in &mut listener.filter_chains {
        for f in &mut chain.filters {
            if let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type
                && any.type_url == HCM_TYPE
            {
                let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
                edit(&mut hcm);
                *any = Any {
                    type_url: HCM_TYPE.to_string(),
                    value: hcm.encode_to_vec(),
                };
            }
        }
    }
}

/// Reads what comes back until a whole response with a length, the close, or `wait`.
async fn read_response(stream: &mut (impl tokio::io::AsyncRead + Unpin), wait: Duration) -> String {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status(response: &str) -> Option<u16> {
    response.split(' ').nth(1)?.parse().ok()
}

fn request(headers: &[(String, String)]) -> Vec<u8> {
    let mut req = format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

async fn exchange(addr: SocketAddr, headers: &[(String, String)]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(&request(headers)).await.expect("write");
    read_response(&mut stream, Duration::from_secs(5)).await
}

async fn metrics(proxy: &Running) -> String {
    let mut stream = TcpStream::connect(proxy.admin_addr).await.expect("admin");
    stream
        .write_all(b"GET /stats/prometheus HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    out
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_listener_limit_are_closed_at_accept_and_counted() {
    let world = World::start().await;
    world.publish(|_| {});
    let proxy = world.proxy(3).await;
    let addr = world.outbound;

    // Three kept-alive connections, each served.
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(&request(&[])).await.expect("write");
        let resp = read_response(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(status(&resp), Some(200), "{resp}");
        open.push(stream);
    }
    // A fourth is closed as it is accepted: nothing comes back but the close.
    let mut fourth = TcpStream::connect(addr).await.expect("connect");
    let _ = fourth.write_all(&request(&[])).await;
    let started = Instant::now();
    let resp = read_response(&mut fourth, Duration::from_secs(5)).await;
    assert_eq!(resp, "", "the fourth connection was served");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not closed at once"
    );
    let listener = format!("outbound_{}", addr.port());
    let m = metrics(&proxy).await;
    assert_eq!(
        sample(
            &m,
            &format!("strait_proxy_downstream_cx_overflow_total{{listener=\"{listener}\"}}")
        ),
        Some(1.0),
        "{m}"
    );

    // Once one has gone, a new connection is served.
    drop(open.pop());
    let start = Instant::now();
    loop {
        let resp = exchange(addr, &[]).await;
        if status(&resp) == Some(200) {
            break;
        }
        assert!(start.elapsed() < WAIT, "no room after a connection closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The kept-alive ones still work.
    for stream in &mut open {
        stream.write_all(&request(&[])).await.expect("write");
        let resp = read_response(stream, Duration::from_secs(5)).await;
        assert_eq!(status(&resp), Some(200), "{resp}");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_and_timeout_set_in_the_hcm_are_honoured() {
    let world = World::start().await;
    world.publish(|hcm| {
        hcm.max_request_headers_kb = Some(UInt32Value { value: 2 });
        hcm.common_http_protocol_options = Some(Default::default());
        if let Some(o) = &mut hcm.common_http_protocol_options {
            o.max_headers_count = Some(UInt32Value { value: 10 });
        }
        hcm.request_headers_timeout = Some(PbDuration {
            seconds: 1,
            nanos: 0,
        });
    });
    let proxy = world.proxy(app::DEFAULT_MAX_CONNECTIONS_PER_LISTENER).await;
    let addr = world.outbound;
    let header = |n: usize| vec![("x-big".to_string(), "a".repeat(n))];

    let resp = exchange(addr, &header(1500)).await;
    assert_eq!(status(&resp), Some(200), "1.5 KB of headers: {resp}");
    let seen = world.seen.load(Ordering::Relaxed);
    let resp = exchange(addr, &header(3000)).await;
    assert_eq!(status(&resp), Some(431), "3 KB of headers: {resp:.200}");
    let twelve: Vec<_> = (0..12).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let resp = exchange(addr, &twelve).await;
    assert_eq!(status(&resp), Some(431), "13 headers: {resp:.200}");
    let eight: Vec<_> = (0..8).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let resp = exchange(addr, &eight).await;
    assert_eq!(status(&resp), Some(200), "9 headers: {resp:.200}");
    assert_eq!(world.seen.load(Ordering::Relaxed), seen + 1);

    // HTTP/2 too: over the limit is 431.
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let h2_request = |value: String| {
        Request::builder()
            .uri(format!("http://{HOST}/"))
            .header("x-big", value)
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request")
    };
    let ok = h2
        .send_request(h2_request("a".repeat(1000)))
        .await
        .expect("h2");
    assert_eq!(ok.status(), 200);
    let _ = ok.into_body().collect().await;
    let big = h2
        .send_request(h2_request("a".repeat(3000)))
        .await
        .expect("h2");
    assert_eq!(big.status(), 431);

    // Headers trickled in over more than a second: 408, then the close.
    let slow = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut slow) = slow.into_split();
    slow.write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n").as_bytes())
        .await
        .expect("write");
    let started = Instant::now();
    let trickle = async {
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let line = format!("x-line-{i}: v\r\n");
            if slow.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    };
    let (resp, _) = tokio::join!(
        read_response(&mut reader, Duration::from_secs(10)),
        tokio::time::timeout(Duration::from_secs(10), trickle)
    );
    let took = started.elapsed();
    assert_eq!(status(&resp), Some(408), "{resp}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cut off after {took:?}"
    );
    let m = metrics(&proxy).await;
    let listener = format!("outbound_{}", addr.port());
    assert_eq!(
        sample(
            &m,
            &format!("strait_proxy_downstream_rq_header_timeout_total{{listener=\"{listener}\"}}")
        ),
        Some(1.0),
        "{m}"
    );
    // A fast request is not touched by the timer, nor a connection idle between requests.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(&request(&[])).await.expect("write");
    assert_eq!(
        status(&read_response(&mut idle, Duration::from_secs(5)).await),
        Some(200)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    idle.write_all(&request(&[])).await.expect("write");
    assert_eq!(
        status(&read_response(&mut idle, Duration::from_secs(5)).await),
        Some(200),
        "an idle kept-alive connection was cut"
    );
    proxy.shutdown().await;
}
