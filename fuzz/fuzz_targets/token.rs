//! Token decode (strict JOSE parsing) and the verification pipeline over a fixed key set
//! (`clerk_introspect::fuzzing::token`; docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clerk_introspect::fuzzing::token(data));
