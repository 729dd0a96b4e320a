//! Incremental ADS: wildcard CDS, initial versions, subscribe/unsubscribe, removals, NACKs.

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use strait_xds::NodeEvent;
use strait_xds::Snapshot;
use strait_xds::snapshot::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, Resources};

use crate::fixtures::{self, CLUSTER, LISTENER, ROUTE};
use crate::harness::{
    Client, Harness, delta_ack, delta_first, delta_nack, delta_names, delta_request,
};

type Delta = Client<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

fn versions(resources: Resources, type_url: &str) -> Vec<(String, String)> {
    let snapshot = Snapshot::build(resources).unwrap();
    snapshot
        .resource_names(type_url)
        .into_iter()
        .map(|name| {
            let version = snapshot
                .resource_version(type_url, &name)
                .unwrap()
                .to_string();
            (name, version)
        })
        .collect()
}

async fn handshake(
    h: &Harness,
    node_id: &str,
    eds: &[&str],
) -> (Delta, [DeltaDiscoveryResponse; 4]) {
    let mut c = h.delta().await;
    c.send(delta_first(node_id, CLUSTER_TYPE, &[], &[])).await;
    let cds = c.recv().await;
    assert_eq!(cds.type_url, CLUSTER_TYPE);
    c.send(delta_request(ENDPOINT_TYPE, eds)).await;
    let eds_resp = c.recv().await;
    assert_eq!(eds_resp.type_url, ENDPOINT_TYPE);
    c.send(delta_request(LISTENER_TYPE, &[])).await;
    c.quiet().await;
    c.send(delta_ack(&cds)).await;
    c.quiet().await;
    c.send(delta_ack(&eds_resp)).await;
    let lds = c.recv().await;
    assert_eq!(lds.type_url, LISTENER_TYPE);
    c.send(delta_ack(&lds)).await;
    c.send(delta_request(ROUTE_TYPE, &[ROUTE])).await;
    let rds = c.recv().await;
    assert_eq!(rds.type_url, ROUTE_TYPE);
    c.send(delta_ack(&rds)).await;
    c.quiet().await;
    (c, [cds, eds_resp, lds, rds])
}

#[tokio::test]
async fn wildcard_handshake_sends_every_resource_once() {
    let h = Harness::start().await;
    h.set("n1", fixtures::basic());
    let (_c, responses) = handshake(&h, "n1", &[CLUSTER]).await;
    let snapshot = Snapshot::build(fixtures::basic()).unwrap();
    for (response, name) in responses.iter().zip([CLUSTER, CLUSTER, LISTENER, ROUTE]) {
        let type_url = response.type_url.as_str();
        assert_eq!(
            response.system_version_info,
            snapshot.version(type_url).unwrap()
        );
        assert_eq!(
            delta_names(response).into_iter().collect::<Vec<_>>(),
            vec![(
                name.to_string(),
                snapshot
                    .resource_version(type_url, name)
                    .unwrap()
                    .to_string()
            )]
        );
        assert!(response.removed_resources.is_empty());
    }
    let status = h.status("n1");
    assert_eq!(status.protocol, "delta");
    for type_url in [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE] {
        let t = &status.types[type_url];
        assert_eq!(t.resources, 1);
        assert_eq!(t.acked_version.as_deref(), snapshot.version(type_url));
    }
}

#[tokio::test]
async fn initial_resource_versions_avoid_resending_what_the_client_has() {
    let h = Harness::start().await;
    h.set("n1", fixtures::basic());
    let [(name, version)]: [(String, String); 1] = versions(fixtures::basic(), CLUSTER_TYPE)
        .try_into()
        .unwrap();

    let mut c = h.delta().await;
    c.send(delta_first("n1", CLUSTER_TYPE, &[], &[(&name, &version)]))
        .await;
    let cds = c.recv().await;
    assert!(cds.resources.is_empty(), "identical cluster not resent");
    assert!(cds.removed_resources.is_empty());
    c.send(delta_ack(&cds)).await;
    c.quiet().await;
    assert_eq!(h.status("n1").types[CLUSTER_TYPE].resources, 1);

    // Another proxy that held an older cluster and one that no longer exists.
    let mut c2 = h.delta().await;
    c2.send(delta_first(
        "n2",
        CLUSTER_TYPE,
        &[],
        &[(CLUSTER, "old"), ("gone", "x")],
    ))
    .await;
    c2.quiet().await; // n2 has no snapshot yet
    h.set("n2", fixtures::basic());
    let cds = c2.recv().await;
    assert_eq!(delta_names(&cds).keys().collect::<Vec<_>>(), vec![CLUSTER]);
    assert_eq!(cds.removed_resources, vec!["gone".to_string()]);
}

#[tokio::test]
async fn subscribe_and_unsubscribe() {
    let h = Harness::start().await;
    h.set("n1", fixtures::two_clusters());
    let mut c = h.delta().await;
    c.send(delta_first("n1", CLUSTER_TYPE, &[], &[])).await;
    let cds = c.recv().await;
    assert_eq!(delta_names(&cds).len(), 2);
    c.send(delta_ack(&cds)).await;

    c.send(delta_request(ENDPOINT_TYPE, &[CLUSTER])).await;
    let eds = c.recv().await;
    assert_eq!(delta_names(&eds).keys().collect::<Vec<_>>(), vec![CLUSTER]);
    c.send(delta_ack(&eds)).await;

    c.send(delta_request(ENDPOINT_TYPE, &["other"])).await;
    let eds = c.recv().await;
    assert_eq!(
        delta_names(&eds).keys().collect::<Vec<_>>(),
        vec!["other"],
        "only the new name"
    );
    c.send(delta_ack(&eds)).await;
    c.quiet().await;
    assert_eq!(h.status("n1").types[ENDPOINT_TYPE].resources, 2);

    c.send(DeltaDiscoveryRequest {
        resource_names_unsubscribe: vec!["other".into()],
        ..delta_request(ENDPOINT_TYPE, &[])
    })
    .await;
    c.quiet().await;
    assert_eq!(h.status("n1").types[ENDPOINT_TYPE].resources, 1);

    // Subscribing again sends it again: the client dropped it.
    c.send(delta_request(ENDPOINT_TYPE, &["other"])).await;
    let eds = c.recv().await;
    assert_eq!(delta_names(&eds).keys().collect::<Vec<_>>(), vec!["other"]);
}

#[tokio::test]
async fn removed_cluster_is_reported_as_removed() {
    let h = Harness::start().await;
    h.set("n1", fixtures::two_clusters());
    let (mut c, _) = handshake(&h, "n1", &[CLUSTER, "other"]).await;

    h.set("n1", fixtures::basic());
    let cds = c.recv().await;
    assert_eq!(cds.type_url, CLUSTER_TYPE);
    assert!(cds.resources.is_empty());
    assert_eq!(cds.removed_resources, vec!["other".to_string()]);
    let eds = c.recv().await;
    assert_eq!(eds.type_url, ENDPOINT_TYPE);
    assert!(eds.resources.is_empty());
    assert_eq!(eds.removed_resources, vec!["other".to_string()]);
    c.send(delta_ack(&cds)).await;
    c.send(delta_ack(&eds)).await;
    c.quiet().await;
    assert_eq!(h.status("n1").types[CLUSTER_TYPE].resources, 1);
}

#[tokio::test]
async fn nack_is_recorded_and_the_rejected_version_not_resent() {
    let mut h = Harness::start().await;
    h.set("n1", fixtures::basic());
    let (mut c, [cds1, _, _, _]) = handshake(&h, "n1", &[CLUSTER]).await;

    let mut bad = fixtures::basic();
    bad.clusters[0] = fixtures::cluster(CLUSTER, 2);
    h.set("n1", bad);
    let cds2 = c.recv().await;
    assert_eq!(delta_names(&cds2).len(), 1);
    // Sent, not answered: the client holds what it acknowledged, not the latest snapshot.
    assert_eq!(h.held_clusters("n1"), fixtures::basic().clusters);
    let eds2 = c.recv().await;
    assert_eq!(
        eds2.type_url, ENDPOINT_TYPE,
        "endpoints follow a cluster change"
    );
    c.send(delta_ack(&eds2)).await;
    c.send(delta_nack(&cds2, "bad cluster")).await;
    c.quiet().await;
    assert_eq!(
        h.held_clusters("n1"),
        fixtures::basic().clusters,
        "a rejected version is not held"
    );

    let status = h.status("n1").types[CLUSTER_TYPE].clone();
    let nack = status.nack.expect("nack recorded");
    assert_eq!(nack.version, cds2.system_version_info);
    assert_eq!(nack.error_detail, "bad cluster");
    // The controller hears which resources the rejected response carried.
    match h.rejection_event().await {
        NodeEvent::Rejected {
            node_id,
            type_url,
            names,
            ..
        } => {
            assert_eq!((node_id.as_str(), type_url.as_str()), ("n1", CLUSTER_TYPE));
            assert_eq!(names, vec![CLUSTER.to_string()]);
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        status.acked_version.as_deref(),
        Some(cds1.system_version_info.as_str())
    );

    // An unrelated subscription change does not bring the rejected cluster back.
    c.send(delta_request(ENDPOINT_TYPE, &["nope"])).await;
    c.quiet().await;

    let mut fixed = fixtures::basic();
    fixed.clusters[0] = fixtures::cluster(CLUSTER, 3);
    h.set("n1", fixed.clone());
    let cds3 = c.recv().await;
    let [(_, version)]: [(String, String); 1] = versions(fixed, CLUSTER_TYPE).try_into().unwrap();
    assert_eq!(delta_names(&cds3).get(CLUSTER), Some(&version));
    c.send(delta_ack(&cds3)).await;
    let eds3 = c.recv().await;
    c.send(delta_ack(&eds3)).await;
    c.quiet().await;
    assert_eq!(h.held_clusters("n1"), [fixtures::cluster(CLUSTER, 3)]);
    assert_eq!(
        h.status("n1").types[CLUSTER_TYPE].acked_version.as_deref(),
        Some(cds3.system_version_info.as_str())
    );
    assert!(matches!(
        h.rejection_event().await,
        NodeEvent::Recovered { type_url, .. } if type_url == CLUSTER_TYPE
    ));
}

#[tokio::test]
async fn routes_wait_for_new_cluster_endpoints() {
    let h = Harness::start().await;
    h.set("n1", fixtures::basic());
    let (mut c, _) = handshake(&h, "n1", &[CLUSTER]).await;

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
    assert_eq!(delta_names(&cds).keys().collect::<Vec<_>>(), vec!["canary"]);
    c.quiet().await;
    c.send(delta_ack(&cds)).await;
    c.quiet().await;
    c.send(delta_request(ENDPOINT_TYPE, &["canary"])).await;
    let eds = c.recv().await;
    assert_eq!(delta_names(&eds).keys().collect::<Vec<_>>(), vec!["canary"]);
    c.quiet().await;
    c.send(delta_ack(&eds)).await;
    let rds = c.recv().await;
    assert_eq!(rds.type_url, ROUTE_TYPE);
}

#[tokio::test]
async fn unknown_types_get_nothing() {
    let h = Harness::start().await;
    h.set("n1", fixtures::basic());
    let mut c = h.delta().await;
    c.send(delta_first(
        "n1",
        "type.googleapis.com/envoy.service.runtime.v3.Runtime",
        &["cert"],
        &[],
    ))
    .await;
    c.quiet().await;
    c.send(delta_request(CLUSTER_TYPE, &[])).await;
    assert_eq!(c.recv().await.type_url, CLUSTER_TYPE);
}

#[tokio::test]
async fn cluster_change_resends_its_endpoints() {
    let h = Harness::start().await;
    h.set("n1", fixtures::two_clusters());
    let (mut c, [_, eds1, _, _]) = handshake(&h, "n1", &[CLUSTER, "other"]).await;

    let mut changed = fixtures::two_clusters();
    changed.clusters[0] = fixtures::cluster(CLUSTER, 2);
    h.set("n1", changed);
    let cds = c.recv().await;
    assert_eq!(delta_names(&cds).keys().collect::<Vec<_>>(), vec![CLUSTER]);
    // Only the changed cluster's assignment, unchanged, so Envoy can finish warming it.
    let eds = c.recv().await;
    assert_eq!(eds.type_url, ENDPOINT_TYPE);
    assert_eq!(
        delta_names(&eds).get(CLUSTER),
        delta_names(&eds1).get(CLUSTER)
    );
    assert_eq!(delta_names(&eds).len(), 1);
    c.send(delta_ack(&cds)).await;
    c.send(delta_ack(&eds)).await;
    c.quiet().await;
}
