//! HTTP clients for tests: an async HTTP/1.1 client for traffic, blocking calls for admin APIs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one request may take unless the test says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to send to some address, with the `Host` it claims to be for.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: Method,
    /// The `Host` header; empty means the address itself.
    pub host: String,
    /// Path and query, starting with `/`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub timeout: Duration,
}

impl Req {
    pub fn new(method: Method, host: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            method,
            host: host.into(),
            path: path.into(),
            headers: Vec::new(),
            body: String::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn get(host: impl Into<String>, path: impl Into<String>) -> Self {
        Self::new(Method::GET, host, path)
    }

    pub fn post(host: impl Into<String>, path: impl Into<String>, body: impl Into<String>) -> Self {
        Self::new(Method::POST, host, path).body(body)
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Asks a harness backend to answer with what it received (see `backend`).
    pub fn echo(self) -> Self {
        self.header(crate::backend::ECHO_HEADER, "1")
    }

    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
}

impl Resp {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (e.g. a backend's echo).
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("response body is not JSON: {:?}", self.body))
    }

    /// The key [`send_many`] tallies this response under: the body for a 200, else
    /// `"STATUS BODY"`, so errors never pass for a backend's name.
    pub fn tally_key(&self) -> String {
        if self.status == 200 {
            self.body.clone()
        } else {
            format!("{} {}", self.status, self.body.trim())
        }
    }
}

/// A client that keeps connections alive between requests, as a real caller would.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A client that opens a new connection for every request.
    pub fn without_pooling() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
        }
    }

    pub async fn request(&self, addr: SocketAddr, req: &Req) -> anyhow::Result<Resp> {
        anyhow::ensure!(
            req.path.starts_with('/'),
            "path must start with '/': {:?}",
            req.path
        );
        let host = if req.host.is_empty() {
            addr.to_string()
        } else {
            req.host.clone()
        };
        let mut builder = http::Request::builder()
            .method(req.method.clone())
            .uri(format!("http://{addr}{}", req.path))
            // Set explicitly: the client would otherwise derive it from the address.
            .header(http::header::HOST, host);
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(req.body.clone())))
            .with_context(|| format!("building request {req:?}"))?;
        let what = format!(
            "{} http://{addr}{} (Host: {})",
            req.method, req.path, req.host
        );
        let start = Instant::now();
        let exchange = async {
            let resp = self.inner.request(request).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok((parts, body))
        };
        let (parts, body) = tokio::time::timeout(req.timeout, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("{what}: no response within {:?}", req.timeout))?
            .with_context(|| what.clone())?;
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            elapsed: start.elapsed(),
        })
    }
}

/// One HTTP/1.1 request over TLS to `addr`, sending `sni` and trusting only `roots_pem`.
/// Returns the response and the server certificate's DER, so a test can tell which
/// certificate the server chose.
pub async fn https_request(
    addr: SocketAddr,
    sni: &str,
    roots_pem: &str,
    req: &Req,
) -> anyhow::Result<(Resp, Vec<u8>)> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(cert.context("a root certificate")?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from(sni.to_string())?;
    let start = Instant::now();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let tls = connector
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        let server_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut builder = http::Request::builder()
            .method(req.method.clone())
            .uri(req.path.as_str())
            .header(http::header::HOST, req.host.as_str());
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let resp = sender
            .send_request(builder.body(Full::new(Bytes::from(req.body.clone())))?)
            .await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        anyhow::Ok((parts, body, server_cert))
    };
    let (parts, body, server_cert) = tokio::time::timeout(req.timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("https://{sni} via {addr}: no response in time"))??;
    Ok((
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            elapsed: start.elapsed(),
        },
        server_cert,
    ))
}

/// One request on a fresh connection.
pub async fn request(addr: SocketAddr, req: Req) -> anyhow::Result<Resp> {
    HttpClient::without_pooling().request(addr, &req).await
}

/// Sends `req` `n` times, one after another, and counts answers by [`Resp::tally_key`]
/// (backend names, for a harness backend); failed exchanges count as `"error: ..."`.
pub async fn send_many(n: usize, addr: SocketAddr, req: &Req) -> BTreeMap<String, usize> {
    let client = HttpClient::new();
    let mut tally = BTreeMap::new();
    for _ in 0..n {
        let key = match client.request(addr, req).await {
            Ok(resp) => resp.tally_key(),
            Err(e) => format!("error: {e:#}"),
        };
        *tally.entry(key).or_insert(0) += 1;
    }
    tally
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        // Tests assert on statuses; a 503 is an answer, not an error.
        .http_status_as_error(false)
        // Only loopback is ever a target: never route through an environment proxy.
        .proxy(None)
        .timeout_global(Some(DEFAULT_TIMEOUT))
        .build()
        .into()
}

/// Admin bodies (config dumps) can be large.
const BODY_LIMIT: u64 = 256 * 1024 * 1024;

/// A blocking GET, for admin APIs: `(status, body)`.
pub fn get_blocking(url: &str) -> anyhow::Result<(u16, String)> {
    let mut resp = agent()
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(BODY_LIMIT)
        .read_to_string()
        .with_context(|| format!("reading the body of GET {url}"))?;
    Ok((status, body))
}

/// A blocking POST, for admin APIs: `(status, body)`.
pub fn post_blocking(url: &str, content_type: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut resp = agent()
        .post(url)
        .header("content-type", content_type)
        .send(body)
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(BODY_LIMIT)
        .read_to_string()
        .with_context(|| format!("reading the body of POST {url}"))?;
    Ok((status, body))
}
