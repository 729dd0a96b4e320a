//! The app's probes through the sidecar, as Istio's `/app-health`: with inbound capture (and
//! STRICT mTLS), the kubelet's plaintext httpGet and tcpSocket probes to the app's ports would
//! reach the proxy and be refused. Each is rewritten into an httpGet to the proxy's admin port,
//! `/app-health/<container>/<livez|readyz|startupz>`, and the original goes to the proxy in
//! `STRAIT_APP_PROBERS` (JSON: path -> {httpGet|tcpSocket, timeoutSeconds}); the proxy, whose
//! traffic is never captured, probes the app on 127.0.0.1 and answers with the outcome.
//!
//! Left alone: exec and gRPC probes, probes that name a `host` (not the pod's own address), and
//! probes whose named port the container does not declare (the kubelet reports that as it
//! would without a mesh; Istio leaves them too).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::error::InjectError;

/// The proxy container's variable holding the original probes.
pub const PROBERS_ENV: &str = "STRAIT_APP_PROBERS";
/// The admin API's prefix for the rewritten probes.
pub const APP_HEALTH: &str = "/app-health/";

/// One original probe, as the proxy performs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Prober {
    #[serde(skip_serializing_if = "Option::is_none")]
    http_get: Option<HttpGet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_socket: Option<TcpSocket>,
    timeout_seconds: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct HttpGet {
    path: String,
    port: u16,
    /// `HTTP` or `HTTPS` (no certificate check, as the kubelet).
    scheme: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    http_headers: Vec<Header>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
struct Header {
    name: String,
    value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
struct TcpSocket {
    port: u16,
}

/// Rewrites the probes of `apps` (the pod's `spec.containers`) to the admin port, and returns
/// the `STRAIT_APP_PROBERS` value, or `None` when no probe was rewritten.
pub(crate) fn rewrite(
    apps: &mut [Container],
    admin_port: u16,
) -> Result<Option<String>, InjectError> {
    let mut probers = BTreeMap::new();
    for c in apps.iter_mut() {
        let ports: Vec<(String, i32)> = c
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, p.container_port)))
            .collect();
        let name = c.name.clone();
        for (kind, probe) in [
            ("livez", &mut c.liveness_probe),
            ("readyz", &mut c.readiness_probe),
            ("startupz", &mut c.startup_probe),
        ] {
            let Some(probe) = probe.as_mut() else {
                continue;
            };
            let Some(prober) = prober(probe, &ports, admin_port) else {
                continue;
            };
            let path = format!("{APP_HEALTH}{name}/{kind}");
            probe.http_get = Some(HTTPGetAction {
                path: Some(path.clone()),
                port: IntOrString::Int(i32::from(admin_port)),
                ..HTTPGetAction::default()
            });
            probe.tcp_socket = None;
            probers.insert(path, prober);
        }
    }
    if probers.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(&probers)
        .map(Some)
        .map_err(|e| InjectError::field("", format!("writing {PROBERS_ENV}: {e}")))
}

/// What the proxy must do for `probe`, or `None` to leave it as it is.
fn prober(probe: &Probe, ports: &[(String, i32)], admin_port: u16) -> Option<Prober> {
    let resolve = |port: &IntOrString| -> Option<u16> {
        let number = match port {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => match name.parse::<i32>() {
                Ok(n) => n,
                Err(_) => ports.iter().find(|(n, _)| n == name)?.1,
            },
        };
        u16::try_from(number).ok().filter(|p| *p != 0)
    };
    // Kubernetes' default when the probe gives none.
    let timeout_seconds = probe.timeout_seconds.unwrap_or(1);
    if let Some(get) = &probe.http_get {
        if get.host.as_ref().is_some_and(|h| !h.is_empty()) {
            return None;
        }
        let port = resolve(&get.port)?;
        let path = get.path.clone().unwrap_or_else(|| "/".into());
        // Already ours (a pod injected before, its status annotation gone).
        if port == admin_port && path.starts_with(APP_HEALTH) {
            return None;
        }
        return Some(Prober {
            http_get: Some(HttpGet {
                path,
                port,
                scheme: get.scheme.clone().unwrap_or_else(|| "HTTP".into()),
                http_headers: get
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| Header {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    })
                    .collect(),
            }),
            tcp_socket: None,
            timeout_seconds,
        });
    }
    if let Some(tcp) = &probe.tcp_socket {
        if tcp.host.as_ref().is_some_and(|h| !h.is_empty()) {
            return None;
        }
        return Some(Prober {
            http_get: None,
            tcp_socket: Some(TcpSocket {
                port: resolve(&tcp.port)?,
            }),
            timeout_seconds,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerPort, ExecAction, GRPCAction, HTTPHeader, TCPSocketAction,
    };

    fn http(port: IntOrString, path: &str) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.into()),
                port,
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(5),
            ..Probe::default()
        }
    }

    fn app() -> Container {
        Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..ContainerPort::default()
            }]),
            liveness_probe: Some(Probe {
                timeout_seconds: Some(3),
                ..http(IntOrString::String("http".into()), "/healthz")
            }),
            readiness_probe: Some(Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::Int(5432),
                    ..TCPSocketAction::default()
                }),
                ..Probe::default()
            }),
            startup_probe: Some(Probe {
                exec: Some(ExecAction {
                    command: Some(vec!["true".into()]),
                }),
                ..Probe::default()
            }),
            ..Container::default()
        }
    }

    #[test]
    fn http_and_tcp_probes_go_through_the_admin_port() {
        let mut apps = vec![app()];
        apps[0]
            .liveness_probe
            .as_mut()
            .unwrap()
            .http_get
            .as_mut()
            .unwrap()
            .http_headers = Some(vec![HTTPHeader {
            name: "x-probe".into(),
            value: "1".into(),
        }]);
        let json = rewrite(&mut apps, 15000).unwrap().unwrap();
        assert_eq!(
            json,
            r#"{"/app-health/web/livez":{"httpGet":{"path":"/healthz","port":8080,"scheme":"HTTP","httpHeaders":[{"name":"x-probe","value":"1"}]},"timeoutSeconds":3},"/app-health/web/readyz":{"tcpSocket":{"port":5432},"timeoutSeconds":1}}"#
        );
        let live = apps[0].liveness_probe.as_ref().unwrap();
        let get = live.http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some("/app-health/web/livez"));
        assert_eq!(get.port, IntOrString::Int(15000));
        assert_eq!(get.http_headers, None);
        assert_eq!(
            (live.period_seconds, live.timeout_seconds),
            (Some(5), Some(3)),
            "the probe's timing is kept"
        );
        let ready = apps[0].readiness_probe.as_ref().unwrap();
        assert_eq!(ready.tcp_socket, None);
        assert_eq!(
            ready.http_get.as_ref().unwrap().path.as_deref(),
            Some("/app-health/web/readyz")
        );
        assert!(
            apps[0].startup_probe.as_ref().unwrap().exec.is_some(),
            "exec probes are left alone"
        );
        // Rewriting again changes nothing.
        let once = apps.clone();
        assert_eq!(rewrite(&mut apps, 15000).unwrap(), None);
        assert_eq!(apps, once);
    }

    #[test]
    fn probes_the_proxy_cannot_perform_are_left_alone() {
        let grpc = Probe {
            grpc: Some(GRPCAction {
                port: 9090,
                service: None,
            }),
            ..Probe::default()
        };
        let mut with_host = http(IntOrString::Int(8080), "/");
        with_host.http_get.as_mut().unwrap().host = Some("10.0.0.1".into());
        let unknown_port = http(IntOrString::String("metrics".into()), "/");
        for probe in [grpc, with_host, unknown_port] {
            let mut apps = vec![Container {
                liveness_probe: Some(probe),
                readiness_probe: None,
                startup_probe: None,
                ..app()
            }];
            let before = apps.clone();
            assert_eq!(rewrite(&mut apps, 15000).unwrap(), None);
            assert_eq!(apps, before);
        }
    }

    #[test]
    fn https_probes_keep_their_scheme_and_the_path_defaults_to_the_root() {
        let mut probe = http(IntOrString::Int(8443), "/");
        let get = probe.http_get.as_mut().unwrap();
        get.path = None;
        get.scheme = Some("HTTPS".into());
        let mut apps = vec![Container {
            name: "tls".into(),
            startup_probe: Some(probe),
            ..Container::default()
        }];
        assert_eq!(
            rewrite(&mut apps, 15000).unwrap().unwrap(),
            r#"{"/app-health/tls/startupz":{"httpGet":{"path":"/","port":8443,"scheme":"HTTPS"},"timeoutSeconds":1}}"#
        );
        let get = apps[0]
            .startup_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(get.scheme, None, "the admin port is plain HTTP");
    }
}
