//! Serving HTTP on an accepted connection: one request at a time from routing to the response,
//! through RBAC, faults, CORS, redirects and direct responses; forwarding is in `forward`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;

use crate::body::{BoxError, ProxyBody, full};
use crate::config::{Action, Redirect};
use crate::runtime::{Runtime, Shared};
use crate::stats::{ClusterStats, RequestKey};
use crate::tls::PeerTls;
use crate::trace::ServerSpan;
use forward::*;
use headers::*;
use routing::RequestView;

pub mod access_log;
mod cors;
mod forward;
pub mod jwt;
pub use forward::RETRY_BUFFER_LIMIT;
mod headers;
pub mod limits;
pub mod rate_limit;
pub mod routing;

/// What the data path knows of a downstream connection.
/// What a route match and the rate limit's actions read of a request.
fn view_of<'a, B>(req: &'a Request<B>, authority: &'a str) -> RequestView<'a> {
    RequestView {
        method: req.method().as_str(),
        authority,
        scheme: "http",
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    }
}

/// The local rate limit's verdict: what the bucket that counted the request said (for the
/// response's headers), or the answer to a refused request.
fn rate_limit(
    limiter: Option<&Arc<rate_limit::Limiter>>,
    view: &RequestView<'_>,
    peer: SocketAddr,
) -> Result<Option<rate_limit::Outcome>, Response<ProxyBody>> {
    let Some(limiter) = limiter else {
        return Ok(None);
    };
    let remote = rate_limit::remote_address(view.headers, peer.ip());
    let decision = limiter.check(view, remote);
    if decision.allowed {
        Ok(decision.outcome)
    } else {
        tracing::debug!(%peer, "the local rate limit refused the request");
        Err(limiter.refusal(decision.outcome))
    }
}

/// `resp` (the router's own answer: no route, a TLS redirect) once the rate limit allows the
/// request, marked with what its bucket said.
fn limit_then(
    limiter: Option<&Arc<rate_limit::Limiter>>,
    view: &RequestView<'_>,
    peer: SocketAddr,
    mut resp: Response<ProxyBody>,
) -> Response<ProxyBody> {
    match rate_limit(limiter, view, peer) {
        Err(refused) => refused,
        Ok(counted) => {
            if let Some(limiter) = limiter {
                limiter.mark(resp.headers_mut(), counted);
            }
            resp
        }
    }
}

#[derive(Debug)]
pub struct Conn {
    pub listener: Arc<str>,
    /// The filter chain it was matched to.
    pub chain: usize,
    pub peer: SocketAddr,
    /// The connection's local address: its original destination when that was restored.
    pub local: SocketAddr,
    /// Set on TLS connections.
    pub tls: Option<PeerTls>,
    /// The peer's IP as `x-forwarded-for` names it, made once per connection.
    pub peer_ip: HeaderValue,
}

impl Conn {
    pub fn new(
        listener: Arc<str>,
        chain: usize,
        peer: SocketAddr,
        local: SocketAddr,
        tls: Option<PeerTls>,
    ) -> Conn {
        let peer_ip = HeaderValue::try_from(peer.ip().to_string())
            .expect("an IP address is a valid header value");
        Conn {
            listener,
            chain,
            peer,
            local,
            tls,
            peer_ip,
        }
    }
}

/// What a chain's HTTP connection manager limits on each connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnLimits {
    pub request_headers: crate::config::HeaderLimits,
    pub request_headers_timeout: Option<std::time::Duration>,
}

/// Serves HTTP (1.1 or 2, by what the client speaks) on an accepted connection until it ends.
pub async fn serve_http<I>(
    shared: Arc<Shared>,
    conn: Conn,
    io: I,
    limits: ConnLimits,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) -> Result<(), BoxError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let clock = limits::HeadClock::new(
        limits.request_headers_timeout,
        shared.stats.clone(),
        conn.listener.clone(),
    );
    let io = TokioIo::new(limits::Timed::new(io, clock.clone()));
    let conn = Arc::new(conn);
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let conn = conn.clone();
        let in_flight = clock.request(req.version() == http::Version::HTTP_2);
        async move {
            let resp = if limits::too_large(req.headers(), &limits.request_headers) {
                limits::too_large_response()
            } else {
                handle(&shared, &conn, req).await
            };
            Ok::<_, Infallible>(in_flight.track(resp))
        }
    });
    let connection = builder.serve_connection_with_upgrades(io, service);
    watcher.watch(connection.into_owned()).await
}

/// Envoy's answer to a request the jwt_authn filter refuses.
fn jwt_failure(failure: jwt::Failure, authority: &str, uri: &http::Uri) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(failure.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut resp = local(status, failure.message());
    let realm = format!(
        "Bearer realm=\"http://{authority}{}\", error=\"invalid_token\"",
        uri.path()
    );
    if let Ok(v) = HeaderValue::from_str(&realm) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

pub(crate) fn local(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp
}

/// What routing decided about a request, for stats and its span.
#[derive(Default)]
struct Served {
    virtual_host: Option<Arc<str>>,
    route: Option<Arc<str>>,
    cluster: Option<Arc<str>>,
    stats: Option<Arc<ClusterStats>>,
    /// The endpoint the response came from.
    upstream: Option<http::uri::Authority>,
}

/// The request's authority: from the URI (HTTP/2, absolute form) or the Host header; empty
/// if neither is there as text. A header value, so that it goes upstream without a copy.
pub(crate) fn authority_of<B>(req: &Request<B>) -> HeaderValue {
    let value = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req
            .headers()
            .get(header::HOST)
            .filter(|h| h.to_str().is_ok())
            .cloned(),
    };
    value.unwrap_or_else(|| HeaderValue::from_static(""))
}

/// `authority_of`'s value as text (it is text by construction).
pub(crate) fn text(value: &HeaderValue) -> &str {
    value.to_str().unwrap_or_default()
}

/// One request, start to finish. Loads the runtime once.
pub async fn handle(
    shared: &Shared,
    conn: &Conn,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    static NONE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    let started = Instant::now();
    let mut span = shared.tracing.as_ref().map(|t| {
        // Envoy's default operation name: host and path.
        let name = format!("{}{}", text(&authority_of(&req)), req.uri().path());
        let method = req.method().clone();
        t.start(name, method.as_str(), req.headers_mut())
    });
    let Some(runtime) = shared.runtime.load_full() else {
        return local(StatusCode::SERVICE_UNAVAILABLE, "no configuration");
    };
    let mut log = logs(&runtime, conn).then(|| Box::new(access_log::Entry::new(&req)));
    let (resp, served) = route_and_forward(&runtime, conn, req).await;
    let status = resp.status().as_u16();
    if let Some(log) = &mut log {
        let upstream = served
            .upstream
            .as_ref()
            .map(|a| access_log::UpstreamHost(a.to_string()));
        log.responded(status, resp.headers(), upstream, served.route.is_some());
    }
    let name = |n: &Option<Arc<str>>| n.clone().unwrap_or_else(|| NONE.clone());
    shared.stats.request(RequestKey {
        virtual_host: name(&served.virtual_host),
        route: name(&served.route),
        cluster: name(&served.cluster),
        code: status,
    });
    if let Some(span) = &mut span {
        if let Some(route) = &served.route {
            span.routed(route, served.cluster.as_deref());
        }
        span.responded(status);
    }
    if span.is_none() && served.stats.is_none() && log.is_none() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let body = Finished {
        inner: body,
        started,
        stats: served.stats,
        _span: span,
        log,
        sent: 0,
    };
    Response::from_parts(parts, body.boxed())
}

async fn route_and_forward(
    runtime: &Runtime,
    conn: &Conn,
    mut req: Request<Incoming>,
) -> (Response<ProxyBody>, Served) {
    let config = &runtime.config;
    let none = Served::default;
    let peer = conn.peer;
    let Some(l) = config.listeners.get(&conn.listener) else {
        return (local(StatusCode::NOT_FOUND, ""), none());
    };
    // The chain the connection was matched to, unless an update changed what it does with TLS:
    // then the connection is closed and the client reconnects to the new chains.
    let Some(http) = l
        .chains
        .get(conn.chain)
        .filter(|c| c.tls.is_some() == conn.tls.is_some())
        .and_then(|c| c.http())
    else {
        let mut resp = local(StatusCode::SERVICE_UNAVAILABLE, "listener changed");
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return (resp, none());
    };
    client_cert_details(
        req.headers_mut(),
        http.client_cert_details,
        conn.tls.as_ref(),
    );
    if conn.tls.is_some() {
        req.headers_mut()
            .entry("x-forwarded-proto")
            .or_insert(HeaderValue::from_static("https"));
    }
    let Some(rc) = config.route_config(http) else {
        return (local(StatusCode::NOT_FOUND, ""), none());
    };
    let authority_value = authority_of(&req);
    let authority = text(&authority_value);
    let host = if http.strip_any_host_port {
        routing::strip_port(authority)
    } else {
        authority
    };
    // The local rate limit runs before the router, so it counts what no route takes too.
    let limiter = http
        .rate_limit
        .as_ref()
        .and_then(|_| runtime.limiter(&conn.listener, conn.chain));
    let Some(vh) = routing::virtual_host(rc, host) else {
        let resp = local(StatusCode::NOT_FOUND, "");
        return (
            limit_then(limiter, &view_of(&req, authority), peer, resp),
            none(),
        );
    };
    let mut served = Served {
        virtual_host: Some(vh.name.clone()),
        ..Served::default()
    };
    let verified = match &http.jwt {
        None => jwt::Verified::default(),
        Some(filter) => {
            let (method, uri) = (req.method().clone(), req.uri().clone());
            match jwt::authenticate(filter, &method, &uri, req.headers_mut()) {
                Ok(v) => v,
                Err(failure) => {
                    tracing::debug!(reason = failure.message(), %peer, "jwt_authn refused the request");
                    return (jwt_failure(failure, authority, &uri), served);
                }
            }
        }
    };
    if !http.rbac.is_empty() {
        let input = crate::authz::RbacInput {
            jwt: verified.metadata.as_ref(),
            method: req.method().as_str(),
            path: req.uri().path(),
            authority,
            headers: req.headers(),
            destination_port: conn.local.port(),
            direct_remote_ip: peer.ip(),
            principal: conn.tls.as_ref().and_then(|t| t.principal.as_deref()),
        };
        let decision = crate::authz::authorize(&http.rbac, &input);
        if !decision.allowed {
            tracing::debug!(policy = ?decision.policy, %peer, "RBAC denied the request");
            return (
                local(StatusCode::FORBIDDEN, crate::authz::DENIED_BODY),
                served,
            );
        }
    }
    let upgrade = wants_websocket(req.headers());
    if upgrade && !http.websocket {
        return (local(StatusCode::FORBIDDEN, "upgrade failed"), served);
    }
    if vh.require_tls {
        let location = format!(
            "https://{authority}{}",
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        let resp = redirect_response(StatusCode::MOVED_PERMANENTLY, &location);
        return (
            limit_then(limiter, &view_of(&req, authority), peer, resp),
            served,
        );
    }
    let view = view_of(&req, authority);
    let Some(route) = routing::route(vh, &view) else {
        let resp = local(StatusCode::NOT_FOUND, "");
        return (limit_then(limiter, &view, peer, resp), served);
    };
    served.route = Some(route.name.clone());
    if let Some(fault) = &route.fault {
        let hit = |per_million: u32| fastrand::u32(..1_000_000) < per_million;
        if let Some(delay) = &fault.delay
            && hit(delay.per_million)
        {
            tokio::time::sleep(delay.fixed).await;
        }
        if let Some(abort) = &fault.abort
            && hit(abort.per_million)
        {
            let status =
                StatusCode::from_u16(abort.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (local(status, "fault filter abort"), served);
        }
    }
    // After faults, as Envoy's filters run (Istio's order: fault, CORS, router). Envoy's CORS
    // filter skips routes without a route entry: redirects and direct responses.
    let allowed = match route
        .cors
        .as_ref()
        .filter(|_| http.cors && matches!(route.action, Action::Forward(_)))
        .and_then(|policy| cors::decide(policy, req.method(), req.headers()))
    {
        Some(cors::Decision::Answer(resp)) => return (resp, served),
        Some(cors::Decision::Allow(allowed)) => Some(allowed),
        None => None,
    };
    // Last before the router, as straitd orders the filters (after authorization and CORS).
    let counted = match rate_limit(limiter, &view, peer) {
        Ok(counted) => counted,
        Err(mut resp) => {
            if let Some(allowed) = &allowed {
                allowed.mark(resp.headers_mut());
            }
            return (resp, served);
        }
    };
    let mut resp = match &route.action {
        Action::Direct { status, body } => {
            let mut resp = Response::new(full(body.as_deref().unwrap_or("").to_string()));
            *resp.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            apply_response_headers(resp.headers_mut(), &route.headers);
            resp
        }
        Action::Redirect(rd) => {
            let location = redirect_location(rd, authority, req.uri());
            let status = StatusCode::from_u16(rd.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            let mut resp = redirect_response(status, &location);
            apply_response_headers(resp.headers_mut(), &route.headers);
            resp
        }
        Action::Forward(fwd) => {
            let (cluster, extra) = choose_cluster(fwd);
            if let Some(upstream) = runtime.upstreams.get(&cluster) {
                let mut upstream_host = None;
                let downstream = Downstream {
                    authority: &authority_value,
                    local: conn.local,
                    peer,
                    peer_ip: &conn.peer_ip,
                    upstream_host: &mut upstream_host,
                };
                let resp = forward(
                    runtime, upstream, route, fwd, extra, downstream, upgrade, req,
                )
                .await;
                served.stats = Some(upstream.stats.clone());
                served.cluster = Some(cluster);
                served.upstream = upstream_host;
                resp
            } else {
                // Assembly guarantees every route's clusters exist; keep failing closed anyway.
                served.cluster = Some(cluster);
                local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
            }
        }
    };
    // Every response past the CORS filter, the proxy's own errors included, is marked (Envoy's
    // encode path), after the route's header changes.
    if let Some(allowed) = &allowed {
        allowed.mark(resp.headers_mut());
    }
    if let Some(limiter) = limiter {
        limiter.mark(resp.headers_mut(), counted);
    }
    (resp, served)
}

fn redirect_response(status: StatusCode, location: &str) -> Response<ProxyBody> {
    let mut resp = local(status, "");
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn redirect_location(rd: &Redirect, authority: &str, uri: &Uri) -> String {
    let scheme = rd.scheme.as_deref().unwrap_or("http");
    let original_host = routing::strip_port(authority);
    let host = rd.host.as_deref().unwrap_or(original_host);
    let port = match (rd.port, rd.host.is_some()) {
        (Some(p), _) => format!(":{p}"),
        // A new host drops the original port; otherwise it stays.
        (None, true) => String::new(),
        (None, false) => authority[original_host.len()..].to_string(),
    };
    let path = match &rd.path {
        Some(p) => p.to_string(),
        None => uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
    };
    format!("{scheme}://{host}{port}{path}")
}

/// The response body as sent downstream: when it is done (or dropped), the request's duration
/// is recorded and its span ends.
struct Finished {
    inner: ProxyBody,
    started: Instant,
    stats: Option<Arc<ClusterStats>>,
    _span: Option<ServerSpan>,
    /// The access log entry, written when the body is done.
    log: Option<Box<access_log::Entry>>,
    /// Body bytes sent so far.
    sent: u64,
}

impl Drop for Finished {
    fn drop(&mut self) {
        if let Some(stats) = &self.stats {
            stats.duration.observe(self.started.elapsed());
        }
        if let Some(log) = &self.log {
            log.write(self.sent);
        }
    }
}

/// Whether the chain a connection was matched to logs its requests.
fn logs(runtime: &Runtime, conn: &Conn) -> bool {
    runtime
        .config
        .listeners
        .get(&conn.listener)
        .and_then(|l| l.chains.get(conn.chain))
        .and_then(|c| c.http())
        .is_some_and(|h| h.access_log)
}

impl Body for Finished {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.sent += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_what_they_do_not_change() {
        let uri: Uri = "/a?b=1".parse().expect("valid");
        let rd = Redirect {
            scheme: None,
            host: Some("new.example".into()),
            port: None,
            path: None,
            status: 301,
        };
        assert_eq!(
            redirect_location(&rd, "old.example:8080", &uri),
            "http://new.example/a?b=1"
        );
        let rd = Redirect {
            scheme: Some("https".into()),
            host: None,
            port: None,
            path: Some("/v2".into()),
            status: 302,
        };
        assert_eq!(
            redirect_location(&rd, "old.example:8080", &uri),
            "https://old.example:8080/v2"
        );
    }
}
