//! Opaque TCP proxying: bytes both ways, each side's end of stream passed on as a half-close, and
//! the connection closed when neither side has sent anything for the idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

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
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair of loopback TCP sockets.
    async fn pair() -> (TcpStream, TcpStream) {
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
