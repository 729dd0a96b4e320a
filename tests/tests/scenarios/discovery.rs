//! Service discovery by DNS: a ServiceEntry with `resolution: DNS` whose endpoints are host
//! names. Envoy gets a STRICT_DNS cluster and resolves the names itself; so does strait-proxy.

use strait_tests::client::{HttpClient, Req};
use strait_tests::{Backend, XdsProtocol, eventually};

use crate::both_protocols;
use crate::common::{CONVERGE, Plain, assert_no_nacks};

fn dns_service(port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: inventory, namespace: default}}
spec:
  hosts: [inventory.partner.test]
  location: MESH_EXTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: DNS
  endpoints:
  - address: localhost
    ports: {{http: {port}}}
"
    )
}

async fn dns_endpoints_are_resolved_by_the_proxy(protocol: XdsProtocol) -> anyhow::Result<()> {
    let backend = Backend::start("inventory-v1");
    let mesh = Plain::start(
        &[("inventory.yaml", &dns_service(backend.port()))],
        protocol,
    )?;
    let client = HttpClient::new();
    let addr = mesh.proxy.outbound_addr();
    // `localhost` comes from /etc/hosts: the proxy's resolver, not straitd, turns it into
    // 127.0.0.1 (straitd sends the name).
    eventually(CONVERGE, || async {
        let resp = client
            .request(addr, &Req::get("inventory.partner.test:9080", "/"))
            .await?;
        anyhow::ensure!(
            resp.status == 200 && resp.body == "inventory-v1",
            "{resp:?}"
        );
        Ok(())
    })
    .await?;
    anyhow::ensure!(backend.requests() >= 1, "the backend saw no request");
    assert_no_nacks(&mesh.straitd).await
}

both_protocols!(
    dns_service_entry_routes_to_resolved_endpoints,
    super::dns_endpoints_are_resolved_by_the_proxy
);
