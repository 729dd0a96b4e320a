//! The admin API: readiness, liveness, the runtime config as JSON, the workload certificate,
//! Prometheus stats, `POST /quitquitquit` (Envoy's and Istio's name), which makes the proxy
//! drain and exit once the app is done, and the app's probes (`/app-health/…`).

use std::convert::Infallible;
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
                let Ok((stream, _)) = accepted else { continue };
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
                        Ok(respond(&shared, &req))
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

pub fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/quitquitquit" {
        if req.method() != Method::POST {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "use POST\n".into(),
            );
        }
        tracing::info!("/quitquitquit: draining");
        // The answer still goes out: shutdown lets admin connections finish theirs.
        shared.quit.notify_one();
        return text(StatusCode::OK, "text/plain", "OK\n".into());
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
            }
            text(StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}
