//! An ingress gateway from Istio's bookinfo Gateway, and pushes that reach only the proxies
//! whose configuration changed.

use strait_tests::client::{HttpClient, Req, https_request};
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
    assert_no_nacks(&mesh.straitd).await
}

/// A CA and a certificate for each name, written as PEM files into `dir`.
fn certificates(dir: &std::path::Path, names: &[&str]) -> anyhow::Result<String> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    for name in names {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec![name.to_string()])?.signed_by(&key, &ca)?;
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(ca.pem())
}

/// One HTTPS port, two Gateway servers: the SNI picks the certificate and the routes, north-south
/// traffic reaches the mesh's services, and plain HTTP is redirected to HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_gateway_picks_the_certificate_by_sni() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let ca = certificates(certs.path(), &["bookinfo.example.com", "shop.example.com"])?;
    let file = |name: &str, ext: &str| certs.path().join(format!("{name}.{ext}"));
    let server = |name: &str| {
        format!(
            "  - port: {{number: 443, name: https-{label}, protocol: HTTPS}}
    name: {label}
    hosts: [{name}]
    tls: {{mode: SIMPLE, serverCertificate: {crt}, privateKey: {key}}}
",
            label = name.split('.').next().unwrap_or(name),
            crt = file(name, "crt").display(),
            key = file(name, "key").display(),
        )
    };
    let gateway = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: public}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{}{}  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [bookinfo.example.com]
    tls: {{httpsRedirect: true}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bookinfo}}
spec:
  hosts: [bookinfo.example.com]
  gateways: [public]
  http:
  - route: [{{destination: {{host: productpage, port: {{number: 9080}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop}}
spec:
  hosts: [shop.example.com]
  gateways: [public]
  http:
  - route: [{{destination: {{host: details, port: {{number: 9080}}}}}}]
",
        server("bookinfo.example.com"),
        server("shop.example.com"),
    );
    let mesh = Mesh::start(&[("gateway.yaml", &gateway)], XdsProtocol::Delta)?;
    let spec = ProxySpec::gateway(
        "ingress-1.istio-system",
        "istio-system",
        &[("istio", "ingressgateway")],
        &[80, 443],
    );
    let gateway = data_plane().start(&mesh.straitd, &spec)?;
    let https = gateway.gateway_addr(443);
    for (name, expect) in [
        ("bookinfo.example.com", "productpage-v1"),
        ("shop.example.com", "details-v1"),
    ] {
        let (resp, served) = eventually(CONVERGE, || async {
            let (resp, served) =
                https_request(https, name, &ca, &Req::get(name, "/anything")).await?;
            anyhow::ensure!(resp.status == 200, "{name}: {resp:?}");
            Ok((resp, served))
        })
        .await?;
        anyhow::ensure!(resp.body == expect, "{name}: {resp:?}");
        let pem = std::fs::read_to_string(file(name, "crt"))?;
        let expected = pem::parse(&pem)?;
        anyhow::ensure!(
            served == expected.contents(),
            "{name}: the gateway served another certificate"
        );
    }
    // No server claims this name: the handshake fails rather than serving a wrong certificate.
    let other = https_request(https, "other.example.com", &ca, &Req::get("x", "/")).await;
    anyhow::ensure!(other.is_err(), "an unknown SNI is refused: {other:?}");
    // Plain HTTP for the HTTPS host is redirected.
    let resp = HttpClient::new()
        .request(
            gateway.gateway_addr(80),
            &Req::get("bookinfo.example.com", "/productpage"),
        )
        .await?;
    anyhow::ensure!(
        resp.status == 301
            && resp.header("location") == Some("https://bookinfo.example.com/productpage"),
        "{resp:?}"
    );
    assert_no_nacks(&mesh.straitd).await
}
