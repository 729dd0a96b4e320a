//! straitctl: the command-line client.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, error::ErrorKind};
use strait_control_plane::bootstrap::{BootstrapParams, XdsProtocol, XdsTls, envoy_bootstrap};
use strait_control_plane::ctl;
use strait_model::ProxyMode;
use strait_model::node::{DEFAULT_OUTBOUND_PORT, InterceptionMode, inbound_from_flags};

#[derive(Debug, Parser)]
#[command(
    name = "straitctl",
    version,
    about = "Command-line client for the Strait service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply Istio YAML through straitd's admin API, as one batch.
    Apply(ctl::ApplyArgs),
    /// Delete objects applied through the admin API.
    Delete(ctl::DeleteArgs),
    /// List the objects in force.
    Get(ctl::GetArgs),
    /// Check files offline with straitd's own validator (exit 1 on errors).
    Analyze(ctl::AnalyzeArgs),
    /// Each connected proxy's xDS sync state, with NACK reasons.
    ProxyStatus(ctl::ProxyStatusArgs),
    /// What a connected proxy has acknowledged: clusters, listeners, routes, endpoints or
    /// secrets (istioctl's columns, or `-o json|yaml` for the resources).
    ProxyConfig(ctl::ProxyConfigArgs),
    /// Walk one request through what a proxy has acknowledged: listener, authorization,
    /// route, split, clusters, endpoints, and the objects each step comes from.
    Explain(ctl::ExplainArgs),
    /// Add the Strait sidecar to workload YAML offline (Pods, Deployments, StatefulSets,
    /// DaemonSets, ReplicaSets, Jobs, CronJobs, Lists); other documents pass through.
    KubeInject(ctl::KubeInjectArgs),
    /// Print a stock Envoy bootstrap that connects a proxy to straitd over ADS.
    Bootstrap(BootstrapArgs),
    /// Print the CustomResourceDefinitions of the Istio kinds straitd reads, for Kubernetes.
    Crds(ctl::CrdsArgs),
    /// Bootstrap tokens that let a workload prove its identity to straitd.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a token with straitd's signing key (read from its data dir: file access is the
    /// authorization, as kubectl access is for Kubernetes tokens).
    Create(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    #[arg(long, env = "STRAIT_DATA_DIR", default_value = "strait-data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "default")]
    namespace: String,
    #[arg(long, default_value = "default")]
    service_account: String,
    /// How long the token is valid, e.g. 1h or 30m.
    #[arg(long, default_value = "24h", value_parser = strait_model::duration::parse)]
    ttl: std::time::Duration,
}

fn token_create(args: TokenArgs) -> anyhow::Result<i32> {
    let tokens = strait_ca::TokenIssuer::load_or_create(&args.data_dir)
        .with_context(|| format!("loading the token key from {}", args.data_dir.display()))?;
    let token = tokens
        .create(&args.namespace, &args.service_account, args.ttl)
        .context("creating the token")?;
    println!("{token}");
    Ok(0)
}

#[derive(Debug, clap::Args)]
struct BootstrapArgs {
    /// The proxy's xDS node id; unique per proxy.
    #[arg(long)]
    node_id: String,
    /// Envoy's service cluster name [default: the `app` label, else the node id].
    #[arg(long)]
    cluster: Option<String>,
    /// The workload's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The workload's labels, as k=v,k2=v2.
    #[arg(long, value_parser = parse_labels, default_value = "")]
    labels: Labels,
    /// The workload's service account.
    #[arg(long)]
    service_account: Option<String>,
    /// sidecar or gateway.
    #[arg(long, default_value = "sidecar")]
    mode: ProxyMode,
    /// straitd's xDS address, as HOST:PORT (IPv6 in brackets).
    #[arg(long, value_parser = parse_host_port)]
    xds: HostPort,
    /// delta (incremental) or sotw (state of the world).
    #[arg(long, default_value = "delta")]
    xds_protocol: XdsProtocol,
    /// The port of the sidecar's outbound listener.
    #[arg(long, value_parser = parse_port, default_value_t = DEFAULT_OUTBOUND_PORT)]
    outbound_port: u16,
    /// The port of Envoy's admin API (always on 127.0.0.1).
    #[arg(long, value_parser = parse_port, default_value_t = 15000)]
    admin_port: u16,
    /// The address the proxy's listeners bind [default: 127.0.0.1 for sidecars, 0.0.0.0 for
    /// gateways, chosen by straitd].
    #[arg(long)]
    listen_address: Option<IpAddr>,
    /// Where a gateway binds each Gateway server port, as 80=18080,443=18443.
    #[arg(long, value_parser = parse_gateway_ports, default_value = "")]
    gateway_ports: GatewayPorts,
    /// How the workload's traffic reaches the sidecar: `none` (the app sends to the outbound
    /// port) or `redirect` (iptables captures it: `strait-proxy iptables`).
    #[arg(long, default_value = "none")]
    interception: InterceptionMode,
    /// The sidecar's inbound port for its workload (mTLS and authorization happen there); with
    /// `--interception redirect`, the inbound capture port [default: 15006].
    #[arg(long, value_parser = parse_port)]
    inbound_port: Option<u16>,
    /// The workload's own port on 127.0.0.1, where inbound traffic goes (explicit sidecar only).
    #[arg(long, value_parser = parse_port)]
    app_port: Option<u16>,
    /// The workload's own addresses, comma-separated (a captured sidecar serves the service
    /// ports whose endpoints they are).
    #[arg(long, value_delimiter = ',')]
    instance_ips: Vec<IpAddr>,
    /// Connect to straitd's TLS port, verifying it against this mesh root (PEM).
    #[arg(long, requires = "token")]
    xds_ca_cert: Option<PathBuf>,
    /// Bootstrap token proving the workload's identity (`straitctl token create`).
    #[arg(long, requires = "xds_ca_cert")]
    token: Option<String>,
    /// The name on straitd's certificate (default: the --xds host).
    #[arg(long)]
    xds_server_name: Option<String>,
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
}

// Newtypes: clap treats a bare `BTreeMap`/`Vec` field as a multi-value argument.
#[derive(Clone, Debug)]
struct Labels(BTreeMap<String, String>);
#[derive(Clone, Debug)]
struct GatewayPorts(BTreeMap<u16, u16>);
#[derive(Clone, Debug)]
struct HostPort {
    host: String,
    port: u16,
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("expected a port number 1-65535, got {s:?}"))
}

fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut labels = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("expected k=v pairs separated by commas, got {pair:?}"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || k.chars().any(char::is_whitespace) {
            return Err(format!("invalid label key {k:?} in {pair:?}"));
        }
        if labels.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("label {k:?} given twice"));
        }
    }
    Ok(Labels(labels))
}

fn parse_gateway_ports(s: &str) -> Result<GatewayPorts, String> {
    let mut ports = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (from, to) = pair
            .split_once('=')
            .ok_or_else(|| format!("expected SERVER_PORT=BIND_PORT pairs, got {pair:?}"))?;
        let from = parse_port(from)?;
        if ports.insert(from, parse_port(to)?).is_some() {
            return Err(format!("server port {from} given twice"));
        }
    }
    Ok(GatewayPorts(ports))
}

fn parse_host_port(s: &str) -> Result<HostPort, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT, got {s:?}"))?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            v6.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("invalid IPv6 address {v6:?}"))?;
            v6
        }
        None if host.contains(':') => {
            return Err(format!(
                "put an IPv6 address in brackets, as [{host}]:{port}"
            ));
        }
        None if host.is_empty() => return Err(format!("expected HOST:PORT, got {s:?}")),
        None => host,
    };
    Ok(HostPort {
        host: host.to_string(),
        port: parse_port(port)?,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Apply(a) => ctl::run_apply(&a),
        Command::Delete(a) => ctl::run_delete(&a),
        Command::Get(a) => ctl::run_get(&a),
        Command::Analyze(a) => ctl::run_analyze(&a),
        Command::ProxyStatus(a) => ctl::run_proxy_status(&a),
        Command::ProxyConfig(a) => ctl::run_proxy_config(&a),
        Command::Explain(a) => ctl::run_explain(&a),
        Command::KubeInject(a) => ctl::run_kube_inject(&a),
        Command::Bootstrap(args) => bootstrap(args).map(|()| 0),
        Command::Crds(a) => ctl::run_crds(&a),
        Command::Token(TokenCommand::Create(args)) => token_create(args),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("straitctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bootstrap(args: BootstrapArgs) -> anyhow::Result<()> {
    if args.outbound_port == args.admin_port {
        // A usage error like the parsers' ones, so it exits 2 as well.
        Cli::command()
            .error(
                ErrorKind::ArgumentConflict,
                format!(
                    "--outbound-port and --admin-port are both {}; they must differ",
                    args.admin_port
                ),
            )
            .exit();
    }
    let (interception, inbound) =
        inbound_from_flags(args.interception, args.inbound_port, args.app_port)
            .unwrap_or_else(|e| Cli::command().error(ErrorKind::ArgumentConflict, e).exit());
    let cluster = args
        .cluster
        .or_else(|| args.labels.0.get("app").cloned())
        .unwrap_or_else(|| args.node_id.clone());
    let xds_host = args.xds.host.clone();
    let params = BootstrapParams {
        node_id: args.node_id,
        cluster,
        namespace: args.namespace,
        labels: args.labels.0,
        service_account: args.service_account,
        mode: args.mode,
        xds_host: args.xds.host,
        xds_port: args.xds.port,
        xds_protocol: args.xds_protocol,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        listen_address: args.listen_address,
        gateway_ports: args.gateway_ports.0,
        inbound,
        interception,
        instance_ips: args.instance_ips,
        tls: match (args.xds_ca_cert, args.token) {
            (Some(ca_cert), Some(token)) => Some(XdsTls {
                ca_cert,
                token,
                server_name: args
                    .xds_server_name
                    .clone()
                    .unwrap_or_else(|| xds_host.clone()),
            }),
            _ => None,
        },
    };
    let mut text = serde_json::to_string_pretty(&envoy_bootstrap(&params))
        .context("serializing the bootstrap")?;
    text.push('\n');
    match args.output {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .context("writing to stdout")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parsers_accept_good_and_reject_bad_input() {
        assert_eq!(parse_labels("app=a, version=v1").unwrap().0.len(), 2);
        assert!(parse_labels("").unwrap().0.is_empty());
        assert!(parse_labels("app").is_err());
        assert!(parse_labels("=x").is_err());
        assert!(parse_labels("a=1,a=2").is_err());
        assert_eq!(parse_gateway_ports("80=18080").unwrap().0[&80], 18080);
        assert!(parse_gateway_ports("80=0").is_err());
        assert!(parse_gateway_ports("80:18080").is_err());
        let hp = parse_host_port("[::1]:15010").unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("::1", 15010));
        assert_eq!(parse_host_port("localhost:1").unwrap().host, "localhost");
        assert!(parse_host_port("::1:15010").is_err());
        assert!(parse_host_port("127.0.0.1").is_err());
        assert!(parse_host_port(":80").is_err());
        assert!(parse_port("65536").is_err());
    }
}
