//! Upstream connection pools, one per endpoint of a cluster.
//!
//! HTTP/1.1: connections that finished a response wait idle, most recently used first, and
//! a request takes one or opens a new one (the breaker in front bounds how many are busy).
//! A connection goes back only once its response body has been read to the end; one whose
//! response was cut short closes. HTTP/2: one connection per endpoint carries every request.
//! Both close a connection after max_requests_per_connection requests and after the idle
//! timeout. Every connection is counted in the cluster's stats while it is open.
//!
//! A request that a reused HTTP/1.1 connection could not even start (the server closed it
//! while it sat idle) is sent again on another: it never reached the upstream.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::body::{BoxError, ProxyBody};
use crate::stats::ClusterStats;

/// How a cluster's connections are made and kept: shared by its endpoints' pools and carried
/// over config updates that leave these settings alone.
pub struct Pool {
    connector: Connector,
    http2: bool,
    idle_timeout: Duration,
    /// max_requests_per_connection.
    max_requests: Option<u32>,
    stats: Arc<ClusterStats>,
}

/// Plain TCP, or TLS for `https` origins.
pub enum Connector {
    Plain(HttpConnector),
    Tls(HttpsConnector<HttpConnector>),
}

impl Pool {
    pub fn new(
        connector: Connector,
        http2: bool,
        idle_timeout: Duration,
        max_requests: Option<u32>,
        stats: Arc<ClusterStats>,
    ) -> Pool {
        Pool {
            connector,
            http2,
            idle_timeout,
            max_requests,
            stats,
        }
    }

    /// A pool for one endpoint, `scheme://authority`.
    pub fn endpoint(self: &Arc<Self>, scheme: Scheme, authority: Authority) -> Arc<Endpoint> {
        let origin = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query("/")
            .build()
            .expect("a scheme and an authority make a URI");
        Arc::new(Endpoint {
            pool: self.clone(),
            origin,
            idle: Mutex::new(Vec::new()),
            shared: tokio::sync::Mutex::new(None),
            reaping: AtomicBool::new(false),
        })
    }

    async fn connect(&self, origin: &Uri) -> Result<Counted, BoxError> {
        let io = match &self.connector {
            Connector::Plain(c) => UpstreamIo::Plain(c.clone().oneshot(origin.clone()).await?),
            Connector::Tls(c) => UpstreamIo::Tls(c.clone().oneshot(origin.clone()).await?),
        };
        self.stats
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        self.stats
            .connections_active
            .fetch_add(1, Ordering::Relaxed);
        Ok(Counted {
            io,
            _open: Open(self.stats.clone()),
        })
    }
}

/// One endpoint's connections.
pub struct Endpoint {
    pool: Arc<Pool>,
    /// `scheme://authority/`: what the connector dials, and HTTP/2 requests' scheme and
    /// authority.
    origin: Uri,
    /// HTTP/1.1 connections free for a request, most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connection; locked while it is being made, so requests wait for it rather
    /// than each opening their own.
    shared: tokio::sync::Mutex<Option<Shared>>,
    /// Whether the task closing idle connections runs.
    reaping: AtomicBool,
}

struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
    requests: u32,
}

struct Shared {
    sender: http2::SendRequest<ProxyBody>,
    requests: Arc<AtomicU32>,
    last_used: Instant,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting: {0}")]
    Connect(BoxError),
    #[error(transparent)]
    Request(hyper::Error),
}

/// The HTTP/1.1 connection that carries a response, until its body has been read. `release`
/// hands it back to the pool; dropping it closes the connection.
pub struct Lease {
    held: Option<(Arc<Endpoint>, http1::SendRequest<ProxyBody>, u32)>,
}

impl Lease {
    /// The response was read to its end: the connection may carry the next request.
    pub fn release(mut self) {
        if let Some((endpoint, sender, requests)) = self.held.take() {
            endpoint.put_back(sender, requests);
        }
    }
}

impl Endpoint {
    /// The request URI for this endpoint: origin-form for HTTP/1.1, absolute for HTTP/2
    /// (its `:scheme` and `:authority`).
    pub fn uri(&self, path_and_query: http::uri::PathAndQuery) -> Uri {
        if !self.pool.http2 {
            return Uri::from(path_and_query);
        }
        let mut parts = http::uri::Parts::from(self.origin.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).unwrap_or_else(|_| self.origin.clone())
    }

    pub fn scheme(&self) -> Option<&Scheme> {
        self.origin.scheme()
    }

    pub fn authority(&self) -> Option<&Authority> {
        self.origin.authority()
    }

    /// Sends `req` on a pooled connection, or a new one.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        // Making a connection (connector, TLS, handshake) is a large future and the rare
        // case: boxed, it is allocated when a connection is made instead of being carried,
        // and moved, in every request's future (6.5 KB otherwise).
        if self.pool.http2 {
            return Box::pin(self.send_h2(req)).await;
        }
        let mut req = req;
        loop {
            let (mut sender, requests, reused) = match self.checkout().await {
                Some(idle) => (idle.sender, idle.requests, true),
                None => (Box::pin(self.connect_h1()).await?, 0, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let requests = requests.saturating_add(1);
                    let held = match self.pool.max_requests {
                        // The last request it may carry: the connection closes after it.
                        Some(limit) if requests >= limit => None,
                        _ => Some((self.clone(), sender, requests)),
                    };
                    return Ok((resp, Lease { held }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    /// An idle connection that is still open and ready, if there is one.
    async fn checkout(&self) -> Option<Idle> {
        loop {
            let mut idle = self.take_idle()?;
            // A connection goes back when its response body has been read; hyper may not
            // have turned to the next request yet.
            if idle.sender.is_ready() || idle.sender.ready().await.is_ok() {
                return Some(idle);
            }
        }
    }

    fn take_idle(&self) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed() && c.since.elapsed() < self.pool.idle_timeout {
                return Some(c);
            }
        }
        None
    }

    fn put_back(&self, sender: http1::SendRequest<ProxyBody>, requests: u32) {
        if sender.is_closed() {
            return;
        }
        let since = Instant::now();
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Idle {
                sender,
                since,
                requests,
            });
    }

    async fn connect_h1(self: &Arc<Self>) -> Result<http1::SendRequest<ProxyBody>, SendError> {
        let io = self
            .pool
            .connect(&self.origin)
            .await
            .map_err(SendError::Connect)?;
        let (sender, conn) = http1::handshake(io).await.map_err(SendError::Request)?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        self.reap_idle();
        Ok(sender)
    }

    async fn send_h2(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let mut sender = {
            let mut shared = self.shared.lock().await;
            let open = shared.as_ref().is_some_and(|s| !s.sender.is_closed());
            if !open {
                *shared = Some(Shared {
                    sender: self.connect_h2().await?,
                    requests: Arc::default(),
                    last_used: Instant::now(),
                });
                self.reap_idle();
            }
            let s = shared.as_mut().expect("set above");
            s.last_used = Instant::now();
            let sender = s.sender.clone();
            let requests = s.requests.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            if self
                .pool
                .max_requests
                .is_some_and(|limit| requests >= limit)
            {
                // Its last request: the next one opens a new connection, and this one closes
                // once its streams are done.
                *shared = None;
            }
            sender
        };
        let resp = sender.send_request(req).await.map_err(SendError::Request)?;
        Ok((resp, Lease { held: None }))
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<ProxyBody>, SendError> {
        let io = self
            .pool
            .connect(&self.origin)
            .await
            .map_err(SendError::Connect)?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(SendError::Request)?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Starts, once (at the first connection, not per request), the task that closes
    /// connections idle longer than the idle timeout. It ends with the pool.
    fn reap_idle(self: &Arc<Self>) {
        if self.reaping.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<Endpoint> = Arc::downgrade(self);
        let period = self.pool.idle_timeout.max(Duration::from_millis(10)) / 2;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(endpoint) = weak.upgrade() else {
                    return;
                };
                endpoint.close_idle();
            }
        });
    }

    fn close_idle(&self) {
        let timeout = self.pool.idle_timeout;
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| !c.sender.is_closed() && c.since.elapsed() < timeout);
        if let Ok(mut shared) = self.shared.try_lock()
            && shared
                .as_ref()
                .is_some_and(|s| s.sender.is_closed() || s.last_used.elapsed() >= timeout)
        {
            *shared = None;
        }
    }
}

/// An upstream connection, counted as open in its cluster's stats until dropped.
struct Counted {
    io: UpstreamIo,
    _open: Open,
}

enum UpstreamIo {
    Plain(TokioIo<TcpStream>),
    Tls(MaybeHttpsStream<TokioIo<TcpStream>>),
}

struct Open(Arc<ClusterStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Read for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            UpstreamIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            UpstreamIo::Tls(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl Write for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            UpstreamIo::Plain(io) => Pin::new(io).poll_write(cx, buf),
            UpstreamIo::Tls(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            UpstreamIo::Plain(io) => Pin::new(io).poll_flush(cx),
            UpstreamIo::Tls(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            UpstreamIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            UpstreamIo::Tls(io) => Pin::new(io).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            UpstreamIo::Plain(io) => io.is_write_vectored(),
            UpstreamIo::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            UpstreamIo::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }
}
