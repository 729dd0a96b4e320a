//! VirtualServices: matches, routes and their policies, checked against services, subsets and
//! gateways.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    Destination, DestinationRule, ExportTo, Fault, FaultAbort, FaultDelay, FaultStatus, Gateway,
    GatewayRef, HeaderMatch, HeaderOp, HeaderOps, HttpRoute, L4Match, Mirror, Redirect,
    RetryPolicy, Rewrite, RouteAction, RouteMatch, Service, StringMatch, TcpRoute, TlsMatch,
    TlsRoute, VirtualService, WeightedDestination, spec_of,
};
use crate::error::{ObjectId, Report, ValidationError};
use crate::istio::networking as wire;
use crate::loader::{Object, Spec};
use crate::{Kind, host};

/// Envoy's retry_on conditions that Istio passes through.
const RETRY_ON: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// What Istio retries on when `retries` is given without `retryOn`.
const DEFAULT_RETRY_ON: [&str; 5] = [
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
    "retriable-status-codes",
];

/// What a validated VirtualService can refer to.
struct Refs<'a> {
    services: &'a BTreeMap<String, Service>,
    rules: &'a BTreeMap<String, DestinationRule>,
    gateways: &'a BTreeMap<ObjectId, Gateway>,
    namespace: &'a str,
}

pub(super) fn build(
    objects: &[&Object],
    services: &BTreeMap<String, Service>,
    rules: &BTreeMap<String, DestinationRule>,
    gateways: &BTreeMap<ObjectId, Gateway>,
    errors: &mut Vec<ValidationError>,
    warnings: &mut Vec<ValidationError>,
) -> Vec<VirtualService> {
    let mut out = Vec::new();
    // (context, host) -> the VirtualService that routes it.
    let mut claims: BTreeMap<(GatewayRef, String), ObjectId> = BTreeMap::new();
    // Delegates (no hosts) first: a root's routes are merged from them.
    let (delegate_objects, roots): (Vec<&Object>, Vec<&Object>) = objects
        .iter()
        .copied()
        .partition(|o| spec(o).hosts.is_empty());
    let mut delegates: BTreeMap<ObjectId, Delegated> = BTreeMap::new();
    for o in delegate_objects {
        let refs = Refs {
            services,
            rules,
            gateways,
            namespace: &o.id.namespace,
        };
        let mut r = Report {
            origin: &o.origin,
            object: Some(&o.id),
            errors,
        };
        let mut w = Vec::new();
        if let Some(d) = delegate(spec(o), o, &refs, &mut r, &mut w) {
            warnings.extend(w);
            delegates.insert(o.id.clone(), d);
        }
    }
    let known: BTreeMap<&ObjectId, bool> = objects
        .iter()
        .map(|o| (&o.id, spec(o).hosts.is_empty()))
        .collect();
    for o in roots {
        let spec = spec(o);
        let refs = Refs {
            services,
            rules,
            gateways,
            namespace: &o.id.namespace,
        };
        let mut r = Report {
            origin: &o.origin,
            object: Some(&o.id),
            errors,
        };
        let mut w = Vec::new();
        let Some(vs) = virtual_service(spec, o, &refs, (&delegates, &known), &mut r, &mut w) else {
            continue;
        };
        let before = r.count();
        for context in &vs.gateways {
            for (i, h) in vs.hosts.iter().enumerate() {
                if let Some(owner) = claims.get(&(context.clone(), h.clone())) {
                    let scope = match context {
                        GatewayRef::Mesh => "the mesh".to_string(),
                        GatewayRef::Gateway(g) => format!("gateway {}/{}", g.namespace, g.name),
                    };
                    r.error(
                        format!("spec.hosts[{i}]"),
                        format!("host {h:?} for {scope} is already routed by {owner}"),
                    );
                }
            }
        }
        if r.count() > before {
            continue;
        }
        for context in &vs.gateways {
            for h in &vs.hosts {
                claims.insert((context.clone(), h.clone()), o.id.clone());
            }
        }
        warnings.extend(w);
        out.push(vs);
    }
    out
}

fn spec(o: &Object) -> &wire::VirtualServiceSpec {
    spec_of(o, |s| match s {
        Spec::VirtualService(v) => Some(v),
        _ => None,
    })
}

/// A delegate VirtualService, validated on its own: its http routes and whom it is exported to.
struct Delegated {
    http: Vec<HttpRoute>,
    export_to: ExportTo,
}

/// The delegates by id, and every VirtualService id with whether it is a delegate (no hosts).
type Delegates<'a> = (
    &'a BTreeMap<ObjectId, Delegated>,
    &'a BTreeMap<&'a ObjectId, bool>,
);

/// A VirtualService without hosts: only http routes, merged into the roots that delegate to
/// it (Istio's rules: no gateways, tcp or tls, and no delegating again).
fn delegate(
    spec: &wire::VirtualServiceSpec,
    o: &Object,
    refs: &Refs<'_>,
    r: &mut Report<'_>,
    warnings: &mut Vec<ValidationError>,
) -> Option<Delegated> {
    let before = r.count();
    let mut warn = |path: String, message: String| {
        warnings.push(ValidationError {
            origin: o.origin.clone(),
            object: Some(o.id.clone()),
            path,
            message,
        });
    };
    let export_to = super::scope::export_to(&spec.export_to, &o.id.namespace, "spec.exportTo", r);
    if !spec.gateways.is_empty() {
        r.error(
            "spec.gateways",
            "a delegate VirtualService (one without hosts) takes its gateways from the root; remove them",
        );
    }
    if !spec.tcp.is_empty() {
        r.error(
            "spec.tcp",
            "a delegate VirtualService (one without hosts) has http routes only",
        );
    }
    if !spec.tls.is_empty() {
        r.error(
            "spec.tls",
            "a delegate VirtualService (one without hosts) has http routes only",
        );
    }
    if spec.http.is_empty() {
        r.error(
            "spec.hosts",
            "at least one host is required (a VirtualService without hosts is a delegate, which needs http routes)",
        );
    }
    let mut http = Vec::new();
    for (i, route) in spec.http.iter().enumerate() {
        let path = format!("spec.http[{i}]");
        if route.delegate.is_some() {
            r.error(
                format!("{path}.delegate"),
                "a delegate's route cannot delegate again",
            );
            continue;
        }
        if let Some((hr, _)) = http_route(route, &path, refs, None, r, &mut warn) {
            http.push(hr);
        }
    }
    (r.count() == before).then_some(Delegated { http, export_to })
}

fn virtual_service(
    spec: &wire::VirtualServiceSpec,
    o: &Object,
    refs: &Refs<'_>,
    delegates: Delegates<'_>,
    r: &mut Report<'_>,
    warnings: &mut Vec<ValidationError>,
) -> Option<VirtualService> {
    let before = r.count();
    let mut warn = |path: String, message: String| {
        warnings.push(ValidationError {
            origin: o.origin.clone(),
            object: Some(o.id.clone()),
            path,
            message,
        });
    };
    let export_to = super::scope::export_to(&spec.export_to, &o.id.namespace, "spec.exportTo", r);
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        r.error(
            "spec.http",
            "at least one http, tcp or tls route is required",
        );
    }

    let gateways: Vec<GatewayRef> = if spec.gateways.is_empty() {
        vec![GatewayRef::Mesh]
    } else {
        spec.gateways
            .iter()
            .enumerate()
            .filter_map(|(i, g)| gateway_ref(g, &format!("spec.gateways[{i}]"), refs, r))
            .collect()
    };

    if spec.hosts.is_empty() {
        r.error("spec.hosts", "at least one host is required");
    }
    let mut hosts = Vec::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if let Err(m) = host::check(h) {
            r.error(&path, m);
            continue;
        }
        let resolved = host::resolve(h, &o.id.namespace);
        if resolved == "*" && gateways.contains(&GatewayRef::Mesh) {
            r.error(&path, "the wildcard host \"*\" is not allowed for the mesh; bind the VirtualService to a gateway");
            continue;
        }
        if hosts.contains(&resolved) {
            r.error(&path, format!("host {resolved:?} is listed twice"));
            continue;
        }
        if gateways.contains(&GatewayRef::Mesh)
            && !refs.services.keys().any(|s| host::covers(&resolved, s))
        {
            warn(
                path.clone(),
                format!(
                    "host {resolved:?} matches no service; sidecars route it on a virtual host of its own"
                ),
            );
        }
        for g in &gateways {
            if let GatewayRef::Gateway(id) = g {
                let served = refs.gateways.get(id).is_some_and(|gw| {
                    gw.servers.iter().flat_map(|s| &s.hosts).any(|gh| {
                        gh.namespace.as_ref().is_none_or(|ns| ns == &o.id.namespace)
                            && host::intersect(&gh.host, &resolved)
                    })
                });
                if !served {
                    warn(
                        path.clone(),
                        format!(
                            "host {resolved:?} matches no server of Gateway {}/{}",
                            id.namespace, id.name
                        ),
                    );
                }
            }
        }
        hosts.push(resolved);
    }

    let mut http = Vec::new();
    for (i, route) in spec.http.iter().enumerate() {
        let path = format!("spec.http[{i}]");
        let Some((hr, delegate)) = http_route(route, &path, refs, Some(&gateways), r, &mut warn)
        else {
            continue;
        };
        let Some(d) = delegate else {
            http.push(hr);
            continue;
        };
        let dp = format!("{path}.delegate");
        let (found, known) = delegates;
        let Some(delegated) = found.get(&d) else {
            let why = match known.get(&d) {
                Some(false) => "has hosts; a delegate is a VirtualService without hosts",
                Some(true) => "was rejected (see its own errors)",
                None => "does not exist",
            };
            r.error(
                &dp,
                format!("VirtualService {}/{} {why}", d.namespace, d.name),
            );
            continue;
        };
        if !delegated.export_to.includes(&o.id.namespace) {
            r.error(
                &dp,
                format!(
                    "VirtualService {}/{} is not exported to namespace {:?} (its exportTo)",
                    d.namespace, d.name, o.id.namespace
                ),
            );
            continue;
        }
        for (j, leaf) in delegated.http.iter().enumerate() {
            match merge_route(&hr, leaf, &d) {
                Some(merged) => http.push(merged),
                None => warn(
                    dp.clone(),
                    format!(
                        "route spec.http[{j}] of VirtualService {}/{} conflicts with this route's match (it is not narrower); it is left out, as Istio leaves it",
                        d.namespace, d.name
                    ),
                ),
            }
        }
    }
    let tcp = spec
        .tcp
        .iter()
        .enumerate()
        .filter_map(|(i, t)| tcp_route(t, &format!("spec.tcp[{i}]"), refs, &gateways, r))
        .collect();
    let tls = spec
        .tls
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            tls_route(
                t,
                &format!("spec.tls[{i}]"),
                refs,
                &gateways,
                &spec.hosts,
                r,
            )
        })
        .collect();
    if r.count() > before {
        return None;
    }
    Some(VirtualService {
        id: o.id.clone(),
        hosts,
        gateways,
        http,
        tcp,
        tls,
        export_to,
    })
}

fn tcp_route(
    t: &wire::TcpRoute,
    path: &str,
    refs: &Refs<'_>,
    vs_gateways: &[GatewayRef],
    r: &mut Report<'_>,
) -> Option<TcpRoute> {
    let before = r.count();
    let matches = t
        .r#match
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mp = format!("{path}.match[{i}]");
            if m.source_subnet.is_some() {
                r.unsupported(format!("{mp}.sourceSubnet"), "sourceSubnet");
            }
            l4_match(
                L4Wire {
                    port: m.port,
                    destination_subnets: &m.destination_subnets,
                    source_labels: &m.source_labels,
                    gateways: &m.gateways,
                    source_namespace: &m.source_namespace,
                },
                &mp,
                refs,
                vs_gateways,
                r,
            )
        })
        .collect();
    let route = l4_destinations(&t.route, &format!("{path}.route"), refs, r);
    (r.count() == before).then_some(TcpRoute {
        matches,
        route: route?,
    })
}

fn tls_route(
    t: &wire::TlsRoute,
    path: &str,
    refs: &Refs<'_>,
    vs_gateways: &[GatewayRef],
    vs_hosts: &[String],
    r: &mut Report<'_>,
) -> Option<TlsRoute> {
    let before = r.count();
    if t.r#match.is_empty() {
        r.error(
            format!("{path}.match"),
            "a tls route needs at least one match (with sniHosts)",
        );
    }
    let mut matches = Vec::new();
    for (i, m) in t.r#match.iter().enumerate() {
        let mp = format!("{path}.match[{i}]");
        if m.sni_hosts.is_empty() {
            r.error(
                format!("{mp}.sniHosts"),
                "at least one SNI host is required",
            );
        }
        let mut sni_hosts = Vec::new();
        for (j, h) in m.sni_hosts.iter().enumerate() {
            let hp = format!("{mp}.sniHosts[{j}]");
            if let Err(e) = host::check(h) {
                r.error(&hp, e);
                continue;
            }
            // As Istio: SNI names are taken literally (never short names to resolve), within
            // the hosts as written.
            let sni = h.trim().to_ascii_lowercase();
            if !vs_hosts
                .iter()
                .any(|vh| host::covers(&vh.trim().to_ascii_lowercase(), &sni))
            {
                r.error(
                    &hp,
                    format!(
                        "SNI host {sni:?} is not covered by any of the VirtualService's hosts {vs_hosts:?}"
                    ),
                );
                continue;
            }
            if sni != "*" && !sni_hosts.contains(&sni) {
                sni_hosts.push(sni);
            }
        }
        let l4 = l4_match(
            L4Wire {
                port: m.port,
                destination_subnets: &m.destination_subnets,
                source_labels: &m.source_labels,
                gateways: &m.gateways,
                source_namespace: &m.source_namespace,
            },
            &mp,
            refs,
            vs_gateways,
            r,
        );
        matches.push(TlsMatch { sni_hosts, l4 });
    }
    let route = l4_destinations(&t.route, &format!("{path}.route"), refs, r);
    (r.count() == before).then_some(TlsRoute {
        matches,
        route: route?,
    })
}

/// The fields `tcp` and `tls` matches share.
struct L4Wire<'a> {
    port: Option<u32>,
    destination_subnets: &'a [String],
    source_labels: &'a BTreeMap<String, String>,
    gateways: &'a [String],
    source_namespace: &'a Option<String>,
}

fn l4_match(
    m: L4Wire<'_>,
    path: &str,
    refs: &Refs<'_>,
    vs_gateways: &[GatewayRef],
    r: &mut Report<'_>,
) -> L4Match {
    let port = m
        .port
        .and_then(|p| super::registry::port_number(Some(p), &format!("{path}.port"), r));
    let mut destination_subnets = Vec::new();
    for (i, s) in m.destination_subnets.iter().enumerate() {
        match super::registry::address(s) {
            Ok(net) => destination_subnets.push(net),
            Err(e) => r.error(format!("{path}.destinationSubnets[{i}]"), e),
        }
    }
    let mut gateways = Vec::new();
    for (i, g) in m.gateways.iter().enumerate() {
        let gp = format!("{path}.gateways[{i}]");
        if let Some(gr) = gateway_ref(g, &gp, refs, r) {
            if !vs_gateways.contains(&gr) {
                r.error(
                    &gp,
                    format!("{g:?} is not one of the VirtualService's gateways"),
                );
            }
            gateways.push(gr);
        }
    }
    if let Some(ns) = m.source_namespace
        && let Err(e) = crate::loader::check_dns_name(ns)
    {
        r.error(format!("{path}.sourceNamespace"), e);
    }
    L4Match {
        port,
        destination_subnets,
        source_labels: m.source_labels.clone(),
        gateways,
        source_namespace: m.source_namespace.clone(),
    }
}

/// A tcp or tls route's weighted destinations (required, as Istio validates).
fn l4_destinations(
    dests: &[wire::RouteDestination],
    path: &str,
    refs: &Refs<'_>,
    r: &mut Report<'_>,
) -> Option<Vec<WeightedDestination>> {
    if dests.is_empty() {
        r.error(path, "at least one destination is required");
        return None;
    }
    let as_http: Vec<wire::HttpRouteDestination> = dests
        .iter()
        .map(|d| wire::HttpRouteDestination {
            destination: d.destination.clone(),
            weight: d.weight,
            headers: None,
        })
        .collect();
    weighted(&as_http, path, refs, r)
}

// === Delegation ===

/// A delegate's route under a root's: the delegate's matches narrowed by the root's (each
/// must be within one of them, else `None`, as in Istio's `mergeHTTPRoute`), and what the
/// delegate leaves unset taken from the root.
fn merge_route(root: &HttpRoute, leaf: &HttpRoute, delegate: &ObjectId) -> Option<HttpRoute> {
    let matches = if root.matches.is_empty() {
        leaf.matches.clone()
    } else if leaf.matches.is_empty() {
        root.matches.clone()
    } else {
        let mut out = Vec::new();
        for sub in &leaf.matches {
            let before = out.len();
            for rm in &root.matches {
                if !match_conflict(rm, sub) {
                    out.push(merge_match(rm, sub));
                }
            }
            if out.len() == before {
                return None;
            }
        }
        out
    };
    let name = match (&root.name, &leaf.name) {
        (r, None) => r.clone(),
        (Some(r), Some(l)) => Some(format!("{r}-{l}")),
        (None, l) => l.clone(),
    };
    let headers = if leaf.headers == HeaderOps::default() {
        root.headers.clone()
    } else {
        leaf.headers.clone()
    };
    Some(HttpRoute {
        name,
        matches,
        action: leaf.action.clone(),
        rewrite: leaf.rewrite.clone().or_else(|| root.rewrite.clone()),
        timeout: leaf.timeout.or(root.timeout),
        retries: leaf.retries.clone().or_else(|| root.retries.clone()),
        fault: leaf.fault.clone().or_else(|| root.fault.clone()),
        mirrors: if leaf.mirrors.is_empty() {
            root.mirrors.clone()
        } else {
            leaf.mirrors.clone()
        },
        headers,
        cors: leaf.cors.clone().or_else(|| root.cors.clone()),
        delegate: Some(delegate.clone()),
    })
}

fn merge_match(root: &RouteMatch, leaf: &RouteMatch) -> RouteMatch {
    let name = match (&root.name, &leaf.name) {
        (r, None) => r.clone(),
        (Some(r), Some(l)) => Some(format!("{r}-{l}")),
        (None, l) => l.clone(),
    };
    fn union<T: Clone>(root: &[(String, T)], leaf: &[(String, T)]) -> Vec<(String, T)> {
        let mut out: Vec<(String, T)> = root
            .iter()
            .filter(|(k, _)| !leaf.iter().any(|(l, _)| l == k))
            .cloned()
            .collect();
        out.extend(leaf.iter().cloned());
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
    let mut source_labels = root.source_labels.clone();
    source_labels.extend(leaf.source_labels.clone());
    RouteMatch {
        name,
        uri: leaf.uri.clone().or_else(|| root.uri.clone()),
        ignore_uri_case: leaf.ignore_uri_case,
        scheme: leaf.scheme.clone().or_else(|| root.scheme.clone()),
        method: leaf.method.clone().or_else(|| root.method.clone()),
        authority: leaf.authority.clone().or_else(|| root.authority.clone()),
        headers: union(&root.headers, &leaf.headers),
        without_headers: union(&root.without_headers, &leaf.without_headers),
        query_params: union(&root.query_params, &leaf.query_params),
        port: leaf.port.or(root.port),
        gateways: if leaf.gateways.is_empty() {
            root.gateways.clone()
        } else {
            leaf.gateways.clone()
        },
        source_labels,
        source_namespace: leaf
            .source_namespace
            .clone()
            .or_else(|| root.source_namespace.clone()),
    }
}

/// Whether a delegate's match falls outside a root's (Istio's `hasConflict`).
fn match_conflict(root: &RouteMatch, leaf: &RouteMatch) -> bool {
    let string = |r: Option<&StringMatch>, l: Option<&StringMatch>| match (r, l) {
        (Some(r), Some(l)) => string_conflict(Some(r), Some(l)),
        _ => false,
    };
    // A presence match is Istio's empty StringMatch: under anything but an exact value.
    let header = |r: Option<&HeaderMatch>, l: &HeaderMatch| match (r, l) {
        (None | Some(HeaderMatch::Present), _) => false,
        (Some(HeaderMatch::Value(r)), HeaderMatch::Value(l)) => string_conflict(Some(r), Some(l)),
        (Some(HeaderMatch::Value(r)), HeaderMatch::Present) => matches!(r, StringMatch::Exact(_)),
    };
    let lookup = |v: &[(String, HeaderMatch)], k: &str| {
        v.iter().find(|(n, _)| n == k).map(|(_, m)| m).cloned()
    };
    if string(root.uri.as_ref(), leaf.uri.as_ref())
        || string(root.scheme.as_ref(), leaf.scheme.as_ref())
        || string(root.method.as_ref(), leaf.method.as_ref())
        || string(root.authority.as_ref(), leaf.authority.as_ref())
    {
        return true;
    }
    for (k, l) in &leaf.headers {
        if header(lookup(&root.headers, k).as_ref(), l) {
            return true;
        }
    }
    for (k, l) in &leaf.without_headers {
        if header(lookup(&root.without_headers, k).as_ref(), l) {
            return true;
        }
    }
    for (k, l) in &leaf.query_params {
        let r = root
            .query_params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, m)| m);
        if string(r, Some(l)) {
            return true;
        }
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    if let (Some(a), Some(b)) = (root.port, leaf.port)
        && a != b
    {
        return true;
    }
    if let Some(ns) = &root.source_namespace
        && leaf.source_namespace.as_ref() != Some(ns)
    {
        return true;
    }
    if leaf
        .source_labels
        .iter()
        .any(|(k, v)| root.source_labels.get(k).is_some_and(|rv| rv != v))
    {
        return true;
    }
    !root.gateways.is_empty()
        && !leaf.gateways.is_empty()
        && leaf.gateways.iter().any(|g| !root.gateways.contains(g))
}

/// Istio's `stringMatchConflict`: the leaf must be within the root (an exact value equal to
/// or under the root's exact or prefix, a prefix under the root's prefix); regexes match
/// only where the other side sets nothing.
fn string_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else {
        return false;
    };
    match (root, leaf) {
        (StringMatch::Regex(_), _) | (_, StringMatch::Regex(_)) => true,
        (StringMatch::Exact(r), StringMatch::Exact(l)) => r != l,
        (StringMatch::Exact(_), StringMatch::Prefix(_)) => true,
        (StringMatch::Prefix(r), StringMatch::Prefix(l) | StringMatch::Exact(l)) => {
            !l.starts_with(r.as_str())
        }
    }
}

fn gateway_ref(name: &str, path: &str, refs: &Refs<'_>, r: &mut Report<'_>) -> Option<GatewayRef> {
    if name == "mesh" {
        return Some(GatewayRef::Mesh);
    }
    let (ns, gw) = match name.split_once('/') {
        Some((ns, gw)) => (ns, gw),
        None => (refs.namespace, name),
    };
    if gw.contains('.') {
        r.error(
            path,
            format!("gateway {name:?}: use namespace/name, not a dotted name"),
        );
        return None;
    }
    let id = ObjectId {
        kind: Kind::Gateway,
        namespace: ns.to_string(),
        name: gw.to_string(),
    };
    if !refs.gateways.contains_key(&id) {
        r.error(
            path,
            format!("Gateway {ns}/{gw} does not exist (or was rejected)"),
        );
        return None;
    }
    Some(GatewayRef::Gateway(id))
}

/// An http route, and the delegate it names (its action then comes from the delegate's routes).
/// `vs_gateways`: `None` in a delegate, whose gateways are its roots'.
fn http_route(
    route: &wire::HttpRoute,
    path: &str,
    refs: &Refs<'_>,
    vs_gateways: Option<&[GatewayRef]>,
    r: &mut Report<'_>,
    warn: &mut impl FnMut(String, String),
) -> Option<(HttpRoute, Option<ObjectId>)> {
    let before = r.count();
    let delegate = route.delegate.as_ref().map(|d| {
        let dp = format!("{path}.delegate");
        if d.name.is_empty() {
            r.error(format!("{dp}.name"), "a name is required");
        } else if let Err(e) = crate::loader::check_dns_name(&d.name) {
            r.error(format!("{dp}.name"), e);
        }
        if let Some(ns) = &d.namespace
            && let Err(e) = crate::loader::check_dns_name(ns)
        {
            r.error(format!("{dp}.namespace"), e);
        }
        for (field, set) in [
            ("route", !route.route.is_empty()),
            ("redirect", route.redirect.is_some()),
            ("directResponse", route.direct_response.is_some()),
        ] {
            if set {
                r.error(
                    format!("{path}.{field}"),
                    "a route that delegates takes its action from the delegate's routes; remove it",
                );
            }
        }
        ObjectId {
            kind: Kind::VirtualService,
            namespace: d
                .namespace
                .clone()
                .unwrap_or_else(|| refs.namespace.to_string()),
            name: d.name.clone(),
        }
    });

    let mut matches = Vec::new();
    for (i, m) in route.r#match.iter().enumerate() {
        if let Some(rm) = route_match(m, &format!("{path}.match[{i}]"), refs, vs_gateways, r, warn)
        {
            matches.push(rm);
        }
    }

    let actions = [
        !route.route.is_empty(),
        route.redirect.is_some(),
        route.direct_response.is_some(),
    ];
    let action = match actions.iter().filter(|a| **a).count() {
        // Replaced by the delegate's routes' actions when merged.
        _ if delegate.is_some() => Some(RouteAction::Route(Vec::new())),
        0 => {
            r.error(path, "one of route, redirect or directResponse is required");
            None
        }
        1 if !route.route.is_empty() => {
            weighted(&route.route, &format!("{path}.route"), refs, r).map(RouteAction::Route)
        }
        1 if route.redirect.is_some() => route
            .redirect
            .as_ref()
            .and_then(|rd| redirect(rd, &format!("{path}.redirect"), r))
            .map(RouteAction::Redirect),
        1 => route
            .direct_response
            .as_ref()
            .and_then(|d| direct_response(d, &format!("{path}.directResponse"), r)),
        _ => {
            r.error(path, "set only one of route, redirect or directResponse");
            None
        }
    };

    let rewrite = route.rewrite.as_ref().map(|rw| {
        let rp = format!("{path}.rewrite");
        if route.redirect.is_some() {
            r.error(&rp, "rewrite cannot be combined with redirect");
        }
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            r.error(&rp, "set either uri or uriRegexRewrite, not both");
        }
        if rw.uri.is_some() && matches.iter().any(|m| matches!(m.uri, Some(StringMatch::Regex(_)))) {
            r.error(format!("{rp}.uri"), "a uri rewrite replaces a matched prefix; with a regex uri match use uriRegexRewrite");
        }
        if let Some(a) = &rw.authority
            && a.is_empty() {
                r.error(format!("{rp}.authority"), "must not be empty");
            }
        let uri_regex = rw.uri_regex_rewrite.as_ref().map(|rr| {
            check_regex(&rr.r#match, &format!("{rp}.uriRegexRewrite.match"), r);
            (rr.r#match.clone(), rr.rewrite.clone())
        });
        Rewrite { uri: rw.uri.clone(), authority: rw.authority.clone(), uri_regex }
    });

    let timeout = route
        .timeout
        .as_deref()
        .and_then(|t| r.duration(t, format!("{path}.timeout")));
    let retries = route
        .retries
        .as_ref()
        .and_then(|rt| retry(rt, &format!("{path}.retries"), r));
    let fault = route
        .fault
        .as_ref()
        .and_then(|f| fault(f, &format!("{path}.fault"), r));

    let mut mirrors = Vec::new();
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        r.error(
            format!("{path}.mirrors"),
            "set either mirror or mirrors, not both",
        );
    }
    if let Some(m) = &route.mirror {
        if route.mirror_percent.is_some() && route.mirror_percentage.is_some() {
            r.error(
                format!("{path}.mirrorPercent"),
                "deprecated; set only mirrorPercentage",
            );
        }
        let percent = match (&route.mirror_percentage, route.mirror_percent) {
            (Some(p), _) => percentage(p.value, &format!("{path}.mirrorPercentage.value"), r),
            (None, Some(p)) => percentage(f64::from(p), &format!("{path}.mirrorPercent"), r),
            (None, None) => Some(100.0),
        };
        if let (Some(destination), Some(percent)) =
            (destination(m, &format!("{path}.mirror"), refs, r), percent)
        {
            mirrors.push(Mirror {
                destination,
                percent,
            });
        }
    } else if route.mirror_percentage.is_some() || route.mirror_percent.is_some() {
        r.error(
            format!("{path}.mirrorPercentage"),
            "needs a mirror destination",
        );
    }
    for (i, m) in route.mirrors.iter().enumerate() {
        let mp = format!("{path}.mirrors[{i}]");
        let Some(d) = &m.destination else {
            r.error(format!("{mp}.destination"), "a destination is required");
            continue;
        };
        let percent = match &m.percentage {
            Some(p) => percentage(p.value, &format!("{mp}.percentage.value"), r),
            None => Some(100.0),
        };
        if let (Some(destination), Some(percent)) = (
            destination(d, &format!("{mp}.destination"), refs, r),
            percent,
        ) {
            mirrors.push(Mirror {
                destination,
                percent,
            });
        }
    }

    let headers = route
        .headers
        .as_ref()
        .map(|h| header_ops(h, &format!("{path}.headers"), r))
        .unwrap_or_default();
    let cors = route
        .cors_policy
        .as_ref()
        .map(|c| cors_policy(c, &format!("{path}.corsPolicy"), r));
    if cors.is_some() && route.route.is_empty() && delegate.is_none() {
        warn(
            format!("{path}.corsPolicy"),
            "has no effect on a redirect or directResponse route (Envoy's CORS filter skips them)"
                .to_string(),
        );
    }
    if r.count() > before {
        return None;
    }
    Some((
        HttpRoute {
            name: route.name.clone(),
            matches,
            action: action?,
            rewrite,
            timeout,
            retries,
            fault,
            mirrors,
            headers,
            cors,
            delegate: None,
        },
        delegate,
    ))
}

fn route_match(
    m: &wire::HttpMatchRequest,
    path: &str,
    refs: &Refs<'_>,
    vs_gateways: Option<&[GatewayRef]>,
    r: &mut Report<'_>,
    warn: &mut impl FnMut(String, String),
) -> Option<RouteMatch> {
    let before = r.count();
    if m.stat_prefix.is_some() {
        r.unsupported(format!("{path}.statPrefix"), "statPrefix");
    }
    let uri = m
        .uri
        .as_ref()
        .and_then(|s| string_match(s, &format!("{path}.uri"), false, r));
    if let Some(StringMatch::Exact(u) | StringMatch::Prefix(u)) = &uri
        && !u.starts_with('/')
    {
        warn(
            format!("{path}.uri"),
            format!("{u:?} does not start with '/' and can never match a request path"),
        );
    }
    let mut headers = Vec::new();
    for (name, sm) in &m.headers {
        if let Some(hm) = header_match(name, sm, &format!("{path}.headers.{name}"), r) {
            headers.push((name.clone(), hm));
        }
    }
    let mut without_headers = Vec::new();
    for (name, sm) in &m.without_headers {
        if let Some(hm) = header_match(name, sm, &format!("{path}.withoutHeaders.{name}"), r) {
            without_headers.push((name.clone(), hm));
        }
    }
    let mut query_params = Vec::new();
    for (name, sm) in &m.query_params {
        let qp = format!("{path}.queryParams.{name}");
        if sm.prefix.is_some() {
            r.error(
                &qp,
                "query parameters match only exact or regex (as in Istio)",
            );
            continue;
        }
        let matcher = if sm.exact.is_none() && sm.regex.is_none() {
            StringMatch::Regex(".*".to_string())
        } else {
            match string_match(sm, &qp, false, r) {
                Some(s) => s,
                None => continue,
            }
        };
        query_params.push((name.clone(), matcher));
    }
    let port = match m.port {
        None => None,
        Some(p) => super::registry::port_number(Some(p), &format!("{path}.port"), r),
    };
    let mut gateways = Vec::new();
    for (i, g) in m.gateways.iter().enumerate() {
        let gp = format!("{path}.gateways[{i}]");
        if let Some(gr) = gateway_ref(g, &gp, refs, r) {
            if vs_gateways.is_some_and(|vg| !vg.contains(&gr)) {
                r.error(
                    &gp,
                    format!("{g:?} is not one of the VirtualService's gateways"),
                );
            }
            gateways.push(gr);
        }
    }
    if let Some(ns) = &m.source_namespace
        && let Err(e) = crate::loader::check_dns_name(ns)
    {
        r.error(format!("{path}.sourceNamespace"), e);
    }
    let scheme = m
        .scheme
        .as_ref()
        .and_then(|s| string_match(s, &format!("{path}.scheme"), false, r));
    let method = m
        .method
        .as_ref()
        .and_then(|s| string_match(s, &format!("{path}.method"), false, r));
    let authority = m
        .authority
        .as_ref()
        .and_then(|s| string_match(s, &format!("{path}.authority"), false, r));
    if r.count() > before {
        return None;
    }
    Some(RouteMatch {
        name: m.name.clone(),
        uri,
        ignore_uri_case: m.ignore_uri_case,
        scheme,
        method,
        authority,
        headers,
        without_headers,
        query_params,
        port,
        gateways,
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.clone(),
    })
}

pub(super) fn string_match(
    s: &wire::StringMatch,
    path: &str,
    allow_empty: bool,
    r: &mut Report<'_>,
) -> Option<StringMatch> {
    let set: Vec<(&str, &String)> = [
        ("exact", &s.exact),
        ("prefix", &s.prefix),
        ("regex", &s.regex),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    match set.as_slice() {
        [] if allow_empty => None,
        [] => {
            r.error(path, "one of exact, prefix or regex is required");
            None
        }
        [(kind, value)] => {
            if value.is_empty() && *kind != "exact" {
                r.error(format!("{path}.{kind}"), "must not be empty");
                return None;
            }
            Some(match *kind {
                "exact" => StringMatch::Exact((*value).clone()),
                "prefix" => StringMatch::Prefix((*value).clone()),
                _ => {
                    check_regex(value, &format!("{path}.regex"), r);
                    StringMatch::Regex((*value).clone())
                }
            })
        }
        _ => {
            r.error(path, "set only one of exact, prefix or regex");
            None
        }
    }
}

pub(super) fn header_match(
    name: &str,
    sm: &wire::StringMatch,
    path: &str,
    r: &mut Report<'_>,
) -> Option<HeaderMatch> {
    check_header_name(name, path, true, r);
    if sm.exact.is_none() && sm.prefix.is_none() && sm.regex.is_none() {
        return Some(HeaderMatch::Present);
    }
    string_match(sm, path, false, r).map(HeaderMatch::Value)
}

pub(super) fn check_header_name(name: &str, path: &str, matching: bool, r: &mut Report<'_>) {
    let valid = !name.is_empty()
        && name.chars().all(|c| {
            c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c) || (matching && c == ':')
        });
    if !valid {
        r.error(path, format!("{name:?} is not a valid header name"));
    } else if name.chars().any(|c| c.is_ascii_uppercase()) {
        r.error(
            path,
            format!("header name {name:?} must be lowercase (as Istio requires)"),
        );
    }
}

fn check_regex(re: &str, path: &str, r: &mut Report<'_>) {
    if let Err(e) = regex::Regex::new(re) {
        let first = e
            .to_string()
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        r.error(path, format!("invalid regular expression {re:?}: {first}"));
    } else if let Err(e) = crate::re2::check(re) {
        r.error(path, format!("regular expression {re:?}: {e}"));
    }
}

fn weighted(
    dests: &[wire::HttpRouteDestination],
    path: &str,
    refs: &Refs<'_>,
    r: &mut Report<'_>,
) -> Option<Vec<WeightedDestination>> {
    let before = r.count();
    let mut out = Vec::new();
    let mut total: u64 = 0;
    for (i, d) in dests.iter().enumerate() {
        let dp = format!("{path}[{i}]");
        let weight = match d.weight {
            None => u32::from(dests.len() == 1) * 100,
            Some(w) if w < 0 => {
                r.error(
                    format!("{dp}.weight"),
                    format!("weight must not be negative, got {w}"),
                );
                0
            }
            Some(w) => u32::try_from(w).unwrap_or_else(|_| {
                r.error(format!("{dp}.weight"), format!("weight {w} is too large"));
                0
            }),
        };
        total += u64::from(weight);
        let Some(dst) = &d.destination else {
            r.error(format!("{dp}.destination"), "a destination is required");
            continue;
        };
        let headers = d
            .headers
            .as_ref()
            .map(|h| header_ops(h, &format!("{dp}.headers"), r))
            .unwrap_or_default();
        if let Some(destination) = destination(dst, &format!("{dp}.destination"), refs, r) {
            out.push(WeightedDestination {
                destination,
                weight,
                headers,
            });
        }
    }
    if dests.len() > 1 && total == 0 {
        r.error(
            path,
            "the destinations' weights add up to 0; give at least one a positive weight",
        );
    }
    // A lone destination takes all traffic whatever its weight, as in Istio.
    if let [only] = out.as_mut_slice() {
        only.weight = 100;
    }
    (r.count() == before).then_some(out)
}

fn destination(
    d: &wire::Destination,
    path: &str,
    refs: &Refs<'_>,
    r: &mut Report<'_>,
) -> Option<Destination> {
    if d.host.is_empty() {
        r.error(format!("{path}.host"), "a host is required");
        return None;
    }
    if let Err(m) = host::check(&d.host) {
        r.error(format!("{path}.host"), m);
        return None;
    }
    let hostname = host::resolve(&d.host, refs.namespace);
    let Some(service) = refs.services.get(&hostname) else {
        r.error(
            format!("{path}.host"),
            format!("{hostname:?} is not a known service (no ServiceEntry defines it)"),
        );
        return None;
    };
    let port = match d.port.as_ref().and_then(|p| p.number) {
        Some(n) => {
            let p = u16::try_from(n).ok().filter(|p| service.port(*p).is_some());
            if p.is_none() {
                let known: Vec<u16> = service.ports.iter().map(|p| p.number).collect();
                r.error(
                    format!("{path}.port.number"),
                    format!("service {hostname:?} has no port {n}; it has {known:?}"),
                );
            }
            p?
        }
        None => match service.ports.as_slice() {
            [only] => only.number,
            ports => {
                let known: Vec<u16> = ports.iter().map(|p| p.number).collect();
                r.error(
                    format!("{path}.port"),
                    format!("service {hostname:?} has several ports {known:?}; name one"),
                );
                return None;
            }
        },
    };
    if let Some(subset) = &d.subset {
        let defined = super::destination_rule::lookup(refs.rules, &hostname)
            .is_some_and(|dr| dr.subsets.iter().any(|s| &s.name == subset));
        if !defined {
            r.error(
                format!("{path}.subset"),
                format!("subset {subset:?} of {hostname:?} is not defined by any DestinationRule"),
            );
            return None;
        }
    }
    Some(Destination {
        host: hostname,
        subset: d.subset.clone(),
        port,
    })
}

fn redirect(rd: &wire::HttpRedirect, path: &str, r: &mut Report<'_>) -> Option<Redirect> {
    let code = rd.redirect_code.unwrap_or(301);
    if ![301, 302, 303, 307, 308].contains(&code) {
        r.error(
            format!("{path}.redirectCode"),
            format!("expected 301, 302, 303, 307 or 308, got {code}"),
        );
    }
    if let Some(s) = &rd.scheme
        && s != "http"
        && s != "https"
    {
        r.error(
            format!("{path}.scheme"),
            format!("expected http or https, got {s:?}"),
        );
    }
    let port = match rd.port {
        None => None,
        Some(p) => super::registry::port_number(Some(p), &format!("{path}.port"), r),
    };
    let derive = match rd.derive_port.as_deref() {
        None | Some("FROM_PROTOCOL_DEFAULT") => false,
        Some("FROM_REQUEST_PORT") => {
            r.unsupported(format!("{path}.derivePort"), "derivePort FROM_REQUEST_PORT");
            false
        }
        Some(other) => {
            r.error(
                format!("{path}.derivePort"),
                format!("expected FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT, got {other:?}"),
            );
            false
        }
    };
    if derive && port.is_some() {
        r.error(path, "set either port or derivePort, not both");
    }
    Some(Redirect {
        uri: rd.uri.clone(),
        authority: rd.authority.clone(),
        port,
        derive_port_from_request: derive,
        scheme: rd.scheme.clone(),
        code: code as u16,
    })
}

fn direct_response(
    d: &wire::HttpDirectResponse,
    path: &str,
    r: &mut Report<'_>,
) -> Option<RouteAction> {
    let status = match d.status {
        Some(s @ 200..=599) => s as u16,
        Some(s) => {
            r.error(
                format!("{path}.status"),
                format!("expected an HTTP status 200-599, got {s}"),
            );
            return None;
        }
        None => {
            r.error(format!("{path}.status"), "a status is required");
            return None;
        }
    };
    let body = match &d.body {
        None => None,
        Some(b) if b.bytes.is_some() => {
            r.unsupported(format!("{path}.body.bytes"), "a bytes body (use string)");
            None
        }
        Some(b) => b.string.clone(),
    };
    Some(RouteAction::DirectResponse { status, body })
}

/// A route's CORS policy, as Envoy's CORS filter applies it.
#[derive(Clone, Debug, PartialEq)]
pub struct CorsPolicy {
    /// Origins allowed to make cross-origin requests; one that matches `*` allows any.
    pub allow_origins: Vec<StringMatch>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    /// Whole seconds.
    pub max_age: Option<Duration>,
    pub allow_credentials: Option<bool>,
    /// A preflight from an origin not allowed goes upstream (Istio's `FORWARD`, the default);
    /// otherwise the proxy answers it without allowing anything (`IGNORE`).
    pub forward_unmatched_preflights: bool,
}

/// The methods Istio accepts in `allowMethods`.
const CORS_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
];

fn cors_policy(c: &wire::CorsPolicy, path: &str, r: &mut Report<'_>) -> CorsPolicy {
    let mut allow_origins = Vec::new();
    if !c.allow_origins.is_empty() && !c.allow_origin.is_empty() {
        r.error(
            format!("{path}.allowOrigin"),
            "deprecated; set only allowOrigins",
        );
    }
    for (i, o) in c.allow_origins.iter().enumerate() {
        let op = format!("{path}.allowOrigins[{i}]");
        if o.exact.as_deref() == Some("") {
            r.error(format!("{op}.exact"), "must not be empty");
            continue;
        }
        if let Some(m) = string_match(o, &op, false, r) {
            allow_origins.push(m);
        }
    }
    for (i, o) in c.allow_origin.iter().enumerate() {
        if o.is_empty() {
            r.error(format!("{path}.allowOrigin[{i}]"), "must not be empty");
        } else {
            allow_origins.push(StringMatch::Exact(o.clone()));
        }
    }
    if c.allow_origins.is_empty() && c.allow_origin.is_empty() {
        r.error(
            format!("{path}.allowOrigins"),
            "at least one origin is required; without one the policy allows no cross-origin request",
        );
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&m.as_str()) {
            r.error(
                format!("{path}.allowMethods[{i}]"),
                format!(
                    "{m:?} is not a supported HTTP method; expected one of {}",
                    CORS_METHODS.join(", ")
                ),
            );
        }
    }
    for (field, names) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, name) in names.iter().enumerate() {
            let token = !name.is_empty()
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(ch));
            if !token {
                r.error(
                    format!("{path}.{field}[{i}]"),
                    format!("{name:?} is not a valid header name"),
                );
            }
        }
    }
    let max_age = c.max_age.as_deref().and_then(|m| {
        let mp = format!("{path}.maxAge");
        let d = r.duration(m, &mp)?;
        if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
            r.error(&mp, "must be a whole number of seconds, at least 1s (browsers cache preflights by the second)");
            return None;
        }
        Some(d)
    });
    let forward_unmatched_preflights = match c.unmatched_preflights.as_deref() {
        None | Some("UNSPECIFIED") | Some("FORWARD") => true,
        Some("IGNORE") => false,
        Some(other) => {
            r.error(
                format!("{path}.unmatchedPreflights"),
                format!("expected FORWARD or IGNORE, got {other:?}"),
            );
            true
        }
    };
    CorsPolicy {
        allow_origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age,
        allow_credentials: c.allow_credentials,
        forward_unmatched_preflights,
    }
}

fn retry(rt: &wire::HttpRetry, path: &str, r: &mut Report<'_>) -> Option<RetryPolicy> {
    if rt.retry_remote_localities == Some(true) {
        r.unsupported(
            format!("{path}.retryRemoteLocalities"),
            "retryRemoteLocalities",
        );
    }
    if rt.backoff.is_some() {
        r.unsupported(format!("{path}.backoff"), "backoff");
    }
    if rt.retry_ignore_previous_hosts == Some(false) {
        r.unsupported(
            format!("{path}.retryIgnorePreviousHosts"),
            "retryIgnorePreviousHosts: false",
        );
    }
    let attempts = match rt.attempts {
        None => {
            r.error(
                format!("{path}.attempts"),
                "attempts is required (0 disables retries)",
            );
            return None;
        }
        Some(a) => match u32::try_from(a) {
            Ok(a) => a,
            Err(_) => {
                r.error(
                    format!("{path}.attempts"),
                    format!("expected a non-negative count, got {a}"),
                );
                return None;
            }
        },
    };
    let per_try_timeout = rt.per_try_timeout.as_deref().and_then(|t| {
        let d = r.duration(t, format!("{path}.perTryTimeout"))?;
        if d < Duration::from_millis(1) {
            r.error(format!("{path}.perTryTimeout"), "must be at least 1ms");
        }
        Some(d)
    });
    let mut retry_on = Vec::new();
    let mut codes = Vec::new();
    match rt
        .retry_on
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => {
            retry_on.extend(DEFAULT_RETRY_ON.iter().map(|s| s.to_string()));
            codes.push(503);
        }
        Some(list) => {
            for token in list.split(',').map(str::trim) {
                if let Ok(code) = token.parse::<u16>() {
                    if !(100..=599).contains(&code) {
                        r.error(
                            format!("{path}.retryOn"),
                            format!("status code {code} is not an HTTP status"),
                        );
                    }
                    codes.push(code);
                } else if RETRY_ON.contains(&token) {
                    if !retry_on.iter().any(|t| t == token) {
                        retry_on.push(token.to_string());
                    }
                } else {
                    r.error(
                        format!("{path}.retryOn"),
                        format!("unknown retry condition {token:?}; expected HTTP status codes or one of {}", RETRY_ON.join(", ")),
                    );
                }
            }
            if !codes.is_empty() && !retry_on.iter().any(|t| t == "retriable-status-codes") {
                retry_on.push("retriable-status-codes".to_string());
            }
        }
    }
    Some(RetryPolicy {
        attempts,
        per_try_timeout,
        retry_on,
        retriable_status_codes: codes,
    })
}

fn fault(f: &wire::HttpFaultInjection, path: &str, r: &mut Report<'_>) -> Option<Fault> {
    if f.delay.is_none() && f.abort.is_none() {
        r.error(path, "a fault needs delay or abort");
        return None;
    }
    let fault_percent = |given: &Option<wire::Percent>,
                         percent: Option<i64>,
                         p: &str,
                         r: &mut Report<'_>| match (given, percent) {
        (Some(_), Some(_)) => {
            r.error(format!("{p}.percent"), "deprecated; set only percentage");
            None
        }
        (Some(pc), None) => percentage(pc.value, &format!("{p}.percentage.value"), r),
        (None, Some(pc)) => percentage(pc as f64, &format!("{p}.percent"), r),
        (None, None) => Some(100.0),
    };
    let delay = f.delay.as_ref().and_then(|d| {
        let p = format!("{path}.delay");
        if d.exponential_delay.is_some() {
            r.unsupported(format!("{p}.exponentialDelay"), "exponentialDelay");
            return None;
        }
        let Some(fixed) = &d.fixed_delay else {
            r.error(format!("{p}.fixedDelay"), "fixedDelay is required");
            return None;
        };
        let fixed = r.duration(fixed, format!("{p}.fixedDelay"))?;
        if fixed < Duration::from_millis(1) {
            r.error(format!("{p}.fixedDelay"), "must be at least 1ms");
        }
        Some(FaultDelay {
            fixed,
            percent: fault_percent(&d.percentage, d.percent, &p, r)?,
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let p = format!("{path}.abort");
        if a.http2_error.is_some() {
            r.unsupported(format!("{p}.http2Error"), "http2Error");
            return None;
        }
        let status = match (a.http_status, &a.grpc_status) {
            (Some(_), Some(_)) => {
                r.error(&p, "set either httpStatus or grpcStatus, not both");
                return None;
            }
            (Some(s), None) if (200..=599).contains(&s) => FaultStatus::Http(s as u16),
            (Some(s), None) => {
                r.error(
                    format!("{p}.httpStatus"),
                    format!("expected an HTTP status 200-599, got {s}"),
                );
                return None;
            }
            (None, Some(g)) => match grpc_code(g) {
                Some(c) => FaultStatus::Grpc(c),
                None => {
                    r.error(
                        format!("{p}.grpcStatus"),
                        format!("unknown gRPC status {g:?}; expected a name like UNAVAILABLE"),
                    );
                    return None;
                }
            },
            (None, None) => {
                r.error(&p, "httpStatus or grpcStatus is required");
                return None;
            }
        };
        Some(FaultAbort {
            status,
            percent: fault_percent(&a.percentage, a.percent, &p, r)?,
        })
    });
    Some(Fault { delay, abort })
}

fn grpc_code(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    CODES.iter().position(|c| *c == name).map(|i| i as u32)
}

fn percentage(v: f64, path: &str, r: &mut Report<'_>) -> Option<f64> {
    if (0.0..=100.0).contains(&v) {
        Some(v)
    } else {
        r.error(path, format!("expected a percentage 0-100, got {v}"));
        None
    }
}

fn header_ops(h: &wire::Headers, path: &str, r: &mut Report<'_>) -> HeaderOps {
    let op = |o: &Option<wire::HeaderOperations>, p: &str, r: &mut Report<'_>| -> HeaderOp {
        let Some(o) = o else {
            return HeaderOp::default();
        };
        for (what, names) in [
            ("set", o.set.keys().collect::<Vec<_>>()),
            ("add", o.add.keys().collect()),
            ("remove", o.remove.iter().collect()),
        ] {
            for name in names {
                let hp = format!("{p}.{what}.{name}");
                let lower = name.to_ascii_lowercase();
                if lower.starts_with(':') || lower == "host" {
                    r.error(
                        &hp,
                        format!(
                            "{name:?} cannot be changed here; use rewrite.authority for the host"
                        ),
                    );
                } else {
                    check_header_name(&lower, &hp, false, r);
                }
            }
        }
        HeaderOp {
            set: o
                .set
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            add: o
                .add
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            remove: o.remove.iter().map(|k| k.to_ascii_lowercase()).collect(),
        }
    };
    HeaderOps {
        request: op(&h.request, &format!("{path}.request"), r),
        response: op(&h.response, &format!("{path}.response"), r),
    }
}
