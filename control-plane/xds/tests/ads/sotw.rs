//! State-of-the-world ADS: handshake, pushes, ordering, stale nonces, NACKs, warming.

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use strait_xds::NodeEvent;
use strait_xds::snapshot::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};

use crate::fixtures::{self, CLUSTER, LISTENER, ROUTE};
use crate::harness::{Client, Harness, ack, first, nack, names, request};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

type Sotw = Client<DiscoveryRequest, DiscoveryResponse>;

/// The Envoy-like opening: CDS, EDS, LDS, RDS, each ACKed. Returns the last response of each
/// type in push order (CDS, EDS, LDS, RDS).
async fn handshake(h: &Harness, node_id: &str, eds: &[&str]) -> (Sotw, [DiscoveryResponse; 4]) {
    let mut c = h.sotw().await;
    c.send(first(node_id, CLUSTER_TYPE, &[])).await;
    let cds = c.recv().await;
    assert_eq!(cds.type_url, CLUSTER_TYPE);
    c.send(request(ENDPOINT_TYPE, eds)).await;
    let eds_resp = c.recv().await;
    assert_eq!(eds_resp.type_url, ENDPOINT_TYPE);
    c.send(request(LISTENER_TYPE, &[])).await;
    // Listeners wait for the cluster and its endpoints to be accepted.
    c.quiet().await;
    c.send(ack(&cds, &[])).await;
    c.quiet().await;
    c.send(ack(&eds_resp, eds)).await;
    let lds = c.recv().await;
    assert_eq!(lds.type_url, LISTENER_TYPE);
    c.send(ack(&lds, &[])).await;
    c.send(request(ROUTE_TYPE, &[ROUTE])).await;
    let rds = c.recv().await;
    assert_eq!(rds.type_url, ROUTE_TYPE);
    c.send(ack(&rds, &[ROUTE])).await;
    c.quiet().await;
    (c, [cds, eds_resp, lds, rds])
}

#[tokio::test]
async fn handshake_answers_each_type_and_records_acks() {
    let mut h = Harness::start().await;
    h.set("n1", fixtures::basic());
    let (_c, [cds, eds, lds, rds]) = handshake(&h, "n1", &[CLUSTER]).await;
    let snapshot = strait_xds::Snapshot::build(fixtures::basic()).unwrap();

    for (response, type_url, expected) in [
        (&cds, CLUSTER_TYPE, CLUSTER),
        (&eds, ENDPOINT_TYPE, CLUSTER),
        (&lds, LISTENER_TYPE, LISTENER),
        (&rds, ROUTE_TYPE, ROUTE),
    ] {
        assert_eq!(response.version_info, snapshot.version(type_url).unwrap());
        assert_eq!(names(response), vec![expected.to_string()]);
        assert!(!response.nonce.is_empty());
    }
    let nonces: std::collections::BTreeSet<_> = [&cds, &eds, &lds, &rds]
        .iter()
        .map(|r| r.nonce.clone())
        .collect();
    assert_eq!(nonces.len(), 4, "nonces are unique");

    match h.event().await {
        strait_xds::NodeEvent::Connected { node, .. } => assert_eq!(node.id, "n1"),
        other => panic!("expected Connected, got {other:?}"),
    }
    let status = h.status("n1");
    assert_eq!(status.protocol, "sotw");
    assert_eq!(status.cluster, "web");
    assert_eq!(status.user_agent, "envoy");
    assert_eq!(status.metadata, serde_json::json!({"NAMESPACE": "default"}));
    assert_eq!(status.types.len(), 4);
    for type_url in [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE] {
        let t = &status.types[type_url];
        assert_eq!(t.acked_version.as_deref(), snapshot.version(type_url));
        assert_eq!(t.sent_version, t.acked_version);
        assert!(t.last_ack_unix_ms.is_some());
        assert!(t.nack.is_none());
        assert_eq!(t.resources, 1);
    }
    let json = serde_json::to_value(h.server.proxies()).unwrap();
    assert_eq!(json[0]["node_id"], "n1");
    let text = h.metrics_text();
    assert!(text.contains("strait_xds_connected_proxies 1"), "{text}");
    assert!(
        text.contains(&format!(
            "strait_xds_acks_total{{type_url=\"{LISTENER_TYPE}\"}} 1"
        )),
        "{text}"
    );
    assert!(text.contains("strait_xds_push_seconds_count 4"), "{text}");
}

#[tokio::test]
async fn stream_waits_for_a_snapshot() {
    let h = Harness::start().await;
    let mut c = h.sotw().await;
    c.send(first("n1", CLUSTER_TYPE, &[])).await;
    c.quiet().await;
    h.set("n1", fixtures::basic());
    let cds = c.recv().await;
    assert_eq!(names(&cds), vec![CLUSTER]);
}

#[tokio::test]
async fn new_snapshot_pushes_only_changed_types_in_order() {
    let h = Harness::start().await;
    h.set("n1", fixtures::basic());
    let (mut c, [_, _, lds, rds]) = handshake(&h, "n1", &[CLUSTER]).await;

    // The same content again is not a change and sends nothing.
    assert!(!h.set("n1", fixtures::basic()));
    c.quiet().await;

    // Change the cluster, its endpoints and the routes; keep the listener.
    let mut changed = fixtures::basic();
    changed.clusters[0] = fixtures::cluster(CLUSTER, 2);
    changed.endpoints[0] = fixtures::load_assignment(CLUSTER, 8081);
    changed.routes[0].virtual_hosts[0].domains = vec!["example.com".into()];
    assert!(h.set("n1", changed));

    let cds = c.recv().await;
    assert_eq!(cds.type_url, CLUSTER_TYPE);
    let eds = c.recv().await;
    assert_eq!(eds.type_url, ENDPOINT_TYPE);
    // Routes wait until clusters and endpoints are accepted.
    c.quiet().await;
    c.send(ack(&cds, &[])).await;
    c.send(ack(&eds, &[CLUSTER])).await;
    let routes = c.recv().await;
    assert_eq!(routes.type_url, ROUTE_TYPE);
    assert_ne!(routes.version_info, rds.version_info);
    c.send(ack(&routes, &[ROUTE])).await;
    c.quiet().await;
    assert_eq!(
        h.status("n1").types[LISTENER_TYPE].sent_nonce.as_deref(),
        Some(lds.nonce.as_str()),
        "listeners were not resent"
    );
}

#[tokio::test]
async fn stale_nonce_is_ignored() {
    let h = Harness::start().await;
    h.set("n1", fixtures::two_clusters());
    let (mut c, [_, eds, _, _]) = handshake(&h, "n1", &[CLUSTER, "other"]).await;

    let mut changed = fixtures::two_clusters();
    changed.endpoints[0] = fixtures::load_assignment(CLUSTER, 8081);
    h.set("n1", changed);
    let eds2 = c.recv().await;
    assert_eq!(eds2.type_url, ENDPOINT_TYPE);

    // A request answering the previous response, even one changing the subscription, is stale.
    c.send(ack(&eds, &[CLUSTER])).await;
    c.quiet().await;
    let status = h.status("n1").types[ENDPOINT_TYPE].clone();
    assert_eq!(status.sent_nonce.as_deref(), Some(eds2.nonce.as_str()));
    assert_eq!(
        status.acked_version.as_deref(),
        Some(eds.version_info.as_str())
    );

    c.send(ack(&eds2, &[CLUSTER, "other"])).await;
    c.quiet().await;
    let status = h.status("n1").types[ENDPOINT_TYPE].clone();
    assert_eq!(
        status.acked_version.as_deref(),
        Some(eds2.version_info.as_str())
    );
}

#[tokio::test]
async fn nack_is_recorded_and_not_resent_until_a_new_version() {
    let mut h = Harness::start().await;
    h.set("n1", fixtures::basic());
    let (mut c, [cds1, _, _, _]) = handshake(&h, "n1", &[CLUSTER]).await;

    let mut bad = fixtures::basic();
    bad.clusters[0] = fixtures::cluster(CLUSTER, 2);
    h.set("n1", bad);
    let cds2 = c.recv().await;
    assert_eq!(cds2.type_url, CLUSTER_TYPE);
    // Sent, not answered: the client holds what it acknowledged, not the latest snapshot.
    assert_eq!(h.held_clusters("n1"), fixtures::basic().clusters);
    let eds2 = c.recv().await;
    assert_eq!(
        eds2.type_url, ENDPOINT_TYPE,
        "endpoints follow a cluster change"
    );
    c.send(ack(&eds2, &[CLUSTER])).await;
    c.send(nack(
        &cds2,
        &cds1.version_info,
        &[],
        "cluster backend: bad timeout",
    ))
    .await;
    c.quiet().await;
    assert_eq!(
        h.held_clusters("n1"),
        fixtures::basic().clusters,
        "a rejected version is not held"
    );

    let status = h.status("n1").types[CLUSTER_TYPE].clone();
    let nack_status = status.nack.expect("nack recorded");
    assert_eq!(nack_status.version, cds2.version_info);
    assert_eq!(nack_status.error_detail, "cluster backend: bad timeout");
    assert_eq!(nack_status.code, 3);
    assert_eq!(nack_status.count, 1);
    assert!(nack_status.at_unix_ms > 0);
    assert_eq!(
        status.acked_version.as_deref(),
        Some(cds1.version_info.as_str())
    );
    assert!(h.metrics_text().contains(&format!(
        "strait_xds_nacks_total{{type_url=\"{CLUSTER_TYPE}\"}} 1"
    )));
    // The controller hears of it once, with every cluster (a wildcard) as what was carried.
    match h.rejection_event().await {
        NodeEvent::Rejected {
            node_id,
            type_url,
            version,
            error,
            names,
        } => {
            assert_eq!((node_id.as_str(), type_url.as_str()), ("n1", CLUSTER_TYPE));
            assert_eq!(version, cds2.version_info);
            assert_eq!(error, "cluster backend: bad timeout");
            assert!(names.is_empty(), "{names:?}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }

    // A later request on the type (same nonce) must not bring the rejected version back.
    c.send(nack(
        &cds2,
        &cds1.version_info,
        &[],
        "cluster backend: bad timeout",
    ))
    .await;
    c.quiet().await;

    let mut fixed = fixtures::basic();
    fixed.clusters[0] = fixtures::cluster(CLUSTER, 3);
    h.set("n1", fixed);
    let cds3 = c.recv().await;
    assert_eq!(cds3.type_url, CLUSTER_TYPE);
    assert_ne!(cds3.version_info, cds2.version_info);
    c.send(ack(&cds3, &[])).await;
    let eds3 = c.recv().await;
    c.send(ack(&eds3, &[CLUSTER])).await;
    c.quiet().await;
    assert_eq!(h.held_clusters("n1"), [fixtures::cluster(CLUSTER, 3)]);
    let status = h.status("n1").types[CLUSTER_TYPE].clone();
    assert_eq!(
        status.acked_version.as_deref(),
        Some(cds3.version_info.as_str())
    );
    let nack_status = status.nack.expect("kept");
    assert_eq!(nack_status.version, cds2.version_info);
    assert!(nack_status.superseded);
    // The repeated NACK told nobody again; the later ACK tells of the recovery, once.
    match h.rejection_event().await {
        NodeEvent::Recovered { node_id, type_url } => {
            assert_eq!((node_id.as_str(), type_url.as_str()), ("n1", CLUSTER_TYPE));
        }
        other => panic!("expected the recovery, got {other:?}"),
    }
    h.no_event();
}

#[tokio::test]
async fn eds_subscription_change_is_answered_with_the_new_names() {
    let h = Harness::start().await;
    h.set("n1", fixtures::two_clusters());
    let (mut c, [_, eds, _, _]) = handshake(&h, "n1", &[CLUSTER, "other"]).await;
    assert_eq!(names(&eds), vec![CLUSTER, "other"]);

    c.send(ack(&eds, &[CLUSTER])).await;
    let narrowed = c.recv().await;
    assert_eq!(names(&narrowed), vec![CLUSTER]);
    assert_eq!(narrowed.version_info, eds.version_info);
    c.send(ack(&narrowed, &[CLUSTER])).await;
    c.quiet().await;

    c.send(ack(&narrowed, &[CLUSTER, "other", "missing"])).await;
    let widened = c.recv().await;
    assert_eq!(
        names(&widened),
        vec![CLUSTER, "other"],
        "only names that exist"
    );
    assert_eq!(h.status("n1").types[ENDPOINT_TYPE].resources, 2);
}

#[tokio::test]
async fn routes_wait_for_new_clusters_and_their_endpoints() {
    let h = Harness::start().await;
    h.set("n1", fixtures::basic());
    let (mut c, [_, _, _, rds]) = handshake(&h, "n1", &[CLUSTER]).await;

    // A canary cluster appears and the route now splits traffic to it.
    let mut canary = fixtures::basic();
    canary.clusters.push(fixtures::cluster("canary", 1));
    canary
        .endpoints
        .push(fixtures::load_assignment("canary", 9000));
    canary.routes[0] = fixtures::route_config(
        ROUTE,
        vec![fixtures::route_to(fixtures::weighted(&[CLUSTER, "canary"]))],
    );
    h.set("n1", canary);

    let cds = c.recv().await;
    assert_eq!(cds.type_url, CLUSTER_TYPE);
    assert_eq!(names(&cds), vec![CLUSTER, "canary"]);
    // Endpoints changed too (a new assignment), answered for what is subscribed.
    let eds = c.recv().await;
    assert_eq!(eds.type_url, ENDPOINT_TYPE);
    assert_eq!(names(&eds), vec![CLUSTER]);
    c.quiet().await;

    c.send(ack(&cds, &[])).await;
    c.quiet().await;
    c.send(ack(&eds, &[CLUSTER])).await;
    // Clusters are accepted, but Envoy has not asked for the canary's endpoints yet.
    c.quiet().await;

    c.send(ack(&eds, &[CLUSTER, "canary"])).await;
    let eds2 = c.recv().await;
    assert_eq!(names(&eds2), vec![CLUSTER, "canary"]);
    c.quiet().await;
    c.send(ack(&eds2, &[CLUSTER, "canary"])).await;

    let routes = c.recv().await;
    assert_eq!(routes.type_url, ROUTE_TYPE);
    assert_ne!(routes.version_info, rds.version_info);
}

#[tokio::test]
async fn a_nack_releases_the_warming_hold() {
    let h = Harness::start().await;
    h.set("n1", fixtures::basic());
    let (mut c, [cds1, _, _, _]) = handshake(&h, "n1", &[CLUSTER]).await;

    let mut changed = fixtures::basic();
    changed.clusters[0] = fixtures::cluster(CLUSTER, 2);
    changed.routes[0].virtual_hosts[0].domains = vec!["example.com".into()];
    h.set("n1", changed);
    let cds = c.recv().await;
    assert_eq!(cds.type_url, CLUSTER_TYPE);
    let eds = c.recv().await;
    assert_eq!(eds.type_url, ENDPOINT_TYPE);
    c.send(ack(&eds, &[CLUSTER])).await;
    c.quiet().await;
    c.send(nack(&cds, &cds1.version_info, &[], "no")).await;
    let routes = c.recv().await;
    assert_eq!(routes.type_url, ROUTE_TYPE);
}

#[tokio::test]
async fn unknown_types_are_not_answered() {
    let h = Harness::start().await;
    h.set("n1", fixtures::basic());
    let mut c = h.sotw().await;
    c.send(first(
        "n1",
        "type.googleapis.com/envoy.service.runtime.v3.Runtime",
        &["cert"],
    ))
    .await;
    c.quiet().await;
    c.send(request(CLUSTER_TYPE, &[])).await;
    assert_eq!(c.recv().await.type_url, CLUSTER_TYPE);
}

#[tokio::test]
async fn cluster_change_resends_unchanged_endpoints() {
    let h = Harness::start().await;
    h.set("n1", fixtures::basic());
    let (mut c, [_, eds1, _, _]) = handshake(&h, "n1", &[CLUSTER]).await;

    let mut changed = fixtures::basic();
    changed.clusters[0] = fixtures::cluster(CLUSTER, 2);
    h.set("n1", changed);
    let cds = c.recv().await;
    assert_eq!(cds.type_url, CLUSTER_TYPE);
    // Envoy finishes warming the updated cluster only on an EDS response.
    let eds = c.recv().await;
    assert_eq!(eds.type_url, ENDPOINT_TYPE);
    assert_eq!(eds.version_info, eds1.version_info);
    assert_eq!(names(&eds), vec![CLUSTER]);
    c.send(ack(&cds, &[])).await;
    c.send(ack(&eds, &[CLUSTER])).await;
    c.quiet().await;
}

#[tokio::test]
async fn secrets_are_served_by_name() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    use strait_xds::snapshot::SECRET_TYPE;
    let h = Harness::start().await;
    let mut resources = fixtures::basic();
    resources.secrets = ["default", "ROOTCA"]
        .map(|name| Secret {
            name: name.to_string(),
            ..Default::default()
        })
        .to_vec();
    h.set("n1", resources);
    let mut c = h.sotw().await;
    c.send(first("n1", SECRET_TYPE, &["ROOTCA"])).await;
    let sds = c.recv().await;
    assert_eq!(sds.type_url, SECRET_TYPE);
    assert_eq!(names(&sds), vec!["ROOTCA"], "only the named secret");
}

#[tokio::test]
async fn private_keys_never_reach_an_unauthenticated_stream() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        Secret, TlsCertificate, secret,
    };
    use strait_xds::snapshot::SECRET_TYPE;
    let h = Harness::start().await;
    let mut resources = fixtures::basic();
    resources.secrets = vec![
        Secret {
            name: "default".to_string(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate::default())),
        },
        Secret {
            name: "ROOTCA".to_string(),
            ..Default::default()
        },
    ];
    resources.secret_owner = Some("spiffe://cluster.local/ns/default/sa/web".to_string());
    h.set("n1", resources);
    // The harness serves plaintext: no identity, so the workload key is withheld.
    let mut c = h.sotw().await;
    c.send(first("n1", SECRET_TYPE, &["default", "ROOTCA"]))
        .await;
    let sds = c.recv().await;
    assert_eq!(
        names(&sds),
        vec!["ROOTCA"],
        "the private key must be withheld"
    );
}
