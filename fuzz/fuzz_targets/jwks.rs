//! JWKS documents, single JWKs, OIDC discovery documents, PEM public keys, Cache-Control
//! (`clerk_introspect::fuzzing::jwks`; docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clerk_introspect::fuzzing::jwks(data));
