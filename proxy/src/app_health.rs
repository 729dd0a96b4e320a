//! The app's own probes, performed by the proxy (Istio's `/app-health`): the injector points
//! the kubelet's httpGet and tcpSocket probes at `/app-health/<container>/<kind>` on the admin
//! port and hands the originals over in `STRAIT_APP_PROBERS`; the proxy, whose traffic the
//! capture never redirects, probes the app on 127.0.0.1 and answers with the outcome as the
//! kubelet judges it: an HTTP status from 200 to 399, or a TCP connection, is 200; another
//! status is passed on; no answer in time is 503.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, header};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The variable the injector writes the probes into.
pub const ENV: &str = "STRAIT_APP_PROBERS";
/// Where they are served on the admin port.
pub const PREFIX: &str = "/app-health/";

/// The probes by admin path; empty when the pod has none.
#[derive(Clone, Debug, Default)]
pub struct AppProbers {
    probes: BTreeMap<String, Check>,
}

/// A malformed `STRAIT_APP_PROBERS`.
#[derive(Debug, thiserror::Error)]
pub enum ProbersError {
    #[error("{ENV}: not the JSON of a map from path to probe: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{ENV}: {path}: {problem}")]
    Probe { path: String, problem: String },
}

/// One probe, as the injector writes it (Kubernetes' field names).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Prober {
    http_get: Option<HttpGet>,
    tcp_socket: Option<TcpSocket>,
    timeout_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpGet {
    path: Option<String>,
    port: u16,
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<Header>,
}

#[derive(Deserialize)]
struct Header {
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct TcpSocket {
    port: u16,
}

#[derive(Clone, Debug)]
struct Check {
    port: u16,
    timeout: Duration,
    http: Option<Http>,
}

#[derive(Clone, Debug)]
struct Http {
    path_and_query: http::uri::PathAndQuery,
    tls: bool,
    headers: HeaderMap,
}

// === impl AppProbers ===

impl AppProbers {
    /// Reads the variable's value; every probe is checked here, so a bad one stops the start.
    pub fn from_json(text: &str) -> Result<AppProbers, ProbersError> {
        let raw: BTreeMap<String, Prober> = serde_json::from_str(text)?;
        let mut probes = BTreeMap::new();
        for (path, prober) in raw {
            let problem = |problem: String| ProbersError::Probe {
                path: path.clone(),
                problem,
            };
            if !path.starts_with(PREFIX) {
                return Err(problem(format!("the path must start with {PREFIX}")));
            }
            let timeout = Duration::from_secs(prober.timeout_seconds.unwrap_or(1).max(1));
            let check = match (prober.http_get, prober.tcp_socket) {
                (Some(get), None) => {
                    let tls = match get.scheme.as_deref().map(str::to_ascii_uppercase) {
                        None => false,
                        Some(s) if s == "HTTP" => false,
                        Some(s) if s == "HTTPS" => true,
                        Some(s) => {
                            return Err(problem(format!(
                                "httpGet.scheme: {s:?} is not HTTP or HTTPS"
                            )));
                        }
                    };
                    let raw_path = get.path.unwrap_or_else(|| "/".into());
                    let path_and_query = raw_path
                        .parse()
                        .map_err(|e| problem(format!("httpGet.path: {raw_path:?}: {e}")))?;
                    let mut headers = HeaderMap::new();
                    for (i, h) in get.http_headers.iter().enumerate() {
                        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| {
                            problem(format!("httpGet.httpHeaders[{i}].name: {:?}: {e}", h.name))
                        })?;
                        let value = HeaderValue::from_str(&h.value)
                            .map_err(|e| problem(format!("httpGet.httpHeaders[{i}].value: {e}")))?;
                        headers.append(name, value);
                    }
                    Check {
                        port: nonzero(get.port)
                            .map_err(|p| problem(format!("httpGet.port: {p}")))?,
                        timeout,
                        http: Some(Http {
                            path_and_query,
                            tls,
                            headers,
                        }),
                    }
                }
                (None, Some(tcp)) => Check {
                    port: nonzero(tcp.port).map_err(|p| problem(format!("tcpSocket.port: {p}")))?,
                    timeout,
                    http: None,
                },
                _ => return Err(problem("expected one of httpGet and tcpSocket".into())),
            };
            probes.insert(path, check);
        }
        Ok(AppProbers { probes })
    }

    pub fn len(&self) -> usize {
        self.probes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// Performs the probe served at `path`: the status to answer, `None` for no such probe.
    pub async fn probe(&self, path: &str) -> Option<StatusCode> {
        let check = self.probes.get(path)?;
        let outcome = tokio::time::timeout(check.timeout, check.run()).await;
        Some(match outcome {
            Ok(Ok(status)) if (200..400).contains(&status.as_u16()) => StatusCode::OK,
            Ok(Ok(status)) => status,
            Ok(Err(error)) => {
                tracing::debug!(path, %error, "app probe failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
            Err(_) => {
                tracing::debug!(path, timeout = ?check.timeout, "app probe timed out");
                StatusCode::SERVICE_UNAVAILABLE
            }
        })
    }
}

fn nonzero(port: u16) -> Result<u16, String> {
    if port == 0 {
        Err("port 0 is not a port".into())
    } else {
        Ok(port)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Check {
    async fn run(&self) -> Result<StatusCode, BoxError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let stream = TcpStream::connect(addr).await?;
        let Some(http) = &self.http else {
            return Ok(StatusCode::OK);
        };
        if http.tls {
            let connector = tokio_rustls::TlsConnector::from(crate::tls::probe_client_config());
            let server = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
            let stream = connector.connect(server, stream).await?;
            get(stream, self.port, http).await
        } else {
            get(stream, self.port, http).await
        }
    }
}

/// One GET on a fresh connection, as the kubelet sends it.
async fn get<S>(stream: S, port: u16, http: &Http) -> Result<StatusCode, BoxError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "app probe connection ended with an error");
        }
    });
    let mut request = Request::get(http.path_and_query.as_str()).body(Empty::<Bytes>::new())?;
    let headers = request.headers_mut();
    headers.insert(
        header::HOST,
        HeaderValue::from_str(&format!("127.0.0.1:{port}"))?,
    );
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static("kube-probe/strait"),
    );
    headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    // The probe's own headers win, Host among them, as with the kubelet.
    for name in http.headers.keys() {
        headers.remove(name);
    }
    for (name, value) in &http.headers {
        headers.append(name, value.clone());
    }
    Ok(sender.send_request(request).await?.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_injectors_json_is_read() {
        let probers = AppProbers::from_json(
            r#"{"/app-health/web/livez":{"httpGet":{"path":"/healthz?full=1","port":8080,"scheme":"HTTPS","httpHeaders":[{"name":"X-Probe","value":"1"}]},"timeoutSeconds":3},
                "/app-health/web/readyz":{"tcpSocket":{"port":5432}}}"#,
        )
        .unwrap();
        assert_eq!(probers.len(), 2);
        let live = &probers.probes["/app-health/web/livez"];
        assert_eq!(live.timeout, Duration::from_secs(3));
        let http = live.http.as_ref().unwrap();
        assert!(http.tls);
        assert_eq!(http.path_and_query.as_str(), "/healthz?full=1");
        assert_eq!(http.headers["x-probe"], "1");
        let ready = &probers.probes["/app-health/web/readyz"];
        assert_eq!((ready.port, ready.timeout), (5432, Duration::from_secs(1)));
        assert!(ready.http.is_none());
    }

    #[test]
    fn bad_probes_name_the_variable_path_and_field() {
        let err = |text: &str| AppProbers::from_json(text).unwrap_err().to_string();
        assert!(err("[1]").starts_with("STRAIT_APP_PROBERS: not the JSON of a map"));
        assert_eq!(
            err(r#"{"/app-health/a/livez":{"httpGet":{"port":80,"scheme":"FTP"}}}"#),
            "STRAIT_APP_PROBERS: /app-health/a/livez: httpGet.scheme: \"FTP\" is not HTTP or HTTPS"
        );
        assert_eq!(
            err(r#"{"/app-health/a/livez":{"timeoutSeconds":1}}"#),
            "STRAIT_APP_PROBERS: /app-health/a/livez: expected one of httpGet and tcpSocket"
        );
        assert_eq!(
            err(r#"{"/healthz":{"tcpSocket":{"port":80}}}"#),
            "STRAIT_APP_PROBERS: /healthz: the path must start with /app-health/"
        );
        assert_eq!(
            err(r#"{"/app-health/a/readyz":{"tcpSocket":{"port":0}}}"#),
            "STRAIT_APP_PROBERS: /app-health/a/readyz: tcpSocket.port: port 0 is not a port"
        );
        assert!(
            err(r#"{"/app-health/a/readyz":{"httpGet":{"port":80,"httpHeaders":[{"name":"bad name","value":"x"}]}}}"#)
                .contains("httpGet.httpHeaders[0].name: \"bad name\"")
        );
    }
}
