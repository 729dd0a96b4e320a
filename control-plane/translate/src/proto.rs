//! Small builders for the protobuf pieces every translator uses.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, HeaderValue, HeaderValueOption,
    config_source, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as PbDuration, UInt32Value};
use strait_model::HeaderOp;

pub fn any<T: prost::Message + prost::Name>(msg: &T) -> Any {
    Any {
        type_url: T::type_url(),
        value: msg.encode_to_vec(),
    }
}

pub fn duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn u32v(value: u32) -> UInt32Value {
    UInt32Value { value }
}

pub fn boolv(value: bool) -> BoolValue {
    BoolValue { value }
}

/// Resources fetched over the ADS stream.
pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// A percentage (0-100, fractional) in Envoy's millionths.
pub fn percent(p: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (p * 10_000.0).round().clamp(0.0, 1_000_000.0) as u32,
        denominator: DenominatorType::Million as i32,
    }
}

/// Istio's `set` overwrites, `add` appends.
pub fn headers_to_add(op: &HeaderOp) -> Vec<HeaderValueOption> {
    let entry = |(k, v): (&String, &String), action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    op.set
        .iter()
        .map(|kv| entry(kv, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .chain(
            op.add
                .iter()
                .map(|kv| entry(kv, HeaderAppendAction::AppendIfExistsOrAdd)),
        )
        .collect()
}
