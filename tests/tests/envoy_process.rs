//! The Envoy process path of the harness: spawn, readiness semantics, traffic, kill on drop.

use std::time::{Duration, Instant};

use serde_json::json;
use strait_tests::backend::BACKEND_HEADER;
use strait_tests::client::{self, Req};
use strait_tests::dataplane::ProxySpec;
use strait_tests::envoy::{Envoy, EnvoyProcess};
use strait_tests::ports::free_port;
use strait_tests::{Backend, Proxy};

/// A self-contained Envoy: one listener routing everything to one backend, no xDS.
fn static_bootstrap(admin_port: u16, listen_port: u16, backend_port: u16) -> serde_json::Value {
    let addr = |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    json!({
        "admin": {"address": addr(admin_port)},
        "static_resources": {
            "listeners": [{
                "name": "in",
                "address": addr(listen_port),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "in",
                        "route_config": {"virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]
                        }]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                        }]
                    }
                }]}]
            }],
            "clusters": [{
                "name": "backend", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": addr(backend_port)}}
                ]}]}
            }]
        }
    })
}

fn write_bootstrap(dir: &tempfile::TempDir, b: &serde_json::Value) -> std::path::PathBuf {
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, b.to_string()).expect("writing the bootstrap");
    path
}

#[tokio::test]
async fn envoy_goes_live_proxies_real_traffic_and_dies_on_drop() {
    let backend = Backend::start("behind-envoy");
    let (admin, listen) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = write_bootstrap(&dir, &static_bootstrap(admin, listen, backend.port()));
    let mut envoy = EnvoyProcess::spawn("envoy static", &path, admin, dir).unwrap();
    // Static config only: nothing to wait for, so LIVE comes at once.
    envoy.wait_live(Duration::from_secs(20)).unwrap();
    assert_eq!(envoy.ready().unwrap(), (200, "LIVE".to_string()));

    let listener = std::net::SocketAddr::from(([127, 0, 0, 1], listen));
    let r = client::request(listener, Req::get("anything", "/p?q=1").echo())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header(BACKEND_HEADER), Some("behind-envoy"));
    let echo = r.json().unwrap();
    assert_eq!(echo["path"], "/p?q=1");
    assert!(
        echo["headers"]["x-request-id"].is_string(),
        "Envoy adds x-request-id: {echo}"
    );
    assert_eq!(backend.requests(), 1);
    assert!(envoy.stat("cluster.backend.upstream_rq_200").unwrap() >= 1);
    let dump = envoy.config_dump().unwrap();
    assert!(dump["configs"].is_array(), "{dump}");

    drop(envoy);
    let err = client::request(listener, Req::get("", "/"))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").to_lowercase().contains("connect"),
        "{err:#}"
    );
    assert!(
        client::get_blocking(&format!("http://127.0.0.1:{admin}/ready")).is_err(),
        "admin still answers after drop"
    );
}

#[test]
fn without_a_control_plane_envoy_answers_but_is_not_configured() {
    // Nobody listens on this xDS port.
    let xds = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let spec = ProxySpec::sidecar("lonely", "default", &[("app", "lonely")]);
    let mut proxy = Envoy::launch(&strait_tests::envoy::XdsTarget::plaintext(xds), &spec).unwrap();
    let admin = proxy.admin_url();
    assert!(proxy.outbound_addr().ip().is_loopback());
    assert!(proxy.config_dump().unwrap()["configs"].is_array());

    // Waiting for the initial CDS response: not ready, not connected.
    let (status, state) = proxy.process.ready().unwrap();
    assert_eq!((status, state.as_str()), (503, "PRE_INITIALIZING"));
    assert_eq!(
        proxy.process.stat("control_plane.connected_state").unwrap(),
        0
    );

    let start = Instant::now();
    let err = proxy
        .process
        .wait_configured(Duration::from_secs(1))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        msg.contains("PRE_INITIALIZING") && msg.contains("connected_state=0"),
        "{msg}"
    );
    assert!(
        msg.contains("envoy.log"),
        "the failure points at the log: {msg}"
    );

    drop(proxy);
    assert!(
        client::get_blocking(&format!("{admin}/ready")).is_err(),
        "admin still answers after drop"
    );
}

#[test]
fn an_envoy_that_cannot_start_fails_fast_with_its_log() {
    let admin = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut b = static_bootstrap(admin, free_port(), 1);
    b["static_resources"]["clusters"][0]["type"] = json!("NOT_A_TYPE");
    let path = write_bootstrap(&dir, &b);
    let start = Instant::now();
    let err = match EnvoyProcess::spawn("envoy broken", &path, admin, dir) {
        Ok(_) => panic!("envoy started with a broken bootstrap"),
        Err(e) => format!("{e:#}"),
    };
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(
        err.contains("exited") && err.contains("NOT_A_TYPE"),
        "{err}"
    );
}
