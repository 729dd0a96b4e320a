//! RequestAuthentication and AuthorizationPolicy on an ingress gateway: policies that select
//! the gateway apply to what it serves, with the server's port as the policy's port. A client
//! address on a DENY list is refused, a path is closed, a path needs a token, a bad token is
//! 401, and a TCP server refuses connections from a denied address. (On TCP, Istio drops a DENY
//! rule's HTTP-only fields, so a rule without `ports` would deny every connection: the HTTP
//! rules name port 80.)

use std::net::IpAddr;

use strait_tests::client::{HttpClient, Req};
use strait_tests::{
    Backend, ConfigDir, ProxySpec, Straitd, StraitdOptions, data_plane, eventually,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{CONVERGE, assert_no_nacks, get_from};

const HOST: &str = "shop.example.com";
/// An EC public key; no token in this test verifies against it.
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"k1","alg":"ES256"}]}"#;

fn config(backend: u16, echo: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shop, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{HOST}]
  - port: {{number: 9000, name: tcp, protocol: TCP}}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: shop, namespace: istio-system}}
spec:
  hosts: [shop.internal]
  ports: [{{number: 8080, name: http, protocol: HTTP}}, {{number: 9000, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {backend}, tcp: {echo}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: istio-system}}
spec:
  hosts: ['{HOST}']
  gateways: [shop]
  http:
  - route: [{{destination: {{host: shop.internal, port: {{number: 8080}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop-tcp, namespace: istio-system}}
spec:
  hosts: ['*']
  gateways: [shop]
  tcp:
  - match: [{{port: 9000}}]
    route: [{{destination: {{host: shop.internal, port: {{number: 9000}}}}}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: https://issuer.example
    jwks: '{JWKS}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: edge-deny, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - from: [{{source: {{ipBlocks: [127.0.0.2/32]}}}}]
  - to: [{{operation: {{ports: ['80'], paths: ['/admin*']}}}}]
  - to: [{{operation: {{ports: ['80'], paths: ['/private*']}}}}]
    from: [{{source: {{notRequestPrincipals: ['*']}}}}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_enforces_the_jwt_and_authorization_policies_that_select_it() -> anyhow::Result<()>
{
    let backend = Backend::start("shop");
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let echo_port = echo.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let dir = ConfigDir::new()?;
    dir.write("shop.yaml", &config(backend.port(), echo_port))?;
    let straitd = Straitd::start(StraitdOptions::new(dir.path()))?;
    let spec = ProxySpec::gateway(
        "ingress-1.istio-system",
        "istio-system",
        &[("istio", "ingressgateway")],
        &[80, 9000],
    );
    let gateway = data_plane().start(&straitd, &spec)?;
    let addr = gateway.gateway_addr(80);
    let client = HttpClient::without_pooling();
    let allowed: IpAddr = [127, 0, 0, 1].into();
    let denied: IpAddr = [127, 0, 0, 2].into();
    eventually(CONVERGE, || async {
        anyhow::ensure!(get_from(allowed, addr, HOST, "/cart").await? == 200);
        anyhow::ensure!(get_from(denied, addr, HOST, "/cart").await? == 403);
        Ok(())
    })
    .await?;
    let before = backend.requests();
    for (path, status) in [("/admin/users", 403), ("/private/orders", 403), ("/", 200)] {
        anyhow::ensure!(
            get_from(allowed, addr, HOST, path).await? == status,
            "{path} should be {status}"
        );
    }
    anyhow::ensure!(
        backend.requests() == before + 1,
        "only the allowed request reached the backend"
    );
    let resp = client
        .request(
            addr,
            &Req::get(HOST, "/cart").header("authorization", "Bearer not-a-token"),
        )
        .await?;
    anyhow::ensure!(
        resp.status == 401 && resp.body.starts_with("Jwt is not in the form"),
        "a malformed token is refused by jwt_authn: {resp:?}"
    );

    // The TCP server: the denied address's connection is closed before any byte is proxied.
    let tcp = gateway.gateway_addr(9000);
    let exchange = |source: IpAddr| async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        let mut stream = socket.connect(tcp).await?;
        stream.write_all(b"ping").await?;
        let mut got = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            let mut buf = [0u8; 4];
            while got.len() < 4 {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            anyhow::Ok(())
        })
        .await;
        anyhow::Ok((read.is_ok(), got))
    };
    let (_, echoed) = exchange(allowed).await?;
    anyhow::ensure!(echoed == b"ping", "the TCP server proxies: {echoed:?}");
    let (closed, echoed) = exchange(denied).await?;
    anyhow::ensure!(
        closed && echoed.is_empty(),
        "the denied address's connection is closed: {echoed:?}"
    );
    assert_no_nacks(&straitd).await
}
