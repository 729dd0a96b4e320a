//! What the listener filters read off a connection without consuming it: the original
//! destination iptables redirected it from, and the TLS client hello (SNI, ALPN).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rustls::server::Acceptor;
use tokio::net::TcpStream;

/// The first byte of a TLS record carrying a handshake (the client hello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The most of a client hello that is waited for (several records; post-quantum key shares
/// make hellos of a few KiB).
const MAX_HELLO: usize = 64 * 1024;

/// What a TLS client hello says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
}

/// The listener filters' time ran out before the client sent enough.
#[derive(Debug)]
pub struct Timeout;

/// The destination the connection was made to before iptables redirected it (SO_ORIGINAL_DST,
/// IPv4 or IPv6); `None` when it was not redirected or the kernel does not say.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let original = if local.is_ipv4() {
        socket.original_dst_v4()
    } else {
        socket.original_dst_v6()
    };
    original.ok()?.as_socket()
}

/// The client hello, if the connection starts with one (Envoy's TLS inspector); `None` for
/// anything else, including bytes that look like TLS but do not parse. Nothing is consumed:
/// the bytes stay for the TLS handshake or for the upstream of a pass-through chain.
pub async fn client_hello(
    stream: &TcpStream,
    timeout: Option<Duration>,
) -> Result<Option<Hello>, Timeout> {
    let read = read_hello(stream);
    match timeout {
        Some(t) => tokio::time::timeout(t, read).await.map_err(|_| Timeout)?,
        None => read.await,
    }
    .or(Ok(None))
}

async fn read_hello(stream: &TcpStream) -> io::Result<Option<Hello>> {
    let mut buf = vec![0u8; 2048];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf[0] != TLS_HANDSHAKE_RECORD {
            return Ok(None);
        }
        let mut acceptor = Acceptor::default();
        let mut bytes = &buf[..n];
        while !bytes.is_empty() {
            if acceptor.read_tls(&mut bytes).is_err() {
                return Ok(None);
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                return Ok(Some(Hello {
                    sni: hello.server_name().map(str::to_string),
                    alpn: hello
                        .alpn()
                        .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
                        .unwrap_or_default(),
                }));
            }
            Ok(None) => {}
            Err(_) => return Ok(None),
        }
        // Incomplete: wait for more bytes than were there (a peek returns at once while any
        // unread bytes remain, so pace the retries).
        if n == buf.len() {
            if buf.len() >= MAX_HELLO {
                return Ok(None);
            }
            buf.resize(buf.len() * 2, 0);
        } else if n == seen {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seen = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::tests::pair;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A real client hello from rustls, with SNI and ALPN.
    fn hello_bytes(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn a_hello_is_read_without_consuming_it_even_in_pieces() {
        let (mut client, server) = pair().await;
        let bytes = hello_bytes("api.example.com", &[b"h2", b"http/1.1"]);
        let (head, tail) = bytes.split_at(10);
        client.write_all(head).await.unwrap();
        let reading = tokio::spawn(async move {
            let hello = client_hello(&server, Some(Duration::from_secs(5))).await;
            (hello, server)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(tail).await.unwrap();
        let (hello, mut server) = reading.await.unwrap();
        let hello = hello.unwrap().expect("a client hello");
        assert_eq!(hello.sni.as_deref(), Some("api.example.com"));
        assert_eq!(hello.alpn, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        // Every byte is still there for whoever reads next.
        let mut all = vec![0u8; bytes.len()];
        server.read_exact(&mut all).await.unwrap();
        assert_eq!(all, bytes);
    }

    #[tokio::test]
    async fn plaintext_is_not_tls_and_silence_times_out() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(client_hello(&server, None).await.unwrap(), None);
        let (_quiet, server) = pair().await;
        assert!(
            client_hello(&server, Some(Duration::from_millis(50)))
                .await
                .is_err()
        );
    }
}
