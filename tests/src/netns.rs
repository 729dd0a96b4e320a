//! Pods in network namespaces: what transparent capture needs, since iptables rules and
//! original destinations only mean something on a host of their own.
//!
//! A [`Network`] is a hub namespace with a bridge (`10.77.0.1/24`, `fd77::1/64`) and pods, each a
//! namespace with a veth on that bridge (`10.77.0.N`, `fd77::N`, default routes via the hub).
//! straitd and the service backends run in the hub; a pod's sidecar and its app run in the pod.
//! Code runs in a namespace through [`Netns::enter`]: sockets made there and processes started
//! there stay in it. The addresses are the test's own, inside namespaces the test made; nothing
//! reaches the host's network. Namespaces are deleted when dropped, also when a test fails, and a
//! run removes the ones a killed run left behind.
//!
//! Needs root, `ip` (iproute2) and `iptables`: [`available`] says whether this machine has them;
//! without them a test says it was skipped, unless `CI=true`, where it fails.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;

/// Every namespace this harness makes is called `strait-e2e-<pid>-<n>-<role>`.
const PREFIX: &str = "strait-e2e-";

/// The hub's address on the bridge; pods get `10.77.0.2` on.
pub const HUB_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The hub's IPv6 address on the bridge; pods get `fd77::2` on.
pub const HUB_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);

/// Whether an address is one this harness assigns (inside its own namespaces).
pub fn is_test_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[..3] == HUB_V4.octets()[..3],
        IpAddr::V6(v6) => v6.segments()[..4] == HUB_V6.segments()[..4],
    }
}

/// Whether `program args` runs and succeeds (output discarded).
pub fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `test` can run here (root, `ip`, `iptables`). Prints why not; under `CI=true` a
/// missing requirement panics instead, so CI never skips silently.
pub fn available(test: &str) -> bool {
    available_with(test, &[])
}

/// [`available`], also needing each `(program, args)` in `also` to run.
pub fn available_with(test: &str, also: &[(&str, &[&str])]) -> bool {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root".to_string());
    }
    let needed: [(&str, &[&str]); 2] = [("ip", &["-V"]), ("iptables", &["--version"])];
    for (program, args) in needed.iter().chain(also) {
        if !works(program, args) {
            missing.push(format!("`{program}`"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let missing = missing.join(", ");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs {missing} (CI=true: not skipping)"
    );
    println!("skipped {test}: needs {missing}");
    false
}

/// `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Deletes namespaces of this harness whose process is gone (a run that was killed).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A network namespace of the test's own, deleted when the last handle goes.
#[derive(Clone)]
pub struct Netns {
    inner: Arc<NetnsName>,
}

type Job = Box<dyn FnOnce() + Send>;

struct NetnsName {
    name: String,
    /// Jobs for the namespace's long-lived thread (see [`Netns::spawn_from`]).
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for NetnsName {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("could not delete network namespace {}: {e:#}", self.name);
        }
    }
}

/// Moves the calling thread into the network namespace `name`.
fn move_into(name: &str) {
    let path = format!("/run/netns/{name}");
    let file =
        File::open(&path).unwrap_or_else(|e| panic!("opening the namespace file {path}: {e}"));
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap_or_else(|e| panic!("entering network namespace {path}: {e}"));
}

impl Netns {
    /// A new namespace with loopback up.
    pub fn new(role: &str) -> anyhow::Result<Netns> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        static STALE: std::sync::Once = std::sync::Once::new();
        STALE.call_once(remove_stale);
        let name = format!(
            "{PREFIX}{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let thread = {
            let name = name.clone();
            std::thread::Builder::new()
                .name(format!("netns-{name}"))
                .spawn(move || {
                    move_into(&name);
                    for job in queue {
                        job();
                    }
                })
                .context("spawning the namespace's thread")?
        };
        let ns = Netns {
            inner: Arc::new(NetnsName {
                name,
                jobs: Some(jobs),
                thread: Some(thread),
            }),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Runs `f` on the namespace's own thread, which lives as long as the namespace: for
    /// starting processes that must outlive the call. (A child whose parent thread exits may
    /// be signalled: Envoy asks for SIGTERM when its parent goes, and the parent is the thread
    /// that forked it, not the process.)
    pub fn spawn_from<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        let job: Job = Box::new(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(out);
        });
        self.inner
            .jobs
            .as_ref()
            .context("the namespace is shutting down")?
            .send(job)
            .map_err(|_| anyhow::anyhow!("the thread of namespace {} is gone", self.name()))?;
        match rx.recv() {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => anyhow::bail!("the thread of namespace {} is gone", self.name()),
        }
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", self.name()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it makes and threads it
    /// spawns live there, and stay there. Processes that must outlive `f`: [`Self::spawn_from`].
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                move_into(self.name());
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `fut` to completion on a runtime of its own inside the namespace.
    pub fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        self.enter(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a runtime")
                .block_on(fut)
        })
    }

    /// Runs a command in the namespace and returns its stdout; fails with its stderr.
    pub fn run(&self, mut cmd: Command) -> anyhow::Result<String> {
        let out = self
            .enter(|| cmd.output())
            .with_context(|| format!("running {cmd:?} in {}", self.name()))?;
        anyhow::ensure!(
            out.status.success(),
            "{cmd:?} in {} failed ({}): {}{}",
            self.name(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `path`, readable and (for programs) runnable by any user: a sidecar under capture runs as
/// uid 1337, which may not get into the checkout (a home directory is often 0700) or a temp
/// dir of the harness. Files are linked (else copied) once per test process into
/// `/tmp/strait-e2e-shared-<pid>/` (0755); the dirs of finished runs are removed.
pub fn readable(path: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let dir = DIR.get_or_init(|| {
        if let Ok(entries) = std::fs::read_dir("/tmp") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("strait-e2e-shared-")
                    && pid.parse::<u32>().is_ok()
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        std::path::PathBuf::from(format!("/tmp/strait-e2e-shared-{}", std::process::id()))
    });
    let _guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        path.hash(&mut h);
        h.finish()
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = dir.join(format!("{digest:016x}-{name}"));
    if !target.exists() && std::fs::hard_link(path, &target).is_err() {
        std::fs::copy(path, &target)
            .with_context(|| format!("copying {} to {}", path.display(), target.display()))?;
    }
    let mode = std::fs::metadata(path)?.permissions().mode();
    let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
    Ok(target)
}

/// A hub with a bridge, and the pods attached to it.
pub struct Network {
    hub: Netns,
    pods: AtomicUsize,
}

/// A pod: its namespace and its addresses on the bridge.
#[derive(Clone)]
pub struct Pod {
    pub name: String,
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Network {
    pub fn new() -> anyhow::Result<Network> {
        let hub = Netns::new("hub")?;
        hub.ip(&["link", "add", "br0", "type", "bridge"])?;
        hub.ip(&["addr", "add", &format!("{HUB_V4}/24"), "dev", "br0"])?;
        hub.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{HUB_V6}/64"),
            "dev",
            "br0",
            "nodad",
        ])?;
        hub.ip(&["link", "set", "br0", "up"])?;
        Ok(Network {
            hub,
            pods: AtomicUsize::new(0),
        })
    }

    /// Where straitd and the service backends run.
    pub fn hub(&self) -> &Netns {
        &self.hub
    }

    /// A new pod on the bridge.
    pub fn pod(&self, name: &str) -> anyhow::Result<Pod> {
        let n = self.pods.fetch_add(1, Ordering::Relaxed) + 2;
        anyhow::ensure!(n < 255, "at most 253 pods on one network");
        let host = u8::try_from(n).context("pod number")?;
        let ns = Netns::new(name)?;
        let v4 = Ipv4Addr::new(10, 77, 0, host);
        let v6 = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, u16::from(host));
        let veth = format!("veth{n}");
        self.hub.ip(&[
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        self.hub
            .ip(&["link", "set", &veth, "master", "br0", "up"])?;
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &HUB_V4.to_string()])?;
        ns.ip(&["-6", "route", "add", "default", "via", &HUB_V6.to_string()])?;
        Ok(Pod {
            name: name.to_string(),
            ns,
            v4,
            v6,
        })
    }
}

impl Pod {
    /// Installs the capture rules with the real `strait-proxy iptables` (IPv4 and IPv6), plus
    /// `extra` flags.
    pub fn capture(&self, extra: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(crate::bins::cargo_bin("strait-proxy"));
        cmd.args(["iptables", "--ipv6"]).args(extra);
        self.ns.run(cmd)
    }

    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.enter(f)
    }

    pub fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        self.ns.block_on(fut)
    }

    /// Starts a captured sidecar for this pod on `plane` (its instance IPs are the pod's),
    /// inside the pod's namespace.
    pub fn start_proxy(
        &self,
        plane: &dyn crate::DataPlane,
        xds: &crate::envoy::XdsTarget,
        spec: crate::ProxySpec,
    ) -> anyhow::Result<PodProxy> {
        let spec = spec.captured(&[IpAddr::V4(self.v4), IpAddr::V6(self.v6)]);
        let name = plane.name();
        let mut xds = xds.clone();
        // The proxy runs as uid 1337: it gets a root certificate it can read.
        if let Some((root, _)) = &mut xds.tls {
            *root = readable(root)?;
        }
        let proxy = self
            .ns
            .spawn_from(move || crate::dataplane::named(name).launch(&xds, &spec))??;
        Ok(PodProxy {
            pod: self.clone(),
            plane: name,
            proxy,
        })
    }
}

/// A sidecar running in a pod: its admin API is on the pod's loopback, so reads go through
/// the pod's namespace.
pub struct PodProxy {
    /// Stopped before the pod's namespace goes (field order).
    proxy: Box<dyn crate::Proxy>,
    pod: Pod,
    plane: &'static str,
}

impl PodProxy {
    /// `envoy` or `strait-proxy`.
    pub fn plane(&self) -> &'static str {
        self.plane
    }

    /// `GET` on the proxy's admin API, from inside the pod.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let url = format!("{}{path}", self.proxy.admin_url());
        self.pod.enter(|| crate::client::get_blocking(&url))
    }

    pub fn config_dump(&self) -> anyhow::Result<serde_json::Value> {
        self.pod.enter(|| self.proxy.config_dump())
    }

    /// A counter by Envoy's name (`cluster.C.upstream_cx_none_healthy`) on Envoy, or by
    /// strait-proxy's (`strait_proxy_upstream_none_healthy_total{cluster="C"}`) on strait-proxy;
    /// 0 while absent.
    pub fn counter(&self, envoy: &str, strait_proxy: &str) -> anyhow::Result<u64> {
        let (path, name, sep) = match self.plane {
            "envoy" => ("/stats", envoy, ": "),
            _ => ("/metrics", strait_proxy, " "),
        };
        let (status, body) = self.admin_get(path)?;
        anyhow::ensure!(status == 200, "{path} said {status}: {body}");
        Ok(body
            .lines()
            .filter_map(|l| l.split_once(sep))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0))
    }

    pub fn log(&self) -> String {
        self.proxy.log()
    }
}
