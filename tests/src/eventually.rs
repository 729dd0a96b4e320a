//! Polling until a condition holds: the mesh converges asynchronously, so assertions retry.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long to wait between attempts.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Calls `f` until it returns `Ok`, for at most `timeout`; then fails with the last error.
///
/// ```no_run
/// # use std::time::Duration;
/// # use strait_tests::{client::{self, Req}, eventually};
/// # async fn example(outbound: std::net::SocketAddr) -> anyhow::Result<()> {
/// let resp = eventually(Duration::from_secs(10), || async {
///     let r = client::request(outbound, Req::get("reviews.default.svc.cluster.local", "/")).await?;
///     anyhow::ensure!(r.body == "reviews-v2", "got {r:?}");
///     Ok(r)
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        // An attempt that hangs must not outlive the deadline by much.
        let remaining = timeout.saturating_sub(start.elapsed()).max(POLL_INTERVAL);
        let err = match tokio::time::timeout(remaining, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) => anyhow::anyhow!("attempt timed out after {remaining:?}"),
        };
        if start.elapsed() >= timeout {
            return Err(err.context(format!(
                "still failing after {:?} ({attempts} attempts); last error",
                start.elapsed()
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// [`eventually`] for synchronous checks (admin APIs, files, process state).
pub fn eventually_blocking<T>(
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= timeout => {
                return Err(e.context(format!(
                    "still failing after {:?} ({attempts} attempts); last error",
                    start.elapsed()
                )));
            }
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}
