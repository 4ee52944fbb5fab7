//! gRPC services: thin adapters from wire types to the verifier and back.
//! [`respond`] is the one place where a verification outcome becomes a
//! `VerifyResponse`, an Envoy `CheckResponse` or a `tonic::Status`.

pub mod ext_authz;
pub mod introspect;
pub mod respond;

pub use ext_authz::AuthzService;
pub use introspect::IntrospectService;
