//! Accepting connections: the listener set follows the config, each accepted connection is
//! matched to a filter chain (TLS or not, SNI), TLS is terminated if the chain says so, and the
//! connection is handed to the HTTP server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::server::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::LazyConfigAcceptor;

use crate::body::BoxError;
use crate::config::Config;
use crate::http::{Conn, serve_http};
use crate::runtime::{Runtime, Shared};
use crate::tls::PeerTls;

mod sockets;

pub use sockets::Sockets;

/// How long a TLS client may take to say hello and finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake (the client hello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How long a removed listener or a draining proxy waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

struct ListenerHandle {
    address: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Applies each published config: swaps the runtime, binds new listeners, closes removed ones.
/// Returns when `shutdown` fires, after draining every listener.
pub async fn run(
    shared: Arc<Shared>,
    sockets: Arc<Sockets>,
    mut configs: watch::Receiver<Option<Arc<Config>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut listeners: HashMap<Arc<str>, ListenerHandle> = HashMap::new();
    loop {
        let config = configs.borrow_and_update().clone();
        if let Some(config) = config {
            let previous = shared.runtime.load_full();
            let runtime = Runtime::build(
                config.clone(),
                previous.as_deref(),
                shared.identity.as_ref(),
            );
            shared.runtime.store(Some(Arc::new(runtime)));
            reconcile(&shared, &sockets, &config, &mut listeners).await;
            if listeners.len() == config.listeners.len() {
                shared.ready.store(true, Ordering::Relaxed);
            }
        }
        tokio::select! {
            changed = configs.changed() => if changed.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    tracing::info!(listeners = listeners.len(), "draining");
    for handle in listeners.values() {
        let _ = handle.stop.send(true);
    }
    for (_, handle) in listeners {
        let _ = handle.task.await;
    }
}

async fn reconcile(
    shared: &Arc<Shared>,
    sockets: &Sockets,
    config: &Config,
    listeners: &mut HashMap<Arc<str>, ListenerHandle>,
) {
    listeners.retain(|name, handle| {
        let keep = config
            .listeners
            .get(name)
            .is_some_and(|l| l.address == handle.address);
        if !keep {
            tracing::info!(listener = %name, address = %handle.address, "closing listener");
            let _ = handle.stop.send(true);
            sockets.set_active(handle.address, false);
        }
        keep
    });
    for (name, l) in &config.listeners {
        if listeners.contains_key(name) {
            continue;
        }
        let mut bound = sockets
            .take(l.address)
            .and_then(|s| match TcpListener::from_std(s) {
                Ok(s) => Some(s),
                Err(error) => {
                    tracing::warn!(listener = %name, %error, "cannot use the reserved socket");
                    None
                }
            });
        // A closing listener may still hold the address for a moment.
        for _ in 0..20 {
            if bound.is_some() {
                break;
            }
            match TcpListener::bind(l.address).await {
                Ok(socket) => {
                    bound = Some(socket);
                    break;
                }
                Err(error) => {
                    tracing::warn!(listener = %name, address = %l.address, %error, "cannot bind listener yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let Some(socket) = bound else {
            tracing::error!(listener = %name, address = %l.address, "giving up binding listener until the next update");
            continue;
        };
        tracing::info!(listener = %name, address = %l.address, "listening");
        sockets.set_active(l.address, true);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(shared.clone(), name.clone(), socket, stop_rx));
        listeners.insert(
            name.clone(),
            ListenerHandle {
                address: l.address,
                stop,
                task,
            },
        );
    }
}

/// Accepts connections until `stop`, then lets open connections finish (up to the drain timeout).
async fn serve(
    shared: Arc<Shared>,
    name: Arc<str>,
    socket: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        tokio::select! {
            accepted = socket.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        tracing::warn!(listener = %name, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection = connection(
                    shared.clone(),
                    name.clone(),
                    stream,
                    peer,
                    builder.clone(),
                    graceful.watcher(),
                );
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(socket);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = %name, "drain timed out; closing remaining connections");
    }
}

/// Matches a connection to a filter chain (TLS or not, SNI), terminates TLS if the chain says
/// so, and serves HTTP on it.
async fn connection(
    shared: Arc<Shared>,
    listener: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) -> Result<(), BoxError> {
    let Some(runtime) = shared.runtime.load_full() else {
        return Ok(());
    };
    let Some(l) = runtime.config.listeners.get(&listener) else {
        return Ok(());
    };
    let tls = if l.inspects() {
        let mut first = [0u8; 1];
        let n = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await??;
        n == 1 && first[0] == TLS_HANDSHAKE_RECORD
    } else {
        l.serves_tls()
    };
    if !tls {
        let Some(chain) = l.select(false, None).filter(|i| l.chains[*i].tls.is_none()) else {
            tracing::debug!(%listener, %peer, "no filter chain takes a plaintext connection; closing it");
            return Ok(());
        };
        let conn = Conn::new(listener, chain, peer, None);
        drop(runtime);
        return serve_http(shared, conn, TokioIo::new(stream), &builder, watcher).await;
    }
    let handshake = async {
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
        let sni = start.client_hello().server_name().map(str::to_string);
        let chain = l.select(true, sni.as_deref());
        let Some((chain, config)) =
            chain.and_then(|i| Some((i, runtime.chain_tls.get(&(listener.clone(), i))?.clone())))
        else {
            tracing::debug!(%listener, %peer, ?sni, "no filter chain takes this TLS connection; closing it");
            return Ok::<_, std::io::Error>(None);
        };
        let local_uri = match l.chains[chain].tls.as_ref().map(|t| &t.certificate) {
            Some(crate::config::CertificateSource::Workload) => shared
                .identity
                .as_ref()
                .and_then(|i| i.current())
                .map(|w| w.spiffe_id.clone()),
            _ => None,
        };
        let stream = start.into_stream(config).await?;
        let peer_tls = PeerTls::of(stream.get_ref().1.peer_certificates(), local_uri);
        Ok(Some((chain, stream, peer_tls)))
    };
    let Some((chain, stream, peer_tls)) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await??
    else {
        return Ok(());
    };
    let conn = Conn::new(listener, chain, peer, Some(peer_tls));
    drop(runtime);
    serve_http(shared, conn, TokioIo::new(stream), &builder, watcher).await
}
