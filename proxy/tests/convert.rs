//! Conversion of what straitd emits (the translate golden cases), accepted or rejected with the reason.

use std::path::PathBuf;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use strait_model::{Model, ProxyNode, loader};
use strait_proxy::config::Cluster;
use strait_proxy::config::{
    Action, ClusterChoice, Discovery, HeaderMatch, LbPolicy, Listener, RouteConfig, RouteSource,
    StringMatch,
};
use strait_proxy::xds::convert::eds_endpoints;
use strait_translate::Output;

fn golden(case: &str) -> Output {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../control-plane/translate/tests/golden")
        .join(case);
    let config = std::fs::read_to_string(dir.join("config.yaml")).expect("config.yaml");
    let objects = loader::parse(&config, "config.yaml").expect("parse");
    let model = Model::build(&objects).expect("model");
    let node: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("node.json")).expect("node.json"))
            .expect("node json");
    let node = ProxyNode::from_metadata(
        node["id"].as_str().unwrap_or("test"),
        node["metadata"].as_object().expect("metadata"),
    )
    .expect("node");
    strait_translate::translate(&model, &node)
}

fn has_fault(rc: &RouteConfiguration) -> bool {
    rc.virtual_hosts
        .iter()
        .flat_map(|vh| &vh.routes)
        .any(|r| !r.typed_per_filter_config.is_empty())
}

#[test]
fn sidecar_bookinfo_converts_with_its_faults() {
    let out = golden("sidecar-bookinfo");
    for c in &out.clusters {
        let cluster = Cluster::try_from(c).expect("cluster converts");
        assert_eq!(cluster.lb_policy, LbPolicy::LeastRequest, "{}", c.name);
        assert!(
            matches!(cluster.discovery, Discovery::Eds { .. }),
            "{}",
            c.name
        );
        assert_eq!(cluster.limits.max_requests, u32::MAX);
    }
    let v3 = out
        .endpoints
        .iter()
        .find(|e| e.cluster_name == "outbound|9080|v3|reviews.default.svc.cluster.local")
        .expect("v3 assignment");
    let endpoints = eds_endpoints(v3).expect("endpoints convert");
    assert_eq!(endpoints.len(), 1);
    assert_eq!((endpoints[0].port, endpoints[0].weight), (19083, 2));

    let [listener] = out.listeners.as_slice() else {
        panic!("one listener: {:?}", out.listeners)
    };
    let listener = Listener::try_from(listener).expect("listener converts");
    assert_eq!(listener.address.to_string(), "127.0.0.1:15001");
    assert!(matches!(&listener.chains[0].http.routes, RouteSource::Rds(n) if &**n == "outbound"));
    assert!(!listener.chains[0].http.strip_any_host_port);

    let [rc] = out.routes.as_slice() else {
        panic!("one route config")
    };
    let converted = RouteConfig::try_from(rc).expect("routes convert, faults included");
    assert!(has_fault(rc));
    let fault = converted
        .virtual_hosts
        .iter()
        .flat_map(|vh| vh.routes.iter())
        .find_map(|r| r.fault.clone())
        .expect("the fault rule converted");
    assert!(fault.delay.is_some() || fault.abort.is_some(), "{fault:?}");
    let reviews = converted
        .virtual_hosts
        .iter()
        .find(|vh| &*vh.name == "reviews.default.svc.cluster.local:9080")
        .expect("reviews virtual host");
    for domain in [
        "reviews",
        "reviews:9080",
        "reviews.default.svc.cluster.local",
    ] {
        assert!(
            reviews.domains.iter().any(|d| &**d == domain),
            "{domain} in {:?}",
            reviews.domains
        );
    }
    // Every forward has a cluster that exists and a timeout of none (Istio's default).
    let names: Vec<&str> = out.clusters.iter().map(|c| c.name.as_str()).collect();
    for vh in converted.virtual_hosts.iter() {
        for r in vh.routes.iter() {
            if let Action::Forward(f) = &r.action {
                assert_eq!(f.timeout, None, "{}", r.name);
                for c in f.clusters.names() {
                    assert!(names.contains(&&**c), "{c}");
                }
            }
        }
    }
    // The jason rule: an exact header match on end-user.
    let jason = reviews
        .routes
        .iter()
        .flat_map(|r| r.matcher.headers.iter())
        .any(|h| {
            &*h.name == "end-user"
                && matches!(&h.matches, HeaderMatch::Value(StringMatch::Exact { value, .. }) if &**value == "jason")
        });
    let weighted = converted.virtual_hosts.iter().flat_map(|vh| vh.routes.iter()).any(|r| {
        matches!(&r.action, Action::Forward(f) if matches!(f.clusters, ClusterChoice::Weighted { .. }))
    });
    assert!(
        jason || weighted,
        "the sample rules are visible: {converted:?}"
    );
}

#[test]
fn sidecar_policies_convert_with_pool_limits() {
    let out = golden("sidecar-policies");
    let clusters: Vec<Cluster> = out
        .clusters
        .iter()
        .map(|c| Cluster::try_from(c).expect("converts"))
        .collect();
    // connectionPool: http1MaxPendingRequests 10, http2MaxRequests 50, maxRetries 3,
    // maxRequestsPerConnection 5.
    let pooled = clusters
        .iter()
        .find(|c| c.max_requests_per_connection.is_some())
        .expect("a cluster with connection pool limits");
    assert_eq!(pooled.max_requests_per_connection, Some(5));
    assert_eq!(pooled.limits.max_connections, 100);
    assert_eq!(pooled.limits.max_pending_requests, 10);
    assert_eq!(pooled.limits.max_requests, 50);
    assert_eq!(pooled.limits.max_retries, 3);
    assert_eq!(
        pooled.idle_timeout,
        Some(std::time::Duration::from_secs(30))
    );
    let policies: Vec<LbPolicy> = clusters.iter().map(|c| c.lb_policy).collect();
    assert!(policies.contains(&LbPolicy::Random), "{policies:?}");
    assert!(
        policies
            .iter()
            .any(|p| matches!(p, LbPolicy::ConsistentHash { .. })),
        "{policies:?}"
    );
    let (od, panic) = clusters
        .iter()
        .find_map(|c| c.outlier.clone().map(|o| (o, c.healthy_panic_threshold)))
        .expect("an outlier-detecting cluster");
    // Istio turns panic mode off.
    assert_eq!(panic, 0.0);
    assert_eq!(od.consecutive_5xx, Some(2), "{od:?}");
    assert_eq!(od.consecutive_gateway_failure, Some(1), "{od:?}");
    assert_eq!(
        od.base_ejection_time,
        std::time::Duration::from_secs(30),
        "{od:?}"
    );

    // Routes: retries, mirrors, rewrites, redirects, direct responses and hash policies.
    let rc = out
        .routes
        .iter()
        .find(|r| r.name == "outbound")
        .expect("outbound routes");
    let rest = RouteConfig::try_from(rc).expect("routes convert");
    let actions: Vec<&Action> = rest
        .virtual_hosts
        .iter()
        .flat_map(|vh| vh.routes.iter())
        .map(|r| &r.action)
        .collect();
    assert!(
        actions.iter().any(|a| matches!(a, Action::Redirect(_))),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| matches!(a, Action::Direct { .. })),
        "{actions:?}"
    );
    let forwards: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Forward(f) => Some(f),
            _ => None,
        })
        .collect();
    let retry = forwards
        .iter()
        .find_map(|f| f.retry.clone())
        .expect("a retry policy");
    assert!(retry.num_retries >= 1 && retry.other_host, "{retry:?}");
    assert!(
        forwards.iter().any(|f| !f.mirrors.is_empty()),
        "{forwards:?}"
    );
    assert!(
        forwards.iter().any(|f| f.regex_rewrite.is_some()),
        "{forwards:?}"
    );
    assert!(
        forwards.iter().any(|f| !f.hash_policy.is_empty()),
        "{forwards:?}"
    );
}

#[test]
fn gateway_https_listeners_read_their_certificate_files_and_name_a_missing_one() {
    let out = golden("gateway");
    let mut plain = 0;
    let mut tls = 0;
    for l in &out.listeners {
        match Listener::try_from(l) {
            Ok(listener) => {
                plain += 1;
                assert!(listener.chains[0].http.strip_any_host_port, "{listener:?}");
            }
            Err(e) => {
                // The golden case names certificate files that do not exist here: refused, as
                // Envoy refuses them, with the field and the file.
                tls += 1;
                let msg = e.to_string();
                assert!(msg.contains("tls_certificates[0]"), "{msg}");
                assert!(msg.contains("reading the certificate chain"), "{msg}");
            }
        }
    }
    assert!(plain >= 1, "{:?}", out.listeners);
    assert!(tls >= 1, "{:?}", out.listeners);
}

#[test]
fn sidecar_mtls_converts_with_the_workload_certificate_identities_and_authorization() {
    use strait_proxy::config::{CertificateSource, RootsSource, SanKind};
    let out = golden("sidecar-mtls");
    let convert = |name: &str| {
        let c = out
            .clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} in {:?}", out.clusters));
        Cluster::try_from(c)
    };
    // ISTIO_MUTUAL: our certificate, the mesh roots, the server's SPIFFE ID.
    let details = convert("outbound|9080||details.default.svc.cluster.local").expect("converts");
    let tls = details.tls.as_ref().expect("TLS");
    assert_eq!(tls.certificate, Some(CertificateSource::Workload));
    assert_eq!(tls.validation.roots, RootsSource::Mesh);
    let [san] = tls.validation.subject_alt_names.as_slice() else {
        panic!("{tls:?}")
    };
    assert_eq!(san.kind, SanKind::Uri);
    assert_eq!(
        san.matcher,
        StringMatch::Exact {
            value: "spiffe://cluster.local/ns/default/sa/bookinfo-details".into(),
            ignore_case: false
        }
    );
    assert_eq!(
        tls.sni.as_deref(),
        Some("outbound_.9080_._.details.default.svc.cluster.local")
    );
    // Auto mTLS: TLS only for endpoints labelled tlsMode=istio.
    let reviews = convert("outbound|9080||reviews.default.svc.cluster.local").expect("converts");
    assert!(reviews.tls.is_none());
    let [m] = reviews.transport_matches.as_slice() else {
        panic!("{reviews:?}")
    };
    assert_eq!(m.labels.get("tlsMode").map(|v| &**v), Some("istio"));
    assert!(m.tls.as_ref().is_some_and(|t| t.certificate.is_some()));
    // The inbound listener: mTLS required, checked against the mesh roots; the caller's
    // identity goes to the app; DENY then ALLOW authorization.
    let inbound = out
        .listeners
        .iter()
        .find(|l| l.name.starts_with("inbound_"))
        .expect("an inbound listener");
    let inbound = Listener::try_from(inbound).expect("the inbound listener converts");
    let [chain] = inbound.chains.as_slice() else {
        panic!("STRICT: one chain: {inbound:?}")
    };
    let tls = chain.tls.as_ref().expect("TLS");
    assert!(tls.require_client_certificate);
    assert_eq!(tls.certificate, CertificateSource::Workload);
    assert_eq!(
        tls.validation.as_ref().map(|v| &v.roots),
        Some(&RootsSource::Mesh)
    );
    assert_eq!(
        chain.http.client_cert_details,
        strait_proxy::config::ClientCertDetails::SanitizeSet {
            uri: true,
            dns: false
        }
    );
    let actions: Vec<_> = chain.http.rbac.iter().map(|r| r.action).collect();
    assert_eq!(
        actions,
        [
            strait_proxy::config::RbacAction::Deny,
            strait_proxy::config::RbacAction::Allow
        ]
    );
    // SIMPLE with a CA file that is not on this machine: refused with the field and the file.
    let e = convert("outbound|443||payments.example.com")
        .expect_err("missing CA file")
        .to_string();
    assert!(e.contains("trusted_ca"), "{e}");
    assert!(e.contains("/etc/ssl/payments-ca.pem"), "{e}");
}

fn any<M: prost::Message>(type_url: &str, m: &M) -> envoy_types::pb::google::protobuf::Any {
    envoy_types::pb::google::protobuf::Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

#[test]
fn state_publishes_only_complete_configs_and_a_rejected_update_changes_nothing() {
    use strait_proxy::xds::{CLUSTER, ENDPOINT, LISTENER, ROUTE, State, Update};
    let out = golden("sidecar-bookinfo");
    let update = |type_url: &'static str, anys: &[envoy_types::pb::google::protobuf::Any]| {
        (type_url, anys.to_vec())
    };
    let clusters: Vec<_> = out.clusters.iter().map(|c| any(CLUSTER, c)).collect();
    let endpoints: Vec<_> = out.endpoints.iter().map(|e| any(ENDPOINT, e)).collect();
    let listeners: Vec<_> = out.listeners.iter().map(|l| any(LISTENER, l)).collect();
    let routes: Vec<_> = out.routes.iter().map(|r| any(ROUTE, r)).collect();
    let mut state = State::default();
    let apply = |state: &mut State, (type_url, anys): (&str, Vec<_>)| {
        state.apply(&Update {
            type_url,
            version: "v1",
            resources: anys.iter().map(|a| (None, None, a)).collect(),
            removed: Vec::new(),
            full: true,
        })
    };
    apply(&mut state, update(CLUSTER, &clusters)).expect("clusters");
    assert!(state.assemble().is_none(), "no listeners yet");
    assert_eq!(state.wanted_eds().len(), out.endpoints.len());
    apply(&mut state, update(LISTENER, &listeners)).expect("listeners");
    assert!(state.assemble().is_none(), "endpoints and routes missing");
    assert_eq!(
        state.wanted_rds().into_iter().collect::<Vec<_>>(),
        ["outbound"]
    );
    apply(&mut state, update(ENDPOINT, &endpoints)).expect("endpoints");
    assert!(state.assemble().is_none(), "routes missing");
    apply(&mut state, update(ROUTE, &routes)).expect("routes");
    let config = state.assemble().expect("complete");
    assert_eq!(config.clusters.len(), out.clusters.len());
    let before = config.clone();

    // A cluster update with one bad cluster is rejected whole, naming it.
    let mut bad = out.clusters.clone();
    bad[0].outlier_detection = None;
    bad[0].lb_policy = 7; // CLUSTER_PROVIDED
    let bad: Vec<_> = bad.iter().map(|c| any(CLUSTER, c)).collect();
    let error = apply(&mut state, update(CLUSTER, &bad)).expect_err("rejected");
    assert!(
        error.contains(&format!("cluster {:?}", out.clusters[0].name)),
        "{error}"
    );
    assert!(error.contains("lb_policy"), "{error}");
    assert_eq!(state.assemble().expect("still complete"), before);
}

#[test]
fn mesh_tls_is_refused_by_a_proxy_without_a_workload_identity() {
    use strait_proxy::xds::{CLUSTER, State, Update};
    let out = golden("sidecar-mtls");
    let clusters: Vec<_> = out
        .clusters
        .iter()
        .filter(|c| !c.name.contains("payments"))
        .map(|c| any(CLUSTER, c))
        .collect();
    let update = Update {
        type_url: CLUSTER,
        version: "v1",
        resources: clusters.iter().map(|a| (None, None, a)).collect(),
        removed: Vec::new(),
        full: true,
    };
    let error = State::default()
        .apply(&update)
        .expect_err("no identity to present");
    assert!(error.contains("no workload identity"), "{error}");
    assert!(error.contains("--token-file"), "{error}");
    State::default()
        .with_identity(true)
        .apply(&update)
        .expect("accepted with an identity");
}
