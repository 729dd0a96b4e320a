//! VirtualService `tcp` and `tls` routes and `delegate`, on real bytes: a gateway's TCP server
//! splits connections between two echo backends by the route's weights (100/0, 0/100, 50/50);
//! a PASSTHROUGH server hands a TLS connection to its backend by SNI without terminating it
//! (the client sees the backend's own certificate); a root VirtualService delegates a path
//! to a delegate in another namespace.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use strait_tests::backend::TcpEcho;
use strait_tests::client::{HttpClient, Req};
use strait_tests::{
    Backend, ConfigDir, ProxySpec, Straitd, StraitdOptions, XdsProtocol, data_plane, eventually,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::both_protocols;
use crate::common::{CONVERGE, assert_no_nacks};

const TCP_PORT: u16 = 31400;
const TLS_PORT: u16 = 443;

fn registry(v1: u16, v2: u16, tls: u16, api_v1: u16, api_v2: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tcp-echo, namespace: default}}
spec:
  hosts: [tcp-echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp: {v1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{tcp: {v2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tcp-echo, namespace: default}}
spec:
  host: tcp-echo
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: nginx, namespace: default}}
spec:
  hosts: [my-nginx.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{https: {tls}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {TCP_PORT}, name: tcp, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: {TLS_PORT}, name: tls, protocol: TLS}}
    tls: {{mode: PASSTHROUGH}}
    hosts: [nginx.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: nginx, namespace: default}}
spec:
  hosts: [nginx.example.com]
  gateways: [edge]
  tls:
  - match: [{{port: {TLS_PORT}, sniHosts: [nginx.example.com]}}]
    route: [{{destination: {{host: my-nginx.default.svc.cluster.local, port: {{number: 443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8080, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {api_v1}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api-next, namespace: team}}
spec:
  hosts: [api-next.team.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8080, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {api_v2}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.default.svc.cluster.local]
  http:
  - name: next
    match: [{{uri: {{prefix: /next}}}}]
    delegate: {{name: next, namespace: team}}
  - route: [{{destination: {{host: api.default.svc.cluster.local}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: next, namespace: team}}
spec:
  http:
  - match: [{{headers: {{x-beta: {{exact: "1"}}}}}}]
    route: [{{destination: {{host: api-next.team.svc.cluster.local}}}}]
"#
    )
}

fn tcp_split(v1: u32, v2: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-echo, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [edge]
  tcp:
  - match: [{{port: {TCP_PORT}}}]
    route:
    - {{destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v2}}, weight: {v2}}}
"#
    )
}

/// One TCP connection: the backend's greeting names it, and what is sent comes back.
async fn echo_once(addr: SocketAddr) -> anyhow::Result<String> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        s.shutdown().await?;
        let mut got = String::new();
        s.read_to_string(&mut got).await?;
        let name = got
            .strip_suffix(": ping")
            .ok_or_else(|| anyhow::anyhow!("not an echo: {got:?}"))?;
        Ok::<_, anyhow::Error>(name.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await?
}

async fn tally(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let key = echo_once(addr)
            .await
            .unwrap_or_else(|e| format!("error: {e:#}"));
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// A TLS echo server with its own certificate for `name` (from a CA of its own): greets with
/// `NAME: ` over TLS and echoes. Returns its port, the CA (PEM) and its certificate (DER).
async fn tls_backend(name: &str) -> anyhow::Result<(u16, String, Vec<u8>)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![name.to_string()])?.signed_by(&key, &ca)?;
    let der = cert.der().to_vec();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?,
    )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let greeting = format!("{name}: ");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let greeting = greeting.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.write_all(greeting.as_bytes()).await.is_ok() {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    Ok((port, ca.pem(), der))
}

/// A TLS connection to `addr` with `sni`, trusting `ca`: the greeting and the server's certificate.
async fn tls_once(addr: SocketAddr, sni: &str, ca: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from(sni.to_string())?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = connector.connect(name, tcp).await?;
        let served = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        tls.write_all(b"hello").await?;
        let mut buf = vec![0u8; 64];
        let mut got = Vec::new();
        while !got.ends_with(b"hello") {
            let n = tls.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        Ok::<_, anyhow::Error>((String::from_utf8_lossy(&got).into_owned(), served))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await?
}

async fn tcp_tls_and_delegate_routes(protocol: XdsProtocol) -> anyhow::Result<()> {
    let v1 = TcpEcho::start_at("tcp-echo-v1", "127.0.0.1:0".parse()?)?;
    let v2 = TcpEcho::start_at("tcp-echo-v2", "127.0.0.1:0".parse()?)?;
    let (tls_port, ca, backend_cert) = tls_backend("nginx.example.com").await?;
    let api_v1 = Backend::start("api-v1");
    let api_v2 = Backend::start("api-next");
    let config = ConfigDir::new()?;
    config.write(
        "registry.yaml",
        &registry(
            v1.addr().port(),
            v2.addr().port(),
            tls_port,
            api_v1.port(),
            api_v2.port(),
        ),
    )?;
    config.write("tcp-echo.yaml", &tcp_split(100, 0))?;
    let straitd = Straitd::start(StraitdOptions::new(config.path()))?;
    let spec = ProxySpec::gateway(
        "ingress-1.istio-system",
        "istio-system",
        &[("istio", "ingressgateway")],
        &[TCP_PORT, TLS_PORT],
    )
    .with_xds_protocol(protocol);
    let gateway = data_plane().start(&straitd, &spec)?;
    let tcp = gateway.gateway_addr(TCP_PORT);

    // 100/0: every connection reaches v1; then 0/100: every one reaches v2.
    const N: usize = 40;
    for (w1, w2, only) in [(100, 0, "tcp-echo-v1"), (0, 100, "tcp-echo-v2")] {
        config.replace("tcp-echo.yaml", &tcp_split(w1, w2))?;
        eventually(CONVERGE, || async {
            let t = tally(tcp, N).await;
            anyhow::ensure!(t.get(only) == Some(&N), "{w1}/{w2}: {t:?}");
            Ok(())
        })
        .await?;
    }
    // 50/50 over many connections: both get a fair share.
    config.replace("tcp-echo.yaml", &tcp_split(50, 50))?;
    const SPLIT: usize = 200;
    eventually(CONVERGE, || async {
        let t = tally(tcp, SPLIT).await;
        let (a, b) = (
            t.get("tcp-echo-v1").copied().unwrap_or(0),
            t.get("tcp-echo-v2").copied().unwrap_or(0),
        );
        anyhow::ensure!(a + b == SPLIT, "some connections failed: {t:?}");
        anyhow::ensure!((60..=140).contains(&a), "50/50 gave {t:?}");
        Ok(())
    })
    .await?;

    // TLS passthrough: the gateway holds no certificate for the name, so a handshake that
    // succeeds with the backend's own certificate went through unterminated.
    let tls = gateway.gateway_addr(TLS_PORT);
    let (greeting, served) = eventually(CONVERGE, || async {
        tls_once(tls, "nginx.example.com", &ca).await
    })
    .await?;
    anyhow::ensure!(
        greeting == "nginx.example.com: hello",
        "greeting {greeting:?}"
    );
    anyhow::ensure!(
        served == backend_cert,
        "the client saw another certificate than the backend's"
    );
    // No tls route for this name: the gateway has no chain for it and closes.
    let other = tls_once(tls, "other.example.com", &ca).await;
    anyhow::ensure!(
        other.is_err(),
        "an SNI no route names went through: {other:?}"
    );

    // What the data plane holds: weighted TCP clusters and the SNI chain.
    let dump = gateway.config_dump()?.to_string();
    for needle in [
        "outbound|9000|v1|tcp-echo.default.svc.cluster.local",
        "outbound|9000|v2|tcp-echo.default.svc.cluster.local",
        "nginx.example.com",
    ] {
        anyhow::ensure!(dump.contains(needle), "config dump lacks {needle}");
    }
    if data_plane().name() == "envoy" {
        for needle in [
            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "\"weighted_clusters\"",
            "\"server_names\":[\"nginx.example.com\"]",
            "envoy.filters.listener.tls_inspector",
        ] {
            anyhow::ensure!(dump.contains(needle), "Envoy's config dump lacks {needle}");
        }
    }

    // Delegate: /next with x-beta goes by the delegate's route to api-next. Istio merges the
    // delegate's routes in place of the delegating one, so the rest of /next matches none of
    // them and falls through to the root's next route (api-v1), as other paths do.
    let sidecar = data_plane().start(
        &straitd,
        &ProxySpec::sidecar("client-1.default", "default", &[("app", "client")])
            .with_xds_protocol(protocol),
    )?;
    let client = HttpClient::new();
    let host = "api.default.svc.cluster.local:8080";
    eventually(CONVERGE, || async {
        let resp = client
            .request(
                sidecar.outbound_addr(),
                &Req::get(host, "/next/x").header("x-beta", "1"),
            )
            .await?;
        anyhow::ensure!(resp.status == 200 && resp.body == "api-next", "{resp:?}");
        Ok(())
    })
    .await?;
    let resp = client
        .request(sidecar.outbound_addr(), &Req::get(host, "/next/x"))
        .await?;
    anyhow::ensure!(resp.status == 200 && resp.body == "api-v1", "{resp:?}");
    let resp = client
        .request(
            sidecar.outbound_addr(),
            &Req::get(host, "/other").header("x-beta", "1"),
        )
        .await?;
    anyhow::ensure!(resp.status == 200 && resp.body == "api-v1", "{resp:?}");
    assert_no_nacks(&straitd).await
}

both_protocols!(tcp_tls_and_delegate, super::tcp_tls_and_delegate_routes);
