//! Compiles `proto/introspect/v1/introspect.proto` with protox (no system
//! protoc) into `OUT_DIR`, and writes the descriptor set used by reflection.

use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/introspect/v1/introspect.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile([proto], ["proto"])?;
    fs::write(out_dir.join("introspect_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
