//! Envoy bootstrap generation: the static config that points a stock Envoy at straitd over ADS.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde_json::{Map, Value, json};
use strait_model::ProxyMode;
use strait_model::node::{Interception, NodeMetadata};

/// The static cluster Envoy uses to reach straitd. Translation never emits a cluster of this
/// name, so dynamic config cannot shadow the control-plane connection.
pub const XDS_CLUSTER: &str = "xds-grpc";

/// Which ADS variant the proxy speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum XdsProtocol {
    /// Incremental xDS (`DELTA_GRPC`): only changed resources travel.
    #[default]
    Delta,
    /// State-of-the-world xDS (`GRPC`).
    Sotw,
}

impl XdsProtocol {
    /// The `ApiConfigSource.api_type` Envoy expects.
    pub fn api_type(self) -> &'static str {
        match self {
            Self::Delta => "DELTA_GRPC",
            Self::Sotw => "GRPC",
        }
    }
}

impl FromStr for XdsProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "delta" => Ok(Self::Delta),
            "sotw" => Ok(Self::Sotw),
            other => Err(format!("expected \"delta\" or \"sotw\", got {other:?}")),
        }
    }
}

impl fmt::Display for XdsProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Delta => "delta",
            Self::Sotw => "sotw",
        })
    }
}

/// Everything that distinguishes one proxy's bootstrap from another's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapParams {
    pub node_id: String,
    pub cluster: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    pub mode: ProxyMode,
    /// straitd's xDS address: an IP literal or a DNS name.
    pub xds_host: String,
    pub xds_port: u16,
    pub xds_protocol: XdsProtocol,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub listen_address: Option<IpAddr>,
    /// Gateway server port -> the port the gateway actually binds.
    pub gateway_ports: BTreeMap<u16, u16>,
    /// The workload side of a sidecar: (inbound port, app port).
    pub inbound: Option<(u16, u16)>,
    /// Whether iptables captures the workload's traffic (and the inbound capture port).
    pub interception: Interception,
    /// The workload's own addresses.
    pub instance_ips: Vec<IpAddr>,
    /// Connect over TLS (straitd's secure port): required for mTLS, whose keys come over SDS.
    pub tls: Option<XdsTls>,
}

/// How Envoy reaches straitd's TLS port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsTls {
    /// The mesh root certificate (PEM file) that straitd's serving certificate chains to.
    pub ca_cert: std::path::PathBuf,
    /// A bootstrap token (`straitctl token create`) proving the workload's identity.
    pub token: String,
    /// The name to verify on straitd's certificate.
    pub server_name: String,
}

/// The node metadata straitd reads (see `strait_model::node`).
pub fn node_metadata(p: &BootstrapParams) -> Map<String, Value> {
    NodeMetadata {
        namespace: p.namespace.clone(),
        labels: p.labels.clone(),
        service_account: p.service_account.clone(),
        mode: p.mode,
        outbound_port: p.outbound_port,
        listen_address: p.listen_address,
        gateway_ports: p.gateway_ports.clone(),
        inbound: p.inbound,
        // Envoy takes its key from SDS.
        own_certificate: false,
        interception: p.interception,
        instance_ips: p.instance_ips.clone(),
    }
    .to_json()
}

/// A stock Envoy v3 bootstrap that fetches everything else from straitd over ADS.
pub fn envoy_bootstrap(p: &BootstrapParams) -> Value {
    // An IP needs no resolver; a name is re-resolved so straitd can move.
    let xds_is_ip = p.xds_host.parse::<IpAddr>().is_ok();
    let mut xds_cluster = json!({
        "name": XDS_CLUSTER,
        "type": if xds_is_ip { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{
                "lb_endpoints": [{
                    "endpoint": {
                        "address": {
                            "socket_address": {
                                "address": p.xds_host,
                                "port_value": p.xds_port,
                            }
                        }
                    }
                }]
            }]
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        },
        // Keepalive lets Envoy notice a vanished straitd (and straitd a vanished proxy)
        // without waiting for the next push.
        "upstream_connection_options": {
            "tcp_keepalive": {
                "keepalive_probes": 3,
                "keepalive_time": 30,
                "keepalive_interval": 5
            }
        }
    });
    if !xds_is_ip {
        // "localhost" resolves to ::1 first under AUTO, while straitd usually binds IPv4.
        xds_cluster["dns_lookup_family"] = json!("V4_PREFERRED");
    }
    let mut grpc_service = json!({ "envoy_grpc": { "cluster_name": XDS_CLUSTER } });
    if let Some(tls) = &p.tls {
        xds_cluster["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": tls.server_name,
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "validation_context": {
                        "trusted_ca": { "filename": tls.ca_cert.to_string_lossy() },
                        "match_typed_subject_alt_names": [
                            { "san_type": "DNS", "matcher": { "exact": tls.server_name } },
                            { "san_type": "IP_ADDRESS", "matcher": { "exact": tls.server_name } }
                        ]
                    }
                }
            }
        });
        grpc_service["initial_metadata"] =
            json!([{ "key": "authorization", "value": format!("Bearer {}", tls.token) }]);
    }

    json!({
        "node": {
            "id": p.node_id,
            "cluster": p.cluster,
            "metadata": node_metadata(p),
        },
        "admin": {
            "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": p.admin_port }
            }
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": p.xds_protocol.api_type(),
                "transport_api_version": "V3",
                "grpc_services": [grpc_service],
                "set_node_on_first_message_only": true
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": {
            "clusters": [xds_cluster]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_model::ProxyNode;

    fn sidecar() -> BootstrapParams {
        BootstrapParams {
            node_id: "productpage-1".into(),
            cluster: "productpage".into(),
            namespace: "bookinfo".into(),
            labels: [("app", "productpage"), ("version", "v1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: Some("bookinfo-productpage".into()),
            mode: ProxyMode::Sidecar,
            xds_host: "127.0.0.1".into(),
            xds_port: 15010,
            xds_protocol: XdsProtocol::Delta,
            outbound_port: 16001,
            admin_port: 16000,
            listen_address: Some(IpAddr::from([127, 0, 0, 2])),
            gateway_ports: BTreeMap::new(),
            inbound: None,
            interception: Interception::None,
            instance_ips: Vec::new(),
            tls: None,
        }
    }

    fn parse_back(b: &Value) -> ProxyNode {
        let node = &b["node"];
        let id = node["id"].as_str().expect("node.id is a string");
        let meta = node["metadata"]
            .as_object()
            .expect("node.metadata is a map");
        ProxyNode::from_metadata(id, meta).expect("straitd accepts our metadata")
    }

    #[test]
    fn sidecar_metadata_round_trips_through_the_server_parser() {
        let p = sidecar();
        let n = parse_back(&envoy_bootstrap(&p));
        assert_eq!(n.id, "productpage-1");
        assert_eq!(n.namespace, "bookinfo");
        assert_eq!(n.labels, p.labels);
        assert_eq!(n.service_account.as_deref(), Some("bookinfo-productpage"));
        assert_eq!(n.mode, ProxyMode::Sidecar);
        assert_eq!(n.outbound_port, 16001);
        assert_eq!(n.listen_address, IpAddr::from([127, 0, 0, 2]));
        assert!(n.gateway_ports.is_empty());
    }

    #[test]
    fn gateway_metadata_round_trips_through_the_server_parser() {
        let p = BootstrapParams {
            node_id: "gw".into(),
            namespace: "istio-system".into(),
            labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
            service_account: None,
            mode: ProxyMode::Gateway,
            listen_address: None,
            gateway_ports: [(80, 18080), (443, 18443)].into(),
            ..sidecar()
        };
        let b = envoy_bootstrap(&p);
        assert_eq!(
            b["node"]["metadata"]["STRAIT_GATEWAY_PORTS"],
            "80=18080,443=18443"
        );
        let n = parse_back(&b);
        assert_eq!(n.mode, ProxyMode::Gateway);
        assert_eq!(n.service_account, None);
        assert_eq!(n.gateway_bind_port(80), 18080);
        assert_eq!(n.gateway_bind_port(443), 18443);
        // Unset listen address: the server's per-mode default applies.
        assert_eq!(n.listen_address, IpAddr::from([0, 0, 0, 0]));
    }

    #[test]
    fn captured_sidecar_metadata_round_trips_through_the_server_parser() {
        let p = BootstrapParams {
            listen_address: None,
            interception: Interception::Redirect {
                inbound_port: 15006,
            },
            instance_ips: vec![IpAddr::from([10, 77, 1, 2])],
            ..sidecar()
        };
        let b = envoy_bootstrap(&p);
        assert_eq!(b["node"]["metadata"]["INTERCEPTION_MODE"], "REDIRECT");
        assert_eq!(b["node"]["metadata"]["INSTANCE_IPS"], "10.77.1.2");
        let n = parse_back(&b);
        assert_eq!(n.interception, p.interception);
        assert_eq!(n.instance_ips, p.instance_ips);
        // Captured listeners take every address the pod's traffic was sent to.
        assert_eq!(n.listen_address, IpAddr::from([0, 0, 0, 0]));
    }

    #[test]
    fn ads_and_xds_cluster_follow_the_params() {
        let b = envoy_bootstrap(&sidecar());
        let ads = &b["dynamic_resources"]["ads_config"];
        assert_eq!(ads["api_type"], "DELTA_GRPC");
        assert_eq!(
            ads["grpc_services"][0]["envoy_grpc"]["cluster_name"],
            XDS_CLUSTER
        );
        assert_eq!(b["admin"]["address"]["socket_address"]["port_value"], 16000);
        let c = &b["static_resources"]["clusters"][0];
        assert_eq!(c["type"], "STATIC");
        assert!(c.get("dns_lookup_family").is_none());

        let b = envoy_bootstrap(&BootstrapParams {
            xds_host: "straitd.istio-system.svc".into(),
            xds_protocol: XdsProtocol::Sotw,
            ..sidecar()
        });
        assert_eq!(b["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
        let c = &b["static_resources"]["clusters"][0];
        assert_eq!(c["type"], "STRICT_DNS");
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["address"],
            "straitd.istio-system.svc"
        );
    }

    #[test]
    fn xds_protocol_parses_and_prints() {
        assert_eq!("delta".parse(), Ok(XdsProtocol::Delta));
        assert_eq!("sotw".parse(), Ok(XdsProtocol::Sotw));
        assert!("grpc".parse::<XdsProtocol>().is_err());
        assert_eq!(XdsProtocol::default().to_string(), "delta");
    }
}
