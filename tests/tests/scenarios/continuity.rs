//! Continuity under steady load: no request through the sidecar fails while straitd is killed
//! (SIGKILL) and restarted on the same ports and data dir, nor while a VirtualService changes
//! ten times a second through straitd's admin API; after the changes the last route is in
//! force. The load is real: pooled keep-alive clients and one opening a connection per
//! request, to the bookinfo backends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use strait_tests::client::{HttpClient, Req};
use strait_tests::{XdsProtocol, data_plane, eventually};

use crate::both_protocols;
use crate::common::{CONVERGE, Mesh, reviews};

const NODE_ID: &str = "productpage-v1.default";
/// Keep-alive clients, beside the one that opens a connection per request.
const POOLED_CLIENTS: usize = 3;
/// Between two requests of one client: steady load, not a flood of the 2-core machine.
const PAUSE: Duration = Duration::from_millis(5);
const CHANGES_PER_SECOND: u32 = 10;
const CHANGES: u32 = 40;

fn destination_rule() -> &'static str {
    "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"
}

/// reviews split between subsets by weight.
fn weighted(weights: &[(&str, u32)]) -> String {
    let routes: String = weights
        .iter()
        .map(|(s, w)| {
            format!("    - destination: {{host: reviews, subset: {s}}}\n      weight: {w}\n")
        })
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - route:
{routes}"
    )
}

/// reviews: `end-user: jason` to `jason`'s subset, everyone else to `others`.
fn header_route(jason: &str, others: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: {jason}}}}}]
  - route: [{{destination: {{host: reviews, subset: {others}}}}}]
"
    )
}

fn jason() -> Req {
    reviews().header("end-user", "jason")
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    answers: BTreeMap<String, usize>,
    /// Every request that did not come back 200 from a reviews backend, as it failed.
    failures: Vec<String>,
}

impl Tally {
    fn total(&self) -> usize {
        self.answers.values().sum::<usize>() + self.failures.len()
    }

    fn merge(&mut self, other: Tally) {
        for (k, n) in other.answers {
            *self.answers.entry(k).or_default() += n;
        }
        self.failures.extend(other.failures);
    }

    fn ensure_no_failure(&self, during: &str, at_least: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.failures.is_empty(),
            "{} of {} requests failed {during}, e.g. {:?}",
            self.failures.len(),
            self.total(),
            &self.failures[..self.failures.len().min(3)]
        );
        anyhow::ensure!(
            self.total() >= at_least,
            "only {} requests {during} (want at least {at_least}): {:?}",
            self.total(),
            self.answers
        );
        Ok(())
    }
}

/// Clients sending requests back to back (with a short pause) until stopped; each alternates
/// between `reqs`.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    fn start(addr: SocketAddr, reqs: &[Req]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..POOLED_CLIENTS)
            .map(|_| HttpClient::new())
            .chain([HttpClient::without_pooling()]);
        let tasks = clients
            .map(|client| {
                let stop = stop.clone();
                let reqs = reqs.to_vec();
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let req = &reqs[i % reqs.len()];
                        i += 1;
                        match client.request(addr, req).await {
                            Ok(r) if r.status == 200 && r.body.starts_with("reviews-") => {
                                *tally.answers.entry(r.body).or_default() += 1;
                            }
                            Ok(r) => tally.failures.push(r.tally_key()),
                            Err(e) => tally.failures.push(format!("{e:#}")),
                        }
                        tokio::time::sleep(PAUSE).await;
                    }
                    tally
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn finish(self) -> anyhow::Result<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for task in self.tasks {
            tally.merge(task.await?);
        }
        Ok(tally)
    }
}

/// Ten requests of each kind, all answered by the named backends.
async fn answered_by(mesh: &Mesh, want: &[(&Req, &str)]) -> anyhow::Result<()> {
    for (req, backend) in want {
        let tally = mesh.tally(10, req).await;
        anyhow::ensure!(
            tally.get(*backend) == Some(&10),
            "{:?} -> {tally:?}, want all {backend}",
            req.headers
        );
    }
    Ok(())
}

/// The proxy is connected to straitd and has ACKed what it was sent.
async fn connected(mesh: &Mesh) -> anyhow::Result<()> {
    eventually(Duration::from_secs(20), || async {
        let status = tokio::task::block_in_place(|| mesh.straitd.proxy_status(NODE_ID))?;
        anyhow::ensure!(status.is_some(), "{NODE_ID} has not reconnected");
        mesh.assert_no_nacks().await
    })
    .await
}

async fn straitd_killed_and_restarted(protocol: XdsProtocol) -> anyhow::Result<()> {
    let mut mesh = Mesh::start(
        &[
            ("reviews-dr.yaml", destination_rule()),
            ("reviews-vs.yaml", &weighted(&[("v1", 50), ("v2", 50)])),
        ],
        protocol,
    )?;
    eventually(CONVERGE, || async {
        let tally = mesh.tally(20, &reviews()).await;
        anyhow::ensure!(
            tally.keys().all(|k| k == "reviews-v1" || k == "reviews-v2"),
            "{tally:?}"
        );
        Ok(())
    })
    .await?;
    let load = Load::start(mesh.proxy.outbound_addr(), &[reviews()]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..2 {
        mesh.straitd.kill();
        // The proxy serves on without its control plane.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::block_in_place(|| mesh.straitd.restart())?;
        connected(&mesh).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The restarted straitd is in charge: a change reaches the proxy.
    mesh.config
        .replace("reviews-vs.yaml", &weighted(&[("v3", 100)]))?;
    eventually(CONVERGE, || async {
        answered_by(&mesh, &[(&reviews(), "reviews-v3")]).await
    })
    .await?;
    let tally = load.finish().await?;
    // 4 clients for some 6 s, at most a few ms a request even on a loaded machine.
    tally.ensure_no_failure("while straitd was killed and restarted twice", 400)?;
    mesh.assert_no_nacks().await
}
both_protocols!(
    straitd_killed_and_restarted_fails_no_request,
    super::straitd_killed_and_restarted
);

async fn routes_change_ten_times_a_second(protocol: XdsProtocol) -> anyhow::Result<()> {
    let mesh = Mesh::start(&[("reviews-dr.yaml", destination_rule())], protocol)?;
    let apply = |yaml: String| {
        let (status, body) =
            tokio::task::block_in_place(|| mesh.straitd.admin_post("/apply", &yaml))?;
        anyhow::ensure!(status == 200, "/apply said {status}: {body}");
        anyhow::Ok(())
    };
    apply(weighted(&[("v1", 100)]))?;
    eventually(CONVERGE, || async {
        answered_by(&mesh, &[(&reviews(), "reviews-v1")]).await
    })
    .await?;

    let load = Load::start(mesh.proxy.outbound_addr(), &[reviews(), jason()]);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / CHANGES_PER_SECOND);
    let pushes_before = tokio::task::block_in_place(|| pushes(&mesh))?;
    for i in 0..CHANGES {
        tick.tick().await;
        // Weights one time, a header route the next, always to subsets that exist.
        let yaml = if i % 2 == 0 {
            let w = (i * 5) % 100;
            weighted(&[("v1", w), ("v2", 100 - w)])
        } else {
            header_route(["v1", "v2"][(i as usize / 2) % 2], "v1")
        };
        apply(yaml)?;
    }
    // The last change: jason to v3, everyone else to v2.
    apply(header_route("v3", "v2"))?;
    eventually(CONVERGE, || async {
        answered_by(
            &mesh,
            &[(&jason(), "reviews-v3"), (&reviews(), "reviews-v2")],
        )
        .await
    })
    .await?;
    let tally = load.finish().await?;
    tally.ensure_no_failure("while the route changed ten times a second", 400)?;
    let pushed = tokio::task::block_in_place(|| pushes(&mesh))? - pushes_before;
    // straitd debounces (a push at least every 500 ms under a burst): several, not forty.
    anyhow::ensure!(
        pushed >= 3.0,
        "only {pushed} pushes during {CHANGES} changes"
    );
    mesh.assert_no_nacks().await?;
    if data_plane().name() == "envoy" {
        final_route_in_envoy(&mesh.proxy.config_dump()?)?;
    }
    Ok(())
}
both_protocols!(
    routes_changing_ten_times_a_second_fail_no_request,
    super::routes_change_ten_times_a_second
);

/// Snapshots straitd has pushed so far (`strait_push_seconds_count`).
fn pushes(mesh: &Mesh) -> anyhow::Result<f64> {
    let (code, body) = mesh.straitd.admin_get("/metrics")?;
    anyhow::ensure!(code == 200, "/metrics said {code}");
    body.lines()
        .find_map(|l| {
            l.strip_prefix("strait_push_seconds_count ")
                .and_then(|v| v.trim().parse().ok())
        })
        .ok_or_else(|| anyhow::anyhow!("no strait_push_seconds_count in /metrics"))
}

/// Envoy's RDS for reviews holds exactly the last rule: jason's match to v3, then v2.
fn final_route_in_envoy(dump: &serde_json::Value) -> anyhow::Result<()> {
    let routes: Vec<&serde_json::Value> = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("RoutesConfigDump"))
        })
        .flat_map(|rd| rd["dynamic_route_configs"].as_array().into_iter().flatten())
        .flat_map(|rc| {
            rc["route_config"]["virtual_hosts"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter(|vh| {
            vh["domains"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d == "reviews:9080"))
        })
        .flat_map(|vh| vh["routes"].as_array().into_iter().flatten())
        .collect();
    let clusters: Vec<&str> = routes
        .iter()
        .map(|r| r["route"]["cluster"].as_str().unwrap_or("?"))
        .collect();
    anyhow::ensure!(
        clusters
            == [
                "outbound|9080|v3|reviews.default.svc.cluster.local",
                "outbound|9080|v2|reviews.default.svc.cluster.local"
            ],
        "Envoy's routes for reviews: {clusters:?}"
    );
    anyhow::ensure!(
        routes[0]["match"]["headers"][0]["string_match"]["exact"] == "jason",
        "the first route does not match end-user jason: {}",
        routes[0]
    );
    Ok(())
}
