//! Whether a pod gets a sidecar, as Istio decides it: the pod's own wish (label, then
//! annotation), the namespace's label when it is known, and the pods that cannot have one.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::controls::{annotation, parse_bool};
use crate::error::{InjectError, annotation_path, label_path};
use crate::keys;
use crate::settings::InjectSettings;
use crate::sidecar::{self, StopProxy};

/// Why a pod was left as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// It carries `sidecar.strait.io/status`: injecting again would change nothing.
    AlreadyInjected,
    /// It carries Istio's `sidecar.istio.io/status`.
    InjectedByIstio,
    /// hostNetwork pods share the node's network; capturing it would capture the node's.
    HostNetwork,
    /// Kubernetes' own namespaces, as Istio leaves them alone.
    SystemNamespace(String),
    /// `sidecar.istio.io/inject: "false"` (or Strait's key), as label or annotation.
    OptedOut { by: String },
    /// The namespace is labelled `strait-injection=disabled` (or Istio's label).
    NamespaceDisabled { label: String },
    /// Neither the namespace nor the pod asks for a sidecar.
    NotEnabled,
    /// Without native sidecars, a pod that runs to completion (a Job's) has its app's
    /// containers run under `strait-proxy run-app`, which stops the proxy when the app ends;
    /// that needs each container's `command` (the image's entrypoint is unknown here), and
    /// `spec.containers[index]` has none.
    RunsToCompletionWithoutCommand {
        restart_policy: String,
        index: usize,
        container: String,
    },
}

/// Where the decision is made.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scope<'a> {
    /// The admission webhook: the pod's namespace has these labels.
    Namespace(&'a BTreeMap<String, String>),
    /// Offline (`straitctl kube-inject`), or a namespace chosen by the webhook's selector:
    /// every pod that does not opt out; `force` ignores the opt-out too.
    Anywhere { force: bool },
}

/// The pod's own say, and which label or annotation said it.
struct Wish {
    inject: bool,
    by: String,
}

const SYSTEM_NAMESPACES: [&str; 2] = ["kube-system", "kube-public"];

/// `None`: inject.
pub(crate) fn decide(
    meta: &ObjectMeta,
    spec: &PodSpec,
    scope: Scope<'_>,
    settings: &InjectSettings,
) -> Result<Option<SkipReason>, InjectError> {
    if annotation(meta, keys::STATUS).is_some() {
        return Ok(Some(SkipReason::AlreadyInjected));
    }
    if annotation(meta, keys::ISTIO_STATUS).is_some() {
        return Ok(Some(SkipReason::InjectedByIstio));
    }
    let wish = wish(meta)?;
    if spec.host_network == Some(true) {
        return Ok(Some(SkipReason::HostNetwork));
    }
    if let Some(ns) = meta.namespace.as_deref()
        && SYSTEM_NAMESPACES.contains(&ns)
    {
        return Ok(Some(SkipReason::SystemNamespace(ns.to_string())));
    }
    let opted_out = |wish: &Option<Wish>| match wish {
        Some(Wish { inject: false, by }) => Some(SkipReason::OptedOut { by: by.clone() }),
        _ => None,
    };
    let skip = match scope {
        Scope::Anywhere { force: true } => None,
        Scope::Anywhere { force: false } => opted_out(&wish),
        Scope::Namespace(labels) => match namespace_state(labels) {
            Some((NamespaceState::Disabled, label)) => {
                Some(SkipReason::NamespaceDisabled { label })
            }
            Some((NamespaceState::Enabled, _)) => opted_out(&wish),
            None => match &wish {
                Some(Wish { inject: true, .. }) => None,
                Some(Wish { inject: false, by }) => Some(SkipReason::OptedOut { by: by.clone() }),
                None => Some(SkipReason::NotEnabled),
            },
        },
    };
    if skip.is_some() {
        return Ok(skip);
    }
    if run_app(spec, settings).is_some()
        && let Some((index, c)) = spec
            .containers
            .iter()
            .enumerate()
            .find(|(_, c)| c.command.as_ref().is_none_or(Vec::is_empty))
    {
        return Ok(Some(SkipReason::RunsToCompletionWithoutCommand {
            restart_policy: spec.restart_policy.clone().unwrap_or_default(),
            index,
            container: c.name.clone(),
        }));
    }
    Ok(None)
}

/// Without native sidecars, a pod that runs to completion (restartPolicy `Never` or
/// `OnFailure`, a Job's) would never end beside a proxy that does not: its app's containers
/// run under `strait-proxy run-app`, which stops the proxy as this says.
pub(crate) fn run_app(spec: &PodSpec, settings: &InjectSettings) -> Option<StopProxy> {
    if settings.native_sidecars {
        return None;
    }
    match spec.restart_policy.as_deref() {
        Some("Never") => Some(StopProxy::Always),
        Some("OnFailure") => Some(StopProxy::OnSuccess),
        _ => None,
    }
}

/// Labels before annotations, Strait's key before Istio's; the first present decides.
fn wish(meta: &ObjectMeta) -> Result<Option<Wish>, InjectError> {
    let label = |key: &str| meta.labels.as_ref()?.get(key).map(String::as_str);
    let candidates = [
        (label(keys::INJECT_STRAIT), "label", keys::INJECT_STRAIT),
        (label(keys::INJECT_ISTIO), "label", keys::INJECT_ISTIO),
        (
            annotation(meta, keys::INJECT_STRAIT),
            "annotation",
            keys::INJECT_STRAIT,
        ),
        (
            annotation(meta, keys::INJECT_ISTIO),
            "annotation",
            keys::INJECT_ISTIO,
        ),
    ];
    let Some((Some(value), what, key)) = candidates.into_iter().find(|(v, ..)| v.is_some()) else {
        return Ok(None);
    };
    let inject = match parse_bool(value) {
        Some(inject) => inject,
        None => {
            let path = if what == "label" {
                label_path(key)
            } else {
                annotation_path(key)
            };
            return Err(InjectError::field(
                path,
                format!("expected \"true\" or \"false\", got {value:?}"),
            ));
        }
    };
    Ok(Some(Wish {
        inject,
        by: format!("{what} {key}={value}"),
    }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NamespaceState {
    Enabled,
    Disabled,
}

/// `disabled` on either label wins; then `enabled` on either. Other values select nothing, as
/// they would not match the webhook's namespace selector.
fn namespace_state(labels: &BTreeMap<String, String>) -> Option<(NamespaceState, String)> {
    let find = |value: &str| {
        [keys::NAMESPACE_STRAIT, keys::NAMESPACE_ISTIO]
            .into_iter()
            .find(|key| labels.get(*key).is_some_and(|v| v == value))
            .map(|key| format!("{key}={value}"))
    };
    find("disabled")
        .map(|label| (NamespaceState::Disabled, label))
        .or_else(|| find("enabled").map(|label| (NamespaceState::Enabled, label)))
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::AlreadyInjected => {
                write!(f, "already injected ({} is set)", keys::STATUS)
            }
            SkipReason::InjectedByIstio => {
                write!(f, "injected by Istio ({} is set)", keys::ISTIO_STATUS)
            }
            SkipReason::HostNetwork => f.write_str("hostNetwork pods are not injected"),
            SkipReason::SystemNamespace(ns) => {
                write!(f, "pods in the {ns} namespace are not injected")
            }
            SkipReason::OptedOut { by } => write!(f, "the pod opts out ({by})"),
            SkipReason::NamespaceDisabled { label } => {
                write!(f, "the namespace opts out ({label})")
            }
            SkipReason::NotEnabled => write!(
                f,
                "neither the namespace ({}=enabled) nor the pod ({}=true) asks for a sidecar",
                keys::NAMESPACE_STRAIT,
                keys::INJECT_ISTIO
            ),
            SkipReason::RunsToCompletionWithoutCommand {
                restart_policy,
                index,
                container,
            } => write!(
                f,
                "the pod runs to completion (restartPolicy {restart_policy}) and native sidecars are off, so its containers must run under {} run-app to stop the proxy when they end; spec.containers[{index}].command (container {container}) is not set and the image's entrypoint is unknown here: set command to have the pod injected",
                sidecar::RUN_APP_BINARY
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        ObjectMeta {
            labels: map(labels),
            annotations: map(annotations),
            ..ObjectMeta::default()
        }
    }

    fn ns(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn decide_in(meta: &ObjectMeta, scope: Scope<'_>) -> Option<SkipReason> {
        decide(meta, &PodSpec::default(), scope, &InjectSettings::default()).unwrap()
    }

    #[test]
    fn namespace_labels_enable_and_disable() {
        let plain = pod(&[], &[]);
        for label in [keys::NAMESPACE_STRAIT, keys::NAMESPACE_ISTIO] {
            let enabled = ns(&[(label, "enabled")]);
            assert_eq!(decide_in(&plain, Scope::Namespace(&enabled)), None);
            let disabled = ns(&[(label, "disabled")]);
            assert_eq!(
                decide_in(&plain, Scope::Namespace(&disabled)),
                Some(SkipReason::NamespaceDisabled {
                    label: format!("{label}=disabled")
                })
            );
        }
        assert_eq!(
            decide_in(&plain, Scope::Namespace(&ns(&[]))),
            Some(SkipReason::NotEnabled)
        );
        // disabled wins over enabled, and over the pod's wish.
        let both = ns(&[
            (keys::NAMESPACE_STRAIT, "enabled"),
            (keys::NAMESPACE_ISTIO, "disabled"),
        ]);
        let wants = pod(&[(keys::INJECT_ISTIO, "true")], &[]);
        assert!(matches!(
            decide_in(&wants, Scope::Namespace(&both)),
            Some(SkipReason::NamespaceDisabled { .. })
        ));
    }

    #[test]
    fn the_pod_opts_in_and_out() {
        let unlabelled = ns(&[]);
        let enabled = ns(&[(keys::NAMESPACE_ISTIO, "enabled")]);
        let opt_in = pod(&[(keys::INJECT_ISTIO, "true")], &[]);
        assert_eq!(decide_in(&opt_in, Scope::Namespace(&unlabelled)), None);
        let opt_in = pod(&[], &[(keys::INJECT_STRAIT, "true")]);
        assert_eq!(decide_in(&opt_in, Scope::Namespace(&unlabelled)), None);
        for out in [
            pod(&[(keys::INJECT_ISTIO, "false")], &[]),
            pod(&[], &[(keys::INJECT_ISTIO, "false")]),
            pod(&[(keys::INJECT_STRAIT, "false")], &[]),
            pod(&[], &[(keys::INJECT_STRAIT, "no")]),
        ] {
            assert!(matches!(
                decide_in(&out, Scope::Namespace(&enabled)),
                Some(SkipReason::OptedOut { .. })
            ));
            assert!(matches!(
                decide_in(&out, Scope::Anywhere { force: false }),
                Some(SkipReason::OptedOut { .. })
            ));
            assert_eq!(decide_in(&out, Scope::Anywhere { force: true }), None);
        }
        // The label wins over the annotation.
        let both = pod(
            &[(keys::INJECT_ISTIO, "true")],
            &[(keys::INJECT_ISTIO, "false")],
        );
        assert_eq!(decide_in(&both, Scope::Namespace(&unlabelled)), None);
        assert_eq!(
            decide_in(
                &pod(&[(keys::INJECT_ISTIO, "false")], &[]),
                Scope::Anywhere { force: false }
            ),
            Some(SkipReason::OptedOut {
                by: "label sidecar.istio.io/inject=false".into()
            })
        );
    }

    #[test]
    fn a_bad_inject_value_is_an_error_naming_it() {
        let meta = pod(&[], &[(keys::INJECT_ISTIO, "maybe")]);
        let err = decide(
            &meta,
            &PodSpec::default(),
            Scope::Anywhere { force: false },
            &InjectSettings::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "metadata.annotations['sidecar.istio.io/inject']: expected \"true\" or \"false\", got \"maybe\""
        );
        let meta = pod(&[(keys::INJECT_STRAIT, "")], &[]);
        let err = decide(
            &meta,
            &PodSpec::default(),
            Scope::Anywhere { force: false },
            &InjectSettings::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("metadata.labels['sidecar.strait.io/inject']"),
            "{err}"
        );
    }

    #[test]
    fn pods_that_cannot_have_a_sidecar() {
        let settings = InjectSettings::default();
        let anywhere = Scope::Anywhere { force: true };
        let host = PodSpec {
            host_network: Some(true),
            ..PodSpec::default()
        };
        assert_eq!(
            decide(&pod(&[], &[]), &host, anywhere, &settings).unwrap(),
            Some(SkipReason::HostNetwork)
        );
        let injected = pod(&[], &[(keys::STATUS, "{}")]);
        assert_eq!(
            decide(&injected, &PodSpec::default(), anywhere, &settings).unwrap(),
            Some(SkipReason::AlreadyInjected)
        );
        let istio = pod(&[], &[(keys::ISTIO_STATUS, "{}")]);
        assert_eq!(
            decide(&istio, &PodSpec::default(), anywhere, &settings).unwrap(),
            Some(SkipReason::InjectedByIstio)
        );
        let system = ObjectMeta {
            namespace: Some("kube-system".into()),
            ..ObjectMeta::default()
        };
        assert_eq!(
            decide(&system, &PodSpec::default(), anywhere, &settings).unwrap(),
            Some(SkipReason::SystemNamespace("kube-system".into()))
        );
    }

    #[test]
    fn jobs_without_native_sidecars_need_a_command() {
        use k8s_openapi::api::core::v1::Container;
        let container = |name: &str, command: Option<&[&str]>| Container {
            name: name.into(),
            command: command.map(|c| c.iter().map(|s| s.to_string()).collect()),
            ..Container::default()
        };
        let job = PodSpec {
            restart_policy: Some("Never".into()),
            containers: vec![
                container("main", Some(&["perl", "-e", "1"])),
                container("helper", None),
            ],
            ..PodSpec::default()
        };
        let anywhere = Scope::Anywhere { force: false };
        let native = InjectSettings::default();
        assert_eq!(
            decide(&pod(&[], &[]), &job, anywhere, &native).unwrap(),
            None
        );
        let classic = InjectSettings {
            native_sidecars: false,
            ..InjectSettings::default()
        };
        let skipped = decide(&pod(&[], &[]), &job, anywhere, &classic)
            .unwrap()
            .unwrap();
        assert_eq!(
            skipped,
            SkipReason::RunsToCompletionWithoutCommand {
                restart_policy: "Never".into(),
                index: 1,
                container: "helper".into(),
            }
        );
        assert!(
            skipped
                .to_string()
                .contains("spec.containers[1].command (container helper) is not set"),
            "{skipped}"
        );
        let mut with_commands = job.clone();
        with_commands.containers[1].command = Some(vec!["sleep".into()]);
        assert_eq!(
            decide(&pod(&[], &[]), &with_commands, anywhere, &classic).unwrap(),
            None
        );
        assert_eq!(run_app(&with_commands, &classic), Some(StopProxy::Always));
        with_commands.restart_policy = Some("OnFailure".into());
        assert_eq!(
            run_app(&with_commands, &classic),
            Some(StopProxy::OnSuccess)
        );
        assert_eq!(run_app(&with_commands, &native), None);
        let service = PodSpec {
            restart_policy: Some("Always".into()),
            ..PodSpec::default()
        };
        assert_eq!(
            decide(&pod(&[], &[]), &service, anywhere, &classic).unwrap(),
            None
        );
    }
}
