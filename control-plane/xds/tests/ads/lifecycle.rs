//! Stream lifecycle: node checks, rejection, Connected/Disconnected, several streams per node.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use strait_xds::NodeEvent;
use strait_xds::snapshot::CLUSTER_TYPE;
use tonic::Code;

use crate::fixtures;
use crate::harness::{Harness, first, request};

fn connected(event: NodeEvent) -> String {
    match event {
        NodeEvent::Connected { node, .. } => node.id,
        other => panic!("expected Connected, got {other:?}"),
    }
}

fn disconnected(event: NodeEvent) -> String {
    match event {
        NodeEvent::Disconnected { node_id } => node_id,
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[tokio::test]
async fn first_request_without_node_is_refused() {
    let mut h = Harness::start().await;
    let mut c = h.sotw().await;
    c.send(request(CLUSTER_TYPE, &[])).await;
    let status = c.error().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("node"), "{}", status.message());

    let mut c = h.sotw().await;
    c.send(DiscoveryRequest {
        node: Some(Node::default()),
        ..request(CLUSTER_TYPE, &[])
    })
    .await;
    let status = c.error().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("node.id"), "{}", status.message());

    let mut d = h.delta().await;
    d.send(DeltaDiscoveryRequest {
        type_url: CLUSTER_TYPE.into(),
        ..Default::default()
    })
    .await;
    assert_eq!(d.error().await.code(), Code::InvalidArgument);
    h.no_event();
    assert!(h.server.proxies().is_empty());
}

#[tokio::test]
async fn reject_ends_streams_with_invalid_argument() {
    let mut h = Harness::start().await;
    // A pending stream and a serving stream of the same node.
    let mut pending = h.sotw().await;
    pending.send(first("n1", CLUSTER_TYPE, &[])).await;
    assert_eq!(connected(h.event().await), "n1");
    pending.quiet().await;

    let mut d = h.delta().await;
    d.send(crate::harness::delta_first("n2", CLUSTER_TYPE, &[], &[]))
        .await;
    assert_eq!(connected(h.event().await), "n2");
    h.set("n2", fixtures::basic());
    d.recv().await;

    h.cache.reject("n1", "unknown mode \"x\"".into());
    let status = pending.error().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "unknown mode \"x\"");
    assert_eq!(disconnected(h.event().await), "n1");

    h.cache.reject("n2", "gone bad".into());
    let status = d.error().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "gone bad");
    assert_eq!(disconnected(h.event().await), "n2");
    h.wait_for_proxies(0).await;
}

#[tokio::test]
async fn reconnecting_after_rejection_gets_a_fresh_decision() {
    let mut h = Harness::start().await;
    h.cache.reject("n1", "old reason".into());
    let mut c = h.sotw().await;
    c.send(first("n1", CLUSTER_TYPE, &[])).await;
    assert_eq!(connected(h.event().await), "n1");
    c.quiet().await;
    h.set("n1", fixtures::basic());
    assert_eq!(c.recv().await.type_url, CLUSTER_TYPE);
}

#[tokio::test]
async fn connected_and_disconnected_follow_the_first_and_last_stream() {
    let mut h = Harness::start().await;
    h.set("n1", fixtures::basic());

    let mut a = h.sotw().await;
    a.send(first("n1", CLUSTER_TYPE, &[])).await;
    a.recv().await;
    assert_eq!(connected(h.event().await), "n1");

    // Hot restart: a second stream with the same node id, with its own state.
    let mut b = h.delta().await;
    b.send(crate::harness::delta_first("n1", CLUSTER_TYPE, &[], &[]))
        .await;
    b.recv().await;
    h.wait_for_proxies(2).await;
    h.no_event();
    let mut ids: Vec<_> = h.server.proxies().iter().map(|p| p.stream_id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 2);
    assert!(h.metrics_text().contains("strait_xds_connected_proxies 2"));

    a.close();
    h.wait_for_proxies(1).await;
    h.no_event();
    assert_eq!(h.server.proxies()[0].protocol, "delta");

    b.close();
    assert_eq!(disconnected(h.event().await), "n1");
    h.wait_for_proxies(0).await;
    assert!(h.metrics_text().contains("strait_xds_connected_proxies 0"));
}

#[tokio::test]
async fn a_client_that_stops_reading_blocks_no_one_else() {
    let h = Harness::start().await;
    h.set("slow", fixtures::basic());
    h.set("fast", fixtures::basic());
    let slow = h.sotw().await;
    slow.send(first("slow", CLUSTER_TYPE, &[])).await;
    h.wait_for_proxies(1).await;

    // Every snapshot change is a new CDS response for the slow client, which never reads:
    // its buffers fill up, yet publishing stays immediate.
    let started = std::time::Instant::now();
    for timeout_s in 2..300 {
        let mut resources = fixtures::basic();
        resources.clusters[0] = fixtures::cluster(fixtures::CLUSTER, timeout_s);
        assert!(h.set("slow", resources));
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(2));

    let mut fast = h.sotw().await;
    fast.send(first("fast", CLUSTER_TYPE, &[])).await;
    assert_eq!(fast.recv().await.type_url, CLUSTER_TYPE);
    drop(slow);
}
