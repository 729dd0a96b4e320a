//! Telemetry access logging: a mesh-wide Telemetry turns on the sidecars' access logs (Envoy's
//! default format on stdout, the same line from both data planes); a namespace's Telemetry
//! turns them off again for its workloads; a workload's Telemetry that logs only its server
//! side leaves the client side unlogged.

use std::time::Duration;

use strait_tests::client::{HttpClient, Req};
use strait_tests::{Backend, Proxy, XdsProtocol, eventually};

use crate::common::{CONVERGE, Plain, assert_no_nacks};

const HOST: &str = "api.default.svc.cluster.local:8080";

fn service(port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"
    )
}

fn telemetry(name: &str, namespace: &str, rest: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
{rest}"
    )
}

/// Whether the proxy's config in force logs its outbound requests: Envoy's active listeners
/// (a draining one keeps its old config for a while), strait-proxy's connection managers.
fn logging(proxy: &dyn Proxy) -> anyhow::Result<bool> {
    let dump = proxy.config_dump()?;
    let active: Vec<String> = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["dynamic_listeners"].as_array().into_iter().flatten())
        .map(|l| l["active_state"]["listener"].to_string())
        .collect();
    Ok(active
        .iter()
        .any(|l| l.contains("envoy.access_loggers.file"))
        || dump.to_string().contains("\"access_log\":true"))
}

/// The proxy's access log line for `path`, if it wrote one.
fn line_for(proxy: &dyn Proxy, path: &str) -> Option<String> {
    let needle = format!("\"GET {path} HTTP/1.1\"");
    proxy
        .log()
        .lines()
        .find(|l| l.contains(&needle))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_turns_access_logs_on_and_off() -> anyhow::Result<()> {
    let backend = Backend::start("api-v1");
    let mesh = Plain::start(
        &[
            ("api.yaml", &service(backend.port())),
            (
                "mesh-logs.yaml",
                &telemetry(
                    "mesh-default",
                    "istio-system",
                    "  accessLogging: [{providers: [{name: envoy}]}]\n",
                ),
            ),
        ],
        XdsProtocol::Delta,
    )?;
    let client = HttpClient::without_pooling();
    let addr = mesh.proxy.outbound_addr();
    eventually(CONVERGE, || async {
        anyhow::ensure!(logging(&*mesh.proxy)?, "access logging not in force yet");
        Ok(())
    })
    .await?;
    let resp = client
        .request(
            addr,
            &Req::get(HOST, "/logged?x=1").header("user-agent", "strait-test/1"),
        )
        .await?;
    anyhow::ensure!(resp.status == 200, "{resp:?}");
    let line = eventually(Duration::from_secs(5), || async {
        line_for(&*mesh.proxy, "/logged?x=1").ok_or_else(|| anyhow::anyhow!("no line yet"))
    })
    .await?;
    // [start] "GET /logged?x=1 HTTP/1.1" 200 - 0 <bytes> <ms> <upstream ms> "-" "strait-test/1"
    //   "<request id>" "api...:8080" "127.0.0.1:<port>"
    let (start, rest) = line
        .split_once("] ")
        .ok_or_else(|| anyhow::anyhow!("{line}"))?;
    anyhow::ensure!(
        start.starts_with('[') && start.ends_with('Z') && start.contains('T'),
        "the start time in ISO 8601: {line}"
    );
    let fields: Vec<&str> = rest.split(' ').collect();
    anyhow::ensure!(
        fields[..5] == ["\"GET", "/logged?x=1", "HTTP/1.1\"", "200", "-"]
            && fields[5] == "0"
            && fields[6] == resp.body.len().to_string(),
        "request, status, flags and bytes: {line}"
    );
    anyhow::ensure!(
        line.contains("\"strait-test/1\"")
            && line.contains(&format!("\"{HOST}\""))
            && line.ends_with(&format!("\"127.0.0.1:{}\"", backend.port())),
        "user agent, authority and upstream host: {line}"
    );

    // The namespace's own Telemetry turns logging off for its workloads.
    mesh.config.write(
        "quiet.yaml",
        &telemetry(
            "quiet",
            "default",
            "  accessLogging: [{providers: [{name: envoy}], disabled: true}]\n",
        ),
    )?;
    eventually(CONVERGE, || async {
        anyhow::ensure!(!logging(&*mesh.proxy)?, "access logging still in force");
        Ok(())
    })
    .await?;
    let resp = client.request(addr, &Req::get(HOST, "/unlogged")).await?;
    anyhow::ensure!(resp.status == 200, "{resp:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    anyhow::ensure!(
        line_for(&*mesh.proxy, "/unlogged").is_none(),
        "a request after logging was turned off was logged"
    );

    // A workload's Telemetry that logs its server side only: this sidecar's outbound requests
    // (the client side) stay unlogged; the namespace's no longer matters.
    mesh.config.replace(
        "quiet.yaml",
        &telemetry(
            "quiet",
            "default",
            "  selector: {matchLabels: {app: client}}\n  accessLogging: [{match: {mode: SERVER}}]\n",
        ),
    )?;
    mesh.config.remove("mesh-logs.yaml")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    anyhow::ensure!(!logging(&*mesh.proxy)?, "the client side is not logged");
    assert_no_nacks(&mesh.straitd).await
}
