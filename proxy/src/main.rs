//! strait-proxy: parse flags, start the proxy, run until SIGTERM, Ctrl-C or `POST
//! /quitquitquit`, drain; or, as `strait-proxy iptables`, install the sidecar's traffic capture
//! and exit; `wait`, `run-app` and `copy-self` are the app's side (`lifecycle`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, error::ErrorKind};
use serde_json::{Map, Value};
use strait_model::ProxyMode;
use strait_model::node::{InterceptionMode, NodeMetadata, inbound_from_flags};
use strait_proxy::app::{self, Settings};
use strait_proxy::app_health::{self, AppProbers};
use strait_proxy::identity::{Identity, IdentitySettings};
use strait_proxy::lifecycle::{self, RunApp, StopProxy};
use strait_proxy::run_apps::RunApps;
use strait_proxy::xds::{NodeInfo, Protocol, XdsSettings};

#[derive(Parser, Debug)]
#[command(
    name = "strait-proxy",
    about = "Strait's sidecar and gateway proxy",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// straitd's xDS address: `http://` for the plaintext port (development), `https://` for
    /// the TLS port, which also certifies this proxy's workload key (needs --ca-root and
    /// --token-file).
    #[arg(long, env = "STRAIT_XDS", default_value = "http://127.0.0.1:15010")]
    xds: String,
    /// PEM roots that straitd's serving certificate chains to (the mesh root).
    #[arg(long, env = "STRAIT_CA_ROOT")]
    ca_root: Option<PathBuf>,
    /// A file holding the bootstrap token (`straitctl token create`).
    #[arg(long, env = "STRAIT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The mesh's trust domain: the workload's SPIFFE ID is
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    #[arg(long, env = "STRAIT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, env = "STRAIT_XDS_PROTOCOL", value_enum, default_value = "delta")]
    xds_protocol: Protocol,
    #[arg(long, env = "STRAIT_NODE_ID", required = true)]
    node_id: Option<String>,
    /// Envoy's service cluster [default: the `app` label, else the node id].
    #[arg(long, env = "STRAIT_CLUSTER")]
    cluster: Option<String>,
    #[arg(long, env = "STRAIT_NAMESPACE", default_value = "default")]
    namespace: String,
    /// `k=v,k2=v2`.
    #[arg(long, env = "STRAIT_LABELS", default_value = "")]
    labels: String,
    #[arg(long, env = "STRAIT_MODE", default_value = "sidecar")]
    mode: String,
    #[arg(long, env = "STRAIT_OUTBOUND_PORT", default_value_t = 15001)]
    outbound_port: u16,
    /// How the workload's traffic reaches the proxy: `none` (the app sends to the outbound
    /// port) or `redirect` (iptables captures it: `strait-proxy iptables`).
    #[arg(long, env = "STRAIT_INTERCEPTION", default_value = "none")]
    interception: InterceptionMode,
    /// The inbound port for the workload (explicit), or the inbound capture port with
    /// `--interception redirect` [default there: 15006].
    #[arg(long, env = "STRAIT_INBOUND_PORT")]
    inbound_port: Option<u16>,
    /// The workload's own port on 127.0.0.1 (explicit sidecar only).
    #[arg(long, env = "STRAIT_APP_PORT")]
    app_port: Option<u16>,
    /// The workload's own addresses, comma-separated (a captured sidecar serves the service
    /// ports whose endpoints they are; in Kubernetes, the pod IPs).
    #[arg(long, env = "STRAIT_INSTANCE_IPS", value_delimiter = ',')]
    instance_ips: Vec<IpAddr>,
    #[arg(long, env = "STRAIT_SERVICE_ACCOUNT")]
    service_account: Option<String>,
    #[arg(long, env = "STRAIT_LISTEN_ADDRESS")]
    listen_address: Option<IpAddr>,
    /// `80=18080,443=18443`: where a gateway binds each Gateway server port.
    #[arg(long, env = "STRAIT_GATEWAY_PORTS", default_value = "")]
    gateway_ports: String,
    #[arg(long, env = "STRAIT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Export a span per request to this OTLP/gRPC collector (`http://127.0.0.1:4317`);
    /// without one, `traceparent` and `tracestate` pass through untouched.
    #[arg(long, env = "STRAIT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The app containers that run under `run-app` (comma-separated; the injector sets
    /// STRAIT_RUN_APP_CONTAINERS): `POST /quitquitquit?container=NAME` from each, and the proxy
    /// stops once all have ended.
    #[arg(long, env = "STRAIT_RUN_APP_CONTAINERS", value_delimiter = ',')]
    run_app_containers: Vec<String>,
    /// Worker threads serving traffic [default: the available parallelism].
    #[arg(long, env = "STRAIT_CONCURRENCY")]
    concurrency: Option<std::num::NonZeroUsize>,
    /// Connections each listener holds at most; more are closed as they are accepted and
    /// counted (`strait_proxy_downstream_cx_overflow_total`). 0: no limit.
    #[arg(long, env = "STRAIT_MAX_CONNECTIONS_PER_LISTENER", default_value_t = app::DEFAULT_MAX_CONNECTIONS_PER_LISTENER)]
    max_connections_per_listener: usize,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Install the sidecar's traffic capture in the nat table (Istio's istio-iptables, in
    /// REDIRECT mode) and exit. Run as root in the pod's network namespace, before the app.
    Iptables(strait_iptables::Args),
    /// Wait until the proxy's admin `/ready` answers 200, then exit 0 (1 at the timeout): the
    /// injected postStart hook that holds the app until the sidecar is ready.
    Wait(WaitArgs),
    /// Wait until the proxy is ready, run the app (`-- CMD ARGS...`), reaping orphaned
    /// processes meanwhile, then tell the proxy (`POST /quitquitquit`, with `--container` only
    /// this container's end) and exit with the app's code: how an injected Job's containers run
    /// without native sidecars, so the pod ends.
    RunApp(RunAppArgs),
    /// Copy this binary to a path (mode 0755) and exit: the init step that lets the app's
    /// containers run `strait-proxy run-app` from a shared volume, with no shell needed.
    CopySelf(CopySelfArgs),
}

#[derive(clap::Args, Debug)]
struct WaitArgs {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// How long to wait, e.g. 600s or 10m.
    #[arg(long, default_value = "600s", value_parser = strait_model::duration::parse)]
    timeout: std::time::Duration,
}

#[derive(clap::Args, Debug)]
struct RunAppArgs {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// How long to wait for the proxy's `/ready` before giving up (exit 1), e.g. 600s or 10m.
    #[arg(long, default_value = "600s", value_parser = strait_model::duration::parse)]
    wait_timeout: std::time::Duration,
    /// When to stop the proxy after the app: `always`, or `on-success` (a pod with
    /// restartPolicy OnFailure, whose failed app the kubelet starts again).
    #[arg(long, value_enum, default_value = "always")]
    stop_proxy: StopProxy,
    /// This container's name: the proxy stops once every run-app container it was told of
    /// (STRAIT_RUN_APP_CONTAINERS) has ended. Without it, the proxy stops when this app does.
    #[arg(long, value_parser = container_name)]
    container: Option<String>,
    /// The app: its program and arguments, after `--`.
    #[arg(required = true, last = true)]
    command: Vec<OsString>,
}

#[derive(clap::Args, Debug)]
struct CopySelfArgs {
    /// Where the copy goes (a file in a volume the app's containers mount).
    #[arg(long)]
    to: PathBuf,
}

fn container_name(name: &str) -> Result<String, String> {
    if strait_proxy::run_apps::is_container_name(name) {
        Ok(name.to_string())
    } else {
        Err("a container name is lowercase letters, digits and '-'".into())
    }
}

/// A runtime for the small subcommands.
fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")
}

fn pairs(arg: &str, what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    arg.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("--{what}: expected k=v, got {kv:?}"))
        })
        .collect()
}

/// The node metadata straitd reads, written by the same code as `straitctl bootstrap`'s.
fn metadata(args: &Args) -> anyhow::Result<Map<String, Value>> {
    let mode: ProxyMode = args
        .mode
        .parse()
        .map_err(|e| anyhow::anyhow!("--mode: {e}"))?;
    let labels = pairs(&args.labels, "labels")?;
    let mut gateway_ports = BTreeMap::new();
    for (server, bind) in pairs(&args.gateway_ports, "gateway-ports")? {
        let parsed = server.parse::<u16>().ok().zip(bind.parse::<u16>().ok());
        let (server, bind) =
            parsed.with_context(|| format!("--gateway-ports: {server}={bind} is not PORT=PORT"))?;
        gateway_ports.insert(server, bind);
    }
    let (interception, inbound) =
        inbound_from_flags(args.interception, args.inbound_port, args.app_port)
            .unwrap_or_else(|e| Args::command().error(ErrorKind::ArgumentConflict, e).exit());
    Ok(NodeMetadata {
        namespace: args.namespace.clone(),
        labels: labels.into_iter().collect(),
        service_account: args.service_account.clone(),
        mode,
        outbound_port: args.outbound_port,
        listen_address: args.listen_address,
        gateway_ports,
        inbound,
        // With the TLS port, the key is made here and certified through the CA API.
        own_certificate: args.xds.starts_with("https://"),
        interception,
        instance_ips: args.instance_ips.clone(),
    }
    .to_json())
}

/// The workload identity, when `--xds` is https: straitd's TLS port certifies it.
fn secure(args: &Args) -> anyhow::Result<Option<IdentitySettings>> {
    if !args.xds.starts_with("https://") {
        anyhow::ensure!(
            args.ca_root.is_none() && args.token_file.is_none(),
            "--ca-root and --token-file are for the TLS port: give an https:// --xds"
        );
        return Ok(None);
    }
    let (Some(ca_root), Some(token_file)) = (args.ca_root.clone(), args.token_file.clone()) else {
        anyhow::bail!("an https:// --xds needs --ca-root and --token-file");
    };
    let sa = args.service_account.as_deref().unwrap_or("default");
    let spiffe_id = strait_model::node::spiffe_id(&args.trust_domain, &args.namespace, sa);
    Ok(Some(IdentitySettings {
        ca_address: args.xds.clone(),
        ca_root,
        token_file,
        spiffe_id,
        ttl: None,
    }))
}

/// The app's probes the injector moved here (`STRAIT_APP_PROBERS`), if any.
fn app_probers() -> anyhow::Result<AppProbers> {
    match std::env::var(app_health::ENV) {
        Ok(json) => {
            let probers = AppProbers::from_json(&json)?;
            tracing::info!(probes = probers.len(), "serving the app's probes");
            Ok(probers)
        }
        Err(std::env::VarError::NotPresent) => Ok(AppProbers::default()),
        Err(e) => anyhow::bail!("{}: {e}", app_health::ENV),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.command {
        Some(Command::Iptables(capture)) => {
            init_tracing();
            return Ok(strait_iptables::run(
                capture,
                &mut std::io::stdout().lock(),
            )?);
        }
        Some(Command::Wait(wait)) => {
            return Ok(
                current_thread()?.block_on(lifecycle::wait_ready(wait.admin_addr, wait.timeout))?
            );
        }
        Some(Command::RunApp(run)) => {
            init_tracing();
            let app = RunApp {
                admin: run.admin_addr,
                wait_timeout: run.wait_timeout,
                stop_proxy: run.stop_proxy,
                container: run.container.clone(),
                command: run.command.clone(),
            };
            let code = current_thread()?.block_on(lifecycle::run_app(&app))?;
            std::process::exit(code);
        }
        Some(Command::CopySelf(copy)) => return Ok(lifecycle::copy_self(&copy.to)?),
        None => {}
    }
    let workers = args
        .concurrency
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, std::num::NonZeroUsize::get);
    // One worker: a current-thread runtime, with no cross-thread queues or wake-ups to pay for
    // (strait-bench measured about a fifth less CPU per request than a 1-worker multi-thread
    // runtime, and it saves a thread).
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .build()
        .context("building the tokio runtime")?
        .block_on(run(args))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(args: Args) -> anyhow::Result<()> {
    init_tracing();
    // clap requires it when there is no subcommand
    let node_id = args.node_id.clone().context("--node-id is required")?;
    let labels = pairs(&args.labels, "labels")?;
    let cluster = args
        .cluster
        .clone()
        .or_else(|| labels.get("app").cloned())
        .unwrap_or_else(|| node_id.clone());
    let settings = Settings {
        xds: XdsSettings {
            identity: secure(&args)?.map(|s| Arc::new(Identity::new(s))),
            server: args.xds.clone(),
            protocol: args.xds_protocol,
            node: NodeInfo {
                id: node_id,
                cluster,
                metadata: metadata(&args)?,
            },
        },
        admin: args.admin_addr,
        otlp_endpoint: args.otlp_endpoint.clone(),
        app_probers: app_probers()?,
        run_apps: Arc::new(RunApps::new(&args.run_app_containers)?),
        max_connections_per_listener: args.max_connections_per_listener,
    };
    if !settings.run_apps.is_empty() {
        tracing::info!(containers = %settings.run_apps.names().join(","), "stopping once these run-app containers have ended");
    }
    let running = app::start(settings)
        .await
        .context("starting strait-proxy")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: draining"),
        _ = running.quit_requested() => {}
    }
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
