//! The TCP proxy: a connection that a TCP chain takes is authorized (network RBAC), given an
//! upstream connection to its cluster (balanced, under the cluster's connection limit, from its
//! bind address, over TLS when the endpoint's transport says so), and spliced to it: bytes both
//! ways, each side's end of stream passed on as a half-close, closed when idle too long.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::authz::{RbacInput, authorize};
use crate::body::BoxError;
use crate::config::{Serve, TcpProxy};
use crate::http::Conn;
use crate::runtime::{Shared, Upstream};
use crate::stats::ClusterStats;
use crate::upstream::balance::{Outcome, hash_of};

/// Anything the proxy splices: a TCP stream or TLS over one.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Serves a connection that a TCP chain took: authorization, then the upstream, then bytes.
pub async fn serve<S: Io>(shared: Arc<Shared>, conn: Conn, downstream: S) -> Result<(), BoxError> {
    let Some(runtime) = shared.runtime.load_full() else {
        return Ok(());
    };
    let chain = runtime
        .config
        .listeners
        .get(&conn.listener)
        .and_then(|l| l.chains.get(conn.chain));
    let Some(Serve::Tcp(proxy)) = chain.map(|c| &c.serve) else {
        // The listener changed under the connection.
        return Ok(());
    };
    if !proxy.rbac.is_empty() {
        let headers = HeaderMap::new();
        let input = RbacInput {
            method: "",
            path: "",
            authority: "",
            headers: &headers,
            destination_port: conn.local.port(),
            direct_remote_ip: conn.peer.ip(),
            principal: conn.tls.as_ref().and_then(|t| t.principal.as_deref()),
            jwt: None,
        };
        let decision = authorize(&proxy.rbac, &input);
        if !decision.allowed {
            tracing::debug!(listener = %conn.listener, peer = %conn.peer, policy = ?decision.policy, "RBAC denied the connection");
            return Ok(());
        }
    }
    let cluster = proxy.pick().clone();
    let Some(upstream) = runtime.upstreams.get(&cluster).cloned() else {
        // Assembly guarantees a TCP chain's cluster exists; keep failing closed anyway.
        return Ok(());
    };
    let proxy: TcpProxy = proxy.clone();
    drop(runtime);
    let Some(connected) = connect(&upstream, &conn, &proxy).await else {
        return Ok(());
    };
    let ended = splice(downstream, connected.io, proxy.idle_timeout).await;
    drop(connected.held);
    match ended {
        Ok(Ended::Idle) => {
            tracing::debug!(cluster = %cluster, peer = %conn.peer, "idle TCP connection closed")
        }
        Ok(Ended::Closed { .. }) => {}
        Err(error) => {
            tracing::debug!(cluster = %cluster, peer = %conn.peer, %error, "TCP connection ended with an error")
        }
    }
    Ok(())
}

/// An upstream connection and what it holds while it is open.
struct Connected {
    io: Box<dyn Io>,
    held: Box<dyn Send>,
}

/// Counts a proxied connection as active (and as an open upstream connection) until dropped.
struct Active(Arc<ClusterStats>);

impl Active {
    fn new(stats: &Arc<ClusterStats>) -> Active {
        stats.connections_opened.fetch_add(1, Ordering::Relaxed);
        stats.connections_active.fetch_add(1, Ordering::Relaxed);
        stats.tcp_active.fetch_add(1, Ordering::Relaxed);
        Active(stats.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
        self.0.tcp_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connects to the cluster as Envoy's TCP proxy does: one attempt, at an endpoint the balancer
/// picks (or, for an original-destination cluster, where the downstream was going), under
/// max_connections. `None`: the downstream is closed (the reason is counted and logged).
async fn connect(upstream: &Upstream, conn: &Conn, proxy: &TcpProxy) -> Option<Connected> {
    let cluster = &upstream.cluster;
    let stats = &upstream.stats;
    let Ok(slot) = upstream.breaker.tcp_connection(stats) else {
        tracing::debug!(cluster = %cluster.name, "max_connections reached: closing the connection");
        return None;
    };
    let (address, pick, tls) = if cluster.original_dst() {
        (conn.local, None, None)
    } else {
        let hash = proxy
            .hash_source_ip
            .then(|| hash_of(conn.peer.ip().to_string().as_str()));
        let Some(pick) = upstream.balancer.pick(hash) else {
            stats.none_healthy.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(cluster = %cluster.name, peer = %conn.peer, "no healthy upstream: closing the connection");
            return None;
        };
        let endpoint = pick.endpoint();
        let tls = cluster
            .transport_for(endpoint)
            .and_then(|_| upstream.tls.clone());
        if cluster.transport_for(endpoint).is_some() && tls.is_none() {
            tracing::debug!(cluster = %cluster.name, "upstream TLS is not available: closing the connection");
            return None;
        }
        let address = match resolve(&endpoint.host, endpoint.port).await {
            Some(a) => a,
            None => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                pick.report(Outcome::LocalFailure);
                return None;
            }
        };
        (address, Some(pick), tls)
    };
    let bind = cluster.upstream_bind.and_then(|b| match address {
        SocketAddr::V4(_) => b.v4.map(std::net::IpAddr::from),
        SocketAddr::V6(_) => b.v6.map(std::net::IpAddr::from),
    });
    let attempt = tokio::time::timeout(cluster.connect_timeout, dial(address, bind)).await;
    let stream = match attempt {
        Ok(Ok(stream)) => stream,
        failed => {
            stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            if let Some(pick) = &pick
                && pick.report(Outcome::LocalFailure)
            {
                stats.ejections.fetch_add(1, Ordering::Relaxed);
            }
            let error = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "connect timeout".to_string(),
            };
            tracing::debug!(cluster = %cluster.name, %address, %error, "upstream connect failed: closing the connection");
            return None;
        }
    };
    if let Some(pick) = &pick {
        // A connection made is a success to outlier detection.
        pick.report(Outcome::Status(200));
    }
    let active = Active::new(stats);
    let io: Box<dyn Io> = match tls {
        None => Box::new(stream),
        Some(tls) => {
            let name = tls
                .sni
                .clone()
                .unwrap_or_else(|| rustls_pki_types::ServerName::IpAddress(address.ip().into()));
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            match tokio::time::timeout(cluster.connect_timeout, connector.connect(name, stream))
                .await
            {
                Ok(Ok(s)) => Box::new(s),
                failed => {
                    stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "TLS handshake timeout".to_string(),
                    };
                    tracing::debug!(cluster = %cluster.name, %address, %error, "upstream TLS failed: closing the connection");
                    return None;
                }
            }
        }
    };
    Some(Connected {
        io,
        held: Box::new((slot, pick, active)),
    })
}

/// An endpoint's address: its IP, or its name resolved (STRICT_DNS clusters).
async fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port)).await.ok()?.next()
}

/// A TCP connection to `address`, from `bind` when given.
async fn dial(address: SocketAddr, bind: Option<std::net::IpAddr>) -> io::Result<TcpStream> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.set_nodelay(true)?;
    socket.connect(address).await
}

/// How a spliced connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both sides finished: (bytes downstream -> upstream, bytes upstream -> downstream).
    Closed { sent: u64, received: u64 },
    /// Nothing moved for the idle timeout.
    Idle,
}

/// Copies between `downstream` and `upstream` until both directions end (an end of stream on
/// one side is passed on as a write shutdown on the other, so half-closed protocols work), an
/// error ends either, or nothing moves in either direction for `idle` (`None`: no limit).
pub async fn splice<D, U>(downstream: D, upstream: U, idle: Option<Duration>) -> io::Result<Ended>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    // Milliseconds since `start` of the last byte moved, shared by both sides.
    let activity = Arc::new(AtomicU64::new(0));
    let mut down = Watched {
        io: downstream,
        activity: activity.clone(),
        start,
    };
    let mut up = Watched {
        io: upstream,
        activity: activity.clone(),
        start,
    };
    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
    let Some(idle) = idle.filter(|d| !d.is_zero()) else {
        let (sent, received) = copy.await?;
        return Ok(Ended::Closed { sent, received });
    };
    tokio::pin!(copy);
    loop {
        let last = start + Duration::from_millis(activity.load(Ordering::Relaxed));
        tokio::select! {
            done = &mut copy => {
                let (sent, received) = done?;
                return Ok(Ended::Closed { sent, received });
            }
            _ = tokio::time::sleep_until(last + idle) => {
                let moved = start + Duration::from_millis(activity.load(Ordering::Relaxed));
                if moved + idle <= Instant::now() {
                    return Ok(Ended::Idle);
                }
            }
        }
    }
}

/// An I/O object that notes when bytes last moved through it.
struct Watched<T> {
    io: T,
    activity: Arc<AtomicU64>,
    start: Instant,
}

impl<T> Watched<T> {
    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.activity.fetch_max(now, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair of loopback TCP sockets (for other modules' tests too).
    pub(crate) async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_a_half_close_is_passed_on() {
        let (mut client, proxy_down) = pair().await;
        let (proxy_up, mut server) = pair().await;
        let proxy = tokio::spawn(splice(proxy_down, proxy_up, Some(Duration::from_secs(5))));
        client.write_all(b"ping").await.unwrap();
        // The client is done sending; the server must see the end of stream and may still answer.
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        server.write_all(b"pong after your FIN").await.unwrap();
        server.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"pong after your FIN");
        assert_eq!(
            proxy.await.unwrap().unwrap(),
            Ended::Closed {
                sent: 4,
                received: 19
            }
        );
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
        let (mut client, proxy_down) = pair().await;
        let (proxy_up, mut server) = pair().await;
        let idle = Duration::from_millis(1000);
        let started = std::time::Instant::now();
        let proxy = tokio::spawn(splice(proxy_down, proxy_up, Some(idle)));
        // A byte every 100 ms keeps it open past the limit.
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            server.read_exact(&mut b).await.unwrap();
        }
        assert!(!proxy.is_finished(), "closed while busy");
        assert_eq!(proxy.await.unwrap().unwrap(), Ended::Idle);
        assert!(started.elapsed() >= Duration::from_millis(1200) + idle);
        // Both sides see the connection closed.
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
