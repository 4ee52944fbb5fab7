//! `introspect.v1.TokenIntrospection`: Verify and GetClaims.
//!
//! [`IntrospectServer`] answers Verify itself, through [`unary`]'s framing
//! (a valid answer is encoded straight from the verified token), and every
//! other method through the generated server.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::Message as _;
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::respond::{self, VerifyAnswer};
use super::unary;
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
            path: measure::VerifyPath::from_env(),
        }
    }

    /// Verify: the answer, before it is framed.
    async fn answer_verify(&self, metadata: &MetadataMap, request: &pb::VerifyRequest) -> Result<VerifyAnswer, Status> {
        let answer = self.answer(Rpc::Verify, metadata, &request.token, &request.expect, respond::verify_answer);
        Ok(answer.await?.into_inner())
    }

    /// One Verify call over HTTP/2: [`unary`] reads the request and frames
    /// the answer; a `Status` becomes a trailers-only response, as tonic
    /// sends it.
    async fn serve_verify(&self, request: http::Request<Body>) -> http::Response<Body> {
        let (parts, body) = request.into_parts();
        let answer = async {
            let message = unary::read_message(&parts.headers, body, MAX_REQUEST_BYTES).await?;
            let request = pb::VerifyRequest::decode(message).map_err(unary::decode_error)?;
            self.answer_verify(&MetadataMap::from_headers(parts.headers), &request).await
        };
        match answer.await {
            Ok(answer) => unary::ok_response(answer.size_hint(), |buf| answer.encode(buf)),
            Err(status) => status.into_http(),
        }
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

/// The `introspect.v1.TokenIntrospection` server: Verify through its own
/// framing ([`unary`]), GetClaims (and any unknown method)
/// through the generated server. Same limits as the generated server:
/// requests up to [`MAX_REQUEST_BYTES`], no compression.
#[derive(Debug, Clone)]
pub struct IntrospectServer {
    service: Arc<IntrospectService>,
    generated: TokenIntrospectionServer<IntrospectService>,
    path: measure::VerifyPath,
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
        let service = self.service.clone();
        match self.path {
            measure::VerifyPath::Unary => Box::pin(async move { Ok(service.serve_verify(request).await) }),
            measure::VerifyPath::Generated => tower::Service::call(&mut self.generated, request),
            measure::VerifyPath::Tonic => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(measure::AnswerCodec)
                    .apply_max_message_size_config(Some(MAX_REQUEST_BYTES), None);
                Ok(grpc.unary(measure::VerifyRoute(service), request).await)
            }),
        }
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
    /// [`IntrospectServer`]; same answer, as a message).
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

/// MEASUREMENT ONLY (issue 16; removed once measured): which Verify path
/// the server takes, from `CLERK_INTROSPECT_MEASURE_VERIFY_PATH`.
mod measure {
    use std::sync::Arc;

    use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
    use tonic::codegen::BoxFuture;
    use tonic::{Request, Response, Status};

    use super::IntrospectService;
    use crate::pb;
    use crate::service::respond::VerifyAnswer;

    #[derive(Debug, Clone, Copy)]
    pub enum VerifyPath {
        /// `unary.rs` (the default).
        Unary,
        /// `tonic::server::Grpc::unary` with small buffers, the answer encoded straight from the token.
        Tonic,
        /// The generated route (`ProstCodec::default()`, a `VerifyResponse`).
        Generated,
    }

    impl VerifyPath {
        pub fn from_env() -> Self {
            let path = match std::env::var("CLERK_INTROSPECT_MEASURE_VERIFY_PATH").as_deref() {
                Ok("tonic") => VerifyPath::Tonic,
                Ok("generated") => VerifyPath::Generated,
                _ => VerifyPath::Unary,
            };
            eprintln!("measurement: Verify path {path:?}");
            path
        }
    }

    /// Requests up to 2 KiB (a Clerk session token is about 1 KiB) and
    /// answers (a few hundred bytes) fit without growing.
    fn request_buffer() -> BufferSettings {
        BufferSettings::new(2048, 32 * 1024)
    }
    fn answer_buffer() -> BufferSettings {
        BufferSettings::new(512, 32 * 1024)
    }

    #[derive(Debug, Clone, Copy, Default)]
    pub struct AnswerCodec;

    impl Codec for AnswerCodec {
        type Encode = VerifyAnswer;
        type Decode = pb::VerifyRequest;
        type Encoder = AnswerEncoder;
        type Decoder = tonic_prost::ProstDecoder<pb::VerifyRequest>;

        fn encoder(&mut self) -> Self::Encoder {
            AnswerEncoder
        }

        fn decoder(&mut self) -> Self::Decoder {
            tonic_prost::ProstDecoder::new(request_buffer())
        }
    }

    #[derive(Debug, Clone, Copy, Default)]
    pub struct AnswerEncoder;

    impl Encoder for AnswerEncoder {
        type Item = VerifyAnswer;
        type Error = Status;

        fn encode(&mut self, item: VerifyAnswer, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            item.encode(buf);
            Ok(())
        }

        fn buffer_settings(&self) -> BufferSettings {
            answer_buffer()
        }
    }

    pub struct VerifyRoute(pub Arc<IntrospectService>);

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

}
