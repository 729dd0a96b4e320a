//! Accepting connections: the listener set follows the config; each accepted connection gets
//! its original destination (and is handed to the listener for it), is inspected (TLS or not,
//! SNI, ALPN), matched to a filter chain as Envoy matches it, has TLS terminated if the chain
//! says so, and goes to the HTTP server or the TCP proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::server::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::LazyConfigAcceptor;

use crate::body::BoxError;
use crate::config::{Config, ConnectionInfo, HeaderLimits, Listener, Serve, Transport};
use crate::http::{Conn, ConnLimits, serve_http};
use crate::runtime::{Runtime, Shared};
use crate::tls::PeerTls;

mod inspect;
mod sockets;

pub use inspect::{Hello, original_dst};
pub use sockets::{Sockets, bind};

/// How long a TLS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a removed listener or a draining proxy waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

struct ListenerHandle {
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
    // One accept loop per bound address of each listener.
    let mut listeners: HashMap<(Arc<str>, SocketAddr), ListenerHandle> = HashMap::new();
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
            if listeners.len() == bound_addresses(&config).count() {
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

/// Every (listener, address) the config binds; listeners that only take handed-over
/// connections bind nothing.
pub fn bound_addresses(config: &Config) -> impl Iterator<Item = (&Arc<str>, SocketAddr)> {
    config
        .listeners
        .iter()
        .filter(|(_, l)| l.bind)
        .flat_map(|(name, l)| l.addresses.iter().map(move |a| (name, *a)))
}

async fn reconcile(
    shared: &Arc<Shared>,
    sockets: &Sockets,
    config: &Config,
    listeners: &mut HashMap<(Arc<str>, SocketAddr), ListenerHandle>,
) {
    listeners.retain(|(name, address), handle| {
        let keep = config
            .listeners
            .get(name)
            .is_some_and(|l| l.bind && l.addresses.contains(address));
        if !keep {
            tracing::info!(listener = %name, %address, "closing listener");
            let _ = handle.stop.send(true);
            sockets.set_active(*address, false);
        }
        keep
    });
    for (name, address) in bound_addresses(config) {
        let key = (name.clone(), address);
        if listeners.contains_key(&key) {
            continue;
        }
        let mut socket = sockets
            .take(address)
            .and_then(|s| match TcpListener::from_std(s) {
                Ok(s) => Some(s),
                Err(error) => {
                    tracing::warn!(listener = %name, %error, "cannot use the reserved socket");
                    None
                }
            });
        // A closing listener may still hold the address for a moment.
        for _ in 0..20 {
            if socket.is_some() {
                break;
            }
            match bind(address).and_then(TcpListener::from_std) {
                Ok(s) => socket = Some(s),
                Err(error) => {
                    tracing::warn!(listener = %name, %address, %error, "cannot bind listener yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let Some(socket) = socket else {
            tracing::error!(listener = %name, %address, "giving up binding listener until the next update");
            continue;
        };
        tracing::info!(listener = %name, %address, "listening");
        sockets.set_active(address, true);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(shared.clone(), name.clone(), socket, stop_rx));
        listeners.insert(key, ListenerHandle { stop, task });
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
    let builder = Arc::new(crate::http::limits::builder(&HeaderLimits::default()));
    let open = Arc::new(AtomicUsize::new(0));
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
                // Envoy's listener connection limit: over it, closed at once and counted.
                if shared
                    .max_connections_per_listener
                    .is_some_and(|max| open.load(Ordering::Relaxed) >= max)
                {
                    shared.stats.connection_overflow(&name);
                    tracing::debug!(listener = %name, %peer, "listener at its connection limit; closing");
                    drop(stream);
                    continue;
                }
                let counted = Open::new(&open);
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
                    let _counted = counted;
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

/// A connection counted against its listener's limit until it ends.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(open: &Arc<AtomicUsize>) -> Open {
        open.fetch_add(1, Ordering::Relaxed);
        Open(open.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One accepted connection, in Envoy's order: the original destination and the hand-off to
/// its listener, that listener's inspection, the filter chain, TLS, then HTTP or TCP.
async fn connection(
    shared: Arc<Shared>,
    accepted_on: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) -> Result<(), BoxError> {
    let Some(runtime) = shared.runtime.load_full() else {
        return Ok(());
    };
    let Some(first) = runtime.config.listeners.get(&accepted_on) else {
        return Ok(());
    };
    let mut local = stream.local_addr()?;
    if first.use_original_dst || first.inspect.original_dst {
        local = original_dst(&stream).unwrap_or(local);
    }
    // Envoy hands a restored connection to the listener for its destination, if there is one.
    let (name, l) = match first
        .use_original_dst
        .then(|| runtime.listener_for(local))
        .flatten()
    {
        Some((name, l)) => (name.clone(), l),
        None => (accepted_on, first),
    };
    if l.inspect.original_dst && !first.use_original_dst {
        local = original_dst(&stream).unwrap_or(local);
    }
    let hello = if l.inspect.tls {
        match inspect::client_hello(&stream, l.inspect.timeout).await {
            Ok(hello) => hello,
            Err(inspect::Timeout) if l.inspect.continue_on_timeout => None,
            Err(inspect::Timeout) => {
                tracing::debug!(listener = %name, %peer, "listener filters timed out; closing");
                return Ok(());
            }
        }
    } else {
        None
    };
    let info = ConnectionInfo {
        local,
        transport: if hello.is_some() {
            Transport::Tls
        } else {
            Transport::Raw
        },
        sni: hello.as_ref().and_then(|h| h.sni.as_deref()),
        alpn: hello.as_ref().map_or(&[], |h| &h.alpn),
    };
    let Some(chain) = l.select(&info) else {
        shared.stats.no_filter_chain(&name);
        tracing::debug!(listener = %name, %peer, %local, sni = ?info.sni, "no filter chain matches this connection; closing it");
        return Ok(());
    };
    let tls = l.chains[chain].tls.is_some();
    let is_tcp = matches!(l.chains[chain].serve, Serve::Tcp(_));
    let (limits, builder) = match &l.chains[chain].serve {
        Serve::Http(http) => {
            let limits = ConnLimits {
                request_headers: http.request_headers,
                request_headers_timeout: http.request_headers_timeout,
            };
            // Rare: headers limits other than Envoy's defaults get a server of their own.
            let builder = if http.request_headers == HeaderLimits::default() {
                builder
            } else {
                Arc::new(crate::http::limits::builder(&http.request_headers))
            };
            (limits, builder)
        }
        Serve::Tcp(_) => (ConnLimits::default(), builder),
    };
    if !tls {
        let conn = Conn::new(name, chain, peer, local, None);
        drop(runtime);
        if is_tcp {
            return crate::tcp::serve(shared, conn, stream).await;
        }
        return serve_http(shared, conn, stream, limits, &builder, watcher).await;
    }
    let Some(config) = runtime.chain_tls.get(&(name.clone(), chain)).cloned() else {
        tracing::debug!(listener = %name, chain, %peer, "TLS for this filter chain is not available; closing");
        return Ok(());
    };
    let local_uri = workload_uri(&shared, l, chain);
    drop(runtime);
    let handshake = async {
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
        start.into_stream(config).await
    };
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await??;
    let peer_tls = PeerTls::of(stream.get_ref().1.peer_certificates(), local_uri);
    let conn = Conn::new(name, chain, peer, local, Some(peer_tls));
    if is_tcp {
        return crate::tcp::serve(shared, conn, stream).await;
    }
    serve_http(shared, conn, stream, limits, &builder, watcher).await
}

/// The workload's SPIFFE ID, for XFCC's `By`, when the chain serves the workload certificate.
fn workload_uri(shared: &Shared, l: &Listener, chain: usize) -> Option<Arc<str>> {
    match l.chains[chain].tls.as_ref().map(|t| &t.certificate) {
        Some(crate::config::CertificateSource::Workload) => shared
            .identity
            .as_ref()
            .and_then(|i| i.current())
            .map(|w| w.spiffe_id.clone()),
        _ => None,
    }
}
