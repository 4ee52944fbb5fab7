//! Verify's gRPC framing: a request body in DATA frames on the Verify route, decoded and answered
//! (`clerk_introspect::fuzzing::verify`; docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clerk_introspect::fuzzing::verify(data));
