//! gRPC services: thin adapters from wire types to the verifier and back.
//! [`respond`] is the one place where a verification outcome becomes a
//! `VerifyResponse` or a `tonic::Status`.

pub mod introspect;
pub mod respond;

pub use introspect::IntrospectService;
