//! `telemetry.istio.io` specs (v1 and v1alpha1 share one schema).

use schemars::JsonSchema;
use serde::Deserialize;

use super::security::WorkloadSelector;

type Raw = Option<serde_json::Value>;

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TelemetrySpec {
    pub selector: Option<WorkloadSelector>,
    pub target_ref: Raw,
    pub target_refs: Raw,
    pub tracing: Raw,
    pub metrics: Raw,
    pub access_logging: Vec<AccessLogging>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AccessLogging {
    #[serde(rename = "match")]
    pub r#match: Option<AccessLogMatch>,
    pub providers: Vec<ProviderRef>,
    pub disabled: Option<bool>,
    pub filter: Raw,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AccessLogMatch {
    pub mode: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProviderRef {
    pub name: String,
}
