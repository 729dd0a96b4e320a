//! The per-round samples of a run, their medians, and the markdown table with the targets.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::load::{ClosedLoop, OpenLoop};
use crate::procfs;

/// The baseline and the candidate of the ratio column.
const BASELINE: &str = "envoy";
const CANDIDATE: &str = "strait-proxy";
/// The reference of the second ratio column (plaintext only): a plain reverse proxy.
const REFERENCE: &str = "nginx";
const MIB: f64 = 1024.0;

/// One subject (direct, or a data plane) measured once.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub section: &'static str,
    pub subject: String,
    pub round: u32,
    /// Why this sample has no numbers (or only some).
    pub error: Option<String>,
    /// Proxy processes measured together (2 for mTLS: client and server sidecar).
    pub processes: usize,
    /// Threads of all its processes, idle.
    pub threads: Option<u64>,
    /// VmRSS summed over its processes, before any traffic.
    pub idle_rss_kib: Option<u64>,
    /// Its anonymous part (`RssAnon`: heap, stacks); the rest is mapped files (the binary).
    pub idle_rss_anon_kib: Option<u64>,
    /// The highest summed VmRSS seen during the closed loop (sampled every 100 ms).
    pub load_rss_kib: Option<u64>,
    pub closed: Option<ClosedLoop>,
    /// Proxy CPU time (user + system, all its processes) over the closed loop / requests.
    pub cpu_us_per_request: Option<f64>,
    /// Its system part: time in the kernel on the proxy's behalf (loopback TCP, mostly).
    pub system_us_per_request: Option<f64>,
    /// Proxy CPU time / wall time over the closed loop: near 1.0 means the proxy's core was
    /// the bottleneck; well below means the load side was.
    pub proxy_core_busy: Option<f64>,
    /// Busy time of the proxies' core not spent in the proxies / wall time: other users.
    pub others_on_core: Option<f64>,
    pub open: Option<OpenLoop>,
    /// The open loop again with the proxy core kept out of idle (a diagnostic).
    pub open_awake: Option<OpenLoop>,
}

impl Sample {
    pub fn new(section: &'static str, subject: &str, round: u32, processes: usize) -> Sample {
        Sample {
            section,
            subject: subject.to_string(),
            round,
            error: None,
            processes,
            threads: None,
            idle_rss_kib: None,
            idle_rss_anon_kib: None,
            load_rss_kib: None,
            closed: None,
            cpu_us_per_request: None,
            system_us_per_request: None,
            proxy_core_busy: None,
            others_on_core: None,
            open: None,
            open_awake: None,
        }
    }

    pub fn failed(section: &'static str, subject: &str, round: u32, error: String) -> Sample {
        Sample {
            error: Some(error),
            ..Sample::new(section, subject, round, 0)
        }
    }

    fn per_process(&self, v: Option<u64>) -> Option<f64> {
        v.map(|v| v as f64 / self.processes.max(1) as f64)
    }
}

/// Everything one invocation measured.
#[derive(Debug, Serialize)]
pub struct Run {
    pub setup: Vec<String>,
    pub data_planes: Vec<String>,
    pub rounds: u32,
    pub started_unix: u64,
    pub cores: usize,
    pub load_average_start: Option<f64>,
    pub load_average_end: Option<f64>,
    pub samples: Vec<Sample>,
    /// Subjects a section does not apply to (nginx in mTLS), and why.
    pub skipped: Vec<Skipped>,
}

/// A subject left out of a section on purpose: no samples, no column, one line under the table.
#[derive(Debug, Serialize)]
pub struct Skipped {
    pub section: &'static str,
    pub subject: String,
    pub why: String,
}

impl Run {
    pub fn describe(data_planes: &[String], rounds: u32, setup: &[String]) -> Run {
        Run {
            setup: setup.to_vec(),
            data_planes: data_planes.to_vec(),
            rounds,
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cores: procfs::cores(),
            load_average_start: procfs::load_average(),
            load_average_end: None,
            samples: Vec::new(),
            skipped: Vec::new(),
        }
    }

    pub fn push(&mut self, sample: Sample) {
        self.samples.push(sample);
    }

    /// Leaves `subject` out of `section` (no column) and says why under its table.
    pub fn skip(&mut self, section: &'static str, subject: &str, why: &str) {
        self.skipped.push(Skipped {
            section,
            subject: subject.to_string(),
            why: why.to_string(),
        });
    }

    pub fn finish(&mut self) {
        self.load_average_end = procfs::load_average();
    }

    /// The columns of a section: direct, then the data planes that have samples in it (a data
    /// plane that failed has them too; one skipped on purpose has none).
    fn subjects(&self, section: &str) -> Vec<String> {
        std::iter::once("direct".to_string())
            .chain(
                self.data_planes
                    .iter()
                    .filter(|d| {
                        self.samples
                            .iter()
                            .any(|s| s.section == section && &s.subject == *d)
                    })
                    .cloned(),
            )
            .collect()
    }

    /// The medians table of each section that ran, then the per-round spread and the errors.
    pub fn markdown(&self) -> String {
        let mut md = String::from("# strait-bench results\n\n");
        for line in &self.setup {
            let _ = writeln!(md, "- {line}");
        }
        let _ = writeln!(
            md,
            "- {} cores; 1-minute load average {} at start, {} at end (a shared machine: \
             other builds compete for both cores, see \"others on the proxy core\")\n",
            self.cores,
            fmt_opt(self.load_average_start, 2),
            fmt_opt(self.load_average_end, 2),
        );
        for (section, title) in [
            (
                "plaintext",
                "HTTP/1.1 plaintext: load generator -> sidecar outbound -> backend",
            ),
            (
                "mtls",
                "mTLS between two proxies: load generator -> client sidecar -> mTLS -> \
                 server sidecar (STRICT) -> backend; CPU summed over both, memory per proxy",
            ),
        ] {
            if self.samples.iter().any(|s| s.section == section) {
                self.section(&mut md, section, title);
            }
        }
        md
    }

    fn section(&self, md: &mut String, section: &str, title: &str) {
        let subjects = self.subjects(section);
        let has = |name: &str| subjects.iter().any(|s| s == name);
        // What strait-proxy is compared with, each where it ran: Envoy (the baseline of the
        // targets), then nginx (the reference).
        let references: Vec<&'static str> = [BASELINE, REFERENCE]
            .into_iter()
            .filter(|r| has(CANDIDATE) && has(r))
            .collect();
        let _ = writeln!(md, "## {title}\n\nMedian over {} rounds.\n", self.rounds);
        let mut header = String::from("| metric |");
        let mut rule = String::from("| --- |");
        for s in &subjects {
            let _ = write!(header, " {s} |");
            rule.push_str(" ---: |");
        }
        for r in &references {
            let _ = write!(header, " {CANDIDATE} / {r} |");
            rule.push_str(" ---: |");
        }
        if !references.is_empty() {
            header.push_str(" target | |");
            rule.push_str(" --- | --- |");
        }
        let _ = writeln!(md, "{header}\n{rule}");

        for metric in METRICS {
            let medians: Vec<Option<f64>> = subjects
                .iter()
                .map(|subject| median(self.values(section, subject, metric.value)))
                .collect();
            let mut row = format!("| {} |", metric.name);
            for m in &medians {
                let _ = write!(row, " {} |", fmt_opt(*m, metric.digits));
            }
            if !references.is_empty() {
                let get = |name: &str| {
                    subjects
                        .iter()
                        .position(|s| s == name)
                        .and_then(|i| medians[i])
                };
                // strait-proxy's median / the reference's, where a ratio means something.
                let ratio_to = |reference: &str| {
                    ratio(get(CANDIDATE), get(reference)).filter(|_| metric.ratio)
                };
                for r in &references {
                    let _ = write!(row, " {} |", fmt_opt(ratio_to(r), 2));
                }
                let (target, verdict) = match metric.target {
                    Target::None => (String::new(), String::new()),
                    Target::RatiosAtMost(limits) => {
                        let parts: Vec<Part> = limits
                            .iter()
                            .filter(|(r, _)| references.contains(r))
                            .map(|&(reference, limit)| Part {
                                reference,
                                limit,
                                ratio: ratio_to(reference),
                            })
                            .collect();
                        if parts.is_empty() {
                            // None of its references ran: say what the target is, no verdict.
                            let all: Vec<Part> = limits
                                .iter()
                                .map(|&(reference, limit)| Part {
                                    reference,
                                    limit,
                                    ratio: None,
                                })
                                .collect();
                            (target_text(&all), verdict(None))
                        } else {
                            (target_text(&parts), ratios_verdict(&parts))
                        }
                    }
                    Target::AtMost(limit) => (
                        format!("≤ {limit} for {CANDIDATE}"),
                        verdict(get(CANDIDATE).map(|v| v <= limit)),
                    ),
                };
                let _ = write!(row, " {target} | {verdict} |");
            }
            let _ = writeln!(md, "{row}");
        }

        let _ = writeln!(md, "\nPer round (to judge the noise):\n");
        for (what, value) in [
            ("CPU µs per request", metric("CPU µs per request").value),
            ("max req/s", metric("max req/s (closed loop)").value),
            ("added p50 µs", metric("added p50 µs over direct").value),
            (
                "others on the proxy core %",
                metric("others on the proxy core, % of it").value,
            ),
        ] {
            for subject in &subjects {
                let values = self.values(section, subject, value);
                if values.iter().any(Option::is_some) {
                    let list: Vec<String> = values.iter().map(|v| fmt_opt(*v, 1)).collect();
                    let _ = writeln!(md, "- {what}, {subject}: {}", list.join(", "));
                }
            }
        }
        let errors: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.section == section && s.error.is_some())
            .collect();
        let skipped: Vec<&Skipped> = self
            .skipped
            .iter()
            .filter(|s| s.section == section)
            .collect();
        if !errors.is_empty() || !skipped.is_empty() {
            let _ = writeln!(md, "\nNot measured:\n");
            for s in skipped {
                let _ = writeln!(md, "- {}: {}", s.subject, s.why);
            }
            for s in errors {
                let error = s.error.as_deref().unwrap_or_default();
                let first = error.lines().next().unwrap_or_default();
                let _ = writeln!(md, "- {} round {}: {first}", s.subject, s.round);
            }
        }
        md.push('\n');
    }

    /// One metric of one subject, round by round (None where it wasn't measured).
    fn values(&self, section: &str, subject: &str, value: Value) -> Vec<Option<f64>> {
        self.samples
            .iter()
            .filter(|s| s.section == section && s.subject == subject)
            .map(|s| {
                let direct = self
                    .samples
                    .iter()
                    .find(|d| d.section == section && d.subject == "direct" && d.round == s.round);
                value(s, direct)
            })
            .collect()
    }
}

type Value = fn(&Sample, Option<&Sample>) -> Option<f64>;

enum Target {
    None,
    /// strait-proxy's median at most `limit` × each named subject's, judged for each of them
    /// that ran in the section: (subject, limit).
    RatiosAtMost(&'static [(&'static str, f64)]),
    /// strait-proxy's median at most this.
    AtMost(f64),
}

/// One part of a [`Target::RatiosAtMost`]: strait-proxy against one subject.
struct Part {
    reference: &'static str,
    limit: f64,
    /// strait-proxy's median / the reference's.
    ratio: Option<f64>,
}

struct Metric {
    name: &'static str,
    digits: usize,
    value: Value,
    /// Whether strait-proxy / envoy means something for it.
    ratio: bool,
    target: Target,
}

/// A proxy's latency percentile minus direct's in the same round.
fn added(s: &Sample, direct: Option<&Sample>, p: fn(&OpenLoop) -> f64) -> Option<f64> {
    if s.subject == "direct" {
        return None;
    }
    Some(p(s.open.as_ref()?) - p(direct?.open.as_ref()?))
}

/// The metric of that name (by name, not position: rows get added).
fn metric(name: &str) -> &'static Metric {
    METRICS
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric named {name:?}"))
}

const METRICS: [Metric; 18] = [
    Metric {
        name: "max req/s (closed loop)",
        digits: 0,
        value: |s, _| Some(s.closed.as_ref()?.requests_per_sec),
        ratio: true,
        target: Target::None,
    },
    Metric {
        name: "proxy CPU busy during it, % of a core",
        digits: 0,
        value: |s, _| s.proxy_core_busy.map(|b| b * 100.0),
        ratio: true,
        target: Target::None,
    },
    Metric {
        name: "others on the proxy core, % of it",
        digits: 0,
        value: |s, _| s.others_on_core.map(|b| b * 100.0),
        ratio: false,
        target: Target::None,
    },
    Metric {
        name: "CPU µs per request",
        digits: 1,
        value: |s, _| s.cpu_us_per_request,
        ratio: true,
        // Issue 4: "at most a quarter of Envoy's (at or below nginx's)".
        target: Target::RatiosAtMost(&[(BASELINE, 0.25), (REFERENCE, 1.0)]),
    },
    Metric {
        name: "of which in the kernel (system time), µs",
        digits: 1,
        value: |s, _| s.system_us_per_request,
        ratio: true,
        target: Target::None,
    },
    Metric {
        name: "of which in user space, µs",
        digits: 1,
        value: |s, _| Some(s.cpu_us_per_request? - s.system_us_per_request?),
        ratio: true,
        target: Target::None,
    },
    Metric {
        name: "p50 µs at fixed rate",
        digits: 0,
        value: |s, _| Some(s.open.as_ref()?.p50_us),
        ratio: true,
        target: Target::None,
    },
    Metric {
        name: "p90 µs at fixed rate",
        digits: 0,
        value: |s, _| Some(s.open.as_ref()?.p90_us),
        ratio: true,
        target: Target::None,
    },
    Metric {
        name: "p99 µs at fixed rate",
        digits: 0,
        value: |s, _| Some(s.open.as_ref()?.p99_us),
        ratio: true,
        target: Target::None,
    },
    Metric {
        name: "added p50 µs over direct",
        digits: 0,
        value: |s, d| added(s, d, |o| o.p50_us),
        ratio: true,
        target: Target::RatiosAtMost(&[(BASELINE, 1.0 / 3.0)]),
    },
    Metric {
        name: "added p90 µs over direct",
        digits: 0,
        value: |s, d| added(s, d, |o| o.p90_us),
        ratio: true,
        target: Target::None,
    },
    Metric {
        name: "added p99 µs over direct",
        digits: 0,
        value: |s, d| added(s, d, |o| o.p99_us),
        ratio: true,
        target: Target::None,
    },
    Metric {
        name: "resident memory idle, MiB per proxy",
        digits: 1,
        value: |s, _| Some(s.per_process(s.idle_rss_kib)? / MIB),
        ratio: true,
        target: Target::AtMost(10.0),
    },
    Metric {
        name: "of which anonymous (heap, stacks), MiB",
        digits: 1,
        value: |s, _| Some(s.per_process(s.idle_rss_anon_kib)? / MIB),
        ratio: true,
        target: Target::None,
    },
    Metric {
        name: "resident memory under load (max), MiB per proxy",
        digits: 1,
        value: |s, _| Some(s.per_process(s.load_rss_kib)? / MIB),
        ratio: true,
        target: Target::None,
    },
    Metric {
        name: "threads per proxy",
        digits: 0,
        value: |s, _| s.per_process(s.threads),
        ratio: true,
        target: Target::None,
    },
    Metric {
        name: "failed requests (closed + open loop)",
        digits: 0,
        value: |s, _| {
            let closed = s.closed.as_ref()?.errors;
            let open = s.open.as_ref().map_or(0, |o| o.failed);
            Some((closed + open) as f64)
        },
        ratio: false,
        target: Target::None,
    },
    Metric {
        name: "diagnostic: added p50 µs with the proxy core kept out of idle",
        digits: 0,
        value: |s, d| {
            let awake = s.open_awake.as_ref()?.p50_us;
            Some(awake - d?.open.as_ref()?.p50_us)
        },
        ratio: true,
        target: Target::None,
    },
];

/// `candidate / reference`, when both are there and the reference is not 0.
fn ratio(candidate: Option<f64>, reference: Option<f64>) -> Option<f64> {
    candidate
        .zip(reference)
        .filter(|(_, r)| *r != 0.0)
        .map(|(c, r)| c / r)
}

/// "≤ 0.25× envoy and ≤ nginx": each part of a ratio target (a limit of 1 reads "≤ nginx").
fn target_text(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| {
            if p.limit == 1.0 {
                format!("≤ {}", p.reference)
            } else {
                format!("≤ {:.2}× {}", p.limit, p.reference)
            }
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

/// One part: "pass" or "**fail**", as ever. Several: each part judged on its own, with the ratio
/// it was judged on, e.g. "**fail** (0.37× envoy), pass (0.85× nginx)"; the target is met only
/// when every part passes.
fn ratios_verdict(parts: &[Part]) -> String {
    let judge = |p: &Part| verdict(p.ratio.map(|r| r <= p.limit));
    if let [one] = parts {
        return judge(one);
    }
    parts
        .iter()
        .map(|p| match p.ratio {
            Some(r) => format!("{} ({r:.2}× {})", judge(p), p.reference),
            None => format!("{} ({})", judge(p), p.reference),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn verdict(pass: Option<bool>) -> String {
    match pass {
        Some(true) => "pass".into(),
        Some(false) => "**fail**".into(),
        None => "n/a".into(),
    }
}

fn median(values: Vec<Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_skips_missing_values_and_averages_the_middle_pair() {
        assert_eq!(
            median(vec![Some(3.0), None, Some(1.0), Some(2.0)]),
            Some(2.0)
        );
        assert_eq!(median(vec![Some(4.0), Some(1.0)]), Some(2.5));
        assert_eq!(median(vec![None]), None);
    }

    fn part(reference: &'static str, limit: f64, ratio: Option<f64>) -> Part {
        Part {
            reference,
            limit,
            ratio,
        }
    }

    #[test]
    fn a_target_with_two_references_judges_each_and_shows_its_ratio() {
        let envoy = part(BASELINE, 0.25, Some(0.37));
        let nginx = part(REFERENCE, 1.0, Some(0.85));
        assert_eq!(
            target_text(&[part(BASELINE, 0.25, None), part(REFERENCE, 1.0, None)]),
            "≤ 0.25× envoy and ≤ nginx"
        );
        assert_eq!(
            ratios_verdict(&[envoy, nginx]),
            "**fail** (0.37× envoy), pass (0.85× nginx)"
        );
        // At the limit passes; a part without numbers says so and passes nothing.
        assert_eq!(
            ratios_verdict(&[part(BASELINE, 0.25, Some(0.25)), part(REFERENCE, 1.0, None)]),
            "pass (0.25× envoy), n/a (nginx)"
        );
        // One part reads as before nginx was measured.
        assert_eq!(ratios_verdict(&[part(BASELINE, 0.25, Some(0.2))]), "pass");
        assert_eq!(
            ratios_verdict(&[part(BASELINE, 0.25, Some(0.3))]),
            "**fail**"
        );
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
    }

    fn cpu(section: &'static str, subject: &str, us: Option<f64>) -> Sample {
        Sample {
            cpu_us_per_request: us,
            ..Sample::new(section, subject, 1, usize::from(us.is_some()))
        }
    }

    fn row<'a>(md: &'a str, section: &str, metric: &str) -> &'a str {
        let start = md.find(section).expect("the section");
        md[start..]
            .lines()
            .find(|l| l.starts_with(&format!("| {metric} |")))
            .expect("the row")
    }

    #[test]
    fn nginx_gets_a_ratio_column_in_plaintext_and_none_in_mtls() {
        let planes = ["envoy", "strait-proxy", "nginx"].map(String::from);
        let mut run = Run::describe(&planes, 1, &[]);
        for (subject, us) in [
            ("direct", None),
            ("envoy", Some(40.0)),
            ("strait-proxy", Some(10.0)),
            ("nginx", Some(12.5)),
        ] {
            run.push(cpu("plaintext", subject, us));
        }
        run.skip("mtls", "nginx", "not applicable: nginx has no mesh mTLS");
        for (subject, us) in [
            ("direct", None),
            ("envoy", Some(80.0)),
            ("strait-proxy", Some(30.0)),
        ] {
            run.push(cpu("mtls", subject, us));
        }
        let md = run.markdown();

        let plain = md.find("## HTTP/1.1 plaintext").expect("plaintext");
        assert!(md[plain..].contains(
            "| metric | direct | envoy | strait-proxy | nginx | strait-proxy / envoy | \
             strait-proxy / nginx | target | |"
        ));
        assert_eq!(
            row(&md, "## HTTP/1.1 plaintext", "CPU µs per request"),
            "| CPU µs per request | – | 40.0 | 10.0 | 12.5 | 0.25 | 0.80 | \
             ≤ 0.25× envoy and ≤ nginx | pass (0.25× envoy), pass (0.80× nginx) |"
        );
        // Every row has every column (4 subjects, 2 ratios, target, verdict).
        assert_eq!(
            row(
                &md,
                "## HTTP/1.1 plaintext",
                "others on the proxy core, % of it"
            ),
            "| others on the proxy core, % of it | – | – | – | – | – | – |  |  |"
        );
        assert!(md[plain..].contains("- CPU µs per request, nginx: 12.5"));

        let mtls = md.find("## mTLS").expect("mtls");
        assert!(md[mtls..].contains(
            "| metric | direct | envoy | strait-proxy | strait-proxy / envoy | target | |"
        ));
        assert_eq!(
            row(&md, "## mTLS", "CPU µs per request"),
            "| CPU µs per request | – | 80.0 | 30.0 | 0.38 | ≤ 0.25× envoy | **fail** |"
        );
        assert!(md[mtls..].contains("- nginx: not applicable: nginx has no mesh mTLS"));
        assert!(!md[mtls..].contains(", nginx:"));
    }
}
