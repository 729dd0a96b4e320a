//! Self-tests of the harness pieces that need no straitd: backends, client, polling, config.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strait_tests::backend::{BACKEND_HEADER, Bookinfo};
use strait_tests::client::{self, Req};
use strait_tests::config::{BookinfoPorts, ConfigDir, bookinfo_registry};
use strait_tests::ports::free_port;
use strait_tests::{Backend, eventually, eventually_blocking};

#[tokio::test]
async fn backend_answers_with_its_name_and_counts_requests() {
    let b = Backend::start("alpha");
    assert!(b.addr().ip().is_loopback());
    assert_eq!(b.requests(), 0);
    let r = client::request(b.addr(), Req::get("alpha.test", "/"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "alpha");
    assert_eq!(r.header(BACKEND_HEADER), Some("alpha"));
    client::request(b.addr(), Req::get("", "/x")).await.unwrap();
    assert_eq!(b.requests(), 2);
    b.reset_count();
    assert_eq!(b.requests(), 0);
}

#[tokio::test]
async fn backend_echo_shows_the_request_as_received() {
    let b = Backend::start("echo");
    let r = client::request(
        b.addr(),
        Req::post("svc.example", "/a/b?c=d&e=f", "payload")
            .echo()
            .header("x-custom", "one")
            .header("x-custom", "two"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json().unwrap();
    assert_eq!(j["backend"], "echo");
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/a/b?c=d&e=f");
    assert_eq!(j["headers"]["host"], "svc.example");
    assert_eq!(j["headers"]["x-custom"], "one, two");
    assert_eq!(j["headers"]["x-echo"], "1");
    assert_eq!(j["body"], "payload");
}

#[tokio::test]
async fn backend_fails_the_next_n_then_recovers() {
    let b = Backend::start("flaky");
    b.fail_next(2, 503);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = client::request(b.addr(), Req::get("", "/")).await.unwrap();
        assert_eq!(r.header(BACKEND_HEADER), Some("flaky"));
        statuses.push(r.status);
    }
    assert_eq!(statuses, [503, 503, 200, 200]);
    assert_eq!(b.requests(), 4);
}

#[tokio::test]
async fn backend_status_override_applies_until_cleared_and_fail_next_wins() {
    let b = Backend::start("broken");
    b.set_status(Some(500));
    b.fail_next(1, 429);
    let statuses = [
        client::request(b.addr(), Req::get("", "/"))
            .await
            .unwrap()
            .status,
        client::request(b.addr(), Req::get("", "/"))
            .await
            .unwrap()
            .status,
    ];
    assert_eq!(statuses, [429, 500]);
    b.set_status(None);
    assert_eq!(
        client::request(b.addr(), Req::get("", "/"))
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn backend_delay_holds_the_answer() {
    let b = Backend::start("slow");
    b.set_delay(Some(Duration::from_millis(300)));
    let r = client::request(b.addr(), Req::get("", "/")).await.unwrap();
    assert!(r.elapsed >= Duration::from_millis(300), "{:?}", r.elapsed);
    // A client timeout shorter than the delay is an error, and the request still counted.
    let err = client::request(
        b.addr(),
        Req::get("", "/").timeout(Duration::from_millis(100)),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("no response within"), "{err:#}");
    assert_eq!(b.requests(), 2);
    b.set_delay(None);
    let r = client::request(b.addr(), Req::get("", "/")).await.unwrap();
    assert!(r.elapsed < Duration::from_millis(300), "{:?}", r.elapsed);
}

#[tokio::test]
async fn backend_controls_work_while_requests_are_in_flight() {
    let b = Backend::start("busy");
    b.set_delay(Some(Duration::from_millis(500)));
    let addr = b.addr();
    let slow = tokio::spawn(async move { client::request(addr, Req::get("", "/")).await });
    // The backend thread must keep serving while this one waits for the first answer.
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.set_delay(None);
    let fast = client::request(addr, Req::get("", "/")).await.unwrap();
    assert!(
        fast.elapsed < Duration::from_millis(300),
        "{:?}",
        fast.elapsed
    );
    assert_eq!(slow.await.unwrap().unwrap().status, 200);
}

#[tokio::test]
async fn send_many_tallies_bodies_and_labels_failures() {
    let b = Backend::start("counted");
    b.fail_next(3, 503);
    let tally = client::send_many(10, b.addr(), &Req::get("", "/")).await;
    let want: BTreeMap<String, usize> =
        [("counted".to_string(), 7), ("503 counted".to_string(), 3)].into();
    assert_eq!(tally, want);
    assert_eq!(b.requests(), 10);
}

#[tokio::test]
async fn a_dropped_backend_stops_listening() {
    let b = Backend::start("gone");
    let addr = b.addr();
    client::request(addr, Req::get("", "/")).await.unwrap();
    drop(b);
    let err = client::request(addr, Req::get("", "/")).await.unwrap_err();
    assert!(
        format!("{err:#}").to_lowercase().contains("connect"),
        "{err:#}"
    );
    // The address can be served again, e.g. by a backend that comes back.
    let again = Backend::start_at("back", addr).unwrap();
    let r = client::request(addr, Req::get("", "/")).await.unwrap();
    assert_eq!(r.body, "back");
    drop(again);
}

#[test]
fn backends_refuse_non_loopback_addresses() {
    let err = Backend::start_at("x", "0.0.0.0:0".parse().unwrap()).unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
}

#[test]
fn free_ports_are_bindable_and_never_repeat() {
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ports.len());
    std::net::TcpListener::bind(("127.0.0.1", ports[0])).unwrap();
}

#[tokio::test]
async fn eventually_retries_until_ok() {
    let start = Instant::now();
    let mut calls = 0;
    let v = eventually(Duration::from_secs(5), || {
        calls += 1;
        let n = calls;
        async move {
            anyhow::ensure!(n >= 3, "only {n} calls");
            Ok(n)
        }
    })
    .await
    .unwrap();
    assert_eq!(v, 3);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn eventually_gives_up_with_the_last_error() {
    let start = Instant::now();
    let err = eventually(Duration::from_millis(300), || async {
        Err::<(), _>(anyhow::anyhow!("never converges"))
    })
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("never converges") && msg.contains("still failing"),
        "{msg}"
    );
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn eventually_bounds_an_attempt_that_hangs() {
    let start = Instant::now();
    let err = eventually(Duration::from_millis(300), || async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    })
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("timed out"), "{err:#}");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn eventually_blocking_retries_and_gives_up() {
    let mut n = 0;
    assert_eq!(
        eventually_blocking(Duration::from_secs(5), || {
            n += 1;
            anyhow::ensure!(n == 2, "not yet");
            Ok(n)
        })
        .unwrap(),
        2
    );
    let err = eventually_blocking(Duration::from_millis(200), || -> anyhow::Result<()> {
        anyhow::bail!("stuck")
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("stuck"));
}

#[test]
fn config_dir_writes_replaces_and_removes() {
    let dir = ConfigDir::new().unwrap();
    let path = dir.write("a.yaml", "one").unwrap();
    assert_eq!(path.parent(), Some(dir.path()));
    assert_eq!(dir.read("a.yaml").unwrap(), "one");
    dir.replace("a.yaml", "two").unwrap();
    assert_eq!(dir.read("a.yaml").unwrap(), "two");
    dir.replace("b.yaml", "new").unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // Staging never leaves anything behind in the watched directory.
    assert_eq!(names, ["a.yaml", "b.yaml"]);
    dir.remove("a.yaml").unwrap();
    assert!(dir.read("a.yaml").is_err());
    assert!(dir.write("../escape.yaml", "x").is_err());
}

fn yaml_documents(text: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde_json::Value::deserialize(d).expect("valid YAML"))
        .collect()
}

#[test]
fn bookinfo_registry_describes_every_service_and_version() {
    let ports = BookinfoPorts {
        productpage: 41001,
        details: 41002,
        ratings: 41003,
        reviews_v1: 41004,
        reviews_v2: 41005,
        reviews_v3: 41006,
    };
    let docs = yaml_documents(&bookinfo_registry(&ports));
    let entries: BTreeMap<String, &serde_json::Value> = docs
        .iter()
        .map(|d| {
            assert_eq!(d["apiVersion"], "networking.istio.io/v1");
            assert_eq!(d["metadata"]["namespace"], "default");
            (
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap(),
                    d["metadata"]["name"].as_str().unwrap()
                ),
                d,
            )
        })
        .collect();
    let names: Vec<&str> = entries.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "ServiceEntry/details",
            "ServiceEntry/productpage",
            "ServiceEntry/ratings",
            "ServiceEntry/reviews",
            "WorkloadEntry/details-v1",
            "WorkloadEntry/productpage-v1",
            "WorkloadEntry/ratings-v1",
            "WorkloadEntry/reviews-v1",
            "WorkloadEntry/reviews-v2",
            "WorkloadEntry/reviews-v3",
        ]
    );
    let se = entries["ServiceEntry/reviews"];
    assert_eq!(se["spec"]["hosts"][0], "reviews.default.svc.cluster.local");
    assert_eq!(se["spec"]["ports"][0]["number"], 9080);
    assert_eq!(se["spec"]["ports"][0]["protocol"], "HTTP");
    assert_eq!(se["spec"]["resolution"], "STATIC");
    assert_eq!(se["spec"]["location"], "MESH_INTERNAL");
    assert_eq!(se["spec"]["workloadSelector"]["labels"]["app"], "reviews");
    let we = entries["WorkloadEntry/reviews-v2"];
    assert_eq!(we["spec"]["address"], "127.0.0.1");
    assert_eq!(we["spec"]["ports"]["http"], 41005);
    assert_eq!(we["spec"]["labels"]["app"], "reviews");
    assert_eq!(we["spec"]["labels"]["version"], "v2");
}

#[tokio::test]
async fn bookinfo_backends_are_named_like_their_workload_entries() {
    let bookinfo = Bookinfo::start();
    let yaml = bookinfo.registry_yaml();
    for b in bookinfo.all() {
        let r = client::request(b.addr(), Req::get("", "/")).await.unwrap();
        assert_eq!(r.body, b.name());
        assert!(
            yaml.contains(&format!("name: {},", b.name())),
            "{} missing",
            b.name()
        );
        assert!(
            yaml.contains(&format!("http: {}", b.port())),
            "port of {} missing",
            b.name()
        );
    }
}
