//! Integration tests: the real server on `127.0.0.1:0`, a real HTTP issuer
//! on loopback (discovery + JWKS), real gRPC clients, exact reasons.

mod architecture;
mod cache;
mod commands;
mod config_file;
mod connections;
mod deploy;
mod docs;
mod ext_authz;
mod keys;
mod lifecycle;
mod limits;
mod liveness;
mod property;
mod reasons;
mod reload;
mod revocation;
mod runtime;
mod scratch;
mod support;
mod telemetry;
mod tls;
mod webhook;
mod wire;
