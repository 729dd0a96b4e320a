//! Retries, timeouts and outlier ejection, against backends told to fail or be slow.

use std::time::Duration;

use strait_tests::client::{HttpClient, Req};
use strait_tests::config::http_service;
use strait_tests::{Backend, XdsProtocol, eventually};

use crate::common::{CONVERGE, Plain, assert_no_nacks};

fn route(host: &str, extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  http:
  - route:
    - destination: {{host: {host}}}
{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_get_past_two_failures_only_when_configured() -> anyhow::Result<()> {
    let flaky = Backend::start("flaky-v1");
    let mesh = Plain::start(
        &[
            (
                "svc.yaml",
                &http_service("flaky", "default", 8080, &[("v1", flaky.port())]),
            ),
            ("vs.yaml", &route("flaky", "    retries: {attempts: 3}\n")),
        ],
        XdsProtocol::Delta,
    )?;
    let client = HttpClient::new();
    let req = Req::get("flaky:8080", "/");
    let addr = mesh.proxy.outbound_addr();

    flaky.reset_count();
    flaky.fail_next(2, 503);
    let resp = client.request(addr, &req).await?;
    anyhow::ensure!(
        resp.status == 200 && resp.body == "flaky-v1",
        "with attempts: 3 {resp:?}"
    );
    anyhow::ensure!(
        flaky.requests() == 3,
        "two failures and a success, got {} requests",
        flaky.requests()
    );

    // The same failure without a retry policy reaches the caller.
    mesh.config.replace("vs.yaml", &route("flaky", ""))?;
    eventually(CONVERGE, || async {
        flaky.reset_count();
        flaky.fail_next(2, 503);
        let resp = client.request(addr, &req).await?;
        flaky.fail_next(0, 503);
        anyhow::ensure!(
            resp.status == 503 && flaky.requests() == 1,
            "no retries expected: {resp:?}, {} requests",
            flaky.requests()
        );
        Ok(())
    })
    .await?;
    assert_no_nacks(&mesh.straitd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_moves_on_to_a_fast_endpoint_and_route_timeout_gives_504()
-> anyhow::Result<()> {
    let slow = Backend::start("mixed-slow");
    let fast = Backend::start("mixed-fast");
    slow.set_delay(Some(Duration::from_secs(3)));
    let lone = Backend::start("lone-slow");
    lone.set_delay(Some(Duration::from_secs(3)));
    let rr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mixed}
spec:
  host: mixed
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
";
    let mesh = Plain::start(
        &[
            (
                "mixed.yaml",
                &http_service(
                    "mixed",
                    "default",
                    8080,
                    &[("slow", slow.port()), ("fast", fast.port())],
                ),
            ),
            (
                "lone.yaml",
                &http_service("lone", "default", 8080, &[("v1", lone.port())]),
            ),
            ("dr.yaml", rr),
            (
                "vs-mixed.yaml",
                &route(
                    "mixed",
                    "    retries: {attempts: 2, perTryTimeout: 200ms, retryOn: 5xx}\n",
                ),
            ),
            ("vs-lone.yaml", &route("lone", "    timeout: 300ms\n")),
        ],
        XdsProtocol::Sotw,
    )?;
    let client = HttpClient::new();
    let addr = mesh.proxy.outbound_addr();
    for _ in 0..10 {
        let resp = client.request(addr, &Req::get("mixed:8080", "/")).await?;
        anyhow::ensure!(resp.status == 200 && resp.body == "mixed-fast", "{resp:?}");
        anyhow::ensure!(
            resp.elapsed < Duration::from_secs(2),
            "per-try timeout should cut the slow try: {resp:?}"
        );
    }
    anyhow::ensure!(
        slow.requests() > 0,
        "round robin must have tried the slow endpoint first at least once"
    );

    let resp = client
        .request(
            addr,
            &Req::get("lone:8080", "/").timeout(Duration::from_secs(10)),
        )
        .await?;
    anyhow::ensure!(resp.status == 504, "route timeout: {resp:?}");
    anyhow::ensure!(
        resp.elapsed >= Duration::from_millis(250) && resp.elapsed < Duration::from_secs(2),
        "the 300ms timeout should answer long before the 3s backend: {:?}",
        resp.elapsed
    );
    assert_no_nacks(&mesh.straitd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_the_failing_endpoint() -> anyhow::Result<()> {
    let good_a = Backend::start("pool-a");
    let good_b = Backend::start("pool-b");
    let bad = Backend::start("pool-bad");
    bad.set_status(Some(503));
    let dr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool}
spec:
  host: pool
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 60s
      maxEjectionPercent: 100
";
    let mesh = Plain::start(
        &[
            (
                "pool.yaml",
                &http_service(
                    "pool",
                    "default",
                    8080,
                    &[
                        ("a", good_a.port()),
                        ("b", good_b.port()),
                        ("bad", bad.port()),
                    ],
                ),
            ),
            ("dr.yaml", dr),
        ],
        XdsProtocol::Delta,
    )?;
    let client = HttpClient::new();
    let addr = mesh.proxy.outbound_addr();
    let req = Req::get("pool:8080", "/");
    // Until the bad endpoint is hit once it is not known to be bad.
    eventually(CONVERGE, || async {
        client.request(addr, &req).await?;
        anyhow::ensure!(
            bad.requests() >= 1,
            "the bad endpoint has not been tried yet"
        );
        Ok(())
    })
    .await?;
    let seen = bad.requests();
    let (mut a, mut b) = (good_a.requests(), good_b.requests());
    for i in 0..200 {
        let resp = client.request(addr, &req).await?;
        anyhow::ensure!(resp.status == 200, "request {i} after ejection: {resp:?}");
    }
    anyhow::ensure!(
        bad.requests() == seen,
        "an ejected endpoint got {} more requests",
        bad.requests() - seen
    );
    a = good_a.requests() - a;
    b = good_b.requests() - b;
    anyhow::ensure!(
        a + b == 200 && a > 50 && b > 50,
        "the healthy endpoints share the traffic: a={a} b={b}"
    );
    assert_no_nacks(&mesh.straitd).await
}
