//! nginx as a reference subject: a plain HTTP/1.1 reverse proxy in front of the backend, doing
//! the sidecar's job in the plaintext section without a control plane.
//!
//! nginx is no xDS client, so the driver writes its config into a temp dir and runs it there as
//! a child process (`nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'`), killed and reaped when
//! the [`Nginx`] is dropped. Nothing of the system's nginx (its service, `/etc/nginx`, `/var`)
//! is used.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use strait_tests::ports::free_port;
use strait_tests::process::{ManagedChild, workdir};
use tempfile::TempDir;

/// The name `--data-planes` knows it by.
pub const NAME: &str = "nginx";
/// How long nginx may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Nginx {
    /// Dropped first: killed and reaped before its directory goes.
    child: ManagedChild,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Nginx {
    /// Starts nginx from `bin` on a free port of 127.0.0.1, proxying to `backend`, and returns
    /// once it accepts connections (whether it routes is the caller's check).
    pub fn start(bin: &Path, backend: SocketAddr) -> anyhow::Result<Nginx> {
        let dir = workdir("nginx-")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(dir.path(), addr, backend))
            .with_context(|| format!("writing {}", conf.display()))?;
        // nginx's own messages and anything written to stderr share one log.
        let log = dir.path().join("error.log");
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            // Before it reads the config, nginx opens its built-in error log (/var/log/nginx).
            .arg("-e")
            .arg(&log)
            .args(["-g", "daemon off;"]);
        let mut child = ManagedChild::spawn("nginx", cmd, &log)?;
        child.wait_for(&format!("listening on {addr}"), READY_TIMEOUT, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .map(drop)
                .context("connecting")
        })?;
        Ok(Nginx {
            child,
            addr,
            _dir: dir,
        })
    }

    /// The one process doing all the work (`master_process off`).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Where the load goes.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// `nginx -v`'s answer ("nginx version: nginx/1.22.1"), to name it in the report.
pub fn version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let v = text.trim().strip_prefix("nginx version: ")?;
    out.status.success().then(|| v.to_string())
}

/// The config: one process, every file in `dir`, a keep-alive reverse proxy to `backend`.
///
/// - `master_process off`, `worker_processes 1`: one process does all the work, as Envoy runs
///   `--concurrency 1` and strait-proxy one worker; its pid is the one to pin and measure.
/// - `access_log off`: the sidecars in the bench log no requests either.
/// - Keep-alive both ways, as the sidecars do: nginx's default closes a client connection after
///   1000 requests (`keepalive_requests`) and an upstream one likewise; the sidecars do not, so
///   the limits are raised out of the way.
/// - Upstream HTTP/1.1 with `Connection ""` (required for upstream keep-alive), `Host` passed
///   through, the client's address appended to `X-Forwarded-For` and `X-Forwarded-Proto` set,
///   as strait-proxy does.
pub fn config(dir: &Path, listen: SocketAddr, backend: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "# Written by strait-bench: nginx as a plain HTTP/1.1 reverse proxy, the reference subject.
worker_processes 1;
master_process off;
error_log {d}/error.log warn;
pid {d}/nginx.pid;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;

    upstream backend {{
        server {backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}

    server {{
        listen {listen};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_everything_in_its_dir_and_one_process() {
        let conf = config(
            Path::new("/tmp/n"),
            SocketAddr::from(([127, 0, 0, 1], 1000)),
            SocketAddr::from(([127, 0, 0, 1], 2000)),
        );
        for line in [
            "master_process off;",
            "worker_processes 1;",
            "listen 127.0.0.1:1000;",
            "server 127.0.0.1:2000;",
            "pid /tmp/n/nginx.pid;",
            "error_log /tmp/n/error.log warn;",
            "access_log off;",
            "proxy_set_header Connection \"\";",
        ] {
            assert!(conf.contains(line), "{line:?} missing from\n{conf}");
        }
        for path in conf.lines().filter(|l| l.contains("_path ")) {
            assert!(path.contains(" /tmp/n/"), "{path}");
        }
        assert!(!conf.contains("daemon"), "daemon off comes from -g");
    }
}
