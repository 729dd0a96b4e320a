//! Arbitrary bytes as a client's side of a connection to strait-proxy's HTTP server (HTTP/1.1,
//! or HTTP/2 after its preface), served as a listener serves it: limits, RBAC, routing, CORS,
//! faults, redirects and the forward path, on the config straitd makes for a few of the
//! translation goldens. The first byte picks the golden and filter chain. Clusters have no
//! endpoints, so nothing leaves the process; time is paused, so delays pass at once.

#![no_main]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use libfuzzer_sys::fuzz_target;
use strait_model::{Model, ProxyNode, loader};
use strait_proxy::config::{Cluster, Config, Listener, RouteConfig};
use strait_proxy::http::{Conn, ConnLimits, serve_http};
use strait_proxy::runtime::{Runtime, Shared};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GOLDENS: &[&str] = &[
    "sidecar-bookinfo",
    "sidecar-policies",
    "sidecar-cors",
    "gateway",
    "gateway-rate-limit",
];

struct World {
    rt: tokio::runtime::Runtime,
    /// (proxy, listener, chain, its limits) for every HTTP filter chain.
    chains: Vec<(Arc<Shared>, Arc<str>, usize, ConnLimits)>,
}

fn config(case: &str) -> Config {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../control-plane/translate/tests/golden")
        .join(case);
    let yaml = std::fs::read_to_string(dir.join("config.yaml")).expect("config.yaml");
    let objects = loader::parse(&yaml, "config.yaml").expect("golden parses");
    let model = Model::build(&objects).expect("golden is valid");
    let node: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("node.json")).expect("node.json"))
            .expect("node json");
    let node = ProxyNode::from_metadata(
        node["id"].as_str().unwrap_or("fuzz"),
        node["metadata"].as_object().expect("metadata"),
    )
    .expect("node");
    let out = strait_translate::translate(&model, &node);
    let mut config = Config::default();
    for l in &out.listeners {
        if let Ok(listener) = Listener::try_from(l) {
            config.listeners.insert(listener.name.clone(), listener);
        }
    }
    for r in &out.routes {
        let rc = RouteConfig::try_from(r).expect("golden routes convert");
        config.routes.insert(r.name.as_str().into(), Arc::new(rc));
    }
    for c in &out.clusters {
        let mut cluster = Cluster::try_from(c).expect("golden clusters convert");
        cluster.endpoints = Arc::from([]);
        config
            .clusters
            .insert(c.name.as_str().into(), Arc::new(cluster));
    }
    config
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let _entered = rt.enter();
    let mut chains = Vec::new();
    for case in GOLDENS {
        let config = Arc::new(config(case));
        let shared = Arc::new(Shared::default());
        shared
            .runtime
            .store(Some(Arc::new(Runtime::build(config.clone(), None, None))));
        for (name, l) in &config.listeners {
            for (i, chain) in l.chains.iter().enumerate() {
                if let Some(http) = chain.http() {
                    let limits = ConnLimits {
                        request_headers: http.request_headers,
                        request_headers_timeout: http.request_headers_timeout,
                    };
                    chains.push((shared.clone(), name.clone(), i, limits));
                }
            }
        }
    }
    assert!(!chains.is_empty(), "the goldens have HTTP filter chains");
    drop(_entered);
    World { rt, chains }
});

fuzz_target!(|data: &[u8]| {
    let Some((&pick, request)) = data.split_first() else {
        return;
    };
    let world = &*WORLD;
    let (shared, listener, chain, limits) = &world.chains[pick as usize % world.chains.len()];
    world.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let peer = SocketAddr::from(([127, 0, 0, 2], 40000));
        // A closed port: original-destination clusters are refused at once.
        let local = SocketAddr::from(([127, 0, 0, 1], 1));
        let conn = Conn::new(listener.clone(), *chain, peer, local, None);
        let builder = strait_proxy::http::limits::builder(&limits.request_headers);
        let graceful = GracefulShutdown::new();
        let serve = serve_http(
            shared.clone(),
            conn,
            server,
            *limits,
            &builder,
            graceful.watcher(),
        );
        let drive = async move {
            let _ = client.write_all(request).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(serve, drive)
        })
        .await;
    });
});
