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
    let credentials = strait_tests::golden::credentials(&dir).expect("credentials");
    let model = Model::build_with(&objects, credentials.as_ref()).expect("model");
    let node: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("node.json")).expect("node.json"))
            .expect("node json");
    let node = ProxyNode::from_metadata(
        node["id"].as_str().unwrap_or("test"),
        node["metadata"].as_object().expect("metadata"),
    )
    .expect("node");
    let settings = match std::fs::read_to_string(dir.join("mesh.yaml")) {
        Ok(text) => strait_translate::MeshSettings::from_mesh_config(
            &strait_model::mesh::MeshConfig::parse(&text, "mesh.yaml").expect("mesh config"),
        ),
        Err(_) => strait_translate::MeshSettings::default(),
    };
    strait_translate::translate_with(&model, &node, &settings)
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
    assert_eq!(listener.addresses[0].to_string(), "127.0.0.1:15001");
    assert!(
        matches!(&listener.chains[0].http().expect("an HTTP chain").routes, RouteSource::Rds(n) if &**n == "outbound")
    );
    assert!(
        !listener.chains[0]
            .http()
            .expect("an HTTP chain")
            .strip_any_host_port
    );

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
fn sidecar_cors_converts_with_the_filter_in_the_chain_and_the_policies_per_route() {
    let out = golden("sidecar-cors");
    let [listener] = out.listeners.as_slice() else {
        panic!("one listener: {:?}", out.listeners)
    };
    let listener = Listener::try_from(listener).expect("listener converts");
    assert!(listener.chains[0].http().expect("an HTTP chain").cors);
    let [rc] = out.routes.as_slice() else {
        panic!("one route config")
    };
    let converted = RouteConfig::try_from(rc).expect("routes convert, CORS included");
    let route = |name: &str| {
        converted
            .virtual_hosts
            .iter()
            .flat_map(|vh| vh.routes.iter())
            .find(|r| &*r.name == name)
            .unwrap_or_else(|| panic!("route {name}"))
            .cors
            .clone()
            .unwrap_or_else(|| panic!("route {name} has CORS"))
    };
    let api = route("api");
    assert_eq!(api.allow_origins.len(), 3);
    assert!(api.allow_origins[2].matches("https://eu.shop.example"));
    assert!(
        !api.allow_origins
            .iter()
            .any(|m| m.matches("https://evil.example"))
    );
    assert_eq!(&*api.allow_methods, "GET,POST,PUT");
    assert_eq!(&*api.allow_headers, "authorization,content-type");
    assert_eq!(&*api.expose_headers, "x-request-id");
    assert_eq!(&*api.max_age, "86400");
    assert!(api.allow_credentials && api.forward_not_matching_preflights);
    let legacy = route("legacy");
    assert!(legacy.allow_origins[0].matches("*"));
    assert!(!legacy.allow_credentials && !legacy.forward_not_matching_preflights);
}

/// The sidecar-cors listener with its connection manager's filters changed by `f`.
fn cors_listener_with(
    f: impl FnOnce(&mut Vec<envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter>),
) -> Result<Listener, String> {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use prost::Message;
    let mut listener = golden("sidecar-cors").listeners.remove(0);
    let filter = &mut listener.filter_chains[0].filters[0];
    let Some(ConfigType::TypedConfig(any)) = &mut filter.config_type else {
        panic!("a typed HCM")
    };
    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("an HCM");
    f(&mut hcm.http_filters);
    any.value = hcm.encode_to_vec();
    Listener::try_from(&listener).map_err(|e| e.to_string())
}

#[test]
fn the_cors_filter_is_refused_where_strait_proxy_would_not_run_it_as_envoy_does() {
    assert!(cors_listener_with(|_| {}).is_ok());
    // Istio's order is fault, CORS, router; CORS before faults would answer preflights first.
    let err = cors_listener_with(|filters| filters.swap(0, 1)).expect_err("refused");
    assert!(
        err.contains("a fault filter after the CORS filter"),
        "{err}"
    );
    let err = cors_listener_with(|filters| filters[1].name = "cors".into()).expect_err("refused");
    assert!(err.contains("a CORS filter named \"cors\""), "{err}");
    let err = cors_listener_with(|filters| filters[1].disabled = true).expect_err("refused");
    assert!(err.contains("disabled"), "{err}");
    let err = cors_listener_with(|filters| {
        let cors = filters[1].clone();
        filters.insert(1, cors);
    })
    .expect_err("refused");
    assert!(err.contains("a second CORS filter"), "{err}");
}

#[test]
fn cors_policies_strait_proxy_cannot_honour_are_refused() {
    use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
    use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    use prost::Message;
    let with = |f: &dyn Fn(&mut CorsPolicy)| {
        let mut rc = golden("sidecar-cors").routes.remove(0);
        for route in rc
            .virtual_hosts
            .iter_mut()
            .flat_map(|vh| vh.routes.iter_mut())
        {
            if let Some(any) = route
                .typed_per_filter_config
                .get_mut("envoy.filters.http.cors")
            {
                let mut policy = CorsPolicy::decode(any.value.as_slice()).expect("a policy");
                f(&mut policy);
                any.value = policy.encode_to_vec();
            }
        }
        RouteConfig::try_from(&rc).map_err(|e| e.to_string())
    };
    assert!(with(&|_| {}).is_ok());
    let half = RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 50,
            denominator: 0,
        }),
        ..Default::default()
    };
    let err = with(&|p| p.filter_enabled = Some(half.clone())).expect_err("refused");
    assert!(err.contains("a fraction of requests"), "{err}");
    let err = with(&|p| p.shadow_enabled = Some(half.clone())).expect_err("refused");
    assert!(err.contains("shadow"), "{err}");
    let err = with(&|p| p.max_age = "1\n2".into()).expect_err("refused");
    assert!(err.contains("max_age"), "{err}");
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
                assert!(
                    listener.chains[0]
                        .http()
                        .expect("an HTTP chain")
                        .strip_any_host_port,
                    "{listener:?}"
                );
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
        chain.http().expect("an HTTP chain").client_cert_details,
        strait_proxy::config::ClientCertDetails::SanitizeSet {
            uri: true,
            dns: false
        }
    );
    let actions: Vec<_> = chain
        .http()
        .expect("an HTTP chain")
        .rbac
        .iter()
        .map(|r| r.action)
        .collect();
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

fn all<M: prost::Message>(
    type_url: &str,
    items: &[M],
) -> Vec<envoy_types::pb::google::protobuf::Any> {
    items.iter().map(|m| any(type_url, m)).collect()
}

#[test]
fn a_gateway_listener_waits_for_its_sds_secrets_and_follows_their_rotation() {
    use strait_proxy::config::{CertificateSource, RootsSource};
    use strait_proxy::xds::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, State, Update};
    let out = golden("gateway-credential");
    let anys = |type_url: &str, items: Vec<envoy_types::pb::google::protobuf::Any>| {
        (type_url.to_string(), items)
    };
    let mut state = State::default();
    let apply = |state: &mut State, (type_url, items): (String, Vec<_>)| {
        state.apply(&Update {
            type_url: &type_url,
            version: "v1",
            resources: items.iter().map(|a| (None, None, a)).collect(),
            removed: Vec::new(),
            full: true,
        })
    };
    apply(&mut state, anys(CLUSTER, all(CLUSTER, &out.clusters))).expect("clusters");
    apply(&mut state, anys(ENDPOINT, all(ENDPOINT, &out.endpoints))).expect("endpoints");
    apply(&mut state, anys(LISTENER, all(LISTENER, &out.listeners))).expect("listeners");
    apply(&mut state, anys(ROUTE, all(ROUTE, &out.routes))).expect("routes");
    assert_eq!(
        state.wanted_sds().into_iter().collect::<Vec<_>>(),
        [
            "kubernetes://bookinfo-cert",
            "kubernetes://mtls-cert",
            "kubernetes://mtls-cert-cacert"
        ]
    );
    let config = state
        .assemble()
        .expect("complete but for the warming listener");
    assert!(
        config.listeners.is_empty(),
        "no listener before its secrets"
    );

    apply(&mut state, anys(SECRET, all(SECRET, &out.secrets))).expect("secrets");
    let config = state.assemble().expect("complete");
    let listener = config
        .listeners
        .values()
        .next()
        .expect("the HTTPS listener");
    let tls = listener.chains[0].tls.as_ref().expect("TLS");
    assert!(
        matches!(&tls.certificate, CertificateSource::Sds { name, loaded: Some(_) } if &**name == "kubernetes://bookinfo-cert")
    );
    let mtls = listener.chains[1].tls.as_ref().expect("TLS");
    assert!(mtls.require_client_certificate);
    assert!(matches!(
        mtls.validation.as_ref().map(|v| &v.roots),
        Some(RootsSource::Sds {
            anchors: Some(_),
            ..
        })
    ));
    strait_proxy::tls::server_config(tls, None).expect("a server config from the secret");

    // The same secrets again (a rotation looks alike on the wire): a new config to serve.
    apply(&mut state, anys(SECRET, all(SECRET, &out.secrets))).expect("secrets again");
    assert_ne!(state.assemble().expect("complete"), config);

    // A secret that does not convert is refused whole, naming it; the last good stays.
    let mut bad = out.secrets.clone();
    if let Some(envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type::TlsCertificate(c)) = &mut bad[0].r#type {
        c.private_key = Some(envoy_types::pb::envoy::config::core::v3::DataSource {
            specifier: Some(envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString("junk".into())),
            ..Default::default()
        });
    }
    let error = apply(&mut state, anys(SECRET, all(SECRET, &bad))).expect_err("refused");
    assert!(error.contains("kubernetes://bookinfo-cert"), "{error}");
    assert!(error.contains("private key"), "{error}");
    assert!(!error.contains("junk"), "the key is not echoed: {error}");
    assert!(state.assemble().expect("complete").listeners.len() == 1);
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

fn listeners(out: &Output) -> std::collections::BTreeMap<String, Listener> {
    out.listeners
        .iter()
        .map(|l| {
            let converted = Listener::try_from(l).unwrap_or_else(|e| panic!("{e}"));
            (l.name.clone(), converted)
        })
        .collect()
}

#[test]
fn a_captured_sidecar_converts_as_istios_listener_model() {
    use std::net::SocketAddr;
    use strait_proxy::config::{ConnectionInfo, Serve, Transport};
    let out = golden("sidecar-captured");
    let by_name = listeners(&out);
    let info = |local: &str, transport, sni| ConnectionInfo {
        local: local.parse::<SocketAddr>().expect("address"),
        transport,
        sni,
        alpn: &[],
    };
    let tcp_cluster = |l: &Listener, i: Option<usize>| -> Option<String> {
        match &l.chains[i?].serve {
            Serve::Tcp(t) => Some(t.pick().to_string()),
            Serve::Http(_) => None,
        }
    };
    // The capture port: bound, hands connections on, keeps only what no listener takes.
    let outbound = &by_name["virtualOutbound"];
    assert!(outbound.bind && outbound.use_original_dst);
    assert_eq!(
        tcp_cluster(
            outbound,
            outbound.select(&info("192.0.2.1:5432", Transport::Raw, None))
        ),
        Some("PassthroughCluster".into())
    );
    assert_eq!(
        tcp_cluster(
            outbound,
            outbound.select(&info("127.0.0.1:15001", Transport::Raw, None))
        ),
        Some("BlackHoleCluster".into()),
        "a connection to the capture port itself would loop"
    );
    // Per destination port: not bound; TCP by address, TLS by SNI, HTTP by Host.
    let echo = &by_name["0.0.0.0_7000"];
    assert!(!echo.bind && !echo.use_original_dst);
    let Serve::Tcp(proxy) = &echo.chains[echo
        .select(&info("10.96.0.20:7000", Transport::Raw, None))
        .expect("a chain")]
    .serve
    else {
        panic!("TCP")
    };
    assert_eq!(
        &**proxy.pick(),
        "outbound|7000||echo.default.svc.cluster.local"
    );
    assert!(proxy.hash_source_ip);
    assert_eq!(proxy.idle_timeout, Some(std::time::Duration::from_secs(30)));
    assert_eq!(
        tcp_cluster(
            echo,
            echo.select(&info("10.96.9.9:7000", Transport::Raw, None))
        ),
        Some("PassthroughCluster".into())
    );
    let tls = &by_name["0.0.0.0_443"];
    assert!(tls.inspect.tls);
    assert_eq!(
        tcp_cluster(
            tls,
            tls.select(&info(
                "203.0.113.7:443",
                Transport::Tls,
                Some("api.example.com")
            ))
        ),
        Some("outbound|443||api.example.com".into())
    );
    let http = &by_name["0.0.0.0_9080"];
    let chain = http
        .select(&info("10.96.0.10:9080", Transport::Raw, None))
        .expect("a chain");
    assert!(
        matches!(&http.chains[chain].http().expect("HTTP").routes, RouteSource::Rds(n) if &**n == "9080")
    );
    // Inbound: the original destination, then a chain per workload port under its mode.
    let inbound = &by_name["virtualInbound"];
    assert!(inbound.inspect.original_dst);
    assert!(
        !inbound.inspect.tls,
        "no PERMISSIVE port: nothing to tell apart"
    );
    let web = inbound
        .select(&info("10.77.1.2:9080", Transport::Raw, None))
        .expect("the 9080 chain");
    assert!(inbound.chains[web].tls.is_some(), "STRICT");
    let stats = inbound
        .select(&info("10.77.1.2:9000", Transport::Raw, None))
        .expect("the 9000 chain");
    let Serve::Tcp(stats) = &inbound.chains[stats].serve else {
        panic!("TCP")
    };
    assert!(
        inbound.chains[inbound
            .select(&info("10.77.1.2:9000", Transport::Raw, None))
            .expect("chain")]
        .tls
        .is_none(),
        "DISABLE"
    );
    assert_eq!(&**stats.pick(), "inbound|9000||");
    assert_eq!(stats.rbac.len(), 2, "DENY and ALLOW on the connection");
    // The inbound clusters go to the original destination from 127.0.0.6.
    let app = out
        .clusters
        .iter()
        .find(|c| c.name == "inbound|9080||")
        .expect("inbound cluster");
    let app = Cluster::try_from(app).expect("converts");
    assert!(app.original_dst());
    assert_eq!(
        app.upstream_bind.and_then(|b| b.v4),
        Some("127.0.0.6".parse().expect("ip"))
    );
    for c in &out.clusters {
        Cluster::try_from(c).unwrap_or_else(|e| panic!("{e}"));
    }
    for rc in &out.routes {
        RouteConfig::try_from(rc).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn registry_only_and_dual_stack_capture_convert() {
    use strait_proxy::config::{ConnectionInfo, Transport};
    let out = golden("sidecar-captured-registry-only");
    let by_name = listeners(&out);
    let outbound = &by_name["virtualOutbound"];
    assert_eq!(
        outbound
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["0.0.0.0:15001", "[::]:15001"]
    );
    let chain = outbound
        .select(&ConnectionInfo {
            local: "[2001:db8::1]:443".parse().expect("address"),
            transport: Transport::Raw,
            sni: None,
            alpn: &[],
        })
        .expect("a chain");
    assert_eq!(
        outbound.chains[chain]
            .tcp_clusters()
            .map(|c| &**c)
            .collect::<Vec<_>>(),
        ["BlackHoleCluster"]
    );
    let rc = RouteConfig::try_from(&out.routes[0]).expect("converts");
    let Some(block) = rc.virtual_hosts.iter().find(|vh| &*vh.name == "block_all") else {
        panic!("{rc:?}")
    };
    assert!(matches!(
        block.routes[0].action,
        Action::Direct { status: 502, .. }
    ));
    let bind = out
        .clusters
        .iter()
        .find(|c| c.name == "InboundPassthroughCluster")
        .map(|c| Cluster::try_from(c).expect("converts").upstream_bind)
        .expect("the inbound passthrough cluster");
    assert_eq!(
        bind.and_then(|b| b.v6),
        Some("::6".parse().expect("ip")),
        "dual-stack: IPv6 connections to the app come from ::6"
    );
}

/// The sidecar-jwt inbound listener, its jwt_authn filter's config changed by `f`.
fn jwt_listener_with(
    f: impl FnOnce(
        &mut envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication,
    ),
) -> Result<Listener, String> {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_filter,
    };
    use prost::Message;
    let out = golden("sidecar-jwt");
    let mut listener = out
        .listeners
        .into_iter()
        .find(|l| l.name.starts_with("inbound"))
        .expect("an inbound listener");
    let filter = &mut listener.filter_chains[0].filters[0];
    let Some(ConfigType::TypedConfig(any)) = &mut filter.config_type else {
        panic!("a typed HCM")
    };
    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("an HCM");
    let jwt = &mut hcm.http_filters[0];
    assert_eq!(
        jwt.name, "envoy.filters.http.jwt_authn",
        "jwt_authn comes first"
    );
    let Some(http_filter::ConfigType::TypedConfig(config)) = &mut jwt.config_type else {
        panic!("a typed jwt_authn")
    };
    let mut decoded = JwtAuthentication::decode(config.value.as_slice()).expect("jwt_authn");
    f(&mut decoded);
    config.value = decoded.encode_to_vec();
    any.value = hcm.encode_to_vec();
    Listener::try_from(&listener).map_err(|e| e.to_string())
}

#[test]
fn sidecar_jwt_converts_providers_requirements_and_claim_principals() {
    use strait_proxy::config::{Principal, Requirement, ValueMatch};
    let listener = jwt_listener_with(|_| {}).expect("the jwt_authn listener converts");
    let http = listener.chains[0].http().expect("an HTTP chain");
    let jwt = http.jwt.as_ref().expect("the jwt_authn filter");
    let names: Vec<&str> = jwt.providers.iter().map(|(n, _)| &**n).collect();
    assert_eq!(names, ["origins-0", "origins-1"]);
    let (_, accounts) = &jwt.providers[0];
    assert_eq!(&*accounts.issuer, "accounts.example");
    assert!(accounts.forward);
    assert_eq!(&*accounts.from_cookies[0], "session");
    assert_eq!(accounts.keys.keys.len(), 1, "the unfetched placeholder key");
    let (_, issuer) = &jwt.providers[1];
    assert_eq!(&*issuer.audiences[0], "ratings");
    assert_eq!(issuer.from_headers[0].name.as_str(), "x-jwt");
    assert_eq!(&*issuer.from_headers[0].prefix, "Bearer ");
    assert_eq!(&*issuer.from_params[0], "token");
    assert_eq!(
        issuer.forward_payload_header.as_ref().map(|h| h.as_str()),
        Some("x-jwt-payload")
    );
    assert_eq!(issuer.claim_to_headers[0].header.as_str(), "x-jwt-sub");
    assert_eq!(issuer.payload_in_metadata.as_deref(), Some("payload"));
    assert_eq!(issuer.clock_skew_seconds, 60, "Envoy's default skew");
    assert!(!issuer.forward);
    // Two providers: any one's token, or each one's valid where present (Istio's shape).
    let Requirement::Any(any) = &jwt.requirement else {
        panic!("requires_any: {:?}", jwt.requirement)
    };
    assert_eq!(any[0], Requirement::Provider(0));
    assert_eq!(any[1], Requirement::Provider(1));
    let Requirement::All(all) = &any[2] else {
        panic!("requires_all: {:?}", any[2])
    };
    assert_eq!(
        all[0],
        Requirement::Any(vec![Requirement::Provider(0), Requirement::AllowMissing].into())
    );
    // The RBAC principals read the verified payload.
    let allow = &http.rbac[0];
    let found = format!("{:?}", allow.policies[0].1.principals);
    assert!(found.contains("Metadata"), "{found}");
    let Principal::And(ids) = &allow.policies[0].1.principals[0] else {
        panic!("and_ids")
    };
    let Principal::Metadata(aud) = &ids[1] else {
        panic!("the audience condition: {:?}", ids[1])
    };
    assert_eq!(
        aud.path.iter().map(|s| &**s).collect::<Vec<_>>(),
        ["payload", "aud"]
    );
    assert!(matches!(&aud.value, ValueMatch::Or(v) if matches!(v[0], ValueMatch::ListOneOf(_))));
}

#[test]
fn jwt_authn_settings_strait_proxy_does_not_run_are_refused() {
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
        JwtRequirement, RemoteJwks, jwt_provider,
    };
    let err = jwt_listener_with(|c| {
        let p = c.providers.get_mut("origins-0").expect("provider");
        p.jwks_source_specifier = Some(jwt_provider::JwksSourceSpecifier::RemoteJwks(
            RemoteJwks::default(),
        ));
    })
    .expect_err("refused");
    assert!(err.contains("remote JWKS"), "{err}");
    let err = jwt_listener_with(|c| {
        c.requirement_map
            .insert("r".into(), JwtRequirement::default());
    })
    .expect_err("refused");
    assert!(err.contains("requirement_map"), "{err}");
    let err = jwt_listener_with(|c| {
        c.providers
            .get_mut("origins-1")
            .expect("provider")
            .require_expiration = true;
    })
    .expect_err("refused");
    assert!(err.contains("provider settings other than"), "{err}");
    let err = jwt_listener_with(|c| {
        c.rules[0].r#match.as_mut().expect("match").path_specifier = Some(
            envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::Prefix(
                "/api".into(),
            ),
        );
    })
    .expect_err("refused");
    assert!(err.contains("prefix \"/\""), "{err}");
    // A JWKS that cannot be read verifies nothing, as in Envoy: not a NACK.
    let listener = jwt_listener_with(|c| {
        let p = c.providers.get_mut("origins-1").expect("provider");
        p.jwks_source_specifier = Some(jwt_provider::JwksSourceSpecifier::LocalJwks(
            envoy_types::pb::envoy::config::core::v3::DataSource {
                specifier: Some(
                    envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                        "nope".into(),
                    ),
                ),
                ..Default::default()
            },
        ));
    })
    .expect("accepted");
    let jwt = listener.chains[0]
        .http()
        .and_then(|h| h.jwt.clone())
        .expect("jwt");
    assert!(jwt.providers[1].1.keys.keys.is_empty());
}

/// The xds_convert fuzz target's seeds (`fuzz/seeds/xds_convert/`): each resource some goldens
/// translate to, encoded, after a byte naming its type as the target reads it. Kept equal to
/// the goldens; `UPDATE_GOLDEN=1` rewrites them.
#[test]
fn fuzz_seeds_are_the_goldens_encoded() {
    use prost::Message;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/xds_convert");
    let mut seeds = std::collections::BTreeMap::new();
    for case in [
        "sidecar-bookinfo",
        "sidecar-mtls",
        "sidecar-policies",
        "sidecar-cors",
        "sidecar-rate-limit",
        "gateway-credential",
    ] {
        let out = golden(case);
        let mut add = |kind: u8, name: &str, bytes: Vec<u8>| {
            let file = format!("{case}-{kind}-{}", name.replace(['|', '/', ':', '.'], "_"));
            let mut seed = vec![kind];
            seed.extend(bytes);
            seeds.insert(file, seed);
        };
        for l in &out.listeners {
            add(0, &l.name, l.encode_to_vec());
        }
        for r in &out.routes {
            add(1, &r.name, r.encode_to_vec());
        }
        for c in &out.clusters {
            add(2, &c.name, c.encode_to_vec());
        }
        for e in &out.endpoints {
            add(3, &e.cluster_name, e.encode_to_vec());
        }
        for s in &out.secrets {
            add(4, &s.name, s.encode_to_vec());
        }
    }
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("seed dir");
        for (file, seed) in &seeds {
            std::fs::write(dir.join(file), seed).expect("write seed");
        }
    }
    let mut committed = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/xds_convert (UPDATE_GOLDEN=1 makes it)")
    {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        committed.insert(name, std::fs::read(entry.path()).expect("read seed"));
    }
    assert!(
        committed == seeds,
        "fuzz/seeds/xds_convert differs from the goldens; UPDATE_GOLDEN=1 rewrites it"
    );
}

/// The HCM's header limits and header timeout are converted (Envoy's defaults where unset);
/// other common HTTP protocol options, and limits out of Envoy's bounds, are refused by name.
#[test]
fn hcm_header_limits_and_timeout_convert() {
    use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions;
    use envoy_types::pb::envoy::config::listener::v3::filter;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
    use prost::Message;
    use strait_proxy::config::HeaderLimits;

    let out = golden("sidecar-bookinfo");
    let base = out
        .listeners
        .iter()
        .find(|l| l.name.starts_with("outbound_"))
        .expect("outbound listener")
        .clone();
    let with = |edit: &dyn Fn(&mut HttpConnectionManager)| {
        let mut l = base.clone();
        let f = &mut l.filter_chains[0].filters[0];
        let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
            panic!("typed HCM");
        };
        let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
        edit(&mut hcm);
        *any = Any {
            type_url: any.type_url.clone(),
            value: hcm.encode_to_vec(),
        };
        Listener::try_from(&l)
    };
    let http = |l: &Listener| l.chains[0].http().expect("http").clone();

    let straitd = http(&with(&|_| {}).expect("converts"));
    assert_eq!(straitd.request_headers, HeaderLimits::default());
    assert_eq!(
        straitd.request_headers_timeout,
        Some(std::time::Duration::from_secs(10)),
        "straitd sets request_headers_timeout"
    );
    let set = with(&|hcm| {
        hcm.max_request_headers_kb = Some(UInt32Value { value: 96 });
        hcm.common_http_protocol_options = Some(HttpProtocolOptions {
            max_headers_count: Some(UInt32Value { value: 200 }),
            ..Default::default()
        });
        hcm.request_headers_timeout = Some(PbDuration {
            seconds: 0,
            nanos: 0,
        });
    })
    .expect("converts");
    let set = http(&set);
    assert_eq!(
        set.request_headers,
        HeaderLimits {
            max_bytes: 96 * 1024,
            max_count: 200
        }
    );
    assert_eq!(
        set.request_headers_timeout, None,
        "0s: no timeout, as in Envoy"
    );

    let refused = with(&|hcm| {
        hcm.common_http_protocol_options = Some(HttpProtocolOptions {
            idle_timeout: Some(PbDuration {
                seconds: 5,
                nanos: 0,
            }),
            ..Default::default()
        });
    })
    .expect_err("idle_timeout is not honoured");
    assert!(
        refused.to_string().contains("common_http_protocol_options"),
        "{refused}"
    );
    let refused = with(&|hcm| hcm.max_request_headers_kb = Some(UInt32Value { value: 0 }))
        .expect_err("0 KiB");
    assert!(
        refused.to_string().contains("max_request_headers_kb"),
        "{refused}"
    );
}

#[test]
fn tcp_routes_convert_to_weighted_clusters_and_sni_chains() {
    use std::net::SocketAddr;
    use strait_proxy::config::{ConnectionInfo, Serve, Transport};
    let info = |local: &str, transport, sni| ConnectionInfo {
        local: local.parse::<SocketAddr>().expect("address"),
        transport,
        sni,
        alpn: &[],
    };
    let weights = |l: &Listener, i: Option<usize>| -> Vec<(String, u32)> {
        match &l.chains[i.expect("a chain")].serve {
            Serve::Tcp(t) => t
                .clusters
                .iter()
                .map(|c| (c.name.to_string(), c.weight))
                .collect(),
            Serve::Http(_) => panic!("a TCP chain"),
        }
    };
    let out = golden("sidecar-tcp-routes");
    let by_name: std::collections::BTreeMap<String, Listener> = out
        .listeners
        .iter()
        .map(|l| {
            let c = Listener::try_from(l).unwrap_or_else(|e| panic!("{}: {e}", l.name));
            (l.name.clone(), c)
        })
        .collect();
    // The VIP: split 80/20; a destinationSubnets range: v2; elsewhere: passed through.
    let echo = &by_name["0.0.0.0_9000"];
    let v = |s: &str| format!("outbound|9000|{s}|tcp-echo.default.svc.cluster.local");
    assert_eq!(
        weights(
            echo,
            echo.select(&info("10.96.0.30:9000", Transport::Raw, None))
        ),
        [(v("v1"), 80), (v("v2"), 20)]
    );
    assert_eq!(
        weights(
            echo,
            echo.select(&info("10.99.3.4:9000", Transport::Raw, None))
        ),
        [(v("v2"), 1)]
    );
    assert_eq!(
        weights(
            echo,
            echo.select(&info("192.0.2.1:9000", Transport::Raw, None))
        ),
        [("PassthroughCluster".to_string(), 1)]
    );
    // App-originated TLS by SNI, passed through unterminated.
    let tls = &by_name["0.0.0.0_443"];
    assert!(tls.inspect.tls);
    let i = tls.select(&info(
        "192.0.2.9:443",
        Transport::Tls,
        Some("a.example.org"),
    ));
    assert!(tls.chains[i.expect("a chain")].tls.is_none());
    assert_eq!(
        weights(tls, i),
        [
            ("outbound|443||a.example.org".to_string(), 50),
            ("outbound|443||b.example.org".to_string(), 50)
        ]
    );

    // The gateway: the TCP server's split, and the passthrough chain beside the HTTPS one.
    let out = golden("gateway-passthrough");
    let tcp = out
        .listeners
        .iter()
        .find(|l| l.name == "127.0.0.1_31400")
        .expect("the TCP listener");
    let tcp = Listener::try_from(tcp).expect("converts");
    let v = |s: &str| format!("outbound|9000|{s}|tcp-echo.default.svc.cluster.local");
    assert_eq!(
        weights(
            &tcp,
            tcp.select(&info("127.0.0.1:31400", Transport::Raw, None))
        ),
        [(v("v1"), 80), (v("v2"), 20)]
    );
    let mut sni = out
        .listeners
        .iter()
        .find(|l| l.name == "127.0.0.1_18443")
        .expect("the TLS listener")
        .clone();
    // The HTTPS server's certificate files are not here; its chain is the gateway case's.
    sni.filter_chains.retain(|c| c.transport_socket.is_none());
    let sni = Listener::try_from(&sni).expect("converts");
    let i = sni.select(&info(
        "127.0.0.1:18443",
        Transport::Tls,
        Some("nginx.example.com"),
    ));
    assert!(sni.chains[i.expect("a chain")].tls.is_none(), "passthrough");
    assert_eq!(
        weights(&sni, i),
        [(
            "outbound|443||my-nginx.default.svc.cluster.local".to_string(),
            1
        )]
    );
    assert_eq!(
        sni.select(&info(
            "127.0.0.1:18443",
            Transport::Tls,
            Some("other.example.com")
        )),
        None
    );
}

/// A listener of a rate-limit golden case, with its first chain's local rate limit config
/// changed by `f` (`None` leaves it as straitd made it).
fn rate_limit_listener_with(
    case: &str,
    f: impl FnOnce(
        &mut envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit,
    ),
) -> Result<Listener, String> {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_filter,
    };
    use prost::Message;
    let out = golden(case);
    let mut listener = out
        .listeners
        .into_iter()
        .find(|l| l.name != "outbound_15001")
        .expect("an inbound or gateway listener");
    let filter = &mut listener.filter_chains[0].filters[0];
    let Some(ConfigType::TypedConfig(any)) = &mut filter.config_type else {
        panic!("a typed HCM")
    };
    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("an HCM");
    let rl = hcm
        .http_filters
        .iter_mut()
        .find(|f| f.name == "envoy.filters.http.local_ratelimit")
        .expect("the local rate limit filter");
    let Some(http_filter::ConfigType::TypedConfig(rl_any)) = &mut rl.config_type else {
        panic!("typed")
    };
    let mut config = LocalRateLimit::decode(rl_any.value.as_slice()).expect("a LocalRateLimit");
    f(&mut config);
    rl_any.value = config.encode_to_vec();
    any.value = hcm.encode_to_vec();
    Listener::try_from(&listener).map_err(|e| e.to_string())
}

#[test]
fn rate_limits_convert_with_their_descriptors_and_actions() {
    use strait_proxy::config::RateLimitAction;
    let listener = rate_limit_listener_with("sidecar-rate-limit", |_| {}).expect("accepted");
    let http = listener.chains[0].http().expect("an HTTP chain");
    let rl = http.rate_limit.as_ref().expect("the filter");
    assert_eq!(&*rl.stat_prefix, "inbound_15108");
    assert_eq!((rl.status, rl.default_bucket), (429, None));
    assert!(rl.x_ratelimit_headers && rl.retry_after && !rl.always_consume_default);
    assert_eq!(rl.max_dynamic_descriptors, 1024);
    assert_eq!(
        rl.descriptors
            .iter()
            .map(|d| (
                d.is_wildcard(),
                d.bucket.max_tokens,
                d.bucket.tokens_per_fill
            ))
            .collect::<Vec<_>>(),
        [
            (false, 20, 10),
            (true, 100, 100),
            (false, 1000, 1000),
            (true, 1000, 1000)
        ]
    );
    assert!(matches!(
        rl.rate_limits[0].as_slice(),
        [RateLimitAction::HeaderValueMatch { headers, expect_match: true, .. }] if headers.len() == 3
    ));
    assert!(matches!(
        rl.rate_limits[1].as_slice(),
        [
            RateLimitAction::HeaderValueMatch { .. },
            RateLimitAction::RemoteAddress
        ]
    ));
    assert!(matches!(
        rl.rate_limits[2].as_slice(),
        [
            RateLimitAction::GenericKey { .. },
            RateLimitAction::RequestHeaders {
                skip_if_absent: true,
                ..
            }
        ]
    ));
    let gateway = rate_limit_listener_with("gateway-rate-limit", |_| {}).expect("accepted");
    let http = gateway.chains[0].http().expect("an HTTP chain");
    assert!(http.cors && http.rate_limit.is_some());
}

#[test]
fn rate_limit_settings_strait_proxy_cannot_honour_are_refused_by_name() {
    use envoy_types::pb::envoy::config::route::v3::rate_limit::{Action, action};
    let refused = |f: &dyn Fn(
        &mut envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit,
    )| {
        rate_limit_listener_with("sidecar-rate-limit", f).expect_err("refused")
    };
    for (err, fragment) in [
        (
            refused(&|c| c.filter_enforced = None),
            "filter_enforced: not supported by strait-proxy: rate limiting (or enforcing it on) only a share",
        ),
        (
            refused(&|c| c.local_rate_limit_per_downstream_connection = true),
            "local rate limit settings other than",
        ),
        (
            refused(&|c| c.descriptors[0].shadow_mode = true),
            "descriptors[0].shadow_mode",
        ),
        (
            refused(&|c| {
                c.descriptors[0]
                    .token_bucket
                    .as_mut()
                    .unwrap()
                    .fill_interval = Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 0,
                    nanos: 10_000_000,
                })
            }),
            "descriptors[0].token_bucket.fill_interval",
        ),
        (
            refused(&|c| c.rate_limits.clear()),
            "the route's or virtual host's rate_limits",
        ),
        (
            refused(&|c| {
                c.rate_limits[0].actions.push(Action {
                    action_specifier: Some(action::ActionSpecifier::SourceCluster(
                        action::SourceCluster {},
                    )),
                })
            }),
            "rate_limits[0].actions[1]",
        ),
        (
            refused(&|c| c.rate_limits[0].disable_key = "off".into()),
            "rate_limits[0]: not supported by strait-proxy: rate limit settings other than actions",
        ),
    ] {
        assert!(err.contains(fragment), "{fragment:?} not in {err}");
    }
}

#[test]
fn access_logs_convert_on_the_side_that_logs_and_other_loggers_are_refused() {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use prost::Message;
    let out = golden("sidecar-access-log");
    let http_of = |l: &Listener| l.chains[0].http().expect("an HTTP chain").access_log;
    for l in &out.listeners {
        let converted = Listener::try_from(l).expect("accepted");
        assert_eq!(
            http_of(&converted),
            l.name == "outbound_15001",
            "{}",
            l.name
        );
    }
    let mut outbound = out
        .listeners
        .iter()
        .find(|l| l.name == "outbound_15001")
        .expect("outbound")
        .clone();
    let Some(ConfigType::TypedConfig(any)) = &mut outbound.filter_chains[0].filters[0].config_type
    else {
        panic!("a typed HCM")
    };
    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("an HCM");
    let log = &mut hcm.access_log[0];
    let Some(envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType::TypedConfig(
        file_any,
    )) = &mut log.config_type
    else {
        panic!("typed")
    };
    let mut file = FileAccessLog::decode(file_any.value.as_slice()).expect("a FileAccessLog");
    file.path = "/var/log/envoy.log".into();
    file_any.value = file.encode_to_vec();
    any.value = hcm.encode_to_vec();
    let err = Listener::try_from(&outbound)
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("access_log[0].typed_config.path") && err.contains("only /dev/stdout"),
        "{err}"
    );
}
