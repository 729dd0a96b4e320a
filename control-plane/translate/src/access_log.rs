//! Access logs (Telemetry `accessLogging`, MeshConfig `accessLogFile`): Envoy's file logger on
//! stdout in its default format, on the HTTP connection managers of the sides that log.

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use strait_model::{Direction, Model, ProxyNode};

use crate::MeshSettings;
use crate::proto::any;

pub const FILE_ACCESS_LOG: &str = "envoy.access_loggers.file";
pub const STDOUT: &str = "/dev/stdout";

/// The access logs of a proxy's `direction` (none when it does not log).
pub fn access_logs(
    model: &Model,
    node: &ProxyNode,
    settings: &MeshSettings,
    direction: Direction,
) -> Vec<AccessLog> {
    if !model.access_log_for(
        &node.namespace,
        &node.labels,
        direction,
        settings.access_log_file,
    ) {
        return Vec::new();
    }
    vec![AccessLog {
        name: FILE_ACCESS_LOG.to_string(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(any(&FileAccessLog {
            path: STDOUT.to_string(),
            // Unset: Envoy's default format.
            access_log_format: None,
        }))),
    }]
}
