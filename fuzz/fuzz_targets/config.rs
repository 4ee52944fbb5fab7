//! The config file: TOML in, a Config or a one-line ConfigError out, never a panic
//! (`clerk_introspect::fuzzing::config`; docs/fuzzing.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clerk_introspect::fuzzing::config(data));
