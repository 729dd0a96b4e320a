//! Wires the pieces together: xDS client -> published config -> listeners, plus the admin API.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app_health::AppProbers;
use crate::run_apps::RunApps;
use crate::runtime::Shared;
use crate::xds::XdsSettings;

#[derive(Clone, Debug)]
pub struct Settings {
    pub xds: XdsSettings,
    pub admin: SocketAddr,
    /// Export request spans to this OTLP/gRPC collector (`http://host:4317`).
    pub otlp_endpoint: Option<String>,
    /// The app's probes, served on the admin port (`/app-health/…`).
    pub app_probers: AppProbers,
    /// The app containers under `run-app`: the proxy stops once each has reported its end.
    pub run_apps: Arc<RunApps>,
    /// Connections each listener holds at most (Envoy's listener connection limit); 0: no
    /// limit. [`DEFAULT_MAX_CONNECTIONS_PER_LISTENER`] unless told otherwise.
    pub max_connections_per_listener: usize,
}

/// The connection limit per listener when none is given: the overload manager's limit in
/// Envoy's edge-proxy guidance; about 1 GiB of idle connections.
pub const DEFAULT_MAX_CONNECTIONS_PER_LISTENER: usize = 50_000;

/// A running proxy: stop it with [`Running::shutdown`].
pub struct Running {
    pub shared: Arc<Shared>,
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding the admin API on {address}: {source}")]
    Admin {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tracing(#[from] crate::trace::TraceError),
}

/// Binds the admin port and starts span export, the xDS client and the data plane.
pub async fn start(settings: Settings) -> Result<Running, StartError> {
    let tracing = settings
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.is_empty())
        .map(|endpoint| crate::trace::Tracing::new(endpoint, &settings.xds.node.cluster))
        .transpose()?;
    // The workload identity comes with the TLS port (`xds.identity`); none: no mTLS.
    let identity = settings.xds.identity.clone();
    let shared = Arc::new(Shared {
        tracing,
        run_apps: settings.run_apps.clone(),
        max_connections_per_listener: Some(settings.max_connections_per_listener)
            .filter(|n| *n > 0),
        ..Shared::new(identity.clone())
    });
    let admin_error = |source| StartError::Admin {
        address: settings.admin,
        source,
    };
    let admin = TcpListener::bind(settings.admin)
        .await
        .map_err(admin_error)?;
    let admin_addr = admin.local_addr().map_err(admin_error)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (publish, configs) = watch::channel(None);
    let stats = shared.stats.clone();
    // Listener sockets: bound by the xDS client before it ACKs, then served by `accept`.
    let sockets = Arc::new(crate::accept::Sockets::default());
    let bound = sockets.clone();
    let xds_shutdown = shutdown_rx.clone();
    let xds = tokio::spawn(async move {
        if let Err(error) =
            crate::xds::run(settings.xds, publish, stats, sockets, xds_shutdown).await
        {
            tracing::error!(%error, "xds client stopped");
        }
    });
    let data = tokio::spawn(crate::accept::run(
        shared.clone(),
        bound,
        configs,
        shutdown_rx.clone(),
    ));
    let admin_task = tokio::spawn(crate::admin::serve(
        shared.clone(),
        Arc::new(settings.app_probers),
        admin,
        shutdown_rx.clone(),
    ));
    let mut tasks = vec![xds, data, admin_task];
    if let Some(identity) = identity {
        // Certifies the key at once, then renews at half life.
        tasks.push(tokio::spawn(identity.run(shutdown_rx)));
    }
    tracing::info!(admin = %admin_addr, "strait-proxy started");
    Ok(Running {
        shared,
        admin_addr,
        shutdown,
        tasks,
    })
}

impl Running {
    /// Returns once the admin API's `POST /quitquitquit` has asked the proxy to stop.
    pub async fn quit_requested(&self) {
        self.shared.quit.notified().await;
    }

    /// Stops accepting, lets in-flight requests finish, and returns when everything has stopped.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        // Export the last spans; this blocks, so not on a runtime worker.
        let shared = self.shared.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            if let Some(tracing) = &shared.tracing {
                tracing.shutdown();
            }
        });
        let _ = flushed.await;
    }
}
