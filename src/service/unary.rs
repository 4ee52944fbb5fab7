//! The gRPC framing of one unary call, for the Verify route: the request
//! message read straight from the HTTP/2 body (no copy when it came in one
//! DATA frame, as a Verify request does) and the answer sent as one framed
//! message and a `grpc-status: 0` trailer.
//!
//! It does what `tonic::server::Grpc::unary` does for an uncompressed
//! unary call, with the same limits and statuses, without its generic
//! streaming decoder and encoder (two 8 KiB buffers, a boxed stream and
//! their state machines per call). Measured: README, Performance.
//!
//! Where it is stricter than tonic: a second request message in the body
//! is refused ([`MORE_THAN_ONE_MESSAGE`]) instead of decoded and dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::{Code, Status};

/// The length of a gRPC message's prefix: a compressed flag and a
/// big-endian `u32` length.
pub const PREFIX_LEN: usize = 5;

/// The prefix of a message of `len` bytes: not compressed, then the length.
pub fn message_prefix(len: u32) -> [u8; PREFIX_LEN] {
    let mut prefix = [0; PREFIX_LEN];
    prefix[1..].copy_from_slice(&len.to_be_bytes());
    prefix
}

/// The status message of a body that ended before its first message began
/// (tonic's words).
pub const MISSING_MESSAGE: &str = "Missing request message.";
/// The status message of a body that ended inside a message (tonic's words).
pub const UNEXPECTED_EOF: &str = "Unexpected EOF decoding stream.";
/// The status message of a unary call whose body holds more than one message.
pub const MORE_THAN_ONE_MESSAGE: &str = "protocol error: a unary call carries one request message; this one had more";

/// Reads the one message of a unary request body, without its prefix.
///
/// `headers` are the request's: a `grpc-encoding` other than `identity` is
/// refused as tonic refuses it (no compression is enabled). A message
/// longer than `max` bytes is refused from its prefix, before its bytes
/// are read.
pub async fn read_message<B>(headers: &HeaderMap, body: B, max: usize) -> Result<Bytes, Status>
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    refuse_compression(headers)?;
    let mut body = std::pin::pin!(body);
    let mut message = Message::default();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                // Request trailers carry nothing Verify reads.
                if let Ok(data) = frame.into_data() {
                    message.push(data, max)?;
                }
            }
            // A client that went away: the message is whatever arrived.
            Err(e) => match Status::from_error(e.into()) {
                s if s.code() == Code::Cancelled => break,
                s => return Err(s),
            },
        }
    }
    message.finish()
}

/// Turns a decode failure of the message into tonic's status for it.
pub fn decode_error(e: prost::DecodeError) -> Status {
    Status::internal(e.to_string())
}

/// The answer of a unary call: `message` (encoded by `encode`, which gets
/// a buffer with room for about `size_hint` bytes) then `grpc-status: 0`.
pub fn ok_response(size_hint: usize, encode: impl FnOnce(&mut BytesMut)) -> http::Response<Body> {
    let mut framed = BytesMut::with_capacity(PREFIX_LEN + size_hint);
    framed.put_bytes(0, PREFIX_LEN);
    encode(&mut framed);
    // Answers are a few hundred bytes (tokens are at most 16 KiB); never a panic.
    let Ok(len) = u32::try_from(framed.len() - PREFIX_LEN) else {
        return Status::internal("the answer is too large to send").into_http();
    };
    framed[..PREFIX_LEN].copy_from_slice(&message_prefix(len));
    let mut response = http::Response::new(Body::new(OneMessage { message: Some(framed.freeze()), ended: false }));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// tonic's check of `grpc-encoding` when no compression is enabled.
fn refuse_compression(headers: &HeaderMap) -> Result<(), Status> {
    let Some(encoding) = headers.get("grpc-encoding") else { return Ok(()) };
    if encoding == "identity" {
        return Ok(());
    }
    let name = String::from_utf8_lossy(encoding.as_bytes());
    let mut status = Status::unimplemented(format!("Content is compressed with `{name}` which isn't supported"));
    status.metadata_mut().insert("grpc-accept-encoding", tonic::metadata::MetadataValue::from_static("identity"));
    Err(status)
}

/// The bytes of the body so far: kept as the one DATA frame they came in
/// while there is one, copied together otherwise.
#[derive(Default)]
struct Message {
    bytes: Chunks,
    /// The message's length, once its prefix has arrived.
    len: Option<usize>,
}

#[derive(Default)]
enum Chunks {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Chunks {
    fn as_slice(&self) -> &[u8] {
        match self {
            Chunks::Empty => &[],
            Chunks::One(b) => b,
            Chunks::Many(b) => b,
        }
    }
}

impl Message {
    fn push(&mut self, data: Bytes, max: usize) -> Result<(), Status> {
        if data.is_empty() {
            return Ok(());
        }
        self.bytes = match std::mem::take(&mut self.bytes) {
            Chunks::Empty => Chunks::One(data),
            Chunks::One(first) => {
                let mut all = BytesMut::with_capacity(first.len() + data.len());
                all.put(first);
                all.put(data);
                Chunks::Many(all)
            }
            Chunks::Many(mut all) => {
                all.put(data);
                Chunks::Many(all)
            }
        };
        let have = self.bytes.as_slice();
        if self.len.is_none() && have.len() >= PREFIX_LEN {
            self.len = Some(read_prefix(&have[..PREFIX_LEN], max)?);
        }
        // Nothing past the message is kept: a second one is refused here.
        match self.len {
            Some(len) if have.len() > PREFIX_LEN + len => Err(Status::internal(MORE_THAN_ONE_MESSAGE)),
            _ => Ok(()),
        }
    }

    fn finish(self) -> Result<Bytes, Status> {
        let have = self.bytes.as_slice().len();
        match self.len {
            None if have == 0 => Err(Status::internal(MISSING_MESSAGE)),
            Some(len) if have == PREFIX_LEN + len => {
                let mut all = match self.bytes {
                    Chunks::Empty => Bytes::new(),
                    Chunks::One(b) => b,
                    Chunks::Many(b) => b.freeze(),
                };
                all.advance(PREFIX_LEN);
                Ok(all)
            }
            _ => Err(Status::internal(UNEXPECTED_EOF)),
        }
    }
}

/// The length in a message's prefix, checked as tonic checks it.
fn read_prefix(mut p: &[u8], max: usize) -> Result<usize, Status> {
    match p.get_u8() {
        0 => {}
        // No grpc-encoding was accepted (refuse_compression), so a compressed
        // message cannot be read.
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        f => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
            )));
        }
    }
    let len = p.get_u32() as usize;
    if len > max {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {max} bytes"
        )));
    }
    Ok(len)
}

/// A response body of one message and the OK trailers.
struct OneMessage {
    message: Option<Bytes>,
    ended: bool,
}

impl HttpBody for OneMessage {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        self.ended = true;
        let mut trailers = HeaderMap::with_capacity(1);
        trailers.insert(Status::GRPC_STATUS, HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        // The trailers follow: the length is not the whole story (as tonic's own bodies say).
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const MAX: usize = 64;

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&(message.len() as u32).to_be_bytes());
        v.extend_from_slice(message);
        v
    }

    /// A request body of the given frames (or errors), in order.
    struct Frames(VecDeque<Result<Bytes, Status>>);

    impl Frames {
        fn new(frames: impl IntoIterator<Item = Result<Bytes, Status>>) -> Self {
            Frames(frames.into_iter().collect())
        }
    }

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front().map(|f| f.map(Frame::data)))
        }
    }

    /// Reads a body that arrives in `chunks`.
    async fn read(headers: &HeaderMap, chunks: Vec<Vec<u8>>) -> Result<Bytes, Status> {
        read_message(headers, Frames::new(chunks.into_iter().map(|c| Ok(Bytes::from(c)))), MAX).await
    }

    async fn read_chunks(chunks: Vec<Vec<u8>>) -> Result<Bytes, Status> {
        read(&HeaderMap::new(), chunks).await
    }

    #[tokio::test]
    async fn a_message_in_one_frame_is_the_frame_itself() {
        let body = Bytes::from(framed(0, b"hello"));
        let message = read_message(&HeaderMap::new(), Frames::new([Ok(body.clone())]), MAX).await.unwrap();
        assert_eq!(&message[..], b"hello");
        // A view into the frame, not a copy.
        assert_eq!(message.as_ptr(), body[PREFIX_LEN..].as_ptr());
    }

    #[tokio::test]
    async fn a_message_split_anywhere_reads_the_same() {
        let whole = framed(0, b"split across frames");
        for cut in 0..=whole.len() {
            for cut2 in cut..=whole.len() {
                let chunks = vec![whole[..cut].to_vec(), whole[cut..cut2].to_vec(), whole[cut2..].to_vec()];
                assert_eq!(&read_chunks(chunks).await.unwrap()[..], b"split across frames", "cuts {cut}, {cut2}");
            }
        }
        assert_eq!(&read_chunks(vec![framed(0, b"")]).await.unwrap()[..], b"");
    }

    #[tokio::test]
    async fn bad_bodies_get_tonics_statuses() {
        let status = |r: Result<Bytes, Status>| {
            let s = r.unwrap_err();
            (s.code(), s.message().to_owned())
        };
        assert_eq!(status(read_chunks(vec![]).await), (Code::Internal, MISSING_MESSAGE.into()));
        assert_eq!(status(read_chunks(vec![vec![0, 0, 0]]).await), (Code::Internal, UNEXPECTED_EOF.into()));
        let short = framed(0, b"abc");
        assert_eq!(status(read_chunks(vec![short[..6].to_vec()]).await), (Code::Internal, UNEXPECTED_EOF.into()));
        let (code, message) = status(read_chunks(vec![framed(1, b"abc")]).await);
        assert_eq!(code, Code::Internal);
        assert!(message.contains("compressed-flag"), "{message}");
        let (code, message) = status(read_chunks(vec![framed(2, b"abc")]).await);
        assert_eq!(code, Code::Internal);
        assert!(message.contains("invalid compression flag: 2"), "{message}");
        // Over the limit: refused from the prefix alone.
        let (code, message) = status(read_chunks(vec![framed(0, &[b'a'; MAX + 1])[..PREFIX_LEN].to_vec()]).await);
        assert_eq!(code, Code::OutOfRange);
        assert!(message.contains(&format!("found {} bytes, the limit is: {MAX} bytes", MAX + 1)), "{message}");
        assert!(read_chunks(vec![framed(0, &[b'a'; MAX])]).await.is_ok());
        // Anything past the message, even one byte, is refused as it arrives.
        let stray = [framed(0, b"a"), vec![0]].concat();
        assert_eq!(status(read_chunks(vec![stray]).await), (Code::Internal, MORE_THAN_ONE_MESSAGE.into()));
        // Two messages, in one frame or two.
        let two = [framed(0, b"a"), framed(0, b"b")].concat();
        assert_eq!(status(read_chunks(vec![two]).await), (Code::Internal, MORE_THAN_ONE_MESSAGE.into()));
        let two = vec![framed(0, b"a"), framed(0, b"b")];
        assert_eq!(status(read_chunks(two).await), (Code::Internal, MORE_THAN_ONE_MESSAGE.into()));
    }

    #[tokio::test]
    async fn compressed_requests_are_refused_as_tonic_refuses_them() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        let s = read(&headers, vec![framed(0, b"abc")]).await.unwrap_err();
        assert_eq!(s.code(), Code::Unimplemented);
        assert_eq!(s.message(), "Content is compressed with `gzip` which isn't supported");
        assert_eq!(s.metadata().get("grpc-accept-encoding").unwrap(), "identity");
        headers.insert("grpc-encoding", HeaderValue::from_static("identity"));
        assert_eq!(&read(&headers, vec![framed(0, b"abc")]).await.unwrap()[..], b"abc");
    }

    #[tokio::test]
    async fn a_cancelled_body_ends_the_message() {
        let frames = Frames::new([Ok(Bytes::from(framed(0, b"abc"))), Err(Status::cancelled("client went away"))]);
        assert_eq!(&read_message(&HeaderMap::new(), frames, MAX).await.unwrap()[..], b"abc");
        let frames = Frames::new([Ok(Bytes::from_static(b"\0\0")), Err(Status::unavailable("reset"))]);
        let s = read_message(&HeaderMap::new(), frames, MAX).await.unwrap_err();
        assert_eq!(s.code(), Code::Unavailable);
    }

    #[tokio::test]
    async fn the_answer_is_one_framed_message_then_ok_trailers() {
        let response = ok_response(3, |b| b.put_slice(b"abcd"));
        assert_eq!(response.headers()["content-type"], "application/grpc");
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(collected.trailers().unwrap().len(), 1);
        assert_eq!(&collected.to_bytes()[..], &framed(0, b"abcd")[..]);
    }
}
