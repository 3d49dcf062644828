//! Compiles `proto/` into Rust with protox (a pure-Rust protobuf compiler, so no system `protoc` is
//! needed) and tonic-prost-build, and writes the descriptor set that gRPC reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/tollgate/v1/common.proto",
    "proto/tollgate/v1/inference.proto",
    "proto/tollgate/v1/catalog.proto",
    "proto/tollgate/v1/billing.proto",
    "proto/tollgate/v1/metering.proto",
    "proto/tollgate/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("tollgate_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
