//! Upstream connection accounting: a connector layer that counts a cluster's connections
//! (opened, open now) and gives each connection a request counter, for
//! max_requests_per_connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};

use crate::stats::ClusterStats;

/// Wraps a connector (plain TCP, or whatever the cluster's transport needs) so that every
/// connection it makes is counted in `stats`.
#[derive(Clone, Debug)]
pub struct Counted<C> {
    inner: C,
    stats: Arc<ClusterStats>,
    /// Whether connections count their requests (only max_requests_per_connection needs it:
    /// the count costs every response an extension).
    count_requests: bool,
}

impl<C> Counted<C> {
    pub fn new(inner: C, stats: Arc<ClusterStats>, count_requests: bool) -> Counted<C> {
        Counted {
            inner,
            stats,
            count_requests,
        }
    }
}

/// The requests a connection has carried, in every response's extensions.
#[derive(Clone, Debug, Default)]
pub struct RequestCount(Arc<AtomicU32>);

impl RequestCount {
    /// Counts one more request; returns how many the connection has now carried.
    pub fn add(&self) -> u32 {
        self.0.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }
}

impl<C> tower::Service<Uri> for Counted<C>
where
    C: tower::Service<Uri>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
{
    type Response = CountedIo<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let stats = self.stats.clone();
        let requests = self.count_requests.then(RequestCount::default);
        Box::pin(async move {
            let io = connecting.await?;
            stats.connections_opened.fetch_add(1, Ordering::Relaxed);
            stats.connections_active.fetch_add(1, Ordering::Relaxed);
            Ok(CountedIo {
                inner: io,
                _open: Open(stats),
                requests,
            })
        })
    }
}

/// Counts a connection as open until dropped.
#[derive(Debug)]
struct Open(Arc<ClusterStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A counted connection.
#[derive(Debug)]
pub struct CountedIo<T> {
    inner: T,
    _open: Open,
    requests: Option<RequestCount>,
}

impl<T: Connection> Connection for CountedIo<T> {
    fn connected(&self) -> Connected {
        let connected = self.inner.connected();
        match &self.requests {
            Some(requests) => connected.extra(requests.clone()),
            None => connected,
        }
    }
}

impl<T: Read + Unpin> Read for CountedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for CountedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}
