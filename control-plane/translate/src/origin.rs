//! Which Istio object a resource comes from, written into the resource as Istio writes it
//! (`metadata.filter_metadata.istio.config`, a path such as
//! `/apis/networking.istio.io/v1/namespaces/default/virtual-service/reviews`) and read back
//! from a resource's encoding when a proxy rejects it, so the rejection can be told to the
//! objects that made it.
//!
//! A cluster names its DestinationRule when one shaped it, else its ServiceEntry; a route its
//! VirtualService; a gateway listener its Gateways (a list when several share the port; Istio
//! writes a single path, which is read the same). Endpoint assignments carry no metadata:
//! they come from their cluster's objects.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind as ValueKind};
use prost::Message;
use strait_model::{Kind, ObjectId};

/// The `filter_metadata` key, as Istio's.
pub const METADATA_KEY: &str = "istio";
const CONFIG: &str = "config";

/// The Istio path of an object: `/apis/{group}/v1/namespaces/{namespace}/{kind}/{name}`.
pub fn config_path(id: &ObjectId) -> String {
    format!(
        "/apis/{}/v1/namespaces/{}/{}/{}",
        id.kind.group(),
        id.namespace,
        kebab(id.kind),
        id.name
    )
}

/// The object a path names; `None` for a path of some other shape.
pub fn parse_config_path(path: &str) -> Option<ObjectId> {
    let rest = path.strip_prefix("/apis/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [group, _version, "namespaces", namespace, kind, name] = parts.as_slice() else {
        return None;
    };
    let kind = Kind::ALL
        .into_iter()
        .find(|k| kebab(*k) == *kind && k.group() == *group)?;
    (!namespace.is_empty() && !name.is_empty()).then(|| ObjectId {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// `VirtualService` -> `virtual-service`, as Istio spells kinds in config paths.
fn kebab(kind: Kind) -> String {
    let mut out = String::new();
    for (i, c) in kind.as_str().chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Metadata naming the objects a resource comes from; `None` for none.
pub(crate) fn metadata<'a>(ids: impl IntoIterator<Item = &'a ObjectId>) -> Option<Metadata> {
    let mut paths: Vec<String> = Vec::new();
    for path in ids.into_iter().map(config_path) {
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    let config = match paths.len() {
        0 => return None,
        1 => string(paths.remove(0)),
        _ => Value {
            kind: Some(ValueKind::ListValue(ListValue {
                values: paths.into_iter().map(string).collect(),
            })),
        },
    };
    Some(Metadata {
        filter_metadata: std::iter::once((
            METADATA_KEY.to_string(),
            Struct {
                fields: std::iter::once((CONFIG.to_string(), config)).collect(),
            },
        ))
        .collect(),
        ..Default::default()
    })
}

fn string(s: String) -> Value {
    Value {
        kind: Some(ValueKind::StringValue(s)),
    }
}

/// The objects named in one metadata block.
fn read(metadata: Option<&Metadata>, out: &mut Vec<ObjectId>) {
    let Some(config) = metadata
        .and_then(|m| m.filter_metadata.get(METADATA_KEY))
        .and_then(|s| s.fields.get(CONFIG))
    else {
        return;
    };
    let paths: Vec<&str> = match &config.kind {
        Some(ValueKind::StringValue(s)) => vec![s.as_str()],
        Some(ValueKind::ListValue(list)) => list
            .values
            .iter()
            .filter_map(|v| match &v.kind {
                Some(ValueKind::StringValue(s)) => Some(s.as_str()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    for id in paths.into_iter().filter_map(parse_config_path) {
        if !out.contains(&id) {
            out.push(id);
        }
    }
}

/// The objects one metadata block names (a resource's, a filter chain's, a virtual host's or
/// a route's), in order.
pub fn of(metadata: Option<&Metadata>) -> Vec<ObjectId> {
    let mut out = Vec::new();
    read(metadata, &mut out);
    out
}

/// The resource types whose encodings carry origins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoded {
    Cluster,
    Listener,
    RouteConfiguration,
}

/// The objects an encoded resource names as its origins, in order of appearance; empty when
/// it names none or does not decode.
pub fn origins(kind: Encoded, bytes: &[u8]) -> Vec<ObjectId> {
    let mut out = Vec::new();
    match kind {
        Encoded::Cluster => {
            if let Ok(c) = Cluster::decode(bytes) {
                read(c.metadata.as_ref(), &mut out);
            }
        }
        Encoded::Listener => {
            if let Ok(l) = Listener::decode(bytes) {
                read(l.metadata.as_ref(), &mut out);
                for chain in &l.filter_chains {
                    read(chain.metadata.as_ref(), &mut out);
                }
            }
        }
        Encoded::RouteConfiguration => {
            if let Ok(rc) = RouteConfiguration::decode(bytes) {
                read(rc.metadata.as_ref(), &mut out);
                for vh in &rc.virtual_hosts {
                    read(vh.metadata.as_ref(), &mut out);
                    for route in &vh.routes {
                        read(route.metadata.as_ref(), &mut out);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: Kind, namespace: &str, name: &str) -> ObjectId {
        ObjectId {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn paths_are_istios_and_read_back() {
        let vs = id(Kind::VirtualService, "default", "reviews");
        assert_eq!(
            config_path(&vs),
            "/apis/networking.istio.io/v1/namespaces/default/virtual-service/reviews"
        );
        for kind in Kind::ALL {
            let object = id(kind, "ns-1", "a.b-c");
            assert_eq!(parse_config_path(&config_path(&object)), Some(object));
        }
        // Istio's own spelling, with its older API version.
        assert_eq!(
            parse_config_path(
                "/apis/security.istio.io/v1beta1/namespaces/foo/authorization-policy/deny"
            ),
            Some(id(Kind::AuthorizationPolicy, "foo", "deny"))
        );
        for bad in [
            "",
            "/apis/networking.istio.io/v1/namespaces/default/virtual-service",
            "/apis/security.istio.io/v1/namespaces/default/virtual-service/x",
            "/apis/networking.istio.io/v1/namespaces//virtual-service/x",
            "/api/v1/namespaces/default/services/x",
        ] {
            assert_eq!(parse_config_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn origins_come_back_from_every_level_of_a_route_configuration() {
        use envoy_types::pb::envoy::config::route::v3::{Route, VirtualHost};
        let a = id(Kind::VirtualService, "default", "a");
        let b = id(Kind::VirtualService, "other", "b");
        let rc = RouteConfiguration {
            name: "80".into(),
            virtual_hosts: vec![VirtualHost {
                name: "x".into(),
                routes: vec![
                    Route {
                        metadata: metadata([&a]),
                        ..Default::default()
                    },
                    Route::default(),
                    Route {
                        metadata: metadata([&b, &a]),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            origins(Encoded::RouteConfiguration, &rc.encode_to_vec()),
            vec![a.clone(), b]
        );
        assert_eq!(origins(Encoded::Cluster, b"\xff\xff garbage"), vec![]);
        let c = Cluster {
            metadata: metadata([&a]),
            ..Default::default()
        };
        assert_eq!(origins(Encoded::Cluster, &c.encode_to_vec()), vec![a]);
        assert_eq!(metadata(std::iter::empty()), None);
    }
}
