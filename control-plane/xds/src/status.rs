//! What each connected stream was sent and what it acknowledged, for `/debug/proxies`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use prost::bytes::Bytes;
use serde::Serialize;

/// One resource a stream's client holds, as it last acknowledged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldResource {
    pub name: Arc<str>,
    /// The resource's version, as sent on the wire.
    pub version: String,
    /// Its encoding, shared with the snapshot it came from; `None` when the client holds a
    /// version this server no longer keeps (one it rejected a successor of, or reported on
    /// reconnecting).
    pub bytes: Option<Bytes>,
}

/// What one stream's client has acknowledged: its status and, per type it asked for, the
/// resources it holds (`None` until it accepted a response of the type).
#[derive(Clone, Debug)]
pub struct HeldConfig {
    pub status: ProxyStatus,
    pub types: BTreeMap<String, Option<Vec<HeldResource>>>,
}

/// One ADS stream. A node with several streams (Envoy hot restart) has one entry per stream.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyStatus {
    pub stream_id: u64,
    pub node_id: String,
    pub cluster: String,
    /// Node metadata as JSON.
    pub metadata: serde_json::Value,
    /// `user_agent_name/version`, e.g. `envoy/1.31.0`.
    pub user_agent: String,
    /// `"sotw"` or `"delta"`.
    pub protocol: &'static str,
    /// The SPIFFE identity the stream authenticated as (TLS port only).
    pub identity: Option<String>,
    pub connected_at_unix_ms: u64,
    /// Keyed by type URL; a type appears once the client has asked for it.
    pub types: BTreeMap<String, TypeStatus>,
}

/// The protocol ledger of one type on one stream.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TypeStatus {
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub acked_version: Option<String>,
    pub last_ack_unix_ms: Option<u64>,
    /// The latest rejection; kept after later ACKs so operators can see what happened.
    pub nack: Option<NackStatus>,
    /// Resources the client holds: the snapshot's count under a wildcard, else the names of
    /// its subscription.
    pub resources: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct NackStatus {
    /// The version the client rejected.
    pub version: String,
    /// The `google.rpc.Status` message Envoy sent.
    pub error_detail: String,
    pub code: i32,
    pub at_unix_ms: u64,
    /// How many NACKs in a row carried this same version.
    pub count: u64,
    /// A later version of the type was accepted since.
    pub superseded: bool,
}

impl ProxyStatus {
    pub(crate) fn new(
        stream_id: u64,
        node: &Node,
        protocol: &'static str,
        identity: Option<String>,
    ) -> Self {
        Self {
            stream_id,
            node_id: node.id.clone(),
            cluster: node.cluster.clone(),
            metadata: node
                .metadata
                .as_ref()
                .map(struct_to_json)
                .unwrap_or(serde_json::Value::Object(serde_json::Map::new())),
            user_agent: user_agent(node),
            protocol,
            identity,
            connected_at_unix_ms: unix_ms_now(),
            types: BTreeMap::new(),
        }
    }
}

fn user_agent(node: &Node) -> String {
    let version = match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentVersion(version)) => version.clone(),
        Some(UserAgentVersionType::UserAgentBuildVersion(build)) => build
            .version
            .as_ref()
            .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
            .unwrap_or_default(),
        None => String::new(),
    };
    match (node.user_agent_name.is_empty(), version.is_empty()) {
        (_, true) => node.user_agent_name.clone(),
        (true, false) => version,
        (false, false) => format!("{}/{}", node.user_agent_name, version),
    }
}

pub(crate) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Converts a protobuf `Struct` (node metadata) to JSON. Non-finite numbers become `null`,
/// as JSON has no way to write them.
pub fn struct_to_json(value: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        value
            .fields
            .iter()
            .map(|(key, value)| (key.clone(), value_to_json(value)))
            .collect(),
    )
}

fn value_to_json(value: &Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(value_to_json).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::BuildVersion;
    use envoy_types::pb::envoy::r#type::v3::SemanticVersion;
    use envoy_types::pb::google::protobuf::ListValue;

    fn string(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.into())),
        }
    }

    #[test]
    fn struct_converts_to_json() {
        let labels = Struct {
            fields: [("app".to_string(), string("web"))].into_iter().collect(),
        };
        let metadata = Struct {
            fields: [
                ("NAMESPACE".to_string(), string("default")),
                (
                    "LABELS".to_string(),
                    Value {
                        kind: Some(Kind::StructValue(labels)),
                    },
                ),
                (
                    "PORTS".to_string(),
                    Value {
                        kind: Some(Kind::ListValue(ListValue {
                            values: vec![
                                Value {
                                    kind: Some(Kind::NumberValue(80.0)),
                                },
                                Value {
                                    kind: Some(Kind::NumberValue(f64::NAN)),
                                },
                            ],
                        })),
                    },
                ),
                (
                    "ON".to_string(),
                    Value {
                        kind: Some(Kind::BoolValue(true)),
                    },
                ),
                ("NONE".to_string(), Value { kind: None }),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(
            struct_to_json(&metadata),
            serde_json::json!({
                "NAMESPACE": "default",
                "LABELS": {"app": "web"},
                "PORTS": [80.0, null],
                "ON": true,
                "NONE": null,
            })
        );
    }

    #[test]
    fn user_agent_joins_name_and_version() {
        let mut node = Node {
            user_agent_name: "envoy".into(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentBuildVersion(
                BuildVersion {
                    version: Some(SemanticVersion {
                        major_number: 1,
                        minor_number: 31,
                        patch: 2,
                    }),
                    metadata: None,
                },
            )),
            ..Default::default()
        };
        assert_eq!(user_agent(&node), "envoy/1.31.2");
        node.user_agent_version_type = Some(UserAgentVersionType::UserAgentVersion("abc".into()));
        assert_eq!(user_agent(&node), "envoy/abc");
        node.user_agent_version_type = None;
        assert_eq!(user_agent(&node), "envoy");
    }
}
