//! `introspect.v1.TokenIntrospection`: Verify and GetClaims.
//!
//! [`IntrospectServer`] routes Verify through [`respond::wire::VerifyCodec`]
//! (a valid answer is encoded straight from the verified token) and every
//! other method through the generated server.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::metadata::MetadataMap;
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::respond::{self, VerifyAnswer, wire::VerifyCodec};
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

    /// Verify, answered for [`VerifyCodec`].
    async fn answer_verify(&self, request: Request<pb::VerifyRequest>) -> Result<Response<VerifyAnswer>, Status> {
        let (metadata, _, request) = request.into_parts();
        self.answer(Rpc::Verify, &metadata, &request.token, &request.expect, respond::verify_answer).await
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

/// The `introspect.v1.TokenIntrospection` server: Verify through
/// [`VerifyCodec`], GetClaims (and any unknown method) through the
/// generated server. Same limits as the generated server: requests up to
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
        let method = VerifyMethod(self.service.clone());
        Box::pin(async move {
            let mut grpc = Grpc::new(VerifyCodec).apply_max_message_size_config(Some(MAX_REQUEST_BYTES), None);
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// Verify as a tonic unary method answering [`VerifyAnswer`]s.
struct VerifyMethod(Arc<IntrospectService>);

impl UnaryService<pb::VerifyRequest> for VerifyMethod {
    type Response = VerifyAnswer;
    type Future = BoxFuture<Response<VerifyAnswer>, Status>;

    fn call(&mut self, request: Request<pb::VerifyRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.answer_verify(request).await })
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
        self.answer_verify(request).await.map(|r| r.map(pb::VerifyResponse::from))
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
