//! The containers and volumes a sidecar adds: `strait-init` (the capture), `strait-proxy`, the
//! projected ServiceAccount token and the mesh root; for a pod that runs to completion without
//! native sidecars, `strait-copy` (strait-proxy into the `strait-bin` volume) and the app's
//! containers rewritten to run under `strait-proxy run-app`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Probe,
    ProjectedVolumeSource, ResourceRequirements, SecurityContext, ServiceAccountTokenProjection,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::capture::Capture;
use crate::controls::Interception;
use crate::settings::InjectSettings;

pub const PROXY_CONTAINER: &str = "strait-proxy";
pub const INIT_CONTAINER: &str = "strait-init";
pub const TOKEN_VOLUME: &str = "strait-token";
pub const ROOT_VOLUME: &str = "strait-ca-root";
pub const TOKEN_DIR: &str = "/var/run/secrets/strait/tokens";
/// The token's file name in [`TOKEN_DIR`].
pub const TOKEN_FILE: &str = "strait-token";
pub const ROOT_DIR: &str = "/var/run/secrets/strait/root";
/// The init container that copies strait-proxy into [`BIN_VOLUME`].
pub const COPY_CONTAINER: &str = "strait-copy";
/// An emptyDir holding strait-proxy, mounted read-only into the app's containers at [`BIN_DIR`].
pub const BIN_VOLUME: &str = "strait-bin";
pub const BIN_DIR: &str = "/var/run/strait/bin";
/// strait-proxy as the app's containers see it.
pub const RUN_APP_BINARY: &str = "/var/run/strait/bin/strait-proxy";
/// On the proxy container: the app containers under run-app, comma-separated. The proxy stops
/// once each has reported its end (`run-app --container NAME`).
pub const RUN_APP_CONTAINERS_ENV: &str = "STRAIT_RUN_APP_CONTAINERS";

/// Where the proxy container goes, which decides how the app waits for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// An init container with `restartPolicy: Always`: its startup probe holds the containers
    /// after it until the proxy is ready, and it stops after the app.
    Native,
    /// The first container, whose postStart hook returns only once the proxy is ready: the
    /// kubelet starts the next container after that (Istio's holdApplicationUntilProxyStarts).
    Held,
    /// The last container, started beside the app.
    Beside,
    /// The first container, with no hook: the app's containers run under `strait-proxy
    /// run-app`, which waits for the proxy itself and stops it when the app ends (a pod that
    /// runs to completion, without native sidecars).
    Wrapped,
}

/// How `run-app` treats the proxy once the app has ended: from the pod's restartPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopProxy {
    /// `Never`: the pod is done when its app is.
    Always,
    /// `OnFailure`: the kubelet starts a failed app again, which needs the proxy.
    OnSuccess,
}

/// `iptables --proxy-uid 1337 …` as root with NET_ADMIN and NET_RAW, and nothing else.
pub(crate) fn init_container(
    settings: &InjectSettings,
    capture: &Capture,
    resources: Option<ResourceRequirements>,
) -> Container {
    Container {
        name: INIT_CONTAINER.to_string(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        args: Some(capture.args()),
        resources,
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            privileged: Some(false),
            // iptables takes its lock under /run.
            read_only_root_filesystem: Some(false),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The proxy: identity from the projected token, node metadata from the downward API.
pub(crate) fn proxy_container(
    settings: &InjectSettings,
    interception: Interception,
    labels: &BTreeMap<String, String>,
    resources: Option<ResourceRequirements>,
    placement: Placement,
) -> Container {
    let admin = i32::from(settings.ports.admin);
    let mut args: Vec<String> = Vec::new();
    let mut flag = |name: &str, value: String| {
        args.push(format!("--{name}"));
        args.push(value);
    };
    flag("xds", format!("https://{}", settings.xds_address));
    flag("ca-root", format!("{ROOT_DIR}/{}", settings.ca_root_key));
    flag("token-file", format!("{TOKEN_DIR}/{TOKEN_FILE}"));
    flag("trust-domain", settings.trust_domain.clone());
    flag("node-id", "$(POD_NAME).$(POD_NAMESPACE)".into());
    flag("namespace", "$(POD_NAMESPACE)".into());
    flag("service-account", "$(SERVICE_ACCOUNT)".into());
    if !labels.is_empty() {
        let pairs: Vec<String> = labels
            .keys()
            .enumerate()
            .map(|(i, key)| format!("{key}=$({})", label_env(i)))
            .collect();
        flag("labels", pairs.join(","));
    }
    flag("outbound-port", settings.ports.outbound.to_string());
    match interception {
        Interception::Redirect => {
            flag("interception", "redirect".into());
            flag("inbound-port", settings.ports.inbound.to_string());
            flag("instance-ips", "$(INSTANCE_IPS)".into());
        }
        Interception::None => flag("interception", "none".into()),
    }
    // All addresses: the kubelet probes /ready on the pod's IP.
    flag("admin-addr", format!("0.0.0.0:{admin}"));

    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ];
    if interception == Interception::Redirect {
        env.push(field_env("INSTANCE_IPS", "status.podIPs"));
    }
    // One variable per label known now: the downward API gives labels to variables only by
    // key. Values are read when the container starts.
    env.extend(
        labels
            .keys()
            .enumerate()
            .map(|(i, key)| field_env(&label_env(i), &format!("metadata.labels['{key}']"))),
    );

    let ready = |period: i32, failures: i32, initial_delay: Option<i32>| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/ready".into()),
            port: IntOrString::Int(admin),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: initial_delay,
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let (restart_policy, startup_probe, lifecycle) = match placement {
        Placement::Native => (Some("Always".to_string()), Some(ready(1, 600, None)), None),
        Placement::Held => (
            None,
            None,
            Some(Lifecycle {
                post_start: Some(LifecycleHandler {
                    exec: Some(ExecAction {
                        command: Some(vec![
                            "strait-proxy".into(),
                            "wait".into(),
                            "--admin-addr".into(),
                            format!("127.0.0.1:{admin}"),
                            "--timeout".into(),
                            "600s".into(),
                        ]),
                    }),
                    ..LifecycleHandler::default()
                }),
                ..Lifecycle::default()
            }),
        ),
        Placement::Beside | Placement::Wrapped => (None, None, None),
    };
    Container {
        name: PROXY_CONTAINER.to_string(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        args: Some(args),
        env: Some(env),
        restart_policy,
        startup_probe,
        readiness_probe: Some(ready(2, 30, Some(1))),
        lifecycle,
        resources,
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_group: Some(settings.proxy_gid),
            run_as_non_root: Some(true),
            run_as_user: Some(settings.proxy_uid),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: TOKEN_VOLUME.into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: ROOT_VOLUME.into(),
                mount_path: ROOT_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    }
}

/// `strait-proxy copy-self` into the `strait-bin` volume, as the proxy's user: the app's
/// containers run it from there, whatever their image holds.
pub(crate) fn copy_container(
    settings: &InjectSettings,
    resources: Option<ResourceRequirements>,
) -> Container {
    Container {
        name: COPY_CONTAINER.to_string(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        args: Some(vec![
            "copy-self".into(),
            "--to".into(),
            RUN_APP_BINARY.into(),
        ]),
        resources,
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_group: Some(settings.proxy_gid),
            run_as_non_root: Some(true),
            run_as_user: Some(settings.proxy_uid),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: BIN_VOLUME.into(),
            mount_path: BIN_DIR.into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

pub(crate) fn bin_volume() -> Volume {
    Volume {
        name: BIN_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// The container already runs under `strait-proxy run-app` (injected, or written so).
pub(crate) fn runs_under_run_app(container: &Container) -> bool {
    container.command.as_deref() == Some(&[RUN_APP_BINARY.to_string()])
        && container
            .args
            .as_deref()
            .and_then(<[String]>::first)
            .is_some_and(|a| a == "run-app")
}

/// `command: [strait-proxy]`, `args: [run-app, --admin-addr, …, --container NAME, --,
/// <command…>, <args…>]`, with the `strait-bin` volume mounted read-only. Kubernetes expands
/// `$(VAR)` in `command` and `args` alike, so the app's own move over as they are. A container
/// already running under run-app keeps its arguments, with `--container NAME` added if they
/// have none; one without `command` is the caller's to refuse (the image's entrypoint is
/// unknown here). Returns the name this run-app reports its end as, for
/// [`RUN_APP_CONTAINERS_ENV`].
pub(crate) fn run_app(container: &mut Container, admin_port: u16, stop: StopProxy) -> String {
    if runs_under_run_app(container) {
        let args = container.args.get_or_insert_default();
        // run-app's own flags: the ones before `--`.
        let flags = args.iter().position(|a| a == "--").unwrap_or(args.len());
        let named = args[..flags].iter().enumerate().find_map(|(i, a)| {
            match a.strip_prefix("--container=") {
                Some(name) => Some(name.to_string()),
                None if a == "--container" => args.get(i + 1).cloned(),
                None => None,
            }
        });
        if let Some(name) = named {
            add_bin_mount(container);
            return name;
        }
        args.splice(1..1, ["--container".to_string(), container.name.clone()]);
    } else {
        let mut args = vec![
            "run-app".to_string(),
            "--admin-addr".into(),
            format!("127.0.0.1:{admin_port}"),
        ];
        if stop == StopProxy::OnSuccess {
            args.extend(["--stop-proxy".into(), "on-success".into()]);
        }
        args.extend(["--container".into(), container.name.clone()]);
        args.push("--".into());
        args.extend(container.command.take().unwrap_or_default());
        args.extend(container.args.take().unwrap_or_default());
        container.command = Some(vec![RUN_APP_BINARY.into()]);
        container.args = Some(args);
    }
    add_bin_mount(container);
    container.name.clone()
}

fn add_bin_mount(container: &mut Container) {
    let mounts = container.volume_mounts.get_or_insert_default();
    if !mounts.iter().any(|m| m.name == BIN_VOLUME) {
        mounts.push(VolumeMount {
            name: BIN_VOLUME.into(),
            mount_path: BIN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
}

/// The token (audience `strait-ca`, renewed by the kubelet) and the root ConfigMap.
pub(crate) fn volumes(settings: &InjectSettings) -> Vec<Volume> {
    vec![
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(settings.token_audience.clone()),
                        expiration_seconds: Some(settings.token_expiration_seconds),
                        path: TOKEN_FILE.into(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: ROOT_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: settings.ca_root_config_map.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ]
}

fn label_env(index: usize) -> String {
    format!("STRAIT_LABEL_{index}")
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}
