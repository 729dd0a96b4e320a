//! `inject_pod`: one pod's metadata and spec in, the injected spec (and what to add to its
//! metadata) or the reason to leave it out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::controls::{self, Interception, annotation};
use crate::error::InjectError;
use crate::keys;
use crate::policy::{self, Scope, SkipReason};
use crate::probes;
use crate::settings::InjectSettings;
use crate::sidecar::{self, Placement};

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Injected(Injection),
    Skipped(SkipReason),
}

/// An injected pod: its whole new spec, and what its metadata gains.
#[derive(Clone, Debug, PartialEq)]
pub struct Injection {
    pub spec: PodSpec,
    /// Added to (or replacing) the pod's annotations.
    pub annotations: BTreeMap<String, String>,
    /// Added to the pod's labels.
    pub labels: BTreeMap<String, String>,
}

/// The `sidecar.strait.io/status` annotation: what the injection added, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub init_containers: Vec<String>,
    pub containers: Vec<String>,
    pub volumes: Vec<String>,
}

impl Injection {
    /// `meta` with the annotations and labels added.
    pub fn apply_to(&self, meta: &mut ObjectMeta) {
        meta.annotations
            .get_or_insert_default()
            .extend(self.annotations.clone());
        if !self.labels.is_empty() {
            meta.labels
                .get_or_insert_default()
                .extend(self.labels.clone());
        }
    }
}

/// Injects one pod, deciding as the admission webhook does: with `namespace_labels`, the
/// namespace must enable injection (`strait-injection=enabled` or `istio-injection=enabled`)
/// or the pod ask for it (`sidecar.istio.io/inject: "true"`); without them (offline, or a
/// namespace the webhook's selector already chose), every pod that does not opt out is
/// injected. A pod already injected is skipped, so injecting twice changes nothing.
pub fn inject_pod(
    meta: &ObjectMeta,
    spec: &PodSpec,
    namespace_labels: Option<&BTreeMap<String, String>>,
    settings: &InjectSettings,
) -> Result<Decision, InjectError> {
    let scope = match namespace_labels {
        Some(labels) => Scope::Namespace(labels),
        None => Scope::Anywhere { force: false },
    };
    inject_in(meta, spec, scope, settings)
}

pub(crate) fn inject_in(
    meta: &ObjectMeta,
    spec: &PodSpec,
    scope: Scope<'_>,
    settings: &InjectSettings,
) -> Result<Decision, InjectError> {
    settings.validate()?;
    if let Some(reason) = policy::decide(meta, spec, scope, settings)? {
        return Ok(Decision::Skipped(reason));
    }
    let controls = controls::read(meta, settings)?;
    check_clashes(spec, settings, controls.interception)?;

    let mut labels = BTreeMap::new();
    let has_label = |key: &str| meta.labels.as_ref().is_some_and(|l| l.contains_key(key));
    if controls.interception == Interception::Redirect && !has_label(keys::TLS_MODE) {
        labels.insert(keys::TLS_MODE.to_string(), "istio".to_string());
    }
    let mut pod_labels = meta.labels.clone().unwrap_or_default();
    pod_labels.extend(labels.clone());

    let run_app = policy::run_app(spec, settings);
    let placement = match (
        settings.native_sidecars,
        settings.hold_application_until_proxy_starts,
    ) {
        (true, _) => Placement::Native,
        // run-app waits for the proxy itself: no hook to hold the app with.
        (false, _) if run_app.is_some() => Placement::Wrapped,
        (false, true) => Placement::Held,
        (false, false) => Placement::Beside,
    };
    let mut proxy = sidecar::proxy_container(
        settings,
        controls.interception,
        &pod_labels,
        controls.resources.clone(),
        placement,
    );
    let mut apps = spec.containers.clone();
    if controls.rewrite_probes
        && let Some(probers) = probes::rewrite(&mut apps, settings.ports.admin)?
    {
        proxy.env.get_or_insert_default().push(EnvVar {
            name: probes::PROBERS_ENV.into(),
            value: Some(probers),
            ..EnvVar::default()
        });
    }
    let init = controls
        .capture
        .as_ref()
        .map(|capture| sidecar::init_container(settings, capture, controls.resources.clone()));

    let mut out = spec.clone();
    let user_init = spec.init_containers.clone().unwrap_or_default();
    let mut status = Status {
        init_containers: Vec::new(),
        containers: Vec::new(),
        volumes: Vec::new(),
    };
    let mut init_containers: Vec<Container> = Vec::new();
    match placement {
        Placement::Native => {
            // The capture first, then the proxy, then the app's own init containers: they
            // start with the proxy ready, so their traffic is captured and works.
            init_containers.extend(init);
            init_containers.push(proxy);
            init_containers.extend(user_init);
            out.containers = apps;
        }
        Placement::Held | Placement::Beside | Placement::Wrapped => {
            // The capture last (as Istio): the app's init containers run before it, when
            // nothing is captured yet, since no proxy would be there to take their traffic.
            init_containers.extend(user_init);
            let mut containers = apps;
            if let Some(stop) = run_app {
                init_containers.push(sidecar::copy_container(
                    settings,
                    controls.resources.clone(),
                ));
                let mut names: Vec<String> = Vec::new();
                for c in &mut containers {
                    let name = sidecar::run_app(c, settings.ports.admin, stop);
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                // The proxy stops once every one of them has ended, not at the first.
                proxy.env.get_or_insert_default().push(EnvVar {
                    name: sidecar::RUN_APP_CONTAINERS_ENV.into(),
                    value: Some(names.join(",")),
                    ..EnvVar::default()
                });
            }
            init_containers.extend(init);
            if placement == Placement::Beside {
                containers.push(proxy);
            } else {
                containers.insert(0, proxy);
            }
            out.containers = containers;
            status.containers.push(sidecar::PROXY_CONTAINER.to_string());
        }
    }
    let ours = |c: &&Container| {
        [
            sidecar::INIT_CONTAINER,
            sidecar::PROXY_CONTAINER,
            sidecar::COPY_CONTAINER,
        ]
        .contains(&c.name.as_str())
    };
    status.init_containers = init_containers
        .iter()
        .filter(ours)
        .map(|c| c.name.clone())
        .collect();
    out.init_containers = (!init_containers.is_empty()).then_some(init_containers);
    let mut volumes = sidecar::volumes(settings);
    if run_app.is_some() {
        volumes.push(sidecar::bin_volume());
    }
    status.volumes = volumes.iter().map(|v| v.name.clone()).collect();
    out.volumes.get_or_insert_default().extend(volumes);

    let mut annotations = BTreeMap::new();
    annotations.insert(
        keys::STATUS.to_string(),
        serde_json::to_string(&status)
            .map_err(|e| InjectError::field("", format!("writing the status: {e}")))?,
    );
    if annotation(meta, keys::DEFAULT_CONTAINER).is_none()
        && let Some(app) = spec.containers.first()
    {
        annotations.insert(keys::DEFAULT_CONTAINER.to_string(), app.name.clone());
    }
    Ok(Decision::Injected(Injection {
        spec: out,
        annotations,
        labels,
    }))
}

/// An app to add the sidecar to, and the names and ports the sidecar needs for itself.
fn check_clashes(
    spec: &PodSpec,
    settings: &InjectSettings,
    interception: Interception,
) -> Result<(), InjectError> {
    if spec.containers.is_empty() {
        return Err(InjectError::field(
            "spec.containers",
            "a pod needs at least one container",
        ));
    }
    let ours = [
        sidecar::PROXY_CONTAINER,
        sidecar::INIT_CONTAINER,
        sidecar::COPY_CONTAINER,
    ];
    let lists = [
        ("containers", spec.containers.as_slice()),
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ),
    ];
    let mut proxy_ports = vec![
        (settings.ports.admin, "the proxy's admin port"),
        (settings.ports.outbound, "the proxy's outbound port"),
    ];
    if interception == Interception::Redirect {
        proxy_ports.push((settings.ports.inbound, "the proxy's inbound capture port"));
    }
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            if ours.contains(&c.name.as_str()) {
                return Err(InjectError::field(
                    format!("spec.{list}[{i}].name"),
                    format!(
                        "a container named {} is already there, without {}: rename it",
                        c.name,
                        keys::STATUS
                    ),
                ));
            }
            for (j, port) in c.ports.iter().flatten().enumerate() {
                let taken = proxy_ports
                    .iter()
                    .find(|(p, _)| i32::from(*p) == port.container_port);
                if let Some((p, what)) = taken {
                    return Err(InjectError::field(
                        format!("spec.{list}[{i}].ports[{j}].containerPort"),
                        format!("{p} is {what}"),
                    ));
                }
            }
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let ours = [
            sidecar::TOKEN_VOLUME,
            sidecar::ROOT_VOLUME,
            sidecar::BIN_VOLUME,
        ];
        if ours.contains(&v.name.as_str()) {
            return Err(InjectError::field(
                format!("spec.volumes[{i}].name"),
                format!(
                    "a volume named {} is already there, without {}: rename it",
                    v.name,
                    keys::STATUS
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: Some(format!("{name}:1")),
            ..Container::default()
        }
    }

    fn app_spec() -> PodSpec {
        PodSpec {
            containers: vec![container("app"), container("logger")],
            init_containers: Some(vec![container("migrate")]),
            ..PodSpec::default()
        }
    }

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        ObjectMeta {
            name: Some("web".into()),
            labels: map(labels),
            annotations: map(annotations),
            ..ObjectMeta::default()
        }
    }

    fn injected(meta: &ObjectMeta, spec: &PodSpec, settings: &InjectSettings) -> Injection {
        match inject_pod(meta, spec, None, settings).unwrap() {
            Decision::Injected(injection) => injection,
            Decision::Skipped(reason) => panic!("skipped: {reason}"),
        }
    }

    fn names(containers: &[Container]) -> Vec<&str> {
        containers.iter().map(|c| c.name.as_str()).collect()
    }

    fn arg<'a>(c: &'a Container, flag: &str) -> Option<&'a str> {
        let args = c.args.as_deref()?;
        let at = args.iter().position(|a| a == flag)?;
        args.get(at + 1).map(String::as_str)
    }

    #[test]
    fn native_sidecar_goes_after_the_capture_and_before_the_apps_init_containers() {
        let spec = app_spec();
        let inj = injected(&meta(&[], &[]), &spec, &InjectSettings::default());
        let init = inj.spec.init_containers.as_deref().unwrap();
        assert_eq!(names(init), ["strait-init", "strait-proxy", "migrate"]);
        assert_eq!(
            inj.spec.containers, spec.containers,
            "the app's containers are untouched"
        );
        let proxy = &init[1];
        assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
        let startup = proxy.startup_probe.as_ref().unwrap();
        assert_eq!(
            startup.http_get.as_ref().unwrap().path.as_deref(),
            Some("/ready")
        );
        assert_eq!(proxy.lifecycle, None);
        let status: Status = serde_json::from_str(&inj.annotations[keys::STATUS]).unwrap();
        assert_eq!(status.init_containers, ["strait-init", "strait-proxy"]);
        assert!(status.containers.is_empty());
        assert_eq!(status.volumes, ["strait-token", "strait-ca-root"]);
        assert_eq!(inj.annotations[keys::DEFAULT_CONTAINER], "app");
        assert_eq!(inj.labels[keys::TLS_MODE], "istio");
    }

    #[test]
    fn without_native_sidecars_the_proxy_holds_the_app_or_runs_beside_it() {
        let held = InjectSettings {
            native_sidecars: false,
            ..InjectSettings::default()
        };
        let inj = injected(&meta(&[], &[]), &app_spec(), &held);
        assert_eq!(
            names(&inj.spec.containers),
            ["strait-proxy", "app", "logger"]
        );
        assert_eq!(
            names(inj.spec.init_containers.as_deref().unwrap()),
            ["migrate", "strait-init"]
        );
        let proxy = &inj.spec.containers[0];
        assert_eq!(proxy.restart_policy, None);
        let hook = proxy
            .lifecycle
            .as_ref()
            .unwrap()
            .post_start
            .as_ref()
            .unwrap();
        assert_eq!(
            hook.exec.as_ref().unwrap().command.as_deref().unwrap()[..2],
            ["strait-proxy".to_string(), "wait".to_string()]
        );
        let status: Status = serde_json::from_str(&inj.annotations[keys::STATUS]).unwrap();
        assert_eq!(status.containers, ["strait-proxy"]);
        assert_eq!(status.init_containers, ["strait-init"]);

        let beside = InjectSettings {
            hold_application_until_proxy_starts: false,
            ..held
        };
        let inj = injected(&meta(&[], &[]), &app_spec(), &beside);
        assert_eq!(
            names(&inj.spec.containers),
            ["app", "logger", "strait-proxy"]
        );
        assert_eq!(inj.spec.containers[2].lifecycle, None);
    }

    #[test]
    fn without_native_sidecars_a_jobs_containers_run_under_run_app() {
        let classic = InjectSettings {
            native_sidecars: false,
            ports: crate::settings::ProxyPorts {
                admin: 15900,
                ..Default::default()
            },
            ..InjectSettings::default()
        };
        let mut spec = app_spec();
        spec.restart_policy = Some("OnFailure".into());
        spec.containers[0].command = Some(vec!["perl".into(), "-e".into()]);
        spec.containers[0].args = Some(vec!["print $(GREETING)".into()]);
        spec.containers[1].command = Some(vec!["logger".into()]);
        let inj = injected(&meta(&[], &[]), &spec, &classic);
        assert_eq!(
            names(&inj.spec.containers),
            ["strait-proxy", "app", "logger"]
        );
        assert_eq!(
            names(inj.spec.init_containers.as_deref().unwrap()),
            ["migrate", "strait-copy", "strait-init"]
        );
        assert_eq!(
            inj.spec.containers[0].lifecycle, None,
            "run-app waits for the proxy: no hook"
        );
        let app = &inj.spec.containers[1];
        assert_eq!(
            app.command.as_deref().unwrap(),
            ["/var/run/strait/bin/strait-proxy"]
        );
        assert_eq!(
            app.args.as_deref().unwrap().join(" "),
            "run-app --admin-addr 127.0.0.1:15900 --stop-proxy on-success --container app -- perl -e print $(GREETING)"
        );
        assert_eq!(arg(&inj.spec.containers[2], "--container"), Some("logger"));
        let mount = app.volume_mounts.as_deref().unwrap().last().unwrap();
        assert_eq!(
            (
                mount.name.as_str(),
                mount.mount_path.as_str(),
                mount.read_only
            ),
            ("strait-bin", "/var/run/strait/bin", Some(true))
        );
        assert_eq!(
            inj.spec.containers[2]
                .args
                .as_deref()
                .unwrap()
                .last()
                .unwrap(),
            "logger"
        );
        let copy = &inj.spec.init_containers.as_deref().unwrap()[1];
        assert_eq!(
            copy.args.as_deref().unwrap(),
            ["copy-self", "--to", "/var/run/strait/bin/strait-proxy"]
        );
        let volumes = inj.spec.volumes.as_deref().unwrap();
        assert!(volumes.last().unwrap().empty_dir.is_some());
        let status: Status = serde_json::from_str(&inj.annotations[keys::STATUS]).unwrap();
        assert_eq!(status.init_containers, ["strait-copy", "strait-init"]);
        assert_eq!(
            status.volumes,
            ["strait-token", "strait-ca-root", "strait-bin"]
        );

        // Written with the wrapper already (the status annotation lost): not wrapped twice.
        let mut again = spec.clone();
        again.containers = inj.spec.containers[1..].to_vec();
        for c in &mut again.containers {
            c.volume_mounts = None;
        }
        let twice = injected(&meta(&[], &[]), &again, &classic);
        assert_eq!(twice.spec.containers, inj.spec.containers);

        // restartPolicy Never: the proxy stops whatever the app's exit.
        spec.restart_policy = Some("Never".into());
        let inj = injected(&meta(&[], &[]), &spec, &classic);
        assert_eq!(
            inj.spec.containers[1].args.as_deref().unwrap()[..6],
            [
                "run-app",
                "--admin-addr",
                "127.0.0.1:15900",
                "--container",
                "app",
                "--"
            ]
        );
    }

    fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
        c.env
            .as_deref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .as_deref()
    }

    #[test]
    fn the_proxy_is_told_every_run_app_container_and_each_run_app_its_own_name() {
        let classic = InjectSettings {
            native_sidecars: false,
            ..InjectSettings::default()
        };
        let mut spec = app_spec();
        spec.restart_policy = Some("Never".into());
        spec.containers[0].command = Some(vec!["train".into()]);
        spec.containers[1].command = Some(vec!["ship-logs".into()]);
        let inj = injected(&meta(&[], &[]), &spec, &classic);
        let proxy = &inj.spec.containers[0];
        assert_eq!(proxy.name, "strait-proxy");
        assert_eq!(
            env_value(proxy, "STRAIT_RUN_APP_CONTAINERS"),
            Some("app,logger")
        );
        assert_eq!(arg(&inj.spec.containers[1], "--container"), Some("app"));
        assert_eq!(arg(&inj.spec.containers[2], "--container"), Some("logger"));

        // Written under run-app already: one without --container (an older injection) gets
        // its own name; one with it keeps the name it reports, which the proxy is told.
        let mut again = spec.clone();
        again.containers = inj.spec.containers[1..].to_vec();
        let args = again.containers[0].args.as_mut().unwrap();
        let at = args.iter().position(|a| a == "--container").unwrap();
        args.drain(at..at + 2);
        again.containers[1].args.as_mut().unwrap()[4] = "shipper".into();
        let twice = injected(&meta(&[], &[]), &again, &classic);
        assert_eq!(
            twice.spec.containers[1].args.as_deref().unwrap()[..5],
            [
                "run-app",
                "--container",
                "app",
                "--admin-addr",
                "127.0.0.1:15000"
            ]
        );
        assert_eq!(
            arg(&twice.spec.containers[2], "--container"),
            Some("shipper")
        );
        assert_eq!(
            env_value(&twice.spec.containers[0], "STRAIT_RUN_APP_CONTAINERS"),
            Some("app,shipper")
        );

        // Pods that do not run to completion, or have native sidecars: no run-app, no list.
        for (policy, settings) in [
            (Some("Always"), &classic),
            (Some("Never"), &InjectSettings::default()),
        ] {
            spec.restart_policy = policy.map(String::from);
            let inj = injected(&meta(&[], &[]), &spec, settings);
            let proxies: Vec<&Container> = inj
                .spec
                .containers
                .iter()
                .chain(inj.spec.init_containers.iter().flatten())
                .filter(|c| c.name == "strait-proxy")
                .collect();
            assert_eq!(proxies.len(), 1);
            assert_eq!(env_value(proxies[0], "STRAIT_RUN_APP_CONTAINERS"), None);
        }
    }

    #[test]
    fn the_proxy_runs_unprivileged_and_the_capture_as_root() {
        let inj = injected(&meta(&[], &[]), &app_spec(), &InjectSettings::default());
        let init = inj.spec.init_containers.as_deref().unwrap();
        let sc = init[0].security_context.as_ref().unwrap();
        assert_eq!((sc.run_as_user, sc.run_as_non_root), (Some(0), Some(false)));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().add.as_deref().unwrap(),
            ["NET_ADMIN", "NET_RAW"]
        );
        assert_eq!(init[0].args.as_deref().unwrap()[0], "iptables");
        let sc = init[1].security_context.as_ref().unwrap();
        assert_eq!(
            (
                sc.run_as_user,
                sc.run_as_group,
                sc.run_as_non_root,
                sc.read_only_root_filesystem,
                sc.allow_privilege_escalation
            ),
            (Some(1337), Some(1337), Some(true), Some(true), Some(false))
        );
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref().unwrap(),
            ["ALL"]
        );
    }

    #[test]
    fn the_proxy_learns_who_it_is_from_the_downward_api() {
        let inj = injected(
            &meta(&[("app", "web"), ("version", "v2")], &[]),
            &app_spec(),
            &InjectSettings::default(),
        );
        let proxy = &inj.spec.init_containers.as_deref().unwrap()[1];
        assert_eq!(
            arg(proxy, "--xds"),
            Some("https://straitd.strait-system.svc:15012")
        );
        assert_eq!(
            arg(proxy, "--ca-root"),
            Some("/var/run/secrets/strait/root/root-cert.pem")
        );
        assert_eq!(
            arg(proxy, "--token-file"),
            Some("/var/run/secrets/strait/tokens/strait-token")
        );
        assert_eq!(
            arg(proxy, "--node-id"),
            Some("$(POD_NAME).$(POD_NAMESPACE)")
        );
        assert_eq!(arg(proxy, "--interception"), Some("redirect"));
        assert_eq!(arg(proxy, "--instance-ips"), Some("$(INSTANCE_IPS)"));
        assert_eq!(
            arg(proxy, "--labels"),
            Some(
                "app=$(STRAIT_LABEL_0),security.istio.io/tlsMode=$(STRAIT_LABEL_1),version=$(STRAIT_LABEL_2)"
            )
        );
        let env: BTreeMap<&str, &str> = proxy
            .env
            .iter()
            .flatten()
            .map(|e| {
                let field = &e.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
                (e.name.as_str(), field.field_path.as_str())
            })
            .collect();
        assert_eq!(env["POD_NAME"], "metadata.name");
        assert_eq!(env["POD_NAMESPACE"], "metadata.namespace");
        assert_eq!(env["SERVICE_ACCOUNT"], "spec.serviceAccountName");
        assert_eq!(env["INSTANCE_IPS"], "status.podIPs");
        assert_eq!(env["STRAIT_LABEL_2"], "metadata.labels['version']");
        let volumes = inj.spec.volumes.as_deref().unwrap();
        let token = volumes[0]
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_deref()
            .unwrap()[0]
            .service_account_token
            .as_ref()
            .unwrap();
        assert_eq!(
            (token.audience.as_deref(), token.expiration_seconds),
            (Some("strait-ca"), Some(43200))
        );
        assert_eq!(
            volumes[1].config_map.as_ref().unwrap().name,
            "strait-ca-root"
        );
        assert!(
            proxy
                .volume_mounts
                .iter()
                .flatten()
                .all(|m| m.read_only == Some(true))
        );
        let ready = proxy
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.path.as_deref(), Some("/ready"));
        assert_eq!(ready.port, IntOrString::Int(15000));
        assert_eq!(arg(proxy, "--admin-addr"), Some("0.0.0.0:15000"));
    }

    #[test]
    fn app_probes_go_through_the_proxy_unless_turned_off() {
        use k8s_openapi::api::core::v1::{HTTPGetAction, Probe};
        let mut spec = app_spec();
        spec.containers[0].readiness_probe = Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::Int(8080),
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        });
        let probers = |inj: &Injection| {
            let proxy = inj
                .spec
                .init_containers
                .iter()
                .flatten()
                .chain(&inj.spec.containers)
                .find(|c| c.name == sidecar::PROXY_CONTAINER)
                .unwrap();
            proxy
                .env
                .iter()
                .flatten()
                .find(|e| e.name == "STRAIT_APP_PROBERS")
                .and_then(|e| e.value.clone())
        };
        let path = |inj: &Injection| {
            let probe = inj.spec.containers[0].readiness_probe.as_ref().unwrap();
            probe.http_get.as_ref().unwrap().path.clone().unwrap()
        };

        let inj = injected(&meta(&[], &[]), &spec, &InjectSettings::default());
        assert_eq!(path(&inj), "/app-health/app/readyz");
        assert_eq!(
            probers(&inj).as_deref(),
            Some(
                r#"{"/app-health/app/readyz":{"httpGet":{"path":"/ready","port":8080,"scheme":"HTTP"},"timeoutSeconds":1}}"#
            )
        );

        let off = InjectSettings {
            rewrite_app_http_probe: false,
            ..InjectSettings::default()
        };
        for (m, settings) in [
            (
                meta(&[], &[(keys::REWRITE_PROBES_ISTIO, "false")]),
                InjectSettings::default(),
            ),
            (
                meta(&[], &[(keys::REWRITE_PROBES_STRAIT, "false")]),
                InjectSettings::default(),
            ),
            (meta(&[], &[]), off.clone()),
            (
                meta(&[], &[(keys::INTERCEPTION_MODE, "NONE")]),
                InjectSettings::default(),
            ),
        ] {
            let inj = injected(&m, &spec, &settings);
            assert_eq!(path(&inj), "/ready", "{m:?}");
            assert_eq!(probers(&inj), None);
        }
        // The pod's annotation wins over the settings, Strait's key over Istio's.
        let m = meta(
            &[],
            &[
                (keys::REWRITE_PROBES_STRAIT, "true"),
                (keys::REWRITE_PROBES_ISTIO, "false"),
            ],
        );
        assert_eq!(path(&injected(&m, &spec, &off)), "/app-health/app/readyz");

        let bad = meta(&[], &[(keys::REWRITE_PROBES_ISTIO, "sometimes")]);
        assert_eq!(
            inject_pod(&bad, &spec, None, &InjectSettings::default())
                .unwrap_err()
                .to_string(),
            "metadata.annotations['sidecar.istio.io/rewriteAppHTTPProbers']: expected \"true\" or \"false\", got \"sometimes\""
        );
    }

    #[test]
    fn interception_none_adds_no_capture() {
        let inj = injected(
            &meta(&[], &[(keys::INTERCEPTION_MODE, "NONE")]),
            &app_spec(),
            &InjectSettings::default(),
        );
        let init = inj.spec.init_containers.as_deref().unwrap();
        assert_eq!(names(init), ["strait-proxy", "migrate"]);
        assert_eq!(arg(&init[0], "--interception"), Some("none"));
        assert_eq!(arg(&init[0], "--instance-ips"), None);
        assert!(
            inj.labels.is_empty(),
            "no tlsMode: nothing accepts mTLS inbound"
        );
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let mut m = meta(&[("app", "web")], &[]);
        let inj = injected(&m, &app_spec(), &InjectSettings::default());
        inj.apply_to(&mut m);
        assert_eq!(
            inject_pod(&m, &inj.spec, None, &InjectSettings::default()).unwrap(),
            Decision::Skipped(SkipReason::AlreadyInjected)
        );
    }

    #[test]
    fn set_values_are_kept() {
        let inj = injected(
            &meta(
                &[(keys::TLS_MODE, "disabled")],
                &[(keys::DEFAULT_CONTAINER, "logger")],
            ),
            &app_spec(),
            &InjectSettings::default(),
        );
        assert!(!inj.labels.contains_key(keys::TLS_MODE));
        assert!(!inj.annotations.contains_key(keys::DEFAULT_CONTAINER));
    }

    #[test]
    fn what_the_sidecar_needs_must_be_free() {
        let err = |spec: PodSpec| {
            inject_pod(&meta(&[], &[]), &spec, None, &InjectSettings::default())
                .unwrap_err()
                .to_string()
        };
        let mut spec = app_spec();
        spec.containers.push(container("strait-proxy"));
        assert_eq!(
            err(spec),
            "spec.containers[2].name: a container named strait-proxy is already there, without sidecar.strait.io/status: rename it"
        );
        let mut spec = app_spec();
        spec.containers[1].ports = Some(vec![
            ContainerPort {
                container_port: 8080,
                ..ContainerPort::default()
            },
            ContainerPort {
                container_port: 15001,
                ..ContainerPort::default()
            },
        ]);
        assert_eq!(
            err(spec),
            "spec.containers[1].ports[1].containerPort: 15001 is the proxy's outbound port"
        );
        let mut spec = app_spec();
        spec.volumes = Some(vec![k8s_openapi::api::core::v1::Volume {
            name: "strait-token".into(),
            ..Default::default()
        }]);
        assert!(err(spec).starts_with("spec.volumes[0].name: a volume named strait-token"));
    }

    #[test]
    fn bad_settings_are_reported_as_such() {
        let settings = InjectSettings {
            xds_address: "nowhere".into(),
            ..InjectSettings::default()
        };
        let e = inject_pod(&meta(&[], &[]), &app_spec(), None, &settings).unwrap_err();
        assert!(matches!(e, InjectError::Settings(_)), "{e}");
        assert!(
            e.to_string()
                .starts_with("injection settings: xdsAddress: "),
            "{e}"
        );
    }
}
