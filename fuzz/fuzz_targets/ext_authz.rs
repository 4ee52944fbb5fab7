//! Envoy ext_authz: a protobuf CheckRequest (headers, cookies, context extensions) answered by the Authorization service
//! (`clerk_introspect::fuzzing::ext_authz`; docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clerk_introspect::fuzzing::ext_authz(data));
