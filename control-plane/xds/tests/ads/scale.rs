//! What keeps a large mesh cheap: resources encoded once and shared by part, a changed part
//! compared by the names it changed, one un-ACKed response per type with later changes
//! coalescing into the next.

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use strait_xds::Snapshot;
use strait_xds::snapshot::{
    CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, Part, ROUTE_TYPE, Resources,
};

use crate::fixtures::{self, CLUSTER, LISTENER, ROUTE};
use crate::harness::{
    Client, Harness, ack, delta_ack, delta_first, delta_names, delta_request, first, names, request,
};

type Delta = Client<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

/// The mesh's clusters and endpoints: `backend` and `other`, `other` on `port`.
fn mesh(port: u32) -> Resources {
    Resources {
        clusters: vec![fixtures::cluster(CLUSTER, 1), fixtures::cluster("other", 1)],
        endpoints: vec![
            fixtures::load_assignment(CLUSTER, 8080),
            fixtures::load_assignment("other", port),
        ],
        ..Default::default()
    }
}

/// One proxy shape's own listener and routes.
fn shape() -> Arc<Part> {
    Arc::new(
        Part::build(Resources {
            listeners: vec![fixtures::listener(LISTENER, ROUTE)],
            routes: vec![fixtures::route_config(
                ROUTE,
                vec![fixtures::route_to(fixtures::single(CLUSTER))],
            )],
            ..Default::default()
        })
        .unwrap(),
    )
}

fn compose(mesh: &Arc<Part>, shape: &Arc<Part>) -> Arc<Snapshot> {
    Arc::new(Snapshot::compose(vec![mesh.clone(), shape.clone()], None).unwrap())
}

#[test]
fn snapshots_share_parts_and_a_successor_knows_what_changed() {
    let mesh1 = Arc::new(Part::build(mesh(9090)).unwrap());
    let (a, b) = (compose(&mesh1, &shape()), compose(&mesh1, &shape()));
    let bytes = |s: &Snapshot| s.get(ENDPOINT_TYPE, "other").unwrap().bytes.as_ptr();
    assert_eq!(bytes(&a), bytes(&b), "one encoding, referenced by both");
    assert_eq!(a.version(ROUTE_TYPE), b.version(ROUTE_TYPE));

    let mesh2 = Arc::new(Part::build(mesh(9191)).unwrap().succeeding(&mesh1));
    let endpoints = 1;
    let changed: Vec<&str> = mesh2
        .changed_since(&mesh1, endpoints)
        .unwrap()
        .iter()
        .map(|n| &**n)
        .collect();
    assert_eq!(changed, ["other"]);
    assert_eq!(
        mesh2.changed_since(&mesh1, 0).unwrap().len(),
        0,
        "no cluster changed"
    );
    let mesh3 = Arc::new(Part::build(mesh(9292)).unwrap().succeeding(&mesh2));
    assert_eq!(
        mesh3.changed_since(&mesh1, endpoints).unwrap().len(),
        1,
        "two generations back"
    );
    let unrelated = Arc::new(Part::build(mesh(9090)).unwrap());
    assert!(mesh3.changed_since(&unrelated, endpoints).is_none());

    // A composition that names a cluster no part has is refused.
    let lonely = Snapshot::compose(vec![shape()], None)
        .unwrap_err()
        .to_string();
    assert!(lonely.contains("backend"), "{lonely}");
}

async fn delta_handshake(h: &Harness, node_id: &str) -> Delta {
    let mut c = h.delta().await;
    c.send(delta_first(node_id, CLUSTER_TYPE, &[], &[])).await;
    let cds = c.recv().await;
    c.send(delta_ack(&cds)).await;
    c.send(delta_request(ENDPOINT_TYPE, &[CLUSTER, "other"]))
        .await;
    let eds = c.recv().await;
    c.send(delta_ack(&eds)).await;
    c.send(delta_request(LISTENER_TYPE, &[])).await;
    let lds = c.recv().await;
    c.send(delta_ack(&lds)).await;
    c.send(delta_request(ROUTE_TYPE, &[ROUTE])).await;
    let rds = c.recv().await;
    c.send(delta_ack(&rds)).await;
    c.quiet().await;
    c
}

#[tokio::test]
async fn delta_sends_only_the_changed_endpoint_once_per_ack_and_coalesces_the_rest() {
    let h = Harness::start().await;
    let shape = shape();
    let mut mesh_part = Arc::new(Part::build(mesh(9000)).unwrap());
    h.cache.set("n1", compose(&mesh_part, &shape));
    let mut c = delta_handshake(&h, "n1").await;

    // One endpoint moves: only that assignment goes out, nothing else.
    let next = |previous: &Arc<Part>, port| {
        Arc::new(Part::build(mesh(port)).unwrap().succeeding(previous))
    };
    mesh_part = next(&mesh_part, 9001);
    h.cache.set("n1", compose(&mesh_part, &shape));
    let first_change = c.recv().await;
    assert_eq!(first_change.type_url, ENDPOINT_TYPE);
    assert_eq!(
        delta_names(&first_change).keys().collect::<Vec<_>>(),
        ["other"]
    );
    assert!(first_change.removed_resources.is_empty());

    // Two more moves before the client ACKs: nothing more is sent while one is in flight...
    mesh_part = next(&mesh_part, 9002);
    h.cache.set("n1", compose(&mesh_part, &shape));
    mesh_part = next(&mesh_part, 9003);
    let latest = compose(&mesh_part, &shape);
    h.cache.set("n1", latest.clone());
    c.quiet().await;
    // ...and the ACK releases one response with the latest version only.
    c.send(delta_ack(&first_change)).await;
    let coalesced = c.recv().await;
    assert_eq!(coalesced.type_url, ENDPOINT_TYPE);
    assert_eq!(
        delta_names(&coalesced).into_iter().collect::<Vec<_>>(),
        [(
            "other".to_string(),
            latest.resource_version(ENDPOINT_TYPE, "other").unwrap()
        )]
    );
    assert_eq!(
        coalesced.system_version_info,
        latest.version(ENDPOINT_TYPE).unwrap()
    );
    c.send(delta_ack(&coalesced)).await;
    c.quiet().await;

    // Convergence is measured on ACK, per type.
    let metrics = h.metrics_text();
    let line = format!("strait_xds_convergence_seconds_count{{type_url=\"{ENDPOINT_TYPE}\"}} 3");
    assert!(metrics.contains(&line), "missing {line} in {metrics}");
}

#[tokio::test]
async fn sotw_keeps_one_unacked_response_per_type() {
    let h = Harness::start().await;
    h.set("n1", fixtures::basic());
    let mut c = h.sotw().await;
    c.send(first("n1", CLUSTER_TYPE, &[])).await;
    let cds = c.recv().await;
    c.send(ack(&cds, &[])).await;
    c.send(request(ENDPOINT_TYPE, &[CLUSTER])).await;
    let eds = c.recv().await;
    // Not ACKed yet: two changes of the endpoints wait.
    let mut changed = fixtures::basic();
    changed.endpoints[0] = fixtures::load_assignment(CLUSTER, 8081);
    h.set("n1", changed.clone());
    changed.endpoints[0] = fixtures::load_assignment(CLUSTER, 8082);
    h.set("n1", changed.clone());
    c.quiet().await;
    c.send(ack(&eds, &[CLUSTER])).await;
    let latest = c.recv().await;
    assert_eq!(latest.type_url, ENDPOINT_TYPE);
    assert_eq!(names(&latest), [CLUSTER]);
    let expected = Snapshot::build(changed).unwrap();
    assert_eq!(
        latest.version_info,
        expected.version(ENDPOINT_TYPE).unwrap()
    );
    c.send(ack(&latest, &[CLUSTER])).await;
    c.quiet().await;
}

#[tokio::test]
async fn streams_wait_their_turn_for_the_initial_sync() {
    let h = Harness::start_with_admission(1).await;
    h.set("n1", fixtures::basic());
    h.set("n2", fixtures::basic());
    let mut first_client = h.delta().await;
    first_client
        .send(delta_first("n1", CLUSTER_TYPE, &[], &[]))
        .await;
    let cds = first_client.recv().await;

    // The second stream is open but waits: no refusal, no response yet, and it is counted.
    let mut second = h.delta().await;
    second.send(delta_first("n2", CLUSTER_TYPE, &[], &[])).await;
    second.quiet().await;
    let waiting = "strait_xds_admission_waiting 1";
    assert!(h.metrics_text().contains(waiting), "{}", h.metrics_text());

    // The first one settles (ACKs all it was sent): the second one is let in.
    first_client.send(delta_ack(&cds)).await;
    let cds2 = second.recv().await;
    assert_eq!(cds2.type_url, CLUSTER_TYPE);
    assert!(h.metrics_text().contains("strait_xds_admission_waiting 0"));
}
