//! straitd: the control-plane daemon. Parses flags, binds the xDS and admin ports, runs until a
//! signal, then drains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use strait_ca::{
    CaOptions, CaSource, CertificateAuthority, CertificateService, ServiceOptions, TokenIssuer,
};
use strait_control_plane::admin::{self, AdminState};
use strait_control_plane::certs::WorkloadCertificates;
use strait_control_plane::controller::Controller;
use strait_control_plane::store::ConfigStore;
use strait_control_plane::telemetry::{self, LogFormat, TelemetryOptions};
use strait_control_plane::watch;
use strait_model::mesh::MeshConfig;
use strait_translate::MeshSettings;
use strait_xds::cache::SnapshotCache;
use strait_xds::metrics::XdsMetrics;
use strait_xds::server::AdsServer;

/// mimalloc rather than glibc's malloc, whose per-thread arenas held on to gigabytes after a
/// wave of proxies had come and gone (mimalloc returns it after its purge delay;
/// `MIMALLOC_PURGE_DELAY=0` returns it at once).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "straitd",
    version,
    about = "Strait control plane: Istio YAML in, Envoy xDS out"
)]
struct Args {
    /// Directory of Istio YAML to load and watch (every *.yaml, *.yml, *.json below it).
    #[arg(long, env = "STRAIT_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Plaintext xDS (ADS over gRPC) address. For local development: nothing authenticates here.
    #[arg(long, env = "STRAIT_XDS_ADDR", default_value = "127.0.0.1:15010")]
    xds_addr: SocketAddr,
    /// Admin HTTP API address (health, apply, objects, debug, metrics).
    #[arg(long, env = "STRAIT_ADMIN_ADDR", default_value = "127.0.0.1:15014")]
    admin_addr: SocketAddr,
    /// Log output format.
    #[arg(long, env = "STRAIT_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// OTLP/gRPC collector for spans, e.g. http://127.0.0.1:4317.
    #[arg(long, env = "STRAIT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Where the mesh CA keeps its root (key file mode 0600) and the token signing key.
    #[arg(long, env = "STRAIT_DATA_DIR", default_value = "strait-data")]
    data_dir: PathBuf,
    /// Sign with an organisation's intermediate instead: a directory laid out as Istio's
    /// cacerts (root-cert.pem, ca-cert.pem, ca-key.pem, cert-chain.pem).
    #[arg(long, env = "STRAIT_PLUGIN_CA_DIR")]
    plugin_ca_dir: Option<PathBuf>,
    /// SPIFFE trust domain of workload identities [default: the mesh config's, else
    /// cluster.local].
    #[arg(long, env = "STRAIT_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Istio MeshConfig YAML (the `mesh` key of Istio's `istio` ConfigMap): mesh-wide settings
    /// such as `outboundTrafficPolicy.mode` (ALLOW_ANY or REGISTRY_ONLY) and `trustDomain`.
    #[arg(long, env = "STRAIT_MESH_CONFIG")]
    mesh_config: Option<PathBuf>,
    /// Lifetime of workload certificates (renewed at half of it), e.g. 24h or 30s.
    #[arg(long, env = "STRAIT_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    workload_cert_ttl: std::time::Duration,
    /// How many ADS streams may be in their initial sync at once; later ones wait their
    /// turn (a reconnect wave converges steadily instead of all at once).
    #[arg(long, env = "STRAIT_XDS_ADMISSION_LIMIT", default_value_t = strait_xds::server::DEFAULT_ADMISSION_LIMIT)]
    xds_admission_limit: usize,
    /// TLS port for xDS (with SDS private keys) and the certificate API; callers authenticate
    /// with a bootstrap token or a mesh client certificate.
    #[arg(long, env = "STRAIT_XDS_TLS_ADDR", default_value = "127.0.0.1:15012")]
    xds_tls_addr: SocketAddr,
    /// Names on straitd's own serving certificate (IP addresses become IP SANs).
    #[arg(
        long,
        env = "STRAIT_SERVER_NAMES",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,straitd"
    )]
    server_names: Vec<String>,
    /// Watch the Kubernetes API server (kubeconfig from $KUBECONFIG or ~/.kube/config, else the
    /// in-cluster service account): Services, EndpointSlices/Endpoints, Pods, Istio's kinds and
    /// Ingresses (of class strait or istio, served by the ingress gateway).
    /// The admin API's /apply and /delete are off then: configuration goes through the API
    /// server and its RBAC.
    #[arg(long, env = "STRAIT_KUBERNETES")]
    kubernetes: bool,
    /// With --kubernetes, ServiceAccount tokens (checked with the API server's TokenReview)
    /// prove identity on the TLS port when they are for one of these audiences (repeatable or
    /// comma-separated).
    #[arg(
        long,
        env = "STRAIT_TOKEN_AUDIENCE",
        value_delimiter = ',',
        default_value = strait_control_plane::kube::tokens::DEFAULT_AUDIENCE
    )]
    token_audience: Vec<String>,
    /// Where the admission webhooks (/inject, /validate) are served over HTTPS with a
    /// certificate from the mesh CA (for --server-names); off when not given.
    #[arg(long, env = "STRAIT_WEBHOOK_ADDR")]
    webhook_addr: Option<SocketAddr>,
    /// Sidecar injection settings (the chart's `strait-injector` ConfigMap, YAML).
    #[arg(long, env = "STRAIT_INJECTION_SETTINGS")]
    injection_settings: Option<PathBuf>,
    /// With --kubernetes: the namespace of the Lease that elects the replica writing objects'
    /// status [default: $POD_NAMESPACE, else strait-system].
    #[arg(long, env = "STRAIT_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// How long a Lease holder that stopped renewing keeps it (it renews every 2 s).
    #[arg(long, env = "STRAIT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: std::time::Duration,
    /// This replica's name in the Lease [default: $POD_NAME, else HOSTNAME-PID].
    #[arg(long, env = "STRAIT_REPLICA_ID")]
    replica_id: Option<String>,
    /// The cluster's DNS domain (Service hosts are NAME.NAMESPACE.svc.DOMAIN).
    #[arg(long, env = "STRAIT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// The ingress gateway's labels (KEY=VALUE, comma-separated): the selector of the Gateways
    /// made from Kubernetes Ingresses of class strait or istio.
    #[arg(
        long,
        env = "STRAIT_INGRESS_GATEWAY_SELECTOR",
        value_delimiter = ',',
        default_value = "istio=ingressgateway",
        value_parser = parse_label
    )]
    ingress_gateway_selector: Vec<(String, String)>,
    /// With --kubernetes: the ingress gateway's Service (NAMESPACE/NAME), whose load balancer
    /// addresses (else external IPs, else its ready pods' node addresses) the leader writes
    /// into `status.loadBalancer` of the Ingresses Strait serves; not written when not given.
    #[arg(long, env = "STRAIT_INGRESS_SERVICE")]
    ingress_service: Option<strait_control_plane::kube::ingress_status::IngressService>,
    /// How often the JWKS documents RequestAuthentications name by `jwksUri` are fetched
    /// again (Istio's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL).
    #[arg(long, env = "STRAIT_JWKS_REFRESH", default_value = "20m", value_parser = parse_duration)]
    jwks_refresh: std::time::Duration,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    strait_model::duration::parse(s)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = telemetry::init(TelemetryOptions {
        log_format: args.log_format,
        otlp_endpoint: args.otlp_endpoint.clone(),
        service_name: "straitd",
    })?;

    let mesh = match &args.mesh_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --mesh-config {}", path.display()))?;
            MeshConfig::parse(&text, &path.display().to_string())
                .map_err(|e| anyhow::anyhow!("{e}"))?
        }
        None => MeshConfig::default(),
    };
    if let (Some(flag), Some(mesh)) = (&args.trust_domain, &mesh.trust_domain) {
        anyhow::ensure!(
            flag == mesh,
            "--trust-domain {flag:?} disagrees with the mesh config's trustDomain {mesh:?}"
        );
    }
    let mut settings = MeshSettings::from_mesh_config(&mesh);
    if let Some(td) = &args.trust_domain {
        settings.trust_domain = td.clone();
    }
    tracing::info!(trust_domain = %settings.trust_domain, outbound_traffic_policy = ?settings.outbound_traffic_policy, "mesh settings");

    let mut registry = Registry::default();
    let store = ConfigStore::new(&mut registry);
    let cache = SnapshotCache::new();
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let ads = AdsServer::new(cache.clone(), events_tx, XdsMetrics::new(&mut registry))
        .with_admission_limit(args.xds_admission_limit);

    // The mesh CA: its root survives restarts in --data-dir (or comes from --plugin-ca-dir).
    let options = CaOptions {
        trust_domain: settings.trust_domain.clone(),
        workload_ttl: args.workload_cert_ttl,
        ..CaOptions::default()
    };
    let source = match &args.plugin_ca_dir {
        Some(dir) => CaSource::plugin_dir(dir),
        None => CaSource::SelfSigned {
            data_dir: args.data_dir.clone(),
        },
    };
    let ca = CertificateAuthority::load(source, options).context("loading the mesh CA")?;
    let tokens =
        TokenIssuer::load_or_create(&args.data_dir).context("loading the token signing key")?;
    let controller = Controller::new(
        cache,
        &mut registry,
        settings,
        Some(WorkloadCertificates::new(ca.clone())),
    );

    // The first configuration is in force before any proxy can connect.
    let _watcher = match &args.config_dir {
        Some(dir) => {
            anyhow::ensure!(
                dir.is_dir(),
                "--config-dir {}: not a directory",
                dir.display()
            );
            Some(watch::spawn_watcher(dir.clone(), store.clone()))
        }
        None => {
            store
                .replace_files(Vec::new())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            None
        }
    };
    let kube_client = match args.kubernetes {
        false => None,
        true => Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API server (--kubernetes)")?,
        ),
    };
    let tokens = match &kube_client {
        Some(client) => {
            strait_control_plane::kube::tokens::caller_auth(tokens, client, &args.token_audience)?
        }
        None => tokens.into(),
    };
    if let Some(client) = kube_client.clone() {
        let options = strait_control_plane::kube::KubeSourceOptions {
            cluster_domain: args.cluster_domain.clone(),
            ingress_selector: args.ingress_gateway_selector.iter().cloned().collect(),
        };
        let source_store = store.clone();
        let source_client = client.clone();
        tokio::spawn(async move {
            if let Err(e) =
                strait_control_plane::kube::run(source_client, source_store, options).await
            {
                tracing::error!("the Kubernetes source stopped: {e:#}");
            }
        });
        let lease = strait_control_plane::kube::lease::LeaseOptions {
            namespace: args
                .lease_namespace
                .clone()
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .unwrap_or_else(|| "strait-system".into()),
            name: "straitd-status".into(),
            identity: args.replica_id.clone().unwrap_or_else(replica_identity),
            duration: args.lease_duration,
            renew: std::time::Duration::from_secs(2).min(args.lease_duration / 2),
        };
        let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(strait_control_plane::kube::lease::run(
            client.clone(),
            lease,
            leader_tx,
        ));
        tokio::spawn(strait_control_plane::kube::root_cert::run(
            client.clone(),
            strait_control_plane::kube::root_cert::RootCertOptions {
                config_map: "strait-ca-root".into(),
                key: "root-cert.pem".into(),
                pem: ca.roots_pem().to_string(),
            },
            leader_rx.clone(),
        ));
        if let Some(service) = args.ingress_service.clone() {
            tokio::spawn(strait_control_plane::kube::ingress_status::run(
                client.clone(),
                service,
                leader_rx.clone(),
            ));
        }
        tokio::spawn(strait_control_plane::kube::status::run(
            client,
            store.clone(),
            controller.rejections(),
            leader_rx,
        ));
    }
    tokio::spawn(controller.run(store.subscribe(), events_rx));
    tokio::spawn(strait_control_plane::jwks::run(
        store.clone(),
        args.jwks_refresh,
    ));

    let xds_listener = tokio::net::TcpListener::bind(args.xds_addr)
        .await
        .with_context(|| format!("binding the xDS address {}", args.xds_addr))?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin address {}", args.admin_addr))?;
    let tls_listener = tokio::net::TcpListener::bind(args.xds_tls_addr)
        .await
        .with_context(|| format!("binding the TLS xDS address {}", args.xds_tls_addr))?;
    // A year: straitd's own certificate is reissued on restart.
    let serving = ca
        .issue_server(
            &args.server_names,
            std::time::Duration::from_secs(365 * 24 * 3600),
        )
        .context("issuing straitd's serving certificate")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_rx_webhook = stop_rx.clone();
    let webhook_task = match args.webhook_addr {
        None => None,
        Some(addr) => {
            let injection = match &args.injection_settings {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| {
                        format!("reading --injection-settings {}", path.display())
                    })?;
                    strait_inject::InjectSettings::from_yaml(&text).map_err(|e| {
                        anyhow::anyhow!("--injection-settings {}: {e}", path.display())
                    })?
                }
                None => strait_inject::InjectSettings::default(),
            };
            let mut injection = injection;
            if let Some(client) = &kube_client
                && injection.native_sidecars
                && !serves_native_sidecars(client).await
            {
                tracing::info!(
                    "the API server predates native sidecars (1.29): injecting the proxy as a regular container"
                );
                injection.native_sidecars = false;
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the webhook address {addr}"))?;
            let app = strait_control_plane::webhook::router(
                strait_control_plane::webhook::WebhookState {
                    store: store.clone(),
                    injection: Arc::new(injection),
                },
            );
            let (cert, key) = (serving.cert.chain_pem.concat(), serving.key_pem.to_string());
            let stop = stop_rx_webhook.clone();
            tracing::info!(%addr, "serving the admission webhooks (/inject, /validate) over HTTPS");
            Some(tokio::spawn(async move {
                strait_control_plane::webhook::serve_tls(listener, app, &cert, &key, stop).await
            }))
        }
    };
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            serving.cert.chain_pem.concat(),
            serving.key_pem.as_bytes(),
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca.roots_pem()))
        .client_auth_optional(true);
    let authenticator = Arc::new(strait_control_plane::auth::XdsAuthenticator::new(
        tokens.clone(),
        ca.trust_domain().to_string(),
    ));
    tracing::info!(addr = %args.xds_tls_addr, "serving xDS and the certificate API over TLS");
    tracing::warn!(addr = %args.xds_addr, "serving plaintext xDS: unauthenticated, for local development only");
    tracing::info!(addr = %args.admin_addr, "serving the admin API");

    let ready = Arc::new(AtomicBool::new(false));
    let proxies = {
        let ads = ads.clone();
        Arc::new(move || serde_json::to_value(ads.proxies()).unwrap_or_default())
    };
    let held = {
        let ads = ads.clone();
        Arc::new(move |node: &str| ads.held(node))
    };
    let app = admin::router(AdminState {
        store: store.clone(),
        registry: Arc::new(registry),
        proxies,
        held,
        ready: ready.clone(),
        read_only: args.kubernetes,
    });

    let shutdown = shutdown_signal();
    let stop_rx_tls = stop_rx.clone();
    let xds = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(ads.service())
        .serve_with_incoming_shutdown(
            tokio_stream_incoming(xds_listener),
            wait_for(stop_rx.clone()),
        );
    let admin = axum::serve(admin_listener, app).with_graceful_shutdown(wait_for(stop_rx));
    ready.store(true, Ordering::Release);

    let secure = tonic::transport::Server::builder()
        .tls_config(tls)
        .context("configuring TLS")?
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(ads.authenticated(authenticator).service())
        .add_service(CertificateService::new(ca, tokens, ServiceOptions::default()).server())
        .serve_with_incoming_shutdown(tokio_stream_incoming(tls_listener), wait_for(stop_rx_tls));
    let xds_task = tokio::spawn(xds);
    let secure_task = tokio::spawn(secure);
    let admin_task = tokio::spawn(async move { admin.await });
    shutdown.await;
    tracing::info!("shutting down");
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    xds_task
        .await
        .context("xDS server task")?
        .context("xDS server")?;
    admin_task
        .await
        .context("admin server task")?
        .context("admin server")?;
    secure_task
        .await
        .context("TLS server task")?
        .context("TLS server")?;
    if let Some(task) = webhook_task {
        task.await
            .context("webhook server task")?
            .context("webhook server")?;
    }
    Ok(())
}

/// `$POD_NAME`, else the host name and process id.
fn replica_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "straitd".into());
        format!("{host}-{}", std::process::id())
    })
}

/// Whether the API server runs init containers with `restartPolicy: Always` as sidecars
/// (on by default from Kubernetes 1.29).
async fn serves_native_sidecars(client: &kube::Client) -> bool {
    match client.apiserver_version().await {
        Ok(info) => {
            let major: u32 = info.major.trim_end_matches('+').parse().unwrap_or(0);
            let minor: u32 = info.minor.trim_end_matches('+').parse().unwrap_or(0);
            (major, minor) >= (1, 29)
        }
        Err(e) => {
            tracing::warn!("cannot read the API server's version ({e}); assuming native sidecars");
            true
        }
    }
}

fn tokio_stream_incoming(
    listener: tokio::net::TcpListener,
) -> tokio_stream::wrappers::TcpListenerStream {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}

async fn wait_for(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops straitd");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
