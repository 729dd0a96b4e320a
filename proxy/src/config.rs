//! The runtime configuration: plain immutable types, rebuilt whole per xDS change.

mod cluster;
mod route;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

pub use cluster::{Cluster, Discovery, Endpoint, LbPolicy, Limits, OutlierDetection};
pub use route::{
    Action, ClusterChoice, Fault, FaultAbort, FaultDelay, Forward, GrpcRetryOn, HashKey,
    HashPolicy, HeaderAdd, HeaderChanges, HeaderMatch, HeaderMatcher, Mirror, PathMatch, Pattern,
    QueryMatcher, Redirect, RegexRewrite, RetryOn, RetryPolicy, Route, RouteConfig, RouteMatch,
    StringMatch, VirtualHost, WeightedCluster,
};

/// Everything the data path needs, complete: every route names an existing cluster and every
/// cluster has its endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Config {
    /// The xDS version each resource type was last accepted at.
    pub versions: BTreeMap<&'static str, Arc<str>>,
    pub listeners: BTreeMap<Arc<str>, Listener>,
    pub routes: BTreeMap<Arc<str>, Arc<RouteConfig>>,
    pub clusters: BTreeMap<Arc<str>, Arc<Cluster>>,
}

/// An HTTP listener.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listener {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub http: HttpManager,
}

/// What the HTTP connection manager of a listener does.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HttpManager {
    pub routes: RouteSource,
    /// Match virtual hosts on the Host header without its port (gateways).
    pub strip_any_host_port: bool,
    /// WebSocket upgrades are proxied (HTTP/1.1 `Upgrade: websocket`).
    pub websocket: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    /// A route configuration fetched over RDS, by name.
    Rds(Arc<str>),
    Inline(Arc<RouteConfig>),
}

impl Listener {
    /// The name of the RDS route configuration this listener needs, if any.
    pub fn rds_name(&self) -> Option<&Arc<str>> {
        match &self.http.routes {
            RouteSource::Rds(name) => Some(name),
            RouteSource::Inline(_) => None,
        }
    }
}

impl Config {
    /// The route configuration a listener serves.
    pub fn route_config<'a>(&'a self, listener: &'a Listener) -> Option<&'a Arc<RouteConfig>> {
        match &listener.http.routes {
            RouteSource::Rds(name) => self.routes.get(name),
            RouteSource::Inline(rc) => Some(rc),
        }
    }
}
