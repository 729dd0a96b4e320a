//! A real tonic server on 127.0.0.1:0 with the ADS service, and real ADS clients driving it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prometheus_client::registry::Registry;
use prost::Message;
use strait_xds::snapshot::{
    CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, Resources, Snapshot,
};
use strait_xds::status::ProxyStatus;
use strait_xds::{AdsServer, NodeEvent, SnapshotCache, XdsMetrics};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Streaming;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(300);

pub struct Harness {
    pub cache: SnapshotCache,
    pub server: AdsServer,
    pub events: mpsc::UnboundedReceiver<NodeEvent>,
    pub registry: Registry,
    client: AggregatedDiscoveryServiceClient<Channel>,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with_admission(strait_xds::server::DEFAULT_ADMISSION_LIMIT).await
    }

    /// A server letting `limit` streams at once through their initial sync.
    pub async fn start_with_admission(limit: usize) -> Self {
        let cache = SnapshotCache::new();
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut registry = Registry::default();
        let metrics = XdsMetrics::new(&mut registry);
        let server = AdsServer::new(cache.clone(), events_tx, metrics).with_admission_limit(limit);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = server.service();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            cache,
            server,
            events,
            registry,
            client: AggregatedDiscoveryServiceClient::new(channel),
        }
    }

    pub fn set(&self, node_id: &str, resources: Resources) -> bool {
        self.cache
            .set(node_id, Arc::new(Snapshot::build(resources).unwrap()))
    }

    pub async fn sotw(&self) -> Client<DiscoveryRequest, DiscoveryResponse> {
        let (tx, rx) = mpsc::channel(16);
        let responses = self
            .client
            .clone()
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Client { tx, responses }
    }

    pub async fn delta(&self) -> Client<DeltaDiscoveryRequest, DeltaDiscoveryResponse> {
        let (tx, rx) = mpsc::channel(16);
        let responses = self
            .client
            .clone()
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Client { tx, responses }
    }

    pub async fn event(&mut self) -> NodeEvent {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("node event in time")
            .expect("events channel open")
    }

    /// The next event about rejections (`Rejected` or `Recovered`), skipping connects.
    pub async fn rejection_event(&mut self) -> NodeEvent {
        loop {
            match self.event().await {
                NodeEvent::Connected { .. } | NodeEvent::Disconnected { .. } => continue,
                event => return event,
            }
        }
    }

    pub fn no_event(&mut self) {
        assert!(self.events.try_recv().is_err(), "unexpected node event");
    }

    /// The status of the only stream of `node_id`.
    pub fn status(&self, node_id: &str) -> ProxyStatus {
        let mut matching: Vec<_> = self
            .server
            .proxies()
            .into_iter()
            .filter(|p| p.node_id == node_id)
            .collect();
        assert_eq!(matching.len(), 1, "one stream for {node_id}");
        matching.remove(0)
    }

    /// The clusters the only stream of `node_id` has acknowledged, as `AdsServer::held`
    /// tells them (decoded from the encodings it keeps).
    pub fn held_clusters(&self, node_id: &str) -> Vec<Cluster> {
        let mut held = self.server.held(node_id);
        assert_eq!(held.len(), 1, "one stream for {node_id}");
        let held = held.remove(0);
        held.types
            .get(CLUSTER_TYPE)
            .cloned()
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .map(|r| Cluster::decode(r.bytes.expect("a version the server keeps")).unwrap())
            .collect()
    }

    /// Polls until `proxies()` reaches `count` entries (streams clean up asynchronously).
    pub async fn wait_for_proxies(&self, count: usize) {
        tokio::time::timeout(WAIT, async {
            while self.server.proxies().len() != count {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("proxy count reached in time");
    }

    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }
}

pub struct Client<Req, Resp> {
    tx: mpsc::Sender<Req>,
    responses: Streaming<Resp>,
}

impl<Req, Resp> Client<Req, Resp> {
    pub async fn send(&self, request: Req) {
        self.tx.send(request).await.unwrap();
    }

    pub async fn recv(&mut self) -> Resp {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("response in time")
            .expect("stream healthy")
            .expect("stream open")
    }

    pub async fn quiet(&mut self) {
        if let Ok(message) = tokio::time::timeout(QUIET, self.responses.message()).await {
            let kind = match message {
                Ok(Some(_)) => "a response",
                Ok(None) => "end of stream",
                Err(_) => "an error",
            };
            panic!("expected no message, got {kind}");
        }
    }

    /// The error status the stream ends with.
    pub async fn error(&mut self) -> tonic::Status {
        match tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("stream end in time")
        {
            Err(status) => status,
            Ok(Some(_)) => panic!("expected an error, got a response"),
            Ok(None) => panic!("expected an error, got a clean end of stream"),
        }
    }

    /// Half-closes the request side, as a client does when it goes away.
    pub fn close(self) {}
}

pub fn node(id: &str) -> Node {
    Node {
        id: id.to_string(),
        cluster: "web".into(),
        user_agent_name: "envoy".into(),
        metadata: Some(Struct {
            fields: [(
                "NAMESPACE".to_string(),
                Value {
                    kind: Some(value::Kind::StringValue("default".into())),
                },
            )]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    }
}

pub fn request(type_url: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.to_string(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

/// The first request of a stream carries the node.
pub fn first(node_id: &str, type_url: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(node(node_id)),
        ..request(type_url, names)
    }
}

pub fn ack(response: &DiscoveryResponse, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: response.version_info.clone(),
        response_nonce: response.nonce.clone(),
        ..request(&response.type_url, names)
    }
}

pub fn nack(
    response: &DiscoveryResponse,
    acked_version: &str,
    names: &[&str],
    message: &str,
) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: acked_version.to_string(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: message.to_string(),
            details: vec![],
        }),
        ..ack(response, names)
    }
}

pub fn delta_request(type_url: &str, subscribe: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_string(),
        resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

pub fn delta_first(
    node_id: &str,
    type_url: &str,
    subscribe: &[&str],
    initial: &[(&str, &str)],
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node(node_id)),
        initial_resource_versions: initial
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        ..delta_request(type_url, subscribe)
    }
}

pub fn delta_ack(response: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: response.type_url.clone(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    }
}

pub fn delta_nack(response: &DeltaDiscoveryResponse, message: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        error_detail: Some(RpcStatus {
            code: 3,
            message: message.to_string(),
            details: vec![],
        }),
        ..delta_ack(response)
    }
}

/// The name inside a packed resource of one of the four types.
pub fn any_name(any: &Any) -> String {
    let bytes = any.value.as_slice();
    match format!(
        "type.googleapis.com/{}",
        any.type_url.rsplit('/').next().unwrap()
    )
    .as_str()
    {
        CLUSTER_TYPE => Cluster::decode(bytes).unwrap().name,
        ENDPOINT_TYPE => ClusterLoadAssignment::decode(bytes).unwrap().cluster_name,
        LISTENER_TYPE => Listener::decode(bytes).unwrap().name,
        ROUTE_TYPE => RouteConfiguration::decode(bytes).unwrap().name,
        strait_xds::snapshot::SECRET_TYPE => {
            envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret::decode(bytes)
                .unwrap()
                .name
        }
        other => panic!("unexpected type {other}"),
    }
}

pub fn names(response: &DiscoveryResponse) -> Vec<String> {
    response.resources.iter().map(any_name).collect()
}

/// Delta resources as name -> version, checking each name matches its packed resource.
pub fn delta_names(response: &DeltaDiscoveryResponse) -> BTreeMap<String, String> {
    response
        .resources
        .iter()
        .map(|r| {
            let any = r.resource.as_ref().expect("resource body");
            assert_eq!(any_name(any), r.name);
            (r.name.clone(), r.version.clone())
        })
        .collect()
}
