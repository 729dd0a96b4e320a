//! Istio's MeshConfig, the part Strait reads: mesh-wide settings that are not policy objects.

use serde::Deserialize;

use crate::error::{ValidationError, ValidationErrors};
use crate::loader::{clean, join};

/// What captured traffic to a destination the mesh does not know gets (Istio's
/// `outboundTrafficPolicy.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicy {
    /// Passed through to the original destination.
    #[default]
    AllowAny,
    /// Refused: only services in the registry are reachable.
    RegistryOnly,
}

/// The validated mesh settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshConfig {
    pub trust_domain: Option<String>,
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// `accessLogFile` (only `/dev/stdout`): every proxy logs unless a Telemetry says not.
    pub access_log_file: bool,
    pub access_log_encoding: AccessLogEncoding,
}

/// How access log lines are written (`accessLogEncoding`; JSON is refused for now).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessLogEncoding {
    /// Envoy's default format.
    #[default]
    Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct MeshConfigSpec {
    trust_domain: Option<String>,
    outbound_traffic_policy: Option<OutboundTrafficPolicySpec>,
    access_log_file: Option<String>,
    access_log_encoding: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct OutboundTrafficPolicySpec {
    mode: Option<String>,
}

impl MeshConfig {
    /// Reads MeshConfig YAML (the `mesh` document of Istio's `istio` ConfigMap). Fields Strait
    /// does not implement are refused by name.
    pub fn parse(text: &str, origin: &str) -> Result<MeshConfig, ValidationErrors> {
        let error = |path: &str, message: String| {
            ValidationErrors(vec![ValidationError {
                origin: origin.to_string(),
                object: None,
                path: path.to_string(),
                message,
            }])
        };
        let value: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| error("", e.to_string()))?
        };
        let spec: MeshConfigSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = join("", &e.path().to_string());
            error(path.trim_start_matches('.'), clean(e.inner()))
        })?;
        let outbound_traffic_policy =
            match spec.outbound_traffic_policy.and_then(|p| p.mode).as_deref() {
                None | Some("ALLOW_ANY") => OutboundTrafficPolicy::AllowAny,
                Some("REGISTRY_ONLY") => OutboundTrafficPolicy::RegistryOnly,
                Some(other) => {
                    return Err(error(
                        "outboundTrafficPolicy.mode",
                        format!("unknown mode {other:?}; expected ALLOW_ANY or REGISTRY_ONLY"),
                    ));
                }
            };
        if let Some(td) = &spec.trust_domain
            && (td.is_empty() || td.contains('/'))
        {
            return Err(error(
                "trustDomain",
                format!("expected a trust domain such as \"cluster.local\", got {td:?}"),
            ));
        }
        let access_log_file = match spec.access_log_file.as_deref() {
            None | Some("") => false,
            Some("/dev/stdout") => true,
            Some(other) => {
                return Err(error(
                    "accessLogFile",
                    format!("{other:?}: proxies log to /dev/stdout only"),
                ));
            }
        };
        let access_log_encoding = match spec.access_log_encoding.as_deref() {
            None | Some("TEXT") => AccessLogEncoding::Text,
            Some("JSON") => {
                return Err(error(
                    "accessLogEncoding",
                    "JSON is not supported by Strait yet; remove the field (TEXT is Envoy's default format)".to_string(),
                ));
            }
            Some(other) => {
                return Err(error(
                    "accessLogEncoding",
                    format!("unknown encoding {other:?}; expected TEXT or JSON"),
                ));
            }
        };
        Ok(MeshConfig {
            trust_domain: spec.trust_domain,
            outbound_traffic_policy,
            access_log_file,
            access_log_encoding,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_istio_mesh_config() {
        let m = MeshConfig::parse(
            "trustDomain: example.org\noutboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n",
            "mesh.yaml",
        )
        .unwrap();
        assert_eq!(m.trust_domain.as_deref(), Some("example.org"));
        assert_eq!(
            m.outbound_traffic_policy,
            OutboundTrafficPolicy::RegistryOnly
        );
        assert_eq!(
            MeshConfig::parse("", "empty").unwrap(),
            MeshConfig::default()
        );
    }

    #[test]
    fn bad_or_unknown_fields_are_named() {
        let e = MeshConfig::parse("outboundTrafficPolicy: {mode: DENY}\n", "mesh.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mesh.yaml: outboundTrafficPolicy.mode: unknown mode \"DENY\""),
            "{e}"
        );
        let e = MeshConfig::parse("enableTracing: true\n", "mesh.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `enableTracing`"), "{e}");
        let e = MeshConfig::parse("outboundTrafficPolicy: {mod: ALLOW_ANY}\n", "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("outboundTrafficPolicy"), "{e}");
    }
}

#[cfg(test)]
mod access_log_tests {
    use super::*;

    #[test]
    fn access_logs_go_to_stdout_in_text() {
        let m = MeshConfig::parse("accessLogFile: /dev/stdout\naccessLogEncoding: TEXT\n", "m")
            .unwrap();
        assert!(m.access_log_file);
        assert!(
            !MeshConfig::parse("accessLogFile: ''\n", "m")
                .unwrap()
                .access_log_file
        );
        for (text, fragment) in [
            ("accessLogFile: /var/log/envoy.log\n", "accessLogFile"),
            ("accessLogEncoding: JSON\n", "JSON is not supported"),
            ("accessLogEncoding: XML\n", "unknown encoding"),
        ] {
            let e = MeshConfig::parse(text, "m").unwrap_err().to_string();
            assert!(e.contains(fragment), "{e}");
        }
    }
}
