//! `introspect.v1.TokenIntrospection`: Verify and GetClaims.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::respond;
use crate::pb::{self, token_introspection_server::TokenIntrospection};
use crate::telemetry::{Rpc, Telemetry};
use crate::verify::{Expectations, Verifier};

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
    pub fn into_server(self) -> pb::token_introspection_server::TokenIntrospectionServer<Self> {
        pb::token_introspection_server::TokenIntrospectionServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
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
    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        let mut call = self.telemetry.begin(Rpc::Verify, request.metadata());
        let request = request.into_inner();
        let span = call.span().clone();
        async {
            let outcome = self.verifier.verify(&request.token, &expectations(&request.expect)).await;
            call.record(outcome.as_deref());
            respond::verify_outcome(outcome.as_deref()).map(Response::new)
        }
        .instrument(span)
        .await
    }

    async fn get_claims(
        &self,
        request: Request<pb::GetClaimsRequest>,
    ) -> Result<Response<pb::GetClaimsResponse>, Status> {
        let mut call = self.telemetry.begin(Rpc::GetClaims, request.metadata());
        let request = request.into_inner();
        let span = call.span().clone();
        async {
            let outcome = self.verifier.verify(&request.token, &expectations(&request.expect)).await;
            call.record(outcome.as_deref());
            respond::get_claims_outcome(outcome.as_deref()).map(Response::new)
        }
        .instrument(span)
        .await
    }
}
