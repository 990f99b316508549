//! Generates the Rust code of the dvd gRPC contracts with tonic-prost-build,
//! using the vendored `protoc` (no system protoc needed), and writes a file
//! descriptor set for gRPC reflection.

use std::path::PathBuf;

/// Proto files, relative to the crate root.
const PROTOS: &[&str] = &[
    "proto/dvd/common/v1/common.proto",
    "proto/dvd/feature/v1/feature.proto",
    "proto/dvd/vision/v1/vision.proto",
    "proto/dvd/language/v1/language.proto",
    "proto/dvd/api/v1/api.proto",
];

/// Import root of the proto files.
const INCLUDE: &str = "proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={INCLUDE}");

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        // Every proto `bytes` field becomes `bytes::Bytes`, so image data and
        // hashes move between layers without copies.
        .bytes(".")
        .file_descriptor_set_path(out_dir.join("dvd_descriptor.bin"))
        .compile_with_config(config, PROTOS, &[INCLUDE])?;
    Ok(())
}
