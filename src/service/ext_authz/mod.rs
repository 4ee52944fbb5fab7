//! `envoy.service.auth.v3.Authorization`: Envoy's external authorization
//! (`ext_authz`) gRPC API, served next to TokenIntrospection.
//!
//! A thin adapter: [`source`] finds the token in the `CheckRequest` (the
//! token header, then Clerk's session cookies) and the route's
//! `context_extensions`; [`Verifier::verify`] decides, exactly as for
//! `Verify`; `respond::check` turns the outcome into a `CheckResponse`.
//! Wire types come from the `envoy-types` crate; the vendored protos in
//! `proto/vendor/` only feed server reflection.

pub mod source;

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::respond::check as respond;
pub use crate::config::authz::AuthzConfig;
use crate::telemetry::{Rpc, RpcCall, Telemetry};
use crate::verify::{VerifiedToken, Verifier, VerifyError};
use source::{Candidates, Headers, RouteExpectations};

/// Largest request accepted: a `CheckRequest` carries every request header
/// (Envoy's own limit is 60 KiB by default), and the peer certificate when
/// `include_peer_certificate` is on. The request body is never needed.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Encoded `FileDescriptorSet` of `envoy/service/auth/v3/external_auth.proto`
/// and its imports (no source info), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("envoy_auth_descriptor");

/// The Authorization service.
#[derive(Debug, Clone)]
pub struct AuthzService {
    verifier: Arc<Verifier>,
    config: Arc<AuthzConfig>,
    telemetry: Telemetry,
}

impl AuthzService {
    /// A service over `verifier` with `config`, recording into a detached
    /// registry until [`AuthzService::with_telemetry`].
    pub fn new(verifier: Arc<Verifier>, config: Arc<AuthzConfig>) -> Self {
        Self { verifier, config, telemetry: Telemetry::detached() }
    }

    /// Records spans and metrics through `telemetry` (the app's).
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// The tonic server, with the request size bounded.
    pub fn into_server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    async fn decide(&self, request: &CheckRequest, call: &mut RpcCall) -> Result<CheckResponse, Status> {
        let http = source::http_request(request);
        if self.config.bypass_cors_preflight && source::is_cors_preflight(http) {
            call.record_reason("CORS_PREFLIGHT", tonic::Code::Ok);
            tracing::debug!("CORS preflight let through without a token");
            return Ok(respond::preflight(&self.config));
        }
        let route = RouteExpectations::from_extensions(request.attributes.as_ref().map(|a| &a.context_extensions));
        let outcome = match source::find_tokens(&Headers::of(http), &self.config) {
            Ok(Some(candidates)) => self.verify_any(candidates, &route).await,
            Ok(None) => Err(source::missing(&self.config).into()),
            Err(rejection) => Err(rejection.into()),
        };
        call.record(outcome.as_deref());
        respond::check_outcome(outcome.as_deref(), &self.config)
    }

    /// Verifies the candidates in order: the first that verifies wins.
    /// Otherwise unavailable keys win over a refusal (no decision was
    /// possible), else the first refusal is the answer.
    async fn verify_any(
        &self,
        candidates: Candidates<'_>,
        route: &RouteExpectations,
    ) -> Result<Arc<VerifiedToken>, VerifyError> {
        let Candidates { source, tokens } = candidates;
        tracing::debug!(source = source.as_str(), candidates = tokens.len(), "token found");
        let expect = route.as_expectations();
        let mut refused: Option<VerifyError> = None;
        let mut unavailable: Option<VerifyError> = None;
        for token in &tokens {
            match self.verifier.verify(token, &expect).await {
                Ok(verified) => return Ok(verified),
                Err(e @ VerifyError::Unavailable { .. }) => unavailable = unavailable.or(Some(e)),
                Err(e) => refused = refused.or(Some(e)),
            }
        }
        Err(unavailable.or(refused).unwrap_or_else(|| source::missing(&self.config).into()))
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let mut call = self.telemetry.begin(Rpc::Check, request.metadata());
        let request = request.into_inner();
        let span = call.span().clone();
        self.decide(&request, &mut call).instrument(span).await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn file_descriptor_set_names_the_service() {
        let fds = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let file = fds
            .file
            .iter()
            .find(|f| f.name.as_deref() == Some("envoy/service/auth/v3/external_auth.proto"))
            .expect("external_auth.proto");
        assert_eq!(file.package.as_deref(), Some("envoy.service.auth.v3"));
        let service = file.service.iter().find(|s| s.name.as_deref() == Some("Authorization")).unwrap();
        assert_eq!(service.method[0].name.as_deref(), Some("Check"));
        assert!(fds.file.iter().all(|f| f.source_code_info.is_none()), "no comments in the binary");
        // The vendored CheckResponse has the same fields as envoy-types'.
        let response = file.message_type.iter().find(|m| m.name.as_deref() == Some("CheckResponse")).unwrap();
        let numbers: Vec<_> = response.field.iter().map(|f| f.number.unwrap()).collect();
        assert_eq!(numbers, [1, 2, 3, 5, 4]);
    }
}
