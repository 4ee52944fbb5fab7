//! `introspect.v1.TokenIntrospection`: Verify and GetClaims.
//!
//! [`IntrospectServer`] answers Verify through tonic's unary path
//! (`tonic::server::Grpc::unary`) with a codec of its own, [`VerifyCodec`]:
//! small buffers, and a valid answer encoded straight from the verified
//! token; every other method goes through the generated server. Framing,
//! limits and statuses are tonic's own.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::BoxFuture;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::respond::{self, VerifyAnswer};
use crate::pb::{
    self,
    token_introspection_server::{TokenIntrospection, TokenIntrospectionServer},
};
use crate::telemetry::{Rpc, Telemetry};
use crate::verify::{Expectations, VerifiedToken, Verifier, VerifyError};

/// Largest request accepted (a token is at most 16 KiB).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The TokenIntrospection service.
#[derive(Debug, Clone)]
pub struct IntrospectService {
    verifier: Arc<Verifier>,
    telemetry: Telemetry,
}

impl IntrospectService {
    /// A service over `verifier`, recording into a detached registry until
    /// [`IntrospectService::with_telemetry`].
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self { verifier, telemetry: Telemetry::detached() }
    }

    /// Records spans and metrics through `telemetry` (the app's).
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// The tonic server, with the request size bounded.
    pub fn into_server(self) -> IntrospectServer {
        let service = Arc::new(self);
        IntrospectServer {
            generated: TokenIntrospectionServer::from_arc(service.clone()).max_decoding_message_size(MAX_REQUEST_BYTES),
            service,
        }
    }

    /// Verify: the answer, before it is framed.
    async fn answer_verify(&self, metadata: &MetadataMap, request: &pb::VerifyRequest) -> Result<VerifyAnswer, Status> {
        let answer = self.answer(Rpc::Verify, metadata, &request.token, &request.expect, respond::verify_answer);
        Ok(answer.await?.into_inner())
    }

    /// One Verify or GetClaims call: its span and metrics around the
    /// verifier; `respond` turns the outcome into the answer.
    async fn answer<T>(
        &self,
        rpc: Rpc,
        metadata: &MetadataMap,
        token: &str,
        expect: &Option<pb::Expectations>,
        respond: impl FnOnce(Result<Arc<VerifiedToken>, VerifyError>) -> Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        let mut call = self.telemetry.begin(rpc, metadata);
        let span = call.span().clone();
        async {
            let outcome = self.verifier.verify(token, &expectations(expect)).await;
            call.record(outcome.as_deref());
            respond(outcome).map(Response::new)
        }
        .instrument(span)
        .await
    }
}

/// The `introspect.v1.TokenIntrospection` server: Verify through tonic's
/// unary path with [`VerifyCodec`], GetClaims (and any unknown method)
/// through the generated server. Same limits on both: requests up to
/// [`MAX_REQUEST_BYTES`], no compression.
#[derive(Debug, Clone)]
pub struct IntrospectServer {
    service: Arc<IntrospectService>,
    generated: TokenIntrospectionServer<IntrospectService>,
}

impl IntrospectServer {
    /// The full path of Verify.
    pub const VERIFY_PATH: &'static str = "/introspect.v1.TokenIntrospection/Verify";
}

impl NamedService for IntrospectServer {
    const NAME: &'static str = <TokenIntrospectionServer<IntrospectService> as NamedService>::NAME;
}

impl tower::Service<http::Request<Body>> for IntrospectServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != Self::VERIFY_PATH {
            return tower::Service::call(&mut self.generated, request);
        }
        let route = VerifyRoute(self.service.clone());
        Box::pin(async move {
            // As the generated route sets it up: the size limit, no compression.
            let mut grpc =
                tonic::server::Grpc::new(VerifyCodec).apply_max_message_size_config(Some(MAX_REQUEST_BYTES), None);
            Ok(grpc.unary(route, request).await)
        })
    }
}

fn expectations(e: &Option<pb::Expectations>) -> Expectations<'_> {
    match e {
        None => Expectations::default(),
        Some(e) => Expectations { authorized_parties: &e.authorized_parties, audiences: &e.audiences, roles: &e.roles },
    }
}

#[tonic::async_trait]
impl TokenIntrospection for IntrospectService {
    /// The generated route's Verify (the server answers Verify through
    /// [`IntrospectServer`] and [`VerifyCodec`]; same answer, as a message).
    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let answer = self.answer_verify(&metadata, &request).await?;
        Ok(Response::new(answer.into()))
    }

    async fn get_claims(
        &self,
        request: Request<pb::GetClaimsRequest>,
    ) -> Result<Response<pb::GetClaimsResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        self.answer(Rpc::GetClaims, &metadata, &request.token, &request.expect, |outcome| {
            respond::get_claims_outcome(outcome.as_deref())
        })
        .await
    }
}

/// Verify's route on tonic's unary path: the answer before it is encoded.
struct VerifyRoute(Arc<IntrospectService>);

impl tonic::server::UnaryService<pb::VerifyRequest> for VerifyRoute {
    type Response = VerifyAnswer;
    type Future = BoxFuture<Response<VerifyAnswer>, Status>;

    fn call(&mut self, request: Request<pb::VerifyRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move {
            let (metadata, _, request) = request.into_parts();
            service.answer_verify(&metadata, &request).await.map(Response::new)
        })
    }
}

/// The status message of a unary Verify call whose body holds more than one
/// request message (tonic would decode and drop the rest).
pub const MORE_THAN_ONE_MESSAGE: &str = "protocol error: a unary call carries one request message; this one had more";

/// A request's buffer: a Clerk session token is about 1 KiB, so a request
/// up to 2 KiB is read without growing it (tonic's default is 8 KiB).
const REQUEST_BUFFER_BYTES: usize = 2048;
/// An answer's buffer: a valid answer is a few hundred bytes.
const ANSWER_BUFFER_BYTES: usize = 512;
/// tonic's default: how much an encoder writes before it yields.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// Verify's codec on tonic's unary path (tonic's `codec_buffers` example,
/// with tonic-prost's decoder): small buffers instead of two 8 KiB ones per
/// call, a valid answer encoded straight from the token
/// ([`VerifyAnswer::encode`], prost's bytes for the same `VerifyResponse`),
/// and a second request message refused ([`MORE_THAN_ONE_MESSAGE`]).
/// Measured against tonic's default codec and against Verify's former own
/// framing: docs/performance-unary.md.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyCodec;

impl Codec for VerifyCodec {
    type Encode = VerifyAnswer;
    type Decode = pb::VerifyRequest;
    type Encoder = AnswerEncoder;
    type Decoder = OneRequest;

    fn encoder(&mut self) -> AnswerEncoder {
        AnswerEncoder
    }

    fn decoder(&mut self) -> OneRequest {
        OneRequest {
            prost: tonic_prost::ProstDecoder::new(BufferSettings::new(REQUEST_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)),
            read: false,
        }
    }
}

/// Encodes Verify's answer ([`VerifyCodec`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct AnswerEncoder;

impl Encoder for AnswerEncoder {
    type Item = VerifyAnswer;
    type Error = Status;

    fn encode(&mut self, answer: VerifyAnswer, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        answer.encode(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(ANSWER_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
    }
}

/// Decodes Verify's one request message ([`VerifyCodec`]; one per call).
#[derive(Debug, Clone)]
pub struct OneRequest {
    prost: tonic_prost::ProstDecoder<pb::VerifyRequest>,
    read: bool,
}

impl Decoder for OneRequest {
    type Item = pb::VerifyRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<pb::VerifyRequest>, Status> {
        if std::mem::replace(&mut self.read, true) {
            return Err(Status::internal(MORE_THAN_ONE_MESSAGE));
        }
        self.prost.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.prost.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::marker::PhantomData;
    use std::pin::Pin;

    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue};
    use http_body::Frame;
    use tonic::Code;

    use super::*;

    /// A request body of the given DATA frames, in order.
    struct Frames(VecDeque<Bytes>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    /// A service reached only by a request read whole: it answers `ABORTED`.
    struct ReadWhole<R>(PhantomData<R>);

    impl<R: Send + 'static> tonic::server::UnaryService<pb::VerifyRequest> for ReadWhole<R> {
        type Response = R;
        type Future = std::future::Ready<Result<Response<R>, Status>>;

        fn call(&mut self, _: Request<pb::VerifyRequest>) -> Self::Future {
            std::future::ready(Err(Status::aborted("read whole")))
        }
    }

    /// The status of a Verify request through tonic's unary path with
    /// `codec`, as the route sets it up (size limit, no compression).
    async fn status<C>(codec: C, headers: &HeaderMap, chunks: &[Vec<u8>]) -> Status
    where
        C: Codec<Decode = pb::VerifyRequest>,
        C::Encode: Send + 'static,
    {
        let mut request = http::Request::new(Frames(chunks.iter().map(|c| Bytes::from(c.clone())).collect()));
        *request.headers_mut() = headers.clone();
        let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(MAX_REQUEST_BYTES), None);
        let response = grpc.unary(ReadWhole(PhantomData), request).await;
        Status::from_header_map(response.headers()).expect("a trailers-only answer")
    }

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        [&[flag][..], &(message.len() as u32).to_be_bytes(), message].concat()
    }

    /// Every refusal on Verify's route is the generated route's (tonic's
    /// default prost codec), word for word: code, message and
    /// `grpc-accept-encoding`; and what one reads whole, so does the other.
    #[tokio::test]
    async fn verify_codec_refuses_as_tonics_default_codec_does() {
        let default_codec = || tonic_prost::ProstCodec::<pb::VerifyResponse, pb::VerifyRequest>::default();
        let plain = HeaderMap::new();
        let mut gzip = HeaderMap::new();
        gzip.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        let request = prost::Message::encode_to_vec(&pb::VerifyRequest { token: "a.b.c".into(), expect: None });
        let whole = framed(0, &request);
        let too_large = framed(0, &vec![b'a'; MAX_REQUEST_BYTES + 1]);
        let cases: Vec<(&str, &HeaderMap, Vec<Vec<u8>>)> = vec![
            ("an empty body", &plain, vec![]),
            ("part of a prefix", &plain, vec![vec![0, 0, 0]]),
            ("a message cut short", &plain, vec![whole[..whole.len() - 1].to_vec()]),
            ("the compressed flag", &plain, vec![framed(1, &request)]),
            ("compression flag 2", &plain, vec![framed(2, &request)]),
            ("a message over the limit (its prefix only)", &plain, vec![too_large[..5].to_vec()]),
            ("a message over the limit", &plain, vec![too_large.clone()]),
            ("grpc-encoding: gzip", &gzip, vec![whole.clone()]),
            ("not a VerifyRequest", &plain, vec![framed(0, &[0xff, 0xff])]),
            ("one message, whole", &plain, vec![whole.clone()]),
            (
                "one message in three frames",
                &plain,
                vec![whole[..2].to_vec(), whole[2..7].to_vec(), whole[7..].to_vec()],
            ),
        ];
        for (what, headers, chunks) in cases {
            let ours = status(VerifyCodec, headers, &chunks).await;
            let tonics = status(default_codec(), headers, &chunks).await;
            assert_eq!((ours.code(), ours.message()), (tonics.code(), tonics.message()), "{what}");
            let accept = |s: &Status| s.metadata().get("grpc-accept-encoding").cloned();
            assert_eq!(accept(&ours), accept(&tonics), "{what}: grpc-accept-encoding");
            let read_whole = what.starts_with("one message");
            assert_eq!(ours.code() == Code::Aborted, read_whole, "{what}: {ours:?}");
        }
        // The limit's words, and the one place Verify is stricter than the
        // default codec (which decodes a second message and drops it).
        let over = status(VerifyCodec, &plain, &[too_large]).await;
        assert_eq!(over.code(), Code::OutOfRange);
        assert!(over.message().contains(&format!("the limit is: {MAX_REQUEST_BYTES} bytes")), "{over:?}");
        for two in [vec![[whole.clone(), whole.clone()].concat()], vec![whole.clone(), whole.clone()]] {
            let ours = status(VerifyCodec, &plain, &two).await;
            assert_eq!((ours.code(), ours.message()), (Code::Internal, MORE_THAN_ONE_MESSAGE));
            assert_eq!(status(default_codec(), &plain, &two).await.code(), Code::Aborted);
        }
    }

    /// The answer on Verify's route: one message, prost's bytes for the
    /// same `VerifyResponse`, then `grpc-status: 0`.
    #[tokio::test]
    async fn verify_codec_answers_one_message_then_ok() {
        use http_body_util::BodyExt as _;
        struct Answer;
        impl tonic::server::UnaryService<pb::VerifyRequest> for Answer {
            type Response = VerifyAnswer;
            type Future = std::future::Ready<Result<Response<VerifyAnswer>, Status>>;

            fn call(&mut self, request: Request<pb::VerifyRequest>) -> Self::Future {
                let message = pb::VerifyResponse { message: request.into_inner().token, ..Default::default() };
                std::future::ready(Ok(Response::new(VerifyAnswer::Message(Box::new(message)))))
            }
        }
        let request = prost::Message::encode_to_vec(&pb::VerifyRequest { token: "a.b.c".into(), expect: None });
        let body = Frames([Bytes::from(framed(0, &request))].into());
        let mut grpc = tonic::server::Grpc::new(VerifyCodec);
        let response = grpc.unary(Answer, http::Request::new(body)).await;
        assert_eq!(response.headers()["content-type"], "application/grpc");
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        let want = prost::Message::encode_to_vec(&pb::VerifyResponse { message: "a.b.c".into(), ..Default::default() });
        assert_eq!(&collected.to_bytes()[..], &framed(0, &want)[..]);
    }
}
