//! Integration tests: the real server on `127.0.0.1:0`, a real HTTP issuer
//! on loopback (discovery + JWKS), real gRPC clients, exact reasons.

mod keys;
mod lifecycle;
mod property;
mod reasons;
mod support;
mod telemetry;
