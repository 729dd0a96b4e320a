//! What the kernel says about a process: CPU time, resident memory, threads; and core pinning.

use std::process::Command;
use std::sync::OnceLock;

use anyhow::Context;

/// Clock ticks per second (`getconf CLK_TCK`), the unit of utime and stime in `/proc/PID/stat`.
pub fn clock_ticks() -> anyhow::Result<u64> {
    static TICKS: OnceLock<u64> = OnceLock::new();
    if let Some(t) = TICKS.get() {
        return Ok(*t);
    }
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ticks = text
        .trim()
        .parse()
        .with_context(|| format!("getconf CLK_TCK said {text:?}"))?;
    Ok(*TICKS.get_or_init(|| ticks))
}

/// CPU time, in microseconds: user and system (kernel) time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub system: u64,
}

impl CpuTimes {
    pub fn total(self) -> u64 {
        self.user + self.system
    }

    /// The time spent between `earlier` and `self`.
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// The CPU time of these processes (all their threads, live and exited), summed; each
/// process's user and system time come from one read of its `/proc/PID/stat`.
pub fn cpu_times_of(pids: &[u32]) -> anyhow::Result<CpuTimes> {
    pids.iter().try_fold(CpuTimes::default(), |sum, pid| {
        let t = cpu_times(*pid)?;
        Ok(CpuTimes {
            user: sum.user + t.user,
            system: sum.system + t.system,
        })
    })
}

fn cpu_times(pid: u32) -> anyhow::Result<CpuTimes> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces and parentheses; fields after it are plain.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {n} missing or not a number"))
    };
    let micros = |ticks: u64| -> anyhow::Result<u64> { Ok(ticks * 1_000_000 / clock_ticks()?) };
    Ok(CpuTimes {
        user: micros(field(14)?)?,
        system: micros(field(15)?)?,
    })
}

/// A `kB` line of `/proc/PID/status`, such as `VmRSS` or `Threads` (a count, no unit).
fn status_field(pid: u32, name: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{path}: no {name}"))
}

/// Resident memory, KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "VmRSS")
}

/// Anonymous resident memory (heap, stacks), KiB: VmRSS less the mapped files (the binary).
pub fn rss_anon_kib(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "RssAnon")
}

/// Peak resident memory (VmHWM), KiB.
#[allow(
    dead_code,
    reason = "strait-scale shares this file and reads it; strait-bench does not"
)]
pub fn hwm_kib(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "VmHWM")
}

pub fn threads(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "Threads")
}

/// Pins every thread of `pid` to `core`; threads it starts later inherit the mask.
pub fn pin(pid: u32, core: usize) -> anyhow::Result<()> {
    let out = Command::new("taskset")
        .args(["--all-tasks", "--cpu-list", "--pid"])
        .arg(core.to_string())
        .arg(pid.to_string())
        .output()
        .context("running taskset (util-linux)")?;
    anyhow::ensure!(
        out.status.success(),
        "taskset -a -c -p {core} {pid} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Busy time of one core since boot (everything but idle and iowait), in microseconds.
pub fn core_busy_micros(core: usize) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let name = format!("cpu{core}");
    let fields: Vec<u64> = stat
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == name).then(|| it.filter_map(|f| f.parse().ok()).collect())
        })
        .with_context(|| format!("/proc/stat has no {name} line"))?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    anyhow::ensure!(fields.len() >= 8, "/proc/stat {name}: {fields:?}");
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7];
    Ok(busy * 1_000_000 / clock_ticks()?)
}

/// The 1-minute load average, to say how busy the shared machine was.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The machine's cores (not just those this process may run on).
pub fn cores() -> usize {
    std::fs::read_to_string("/proc/cpuinfo").map_or(0, |c| {
        c.lines().filter(|l| l.starts_with("processor")).count()
    })
}
