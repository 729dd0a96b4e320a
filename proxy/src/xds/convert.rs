//! xDS protobufs -> runtime config; anything the proxy would not honour as Envoy does is rejected.

mod rbac;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection as PbOutlier;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy as PbLbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderValueOption, HealthStatus, RoutingPriority, address, data_source,
    header_value_option::HeaderAppendAction, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain as PbFilterChain, Listener as PbListener, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher as PbHeaderMatcher, QueryParameterMatcher, RedirectAction,
    RetryPolicy as PbRetryPolicy, Route as PbRoute, RouteAction, RouteConfiguration,
    VirtualHost as PbVirtualHost, header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier, redirect_action, route, route_action,
    route_action::HashPolicy as PbHashPolicy, route_match,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager,
    http_connection_manager::{ForwardClientCertDetails, RouteSpecifier, StripPortMode},
    http_filter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{UpstreamProtocolOptions, explicit_http_config},
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;

mod tls;

use crate::config::{
    Action, ChainMatch, ClientCertDetails, Cluster, ClusterChoice, Discovery, Endpoint, Fault,
    FaultAbort, FaultDelay, FilterChain, Forward, HashKey, HashPolicy, HeaderAdd, HeaderChanges,
    HeaderMatch, HeaderMatcher, HttpManager, LbPolicy, Limits, Listener, Mirror, OutlierDetection,
    PathMatch, Pattern, QueryMatcher, Redirect, RegexRewrite, RetryOn, RetryPolicy, Route,
    RouteConfig, RouteMatch, RouteSource, StringMatch, Transport, VirtualHost, WeightedCluster,
};

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const FAULT_FILTER: &str = "envoy.filters.http.fault";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Envoy's route timeout when a route sets none.
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's connect timeout when a cluster sets none.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a resource cannot be used. `resource` names it (`listener "outbound_15001"`), `field`
/// is the path inside it.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{resource}: {field}: not supported by strait-proxy: {what}")]
    Unsupported {
        resource: String,
        field: String,
        what: String,
    },
    #[error("{resource}: {field}: {what}")]
    Invalid {
        resource: String,
        field: String,
        what: String,
    },
    #[error("{resource}: {field}: cannot decode {type_url}: {source}")]
    Decode {
        resource: String,
        field: String,
        type_url: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{resource}: {field}: invalid regex {pattern:?}: {source}")]
    Regex {
        resource: String,
        field: String,
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
}

/// Where in which resource conversion is; builds errors that name both.
#[derive(Clone)]
struct At<'a> {
    resource: &'a str,
    field: String,
}

impl<'a> At<'a> {
    fn new(resource: &'a str) -> Self {
        At {
            resource,
            field: String::new(),
        }
    }

    fn at(&self, field: impl std::fmt::Display) -> At<'a> {
        At {
            resource: self.resource,
            field: if self.field.is_empty() {
                field.to_string()
            } else {
                format!("{}.{field}", self.field)
            },
        }
    }

    fn unsupported(&self, what: impl Into<String>) -> ConvertError {
        ConvertError::Unsupported {
            resource: self.resource.to_string(),
            field: self.field.clone(),
            what: what.into(),
        }
    }

    fn invalid(&self, what: impl Into<String>) -> ConvertError {
        ConvertError::Invalid {
            resource: self.resource.to_string(),
            field: self.field.clone(),
            what: what.into(),
        }
    }

    fn decode<M: Message + Default>(&self, any: &Any, expect: &str) -> Result<M, ConvertError> {
        if any.type_url != expect {
            return Err(self.unsupported(format!("type {}", any.type_url)));
        }
        M::decode(any.value.as_slice()).map_err(|source| ConvertError::Decode {
            resource: self.resource.to_string(),
            field: self.field.clone(),
            type_url: any.type_url.clone(),
            source,
        })
    }

    fn pattern(&self, source: &str) -> Result<Pattern, ConvertError> {
        Pattern::new(source).map_err(|e| ConvertError::Regex {
            resource: self.resource.to_string(),
            field: self.field.clone(),
            pattern: source.to_string(),
            source: Box::new(e),
        })
    }
}

// === impl Listener ===

const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
const TLS_INSPECTOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";

fn filter_chain(at: &At<'_>, chain: &PbFilterChain) -> Result<FilterChain, ConvertError> {
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

fn http_manager(at: &At<'_>, hcm: &HttpConnectionManager) -> Result<HttpManager, ConvertError> {
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

// === impl RouteConfig ===

impl TryFrom<&RouteConfiguration> for RouteConfig {
    type Error = ConvertError;

    fn try_from(rc: &RouteConfiguration) -> Result<Self, Self::Error> {
        let resource = format!("route configuration {:?}", rc.name);
        let at = At::new(&resource);
        if !rc.request_headers_to_add.is_empty()
            || !rc.response_headers_to_add.is_empty()
            || !rc.request_headers_to_remove.is_empty()
            || !rc.response_headers_to_remove.is_empty()
        {
            return Err(at.unsupported("route-configuration-level header changes"));
        }
        let virtual_hosts = rc
            .virtual_hosts
            .iter()
            .enumerate()
            .map(|(i, vh)| virtual_host(&at.at(format!("virtual_hosts[{i}]")), vh))
            .collect::<Result<_, _>>()?;
        Ok(RouteConfig {
            name: rc.name.as_str().into(),
            virtual_hosts,
        })
    }
}

fn virtual_host(at: &At<'_>, vh: &PbVirtualHost) -> Result<VirtualHost, ConvertError> {
    if vh.retry_policy.is_some() {
        return Err(at.at("retry_policy").unsupported("retries"));
    }
    if !vh.typed_per_filter_config.is_empty() {
        return Err(at
            .at("typed_per_filter_config")
            .unsupported("per-filter config"));
    }
    if !vh.request_headers_to_add.is_empty()
        || !vh.response_headers_to_add.is_empty()
        || !vh.request_headers_to_remove.is_empty()
        || !vh.response_headers_to_remove.is_empty()
    {
        return Err(at.unsupported("virtual-host-level header changes"));
    }
    let domains = vh
        .domains
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = d.to_ascii_lowercase();
            let stars = d.matches('*').count();
            let ok =
                stars == 0 || d == "*" || (stars == 1 && (d.starts_with('*') || d.ends_with('*')));
            if ok {
                Ok(Arc::from(d))
            } else {
                Err(at
                    .at(format!("domains[{i}]"))
                    .invalid(format!("{d:?}: a wildcard may only lead or trail")))
            }
        })
        .collect::<Result<_, _>>()?;
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(&at.at(format!("routes[{i}]")), r))
        .collect::<Result<_, _>>()?;
    Ok(VirtualHost {
        name: vh.name.as_str().into(),
        domains,
        routes,
        require_tls: match vh.require_tls {
            0 => false,
            2 => true,
            other => {
                return Err(at
                    .at("require_tls")
                    .unsupported(format!("tls requirement {other}")));
            }
        },
    })
}

fn route(at: &At<'_>, r: &PbRoute) -> Result<Route, ConvertError> {
    let mut fault = None;
    for (name, any) in &r.typed_per_filter_config {
        let at = at.at(format!("typed_per_filter_config[{name:?}]"));
        if name != FAULT_FILTER {
            return Err(at.unsupported(format!("per-route config of {name:?}")));
        }
        let f: HttpFault = at.decode(any, FAULT)?;
        fault = Some(fault_from(&at, &f)?);
    }
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| at.at("match").invalid("missing"))?;
    let matcher = route_match(&at.at("match"), m)?;
    let action = match &r.action {
        Some(route::Action::Route(a)) => Action::Forward(forward(&at.at("route"), a)?),
        Some(route::Action::Redirect(rd)) => Action::Redirect(redirect(&at.at("redirect"), rd)?),
        Some(route::Action::DirectResponse(d)) => {
            let at = at.at("direct_response");
            let status = u16::try_from(d.status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .ok_or_else(|| {
                    at.at("status")
                        .invalid(format!("{} is not an HTTP status", d.status))
                })?;
            let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => None,
                Some(data_source::Specifier::InlineString(s)) => Some(Arc::from(s.as_str())),
                Some(data_source::Specifier::InlineBytes(b)) => {
                    Some(Arc::from(String::from_utf8_lossy(b).as_ref()))
                }
                Some(_) => {
                    return Err(at
                        .at("body")
                        .unsupported("bodies from files or the environment"));
                }
            };
            Action::Direct { status, body }
        }
        Some(_) => return Err(at.at("action").unsupported("this route action")),
        None => return Err(at.at("action").invalid("missing")),
    };
    Ok(Route {
        name: r.name.as_str().into(),
        matcher,
        action,
        fault,
        headers: header_changes(
            at,
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
        )?,
    })
}

fn fault_from(at: &At<'_>, f: &HttpFault) -> Result<Fault, ConvertError> {
    if !f.headers.is_empty()
        || !f.downstream_nodes.is_empty()
        || !f.upstream_cluster.is_empty()
        || f.max_active_faults.is_some()
        || f.response_rate_limit.is_some()
    {
        return Err(at.unsupported(
            "fault header/node/cluster conditions, max_active_faults or rate limits",
        ));
    }
    let delay = match &f.delay {
        None => None,
        Some(d) => {
            let at = at.at("delay");
            let fixed = match &d.fault_delay_secifier {
                Some(fault_delay::FaultDelaySecifier::FixedDelay(pd)) => {
                    duration(&at.at("fixed_delay"), pd)?
                }
                _ => return Err(at.unsupported("header-controlled delays")),
            };
            Some(FaultDelay {
                fixed,
                per_million: per_million(&at.at("percentage"), d.percentage.as_ref())?,
            })
        }
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let at = at.at("abort");
            let status = match &a.error_type {
                Some(fault_abort::ErrorType::HttpStatus(s)) => u16::try_from(*s)
                    .ok()
                    .filter(|s| (200..600).contains(s))
                    .ok_or_else(|| {
                        at.at("http_status")
                            .invalid(format!("{s} is not an HTTP status"))
                    })?,
                _ => return Err(at.unsupported("gRPC or header-controlled aborts")),
            };
            Some(FaultAbort {
                status,
                per_million: per_million(&at.at("percentage"), a.percentage.as_ref())?,
            })
        }
    };
    Ok(Fault { delay, abort })
}

/// A fractional percent in millionths; unset means 100% (Envoy's default for faults).
fn per_million(at: &At<'_>, p: Option<&FractionalPercent>) -> Result<u32, ConvertError> {
    let Some(p) = p else {
        return Ok(1_000_000);
    };
    let scale = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        Ok(DenominatorType::Million) => 1,
        Err(_) => return Err(at.invalid(format!("denominator {}", p.denominator))),
    };
    Ok(p.numerator.saturating_mul(scale).min(1_000_000))
}

fn route_match(
    at: &At<'_>,
    m: &envoy_types::pb::envoy::config::route::v3::RouteMatch,
) -> Result<RouteMatch, ConvertError> {
    let path = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.as_str().into()),
        Some(route_match::PathSpecifier::Path(p)) => PathMatch::Exact(p.as_str().into()),
        Some(route_match::PathSpecifier::SafeRegex(r)) => {
            PathMatch::Regex(at.at("safe_regex").pattern(&r.regex)?)
        }
        Some(_) => return Err(at.unsupported("this path specifier")),
        None => return Err(at.at("path_specifier").invalid("missing")),
    };
    if m.runtime_fraction.is_some() {
        return Err(at.at("runtime_fraction").unsupported("runtime fractions"));
    }
    if m.grpc.is_some() || m.tls_context.is_some() || !m.dynamic_metadata.is_empty() {
        return Err(at.unsupported("grpc, tls_context or metadata matches"));
    }
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(&at.at(format!("headers[{i}]")), h))
        .collect::<Result<_, _>>()?;
    let query = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| query_matcher(&at.at(format!("query_parameters[{i}]")), q))
        .collect::<Result<_, _>>()?;
    Ok(RouteMatch {
        path,
        case_sensitive: m.case_sensitive.as_ref().is_none_or(|b| b.value),
        headers,
        query,
    })
}

// The deprecated matchers are still valid xDS; Envoy honours them, so the proxy does too.
#[allow(deprecated)]
fn header_matcher(at: &At<'_>, h: &PbHeaderMatcher) -> Result<HeaderMatcher, ConvertError> {
    let exact = |v: &str| StringMatch::Exact {
        value: v.into(),
        ignore_case: false,
    };
    let matches = match &h.header_match_specifier {
        None => HeaderMatch::Present(true),
        Some(HeaderMatchSpecifier::PresentMatch(p)) => HeaderMatch::Present(*p),
        Some(HeaderMatchSpecifier::ExactMatch(v)) => HeaderMatch::Value(exact(v)),
        Some(HeaderMatchSpecifier::PrefixMatch(v)) => HeaderMatch::Value(StringMatch::Prefix {
            value: v.as_str().into(),
            ignore_case: false,
        }),
        Some(HeaderMatchSpecifier::SuffixMatch(v)) => HeaderMatch::Value(StringMatch::Suffix {
            value: v.as_str().into(),
            ignore_case: false,
        }),
        Some(HeaderMatchSpecifier::ContainsMatch(v)) => HeaderMatch::Value(StringMatch::Contains {
            value: v.as_str().into(),
            ignore_case: false,
        }),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => HeaderMatch::Value(StringMatch::Regex(
            at.at("safe_regex_match").pattern(&r.regex)?,
        )),
        Some(HeaderMatchSpecifier::StringMatch(sm)) => {
            HeaderMatch::Value(string_match(&at.at("string_match"), sm)?)
        }
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            return Err(at.at("range_match").unsupported("range matches"));
        }
    };
    if h.treat_missing_header_as_empty {
        return Err(at
            .at("treat_missing_header_as_empty")
            .unsupported("treating a missing header as empty"));
    }
    Ok(HeaderMatcher {
        name: h.name.to_ascii_lowercase().into(),
        matches,
        invert: h.invert_match,
    })
}

fn query_matcher(at: &At<'_>, q: &QueryParameterMatcher) -> Result<QueryMatcher, ConvertError> {
    let value = match &q.query_parameter_match_specifier {
        None | Some(QueryParameterMatchSpecifier::PresentMatch(true)) => None,
        Some(QueryParameterMatchSpecifier::PresentMatch(false)) => {
            return Err(at.unsupported("present_match: false"));
        }
        Some(QueryParameterMatchSpecifier::StringMatch(sm)) => {
            Some(string_match(&at.at("string_match"), sm)?)
        }
    };
    Ok(QueryMatcher {
        name: q.name.as_str().into(),
        value,
    })
}

fn string_match(at: &At<'_>, sm: &StringMatcher) -> Result<StringMatch, ConvertError> {
    let ignore_case = sm.ignore_case;
    let value = |v: &str| -> Arc<str> {
        if ignore_case {
            v.to_lowercase().into()
        } else {
            v.into()
        }
    };
    Ok(match &sm.match_pattern {
        Some(string_matcher::MatchPattern::Exact(v)) => StringMatch::Exact {
            value: value(v),
            ignore_case,
        },
        Some(string_matcher::MatchPattern::Prefix(v)) => StringMatch::Prefix {
            value: value(v),
            ignore_case,
        },
        Some(string_matcher::MatchPattern::Suffix(v)) => StringMatch::Suffix {
            value: value(v),
            ignore_case,
        },
        Some(string_matcher::MatchPattern::Contains(v)) => StringMatch::Contains {
            value: value(v),
            ignore_case,
        },
        Some(string_matcher::MatchPattern::SafeRegex(r)) => {
            if ignore_case {
                return Err(at.unsupported("ignore_case with a regex"));
            }
            StringMatch::Regex(at.at("safe_regex").pattern(&r.regex)?)
        }
        Some(string_matcher::MatchPattern::Custom(_)) => {
            return Err(at.unsupported("custom string matchers"));
        }
        None => return Err(at.at("match_pattern").invalid("missing")),
    })
}

fn forward(at: &At<'_>, a: &RouteAction) -> Result<Forward, ConvertError> {
    let retry = a
        .retry_policy
        .as_ref()
        .map(|r| retry_policy(&at.at("retry_policy"), r))
        .transpose()?;
    let mirrors = a
        .request_mirror_policies
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = at.at(format!("request_mirror_policies[{i}]"));
            if m.cluster.is_empty() {
                return Err(at
                    .at("cluster")
                    .unsupported("mirror clusters named by a header"));
            }
            if m.trace_sampled.is_some() || m.disable_shadow_host_suffix_append {
                return Err(at.unsupported("trace_sampled or disable_shadow_host_suffix_append"));
            }
            let per_million = match &m.runtime_fraction {
                None => 1_000_000,
                Some(f) => per_million(&at.at("runtime_fraction"), f.default_value.as_ref())?,
            };
            Ok(Mirror {
                cluster: m.cluster.as_str().into(),
                per_million,
            })
        })
        .collect::<Result<_, _>>()?;
    let hash_policy = a
        .hash_policy
        .iter()
        .enumerate()
        .map(|(i, h)| hash_policy(&at.at(format!("hash_policy[{i}]")), h))
        .collect::<Result<_, _>>()?;
    let regex_rewrite = match &a.regex_rewrite {
        None => None,
        Some(rw) => {
            let at = at.at("regex_rewrite");
            let pattern = rw
                .pattern
                .as_ref()
                .ok_or_else(|| at.at("pattern").invalid("missing"))?;
            let pattern = Pattern::unanchored(&pattern.regex).map_err(|e| ConvertError::Regex {
                resource: at.resource.to_string(),
                field: at.at("pattern").field,
                pattern: pattern.regex.clone(),
                source: Box::new(e),
            })?;
            Some(RegexRewrite {
                pattern,
                substitution: envoy_substitution(&rw.substitution).into(),
            })
        }
    };
    if a.idle_timeout.is_some() || a.max_stream_duration.is_some() {
        return Err(at.unsupported("idle_timeout or max_stream_duration"));
    }
    let clusters = match &a.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(name)) if !name.is_empty() => {
            ClusterChoice::Single(name.as_str().into())
        }
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            let at = at.at("weighted_clusters");
            if !w.runtime_key_prefix.is_empty() {
                return Err(at.at("runtime_key_prefix").unsupported("runtime keys"));
            }
            let clusters: Vec<WeightedCluster> = w
                .clusters
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let at = at.at(format!("clusters[{i}]"));
                    if c.name.is_empty() {
                        return Err(at.at("name").invalid("must name a cluster"));
                    }
                    if !c.typed_per_filter_config.is_empty() || c.host_rewrite_specifier.is_some() {
                        return Err(at.unsupported("per-cluster filter config or host rewrite"));
                    }
                    Ok(WeightedCluster {
                        name: c.name.as_str().into(),
                        weight: c.weight.as_ref().map_or(0, |w| w.value),
                        headers: header_changes(
                            &at,
                            &c.request_headers_to_add,
                            &c.request_headers_to_remove,
                            &c.response_headers_to_add,
                            &c.response_headers_to_remove,
                        )?,
                    })
                })
                .collect::<Result<_, _>>()?;
            let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
            let total = u32::try_from(total)
                .ok()
                .filter(|t| *t > 0)
                .ok_or_else(|| at.invalid(format!("total weight {total} must be 1..=u32::MAX")))?;
            ClusterChoice::Weighted {
                clusters: clusters.into(),
                total,
            }
        }
        _ => {
            return Err(at
                .at("cluster_specifier")
                .unsupported("this cluster specifier"));
        }
    };
    let host_rewrite = match &a.host_rewrite_specifier {
        None => None,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(h.as_str().into()),
        Some(_) => {
            return Err(at
                .at("host_rewrite_specifier")
                .unsupported("this host rewrite"));
        }
    };
    let timeout = match &a.timeout {
        None => Some(DEFAULT_ROUTE_TIMEOUT),
        Some(d) => Some(duration(&at.at("timeout"), d)?).filter(|d| !d.is_zero()),
    };
    Ok(Forward {
        clusters,
        timeout,
        prefix_rewrite: (!a.prefix_rewrite.is_empty()).then(|| a.prefix_rewrite.as_str().into()),
        host_rewrite,
        regex_rewrite,
        retry,
        mirrors,
        hash_policy,
    })
}

/// Envoy's `\\1` capture references in Rust's `${1}` syntax; a literal `$` stays literal.
fn envoy_substitution(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                let mut n = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    n.push(d);
                    chars.next();
                }
                out.push_str(&format!("${{{n}}}"));
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

fn hash_policy(at: &At<'_>, h: &PbHashPolicy) -> Result<HashPolicy, ConvertError> {
    use route_action::hash_policy::PolicySpecifier;
    let key = match &h.policy_specifier {
        Some(PolicySpecifier::Header(hd)) if hd.regex_rewrite.is_none() => {
            HashKey::Header(hd.header_name.to_ascii_lowercase().into())
        }
        Some(PolicySpecifier::Cookie(c)) if c.ttl.is_none() && c.attributes.is_empty() => {
            HashKey::Cookie(c.name.as_str().into())
        }
        Some(PolicySpecifier::Cookie(_)) => {
            return Err(at.at("cookie").unsupported("generated cookies (a ttl)"));
        }
        Some(PolicySpecifier::ConnectionProperties(p)) if p.source_ip => HashKey::SourceIp,
        Some(PolicySpecifier::QueryParameter(q)) => HashKey::QueryParameter(q.name.as_str().into()),
        _ => return Err(at.unsupported("this hash policy")),
    };
    Ok(HashPolicy {
        key,
        terminal: h.terminal,
    })
}

const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

fn retry_policy(at: &At<'_>, r: &PbRetryPolicy) -> Result<RetryPolicy, ConvertError> {
    if r.retry_priority.is_some()
        || !r.retriable_headers.is_empty()
        || !r.retriable_request_headers.is_empty()
        || r.retry_back_off.is_some()
        || r.rate_limited_retry_back_off.is_some()
        || !r.retry_options_predicates.is_empty()
        || r.per_try_idle_timeout.is_some()
    {
        return Err(at.unsupported(
            "retry priorities, header conditions, custom back-off or per-try idle timeouts",
        ));
    }
    let mut on = RetryOn::default();
    for token in r
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        match token {
            "5xx" => on.server_error = true,
            "gateway-error" => on.gateway_error = true,
            "connect-failure" => on.connect_failure = true,
            "reset" => on.reset = true,
            // Only a failed connect is known to be before the request: the conservative reading.
            "reset-before-request" => on.connect_failure = true,
            // Conditions that cannot arise here (no h2/h3 upstreams, no rate limiting, and
            // retriable header lists are rejected above): nothing to retry on.
            "refused-stream"
            | "envoy-ratelimited"
            | "retriable-headers"
            | "http3-post-connect-failure" => {}
            "retriable-4xx" => on.retriable_4xx = true,
            "retriable-status-codes" => on.retriable_status_codes = true,
            "cancelled" => on.grpc.cancelled = true,
            "deadline-exceeded" => on.grpc.deadline_exceeded = true,
            "internal" => on.grpc.internal = true,
            "resource-exhausted" => on.grpc.resource_exhausted = true,
            "unavailable" => on.grpc.unavailable = true,
            other => {
                return Err(at
                    .at("retry_on")
                    .unsupported(format!("retry condition {other:?}")));
            }
        }
    }
    let mut other_host = false;
    for (i, p) in r.retry_host_predicate.iter().enumerate() {
        if p.name != PREVIOUS_HOSTS {
            return Err(at
                .at(format!("retry_host_predicate[{i}]"))
                .unsupported(format!("host predicate {:?}", p.name)));
        }
        other_host = true;
    }
    let retriable_status_codes = r
        .retriable_status_codes
        .iter()
        .map(|c| {
            u16::try_from(*c)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| {
                    at.at("retriable_status_codes")
                        .invalid(format!("{c} is not an HTTP status"))
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(RetryPolicy {
        // Envoy's default is one retry.
        num_retries: r.num_retries.as_ref().map_or(1, |n| n.value),
        retry_on: on,
        retriable_status_codes,
        per_try_timeout: r
            .per_try_timeout
            .as_ref()
            .map(|d| duration(&at.at("per_try_timeout"), d))
            .transpose()?
            .filter(|d| !d.is_zero()),
        other_host,
        host_selection_attempts: u32::try_from(r.host_selection_retry_max_attempts.max(1))
            .unwrap_or(u32::MAX),
    })
}

fn redirect(at: &At<'_>, rd: &RedirectAction) -> Result<Redirect, ConvertError> {
    use redirect_action::RedirectResponseCode as Code;
    let status = match Code::try_from(rd.response_code) {
        Ok(Code::MovedPermanently) => 301,
        Ok(Code::Found) => 302,
        Ok(Code::SeeOther) => 303,
        Ok(Code::TemporaryRedirect) => 307,
        Ok(Code::PermanentRedirect) => 308,
        Err(_) => {
            return Err(at
                .at("response_code")
                .invalid(format!("{}", rd.response_code)));
        }
    };
    let scheme = match &rd.scheme_rewrite_specifier {
        None => None,
        Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.as_str().into()),
        Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".into()),
        Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(false)) => None,
    };
    let path = match &rd.path_rewrite_specifier {
        None => None,
        Some(redirect_action::PathRewriteSpecifier::PathRedirect(p)) => Some(p.as_str().into()),
        Some(_) => {
            return Err(at
                .at("path_rewrite_specifier")
                .unsupported("prefix or regex redirects"));
        }
    };
    if rd.strip_query {
        return Err(at.at("strip_query").unsupported("strip_query"));
    }
    let port = match rd.port_redirect {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| at.at("port_redirect").invalid(format!("{p}")))?),
    };
    Ok(Redirect {
        scheme,
        host: (!rd.host_redirect.is_empty()).then(|| rd.host_redirect.as_str().into()),
        port,
        path,
        status,
    })
}

// `append` is deprecated but still honoured by Envoy when set.
#[allow(deprecated)]
fn header_changes(
    at: &At<'_>,
    request_add: &[HeaderValueOption],
    request_remove: &[String],
    response_add: &[HeaderValueOption],
    response_remove: &[String],
) -> Result<HeaderChanges, ConvertError> {
    let adds =
        |field: &str, list: &[HeaderValueOption]| -> Result<Arc<[HeaderAdd]>, ConvertError> {
            list.iter()
                .enumerate()
                .map(|(i, o)| {
                    let at = at.at(format!("{field}[{i}]"));
                    let h = o
                        .header
                        .as_ref()
                        .ok_or_else(|| at.at("header").invalid("missing"))?;
                    let name = h.key.to_ascii_lowercase();
                    if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                        || http::HeaderValue::from_str(&h.value).is_err()
                    {
                        return Err(
                            at.invalid(format!("{:?}: {:?} is not a valid header", h.key, h.value))
                        );
                    }
                    let append = match HeaderAppendAction::try_from(o.append_action) {
                        Ok(HeaderAppendAction::AppendIfExistsOrAdd) => {
                            o.append.as_ref().is_none_or(|a| a.value)
                        }
                        Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => false,
                        _ => {
                            return Err(at
                                .at("append_action")
                                .unsupported(format!("append action {}", o.append_action)));
                        }
                    };
                    Ok(HeaderAdd {
                        name: name.into(),
                        value: h.value.as_str().into(),
                        append,
                    })
                })
                .collect()
        };
    let names = |field: &str, list: &[String]| -> Result<Arc<[Arc<str>]>, ConvertError> {
        list.iter()
            .map(|n| {
                let n = n.to_ascii_lowercase();
                http::HeaderName::from_bytes(n.as_bytes())
                    .map(|_| Arc::from(n.as_str()))
                    .map_err(|_| at.at(field).invalid(format!("{n:?} is not a header name")))
            })
            .collect()
    };
    Ok(HeaderChanges {
        request_add: adds("request_headers_to_add", request_add)?,
        request_remove: names("request_headers_to_remove", request_remove)?,
        response_add: adds("response_headers_to_add", response_add)?,
        response_remove: names("response_headers_to_remove", response_remove)?,
    })
}

// === impl Cluster ===

impl TryFrom<&PbCluster> for Cluster {
    type Error = ConvertError;

    fn try_from(c: &PbCluster) -> Result<Self, Self::Error> {
        let resource = format!("cluster {:?}", c.name);
        let at = At::new(&resource);
        if c.name.is_empty() {
            return Err(at.at("name").invalid("must not be empty"));
        }
        let tls = tls::upstream(&at.at("transport_socket"), c.transport_socket.as_ref())?;
        let transport_matches = tls::matches(&at, &c.transport_socket_matches)?;
        let outlier = c
            .outlier_detection
            .as_ref()
            .map(|od| outlier_detection(&at.at("outlier_detection"), od))
            .transpose()?;
        let healthy_panic_threshold = match &c.common_lb_config {
            None => 50.0,
            Some(common) => {
                let at = at.at("common_lb_config");
                let mut rest = common.clone();
                rest.healthy_panic_threshold = None;
                if rest != Default::default() {
                    return Err(at.unsupported("common lb settings other than the panic threshold"));
                }
                common
                    .healthy_panic_threshold
                    .as_ref()
                    .map_or(50.0, |p| p.value.clamp(0.0, 100.0))
            }
        };
        if !c.health_checks.is_empty() {
            return Err(at.at("health_checks").unsupported("active health checks"));
        }
        let lb_policy = match (PbLbPolicy::try_from(c.lb_policy), &c.lb_config) {
            (Ok(PbLbPolicy::RoundRobin), None) => LbPolicy::RoundRobin,
            (Ok(PbLbPolicy::LeastRequest), None) => LbPolicy::LeastRequest,
            (Ok(PbLbPolicy::Random), None) => LbPolicy::Random,
            (Ok(PbLbPolicy::RingHash), None) => LbPolicy::ConsistentHash { ring_size: 1024 },
            (Ok(PbLbPolicy::RingHash), Some(LbConfig::RingHashLbConfig(r))) => {
                LbPolicy::ConsistentHash {
                    ring_size: r
                        .minimum_ring_size
                        .as_ref()
                        .map_or(1024, |v| v.value)
                        .clamp(1, 1 << 23),
                }
            }
            (Ok(PbLbPolicy::Maglev), None) => LbPolicy::ConsistentHash { ring_size: 65537 },
            (Ok(PbLbPolicy::Maglev), Some(LbConfig::MaglevLbConfig(m))) => {
                LbPolicy::ConsistentHash {
                    ring_size: m
                        .table_size
                        .as_ref()
                        .map_or(65537, |v| v.value)
                        .clamp(1, 1 << 23),
                }
            }
            (_, Some(_)) => {
                return Err(at.at("lb_config").unsupported("this load balancer config"));
            }
            _ => {
                return Err(at
                    .at("lb_policy")
                    .unsupported(format!("lb policy {}", c.lb_policy)));
            }
        };
        let mut http2 = false;
        let mut idle_timeout = None;
        let mut max_requests_per_connection = None;
        for (key, any) in &c.typed_extension_protocol_options {
            let at = at.at(format!("typed_extension_protocol_options[{key:?}]"));
            if key != HTTP_PROTOCOL_OPTIONS {
                return Err(at.unsupported("this extension"));
            }
            let options: HttpProtocolOptions =
                at.decode(any, &format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}"))?;
            if let Some(common) = &options.common_http_protocol_options {
                let at = at.at("common_http_protocol_options");
                let mut rest = *common;
                rest.idle_timeout = None;
                rest.max_requests_per_connection = None;
                if rest != Default::default() {
                    return Err(at.unsupported(
                        "connection durations and header limits (only idle_timeout and \
                         max_requests_per_connection are)",
                    ));
                }
                // Envoy reads 0 as no limit.
                max_requests_per_connection = common
                    .max_requests_per_connection
                    .map(|v| v.value)
                    .filter(|n| *n > 0);
                idle_timeout = common
                    .idle_timeout
                    .as_ref()
                    .map(|d| duration(&at.at("idle_timeout"), d))
                    .transpose()?;
            }
            match &options.upstream_protocol_options {
                Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
                    Some(explicit_http_config::ProtocolConfig::HttpProtocolOptions(_)) => {}
                    Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(h2)) => {
                        let mut rest = h2.clone();
                        rest.max_concurrent_streams = None;
                        if rest != Default::default() {
                            return Err(at
                                .at("explicit_http_config.http2_protocol_options")
                                .unsupported("HTTP/2 settings other than max_concurrent_streams"));
                        }
                        http2 = true;
                    }
                    _ => {
                        return Err(at
                            .at("explicit_http_config")
                            .unsupported("HTTP/3 to upstreams"));
                    }
                },
                _ => return Err(at.unsupported("this upstream protocol selection")),
            }
        }
        let connect_timeout = match &c.connect_timeout {
            None => DEFAULT_CONNECT_TIMEOUT,
            Some(d) => duration(&at.at("connect_timeout"), d)?,
        };
        let limits = limits(c);
        let discovery = match &c.cluster_discovery_type {
            Some(ClusterDiscoveryType::Type(t)) => match DiscoveryType::try_from(*t) {
                Ok(DiscoveryType::Eds) => Discovery::Eds {
                    service_name: c
                        .eds_cluster_config
                        .as_ref()
                        .map(|e| e.service_name.as_str())
                        .filter(|s| !s.is_empty())
                        .unwrap_or(&c.name)
                        .into(),
                },
                Ok(DiscoveryType::Static) => Discovery::Static,
                Ok(DiscoveryType::StrictDns) => Discovery::StrictDns,
                _ => return Err(at.at("type").unsupported(format!("discovery type {t}"))),
            },
            None => Discovery::Static,
            Some(_) => return Err(at.at("cluster_type").unsupported("custom cluster types")),
        };
        let endpoints = match (&discovery, &c.load_assignment) {
            (Discovery::Eds { .. }, _) => Arc::from([]),
            (_, Some(cla)) => endpoints(&at.at("load_assignment"), cla, &discovery)?,
            (_, None) => Arc::from([]),
        };
        let cluster = Cluster {
            name: c.name.as_str().into(),
            discovery,
            lb_policy,
            connect_timeout,
            limits,
            outlier,
            healthy_panic_threshold,
            http2,
            idle_timeout,
            max_requests_per_connection,
            endpoints,
            tls,
            transport_matches,
        };
        if cluster.tls_settings().len() > 1 {
            return Err(at
                .at("transport_socket_matches")
                .unsupported("different TLS settings for different endpoints of one cluster"));
        }
        Ok(cluster)
    }
}

/// Envoy's defaults where a field is unset: 5 consecutive errors, 30s base ejection, 10%.
fn outlier_detection(at: &At<'_>, od: &PbOutlier) -> Result<OutlierDetection, ConvertError> {
    let v = |x: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default: u32| {
        x.as_ref().map_or(default, |x| x.value)
    };
    if v(&od.enforcing_success_rate, 100) != 0 {
        return Err(at
            .at("enforcing_success_rate")
            .unsupported("success-rate ejection"));
    }
    if v(&od.enforcing_failure_percentage, 0) != 0
        || v(&od.enforcing_failure_percentage_local_origin, 0) != 0
    {
        return Err(at.unsupported("failure-percentage ejection"));
    }
    let detector = |threshold: &Option<envoy_types::pb::google::protobuf::UInt32Value>,
                    enforcing: &Option<envoy_types::pb::google::protobuf::UInt32Value>,
                    default_enforcing: u32| {
        let threshold = v(threshold, 5);
        (v(enforcing, default_enforcing) > 0 && threshold > 0).then_some(threshold)
    };
    Ok(OutlierDetection {
        consecutive_5xx: detector(&od.consecutive_5xx, &od.enforcing_consecutive_5xx, 100),
        consecutive_gateway_failure: detector(
            &od.consecutive_gateway_failure,
            &od.enforcing_consecutive_gateway_failure,
            0,
        ),
        consecutive_local_origin_failure: if od.split_external_local_origin_errors {
            detector(
                &od.consecutive_local_origin_failure,
                &od.enforcing_consecutive_local_origin_failure,
                100,
            )
        } else {
            None
        },
        split_local_origin: od.split_external_local_origin_errors,
        base_ejection_time: od
            .base_ejection_time
            .as_ref()
            .map(|d| duration(&at.at("base_ejection_time"), d))
            .transpose()?
            .unwrap_or(Duration::from_secs(30)),
        max_ejection_percent: v(&od.max_ejection_percent, 10).min(100),
    })
}

fn limits(c: &PbCluster) -> Limits {
    let mut limits = Limits::default();
    let Some(t) = c.circuit_breakers.as_ref().and_then(|cb| {
        cb.thresholds
            .iter()
            .find(|t| t.priority == RoutingPriority::Default as i32)
    }) else {
        return limits;
    };
    let set = |slot: &mut u32, v: &Option<envoy_types::pb::google::protobuf::UInt32Value>| {
        if let Some(v) = v {
            *slot = v.value;
        }
    };
    set(&mut limits.max_connections, &t.max_connections);
    set(&mut limits.max_pending_requests, &t.max_pending_requests);
    set(&mut limits.max_requests, &t.max_requests);
    set(&mut limits.max_retries, &t.max_retries);
    limits
}

/// The endpoints of an assignment for an EDS cluster (given as IP addresses).
pub fn eds_endpoints(cla: &ClusterLoadAssignment) -> Result<Arc<[Endpoint]>, ConvertError> {
    let resource = format!("cluster load assignment {:?}", cla.cluster_name);
    let at = At::new(&resource);
    if cla.cluster_name.is_empty() {
        return Err(at.at("cluster_name").invalid("must not be empty"));
    }
    endpoints(
        &at,
        cla,
        &Discovery::Eds {
            service_name: cla.cluster_name.as_str().into(),
        },
    )
}

fn endpoints(
    at: &At<'_>,
    cla: &ClusterLoadAssignment,
    discovery: &Discovery,
) -> Result<Arc<[Endpoint]>, ConvertError> {
    let mut out = Vec::new();
    if let Some(p) = &cla.policy
        && (!p.drop_overloads.is_empty() || p.overprovisioning_factor.is_some())
    {
        return Err(at
            .at("policy")
            .unsupported("drop overloads or overprovisioning"));
    }
    for (i, locality) in cla.endpoints.iter().enumerate() {
        let at = at.at(format!("endpoints[{i}]"));
        if locality.priority != 0 {
            return Err(at.at("priority").unsupported("priorities other than 0"));
        }
        for (j, lb) in locality.lb_endpoints.iter().enumerate() {
            let at = at.at(format!("lb_endpoints[{j}]"));
            let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
                return Err(at.at("endpoint").invalid("missing"));
            };
            let healthy = matches!(
                HealthStatus::try_from(lb.health_status),
                Ok(HealthStatus::Unknown | HealthStatus::Healthy | HealthStatus::Degraded)
            );
            if !healthy {
                continue;
            }
            let (host, port) = host_port(&at.at("endpoint.address"), e.address.as_ref())?;
            if !matches!(discovery, Discovery::StrictDns) && host.parse::<IpAddr>().is_err() {
                return Err(at
                    .at("endpoint.address")
                    .invalid(format!("{host:?} is not an IP address")));
            }
            let weight = lb.load_balancing_weight.as_ref().map_or(1, |w| w.value);
            if weight == 0 {
                return Err(at.at("load_balancing_weight").invalid("must be at least 1"));
            }
            let transport_labels = tls::endpoint_labels(&at, lb.metadata.as_ref())?;
            out.push(Endpoint {
                host: host.into(),
                port,
                weight,
                transport_labels,
            });
        }
    }
    Ok(out.into())
}

fn host_port(at: &At<'_>, a: Option<&Address>) -> Result<(String, u16), ConvertError> {
    let Some(address::Address::SocketAddress(sa)) = a.and_then(|a| a.address.as_ref()) else {
        return Err(at.invalid("expected a socket address"));
    };
    let port = match &sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(*p)
            .map_err(|_| at.at("port_value").invalid(format!("{p} is not a port")))?,
        _ => return Err(at.at("port_specifier").unsupported("named ports")),
    };
    Ok((sa.address.clone(), port))
}

fn socket_addr(at: &At<'_>, a: Option<&Address>) -> Result<SocketAddr, ConvertError> {
    let (host, port) = host_port(at, a)?;
    let ip: IpAddr = host
        .parse()
        .map_err(|_| at.invalid(format!("{host:?} is not an IP address")))?;
    Ok(SocketAddr::new(ip, port))
}

fn duration(at: &At<'_>, d: &PbDuration) -> Result<Duration, ConvertError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(at.invalid("negative duration"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Decodes a resource of `type_url` and converts it; returns its name and the runtime form.
pub trait Resource: Sized {
    const TYPE_URL: &'static str;
    fn from_any(any: &Any) -> Result<(String, Self), ConvertError>;
}

fn decode_named<M: Message + Default>(
    any: &Any,
    kind: &str,
    expect: &str,
) -> Result<M, ConvertError> {
    At::new(kind).decode(any, expect)
}

impl Resource for Listener {
    const TYPE_URL: &'static str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    fn from_any(any: &Any) -> Result<(String, Self), ConvertError> {
        let pb: PbListener = decode_named(any, "listener", Self::TYPE_URL)?;
        Ok((pb.name.clone(), Listener::try_from(&pb)?))
    }
}

impl Resource for RouteConfig {
    const TYPE_URL: &'static str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    fn from_any(any: &Any) -> Result<(String, Self), ConvertError> {
        let pb: RouteConfiguration = decode_named(any, "route configuration", Self::TYPE_URL)?;
        Ok((pb.name.clone(), RouteConfig::try_from(&pb)?))
    }
}

impl Resource for Cluster {
    const TYPE_URL: &'static str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    fn from_any(any: &Any) -> Result<(String, Self), ConvertError> {
        let pb: PbCluster = decode_named(any, "cluster", Self::TYPE_URL)?;
        Ok((pb.name.clone(), Cluster::try_from(&pb)?))
    }
}

/// An EDS assignment's endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment(pub Arc<[Endpoint]>);

impl Resource for Assignment {
    const TYPE_URL: &'static str =
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    fn from_any(any: &Any) -> Result<(String, Self), ConvertError> {
        let pb: ClusterLoadAssignment =
            decode_named(any, "cluster load assignment", Self::TYPE_URL)?;
        Ok((pb.cluster_name.clone(), Assignment(eds_endpoints(&pb)?)))
    }
}
