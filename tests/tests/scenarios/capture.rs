//! Transparent capture: pods in network namespaces of their own, their traffic captured by the
//! rules `strait-proxy iptables` installs, apps that know nothing of the mesh.
//!
//! The hub namespace holds straitd and the service backends (10.77.0.1); pod `client`
//! (10.77.0.2) calls services by their VIPs (ServiceEntry `addresses`, 10.96.0.0/16, which
//! exist nowhere: only the sidecar's routing makes them answer); pod `ratings` (10.77.0.3) runs
//! an app on its own port behind a captured inbound side with STRICT mTLS and a DENY policy.
//! Sidecars run as uid and gid 1337, which the capture rules leave alone. Needs root, `ip` and
//! `iptables` (see `strait_tests::netns`).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use strait_tests::backend::TcpEcho;
use strait_tests::client::{HttpClient, Req, Resp};
use strait_tests::envoy::{Envoy, XdsTarget};
use strait_tests::netns::{HUB_V4, Network, Pod, PodProxy};
use strait_tests::strait_proxy::StraitProxy;
use strait_tests::{
    Backend, ConfigDir, DataPlane, ProxySpec, Straitd, StraitdOptions, data_plane,
    eventually_blocking,
};

use crate::common::{CONVERGE, assert_no_nacks};

const WEB_VIP: &str = "10.96.0.10";
const WEB_VIP6: &str = "fd00:96::10";
const DB_VIP: &str = "10.96.0.20";
const RATINGS_VIP: &str = "10.96.0.30";
const RATINGS_PORT: u16 = 9080;

/// Everything a capture scenario runs; dropped proxies first, the network last.
struct Pods {
    client: PodProxy,
    server: PodProxy,
    straitd: Straitd,
    _config: ConfigDir,
    _web: [Backend; 2],
    outside: Backend,
    _db: TcpEcho,
    ratings_app: Backend,
    client_pod: Pod,
    net: Network,
}

fn mesh_yaml(web: &[Backend; 2], db: &TcpEcho, ratings: IpAddr) -> String {
    let (v1, v2, db) = (web[0].port(), web[1].port(), db.addr().port());
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web}}
spec:
  hosts: [web.default.svc.cluster.local]
  addresses: [{WEB_VIP}, '{WEB_VIP6}']
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-v1}}
spec: {{address: {HUB_V4}, ports: {{http: {v1}}}, labels: {{app: web, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-v2}}
spec: {{address: {HUB_V4}, ports: {{http: {v2}}}, labels: {{app: web, version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web}}
spec:
  host: web.default.svc.cluster.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: [web.default.svc.cluster.local]
  http:
  - match: [{{headers: {{x-canary: {{exact: 'yes'}}}}}}]
    route: [{{destination: {{host: web.default.svc.cluster.local, subset: v2}}}}]
  - route:
    - {{destination: {{host: web.default.svc.cluster.local, subset: v1}}, weight: 80}}
    - {{destination: {{host: web.default.svc.cluster.local, subset: v2}}, weight: 20}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [db.default.svc.cluster.local]
  addresses: [{DB_VIP}]
  location: MESH_INTERNAL
  ports: [{{number: 7000, name: tcp-echo, protocol: TCP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: db}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: db-1}}
spec: {{address: {HUB_V4}, ports: {{tcp-echo: {db}}}, labels: {{app: db}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  addresses: [{RATINGS_VIP}]
  location: MESH_INTERNAL
  ports: [{{number: {RATINGS_PORT}, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-v1}}
spec:
  address: {ratings}
  ports: {{http: {RATINGS_PORT}}}
  labels: {{app: ratings, version: v1, security.istio.io/tlsMode: istio}}
  serviceAccount: ratings
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ratings-no-admin}}
spec:
  selector: {{matchLabels: {{app: ratings}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/admin*]}}}}]}}]
"
    )
}

impl Pods {
    /// The whole set-up, the client sidecar on `client_plane` and the server's on
    /// `server_plane`; `None` where this machine cannot make namespaces (said so).
    fn start(
        test: &str,
        mesh_config: Option<&str>,
        client_plane: &dyn DataPlane,
        server_plane: &dyn DataPlane,
    ) -> anyhow::Result<Option<Pods>> {
        if !strait_tests::netns::available(test) {
            return Ok(None);
        }
        let net = Network::new()?;
        let client_pod = net.pod("client")?;
        let server_pod = net.pod("ratings")?;
        let hub = net.hub().clone();
        let at_hub = SocketAddr::new(IpAddr::V4(HUB_V4), 0);
        let (web, outside, db) = hub.enter(|| -> anyhow::Result<_> {
            Ok((
                [
                    Backend::start_at("web-v1", at_hub)?,
                    Backend::start_at("web-v2", at_hub)?,
                ],
                Backend::start_at("outside", at_hub)?,
                TcpEcho::start_at("db-1", at_hub)?,
            ))
        })?;
        let ratings_addr = SocketAddr::new(IpAddr::V4(server_pod.v4), RATINGS_PORT);
        let ratings_app = server_pod.enter(|| Backend::start_at("ratings-app", ratings_addr))?;

        let config = ConfigDir::new()?;
        config.write(
            "mesh.yaml",
            &mesh_yaml(&web, &db, IpAddr::V4(server_pod.v4)),
        )?;
        let mut options = StraitdOptions::new(config.path());
        options.xds_ip = Some(IpAddr::V4(HUB_V4));
        if let Some(mesh) = mesh_config {
            let path = config.path().join("../meshconfig.yaml");
            std::fs::write(&path, mesh)?;
            options.extra_args = vec!["--mesh-config".into(), path.display().to_string()];
        }
        let straitd = hub.spawn_from(move || Straitd::start(options))??;

        for pod in [&client_pod, &server_pod] {
            pod.capture(&[])?;
        }
        let client_spec = ProxySpec::sidecar("client-1.default", "default", &[("app", "client")])
            .secure("client");
        let server_spec = ProxySpec::sidecar(
            "ratings-v1.default",
            "default",
            &[("app", "ratings"), ("version", "v1")],
        )
        .secure("ratings");
        let client_xds = XdsTarget::for_spec(&straitd, &client_spec)?;
        let server_xds = XdsTarget::for_spec(&straitd, &server_spec)?;
        let server = server_pod.start_proxy(server_plane, &server_xds, server_spec)?;
        let client = client_pod.start_proxy(client_plane, &client_xds, client_spec)?;
        Ok(Some(Pods {
            client,
            server,
            straitd,
            _config: config,
            _web: web,
            outside,
            _db: db,
            ratings_app,
            client_pod,
            net,
        }))
    }

    /// A request from the client pod's app to `addr`, as the app would send it: no proxy
    /// settings, the destination's own address.
    fn app_request(&self, addr: SocketAddr, req: &Req) -> anyhow::Result<Resp> {
        self.client_pod
            .block_on(async { HttpClient::without_pooling().request(addr, req).await })
    }

    /// `n` requests from the client pod's app, tallied by answer.
    fn tally(
        &self,
        n: usize,
        addr: SocketAddr,
        req: &Req,
    ) -> std::collections::BTreeMap<String, usize> {
        self.client_pod
            .block_on(strait_tests::client::send_many(n, addr, req))
    }

    /// Sends `text` over TCP from the client pod's app to `addr`, half-closes, and reads the
    /// answer to the end.
    fn tcp_app_request(&self, addr: SocketAddr, text: &str) -> anyhow::Result<String> {
        self.client_pod.enter(|| -> anyhow::Result<String> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(text.as_bytes())?;
            stream.shutdown(std::net::Shutdown::Write)?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        })
    }

    fn no_nacks(&self) -> anyhow::Result<()> {
        self.net.hub().block_on(assert_no_nacks(&self.straitd))
    }

    fn label(&self) -> String {
        format!(
            "{} client, {} server",
            self.client.plane(),
            self.server.plane()
        )
    }
}

fn vip(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("a VIP"), port)
}

/// Waits for routing by VIP to answer at all (the sidecar has its listeners).
fn converge(pods: &Pods) -> anyhow::Result<()> {
    eventually_blocking(CONVERGE, || {
        let resp = pods.app_request(vip(WEB_VIP, 80), &Req::get("web", "/"))?;
        anyhow::ensure!(resp.status == 200, "{resp:?}");
        Ok(())
    })
    .map_err(|e| anyhow::anyhow!("{}: web by its VIP never answered: {e:#}", pods.label()))
}

/// An app calls HTTP services by VIP (with the VirtualService's split and header route), a TCP
/// service by VIP (half-close crossing the proxy), and an address the mesh does not know
/// (ALLOW_ANY: passed through). On the other pod, STRICT mTLS: the meshed call arrives with the
/// caller's identity, a plaintext caller outside the mesh is refused, and DENY is enforced.
fn outbound_and_inbound(pods: &Pods) -> anyhow::Result<()> {
    let label = pods.label();
    converge(pods)?;

    let tally = pods.tally(100, vip(WEB_VIP, 80), &Req::get("web", "/"));
    let (v1, v2) = (
        tally.get("web-v1").copied().unwrap_or(0),
        tally.get("web-v2").copied().unwrap_or(0),
    );
    anyhow::ensure!(
        v1 + v2 == 100 && v1 > v2 && v2 > 0,
        "{label}: an 80/20 split by VIP: {tally:?}"
    );
    // The VIP as the Host (with and without the port) is the same service, as in Istio.
    for host in [WEB_VIP.to_string(), format!("{WEB_VIP}:80")] {
        let resp = pods.app_request(vip(WEB_VIP, 80), &Req::get(host.as_str(), "/"))?;
        anyhow::ensure!(
            resp.status == 200 && resp.body.starts_with("web-v"),
            "{label}: Host {host}: {resp:?}"
        );
    }
    // IPv6: the same service by its v6 VIP (ip6tables, SO_ORIGINAL_DST for IPv6).
    let resp = pods.app_request(vip(WEB_VIP6, 80), &Req::get("web", "/"))?;
    anyhow::ensure!(
        resp.status == 200 && resp.body.starts_with("web-v"),
        "{label}: web by its IPv6 VIP: {resp:?}"
    );
    let canary = pods.tally(
        10,
        vip(WEB_VIP, 80),
        &Req::get("web", "/").header("x-canary", "yes"),
    );
    anyhow::ensure!(
        canary.get("web-v2") == Some(&10),
        "{label}: the header route sends all to v2: {canary:?}"
    );

    let echoed = pods.tcp_app_request(vip(DB_VIP, 7000), "hello through the mesh")?;
    anyhow::ensure!(
        echoed == "db-1: hello through the mesh",
        "{label}: TCP by VIP: {echoed:?}"
    );

    // Not in the registry: ALLOW_ANY (the default) passes it through to where it was going.
    let resp = pods.app_request(pods.outside.addr(), &Req::get("outside", "/"))?;
    anyhow::ensure!(
        resp.status == 200 && resp.body == "outside",
        "{label}: passthrough: {resp:?}"
    );

    let ratings = vip(RATINGS_VIP, RATINGS_PORT);
    let resp = eventually_blocking(CONVERGE, || {
        let resp = pods.app_request(ratings, &Req::get("ratings", "/").echo())?;
        anyhow::ensure!(resp.status == 200, "{resp:?}");
        Ok(resp)
    })
    .map_err(|e| anyhow::anyhow!("{label}: ratings by VIP: {e:#}"))?;
    let xfcc = resp.json()?["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    anyhow::ensure!(
        xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/client"),
        "{label}: the app sees the caller's identity: {xfcc:?}"
    );
    let denied = pods.app_request(ratings, &Req::get("ratings", "/admin/users"))?;
    anyhow::ensure!(denied.status == 403, "{label}: DENY /admin*: {denied:?}");

    // Outside the mesh, straight to the pod's address: STRICT refuses plaintext.
    let served = pods.ratings_app.requests();
    let direct = SocketAddr::new(pods.ratings_app.addr().ip(), RATINGS_PORT);
    let refused = pods.net.hub().block_on(async {
        HttpClient::without_pooling()
            .request(direct, &Req::get("ratings", "/"))
            .await
    });
    anyhow::ensure!(
        refused.as_ref().map_or(true, |r| r.status != 200),
        "{label}: STRICT lets plaintext in: {refused:?}"
    );
    anyhow::ensure!(
        pods.ratings_app.requests() == served,
        "{label}: the plaintext request reached the app"
    );
    Ok(())
}

fn captured_listeners_in_dump(pods: &Pods) -> anyhow::Result<()> {
    for proxy in [&pods.client, &pods.server] {
        let dump = proxy.config_dump()?.to_string();
        for name in ["virtualOutbound", "virtualInbound"] {
            anyhow::ensure!(
                dump.contains(&format!("\"{name}\"")),
                "{}: no {name} listener in its config dump",
                proxy.plane()
            );
        }
    }
    Ok(())
}

#[test]
fn captured_pods_route_by_original_destination() -> anyhow::Result<()> {
    let plane = data_plane();
    let Some(pods) = Pods::start(
        "captured_pods_route_by_original_destination",
        None,
        &*plane,
        &*plane,
    )?
    else {
        return Ok(());
    };
    outbound_and_inbound(&pods)?;
    captured_listeners_in_dump(&pods)?;
    pods.no_nacks()
}

/// Stock Envoy and strait-proxy on either side of the same captured, mTLS call.
#[test]
fn captured_mixed_data_planes_talk_both_ways() -> anyhow::Result<()> {
    for (client, server) in [
        (&Envoy as &dyn DataPlane, &StraitProxy as &dyn DataPlane),
        (&StraitProxy as &dyn DataPlane, &Envoy as &dyn DataPlane),
    ] {
        let Some(pods) = Pods::start(
            "captured_mixed_data_planes_talk_both_ways",
            None,
            client,
            server,
        )?
        else {
            return Ok(());
        };
        outbound_and_inbound(&pods)?;
        pods.no_nacks()?;
    }
    Ok(())
}

/// REGISTRY_ONLY: what the mesh does not know is refused (HTTP and TCP alike) and counted as
/// Envoy counts it, on the black hole cluster; what it knows still flows.
#[test]
fn registry_only_refuses_unknown_destinations() -> anyhow::Result<()> {
    let plane = data_plane();
    let Some(pods) = Pods::start(
        "registry_only_refuses_unknown_destinations",
        Some("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n"),
        &*plane,
        &*plane,
    )?
    else {
        return Ok(());
    };
    converge(&pods)?;
    let label = pods.label();
    let count = || {
        pods.client.counter(
            "cluster.BlackHoleCluster.upstream_cx_none_healthy",
            "strait_proxy_upstream_none_healthy_total{cluster=\"BlackHoleCluster\"}",
        )
    };
    let before = count()?;
    let resp = pods.app_request(pods.outside.addr(), &Req::get("outside", "/"));
    anyhow::ensure!(
        resp.as_ref().map_or(true, |r| r.status != 200),
        "{label}: REGISTRY_ONLY let an unknown destination through: {resp:?}"
    );
    anyhow::ensure!(
        pods.outside.requests() == 0,
        "{label}: the unknown destination was reached"
    );
    let after = count()?;
    anyhow::ensure!(
        after > before,
        "{label}: the refusal is counted on BlackHoleCluster ({before} -> {after})"
    );
    let resp = pods.app_request(vip(WEB_VIP, 80), &Req::get("web", "/"))?;
    anyhow::ensure!(
        resp.status == 200,
        "{label}: known services still flow: {resp:?}"
    );
    pods.no_nacks()
}
