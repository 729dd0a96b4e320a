//! Every validation error path, and the real Istio samples, through the one validator.

use strait_model::{GatewayRef, LoadBalancer, Model, RouteAction, StringMatch, loader};

const REGISTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: productpage}
spec:
  hosts: [productpage.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: productpage}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details}
spec:
  hosts: [details.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: details}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: multi}
spec:
  hosts: [multi.default.svc.cluster.local]
  ports: [{number: 80, name: http}, {number: 8080, name: http-alt}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 127.0.0.1, ports: {http: 20001}, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2}
spec: {address: 127.0.0.1, ports: {http: 20002}, labels: {app: reviews, version: v2}, weight: 3}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

fn build(extra: &str) -> Result<Model, String> {
    let mut objects = loader::parse(REGISTRY, "registry.yaml").map_err(|e| format!("{e:?}"))?;
    objects.extend(loader::parse(extra, "test.yaml").map_err(|e| {
        e.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })?);
    Model::build(&objects).map_err(|e| e.to_string())
}

/// Builds and expects exactly one error containing every fragment.
#[track_caller]
fn rejects(extra: &str, fragments: &[&str]) {
    let err = build(extra).expect_err("configuration should be rejected");
    for f in fragments {
        assert!(err.contains(f), "error should contain {f:?}:\n{err}");
    }
}

fn vs(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n{spec}"
    )
}

#[test]
fn the_registry_builds_services_with_endpoints_from_workload_entries() {
    let m = build("").unwrap();
    let reviews = &m.services["reviews.default.svc.cluster.local"];
    assert_eq!(reviews.endpoints.len(), 2);
    assert_eq!(reviews.endpoints[1].weight, 3);
    assert_eq!(reviews.endpoints[0].port_for(&reviews.ports[0]), 20001);
    assert!(!reviews.mesh_external);
    assert_eq!(m.subsets_for("reviews.default.svc.cluster.local").len(), 2);
}

#[test]
fn routes_resolve_short_hosts_and_default_weights() {
    let m = build(&vs(
        "  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n",
    ))
    .unwrap();
    let v = &m.virtual_services[0];
    assert_eq!(v.hosts, ["reviews.default.svc.cluster.local"]);
    assert_eq!(v.gateways, [GatewayRef::Mesh]);
    let RouteAction::Route(d) = &v.http[0].action else {
        panic!()
    };
    assert_eq!(d[0].weight, 100);
    assert_eq!(
        d[0].destination.cluster_name(),
        "outbound|9080|v1|reviews.default.svc.cluster.local"
    );
}

#[test]
fn weights_are_relative_and_checked_as_istio_does() {
    let two = |a: i32, b: i32| {
        vs(&format!(
            "  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: v1}}\n      weight: {a}\n    - destination: {{host: reviews, subset: v2}}\n      weight: {b}\n"
        ))
    };
    assert!(build(&two(1, 3)).is_ok(), "weights need not add up to 100");
    rejects(&two(0, 0), &["spec.http[0].route", "add up to 0"]);
    rejects(&two(-1, 50), &["spec.http[0].route[0].weight", "negative"]);
}

#[test]
fn a_route_to_an_unknown_host_subset_or_port_is_an_error() {
    rejects(
        &vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: nowhere}\n"),
        &[
            "VirtualService default/reviews",
            "spec.http[0].route[0].destination.host",
            "nowhere.default.svc.cluster.local",
            "not a known service",
        ],
    );
    rejects(
        &vs(
            "  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v9}\n",
        ),
        &[
            "spec.http[0].route[0].destination.subset",
            "\"v9\"",
            "not defined",
        ],
    );
    rejects(
        &vs(
            "  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, port: {number: 1}}\n",
        ),
        &["spec.http[0].route[0].destination.port.number", "no port 1"],
    );
    rejects(
        &vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: multi}\n"),
        &["destination.port", "several ports"],
    );
}

const TCP_REGISTRY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo.default.svc.cluster.local]
  addresses: [10.96.0.30]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, labels: {app: tcp-echo, version: v1}}
  - {address: 127.0.0.2, labels: {app: tcp-echo, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo}
spec:
  host: tcp-echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
"#;

#[test]
fn tcp_and_tls_routes_are_validated_as_istio_does() {
    let m = build(&format!(
        "{TCP_REGISTRY}{}",
        vs("  hosts: [tcp-echo]\n  tcp:\n  - match: [{port: 9000, destinationSubnets: [10.1.0.0/16, 10.2.0.1], sourceLabels: {app: a}}]\n    route:\n    - {destination: {host: tcp-echo, subset: v1}, weight: 80}\n    - {destination: {host: tcp-echo, subset: v2}, weight: 20}\n  tls:\n  - match: [{sniHosts: [tcp-echo]}]\n    route: [{destination: {host: tcp-echo}}]\n")
    ))
    .unwrap();
    let v = &m.virtual_services[0];
    assert_eq!(v.tcp[0].matches[0].port, Some(9000));
    assert_eq!(v.tcp[0].matches[0].destination_subnets.len(), 2);
    assert_eq!(
        v.tcp[0].route.iter().map(|d| d.weight).collect::<Vec<_>>(),
        [80, 20]
    );
    // SNI names are literal, as in Istio: a short name is not resolved.
    assert_eq!(v.tls[0].matches[0].sni_hosts, ["tcp-echo"]);

    let tcp = |spec: &str| format!("{TCP_REGISTRY}{}", vs(spec));
    rejects(
        &tcp("  hosts: [tcp-echo]\n  tcp:\n  - match: [{port: 9000}]\n"),
        &[
            "VirtualService default/reviews",
            "spec.tcp[0].route",
            "at least one destination",
        ],
    );
    rejects(
        &tcp(
            "  hosts: [tcp-echo]\n  tcp:\n  - match: [{destinationSubnets: [10.1.0.1/16]}]\n    route: [{destination: {host: tcp-echo}}]\n",
        ),
        &["spec.tcp[0].match[0].destinationSubnets[0]", "host bits"],
    );
    rejects(
        &tcp(
            "  hosts: [tcp-echo]\n  tcp:\n  - match: [{sourceSubnet: 10.0.0.0/8}]\n    route: [{destination: {host: tcp-echo}}]\n",
        ),
        &["spec.tcp[0].match[0].sourceSubnet", "not supported"],
    );
    rejects(
        &tcp(
            "  hosts: [tcp-echo]\n  tcp:\n  - match: [{port: 70000}]\n    route: [{destination: {host: tcp-echo}}]\n",
        ),
        &["spec.tcp[0].match[0].port"],
    );
    rejects(
        &tcp(
            "  hosts: [tcp-echo]\n  tcp:\n  - match: [{gateways: [gw]}]\n    route: [{destination: {host: tcp-echo}}]\n",
        ),
        &[
            "spec.tcp[0].match[0].gateways[0]",
            "not one of the VirtualService's gateways",
        ],
    );
    rejects(
        &tcp(
            "  hosts: [tcp-echo]\n  tcp:\n  - route:\n    - {destination: {host: tcp-echo, subset: v3}}\n",
        ),
        &["spec.tcp[0].route[0].destination.subset", "not defined"],
    );
    rejects(
        &tcp(
            "  hosts: [tcp-echo]\n  tcp:\n  - route:\n    - {destination: {host: tcp-echo}, weight: 0}\n    - {destination: {host: tcp-echo, subset: v1}, weight: 0}\n",
        ),
        &["spec.tcp[0].route", "add up to 0"],
    );
    // A tcp destination has no headers to change (Istio's RouteDestination has none).
    rejects(
        &tcp(
            "  hosts: [tcp-echo]\n  tcp:\n  - route: [{destination: {host: tcp-echo}, headers: {}}]\n",
        ),
        &["spec.tcp[0].route[0]", "headers"],
    );
    rejects(
        &tcp("  hosts: [tcp-echo]\n  tls:\n  - route: [{destination: {host: tcp-echo}}]\n"),
        &["spec.tls[0].match", "at least one match"],
    );
    rejects(
        &tcp(
            "  hosts: [tcp-echo]\n  tls:\n  - match: [{port: 443}]\n    route: [{destination: {host: tcp-echo}}]\n",
        ),
        &["spec.tls[0].match[0].sniHosts", "at least one SNI host"],
    );
    rejects(
        &tcp(
            "  hosts: [tcp-echo]\n  tls:\n  - match: [{sniHosts: [other.example.com]}]\n    route: [{destination: {host: tcp-echo}}]\n",
        ),
        &[
            "spec.tls[0].match[0].sniHosts[0]",
            "not covered by any of the VirtualService's hosts",
        ],
    );
    rejects(
        &tcp(
            "  hosts: [tcp-echo]\n  tls:\n  - match: [{sniHosts: [\"bad_name\"]}]\n    route: [{destination: {host: tcp-echo}}]\n",
        ),
        &["spec.tls[0].match[0].sniHosts[0]", "invalid host"],
    );
    rejects(
        &tcp("  hosts: [tcp-echo]\n  tls:\n  - match: [{sniHosts: [tcp-echo]}]\n"),
        &["spec.tls[0].route", "at least one destination"],
    );
}

#[test]
fn gateway_tcp_and_passthrough_servers_are_checked() {
    let gw = |servers: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: g}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}"
        )
    };
    let m = build(&gw(
        "  - port: {number: 31400, name: tcp, protocol: TCP}\n    hosts: ['*']\n  - port: {number: 443, name: tls, protocol: TLS}\n    tls: {mode: PASSTHROUGH}\n    hosts: [a.example.com]\n  - port: {number: 443, name: https, protocol: HTTPS}\n    tls: {mode: PASSTHROUGH}\n    hosts: [b.example.com]\n",
    ))
    .unwrap();
    let g = m.gateways.values().next().unwrap();
    assert!(g.servers[1].is_passthrough() && g.servers[2].is_passthrough());
    assert_eq!(g.servers[0].protocol, strait_model::Protocol::Tcp);
    rejects(
        &gw("  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: [a.example.com]\n"),
        &[
            "Gateway default/g",
            "spec.servers[0].tls",
            "needs tls (mode PASSTHROUGH)",
        ],
    );
    rejects(
        &gw(
            "  - port: {number: 443, name: tls, protocol: TLS}\n    tls: {mode: AUTO_PASSTHROUGH}\n    hosts: ['*.local']\n",
        ),
        &[
            "spec.servers[0].tls.mode",
            "AUTO_PASSTHROUGH",
            "not supported",
        ],
    );
    rejects(
        &gw(
            "  - port: {number: 443, name: tls, protocol: TLS}\n    tls: {mode: SIMPLE, serverCertificate: /c, privateKey: /k}\n    hosts: [a.example.com]\n",
        ),
        &[
            "spec.servers[0].tls.mode",
            "TLS mode SIMPLE on a TLS server",
            "not supported",
        ],
    );
    rejects(
        &gw(
            "  - port: {number: 443, name: tls, protocol: TLS}\n    tls: {mode: PASSTHROUGH, credentialName: c}\n    hosts: [a.example.com]\n",
        ),
        &[
            "spec.servers[0].tls.credentialName",
            "does not terminate TLS",
        ],
    );
    rejects(
        &gw(
            "  - port: {number: 31400, name: tcp, protocol: TCP}\n    tls: {mode: PASSTHROUGH}\n    hosts: ['*']\n",
        ),
        &["spec.servers[0].tls", "takes no tls"],
    );
    rejects(
        &gw(
            "  - port: {number: 31400, name: tcp, protocol: TCP}\n    hosts: ['*']\n  - port: {number: 31400, name: tcp2, protocol: TCP}\n    hosts: ['*']\n",
        ),
        &["spec.servers[1].port", "another TCP server"],
    );
    rejects(
        &gw(
            "  - port: {number: 80, name: tcp, protocol: TCP}\n    hosts: ['*']\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n",
        ),
        &["spec.servers[1].port", "mixes plain HTTP and TCP servers"],
    );
    rejects(
        &gw(
            "  - port: {number: 443, name: tls, protocol: TLS}\n    tls: {mode: PASSTHROUGH}\n    hosts: [a.example.com]\n  - port: {number: 443, name: https, protocol: HTTPS}\n    tls: {mode: SIMPLE, serverCertificate: /c, privateKey: /k}\n    hosts: [a.example.com]\n",
        ),
        &["spec.servers[1].hosts", "SNI cannot tell them apart"],
    );
    rejects(
        &gw("  - port: {number: 6379, name: redis, protocol: REDIS}\n    hosts: ['*']\n"),
        &["spec.servers[0].port.protocol", "not supported"],
    );
}

const DELEGATE_ROOT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root}
spec:
  hosts: [reviews]
  http:
  - name: api
    match: [{uri: {prefix: /api}}, {uri: {prefix: /v2}}]
    timeout: 3s
    delegate: {name: leaf, namespace: team}
  - route: [{destination: {host: ratings}}]
---
"#;

fn leaf(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: leaf, namespace: team}}\nspec:\n{spec}"
    )
}

#[test]
fn delegates_merge_into_their_root_as_in_istio() {
    let m = build(&format!(
        "{DELEGATE_ROOT}{}",
        leaf("  http:\n  - name: one\n    match: [{uri: {prefix: /api/one}}]\n    route: [{destination: {host: reviews.default.svc.cluster.local, subset: v2}}]\n  - match: [{uri: {exact: /elsewhere}}]\n    route: [{destination: {host: details.default.svc.cluster.local}}]\n  - timeout: 1s\n    route: [{destination: {host: reviews.default.svc.cluster.local}}]\n")
    ))
    .unwrap();
    // The delegate is not a VirtualService of its own.
    assert_eq!(m.virtual_services.len(), 1);
    let http = &m.virtual_services[0].http;
    assert_eq!(http.len(), 3, "{http:#?}");
    // Its first route, narrowed to the root's first match only; named root-leaf.
    assert_eq!(http[0].name.as_deref(), Some("api-one"));
    assert_eq!(http[0].matches.len(), 1);
    assert_eq!(
        http[0].matches[0].uri,
        Some(StringMatch::Prefix("/api/one".into()))
    );
    assert_eq!(http[0].timeout, Some(std::time::Duration::from_secs(3)));
    assert_eq!(
        http[0].delegate.as_ref().map(|d| d.name.as_str()),
        Some("leaf")
    );
    // /elsewhere is under neither /api nor /v2: left out, with a warning.
    assert!(
        m.warnings.iter().any(|w| w.path == "spec.http[0].delegate"
            && w.message
                .contains("route spec.http[1] of VirtualService team/leaf conflicts")),
        "{:?}",
        m.warnings
    );
    // The last one takes both root matches, its own timeout.
    assert_eq!(http[1].matches.len(), 2);
    assert_eq!(http[1].timeout, Some(std::time::Duration::from_secs(1)));
    assert_eq!(http[2].delegate, None);

    rejects(
        DELEGATE_ROOT,
        &[
            "VirtualService default/root",
            "spec.http[0].delegate",
            "VirtualService team/leaf does not exist",
        ],
    );
    // A delegate's own error stays on it; the root names it as rejected.
    let err = build(&format!(
        "{DELEGATE_ROOT}{}",
        leaf("  http:\n  - route: [{destination: {host: nowhere.example.com}}]\n")
    ))
    .unwrap_err();
    assert!(
        err.contains("VirtualService team/leaf: spec.http[0].route[0].destination.host"),
        "{err}"
    );
    assert!(err.contains("VirtualService default/root: spec.http[0].delegate: VirtualService team/leaf was rejected"), "{err}");
    rejects(
        &format!(
            "{DELEGATE_ROOT}{}",
            leaf(
                "  exportTo: [.]\n  http:\n  - route: [{destination: {host: ratings.default.svc.cluster.local}}]\n"
            )
        ),
        &[
            "spec.http[0].delegate",
            "not exported to namespace \"default\"",
        ],
    );
    rejects(
        &format!(
            "{DELEGATE_ROOT}{}",
            leaf(
                "  gateways: [mesh]\n  tcp:\n  - route: [{destination: {host: ratings.default.svc.cluster.local}}]\n  http:\n  - delegate: {name: x}\n"
            )
        ),
        &[
            "VirtualService team/leaf: spec.gateways",
            "VirtualService team/leaf: spec.tcp",
            "VirtualService team/leaf: spec.http[0].delegate: a delegate's route cannot delegate again",
        ],
    );
    rejects(
        &vs(
            "  hosts: [reviews]\n  http:\n  - delegate: {name: leaf}\n    route: [{destination: {host: reviews}}]\n",
        ),
        &["spec.http[0].route", "takes its action from the delegate"],
    );
    rejects(
        &format!(
            "{}{}",
            vs("  hosts: [reviews]\n  http:\n  - delegate: {name: ratings}\n"),
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n  hosts: [ratings]\n  http:\n  - route: [{destination: {host: ratings}}]\n"
        ),
        &[
            "spec.http[0].delegate",
            "has hosts; a delegate is a VirtualService without hosts",
        ],
    );
}

/// Istio's tcp-echo samples (a TCP gateway server, tcp routes split between subsets) load
/// as they are over a registry with the tcp-echo service.
#[test]
fn istio_tcp_echo_samples_load_as_they_are() {
    let dir = samples_dir().join("tcp-echo");
    let registry = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo.default.svc.cluster.local]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, labels: {app: tcp-echo, version: v1}}
  - {address: 127.0.0.2, labels: {app: tcp-echo, version: v2}}
"#;
    let all = std::fs::read_to_string(dir.join("tcp-echo-all-v1.yaml")).unwrap();
    let split = std::fs::read_to_string(dir.join("tcp-echo-20-v2.yaml")).unwrap();
    let mut objects = loader::parse(registry, "registry.yaml").unwrap();
    objects.extend(loader::parse(&all, "tcp-echo-all-v1.yaml").unwrap());
    let m = Model::build(&objects).unwrap_or_else(|e| panic!("tcp-echo-all-v1.yaml: {e}"));
    assert_eq!(m.virtual_services[0].tcp[0].route.len(), 1);
    // The 80/20 split replaces the all-v1 VirtualService.
    let split = loader::parse(&split, "tcp-echo-20-v2.yaml").unwrap();
    objects.retain(|o| !split.iter().any(|s| s.id == o.id));
    objects.extend(split);
    let m = Model::build(&objects).unwrap_or_else(|e| panic!("tcp-echo-20-v2.yaml: {e}"));
    let weights: Vec<u32> = m.virtual_services[0].tcp[0]
        .route
        .iter()
        .map(|d| d.weight)
        .collect();
    assert_eq!(weights, [80, 20]);
}

#[test]
fn matches_are_checked() {
    let with_match = |m: &str| {
        vs(&format!(
            "  hosts: [reviews]\n  http:\n  - match:\n    - {m}\n    route:\n    - destination: {{host: reviews}}\n"
        ))
    };
    assert!(build(&with_match("{uri: {prefix: /a}, headers: {end-user: {exact: jason}, x-present: {}}, method: {exact: GET}, queryParams: {q: {regex: 'a.*'}}, ignoreUriCase: true}")).is_ok());
    rejects(
        &with_match("{uri: {exact: /a, prefix: /b}}"),
        &[
            "spec.http[0].match[0].uri",
            "only one of exact, prefix or regex",
        ],
    );
    rejects(
        &with_match("{uri: {regex: '(unclosed'}}"),
        &[
            "spec.http[0].match[0].uri.regex",
            "invalid regular expression",
        ],
    );
    // Valid for Rust's regex, refused by Envoy's RE2: caught here instead of as a NACK.
    rejects(
        &with_match("{uri: {regex: '(?x) /a # b'}}"),
        &["spec.http[0].match[0].uri.regex", "RE2", "(x) flag"],
    );
    rejects(
        &with_match("{headers: {End-User: {exact: jason}}}"),
        &["spec.http[0].match[0].headers.End-User", "lowercase"],
    );
    rejects(
        &with_match("{queryParams: {q: {prefix: a}}}"),
        &["spec.http[0].match[0].queryParams.q", "exact or regex"],
    );
    rejects(
        &with_match("{port: 70000}"),
        &["spec.http[0].match[0].port", "1-65535"],
    );
    rejects(
        &with_match("{gateways: [nope]}"),
        &[
            "spec.http[0].match[0].gateways[0]",
            "Gateway default/nope does not exist",
        ],
    );
}

#[test]
fn retries_timeouts_faults_and_mirrors_are_checked() {
    let route = |extra: &str| {
        vs(&format!(
            "  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews}}\n{extra}"
        ))
    };
    let m = build(&route(
        "    retries: {attempts: 3, perTryTimeout: 500ms}\n    timeout: 2s\n",
    ))
    .unwrap();
    let r = m.virtual_services[0].http[0].retries.as_ref().unwrap();
    assert_eq!(r.attempts, 3);
    assert_eq!(
        r.retriable_status_codes,
        [503],
        "Istio's default retryOn includes 503"
    );
    let m = build(&route("    retries: {attempts: 2, retryOn: '5xx,429'}\n")).unwrap();
    let r = m.virtual_services[0].http[0].retries.as_ref().unwrap();
    assert_eq!(r.retry_on, ["5xx", "retriable-status-codes"]);
    assert_eq!(r.retriable_status_codes, [429]);

    rejects(
        &route("    retries: {attempts: 2, retryOn: 'sometimes'}\n"),
        &[
            "spec.http[0].retries.retryOn",
            "unknown retry condition \"sometimes\"",
        ],
    );
    rejects(
        &route("    retries: {attempts: -1}\n"),
        &["spec.http[0].retries.attempts", "non-negative"],
    );
    rejects(
        &route("    timeout: soon\n"),
        &["spec.http[0].timeout", "expected a duration"],
    );
    rejects(
        &route("    retries: {attempts: 1, perTryTimeout: 0s}\n"),
        &["spec.http[0].retries.perTryTimeout", "at least 1ms"],
    );
    rejects(
        &route("    fault: {abort: {httpStatus: 700}}\n"),
        &["spec.http[0].fault.abort.httpStatus", "200-599"],
    );
    rejects(
        &route("    fault: {delay: {fixedDelay: 1s, percentage: {value: 150}}}\n"),
        &["spec.http[0].fault.delay.percentage.value", "0-100"],
    );
    rejects(
        &route("    fault: {delay: {percent: 50}}\n"),
        &["spec.http[0].fault.delay.fixedDelay", "required"],
    );
    rejects(
        &route("    mirror: {host: nowhere}\n"),
        &["spec.http[0].mirror.host", "not a known service"],
    );
    rejects(
        &route("    headers: {request: {set: {':path': /x}}}\n"),
        &[
            "spec.http[0].headers.request.set.:path",
            "cannot be changed",
        ],
    );
    rejects(
        &route("    rewrite: {uri: /x, uriRegexRewrite: {match: a, rewrite: b}}\n"),
        &["spec.http[0].rewrite", "not both"],
    );
}

#[test]
fn cors_policies_are_checked_as_istio_does() {
    let cors = |policy: &str| {
        vs(&format!(
            "  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews}}\n    corsPolicy: {policy}\n"
        ))
    };
    let m = build(&cors(
        "{allowOrigins: [{exact: 'https://a.example'}, {prefix: 'https://b.'}, {regex: 'https://.*\\.c\\.example'}], allowMethods: [GET, POST], allowHeaders: [X-Token], exposeHeaders: [x-id], maxAge: 24h, allowCredentials: true, unmatchedPreflights: IGNORE}",
    ))
    .unwrap();
    let c = m.virtual_services[0].http[0]
        .cors
        .as_ref()
        .expect("a policy");
    assert_eq!(
        c.allow_origins,
        [
            StringMatch::Exact("https://a.example".into()),
            StringMatch::Prefix("https://b.".into()),
            StringMatch::Regex(r"https://.*\.c\.example".into()),
        ]
    );
    assert_eq!(c.allow_methods, ["GET", "POST"]);
    assert_eq!(c.allow_headers, ["X-Token"], "header names keep their case");
    assert_eq!(c.max_age, Some(std::time::Duration::from_secs(86_400)));
    assert_eq!(c.allow_credentials, Some(true));
    assert!(!c.forward_unmatched_preflights);
    let c = build(&cors("{allowOrigins: [{exact: x}]}")).unwrap();
    let c = c.virtual_services[0].http[0]
        .cors
        .clone()
        .expect("a policy");
    assert!(c.forward_unmatched_preflights, "FORWARD is the default");
    assert_eq!(c.max_age, None);
    // The deprecated list is read as exact origins, as Istio reads it.
    let m = build(&cors("{allowOrigin: ['*']}")).unwrap();
    assert_eq!(
        m.virtual_services[0].http[0]
            .cors
            .as_ref()
            .expect("a policy")
            .allow_origins,
        [StringMatch::Exact("*".into())]
    );

    // Envoy's CORS filter skips routes that answer themselves.
    let m = build(&vs(
        "  hosts: [reviews]\n  http:\n  - directResponse: {status: 204}\n    corsPolicy: {allowOrigins: [{exact: x}]}\n",
    ))
    .unwrap();
    assert!(
        m.warnings
            .iter()
            .any(|w| w.path == "spec.http[0].corsPolicy" && w.message.contains("no effect")),
        "{:?}",
        m.warnings
    );

    rejects(
        &cors("{allowOrigins: [{exact: x}, {regex: '(unclosed'}]}"),
        &[
            "spec.http[0].corsPolicy.allowOrigins[1].regex",
            "invalid regular expression",
        ],
    );
    rejects(
        &cors("{allowOrigins: [{exact: ''}]}"),
        &[
            "spec.http[0].corsPolicy.allowOrigins[0].exact",
            "must not be empty",
        ],
    );
    rejects(
        &cors("{allowOrigins: [{exact: x, prefix: y}]}"),
        &["spec.http[0].corsPolicy.allowOrigins[0]", "only one of"],
    );
    rejects(
        &cors("{allowOrigins: []}"),
        &[
            "spec.http[0].corsPolicy.allowOrigins",
            "at least one origin",
        ],
    );
    rejects(
        &cors("{allowMethods: [GET]}"),
        &[
            "spec.http[0].corsPolicy.allowOrigins",
            "at least one origin",
        ],
    );
    rejects(
        &cors("{allowOrigins: [{exact: x}], allowOrigin: [y]}"),
        &[
            "spec.http[0].corsPolicy.allowOrigin",
            "set only allowOrigins",
        ],
    );
    rejects(
        &cors("{allowOrigin: ['']}"),
        &[
            "spec.http[0].corsPolicy.allowOrigin[0]",
            "must not be empty",
        ],
    );
    rejects(
        &cors("{allowOrigins: [{exact: x}], allowMethods: [GET, FETCH]}"),
        &[
            "spec.http[0].corsPolicy.allowMethods[1]",
            "not a supported HTTP method",
        ],
    );
    rejects(
        &cors("{allowOrigins: [{exact: x}], allowHeaders: ['x token']}"),
        &[
            "spec.http[0].corsPolicy.allowHeaders[0]",
            "not a valid header name",
        ],
    );
    rejects(
        &cors("{allowOrigins: [{exact: x}], exposeHeaders: ['']}"),
        &[
            "spec.http[0].corsPolicy.exposeHeaders[0]",
            "not a valid header name",
        ],
    );
    rejects(
        &cors("{allowOrigins: [{exact: x}], maxAge: soon}"),
        &["spec.http[0].corsPolicy.maxAge"],
    );
    rejects(
        &cors("{allowOrigins: [{exact: x}], maxAge: 1500ms}"),
        &["spec.http[0].corsPolicy.maxAge", "whole number of seconds"],
    );
    rejects(
        &cors("{allowOrigins: [{exact: x}], unmatchedPreflights: DROP}"),
        &[
            "spec.http[0].corsPolicy.unmatchedPreflights",
            "FORWARD or IGNORE",
        ],
    );
    rejects(
        &cors("{allowOrigins: [{exact: x}], allowPrivateNetwork: true}"),
        &["allowPrivateNetwork"],
    );
}

#[test]
fn route_redirect_and_direct_response_are_exclusive() {
    rejects(
        &vs("  hosts: [reviews]\n  http:\n  - match: [{uri: {prefix: /}}]\n"),
        &["spec.http[0]", "one of route, redirect or directResponse"],
    );
    rejects(
        &vs(
            "  hosts: [reviews]\n  http:\n  - redirect: {uri: /x}\n    directResponse: {status: 200}\n",
        ),
        &["only one of route, redirect or directResponse"],
    );
    rejects(
        &vs("  hosts: [reviews]\n  http:\n  - redirect: {uri: /x, redirectCode: 200}\n"),
        &["spec.http[0].redirect.redirectCode"],
    );
    assert!(build(&vs("  hosts: [reviews]\n  http:\n  - directResponse: {status: 418, body: {string: teapot}}\n")).is_ok());
}

#[test]
fn two_virtual_services_may_not_claim_one_host() {
    let other = "\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews-2}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  http:\n  - route: [{destination: {host: reviews}}]\n";
    rejects(
        &format!(
            "{}{other}",
            vs("  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews}}]\n")
        ),
        &[
            "VirtualService default/reviews-2",
            "spec.hosts[0]",
            "already routed by VirtualService default/reviews",
        ],
    );
}

#[test]
fn the_mesh_may_not_route_the_wildcard_host() {
    rejects(
        &vs("  hosts: ['*']\n  http:\n  - route: [{destination: {host: reviews}}]\n"),
        &["spec.hosts[0]", "not allowed for the mesh"],
    );
}

#[test]
fn destination_rules_are_checked() {
    let dr = |spec: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: ratings}}\nspec:\n  host: ratings\n{spec}"
        )
    };
    let m = build(&dr("  trafficPolicy:\n    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n    connectionPool: {tcp: {maxConnections: 10, connectTimeout: 1s}, http: {http1MaxPendingRequests: 5, maxRetries: 2, idleTimeout: 30s}}\n    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}\n    portLevelSettings:\n    - port: {number: 9080}\n      loadBalancer: {simple: LEAST_REQUEST}\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy: {loadBalancer: {simple: RANDOM}}\n")).unwrap();
    let host = "ratings.default.svc.cluster.local";
    assert_eq!(
        m.policy_for(host, 9080, None).load_balancer,
        Some(LoadBalancer::LeastRequest),
        "port level overrides top level"
    );
    assert_eq!(
        m.policy_for(host, 9080, Some("v1")).load_balancer,
        Some(LoadBalancer::Random),
        "subset overrides port level"
    );
    assert!(matches!(
        m.policy_for(host, 1234, None).load_balancer,
        Some(LoadBalancer::ConsistentHash { .. })
    ));
    assert_eq!(
        m.policy_for(host, 9080, Some("v1"))
            .outlier_detection
            .unwrap()
            .consecutive_5xx,
        Some(1)
    );

    rejects(
        &dr("  trafficPolicy: {loadBalancer: {simple: FASTEST}}\n"),
        &[
            "DestinationRule default/ratings",
            "spec.trafficPolicy.loadBalancer.simple",
            "FASTEST",
        ],
    );
    rejects(
        &dr(
            "  trafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}\n",
        ),
        &["not both"],
    );
    rejects(
        &dr("  trafficPolicy: {loadBalancer: {consistentHash: {}}}\n"),
        &[
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "exactly one hash key",
        ],
    );
    rejects(
        &dr("  trafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}\n"),
        &[
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "0-100",
        ],
    );
    rejects(
        &dr("  trafficPolicy: {outlierDetection: {interval: 0s}}\n"),
        &[
            "spec.trafficPolicy.outlierDetection.interval",
            "at least 1ms",
        ],
    );
    rejects(
        &dr("  trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}\n"),
        &["spec.trafficPolicy.connectionPool.tcp.maxConnections"],
    );
    rejects(
        &dr("  subsets: [{name: v1}, {name: v1}]\n"),
        &["spec.subsets[1].name", "defined twice"],
    );
    rejects(
        &dr(
            "  subsets: [{name: v1}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ratings-2}\nspec: {host: ratings.default.svc.cluster.local}\n",
        ),
        &[
            "DestinationRule default/ratings-2",
            "already has DestinationRule default/ratings",
        ],
    );
}

#[test]
fn service_entries_are_checked() {
    let se = |spec: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ext}}\nspec:\n{spec}"
        )
    };
    rejects(
        &se("  hosts: [api.example.com]\n  ports: [{number: 443, name: https, protocol: HTTPS}]\n"),
        &[
            "ServiceEntry default/ext",
            "spec.resolution",
            "STATIC or DNS",
        ],
    );
    rejects(
        &se(
            "  hosts: [api.example.com]\n  resolution: STATIC\n  ports: [{number: 80, name: http}]\n  endpoints: [{address: api.example.com}]\n",
        ),
        &["spec.endpoints[0].address", "IP addresses"],
    );
    rejects(
        &se(
            "  hosts: [api.example.com]\n  resolution: DNS\n  ports: [{number: 80, name: http, protocol: SCTP}]\n",
        ),
        &["spec.ports[0].protocol", "SCTP"],
    );
    rejects(
        &se(
            "  hosts: [reviews.default.svc.cluster.local]\n  resolution: DNS\n  ports: [{number: 80, name: http}]\n",
        ),
        &[
            "ServiceEntry default/reviews",
            "spec.hosts[0]",
            "already defined by ServiceEntry default/ext",
        ],
    );
    rejects(
        &se(
            "  hosts: [db.example.com]\n  addresses: [10.0.0.1/8, 10.0.0.300, 10.9.0.1, 10.9.0.1]\n  resolution: DNS\n  ports: [{number: 3306, name: tcp}]\n",
        ),
        &[
            "spec.addresses[0]: CIDR \"10.0.0.1/8\" has host bits set; did you mean \"10.0.0.0/8\"",
            "spec.addresses[1]: expected an IP address or CIDR, got \"10.0.0.300\"",
            "spec.addresses[3]: address \"10.9.0.1\" is listed twice",
        ],
    );
    rejects(
        &(se(
            "  hosts: [db.example.com]\n  addresses: [10.9.0.1]\n  resolution: DNS\n  ports: [{number: 3306, name: tcp}]\n",
        ) + "\n---\n"
            + &se("  hosts: [db2.example.com]\n  addresses: [10.9.0.1, 10.9.0.2]\n  resolution: DNS\n  ports: [{number: 3306, name: mysql}]\n")
                .replace("name: ext", "name: ext2")),
        &[
            "ServiceEntry default/ext2",
            "address 10.9.0.1/32 port 3306 of host \"db2.example.com\" is already claimed by host \"db.example.com\" of ServiceEntry default/ext",
        ],
    );
    let m = build(&se(
        "  hosts: [db.example.com]\n  addresses: [10.9.0.1, 10.10.0.0/16, fd96::1]\n  resolution: DNS\n  ports: [{number: 3306, name: mysql}]\n",
    ))
    .unwrap();
    let db = &m.services["db.example.com"];
    assert_eq!(
        db.addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.9.0.1/32", "10.10.0.0/16", "fd96::1/128"]
    );
    assert_eq!(db.ports[0].protocol, strait_model::Protocol::Mysql);
    let m = build(&se(
        "  hosts: [api.example.com]\n  resolution: DNS\n  ports: [{number: 80, name: http}]\n",
    ))
    .unwrap();
    assert_eq!(
        m.services["api.example.com"].endpoints[0].address, "api.example.com",
        "DNS without endpoints resolves the host"
    );
}

#[test]
fn gateways_are_checked() {
    let gw = |spec: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n  selector: {{istio: ingressgateway}}\n{spec}"
        )
    };
    assert!(build(&gw("  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}\n")).is_ok());
    rejects(
        &gw(
            "  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n",
        ),
        &["Gateway default/gw", "spec.servers[0].tls", "needs tls"],
    );
    rejects(
        &gw(
            "  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE, credentialName: secret}\n",
        ),
        &[
            "spec.servers[0].tls.credentialName",
            "only with --kubernetes",
        ],
    );
    rejects(
        &gw(
            "  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n  - port: {number: 80, name: https, protocol: HTTPS}\n    hosts: ['*']\n    tls: {mode: SIMPLE, serverCertificate: /c, privateKey: /k}\n",
        ),
        &[
            "spec.servers[1].port",
            "mixes TLS (HTTPS or PASSTHROUGH) and plain HTTP",
        ],
    );
}

#[test]
fn a_virtual_service_must_name_existing_gateways() {
    rejects(
        &vs(
            "  hosts: [reviews.example.com]\n  gateways: [missing-gw]\n  http:\n  - route: [{destination: {host: reviews}}]\n",
        ),
        &[
            "spec.gateways[0]",
            "Gateway default/missing-gw does not exist",
        ],
    );
}

#[test]
fn duplicate_objects_are_named_with_both_origins() {
    let d = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec: {host: reviews}\n";
    rejects(
        d,
        &[
            "test.yaml (document 1)",
            "DestinationRule default/reviews",
            "defined twice: also in registry.yaml",
        ],
    );
}

#[test]
fn every_error_in_a_batch_is_reported() {
    let err = build(&vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: nowhere}\n    timeout: never\n")).unwrap_err();
    assert!(err.starts_with("2 configuration errors"), "{err}");
}

/// Istio's bookinfo samples, kept unmodified in the repository (`tests/istio-samples/`).
fn samples_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/istio-samples")
}

/// The repository's copies are the files in `../shared/istio-samples/` beside the checkout,
/// byte for byte, where that directory is there.
#[test]
fn samples_match_the_shared_copies() {
    let shared =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/istio-samples");
    let Ok(entries) = std::fs::read_dir(&shared) else {
        println!(
            "skipped samples_match_the_shared_copies: no {} beside the checkout",
            shared.display()
        );
        return;
    };
    let mut compared = 0;
    for path in entries.map(|e| e.unwrap().path()) {
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let ours = samples_dir().join(path.file_name().unwrap());
        assert_eq!(
            std::fs::read(&ours).unwrap_or_default(),
            std::fs::read(&path).unwrap(),
            "{} differs from {} (copy it over)",
            ours.display(),
            path.display()
        );
        compared += 1;
    }
    assert!(
        compared >= 8,
        "only {compared} samples in {}",
        shared.display()
    );
}

/// The real Istio bookinfo samples load as they are (the mTLS one waits for Strait's CA).
#[test]
fn istio_samples_load_as_they_are() {
    let dir = samples_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        panic!("the Istio samples are expected at {}", dir.display());
    };
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "samples missing in {}", dir.display());
    let registry = loader::parse(REGISTRY, "registry.yaml").unwrap();
    let gateway_registry = loader::parse(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: placeholder}\nspec: {host: placeholder.example.com}\n",
        "x",
    )
    .unwrap();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        let objects = loader::parse(&text, &name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        // Each sample is applied on its own over the registry, minus the DestinationRules it replaces.
        let mut batch: Vec<_> = registry
            .iter()
            .filter(|r| !objects.iter().any(|o| o.id == r.id))
            .cloned()
            .collect();
        batch.extend(gateway_registry.iter().cloned());
        if name.starts_with("virtual-service") {
            let rules = loader::parse(
                &std::fs::read_to_string(dir.join("destination-rule-all.yaml")).unwrap(),
                "dr",
            )
            .unwrap();
            batch.retain(|b| !rules.iter().any(|r| r.id == b.id));
            batch.extend(rules);
        }
        batch.extend(objects);
        let result = Model::build(&batch);
        let model = result.unwrap_or_else(|e| panic!("{name} should load: {e}"));
        if name == "destination-rule-all-mtls.yaml" {
            let tls = model
                .policy_for("reviews.default.svc.cluster.local", 9080, Some("v2"))
                .tls;
            assert_eq!(
                tls.map(|t| t.mode),
                Some(strait_model::ClientTlsMode::IstioMutual)
            );
        }
    }
}

fn security(kind: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{name: p, namespace: default}}\nspec:\n{spec}"
    )
}

#[test]
fn peer_authentication_scopes_resolve_as_in_istio() {
    let mesh = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: mesh, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\n";
    let workload = security(
        "PeerAuthentication",
        "  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: UNSET}\n  portLevelMtls:\n    9080: {mode: DISABLE}\n",
    );
    let m = build(&format!("{mesh}{workload}")).unwrap();
    let labels = |app: &str| std::iter::once(("app".to_string(), app.to_string())).collect();
    use strait_model::MtlsMode::*;
    assert_eq!(
        m.mtls_mode("default", &labels("reviews"), 9080),
        Disable,
        "port level wins"
    );
    assert_eq!(
        m.mtls_mode("default", &labels("reviews"), 9090),
        Strict,
        "UNSET inherits the mesh"
    );
    assert_eq!(m.mtls_mode("other", &labels("x"), 80), Strict);
    assert_eq!(
        build("").unwrap().mtls_mode("default", &labels("x"), 80),
        Permissive,
        "Istio's default"
    );

    rejects(
        &security("PeerAuthentication", "  mtls: {mode: SOMETIMES}\n"),
        &[
            "PeerAuthentication default/p",
            "spec.mtls.mode",
            "SOMETIMES",
        ],
    );
    rejects(
        &security(
            "PeerAuthentication",
            "  portLevelMtls:\n    80: {mode: STRICT}\n",
        ),
        &["spec.portLevelMtls.80", "needs a selector"],
    );
    rejects(
        &security("PeerAuthentication", "  selector: {matchLabels: {}}\n"),
        &["spec.selector.matchLabels"],
    );
    let two = format!(
        "{}---\n{}",
        security("PeerAuthentication", "  mtls: {mode: STRICT}\n"),
        security("PeerAuthentication", "  mtls: {mode: STRICT}\n").replace("name: p,", "name: q,")
    );
    rejects(
        &two,
        &[
            "PeerAuthentication default/q",
            "already sets mTLS for the namespace",
        ],
    );
}

#[test]
fn authorization_policies_are_checked() {
    let ok = security(
        "AuthorizationPolicy",
        "  selector: {matchLabels: {app: ratings}}\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/productpage], namespaces: ['prod*'], ipBlocks: [10.0.0.0/8]}}]\n    to: [{operation: {methods: [GET], paths: ['/ratings/*'], ports: ['9080']}}]\n    when: [{key: 'request.headers[x-user]', values: [jason]}, {key: source.principal, notValues: ['*/sa/bad']}]\n",
    );
    let m = build(&ok).unwrap();
    let labels = std::iter::once(("app".to_string(), "ratings".to_string())).collect();
    let p = m.authorization_for("default", &labels);
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].rules[0].when[0].key,
        strait_model::ConditionKey::RequestHeader("x-user".into())
    );
    assert!(m.authorization_for("other", &labels).is_empty());

    rejects(
        &security("AuthorizationPolicy", "  action: CUSTOM\n"),
        &[
            "AuthorizationPolicy default/p",
            "spec.action",
            "not supported",
        ],
    );
    rejects(
        &security("AuthorizationPolicy", "  action: MAYBE\n"),
        &["spec.action", "MAYBE"],
    );
    rejects(
        &security(
            "AuthorizationPolicy",
            "  rules: [{from: [{source: {remoteIpBlocks: [10.0.0.0/8]}}]}]\n",
        ),
        &[
            "spec.rules[0].from[0].source.remoteIpBlocks",
            "not supported",
        ],
    );
    rejects(
        &security(
            "AuthorizationPolicy",
            "  rules: [{from: [{source: {ipBlocks: [10.0.0.0/99]}}]}]\n",
        ),
        &["spec.rules[0].from[0].source.ipBlocks[0]", "CIDR"],
    );
    rejects(
        &security(
            "AuthorizationPolicy",
            "  rules: [{to: [{operation: {ports: [http]}}]}]\n",
        ),
        &["spec.rules[0].to[0].operation.ports[0]", "port number"],
    );
    rejects(
        &security(
            "AuthorizationPolicy",
            "  rules: [{to: [{operation: {paths: ['/a*b']}}]}]\n",
        ),
        &[
            "spec.rules[0].to[0].operation.paths[0]",
            "prefix or a suffix",
        ],
    );
    rejects(
        &security(
            "AuthorizationPolicy",
            "  rules: [{when: [{key: 'request.auth.claims[]', values: [x]}]}]\n",
        ),
        &["spec.rules[0].when[0].key", "request.auth.claims[NAME]"],
    );
    rejects(
        &security(
            "AuthorizationPolicy",
            "  rules: [{when: [{key: 'request.auth.claims[a]b', values: [x]}]}]\n",
        ),
        &["spec.rules[0].when[0].key", "request.auth.claims[A][B]"],
    );
    rejects(
        &security(
            "AuthorizationPolicy",
            "  rules: [{when: [{key: 'connection.sni', values: [x]}]}]\n",
        ),
        &["spec.rules[0].when[0].key", "not supported"],
    );
    rejects(
        &security(
            "AuthorizationPolicy",
            "  rules: [{when: [{key: source.ip}]}]\n",
        ),
        &["spec.rules[0].when[0]", "values or notValues"],
    );
    rejects(
        &security(
            "AuthorizationPolicy",
            "  rules: [{to: [{operation: {methods: [GET]}}], from: [{source: {principals: [a]}}], wen: []}]\n",
        ),
        &["spec.rules[0].wen", "unknown field"],
    );
}

#[test]
fn request_principals_and_jwt_conditions_are_read() {
    use strait_model::ConditionKey;
    let ok = security(
        "AuthorizationPolicy",
        "  rules:\n  - from: [{source: {requestPrincipals: ['https://issuer.example/*'], notRequestPrincipals: ['*/banned']}}]\n    when:\n    - {key: request.auth.principal, values: ['https://issuer.example/alice']}\n    - {key: request.auth.audiences, values: [web]}\n    - {key: request.auth.presenter, notValues: [evil]}\n    - {key: 'request.auth.claims[groups]', values: [admin]}\n    - {key: 'request.auth.claims[realm][role]', values: ['ops*']}\n",
    );
    let m = build(&ok).unwrap();
    let rule = &m.authorization_policies[0].rules[0];
    assert_eq!(
        rule.from[0].request_principals,
        ["https://issuer.example/*"]
    );
    assert_eq!(rule.from[0].not_request_principals, ["*/banned"]);
    let keys: Vec<&ConditionKey> = rule.when.iter().map(|c| &c.key).collect();
    assert_eq!(
        keys,
        [
            &ConditionKey::RequestPrincipal,
            &ConditionKey::RequestAudiences,
            &ConditionKey::RequestPresenter,
            &ConditionKey::RequestClaim(vec!["groups".into()]),
            &ConditionKey::RequestClaim(vec!["realm".into(), "role".into()]),
        ]
    );
    rejects(
        &security(
            "AuthorizationPolicy",
            "  rules: [{from: [{source: {requestPrincipals: ['a*b']}}]}]\n",
        ),
        &[
            "spec.rules[0].from[0].source.requestPrincipals[0]",
            "prefix or a suffix",
        ],
    );
}

const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"k1"}]}"#;

fn request_authn(spec: &str) -> String {
    security("RequestAuthentication", spec)
}

#[test]
fn request_authentications_are_checked() {
    let ok = request_authn(&format!(
        "  selector: {{matchLabels: {{app: ratings}}}}\n  jwtRules:\n  - issuer: https://issuer.example\n    audiences: [web]\n    jwks: '{JWKS}'\n    fromHeaders: [{{name: X-Jwt, prefix: 'Bearer '}}]\n    fromParams: [token]\n    fromCookies: [session]\n    outputPayloadToHeader: X-Jwt-Payload\n    forwardOriginalToken: true\n    outputClaimToHeaders: [{{header: x-sub, claim: sub}}]\n  - issuer: other\n    jwksUri: https://keys.example/jwks.json\n"
    ));
    let m = build(&ok).unwrap();
    let labels = std::iter::once(("app".to_string(), "ratings".to_string())).collect();
    let applied = m.request_authentication_for("default", &labels);
    assert_eq!(applied.len(), 1);
    let rule = &applied[0].rules[0];
    assert_eq!(
        rule.from_headers[0].name, "x-jwt",
        "header names are lowercased"
    );
    assert_eq!(rule.from_headers[0].prefix, "Bearer ");
    assert_eq!(
        rule.output_payload_to_header.as_deref(),
        Some("x-jwt-payload")
    );
    assert_eq!(m.jwks_of(rule), Some(JWKS));
    assert!(
        m.request_authentication_for("default", &Default::default())
            .is_empty()
    );
    assert_eq!(
        m.jwks_uris().into_iter().collect::<Vec<_>>(),
        ["https://keys.example/jwks.json"]
    );
    // Nothing fetched yet: no keys for the URI, no warning.
    assert_eq!(m.jwks_of(&applied[0].rules[1]), None);
    assert!(jwt_warnings(&m).is_empty(), "{:?}", m.warnings);

    // v1beta1 is read the same.
    assert!(build(&ok.replace("security.istio.io/v1", "security.istio.io/v1beta1")).is_ok());

    let rule = |body: &str| request_authn(&format!("  jwtRules:\n  - {body}\n"));
    rejects(
        &rule("{jwks: 'x'}"),
        &[
            "RequestAuthentication default/p",
            "spec.jwtRules[0].issuer",
            "required",
        ],
    );
    rejects(
        &rule("{issuer: a, jwks: '{\"keys\": []}'}"),
        &["spec.jwtRules[0].jwks", "no keys"],
    );
    rejects(
        &rule("{issuer: a, jwks: 'nope'}"),
        &["spec.jwtRules[0].jwks", "not JSON"],
    );
    rejects(
        &rule("{issuer: a, jwks: '{\"keys\": [{\"n\": 1}]}'}"),
        &["spec.jwtRules[0].jwks", "keys[0]", "kty"],
    );
    rejects(
        &rule("{issuer: a, jwksUri: 'ftp://x/keys'}"),
        &["spec.jwtRules[0].jwksUri", "http:// or https://"],
    );
    rejects(
        &rule("{issuer: a, jwksUri: 'https://k/j', jwks: 'x'}"),
        &["spec.jwtRules[0].jwks", "not both"],
    );
    rejects(
        &rule("{issuer: a}"),
        &["spec.jwtRules[0]", "jwks or jwksUri is required"],
    );
    rejects(
        &rule("{issuer: a, jwksUri: 'https://k/j', timeout: 5s}"),
        &["spec.jwtRules[0].timeout", "not supported"],
    );
    rejects(
        &rule("{issuer: a, jwksUri: 'https://k/j', fromHeaders: [{prefix: x}]}"),
        &[
            "spec.jwtRules[0].fromHeaders[0].name",
            "header name is required",
        ],
    );
    rejects(
        &rule("{issuer: a, jwksUri: 'https://k/j', outputPayloadToHeader: 'bad header'}"),
        &[
            "spec.jwtRules[0].outputPayloadToHeader",
            "not an HTTP header name",
        ],
    );
    rejects(
        &rule("{issuer: a, jwksUri: 'https://k/j', outputClaimToHeaders: [{header: x-a}]}"),
        &["spec.jwtRules[0].outputClaimToHeaders[0].claim", "required"],
    );
    rejects(
        &rule("{issuer: a, jwksUri: 'https://k/j', fromParams: ['']}"),
        &["spec.jwtRules[0].fromParams[0]", "must not be empty"],
    );
    rejects(
        &rule("{issuer: a, jwksUri: 'https://k/j', jwksURI: x}"),
        &["spec.jwtRules[0].jwksURI", "unknown field"],
    );
    rejects(
        &request_authn("  targetRef: {kind: Gateway, name: g}\n"),
        &["spec.targetRef", "not supported"],
    );
    rejects(
        &request_authn(
            "  jwtRules:\n  - {issuer: a, jwksUri: 'https://k/j'}\n  - {issuer: a, jwksUri: 'https://k/i'}\n",
        ),
        &["spec.jwtRules[1].issuer", "already in spec.jwtRules[0]"],
    );
}

fn jwt_warnings(m: &Model) -> Vec<String> {
    m.warnings
        .iter()
        .filter(|w| {
            w.object
                .as_ref()
                .is_some_and(|o| o.kind == strait_model::Kind::RequestAuthentication)
        })
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_failed_jwks_fetch_is_a_warning_naming_the_rule() {
    let mut m = build(&request_authn(
        "  jwtRules:\n  - {issuer: a, jwksUri: 'https://keys.example/j'}\n",
    ))
    .unwrap();
    let uri = "https://keys.example/j".to_string();
    let failed = |keys: Option<&str>| {
        std::iter::once((
            uri.clone(),
            strait_model::FetchedJwks {
                keys: keys.map(Into::into),
                error: Some("connection refused".into()),
            },
        ))
        .collect::<strait_model::JwksFetches>()
    };
    let others = m.warnings.len();
    m.set_jwks(&failed(None));
    assert_eq!(m.warnings.len(), others + 1);
    let w = jwt_warnings(&m).remove(0);
    for f in [
        "RequestAuthentication default/p",
        "spec.jwtRules[0].jwksUri",
        "fetching https://keys.example/j: connection refused",
        "refused until a fetch succeeds",
    ] {
        assert!(w.contains(f), "{w}");
    }
    // Again, with last good keys: one warning (replaced, not added), the keys kept.
    m.set_jwks(&failed(Some(JWKS)));
    let w = jwt_warnings(&m);
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("last keys fetched stay in force"), "{w:?}");
    let rule = m.request_authentications[0].rules[0].clone();
    assert_eq!(m.jwks_of(&rule), Some(JWKS));
    // A fetch that worked clears the warning.
    let ok = std::iter::once((
        uri,
        strait_model::FetchedJwks {
            keys: Some(JWKS.into()),
            error: None,
        },
    ))
    .collect();
    m.set_jwks(&ok);
    assert!(jwt_warnings(&m).is_empty());
    assert_eq!(m.warnings.len(), others);
}

#[test]
fn destination_rule_tls_modes_are_checked() {
    let dr = |tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: ratings}}\nspec:\n  host: ratings\n  trafficPolicy:\n    tls: {tls}\n"
        )
    };
    assert!(build(&dr("{mode: ISTIO_MUTUAL}")).is_ok());
    assert!(
        build(&dr(
            "{mode: SIMPLE, caCertificates: /etc/ca.pem, sni: ratings.example.com}"
        ))
        .is_ok()
    );
    assert!(
        build(&dr(
            "{mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}"
        ))
        .is_ok()
    );
    rejects(
        &dr("{mode: MUTUAL, caCertificates: /ca.pem}"),
        &[
            "spec.trafficPolicy.tls.clientCertificate",
            "required for mode MUTUAL",
        ],
    );
    rejects(
        &dr("{mode: SIMPLE}"),
        &[
            "spec.trafficPolicy.tls.caCertificates",
            "insecureSkipVerify",
        ],
    );
    rejects(
        &dr("{mode: ISTIO_MUTUAL, caCertificates: /ca.pem}"),
        &["spec.trafficPolicy.tls.caCertificates", "not allowed"],
    );
    rejects(
        &dr("{mode: SIMPLE, credentialName: s, insecureSkipVerify: true}"),
        &["spec.trafficPolicy.tls.credentialName", "not supported"],
    );
    rejects(
        &dr("{mode: WHATEVER}"),
        &["spec.trafficPolicy.tls.mode", "WHATEVER"],
    );
}

// === credentialName (Kubernetes Secrets) ===

fn credential(namespace: &str, name: &str, with_ca: bool) -> strait_model::Credential {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["bookinfo.example.com".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    let mut data = std::collections::BTreeMap::new();
    data.insert("tls.crt".to_string(), cert.pem().into_bytes());
    data.insert("tls.key".to_string(), key.serialize_pem().into_bytes());
    if with_ca {
        data.insert("ca.crt".to_string(), cert.pem().into_bytes());
    }
    strait_model::Credential::from_secret(
        strait_model::CredentialId::new(namespace, name),
        Some("kubernetes.io/tls"),
        &data,
    )
    .expect("a good credential")
}

fn build_with(extra: &str, credentials: &[strait_model::Credential]) -> Result<Model, String> {
    let mut objects = loader::parse(REGISTRY, "registry.yaml").map_err(|e| format!("{e:?}"))?;
    objects.extend(loader::parse(extra, "test.yaml").map_err(|e| format!("{e:?}"))?);
    let credentials: strait_model::Credentials = credentials
        .iter()
        .map(|c| (c.id.clone(), std::sync::Arc::new(c.clone())))
        .collect();
    let mut model = Model::build_with(&objects, Some(&credentials)).map_err(|e| e.to_string())?;
    // The registry's own warnings are no concern here.
    model.warnings.retain(|w| {
        w.object
            .as_ref()
            .is_some_and(|o| o.kind == strait_model::Kind::Gateway)
    });
    Ok(model)
}

fn https_gateway(namespace: &str, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: bookinfo, namespace: {namespace}}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [bookinfo.example.com]\n    tls: {tls}\n"
    )
}

#[test]
fn credential_name_is_accepted_when_the_credential_is_known() {
    let model = build_with(
        &https_gateway(
            "istio-system",
            "{mode: SIMPLE, credentialName: bookinfo-cert}",
        ),
        &[credential("istio-system", "bookinfo-cert", false)],
    )
    .unwrap();
    let gw = model.gateways.values().next().unwrap();
    assert_eq!(
        gw.servers[0].tls,
        Some(strait_model::ServerTls::Credential {
            name: "bookinfo-cert".into(),
            mutual: false
        })
    );
    assert!(model.warnings.is_empty(), "{:?}", model.warnings);
    assert_eq!(model.credentials.len(), 1);
    // Istio's newer list form, with one credential.
    let model = build_with(
        &https_gateway(
            "istio-system",
            "{mode: MUTUAL, credentialNames: [bookinfo-cert]}",
        ),
        &[credential("istio-system", "bookinfo-cert", true)],
    )
    .unwrap();
    assert!(model.warnings.is_empty(), "{:?}", model.warnings);
}

#[test]
fn a_missing_credential_is_a_warning_naming_the_field() {
    let model = build_with(
        &https_gateway(
            "istio-system",
            "{mode: SIMPLE, credentialName: bookinfo-cert}",
        ),
        &[credential("istio-system", "other", false)],
    )
    .unwrap();
    let warnings: Vec<String> = model.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    for fragment in [
        "Gateway istio-system/bookinfo",
        "spec.servers[0].tls.credentialName",
        "\"bookinfo-cert\"",
        "not served until it exists",
    ] {
        assert!(
            warnings[0].contains(fragment),
            "{fragment:?} in {warnings:?}"
        );
    }
    // MUTUAL needs a CA to verify clients with.
    let model = build_with(
        &https_gateway(
            "istio-system",
            "{mode: MUTUAL, credentialName: bookinfo-cert}",
        ),
        &[credential("istio-system", "bookinfo-cert", false)],
    )
    .unwrap();
    assert!(
        model
            .warnings
            .iter()
            .any(|w| w.message.contains("has no CA")),
        "{:?}",
        model.warnings
    );
}

#[test]
fn credential_name_is_checked() {
    let known = [credential("istio-system", "c", true)];
    for (tls, fragments) in [
        (
            "{mode: SIMPLE, credentialName: c, serverCertificate: /c.pem, privateKey: /k.pem}",
            &["spec.servers[0].tls.credentialName", "not both"][..],
        ),
        (
            "{mode: SIMPLE, credentialNames: [c, d]}",
            &["spec.servers[0].tls.credentialNames", "not supported"][..],
        ),
        (
            "{mode: SIMPLE, credentialName: Not_A_Name}",
            &["spec.servers[0].tls.credentialName", "not a valid name"][..],
        ),
        (
            "{mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}",
            &["spec.servers[0].tls.mode", "MUTUAL"][..],
        ),
        (
            "{mode: ISTIO_MUTUAL, credentialName: c}",
            &["spec.servers[0].tls.mode", "not supported"][..],
        ),
    ] {
        let err = build_with(&https_gateway("istio-system", tls), &known).unwrap_err();
        for f in fragments {
            assert!(err.contains(f), "{f:?} in {err}");
        }
    }
}

// === RateLimitPolicy ===

fn rate_limit_policy(limits: &str) -> String {
    format!(
        "apiVersion: policy.strait.io/v1alpha1
kind: RateLimitPolicy
metadata: {{name: limits, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  limits:
{limits}"
    )
}

#[test]
fn rate_limit_policies_are_validated_with_field_paths() {
    let model = build(&rate_limit_policy(
        "  - name: writes
    match: {uri: {exact: /reviews}, method: {exact: POST}, headers: {x-tier: {exact: free}}}
    requests: 10
    interval: 1s
    burst: 20
  - name: per-client
    requests: 100
    interval: 1m
    by: {sourceAddress: true}
  - name: per-key
    requests: 5
    interval: 500ms
    by: {header: x-api-key}
",
    ))
    .expect("a valid policy");
    let labels = [("app".to_string(), "reviews".to_string())].into();
    let policies = model.rate_limits_for("default", &labels);
    assert_eq!(policies.len(), 1);
    let limits = &policies[0].limits;
    assert_eq!(
        limits
            .iter()
            .map(|l| (l.name.as_str(), l.requests, l.burst, l.interval))
            .collect::<Vec<_>>(),
        [
            ("writes", 10, 20, std::time::Duration::from_secs(1)),
            ("per-client", 100, 100, std::time::Duration::from_secs(60)),
            ("per-key", 5, 5, std::time::Duration::from_millis(500)),
        ]
    );
    assert_eq!(policies[0].limit_id(&limits[0]), "default/limits/writes");
    assert_eq!(
        limits[2].by,
        Some(strait_model::RateLimitKey::Header("x-api-key".into()))
    );
    let other = [("app".to_string(), "ratings".to_string())].into();
    assert!(model.rate_limits_for("default", &other).is_empty());
    assert!(model.rate_limits_for("other", &labels).is_empty());

    for (limits, fragments) in [
        (
            "  - {name: a, requests: 1, interval: 10ms}\n",
            &["spec.limits[0].interval", "shorter than 50ms"][..],
        ),
        (
            "  - {name: a, interval: 1s}\n",
            &["spec.limits[0].requests", "required"],
        ),
        (
            "  - {name: a, requests: 0, interval: 1s}\n",
            &["spec.limits[0].requests", "at least 1"],
        ),
        (
            "  - {name: a, requests: 1, interval: soon}\n",
            &["spec.limits[0].interval"],
        ),
        (
            "  - {name: a, requests: 1, interval: 1s, burst: 0}\n",
            &["spec.limits[0].burst", "at least 1"],
        ),
        (
            "  - {name: a, requests: 1, interval: 1s}\n  - {name: a, requests: 2, interval: 1s}\n",
            &["spec.limits[1].name", "names another limit"],
        ),
        (
            "  - {name: A_b, requests: 1, interval: 1s}\n",
            &["spec.limits[0].name", "not a valid name"],
        ),
        (
            "  - {name: a, requests: 1, interval: 1s, by: {header: X-Key}}\n",
            &["spec.limits[0].by.header", "lowercase"],
        ),
        (
            "  - {name: a, requests: 1, interval: 1s, by: {header: x, sourceAddress: true}}\n",
            &["spec.limits[0].by", "only one"],
        ),
        (
            "  - {name: a, requests: 1, interval: 1s, by: {}}\n",
            &["spec.limits[0].by", "header or sourceAddress"],
        ),
        (
            "  - {name: a, requests: 1, interval: 1s, match: {uri: {regex: '(('}}}\n",
            &[
                "spec.limits[0].match.uri.regex",
                "invalid regular expression",
            ],
        ),
        (
            "  - {name: a, requests: 1, interval: 1s, match: {headers: {':path': {exact: /}}}}\n",
            &["spec.limits[0].match.headers.:path", "uri and method"],
        ),
    ] {
        rejects(&rate_limit_policy(limits), fragments);
    }
    rejects(
        "apiVersion: policy.strait.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: empty}
spec: {limits: []}
",
        &["spec.limits", "at least one limit"],
    );
}

#[test]
fn rate_limit_policies_are_read_in_their_own_group_only() {
    for (text, fragments) in [
        (
            "apiVersion: policy.strait.io/v1\nkind: RateLimitPolicy\nmetadata: {name: a}\nspec: {}\n",
            &["apiVersion", "policy.strait.io/v1alpha1"][..],
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: RateLimitPolicy\nmetadata: {name: a}\nspec: {}\n",
            &["apiVersion", "policy.strait.io/v1alpha1"],
        ),
        (
            "apiVersion: policy.strait.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: a}\nspec: {limits: [{name: a, requests: 1, interval: 1s, per: 1s}]}\n",
            &["spec.limits[0].per", "unknown field"],
        ),
    ] {
        let err = loader::parse(text, "test.yaml").expect_err("refused while reading");
        let err = err.iter().map(ToString::to_string).collect::<String>();
        for f in fragments {
            assert!(err.contains(f), "{f:?} not in {err}");
        }
    }
}

// === Telemetry ===

#[test]
fn telemetry_access_logging_is_decided_by_the_nearest_object_that_sets_it() {
    use strait_model::Direction::{Client, Server};
    let telemetry = |name: &str, namespace: &str, spec: &str| {
        format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}---\n"
        )
    };
    let web: std::collections::BTreeMap<String, String> =
        [("app".to_string(), "web".to_string())].into();
    let db: std::collections::BTreeMap<String, String> =
        [("app".to_string(), "db".to_string())].into();
    let none = build("").expect("empty");
    assert!(!none.access_log_for("default", &web, Client, false));
    assert!(
        none.access_log_for("default", &web, Server, true),
        "MeshConfig's accessLogFile is the default"
    );
    let model = build(&format!(
        "{}{}{}",
        telemetry(
            "mesh",
            "istio-system",
            "  accessLogging: [{providers: [{name: envoy}]}]\n"
        ),
        telemetry(
            "quiet",
            "shop",
            "  accessLogging: [{disabled: true}]\n  selector: {matchLabels: {app: db}}\n"
        ),
        telemetry(
            "servers",
            "default",
            "  accessLogging: [{match: {mode: SERVER}}, {match: {mode: CLIENT}, disabled: true}]\n"
        ),
    ))
    .expect("valid telemetries");
    assert!(
        model.access_log_for("other", &web, Client, false),
        "mesh-wide"
    );
    assert!(
        model.access_log_for("shop", &web, Client, false),
        "mesh-wide"
    );
    assert!(
        !model.access_log_for("shop", &db, Server, true),
        "the workload's own"
    );
    assert!(model.access_log_for("default", &web, Server, false));
    assert!(!model.access_log_for("default", &web, Client, true));

    for (spec, fragments) in [
        (
            "  accessLogging: [{providers: [{name: otel}]}]\n",
            &[
                "spec.accessLogging[0].providers[0].name",
                "unknown provider \"otel\"",
            ][..],
        ),
        (
            "  accessLogging: [{filter: {expression: 'response.code >= 400'}}]\n",
            &["spec.accessLogging[0].filter", "not supported"],
        ),
        (
            "  accessLogging: [{match: {mode: BOTH}}]\n",
            &["spec.accessLogging[0].match.mode", "unknown mode"],
        ),
        (
            "  tracing: [{randomSamplingPercentage: 10}]\n",
            &["spec.tracing", "not supported"],
        ),
        (
            "  metrics: [{providers: [{name: prometheus}]}]\n",
            &["spec.metrics", "not supported"],
        ),
    ] {
        rejects(&telemetry("t", "default", spec), fragments);
    }
}
