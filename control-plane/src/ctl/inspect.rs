//! `straitctl proxy-config` and `straitctl explain`: what a connected proxy has acknowledged,
//! read from straitd's `/debug/proxies/NODE/config`, as tables, Envoy JSON, or a walk of one
//! request through it.

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use super::{AdminArgs, Client, encode_segment, parse_json, unexpected};
use crate::envoy_json::EnvoyJson;
use crate::explain::{self, Request};
use crate::proxy_config::{AckedConfig, render};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigType {
    Clusters,
    Listeners,
    Routes,
    Endpoints,
    Secrets,
}

impl ConfigType {
    fn name(self) -> &'static str {
        match self {
            ConfigType::Clusters => "clusters",
            ConfigType::Listeners => "listeners",
            ConfigType::Routes => "routes",
            ConfigType::Endpoints => "endpoints",
            ConfigType::Secrets => "secrets",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigOutput {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Which proxy: its node id, or as istioctl names pods, `POD.NAMESPACE` or `POD` with `-n`.
#[derive(Clone, Debug, clap::Args)]
pub struct ProxyArg {
    /// A connected proxy: its node id, `POD.NAMESPACE`, or `POD` (with -n).
    pub proxy: String,
    /// The namespace of a bare POD name.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ProxyConfigArgs {
    #[arg(value_enum)]
    pub kind: ConfigType,
    #[command(flatten)]
    pub proxy: ProxyArg,
    /// table (istioctl's columns), or the full resources in Envoy's JSON form (json, yaml).
    #[arg(short = 'o', long, value_enum, default_value_t = ConfigOutput::Table)]
    pub output: ConfigOutput,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainOutput {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub proxy: ProxyArg,
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The request's authority (Host), e.g. `reviews:9080`.
    #[arg(long)]
    pub authority: String,
    /// The path, with its query if any.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// A request header, `name: value`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The caller's identity (`spiffe://TD/ns/NS/sa/SA`): it connects with mTLS.
    #[arg(long)]
    pub source_principal: Option<String>,
    /// The caller's address, for AuthorizationPolicy `ipBlocks` [default: unknown, so they
    /// never match].
    #[arg(long)]
    pub source_ip: Option<std::net::IpAddr>,
    /// The proxy's port the request reaches (a listener's) [default: its outbound listener].
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(short = 'o', long, value_enum, default_value_t = ExplainOutput::Text)]
    pub output: ExplainOutput,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// The node id of the connected proxy `arg` names.
pub fn resolve(proxies: &Value, arg: &ProxyArg) -> anyhow::Result<String> {
    let ids: Vec<&str> = proxies
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["node_id"].as_str())
        .collect();
    let wanted = if arg.proxy.contains('.') || ids.contains(&arg.proxy.as_str()) {
        arg.proxy.clone()
    } else {
        format!("{}.{}", arg.proxy, arg.namespace)
    };
    // Istio's node ids are `TYPE~IP~POD.NAMESPACE~DOMAIN`.
    let pod_of = |id: &str| id.split('~').nth(2).map(str::to_string);
    let mut found: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| *id == arg.proxy || *id == wanted || pod_of(id).as_deref() == Some(&wanted))
        .collect();
    found.sort();
    found.dedup();
    match found.as_slice() {
        [one] => Ok(one.to_string()),
        [] => {
            let mut known = ids.clone();
            known.sort();
            known.dedup();
            bail!(
                "no connected proxy is {:?}; connected: {}",
                arg.proxy,
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )
        }
        many => bail!("{:?} names several proxies: {}", arg.proxy, many.join(", ")),
    }
}

/// The admin API's view of what the proxy has acknowledged.
fn fetch(admin: &AdminArgs, proxy: &ProxyArg, kind: Option<ConfigType>) -> anyhow::Result<Value> {
    let client = Client::new(&admin.admin);
    let (status, body) = client.get("/debug/proxies")?;
    if status != 200 {
        return Err(unexpected(status, &body));
    }
    let node = resolve(&parse_json(&body)?, proxy)?;
    let mut path = format!("/debug/proxies/{}/config", encode_segment(&node));
    if let Some(kind) = kind {
        path.push_str("?type=");
        path.push_str(kind.name());
    }
    let (status, body) = client.get(&path)?;
    if status != 200 {
        return Err(unexpected(status, &body));
    }
    parse_json(&body)
}

pub fn run_proxy_config(args: &ProxyConfigArgs) -> anyhow::Result<i32> {
    let body = fetch(&args.admin, &args.proxy, Some(args.kind))?;
    let kind = args.kind.name();
    let resources: Vec<Value> = body["types"][kind]["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["resource"].clone())
        .collect();
    match args.output {
        ConfigOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&resources).context("writing JSON")?
        ),
        ConfigOutput::Yaml => print!(
            "{}",
            serde_yaml_ng::to_string(&resources).context("writing YAML")?
        ),
        ConfigOutput::Table => {
            let envoy = EnvoyJson::load()?;
            let config = AckedConfig::from_json(&envoy, &body)?;
            print!("{}", render(kind, &config));
        }
    }
    Ok(0)
}

/// `name: value` -> (name, value).
pub fn parse_header(header: &str) -> anyhow::Result<(String, String)> {
    let (name, value) = header
        .split_once(':')
        .filter(|(n, _)| !n.trim().is_empty())
        .ok_or_else(|| anyhow!("header {header:?} is not `name: value`"))?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

pub fn run_explain(args: &ExplainArgs) -> anyhow::Result<i32> {
    let headers = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let body = fetch(&args.admin, &args.proxy, None)?;
    let envoy = EnvoyJson::load()?;
    let config = AckedConfig::from_json(&envoy, &body)?;
    let request = Request {
        method: args.method.clone(),
        authority: args.authority.clone(),
        path: args.path.clone(),
        headers,
        source_principal: args.source_principal.clone(),
        port: args.port,
        source_ip: args.source_ip,
    };
    let explanation = explain::explain(&config, &request);
    match args.output {
        ExplainOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&explanation).context("writing JSON")?
        ),
        ExplainOutput::Text => print!("{}", explain::render(&explanation)),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn proxies_are_named_by_node_id_or_pod() {
        let proxies = json!([
            {"node_id": "productpage-v1.default"},
            {"node_id": "sidecar~10.0.0.1~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local"},
        ]);
        let arg = |p: &str, ns: &str| ProxyArg {
            proxy: p.into(),
            namespace: ns.into(),
        };
        assert_eq!(
            resolve(&proxies, &arg("productpage-v1.default", "x")).unwrap(),
            "productpage-v1.default"
        );
        assert_eq!(
            resolve(&proxies, &arg("productpage-v1", "default")).unwrap(),
            "productpage-v1.default"
        );
        assert_eq!(
            resolve(&proxies, &arg("reviews-v1-abc", "bookinfo")).unwrap(),
            "sidecar~10.0.0.1~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local"
        );
        let err = resolve(&proxies, &arg("ratings", "default"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("connected: productpage-v1.default"), "{err}");
    }

    #[test]
    fn headers_parse() {
        assert_eq!(
            parse_header("end-user: jason").unwrap(),
            ("end-user".to_string(), "jason".to_string())
        );
        assert!(parse_header("nocolon").is_err());
        assert!(parse_header(": x").is_err());
    }
}
