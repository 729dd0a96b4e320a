//! Forwarding a routed request upstream: cluster choice, breakers, retries with buffered bodies,
//! mirrors, timeouts, and the response body that holds its connection until it ends.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper_util::rt::TokioIo;

use super::headers::*;
use crate::body::{BoxError, ProxyBody, empty, full};
use crate::config::{ClusterChoice, Forward, HeaderChanges, RetryPolicy, Route};
use crate::http::{local, text};
use crate::runtime::{Runtime, Upstream};
use crate::upstream::balance::{Balancer, Outcome, Pick};
use crate::upstream::breaker::{ConnectionSlot, RequestSlot};
use crate::upstream::pool::{Lease, SendError};

/// The cluster for this request and, for a weighted choice, that entry's header changes.
pub(super) fn choose_cluster(fwd: &Forward) -> (Arc<str>, Option<&HeaderChanges>) {
    match &fwd.clusters {
        ClusterChoice::Single(name) => (name.clone(), None),
        ClusterChoice::Weighted { clusters, total } => {
            let mut n = fastrand::u32(..*total);
            for c in clusters.iter() {
                if n < c.weight {
                    return (c.name.clone(), Some(&c.headers));
                }
                n -= c.weight;
            }
            // Unreachable: total is the sum of the weights.
            let last = clusters.last().expect("a weighted choice has clusters");
            (last.name.clone(), Some(&last.headers))
        }
    }
}

/// How one attempt ended.
pub(super) enum Attempt {
    Response(Response<Incoming>, Option<Pick>, ConnectionSlot, Lease),
    /// The per-try timeout fired.
    TimedOut,
    ConnectFailed(SendError),
    Reset(SendError),
}

/// Whether `retry` says to try again after `attempt`.
pub(super) fn retriable(retry: &RetryPolicy, attempt: &Attempt) -> bool {
    let on = &retry.retry_on;
    match attempt {
        Attempt::TimedOut => on.server_error || on.gateway_error,
        Attempt::ConnectFailed(_) => on.server_error || on.gateway_error || on.connect_failure,
        Attempt::Reset(_) => on.server_error || on.gateway_error || on.reset,
        Attempt::Response(resp, ..) => {
            let status = resp.status().as_u16();
            (on.server_error && status >= 500)
                || (on.gateway_error && matches!(status, 502..=504))
                || (on.retriable_4xx && status == 409)
                || (on.retriable_status_codes && retry.retriable_status_codes.contains(&status))
                || grpc_retriable(&on.grpc, resp.headers())
        }
    }
}

pub(super) fn grpc_retriable(on: &crate::config::GrpcRetryOn, headers: &HeaderMap) -> bool {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
    else {
        return false;
    };
    match code {
        1 => on.cancelled,
        4 => on.deadline_exceeded,
        8 => on.resource_exhausted,
        13 => on.internal,
        14 => on.unavailable,
        _ => false,
    }
}

/// Where a request to an original-destination cluster goes: the `x-envoy-original-dst-host`
/// it names (when the cluster says to read it), else its connection's original destination.
pub(super) fn original_destination<B>(
    use_http_header: bool,
    req: &Request<B>,
    local: SocketAddr,
) -> Option<SocketAddr> {
    if !use_http_header {
        return Some(local);
    }
    req.headers()
        .get("x-envoy-original-dst-host")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// An endpoint for the next attempt: with `other_host`, one not tried yet when there is one.
pub(super) fn pick_for_attempt(
    balancer: &Arc<Balancer>,
    hash: Option<u64>,
    retry: Option<&RetryPolicy>,
    tried: &[(Arc<str>, u16)],
) -> Option<Pick> {
    let tries = match retry {
        Some(r) if r.other_host && !tried.is_empty() => r.host_selection_attempts.max(1),
        _ => 1,
    };
    let mut pick = balancer.pick(hash)?;
    for _ in 1..tries {
        let e = pick.endpoint();
        if !tried.iter().any(|(h, p)| *h == e.host && *p == e.port) {
            break;
        }
        // Another host: the hash would only find the same one again.
        pick = balancer.pick(None)?;
    }
    Some(pick)
}

/// Envoy's default per-connection buffer limit (1 MiB): a request body up to this size is held
/// for retries and mirrors; a larger one streams once, with neither (Envoy's
/// `retry_or_shadow_abandoned`).
pub const RETRY_BUFFER_LIMIT: usize = 1 << 20;

/// A request body held in memory, sent again for each attempt and mirror.
#[derive(Clone, Debug, Default)]
pub(super) struct Buffered {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Buffered {
    fn body(&self) -> ProxyBody {
        match &self.trailers {
            None if self.data.is_empty() => empty(),
            None => full(self.data.clone()),
            Some(trailers) => {
                let frames = [
                    Ok(Frame::data(self.data.clone())),
                    Ok(Frame::trailers(trailers.clone())),
                ];
                http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed()
            }
        }
    }
}

/// The request body as the attempts see it.
pub(super) enum RequestBody {
    /// Empty, or buffered whole: every attempt and mirror gets a copy.
    Replay(Buffered),
    /// Streamed: one attempt only.
    Once(Option<ProxyBody>),
}

impl RequestBody {
    /// Reads `body` into memory if it ends within `limit` bytes; otherwise what was read, then
    /// the rest, streamed once.
    async fn buffer(mut body: Incoming, limit: usize) -> Result<RequestBody, hyper::Error> {
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut size = 0;
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = match frame?.into_data() {
                Ok(data) => {
                    size += data.len();
                    chunks.push(data);
                    if size > limit {
                        let read = chunks.into_iter().map(|c| Ok(Frame::data(c)));
                        let rest = http_body_util::BodyStream::new(body.map_err(BoxError::from));
                        let stream = futures::StreamExt::chain(futures::stream::iter(read), rest);
                        let once = http_body_util::StreamBody::new(stream).boxed();
                        return Ok(RequestBody::Once(Some(once)));
                    }
                    continue;
                }
                Err(frame) => frame,
            };
            if let Ok(t) = frame.into_trailers() {
                trailers = Some(t);
            }
        }
        let data = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => chunks.concat().into(),
        };
        Ok(RequestBody::Replay(Buffered { data, trailers }))
    }

    /// The body for the next attempt.
    fn take(&mut self) -> ProxyBody {
        match self {
            RequestBody::Replay(b) => b.body(),
            RequestBody::Once(b) => b.take().unwrap_or_else(empty),
        }
    }
}

/// Envoy's answer when a circuit breaker turns a request away.
pub(super) fn overflow() -> Response<ProxyBody> {
    let mut resp = local(StatusCode::SERVICE_UNAVAILABLE, "upstream overflow");
    resp.headers_mut()
        .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    resp
}

/// Who sent a request, and for which authority, as `forward` passes it on.
pub(super) struct Downstream<'a> {
    /// As `authority_of` found it.
    pub(super) authority: &'a HeaderValue,
    /// The connection's local address (its original destination, when restored).
    pub(super) local: SocketAddr,
    pub(super) peer: SocketAddr,
    pub(super) peer_ip: &'a HeaderValue,
    /// Set to the endpoint the last attempt went to (for the access log).
    pub(super) upstream_host: &'a mut Option<http::uri::Authority>,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    runtime: &Runtime,
    upstream: &Upstream,
    route: &Route,
    fwd: &Forward,
    extra: Option<&HeaderChanges>,
    downstream: Downstream<'_>,
    upgrade: bool,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Downstream {
        authority,
        local: local_addr,
        peer,
        peer_ip,
        upstream_host,
    } = downstream;
    let original_dst = match &upstream.cluster.discovery {
        crate::config::Discovery::OriginalDst { use_http_header } => {
            match original_destination(*use_http_header, &req, local_addr) {
                Some(d) => Some(d),
                None => return local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
            }
        }
        _ => None,
    };
    let cluster = &upstream.cluster.name;
    let stats = &upstream.stats;
    let Ok(request_slot) = upstream.breaker.request(stats) else {
        return overflow();
    };
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let hash = request_hash(&fwd.hash_policy, &parts.headers, parts.uri.query(), peer);
    let copies_wanted = !upgrade && (fwd.retry.is_some() || !fwd.mirrors.is_empty());
    let mut body = if body.is_end_stream() {
        RequestBody::Replay(Buffered::default())
    } else if copies_wanted {
        match RequestBody::buffer(body, RETRY_BUFFER_LIMIT).await {
            Ok(body) => body,
            Err(error) => {
                tracing::debug!(%error, "reading the request body failed");
                return local(StatusCode::BAD_REQUEST, "");
            }
        }
    } else {
        RequestBody::Once(Some(body.map_err(BoxError::from).boxed()))
    };
    // As Envoy's, the route timeout starts once the request has been read (here: buffered).
    let deadline = fwd.timeout.map(|t| tokio::time::Instant::now() + t);
    let replayable = matches!(body, RequestBody::Replay(_));
    if copies_wanted && !replayable {
        stats
            .retry_or_shadow_abandoned
            .fetch_add(1, Ordering::Relaxed);
    }
    let retry = fwd.retry.as_ref().filter(|_| replayable && !upgrade);
    let Some(path_and_query) = rewrite_path(route, fwd, &parts.uri) else {
        tracing::warn!("cannot build upstream uri: invalid path");
        return local(StatusCode::BAD_REQUEST, "");
    };
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let host = fwd.host_rewrite.as_deref().unwrap_or(text(authority));
    let host_value = match fwd.host_rewrite.as_deref() {
        Some(rewrite) => HeaderValue::from_str(rewrite).ok(),
        None => Some(authority.clone()),
    };
    if let Some(v) = host_value {
        headers.insert(header::HOST, v);
    }
    append_forwarded_for(headers, peer_ip);
    headers
        .entry("x-forwarded-proto")
        .or_insert(HeaderValue::from_static("http"));
    apply_request_headers(headers, &route.headers);
    if let Some(extra) = extra {
        apply_request_headers(headers, extra);
    }
    if let Some(timeout) = fwd.timeout
        && let Ok(v) = HeaderValue::from_str(&timeout.as_millis().to_string())
    {
        headers.insert("x-envoy-expected-rq-timeout-ms", v);
    }
    if let RequestBody::Replay(buffered) = &body {
        for m in fwd.mirrors.iter() {
            if fastrand::u32(..1_000_000) < m.per_million
                && let Some(target) = runtime.upstreams.get(&m.cluster)
            {
                mirror(
                    target.clone(),
                    &parts,
                    path_and_query.clone(),
                    host,
                    fwd.timeout,
                    buffered,
                );
            }
        }
    }
    let attempts = 1 + retry.map_or(0, |r| r.num_retries);
    let mut tried: Vec<(Arc<str>, u16)> = Vec::new();
    let mut outcome = None;
    // The retry in progress, counted against max_retries until its attempt has ended.
    let mut retrying = None;
    for n in 0..attempts {
        let pick = match original_dst {
            // The cluster provides the host: no balancing, no outlier detection.
            Some(_) => None,
            None => match pick_for_attempt(&upstream.balancer, hash, retry, &tried) {
                Some(pick) => Some(pick),
                None => {
                    stats.none_healthy.fetch_add(1, Ordering::Relaxed);
                    return local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
                }
            },
        };
        // A pending request waits for a connection at most until the route timeout.
        let connection = match deadline {
            Some(at) => tokio::time::timeout_at(at, upstream.breaker.connection(stats)).await,
            None => Ok(upstream.breaker.connection(stats).await),
        };
        let connection = match connection {
            Err(_) => return local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
            Ok(Err(_)) => return overflow(),
            Ok(Ok(slot)) => slot,
        };
        if let Err(reason) = &upstream.pool {
            tracing::debug!(cluster = %cluster, %reason, "no connection pool");
            return local(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream TLS is not available",
            );
        }
        let connections = match (&pick, original_dst) {
            (Some(pick), _) => {
                let endpoint = pick.endpoint();
                if retry.is_some_and(|r| r.other_host) {
                    tried.push((endpoint.host.clone(), endpoint.port));
                }
                let Some(connections) = upstream.endpoint(pick.index()) else {
                    tracing::warn!(host = %endpoint.host, port = endpoint.port, "cannot build upstream uri");
                    return local(StatusCode::BAD_REQUEST, "");
                };
                connections.clone()
            }
            (None, Some(destination)) => match upstream.original_dst_endpoint(destination) {
                Some(c) => c,
                None => return local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
            },
            (None, None) => unreachable!("a pick unless the cluster provides the host"),
        };
        let mut attempt_req = Request::new(body.take());
        *attempt_req.method_mut() = parts.method.clone();
        *attempt_req.uri_mut() = connections.uri(path_and_query.clone());
        *upstream_host = connections.authority().cloned();
        // The last attempt takes the headers; earlier ones copy them.
        *attempt_req.headers_mut() = if n + 1 < attempts {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        *attempt_req.version_mut() = if upstream.cluster.http2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        let call = connections.send(attempt_req);
        let now = tokio::time::Instant::now();
        let per_try = retry.and_then(|r| r.per_try_timeout).map(|t| now + t);
        let limit = match (per_try, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let result = match limit {
            Some(at) => tokio::time::timeout_at(at, call).await,
            None => Ok(call.await),
        };
        let ejected = pick.as_ref().is_some_and(|pick| {
            pick.report(match &result {
                Ok(Ok((resp, _))) => Outcome::Status(resp.status().as_u16()),
                _ => Outcome::LocalFailure,
            })
        });
        if ejected {
            stats.ejections.fetch_add(1, Ordering::Relaxed);
        }
        let attempt = match result {
            Err(_) if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) => {
                return local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
            }
            Err(_) => Attempt::TimedOut,
            Ok(Ok((resp, lease))) => Attempt::Response(resp, pick, connection, lease),
            Ok(Err(error @ SendError::Connect(_))) => Attempt::ConnectFailed(error),
            Ok(Err(error)) => Attempt::Reset(error),
        };
        retrying = None;
        let again = n + 1 < attempts && retry.is_some_and(|r| retriable(r, &attempt));
        if !again {
            outcome = Some(attempt);
            break;
        }
        let Some(slot) = upstream.breaker.retry(stats) else {
            tracing::debug!(cluster = %cluster, "max_retries reached: not retrying");
            outcome = Some(attempt);
            break;
        };
        retrying = Some(slot);
        stats.retries.fetch_add(1, Ordering::Relaxed);
        // The failed attempt's connection is free for others during the back-off.
        drop(attempt);
        tracing::debug!(cluster = %cluster, attempt = n + 1, "retrying");
        // Envoy's default back-off: 25ms base, jittered, doubling.
        let backoff = Duration::from_millis(25 * (1 << n.min(3))).mul_f64(fastrand::f64());
        if deadline.is_some_and(|d| tokio::time::Instant::now() + backoff >= d) {
            return local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
        }
        tokio::time::sleep(backoff).await;
    }
    drop(retrying);
    let (mut resp, pick, connection, lease) = match outcome {
        Some(Attempt::Response(resp, pick, connection, lease)) => (resp, pick, connection, lease),
        Some(Attempt::TimedOut) => {
            return local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
        }
        Some(Attempt::ConnectFailed(error) | Attempt::Reset(error)) => {
            tracing::debug!(cluster = %cluster, %error, "upstream request failed");
            return local(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers",
            );
        }
        None => return local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
    };
    if let Some(downstream) = downstream_upgrade
        && resp.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let upstream_io = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream_io) else {
                tracing::debug!("websocket upgrade did not complete");
                return;
            };
            let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
            if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                tracing::debug!(%error, "websocket tunnel ended with an error");
            }
            // In flight until the tunnel closes; the connection is the tunnel's now.
            drop((pick, request_slot, connection, lease));
        });
        let (mut parts, _) = resp.into_parts();
        apply_response_headers(&mut parts.headers, &route.headers);
        return Response::from_parts(parts, empty());
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    apply_response_headers(&mut parts.headers, &route.headers);
    if let Some(extra) = extra {
        apply_response_headers(&mut parts.headers, extra);
    }
    // The route timeout covers the whole response, as Envoy's does.
    let body = Guarded {
        inner: body,
        deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        lease: Some(lease),
        _held: (pick, request_slot, connection),
    };
    Response::from_parts(parts, body.boxed())
}

/// Sends a copy of a request (its body buffered) to `target`, with `-shadow` added to the host
/// (as Envoy does), and ignores the answer. The copy is subject to the target's breakers.
pub(super) fn mirror(
    target: Arc<Upstream>,
    parts: &http::request::Parts,
    path_and_query: PathAndQuery,
    host: &str,
    timeout: Option<Duration>,
    body: &Buffered,
) {
    let Some(pick) = target.balancer.pick(None) else {
        return;
    };
    let shadow = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => format!("{h}-shadow:{port}"),
        _ => format!("{host}-shadow"),
    };
    let Some(endpoint) = target.endpoint(pick.index()).cloned() else {
        return;
    };
    let mut req = Request::new(body.body());
    if target.cluster.http2 {
        *req.version_mut() = http::Version::HTTP_2;
    }
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = endpoint.uri(path_and_query);
    *req.headers_mut() = parts.headers.clone();
    if let Ok(v) = HeaderValue::from_str(&shadow) {
        req.headers_mut().insert(header::HOST, v);
    }
    let limit = timeout.unwrap_or(Duration::from_secs(15));
    tokio::spawn(async move {
        let Ok(_request) = target.breaker.request(&target.stats) else {
            return;
        };
        let result = tokio::time::timeout(limit, async {
            let Ok(_connection) = target.breaker.connection(&target.stats).await else {
                return Ok(());
            };
            let (resp, lease) = endpoint.send(req).await?;
            // Read the answer so the connection can be reused.
            if resp.into_body().collect().await.is_ok() {
                lease.release();
            }
            Ok::<_, SendError>(())
        })
        .await;
        if let Ok(Err(error)) = result {
            tracing::debug!(cluster = %target.cluster.name, %error, "mirrored request failed");
        }
        drop(pick);
    });
}

/// The request's hash for consistent-hash clusters: each policy that finds its key adds to it.
pub(super) fn request_hash(
    policies: &[crate::config::HashPolicy],
    headers: &HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
) -> Option<u64> {
    use crate::config::HashKey;
    let mut hash: Option<u64> = None;
    for p in policies {
        let value: Option<String> = match &p.key {
            HashKey::Header(name) => {
                let values: Vec<&str> = headers
                    .get_all(&**name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                (!values.is_empty()).then(|| values.join(","))
            }
            HashKey::Cookie(name) => headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == &**name).then(|| v.to_string())
                }),
            HashKey::SourceIp => Some(peer.ip().to_string()),
            HashKey::QueryParameter(name) => query.and_then(|q| {
                q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == &**name).then(|| v.to_string())
                })
            }),
        };
        if let Some(v) = value {
            let h = crate::upstream::balance::hash_of(v.as_str());
            hash = Some(hash.map_or(h, |acc| acc.rotate_left(1) ^ h));
            if p.terminal {
                break;
            }
        }
    }
    hash
}

/// The path to send upstream: the route's prefix rewrite applied to the matched part; `None`
/// if that makes no valid path.
pub(super) fn rewrite_path(route: &Route, fwd: &Forward, uri: &Uri) -> Option<PathAndQuery> {
    let path = uri.path();
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let rewritten = if let Some(rw) = &fwd.regex_rewrite {
        let path = rw.pattern.regex.replace_all(path, &*rw.substitution);
        format!("{path}{query}")
    } else if let Some(rewrite) = &fwd.prefix_rewrite {
        let matched = match &route.matcher.path {
            crate::config::PathMatch::Prefix(p) => p.len(),
            crate::config::PathMatch::Exact(p) => p.len(),
            crate::config::PathMatch::Regex(_) => 0,
        };
        let rest = path.get(matched.min(path.len())..).unwrap_or("");
        format!("{rewrite}{rest}{query}")
    } else if let Some(pq) = uri.path_and_query() {
        // Unchanged: as sent.
        return Some(pq.clone());
    } else {
        format!("{path}{query}")
    };
    PathAndQuery::try_from(rewritten).ok()
}

/// An upstream response body that keeps its endpoint, request and connection counted as busy
/// until it is done, and is cut off (the stream reset) if the route timeout passes before it
/// ends. Read to its end, it hands its connection back to the pool.
pub(super) struct Guarded {
    inner: Incoming,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    lease: Option<Lease>,
    _held: (Option<Pick>, RequestSlot, ConnectionSlot),
}

impl Guarded {
    fn release_if_done(&mut self) {
        if self.inner.is_end_stream()
            && let Some(lease) = self.lease.take()
        {
            lease.release();
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // A body with nothing to read is never polled.
        self.release_if_done();
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream response not complete within the route timeout")]
pub(super) struct ResponseTimeout;

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            match &frame {
                Some(Ok(_)) => self.release_if_done(),
                None => self.release_if_done(),
                Some(Err(_)) => {}
            }
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            self.deadline = None;
            return Poll::Ready(Some(Err(Box::new(ResponseTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
