//! xDS protobufs -> runtime config; anything the proxy would not honour as Envoy does is rejected.

mod clusters;
mod jwt;
mod listeners;
mod rate_limit;
mod rbac;
mod routes;
mod tls;

pub use clusters::eds_endpoints;
use routes::{header_matcher, string_match};

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
    Filter as PbFilter, FilterChain as PbFilterChain, Listener as PbListener, filter,
    listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher as PbHeaderMatcher, QueryParameterMatcher, RedirectAction,
    RetryPolicy as PbRetryPolicy, Route as PbRoute, RouteAction, RouteConfiguration,
    VirtualHost as PbVirtualHost, header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier, redirect_action, route, route_action,
    route_action::HashPolicy as PbHashPolicy, route_match,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::{
    Cors as PbCors, CorsPolicy as PbCorsPolicy,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager,
    http_connection_manager::{ForwardClientCertDetails, RouteSpecifier, StripPortMode},
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy as PbTcpProxy;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{UpstreamProtocolOptions, explicit_http_config},
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;

use crate::config::listener_defaults::{DEFAULT_INSPECT_TIMEOUT, DEFAULT_TCP_IDLE_TIMEOUT};
use crate::config::{
    Action, ChainMatch, ClientCertDetails, Cluster, ClusterChoice, Cors, Discovery, Endpoint,
    Fault, FaultAbort, FaultDelay, FilterChain, Forward, HashKey, HashPolicy, HeaderAdd,
    HeaderChanges, HeaderLimits, HeaderMatch, HeaderMatcher, HttpManager, Inspect, LbPolicy,
    Limits, Listener, Mirror, OutlierDetection, PathMatch, Pattern, QueryMatcher, Redirect,
    RegexRewrite, RetryOn, RetryPolicy, Route, RouteConfig, RouteMatch, RouteSource, Serve,
    StringMatch, TcpCluster, TcpProxy, Transport, UpstreamBind, VirtualHost, WeightedCluster,
};

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const FAULT_FILTER: &str = "envoy.filters.http.fault";
const CORS: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
const CORS_POLICY: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";
const CORS_FILTER: &str = "envoy.filters.http.cors";
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

impl Resource for crate::config::SdsSecret {
    const TYPE_URL: &'static str =
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    fn from_any(any: &Any) -> Result<(String, Self), ConvertError> {
        let pb: envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret =
            decode_named(any, "secret", Self::TYPE_URL)?;
        Ok((pb.name.clone(), tls::secret(&pb)?))
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
