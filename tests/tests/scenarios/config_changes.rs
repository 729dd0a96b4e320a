//! Configuration changing under live traffic: hot reload, `straitctl apply`, rejected input,
//! a NACK, and debounced pushes.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use strait_tests::client::{HttpClient, Req};
use strait_tests::{ProxySpec, XdsProtocol, bins, data_plane, eventually};

use crate::both_protocols;
use crate::common::{CONVERGE, Mesh, istio_sample, reviews};

fn reviews_rules(subsets: &[&str], weights: &[(&str, u32)]) -> String {
    let subsets: String = subsets
        .iter()
        .map(|s| format!("  - {{name: {s}, labels: {{version: {s}}}}}\n"))
        .collect();
    let routes: String = weights
        .iter()
        .map(|(s, w)| {
            format!("    - destination: {{host: reviews, subset: {s}}}\n      weight: {w}\n")
        })
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
{subsets}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
{routes}"
    )
}

/// Sends requests back to back until stopped; returns (when, tally key) for each.
fn traffic(
    mesh: &Mesh,
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<Vec<(Instant, String)>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = mesh.proxy.outbound_addr();
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let client = HttpClient::new();
        let mut seen = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            let key = match client.request(addr, &reviews()).await {
                Ok(r) => r.tally_key(),
                Err(e) => format!("error: {e:#}"),
            };
            seen.push((Instant::now(), key));
        }
        seen
    });
    (stop, task)
}

/// Applies `yaml` to `file` under traffic; checks no request fails and that every answer is
/// `expect` from within 2 s of the change on.
async fn change_under_traffic(
    mesh: &Mesh,
    file: &str,
    yaml: &str,
    expect: &str,
) -> anyhow::Result<()> {
    let (stop, task) = traffic(mesh);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let changed = Instant::now();
    mesh.config.replace(file, yaml)?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = task.await?;
    let failed: Vec<&(Instant, String)> = seen
        .iter()
        .filter(|(_, k)| !k.starts_with("reviews-"))
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} requests failed during the change, e.g. {:?}",
        failed.len(),
        seen.len(),
        failed[0].1
    );
    let late: Vec<&(Instant, String)> = seen
        .iter()
        .filter(|(t, k)| *t > changed + Duration::from_secs(2) && k != expect)
        .collect();
    anyhow::ensure!(
        late.is_empty(),
        "{} answers were not {expect} 2s after the change, e.g. {}",
        late.len(),
        late[0].1
    );
    let after: usize = seen
        .iter()
        .filter(|(t, _)| *t > changed + Duration::from_secs(2))
        .count();
    anyhow::ensure!(
        after > 20,
        "too few requests after convergence to tell ({after})"
    );
    Ok(())
}

async fn hot_reload(protocol: XdsProtocol) -> anyhow::Result<()> {
    let mesh = Mesh::start(
        &[(
            "reviews.yaml",
            &reviews_rules(&["v1", "v2"], &[("v1", 100), ("v2", 0)]),
        )],
        protocol,
    )?;
    let tally = mesh.tally(20, &reviews()).await;
    anyhow::ensure!(tally.get("reviews-v1") == Some(&20), "{tally:?}");
    // Weights edited on disk.
    change_under_traffic(
        &mesh,
        "reviews.yaml",
        &reviews_rules(&["v1", "v2"], &[("v1", 0), ("v2", 100)]),
        "reviews-v2",
    )
    .await?;
    // A new subset and a route to it in one edit: the new cluster must be warm before the route.
    change_under_traffic(
        &mesh,
        "reviews.yaml",
        &reviews_rules(&["v1", "v2", "v3"], &[("v3", 100)]),
        "reviews-v3",
    )
    .await?;
    mesh.assert_no_nacks().await
}
both_protocols!(hot_reload_under_traffic_loses_no_request, super::hot_reload);

fn straitctl(args: &[&str]) -> anyhow::Result<(i32, String)> {
    let out = Command::new(bins::straitctl()).args(args).output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn straitctl_apply_get_delete_and_rejected_apply() -> anyhow::Result<()> {
    let rules = istio_sample("destination-rule-all.yaml");
    let mesh = Mesh::start(&[("dr.yaml", &rules)], XdsProtocol::Delta)?;
    let admin = mesh.straitd.admin_url();
    let file = mesh.config.scratch().join("jason.yaml");
    std::fs::write(
        &file,
        istio_sample("virtual-service-reviews-jason-v2-v3.yaml"),
    )?;
    let file = file.to_string_lossy().to_string();

    let (code, out) = straitctl(&["apply", "-f", &file, "--admin", &admin])?;
    anyhow::ensure!(
        code == 0 && out.contains("VirtualService default/reviews"),
        "apply: {code} {out}"
    );
    eventually(CONVERGE, || async {
        let tally = mesh.tally(20, &reviews().header("end-user", "jason")).await;
        anyhow::ensure!(tally.get("reviews-v2") == Some(&20), "{tally:?}");
        Ok(())
    })
    .await?;
    let (code, out) = straitctl(&["get", "virtualservices", "--admin", &admin])?;
    anyhow::ensure!(code == 0 && out.contains("reviews"), "get: {code} {out}");

    // A bad apply is refused with the field named, and the good config keeps serving.
    let bad = mesh.config.scratch().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n  hosts: [ratings]\n  http:\n  - route:\n    - destination: {host: ratings, subset: v9}\n",
    )?;
    let (code, out) = straitctl(&["apply", "-f", &bad.to_string_lossy(), "--admin", &admin])?;
    anyhow::ensure!(code != 0, "a bad apply must fail: {out}");
    anyhow::ensure!(
        out.contains("VirtualService default/ratings")
            && out.contains("spec.http[0].route[0].destination.subset"),
        "the error names the object and field: {out}"
    );
    let tally = mesh.tally(20, &reviews().header("end-user", "jason")).await;
    anyhow::ensure!(tally.get("reviews-v2") == Some(&20), "{tally:?}");

    let (code, out) = straitctl(&["delete", "-f", &file, "--admin", &admin])?;
    anyhow::ensure!(code == 0, "delete: {out}");
    eventually(CONVERGE, || async {
        let tally = mesh.tally(60, &reviews().header("end-user", "jason")).await;
        anyhow::ensure!(
            tally.len() == 3,
            "without the rule every version answers: {tally:?}"
        );
        Ok(())
    })
    .await?;
    mesh.assert_no_nacks().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_yaml_is_rejected_precisely_and_the_old_config_keeps_serving() -> anyhow::Result<()>
{
    let mesh = Mesh::start(
        &[(
            "reviews.yaml",
            &reviews_rules(&["v1", "v2"], &[("v1", 100)]),
        )],
        XdsProtocol::Sotw,
    )?;
    let status = || -> anyhow::Result<serde_json::Value> {
        let (code, body) = mesh.straitd.admin_get("/config/status")?;
        anyhow::ensure!(code == 200, "{code} {body}");
        Ok(serde_json::from_str(&body)?)
    };
    let generation = status()?["generation"].clone();

    mesh.config.write(
        "broken.yaml",
        "apiVersion: networking.istio.io/v1\nkind: [unclosed\n",
    )?;
    eventually(Duration::from_secs(3), || async {
        let error = status()?["last_error"].to_string();
        anyhow::ensure!(
            error.contains("broken.yaml")
                && error.contains("malformed YAML")
                && error.contains("line"),
            "{error}"
        );
        Ok(())
    })
    .await?;
    anyhow::ensure!(
        mesh.tally(20, &reviews()).await.get("reviews-v1") == Some(&20),
        "old config must keep serving"
    );

    mesh.config.remove("broken.yaml")?;
    let typo = reviews_rules(&["v1", "v2"], &[("v2", 100)]).replace("weight:", "weigth:");
    mesh.config.replace("reviews.yaml", &typo)?;
    eventually(Duration::from_secs(3), || async {
        let error = status()?["last_error"].to_string();
        anyhow::ensure!(
            error.contains("reviews.yaml (document 2)")
                && error.contains("VirtualService")
                && error.contains("spec.http[0].route[0].weigth")
                && error.contains("unknown field"),
            "{error}"
        );
        Ok(())
    })
    .await?;
    anyhow::ensure!(
        mesh.tally(20, &reviews()).await.get("reviews-v1") == Some(&20),
        "old config must keep serving"
    );
    anyhow::ensure!(
        status()?["generation"] == generation,
        "nothing was accepted"
    );
    let (code, _) = mesh.straitd.admin_get("/readyz")?;
    anyhow::ensure!(
        code == 200,
        "a rejected change does not make straitd unready"
    );

    mesh.config.replace(
        "reviews.yaml",
        &reviews_rules(&["v1", "v2"], &[("v2", 100)]),
    )?;
    eventually(CONVERGE, || async {
        anyhow::ensure!(
            status()?["last_error"].is_null(),
            "the error clears once fixed"
        );
        let tally = mesh.tally(20, &reviews()).await;
        anyhow::ensure!(tally.get("reviews-v2") == Some(&20), "{tally:?}");
        Ok(())
    })
    .await?;
    mesh.assert_no_nacks().await
}

/// A port already taken on the host is something no validator can see: Envoy NACKs the
/// gateway listener, proxy-status shows why, the version is not resent, and a later change
/// goes through once the port is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_is_recorded_shown_and_not_resent() -> anyhow::Result<()> {
    let mesh = Mesh::start(&[], XdsProtocol::Delta)?;
    let spec = ProxySpec::gateway(
        "ingress-1.istio-system",
        "istio-system",
        &[("istio", "ingressgateway")],
        &[80, 8080],
    );
    let gateway = data_plane().start(&mesh.straitd, &spec)?;
    let taken = std::net::TcpListener::bind(gateway.gateway_addr(80))?;
    mesh.config
        .write("gateway.yaml", &istio_sample("bookinfo-gateway.yaml"))?;

    let node = "ingress-1.istio-system";
    let lds = "type.googleapis.com/envoy.config.listener.v3.Listener";
    let nack = eventually(CONVERGE, || async {
        let status = mesh
            .straitd
            .proxy_status(node)?
            .ok_or_else(|| anyhow::anyhow!("{node} not connected"))?;
        let listeners = &status["types"][lds];
        anyhow::ensure!(!listeners["nack"].is_null(), "no NACK yet: {listeners}");
        Ok(listeners["nack"].clone())
    })
    .await?;
    let detail = nack["error_detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    anyhow::ensure!(
        detail.contains("cannot bind") || detail.contains("in use"),
        "Envoy's reason is kept: {detail}"
    );

    let (code, out) = straitctl(&["proxy-status", "--admin", &mesh.straitd.admin_url()])?;
    anyhow::ensure!(
        code == 0 && out.contains("NACK") && out.contains(&detail[..detail.len().min(30)]),
        "proxy-status: {out}"
    );
    let (_, metrics) = mesh.straitd.admin_get("/metrics")?;
    anyhow::ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("strait_xds_nacks_total") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Not resent in a loop, and the sidecar, which had nothing rejected, is untouched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = mesh.straitd.proxy_status(node)?.unwrap_or_default();
    let again = &status["types"][lds]["nack"];
    anyhow::ensure!(
        again["count"] == 1 && again["version"] == nack["version"],
        "resent? {again}"
    );
    anyhow::ensure!(mesh.tally(5, &reviews()).await.values().sum::<usize>() == 5);

    // Once the port is free, the next listener change is accepted and the gateway serves.
    drop(taken);
    let second_server = "  - port:\n      number: 8080\n      name: http-alt\n      protocol: HTTP\n    hosts:\n    - \"*\"\n---\n";
    let sample = istio_sample("bookinfo-gateway.yaml");
    let extended = sample
        .replacen("---\n", second_server, 1)
        .replace("exact: /login", "exact: /signin");
    anyhow::ensure!(extended.contains("http-alt"), "the sample changed shape");
    mesh.config.replace("gateway.yaml", &extended)?;
    let addr = gateway.gateway_addr(80);
    eventually(CONVERGE, || async {
        let status = mesh.straitd.proxy_status(node)?.unwrap_or_default();
        let listeners = &status["types"][lds];
        anyhow::ensure!(
            listeners["acked_version"] == listeners["sent_version"],
            "{listeners}"
        );
        let resp = HttpClient::new()
            .request(addr, &Req::get("bookinfo.example.com", "/signin"))
            .await?;
        anyhow::ensure!(
            resp.status == 200 && resp.body == "productpage-v1",
            "{resp:?}"
        );
        Ok(())
    })
    .await
}

fn metric(mesh: &Mesh, name: &str) -> anyhow::Result<f64> {
    let (code, body) = mesh.straitd.admin_get("/metrics")?;
    anyhow::ensure!(code == 200, "{code}");
    body.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .ok_or_else(|| anyhow::anyhow!("metric {name} missing from:\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_file_changes_gives_a_few_pushes() -> anyhow::Result<()> {
    let mesh = Mesh::start(&[], XdsProtocol::Delta)?;
    let port = mesh.bookinfo.details.port();
    let before = metric(&mesh, "strait_push_seconds_count")?;
    for i in 0..100 {
        mesh.config.write(
            &format!("burst-{i}.yaml"),
            &strait_tests::config::http_service(
                &format!("burst-{i}"),
                "default",
                8080,
                &[("v1", port)],
            ),
        )?;
    }
    eventually(CONVERGE, || async {
        let tally = mesh.tally(1, &Req::get("burst-99:8080", "/")).await;
        anyhow::ensure!(tally.get("details-v1") == Some(&1), "{tally:?}");
        Ok(())
    })
    .await?;
    let pushes = metric(&mesh, "strait_push_seconds_count")? - before;
    anyhow::ensure!(
        (1.0..=5.0).contains(&pushes),
        "100 file changes gave {pushes} pushes"
    );
    mesh.assert_no_nacks().await
}
