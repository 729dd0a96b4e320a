//! What a proxy has acknowledged, as straitd's admin API serves it
//! (`/debug/proxies/NODE/config`: every resource in Envoy's JSON form) and as `straitctl
//! proxy-config` reads and tabulates it (istioctl's columns), typed for `straitctl explain`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::{DataSource, address, data_source};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpCluster;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use prost::{Message, Name};
use serde_json::{Value, json};
use strait_model::{Kind, ObjectId};
use strait_xds::HeldConfig;
use strait_xds::snapshot::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE};

use crate::envoy_json::{EnvoyJson, JsonError};

/// The types by the names `proxy-config` and the admin API use for them.
pub const TYPES: [(&str, &str); 5] = [
    ("clusters", CLUSTER_TYPE),
    ("listeners", LISTENER_TYPE),
    ("routes", ROUTE_TYPE),
    ("endpoints", ENDPOINT_TYPE),
    ("secrets", SECRET_TYPE),
];

pub fn type_url(kind: &str) -> Option<&'static str> {
    TYPES
        .iter()
        .find(|(name, _)| *name == kind)
        .map(|(_, url)| *url)
}

/// One stream's acknowledged configuration as the admin API serves it: per type its
/// SYNCED/STALE/NACK state, the version acknowledged and every resource held, in Envoy's JSON
/// form (`null` for a version straitd no longer keeps).
pub fn held_json(
    held: &HeldConfig,
    streams: usize,
    only: Option<&str>,
) -> Result<Value, JsonError> {
    let envoy = EnvoyJson::load()?;
    let status = &held.status;
    let mut types = serde_json::Map::new();
    for (name, type_url) in TYPES {
        if only.is_some_and(|t| t != type_url) {
            continue;
        }
        let type_status = status.types.get(type_url);
        let state = crate::ctl::xds_state(
            type_status
                .map(|t| serde_json::to_value(t).unwrap_or_default())
                .as_ref(),
        );
        let mut resources = Vec::new();
        for r in held.types.get(type_url).into_iter().flatten().flatten() {
            let resource = match &r.bytes {
                Some(bytes) => envoy.to_json(type_url, bytes)?,
                None => Value::Null,
            };
            resources.push(json!({"name": &*r.name, "version": r.version, "resource": resource}));
        }
        types.insert(
            name.to_string(),
            json!({
                "type_url": type_url,
                "state": state,
                "acked_version": type_status.and_then(|t| t.acked_version.clone()),
                "resources": resources,
            }),
        );
    }
    Ok(json!({
        "node_id": status.node_id,
        "stream_id": status.stream_id,
        "protocol": status.protocol,
        "streams": streams,
        "types": types,
    }))
}

/// What a proxy holds, decoded back into Envoy's types.
#[derive(Clone, Debug, Default)]
pub struct AckedConfig {
    pub node_id: String,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    pub secrets: Vec<Secret>,
    /// Resources held at a version straitd no longer has (name, type), shown as such.
    pub unknown: Vec<(String, &'static str)>,
}

impl AckedConfig {
    /// From the admin API's answer.
    pub fn from_json(envoy: &EnvoyJson, body: &Value) -> Result<AckedConfig, JsonError> {
        let mut config = AckedConfig {
            node_id: body["node_id"].as_str().unwrap_or_default().to_string(),
            ..Default::default()
        };
        for (name, type_url) in TYPES {
            for r in body["types"][name]["resources"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let resource = &r["resource"];
                if resource.is_null() {
                    let held = r["name"].as_str().unwrap_or_default().to_string();
                    config.unknown.push((held, name));
                    continue;
                }
                match type_url {
                    CLUSTER_TYPE => config.clusters.push(envoy.from_json(resource)?),
                    LISTENER_TYPE => config.listeners.push(envoy.from_json(resource)?),
                    ROUTE_TYPE => config.routes.push(envoy.from_json(resource)?),
                    ENDPOINT_TYPE => config.endpoints.push(envoy.from_json(resource)?),
                    _ => config.secrets.push(envoy.from_json(resource)?),
                }
            }
        }
        Ok(config)
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    pub fn route_configuration(&self, name: &str) -> Option<&RouteConfiguration> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// The assignment an EDS cluster asks for.
    pub fn assignment<'a>(&'a self, cluster: &'a Cluster) -> Option<&'a ClusterLoadAssignment> {
        let service = cluster
            .eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or(&cluster.name);
        self.endpoints
            .iter()
            .find(|e| e.cluster_name == service)
            .or(cluster.load_assignment.as_ref())
    }
}

// === tables ===

/// `reviews.default`, as istioctl names an object in its tables; `-` for none.
fn short(ids: &[ObjectId], kind: Kind) -> String {
    let names: Vec<String> = ids
        .iter()
        .filter(|id| id.kind == kind)
        .map(|id| format!("{}.{}", id.name, id.namespace))
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(", ")
    }
}

pub fn discovery_type(cluster: &Cluster) -> String {
    match &cluster.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t)
            .map(|t| t.as_str_name().to_string())
            .unwrap_or_else(|_| t.to_string()),
        Some(ClusterDiscoveryType::ClusterType(custom)) => custom.name.clone(),
        None => "STATIC".into(),
    }
}

/// SERVICE FQDN, PORT, SUBSET, DIRECTION, TYPE, DESTINATION RULE.
pub fn render_clusters(config: &AckedConfig) -> String {
    let mut rows: Vec<Vec<String>> = config
        .clusters
        .iter()
        .map(|c| {
            let parts: Vec<&str> = c.name.split('|').collect();
            let (fqdn, port, subset, direction) = match parts.as_slice() {
                [direction, port, subset, fqdn] => (
                    fqdn.to_string(),
                    port.to_string(),
                    if subset.is_empty() { "-" } else { subset }.to_string(),
                    direction.to_string(),
                ),
                _ => (c.name.clone(), "-".into(), "-".into(), "-".into()),
            };
            let origins = strait_translate::origins_of(c.metadata.as_ref());
            vec![
                fqdn,
                port,
                subset,
                direction,
                discovery_type(c),
                short(&origins, Kind::DestinationRule),
            ]
        })
        .collect();
    rows.sort();
    crate::ctl::render_table(
        &[
            "SERVICE FQDN",
            "PORT",
            "SUBSET",
            "DIRECTION",
            "TYPE",
            "DESTINATION RULE",
        ],
        &rows,
    )
}

fn socket(listener: &Listener) -> (String, String) {
    match listener.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => {
            let port = match &s.port_specifier {
                Some(
                    envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                        p,
                    ),
                ) => p.to_string(),
                _ => "-".into(),
            };
            (s.address.clone(), port)
        }
        Some(address::Address::Pipe(p)) => (p.path.clone(), "-".into()),
        _ => ("-".into(), "-".into()),
    }
}

/// The filter chain's match as istioctl writes it: `ALL`, or its conditions.
pub fn chain_match(chain: &FilterChain) -> String {
    let Some(m) = &chain.filter_chain_match else {
        return "ALL".into();
    };
    let mut parts = Vec::new();
    if let Some(port) = m.destination_port {
        parts.push(format!("Dst Port: {}", port.value));
    }
    if !m.prefix_ranges.is_empty() {
        let ranges: Vec<String> = m
            .prefix_ranges
            .iter()
            .map(|r| {
                format!(
                    "{}/{}",
                    r.address_prefix,
                    r.prefix_len.as_ref().map_or(0, |l| l.value)
                )
            })
            .collect();
        parts.push(format!("Addr: {}", ranges.join(",")));
    }
    if !m.server_names.is_empty() {
        parts.push(format!("SNI: {}", m.server_names.join(",")));
    }
    if !m.transport_protocol.is_empty() {
        parts.push(format!("Trans: {}", m.transport_protocol));
    }
    if !m.application_protocols.is_empty() {
        parts.push(format!("App: {}", m.application_protocols.join(",")));
    }
    if parts.is_empty() {
        "ALL".into()
    } else {
        parts.join("; ")
    }
}

/// The connection manager of a chain, if it has one.
pub fn connection_manager(chain: &FilterChain) -> Option<HttpConnectionManager> {
    chain.filters.iter().find_map(|f| match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any))
            if any.type_url.ends_with(&HttpConnectionManager::full_name()) =>
        {
            HttpConnectionManager::decode(any.value.as_slice()).ok()
        }
        _ => None,
    })
}

pub fn tcp_proxy(chain: &FilterChain) -> Option<TcpProxy> {
    chain.filters.iter().find_map(|f| match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any))
            if any.type_url.ends_with(&TcpProxy::full_name()) =>
        {
            TcpProxy::decode(any.value.as_slice()).ok()
        }
        _ => None,
    })
}

fn chain_destination(chain: &FilterChain) -> String {
    if let Some(hcm) = connection_manager(chain) {
        return match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => format!("Route: {}", rds.route_config_name),
            Some(RouteSpecifier::RouteConfig(rc)) => format!("Inline Route: {}", rc.name),
            _ => "HTTP".into(),
        };
    }
    if let Some(tcp) = tcp_proxy(chain) {
        return match tcp.cluster_specifier {
            Some(TcpCluster::Cluster(c)) => format!("Cluster: {c}"),
            Some(TcpCluster::WeightedClusters(w)) => {
                let names: Vec<String> = w.clusters.iter().map(|c| c.name.clone()).collect();
                format!("Clusters: {}", names.join(", "))
            }
            None => "TCP".into(),
        };
    }
    "Non-HTTP/Non-TCP".into()
}

/// ADDRESS, PORT, MATCH, DESTINATION: a row per filter chain.
pub fn render_listeners(config: &AckedConfig) -> String {
    let mut rows = Vec::new();
    for l in &config.listeners {
        let (address, port) = socket(l);
        for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            rows.push(vec![
                address.clone(),
                port.clone(),
                chain_match(chain),
                chain_destination(chain),
            ]);
        }
        if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
            rows.push(vec![address, port, "ALL".into(), "-".into()]);
        }
    }
    crate::ctl::render_table(&["ADDRESS", "PORT", "MATCH", "DESTINATION"], &rows)
}

/// A route's path match as istioctl writes it: `/*` for every path, `/api*` for a prefix.
pub fn path_match(path: Option<&PathSpecifier>) -> String {
    match path {
        Some(PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(PathSpecifier::Path(p)) => p.clone(),
        Some(PathSpecifier::SafeRegex(r)) => format!("regex {}", r.regex),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => format!("{p}/*"),
        Some(other) => format!("{other:?}"),
        None => "/*".into(),
    }
}

fn domains(list: &[String]) -> String {
    match list.len() {
        0 => "-".into(),
        1 | 2 => list.join(", "),
        n => format!("{}, {} + {} more...", list[0], list[1], n - 2),
    }
}

/// NAME, VHOST NAME, DOMAINS, MATCH, VIRTUAL SERVICE: a row per route.
pub fn render_routes(config: &AckedConfig) -> String {
    let mut rows = Vec::new();
    for rc in &config.routes {
        for vh in &rc.virtual_hosts {
            for route in &vh.routes {
                let m = route.r#match.as_ref();
                let mut matched = path_match(m.and_then(|m| m.path_specifier.as_ref()));
                if let Some(m) = m
                    && !m.headers.is_empty()
                {
                    let names: Vec<&str> = m.headers.iter().map(|h| h.name.as_str()).collect();
                    let _ = write!(matched, " (headers: {})", names.join(","));
                }
                let origins = strait_translate::origins_of(route.metadata.as_ref());
                rows.push(vec![
                    rc.name.clone(),
                    vh.name.clone(),
                    domains(&vh.domains),
                    matched,
                    short(&origins, Kind::VirtualService),
                ]);
            }
        }
    }
    crate::ctl::render_table(
        &["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"],
        &rows,
    )
}

/// `HEALTHY`, `UNHEALTHY`, ... as the assignment says (UNKNOWN counts as healthy, as Envoy
/// treats it).
pub fn health(status: i32) -> String {
    use envoy_types::pb::envoy::config::core::v3::HealthStatus;
    match HealthStatus::try_from(status) {
        Ok(HealthStatus::Unknown | HealthStatus::Healthy) => "HEALTHY".into(),
        Ok(other) => other.as_str_name().to_string(),
        Err(_) => status.to_string(),
    }
}

pub fn endpoint_address(
    endpoint: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint,
) -> String {
    let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &endpoint.host_identifier else {
        return "-".into();
    };
    match e.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => match &s.port_specifier {
            Some(
                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                    p,
                ),
            ) => format!("{}:{p}", s.address),
            _ => s.address.clone(),
        },
        Some(address::Address::Pipe(p)) => p.path.clone(),
        _ => "-".into(),
    }
}

/// ENDPOINT, STATUS, OUTLIER CHECK, CLUSTER. What the proxy was told; whether it has ejected
/// a host lives in the proxy, so OUTLIER CHECK says whether the cluster checks (`ON`).
pub fn render_endpoints(config: &AckedConfig) -> String {
    let mut rows = Vec::new();
    for cla in &config.endpoints {
        let clusters: Vec<&Cluster> = config
            .clusters
            .iter()
            .filter(|c| {
                config
                    .assignment(c)
                    .is_some_and(|a| a.cluster_name == cla.cluster_name)
            })
            .collect();
        let outlier = if clusters.iter().any(|c| c.outlier_detection.is_some()) {
            "ON"
        } else {
            "-"
        };
        for locality in &cla.endpoints {
            for e in &locality.lb_endpoints {
                rows.push(vec![
                    endpoint_address(e),
                    health(e.health_status),
                    outlier.to_string(),
                    cla.cluster_name.clone(),
                ]);
            }
        }
    }
    rows.sort();
    crate::ctl::render_table(&["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"], &rows)
}

fn data(source: Option<&DataSource>) -> Option<Vec<u8>> {
    match source?.specifier.as_ref()? {
        data_source::Specifier::InlineBytes(b) => Some(b.clone()),
        data_source::Specifier::InlineString(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

/// What one secret's certificate says: (type, valid now, serial, not after, not before).
pub fn certificate_facts(s: &Secret) -> (String, String, String, String, String) {
    let (kind, pem) = match &s.r#type {
        Some(secret::Type::TlsCertificate(tls)) => {
            ("Cert Chain", data(tls.certificate_chain.as_ref()))
        }
        Some(secret::Type::ValidationContext(v)) => ("CA", data(v.trusted_ca.as_ref())),
        Some(secret::Type::GenericSecret(_)) => ("Generic", None),
        Some(secret::Type::SessionTicketKeys(_)) => ("Session Ticket Keys", None),
        None => ("-", None),
    };
    let dash = || "-".to_string();
    let parsed = pem.as_deref().and_then(|pem| {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
        let cert = pem.parse_x509().ok()?;
        Some((
            cert.validity().is_valid().to_string(),
            cert.raw_serial_as_string().replace(':', ""),
            cert.validity().not_after.to_datetime().to_string(),
            cert.validity().not_before.to_datetime().to_string(),
        ))
    });
    match parsed {
        Some((valid, serial, after, before)) => (kind.into(), valid, serial, after, before),
        None => (kind.into(), "false".into(), dash(), dash(), dash()),
    }
}

/// RESOURCE NAME, TYPE, STATUS, VALID CERT, SERIAL, NOT AFTER, NOT BEFORE: certificates only,
/// never a key (straitd redacts them before they leave).
pub fn render_secrets(config: &AckedConfig) -> String {
    let rows: Vec<Vec<String>> = config
        .secrets
        .iter()
        .map(|s| {
            let (kind, valid, serial, after, before) = certificate_facts(s);
            vec![
                s.name.clone(),
                kind,
                "ACTIVE".into(),
                valid,
                serial,
                after,
                before,
            ]
        })
        .collect();
    crate::ctl::render_table(
        &[
            "RESOURCE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE",
        ],
        &rows,
    )
}

/// Which table for which type name.
pub fn render(kind: &str, config: &AckedConfig) -> String {
    let mut out = match kind {
        "clusters" => render_clusters(config),
        "listeners" => render_listeners(config),
        "routes" => render_routes(config),
        "endpoints" => render_endpoints(config),
        _ => render_secrets(config),
    };
    let unknown: BTreeMap<&str, Vec<&str>> = config
        .unknown
        .iter()
        .filter(|(_, t)| *t == kind)
        .fold(BTreeMap::new(), |mut m, (name, t)| {
            m.entry(*t).or_default().push(name);
            m
        });
    for names in unknown.values() {
        let _ = writeln!(
            out,
            "\nheld at a version straitd no longer keeps: {}",
            names.join(", ")
        );
    }
    out
}
