//! The app's side of a sidecar without native sidecars: wait until the proxy is ready
//! (`strait-proxy wait`), run the app under `strait-proxy run-app`, reaping orphans as the
//! container's init, and tell the proxy when it ends (`POST /quitquitquit?container=NAME`),
//! and `strait-proxy copy-self`, which puts this binary where the app's containers can run it.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustix::process::{Pid, Signal, WaitOptions};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("strait-proxy not ready at http://{admin}/ready after {timeout:?}: {last}")]
    NotReady {
        admin: SocketAddr,
        timeout: Duration,
        last: String,
    },
    #[error("installing the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: io::Error,
    },
    #[error("waiting for {command:?}: {source}")]
    Wait { command: String, source: io::Error },
    #[error("copying {from} to {to}: {source}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
}

/// When `run-app` stops the proxy after the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StopProxy {
    /// Whatever the app's exit (restartPolicy Never: the pod is done when the app is).
    Always,
    /// Only when it exits 0 (restartPolicy OnFailure: the kubelet runs a failed app again, and
    /// it needs the proxy then).
    OnSuccess,
}

/// What `run-app` runs.
#[derive(Clone, Debug)]
pub struct RunApp {
    pub admin: SocketAddr,
    pub wait_timeout: Duration,
    pub stop_proxy: StopProxy,
    /// This container's name, reported to the proxy, which stops once every run-app container
    /// of the pod has ended; `None`: the proxy stops at once.
    pub container: Option<String>,
    /// The program and its arguments.
    pub command: Vec<OsString>,
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Polls the admin `/ready` every 200 ms until it answers 200 or `timeout` passes.
pub async fn wait_ready(admin: SocketAddr, timeout: Duration) -> Result<(), LifecycleError> {
    let url: hyper::Uri = format!("http://{admin}/ready")
        .parse()
        .expect("a socket address makes a valid URI");
    let client = client();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(2), client.get(url.clone())).await
        {
            Ok(Ok(resp)) if resp.status() == hyper::StatusCode::OK => return Ok(()),
            Ok(Ok(resp)) => format!("/ready said {}", resp.status()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 2s".to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(LifecycleError::NotReady {
                admin,
                timeout,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `POST /quitquitquit` (`?container=NAME` with a container: the proxy stops once every
/// run-app container has ended). Best effort, within 2 s; a failure is logged, since the app's
/// exit code is what matters.
pub async fn quit_proxy(admin: SocketAddr, container: Option<&str>) {
    let query = container.map_or_else(String::new, |name| format!("?container={name}"));
    let request = hyper::Request::post(format!("http://{admin}/quitquitquit{query}"))
        .body(Empty::<Bytes>::new())
        .expect("a socket address and a container name make a valid URI");
    let answer = async {
        let resp = client().request(request).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| e.to_string())?;
        let body = String::from_utf8_lossy(&body.to_bytes()).trim().to_string();
        Ok::<_, String>((status, body))
    };
    match tokio::time::timeout(Duration::from_secs(2), answer).await {
        Ok(Ok((status, answer))) if status.is_success() => {
            tracing::info!(%admin, container, %answer, "told the proxy the app has ended")
        }
        Ok(Ok((status, answer))) => {
            tracing::warn!(%admin, container, %status, %answer, "the proxy refused /quitquitquit")
        }
        Ok(Err(error)) => tracing::warn!(%admin, %error, "could not ask the proxy to quit"),
        Err(_) => tracing::warn!(%admin, "the proxy did not answer /quitquitquit within 2s"),
    }
}

/// Waits for the proxy, runs the app (stdio and environment inherited, SIGTERM and SIGINT
/// passed on to it), stops the proxy, and returns the exit code to leave with: the app's, or
/// 128 + the signal that killed it (as a shell reports it), 127 when it could not be started.
///
/// run-app is its container's PID 1, and a child subreaper besides (so also when it is not):
/// processes the app leaves behind are reparented to it, and it reaps every child that ends,
/// keeping the app's own status when its pid comes up. It starts no other process, so waiting
/// for any child takes no one else's status.
pub async fn run_app(app: &RunApp) -> Result<i32, LifecycleError> {
    // Installed before anything else, so a SIGTERM while waiting is not lost, and before the
    // app starts, so no SIGCHLD is.
    let install = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| LifecycleError::Signal {
            signal: name,
            source,
        })
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    let mut child_ended = install(SignalKind::child(), "SIGCHLD")?;
    if let Err(error) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        tracing::warn!(%error, "could not become a child subreaper: orphans are reaped only as PID 1");
    }

    let (program, args) = app
        .command
        .split_first()
        .expect("clap requires the command");
    let shown = program.to_string_lossy().into_owned();
    tokio::select! {
        ready = wait_ready(app.admin, app.wait_timeout) => {
            if let Err(error) = ready {
                // The app never ran: a failure, which ends the pod (stop the proxy) unless the
                // kubelet will run the app again.
                tracing::error!(%error, "the app was not started");
                return Ok(app.finish(1).await);
            }
        }
        _ = term.recv() => return Ok(128 + Signal::TERM.as_raw()),
        _ = int.recv() => return Ok(128 + Signal::INT.as_raw()),
    }
    // std's Command, not tokio's: tokio's Child waits for its own pid on SIGCHLD, which the
    // reaping below would race with. Nothing here waits on this handle.
    let child = match std::process::Command::new(program).args(args).spawn() {
        Ok(child) => child,
        Err(error) => {
            tracing::error!(command = %shown, %error, "could not start the app");
            let code = if error.kind() == io::ErrorKind::PermissionDenied {
                126
            } else {
                127
            };
            return Ok(app.finish(code).await);
        }
    };
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(Pid::from_raw)
        .expect("a started child has a positive pid");
    drop(child);
    let forward = |sig: Signal, name: &str| {
        if let Err(error) = rustix::process::kill_process(pid, sig) {
            tracing::warn!(signal = name, %error, "could not pass the signal on to the app");
        }
    };
    let status = loop {
        // Every child that has ended, before waiting again: SIGCHLDs arriving together are
        // delivered once.
        if let Some(status) = reap(pid).map_err(|source| LifecycleError::Wait {
            command: shown.clone(),
            source,
        })? {
            break status;
        }
        tokio::select! {
            _ = child_ended.recv() => {}
            _ = term.recv() => forward(Signal::TERM, "SIGTERM"),
            _ = int.recv() => forward(Signal::INT, "SIGINT"),
        }
    };
    Ok(app.finish(exit_code(status)).await)
}

/// Reaps every child that has ended, without blocking; returns the app's status once `app`
/// is among them. Orphans reparented here are reaped and forgotten.
fn reap(app: Pid) -> io::Result<Option<ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = None;
    loop {
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((pid, wait))) if pid == app => {
                status = Some(ExitStatus::from_raw(wait.as_raw()));
            }
            Ok(Some((pid, wait))) => {
                tracing::debug!(pid = pid.as_raw_nonzero().get(), ?wait, "reaped an orphan");
            }
            // Children remain, none has ended.
            Ok(None) => return Ok(status),
            Err(rustix::io::Errno::INTR) => {}
            // No children left: the app has been reaped (now, or it would have been seen).
            Err(rustix::io::Errno::CHILD) if status.is_some() => return Ok(status),
            Err(error) => return Err(error.into()),
        }
    }
}

impl RunApp {
    /// Tells the proxy the app has ended if its exit `code` ends the pod; returns `code`.
    async fn finish(&self, code: i32) -> i32 {
        if self.stop_proxy == StopProxy::Always || code == 0 {
            quit_proxy(self.admin, self.container.as_deref()).await;
        }
        code
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

/// Copies this executable to `to` (mode 0755), through a temporary file beside it so a
/// reader never sees half a binary.
pub fn copy_self(to: &Path) -> Result<(), LifecycleError> {
    let from = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let error = |source| LifecycleError::Copy {
        from: from.clone(),
        to: to.to_path_buf(),
        source,
    };
    let mut partial = to.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::copy(&from, &partial).map_err(error)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
            .map_err(error)?;
    }
    std::fs::rename(&partial, to).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_codes_are_the_apps_or_128_plus_the_signal() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }

    #[test]
    fn copy_self_leaves_an_executable_copy() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("strait-copy-self-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let to = dir.join("strait-proxy");
        copy_self(&to).unwrap();
        let meta = std::fs::metadata(&to).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(
            meta.len(),
            std::fs::metadata(std::env::current_exe().unwrap())
                .unwrap()
                .len()
        );
        let err = copy_self(&dir.join("missing/strait-proxy")).unwrap_err();
        assert!(err.to_string().contains("missing/strait-proxy"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
