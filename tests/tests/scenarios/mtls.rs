//! mTLS with Strait's CA between two stock Envoys: client sidecar -> server sidecar -> app.
//! Keys come over SDS on straitd's TLS port; PeerAuthentication and AuthorizationPolicy decide
//! what the server side accepts.

use std::time::Duration;

use strait_tests::client::{HttpClient, Req};
use strait_tests::envoy::Envoy;
use strait_tests::strait_proxy::StraitProxy;
use strait_tests::{
    Backend, ConfigDir, DataPlane, Proxy, ProxySpec, Straitd, StraitdOptions, data_plane,
    eventually,
};

use crate::common::{CONVERGE, assert_no_nacks};

const XFCC: &str = "x-forwarded-client-cert";

/// ratings served by `app` behind a sidecar with identity `bookinfo-ratings`.
struct Mesh {
    app: Backend,
    config: ConfigDir,
    straitd: Straitd,
    server: Box<dyn Proxy>,
    client: Box<dyn Proxy>,
}

fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: default}}\nspec:\n  mtls: {{mode: {mode}}}\n"
    )
}

impl Mesh {
    fn start(files: &[(&str, &str)], extra_args: &[&str]) -> anyhow::Result<Mesh> {
        Mesh::start_with(files, extra_args, &*data_plane(), &*data_plane())
    }

    /// The server sidecar on one data plane, the client on another.
    fn start_with(
        files: &[(&str, &str)],
        extra_args: &[&str],
        server_plane: &dyn DataPlane,
        client_plane: &dyn DataPlane,
    ) -> anyhow::Result<Mesh> {
        let app = Backend::start("ratings-app");
        let server_spec = ProxySpec::sidecar(
            "ratings-v1.default",
            "default",
            &[("app", "ratings"), ("version", "v1")],
        )
        .workload("bookinfo-ratings", app.port())
        // The server speaks state-of-the-world, the clients delta: SDS is exercised on both.
        .with_xds_protocol(strait_tests::XdsProtocol::Sotw);
        let inbound = server_spec
            .inbound_port()
            .expect("a workload has an inbound port");
        let config = ConfigDir::new()?;
        config.write(
            "ratings.yaml",
            &format!(
                "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-v1}}
spec:
  address: 127.0.0.1
  ports: {{http: {inbound}}}
  labels: {{app: ratings, version: v1, security.istio.io/tlsMode: istio}}
  serviceAccount: bookinfo-ratings
"
            ),
        )?;
        for (name, yaml) in files {
            config.write(name, yaml)?;
        }
        let mut options = StraitdOptions::new(config.path());
        options.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        let straitd = Straitd::start(options)?;
        let server = server_plane.start(&straitd, &server_spec)?;
        let client_spec = ProxySpec::sidecar(
            "productpage-v1.default",
            "default",
            &[("app", "productpage")],
        )
        .secure("bookinfo-productpage");
        let client = client_plane.start(&straitd, &client_spec)?;
        Ok(Mesh {
            app,
            config,
            straitd,
            server,
            client,
        })
    }

    fn inbound(&self) -> std::net::SocketAddr {
        let port = self
            .server
            .inbound_port()
            .expect("the server sidecar has an inbound side");
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Through the client sidecar (mTLS when the policy wants it); the app echoes what it got.
    async fn via_client(&self, path: &str) -> anyhow::Result<strait_tests::Resp> {
        HttpClient::without_pooling()
            .request(
                self.client.outbound_addr(),
                &Req::get("ratings:9080", path).echo(),
            )
            .await
    }

    /// Straight to the server sidecar's inbound port, in plaintext.
    async fn plaintext(&self) -> anyhow::Result<strait_tests::Resp> {
        HttpClient::without_pooling()
            .request(self.inbound(), &Req::get("ratings:9080", "/").echo())
            .await
    }
}

fn caller_identity(resp: &strait_tests::Resp) -> anyhow::Result<String> {
    let json = resp.json()?;
    Ok(json["headers"][XFCC]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_carries_the_client_identity_and_refuses_plaintext() -> anyhow::Result<()> {
    // Istio's own sample, as it is: ISTIO_MUTUAL for every bookinfo service (explicit, not auto).
    let rules = crate::common::istio_sample("destination-rule-all-mtls.yaml");
    let mesh = Mesh::start(
        &[
            ("pa.yaml", &peer_authentication("STRICT")),
            ("dr.yaml", &rules),
        ],
        &[],
    )?;
    let resp = eventually(CONVERGE, || async {
        let resp = mesh.via_client("/").await?;
        anyhow::ensure!(resp.status == 200, "{resp:?}");
        Ok(resp)
    })
    .await?;
    let xfcc = caller_identity(&resp)?;
    anyhow::ensure!(
        xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        "the app sees the caller's SPIFFE identity: {xfcc:?}"
    );
    let refused = mesh.plaintext().await;
    anyhow::ensure!(
        refused.as_ref().map_or(true, |r| r.status != 200),
        "STRICT must refuse plaintext: {refused:?}"
    );
    anyhow::ensure!(mesh.app.requests() >= 1);
    if strait_tests::data_plane().name() == "envoy" {
        // The client's ratings cluster uses mesh mTLS because the DestinationRule says so.
        let dump = mesh.client.config_dump()?;
        let text = dump.to_string();
        anyhow::ensure!(
            text.contains("outbound_.9080_.v1_.ratings.default.svc.cluster.local")
                && text.contains("spiffe://cluster.local/ns/default/sa/bookinfo-ratings"),
            "ISTIO_MUTUAL with the server's identity expected in the client's clusters"
        );
    }
    assert_no_nacks(&mesh.straitd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_accepts_both_and_disable_is_plaintext() -> anyhow::Result<()> {
    let mesh = Mesh::start(&[("pa.yaml", &peer_authentication("PERMISSIVE"))], &[])?;
    eventually(CONVERGE, || async {
        let mtls = mesh.via_client("/").await?;
        anyhow::ensure!(
            mtls.status == 200 && caller_identity(&mtls)?.contains("sa/bookinfo-productpage"),
            "{mtls:?}"
        );
        let plain = mesh.plaintext().await?;
        anyhow::ensure!(
            plain.status == 200 && caller_identity(&plain)?.is_empty(),
            "{plain:?}"
        );
        Ok(())
    })
    .await?;

    let lds = "type.googleapis.com/envoy.config.listener.v3.Listener";
    let listener_version = |status: Option<serde_json::Value>| {
        let t = status.unwrap_or_default()["types"][lds].clone();
        (t["sent_version"].clone(), t["acked_version"].clone())
    };
    let (before, _) = listener_version(mesh.straitd.proxy_status("ratings-v1.default")?);
    mesh.config
        .replace("pa.yaml", &peer_authentication("DISABLE"))?;
    // The server must run the DISABLE listener before a new client connects: PERMISSIVE also
    // takes plaintext, so the probe alone cannot tell the two apart. Connections already open
    // (the first client's pooled mTLS connection) drain on Envoy's schedule; new ones follow
    // the new policy.
    eventually(CONVERGE, || async {
        let (sent, acked) = listener_version(mesh.straitd.proxy_status("ratings-v1.default")?);
        anyhow::ensure!(
            sent != before && sent == acked,
            "server listener not updated yet"
        );
        let plain = mesh.plaintext().await?;
        anyhow::ensure!(
            plain.status == 200 && caller_identity(&plain)?.is_empty(),
            "{plain:?}"
        );
        Ok(())
    })
    .await?;
    let fresh_spec = ProxySpec::sidecar(
        "productpage-v2.default",
        "default",
        &[("app", "productpage")],
    )
    .secure("bookinfo-productpage");
    let fresh = data_plane().start(&mesh.straitd, &fresh_spec)?;
    eventually(CONVERGE, || async {
        // Auto mTLS is off towards a workload whose policy disables it.
        let via = HttpClient::without_pooling()
            .request(fresh.outbound_addr(), &Req::get("ratings:9080", "/").echo())
            .await?;
        let server = mesh.straitd.proxy_status("ratings-v1.default")?;
        anyhow::ensure!(
            via.status == 200 && caller_identity(&via)?.is_empty(),
            "plaintext expected: {via:?}\nserver xDS status: {server:#?}"
        );
        Ok(())
    })
    .await?;
    assert_no_nacks(&mesh.straitd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_allows_productpage_denies_others_and_deny_wins() -> anyhow::Result<()> {
    let allow = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-viewer}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/bookinfo-productpage]}}]
";
    let deny = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-private}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules:
  - to: [{operation: {paths: ['/private*']}}]
";
    let mesh = Mesh::start(
        &[
            ("pa.yaml", &peer_authentication("STRICT")),
            ("allow.yaml", allow),
            ("deny.yaml", deny),
        ],
        &[],
    )?;
    eventually(CONVERGE, || async {
        let ok = mesh.via_client("/ratings/1").await?;
        anyhow::ensure!(ok.status == 200, "productpage is allowed: {ok:?}");
        let denied = mesh.via_client("/private/x").await?;
        anyhow::ensure!(denied.status == 403, "DENY wins over ALLOW: {denied:?}");
        Ok(())
    })
    .await?;

    let other_spec = ProxySpec::sidecar("reviews-v1.default", "default", &[("app", "reviews")])
        .secure("bookinfo-reviews");
    let other = data_plane().start(&mesh.straitd, &other_spec)?;
    eventually(CONVERGE, || async {
        let resp = HttpClient::without_pooling()
            .request(
                other.outbound_addr(),
                &Req::get("ratings:9080", "/ratings/1"),
            )
            .await?;
        anyhow::ensure!(resp.status == 403, "another identity is refused: {resp:?}");
        Ok(())
    })
    .await?;
    assert_no_nacks(&mesh.straitd).await
}

/// One policy, two data planes: stock Envoy and strait-proxy talk mTLS to each other in both
/// directions, each side verifying the other's SPIFFE identity, and the server side enforces
/// authorization whichever proxy it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_meshes_envoy_and_strait_proxy_speak_mtls_both_ways() -> anyhow::Result<()> {
    let allow = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-viewer}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/bookinfo-productpage]}}]
    to: [{operation: {methods: [GET]}}]
";
    let files = [
        ("pa.yaml", peer_authentication("STRICT")),
        ("allow.yaml", allow.to_string()),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, y)| (*n, y.as_str())).collect();
    for (server, client) in [
        (&StraitProxy as &dyn DataPlane, &Envoy as &dyn DataPlane),
        (&Envoy as &dyn DataPlane, &StraitProxy as &dyn DataPlane),
    ] {
        let label = format!("{} client -> {} server", client.name(), server.name());
        let mesh = Mesh::start_with(&files, &[], server, client)?;
        let resp = eventually(CONVERGE, || async {
            let resp = mesh.via_client("/ratings/1").await?;
            anyhow::ensure!(resp.status == 200, "{label}: {resp:?}");
            Ok(resp)
        })
        .await?;
        let xfcc = caller_identity(&resp)?;
        anyhow::ensure!(
            xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/bookinfo-productpage")
                && xfcc.contains("By=spiffe://cluster.local/ns/default/sa/bookinfo-ratings"),
            "{label}: the app sees both identities: {xfcc:?}"
        );
        let post = HttpClient::without_pooling()
            .request(
                mesh.client.outbound_addr(),
                &Req::post("ratings:9080", "/ratings/1", "{}"),
            )
            .await?;
        anyhow::ensure!(post.status == 403, "{label}: only GET is allowed: {post:?}");
        let plain = mesh.plaintext().await;
        anyhow::ensure!(
            !matches!(&plain, Ok(r) if r.status == 200),
            "{label}: STRICT refuses plaintext: {plain:?}"
        );
        assert_no_nacks(&mesh.straitd).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_traffic_drops_nothing_and_restart_keeps_the_root() -> anyhow::Result<()> {
    let mut mesh = Mesh::start(
        &[("pa.yaml", &peer_authentication("STRICT"))],
        &["--workload-cert-ttl", "8s"],
    )?;
    eventually(CONVERGE, || async {
        let r = mesh.via_client("/").await?;
        anyhow::ensure!(r.status == 200, "{r:?}");
        Ok(())
    })
    .await?;
    let root_before = std::fs::read_to_string(mesh.straitd.root_cert())?;

    // Certificates of 8s renew every 4s: 20s of steady traffic sees several rotations.
    let mut seen = std::collections::BTreeSet::new();
    let client = HttpClient::new();
    let started = std::time::Instant::now();
    let (mut sent, mut failed) = (0, Vec::new());
    while started.elapsed() < Duration::from_secs(20) {
        let resp = client
            .request(mesh.client.outbound_addr(), &Req::get("ratings:9080", "/"))
            .await;
        sent += 1;
        match resp {
            Ok(r) if r.status == 200 => {}
            other => failed.push(format!("{other:?}")),
        }
        if sent % 50 == 0 {
            seen.extend(mesh.client.certificate_serials()?);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {sent} requests failed during rotation: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    anyhow::ensure!(
        seen.len() >= 3,
        "expected several certificate serials over 20s, saw {seen:?}"
    );

    // A restarted straitd keeps its root: new certificates still chain to what peers trust.
    mesh.straitd.restart()?;
    anyhow::ensure!(
        std::fs::read_to_string(mesh.straitd.root_cert())? == root_before,
        "the root changed on restart"
    );
    let before = mesh.client.certificate_serials()?;
    eventually(Duration::from_secs(20), || async {
        let now = mesh.client.certificate_serials()?;
        anyhow::ensure!(
            now != before,
            "no certificate from the restarted straitd yet"
        );
        let r = mesh.via_client("/").await?;
        anyhow::ensure!(r.status == 200, "{r:?}");
        Ok(())
    })
    .await?;
    assert_no_nacks(&mesh.straitd).await
}
