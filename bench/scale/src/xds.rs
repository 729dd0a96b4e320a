//! Simulated Envoys: ADS clients, delta or state-of-the-world, one HTTP/2 connection each, that
//! subscribe, ACK and keep their resources as Envoy does, and remember little: per resource an
//! interned name, a version hash and when that version arrived.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value};
use prost::Message;
use prost::bytes::Buf;
use strait_model::node::{NodeMetadata, ProxyMode};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

pub const CDS: usize = 0;
pub const EDS: usize = 1;
pub const LDS: usize = 2;
pub const RDS: usize = 3;
pub const TYPES: usize = 4;
pub const TYPE_URLS: [&str; TYPES] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
];
pub const TYPE_NAMES: [&str; TYPES] = ["CDS", "EDS", "LDS", "RDS"];
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// `Cluster.type` EDS.
const DISCOVERY_EDS: i32 = 3;
/// No EDS service name (a cluster that is not EDS).
const NONE: u32 = u32::MAX;
/// The version a watch records for a client that should hold the resource but does not.
const MISSING: u64 = u64::MAX;

/// Envoy's reconnect backoff for xDS streams: jittered exponential, from 500 ms up to 30 s
/// (`SubscriptionFactory::RetryInitialDelayMs` / `RetryMaxDelayMs`), each wait uniform in
/// [0, interval), reset when a response arrives.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

fn type_index(type_url: &str) -> Option<usize> {
    TYPE_URLS.iter().position(|t| *t == type_url)
}

/// Just the fields a client reads, so that most of each resource is skipped, not decoded.
mod lite {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "1")]
        pub type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DeltaResponse {
        #[prost(string, tag = "1")]
        pub system_version_info: String,
        #[prost(message, repeated, tag = "2")]
        pub resources: Vec<Resource>,
        #[prost(string, tag = "4")]
        pub type_url: String,
        #[prost(string, tag = "5")]
        pub nonce: String,
        #[prost(string, repeated, tag = "6")]
        pub removed_resources: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(string, tag = "1")]
        pub version: String,
        #[prost(message, optional, tag = "2")]
        pub resource: Option<Any>,
        #[prost(string, tag = "3")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SotwResponse {
        #[prost(string, tag = "1")]
        pub version_info: String,
        #[prost(message, repeated, tag = "2")]
        pub resources: Vec<Any>,
        #[prost(string, tag = "4")]
        pub type_url: String,
        #[prost(string, tag = "5")]
        pub nonce: String,
    }

    /// ClusterLoadAssignment and RouteConfiguration: the name is field 1 of both.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Named {
        #[prost(string, tag = "1")]
        pub name: String,
    }

    /// A RouteConfiguration's name and its virtual hosts' names (`HOST:PORT`, as Istio
    /// names them).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RouteConfiguration {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, repeated, tag = "2")]
        pub virtual_hosts: Vec<Named>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Cluster {
        #[prost(string, tag = "1")]
        pub name: String,
        /// The `cluster_discovery_type` oneof's `type` (STATIC 0, ..., EDS 3).
        #[prost(int32, tag = "2")]
        pub discovery_type: i32,
        #[prost(message, optional, tag = "3")]
        pub eds_cluster_config: Option<EdsClusterConfig>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EdsClusterConfig {
        #[prost(string, tag = "2")]
        pub service_name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Listener {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, repeated, tag = "3")]
        pub filter_chains: Vec<FilterChain>,
        #[prost(message, optional, tag = "25")]
        pub default_filter_chain: Option<FilterChain>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FilterChain {
        #[prost(message, repeated, tag = "3")]
        pub filters: Vec<Filter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Filter {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "4")]
        pub typed_config: Option<Any>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HttpConnectionManager {
        #[prost(message, optional, tag = "3")]
        pub rds: Option<Rds>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Rds {
        #[prost(string, tag = "2")]
        pub route_config_name: String,
    }
}

/// A gRPC codec that encodes the full request types and decodes the lite responses, with
/// each response's encoded size (what went over the stream, before HTTP/2 framing).
struct XdsCodec<Req, Resp>(PhantomData<fn(Req) -> Resp>);

struct XdsEncoder<T>(PhantomData<fn(T)>);
struct XdsDecoder<T>(PhantomData<fn() -> T>);

impl<Req, Resp> Codec for XdsCodec<Req, Resp>
where
    Req: Message + Send + 'static,
    Resp: Message + Default + Send + 'static,
{
    type Encode = Req;
    type Decode = (Resp, usize);
    type Encoder = XdsEncoder<Req>;
    type Decoder = XdsDecoder<Resp>;

    fn encoder(&mut self) -> Self::Encoder {
        XdsEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        XdsDecoder(PhantomData)
    }
}

impl<T: Message> Encoder for XdsEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding a request: {e}")))
    }
}

impl<T: Message + Default> Decoder for XdsDecoder<T> {
    type Item = (T, usize);
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<(T, usize)>, Status> {
        let len = src.remaining();
        T::decode(src)
            .map(|m| Some((m, len)))
            .map_err(|e| Status::internal(format!("decoding a response: {e}")))
    }
}

/// Resource names, shared by every client: a name is stored once, clients hold its number.
#[derive(Default)]
struct Interner {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(NONE - 1);
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    fn lookup(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |n| n)
    }
}

/// What a client holds of one resource: its version (a hash), when that version arrived (in
/// ticks of 10 µs since the fleet's epoch) and, for a cluster, its EDS service name; for a
/// route configuration, the [`route_digest`] of the services its virtual hosts name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    version: [u32; 2],
    pub at: u32,
    aux: u32,
}

impl Entry {
    fn new(version: u64, at: u32, aux: u32) -> Entry {
        Entry {
            version: [version as u32, (version >> 32) as u32],
            at,
            aux,
        }
    }

    pub fn version(&self) -> u64 {
        u64::from(self.version[0]) | (u64::from(self.version[1]) << 32)
    }
}

/// One type's resources, sorted by name id: 16 bytes a resource.
#[derive(Default, Debug)]
pub struct Held(Vec<(u32, Entry)>);

impl Held {
    pub fn get(&self, id: u32) -> Option<&Entry> {
        self.0
            .binary_search_by_key(&id, |(k, _)| *k)
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(u32, Entry)> {
        self.0.iter()
    }

    /// New or changed entries, and names removed.
    fn apply(&mut self, updates: Vec<(u32, Entry)>, removed: &[u32]) {
        let mut added = false;
        for (id, entry) in updates {
            match self.0.binary_search_by_key(&id, |(k, _)| *k) {
                Ok(i) => self.0[i].1 = entry,
                Err(_) => {
                    self.0.push((id, entry));
                    added = true;
                }
            }
        }
        if added {
            self.0.sort_unstable_by_key(|(k, _)| *k);
            self.0.dedup_by_key(|(k, _)| *k);
        }
        if !removed.is_empty() {
            let mut removed = removed.to_vec();
            removed.sort_unstable();
            self.0.retain(|(k, _)| removed.binary_search(k).is_err());
        }
    }

    /// The whole set, as a state-of-the-world response gives it.
    fn replace(&mut self, mut entries: Vec<(u32, Entry)>) {
        entries.sort_unstable_by_key(|(k, _)| *k);
        entries.dedup_by_key(|(k, _)| *k);
        self.0 = entries;
    }

    fn retain_ids(&mut self, keep: &[u32]) {
        self.0.retain(|(k, _)| keep.binary_search(k).is_ok());
    }
}

/// A proxy shape: namespace, labels, mode; clients of one shape get the same configuration.
#[derive(Clone, Debug)]
pub struct Shape {
    pub index: usize,
    pub namespace: String,
    pub app: String,
    pub gateway: bool,
    pub metadata: NodeMetadata,
}

impl Shape {
    pub fn labels_arg(&self) -> String {
        self.metadata
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `count` shapes over the mesh's services (not the shared ones): shape k is a sidecar of
/// service k (its namespace,
/// `app` and `version: v1` labels, its service account); every 50th is an ingress gateway
/// (`istio: ingressgateway`, gateway mode; with fewer than 50 shapes, the last one).
pub fn shapes(count: usize, mesh: &strait_scale::mesh::Mesh) -> Vec<Shape> {
    let count = count.max(1);
    let services = mesh.app_services();
    (0..count)
        .map(|k| {
            let gateway = (k + 1) % 50 == 0 || ((2..50).contains(&count) && k == count - 1);
            let (namespace, app) = match services.get(k % services.len().max(1)) {
                Some(s) if !gateway => (s.namespace.clone(), s.name.clone()),
                _ => (
                    strait_scale::mesh::namespace_name(0),
                    format!("ingress-{k}"),
                ),
            };
            let mut labels = BTreeMap::new();
            labels.insert("app".to_string(), app.clone());
            if gateway {
                let (key, value) = strait_scale::mesh::GATEWAY_LABEL;
                labels.insert(key.to_string(), value.to_string());
            } else {
                labels.insert("version".to_string(), "v1".to_string());
            }
            let metadata = NodeMetadata {
                namespace: namespace.clone(),
                labels,
                service_account: Some(app.clone()),
                mode: if gateway {
                    ProxyMode::Gateway
                } else {
                    ProxyMode::Sidecar
                },
                outbound_port: strait_model::node::DEFAULT_OUTBOUND_PORT,
                gateway_ports: if gateway {
                    BTreeMap::from([(80, 18080)])
                } else {
                    BTreeMap::new()
                },
                ..NodeMetadata::default()
            };
            Shape {
                index: k,
                namespace,
                app,
                gateway,
                metadata,
            }
        })
        .collect()
}

fn to_struct(map: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

fn to_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => value::Kind::NullValue(0),
        serde_json::Value::Bool(b) => value::Kind::BoolValue(*b),
        serde_json::Value::Number(n) => value::Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => value::Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => value::Kind::ListValue(ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(o) => value::Kind::StructValue(to_struct(o)),
    };
    Value { kind: Some(kind) }
}

/// A change being timed: the clients in its scope (which should hold the resource, and the
/// version each held when it was made), for each that has since received another version how
/// long it took and how many bytes of responses it got meanwhile; and which clients outside
/// its scope held or received the resource, which they should not.
pub struct Watch {
    pub type_index: usize,
    pub name: u32,
    pub inner: Mutex<WatchInner>,
}

pub struct WatchInner {
    /// Just before the change was sent.
    pub t0: Instant,
    /// client id -> (version held at t0, or MISSING; bytes received by t0), for the clients in
    /// the change's scope that have not yet received a new version.
    pub pending: HashMap<u32, (u64, u64)>,
    /// Clients in the change's scope.
    pub in_scope: usize,
    /// Of those, how many did not hold the resource at t0 (they should have).
    pub missing_at_t0: usize,
    /// Clients outside the change's scope, a bit per client id.
    outside: Vec<u64>,
    /// Of those, how many held the resource at t0 (they should not have).
    pub held_outside_at_t0: usize,
    /// Clients outside the scope that received a new version of the resource.
    pub received_outside: BTreeSet<u32>,
    /// Seconds from t0 to the ACK of the new version, one per converged client.
    pub latencies: Vec<f64>,
    /// Bytes of responses each converged delta client received from t0 to its ACK.
    pub bytes: Vec<u64>,
    /// The same for state-of-the-world clients (they get the whole type again).
    pub bytes_sotw: Vec<u64>,
    /// The encoded size of the resource's new version.
    pub resource_size: usize,
}

/// Everything clients share.
pub struct Fleet {
    pub epoch: Instant,
    pub xds_uri: String,
    pub window: u32,
    pub connect_timeout: Duration,
    names: Mutex<Interner>,
    /// The mesh's service hosts, by name: what a virtual host's name is read against.
    hosts: HashMap<Box<str>, u32>,
    /// The mesh's clusters (interned names) and the service each is of.
    cluster_services: HashMap<u32, u32>,
    /// Delta versions that are not 16 hex digits, by their hash (to send them back).
    versions: Mutex<HashMap<u64, Box<str>>>,
    watches: Mutex<Vec<Arc<Watch>>>,
    watching: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Fleet {
    pub fn new(xds_uri: String, window: u32, connect_timeout: Duration) -> Fleet {
        Fleet {
            epoch: Instant::now(),
            xds_uri,
            window,
            connect_timeout,
            names: Mutex::default(),
            hosts: HashMap::new(),
            cluster_services: HashMap::new(),
            versions: Mutex::default(),
            watches: Mutex::default(),
            watching: AtomicUsize::new(0),
        }
    }

    pub fn ticks(&self, t: Instant) -> u32 {
        u32::try_from(t.saturating_duration_since(self.epoch).as_micros() / 10).unwrap_or(u32::MAX)
    }

    pub fn instant(&self, ticks: u32) -> Instant {
        self.epoch + Duration::from_micros(u64::from(ticks) * 10)
    }

    pub fn lookup(&self, name: &str) -> Option<u32> {
        lock(&self.names).lookup(name)
    }

    /// Learns the mesh's hosts and cluster names, so that responses can be read against them.
    pub fn know_mesh(&mut self, mesh: &strait_scale::mesh::Mesh) {
        let mut names = lock(&self.names);
        for s in &mesh.services {
            let index = s.index as u32;
            self.hosts.insert(s.host().into(), index);
            for cluster in s.cluster_names() {
                self.cluster_services.insert(names.intern(&cluster), index);
            }
        }
    }

    /// What a client of this expectation must hold, in interned names.
    pub fn expect(&self, e: &crate::scope::Expectation) -> Expect {
        let mut names = lock(&self.names);
        let mut clusters: Vec<u32> = e.clusters.iter().map(|c| names.intern(c)).collect();
        clusters.sort_unstable();
        Expect {
            visible: e.visible.clone(),
            clusters,
            routes: e.routed.as_deref().map(route_digest),
        }
    }

    /// The service a virtual host name (`HOST:PORT` or `HOST`) is for, if one of the mesh's.
    fn service_of_virtual_host(&self, name: &str) -> Option<u32> {
        let host = match name.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => name,
        };
        self.hosts.get(host).copied()
    }

    /// The [`route_digest`] of the services a route configuration's virtual hosts name.
    fn routes_of(&self, any: Option<&lite::Any>) -> (Option<String>, u32) {
        let Some(rc) = any.and_then(|a| lite::RouteConfiguration::decode(a.value.as_slice()).ok())
        else {
            return (None, NONE);
        };
        let mut services: Vec<u32> = rc
            .virtual_hosts
            .iter()
            .filter_map(|v| self.service_of_virtual_host(&v.name))
            .collect();
        services.sort_unstable();
        services.dedup();
        (Some(rc.name), route_digest(&services))
    }

    pub fn name(&self, id: u32) -> String {
        lock(&self.names).name(id).to_string()
    }

    /// A delta version as a number: 16 hex digits (straitd's versions) as they are, anything
    /// else by its hash, kept to be sent back in `initial_resource_versions`.
    fn version_key(&self, version: &str) -> u64 {
        if version.len() == 16
            && let Ok(v) = u64::from_str_radix(version, 16)
        {
            return v;
        }
        let h = xxhash_rust::xxh3::xxh3_64(version.as_bytes());
        lock(&self.versions)
            .entry(h)
            .or_insert_with(|| version.into());
        h
    }

    fn version_string(&self, key: u64) -> String {
        match lock(&self.versions).get(&key) {
            Some(v) => v.to_string(),
            None => format!("{key:016x}"),
        }
    }

    /// Starts timing a change of `name` (of type `type_index`) at every client `in_scope`
    /// says should get it, and watching that no other client does. `outside_may_hold`: the
    /// name is not the service's alone (a sidecar's route configuration `outbound`), so a
    /// client outside the scope holding its own resource of that name is no fault.
    pub fn watch(
        &self,
        type_index: usize,
        name: &str,
        clients: &[Arc<Client>],
        in_scope: impl Fn(&Client) -> bool,
        outside_may_hold: bool,
    ) -> Arc<Watch> {
        let id = self.lookup(name).unwrap_or(NONE);
        let mut pending = HashMap::new();
        let words = clients.iter().map(|c| c.id as usize + 1).max().unwrap_or(0);
        let mut outside = vec![0u64; words.div_ceil(64)];
        let (mut missing, mut held_outside) = (0, 0);
        for c in clients {
            let st = lock(&c.state);
            let held = st.held[type_index].get(id);
            if in_scope(c) {
                pending.insert(c.id, (held.map_or(MISSING, Entry::version), st.bytes));
                missing += usize::from(held.is_none());
            } else {
                outside[c.id as usize / 64] |= 1 << (c.id % 64);
                held_outside += usize::from(held.is_some() && !outside_may_hold);
            }
        }
        let watch = Arc::new(Watch {
            type_index,
            name: id,
            inner: Mutex::new(WatchInner {
                t0: Instant::now(),
                in_scope: pending.len(),
                pending,
                missing_at_t0: missing,
                outside,
                held_outside_at_t0: held_outside,
                received_outside: BTreeSet::new(),
                latencies: Vec::new(),
                bytes: Vec::new(),
                bytes_sotw: Vec::new(),
                resource_size: 0,
            }),
        });
        lock(&self.watches).push(watch.clone());
        self.watching.fetch_add(1, Ordering::AcqRel);
        watch
    }

    pub fn unwatch(&self, watch: &Arc<Watch>) {
        let mut watches = lock(&self.watches);
        let before = watches.len();
        watches.retain(|w| !Arc::ptr_eq(w, watch));
        if watches.len() < before {
            self.watching.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn notify(&self, client: &Client, bytes: u64, changed: &[Changed], now: Instant) {
        let watches = lock(&self.watches);
        for c in changed {
            for w in watches
                .iter()
                .filter(|w| w.type_index == c.type_index && w.name == c.name)
            {
                let mut inner = lock(&w.inner);
                if inner.is_outside(client.id) {
                    inner.received_outside.insert(client.id);
                } else if let Some(&(old, b0)) = inner.pending.get(&client.id)
                    && old != c.version
                {
                    inner.pending.remove(&client.id);
                    let latency = now.saturating_duration_since(inner.t0).as_secs_f64();
                    inner.latencies.push(latency);
                    let received = bytes.saturating_sub(b0);
                    if client.sotw {
                        inner.bytes_sotw.push(received);
                    } else {
                        inner.bytes.push(received);
                    }
                    inner.resource_size = c.size;
                }
            }
        }
    }
}

impl WatchInner {
    pub fn is_outside(&self, client: u32) -> bool {
        self.outside
            .get(client as usize / 64)
            .is_some_and(|w| w & (1 << (client % 64)) != 0)
    }
}

impl Watch {
    pub fn set_t0(&self, t0: Instant) {
        lock(&self.inner).t0 = t0;
    }

    pub fn pending(&self) -> usize {
        lock(&self.inner).pending.len()
    }
}

struct Changed {
    type_index: usize,
    name: u32,
    version: u64,
    size: usize,
}

/// A set of services (indices, ascending, no repeats) in 32 bits: how many in the top 12,
/// the low 20 bits of the XOR of their hashes below. Equal sets give equal digests; unequal
/// ones almost never do.
pub fn route_digest(services: &[u32]) -> u32 {
    let hash = services.iter().fold(0u64, |h, s| {
        h ^ xxhash_rust::xxh3::xxh3_64(&s.to_le_bytes())
    });
    ((services.len().min(0xfff) as u32) << 20) | (hash as u32 & 0xf_ffff)
}

/// How many services a [`route_digest`] is of.
pub fn digest_count(digest: u32) -> u32 {
    digest >> 20
}

/// What a client must hold: its shape's [`crate::scope::Expectation`], names interned.
#[derive(Debug, Default)]
pub struct Expect {
    /// By service index: whether the client sees it.
    pub visible: Vec<bool>,
    /// The clusters (and assignments) it must hold, sorted.
    pub clusters: Vec<u32>,
    /// A sidecar's: the digest of the services its route configurations must name.
    pub routes: Option<u32>,
}

impl Expect {
    pub fn sees(&self, service: usize) -> bool {
        self.visible.get(service).copied().unwrap_or(false)
    }

    pub fn is_sidecar(&self) -> bool {
        self.routes.is_some()
    }
}

/// One client's state; the harness reads it between responses.
#[derive(Default)]
pub struct ClientState {
    pub held: [Held; TYPES],
    /// Names subscribed to (EDS, RDS), sorted.
    pub subscribed: [Vec<u32>; TYPES],
    /// Each listener's route configurations.
    listener_routes: Vec<(u32, Box<[u32]>)>,
    /// Types requested on the current stream, and answered on it.
    pub requested: [bool; TYPES],
    pub answered: [bool; TYPES],
    /// Types requested on any stream: a new stream requests them all again, as Envoy does.
    ever_requested: [bool; TYPES],
    /// State of the world: the last accepted version and nonce per type.
    sotw_version: [String; TYPES],
    sotw_nonce: [String; TYPES],
    /// The fewest resources held per type since the harness last set a mark.
    pub min_held: [usize; TYPES],
    pub connected: bool,
    pub streams: u32,
    /// When the current stream opened, and when it first held a complete config (ticks).
    pub stream_started: u32,
    pub complete_at: Option<u32>,
    pub bytes: u64,
    pub responses: u64,
    pub failures: u32,
    pub last_error: Option<Box<str>>,
}

impl ClientState {
    /// CDS, EDS, LDS and RDS all answered on this stream, every cluster its scope calls for
    /// held, every EDS cluster's assignment and every listener's route configuration held,
    /// nothing asked for still missing.
    fn is_complete(&self, expect: &Expect) -> bool {
        let named_ok = |t: usize| {
            self.subscribed[t].is_empty()
                || (self.requested[t]
                    && self.answered[t]
                    && self.subscribed[t]
                        .iter()
                        .all(|id| self.held[t].get(*id).is_some()))
        };
        self.connected
            && self.requested[CDS]
            && self.answered[CDS]
            && self.requested[LDS]
            && self.answered[LDS]
            && named_ok(EDS)
            && named_ok(RDS)
            && expect
                .clusters
                .iter()
                .all(|id| self.held[CDS].get(*id).is_some())
    }

    pub fn mark(&mut self) {
        for t in 0..TYPES {
            self.min_held[t] = self.held[t].len();
        }
    }

    fn note_held(&mut self, t: usize) {
        self.min_held[t] = self.min_held[t].min(self.held[t].len());
    }

    /// What a change of type `t` calls for: new EDS or RDS subscriptions, and LDS once the
    /// clusters are warm (Envoy asks for listeners after its clusters' endpoints arrive).
    fn resubscribe(&mut self, t: usize) -> Vec<SubChange> {
        let mut changes = Vec::new();
        match t {
            CDS => {
                let mut needed: Vec<u32> = self.held[CDS]
                    .iter()
                    .map(|(_, e)| e.aux)
                    .filter(|a| *a != NONE)
                    .collect();
                needed.sort_unstable();
                needed.dedup();
                self.change_subscription(EDS, needed, &mut changes);
                self.maybe_open_lds(&mut changes);
            }
            EDS => self.maybe_open_lds(&mut changes),
            LDS => {
                let mut needed: Vec<u32> = self
                    .listener_routes
                    .iter()
                    .flat_map(|(_, r)| r.iter().copied())
                    .collect();
                needed.sort_unstable();
                needed.dedup();
                self.change_subscription(RDS, needed, &mut changes);
            }
            _ => {}
        }
        changes
    }

    fn change_subscription(&mut self, t: usize, needed: Vec<u32>, changes: &mut Vec<SubChange>) {
        let open = !self.requested[t] && !needed.is_empty();
        if needed == self.subscribed[t] && !open {
            return;
        }
        let old = std::mem::take(&mut self.subscribed[t]);
        let added: Vec<u32> = needed
            .iter()
            .filter(|n| old.binary_search(n).is_err())
            .copied()
            .collect();
        let removed: Vec<u32> = old
            .iter()
            .filter(|n| needed.binary_search(n).is_err())
            .copied()
            .collect();
        // What is no longer subscribed is dropped, as Envoy drops a removed cluster's endpoints.
        self.held[t].retain_ids(&needed);
        self.note_held(t);
        self.subscribed[t] = needed;
        if open {
            self.requested[t] = true;
            self.ever_requested[t] = true;
        }
        if open || !added.is_empty() || !removed.is_empty() {
            changes.push(SubChange {
                type_index: t,
                open,
                added,
                removed,
            });
        }
    }

    fn maybe_open_lds(&mut self, changes: &mut Vec<SubChange>) {
        if self.requested[LDS] || !self.answered[CDS] {
            return;
        }
        let eds_warm = self.subscribed[EDS].is_empty()
            || (self.answered[EDS]
                && self.subscribed[EDS]
                    .iter()
                    .all(|id| self.held[EDS].get(*id).is_some()));
        if eds_warm {
            self.requested[LDS] = true;
            self.ever_requested[LDS] = true;
            changes.push(SubChange {
                type_index: LDS,
                open: true,
                added: Vec::new(),
                removed: Vec::new(),
            });
        }
    }
}

struct SubChange {
    type_index: usize,
    open: bool,
    added: Vec<u32>,
    removed: Vec<u32>,
}

/// One simulated Envoy.
pub struct Client {
    pub id: u32,
    pub node_id: String,
    pub shape: usize,
    pub sotw: bool,
    /// What it must hold, by the harness's reading of the mesh.
    pub expect: Arc<Expect>,
    node: Node,
    pub state: Mutex<ClientState>,
    stop: watch::Sender<bool>,
}

impl Client {
    pub fn new(id: u32, shape: &Shape, sotw: bool, expect: Arc<Expect>) -> Client {
        let node_id = format!("sim-{id}.{}", shape.namespace);
        let node = Node {
            id: node_id.clone(),
            cluster: format!("{}.{}", shape.app, shape.namespace),
            metadata: Some(to_struct(&shape.metadata.to_json())),
            user_agent_name: "strait-scale".to_string(),
            ..Node::default()
        };
        Client {
            id,
            node_id,
            shape: shape.index,
            sotw,
            expect,
            node,
            state: Mutex::new(ClientState::default()),
            stop: watch::Sender::new(false),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, ClientState> {
        lock(&self.state)
    }

    /// Asks the client to close its stream and connection, and not to reconnect.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Forgets everything it held, as a new Envoy would start.
    pub fn reset(&self) {
        *self.state() = ClientState::default();
    }

    /// Lets a stopped client be run again (its resources are kept, as across a reconnect).
    pub fn rearm(&self) {
        self.stop.send_replace(false);
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// Resolves once the client is asked to stop.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Envoy's jittered exponential backoff.
struct Backoff {
    next_ms: u64,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next_ms: BACKOFF_BASE.as_millis() as u64,
        }
    }

    fn next(&mut self) -> Duration {
        let max = BACKOFF_MAX.as_millis() as u64;
        let current = self.next_ms.max(1);
        self.next_ms = if current < max / 2 { current * 2 } else { max };
        Duration::from_millis(fastrand::u64(0..current).min(max))
    }

    fn reset(&mut self) {
        self.next_ms = BACKOFF_BASE.as_millis() as u64;
    }
}

/// Runs the client until it is stopped: connect, stream, and on any break reconnect after
/// Envoy's backoff.
pub async fn run(fleet: Arc<Fleet>, client: Arc<Client>) {
    let mut backoff = Backoff::new();
    let mut stop = client.stop.subscribe();
    while !client.stopping() {
        let result = if client.sotw {
            session::<Sotw>(&fleet, &client, &mut backoff, &mut stop).await
        } else {
            session::<Delta>(&fleet, &client, &mut backoff, &mut stop).await
        };
        {
            let mut st = client.state();
            st.connected = false;
            st.requested = [false; TYPES];
            st.answered = [false; TYPES];
            st.complete_at = None;
            if let Err(e) = result {
                st.failures += 1;
                st.last_error = Some(format!("{e:#}").into());
            }
        }
        if client.stopping() {
            break;
        }
        let delay = backoff.next();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(&mut stop) => break,
        }
    }
}

/// A protocol variant: how requests are made and responses taken in.
trait Protocol {
    type Request: Message + Send + Sync + 'static;
    type Response: Message + Default + Send + 'static;
    const PATH: &'static str;

    /// The requests a new stream starts with.
    fn initial(fleet: &Fleet, client: &Client, st: &mut ClientState) -> Vec<Self::Request>;

    /// Takes in a response; pushes the ACK and any subscription changes to `out`.
    fn on_response(
        fleet: &Fleet,
        st: &mut ClientState,
        response: Self::Response,
        out: &mut Vec<Self::Request>,
        changed: &mut Vec<Changed>,
    );
}

async fn session<P: Protocol>(
    fleet: &Fleet,
    client: &Client,
    backoff: &mut Backoff,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let endpoint = tonic::transport::Endpoint::from_shared(fleet.xds_uri.clone())
        .context("xDS address")?
        .connect_timeout(fleet.connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(fleet.window)
        .initial_connection_window_size(fleet.window);
    let channel = tokio::select! {
        c = endpoint.connect() => c.context("connecting")?,
        () = stopped(stop) => return Ok(()),
    };
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    grpc.ready().await.context("channel ready")?;
    let (tx, rx) = mpsc::unbounded_channel::<P::Request>();
    {
        let mut st = client.state();
        st.streams += 1;
        st.stream_started = fleet.ticks(Instant::now());
        st.complete_at = None;
        st.requested = [false; TYPES];
        st.answered = [false; TYPES];
        for request in P::initial(fleet, client, &mut st) {
            let _ = tx.send(request);
        }
    }
    let path = PathAndQuery::from_static(P::PATH);
    let codec = XdsCodec::<P::Request, P::Response>(PhantomData);
    let response = tokio::select! {
        r = grpc.streaming(tonic::Request::new(UnboundedReceiverStream::new(rx)), path, codec) => r.context("opening the ADS stream")?,
        () = stopped(stop) => return Ok(()),
    };
    client.state().connected = true;
    let mut inbound = response.into_inner();
    let mut out = Vec::new();
    let mut changed = Vec::new();
    loop {
        let message = tokio::select! {
            m = inbound.message() => m.context("ADS stream")?,
            () = stopped(stop) => return Ok(()),
        };
        let Some((response, len)) = message else {
            anyhow::bail!("the server ended the ADS stream");
        };
        backoff.reset();
        let bytes = {
            let mut st = client.state();
            st.bytes += len as u64;
            st.responses += 1;
            P::on_response(fleet, &mut st, response, &mut out, &mut changed);
            for request in out.drain(..) {
                let _ = tx.send(request);
            }
            if st.complete_at.is_none() && st.is_complete(&client.expect) {
                st.complete_at = Some(fleet.ticks(Instant::now()));
            }
            st.bytes
        };
        if !changed.is_empty() {
            if fleet.watching.load(Ordering::Acquire) > 0 {
                fleet.notify(client, bytes, &changed, Instant::now());
            }
            changed.clear();
        }
    }
}

/// Reads a cluster's EDS service name (the cluster's own name when it sets none).
fn eds_service(any: Option<&lite::Any>) -> Option<(String, Option<String>)> {
    let cluster = lite::Cluster::decode(any?.value.as_slice()).ok()?;
    let eds = (cluster.discovery_type == DISCOVERY_EDS).then(|| {
        match cluster.eds_cluster_config.map(|e| e.service_name) {
            Some(s) if !s.is_empty() => s,
            _ => cluster.name.clone(),
        }
    });
    Some((cluster.name, eds))
}

/// A listener's name and the route configurations its HTTP connection managers take over RDS.
fn listener_routes(any: Option<&lite::Any>) -> Option<(String, Vec<String>)> {
    let listener = lite::Listener::decode(any?.value.as_slice()).ok()?;
    let routes = listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.iter())
        .flat_map(|c| c.filters.iter())
        .filter_map(|f| f.typed_config.as_ref())
        .filter(|a| a.type_url == HCM_TYPE)
        .filter_map(|a| lite::HttpConnectionManager::decode(a.value.as_slice()).ok())
        .filter_map(|h| h.rds.map(|r| r.route_config_name))
        .filter(|n| !n.is_empty())
        .collect();
    Some((listener.name, routes))
}

/// Keeps `listener_routes` for one listener (`None` removes it).
fn set_routes(st: &mut ClientState, listener: u32, routes: Option<Vec<u32>>) {
    st.listener_routes.retain(|(l, _)| *l != listener);
    if let Some(routes) = routes {
        st.listener_routes.push((listener, routes.into()));
    }
}

struct Delta;

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = lite::DeltaResponse;
    const PATH: &'static str =
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

    fn initial(fleet: &Fleet, client: &Client, st: &mut ClientState) -> Vec<Self::Request> {
        let mut requests = Vec::new();
        let mut open = st.ever_requested;
        open[CDS] = true;
        let names = lock(&fleet.names);
        for t in (0..TYPES).filter(|t| open[*t]) {
            st.requested[t] = true;
            st.ever_requested[t] = true;
            let initial_resource_versions = st.held[t]
                .iter()
                .map(|(id, e)| {
                    (
                        names.name(*id).to_string(),
                        fleet.version_string(e.version()),
                    )
                })
                .collect();
            requests.push(DeltaDiscoveryRequest {
                node: requests.is_empty().then(|| client.node.clone()),
                type_url: TYPE_URLS[t].to_string(),
                resource_names_subscribe: st.subscribed[t]
                    .iter()
                    .map(|id| names.name(*id).to_string())
                    .collect(),
                initial_resource_versions,
                ..Default::default()
            });
        }
        requests
    }

    fn on_response(
        fleet: &Fleet,
        st: &mut ClientState,
        response: lite::DeltaResponse,
        out: &mut Vec<Self::Request>,
        changed: &mut Vec<Changed>,
    ) {
        let Some(t) = type_index(&response.type_url) else {
            out.push(DeltaDiscoveryRequest {
                type_url: response.type_url,
                response_nonce: response.nonce,
                ..Default::default()
            });
            return;
        };
        let now = fleet.ticks(Instant::now());
        let mut updates = Vec::with_capacity(response.resources.len());
        let removed: Vec<u32>;
        {
            let mut names = lock(&fleet.names);
            for r in &response.resources {
                let id = names.intern(&r.name);
                let version = fleet.version_key(&r.version);
                let any = r.resource.as_ref();
                let mut aux = NONE;
                match t {
                    CDS => {
                        if let Some((_, Some(service))) = eds_service(any) {
                            aux = names.intern(&service);
                        }
                    }
                    LDS => {
                        let routes = listener_routes(any)
                            .map(|(_, r)| r.iter().map(|n| names.intern(n)).collect());
                        set_routes(st, id, routes);
                    }
                    RDS => aux = fleet.routes_of(any).1,
                    _ => {}
                }
                let previous = st.held[t].get(id).copied();
                let at = match previous {
                    Some(p) if p.version() == version => p.at,
                    _ => {
                        changed.push(Changed {
                            type_index: t,
                            name: id,
                            version,
                            size: any.map_or(0, |a| a.value.len()),
                        });
                        now
                    }
                };
                updates.push((id, Entry::new(version, at, aux)));
            }
            removed = response
                .removed_resources
                .iter()
                .filter_map(|n| names.lookup(n))
                .collect();
        }
        st.held[t].apply(updates, &removed);
        if t == LDS {
            for id in &removed {
                set_routes(st, *id, None);
            }
        }
        st.note_held(t);
        st.answered[t] = true;
        out.push(DeltaDiscoveryRequest {
            type_url: response.type_url,
            response_nonce: response.nonce,
            ..Default::default()
        });
        let changes = st.resubscribe(t);
        if changes.is_empty() {
            return;
        }
        let names = lock(&fleet.names);
        for c in changes {
            out.push(DeltaDiscoveryRequest {
                type_url: TYPE_URLS[c.type_index].to_string(),
                resource_names_subscribe: c
                    .added
                    .iter()
                    .map(|id| names.name(*id).to_string())
                    .collect(),
                resource_names_unsubscribe: c
                    .removed
                    .iter()
                    .map(|id| names.name(*id).to_string())
                    .collect(),
                ..Default::default()
            });
        }
    }
}

struct Sotw;

impl Sotw {
    fn request(
        names: &Interner,
        st: &ClientState,
        t: usize,
        node: Option<Node>,
    ) -> DiscoveryRequest {
        DiscoveryRequest {
            node,
            version_info: st.sotw_version[t].clone(),
            resource_names: st.subscribed[t]
                .iter()
                .map(|id| names.name(*id).to_string())
                .collect(),
            type_url: TYPE_URLS[t].to_string(),
            response_nonce: st.sotw_nonce[t].clone(),
            ..Default::default()
        }
    }
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = lite::SotwResponse;
    const PATH: &'static str =
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

    fn initial(fleet: &Fleet, client: &Client, st: &mut ClientState) -> Vec<Self::Request> {
        let mut requests = Vec::new();
        let mut open = st.ever_requested;
        open[CDS] = true;
        let names = lock(&fleet.names);
        for t in (0..TYPES).filter(|t| open[*t]) {
            st.requested[t] = true;
            st.ever_requested[t] = true;
            // A new stream: the last accepted version, no nonce (nonces belong to a stream).
            st.sotw_nonce[t].clear();
            let node = requests.is_empty().then(|| client.node.clone());
            requests.push(Sotw::request(&names, st, t, node));
        }
        requests
    }

    fn on_response(
        fleet: &Fleet,
        st: &mut ClientState,
        response: lite::SotwResponse,
        out: &mut Vec<Self::Request>,
        changed: &mut Vec<Changed>,
    ) {
        let Some(t) = type_index(&response.type_url) else {
            out.push(DiscoveryRequest {
                version_info: response.version_info,
                type_url: response.type_url,
                response_nonce: response.nonce,
                ..Default::default()
            });
            return;
        };
        let now = fleet.ticks(Instant::now());
        let mut entries = Vec::with_capacity(response.resources.len());
        let mut routes = Vec::new();
        {
            let mut names = lock(&fleet.names);
            for any in &response.resources {
                let (name, aux) = match t {
                    CDS => match eds_service(Some(any)) {
                        Some((name, eds)) => (name, eds.map_or(NONE, |s| names.intern(&s))),
                        None => continue,
                    },
                    LDS => match listener_routes(Some(any)) {
                        Some((name, r)) => {
                            let id = names.intern(&name);
                            routes.push((id, r.iter().map(|n| names.intern(n)).collect()));
                            (name, NONE)
                        }
                        None => continue,
                    },
                    RDS => match fleet.routes_of(Some(any)) {
                        (Some(name), digest) => (name, digest),
                        (None, _) => continue,
                    },
                    _ => match lite::Named::decode(any.value.as_slice()) {
                        Ok(n) => (n.name, NONE),
                        Err(_) => continue,
                    },
                };
                let id = names.intern(&name);
                let version = xxhash_rust::xxh3::xxh3_64(&any.value);
                let at = match st.held[t].get(id) {
                    Some(p) if p.version() == version => p.at,
                    _ => {
                        changed.push(Changed {
                            type_index: t,
                            name: id,
                            version,
                            size: any.value.len(),
                        });
                        now
                    }
                };
                entries.push((id, Entry::new(version, at, aux)));
            }
        }
        st.held[t].replace(entries);
        if t == LDS {
            st.listener_routes = routes
                .into_iter()
                .map(|(id, r): (u32, Vec<u32>)| (id, r.into()))
                .collect();
        }
        st.note_held(t);
        st.answered[t] = true;
        st.sotw_version[t] = response.version_info;
        st.sotw_nonce[t] = response.nonce;
        let changes = st.resubscribe(t);
        let names = lock(&fleet.names);
        out.push(Sotw::request(&names, st, t, None));
        for c in changes {
            if c.open {
                st.sotw_version[c.type_index].clear();
                st.sotw_nonce[c.type_index].clear();
            }
            out.push(Sotw::request(&names, st, c.type_index, None));
        }
    }
}

/// Counts over the fleet, read under each client's lock in turn.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FleetCounts {
    pub clients: usize,
    pub connected: usize,
    pub complete: usize,
    pub failures: u64,
    pub bytes: u64,
    pub responses: u64,
}

pub fn counts(clients: &[Arc<Client>]) -> FleetCounts {
    let mut c = FleetCounts {
        clients: clients.len(),
        ..FleetCounts::default()
    };
    for client in clients {
        let st = client.state();
        c.connected += usize::from(st.connected);
        c.complete += usize::from(st.complete_at.is_some());
        c.failures += u64::from(st.failures);
        c.bytes += st.bytes;
        c.responses += st.responses;
    }
    c
}

/// The last errors clients saw, most common first (for the report when something fails).
pub fn error_summary(clients: &[Arc<Client>], limit: usize) -> Vec<(String, usize)> {
    let mut errors: HashMap<String, usize> = HashMap::new();
    for client in clients {
        if let Some(e) = &client.state().last_error {
            *errors.entry(e.to_string()).or_default() += 1;
        }
    }
    let mut errors: Vec<_> = errors.into_iter().collect();
    errors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    errors.truncate(limit);
    errors
}

/// Whether the clients hold what their scopes call for: a cluster and an assignment for every
/// service they see and for none they do not, and (sidecars) route configurations naming
/// exactly the services they see.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ScopeCheck {
    pub after: String,
    pub clients: usize,
    /// Clients holding exactly what their scope calls for.
    pub as_expected: usize,
    /// Clients lacking a cluster or assignment of a service they see.
    pub missing: usize,
    /// Clients holding a cluster or assignment of a service outside their scope.
    pub outside: usize,
    /// Sidecars with a route configuration naming other services than their scope's.
    pub routes_differ: usize,
    pub examples: Vec<String>,
}

impl ScopeCheck {
    pub fn faults(&self) -> usize {
        self.clients - self.as_expected
    }
}

/// Reads every client's resources against its expectation.
pub fn check_scopes(fleet: &Fleet, clients: &[Arc<Client>], after: &str) -> ScopeCheck {
    let mut check = ScopeCheck {
        after: after.to_string(),
        clients: clients.len(),
        ..ScopeCheck::default()
    };
    for c in clients {
        let st = c.state();
        let e = &c.expect;
        let mut missing = Vec::new();
        for t in [CDS, EDS] {
            missing.extend(
                e.clusters
                    .iter()
                    .filter(|id| st.held[t].get(**id).is_none())
                    .map(|id| (t, *id)),
            );
        }
        let mut outside = Vec::new();
        for t in [CDS, EDS] {
            outside.extend(
                st.held[t]
                    .iter()
                    .filter(|(id, _)| {
                        fleet
                            .cluster_services
                            .get(id)
                            .is_some_and(|s| !e.sees(*s as usize))
                    })
                    .map(|(id, _)| (t, *id)),
            );
        }
        let routes: Vec<(u32, u32)> = match e.routes {
            Some(want) => st.held[RDS]
                .iter()
                .filter(|(_, entry)| entry.aux != want)
                .map(|(id, entry)| (*id, entry.aux))
                .collect(),
            None => Vec::new(),
        };
        check.missing += usize::from(!missing.is_empty());
        check.outside += usize::from(!outside.is_empty());
        check.routes_differ += usize::from(!routes.is_empty());
        if missing.is_empty() && outside.is_empty() && routes.is_empty() {
            check.as_expected += 1;
            continue;
        }
        if check.examples.len() < 5 {
            let mut what = Vec::new();
            let first = |v: &[(usize, u32)]| {
                v.first()
                    .map(|(t, id)| format!("{} {}", TYPE_NAMES[*t], fleet.name(*id)))
                    .unwrap_or_default()
            };
            if !missing.is_empty() {
                what.push(format!(
                    "{} missing (e.g. {})",
                    missing.len(),
                    first(&missing)
                ));
            }
            if !outside.is_empty() {
                what.push(format!(
                    "{} outside its scope (e.g. {})",
                    outside.len(),
                    first(&outside)
                ));
            }
            for (id, digest) in routes.iter().take(2) {
                what.push(format!(
                    "route {} names {} services, its scope {} (or others)",
                    fleet.name(*id),
                    digest_count(*digest),
                    e.routes.map_or(0, digest_count)
                ));
            }
            check
                .examples
                .push(format!("{}: {}", c.node_id, what.join("; ")));
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_keeps_names_sorted_through_updates_and_removals() {
        let mut h = Held::default();
        h.apply(
            vec![(5, Entry::new(1, 0, NONE)), (2, Entry::new(2, 0, NONE))],
            &[],
        );
        h.apply(
            vec![(9, Entry::new(3, 0, NONE)), (2, Entry::new(4, 7, NONE))],
            &[5],
        );
        let ids: Vec<u32> = h.iter().map(|(k, _)| *k).collect();
        assert_eq!(ids, vec![2, 9]);
        assert_eq!(h.get(2).map(Entry::version), Some(4));
        assert_eq!(h.get(2).map(|e| e.at), Some(7));
        assert!(h.get(5).is_none());
        h.replace(vec![(3, Entry::new(u64::MAX, 1, 8))]);
        assert_eq!(h.len(), 1);
        assert_eq!(h.get(3).map(Entry::version), Some(u64::MAX));
    }

    #[test]
    fn subscriptions_follow_envoys_order() {
        // CDS brings two EDS clusters (one with its own service name) and a static one.
        let mut st = ClientState {
            connected: true,
            ..ClientState::default()
        };
        st.requested[CDS] = true;
        st.answered[CDS] = true;
        st.held[CDS].apply(
            vec![
                (1, Entry::new(1, 0, 10)),
                (2, Entry::new(1, 0, 11)),
                (3, Entry::new(1, 0, NONE)),
            ],
            &[],
        );
        let changes = st.resubscribe(CDS);
        assert_eq!(changes.len(), 1, "EDS first; LDS waits for the endpoints");
        assert_eq!(changes[0].type_index, EDS);
        assert!(changes[0].open);
        assert_eq!(changes[0].added, vec![10, 11]);
        assert!(!st.requested[LDS]);
        // One assignment in: still waiting. Both: LDS opens.
        st.answered[EDS] = true;
        st.held[EDS].apply(vec![(10, Entry::new(1, 0, NONE))], &[]);
        assert!(st.resubscribe(EDS).is_empty());
        st.held[EDS].apply(vec![(11, Entry::new(1, 0, NONE))], &[]);
        let changes = st.resubscribe(EDS);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].type_index, LDS);
        let none = Expect::default();
        assert!(!st.is_complete(&none));
        // The listener names a route: RDS opens; complete once it is held.
        st.answered[LDS] = true;
        st.listener_routes = vec![(20, vec![30].into())];
        let changes = st.resubscribe(LDS);
        assert_eq!((changes[0].type_index, changes[0].open), (RDS, true));
        assert!(!st.is_complete(&none));
        st.answered[RDS] = true;
        st.held[RDS].apply(vec![(30, Entry::new(1, 0, NONE))], &[]);
        assert!(st.is_complete(&none));
        // Complete only once every cluster the scope calls for is held.
        let more = Expect {
            clusters: vec![1, 2, 4],
            ..Expect::default()
        };
        assert!(!st.is_complete(&more));
        st.held[CDS].apply(vec![(4, Entry::new(1, 0, NONE))], &[]);
        assert!(st.is_complete(&more));
        st.held[CDS].apply(Vec::new(), &[4]);
        // A cluster goes away: its assignment is unsubscribed and dropped.
        st.held[CDS].apply(Vec::new(), &[2]);
        let changes = st.resubscribe(CDS);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].removed, vec![11]);
        assert!(st.held[EDS].get(11).is_none());
        assert!(st.is_complete(&none));
    }

    fn scoped_fleet() -> (strait_scale::mesh::Mesh, Vec<Shape>, Fleet) {
        let mesh = strait_scale::mesh::Mesh::generate(40, 4, 2, 0.5, 2).scoped(1);
        let shapes = shapes(8, &mesh);
        let mut fleet = Fleet::new("http://127.0.0.1:1".into(), 65535, Duration::from_secs(1));
        fleet.know_mesh(&mesh);
        (mesh, shapes, fleet)
    }

    fn client_of(
        fleet: &Fleet,
        mesh: &strait_scale::mesh::Mesh,
        id: u32,
        shape: &Shape,
    ) -> Arc<Client> {
        let expect = fleet.expect(&crate::scope::Expectation::of(mesh, shape));
        Arc::new(Client::new(id, shape, false, Arc::new(expect)))
    }

    /// Holds `names` in CDS and EDS, and one route configuration naming `routed`.
    fn hold(fleet: &Fleet, client: &Client, names: &[String], routed: &[u32]) {
        let mut st = client.state();
        let ids: Vec<(u32, Entry)> = names
            .iter()
            .map(|n| (lock(&fleet.names).intern(n), Entry::new(1, 0, NONE)))
            .collect();
        st.held[CDS].replace(ids.clone());
        st.held[EDS].replace(ids);
        let route = lock(&fleet.names).intern("outbound");
        st.held[RDS].replace(vec![(route, Entry::new(1, 0, route_digest(routed)))]);
    }

    #[test]
    fn a_route_configuration_is_read_as_the_services_its_virtual_hosts_name() {
        use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
        let (mesh, _, fleet) = scoped_fleet();
        let vhost = |name: &str| VirtualHost {
            name: name.into(),
            domains: vec![name.into()],
            ..Default::default()
        };
        let rc = RouteConfiguration {
            name: "outbound".into(),
            virtual_hosts: vec![
                vhost(&format!("{}:9080", mesh.services[7].host())),
                vhost("allow_any"),
                vhost(&mesh.services[41].host()),
                vhost(&format!("{}:9080", mesh.services[3].host())),
                vhost("unknown.example.com:9080"),
            ],
            ..Default::default()
        };
        let any = lite::Any {
            type_url: TYPE_URLS[RDS].into(),
            value: rc.encode_to_vec(),
        };
        let (name, digest) = fleet.routes_of(Some(&any));
        assert_eq!(name.as_deref(), Some("outbound"));
        assert_eq!(digest, route_digest(&[3, 7, 41]));
        assert_eq!(digest_count(digest), 3);
        assert_ne!(digest, route_digest(&[3, 7]));
        assert_ne!(digest, route_digest(&[3, 7, 40]));
    }

    #[test]
    fn the_scope_check_finds_what_is_missing_or_outside() {
        let (mesh, shapes, fleet) = scoped_fleet();
        let sidecar = &shapes[1];
        assert!(!sidecar.gateway);
        let e = crate::scope::Expectation::of(&mesh, sidecar);
        let routed = e.routed.clone().expect("a sidecar");
        let good = client_of(&fleet, &mesh, 0, sidecar);
        hold(&fleet, &good, &e.clusters, &routed);
        // one cluster of a service outside its scope, one of its own missing, a route short
        let outside = mesh
            .services
            .iter()
            .find(|s| !e.sees(s.index))
            .expect("a service it does not see");
        let bad = client_of(&fleet, &mesh, 1, sidecar);
        let mut names = e.clusters[1..].to_vec();
        names.push(outside.cluster_name());
        hold(&fleet, &bad, &names, &routed[1..]);
        // Other clusters (BlackHoleCluster, inbound ones) are not the scope's business.
        let extra = client_of(&fleet, &mesh, 2, sidecar);
        let mut names = e.clusters.clone();
        names.push("BlackHoleCluster".into());
        hold(&fleet, &extra, &names, &routed);
        let check = check_scopes(&fleet, &[good, bad, extra], "test");
        assert_eq!(check.clients, 3);
        assert_eq!(check.as_expected, 2);
        assert_eq!(
            (check.missing, check.outside, check.routes_differ),
            (1, 1, 1)
        );
        assert_eq!(check.faults(), 1);
        assert!(
            check.examples[0].starts_with("sim-1."),
            "{:?}",
            check.examples
        );
        assert!(check.examples[0].contains(&outside.cluster_name()));
    }

    #[test]
    fn a_watch_waits_for_the_scope_and_counts_what_reaches_outside_it() {
        let (mesh, shapes, fleet) = scoped_fleet();
        let svc = &mesh.services[0];
        let clients: Vec<Arc<Client>> = shapes
            .iter()
            .enumerate()
            .map(|(i, shape)| client_of(&fleet, &mesh, i as u32, shape))
            .collect();
        // Everyone holds svc-0's assignment, so the ones outside its scope hold it wrongly.
        let id = lock(&fleet.names).intern(&svc.cluster_name());
        for c in &clients {
            c.state().held[EDS].replace(vec![(id, Entry::new(5, 0, NONE))]);
        }
        let sees = |c: &Client| c.expect.sees(0);
        let inside = clients.iter().filter(|c| sees(c)).count();
        assert!(inside > 0 && inside < clients.len(), "{inside}");
        let watch = fleet.watch(EDS, &svc.cluster_name(), &clients, sees, false);
        assert_eq!(watch.pending(), inside);
        let changed = |version| {
            vec![Changed {
                type_index: EDS,
                name: id,
                version,
                size: 10,
            }]
        };
        for c in &clients {
            // The same version again is no change; a new one is.
            fleet.notify(c, 100, &changed(5), Instant::now());
            fleet.notify(c, 200, &changed(6), Instant::now());
        }
        let inner = lock(&watch.inner);
        assert!(inner.pending.is_empty());
        assert_eq!(inner.latencies.len(), inside);
        assert_eq!(inner.held_outside_at_t0, clients.len() - inside);
        assert_eq!(inner.missing_at_t0, 0);
        assert_eq!(inner.received_outside.len(), clients.len() - inside);
        assert!(clients.iter().all(|c| inner.is_outside(c.id) != sees(c)));
    }

    #[test]
    fn versions_round_trip() {
        let fleet = Fleet::new("http://127.0.0.1:1".into(), 65535, Duration::from_secs(1));
        for v in ["00ff00ff00ff00ff", "7", "not-hex-but-16ch", ""] {
            assert_eq!(fleet.version_string(fleet.version_key(v)), v);
        }
    }

    #[test]
    fn backoff_is_envoys_jittered_exponential() {
        let mut b = Backoff::new();
        let mut ceiling = 500;
        for _ in 0..12 {
            let d = b.next().as_millis() as u64;
            assert!(d < ceiling.max(1), "{d} >= {ceiling}");
            ceiling = (ceiling * 2).min(30_000);
        }
        assert_eq!(b.next_ms, 30_000);
        b.reset();
        assert!(b.next() < Duration::from_millis(500));
    }

    #[test]
    fn cluster_and_listener_fields_are_read_from_the_full_messages() {
        use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
        use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, Rds, http_connection_manager::RouteSpecifier,
        };
        let cluster = Cluster {
            name: "outbound|9080||a".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                service_name: "outbound|9080||a-eds".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = lite::Any {
            type_url: TYPE_URLS[CDS].into(),
            value: cluster.encode_to_vec(),
        };
        assert_eq!(
            eds_service(Some(&any)),
            Some((
                "outbound|9080||a".to_string(),
                Some("outbound|9080||a-eds".to_string())
            ))
        );
        let hcm = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: "outbound".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let listener = Listener {
            name: "outbound_15001".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(
                        envoy_types::pb::google::protobuf::Any {
                            type_url: HCM_TYPE.into(),
                            value: hcm.encode_to_vec(),
                        },
                    )),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let any = lite::Any {
            type_url: TYPE_URLS[LDS].into(),
            value: listener.encode_to_vec(),
        };
        assert_eq!(
            listener_routes(Some(&any)),
            Some(("outbound_15001".to_string(), vec!["outbound".to_string()]))
        );
    }
}
