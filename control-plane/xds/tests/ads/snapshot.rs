//! `Snapshot::build`: deterministic versions and consistency errors naming the culprit.

use envoy_types::pb::envoy::config::listener::v3::FilterChain;
use strait_xds::snapshot::{
    CLUSTER_TYPE, ENDPOINT_TYPE, InconsistentSnapshot, LISTENER_TYPE, ROUTE_TYPE, Resources,
    Snapshot,
};

use crate::fixtures::{self, CLUSTER, LISTENER, ROUTE};

fn error(resources: Resources) -> String {
    Snapshot::build(resources)
        .expect_err("inconsistent")
        .to_string()
}

#[test]
fn versions_are_deterministic_and_per_type() {
    let a = Snapshot::build(fixtures::two_clusters()).unwrap();
    let b = Snapshot::build(fixtures::two_clusters()).unwrap();
    let mut reordered = fixtures::two_clusters();
    reordered.clusters.reverse();
    reordered.endpoints.reverse();
    let c = Snapshot::build(reordered).unwrap();
    for type_url in [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE] {
        let version = a.version(type_url).unwrap();
        assert_eq!(version.len(), 16, "hex xxh3-64");
        assert_eq!(Some(version), b.version(type_url));
        assert_eq!(
            Some(version),
            c.version(type_url),
            "order of input does not matter"
        );
    }
    assert_eq!(a.resource_names(CLUSTER_TYPE), vec![CLUSTER, "other"]);
    assert_eq!(a.resource_version(CLUSTER_TYPE, CLUSTER).unwrap().len(), 16);
    let encoded = a.get(CLUSTER_TYPE, CLUSTER).unwrap();
    let cluster = <envoy_types::pb::envoy::config::cluster::v3::Cluster as prost::Message>::decode(
        encoded.bytes.clone(),
    )
    .unwrap();
    assert_eq!(
        cluster.name, CLUSTER,
        "encoded once, as the resource itself"
    );
    assert!(a.get(CLUSTER_TYPE, "nope").is_none());
    assert!(a.version("type.googleapis.com/unknown").is_none());

    let mut changed = fixtures::two_clusters();
    changed.endpoints[1] = fixtures::load_assignment("other", 1234);
    let d = Snapshot::build(changed).unwrap();
    assert_ne!(a.version(ENDPOINT_TYPE), d.version(ENDPOINT_TYPE));
    assert_eq!(
        a.resource_version(ENDPOINT_TYPE, CLUSTER),
        d.resource_version(ENDPOINT_TYPE, CLUSTER)
    );
    assert_ne!(
        a.resource_version(ENDPOINT_TYPE, "other"),
        d.resource_version(ENDPOINT_TYPE, "other")
    );
    for type_url in [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE] {
        assert_eq!(a.version(type_url), d.version(type_url));
    }
}

#[test]
fn empty_resources_build() {
    let snapshot = Snapshot::build(Resources::default()).unwrap();
    assert!(snapshot.resource_names(LISTENER_TYPE).is_empty());
    assert!(snapshot.version(LISTENER_TYPE).is_some());
}

#[test]
fn unreferenced_routes_and_assignments_are_allowed() {
    let mut resources = fixtures::basic();
    resources
        .routes
        .push(fixtures::route_config("spare", vec![]));
    resources
        .endpoints
        .push(fixtures::load_assignment("spare", 1));
    Snapshot::build(resources).unwrap();
}

#[test]
fn duplicate_and_empty_names_are_rejected() {
    let mut resources = fixtures::basic();
    resources.clusters.push(fixtures::cluster(CLUSTER, 9));
    assert!(matches!(
        Snapshot::build(resources.clone()),
        Err(InconsistentSnapshot::DuplicateName {
            kind: "cluster",
            ..
        })
    ));
    assert_eq!(error(resources), "duplicate cluster \"backend\"");

    let mut resources = fixtures::basic();
    resources
        .listeners
        .push(fixtures::listener(LISTENER, ROUTE));
    assert!(error(resources).contains("listener \"http\""));

    let mut resources = fixtures::basic();
    resources.routes.push(fixtures::route_config("", vec![]));
    assert!(error(resources).contains("empty name"));
}

#[test]
fn listener_must_name_an_existing_route_configuration() {
    let mut resources = fixtures::basic();
    resources.listeners[0] = fixtures::listener(LISTENER, "nope");
    assert!(matches!(
        Snapshot::build(resources.clone()),
        Err(InconsistentSnapshot::MissingRouteConfiguration { .. })
    ));
    let message = error(resources);
    assert!(
        message.contains("\"http\"") && message.contains("\"nope\""),
        "{message}"
    );

    // The default filter chain is checked too.
    let mut resources = fixtures::basic();
    resources.listeners[0].default_filter_chain = Some(FilterChain {
        filters: vec![fixtures::hcm(fixtures::rds("missing-default"))],
        ..Default::default()
    });
    assert!(error(resources).contains("missing-default"));
}

#[test]
fn inline_route_configuration_is_checked() {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
    let mut resources = fixtures::basic();
    resources.listeners[0].filter_chains[0].filters = vec![fixtures::hcm(
        RouteSpecifier::RouteConfig(fixtures::route_config(
            "inline",
            vec![fixtures::route_to(fixtures::single("ghost"))],
        )),
    )];
    let message = error(resources);
    assert!(
        message.contains("inline") && message.contains("\"ghost\""),
        "{message}"
    );
}

#[test]
fn routes_must_target_existing_clusters() {
    let mut resources = fixtures::basic();
    resources.routes[0] =
        fixtures::route_config(ROUTE, vec![fixtures::route_to(fixtures::single("ghost"))]);
    assert!(matches!(
        Snapshot::build(resources.clone()),
        Err(InconsistentSnapshot::MissingCluster { ref cluster, .. }) if cluster == "ghost"
    ));
    let message = error(resources);
    assert!(
        message.contains("\"http-routes\"") && message.contains("\"ghost\""),
        "{message}"
    );

    let mut resources = fixtures::basic();
    resources.routes[0] = fixtures::route_config(
        ROUTE,
        vec![fixtures::route_to(fixtures::weighted(&[
            CLUSTER,
            "weighted-ghost",
        ]))],
    );
    assert!(error(resources).contains("weighted-ghost"));

    let mut resources = fixtures::basic();
    let mut route = fixtures::route_to(fixtures::single(CLUSTER));
    if let Some(envoy_types::pb::envoy::config::route::v3::route::Action::Route(action)) =
        &mut route.action
    {
        action
            .request_mirror_policies
            .push(fixtures::mirror("mirror-ghost"));
    }
    resources.routes[0] = fixtures::route_config(ROUTE, vec![route]);
    assert!(error(resources).contains("mirror-ghost"));
}

#[test]
fn eds_clusters_need_a_load_assignment() {
    let mut resources = fixtures::basic();
    resources.endpoints.clear();
    assert!(matches!(
        Snapshot::build(resources.clone()),
        Err(InconsistentSnapshot::MissingLoadAssignment { .. })
    ));
    assert!(error(resources).contains("\"backend\""));

    // With a service name, the assignment must carry that name instead.
    let mut resources = fixtures::basic();
    resources.clusters[0]
        .eds_cluster_config
        .as_mut()
        .unwrap()
        .service_name = "backend.svc".into();
    let message = error(resources.clone());
    assert!(message.contains("\"backend.svc\""), "{message}");
    resources.endpoints[0].cluster_name = "backend.svc".into();
    let snapshot = Snapshot::build(resources).unwrap();
    assert!(snapshot.eds_service_names().any(|n| &**n == "backend.svc"));
}

/// References a part leaves open are checked against the snapshot's other parts: resolved
/// there, they compose; resolved nowhere, composing names them. A patched part resolves as
/// one built whole.
#[test]
fn parts_resolve_each_others_references() {
    use std::sync::Arc;
    use strait_xds::snapshot::Part;

    let part = |r: Resources| Arc::new(Part::build(r).unwrap());
    let basic = fixtures::basic();
    let front = part(Resources {
        listeners: basic.listeners.clone(),
        ..Resources::default()
    });
    let routes = part(Resources {
        routes: basic.routes.clone(),
        ..Resources::default()
    });
    let clusters = part(Resources {
        clusters: basic.clusters.clone(),
        ..Resources::default()
    });
    let endpoints = part(Resources {
        endpoints: basic.endpoints.clone(),
        ..Resources::default()
    });
    let all = [&front, &routes, &clusters, &endpoints];
    let compose = |parts: &[&Arc<Part>]| {
        Snapshot::compose(parts.iter().map(|p| Arc::clone(p)).collect(), None)
    };
    compose(&all).unwrap();
    assert!(matches!(
        compose(&[&front, &clusters, &endpoints]),
        Err(InconsistentSnapshot::MissingRouteConfiguration { .. })
    ));
    assert!(matches!(
        compose(&[&front, &routes, &endpoints]),
        Err(InconsistentSnapshot::MissingCluster { ref cluster, .. }) if cluster == CLUSTER
    ));
    assert!(matches!(
        compose(&[&front, &routes, &clusters]),
        Err(InconsistentSnapshot::MissingLoadAssignment { .. })
    ));

    // A cluster patched in without its assignment leaves that reference open.
    let patched = Arc::new(
        clusters
            .patched(Resources {
                clusters: vec![fixtures::cluster("other", 1)],
                ..Resources::default()
            })
            .unwrap(),
    );
    assert!(matches!(
        compose(&[&front, &routes, &patched, &endpoints]),
        Err(InconsistentSnapshot::MissingLoadAssignment { .. })
    ));
    let with_assignment = Arc::new(
        patched
            .patched(Resources {
                endpoints: vec![fixtures::load_assignment("other", 9090)],
                ..Resources::default()
            })
            .unwrap(),
    );
    compose(&[&front, &routes, &with_assignment, &endpoints]).unwrap();
    let whole = Snapshot::build(fixtures::two_clusters()).unwrap();
    let composed = compose(&[&front, &routes, &with_assignment, &endpoints]).unwrap();
    for type_url in [CLUSTER_TYPE, ENDPOINT_TYPE] {
        assert_eq!(
            composed.resource_names(type_url),
            whole.resource_names(type_url)
        );
    }
}
