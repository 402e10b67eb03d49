//! Compiles proto/verbund/v1/*.proto with protox (pure Rust), so no system protoc is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "verbund/v1/common.proto",
        "verbund/v1/crm.proto",
        "verbund/v1/admin.proto",
        "verbund/v1/federation.proto",
        "verbund/v1/consolidation.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    // The encoded set (with imports) feeds gRPC server reflection.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("verbund_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
