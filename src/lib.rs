//! clerk-introspect verifies Clerk session tokens centrally, for services in
//! any language, before the tokens go on to Supabase: a tonic gRPC server
//! (`introspect.v1.TokenIntrospection`) backed by one JWKS cache per issuer.
//!
//! # Layout
//!
//! - [`config`]: the command line and the validated [`Config`].
//! - [`keys`]: OIDC discovery, JWKS fetch, parsed keys, refresh and refetch.
//! - [`verify`]: the verification pipeline and per-issuer [`verify::Policy`].
//! - [`service`]: gRPC adapters (TokenIntrospection, Envoy's ext_authz
//!   Authorization); [`service::respond`] maps outcomes to answers,
//!   [`service::unary`] frames Verify's request and answer.
//! - [`server`]: assembly, serving and drain ([`run`]).
//! - [`health`]: readiness published through `grpc.health.v1`.
//! - [`runtime`]: the binary's Tokio runtime (single-threaded on one CPU).
//! - [`tls`]: TLS and mTLS for the listener, with certificate reload.
//! - [`listener`]: the gRPC accept loop: connection cap, handshake deadline, accept-error backoff.
//! - [`reload`]: configuration reload (SIGHUP, file changes) without a restart.
//! - [`cli`]: the `verify`, `inspect` and `check-issuer` commands.
//! - [`telemetry`]: logs, spans, metrics, OpenTelemetry export, and the
//!   HTTP `/metrics`, `/healthz`, `/readyz` endpoint.
//! - [`clock`]: injectable wall clock.
//! - [`demo`]: the `demo` command.
//! - [`test_issuer`]: a loopback issuer for the demo, tests and benchmarks.
//! - [`pb`]: generated wire types.

pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod health;
pub mod keys;
pub mod listener;
pub mod pb;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod test_issuer;
pub mod tls;
pub mod verify;

pub use config::Config;
pub use server::{App, ServeError, ServeOptions, run, run_with};

/// `error`, then each of its sources whose text is not already included,
/// joined by ": " (for one-line messages and logs).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    with_sources(error.to_string(), error.source())
}

/// `text`, then `source` and its own sources (skipping repeats), joined by ": ".
pub fn with_sources(mut text: String, mut source: Option<&dyn std::error::Error>) -> String {
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
