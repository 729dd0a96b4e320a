//! The ADS gRPC service, with Strait's own response framing.
//!
//! Requests are decoded message by message (`requests.rs`). Each response is encoded, by the
//! stream task, into a buffer of exactly its size behind a gRPC frame header (a flag byte
//! and a length; [`frame`]) and handed to HTTP/2 as one `Bytes`, freed once written.
//! tonic's own encoder keeps one buffer per stream at the size of the largest response the
//! stream ever sent: with a half-megabyte CDS, that was most of straitd's memory per
//! connected proxy.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Frame;
use http_body_util::StreamBody;
use prost::Message;
use prost::bytes::Bytes;
use tokio_stream::StreamExt;
use tonic::Status;
use tonic::body::Body;
use tonic::metadata::MetadataMap;

use super::delta::Delta;
use super::sotw::Sotw;
use super::{AdsServer, Protocol};

const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// What `tonic::transport::Server::add_service` takes: both ADS methods of one server.
#[derive(Clone)]
pub struct AdsService {
    server: AdsServer,
}

impl AdsService {
    pub(super) fn new(server: AdsServer) -> Self {
        Self { server }
    }
}

impl tonic::server::NamedService for AdsService {
    const NAME: &'static str = SERVICE;
}

impl tower_service::Service<http::Request<Body>> for AdsService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move {
            Ok(match request.uri().path() {
                SOTW_PATH => respond::<Sotw>(server, request).await,
                DELTA_PATH => respond::<Delta>(server, request).await,
                other => Status::unimplemented(format!("no method {other}")).into_http(),
            })
        })
    }
}

/// Decodes the request stream, starts the ADS stream, and frames its responses.
async fn respond<P: Protocol>(
    server: AdsServer,
    request: http::Request<Body>,
) -> http::Response<Body>
where
    P::Request: Message + Default,
{
    let (parts, body) = request.into_parts();
    let requests = super::requests::decode::<P::Request>(body);
    let request = tonic::Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        requests,
    );
    let responses = match server.start::<P>(request).await {
        Ok(responses) => responses,
        Err(status) => return status.into_http(),
    };
    // Data frames until the stream ends, then the trailers with its status: the stream's
    // own error if it ended with one, else OK.
    let mut ended = false;
    let frames = responses
        .chain(tokio_stream::iter([Err(Status::ok(""))]))
        .map_while(move |item| {
            (!ended).then(|| match item {
                Ok(framed) => Frame::data(framed),
                Err(status) => {
                    ended = true;
                    trailers(&status)
                }
            })
        })
        .map(Ok::<_, Status>);
    let mut response = http::Response::new(Body::new(StreamBody::new(frames)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// One gRPC message: no compression, its length, its bytes, in one buffer of exactly that size.
pub(super) fn frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    message.encode_raw(&mut buf);
    Bytes::from(buf)
}

fn trailers(status: &Status) -> Frame<Bytes> {
    let mut headers = http::HeaderMap::new();
    if let Err(error) = status.add_header(&mut headers) {
        tracing::warn!(%error, "cannot write a stream's status into its trailers");
    }
    Frame::trailers(headers)
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3 as envoy;

    use super::*;
    use crate::wire::DeltaDiscoveryResponse;

    /// A gRPC frame of exactly the message's size: an uncompressed flag, the big-endian
    /// length, then a message Envoy's types decode.
    #[test]
    fn a_frame_is_the_flag_the_length_and_the_message() {
        let response = DeltaDiscoveryResponse {
            system_version_info: "v1".into(),
            type_url: "t".into(),
            nonce: "7".into(),
            ..Default::default()
        };
        let framed = frame(&response);
        let len = response.encoded_len();
        assert_eq!(framed.len(), 5 + len);
        assert_eq!(framed[0], 0, "not compressed");
        assert_eq!(framed[1..5], u32::try_from(len).unwrap().to_be_bytes());
        let decoded = envoy::DeltaDiscoveryResponse::decode(&framed[5..]).unwrap();
        assert_eq!(
            (decoded.system_version_info.as_str(), decoded.nonce.as_str()),
            ("v1", "7")
        );
    }
}
