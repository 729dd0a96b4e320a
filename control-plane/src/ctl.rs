//! straitctl subcommands: apply, delete, get, analyze, proxy-status, proxy-config, explain,
//! kube-inject, crds.
//!
//! Each `run_*` returns the process exit code: 0 on success, 1 when the configuration (or the
//! server) said no. Transport failures are errors, for the binary to print.

mod inspect;

pub use inspect::{
    ConfigOutput, ConfigType, ExplainArgs, ExplainOutput, ProxyArg, ProxyConfigArgs, run_explain,
    run_proxy_config,
};

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use strait_model::{Kind, Model, Object, ObjectId, ValidationError, loader};

use crate::watch::{config_files, load_files};

/// Where the admin API answers, shared by the subcommands that talk to straitd.
#[derive(Clone, Debug, clap::Args)]
pub struct AdminArgs {
    /// straitd's admin API.
    #[arg(long, env = "STRAIT_ADMIN", default_value = "http://127.0.0.1:15014")]
    pub admin: String,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ApplyArgs {
    /// A file, a directory (every *.yaml, *.yml and *.json below it) or `-` for stdin.
    /// Repeatable; everything given is applied as one batch.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    pub filenames: Vec<PathBuf>,
    /// Validate on the server without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Clone, Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["filenames", "kind"])))]
pub struct DeleteArgs {
    /// Delete the objects these files, directories or stdin (`-`) define, as one batch.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub filenames: Vec<PathBuf>,
    /// The kind to delete (vs, dr, gw, se, we or the full name), with NAME.
    #[arg(requires = "name", conflicts_with = "filenames")]
    pub kind: Option<String>,
    pub name: Option<String>,
    /// The namespace of KIND NAME.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GetOutput {
    #[default]
    Table,
    Yaml,
    Json,
}

#[derive(Clone, Debug, clap::Args)]
pub struct GetArgs {
    /// vs, dr, gw, se, we, a full kind name, or `all` (the default).
    pub kind: Option<String>,
    /// One object's name (in the namespace given by -n, else `default`).
    pub name: Option<String>,
    /// Only this namespace [default: every namespace; `default` with NAME].
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = GetOutput::Table)]
    pub output: GetOutput,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Clone, Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// Files, directories or `-` (stdin), analyzed together as one configuration.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    pub filenames: Vec<PathBuf>,
}

#[derive(Clone, Debug, clap::Args)]
pub struct CrdsArgs {
    /// Write to this file instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusOutput {
    #[default]
    Table,
    Json,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ProxyStatusArgs {
    #[arg(short = 'o', long, value_enum, default_value_t = StatusOutput::Table)]
    pub output: StatusOutput,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Clone, Debug, clap::Args)]
pub struct KubeInjectArgs {
    /// The workloads to inject (multi-document YAML), or `-` for stdin.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE|-")]
    pub filename: PathBuf,
    /// Injection settings (YAML, as in the chart's injection ConfigMap) [default: the built-in
    /// ones].
    #[arg(long, value_name = "FILE")]
    pub settings: Option<PathBuf>,
    /// Write the result here instead of stdout; nothing is written on an error.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Inject pods that opt out (`sidecar.istio.io/inject: "false"`) too.
    #[arg(long)]
    pub force: bool,
}

// === apply / delete ===

pub fn run_apply(args: &ApplyArgs) -> anyhow::Result<i32> {
    let Some(objects) = load_batch(&args.filenames)? else {
        return Ok(1);
    };
    let client = Client::new(&args.admin.admin);
    let path = if args.dry_run {
        "/apply?dry_run=true"
    } else {
        "/apply"
    };
    let (status, body) = client.post(path, &batch_body(&objects))?;
    match status {
        200 => {
            let outcome: Value = parse_json(&body)?;
            print!("{}", render_apply(&objects, &outcome));
            for warning in outcome["warnings"].as_array().into_iter().flatten() {
                eprintln!("warning: {}", remote_error(warning, &objects));
            }
            Ok(0)
        }
        400 => {
            print_remote_errors(&body, &objects);
            Ok(1)
        }
        _ => Err(unexpected(status, &body)),
    }
}

pub fn run_delete(args: &DeleteArgs) -> anyhow::Result<i32> {
    let client = Client::new(&args.admin.admin);
    let (objects, (status, body)) = match (&args.kind, &args.name) {
        (Some(kind), Some(name)) => {
            let kind = parse_kind(kind)?;
            let path = format!(
                "/objects/{}/{}/{}",
                kind,
                encode_segment(&args.namespace),
                encode_segment(name)
            );
            (Vec::new(), client.delete(&path)?)
        }
        _ => {
            let Some(objects) = load_batch(&args.filenames)? else {
                return Ok(1);
            };
            let answer = client.post("/delete", &batch_body(&objects))?;
            (objects, answer)
        }
    };
    match status {
        200 => {
            let outcome: Value = parse_json(&body)?;
            print!("{}", render_delete(&outcome));
            Ok(0)
        }
        400 | 404 | 409 => {
            print_remote_errors(&body, &objects);
            Ok(1)
        }
        _ => Err(unexpected(status, &body)),
    }
}

/// `reviews (VirtualService default/reviews) configured`, per object in the order given.
pub fn render_apply(batch: &[Object], outcome: &Value) -> String {
    let listed = |key: &str, id: &ObjectId| {
        outcome[key]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|v| object_id(v).as_ref() == Some(id)))
    };
    let suffix = if outcome["dry_run"].as_bool() == Some(true) {
        " (dry run)"
    } else {
        ""
    };
    let mut out = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for object in batch {
        if !seen.insert(&object.id) {
            continue;
        }
        let word = ["created", "configured", "unchanged"]
            .into_iter()
            .find(|key| listed(key, &object.id))
            .unwrap_or("applied");
        let _ = writeln!(out, "{} ({}) {word}{suffix}", object.id.name, object.id);
    }
    out
}

fn render_delete(outcome: &Value) -> String {
    let restored: Vec<ObjectId> = outcome["restored"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(object_id)
        .collect();
    let mut out = String::new();
    for id in outcome["deleted"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(object_id)
    {
        let _ = write!(out, "{} ({id}) deleted", id.name);
        if restored.contains(&id) {
            out.push_str("; the config directory's version is in force again");
        }
        out.push('\n');
    }
    out
}

/// Reads and parses everything given; prints shape errors (each naming its file) and returns
/// `None` when there are any, or when there is nothing to send.
fn load_batch(paths: &[PathBuf]) -> anyhow::Result<Option<Vec<Object>>> {
    let loaded = load_inputs(paths)?;
    match loaded.objects {
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            Ok(None)
        }
        Ok(objects) if objects.is_empty() => {
            eprintln!("error: no objects found in {}", display_paths(paths));
            Ok(None)
        }
        Ok(objects) => Ok(Some(objects)),
    }
}

/// The documents as one multi-document body, one JSON document (valid YAML) per object, in
/// order, so that the server's `admin API (document N)` is `batch[N - 1]`.
fn batch_body(objects: &[Object]) -> String {
    objects
        .iter()
        .map(|o| format!("---\n{}\n", o.raw))
        .collect()
}

fn print_remote_errors(body: &str, batch: &[Object]) {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        eprintln!("error: {}", body.trim());
        return;
    };
    let errors = value["errors"].as_array().filter(|e| !e.is_empty());
    match errors {
        Some(errors) => {
            for e in errors {
                eprintln!("error: {}", remote_error(e, batch));
            }
        }
        None => eprintln!("error: {}", value["error"].as_str().unwrap_or(body).trim()),
    }
}

/// A `ValidationError` from the server, its `admin API (document N)` origins put back to the
/// files they were read from.
pub fn remote_error(error: &Value, batch: &[Object]) -> ValidationError {
    let text = |key: &str| error[key].as_str().unwrap_or_default().to_string();
    let object = object_id(&error["object"]);
    let mut e = ValidationError {
        origin: text("origin"),
        object,
        path: text("path"),
        message: text("message"),
    };
    // Only when the document numbered is the object the error is about: errors about objects
    // applied earlier carry origins from earlier requests.
    if let Some(local) = document_index(&e.origin).and_then(|i| batch.get(i))
        && e.object.as_ref().is_none_or(|id| *id == local.id)
    {
        e.origin = local.origin.clone();
        e.message = remap_origins(&e.message, batch);
    }
    e
}

/// `admin API (document 3)` -> `Some(2)`.
fn document_index(origin: &str) -> Option<usize> {
    let n = origin
        .strip_prefix(crate::admin::API_ORIGIN)?
        .strip_prefix(" (document ")?
        .strip_suffix(')')?;
    n.parse::<usize>().ok()?.checked_sub(1)
}

fn remap_origins(text: &str, batch: &[Object]) -> String {
    let marker = format!("{} (document ", crate::admin::API_ORIGIN);
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(&marker) {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let end = after.find(')').map_or(after.len(), |i| i + 1);
        match document_index(&after[..end]).and_then(|i| batch.get(i)) {
            Some(local) => out.push_str(&local.origin),
            None => out.push_str(&after[..end]),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn object_id(value: &Value) -> Option<ObjectId> {
    Some(ObjectId {
        kind: Kind::parse_loose(value["kind"].as_str()?)?,
        namespace: value["namespace"].as_str()?.to_string(),
        name: value["name"].as_str()?.to_string(),
    })
}

// === get ===

pub fn run_get(args: &GetArgs) -> anyhow::Result<i32> {
    let kind = match args.kind.as_deref() {
        None | Some("all") => None,
        Some(kind) => Some(parse_kind(kind)?),
    };
    let path = match (kind, &args.name, &args.namespace) {
        (None, Some(_), _) => bail!("give a KIND with a NAME"),
        (None, None, _) => "/objects".to_string(),
        (Some(kind), None, None) => format!("/objects/{kind}"),
        (Some(kind), None, Some(ns)) => format!("/objects/{kind}/{}", encode_segment(ns)),
        (Some(kind), Some(name), ns) => format!(
            "/objects/{kind}/{}/{}",
            encode_segment(ns.as_deref().unwrap_or("default")),
            encode_segment(name)
        ),
    };
    let (status, body) = Client::new(&args.admin.admin).get(&path)?;
    match status {
        200 => {}
        400 | 404 => {
            print_remote_errors(&body, &[]);
            return Ok(1);
        }
        _ => return Err(unexpected(status, &body)),
    }
    let value = parse_json(&body)?;
    let single = !value.is_array();
    let mut entries = match value {
        Value::Array(entries) => entries,
        entry => vec![entry],
    };
    if let (None, Some(ns)) = (kind, &args.namespace) {
        entries.retain(|e| e["namespace"].as_str() == Some(ns));
    }
    if entries.is_empty() && args.output == GetOutput::Table {
        eprintln!("No resources found.");
        return Ok(0);
    }
    print!("{}", render_objects(&entries, args.output, single)?);
    Ok(0)
}

/// `/objects` entries as a table, as YAML documents, or as JSON (one object, or a list).
pub fn render_objects(
    entries: &[Value],
    output: GetOutput,
    single: bool,
) -> anyhow::Result<String> {
    Ok(match output {
        GetOutput::Table => {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    ["kind", "namespace", "name", "origin"]
                        .iter()
                        .map(|k| e[*k].as_str().unwrap_or("-").to_string())
                        .collect()
                })
                .collect();
            render_table(&["KIND", "NAMESPACE", "NAME", "ORIGIN"], &rows)
        }
        GetOutput::Yaml => {
            let mut out = String::new();
            for (i, e) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str("---\n");
                }
                out.push_str(&serde_yaml_ng::to_string(&e["object"]).context("writing YAML")?);
            }
            out
        }
        GetOutput::Json => {
            let objects: Vec<&Value> = entries.iter().map(|e| &e["object"]).collect();
            let json = match (single, objects.as_slice()) {
                (true, [one]) => serde_json::to_string_pretty(one),
                _ => serde_json::to_string_pretty(&objects),
            };
            json.context("writing JSON")? + "\n"
        }
    })
}

// === analyze ===

/// The result of checking files offline with the one validator.
#[derive(Debug, Default)]
pub struct Analysis {
    pub files: usize,
    pub objects: usize,
    /// Shape errors, if any file failed to parse; the cross-reference check needs every
    /// object, so it runs only when there are none.
    pub parse_errors: Vec<ValidationError>,
    pub errors: Vec<ValidationError>,
    pub warnings: Vec<ValidationError>,
}

impl Analysis {
    pub fn has_errors(&self) -> bool {
        !self.parse_errors.is_empty() || !self.errors.is_empty()
    }
}

pub fn run_analyze(args: &AnalyzeArgs) -> anyhow::Result<i32> {
    let analysis = analyze(&args.filenames)?;
    print!("{}", render_analysis(&analysis));
    Ok(i32::from(analysis.has_errors()))
}

/// Loads everything given as one configuration and runs `Model::build` on it.
pub fn analyze(paths: &[PathBuf]) -> anyhow::Result<Analysis> {
    let loaded = load_inputs(paths)?;
    let mut analysis = Analysis {
        files: loaded.files,
        ..Analysis::default()
    };
    match loaded.objects {
        Err(errors) => analysis.parse_errors = errors,
        Ok(objects) => {
            analysis.objects = objects.len();
            match Model::build(&objects) {
                Ok(model) => analysis.warnings = model.warnings,
                Err(errors) => analysis.errors = errors.0,
            }
        }
    }
    Ok(analysis)
}

pub fn render_analysis(a: &Analysis) -> String {
    let mut out = String::new();
    for e in a.parse_errors.iter().chain(&a.errors) {
        let _ = writeln!(out, "error: {e}");
    }
    for w in &a.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let files = plural(a.files, "file");
    let objects = plural(a.objects, "object");
    let _ = if !a.parse_errors.is_empty() {
        writeln!(
            out,
            "✘ Found {} in {files}; fix {} to check the configuration as a whole.",
            plural(a.parse_errors.len(), "error"),
            if a.parse_errors.len() == 1 {
                "it"
            } else {
                "them"
            }
        )
    } else if !a.errors.is_empty() {
        writeln!(
            out,
            "✘ Found {} and {} in {objects} from {files}.",
            plural(a.errors.len(), "error"),
            plural(a.warnings.len(), "warning")
        )
    } else if !a.warnings.is_empty() {
        writeln!(
            out,
            "✔ No errors found in {objects} from {files}; {}.",
            plural(a.warnings.len(), "warning")
        )
    } else {
        writeln!(
            out,
            "✔ No validation issues found when analyzing {objects} from {files}."
        )
    };
    out
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

// === crds ===

pub fn run_crds(args: &CrdsArgs) -> anyhow::Result<i32> {
    let text = crate::crds::render_yaml()?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(0)
}

// === proxy-status ===

pub fn run_proxy_status(args: &ProxyStatusArgs) -> anyhow::Result<i32> {
    let (status, body) = Client::new(&args.admin.admin).get("/debug/proxies")?;
    if status != 200 {
        return Err(unexpected(status, &body));
    }
    let proxies = parse_json(&body)?;
    match args.output {
        StatusOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&proxies).context("writing JSON")?
        ),
        StatusOutput::Table => print!("{}", render_proxy_status(&proxies)),
    }
    Ok(0)
}

/// The xDS types shown, by column.
const XDS_TYPES: [(&str, &str); 5] = [
    ("CDS", "type.googleapis.com/envoy.config.cluster.v3.Cluster"),
    (
        "LDS",
        "type.googleapis.com/envoy.config.listener.v3.Listener",
    ),
    (
        "EDS",
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    ),
    (
        "RDS",
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    ),
    (
        "SDS",
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
    ),
];

/// One type's state on one stream: SYNCED (the last response was acknowledged), NACK (it was
/// rejected), STALE (not acknowledged yet), NOT SENT, or `-` (never requested).
pub fn xds_state(status: Option<&Value>) -> &'static str {
    let Some(status) = status.filter(|s| s.is_object()) else {
        return "-";
    };
    let sent = status["sent_version"].as_str();
    let nack_version = status["nack"]["version"].as_str();
    match sent {
        None => "NOT SENT",
        Some(_) if nack_version.is_some() && nack_version == sent => "NACK",
        Some(_) if status["acked_version"].as_str() == sent => "SYNCED",
        Some(_) => "STALE",
    }
}

/// `/debug/proxies` as a table, with the detail of every NACK below it.
pub fn render_proxy_status(proxies: &Value) -> String {
    let mut proxies: Vec<&Value> = proxies.as_array().into_iter().flatten().collect();
    if proxies.is_empty() {
        return "No proxies connected.\n".to_string();
    }
    proxies.sort_by_key(|p| {
        (
            p["node_id"].as_str().unwrap_or_default().to_string(),
            p["stream_id"].as_u64(),
        )
    });
    let mut header = vec!["NODE", "TYPE", "PROTOCOL", "IDENTITY"];
    header.extend(XDS_TYPES.iter().map(|(column, _)| *column));
    let mut rows = Vec::new();
    let mut nacks = String::new();
    for p in &proxies {
        let node = p["node_id"].as_str().unwrap_or("-");
        let mode = p["metadata"][strait_model::node::keys::MODE]
            .as_str()
            .unwrap_or("-");
        let mut row = vec![
            node.to_string(),
            mode.to_string(),
            p["protocol"].as_str().unwrap_or("-").to_string(),
            // Only streams on the TLS port prove an identity.
            p["identity"].as_str().unwrap_or("-").to_string(),
        ];
        for (column, type_url) in XDS_TYPES {
            let status = p["types"].get(type_url);
            let state = xds_state(status);
            row.push(state.to_string());
            if state == "NACK"
                && let Some(status) = status
            {
                let nack = &status["nack"];
                let _ = writeln!(
                    nacks,
                    "{node} {column} rejected version {} ({}): {}",
                    nack["version"].as_str().unwrap_or("?"),
                    plural(
                        usize::try_from(nack["count"].as_u64().unwrap_or(1)).unwrap_or(usize::MAX),
                        "time"
                    ),
                    nack["error_detail"].as_str().unwrap_or("").trim()
                );
            }
        }
        rows.push(row);
    }
    let mut out = render_table(&header, &rows);
    if !nacks.is_empty() {
        out.push('\n');
        out.push_str(&nacks);
    }
    out
}

// === kube-inject ===

/// Injects the workloads of one file offline. 1 (with the error printed) when the settings or
/// the manifest are wrong: then nothing is written.
pub fn run_kube_inject(args: &KubeInjectArgs) -> anyhow::Result<i32> {
    let settings = match &args.settings {
        None => strait_inject::InjectSettings::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            match strait_inject::InjectSettings::from_yaml(&text) {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("error: {}: {e}", path.display());
                    return Ok(1);
                }
            }
        }
    };
    let (input, origin) = if args.filename == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        (text, "<stdin>".to_string())
    } else {
        let text = std::fs::read_to_string(&args.filename)
            .with_context(|| format!("reading {}", args.filename.display()))?;
        (text, args.filename.display().to_string())
    };
    let output = match strait_inject::inject_manifest(&input, &settings, args.force) {
        Ok(output) => output,
        Err(e) => {
            eprintln!("error: {origin}: {e}");
            return Ok(1);
        }
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, output).with_context(|| format!("writing {}", path.display()))?
        }
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .lock()
                .write_all(output.as_bytes())
                .context("writing to stdout")?;
        }
    }
    Ok(0)
}

// === shared ===

/// Columns padded to their widest cell, three spaces apart, like kubectl.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            let _ = write!(text, "{cell:<width$}   ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

struct Loaded {
    files: usize,
    objects: Result<Vec<Object>, Vec<ValidationError>>,
}

/// Reads files, directories (as `load_dir` does) and stdin (`-`), in the order given.
fn load_inputs(paths: &[PathBuf]) -> anyhow::Result<Loaded> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    let mut files = 0;
    for path in paths {
        let result = if path == Path::new("-") {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            files += 1;
            loader::parse(&text, "<stdin>")
        } else {
            let found = config_files(path)?;
            if found.is_empty() {
                bail!("no *.yaml, *.yml or *.json files in {}", path.display());
            }
            files += found.len();
            load_files(&found)
        };
        match result {
            Ok(o) => objects.extend(o),
            Err(e) => errors.extend(e),
        }
    }
    Ok(Loaded {
        files,
        objects: if errors.is_empty() {
            Ok(objects)
        } else {
            Err(errors)
        },
    })
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_kind(kind: &str) -> anyhow::Result<Kind> {
    Kind::parse_loose(kind).ok_or_else(|| {
        anyhow!(
            "unknown kind {kind:?}; expected one of VirtualService (vs), DestinationRule (dr), Gateway (gw), ServiceEntry (se), WorkloadEntry (we), PeerAuthentication (pa), AuthorizationPolicy (ap), RequestAuthentication (ra), Sidecar (sc)"
        )
    })
}

/// Percent-encodes one URL path segment.
fn encode_segment(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn parse_json(body: &str) -> anyhow::Result<Value> {
    serde_json::from_str(body)
        .with_context(|| format!("straitd answered with invalid JSON: {body}"))
}

fn unexpected(status: u16, body: &str) -> anyhow::Error {
    anyhow!("straitd answered {status}: {}", body.trim())
}

/// A blocking client of the admin API that hands back every status, errors included.
struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(base: &str) -> Self {
        let base = base.trim_end_matches('/');
        let base = if base.contains("://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Self { base, agent }
    }

    fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        self.finish(self.agent.get(self.url(path)).call())
    }

    fn delete(&self, path: &str) -> anyhow::Result<(u16, String)> {
        self.finish(self.agent.delete(self.url(path)).call())
    }

    fn post(&self, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
        self.finish(
            self.agent
                .post(self.url(path))
                .header("content-type", "application/yaml")
                .send(body),
        )
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn finish(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<(u16, String)> {
        let reach = || {
            format!(
                "cannot reach straitd's admin API at {} (is straitd running? set --admin or STRAIT_ADMIN)",
                self.base
            )
        };
        let mut response = result.with_context(reach)?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().with_context(reach)?;
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{SERVICES, parse, vs};
    use pretty_assertions::assert_eq;
    use serde_json::json;
    use std::fs;

    #[derive(Debug, clap::Parser)]
    enum Cli {
        Apply(ApplyArgs),
        Delete(DeleteArgs),
        Get(GetArgs),
        Analyze(AnalyzeArgs),
        ProxyStatus(ProxyStatusArgs),
        KubeInject(KubeInjectArgs),
    }

    #[test]
    fn the_arguments_parse_as_documented() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let parse = |args: &[&str]| Cli::try_parse_from([&["straitctl"], args].concat());
        let Cli::Apply(apply) = parse(&["apply", "-f", "a.yaml", "-f", "-", "--dry-run"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            apply.filenames,
            [PathBuf::from("a.yaml"), PathBuf::from("-")]
        );
        assert!(apply.dry_run);
        assert!(parse(&["apply"]).is_err());
        let Cli::Delete(delete) = parse(&["delete", "vs", "reviews", "-n", "shop"]).unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                delete.kind.as_deref(),
                delete.name.as_deref(),
                delete.namespace.as_str()
            ),
            (Some("vs"), Some("reviews"), "shop")
        );
        assert!(parse(&["delete"]).is_err());
        assert!(parse(&["delete", "vs"]).is_err());
        assert!(parse(&["delete", "-f", "x.yaml"]).is_ok());
        let Cli::Get(get) = parse(&["get", "vs", "-o", "yaml", "--admin", "http://h:1"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (get.output, get.admin.admin.as_str()),
            (GetOutput::Yaml, "http://h:1")
        );
        assert!(parse(&["analyze", "-f", "dir"]).is_ok());
        assert!(parse(&["proxy-status", "-o", "json"]).is_ok());
        let Cli::KubeInject(inject) = parse(&[
            "kube-inject",
            "-f",
            "-",
            "--settings",
            "s.yaml",
            "-o",
            "out.yaml",
            "--force",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                inject.filename,
                inject.settings,
                inject.output,
                inject.force
            ),
            (
                PathBuf::from("-"),
                Some(PathBuf::from("s.yaml")),
                Some(PathBuf::from("out.yaml")),
                true
            )
        );
        assert!(parse(&["kube-inject"]).is_err());
    }

    #[test]
    fn tables_pad_columns_and_trim_line_ends() {
        let table = render_table(
            &["KIND", "NAME"],
            &[
                vec!["VirtualService".into(), "a".into()],
                vec!["Gateway".into(), "long-name".into()],
            ],
        );
        assert_eq!(
            table,
            "KIND             NAME\nVirtualService   a\nGateway          long-name\n"
        );
    }

    #[test]
    fn proxy_status_shows_each_type_and_nack_details() {
        let cds = XDS_TYPES[0].1;
        let lds = XDS_TYPES[1].1;
        let eds = XDS_TYPES[2].1;
        let proxies = json!([
            {
                "stream_id": 2, "node_id": "web-1", "cluster": "web",
                "metadata": {"STRAIT_MODE": "sidecar"}, "protocol": "delta",
                "identity": "spiffe://cluster.local/ns/default/sa/web",
                "types": {
                    cds: {"sent_version": "3", "acked_version": "3", "nack": null},
                    lds: {"sent_version": "3", "acked_version": "2",
                          "nack": {"version": "3", "error_detail": "bad listener\n", "code": 3, "count": 2}},
                    eds: {"sent_version": "3", "acked_version": "2", "nack": null},
                }
            },
            {
                "stream_id": 1, "node_id": "gw", "metadata": {"STRAIT_MODE": "gateway"},
                "protocol": "sotw", "types": {}
            }
        ]);
        assert_eq!(
            render_proxy_status(&proxies),
            "\
NODE    TYPE      PROTOCOL   IDENTITY                                   CDS      LDS    EDS     RDS   SDS
gw      gateway   sotw       -                                          -        -      -       -     -
web-1   sidecar   delta      spiffe://cluster.local/ns/default/sa/web   SYNCED   NACK   STALE   -     -

web-1 LDS rejected version 3 (2 times): bad listener
"
        );
        assert_eq!(render_proxy_status(&json!([])), "No proxies connected.\n");
    }

    #[test]
    fn xds_states() {
        assert_eq!(xds_state(None), "-");
        assert_eq!(xds_state(Some(&json!({"sent_version": null}))), "NOT SENT");
        // A NACK of an older version, since superseded and acknowledged.
        assert_eq!(
            xds_state(Some(
                &json!({"sent_version": "5", "acked_version": "5", "nack": {"version": "4"}})
            )),
            "SYNCED"
        );
        assert_eq!(
            xds_state(Some(
                &json!({"sent_version": "5", "acked_version": "4", "nack": {"version": "4"}})
            )),
            "STALE"
        );
    }

    #[test]
    fn analyze_a_good_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("services.yaml"), SERVICES).unwrap();
        fs::write(dir.path().join("vs.yaml"), vs("reviews", "reviews")).unwrap();
        let analysis = analyze(&[dir.path().to_path_buf()]).unwrap();
        assert!(!analysis.has_errors());
        assert_eq!((analysis.files, analysis.objects), (2, 3));
        assert_eq!(
            render_analysis(&analysis),
            "✔ No validation issues found when analyzing 3 objects from 2 files.\n"
        );
    }

    #[test]
    fn analyze_reports_cross_reference_errors_with_their_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("services.yaml"), SERVICES).unwrap();
        let vs_file = dir.path().join("vs.yaml");
        fs::write(&vs_file, vs("reviews", "nowhere")).unwrap();
        let analysis = analyze(&[dir.path().join("services.yaml"), vs_file.clone()]).unwrap();
        assert!(analysis.has_errors());
        let text = render_analysis(&analysis);
        assert!(
            text.starts_with(&format!(
                "error: {} (document 1): VirtualService default/reviews: spec.http[0].route[0].destination.host: ",
                vs_file.display()
            )),
            "{text}"
        );
        assert!(
            text.ends_with("✘ Found 1 error and 0 warnings in 3 objects from 2 files.\n"),
            "{text}"
        );
    }

    #[test]
    fn analyze_reports_every_malformed_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.yaml"), "kind: [\n").unwrap();
        fs::write(dir.path().join("b.yaml"), "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {selectr: {}}\n").unwrap();
        let analysis = analyze(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(analysis.parse_errors.len(), 2);
        let text = render_analysis(&analysis);
        assert!(
            text.contains("a.yaml (document 1): malformed YAML"),
            "{text}"
        );
        assert!(
            text.contains("b.yaml (document 1): Gateway default/g: spec.selectr: "),
            "{text}"
        );
        assert!(
            text.ends_with(
                "✘ Found 2 errors in 2 files; fix them to check the configuration as a whole.\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn analyze_needs_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = analyze(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(err.to_string().contains("no *.yaml"), "{err}");
        assert!(analyze(&[dir.path().join("missing.yaml")]).is_err());
    }

    #[test]
    fn apply_output_follows_the_input_order() {
        let mut batch = parse(&vs("reviews", "reviews"), "vs.yaml");
        batch.extend(parse(SERVICES, "services.yaml"));
        let outcome = json!({
            "generation": 4, "dry_run": false,
            "created": [{"kind": "ServiceEntry", "namespace": "default", "name": "ratings"}],
            "configured": [{"kind": "VirtualService", "namespace": "default", "name": "reviews"}],
            "unchanged": [{"kind": "ServiceEntry", "namespace": "default", "name": "reviews"}],
            "warnings": []
        });
        assert_eq!(
            render_apply(&batch, &outcome),
            "\
reviews (VirtualService default/reviews) configured
reviews (ServiceEntry default/reviews) unchanged
ratings (ServiceEntry default/ratings) created
"
        );
    }

    #[test]
    fn server_errors_name_the_local_files() {
        let mut batch = parse(SERVICES, "services.yaml");
        batch.extend(parse(&vs("reviews", "nowhere"), "dir/vs.yaml"));
        let error = json!({
            "origin": "admin API (document 3)",
            "object": {"kind": "VirtualService", "namespace": "default", "name": "reviews"},
            "path": "spec.http[0].route[0].destination.host",
            "message": "defined twice: also in admin API (document 1)"
        });
        assert_eq!(
            remote_error(&error, &batch).to_string(),
            "dir/vs.yaml (document 1): VirtualService default/reviews: spec.http[0].route[0].destination.host: defined twice: also in services.yaml (document 1)"
        );
        // An error about an object from an earlier request keeps its origin.
        let mut other = error.clone();
        other["object"]["name"] = json!("other");
        assert!(
            remote_error(&other, &batch)
                .to_string()
                .starts_with("admin API (document 3): ")
        );
    }

    #[test]
    fn delete_output_says_when_the_file_version_is_back() {
        let outcome = json!({
            "generation": 3,
            "deleted": [{"kind": "VirtualService", "namespace": "default", "name": "a"},
                        {"kind": "Gateway", "namespace": "x", "name": "b"}],
            "restored": [{"kind": "VirtualService", "namespace": "default", "name": "a"}]
        });
        assert_eq!(
            render_delete(&outcome),
            "a (VirtualService default/a) deleted; the config directory's version is in force again\nb (Gateway x/b) deleted\n"
        );
    }

    #[test]
    fn get_renders_tables_yaml_and_json() {
        let entries = vec![json!({
            "kind": "Gateway", "namespace": "default", "name": "gw", "origin": "gw.yaml (document 1)",
            "object": {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw"}}
        })];
        assert_eq!(
            render_objects(&entries, GetOutput::Table, false).unwrap(),
            "KIND      NAMESPACE   NAME   ORIGIN\nGateway   default     gw     gw.yaml (document 1)\n"
        );
        assert_eq!(
            render_objects(&entries, GetOutput::Yaml, false).unwrap(),
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n"
        );
        let json: Value =
            serde_json::from_str(&render_objects(&entries, GetOutput::Json, true).unwrap())
                .unwrap();
        assert_eq!(json["kind"], "Gateway");
        let json: Value =
            serde_json::from_str(&render_objects(&entries, GetOutput::Json, false).unwrap())
                .unwrap();
        assert_eq!(json[0]["kind"], "Gateway");
    }

    #[test]
    fn the_batch_body_parses_back_document_for_document() {
        let mut batch = parse(SERVICES, "services.yaml");
        batch.extend(parse(&vs("reviews", "reviews"), "vs.yaml"));
        let back = loader::parse(&batch_body(&batch), crate::admin::API_ORIGIN).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2].origin, "admin API (document 3)");
        assert_eq!(back[2].id, batch[2].id);
        assert_eq!(back[2].raw, batch[2].raw);
    }

    #[test]
    fn url_segments_are_encoded() {
        assert_eq!(encode_segment("reviews-v1.x"), "reviews-v1.x");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

    /// The client against a real admin API on a loopback port.
    #[test]
    fn apply_get_and_delete_against_a_live_admin_api() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let store = crate::store::ConfigStore::new(&mut registry);
        let app = crate::admin::router(crate::admin::AdminState {
            store: store.clone(),
            registry: Arc::new(registry),
            proxies: Arc::new(|| json!([])),
            held: Arc::new(|_| Vec::new()),
            ready: Arc::new(AtomicBool::new(true)),
            read_only: false,
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });

        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("services.yaml"), SERVICES).unwrap();
        fs::write(dir.path().join("vs.yaml"), vs("reviews", "nowhere")).unwrap();
        let admin = AdminArgs {
            admin: addr.to_string(),
        };
        let apply = |files: Vec<PathBuf>| {
            run_apply(&ApplyArgs {
                filenames: files,
                dry_run: false,
                admin: admin.clone(),
            })
            .unwrap()
        };
        assert_eq!(apply(vec![dir.path().to_path_buf()]), 1);
        assert_eq!(store.current().generation, 0);
        assert_eq!(apply(vec![dir.path().join("services.yaml")]), 0);
        assert_eq!(store.current().objects.len(), 2);

        let get = |kind: Option<&str>, name: Option<&str>| {
            run_get(&GetArgs {
                kind: kind.map(String::from),
                name: name.map(String::from),
                namespace: None,
                output: GetOutput::Table,
                admin: admin.clone(),
            })
            .unwrap()
        };
        assert_eq!(get(Some("se"), None), 0);
        assert_eq!(get(Some("se"), Some("reviews")), 0);
        assert_eq!(get(Some("se"), Some("nope")), 1);
        assert!(
            run_get(&GetArgs {
                kind: Some("envoyfilter".into()),
                name: None,
                namespace: None,
                output: GetOutput::Table,
                admin: admin.clone(),
            })
            .is_err()
        );

        let delete = run_delete(&DeleteArgs {
            filenames: vec![],
            kind: Some("se".into()),
            name: Some("ratings".into()),
            namespace: "default".into(),
            admin: admin.clone(),
        })
        .unwrap();
        assert_eq!(delete, 0);
        assert_eq!(store.current().objects.len(), 1);
        assert_eq!(
            run_proxy_status(&ProxyStatusArgs {
                output: StatusOutput::Table,
                admin: admin.clone()
            })
            .unwrap(),
            0
        );

        let unreachable = run_proxy_status(&ProxyStatusArgs {
            output: StatusOutput::Table,
            admin: AdminArgs {
                admin: "http://127.0.0.1:1".into(),
            },
        })
        .unwrap_err();
        assert!(
            format!("{unreachable:#}").contains("cannot reach straitd"),
            "{unreachable:#}"
        );
    }
}
