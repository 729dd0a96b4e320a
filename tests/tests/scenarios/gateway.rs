//! An ingress gateway from Istio's bookinfo Gateway, and pushes that reach only the proxies
//! whose configuration changed.

use strait_tests::client::{HttpClient, Req};
use strait_tests::{ProxySpec, XdsProtocol, data_plane, eventually};

use crate::common::{CONVERGE, Mesh, assert_no_nacks, istio_sample};

fn sent_versions(status: &serde_json::Value) -> Vec<String> {
    status["types"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(t, v)| format!("{t}={}", v["sent_version"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_gateway_routes_north_south_and_pushes_only_where_needed() -> anyhow::Result<()> {
    let mesh = Mesh::start(
        &[(
            "bookinfo-gateway.yaml",
            &istio_sample("bookinfo-gateway.yaml"),
        )],
        XdsProtocol::Delta,
    )?;
    let spec = ProxySpec::gateway(
        "ingress-1.istio-system",
        "istio-system",
        &[("istio", "ingressgateway")],
        &[80],
    )
    .with_xds_protocol(XdsProtocol::Sotw);
    let gateway = data_plane().start(&mesh.straitd, &spec)?;
    let addr = gateway.gateway_addr(80);
    let client = HttpClient::new();
    for (path, expect) in [
        ("/productpage", "200 productpage-v1"),
        ("/static/app.js", "200 productpage-v1"),
        ("/login", "200 productpage-v1"),
        ("/api/v1/products/1", "200 productpage-v1"),
        ("/admin", "404"),
    ] {
        let resp = client
            .request(addr, &Req::get("bookinfo.example.com", path))
            .await?;
        let got = format!(
            "{} {}",
            resp.status,
            if resp.status == 200 {
                resp.body.as_str()
            } else {
                ""
            }
        );
        anyhow::ensure!(got.trim() == expect, "{path}: {resp:?}");
    }
    // Gateways are not sidecars: the mesh's service names are not routed there.
    let resp = client
        .request(addr, &Req::get("reviews:9080", "/reviews"))
        .await?;
    anyhow::ensure!(resp.status == 404, "{resp:?}");

    // A gateway-only change reaches the gateway and leaves the sidecar untouched.
    let sidecar_before = sent_versions(
        &mesh
            .straitd
            .proxy_status("productpage-v1.default")?
            .unwrap_or_default(),
    );
    let extended = istio_sample("bookinfo-gateway.yaml").replace(
        "        exact: /logout\n",
        "        exact: /logout\n    - uri:\n        prefix: /extra\n",
    );
    anyhow::ensure!(extended.contains("/extra"), "the sample changed shape");
    mesh.config.replace("bookinfo-gateway.yaml", &extended)?;
    eventually(CONVERGE, || async {
        let resp = client
            .request(addr, &Req::get("bookinfo.example.com", "/extra"))
            .await?;
        anyhow::ensure!(
            resp.status == 200 && resp.body == "productpage-v1",
            "{resp:?}"
        );
        Ok(())
    })
    .await?;
    let sidecar_after = sent_versions(
        &mesh
            .straitd
            .proxy_status("productpage-v1.default")?
            .unwrap_or_default(),
    );
    anyhow::ensure!(
        sidecar_before == sidecar_after,
        "the sidecar was pushed: {sidecar_before:?} -> {sidecar_after:?}"
    );
    assert_no_nacks(&mesh.straitd)
}
