//! Limits on what a downstream client may send: the size and number of request headers (431,
//! as Envoy answers) and the time a request's headers may take to arrive (Envoy's
//! `request_headers_timeout`), kept by one timer per connection that is armed only while a
//! head is slow to arrive.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use hyper::body::{Body, Bytes, Frame};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::body::{BoxError, ProxyBody};
use crate::config::HeaderLimits;
use crate::stats::Stats;

/// hyper's own limit on a buffered HTTP/1 head (and its read buffer), kept unless the header
/// limit needs more.
const HYPER_MAX_BUF: usize = 8192 + 4096 * 100;

/// hyper's HTTP/1 parser keeps this many headers on the stack; more need a heap array.
const HYPER_STACK_HEADERS: usize = 100;

/// The HTTP server for a chain's connections, with its header limits where hyper enforces
/// them: HTTP/2's SETTINGS_MAX_HEADER_LIST_SIZE (the h2 crate answers 431 over it) and the
/// HTTP/1 parser's header array and buffer. The exact limits are checked per request
/// ([`too_large`]).
pub fn builder(limits: &HeaderLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_header_list_size(u32::try_from(limits.max_bytes).unwrap_or(u32::MAX));
    let mut h1 = builder.http1();
    if limits.max_count > HYPER_STACK_HEADERS {
        h1.max_headers(limits.max_count);
    }
    // Room for the request line and the separators beside the header bytes.
    let head = limits.max_bytes + limits.max_bytes / 4 + 8192;
    if head > HYPER_MAX_BUF {
        h1.max_buf_size(head);
    }
    builder
}

/// Whether a request's headers are over the limits, measured as Envoy measures them: the
/// number of headers, and the bytes of their names and values.
pub(crate) fn too_large(headers: &HeaderMap, limits: &HeaderLimits) -> bool {
    if headers.len() > limits.max_count {
        return true;
    }
    let mut bytes = 0;
    for (name, value) in headers {
        bytes += name.as_str().len() + value.len();
    }
    bytes > limits.max_bytes
}

/// Envoy's answer to headers over the limits; the connection is not reused.
pub(crate) fn too_large_response() -> Response<ProxyBody> {
    let mut resp = super::local(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "");
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// What a connection's requests tell its header timer: heads completed, requests not yet
/// answered in full.
pub(crate) struct HeadClock {
    timeout: Option<Duration>,
    /// Requests whose heads were read.
    heads: AtomicU64,
    /// Requests whose responses have not been sent in full.
    in_flight: AtomicUsize,
    /// HTTP/2, or upgraded: reads are no longer request heads.
    disarmed: AtomicBool,
    stats: Arc<Stats>,
    listener: Arc<str>,
}

impl HeadClock {
    pub(crate) fn new(
        timeout: Option<Duration>,
        stats: Arc<Stats>,
        listener: Arc<str>,
    ) -> Arc<HeadClock> {
        Arc::new(HeadClock {
            timeout,
            heads: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            disarmed: AtomicBool::new(false),
            stats,
            listener,
        })
    }

    /// A request's head has been read: until the returned guard is dropped (with the
    /// response body), what the connection reads belongs to it.
    pub(crate) fn request(self: &Arc<Self>, http2: bool) -> InFlight {
        if self.timeout.is_some() {
            if http2 {
                self.disarmed.store(true, Ordering::Relaxed);
            }
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            self.heads.fetch_add(1, Ordering::Relaxed);
        }
        InFlight(self.clone())
    }

    /// The connection is upgraded (WebSocket): its bytes are no longer HTTP.
    pub(crate) fn disarm(&self) {
        self.disarmed.store(true, Ordering::Relaxed);
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && !self.disarmed.load(Ordering::Relaxed)
    }
}

/// A request in flight, for its connection's header timer.
pub(crate) struct InFlight(Arc<HeadClock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.timeout.is_some() {
            self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl InFlight {
    /// The response, holding the request in flight until its body has been sent (or dropped).
    pub(crate) fn track(self, resp: Response<ProxyBody>) -> Response<Tracked> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            self.0.disarm();
        }
        resp.map(|inner| Tracked {
            inner,
            _in_flight: self,
        })
    }
}

/// A response body that keeps its request in flight.
pub(crate) struct Tracked {
    inner: ProxyBody,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Envoy's answer when a request's headers took too long (a local reply, then the close).
const TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 22\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nrequest header timeout";

/// A head being read: since when (taken at the first read that had to wait), and how many
/// heads had completed before it.
#[derive(Clone, Copy)]
struct Pending {
    since: Option<Instant>,
    heads: u64,
}

enum State {
    Serving,
    /// The header timeout fired: the 408 is being written, this much of it so far.
    Answering(usize),
    Closed,
}

/// A downstream connection's transport with the header timer in its reads: bytes that arrive
/// while no request is in flight start a head; if no request has been read by the timeout
/// (counted from the first read that had to wait for more), the client gets a 408 and the
/// connection ends. A head that arrives in one read never touches the timer. HTTP/1 only: an
/// HTTP/2 connection (its preface) disarms it.
pub(crate) struct Timed<I> {
    inner: I,
    clock: Arc<HeadClock>,
    pending: Option<Pending>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The connection's first bytes, to tell HTTP/2's preface from an HTTP/1 request.
    first: [u8; 4],
    seen: usize,
    state: State,
}

impl<I> Timed<I> {
    pub(crate) fn new(inner: I, clock: Arc<HeadClock>) -> Timed<I> {
        Timed {
            inner,
            clock,
            pending: None,
            sleep: None,
            first: [0; 4],
            seen: 0,
            state: State::Serving,
        }
    }

    fn looks_like_http2(&self) -> bool {
        self.first[..self.seen] == b"PRI "[..self.seen]
    }

    /// Forgets a head that has since been read whole.
    fn refresh(&mut self) {
        if let Some(p) = self.pending
            && (p.heads != self.clock.heads.load(Ordering::Relaxed) || !self.clock.idle())
        {
            self.pending = None;
        }
    }

    /// Called when a read has to wait: whether the head being read is out of time (the timer
    /// is armed for it otherwise).
    fn expired(&mut self, cx: &mut Context<'_>, timeout: Duration) -> bool {
        self.refresh();
        let Some(pending) = &mut self.pending else {
            return false;
        };
        let since = *pending.since.get_or_insert_with(Instant::now);
        let deadline = since + timeout;
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        sleep.as_mut().poll(cx).is_ready()
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Timed<I> {
    /// Writes the 408, then ends the connection with an error hyper does not answer.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let State::Answering(written) = self.state {
            if written < TIMEOUT_RESPONSE.len() {
                let n =
                    ready!(Pin::new(&mut self.inner).poll_write(cx, &TIMEOUT_RESPONSE[written..]))?;
                self.state = match n {
                    0 => State::Closed,
                    n => State::Answering(written + n),
                };
            } else {
                ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
                self.state = State::Closed;
            }
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request header timeout",
        )))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Timed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !matches!(this.state, State::Serving) {
            return this.poll_answer(cx);
        }
        let Some(timeout) = this.clock.timeout else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if this.seen < this.first.len() {
                    let n = read.len().min(this.first.len() - this.seen);
                    this.first[this.seen..this.seen + n].copy_from_slice(&read[..n]);
                    this.seen += n;
                    if this.seen == this.first.len() && this.looks_like_http2() {
                        // HTTP/2's streams are multiplexed, and a client may hold a connection
                        // with no request for long (gRPC): no header timer. The h2 crate bounds
                        // each header block by SETTINGS_MAX_HEADER_LIST_SIZE.
                        this.clock.disarm();
                        this.pending = None;
                    }
                }
                if !read.is_empty() {
                    this.refresh();
                    if this.pending.is_none() && this.clock.idle() {
                        this.pending = Some(Pending {
                            since: None,
                            heads: this.clock.heads.load(Ordering::Relaxed),
                        });
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.expired(cx, timeout) => {
                tracing::debug!(listener = %this.clock.listener, "request headers timed out; closing");
                this.clock.stats.header_timeout(&this.clock.listener);
                this.state = State::Answering(0);
                this.poll_answer(cx)
            }
            other => other,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Timed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_measured_as_envoy_measures_them() {
        let limits = HeaderLimits {
            max_bytes: 20,
            max_count: 2,
        };
        let mut headers = HeaderMap::new();
        headers.insert("a", HeaderValue::from_static("0123456789"));
        assert!(!too_large(&headers, &limits));
        headers.insert("b", HeaderValue::from_static("01234567"));
        assert!(!too_large(&headers, &limits), "20 bytes fit");
        headers.insert("b", HeaderValue::from_static("012345678"));
        assert!(too_large(&headers, &limits), "21 bytes do not");
        let mut many = HeaderMap::new();
        for name in ["x", "y", "z"] {
            many.insert(name, HeaderValue::from_static(""));
        }
        assert!(too_large(&many, &limits), "3 headers are over 2");
    }
}
