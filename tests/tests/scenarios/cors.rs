//! VirtualService `corsPolicy`: the sidecar answers a preflight from an allowed origin itself,
//! marks responses to allowed origins, and leaves other origins' requests unmarked (their
//! preflights forwarded, or answered without allowing anything under `unmatchedPreflights:
//! IGNORE`).

use http::Method;
use strait_tests::client::{HttpClient, Req, Resp};
use strait_tests::{Backend, XdsProtocol, eventually};

use crate::both_protocols;
use crate::common::{CONVERGE, Plain, assert_no_nacks};

const HOST: &str = "api.default.svc.cluster.local:8080";
const APP: &str = "https://app.example";
const EVIL: &str = "https://evil.example";

fn config(port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.default.svc.cluster.local]
  http:
  - name: strict
    match: [{{uri: {{prefix: /strict}}}}]
    route: [{{destination: {{host: api.default.svc.cluster.local}}}}]
    corsPolicy:
      allowOrigins: [{{exact: "{APP}"}}]
      allowMethods: [GET]
      unmatchedPreflights: IGNORE
  - name: api
    route: [{{destination: {{host: api.default.svc.cluster.local}}}}]
    corsPolicy:
      allowOrigins:
      - exact: "{APP}"
      - regex: 'https://[a-z]+\.trusted\.example'
      allowMethods: [GET, POST]
      allowHeaders: [x-token, content-type]
      exposeHeaders: [x-backend]
      maxAge: 10m
      allowCredentials: true
"#
    )
}

fn preflight(path: &str, origin: &str) -> Req {
    Req::new(Method::OPTIONS, HOST, path)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-token")
}

fn absent(resp: &Resp, names: &[&str]) -> anyhow::Result<()> {
    for name in names {
        anyhow::ensure!(
            resp.header(name).is_none(),
            "{name} should be absent: {resp:?}"
        );
    }
    Ok(())
}

async fn preflights_are_answered_by_the_sidecar(protocol: XdsProtocol) -> anyhow::Result<()> {
    let backend = Backend::start("api-v1");
    let mesh = Plain::start(&[("api.yaml", &config(backend.port()))], protocol)?;
    let client = HttpClient::new();
    let addr = mesh.proxy.outbound_addr();

    // A cross-origin GET from an allowed origin reaches the backend and comes back marked.
    let get = Req::get(HOST, "/items").header("origin", APP);
    eventually(CONVERGE, || async {
        let resp = client.request(addr, &get).await?;
        anyhow::ensure!(
            resp.status == 200
                && resp.body == "api-v1"
                && resp.header("access-control-allow-origin") == Some(APP),
            "{resp:?}"
        );
        Ok(())
    })
    .await?;
    let resp = client.request(addr, &get).await?;
    anyhow::ensure!(
        resp.header("access-control-allow-credentials") == Some("true")
            && resp.header("access-control-expose-headers") == Some("x-backend"),
        "{resp:?}"
    );
    // Preflight headers belong to preflights.
    absent(
        &resp,
        &["access-control-allow-methods", "access-control-max-age"],
    )?;
    // An origin matched by the regex is allowed too.
    let trusted = "https://admin.trusted.example";
    let resp = client
        .request(addr, &Req::get(HOST, "/items").header("origin", trusted))
        .await?;
    anyhow::ensure!(
        resp.header("access-control-allow-origin") == Some(trusted),
        "{resp:?}"
    );

    // A preflight from an allowed origin is answered by the sidecar: the backend never sees it.
    let seen = backend.requests();
    let resp = client.request(addr, &preflight("/items", APP)).await?;
    anyhow::ensure!(resp.status == 200, "{resp:?}");
    let expect = [
        ("access-control-allow-origin", APP),
        ("access-control-allow-methods", "GET,POST"),
        ("access-control-allow-headers", "x-token,content-type"),
        ("access-control-max-age", "600"),
        ("access-control-allow-credentials", "true"),
        // Envoy's answer passes back through the filter's own response path.
        ("access-control-expose-headers", "x-backend"),
    ];
    for (name, value) in expect {
        anyhow::ensure!(resp.header(name) == Some(value), "{name}: {resp:?}");
    }
    absent(&resp, &["x-backend", "vary"])?;
    anyhow::ensure!(resp.body.is_empty(), "{resp:?}");
    anyhow::ensure!(backend.requests() == seen, "the backend saw the preflight");

    // Another origin: its GET goes through unmarked, and its preflight is forwarded (FORWARD,
    // Istio's default), answered by the backend without allowing anything.
    let resp = client
        .request(addr, &Req::get(HOST, "/items").header("origin", EVIL))
        .await?;
    anyhow::ensure!(resp.status == 200 && resp.body == "api-v1", "{resp:?}");
    absent(
        &resp,
        &[
            "access-control-allow-origin",
            "access-control-allow-credentials",
        ],
    )?;
    let seen = backend.requests();
    let resp = client.request(addr, &preflight("/items", EVIL)).await?;
    anyhow::ensure!(
        resp.status == 200 && resp.header("x-backend") == Some("api-v1"),
        "{resp:?}"
    );
    absent(
        &resp,
        &[
            "access-control-allow-origin",
            "access-control-allow-methods",
        ],
    )?;
    anyhow::ensure!(
        backend.requests() == seen + 1,
        "the preflight of an origin not allowed should reach the backend"
    );

    // With IGNORE, the sidecar answers it instead, allowing nothing.
    let seen = backend.requests();
    let resp = client.request(addr, &preflight("/strict", EVIL)).await?;
    anyhow::ensure!(resp.status == 200, "{resp:?}");
    absent(&resp, &["x-backend", "access-control-allow-origin"])?;
    anyhow::ensure!(
        resp.header("access-control-allow-methods") == Some("GET"),
        "{resp:?}"
    );
    anyhow::ensure!(
        backend.requests() == seen,
        "the backend saw an IGNOREd preflight"
    );
    assert_no_nacks(&mesh.straitd).await
}

both_protocols!(
    cors_preflights_and_cross_origin_requests,
    super::preflights_are_answered_by_the_sidecar
);
