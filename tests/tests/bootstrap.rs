//! `straitctl bootstrap` as users run it: its output must be accepted by the real Envoy and
//! read back by straitd's node parser; bad flags must fail clearly with exit code 2.

use std::path::Path;
use std::process::{Command, Output};

use strait_model::{ProxyMode, ProxyNode};
use strait_tests::bins;
use strait_tests::envoy::validate;

fn straitctl(args: &[&str]) -> Output {
    Command::new(bins::straitctl())
        .args(args)
        .output()
        .expect("running straitctl")
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("reading the bootstrap");
    serde_json::from_str(&text).expect("the bootstrap is JSON")
}

fn node_of(bootstrap: &serde_json::Value) -> ProxyNode {
    let node = &bootstrap["node"];
    ProxyNode::from_metadata(
        node["id"].as_str().expect("node.id is a string"),
        node["metadata"]
            .as_object()
            .expect("node.metadata is a map"),
    )
    .expect("straitd accepts the metadata straitctl writes")
}

#[test]
fn sidecar_bootstrap_is_valid_envoy_config_that_straitd_understands() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecar.json");
    let out = straitctl(&[
        "bootstrap",
        "--node-id",
        "reviews-v1-abc",
        "--namespace",
        "bookinfo",
        "--labels",
        "app=reviews,version=v1",
        "--service-account",
        "bookinfo-reviews",
        "--mode",
        "sidecar",
        "--xds",
        "127.0.0.1:15010",
        "--outbound-port",
        "15001",
        "--admin-port",
        "15000",
        "--listen-address",
        "127.0.0.1",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "with -o, nothing goes to stdout");
    validate(&file).unwrap();

    let b = read_json(&file);
    assert_eq!(
        b["node"]["cluster"], "reviews",
        "cluster defaults to the app label"
    );
    assert_eq!(
        b["dynamic_resources"]["ads_config"]["api_type"],
        "DELTA_GRPC"
    );
    assert_eq!(
        b["admin"]["address"]["socket_address"]["address"],
        "127.0.0.1"
    );
    assert_eq!(b["static_resources"]["clusters"][0]["type"], "STATIC");
    let n = node_of(&b);
    assert_eq!(n.id, "reviews-v1-abc");
    assert_eq!(n.namespace, "bookinfo");
    assert_eq!(n.labels["app"], "reviews");
    assert_eq!(n.labels["version"], "v1");
    assert_eq!(n.service_account.as_deref(), Some("bookinfo-reviews"));
    assert_eq!(n.mode, ProxyMode::Sidecar);
    assert_eq!(n.outbound_port, 15001);
}

#[test]
fn captured_sidecar_bootstrap_is_valid_and_says_redirect_with_the_pod_addresses() {
    let out = straitctl(&[
        "bootstrap",
        "--node-id",
        "reviews-v1-abc",
        "--xds",
        "10.77.0.1:15012",
        "--interception",
        "redirect",
        "--instance-ips",
        "10.77.1.2,fd77:0:0:1::2",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = node_of(&b);
    assert_eq!(
        n.interception,
        strait_model::node::Interception::Redirect {
            inbound_port: 15006
        }
    );
    assert_eq!(
        n.instance_ips,
        [
            "10.77.1.2".parse::<std::net::IpAddr>().unwrap(),
            "fd77:0:0:1::2".parse().unwrap()
        ]
    );
    assert_eq!(n.outbound_port, 15001);
}

#[test]
fn gateway_bootstrap_over_sotw_and_dns_is_valid_and_goes_to_stdout() {
    let out = straitctl(&[
        "bootstrap",
        "--node-id",
        "ingress-1",
        "--cluster",
        "istio-ingressgateway",
        "--namespace",
        "istio-system",
        "--labels",
        "istio=ingressgateway",
        "--mode",
        "gateway",
        "--xds",
        "localhost:15010",
        "--xds-protocol",
        "sotw",
        "--outbound-port",
        "15001",
        "--admin-port",
        "15000",
        "--gateway-ports",
        "80=18080,443=18443",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    // JSON is YAML: Envoy takes the printed text under either extension.
    std::fs::write(&file, &out.stdout).unwrap();
    validate(&file).unwrap();

    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["node"]["cluster"], "istio-ingressgateway");
    assert_eq!(b["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
    assert_eq!(b["static_resources"]["clusters"][0]["type"], "STRICT_DNS");
    let n = node_of(&b);
    assert_eq!(n.mode, ProxyMode::Gateway);
    assert_eq!(n.gateway_bind_port(80), 18080);
    assert_eq!(n.gateway_bind_port(443), 18443);
}

#[test]
fn validation_catches_a_broken_bootstrap() {
    // Proves `validate` is no rubber stamp: the same output with one unknown field fails.
    let out = straitctl(&["bootstrap", "--node-id", "x", "--xds", "127.0.0.1:15010"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    b["static_resources"]["clusters"][0]["no_such_field"] = serde_json::json!(1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.json");
    std::fs::write(&file, b.to_string()).unwrap();
    let err = validate(&file).unwrap_err();
    assert!(format!("{err:#}").contains("no_such_field"), "{err:#}");
}

#[test]
fn bad_flags_fail_with_exit_code_2_and_say_why() {
    let base = ["bootstrap", "--node-id", "x"];
    let cases: &[(&[&str], &str)] = &[
        (&["--xds", "127.0.0.1:15010", "--labels", "app"], "k=v"),
        (
            &["--xds", "127.0.0.1:15010", "--labels", "a=1,a=2"],
            "twice",
        ),
        (
            &["--xds", "127.0.0.1:15010", "--outbound-port", "70000"],
            "port",
        ),
        (&["--xds", "127.0.0.1:15010", "--admin-port", "0"], "port"),
        (
            &["--xds", "127.0.0.1:15010", "--gateway-ports", "80:8080"],
            "SERVER_PORT=BIND_PORT",
        ),
        (&["--xds", "127.0.0.1"], "HOST:PORT"),
        (&["--xds", "::1:15010"], "brackets"),
        (
            &["--xds", "127.0.0.1:15010", "--mode", "ambient"],
            "sidecar",
        ),
        (
            &["--xds", "127.0.0.1:15010", "--xds-protocol", "rest"],
            "delta",
        ),
        (
            &["--xds", "127.0.0.1:15010", "--admin-port", "15001"],
            "must differ",
        ),
        (
            &["--xds", "127.0.0.1:15010", "--interception", "tproxy"],
            "\"redirect\" or \"none\"",
        ),
        (
            &["--xds", "127.0.0.1:15010", "--inbound-port", "15006"],
            "--inbound-port needs --app-port",
        ),
        (
            &[
                "--xds",
                "127.0.0.1:15010",
                "--interception",
                "redirect",
                "--app-port",
                "8080",
            ],
            "come from the registry",
        ),
        (
            &["--xds", "127.0.0.1:15010", "--instance-ips", "10.0.0.1,pod"],
            "invalid IP address",
        ),
        (&[], "--xds"),
    ];
    for (extra, expect) in cases {
        let args: Vec<&str> = base.iter().chain(extra.iter()).copied().collect();
        let out = straitctl(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expect),
            "{args:?}: expected {expect:?} in {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}

#[test]
fn an_unwritable_output_file_is_an_error() {
    let out = straitctl(&[
        "bootstrap",
        "--node-id",
        "x",
        "--xds",
        "127.0.0.1:15010",
        "-o",
        "/nonexistent-dir/bootstrap.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-dir/bootstrap.json"));
}
