//! The admin API: readiness, liveness, the runtime config as JSON, the workload certificate,
//! Prometheus stats, `POST /quitquitquit` (Envoy's and Istio's name), which makes the proxy
//! drain and exit once the app is done (`?container=NAME`: once every run-app container has
//! ended, `run_apps`), and the app's probes (`/app-health/…`).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app_health::{self, AppProbers};
use crate::run_apps::Report;
use crate::runtime::Shared;

/// How long answers already being written get at shutdown (the answer to `/quitquitquit`).
const FINISH_ANSWERS: Duration = Duration::from_secs(2);

/// Serves the admin API on `socket` until `shutdown`, then lets open connections finish the
/// answer they are writing.
pub async fn serve(
    shared: Arc<Shared>,
    probers: Arc<AppProbers>,
    socket: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = socket.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let shared = shared.clone();
                let probers = probers.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let shared = shared.clone();
                    let probers = probers.clone();
                    async move {
                        let path = req.uri().path();
                        if req.method() == Method::GET && path.starts_with(app_health::PREFIX) {
                            return Ok::<_, Infallible>(app_probe(&probers, path).await);
                        }
                        Ok(respond(&shared, &req, peer.ip()))
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(%error, "admin connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    if tokio::time::timeout(FINISH_ANSWERS, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("admin connections still open at shutdown");
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

/// An app's probe, performed now; 404 for a path the injector did not write.
async fn app_probe(probers: &AppProbers, path: &str) -> Response<Full<Bytes>> {
    match probers.probe(path).await {
        Some(status) => {
            let reason = status.canonical_reason().unwrap_or_default();
            text(status, "text/plain", format!("{reason}\n"))
        }
        None => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "no such probe\n".into(),
        ),
    }
}

/// Whether a `/quitquitquit` may stop the proxy: a POST from inside the pod. The admin port
/// listens on every address (the kubelet probes it), so anyone in the cluster could otherwise
/// stop any sidecar; Istio's agent keeps it to localhost the same way.
fn may_quit(method: &Method, peer: IpAddr) -> Result<(), (StatusCode, &'static str)> {
    if method != Method::POST {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "use POST\n"));
    }
    let loopback = match peer {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        IpAddr::V4(v4) => v4.is_loopback(),
    };
    if !loopback {
        return Err((
            StatusCode::FORBIDDEN,
            "only from inside the pod (loopback)\n",
        ));
    }
    Ok(())
}

/// Which container a `/quitquitquit` query reports the end of: `None` for no query (quit now),
/// else the one `container=NAME` it must be.
fn container_of(query: Option<&str>) -> Result<Option<&str>, String> {
    let Some(query) = query else { return Ok(None) };
    match query.split_once('=') {
        Some(("container", name)) if !name.contains('&') => Ok(Some(name)),
        _ => Err(format!(
            "expected no query or container=NAME, got {query:?}\n"
        )),
    }
}

/// `/quitquitquit` from inside the pod: without a container, drain and exit now (Envoy's and
/// Istio's); with `?container=NAME`, a run-app container has ended, and the proxy drains once
/// every one the injector named has.
fn quit(shared: &Shared, query: Option<&str>) -> Response<Full<Bytes>> {
    let container = match container_of(query) {
        Ok(container) => container,
        Err(why) => return text(StatusCode::BAD_REQUEST, "text/plain", why),
    };
    if let Some(name) = container {
        match shared.run_apps.ended(name) {
            Ok(Report::AllEnded) => {
                tracing::info!(
                    container = name,
                    "/quitquitquit: every run-app container has ended: draining"
                );
            }
            Ok(Report::Waiting(waiting)) => {
                let waiting = waiting.join(", ");
                tracing::info!(container = name, %waiting, "/quitquitquit: a run-app container has ended");
                return text(
                    StatusCode::OK,
                    "text/plain",
                    format!("{name} has ended; waiting for {waiting}\n"),
                );
            }
            Err(error) => {
                tracing::warn!(%error, "/quitquitquit refused");
                return text(StatusCode::BAD_REQUEST, "text/plain", format!("{error}\n"));
            }
        }
    } else {
        tracing::info!("/quitquitquit: draining");
    }
    // The answer still goes out: shutdown lets admin connections finish theirs.
    shared.quit.notify_one();
    text(StatusCode::OK, "text/plain", "OK\n".into())
}

pub fn respond(shared: &Shared, req: &Request<Incoming>, peer: IpAddr) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/quitquitquit" {
        if let Err((status, why)) = may_quit(req.method(), peer) {
            if status == StatusCode::FORBIDDEN {
                tracing::warn!(%peer, "/quitquitquit refused: not from loopback");
            }
            return text(status, "text/plain", why.into());
        }
        return quit(shared, req.uri().query());
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", String::new());
    }
    match path {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/ready" => {
            if shared.is_ready() {
                text(StatusCode::OK, "text/plain", "LIVE\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "PRE_INITIALIZING\n".into(),
                )
            }
        }
        "/config_dump" => {
            let runtime = shared.runtime.load_full();
            let dump = serde_json::json!({
                "config": runtime.as_ref().map(|r| &r.config),
                "xds": shared.stats.xds(),
            });
            match serde_json::to_string_pretty(&dump) {
                Ok(body) => text(StatusCode::OK, "application/json", body),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        // The workload certificate in Envoy's /certs shape (the fields a reader needs).
        "/certs" => {
            let certificates: Vec<_> = shared
                .identity
                .as_ref()
                .and_then(|i| i.current())
                .map(|w| {
                    let unix = |t: std::time::SystemTime| {
                        t.duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs())
                    };
                    serde_json::json!({
                        "cert_chain": [{
                            "path": "<workload certificate, SDS default>",
                            "serial_number": w.serial,
                            "subject_alt_names": [{ "uri": &*w.spiffe_id }],
                            "valid_from_unix": unix(w.not_before),
                            "expiration_time_unix": unix(w.not_after),
                        }],
                    })
                })
                .into_iter()
                .collect();
            let body = serde_json::json!({ "certificates": certificates }).to_string();
            text(StatusCode::OK, "application/json", body)
        }
        "/stats/prometheus" | "/metrics" => {
            let mut body = shared.stats.prometheus();
            if let Some(runtime) = shared.runtime.load_full() {
                crate::stats::render_clusters(&mut body, &runtime.cluster_stats());
                crate::stats::render_rate_limits(&mut body, &runtime.rate_limit_counters());
            }
            text(StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quit_names_one_container_or_none() {
        assert_eq!(container_of(None), Ok(None));
        assert_eq!(container_of(Some("container=web")), Ok(Some("web")));
        for bad in ["", "container", "pod=web", "container=a&container=b"] {
            assert!(container_of(Some(bad)).is_err(), "{bad}");
        }
    }

    fn body(resp: Response<Full<Bytes>>) -> (StatusCode, String) {
        use futures::FutureExt;
        use http_body_util::BodyExt;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .now_or_never()
            .unwrap()
            .unwrap()
            .to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// Whether `quit` has been notified (and takes the permit).
    fn quitting(shared: &Shared) -> bool {
        use futures::FutureExt;
        shared.quit.notified().now_or_never().is_some()
    }

    #[test]
    fn the_proxy_quits_once_every_run_app_container_has_ended() {
        let shared = Shared {
            run_apps: Arc::new(crate::run_apps::RunApps::new(["a", "b"]).unwrap()),
            ..Shared::default()
        };
        let a = body(quit(&shared, Some("container=a")));
        assert_eq!(a, (StatusCode::OK, "a has ended; waiting for b\n".into()));
        assert_eq!(body(quit(&shared, Some("container=a"))), a);
        assert!(!quitting(&shared));
        let (status, why) = body(quit(&shared, Some("container=c")));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            why,
            "unknown container \"c\": the run-app containers are a, b\n"
        );
        assert_eq!(
            body(quit(&shared, Some("pod=a"))).0,
            StatusCode::BAD_REQUEST
        );
        assert!(!quitting(&shared));
        assert_eq!(
            body(quit(&shared, Some("container=b"))),
            (StatusCode::OK, "OK\n".into())
        );
        assert!(quitting(&shared));
        // Without a container: at once, as Istio's, whatever the containers.
        let shared = Shared {
            run_apps: Arc::new(crate::run_apps::RunApps::new(["a", "b"]).unwrap()),
            ..Shared::default()
        };
        assert_eq!(body(quit(&shared, None)), (StatusCode::OK, "OK\n".into()));
        assert!(quitting(&shared));
    }

    #[test]
    fn only_a_post_from_loopback_may_stop_the_proxy() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(may_quit(&Method::POST, ip("127.0.0.1")).is_ok());
        assert!(may_quit(&Method::POST, ip("::1")).is_ok());
        assert!(may_quit(&Method::POST, ip("::ffff:127.0.0.1")).is_ok());
        assert_eq!(
            may_quit(&Method::GET, ip("127.0.0.1")).unwrap_err().0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        for other in ["10.1.2.3", "::ffff:10.1.2.3", "fd00::1"] {
            assert_eq!(
                may_quit(&Method::POST, ip(other)).unwrap_err().0,
                StatusCode::FORBIDDEN,
                "{other}"
            );
        }
    }
}
