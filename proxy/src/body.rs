//! The body type that requests and responses carry through the proxy.

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Bytes;

/// Errors of streamed bodies: the peer's, or the route timeout cutting a response short.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}
