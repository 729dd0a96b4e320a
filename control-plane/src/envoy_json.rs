//! Envoy's JSON form of its protobufs (proto field names, `@type` on every `Any`, as Envoy's
//! `/config_dump` writes them), read through the descriptor set envoy-types was generated
//! from; secrets are redacted on the way out, as Envoy redacts them.

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};
use serde_json::Value;

use strait_xds::snapshot::SECRET_TYPE;

/// envoy-types' descriptor set (found by the build script).
static DESCRIPTORS: &[u8] = include_bytes!(env!("STRAIT_ENVOY_DESCRIPTORS"));

/// What stands where a private key or other secret value was, as in Envoy's `/config_dump`.
pub const REDACTED: &str = "[redacted]";

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("envoy-types' descriptor set does not decode: {0}")]
    Descriptors(#[source] prost_reflect::DescriptorError),
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("{type_name} does not decode: {error}")]
    Decode {
        type_name: String,
        #[source]
        error: prost::DecodeError,
    },
    #[error("{type_name} is not in Envoy's JSON form: {error}")]
    Json {
        type_name: String,
        #[source]
        error: serde_json::Error,
    },
}

/// The message types of Envoy's API. Loading takes a moment and some memory: load them when
/// needed and drop them after (straitd serves them only to debug requests).
pub struct EnvoyJson {
    pool: DescriptorPool,
}

impl EnvoyJson {
    pub fn load() -> Result<EnvoyJson, JsonError> {
        Ok(EnvoyJson {
            pool: DescriptorPool::decode(DESCRIPTORS).map_err(JsonError::Descriptors)?,
        })
    }

    /// One resource (its encoding, of type `type_url`) in Envoy's JSON form, with `@type`
    /// first; a secret's private key, password and generic values are redacted.
    pub fn to_json(&self, type_url: &str, bytes: &[u8]) -> Result<Value, JsonError> {
        let type_name = type_name(type_url);
        let desc = self
            .pool
            .get_message_by_name(type_name)
            .ok_or_else(|| JsonError::UnknownType(type_name.to_string()))?;
        let decode_error = |error| JsonError::Decode {
            type_name: type_name.to_string(),
            error,
        };
        let redacted;
        let bytes = if type_url == SECRET_TYPE {
            redacted = redact(Secret::decode(bytes).map_err(decode_error)?).encode_to_vec();
            redacted.as_slice()
        } else {
            bytes
        };
        let message = DynamicMessage::decode(desc, bytes).map_err(decode_error)?;
        let options = SerializeOptions::new()
            .use_proto_field_name(true)
            .skip_default_fields(true);
        let fields = message
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|error| JsonError::Json {
                type_name: type_name.to_string(),
                error,
            })?;
        let mut out = serde_json::Map::new();
        out.insert("@type".into(), Value::String(type_url.to_string()));
        if let Value::Object(fields) = fields {
            out.extend(fields);
        }
        Ok(Value::Object(out))
    }

    /// A resource back from its JSON form (`@type`, if there, is ignored).
    pub fn from_json<T: Message + Default + prost::Name>(
        &self,
        value: &Value,
    ) -> Result<T, JsonError> {
        let type_name = T::full_name();
        let desc = self
            .pool
            .get_message_by_name(&type_name)
            .ok_or_else(|| JsonError::UnknownType(type_name.clone()))?;
        let mut value = value.clone();
        if let Value::Object(fields) = &mut value {
            fields.remove("@type");
        }
        let message =
            DynamicMessage::deserialize_with_options(desc, value, &DeserializeOptions::new())
                .map_err(|error| JsonError::Json {
                    type_name: type_name.clone(),
                    error,
                })?;
        message
            .transcode_to::<T>()
            .map_err(|error| JsonError::Decode { type_name, error })
    }
}

/// `type.googleapis.com/envoy.config.cluster.v3.Cluster` -> `envoy.config.cluster.v3.Cluster`.
fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// The secret with every private value replaced by [`REDACTED`]: what may leave straitd.
pub fn redact(mut secret: Secret) -> Secret {
    let redacted = || {
        Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString(REDACTED.into())),
            ..Default::default()
        })
    };
    match &mut secret.r#type {
        Some(secret::Type::TlsCertificate(tls)) => {
            if tls.private_key.is_some() {
                tls.private_key = redacted();
            }
            if tls.password.is_some() {
                tls.password = redacted();
            }
            if tls.pkcs12.is_some() {
                tls.pkcs12 = redacted();
            }
            tls.private_key_provider = None;
        }
        Some(secret::Type::GenericSecret(generic)) => {
            if generic.secret.is_some() {
                generic.secret = redacted();
            }
            for value in generic.secrets.values_mut() {
                *value = DataSource {
                    specifier: Some(data_source::Specifier::InlineString(REDACTED.into())),
                    ..Default::default()
                };
            }
        }
        Some(secret::Type::SessionTicketKeys(keys)) => {
            for key in &mut keys.keys {
                *key = DataSource {
                    specifier: Some(data_source::Specifier::InlineString(REDACTED.into())),
                    ..Default::default()
                };
            }
        }
        _ => {}
    }
    secret
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate;
    use envoy_types::pb::google::protobuf::Duration;
    use strait_xds::snapshot::CLUSTER_TYPE;

    fn inline(bytes: &str) -> Option<DataSource> {
        Some(DataSource {
            specifier: Some(data_source::Specifier::InlineBytes(
                bytes.as_bytes().to_vec(),
            )),
            ..Default::default()
        })
    }

    #[test]
    fn resources_round_trip_in_envoys_json_form() {
        let json = EnvoyJson::load().expect("descriptors");
        let cluster = Cluster {
            name: "outbound|9080||reviews.default.svc.cluster.local".into(),
            connect_timeout: Some(Duration {
                seconds: 10,
                nanos: 0,
            }),
            ..Default::default()
        };
        let value = json
            .to_json(CLUSTER_TYPE, &cluster.encode_to_vec())
            .expect("json");
        assert_eq!(
            value,
            serde_json::json!({
                "@type": CLUSTER_TYPE,
                "name": "outbound|9080||reviews.default.svc.cluster.local",
                "connect_timeout": "10s",
            })
        );
        assert_eq!(json.from_json::<Cluster>(&value).expect("back"), cluster);
    }

    #[test]
    fn private_keys_never_leave() {
        let json = EnvoyJson::load().expect("descriptors");
        let secret = Secret {
            name: "default".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline("-----BEGIN CERTIFICATE-----"),
                private_key: inline("-----BEGIN PRIVATE KEY-----"),
                ..Default::default()
            })),
        };
        let value = json
            .to_json(SECRET_TYPE, &secret.encode_to_vec())
            .expect("json");
        let text = value.to_string();
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert_eq!(
            value["tls_certificate"]["private_key"]["inline_string"],
            REDACTED
        );
        assert!(
            value["tls_certificate"]["certificate_chain"]["inline_bytes"].is_string(),
            "{text}"
        );
    }
}
