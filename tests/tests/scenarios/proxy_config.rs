//! `straitctl proxy-config` and `straitctl explain` against real proxies: what straitd says a
//! proxy acknowledged is what Envoy's `/config_dump` holds, and the route, split and
//! authorization verdict `explain` works out are what real requests through that proxy get.
//!
//! The mesh: productpage's sidecar (delta, with an identity) calls reviews (Istio's
//! `destination-rule-all.yaml` subsets; `end-user: jason` to v2, `/canary/N?v=3` to v3, else
//! 50/50 v1 and v3) and
//! ratings, whose sidecar (SotW) enforces STRICT mTLS and the authorization of the mTLS
//! scenario (productpage allowed, `/private*` denied).

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use strait_tests::client::{HttpClient, Req, send_many};
use strait_tests::config::{BOOKINFO_PORT, http_service};
use strait_tests::{
    Backend, ConfigDir, ProxySpec, Straitd, StraitdOptions, bins, data_plane, eventually,
};

use crate::common::{CONVERGE, assert_no_nacks, istio_sample};

const REVIEWS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: canary
    match: [{uri: {regex: '/canary/[0-9]+'}, queryParams: {v: {exact: '3'}}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - name: split
    route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v3}, weight: 50}
";

const AUTHORIZATION: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/bookinfo-productpage]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-private, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules:
  - to: [{operation: {paths: ['/private*']}}]
";

const PRODUCTPAGE: &str = "productpage-v1.default";
const RATINGS: &str = "ratings-v1.default";
const CALLER: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";

fn straitctl(straitd: &Straitd, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bins::straitctl())
        .args(args)
        .args(["--admin", &straitd.admin_url()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "straitctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn straitctl_json(straitd: &Straitd, args: &[&str]) -> anyhow::Result<Value> {
    let text = straitctl(straitd, args)?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{e}: {text}"))
}

/// A table's rows, each split on runs of spaces (cells here have no double spaces).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// The resources of one kind in Envoy's `/config_dump`, by name.
fn dumped(dump: &Value, config: &str, list: &str, item: &str) -> Vec<Value> {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(config)))
        .flat_map(|c| c[list].as_array().cloned().unwrap_or_default())
        .map(|entry| entry[item].clone())
        .collect()
}

fn by_name(items: &[Value], key: &str) -> std::collections::BTreeMap<String, Value> {
    items
        .iter()
        .map(|v| (v[key].as_str().unwrap_or_default().to_string(), v.clone()))
        .collect()
}

fn step<'a>(explanation: &'a Value, kind: &str) -> Vec<&'a Value> {
    explanation["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["step"] == kind)
        .collect()
}

fn from(step: &Value) -> Vec<&str> {
    step["from"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn outcome_clusters(explanation: &Value) -> Vec<(String, u64)> {
    explanation["outcome"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            (
                d["cluster"].as_str().unwrap_or_default().to_string(),
                d["weight"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

const V1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
const V2: &str = "outbound|9080|v2|reviews.default.svc.cluster.local";
const V3: &str = "outbound|9080|v3|reviews.default.svc.cluster.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_config_and_explain_match_what_the_proxy_holds_and_does() -> anyhow::Result<()> {
    let reviews: Vec<Backend> = ["reviews-v1", "reviews-v2", "reviews-v3"]
        .into_iter()
        .map(Backend::start)
        .collect();
    let ratings_app = Backend::start("ratings-app");
    let ratings_spec =
        ProxySpec::sidecar(RATINGS, "default", &[("app", "ratings"), ("version", "v1")])
            .workload("bookinfo-ratings", ratings_app.port())
            .with_xds_protocol(strait_tests::XdsProtocol::Sotw);
    let inbound = ratings_spec
        .inbound_port()
        .expect("a workload has an inbound port");
    let config = ConfigDir::new()?;
    config.write(
        "reviews.yaml",
        &http_service(
            "reviews",
            "default",
            BOOKINFO_PORT,
            &[
                ("v1", reviews[0].port()),
                ("v2", reviews[1].port()),
                ("v3", reviews[2].port()),
            ],
        ),
    )?;
    config.write(
        "destination-rule-all.yaml",
        &istio_sample("destination-rule-all.yaml"),
    )?;
    config.write("vs.yaml", REVIEWS)?;
    config.write(
        "ratings.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-v1, namespace: default}}
spec:
  address: 127.0.0.1
  ports: {{http: {inbound}}}
  labels: {{app: ratings, version: v1, security.istio.io/tlsMode: istio}}
  serviceAccount: bookinfo-ratings
"
        ),
    )?;
    config.write("authorization.yaml", AUTHORIZATION)?;
    // destination-rule-all.yaml names productpage, details and ratings too: give them a home.
    config.write(
        "others.yaml",
        &[
            http_service(
                "productpage",
                "default",
                BOOKINFO_PORT,
                &[("v1", ratings_app.port())],
            ),
            http_service(
                "details",
                "default",
                BOOKINFO_PORT,
                &[("v1", ratings_app.port())],
            ),
        ]
        .join("---\n"),
    )?;
    let straitd = Straitd::start(StraitdOptions::new(config.path()))?;
    let ratings = data_plane().start(&straitd, &ratings_spec)?;
    let client_spec = ProxySpec::sidecar(
        PRODUCTPAGE,
        "default",
        &[("app", "productpage"), ("version", "v1")],
    )
    .secure("bookinfo-productpage");
    let client = data_plane().start(&straitd, &client_spec)?;
    let out = client.outbound_addr();
    let http = HttpClient::without_pooling();

    // Real traffic first: the mesh works as configured.
    eventually(CONVERGE, || async {
        let jason = http
            .request(
                out,
                &Req::get("reviews:9080", "/").header("end-user", "jason"),
            )
            .await?;
        anyhow::ensure!(
            jason.status == 200 && jason.body == "reviews-v2",
            "{jason:?}"
        );
        let ok = http
            .request(out, &Req::get("ratings:9080", "/ratings/1"))
            .await?;
        anyhow::ensure!(ok.status == 200, "{ok:?}");
        let denied = http
            .request(out, &Req::get("ratings:9080", "/private/x"))
            .await?;
        anyhow::ensure!(denied.status == 403, "{denied:?}");
        Ok(())
    })
    .await?;
    assert_no_nacks(&straitd).await?;
    let is_envoy = client.config_dump()?.get("configs").is_some();

    // proxy-config clusters: the table, and the JSON against Envoy's own dump.
    let clusters = straitctl(&straitd, &["proxy-config", "clusters", PRODUCTPAGE])?;
    let table = rows(&clusters);
    for subset in ["v1", "v2", "v3"] {
        let row = vec![
            "reviews.default.svc.cluster.local".to_string(),
            "9080".into(),
            subset.into(),
            "outbound".into(),
            "EDS".into(),
            "reviews.default".into(),
        ];
        anyhow::ensure!(table.contains(&row), "no {row:?} in\n{clusters}");
    }
    anyhow::ensure!(clusters.starts_with("SERVICE FQDN"), "{clusters}");
    let json = straitctl_json(
        &straitd,
        &["proxy-config", "clusters", PRODUCTPAGE, "-o", "json"],
    )?;
    let ours = by_name(
        json.as_array().map(Vec::as_slice).unwrap_or_default(),
        "name",
    );
    anyhow::ensure!(ours.contains_key(V1) && ours.contains_key(V3), "{json}");
    let listeners = straitctl_json(
        &straitd,
        &["proxy-config", "listeners", PRODUCTPAGE, "-o", "json"],
    )?;
    let routes = straitctl_json(
        &straitd,
        &["proxy-config", "routes", PRODUCTPAGE, "-o", "json"],
    )?;
    let endpoints = straitctl_json(
        &straitd,
        &["proxy-config", "endpoints", PRODUCTPAGE, "-o", "json"],
    )?;
    if is_envoy {
        let dump = client.config_dump()?;
        let theirs = by_name(
            &dumped(
                &dump,
                "ClustersConfigDump",
                "dynamic_active_clusters",
                "cluster",
            ),
            "name",
        );
        anyhow::ensure!(
            ours == theirs,
            "clusters differ from Envoy's:\nstraitctl: {ours:#?}\nEnvoy: {theirs:#?}"
        );
        let theirs = by_name(
            &dumped(
                &dump,
                "ListenersConfigDump",
                "dynamic_listeners",
                "active_state",
            ),
            "listener",
        )
        .into_values()
        .map(|state| state["listener"].clone())
        .collect::<Vec<_>>();
        anyhow::ensure!(
            by_name(
                listeners.as_array().map(Vec::as_slice).unwrap_or_default(),
                "name"
            ) == by_name(&theirs, "name"),
            "listeners differ from Envoy's:\nstraitctl: {listeners:#}\nEnvoy: {theirs:#?}"
        );
        let theirs = dumped(
            &dump,
            "RoutesConfigDump",
            "dynamic_route_configs",
            "route_config",
        );
        anyhow::ensure!(
            by_name(
                routes.as_array().map(Vec::as_slice).unwrap_or_default(),
                "name"
            ) == by_name(&theirs, "name"),
            "routes differ from Envoy's:\nstraitctl: {routes:#}\nEnvoy: {theirs:#?}"
        );
        let theirs = dumped(
            &dump,
            "EndpointsConfigDump",
            "dynamic_endpoint_configs",
            "endpoint_config",
        );
        let names = |list: &[Value]| -> BTreeSet<String> {
            list.iter()
                .filter_map(|e| e["cluster_name"].as_str().map(str::to_string))
                .collect()
        };
        anyhow::ensure!(
            names(endpoints.as_array().map(Vec::as_slice).unwrap_or_default()) == names(&theirs),
            "endpoint assignments differ from Envoy's:\nstraitctl: {endpoints:#}\nEnvoy: {theirs:#?}"
        );
    }

    // The other tables.
    let routes_table = straitctl(&straitd, &["proxy-config", "routes", PRODUCTPAGE])?;
    anyhow::ensure!(
        rows(&routes_table)
            .iter()
            .any(|r| r.last().map(String::as_str) == Some("reviews.default")
                && r.iter()
                    .any(|c| c.starts_with("reviews.default.svc.cluster.local:9080"))),
        "no reviews route from VirtualService reviews.default:\n{routes_table}"
    );
    let endpoints_table = straitctl(&straitd, &["proxy-config", "endpoints", PRODUCTPAGE])?;
    for backend in &reviews {
        let address = format!("127.0.0.1:{}", backend.port());
        anyhow::ensure!(
            rows(&endpoints_table)
                .iter()
                .any(|r| r[0] == address && r[1] == "HEALTHY"),
            "no healthy {address}:\n{endpoints_table}"
        );
    }
    let listeners_table = straitctl(&straitd, &["proxy-config", "listeners", RATINGS])?;
    anyhow::ensure!(
        rows(&listeners_table)
            .iter()
            .any(|r| r[1] == inbound.to_string() && r[3].starts_with("Inline Route")),
        "no inbound listener on {inbound}:\n{listeners_table}"
    );
    // Secrets: certificates, never a key.
    let secrets = straitctl(&straitd, &["proxy-config", "secrets", PRODUCTPAGE])?;
    let secrets_json = straitctl(
        &straitd,
        &["proxy-config", "secrets", PRODUCTPAGE, "-o", "json"],
    )?;
    let yaml = straitctl(
        &straitd,
        &["proxy-config", "secrets", PRODUCTPAGE, "-o", "yaml"],
    )?;
    for text in [&secrets, &secrets_json, &yaml] {
        anyhow::ensure!(!text.contains("PRIVATE KEY"), "a private key in\n{text}");
    }
    if is_envoy {
        // Envoy takes its certificate over SDS; strait-proxy makes its own key.
        let table = rows(&secrets);
        anyhow::ensure!(
            table
                .iter()
                .any(|r| r[0] == "default" && r[1] == "Cert Chain" && r[3] == "true"),
            "{secrets}"
        );
        // The certificate straitd says the proxy holds is the one Envoy serves with.
        let serials = client.certificate_serials()?;
        let ours = table
            .iter()
            .find(|r| r[0] == "default")
            .map(|r| {
                r[4].to_ascii_lowercase()
                    .trim_start_matches('0')
                    .to_string()
            })
            .unwrap_or_default();
        anyhow::ensure!(
            serials
                .iter()
                .any(|s| s.to_ascii_lowercase().trim_start_matches('0') == ours),
            "serial {ours} not among Envoy's {serials:?}\n{secrets}"
        );
        anyhow::ensure!(
            table.iter().any(|r| r[0] == "ROOTCA" && r[1] == "CA"),
            "{secrets}"
        );
        anyhow::ensure!(secrets_json.contains("[redacted]"), "{secrets_json}");
    }

    // explain: the weighted split, and real traffic reaching both clusters.
    let split = straitctl_json(
        &straitd,
        &[
            "explain",
            PRODUCTPAGE,
            "--authority",
            "reviews:9080",
            "--path",
            "/",
            "-o",
            "json",
        ],
    )?;
    anyhow::ensure!(split["outcome"]["kind"] == "routed", "{split:#}");
    anyhow::ensure!(
        outcome_clusters(&split) == [(V1.to_string(), 50), (V3.to_string(), 50)],
        "{split:#}"
    );
    let route = step(&split, "route");
    anyhow::ensure!(route.len() == 1 && route[0]["name"] == "split", "{split:#}");
    anyhow::ensure!(
        from(route[0]) == ["VirtualService default/reviews"],
        "{split:#}"
    );
    let skipped = route[0]["why"].to_string();
    anyhow::ensure!(
        skipped.contains("route jason skipped") && skipped.contains("end-user"),
        "{skipped}"
    );
    let clusters_steps = step(&split, "cluster");
    anyhow::ensure!(
        clusters_steps.len() == 2
            && clusters_steps
                .iter()
                .all(|c| from(c) == ["DestinationRule default/reviews"]),
        "{split:#}"
    );
    let endpoints_steps = step(&split, "endpoints");
    anyhow::ensure!(
        endpoints_steps[0]["details"]["endpoints"][0]["address"]
            == format!("127.0.0.1:{}", reviews[0].port()),
        "{split:#}"
    );
    let tally = send_many(200, out, &Req::get("reviews:9080", "/")).await;
    let seen: BTreeSet<&str> = tally.keys().map(String::as_str).collect();
    anyhow::ensure!(
        seen == BTreeSet::from(["reviews-v1", "reviews-v3"]),
        "{tally:?}"
    );

    // The header route: explain picks v2, and so does the proxy.
    let jason = straitctl_json(
        &straitd,
        &[
            "explain",
            PRODUCTPAGE,
            "--authority",
            "reviews:9080",
            "-H",
            "end-user: jason",
            "-o",
            "json",
        ],
    )?;
    anyhow::ensure!(
        outcome_clusters(&jason) == [(V2.to_string(), 1)],
        "{jason:#}"
    );
    anyhow::ensure!(step(&jason, "route")[0]["name"] == "jason", "{jason:#}");
    let resp = http
        .request(
            out,
            &Req::get("reviews:9080", "/").header("end-user", "jason"),
        )
        .await?;
    anyhow::ensure!(resp.body == "reviews-v2", "{resp:?}");
    let text = straitctl(
        &straitd,
        &[
            "explain",
            PRODUCTPAGE,
            "--authority",
            "reviews:9080",
            "-H",
            "end-user: jason",
        ],
    )?;
    anyhow::ensure!(
        text.contains("=> routed: routed to outbound|9080|v2|reviews.default.svc.cluster.local")
            && text.contains("from: VirtualService default/reviews")
            && text.contains("header end-user"),
        "{text}"
    );

    // A regex path with a query parameter: explain picks the canary route, and so does the
    // proxy; a path the regex does not take falls through to the split.
    let canary = straitctl_json(
        &straitd,
        &[
            "explain",
            PRODUCTPAGE,
            "--authority",
            "reviews:9080",
            "--path",
            "/canary/7?v=3",
            "-o",
            "json",
        ],
    )?;
    anyhow::ensure!(
        step(&canary, "route")[0]["name"] == "canary"
            && outcome_clusters(&canary) == [(V3.to_string(), 1)],
        "{canary:#}"
    );
    let tally = send_many(20, out, &Req::get("reviews:9080", "/canary/7?v=3")).await;
    anyhow::ensure!(
        tally.keys().map(String::as_str).collect::<Vec<_>>() == ["reviews-v3"],
        "{tally:?}"
    );
    let fallthrough = straitctl_json(
        &straitd,
        &[
            "explain",
            PRODUCTPAGE,
            "--authority",
            "reviews:9080",
            "--path",
            "/canary/x?v=3",
            "-o",
            "json",
        ],
    )?;
    anyhow::ensure!(
        step(&fallthrough, "route")[0]["name"] == "split"
            && step(&fallthrough, "route")[0]["why"]
                .to_string()
                .contains("does not match regex"),
        "{fallthrough:#}"
    );
    let tally = send_many(40, out, &Req::get("reviews:9080", "/canary/x?v=3")).await;
    anyhow::ensure!(
        tally.keys().map(String::as_str).collect::<BTreeSet<_>>()
            == BTreeSet::from(["reviews-v1", "reviews-v3"]),
        "{tally:?}"
    );

    // Authorization on ratings' inbound side: explain's verdicts, against real requests.
    let port = inbound.to_string();
    let explain_ratings = |path: &str| {
        straitctl_json(
            &straitd,
            &[
                "explain",
                RATINGS,
                "--port",
                &port,
                "--authority",
                "ratings:9080",
                "--path",
                path,
                "--source-principal",
                CALLER,
                "-o",
                "json",
            ],
        )
    };
    let denied = explain_ratings("/private/x")?;
    anyhow::ensure!(
        denied["outcome"]["kind"] == "denied" && denied["outcome"]["status"] == 403,
        "{denied:#}"
    );
    let authz = step(&denied, "authorization");
    anyhow::ensure!(
        authz.iter().any(|a| a["details"]["verdict"] == "DENY"
            && from(a) == ["AuthorizationPolicy default/no-private"]),
        "{denied:#}"
    );
    let resp = http
        .request(out, &Req::get("ratings:9080", "/private/x"))
        .await?;
    anyhow::ensure!(resp.status == 403, "{resp:?}");

    let allowed = explain_ratings("/ratings/1")?;
    anyhow::ensure!(allowed["outcome"]["kind"] == "routed", "{allowed:#}");
    anyhow::ensure!(
        outcome_clusters(&allowed) == [(format!("inbound|{}||", ratings_app.port()), 1)],
        "{allowed:#}"
    );
    anyhow::ensure!(
        step(&allowed, "authorization")
            .iter()
            .any(|a| a["details"]["verdict"] == "ALLOW"
                && from(a) == ["AuthorizationPolicy default/ratings-viewer"]),
        "{allowed:#}"
    );
    let resp = http
        .request(out, &Req::get("ratings:9080", "/ratings/1"))
        .await?;
    anyhow::ensure!(resp.status == 200 && resp.body == "ratings-app", "{resp:?}");
    // Another caller is refused by the ALLOW policy; plaintext does not get through STRICT.
    let other = straitctl_json(
        &straitd,
        &[
            "explain",
            RATINGS,
            "--port",
            &port,
            "--authority",
            "ratings:9080",
            "--source-principal",
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
            "-o",
            "json",
        ],
    )?;
    anyhow::ensure!(other["outcome"]["kind"] == "denied", "{other:#}");
    let plain = straitctl_json(
        &straitd,
        &[
            "explain",
            RATINGS,
            "--port",
            &port,
            "--authority",
            "ratings:9080",
            "-o",
            "json",
        ],
    )?;
    anyhow::ensure!(plain["outcome"]["kind"] == "tls_required", "{plain:#}");

    drop(ratings);
    assert_no_nacks(&straitd).await
}
