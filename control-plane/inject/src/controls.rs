//! A pod's annotations, read into what the sidecar will be: the interception mode, the proxy's
//! resources and the capture lists. A malformed value is an error naming the annotation.

use std::collections::BTreeMap;
use std::str::FromStr;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::capture::{Capture, CidrList, ListError, PortList, Selection};
use crate::error::{InjectError, annotation_path};
use crate::keys;
use crate::quantity::Quantity;
use crate::settings::{CpuMemory, InjectSettings};

/// How the pod's traffic reaches the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interception {
    /// iptables (the `strait-init` container) redirects the pod's TCP to the proxy.
    Redirect,
    /// Nothing is captured; the app sends to the proxy's outbound port itself.
    None,
}

/// What the annotations make of the settings.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Controls {
    pub interception: Interception,
    pub resources: Option<ResourceRequirements>,
    /// The init container's capture; `None` with interception `NONE`.
    pub capture: Option<Capture>,
    /// Send the app's probes through the proxy (only with capture: without, the kubelet
    /// reaches the app itself).
    pub rewrite_probes: bool,
}

pub(crate) fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn parse<T: FromStr<Err = ListError>>(
    meta: &ObjectMeta,
    key: &str,
) -> Result<Option<T>, InjectError> {
    annotation(meta, key)
        .map(|text| {
            text.parse()
                .map_err(|e: ListError| InjectError::field(annotation_path(key), e.to_string()))
        })
        .transpose()
}

pub(crate) fn read(meta: &ObjectMeta, settings: &InjectSettings) -> Result<Controls, InjectError> {
    let interception = interception(meta)?;
    let resources = resources(meta, settings)?;
    let capture = match interception {
        Interception::Redirect => Some(capture(meta, settings)?),
        Interception::None => None,
    };
    let rewrite_probes = interception == Interception::Redirect
        && flag(
            meta,
            &[keys::REWRITE_PROBES_STRAIT, keys::REWRITE_PROBES_ISTIO],
        )?
        .unwrap_or(settings.rewrite_app_http_probe);
    Ok(Controls {
        interception,
        resources,
        capture,
        rewrite_probes,
    })
}

/// Istio's spellings of yes and no.
pub(crate) fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "y" | "yes" | "on" => Some(true),
        "false" | "n" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// The first of `keys` annotated, as a boolean.
fn flag(meta: &ObjectMeta, keys: &[&str]) -> Result<Option<bool>, InjectError> {
    let Some((key, value)) = keys
        .iter()
        .find_map(|key| Some((*key, annotation(meta, key)?)))
    else {
        return Ok(None);
    };
    parse_bool(value).map(Some).ok_or_else(|| {
        InjectError::field(
            annotation_path(key),
            format!("expected \"true\" or \"false\", got {value:?}"),
        )
    })
}

fn interception(meta: &ObjectMeta) -> Result<Interception, InjectError> {
    let Some(mode) = annotation(meta, keys::INTERCEPTION_MODE) else {
        return Ok(Interception::Redirect);
    };
    let error = |message: String| {
        Err(InjectError::field(
            annotation_path(keys::INTERCEPTION_MODE),
            message,
        ))
    };
    match mode.trim().to_ascii_uppercase().as_str() {
        "REDIRECT" => Ok(Interception::Redirect),
        "NONE" => Ok(Interception::None),
        "TPROXY" => error(
            "TPROXY is not supported: strait-proxy captures with REDIRECT (or NONE, for no capture)"
                .into(),
        ),
        _ => error(format!("expected REDIRECT or NONE, got {mode:?}")),
    }
}

fn resources(
    meta: &ObjectMeta,
    settings: &InjectSettings,
) -> Result<Option<ResourceRequirements>, InjectError> {
    let quantity = |key: &str, default: &Option<Quantity>| -> Result<Option<String>, InjectError> {
        match annotation(meta, key) {
            Some(text) => Quantity::parse(text.trim())
                .map(|q| Some(q.to_string()))
                .map_err(|e| InjectError::field(annotation_path(key), e.to_string())),
            None => Ok(default.as_ref().map(ToString::to_string)),
        }
    };
    let list = |cpu: Option<String>, memory: Option<String>| {
        let list: BTreeMap<String, K8sQuantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(name, q)| Some((name.to_string(), K8sQuantity(q?))))
            .collect();
        (!list.is_empty()).then_some(list)
    };
    let CpuMemory { cpu, memory } = &settings.resources.requests;
    let requests = list(
        quantity(keys::PROXY_CPU, cpu)?,
        quantity(keys::PROXY_MEMORY, memory)?,
    );
    let CpuMemory { cpu, memory } = &settings.resources.limits;
    let limits = list(
        quantity(keys::PROXY_CPU_LIMIT, cpu)?,
        quantity(keys::PROXY_MEMORY_LIMIT, memory)?,
    );
    Ok(
        (requests.is_some() || limits.is_some()).then(|| ResourceRequirements {
            requests,
            limits,
            ..ResourceRequirements::default()
        }),
    )
}

/// The settings' lists, each replaced by its annotation; inbound exclusions add up: the admin
/// port, the settings' ports, then the annotation's.
fn capture(meta: &ObjectMeta, settings: &InjectSettings) -> Result<Capture, InjectError> {
    let defaults = &settings.capture;
    let cidrs_v6_checked = |key: &str, v6: bool| {
        if v6 && !defaults.ipv6 {
            return Err(InjectError::field(
                annotation_path(key),
                "an IPv6 range needs IPv6 capture (capture.ipv6 in the injection settings)",
            ));
        }
        Ok(())
    };
    let include_outbound_cidrs: Selection<CidrList> =
        parse(meta, keys::INCLUDE_OUTBOUND_IP_RANGES)?
            .unwrap_or_else(|| defaults.include_outbound_cidrs.clone());
    cidrs_v6_checked(
        keys::INCLUDE_OUTBOUND_IP_RANGES,
        include_outbound_cidrs.has_ipv6(),
    )?;
    let exclude_outbound_cidrs: CidrList = parse(meta, keys::EXCLUDE_OUTBOUND_IP_RANGES)?
        .unwrap_or_else(|| defaults.exclude_outbound_cidrs.clone());
    cidrs_v6_checked(
        keys::EXCLUDE_OUTBOUND_IP_RANGES,
        exclude_outbound_cidrs.has_ipv6(),
    )?;
    let annotated_exclusions: PortList =
        parse(meta, keys::EXCLUDE_INBOUND_PORTS)?.unwrap_or_default();
    Ok(Capture {
        proxy_uid: settings.proxy_uid,
        proxy_gid: settings.proxy_gid,
        outbound_port: settings.ports.outbound,
        inbound_port: settings.ports.inbound,
        include_outbound_cidrs,
        exclude_outbound_cidrs,
        include_outbound_ports: parse(meta, keys::INCLUDE_OUTBOUND_PORTS)?
            .unwrap_or_else(|| defaults.include_outbound_ports.clone()),
        exclude_outbound_ports: parse(meta, keys::EXCLUDE_OUTBOUND_PORTS)?
            .unwrap_or_else(|| defaults.exclude_outbound_ports.clone()),
        include_inbound_ports: parse(meta, keys::INCLUDE_INBOUND_PORTS)?
            .unwrap_or_else(|| defaults.include_inbound_ports.clone()),
        exclude_inbound_ports: PortList(vec![settings.ports.admin])
            .merged(&defaults.exclude_inbound_ports)
            .merged(&annotated_exclusions),
        ipv6: defaults.ipv6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    fn read_args(annotations: &[(&str, &str)]) -> Result<Vec<String>, String> {
        read(&meta(annotations), &InjectSettings::default())
            .map(|c| c.capture.map(|c| c.args()).unwrap_or_default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn without_annotations_the_capture_is_istios_default() {
        assert_eq!(
            read_args(&[]).unwrap().join(" "),
            "iptables --proxy-uid 1337 --proxy-gid 1337 --outbound-port 15001 --inbound-port 15006 \
             --include-outbound-cidrs * --include-inbound-ports * --exclude-inbound-ports 15000,15090,15021,15020"
        );
    }

    #[test]
    fn traffic_annotations_map_to_the_iptables_flags() {
        let args = read_args(&[
            (
                keys::INCLUDE_OUTBOUND_IP_RANGES,
                "10.0.0.0/8, 172.16.0.0/12",
            ),
            (keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.96.0.1/32"),
            (keys::INCLUDE_OUTBOUND_PORTS, "5432"),
            (keys::EXCLUDE_OUTBOUND_PORTS, "6379,11211"),
            (keys::INCLUDE_INBOUND_PORTS, "9080"),
            (keys::EXCLUDE_INBOUND_PORTS, "15090,8081"),
        ])
        .unwrap();
        assert_eq!(
            args[9..].join(" "),
            "--include-outbound-cidrs 10.0.0.0/8,172.16.0.0/12 --exclude-outbound-cidrs 10.96.0.1/32 \
             --include-outbound-ports 5432 --exclude-outbound-ports 6379,11211 \
             --include-inbound-ports 9080 --exclude-inbound-ports 15000,15090,15021,15020,8081"
        );
        // An empty include list captures nothing, as in Istio.
        let args = read_args(&[(keys::INCLUDE_INBOUND_PORTS, "")]).unwrap();
        let at = args
            .iter()
            .position(|a| a == "--include-inbound-ports")
            .unwrap();
        assert_eq!(args[at + 1], "");
    }

    #[test]
    fn bad_annotations_are_errors_naming_them() {
        assert_eq!(
            read_args(&[(keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33")]).unwrap_err(),
            "metadata.annotations['traffic.sidecar.istio.io/excludeOutboundIPRanges']: \"10.0.0.0/33\": prefix length 33 is longer than 32"
        );
        assert_eq!(
            read_args(&[(keys::INCLUDE_INBOUND_PORTS, "9080,http")]).unwrap_err(),
            "metadata.annotations['traffic.sidecar.istio.io/includeInboundPorts']: \"http\": not a port number (1-65535)"
        );
        assert!(
            read_args(&[(keys::EXCLUDE_INBOUND_PORTS, "0")])
                .unwrap_err()
                .contains("port 0")
        );
        assert!(
            read_args(&[(keys::INCLUDE_OUTBOUND_IP_RANGES, "fd00::/8")])
                .unwrap_err()
                .starts_with("metadata.annotations['traffic.sidecar.istio.io/includeOutboundIPRanges']: an IPv6 range needs IPv6 capture")
        );
        assert!(
            read_args(&[(keys::INTERCEPTION_MODE, "TPROXY")])
                .unwrap_err()
                .contains("TPROXY is not supported")
        );
        assert_eq!(
            read_args(&[(keys::PROXY_MEMORY, "lots")]).unwrap_err(),
            "metadata.annotations['sidecar.istio.io/proxyMemory']: \"lots\" is not a resource quantity (a number with an optional suffix: m, k, M, G, Ki, Mi, Gi, …)"
        );
    }

    #[test]
    fn interception_none_captures_nothing() {
        let controls = read(
            &meta(&[(keys::INTERCEPTION_MODE, "none")]),
            &InjectSettings::default(),
        )
        .unwrap();
        assert_eq!(controls.interception, Interception::None);
        assert_eq!(controls.capture, None);
    }

    #[test]
    fn resource_annotations_replace_the_settings() {
        let controls = read(
            &meta(&[
                (keys::PROXY_CPU, "250m"),
                (keys::PROXY_MEMORY, "256Mi"),
                (keys::PROXY_CPU_LIMIT, "1"),
                (keys::PROXY_MEMORY_LIMIT, "512Mi"),
            ]),
            &InjectSettings::default(),
        )
        .unwrap();
        let r = controls.resources.unwrap();
        let get = |list: &Option<BTreeMap<String, K8sQuantity>>, k: &str| {
            list.as_ref().unwrap()[k].0.clone()
        };
        assert_eq!(get(&r.requests, "cpu"), "250m");
        assert_eq!(get(&r.requests, "memory"), "256Mi");
        assert_eq!(get(&r.limits, "cpu"), "1");
        assert_eq!(get(&r.limits, "memory"), "512Mi");
        // Only the annotated value changes.
        let r = read(
            &meta(&[(keys::PROXY_CPU, "50m")]),
            &InjectSettings::default(),
        )
        .unwrap()
        .resources
        .unwrap();
        assert_eq!(get(&r.requests, "cpu"), "50m");
        assert_eq!(get(&r.requests, "memory"), "128Mi");
        assert_eq!(get(&r.limits, "cpu"), "2000m");
    }

    /// The arguments are ones `strait-proxy iptables` accepts and means the same by.
    #[test]
    fn strait_proxy_iptables_accepts_the_arguments() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            command: Command,
        }
        #[derive(clap::Subcommand)]
        enum Command {
            Iptables(strait_iptables::Args),
        }
        let args = read_args(&[
            (keys::EXCLUDE_OUTBOUND_IP_RANGES, "10.96.0.0/12"),
            (keys::INCLUDE_INBOUND_PORTS, "9080,9090"),
            (keys::EXCLUDE_OUTBOUND_PORTS, "6379"),
        ])
        .unwrap();
        let cli =
            Cli::try_parse_from(std::iter::once("strait-proxy".to_string()).chain(args)).unwrap();
        let Command::Iptables(parsed) = cli.command;
        let settings = strait_iptables::Settings::parse(&parsed.raw()).unwrap();
        assert_eq!(settings.proxy_uids, [1337]);
        assert_eq!(
            settings.exclude_outbound_cidrs[0].to_string(),
            "10.96.0.0/12"
        );
        let strait_iptables::settings::Selection::Only(inbound) = &settings.include_inbound_ports
        else {
            panic!("{:?}", settings.include_inbound_ports)
        };
        let inbound: Vec<u16> = inbound.iter().map(|p| p.get()).collect();
        assert_eq!(inbound, [9080, 9090]);
        let excluded: Vec<u16> = settings
            .exclude_outbound_ports
            .iter()
            .map(|p| p.get())
            .collect();
        assert_eq!(excluded, [6379]);
    }
}
