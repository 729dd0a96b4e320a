//! RateLimitPolicy (`policy.strait.io`) end to end: a sidecar limits the requests its workload
//! receives per route (a path and method) and per consumer key, answering 429 with Envoy's
//! rate-limit headers before the app sees the request; a gateway limits per client address,
//! keeps its buckets across a route change and starts new ones when the limit changes. A
//! policy straitd refuses leaves the one in force.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use strait_tests::client::{HttpClient, Req, Resp};
use strait_tests::{
    Backend, ConfigDir, Proxy, ProxySpec, Straitd, StraitdOptions, data_plane, eventually,
};

use crate::common::{CONVERGE, assert_no_nacks, get_from};

const HOST: &str = "ratings:9080";
/// The filter's config type, as Envoy's `/config_dump` names it.
const LOCAL_RATE_LIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

fn sidecar_policy() -> &'static str {
    "apiVersion: policy.strait.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: ratings, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  limits:
  - name: writes
    match: {uri: {prefix: /ratings}, method: {exact: POST}}
    requests: 2
    interval: 1m
  - name: per-key
    match: {uri: {prefix: /api}}
    requests: 3
    interval: 1m
    by: {header: x-api-key}
"
}

struct Sidecar {
    app: Backend,
    config: ConfigDir,
    straitd: Straitd,
    server: Box<dyn Proxy>,
}

impl Sidecar {
    fn start(policy: &str) -> anyhow::Result<Sidecar> {
        let app = Backend::start("ratings-app");
        let spec = ProxySpec::sidecar(
            "ratings-v1.default",
            "default",
            &[("app", "ratings"), ("version", "v1")],
        )
        .workload("bookinfo-ratings", app.port());
        let inbound = spec.inbound_port().expect("a workload has an inbound port");
        let config = ConfigDir::new()?;
        config.write(
            "ratings.yaml",
            &format!(
                "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-v1}}
spec:
  address: 127.0.0.1
  ports: {{http: {inbound}}}
  labels: {{app: ratings, version: v1}}
  serviceAccount: bookinfo-ratings
"
            ),
        )?;
        config.write("limits.yaml", policy)?;
        let straitd = Straitd::start(StraitdOptions::new(config.path()))?;
        let server = data_plane().start(&straitd, &spec)?;
        Ok(Sidecar {
            app,
            config,
            straitd,
            server,
        })
    }

    async fn send(&self, req: Req) -> anyhow::Result<Resp> {
        let port = self.server.inbound_port().expect("an inbound side");
        HttpClient::without_pooling()
            .request(SocketAddr::from(([127, 0, 0, 1], port)), &req)
            .await
    }

    fn stat_prefix(&self) -> String {
        format!(
            "inbound_{}",
            self.server.inbound_port().expect("an inbound side")
        )
    }
}

/// `(status, x-ratelimit-limit, x-ratelimit-remaining)` of a response.
fn seen(resp: &Resp) -> (u16, Option<&str>, Option<&str>) {
    (
        resp.status,
        resp.header("x-ratelimit-limit"),
        resp.header("x-ratelimit-remaining"),
    )
}

fn limited(resp: &Resp, limit: &str, max_reset: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        seen(resp) == (429, Some(limit), Some("0")) && resp.body == "local_rate_limited",
        "expected a local rate limit answer: {resp:?}"
    );
    let reset: u64 = resp.header("x-ratelimit-reset").unwrap_or("").parse()?;
    let retry: u64 = resp.header("retry-after").unwrap_or("").parse()?;
    anyhow::ensure!(
        (1..=max_reset).contains(&reset) && retry == reset,
        "x-ratelimit-reset and retry-after say when the next token comes: {resp:?}"
    );
    Ok(())
}

/// The limited requests the proxy counted for the filter with `stat_prefix`, from its
/// Prometheus page (Envoy's counter, or strait-proxy's).
fn rate_limited_count(proxy: &dyn Proxy, stat_prefix: &str) -> anyhow::Result<u64> {
    let (status, body) =
        strait_tests::client::get_blocking(&format!("{}/stats/prometheus", proxy.admin_url()))?;
    anyhow::ensure!(status == 200, "/stats/prometheus said {status}");
    let line = if data_plane().name() == "envoy" {
        format!(
            "envoy_http_local_rate_limit_rate_limited{{envoy_local_http_ratelimit_prefix=\"{stat_prefix}\"}} "
        )
    } else {
        format!(
            "strait_proxy_local_rate_limit_total{{stat_prefix=\"{stat_prefix}\",decision=\"rate_limited\"}} "
        )
    };
    body.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .ok_or_else(|| anyhow::anyhow!("no {line:?} in /stats/prometheus"))?
        .trim()
        .parse()
        .map_err(Into::into)
}

/// The local rate limit filter configs anywhere in a config dump: Envoy's by type, strait-proxy's
/// under `rate_limit`.
fn rate_limit_configs(dump: &Value) -> Vec<Value> {
    fn walk(v: &Value, out: &mut Vec<Value>) {
        match v {
            Value::Object(map) => {
                if map.get("@type").and_then(Value::as_str) == Some(LOCAL_RATE_LIMIT) {
                    out.push(v.clone());
                }
                if let Some(rl) = map.get("rate_limit").filter(|rl| rl.is_object()) {
                    out.push(rl.clone());
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(list) => list.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dump, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_limits_requests_per_route_and_per_consumer_key() -> anyhow::Result<()> {
    let mesh = Sidecar::start(sidecar_policy())?;
    // A key of its own, so waiting for the config spends no other bucket.
    eventually(CONVERGE, || async {
        let resp = mesh
            .send(Req::get(HOST, "/api/probe").header("x-api-key", "probe"))
            .await?;
        anyhow::ensure!(seen(&resp).1 == Some("3"), "{resp:?}");
        Ok(())
    })
    .await?;

    // What no limit matches is not counted, and carries no rate-limit headers.
    for _ in 0..5 {
        let resp = mesh.send(Req::get(HOST, "/ratings/1")).await?;
        anyhow::ensure!(seen(&resp) == (200, None, None), "{resp:?}");
    }
    // Two writes a minute.
    let before = mesh.app.requests();
    for remaining in ["1", "0"] {
        let resp = mesh.send(Req::post(HOST, "/ratings/1", "5 stars")).await?;
        anyhow::ensure!(seen(&resp) == (200, Some("2"), Some(remaining)), "{resp:?}");
    }
    limited(
        &mesh.send(Req::post(HOST, "/ratings/1", "5 stars")).await?,
        "2",
        30,
    )?;
    anyhow::ensure!(
        mesh.app.requests() == before + 2,
        "the limited write never reached the app"
    );
    let resp = mesh.send(Req::get(HOST, "/ratings/1")).await?;
    anyhow::ensure!(resp.status == 200, "reads are not writes: {resp:?}");

    // Three a minute per key; requests without a key share one bucket.
    for key in ["alice", "bob"] {
        for remaining in ["2", "1", "0"] {
            let resp = mesh
                .send(Req::get(HOST, "/api/items").header("x-api-key", key))
                .await?;
            anyhow::ensure!(
                seen(&resp) == (200, Some("3"), Some(remaining)),
                "{key}: {resp:?}"
            );
        }
        limited(
            &mesh
                .send(Req::get(HOST, "/api/items").header("x-api-key", key))
                .await?,
            "3",
            20,
        )?;
    }
    for _ in 0..3 {
        let resp = mesh.send(Req::get(HOST, "/api/items")).await?;
        anyhow::ensure!(resp.status == 200, "no key: {resp:?}");
    }
    limited(&mesh.send(Req::get(HOST, "/api/items")).await?, "3", 20)?;
    anyhow::ensure!(
        rate_limited_count(&*mesh.server, &mesh.stat_prefix())? == 4,
        "one write, alice, bob and the keyless request were limited"
    );

    let dump = mesh.server.config_dump()?;
    let configs = rate_limit_configs(&dump);
    anyhow::ensure!(
        !configs.is_empty()
            && configs.iter().all(|c| {
                c["descriptors"].as_array().map(Vec::len) == Some(3)
                    && c["stat_prefix"] == mesh.stat_prefix()
            }),
        "the filter on each inbound chain, with a descriptor for the writes and two for the \
         keyed limit: {configs:?}"
    );

    // A policy straitd refuses is named with its field, and the one in force keeps limiting.
    let (_, before) = mesh.straitd.admin_get("/config/status")?;
    let before: Value = serde_json::from_str(&before)?;
    mesh.config.replace(
        "limits.yaml",
        &sidecar_policy().replace("interval: 1m\n    by:", "interval: 10ms\n    by:"),
    )?;
    eventually(Duration::from_secs(5), || async {
        let (_, body) = mesh.straitd.admin_get("/config/status")?;
        let error = serde_json::from_str::<Value>(&body)?["last_error"].to_string();
        anyhow::ensure!(
            error.contains("RateLimitPolicy")
                && error.contains("spec.limits[1].interval")
                && error.contains("50ms"),
            "{error}"
        );
        Ok(())
    })
    .await?;
    let (_, after) = mesh.straitd.admin_get("/config/status")?;
    let after: Value = serde_json::from_str(&after)?;
    anyhow::ensure!(
        after["generation"] == before["generation"],
        "nothing new was published"
    );
    limited(
        &mesh
            .send(Req::get(HOST, "/api/items").header("x-api-key", "alice"))
            .await?,
        "3",
        20,
    )?;
    assert_no_nacks(&mesh.straitd).await
}

// === the gateway ===

const GATEWAY_HOST: &str = "shop.example.com";

fn gateway_config(backend: u16, requests: u32, route_prefix: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shop, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{GATEWAY_HOST}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: shop, namespace: istio-system}}
spec:
  hosts: [shop.internal]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {backend}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: istio-system}}
spec:
  hosts: [{GATEWAY_HOST}]
  gateways: [shop]
  http:
  - match: [{{uri: {{prefix: {route_prefix}}}}}]
    route: [{{destination: {{host: shop.internal}}}}]
---
apiVersion: policy.strait.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: per-client, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  limits:
  - name: per-client
    requests: {requests}
    interval: 1m
    by: {{sourceAddress: true}}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_limits_per_client_address_across_route_changes() -> anyhow::Result<()> {
    let backend = Backend::start("shop");
    let config = ConfigDir::new()?;
    config.write("shop.yaml", &gateway_config(backend.port(), 2, "/"))?;
    let straitd = Straitd::start(StraitdOptions::new(config.path()))?;
    let spec = ProxySpec::gateway(
        "ingress-1.istio-system",
        "istio-system",
        &[("istio", "ingressgateway")],
        &[80],
    );
    let gateway = data_plane().start(&straitd, &spec)?;
    let addr = gateway.gateway_addr(80);
    let first: IpAddr = [127, 0, 0, 1].into();
    let second: IpAddr = [127, 0, 0, 2].into();
    let third: IpAddr = [127, 0, 0, 3].into();
    // The first client's first request is the one that finds the config in place.
    eventually(CONVERGE, || async {
        anyhow::ensure!(get_from(first, addr, GATEWAY_HOST, "/cart").await? == 200);
        Ok(())
    })
    .await?;
    let statuses = |source: IpAddr, n: usize| async move {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(get_from(source, addr, GATEWAY_HOST, "/cart").await?);
        }
        anyhow::Ok(out)
    };
    anyhow::ensure!(statuses(first, 2).await? == [200, 429]);
    anyhow::ensure!(
        statuses(second, 3).await? == [200, 200, 429],
        "another address has its own bucket"
    );

    // A route change leaves the limit as it is, and its buckets with it. Each look is from
    // an address of its own: what no route takes is counted too, as the filter runs before
    // the router.
    config.replace("shop.yaml", &gateway_config(backend.port(), 2, "/cart"))?;
    let look = std::sync::atomic::AtomicU8::new(10);
    eventually(CONVERGE, || async {
        let source = IpAddr::from([127, 0, 0, look.fetch_add(1, Ordering::Relaxed)]);
        anyhow::ensure!(get_from(source, addr, GATEWAY_HOST, "/other").await? == 404);
        Ok(())
    })
    .await?;
    anyhow::ensure!(
        statuses(third, 3).await? == [200, 200, 429],
        "a new address still has a whole bucket"
    );
    anyhow::ensure!(
        statuses(first, 1).await? == [429],
        "the first client's bucket is still empty after the route change"
    );

    // A new limit is a new bucket for everyone.
    config.replace("shop.yaml", &gateway_config(backend.port(), 5, "/cart"))?;
    eventually(CONVERGE, || async {
        let resp = HttpClient::without_pooling()
            .request(addr, &Req::get(GATEWAY_HOST, "/cart"))
            .await?;
        anyhow::ensure!(resp.header("x-ratelimit-limit") == Some("5"), "{resp:?}");
        Ok(())
    })
    .await?;
    anyhow::ensure!(statuses(second, 5).await? == [200, 200, 200, 200, 200]);
    anyhow::ensure!(statuses(second, 1).await? == [429]);
    assert_no_nacks(&straitd).await
}
