//! The ADS request stream, decoded message by message from the HTTP/2 body.
//!
//! tonic's `Streaming` decodes into one buffer per stream that keeps the size of the largest
//! request it ever held; a sidecar's first EDS subscription names every cluster (tens of
//! kilobytes), so each connected proxy kept that much for its life. Here the body's chunks are
//! held only until the message they carry is complete, then decoded and dropped.

use std::collections::VecDeque;
use std::pin::Pin;

use futures::Stream;
use http_body_util::BodyExt;
use prost::Message;
use prost::bytes::{Buf, Bytes};
use tonic::Status;
use tonic::body::Body;

/// Decoded requests, as the stream task reads them.
pub(crate) type Requests<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>;

/// The largest request accepted (tonic's default limit).
const MAX_MESSAGE: usize = 4 << 20;

/// The gRPC messages of a request body.
pub(crate) fn decode<M: Message + Default + Send + 'static>(body: Body) -> Requests<M> {
    Box::pin(futures::stream::unfold(
        Some((body, Pending::default())),
        |state| async move {
            let (mut body, mut pending) = state?;
            loop {
                match pending.next_message::<M>() {
                    Ok(Some(message)) => return Some((Ok(message), Some((body, pending)))),
                    Ok(None) => {}
                    Err(status) => return Some((Err(status), None)),
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        // Trailers end nothing here; the body's end does.
                        if let Ok(data) = frame.into_data() {
                            pending.push(data);
                        }
                    }
                    Some(Err(status)) => return Some((Err(status), None)),
                    None if pending.len == 0 => return None,
                    None => {
                        let status = Status::internal("the request stream ended inside a message");
                        return Some((Err(status), None));
                    }
                }
            }
        },
    ))
}

/// Body bytes received and not yet decoded.
#[derive(Default)]
struct Pending {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Pending {
    fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.len += data.len();
            self.chunks.push_back(data);
        }
    }

    /// The next whole message, if it has arrived: a flag byte (0: not compressed), a
    /// big-endian length, the message.
    fn next_message<M: Message + Default>(&mut self) -> Result<Option<M>, Status> {
        if self.len < 5 {
            return Ok(None);
        }
        let mut header = [0u8; 5];
        self.copy_front(&mut header);
        if header[0] != 0 {
            return Err(Status::unimplemented(
                "compressed requests are not supported; send them uncompressed",
            ));
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err(Status::resource_exhausted(format!(
                "a request of {len} bytes is over the limit of {MAX_MESSAGE}"
            )));
        }
        if self.len < 5 + len {
            return Ok(None);
        }
        self.advance(5);
        let message = self.take(len);
        M::decode(message)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode the request: {e}")))
    }

    fn copy_front(&self, out: &mut [u8]) {
        let mut filled = 0;
        for chunk in &self.chunks {
            let n = chunk.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == out.len() {
                return;
            }
        }
    }

    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let front = self
                .chunks
                .front_mut()
                .expect("advance within what was received");
            if front.len() > n {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
    }

    /// The next `n` bytes: a slice of one chunk where the message sits in one, else a copy.
    fn take(&mut self, n: usize) -> Bytes {
        if self.chunks.front().is_some_and(|c| c.len() >= n) {
            self.len -= n;
            let front = self.chunks.front_mut().expect("checked");
            let message = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return message;
        }
        let mut message = Vec::with_capacity(n);
        while message.len() < n {
            let front = self
                .chunks
                .front_mut()
                .expect("take within what was received");
            let k = front.len().min(n - message.len());
            message.extend_from_slice(&front[..k]);
            front.advance(k);
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        self.len -= n;
        Bytes::from(message)
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use futures::StreamExt;
    use http_body_util::StreamBody;

    use super::*;

    fn framed(message: &impl Message) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
        message.encode(&mut out).unwrap();
        out
    }

    fn body(chunks: Vec<Vec<u8>>) -> Body {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, Status>(http_body::Frame::data(Bytes::from(c))));
        Body::new(StreamBody::new(futures::stream::iter(frames)))
    }

    fn request(i: usize) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: format!("type-{i}"),
            resource_names_subscribe: (0..50).map(|n| format!("cluster-{i}-{n}")).collect(),
            ..Default::default()
        }
    }

    /// Messages split across chunks at every offset, and several in one chunk, come out whole
    /// and in order.
    #[tokio::test]
    async fn messages_are_decoded_whatever_the_chunking() {
        let bytes: Vec<u8> = (0..3).flat_map(|i| framed(&request(i))).collect();
        for size in [1, 2, 5, 7, 64, 1000, bytes.len()] {
            let chunks = bytes.chunks(size).map(<[u8]>::to_vec).collect();
            let decoded: Vec<_> = decode::<DeltaDiscoveryRequest>(body(chunks))
                .collect::<Vec<_>>()
                .await;
            let decoded: Vec<_> = decoded.into_iter().map(Result::unwrap).collect();
            assert_eq!(
                decoded,
                (0..3).map(request).collect::<Vec<_>>(),
                "chunks of {size}"
            );
        }
    }

    #[tokio::test]
    async fn a_truncated_compressed_or_oversized_message_is_an_error() {
        let mut whole = framed(&request(0));
        whole.truncate(whole.len() - 1);
        let out: Vec<_> = decode::<DeltaDiscoveryRequest>(body(vec![whole]))
            .collect()
            .await;
        assert_eq!(out.len(), 1);
        assert!(
            out[0]
                .as_ref()
                .unwrap_err()
                .message()
                .contains("ended inside")
        );

        let mut compressed = framed(&request(0));
        compressed[0] = 1;
        let out: Vec<_> = decode::<DeltaDiscoveryRequest>(body(vec![compressed]))
            .collect()
            .await;
        assert_eq!(
            out[0].as_ref().unwrap_err().code(),
            tonic::Code::Unimplemented
        );

        let mut huge = vec![0];
        huge.extend_from_slice(&(MAX_MESSAGE as u32 + 1).to_be_bytes());
        let out: Vec<_> = decode::<DeltaDiscoveryRequest>(body(vec![huge]))
            .collect()
            .await;
        assert_eq!(
            out[0].as_ref().unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
    }
}
