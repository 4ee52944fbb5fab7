//! clerk-introspect verifies Clerk session tokens centrally, for services in
//! any language, before the tokens go on to Supabase: a tonic gRPC server
//! (`introspect.v1.TokenIntrospection`) backed by one JWKS cache per issuer.
//!
//! # Layout
//!
//! - [`cli`]: the command line (clap lives here and in `main` only).
//! - [`config`]: settings in layers (defaults, environment, file, command
//!   line), validated once into a plain [`Config`].
//! - [`app`]: the running service built from a [`Config`] ([`App::start`])
//!   and its reload ([`App::reload`]).
//! - [`server`]: serving an [`App`]: listeners, connections, call limits,
//!   the admin HTTP endpoint, the reload loop ([`server::serve`], [`run`]).
//! - [`service`]: gRPC adapters (TokenIntrospection, Envoy's ext_authz
//!   Authorization); [`service::respond`] maps outcomes to answers.
//! - [`verify`]: the verification pipeline and per-issuer [`verify::Policy`].
//! - [`keys`]: OIDC discovery, JWKS fetch, parsed keys, refresh and refetch.
//! - [`revocation`]: sessions, users and memberships Clerk ended, refused
//!   before their tokens expire.
//! - [`webhook`]: Clerk's webhooks (Svix-signed) in, read into
//!   revocation events.
//! - [`health`]: readiness, published through `grpc.health.v1` and `/readyz`.
//! - [`telemetry`]: logs, spans, metrics, OpenTelemetry export.
//! - [`tls`]: TLS and mTLS configuration, with certificate reload.
//! - [`runtime`], [`shutdown`], [`clock`]: the Tokio runtime, signals, an
//!   injectable wall clock.
//! - [`demo`] and [`test_issuer`]: the `demo` command and the loopback
//!   issuer it, the tests and the benchmarks use.
//! - [`pb`]: generated wire types.

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod keys;
pub mod pb;
pub mod revocation;
pub mod runtime;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod test_issuer;
pub mod tls;
pub mod verify;
pub mod webhook;

pub use app::App;
pub use config::Config;
pub use server::{ServeError, ServeOptions, run, serve};

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
