//! LDS: listeners, their filter chains and HTTP connection managers.

use super::*;

// === impl Listener ===

pub(super) const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
pub(super) const TLS_INSPECTOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";
const ORIGINAL_DST_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

pub(super) fn filter_chain(
    at: &At<'_>,
    chain: &PbFilterChain,
) -> Result<FilterChain, ConvertError> {
    let mut matches = ChainMatch::default();
    if let Some(m) = &chain.filter_chain_match {
        let at = at.at("filter_chain_match");
        let mut rest = m.clone();
        rest.destination_port = None;
        rest.prefix_ranges.clear();
        rest.transport_protocol.clear();
        rest.server_names.clear();
        rest.application_protocols.clear();
        if rest != Default::default() {
            return Err(at.unsupported(
                "filter chain matches on the source (address, port or type) or the direct source",
            ));
        }
        matches.destination_port = m
            .destination_port
            .map(|p| {
                u16::try_from(p.value)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        at.at("destination_port")
                            .invalid(format!("{} is not a port", p.value))
                    })
            })
            .transpose()?;
        matches.prefix_ranges = m
            .prefix_ranges
            .iter()
            .enumerate()
            .map(|(i, c)| rbac::cidr(&at.at(format!("prefix_ranges[{i}]")), c))
            .collect::<Result<_, _>>()?;
        matches.transport = match m.transport_protocol.as_str() {
            "" => None,
            "tls" => Some(Transport::Tls),
            "raw_buffer" => Some(Transport::Raw),
            other => {
                return Err(at
                    .at("transport_protocol")
                    .unsupported(format!("transport protocol {other:?}")));
            }
        };
        let names = |v: &[String]| v.iter().map(|n| Arc::from(n.as_str())).collect();
        matches.server_names = names(&m.server_names);
        matches.application_protocols = names(&m.application_protocols);
    }
    let tls = tls::downstream(&at.at("transport_socket"), chain.transport_socket.as_ref())?;
    let serve = network_filters(at, &chain.filters)?;
    let tls_bytes = matches.transport == Some(Transport::Tls) || !matches.server_names.is_empty();
    if tls.is_none() && tls_bytes && matches!(serve, Serve::Http(_)) {
        return Err(at.at("transport_socket").unsupported(
            "HTTP on TLS connections that are not terminated (TLS passthrough is for TCP chains)",
        ));
    }
    Ok(FilterChain {
        name: chain.name.as_str().into(),
        matches,
        tls,
        serve,
    })
}

/// A chain's network filters: one HTTP connection manager, or RBAC filters then a TCP proxy.
fn network_filters(at: &At<'_>, filters: &[PbFilter]) -> Result<Serve, ConvertError> {
    let typed = |i: usize, f: &PbFilter| -> Result<(At<'_>, Any), ConvertError> {
        let at = at.at(format!("filters[{i}]"));
        match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => Ok((at.at("typed_config"), any.clone())),
            _ => Err(at.at("typed_config").invalid("missing")),
        }
    };
    let Some((last, before)) = filters.split_last() else {
        return Err(at.at("filters").invalid("no network filter"));
    };
    let (last_at, last_any) = typed(before.len(), last)?;
    match last_any.type_url.as_str() {
        HCM => {
            if !before.is_empty() {
                return Err(at
                    .at("filters")
                    .unsupported("network filters before the HTTP connection manager"));
            }
            let hcm: HttpConnectionManager = last_at.decode(&last_any, HCM)?;
            Ok(Serve::Http(http_manager(&last_at, &hcm)?))
        }
        TCP_PROXY => {
            let mut rbac_filters = Vec::new();
            for (i, f) in before.iter().enumerate() {
                let (at, any) = typed(i, f)?;
                if any.type_url != rbac::NETWORK_TYPE_URL {
                    return Err(at.unsupported(format!(
                        "network filter {:?} before the TCP proxy (only RBAC)",
                        f.name
                    )));
                }
                rbac_filters.push(rbac::network_rbac(
                    &at,
                    &at.decode(&any, rbac::NETWORK_TYPE_URL)?,
                )?);
            }
            let proxy: PbTcpProxy = last_at.decode(&last_any, TCP_PROXY)?;
            Ok(Serve::Tcp(tcp_proxy(&last_at, &proxy, rbac_filters)?))
        }
        other => Err(last_at.unsupported(format!(
            "network filter {:?} ({other}); the last filter must be an HTTP connection manager or a TCP proxy",
            last.name
        ))),
    }
}

fn tcp_proxy(
    at: &At<'_>,
    p: &PbTcpProxy,
    rbac: Vec<crate::config::Rbac>,
) -> Result<TcpProxy, ConvertError> {
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
    let mut rest = p.clone();
    rest.stat_prefix.clear();
    rest.cluster_specifier = None;
    rest.idle_timeout = None;
    rest.hash_policy.clear();
    if rest != Default::default() {
        return Err(at.unsupported(
            "TCP proxy settings other than the cluster (or weighted clusters), idle_timeout and a source_ip hash policy",
        ));
    }
    let clusters: Arc<[TcpCluster]> = match &p.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => Arc::from([TcpCluster {
            name: c.as_str().into(),
            weight: 1,
        }]),
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let at = at.at("weighted_clusters");
            if w.clusters.is_empty() {
                return Err(at.at("clusters").invalid("no cluster"));
            }
            w.clusters
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let at = at.at(format!("clusters[{i}]"));
                    if c.name.is_empty() {
                        return Err(at.at("name").invalid("must name a cluster"));
                    }
                    if c.weight == 0 {
                        return Err(at.at("weight").invalid("must be at least 1"));
                    }
                    if c.metadata_match.is_some() {
                        return Err(at.at("metadata_match").unsupported("metadata_match"));
                    }
                    Ok(TcpCluster {
                        name: c.name.as_str().into(),
                        weight: c.weight,
                    })
                })
                .collect::<Result<_, _>>()?
        }
        _ => return Err(at.at("cluster").invalid("missing")),
    };
    let idle_timeout = match &p.idle_timeout {
        None => Some(DEFAULT_TCP_IDLE_TIMEOUT),
        Some(d) => Some(duration(&at.at("idle_timeout"), d)?).filter(|d| !d.is_zero()),
    };
    let mut hash_source_ip = false;
    for (i, h) in p.hash_policy.iter().enumerate() {
        use envoy_types::pb::envoy::r#type::v3::hash_policy::PolicySpecifier;
        match &h.policy_specifier {
            Some(PolicySpecifier::SourceIp(_)) => hash_source_ip = true,
            _ => {
                return Err(at
                    .at(format!("hash_policy[{i}]"))
                    .unsupported("TCP hash policies other than source_ip"));
            }
        }
    }
    Ok(TcpProxy {
        rbac: rbac.into(),
        clusters,
        idle_timeout,
        hash_source_ip,
    })
}

impl TryFrom<&PbListener> for Listener {
    type Error = ConvertError;

    fn try_from(l: &PbListener) -> Result<Self, Self::Error> {
        let resource = format!("listener {:?}", l.name);
        let at = At::new(&resource);
        if l.name.is_empty() {
            return Err(at.at("name").invalid("must not be empty"));
        }
        if l.default_filter_chain.is_some() {
            return Err(at
                .at("default_filter_chain")
                .unsupported("a default filter chain"));
        }
        let mut rest = l.clone();
        rest.name.clear();
        rest.address = None;
        rest.additional_addresses.clear();
        rest.filter_chains.clear();
        rest.use_original_dst = None;
        rest.bind_to_port = None;
        rest.listener_filters.clear();
        rest.listener_filters_timeout = None;
        rest.continue_on_listener_filters_timeout = false;
        rest.traffic_direction = 0;
        // Metadata says where the listener came from (istio.config); nothing reads it here.
        rest.metadata = None;
        if rest != Default::default() {
            return Err(at.unsupported(
                "listener settings other than addresses, filter chains, listener filters (and their timeout), use_original_dst, bind_to_port, traffic_direction and metadata",
            ));
        }
        let mut addresses = vec![socket_addr(&at.at("address"), l.address.as_ref())?];
        for (i, a) in l.additional_addresses.iter().enumerate() {
            let at = at.at(format!("additional_addresses[{i}]"));
            if a.socket_options.is_some() {
                return Err(at.at("socket_options").unsupported("socket options"));
            }
            let address = socket_addr(&at.at("address"), a.address.as_ref())?;
            if addresses.contains(&address) {
                return Err(at.invalid(format!("{address} is listed twice")));
            }
            addresses.push(address);
        }
        let mut inspect = Inspect {
            timeout: match &l.listener_filters_timeout {
                None => Some(DEFAULT_INSPECT_TIMEOUT),
                Some(d) => {
                    Some(duration(&at.at("listener_filters_timeout"), d)?).filter(|d| !d.is_zero())
                }
            },
            continue_on_timeout: l.continue_on_listener_filters_timeout,
            ..Inspect::default()
        };
        for (i, f) in l.listener_filters.iter().enumerate() {
            let at = at.at(format!("listener_filters[{i}]"));
            let typed = match &f.config_type {
                Some(listener_filter::ConfigType::TypedConfig(any)) => Some(any),
                _ => None,
            };
            if f.filter_disabled.is_some() {
                return Err(at
                    .at("filter_disabled")
                    .unsupported("disabling a listener filter"));
            }
            let type_url = typed.map(|a| a.type_url.as_str());
            if f.name == TLS_INSPECTOR || type_url == Some(TLS_INSPECTOR_TYPE) {
                if let Some(any) = typed {
                    let config: envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector =
                        at.at("typed_config").decode(any, TLS_INSPECTOR_TYPE)?;
                    if config != Default::default() {
                        return Err(at.at("typed_config").unsupported("TLS inspector settings"));
                    }
                }
                inspect.tls = true;
            } else if f.name == ORIGINAL_DST || type_url == Some(ORIGINAL_DST_TYPE) {
                if let Some(any) = typed {
                    let config: envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst =
                        at.at("typed_config").decode(any, ORIGINAL_DST_TYPE)?;
                    if config != Default::default() {
                        return Err(at
                            .at("typed_config")
                            .unsupported("original destination settings"));
                    }
                }
                inspect.original_dst = true;
            } else {
                return Err(at.unsupported(format!(
                    "listener filter {:?} (only the TLS inspector and the original destination)",
                    f.name
                )));
            }
        }
        if l.filter_chains.is_empty() {
            return Err(at.at("filter_chains").invalid("no filter chain"));
        }
        let chains = l
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, c)| filter_chain(&at.at(format!("filter_chains[{i}]")), c))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, c) in chains.iter().enumerate() {
            let m = &c.matches;
            let needs_inspector = m.transport.is_some()
                || !m.server_names.is_empty()
                || !m.application_protocols.is_empty();
            if needs_inspector && !inspect.tls {
                return Err(at.at(format!("filter_chains[{i}].filter_chain_match")).invalid(
                    "matching on the transport, server name or ALPN needs the TLS inspector listener filter",
                ));
            }
            if let Some(j) = chains[..i].iter().position(|o| o.matches == c.matches) {
                return Err(at.at(format!("filter_chains[{i}]")).invalid(format!(
                    "matches the same connections as filter_chains[{j}]"
                )));
            }
        }
        Ok(Listener {
            name: l.name.as_str().into(),
            addresses,
            bind: l.bind_to_port.as_ref().is_none_or(|b| b.value),
            use_original_dst: l.use_original_dst.as_ref().is_some_and(|b| b.value),
            inspect,
            chains,
        })
    }
}

pub(super) fn http_manager(
    at: &At<'_>,
    hcm: &HttpConnectionManager,
) -> Result<HttpManager, ConvertError> {
    let routes = match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            if rds.route_config_name.is_empty() {
                return Err(at.at("rds.route_config_name").invalid("must not be empty"));
            }
            RouteSource::Rds(rds.route_config_name.as_str().into())
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            RouteSource::Inline(Arc::new(RouteConfig::try_from(rc)?))
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(at.at("scoped_routes").unsupported("scoped routes"));
        }
        None => return Err(at.at("route_specifier").invalid("missing")),
    };
    let mut rbac_filters = Vec::new();
    let mut jwt = None;
    let mut cors = false;
    let mut rate_limit = None;
    for (i, f) in hcm.http_filters.iter().enumerate() {
        let at = at.at(format!("http_filters[{i}]"));
        let any = match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => any,
            _ => return Err(at.unsupported(format!("filter {:?} without typed_config", f.name))),
        };
        let last = i + 1 == hcm.http_filters.len();
        if rate_limit.is_some() && any.type_url != ROUTER {
            return Err(at.unsupported(
                "a filter after the local rate limit filter (it runs last, before the router)",
            ));
        }
        match any.type_url.as_str() {
            ROUTER if last => {}
            ROUTER => return Err(at.unsupported("a router that is not the last filter")),
            // The fault filter with no config of its own does nothing until a route configures
            // it, and routes that do are rejected.
            FAULT => {
                if cors {
                    return Err(at.unsupported("a fault filter after the CORS filter"));
                }
                let fault: HttpFault = at.decode(any, FAULT)?;
                if fault != HttpFault::default() {
                    return Err(at.unsupported("fault injection"));
                }
            }
            // Does nothing until a route configures it (per route, keyed by this name).
            CORS => {
                if cors {
                    return Err(at.unsupported("a second CORS filter"));
                }
                if f.name != CORS_FILTER {
                    return Err(at.at("name").unsupported(format!(
                        "a CORS filter named {:?} (routes configure {CORS_FILTER:?})",
                        f.name
                    )));
                }
                if f.disabled {
                    return Err(at
                        .at("disabled")
                        .unsupported("a CORS filter disabled until a route enables it"));
                }
                let _: PbCors = at.at("typed_config").decode(any, CORS)?;
                cors = true;
            }
            jwt::TYPE_URL => {
                if jwt.is_some() {
                    return Err(at.unsupported("a second jwt_authn filter"));
                }
                if !rbac_filters.is_empty() || cors {
                    return Err(at.unsupported(
                        "a jwt_authn filter after RBAC or CORS (it runs first, as in Istio's chain)",
                    ));
                }
                if f.disabled {
                    return Err(at
                        .at("disabled")
                        .unsupported("a jwt_authn filter disabled until a route enables it"));
                }
                let at = at.at("typed_config");
                jwt = Some(Arc::new(jwt::jwt_authn(
                    &at,
                    &at.decode(any, jwt::TYPE_URL)?,
                )?));
            }
            rbac::TYPE_URL => {
                if cors {
                    return Err(at.unsupported("an RBAC filter after the CORS filter"));
                }
                if f.disabled {
                    return Err(at
                        .at("disabled")
                        .unsupported("an RBAC filter disabled until a route enables it"));
                }
                let at = at.at("typed_config");
                rbac_filters.push(rbac::rbac(&at, &at.decode(any, rbac::TYPE_URL)?)?);
            }
            rate_limit::TYPE_URL => {
                if f.disabled {
                    return Err(at.at("disabled").unsupported(
                        "a local rate limit filter disabled until a route enables it",
                    ));
                }
                let at = at.at("typed_config");
                rate_limit = Some(Arc::new(rate_limit::local_rate_limit(
                    &at,
                    &at.decode(any, rate_limit::TYPE_URL)?,
                )?));
            }
            other => return Err(at.unsupported(format!("http filter {:?} ({other})", f.name))),
        }
    }
    let router_last = matches!(
        hcm.http_filters.last().map(|f| &f.config_type),
        Some(Some(http_filter::ConfigType::TypedConfig(a))) if a.type_url == ROUTER
    );
    if !router_last {
        return Err(at
            .at("http_filters")
            .invalid("the last filter must be the router"));
    }
    let client_cert_details =
        match ForwardClientCertDetails::try_from(hcm.forward_client_cert_details) {
            Ok(ForwardClientCertDetails::Sanitize)
                if hcm.set_current_client_cert_details.is_none() =>
            {
                ClientCertDetails::Sanitize
            }
            Ok(ForwardClientCertDetails::SanitizeSet) => {
                let set = hcm.set_current_client_cert_details.unwrap_or_default();
                let (uri, dns) = (set.uri, set.dns);
                let mut rest = set;
                rest.uri = false;
                rest.dns = false;
                if rest != Default::default() {
                    return Err(at
                        .at("set_current_client_cert_details")
                        .unsupported("client certificate details other than uri and dns"));
                }
                ClientCertDetails::SanitizeSet { uri, dns }
            }
            _ => {
                return Err(at.at("forward_client_cert_details").unsupported(
                    "forwarding modes other than SANITIZE and SANITIZE_SET (with uri and dns)",
                ));
            }
        };
    let mut websocket = false;
    for (i, u) in hcm.upgrade_configs.iter().enumerate() {
        websocket |= u.upgrade_type.eq_ignore_ascii_case("websocket")
            && u.enabled.as_ref().is_none_or(|e| e.value);
        if !u.upgrade_type.eq_ignore_ascii_case("websocket") || !u.filters.is_empty() {
            return Err(at
                .at(format!("upgrade_configs[{i}]"))
                .unsupported(format!("upgrade {:?}", u.upgrade_type)));
        }
    }
    let (request_headers, request_headers_timeout) = request_limits(at, hcm)?;
    let access_log = access_log(at, &hcm.access_log)?;
    Ok(HttpManager {
        routes,
        strip_any_host_port: matches!(
            hcm.strip_port_mode,
            Some(StripPortMode::StripAnyHostPort(true))
        ),
        websocket,
        client_cert_details,
        jwt,
        rbac: rbac_filters.into(),
        cors,
        rate_limit,
        access_log,
        request_headers,
        request_headers_timeout,
    })
}

const FILE_ACCESS_LOG: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";

/// The HCM's access logs: none, or one file logger on stdout in Envoy's default format.
fn access_log(
    at: &At<'_>,
    logs: &[envoy_types::pb::envoy::config::accesslog::v3::AccessLog],
) -> Result<bool, ConvertError> {
    use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
    match logs {
        [] => Ok(false),
        [log] => {
            let at = at.at("access_log[0]");
            if log.filter.is_some() {
                return Err(at.at("filter").unsupported("access log filters"));
            }
            let Some(ConfigType::TypedConfig(any)) = &log.config_type else {
                return Err(at.invalid("no typed_config"));
            };
            let file: FileAccessLog = at.at("typed_config").decode(any, FILE_ACCESS_LOG)?;
            if file.path != "/dev/stdout" {
                return Err(at
                    .at("typed_config.path")
                    .unsupported(format!("logging to {:?} (only /dev/stdout)", file.path)));
            }
            if file.access_log_format.is_some() {
                return Err(at
                    .at("typed_config.access_log_format")
                    .unsupported("access log formats other than Envoy's default"));
            }
            Ok(true)
        }
        _ => Err(at.at("access_log").unsupported("more than one access log")),
    }
}

/// The HCM's limits on request headers, with Envoy's defaults; other common HTTP protocol
/// options are refused by name.
fn request_limits(
    at: &At<'_>,
    hcm: &HttpConnectionManager,
) -> Result<(HeaderLimits, Option<Duration>), ConvertError> {
    let mut limits = HeaderLimits::default();
    if let Some(kb) = &hcm.max_request_headers_kb {
        // Envoy's bounds: more than 0, at most 8 MiB.
        if kb.value == 0 || kb.value > 8192 {
            return Err(at
                .at("max_request_headers_kb")
                .invalid(format!("{} is not in 1..=8192", kb.value)));
        }
        limits.max_bytes = kb.value as usize * 1024;
    }
    if let Some(options) = &hcm.common_http_protocol_options {
        let at = at.at("common_http_protocol_options");
        let mut rest = *options;
        rest.max_headers_count = None;
        if rest != Default::default() {
            return Err(at.unsupported("common HTTP protocol options other than max_headers_count"));
        }
        if let Some(count) = &options.max_headers_count {
            if count.value == 0 {
                return Err(at.at("max_headers_count").invalid("must be at least 1"));
            }
            limits.max_count = count.value as usize;
        }
    }
    let timeout = hcm
        .request_headers_timeout
        .as_ref()
        .map(|d| duration(&at.at("request_headers_timeout"), d))
        .transpose()?
        .filter(|d| !d.is_zero());
    Ok((limits, timeout))
}
