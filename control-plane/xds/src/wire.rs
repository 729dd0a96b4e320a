//! ADS responses as they go on the wire. Field for field the same messages as Envoy's
//! `DiscoveryResponse` and `DeltaDiscoveryResponse` (the fields Strait sets, with Envoy's
//! tags), except that a resource's bytes are a shared [`Bytes`]: every stream sending a
//! resource references its one encoding instead of copying it.
//!
//! `server/service.rs` frames them for the wire.

use prost::bytes::Bytes;

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `envoy.service.discovery.v3.DiscoveryResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoveryResponse {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<Any>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
}

/// `envoy.service.discovery.v3.Resource`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(message, optional, tag = "2")]
    pub resource: Option<Any>,
}

/// `envoy.service.discovery.v3.DeltaDiscoveryResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeltaDiscoveryResponse {
    #[prost(string, tag = "1")]
    pub system_version_info: String,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<Resource>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, repeated, tag = "6")]
    pub removed_resources: Vec<String>,
    #[prost(string, tag = "5")]
    pub nonce: String,
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3 as envoy;
    use prost::Message;

    use super::*;

    /// What Envoy decodes from our bytes is what we meant to send.
    #[test]
    fn responses_decode_as_envoys_messages() {
        let any = Any {
            type_url: "type.googleapis.com/x".into(),
            value: Bytes::from_static(b"\x0a\x03abc"),
        };
        let delta = DeltaDiscoveryResponse {
            system_version_info: "v1".into(),
            resources: vec![Resource {
                name: "a".into(),
                version: "0123".into(),
                resource: Some(any.clone()),
            }],
            type_url: "t".into(),
            removed_resources: vec!["gone".into()],
            nonce: "n".into(),
        };
        let decoded = envoy::DeltaDiscoveryResponse::decode(delta.encode_to_vec().as_slice())
            .expect("decodes");
        assert_eq!(decoded.system_version_info, "v1");
        assert_eq!(decoded.resources[0].name, "a");
        assert_eq!(decoded.resources[0].version, "0123");
        let resource = decoded.resources[0].resource.as_ref().expect("resource");
        assert_eq!(resource.type_url, any.type_url);
        assert_eq!(resource.value, any.value.to_vec());
        assert_eq!(decoded.removed_resources, ["gone"]);
        assert_eq!(decoded.nonce, "n");
        assert_eq!(decoded.type_url, "t");

        let sotw = DiscoveryResponse {
            version_info: "v2".into(),
            resources: vec![any.clone()],
            type_url: "t".into(),
            nonce: "m".into(),
        };
        let decoded =
            envoy::DiscoveryResponse::decode(sotw.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded.version_info, "v2");
        assert_eq!(decoded.resources[0].value, any.value.to_vec());
        assert_eq!(
            (decoded.type_url.as_str(), decoded.nonce.as_str()),
            ("t", "m")
        );
    }
}
