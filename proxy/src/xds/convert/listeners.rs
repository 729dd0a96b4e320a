//! LDS: listeners, their filter chains and HTTP connection managers.

use super::*;

// === impl Listener ===

pub(super) const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
pub(super) const TLS_INSPECTOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";

pub(super) fn filter_chain(
    at: &At<'_>,
    chain: &PbFilterChain,
) -> Result<FilterChain, ConvertError> {
    let mut matches = ChainMatch::default();
    if let Some(m) = &chain.filter_chain_match {
        let at = at.at("filter_chain_match");
        let mut rest = m.clone();
        rest.transport_protocol.clear();
        rest.server_names.clear();
        if rest != Default::default() {
            return Err(at.unsupported(
                "filter chain matches other than transport_protocol and server_names",
            ));
        }
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
        matches.server_names = m
            .server_names
            .iter()
            .map(|n| Arc::from(n.as_str()))
            .collect();
    }
    let tls = tls::downstream(&at.at("transport_socket"), chain.transport_socket.as_ref())?;
    if tls.is_none()
        && (matches.transport == Some(Transport::Tls) || !matches.server_names.is_empty())
    {
        return Err(at.at("transport_socket").unsupported(
            "terminating nothing on a chain that matches TLS connections (TLS passthrough)",
        ));
    }
    let [f] = chain.filters.as_slice() else {
        return Err(at.at("filters").unsupported(format!(
            "{} network filters (exactly one http connection manager is supported)",
            chain.filters.len()
        )));
    };
    let at = at.at("filters[0]");
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(at.at("typed_config").invalid("missing"));
    };
    let hcm: HttpConnectionManager = at.at("typed_config").decode(any, HCM)?;
    let http = http_manager(&at.at("typed_config"), &hcm)?;
    Ok(FilterChain { matches, tls, http })
}

impl TryFrom<&PbListener> for Listener {
    type Error = ConvertError;

    fn try_from(l: &PbListener) -> Result<Self, Self::Error> {
        let resource = format!("listener {:?}", l.name);
        let at = At::new(&resource);
        if l.name.is_empty() {
            return Err(at.at("name").invalid("must not be empty"));
        }
        let address = socket_addr(&at.at("address"), l.address.as_ref())?;
        let mut inspector = false;
        for (i, f) in l.listener_filters.iter().enumerate() {
            let at = at.at(format!("listener_filters[{i}]"));
            let typed = match &f.config_type {
                Some(listener_filter::ConfigType::TypedConfig(any)) => Some(any.type_url.as_str()),
                _ => None,
            };
            if f.name != TLS_INSPECTOR && typed != Some(TLS_INSPECTOR_TYPE) {
                return Err(at.unsupported(format!(
                    "listener filter {:?} (only the TLS inspector)",
                    f.name
                )));
            }
            if f.filter_disabled.is_some() {
                return Err(at
                    .at("filter_disabled")
                    .unsupported("disabling a listener filter"));
            }
            inspector = true;
        }
        if l.default_filter_chain.is_some() {
            return Err(at
                .at("default_filter_chain")
                .unsupported("a default filter chain"));
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
            if c.matches != ChainMatch::default() && !inspector {
                return Err(at.at(format!("filter_chains[{i}].filter_chain_match")).invalid(
                    "matching on the transport or the server name needs the TLS inspector listener filter",
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
            address,
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
    for (i, f) in hcm.http_filters.iter().enumerate() {
        let at = at.at(format!("http_filters[{i}]"));
        let any = match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => any,
            _ => return Err(at.unsupported(format!("filter {:?} without typed_config", f.name))),
        };
        let last = i + 1 == hcm.http_filters.len();
        match any.type_url.as_str() {
            ROUTER if last => {}
            ROUTER => return Err(at.unsupported("a router that is not the last filter")),
            // The fault filter with no config of its own does nothing until a route configures
            // it, and routes that do are rejected.
            FAULT => {
                let fault: HttpFault = at.decode(any, FAULT)?;
                if fault != HttpFault::default() {
                    return Err(at.unsupported("fault injection"));
                }
            }
            rbac::TYPE_URL => {
                if f.disabled {
                    return Err(at
                        .at("disabled")
                        .unsupported("an RBAC filter disabled until a route enables it"));
                }
                let at = at.at("typed_config");
                rbac_filters.push(rbac::rbac(&at, &at.decode(any, rbac::TYPE_URL)?)?);
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
    Ok(HttpManager {
        routes,
        strip_any_host_port: matches!(
            hcm.strip_port_mode,
            Some(StripPortMode::StripAnyHostPort(true))
        ),
        websocket,
        client_cert_details,
        rbac: rbac_filters.into(),
    })
}
