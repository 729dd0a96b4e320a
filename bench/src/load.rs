//! The load generators, run as processes: `wrk` for the closed loop, `oha` for the open loop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

/// Where to send load: an address and the `Host` the request claims.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
}

impl Target {
    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// A closed-loop run: as many requests as `connections` connections can complete.
#[derive(Clone, Debug, Serialize)]
pub struct ClosedLoop {
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_sec: f64,
    /// Non-2xx answers plus socket errors.
    pub errors: u64,
}

/// `wrk -t1 -cN -dT`: one load thread, so it stays on the driver's core.
pub fn wrk(
    wrk: &PathBuf,
    target: &Target,
    connections: u32,
    duration: Duration,
) -> anyhow::Result<ClosedLoop> {
    let out = Command::new(wrk)
        .args(["-t1", &format!("-c{connections}")])
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .args(["-H", &format!("Host: {}", target.host)])
        .arg(target.url())
        .output()
        .with_context(|| format!("running {}", wrk.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk failed ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&text).with_context(|| format!("reading wrk's output:\n{text}"))
}

fn parse_wrk(text: &str) -> anyhow::Result<ClosedLoop> {
    // "  123456 requests in 10.00s, 12.34MB read"
    let (requests, seconds) = text
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(" requests in ")?;
            let time = rest.split(',').next()?.trim();
            Some((n.parse::<u64>().ok()?, wrk_seconds(time)?))
        })
        .context("no \"N requests in T\" line")?;
    let non_2xx: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map_or(Ok(0), |n| n.trim().parse())
        .context("bad Non-2xx line")?;
    // "  Socket errors: connect 0, read 0, write 0, timeout 0"
    let socket: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|rest| {
            rest.split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    anyhow::ensure!(seconds > 0.0, "wrk ran for {seconds} s");
    Ok(ClosedLoop {
        requests,
        seconds,
        requests_per_sec: requests as f64 / seconds,
        errors: non_2xx + socket,
    })
}

/// wrk's durations: `10.00s`, `1.00m`, `500.00ms`.
fn wrk_seconds(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    match unit {
        "us" => Some(n / 1e6),
        "ms" => Some(n / 1e3),
        "s" => Some(n),
        "m" => Some(n * 60.0),
        "h" => Some(n * 3600.0),
        _ => None,
    }
}

/// An open-loop run at a fixed rate; latencies in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct OpenLoop {
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    /// Errors and answers other than 200.
    pub failed: u64,
    /// oha's `errorDistribution` and `statusCodeDistribution`, as it wrote them.
    pub outcomes: serde_json::Value,
}

/// `oha -q RATE -z T --latency-correction -w`: requests are due on a fixed schedule, and each
/// latency counts from when its request was due, so a stall is not hidden (no coordinated
/// omission).
pub fn oha(
    oha: &PathBuf,
    target: &Target,
    rate: u32,
    connections: u32,
    duration: Duration,
) -> anyhow::Result<OpenLoop> {
    let out = Command::new(oha)
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "--latency-correction",
        ])
        .args(["-q", &rate.to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-z", &format!("{}s", duration.as_secs().max(1))])
        .args(["-H", &format!("Host: {}", target.host)])
        .arg(target.url())
        .output()
        .with_context(|| format!("running {}", oha.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "oha failed ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_oha(&text).with_context(|| format!("reading oha's JSON:\n{text}"))
}

fn parse_oha(text: &str) -> anyhow::Result<OpenLoop> {
    let json: serde_json::Value = serde_json::from_str(text)?;
    let num = |v: &serde_json::Value, what: &str| {
        v.as_f64()
            .with_context(|| format!("{what} missing or not a number"))
    };
    let summary = &json["summary"];
    let p = &json["latencyPercentiles"];
    Ok(OpenLoop {
        requests_per_sec: num(&summary["requestsPerSec"], "summary.requestsPerSec")?,
        failed: failed(&json),
        outcomes: serde_json::json!({
            "errors": json["errorDistribution"],
            "statuses": json["statusCodeDistribution"],
        }),
        p50_us: num(&p["p50"], "latencyPercentiles.p50")? * 1e6,
        p90_us: num(&p["p90"], "latencyPercentiles.p90")? * 1e6,
        p99_us: num(&p["p99"], "latencyPercentiles.p99")? * 1e6,
    })
}

/// oha's errors plus its non-200 answers. "aborted due to deadline" is not a failure: with `-w`
/// it counts only requests oha had scheduled but not sent when the duration ended.
fn failed(json: &serde_json::Value) -> u64 {
    let count = |v: &serde_json::Value, skip: &str| -> u64 {
        v.as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != skip)
            .filter_map(|(_, n)| n.as_u64())
            .sum()
    };
    count(&json["errorDistribution"], "aborted due to deadline")
        + count(&json["statusCodeDistribution"], "200")
}

/// A busy loop on one core at `SCHED_IDLE` priority (`chrt --idle`): it keeps the core out of
/// its idle state, and any other thread there preempts it at once. Stopped when dropped.
pub struct IdleSpinner(std::process::Child);

impl IdleSpinner {
    pub fn start(core: usize) -> anyhow::Result<IdleSpinner> {
        let child = Command::new("taskset")
            .args(["-c", &core.to_string()])
            .args(["chrt", "--idle", "0"])
            .args(["sh", "-c", "while :; do :; done"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("starting the idle spinner (taskset, chrt)")?;
        // Let it reach the core before measuring.
        std::thread::sleep(Duration::from_millis(200));
        Ok(IdleSpinner(child))
    }
}

impl Drop for IdleSpinner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() -> anyhow::Result<()> {
        let text = "Running 10s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n\
            \x20 150000 requests in 10.00s, 12.34MB read\n\
            \x20 Non-2xx or 3xx responses: 7\n\
            \x20 Socket errors: connect 0, read 2, write 0, timeout 1\n\
            Requests/sec:  15000.00\nTransfer/sec:      1.23MB\n";
        let r = parse_wrk(text)?;
        assert_eq!((r.requests, r.errors), (150_000, 10));
        assert!((r.requests_per_sec - 15_000.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn reads_wrk_durations() {
        assert_eq!(wrk_seconds("1.00m"), Some(60.0));
        assert_eq!(wrk_seconds("500.00ms"), Some(0.5));
        assert_eq!(wrk_seconds("10"), None);
    }
}
