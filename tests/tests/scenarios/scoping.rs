//! Scoping: a proxy gets only what it may reach. `exportTo` keeps a service, route or rule to
//! the namespaces it names, and a namespace's Sidecar imports only its egress hosts. Two
//! sidecars, in namespaces a and b, ask for the same hosts and get different answers; then the
//! Sidecar changes and b's proxy follows.

use strait_tests::client::{HttpClient, Req};
use strait_tests::{Backend, ConfigDir, Proxy, ProxySpec, Straitd, StraitdOptions, XdsProtocol};
use strait_tests::{data_plane, eventually};

use crate::both_protocols;
use crate::common::{CONVERGE, assert_no_nacks};
use crate::samples::envoy_dump;

fn service(namespace: &str, name: &str, port: u16, export_to: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{name}.{namespace}.svc.cluster.local]
  exportTo: {export_to}
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
"
    )
}

/// web's route sends `x-to: db` requests to db, which is private to namespace a.
const WEB_ROUTE: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: a}
spec:
  hosts: [web.a.svc.cluster.local]
  http:
  - match: [{headers: {x-to: {exact: db}}}]
    route: [{destination: {host: db.a.svc.cluster.local}}]
  - route: [{destination: {host: web.a.svc.cluster.local}}]
";

fn sidecar(hosts: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: b}}
spec:
  egress: [{{hosts: {hosts}}}]
"
    )
}

async fn status(
    client: &HttpClient,
    proxy: &dyn Proxy,
    host: &str,
    header: Option<(&str, &str)>,
) -> anyhow::Result<(u16, String)> {
    let mut req = Req::get(format!("{host}:80"), "/");
    if let Some((k, v)) = header {
        req = req.header(k, v);
    }
    let resp = client.request(proxy.outbound_addr(), &req).await?;
    Ok((resp.status, resp.body))
}

async fn a_proxy_sees_only_its_scope(protocol: XdsProtocol) -> anyhow::Result<()> {
    let (web, db, other, api) = (
        Backend::start("web"),
        Backend::start("db"),
        Backend::start("other"),
        Backend::start("api"),
    );
    let config = ConfigDir::new()?;
    let registry = [
        service("a", "web", web.port(), "['*']"),
        service("a", "db", db.port(), "['.']"),
        service("a", "other", other.port(), "[]"),
        service("b", "api", api.port(), "[]"),
    ]
    .concat();
    config.write("registry.yaml", &registry)?;
    config.write("web.yaml", WEB_ROUTE)?;
    config.write(
        "sidecar.yaml",
        &sidecar("['./*', 'a/web.a.svc.cluster.local']"),
    )?;
    let straitd = Straitd::start(StraitdOptions::new(config.path()))?;
    let in_a = data_plane().start(
        &straitd,
        &ProxySpec::sidecar("client-a.a", "a", &[("app", "client")]).with_xds_protocol(protocol),
    )?;
    let in_b = data_plane().start(
        &straitd,
        &ProxySpec::sidecar("client-b.b", "b", &[("app", "client")]).with_xds_protocol(protocol),
    )?;
    let client = HttpClient::new();
    let web_host = "web.a.svc.cluster.local";
    let other_host = "other.a.svc.cluster.local";

    eventually(CONVERGE, || async {
        // Namespace a sees all of a: web, db through web's route, other.
        let a_web = status(&client, &*in_a, web_host, None).await?;
        let a_db = status(&client, &*in_a, web_host, Some(("x-to", "db"))).await?;
        let a_other = status(&client, &*in_a, other_host, None).await?;
        anyhow::ensure!(
            a_web == (200, "web".into()) && a_db == (200, "db".into()) && a_other.0 == 200,
            "from a: web {a_web:?}, db {a_db:?}, other {a_other:?}"
        );
        // b imports its own namespace and web: web answers, the route's share to db (not
        // exported to b) is a 503, other (not imported) has no route at all, api is b's own.
        let b_web = status(&client, &*in_b, web_host, None).await?;
        let b_db = status(&client, &*in_b, web_host, Some(("x-to", "db"))).await?;
        let b_other = status(&client, &*in_b, other_host, None).await?;
        let b_api = status(&client, &*in_b, "api.b.svc.cluster.local", None).await?;
        anyhow::ensure!(
            b_web == (200, "web".into())
                && b_db.0 == 503
                && b_other.0 == 404
                && b_api == (200, "api".into()),
            "from b: web {b_web:?}, db {b_db:?}, other {b_other:?}, api {b_api:?}"
        );
        Ok(())
    })
    .await?;
    anyhow::ensure!(db.requests() == 1, "db was reached only from a");
    if data_plane().name() == "envoy" {
        let clusters = envoy_dump::cluster_names(&in_b.config_dump()?);
        anyhow::ensure!(
            clusters.contains(&"outbound|80||web.a.svc.cluster.local".to_string())
                && !clusters
                    .iter()
                    .any(|c| c.contains("db.a") || c.contains("other.a")),
            "b's Envoy holds web and not db or other: {clusters:?}"
        );
        let clusters = envoy_dump::cluster_names(&in_a.config_dump()?);
        anyhow::ensure!(
            clusters.iter().any(|c| c.contains("db.a")),
            "a's Envoy holds db: {clusters:?}"
        );
    }

    // The Sidecar imports all of a now: other appears for b; db stays private to a.
    config.write("sidecar.yaml", &sidecar("['./*', 'a/*']"))?;
    eventually(CONVERGE, || async {
        let b_other = status(&client, &*in_b, other_host, None).await?;
        let b_db = status(&client, &*in_b, web_host, Some(("x-to", "db"))).await?;
        anyhow::ensure!(
            b_other == (200, "other".into()) && b_db.0 == 503,
            "from b: other {b_other:?}, db {b_db:?}"
        );
        Ok(())
    })
    .await?;
    anyhow::ensure!(db.requests() == 1, "db was never reached from b");
    assert_no_nacks(&straitd).await
}

both_protocols!(
    export_to_and_sidecar_egress_scope_what_a_proxy_gets,
    super::a_proxy_sees_only_its_scope
);
