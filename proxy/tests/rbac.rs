//! AuthorizationPolicy YAML through straitd's real translation into the proxy's RBAC step:
//! the decisions for concrete requests, and RBAC configs the proxy refuses.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{Listener as PbListener, filter};
use envoy_types::pb::envoy::config::rbac::v3::{Policy as PbPolicy, permission, principal};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as PbRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use http::HeaderMap;
use prost::Message;
use strait_model::{Model, ProxyNode, loader};
use strait_proxy::authz::{RbacInput, authorize};
use strait_proxy::config::Listener;
use strait_proxy::config::{Rbac, RbacAction};

const LISTENER: &str = "inbound_15108";
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews";

/// The ratings workload's inbound listener for these objects (PERMISSIVE unless they say).
fn inbound(yaml: &str) -> PbListener {
    let objects = loader::parse(yaml, "policies.yaml").expect("parse");
    let model = Model::build(&objects).expect("model");
    let metadata = serde_json::json!({
        "NAMESPACE": "default",
        "LABELS": {"app": "ratings", "version": "v1"},
        "SERVICE_ACCOUNT": "bookinfo-ratings",
        "STRAIT_INBOUND_PORT": "15108",
        "STRAIT_APP_PORT": "19091",
    });
    let node = ProxyNode::from_metadata(
        "ratings-v1.default",
        metadata.as_object().expect("metadata map"),
    )
    .expect("node");
    strait_translate::translate(&model, &node)
        .listeners
        .into_iter()
        .find(|l| l.name == LISTENER)
        .expect("the inbound listener")
}

fn hcms(listener: &PbListener) -> Vec<HttpConnectionManager> {
    listener
        .filter_chains
        .iter()
        .map(|chain| {
            let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
                panic!("typed HCM")
            };
            HttpConnectionManager::decode(any.value.as_slice()).expect("HCM")
        })
        .collect()
}

/// The RBAC filters, converted with the whole listener; every filter chain (TLS and
/// plaintext) carries the same ones.
fn filters(yaml: &str) -> Vec<Rbac> {
    let listener = Listener::try_from(&inbound(yaml)).expect("the listener converts");
    let mut per_chain: Vec<Vec<Rbac>> = listener
        .chains
        .iter()
        .map(|c| c.http().expect("an HTTP chain").rbac.to_vec())
        .collect();
    let first = per_chain.remove(0);
    assert!(per_chain.iter().all(|f| *f == first), "chains agree");
    first
}

fn actions(filters: &[Rbac]) -> Vec<RbacAction> {
    filters.iter().map(|f| f.action).collect()
}

struct Req {
    method: &'static str,
    path: &'static str,
    authority: &'static str,
    headers: HeaderMap,
    port: u16,
    peer: IpAddr,
    principal: Option<&'static str>,
}

/// GET / from productpage over mTLS.
fn req() -> Req {
    Req {
        method: "GET",
        path: "/",
        authority: "ratings.default.svc.cluster.local:9080",
        headers: HeaderMap::new(),
        port: 15108,
        peer: "127.0.0.1".parse().expect("ip"),
        principal: Some(PRODUCTPAGE),
    }
}

impl Req {
    fn get(path: &'static str) -> Req {
        Req { path, ..req() }
    }
    fn from(self, principal: Option<&'static str>) -> Req {
        Req { principal, ..self }
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Req {
        self.headers.append(name, value.parse().expect("value"));
        self
    }
    fn peer(self, ip: &str) -> Req {
        Req {
            peer: ip.parse().expect("ip"),
            ..self
        }
    }
}

/// (allowed, deciding policy, audit policy).
fn decide(filters: &[Rbac], r: &Req) -> (bool, Option<String>, Option<String>) {
    let input = RbacInput {
        method: r.method,
        path: r.path,
        authority: r.authority,
        headers: &r.headers,
        destination_port: r.port,
        direct_remote_ip: r.peer,
        principal: r.principal,
        jwt: None,
    };
    let d = authorize(filters, &input);
    (
        d.allowed,
        d.policy.map(str::to_string),
        d.audit.map(str::to_string),
    )
}

fn allowed(filters: &[Rbac], r: Req) -> bool {
    decide(filters, &r).0
}

fn policy(name: &str, rule: usize) -> Option<String> {
    Some(format!("ns[default]-policy[{name}]-rule[{rule}]"))
}

#[test]
fn allows_by_principal_and_method_and_path_prefix() {
    let f = filters(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/bookinfo-productpage]}}]
    to: [{operation: {methods: [GET, HEAD], paths: ['/ratings/*']}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-only, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules: [{}]
",
    );
    assert_eq!(
        actions(&f),
        [RbacAction::Allow],
        "reviews' policy is not ours"
    );
    assert_eq!(
        decide(&f, &Req::get("/ratings/1")),
        (true, policy("ratings-viewer", 0), None)
    );
    assert!(allowed(
        &f,
        Req {
            method: "HEAD",
            ..Req::get("/ratings/1")
        }
    ));
    let post = Req {
        method: "POST",
        ..Req::get("/ratings/1")
    };
    assert_eq!(decide(&f, &post), (false, None, None));
    assert!(!allowed(&f, Req::get("/ratings")));
    assert!(!allowed(&f, Req::get("/details/1")));
    assert!(!allowed(&f, Req::get("/ratings/1").from(Some(REVIEWS))));
    assert!(!allowed(&f, Req::get("/ratings/1").from(None)));
}

#[test]
fn deny_wins_over_allow() {
    let f = filters(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: anyone-in-the-mesh, namespace: default}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: ['*']}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ['/admin*']}}]
    from: [{source: {notPrincipals: ['*/sa/operator']}}]
",
    );
    assert_eq!(actions(&f), [RbacAction::Deny, RbacAction::Allow]);
    assert_eq!(
        decide(&f, &Req::get("/admin/users")),
        (
            false,
            Some("ns[istio-system]-policy[no-admin]-rule[0]".to_string()),
            None
        )
    );
    let operator = "spiffe://cluster.local/ns/ops/sa/operator";
    assert_eq!(
        decide(&f, &Req::get("/admin/users").from(Some(operator))),
        (true, policy("anyone-in-the-mesh", 0), None)
    );
    assert!(allowed(&f, Req::get("/ratings/1")));
}

#[test]
fn not_principals_match_plaintext_too() {
    let f = filters(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-productpage, namespace: default}
spec:
  action: DENY
  rules: [{from: [{source: {notPrincipals: [cluster.local/ns/default/sa/bookinfo-productpage]}}]}]
",
    );
    assert!(allowed(&f, req()));
    assert_eq!(
        decide(&f, &req().from(Some(REVIEWS))),
        (false, policy("only-productpage", 0), None)
    );
    // No principal is not the productpage principal: plaintext is denied.
    assert!(!allowed(&f, req().from(None)));
}

#[test]
fn source_namespaces_match_the_spiffe_identity() {
    let f = filters(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-namespaces, namespace: default}
spec:
  action: ALLOW
  rules: [{from: [{source: {namespaces: [monitoring, 'team-*'], notNamespaces: [team-secret]}}]}]
",
    );
    let from = |id: &'static str| allowed(&f, req().from(Some(id)));
    assert!(from("spiffe://cluster.local/ns/monitoring/sa/prometheus"));
    assert!(from("spiffe://other.domain/ns/team-a/sa/x"));
    assert!(!from("spiffe://cluster.local/ns/team-secret/sa/x"));
    assert!(!from("spiffe://cluster.local/ns/monitoringx/sa/prometheus"));
    assert!(!from("spiffe://cluster.local/ns/monitoring/sa/a/b"));
    assert!(!from(PRODUCTPAGE));
    assert!(!allowed(&f, req().from(None)));
}

#[test]
fn ip_blocks_match_the_tcp_peer() {
    let f = filters(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-ips, namespace: default}
spec:
  action: ALLOW
  rules: [{from: [{source: {ipBlocks: [10.0.0.0/8, 192.168.1.7], notIpBlocks: [10.1.0.0/16]}}]}]
",
    );
    assert!(allowed(&f, req().peer("10.2.3.4")));
    assert!(allowed(&f, req().peer("::ffff:10.2.3.4")));
    assert!(allowed(&f, req().peer("192.168.1.7").from(None)));
    assert!(!allowed(&f, req().peer("192.168.1.8")));
    assert!(!allowed(&f, req().peer("10.1.2.3")));
    // x-forwarded-for does not count: straitd matches direct_remote_ip.
    assert!(!allowed(
        &f,
        req()
            .peer("172.16.0.1")
            .header("x-forwarded-for", "10.2.3.4")
    ));
}

#[test]
fn a_policy_naming_the_app_port_matches_connections_on_the_inbound_port() {
    // Envoy compares with the downstream connection's local port: the inbound listener's
    // (15108) here, which stands for the app's port (19091), so straitd writes it so.
    let f = filters(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ports, namespace: default}
spec:
  action: ALLOW
  rules: [{to: [{operation: {ports: ['19091']}}]}, {to: [{operation: {notPorts: ['19091', '15109']}}]}]
",
    );
    assert_eq!(decide(&f, &req()), (true, policy("ports", 0), None));
    let on = |port| allowed(&f, Req { port, ..req() });
    assert!(!on(15109));
    assert!(on(19092), "rule 1: any port but those");
}

#[test]
fn hosts_match_the_authority_ignoring_case() {
    let f = filters(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: hosts, namespace: default}
spec:
  action: ALLOW
  rules:
  - to: [{operation: {hosts: [ratings.default.svc.cluster.local, '*.example.com'], notHosts: [admin.example.com]}}]
",
    );
    let host = |authority| allowed(&f, Req { authority, ..req() });
    assert!(host("RATINGS.default.svc.cluster.local"));
    assert!(host("api.Example.com"));
    assert!(!host("admin.example.com"));
    assert!(!host("ratings"));
    // As Envoy matches this config, a port in the authority is part of what is matched.
    assert!(!host("ratings.default.svc.cluster.local:9080"));
    assert!(!host("api.example.com:9080"));
}

#[test]
fn when_conditions_on_request_headers() {
    let f = filters(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: probes, namespace: default}
spec:
  action: ALLOW
  rules:
  - from: [{source: {namespaces: [monitoring]}}]
    when: [{key: 'request.headers[X-Probe]', values: ['yes']}]
  - when: [{key: 'request.headers[x-env]', notValues: ['prod*']}, {key: source.namespace, values: [default]}]
",
    );
    let monitoring = || req().from(Some("spiffe://cluster.local/ns/monitoring/sa/prober"));
    assert_eq!(
        decide(&f, &monitoring().header("x-probe", "yes")),
        (true, policy("probes", 0), None)
    );
    assert!(!allowed(&f, monitoring()));
    assert!(!allowed(&f, monitoring().header("x-probe", "no")));
    // Repeated, the header is one comma-joined value.
    assert!(!allowed(
        &f,
        monitoring()
            .header("x-probe", "yes")
            .header("x-probe", "yes")
    ));
    assert_eq!(
        decide(&f, &req().header("x-env", "staging")),
        (true, policy("probes", 1), None)
    );
    assert!(!allowed(&f, req().header("x-env", "production")));
    // A missing header is not a production one (a not_rule around a header match).
    assert!(allowed(&f, req()));
    assert!(!allowed(&f, req().header("x-env", "staging").from(None)));
}

#[test]
fn a_wildcard_principal_needs_a_tls_peer() {
    let f = filters(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-only, namespace: default}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: ['*']}}]}]
",
    );
    assert!(allowed(&f, req()));
    assert!(!allowed(&f, req().from(None)));
}

#[test]
fn an_allow_policy_without_rules_denies_everything() {
    let f = filters(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {action: ALLOW}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-nothing, namespace: default}
spec: {action: DENY}
",
    );
    assert_eq!(actions(&f), [RbacAction::Deny, RbacAction::Allow]);
    assert!(f.iter().all(|r| r.policies.is_empty()));
    assert_eq!(decide(&f, &req()), (false, None, None));
    assert!(!allowed(&f, req().from(None)));
}

#[test]
fn audit_never_denies() {
    let f = filters(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-writes, namespace: default}
spec:
  action: AUDIT
  rules: [{to: [{operation: {methods: [POST]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage, namespace: default}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/bookinfo-productpage]}}]}]
",
    );
    assert_eq!(actions(&f), [RbacAction::Log, RbacAction::Allow]);
    let post = || Req {
        method: "POST",
        ..req()
    };
    assert_eq!(
        decide(&f, &post()),
        (true, policy("productpage", 0), policy("audit-writes", 0))
    );
    // Audited on its way to being denied, as Envoy's filters run in that order.
    assert_eq!(
        decide(&f, &post().from(Some(REVIEWS))),
        (false, None, policy("audit-writes", 0))
    );
    assert_eq!(decide(&f, &req()), (true, policy("productpage", 0), None));
    let audit_only = &f[..1];
    assert!(allowed(audit_only, post().from(None)));
}

/// straitd's config for one policy, changed by `edit`, then converted.
fn edited(edit: impl Fn(&mut PbRbac)) -> Result<Vec<Rbac>, String> {
    let listener = inbound(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ips, namespace: default}
spec:
  action: ALLOW
  rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]
",
    );
    let mut listener = listener;
    let mut hcm = hcms(&listener).remove(0);
    let Some(http_filter::ConfigType::TypedConfig(any)) = &hcm.http_filters[0].config_type else {
        panic!("typed RBAC filter")
    };
    let mut rbac = PbRbac::decode(any.value.as_slice()).expect("RBAC");
    edit(&mut rbac);
    hcm.http_filters[0].config_type = Some(http_filter::ConfigType::TypedConfig(Any {
        type_url: any.type_url.clone(),
        value: rbac.encode_to_vec(),
    }));
    listener.filter_chains[0].filters[0].config_type = Some(filter::ConfigType::TypedConfig(Any {
        type_url: HCM_TYPE.to_string(),
        value: hcm.encode_to_vec(),
    }));
    Listener::try_from(&listener)
        .map(|l| l.chains[0].http().expect("an HTTP chain").rbac.to_vec())
        .map_err(|e| e.to_string())
}

fn refused(edit: impl Fn(&mut PbRbac)) -> String {
    edited(edit).expect_err("refused")
}

#[test]
fn policies_are_examined_in_name_order_as_in_envoy() {
    let names = ["m", "z", "a", "k", "b", "y"];
    let f = edited(|rbac| {
        let p = the_policy(rbac).clone();
        let rules = rbac.rules.as_mut().expect("rules");
        rules.policies = names.iter().map(|n| (n.to_string(), p.clone())).collect();
    })
    .expect("converts");
    let got: Vec<&str> = f[0].policies.iter().map(|(n, _)| &**n).collect();
    assert_eq!(got, ["a", "b", "k", "m", "y", "z"]);
    // All match: the first by name is the one a decision names.
    assert_eq!(decide(&f, &req().peer("10.0.0.1")).1.as_deref(), Some("a"));
}

fn the_policy(rbac: &mut PbRbac) -> &mut PbPolicy {
    rbac.rules
        .as_mut()
        .and_then(|r| r.policies.values_mut().next())
        .expect("one policy")
}

#[test]
fn refuses_what_it_does_not_enforce_with_the_path() {
    let policy = r#"listener "inbound_15108": filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.rules.policies["ns[default]-policy[ips]-rule[0]"]"#;
    let err = refused(|rbac| {
        the_policy(rbac).principals[0].identifier =
            Some(principal::Identifier::RemoteIp(CidrRange {
                address_prefix: "10.0.0.0".to_string(),
                prefix_len: None,
            }));
    });
    assert_eq!(
        err,
        format!(
            "{policy}.principals[0].remote_ip: not supported by strait-proxy: \
             remote_ip (the address from x-forwarded-for; use direct_remote_ip)"
        )
    );
    let err = refused(|rbac| {
        let Some(principal::Identifier::DirectRemoteIp(c)) =
            &mut the_policy(rbac).principals[0].identifier
        else {
            panic!("an ipBlocks principal")
        };
        c.prefix_len = Some(UInt32Value { value: 33 });
    });
    assert_eq!(
        err,
        format!("{policy}.principals[0].direct_remote_ip.prefix_len: 33 is too long for 10.0.0.0")
    );
    let err = refused(|rbac| the_policy(rbac).condition = Some(Default::default()));
    assert_eq!(
        err,
        format!("{policy}.condition: not supported by strait-proxy: CEL conditions")
    );
    let err = refused(|rbac| {
        the_policy(rbac).permissions[0].rule = Some(permission::Rule::Header(HeaderMatcher {
            name: ":path".to_string(),
            ..Default::default()
        }));
    });
    assert!(
        err.starts_with(&format!(
            "{policy}.permissions[0].header.name: not supported"
        )),
        "{err}"
    );

    let filter = r#"listener "inbound_15108": filter_chains[0].filters[0].typed_config.http_filters[0].typed_config"#;
    let err = refused(|rbac| rbac.shadow_rules = rbac.rules.clone());
    assert_eq!(
        err,
        format!("{filter}.shadow_rules: not supported by strait-proxy: shadow rules")
    );
    let err = refused(|rbac| rbac.matcher = Some(Default::default()));
    assert!(
        err.starts_with(&format!("{filter}.matcher: not supported")),
        "{err}"
    );
    let err = refused(|rbac| rbac.rules = None);
    assert!(
        err.starts_with(&format!("{filter}.rules: not supported")),
        "{err}"
    );
}
