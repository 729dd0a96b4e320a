//! straitd exports its spans over OTLP/gRPC: a real collector endpoint on 127.0.0.1 receives
//! them.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_otlp_collector() {
    let (collector, collector_addr) = strait_tests::otlp::Collector::start().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(
        config.join("svc.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec:\n  hosts: [a.example.com]\n  ports: [{number: 80, name: http}]\n  resolution: DNS\n",
    )
    .unwrap();
    let mut straitd = Command::new(env!("CARGO_BIN_EXE_straitd"))
        .arg("--config-dir")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--xds-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--xds-tls-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--otlp-endpoint", &format!("http://{collector_addr}")])
        // Export promptly instead of the batch processor's default 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    let found = loop {
        let spans: Vec<(String, String)> = collector
            .spans()
            .into_iter()
            .map(|(service, span)| (service, span.name))
            .collect();
        if spans.iter().any(|(_, name)| name == "config.apply") {
            break spans;
        }
        if Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    straitd.kill().unwrap();
    straitd.wait().unwrap();
    assert!(
        found
            .iter()
            .any(|(service, name)| name == "config.apply" && service.contains("straitd")),
        "the initial config load should arrive as a span from service straitd: {found:?}"
    );
}
