//! The validated policy model. `Model::build` is the one validator: the file loader, the admin
//! API, `straitctl analyze` and any future admission webhook all call it.

mod destination_rule;
mod gateway;
mod incremental;
pub mod outbound;
mod rate_limit;
mod registry;
mod request_authentication;
mod scope;
mod security;
mod telemetry;
mod virtual_service;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::credential::Credentials;
use crate::error::{ObjectId, ValidationError, ValidationErrors};
use crate::loader::{Object, Spec};

pub use destination_rule::ResolvedPolicy;
pub use incremental::Change;
pub use rate_limit::{RateLimit, RateLimitKey, RateLimitMatch, RateLimitPolicy};
pub use request_authentication::{
    FetchedJwks, JwksFetches, JwksSource, JwtHeader, JwtRule, RequestAuthentication, check_jwks,
};
pub use scope::{EgressHost, EgressNamespace, ExportTo, Scope, Sidecar};
pub use security::{
    AuthorizationPolicy, AuthzAction, AuthzRule, ConditionKey, ConditionMatch, MtlsMode,
    OperationMatch, PeerAuthentication, ROOT_NAMESPACE, SourceMatch,
};
pub use telemetry::{AccessLogRule, Direction, ENVOY_PROVIDER, LogMode, Telemetry};
pub use virtual_service::CorsPolicy;

// === The model ===

/// A whole, consistent configuration. Immutable once built.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    /// Services by host name (from ServiceEntries).
    pub services: BTreeMap<String, Service>,
    /// DestinationRules by the host they name (exact or wildcard).
    pub destination_rules: BTreeMap<String, DestinationRule>,
    /// VirtualServices in a stable order (namespace, name).
    pub virtual_services: Vec<VirtualService>,
    /// Gateways by id.
    pub gateways: BTreeMap<ObjectId, Gateway>,
    pub peer_authentications: Vec<PeerAuthentication>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    pub request_authentications: Vec<RequestAuthentication>,
    /// RateLimitPolicies in id order.
    pub rate_limit_policies: Vec<RateLimitPolicy>,
    /// Telemetries in id order.
    pub telemetries: Vec<Telemetry>,
    /// What straitd fetched for the `jwksUri`s in use (set after validation, by
    /// [`Model::set_jwks`]); empty where nothing fetches them (`straitctl analyze`).
    pub jwks: std::sync::Arc<JwksFetches>,
    /// Sidecars by id order.
    pub sidecars: Vec<Sidecar>,
    /// The TLS credentials (Kubernetes Secrets) `credentialName` may name; empty without
    /// Kubernetes.
    pub credentials: Credentials,
    /// Problems that do not make the configuration unsafe but deserve a look.
    pub warnings: Vec<ValidationError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Mongo,
    Mysql,
    Redis,
    /// Neither declared nor inferable from the port name. The explicit sidecar carries it as
    /// HTTP/1.1; captured traffic treats it as opaque TCP (Strait does not sniff protocols).
    Unknown,
}

/// How a sidecar tells captured outbound traffic for a port apart (Istio's listener model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CapturedProtocol {
    /// Routed by the Host header.
    Http,
    /// TLS originated by the app: passed through, told apart by SNI when the service has no
    /// address.
    Tls,
    /// Opaque bytes: told apart by destination address only.
    Tcp,
}

impl Protocol {
    /// Whether requests for this port are routed by the HTTP listeners.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http
                | Protocol::Http2
                | Protocol::Grpc
                | Protocol::GrpcWeb
                | Protocol::Unknown
        )
    }

    /// Whether the upstream speaks HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }

    /// How captured traffic for this protocol is handled. Unlike the explicit sidecar, an
    /// unknown protocol is TCP here: captured bytes may be anything.
    pub fn captured(self) -> CapturedProtocol {
        match self {
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb => {
                CapturedProtocol::Http
            }
            Protocol::Https | Protocol::Tls => CapturedProtocol::Tls,
            Protocol::Tcp
            | Protocol::Mongo
            | Protocol::Mysql
            | Protocol::Redis
            | Protocol::Unknown => CapturedProtocol::Tcp,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub number: u16,
    pub name: String,
    pub protocol: Protocol,
    pub target_port: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    Static,
    Dns,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// An IP address (STATIC) or a DNS name (DNS).
    pub address: String,
    /// Port name -> target port, from the WorkloadEntry's `ports`.
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
    /// The workload's identity (`default` when not given, as in Kubernetes).
    pub service_account: String,
    /// The WorkloadEntry or ServiceEntry that declared it.
    pub source: ObjectId,
}

/// Istio's label for endpoints whose sidecar accepts Istio mTLS (`istio`) or not (`disabled`).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

impl Endpoint {
    /// Whether this endpoint runs a sidecar that accepts mesh mTLS (auto mTLS uses it).
    pub fn mesh_tls(&self) -> bool {
        self.labels
            .get(TLS_MODE_LABEL)
            .is_some_and(|m| m == "istio")
    }
}

impl Endpoint {
    /// The port this endpoint listens on for a service port.
    pub fn port_for(&self, port: &ServicePort) -> u16 {
        self.ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.number)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub hostname: String,
    pub namespace: String,
    /// Virtual IPs (ServiceEntry `addresses`; a Kubernetes ClusterIP): captured traffic to one of
    /// them on a service port is this service's. A range (CIDR) claims every address in it.
    pub addresses: Vec<ipnet::IpNet>,
    pub ports: Vec<ServicePort>,
    pub resolution: Resolution,
    pub mesh_external: bool,
    /// Shared, so that a model made from another (`Model::derive`) copies pointers.
    pub endpoints: std::sync::Arc<[Endpoint]>,
    pub source: ObjectId,
    pub export_to: ExportTo,
}

impl Service {
    /// Equal to `other` but perhaps for the endpoints.
    pub fn same_but_endpoints(&self, other: &Service) -> bool {
        // Destructured so that a field added later must be placed on one side or the other.
        let Service {
            hostname,
            namespace,
            addresses,
            ports,
            resolution,
            mesh_external,
            endpoints: _,
            source,
            export_to,
        } = self;
        *hostname == other.hostname
            && *namespace == other.namespace
            && *addresses == other.addresses
            && *ports == other.ports
            && *resolution == other.resolution
            && *mesh_external == other.mesh_external
            && *source == other.source
            && *export_to == other.export_to
    }

    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }
}

/// Names a cluster as Istio does: `outbound|9080|v1|reviews.default.svc.cluster.local`.
pub fn cluster_name(host: &str, port: u16, subset: Option<&str>) -> String {
    format!("outbound|{port}|{}|{host}", subset.unwrap_or(""))
}

// --- DestinationRule ---

#[derive(Clone, Debug, PartialEq)]
pub struct DestinationRule {
    pub id: ObjectId,
    pub host: String,
    pub export_to: ExportTo,
    pub policy: TrafficPolicy,
    pub subsets: Vec<Subset>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub policy: TrafficPolicy,
}

/// A traffic policy; each part, when present, replaces the same part of an outer policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTls>,
    pub port_level: BTreeMap<u16, TrafficPolicy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientTlsMode {
    Disable,
    Simple,
    Mutual,
    /// mTLS with the mesh's certificates (SDS `default` and `ROOTCA`).
    IstioMutual,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    pub mode: ClientTlsMode,
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub sni: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub insecure_skip_verify: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadBalancer {
    RoundRobin,
    LeastRequest,
    Random,
    Passthrough,
    ConsistentHash { key: HashKey, ring: HashRing },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    Header(String),
    Cookie {
        name: String,
        path: Option<String>,
        ttl: Option<Duration>,
    },
    SourceIp,
    QueryParameter(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashRing {
    RingHash { minimum_ring_size: Option<u64> },
    Maglev { table_size: Option<u64> },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionPool {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<Duration>,
    pub tcp_keepalive: Option<TcpKeepalive>,
    pub max_connection_duration: Option<Duration>,
    pub http1_max_pending_requests: Option<u32>,
    pub http2_max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    pub idle_timeout: Option<Duration>,
    /// How long a proxied TCP connection may stay idle (`tcp.idleTimeout`); zero: forever.
    pub tcp_idle_timeout: Option<Duration>,
    pub h2_upgrade: bool,
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutlierDetection {
    /// `None`: Envoy's default (5); `Some(0)`: disabled.
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub consecutive_local_origin_failures: Option<u32>,
    pub split_external_local_origin_errors: bool,
    pub interval: Option<Duration>,
    pub base_ejection_time: Option<Duration>,
    pub max_ejection_percent: Option<u32>,
    pub min_health_percent: Option<u32>,
}

// --- VirtualService ---

#[derive(Clone, Debug, PartialEq)]
pub struct VirtualService {
    pub id: ObjectId,
    /// Resolved hosts (FQDNs, wildcards or `*`).
    pub hosts: Vec<String>,
    /// Where the routes apply; `[Mesh]` when the spec names none.
    pub gateways: Vec<GatewayRef>,
    pub http: Vec<HttpRoute>,
    /// Opaque TCP: the first route whose match applies takes a connection.
    pub tcp: Vec<TcpRoute>,
    /// TLS passed through, routed by SNI.
    pub tls: Vec<TlsRoute>,
    pub export_to: ExportTo,
}

/// A `tcp` route: matches OR'ed (none: every connection), weighted destinations.
#[derive(Clone, Debug, PartialEq)]
pub struct TcpRoute {
    pub matches: Vec<L4Match>,
    pub route: Vec<WeightedDestination>,
}

/// A `tls` route: at least one match, each naming SNI hosts.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsRoute {
    pub matches: Vec<TlsMatch>,
    pub route: Vec<WeightedDestination>,
}

/// What a TCP or TLS connection is matched on. The port, source labels, source namespace and
/// gateways are known when the config is made (static); destination subnets are the proxy's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L4Match {
    pub port: Option<u16>,
    pub destination_subnets: Vec<ipnet::IpNet>,
    pub source_labels: BTreeMap<String, String>,
    /// Empty: every gateway the VirtualService is bound to.
    pub gateways: Vec<GatewayRef>,
    pub source_namespace: Option<String>,
}

impl L4Match {
    /// Whether this match can apply at `context` on `port` for a proxy with these labels
    /// and namespace (Istio's `matchTCP`/`matchTLS`).
    pub fn applies(
        &self,
        context: &GatewayRef,
        port: u16,
        labels: &BTreeMap<String, String>,
        namespace: &str,
    ) -> bool {
        (self.gateways.is_empty() || self.gateways.contains(context))
            && self.port.is_none_or(|p| p == port)
            && self
                .source_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
            && self
                .source_namespace
                .as_ref()
                .is_none_or(|ns| ns == namespace)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsMatch {
    /// SNI names, exact or `*.suffix`; never empty.
    pub sni_hosts: Vec<String>,
    pub l4: L4Match,
}

impl VirtualService {
    pub fn applies_to_mesh(&self) -> bool {
        self.gateways.contains(&GatewayRef::Mesh)
    }

    pub fn applies_to_gateway(&self, gateway: &ObjectId) -> bool {
        self.gateways
            .iter()
            .any(|g| matches!(g, GatewayRef::Gateway(id) if id == gateway))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GatewayRef {
    /// The reserved name `mesh`: every sidecar.
    Mesh,
    Gateway(ObjectId),
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpRoute {
    pub name: Option<String>,
    /// OR'ed; empty matches everything.
    pub matches: Vec<RouteMatch>,
    pub action: RouteAction,
    pub rewrite: Option<Rewrite>,
    /// `None`: no timeout (Istio's default). `Some(ZERO)` likewise disables it.
    pub timeout: Option<Duration>,
    pub retries: Option<RetryPolicy>,
    pub fault: Option<Fault>,
    pub mirrors: Vec<Mirror>,
    pub headers: HeaderOps,
    /// Cross-origin requests: preflights answered by the proxy, CORS headers on responses.
    pub cors: Option<CorsPolicy>,
    /// The delegate VirtualService this route was merged from (`spec.http[].delegate`).
    pub delegate: Option<ObjectId>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteMatch {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub ignore_uri_case: bool,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub headers: Vec<(String, HeaderMatch)>,
    pub without_headers: Vec<(String, HeaderMatch)>,
    pub query_params: Vec<(String, StringMatch)>,
    pub port: Option<u16>,
    /// Empty: every gateway the VirtualService is bound to.
    pub gateways: Vec<GatewayRef>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
}

impl RouteMatch {
    /// Whether this match can apply at `context` (the mesh or a gateway).
    pub fn applies_to(&self, context: &GatewayRef) -> bool {
        self.gateways.is_empty() || self.gateways.contains(context)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderMatch {
    Present,
    Value(StringMatch),
}

#[derive(Clone, Debug, PartialEq)]
pub enum RouteAction {
    Route(Vec<WeightedDestination>),
    Redirect(Redirect),
    DirectResponse { status: u16, body: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    /// Resolved: the port given, or the service's only port.
    pub port: u16,
}

impl Destination {
    pub fn cluster_name(&self) -> String {
        cluster_name(&self.host, self.port, self.subset.as_deref())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct WeightedDestination {
    pub destination: Destination,
    pub weight: u32,
    pub headers: HeaderOps,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub request: HeaderOp,
    pub response: HeaderOp,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderOp {
    pub set: BTreeMap<String, String>,
    pub add: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

impl HeaderOp {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u16>,
    pub derive_port_from_request: bool,
    pub scheme: Option<String>,
    pub code: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex: Option<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (Istio's `attempts`); 0 disables retries.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// Envoy retry_on conditions.
    pub retry_on: Vec<String>,
    pub retriable_status_codes: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultDelay {
    pub fixed: Duration,
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultAbort {
    pub status: FaultStatus,
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultStatus {
    Http(u16),
    Grpc(u32),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    pub destination: Destination,
    pub percent: f64,
}

// --- Gateway ---

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub id: ObjectId,
    pub selector: BTreeMap<String, String>,
    pub servers: Vec<GatewayServer>,
}

impl Gateway {
    /// Istio's rule: a gateway applies to proxies whose labels include its whole selector.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayServer {
    pub port: u16,
    pub port_name: String,
    pub protocol: Protocol,
    pub hosts: Vec<GatewayHost>,
    pub tls: Option<ServerTls>,
    pub name: Option<String>,
}

/// `namespace/host` from a Gateway server: which VirtualServices may bind to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayHost {
    /// `None` is any namespace (`*/` or no prefix).
    pub namespace: Option<String>,
    pub host: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerTls {
    /// Plain HTTP that answers with a redirect to HTTPS.
    HttpsRedirect,
    Simple {
        certificate: String,
        private_key: String,
    },
    /// The certificate (and, for MUTUAL, the CA that verifies clients) from the credential
    /// `name` in the gateway workload's namespace (Istio's `credentialName`). A gateway whose
    /// namespace does not hold it does not serve the server.
    Credential { name: String, mutual: bool },
    /// `mode: PASSTHROUGH`: TLS is not terminated; connections go by SNI to the destinations
    /// of the bound VirtualServices' `tls` routes.
    Passthrough,
}

impl GatewayServer {
    /// Connections are told apart by SNI (an HTTPS server terminating TLS, or passthrough).
    pub fn is_sni(&self) -> bool {
        self.protocol == Protocol::Https || matches!(self.tls, Some(ServerTls::Passthrough))
    }

    /// TLS passed through by SNI (`tls.mode: PASSTHROUGH`).
    pub fn is_passthrough(&self) -> bool {
        matches!(self.tls, Some(ServerTls::Passthrough))
    }
}

// === Building ===

impl Model {
    /// Validates a whole batch of objects and builds the model, where there are no
    /// credentials to name (no Kubernetes): `credentialName` is refused.
    pub fn build<'a>(
        objects: impl IntoIterator<Item = &'a Object>,
    ) -> Result<Model, ValidationErrors> {
        Model::build_with(objects, None)
    }

    /// The one validator: a whole batch of objects, with the credentials (Kubernetes Secrets)
    /// that `credentialName` may name, or `None` where there are none to read.
    /// [`Model::derive`] validates a change by what it touches and must agree with it: a
    /// stage that reads services' endpoints is accounted for there (`model/incremental.rs`).
    pub fn build_with<'a>(
        objects: impl IntoIterator<Item = &'a Object>,
        credentials: Option<&Credentials>,
    ) -> Result<Model, ValidationErrors> {
        let objects: Vec<&Object> = objects.into_iter().collect();
        let mut errors = Vec::new();
        let mut warnings = Vec::new();

        // One object per kind/namespace/name.
        let mut seen: BTreeMap<&ObjectId, &str> = BTreeMap::new();
        for o in &objects {
            if let Some(first) = seen.insert(&o.id, &o.origin) {
                errors.push(ValidationError {
                    origin: o.origin.clone(),
                    object: Some(o.id.clone()),
                    path: "metadata.name".into(),
                    message: format!("defined twice: also in {first}"),
                });
            }
        }

        let by_kind = |kind: crate::Kind| {
            let mut v: Vec<&Object> = objects
                .iter()
                .copied()
                .filter(|o| o.id.kind == kind)
                .collect();
            v.sort_by(|a, b| a.id.cmp(&b.id));
            v
        };

        let services = registry::build(
            &by_kind(crate::Kind::ServiceEntry),
            &by_kind(crate::Kind::WorkloadEntry),
            &mut errors,
            &mut warnings,
        );
        let destination_rules = destination_rule::build(
            &by_kind(crate::Kind::DestinationRule),
            &services,
            &mut errors,
            &mut warnings,
        );
        let gateways = gateway::build(
            &by_kind(crate::Kind::Gateway),
            &services,
            credentials,
            &mut errors,
            &mut warnings,
        );
        let peer_authentications =
            security::peer_authentications(&by_kind(crate::Kind::PeerAuthentication), &mut errors);
        let authorization_policies = security::authorization_policies(
            &by_kind(crate::Kind::AuthorizationPolicy),
            &mut errors,
        );
        let request_authentications = request_authentication::build(
            &by_kind(crate::Kind::RequestAuthentication),
            &mut errors,
        );
        let sidecars = scope::build_sidecars(&by_kind(crate::Kind::Sidecar), &mut errors);
        let rate_limit_policies =
            rate_limit::build(&by_kind(crate::Kind::RateLimitPolicy), &mut errors);
        let telemetries = telemetry::build(&by_kind(crate::Kind::Telemetry), &mut errors);
        let virtual_services = virtual_service::build(
            &by_kind(crate::Kind::VirtualService),
            &services,
            &destination_rules,
            &gateways,
            &mut errors,
            &mut warnings,
        );

        warnings.extend(outbound::plan(&services).1);
        if errors.is_empty() {
            Ok(Model {
                services,
                destination_rules,
                virtual_services,
                gateways,
                peer_authentications,
                authorization_policies,
                request_authentications,
                rate_limit_policies,
                telemetries,
                jwks: Default::default(),
                sidecars,
                credentials: credentials.cloned().unwrap_or_default(),
                warnings,
            })
        } else {
            Err(ValidationErrors(errors))
        }
    }

    /// How a captured sidecar tells outbound connections apart, per destination port.
    pub fn outbound_plan(&self) -> BTreeMap<u16, outbound::PortPlan<'_>> {
        outbound::plan(&self.services).0
    }

    /// The DestinationRule for a host: exact first, then the most specific wildcard.
    pub fn destination_rule_for(&self, host: &str) -> Option<&DestinationRule> {
        destination_rule::lookup(&self.destination_rules, host)
    }

    /// The two models differ in service endpoints at most (warnings aside): what reads no
    /// endpoint translates the same from both.
    pub fn same_but_endpoints(&self, other: &Model) -> bool {
        // Destructured so that a field added later must be placed on one side or the other.
        let Model {
            services,
            destination_rules,
            virtual_services,
            gateways,
            peer_authentications,
            authorization_policies,
            request_authentications,
            rate_limit_policies,
            telemetries,
            jwks,
            sidecars,
            credentials,
            warnings: _,
        } = self;
        services.len() == other.services.len()
            && services
                .iter()
                .zip(&other.services)
                .all(|((ka, a), (kb, b))| ka == kb && a.same_but_endpoints(b))
            && *destination_rules == other.destination_rules
            && *virtual_services == other.virtual_services
            && *gateways == other.gateways
            && *peer_authentications == other.peer_authentications
            && *authorization_policies == other.authorization_policies
            && *request_authentications == other.request_authentications
            && *rate_limit_policies == other.rate_limit_policies
            && *telemetries == other.telemetries
            && *jwks == other.jwks
            && *sidecars == other.sidecars
            && *credentials == other.credentials
    }

    /// The services whose endpoints differ between the two models, by hostname; what else
    /// differs is not looked at (see [`Model::same_but_endpoints`]).
    pub fn hosts_with_other_endpoints(&self, other: &Model) -> BTreeSet<String> {
        let mut hosts: BTreeSet<String> = self
            .services
            .iter()
            .filter(|(host, s)| {
                other
                    .services
                    .get(*host)
                    .is_none_or(|o| o.endpoints != s.endpoints)
            })
            .map(|(host, _)| host.clone())
            .collect();
        hosts.extend(
            other
                .services
                .keys()
                .filter(|h| !self.services.contains_key(*h))
                .cloned(),
        );
        hosts
    }

    /// The policy in force for one cluster: the DestinationRule's top level, overridden by its
    /// port-level settings, then by the subset's policy and its port-level settings.
    pub fn policy_for(&self, host: &str, port: u16, subset: Option<&str>) -> ResolvedPolicy {
        match self.destination_rule_for(host) {
            Some(dr) => dr.resolve(port, subset),
            None => ResolvedPolicy::default(),
        }
    }

    /// The mTLS mode a workload's sidecar enforces on an inbound port (PeerAuthentication).
    pub fn mtls_mode(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        port: u16,
    ) -> MtlsMode {
        security::mtls_mode(&self.peer_authentications, namespace, labels, port)
    }

    /// The AuthorizationPolicies that apply to a workload, in a stable order.
    pub fn authorization_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<&AuthorizationPolicy> {
        security::authorization_for(&self.authorization_policies, namespace, labels)
    }

    /// The RequestAuthentications that apply to a workload, in a stable order.
    pub fn request_authentication_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<&RequestAuthentication> {
        request_authentication::for_workload(&self.request_authentications, namespace, labels)
    }

    /// The RateLimitPolicies that apply to a workload (or gateway), in id order.
    pub fn rate_limits_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<&RateLimitPolicy> {
        rate_limit::for_workload(&self.rate_limit_policies, namespace, labels)
    }

    /// Whether a workload's (or gateway's) `direction` is access-logged: the nearest
    /// Telemetry that sets it, else `mesh_default` (MeshConfig's `accessLogFile`).
    pub fn access_log_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        direction: Direction,
        mesh_default: bool,
    ) -> bool {
        telemetry::access_log(
            &self.telemetries,
            namespace,
            labels,
            direction,
            mesh_default,
        )
    }

    /// The `jwksUri`s that RequestAuthentications name, for straitd to fetch.
    pub fn jwks_uris(&self) -> BTreeSet<String> {
        request_authentication::uris(&self.request_authentications)
    }

    /// Puts what straitd fetched in place (the entries for URIs in use) and warns, per rule,
    /// of a `jwksUri` whose latest fetch failed.
    pub fn set_jwks(&mut self, fetched: &JwksFetches) {
        let uris = self.jwks_uris();
        self.jwks = std::sync::Arc::new(
            fetched
                .iter()
                .filter(|(uri, _)| uris.contains(*uri))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        self.warnings
            .retain(|w| !request_authentication::is_fetch_warning(w));
        self.warnings.extend(request_authentication::fetch_warnings(
            &self.request_authentications,
            &self.jwks,
        ));
    }

    /// The JWKS document a rule's tokens are verified with: inline, or the last fetched for
    /// its `jwksUri` (`None` before any fetch succeeded).
    pub fn jwks_of<'a>(&'a self, rule: &'a JwtRule) -> Option<&'a str> {
        match &rule.jwks {
            JwksSource::Inline(text) => Some(text),
            JwksSource::Uri(uri) => self.jwks.get(uri).and_then(|f| f.keys.as_deref()),
        }
    }

    /// The subsets defined for a host.
    pub fn subsets_for(&self, host: &str) -> &[Subset] {
        self.destination_rule_for(host)
            .map(|dr| dr.subsets.as_slice())
            .unwrap_or(&[])
    }

    /// Kinds and names present, for listings.
    pub fn summary(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        out.extend(self.services.keys().map(|h| format!("service {h}")));
        out.extend(self.destination_rules.values().map(|d| d.id.to_string()));
        out.extend(self.virtual_services.iter().map(|v| v.id.to_string()));
        out.extend(self.gateways.keys().map(|g| g.to_string()));
        out.extend(self.sidecars.iter().map(|s| s.id.to_string()));
        out
    }
}

/// Parses a `Spec` variant out of an object, for the per-kind builders.
pub(crate) fn spec_of<'a, T>(object: &'a Object, pick: fn(&'a Spec) -> Option<&'a T>) -> &'a T {
    pick(&object.spec).expect("objects are grouped by kind before building")
}
