//! What a run found: the JSON document and the Markdown table written from it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Summary;
use crate::xds::ScopeCheck;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub generated_unix: u64,
    pub duration_s: f64,
    pub parameters: serde_json::Value,
    pub machine: Machine,
    pub straitd: StraitdInfo,
    pub load: LoadProcess,
    pub mesh: MeshInfo,
    pub baseline: Option<Baseline>,
    pub envoys: Option<EnvoyResult>,
    pub cold_start: Option<ColdStart>,
    pub steady: Option<Steady>,
    pub endpoint_change: Option<Change>,
    pub route_change: Option<Change>,
    pub churn: Option<Churn>,
    pub restart: Option<Restart>,
    /// Whether the clients held what their scopes call for, after each scenario.
    pub scope_checks: Vec<ScopeCheck>,
    pub final_disconnect: Option<MemPoint>,
    pub errors: Vec<String>,
    pub notes: Vec<String>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Default, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_mib: f64,
    pub mem_available_mib_at_start: f64,
    pub mem_available_mib_at_end: f64,
    pub loadavg_at_start: String,
    pub loadavg_at_end: String,
    pub kernel: String,
}

#[derive(Debug, Default, Serialize)]
pub struct StraitdInfo {
    pub version: String,
    pub commit: String,
    pub binary: String,
}

#[derive(Debug, Default, Serialize)]
pub struct LoadProcess {
    pub worker_threads: usize,
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct MeshInfo {
    pub services: usize,
    /// In istio-system, besides `services`.
    pub shared_services: usize,
    pub namespaces: usize,
    pub endpoints_per_service: usize,
    pub service_entries: usize,
    pub destination_rules: usize,
    pub virtual_services: usize,
    /// Sidecar resources: one per namespace when scoped, else none.
    pub sidecars: usize,
    /// The other namespaces each Sidecar imports; `None`: not scoped.
    pub scoped_imports: Option<usize>,
    /// The fewest and most services a sidecar shape sees.
    pub sidecar_sees_services: (usize, usize),
    pub shapes: usize,
    pub gateway_shapes: usize,
    /// Resources a sidecar client holds once converged, per type.
    pub sidecar_resources: BTreeMap<String, usize>,
    pub gateway_resources: BTreeMap<String, usize>,
}

#[derive(Debug, Default, Serialize)]
pub struct Baseline {
    pub ready_s: f64,
    pub rss_mib_nothing_connected: f64,
    pub rss_mib_envoys_connected: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct EnvoyResult {
    pub count: usize,
    pub delta: usize,
    pub sotw: usize,
    pub sync_s: Option<f64>,
    pub checks: Vec<EnvoyCheck>,
}

#[derive(Debug, Default, Serialize)]
pub struct EnvoyCheck {
    pub after: String,
    /// After a change: the Envoys in its scope (each must ACK a new version of its type).
    pub in_scope: Option<usize>,
    /// Envoys outside the change's scope that ACKed a new version of its type all the same.
    pub moved_outside: usize,
    pub moved_outside_examples: Vec<String>,
    pub synced: usize,
    pub of: usize,
    pub alive: usize,
    /// Envoy's own `*.update_rejected` counters, summed over the Envoys.
    pub rejected_updates: u64,
    /// NACKs straitd recorded over every stream (Envoys and simulated clients).
    pub nacks_at_straitd: usize,
    pub nack_examples: Vec<String>,
    pub unsynced_examples: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct ColdStart {
    pub clients: usize,
    pub sotw_clients: usize,
    pub timeout_s: f64,
    pub converged: usize,
    pub all_converged_s: Option<f64>,
    pub per_client_s: Summary,
    pub straitd_cpu_s: f64,
    pub straitd_peak_rss_mib: f64,
    pub rss_mib_converged: f64,
    pub bytes_received: u64,
    pub connect_failures: u64,
    pub errors: Vec<(String, usize)>,
}

#[derive(Debug, Default, Serialize)]
pub struct Steady {
    pub rss_mib_after_disconnect: f64,
    pub after_disconnect_vs_baseline_pct: f64,
    /// A fresh straitd (restarted for the steps) with only the Envoys connected.
    pub rss_mib_fresh_baseline: f64,
    pub steps: Vec<Step>,
}

#[derive(Debug, Default, Serialize)]
pub struct Step {
    pub clients: usize,
    pub converged: usize,
    pub converge_s: Option<f64>,
    pub rss_mib: f64,
    /// (RSS - RSS with none connected) per 1,000 clients, MB (10^6 bytes).
    pub mb_per_1000: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Change {
    pub what: String,
    pub object: String,
    pub resource: String,
    pub apply_ms: f64,
    /// Clients in the change's scope: those that see the service (for a route change, the
    /// sidecars that see it). The change is waited for at these.
    pub affected: usize,
    /// Clients outside it, which must not get it.
    pub outside_scope: usize,
    /// In scope, yet not holding the resource when the change was made (should be 0).
    pub missing_at_start: usize,
    /// Outside the scope, yet holding the resource when the change was made (should be 0;
    /// not counted for a route configuration, whose name every sidecar holds for its own).
    pub held_outside_at_start: usize,
    /// Outside the scope, yet received a new version of the resource (should be 0).
    pub received_outside: usize,
    pub received_outside_examples: Vec<String>,
    /// Outside the scope, and received any response from the change until every client in
    /// it had ACKed and --settle more seconds had passed; the bytes they got.
    pub outside_with_traffic: usize,
    pub outside_bytes: u64,
    pub converged: usize,
    pub timeout_s: f64,
    pub latency_s: Summary,
    /// Delta clients (the ratio below is theirs).
    pub bytes_per_client: Summary,
    pub bytes_per_sotw_client: Summary,
    pub resource_size_bytes: usize,
    pub bytes_ratio: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Churn {
    pub rate_per_s: f64,
    pub seconds: f64,
    pub changes: usize,
    pub applies_failed: usize,
    /// Applies straitd had not answered when the harness stopped waiting.
    pub applies_unanswered: usize,
    pub apply_ms: Summary,
    pub converged_changes: usize,
    pub per_change_p99_s: Summary,
    pub per_change_max_s: Summary,
    pub all_s: Summary,
    pub first_10s: Summary,
    pub last_10s: Summary,
    pub unconverged_clients: usize,
    /// Clients in each change's scope.
    pub in_scope_per_change: Summary,
    /// Summed over the changes: (change, client) pairs in scope without the resource at the
    /// change, outside the scope holding it, outside the scope receiving it (all should be 0).
    pub missing_at_start: usize,
    pub held_outside_at_start: usize,
    pub received_outside: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Restart {
    pub kill_to_ready_s: f64,
    pub reapplied_objects: usize,
    pub clients: usize,
    pub back: usize,
    pub all_back_s: Option<f64>,
    pub all_back_after_ready_s: Option<f64>,
    pub per_client_s: Summary,
    pub timeout_s: f64,
    /// Clients that at some point after the kill held fewer resources of a type than before.
    pub held_less: usize,
    pub held_less_examples: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct MemPoint {
    pub rss_mib: f64,
    pub vs_baseline_pct: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Target {
    pub figure: String,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// Text for a table cell: a `|` would end the cell, even in a code span.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

pub fn secs(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 1.0 => format!("{:.0} ms", v * 1000.0),
        Some(v) => format!("{v:.2} s"),
        None => "-".into(),
    }
}

fn summary_s(s: &Summary) -> String {
    if s.count == 0 {
        return "-".into();
    }
    format!(
        "p50 {} / p99 {} / max {} (n={})",
        secs(s.p50),
        secs(s.p99),
        secs(s.max),
        s.count
    )
}

fn summary_bytes(s: &Summary) -> String {
    if s.count == 0 {
        return "-".into();
    }
    let b = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    format!("mean {} / p50 {} / max {} B", b(s.mean), b(s.p50), b(s.max))
}

fn met(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "n/a",
    }
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let p = &self.parameters;
        let _ = writeln!(md, "# strait-scale: straitd under many ADS clients\n");
        let _ = writeln!(
            md,
            "straitd `{}` (commit `{}`), {} simulated clients ({} SotW) in {} shapes, {} stock Envoys, \
             {} services in {} namespaces with {} endpoints each. One run, {:.0} s. \
             The load generator ({} tokio worker thread(s)) and straitd share this {}-core machine.\n",
            self.straitd.version,
            self.straitd.commit,
            p["clients"],
            self.cold_start.as_ref().map_or(0, |c| c.sotw_clients),
            p["shapes"],
            p["envoys"],
            p["services"],
            p["namespaces"],
            p["endpoints"],
            self.duration_s,
            self.load.worker_threads,
            self.machine.nproc,
        );
        let m = &self.mesh;
        match m.scoped_imports {
            Some(k) => {
                let _ = writeln!(
                    md,
                    "**Scoped**: a Sidecar in each of the {} namespaces, egress hosts `./*`, `istio-system/*` and {k} other \
                     namespaces; a sidecar sees {} of the {} services, a gateway all of them.\n",
                    m.sidecars,
                    match m.sidecar_sees_services {
                        (a, b) if a == b => a.to_string(),
                        (a, b) => format!("{a} to {b}"),
                    },
                    m.services + m.shared_services
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "Not scoped: no Sidecar, nothing with `exportTo`; every proxy sees all {} services.\n",
                    m.services + m.shared_services
                );
            }
        }
        let _ = writeln!(md, "| figure | measured | target | met |");
        let _ = writeln!(md, "| --- | --- | --- | --- |");
        for t in &self.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                cell(&t.figure),
                cell(&t.measured),
                cell(&t.target),
                met(t.met)
            );
        }

        if let Some(c) = &self.cold_start {
            let _ = writeln!(md, "\n## (a) Cold start: every client connects at once\n");
            let _ = writeln!(md, "| | |\n| --- | --- |");
            let _ = writeln!(md, "| clients | {} ({} SotW) |", c.clients, c.sotw_clients);
            let _ = writeln!(
                md,
                "| converged (complete config ACKed) | {} of {} within {:.0} s |",
                c.converged, c.clients, c.timeout_s
            );
            let _ = writeln!(md, "| all converged after | {} |", secs(c.all_converged_s));
            let _ = writeln!(md, "| per client | {} |", summary_s(&c.per_client_s));
            let _ = writeln!(md, "| straitd CPU during it | {:.1} s |", c.straitd_cpu_s);
            let _ = writeln!(
                md,
                "| straitd peak RSS (VmHWM) | {:.0} MiB |",
                c.straitd_peak_rss_mib
            );
            let _ = writeln!(
                md,
                "| straitd RSS once converged | {:.0} MiB |",
                c.rss_mib_converged
            );
            let _ = writeln!(
                md,
                "| bytes received by all clients | {:.1} MB |",
                c.bytes_received as f64 / 1e6
            );
            let _ = writeln!(
                md,
                "| connection/stream failures | {} |",
                c.connect_failures
            );
            for (e, n) in &c.errors {
                let _ = writeln!(md, "| last error ({n} clients) | `{}` |", cell(e));
            }
        }
        if let Some(s) = &self.steady {
            let _ = writeln!(md, "\n## (b) Steady state memory\n");
            if let Some(b) = &self.baseline {
                let _ = writeln!(
                    md,
                    "straitd RSS with nothing connected: {:.0} MiB; with the {} Envoys only: {:.0} MiB \
                     (the baseline below). After the cold-start clients disconnected: {:.0} MiB ({:+.1}% of baseline).\n",
                    b.rss_mib_nothing_connected,
                    self.envoys.as_ref().map_or(0, |e| e.count),
                    b.rss_mib_envoys_connected,
                    s.rss_mib_after_disconnect,
                    s.after_disconnect_vs_baseline_pct
                );
            }
            let _ = writeln!(
                md,
                "For the steps straitd was restarted (the cold start's leftovers do not count) and the clients \
                 started fresh; that straitd's RSS with the Envoys only: {:.0} MiB, the base of the MB per 1,000 below.\n",
                s.rss_mib_fresh_baseline
            );
            let _ = writeln!(
                md,
                "| clients connected | converged | converge time | straitd RSS | MB per 1,000 clients |"
            );
            let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
            for step in &s.steps {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.0} MiB | {:.1} |",
                    step.clients,
                    step.converged,
                    secs(step.converge_s),
                    step.rss_mib,
                    step.mb_per_1000
                );
            }
        }
        for c in [&self.endpoint_change, &self.route_change]
            .into_iter()
            .flatten()
        {
            let _ = writeln!(md, "\n## {}\n", c.what);
            let _ = writeln!(md, "| | |\n| --- | --- |");
            let _ = writeln!(md, "| object applied | {} |", c.object);
            let _ = writeln!(md, "| resource watched | `{}` |", cell(&c.resource));
            let _ = writeln!(md, "| POST /apply took | {:.1} ms |", c.apply_ms);
            let _ = writeln!(
                md,
                "| clients in its scope | {} (converged {} within {:.0} s; {} did not hold it before) |",
                c.affected, c.converged, c.timeout_s, c.missing_at_start
            );
            let _ = writeln!(
                md,
                "| clients outside its scope | {} ({} held it before, {} received a new version of it; {} got any response, {} B in all) |",
                c.outside_scope,
                c.held_outside_at_start,
                c.received_outside,
                c.outside_with_traffic,
                c.outside_bytes
            );
            for e in &c.received_outside_examples {
                let _ = writeln!(md, "| received outside its scope | `{}` |", cell(e));
            }
            let _ = writeln!(md, "| change to ACK | {} |", summary_s(&c.latency_s));
            let _ = writeln!(
                md,
                "| bytes received per delta client, change to ACK | {} |",
                summary_bytes(&c.bytes_per_client)
            );
            if c.bytes_per_sotw_client.count > 0 {
                let _ = writeln!(
                    md,
                    "| bytes received per SotW client (the whole type again) | {} |",
                    summary_bytes(&c.bytes_per_sotw_client)
                );
            }
            let _ = writeln!(
                md,
                "| the resource's encoded size | {} B |",
                c.resource_size_bytes
            );
            let _ = writeln!(
                md,
                "| bytes per delta client / resource size | {} |",
                c.bytes_ratio.map_or("-".into(), |r| format!("{r:.2}x"))
            );
        }
        if let Some(c) = &self.churn {
            let _ = writeln!(md, "\n## (e) Sustained endpoint churn\n");
            let _ = writeln!(md, "| | |\n| --- | --- |");
            let _ = writeln!(
                md,
                "| offered | {:.0} changes/s for {:.0} s |",
                c.rate_per_s, c.seconds
            );
            let _ = writeln!(
                md,
                "| sent | {} ({} applies failed, {} not answered by the end); apply {} |",
                c.changes,
                c.applies_failed,
                c.applies_unanswered,
                summary_ms(&c.apply_ms)
            );
            let _ = writeln!(
                md,
                "| changes every client in their scope ACKed (of those applied) | {} of {} |",
                c.converged_changes,
                c.changes - c.applies_failed - c.applies_unanswered
            );
            let _ = writeln!(
                md,
                "| per-change p99 | {} |",
                summary_s(&c.per_change_p99_s)
            );
            let _ = writeln!(
                md,
                "| per-change max | {} |",
                summary_s(&c.per_change_max_s)
            );
            let _ = writeln!(md, "| every (change, client) | {} |", summary_s(&c.all_s));
            let _ = writeln!(
                md,
                "| changes sent in the first 10 s | {} |",
                summary_s(&c.first_10s)
            );
            let _ = writeln!(
                md,
                "| changes sent in the last 10 s | {} |",
                summary_s(&c.last_10s)
            );
            let _ = writeln!(
                md,
                "| (change, client) pairs never converged | {} |",
                c.unconverged_clients
            );
            let _ = writeln!(
                md,
                "| clients in each change's scope | mean {:.0}, p50 {:.0}, max {:.0} |",
                c.in_scope_per_change.mean.unwrap_or(0.0),
                c.in_scope_per_change.p50.unwrap_or(0.0),
                c.in_scope_per_change.max.unwrap_or(0.0)
            );
            let _ = writeln!(
                md,
                "| (change, client) pairs: in scope without it before / outside holding it / outside receiving it | {} / {} / {} |",
                c.missing_at_start, c.held_outside_at_start, c.received_outside
            );
        }
        if let Some(r) = &self.restart {
            let _ = writeln!(md, "\n## (f) kill -9 straitd, restart it\n");
            let _ = writeln!(md, "| | |\n| --- | --- |");
            let _ = writeln!(md, "| kill to /readyz | {:.2} s |", r.kill_to_ready_s);
            let _ = writeln!(
                md,
                "| objects re-applied through /apply | {} |",
                r.reapplied_objects
            );
            let _ = writeln!(
                md,
                "| clients back and ACKed | {} of {} within {:.0} s |",
                r.back, r.clients, r.timeout_s
            );
            let _ = writeln!(md, "| all back, from the kill | {} |", secs(r.all_back_s));
            let _ = writeln!(
                md,
                "| all back, from ready | {} |",
                secs(r.all_back_after_ready_s)
            );
            let _ = writeln!(
                md,
                "| per client, from the kill | {} |",
                summary_s(&r.per_client_s)
            );
            let _ = writeln!(
                md,
                "| clients that ever held fewer resources of a type than before the kill | {} |",
                r.held_less
            );
            for e in &r.held_less_examples {
                let _ = writeln!(md, "| example | {} |", cell(e));
            }
        }
        if !self.scope_checks.is_empty() {
            let _ = writeln!(md, "\n## Scopes: what each client holds\n");
            let _ = writeln!(
                md,
                "Each client's clusters and endpoint assignments against the services its scope holds, and a \
                 sidecar's route configurations against them (a virtual host per service it sees, none other).\n"
            );
            let _ = writeln!(
                md,
                "| after | clients | as expected | lacking something | holding something outside | other routes |"
            );
            let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- |");
            for c in &self.scope_checks {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    c.after, c.clients, c.as_expected, c.missing, c.outside, c.routes_differ
                );
            }
            for c in &self.scope_checks {
                for x in &c.examples {
                    let _ = writeln!(md, "\n- {}: `{}`", c.after, x.replace('`', "'"));
                }
            }
        }
        if let Some(e) = &self.envoys {
            let _ = writeln!(md, "\n## Stock Envoys\n");
            let _ = writeln!(
                md,
                "{} Envoys ({} delta, {} SotW), sidecars of the clients' shapes; first full sync {}.\n",
                e.count,
                e.delta,
                e.sotw,
                secs(e.sync_s)
            );
            let _ = writeln!(
                md,
                "| after | synced (all types ACKed at the version sent) | alive | Envoy update_rejected | NACKs at straitd (all streams) | in the change's scope / outside it with a new version |"
            );
            let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- |");
            for c in &e.checks {
                let _ = writeln!(
                    md,
                    "| {} | {} of {} | {} | {} | {} | {} |",
                    c.after,
                    c.synced,
                    c.of,
                    c.alive,
                    c.rejected_updates,
                    c.nacks_at_straitd,
                    c.in_scope
                        .map_or("-".into(), |n| format!("{n} / {}", c.moved_outside))
                );
            }
            for c in &e.checks {
                for x in c
                    .nack_examples
                    .iter()
                    .chain(&c.unsynced_examples)
                    .chain(&c.moved_outside_examples)
                {
                    let _ = writeln!(md, "\n- {}: `{}`", c.after, x.replace('`', "'"));
                }
            }
        }
        if let Some(f) = &self.final_disconnect {
            let _ = writeln!(
                md,
                "\nAfter every simulated client disconnected at the end: straitd RSS {:.0} MiB ({:+.1}% of the baseline).",
                f.rss_mib, f.vs_baseline_pct
            );
        }
        let _ = writeln!(md, "\n## Mesh\n");
        let _ = writeln!(
            md,
            "{} ServiceEntries (STATIC, {} endpoints each; {} of them shared, in istio-system), {} DestinationRules \
             (subsets v1/v2), {} VirtualServices (90/10 splits and the ingress Gateway's routes), 1 Gateway, {} Sidecars; \
             {} client shapes, {} of them ingress gateways.",
            m.service_entries,
            m.endpoints_per_service,
            m.shared_services,
            m.destination_rules,
            m.virtual_services,
            m.sidecars,
            m.shapes,
            m.gateway_shapes
        );
        let fmt = |r: &BTreeMap<String, usize>| {
            r.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            md,
            "A sidecar holds {}; a gateway {}.",
            fmt(&m.sidecar_resources),
            fmt(&m.gateway_resources)
        );
        let _ = writeln!(md, "\n## Machine and run\n");
        let mc = &self.machine;
        let _ = writeln!(
            md,
            "- {} cores, {:.0} MiB memory ({:.0} MiB available at the start, {:.0} at the end); kernel {}",
            mc.nproc,
            mc.mem_total_mib,
            mc.mem_available_mib_at_start,
            mc.mem_available_mib_at_end,
            mc.kernel
        );
        let _ = writeln!(
            md,
            "- /proc/loadavg at the start `{}`, at the end `{}`",
            mc.loadavg_at_start, mc.loadavg_at_end
        );
        let _ = writeln!(
            md,
            "- load generator: {} worker thread(s), {:.1} s CPU, peak RSS {:.0} MiB",
            self.load.worker_threads, self.load.cpu_s, self.load.peak_rss_mib
        );
        let _ = writeln!(md, "- straitd binary `{}`", self.straitd.binary);
        let _ = writeln!(md, "- parameters: `{}`", self.parameters);
        for n in &self.notes {
            let _ = writeln!(md, "- {n}");
        }
        if !self.errors.is_empty() {
            let _ = writeln!(md, "\n## Errors\n");
            for e in &self.errors {
                let _ = writeln!(md, "- {}", e.replace('\n', " "));
            }
        }
        md
    }
}

fn summary_ms(s: &Summary) -> String {
    if s.count == 0 {
        return "-".into();
    }
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} ms"));
    format!("p50 {} / p99 {} / max {}", ms(s.p50), ms(s.p99), ms(s.max))
}
