//! In process: strait-xds serving strait-translate output, strait-proxy, real HTTP backends.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_model::{Model, ProxyNode, loader};
use strait_proxy::app::{self, Running, Settings};
use strait_proxy::xds::{NodeInfo, Protocol, XdsSettings};
use strait_tests::ports::free_port;
use strait_xds::{AdsServer, Resources, Snapshot, SnapshotCache, XdsMetrics};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;

/// (backend, Host, path) of every request the backends answered.
static SEEN: std::sync::Mutex<Vec<(&'static str, String, String)>> =
    std::sync::Mutex::new(Vec::new());

fn seen(backend: &str) -> Vec<(String, String)> {
    SEEN.lock()
        .expect("not poisoned")
        .iter()
        .filter(|(b, _, _)| *b == backend)
        .map(|(_, h, p)| (h.clone(), p.clone()))
        .collect()
}

const NODE: &str = "productpage-1.default";
const WAIT: Duration = Duration::from_secs(10);

/// A backend that answers 200 with its name, or sleeps first for `/slow`.
async fn backend(name: &'static str) -> u16 {
    let socket = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let port = socket.local_addr().expect("addr").port();
    let flaky = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else {
                continue;
            };
            let flaky = flaky.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let flaky = flaky.clone();
                    async move {
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        SEEN.lock().expect("not poisoned").push((
                            name,
                            host,
                            req.uri().to_string(),
                        ));
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                        }
                        // Two failures, then a success, over and over.
                        if req.uri().path() == "/flaky"
                            && flaky.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 3 != 2
                        {
                            let mut resp = Response::new(Full::new(Bytes::from("flaky")));
                            *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            return Ok::<_, Infallible>(resp);
                        }
                        let mut resp = Response::new(Full::new(Bytes::from(name)));
                        resp.headers_mut()
                            .insert("x-backend", name.parse().expect("valid"));
                        if let Some(xff) = req.headers().get("x-forwarded-for") {
                            resp.headers_mut().insert("x-seen-xff", xff.clone());
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

fn registry(v1: u16, v2: u16) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v1}}
spec: {{address: 127.0.0.1, ports: {{http: {v1}}}, labels: {{app: reviews, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v2}}
spec: {{address: 127.0.0.1, ports: {{http: {v2}}}, labels: {{app: reviews, version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"#
    )
}

const JASON: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
    timeout: 1s
"#;

const ALL_V2: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v2}}]
"#;

/// Connection durations are not implemented yet: the clusters must be NACKed.
const WITH_UNSUPPORTED: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy: {connectionPool: {tcp: {maxConnectionDuration: 30s}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v1}}]
"#;

struct World {
    cache: SnapshotCache,
    server: AdsServer,
    _events: mpsc::UnboundedReceiver<strait_xds::NodeEvent>,
    xds: SocketAddr,
    node: ProxyNode,
    metadata: serde_json::Map<String, serde_json::Value>,
    registry: String,
    outbound: SocketAddr,
    /// The reviews-v1 and reviews-v2 backends' ports.
    ports: (u16, u16),
}

impl World {
    async fn start() -> World {
        let (v1, v2) = (backend("reviews-v1").await, backend("reviews-v2").await);
        let cache = SnapshotCache::new();
        let (tx, events) = mpsc::unbounded_channel();
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
            server,
            _events: events,
            xds,
            node,
            metadata,
            registry: registry(v1, v2),
            ports: (v1, v2),
            outbound: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Translates the registry plus `rules` for the node and publishes the snapshot.
    fn publish(&self, rules: &str) {
        let yaml = format!("{}---{rules}", self.registry);
        let objects = loader::parse(&yaml, "test.yaml").expect("parse");
        let model = Model::build(&objects).expect("valid model");
        let out = strait_translate::translate(&model, &self.node);
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

    async fn proxy(&self, protocol: Protocol) -> Running {
        self.proxy_exporting(protocol, None).await
    }

    /// A proxy exporting spans to `otlp`, if given.
    async fn proxy_exporting(&self, protocol: Protocol, otlp: Option<String>) -> Running {
        let running = app::start(Settings {
            xds: XdsSettings {
                server: format!("http://{}", self.xds),
                protocol,
                node: NodeInfo {
                    id: NODE.to_string(),
                    cluster: "productpage".to_string(),
                    metadata: self.metadata.clone(),
                },
                identity: None,
            },
            admin: "127.0.0.1:0".parse().expect("addr"),
            otlp_endpoint: otlp,
            app_probers: Default::default(),
            run_apps: Default::default(),
            max_connections_per_listener: app::DEFAULT_MAX_CONNECTIONS_PER_LISTENER,
        })
        .await
        .expect("proxy starts");
        let start = Instant::now();
        while !running
            .shared
            .ready
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            assert!(
                start.elapsed() < WAIT,
                "proxy not ready in time; xDS: {:?}",
                running.shared.stats.xds()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running
    }
}

type TestClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// `STATUS BODY` of one request through the proxy.
async fn get(
    client: &TestClient,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let mut req = Request::builder()
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Empty::new()).expect("request"))
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    format!("{status} {}", String::from_utf8_lossy(&body))
}

async fn tally(
    client: &TestClient,
    addr: SocketAddr,
    host: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        *out.entry(get(client, addr, host, "/", headers).await)
            .or_default() += 1;
    }
    out
}

async fn eventually_all(client: &TestClient, addr: SocketAddr, want: &str) {
    let start = Instant::now();
    loop {
        let t = tally(client, addr, "reviews:9080", &[], 10).await;
        if t.get(want) == Some(&10) {
            return;
        }
        assert!(start.elapsed() < WAIT, "never converged on {want}: {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn routes_updates_and_nacks(protocol: Protocol) {
    let world = World::start().await;
    world.publish(JASON);
    let proxy = world.proxy(protocol).await;
    let c = client();
    let addr = world.outbound;

    let t = tally(&c, addr, "reviews:9080", &[], 20).await;
    assert_eq!(t.get("200 reviews-v1"), Some(&20), "{t:?}");
    let t = tally(&c, addr, "reviews", &[("end-user", "jason")], 20).await;
    assert_eq!(t.get("200 reviews-v2"), Some(&20), "{t:?}");
    let t = tally(&c, addr, "reviews.default.svc.cluster.local:9080", &[], 5).await;
    assert_eq!(t.get("200 reviews-v1"), Some(&5), "{t:?}");
    assert_eq!(get(&c, addr, "nosuch:9080", "/", &[]).await, "404 ");
    // The 1s route timeout answers 504 for a backend that takes 3s.
    let started = Instant::now();
    assert_eq!(
        get(&c, addr, "reviews:9080", "/slow", &[]).await,
        "504 upstream request timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // A change on the server reaches the traffic.
    world.publish(ALL_V2);
    eventually_all(&c, addr, "200 reviews-v2").await;

    // A config the proxy cannot honour is NACKed with the reason; the last good one stays.
    world.publish(WITH_UNSUPPORTED);
    let start = Instant::now();
    let nack = loop {
        let status = world
            .server
            .proxies()
            .into_iter()
            .find(|p| p.node_id == NODE)
            .expect("connected");
        if let Some(nack) = status.types.values().find_map(|t| t.nack.clone()) {
            break nack;
        }
        assert!(start.elapsed() < WAIT, "no NACK recorded: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(nack.code, 3);
    assert!(
        nack.error_detail
            .contains("ratings.default.svc.cluster.local")
            && nack.error_detail.contains("connection durations"),
        "{}",
        nack.error_detail
    );
    assert!(
        nack.error_detail.contains("not supported by strait-proxy"),
        "{}",
        nack.error_detail
    );
    let t = tally(&c, addr, "reviews:9080", &[], 20).await;
    assert_eq!(t.get("200 reviews-v2"), Some(&20), "{t:?}");
    let rejected: u64 = proxy.shared.stats.xds().values().map(|t| t.rejected).sum();
    assert!(rejected >= 1);
    let metrics = proxy.shared.stats.prometheus();
    assert!(metrics.contains("strait_proxy_requests_total{cluster=\"outbound|9080|v2|reviews.default.svc.cluster.local\",code=\"200\",virtual_host=\"reviews.default.svc.cluster.local:9080\",route=\"reviews.default.0\"}"), "{metrics}");

    // Fixed again: accepted, and traffic follows.
    world.publish(JASON);
    eventually_all(&c, addr, "200 reviews-v1").await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_routes_updates_and_nacks() {
    routes_updates_and_nacks(Protocol::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_routes_updates_and_nacks() {
    routes_updates_and_nacks(Protocol::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reports_ready_config_and_stats() {
    let world = World::start().await;
    world.publish(JASON);
    let proxy = world.proxy(Protocol::Delta).await;
    let c = client();
    let admin = proxy.admin_addr;
    assert!(
        get(&c, admin, "x", "/ready", &[])
            .await
            .starts_with("200 LIVE")
    );
    assert!(
        get(&c, admin, "x", "/healthz", &[])
            .await
            .starts_with("200")
    );
    let dump = get(&c, admin, "x", "/config_dump", &[]).await;
    let json: serde_json::Value =
        serde_json::from_str(dump.trim_start_matches("200 ")).expect("json");
    assert!(
        json["config"]["clusters"]["outbound|9080|v1|reviews.default.svc.cluster.local"]
            ["endpoints"][0]["port"]
            .is_u64(),
        "{json}"
    );
    assert!(
        json["config"]["listeners"]
            .as_object()
            .is_some_and(|l| l.len() == 1),
        "{json}"
    );
    let metrics = get(&c, admin, "x", "/stats/prometheus", &[]).await;
    assert!(
        metrics.contains("strait_proxy_xds_connected 1"),
        "{metrics}"
    );
    proxy.shutdown().await;
}

const FAULTS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    fault: {abort: {percentage: {value: 100}, httpStatus: 418}}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{headers: {end-user: {exact: slow}}}]
    fault: {delay: {percentage: {value: 100}, fixedDelay: 300ms}}
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews, subset: v2}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_abort_and_delay_per_route() {
    let world = World::start().await;
    world.publish(FAULTS);
    let proxy = world.proxy(Protocol::Delta).await;
    let c = client();
    let addr = world.outbound;
    let t = tally(&c, addr, "reviews:9080", &[("end-user", "jason")], 10).await;
    assert_eq!(t.get("418 fault filter abort"), Some(&10), "{t:?}");
    let started = Instant::now();
    assert_eq!(
        get(&c, addr, "reviews:9080", "/", &[("end-user", "slow")]).await,
        "200 reviews-v1"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_eq!(
        get(&c, addr, "reviews:9080", "/", &[]).await,
        "200 reviews-v2"
    );
    assert!(
        started.elapsed() < Duration::from_millis(290),
        "{:?}",
        started.elapsed()
    );
    proxy.shutdown().await;
}

const RETRIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {x-retry: {exact: "yes"}}}]
    route: [{destination: {host: reviews, subset: v1}}]
    retries: {attempts: 2}
  - route: [{destination: {host: reviews, subset: v1}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_get_past_failures_only_when_configured() {
    let world = World::start().await;
    world.publish(RETRIES);
    let proxy = world.proxy(Protocol::Sotw).await;
    let c = client();
    let addr = world.outbound;
    // With attempts: 2 (Istio's default retry_on includes 503), fail, fail, succeed.
    for _ in 0..3 {
        assert_eq!(
            get(&c, addr, "reviews:9080", "/flaky", &[("x-retry", "yes")]).await,
            "200 reviews-v1"
        );
    }
    // Without a retry policy the failures reach the caller.
    let mut seen = BTreeMap::new();
    for _ in 0..3 {
        *seen
            .entry(get(&c, addr, "reviews:9080", "/flaky", &[]).await)
            .or_insert(0) += 1;
    }
    assert_eq!(
        seen,
        BTreeMap::from([
            ("200 reviews-v1".to_string(), 1),
            ("503 flaky".to_string(), 2)
        ])
    );
    proxy.shutdown().await;
}

const MIRROR_AND_REWRITE: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /items}}]
    rewrite: {uriRegexRewrite: {match: "^/items/([0-9]+)$", rewrite: "/v2/item/\\1"}}
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 100}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_and_mirrors() {
    let world = World::start().await;
    world.publish(MIRROR_AND_REWRITE);
    let proxy = world.proxy(Protocol::Delta).await;
    let c = client();
    let addr = world.outbound;
    assert_eq!(
        get(&c, addr, "reviews:9080", "/old/a?x=1", &[]).await,
        "200 reviews-v1"
    );
    assert_eq!(
        get(&c, addr, "reviews:9080", "/items/42", &[]).await,
        "200 reviews-v1"
    );
    let v1_paths: Vec<String> = seen("reviews-v1").into_iter().map(|(_, p)| p).collect();
    assert!(v1_paths.contains(&"/new/a?x=1".to_string()), "{v1_paths:?}");
    assert!(
        v1_paths.contains(&"/v2/item/42".to_string()),
        "{v1_paths:?}"
    );
    // The mirror gets a copy with a -shadow host; the caller sees only the primary's answer.
    assert_eq!(
        get(&c, addr, "reviews:9080", "/mirrored", &[]).await,
        "200 reviews-v1"
    );
    let start = Instant::now();
    loop {
        let shadowed = seen("reviews-v2")
            .into_iter()
            .any(|(h, p)| h == "reviews-shadow:9080" && p == "/mirrored");
        if shadowed {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "no mirrored request: {:?}",
            seen("reviews-v2")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let world = World::start().await;
    world.publish(ALL_V2);
    let proxy = world.proxy(Protocol::Delta).await;
    let addr = world.outbound;
    let in_flight = tokio::spawn(async move {
        let c = client();
        get(&c, addr, "reviews:9080", "/slow", &[]).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    proxy.shutdown().await;
    // Shutdown waited for the 3s request, which completed normally.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(in_flight.await.expect("joined"), "200 reviews-v2");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

/// An HTTP/2-only (prior knowledge) backend answering its name and the protocol it saw.
async fn h2_backend(name: &'static str) -> u16 {
    let socket = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let port = socket.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let body = format!("{name} {:?}", req.version());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstreams_get_http2() {
    let world = World::start().await;
    let port = h2_backend("grpc-v1").await;
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: grpc}}
spec:
  hosts: [grpc.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 7070, name: grpc, protocol: GRPC}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: grpc}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: grpc-v1}}
spec: {{address: 127.0.0.1, ports: {{grpc: {port}}}, labels: {{app: grpc}}}}
"#
    );
    world.publish(&yaml);
    let proxy = world.proxy(Protocol::Delta).await;
    let c = client();
    // The caller speaks HTTP/1.1; the cluster says HTTP/2, and the backend only speaks that.
    assert_eq!(
        get(&c, world.outbound, "grpc:7070", "/", &[]).await,
        "200 grpc-v1 HTTP/2.0"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_user_on_one_endpoint() {
    let world = World::start().await;
    let (a, b) = world.ports;
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: sticky}}
spec:
  hosts: [sticky.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: sticky}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: sticky-a}}
spec: {{address: 127.0.0.1, ports: {{http: {a}}}, labels: {{app: sticky}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: sticky-b}}
spec: {{address: 127.0.0.1, ports: {{http: {b}}}, labels: {{app: sticky}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: sticky}}
spec:
  host: sticky
  trafficPolicy: {{loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}}}
"#
    );
    world.publish(&yaml);
    let proxy = world.proxy(Protocol::Sotw).await;
    let c = client();
    let mut answers = std::collections::BTreeSet::new();
    for user in 0..20 {
        let user = format!("user-{user}");
        let t = tally(&c, world.outbound, "sticky:9080", &[("x-user", &user)], 5).await;
        assert_eq!(t.len(), 1, "{user} moved: {t:?}");
        answers.extend(t.into_keys());
    }
    assert_eq!(
        answers.len(),
        2,
        "users spread over both endpoints: {answers:?}"
    );
    proxy.shutdown().await;
}

/// A backend that sends its headers at once and the rest of the body 3s later.
async fn drip_backend() -> u16 {
    let socket = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let port = socket.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<Incoming>| async {
                    let chunks = futures::stream::unfold(0, |n| async move {
                        match n {
                            0 => Some((Ok::<_, Infallible>(Frame::data(Bytes::from("start "))), 1)),
                            1 => {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                                Some((Ok(Frame::data(Bytes::from("end"))), 2))
                            }
                            _ => None,
                        }
                    });
                    Ok::<_, Infallible>(Response::new(StreamBody::new(chunks)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_covers_the_whole_response() {
    let world = World::start().await;
    let port = drip_backend().await;
    let yaml = service(
        "drip",
        port,
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: drip}
spec:
  hosts: [drip]
  http:
  - route: [{destination: {host: drip}}]
    timeout: 1s
"#,
    );
    world.publish(&yaml);
    let proxy = world.proxy(Protocol::Delta).await;
    let started = Instant::now();
    let resp = client()
        .request(
            Request::builder()
                .uri(format!("http://{}/", world.outbound))
                .header("host", "drip:9080")
                .body(Empty::new())
                .expect("request"),
        )
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), 200);
    // The first chunk streams through; the rest never comes within the timeout.
    let body = resp.into_body().collect().await;
    assert!(body.is_err(), "the response was cut off");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    proxy.shutdown().await;
}

/// A backend that accepts WebSocket upgrades and echoes the raw bytes it then receives.
async fn echo_upgrade_backend() -> u16 {
    let socket = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let port = socket.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|mut req: Request<Incoming>| async move {
                    let upgraded = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(io) = upgraded.await {
                            let mut io = TokioIo::new(io);
                            let (mut r, mut w) = tokio::io::split(&mut io);
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        }
                    });
                    let mut resp = Response::new(Empty::<Bytes>::new());
                    *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                    resp.headers_mut()
                        .insert("connection", "upgrade".parse().expect("valid"));
                    resp.headers_mut()
                        .insert("upgrade", "websocket".parse().expect("valid"));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_tunnelled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let world = World::start().await;
    let port = echo_upgrade_backend().await;
    let yaml = service("ws", port, "");
    world.publish(&yaml);
    let proxy = world.proxy(Protocol::Delta).await;
    let mut conn = tokio::net::TcpStream::connect(world.outbound)
        .await
        .expect("connect");
    conn.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws:9080\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    conn.write_all(b"ping over the tunnel")
        .await
        .expect("write");
    let mut echo = [0u8; 20];
    tokio::time::timeout(WAIT, conn.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echo, b"ping over the tunnel");
    proxy.shutdown().await;
}

/// What a recording backend saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    host: String,
    /// The proxy's end of the upstream connection.
    peer: SocketAddr,
    traceparent: Option<String>,
    tracestate: Option<String>,
    body: Bytes,
}

type Record = Arc<std::sync::Mutex<Vec<Seen>>>;

/// A backend that records every request, body included. `/slow` answers after 1s, `/flaky`
/// fails twice with 503 and then succeeds (over and over), `/fail` always answers 503.
async fn recorder(name: &'static str) -> (u16, Record) {
    let socket = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let port = socket.local_addr().expect("addr").port();
    let record: Record = Arc::default();
    let flaky = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let rec = record.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = socket.accept().await else {
                continue;
            };
            let (record, flaky) = (rec.clone(), flaky.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (record, flaky) = (record.clone(), flaky.clone());
                    async move {
                        let header = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                        };
                        let mut seen = Seen {
                            method: req.method().to_string(),
                            path: req.uri().path().to_string(),
                            host: header("host").unwrap_or_default(),
                            peer,
                            traceparent: header("traceparent"),
                            tracestate: header("tracestate"),
                            body: Bytes::new(),
                        };
                        seen.body = req.into_body().collect().await.expect("body").to_bytes();
                        let path = seen.path.clone();
                        record.lock().expect("not poisoned").push(seen);
                        let fail = match path.as_str() {
                            "/slow" => {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                false
                            }
                            "/flaky" => {
                                flaky.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 3 != 2
                            }
                            "/fail" => true,
                            _ => false,
                        };
                        let mut resp = Response::new(Full::new(Bytes::from(name)));
                        if fail {
                            *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (port, record)
}

fn recorded(record: &Record) -> Vec<Seen> {
    record.lock().expect("not poisoned").clone()
}

/// A STATIC service `name` (port 9080) with one endpoint, plus `rules` for it.
fn service(name: &str, port: u16, rules: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: {name}}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}}}
spec: {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{app: {name}}}}}
---
{rules}
"#
    )
}

type BodyClient = Client<HttpConnector, Full<Bytes>>;

fn body_client() -> BodyClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// One request with a body: (status, `x-envoy-overloaded`, body).
async fn send(
    client: &BodyClient,
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (u16, bool, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body)).expect("request"))
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let overloaded = resp
        .headers()
        .get("x-envoy-overloaded")
        .is_some_and(|v| v == "true");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        overloaded,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// The value of one sample line (`name{labels} value`) of a Prometheus scrape.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(proxy: &Running) -> String {
    let text = get(
        &client(),
        proxy.admin_addr,
        "admin",
        "/stats/prometheus",
        &[],
    )
    .await;
    text.strip_prefix("200 ").expect("scraped").to_string()
}

const SLOW_CLUSTER: &str = "outbound|9080||slow.default.svc.cluster.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_queue_one_request_and_overflow_the_next() {
    let world = World::start().await;
    let (port, record) = recorder("slow").await;
    world.publish(&service(
        "slow",
        port,
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: slow}
spec:
  host: slow
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}
"#,
    ));
    let proxy = world.proxy(Protocol::Delta).await;
    let addr = world.outbound;
    let started = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async move {
                let (status, overloaded, _) = send(
                    &body_client(),
                    addr,
                    "GET",
                    "slow:9080",
                    "/slow",
                    &[],
                    Bytes::new(),
                )
                .await;
                (status, overloaded, started.elapsed())
            })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.expect("joined"));
    }
    results.sort_by_key(|(_, _, elapsed)| *elapsed);
    let statuses: Vec<(u16, bool)> = results.iter().map(|(s, o, _)| (*s, *o)).collect();
    // One on the connection, one pending for it, one turned away at once.
    assert_eq!(
        statuses,
        [(503, true), (200, false), (200, false)],
        "{results:?}"
    );
    assert!(results[0].2 < Duration::from_millis(900), "{results:?}");
    // The pending one went only after the first had finished: never two at once.
    assert!(results[2].2 >= Duration::from_millis(1900), "{results:?}");
    assert_eq!(recorded(&record).len(), 2);
    let metrics = scrape(&proxy).await;
    let overflow = |limit: &str| {
        sample(
            &metrics,
            &format!(
                "strait_proxy_upstream_overflow_total{{cluster=\"{SLOW_CLUSTER}\",limit=\"{limit}\"}}"
            ),
        )
    };
    assert_eq!(overflow("max_pending_requests"), Some(1.0), "{metrics}");
    assert_eq!(overflow("max_connections"), Some(2.0), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            &format!("strait_proxy_upstream_requests_pending{{cluster=\"{SLOW_CLUSTER}\"}}")
        ),
        Some(0.0)
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_closes_connections() {
    let world = World::start().await;
    let (port, record) = recorder("capped").await;
    world.publish(&service(
        "capped",
        port,
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: capped}
spec:
  host: capped
  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 2}}}
"#,
    ));
    let proxy = world.proxy(Protocol::Delta).await;
    let c = client();
    for _ in 0..6 {
        assert_eq!(
            get(&c, world.outbound, "capped:9080", "/", &[]).await,
            "200 capped"
        );
        // Let the pool take the connection back before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut per_connection: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for seen in recorded(&record) {
        *per_connection.entry(seen.peer).or_default() += 1;
    }
    assert_eq!(per_connection.values().sum::<usize>(), 6);
    assert!(
        per_connection.len() == 3 && per_connection.values().all(|n| *n == 2),
        "each connection carries 2 requests, then closes: {per_connection:?}"
    );
    let metrics = scrape(&proxy).await;
    let opened = sample(
        &metrics,
        "strait_proxy_upstream_connections_total{cluster=\"outbound|9080||capped.default.svc.cluster.local\"}",
    );
    assert_eq!(opened, Some(per_connection.len() as f64), "{metrics}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_and_close_after_the_idle_timeout() {
    const CLUSTER: &str = "outbound|9080||idle.default.svc.cluster.local";
    let world = World::start().await;
    let (port, record) = recorder("idle").await;
    world.publish(&service(
        "idle",
        port,
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: idle}
spec:
  host: idle
  trafficPolicy: {connectionPool: {http: {idleTimeout: 300ms}}}
"#,
    ));
    let proxy = world.proxy(Protocol::Delta).await;
    let c = client();
    let connections = |metrics: &str| {
        let opened = sample(
            metrics,
            &format!("strait_proxy_upstream_connections_total{{cluster=\"{CLUSTER}\"}}"),
        );
        let open = sample(
            metrics,
            &format!("strait_proxy_upstream_connections_active{{cluster=\"{CLUSTER}\"}}"),
        );
        (opened, open)
    };
    for _ in 0..5 {
        assert_eq!(
            get(&c, world.outbound, "idle:9080", "/", &[]).await,
            "200 idle"
        );
    }
    let peers: std::collections::BTreeSet<SocketAddr> =
        recorded(&record).iter().map(|seen| seen.peer).collect();
    assert_eq!(peers.len(), 1, "one upstream connection carries them all");
    let metrics = scrape(&proxy).await;
    assert_eq!(connections(&metrics), (Some(1.0), Some(1.0)), "{metrics}");
    // Idle for more than the timeout (the pool looks every half timeout): closed.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let metrics = scrape(&proxy).await;
    assert_eq!(connections(&metrics), (Some(1.0), Some(0.0)), "{metrics}");
    assert_eq!(
        get(&c, world.outbound, "idle:9080", "/", &[]).await,
        "200 idle"
    );
    let metrics = scrape(&proxy).await;
    assert_eq!(connections(&metrics), (Some(2.0), Some(1.0)), "{metrics}");
    proxy.shutdown().await;
}

const BODIES: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bodies}
spec:
  hosts: [bodies]
  http:
  - match: [{uri: {prefix: /mirrored}}]
    route: [{destination: {host: bodies}}]
    mirror: {host: shadow}
    mirrorPercentage: {value: 100}
  - route: [{destination: {host: bodies}}]
    retries: {attempts: 3}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_replayed_on_retries_and_sent_to_mirrors() {
    let world = World::start().await;
    let (port, record) = recorder("bodies").await;
    let (shadow_port, shadow) = recorder("shadow").await;
    let yaml = format!(
        "{}---{}",
        service("bodies", port, BODIES),
        service(
            "shadow",
            shadow_port,
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: shadow}\nspec: {host: shadow}\n"
        )
    );
    world.publish(&yaml);
    let proxy = world.proxy(Protocol::Delta).await;
    let c = body_client();
    let addr = world.outbound;

    // 503, 503, then 200: each attempt carries the whole body.
    let payload = Bytes::from("a small payload ".repeat(64));
    let (status, _, body) = send(
        &c,
        addr,
        "POST",
        "bodies:9080",
        "/flaky",
        &[],
        payload.clone(),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "bodies"));
    let attempts = recorded(&record);
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(
        attempts
            .iter()
            .all(|s| s.method == "POST" && s.path == "/flaky" && s.body == payload),
        "{attempts:?}"
    );

    // Beyond the 1 MiB buffer limit a body streams once, without retries, as Envoy's does.
    let big = Bytes::from(vec![b'x'; strait_proxy::http::RETRY_BUFFER_LIMIT + 1]);
    let (status, _, _) = send(&c, addr, "POST", "bodies:9080", "/fail", &[], big.clone()).await;
    assert_eq!(status, 503);
    let fails: Vec<Seen> = recorded(&record)
        .into_iter()
        .filter(|s| s.path == "/fail")
        .collect();
    assert_eq!(fails.len(), 1, "sent once");
    assert_eq!(fails[0].body.len(), big.len());
    let metrics = scrape(&proxy).await;
    assert_eq!(
        sample(
            &metrics,
            "strait_proxy_upstream_retry_or_shadow_abandoned_total{cluster=\"outbound|9080||bodies.default.svc.cluster.local\"}"
        ),
        Some(1.0),
        "{metrics}"
    );

    // A mirrored POST reaches the mirror with its body.
    let (status, _, _) = send(
        &c,
        addr,
        "POST",
        "bodies:9080",
        "/mirrored",
        &[],
        payload.clone(),
    )
    .await;
    assert_eq!(status, 200);
    let start = Instant::now();
    let copy = loop {
        if let Some(s) = recorded(&shadow)
            .into_iter()
            .find(|s| s.path == "/mirrored")
        {
            break s;
        }
        assert!(start.elapsed() < WAIT, "nothing mirrored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.host, "bodies-shadow:9080");
    assert_eq!(copy.body, payload);

    let metrics = scrape(&proxy).await;
    assert_eq!(
        sample(
            &metrics,
            "strait_proxy_upstream_retries_total{cluster=\"outbound|9080||bodies.default.svc.cluster.local\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_requests_latency_connections_and_ejections() {
    let world = World::start().await;
    let (port, _) = recorder("counted").await;
    world.publish(&service(
        "counted",
        port,
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: counted}
spec:
  host: counted
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}
"#,
    ));
    let proxy = world.proxy(Protocol::Delta).await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(
            get(&c, world.outbound, "counted:9080", "/", &[]).await,
            "200 counted"
        );
    }
    assert_eq!(
        get(&c, world.outbound, "counted:9080", "/slow", &[]).await,
        "200 counted"
    );
    for _ in 0..2 {
        assert!(
            get(&c, world.outbound, "counted:9080", "/fail", &[])
                .await
                .starts_with("503")
        );
    }
    let cluster = "outbound|9080||counted.default.svc.cluster.local";
    let metrics = scrape(&proxy).await;
    let series = |name: &str, labels: &str| sample(&metrics, &format!("{name}{{{labels}}}"));
    let c_ = format!("cluster=\"{cluster}\"");
    // Requests by route (the virtual host and route names straitd gives them), cluster, code.
    let ok = metrics
        .lines()
        .find(|l| l.starts_with(&format!("strait_proxy_requests_total{{{c_},code=\"200\"")))
        .unwrap_or_else(|| panic!("no 200s: {metrics}"));
    assert!(
        ok.contains("virtual_host=\"counted.default.svc.cluster.local:9080\""),
        "{ok}"
    );
    assert!(ok.ends_with(" 6"), "{ok}");
    // The latency histogram: every request observed; the 1s one in no bucket below 1000 ms.
    let bucket = |le: &str| {
        series(
            "strait_proxy_request_duration_milliseconds_bucket",
            &format!("{c_},le=\"{le}\""),
        )
    };
    assert_eq!(
        series("strait_proxy_request_duration_milliseconds_count", &c_),
        Some(8.0),
        "{metrics}"
    );
    assert_eq!(bucket("+Inf"), Some(8.0));
    assert_eq!(bucket("500"), Some(7.0), "{metrics}");
    assert_eq!(bucket("2500"), Some(8.0), "{metrics}");
    assert!(
        series("strait_proxy_request_duration_milliseconds_sum", &c_)
            .is_some_and(|ms| ms >= 1000.0)
    );
    // One keep-alive connection carried it all, and is still open.
    assert_eq!(
        series("strait_proxy_upstream_connections_total", &c_),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        series("strait_proxy_upstream_connections_active", &c_),
        Some(1.0),
        "{metrics}"
    );
    // Two 503s in a row ejected the only endpoint.
    assert_eq!(
        series("strait_proxy_outlier_ejections_total", &c_),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        series("strait_proxy_outlier_ejections_active", &c_),
        Some(1.0),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE strait_proxy_request_duration_milliseconds histogram"));
    proxy.shutdown().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_callers_trace_and_reach_the_collector() {
    let world = World::start().await;
    let (port, record) = recorder("traced").await;
    world.publish(&service(
        "traced",
        port,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: traced}\nspec: {host: traced}\n",
    ));
    let (collector, collector_addr) = strait_tests::otlp::Collector::start()
        .await
        .expect("collector");
    let proxy = world
        .proxy_exporting(Protocol::Delta, Some(format!("http://{collector_addr}")))
        .await;
    let c = client();
    let incoming = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let headers = [
        ("traceparent", incoming.as_str()),
        ("tracestate", "vendor=opaque,other=1"),
    ];
    assert_eq!(
        get(&c, world.outbound, "traced:9080", "/with-parent", &headers).await,
        "200 traced"
    );
    assert_eq!(
        get(&c, world.outbound, "traced:9080", "/no-parent", &[]).await,
        "200 traced"
    );
    // Shutting down exports what is left.
    proxy.shutdown().await;

    let seen = recorded(&record);
    let upstream = |path: &str| {
        seen.iter()
            .find(|s| s.path == path)
            .unwrap_or_else(|| panic!("{path} not seen: {seen:?}"))
            .clone()
    };
    let child = upstream("/with-parent");
    let sent = child.traceparent.expect("a traceparent upstream");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", TRACE_ID, "01"),
        "{sent}"
    );
    assert_ne!(parts[2], CALLER_SPAN, "the upstream's parent is our span");
    assert_eq!(child.tracestate.as_deref(), Some("vendor=opaque,other=1"));

    let spans = collector.spans();
    let ours = spans
        .iter()
        .find(|(_, s)| hex(&s.span_id) == parts[2])
        .unwrap_or_else(|| panic!("no span {}: {spans:?}", parts[2]));
    assert_eq!(hex(&ours.1.trace_id), TRACE_ID);
    assert_eq!(hex(&ours.1.parent_span_id), CALLER_SPAN);
    assert!(ours.0.contains("productpage"), "service name: {}", ours.0);
    assert_eq!(ours.1.name, "traced:9080/with-parent");
    let status = ours
        .1
        .attributes
        .iter()
        .find(|a| a.key == "http.response.status_code")
        .and_then(|a| a.value.as_ref())
        .map(|v| format!("{:?}", v.value));
    assert!(status.is_some_and(|s| s.contains("200")));

    // Without a traceparent a new trace starts, and the upstream sees its root span.
    let root = upstream("/no-parent")
        .traceparent
        .expect("a traceparent upstream");
    let root: Vec<&str> = root.split('-').collect();
    let span = spans
        .iter()
        .find(|(_, s)| hex(&s.span_id) == root[2])
        .expect("the root span was exported");
    assert_eq!(hex(&span.1.trace_id), root[1]);
    assert!(span.1.parent_span_id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_trace_headers_pass_through_untouched() {
    let world = World::start().await;
    let (port, record) = recorder("untraced").await;
    world.publish(&service(
        "untraced",
        port,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: untraced}\nspec: {host: untraced}\n",
    ));
    let proxy = world.proxy(Protocol::Delta).await;
    let incoming = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let headers = [("traceparent", incoming.as_str()), ("tracestate", "a=b")];
    assert_eq!(
        get(&client(), world.outbound, "untraced:9080", "/", &headers).await,
        "200 untraced"
    );
    assert_eq!(
        get(&client(), world.outbound, "untraced:9080", "/bare", &[]).await,
        "200 untraced"
    );
    let seen = recorded(&record);
    assert_eq!(seen[0].traceparent.as_deref(), Some(incoming.as_str()));
    assert_eq!(seen[0].tracestate.as_deref(), Some("a=b"));
    assert_eq!(seen[1].traceparent, None, "none invented");
    proxy.shutdown().await;
}
