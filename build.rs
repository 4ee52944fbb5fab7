//! Compiles `proto/introspect/v1/introspect.proto` with protox (no system
//! protoc) into `OUT_DIR`, and writes the descriptor set used by reflection.
//!
//! Also compiles the vendored Envoy ext_authz protos (`proto/vendor/`, see
//! the README there) into a descriptor set, for reflection only: the Rust
//! types of `envoy.service.auth.v3` come from the `envoy-types` crate.

use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/introspect/v1/introspect.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile([proto], ["proto"])?;
    fs::write(out_dir.join("introspect_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;

    // Envoy's Authorization service: descriptors only, without comments.
    println!("cargo:rerun-if-changed=proto/vendor");
    let envoy = protox::Compiler::new(["proto/vendor"])?
        .include_imports(true)
        .include_source_info(false)
        .open_files(["envoy/service/auth/v3/external_auth.proto"])?
        .encode_file_descriptor_set();
    fs::write(out_dir.join("envoy_auth_descriptor.bin"), envoy)?;

    // The platform being built for, so that tests can ask `cargo metadata`
    // about this platform's packages only (`--filter-platform`): a full
    // offline resolution needs every platform's packages, and `cargo build`
    // downloads only this one's.
    println!("cargo:rustc-env=INTROSPECT_BUILD_TARGET={}", env::var("TARGET")?);
    Ok(())
}
