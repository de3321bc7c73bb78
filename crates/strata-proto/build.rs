//! Compiles `proto/strata/v1/*.proto` with protox (pure Rust, no system `protoc`) and
//! generates prost messages and tonic clients/servers, plus the file descriptor set the
//! server's reflection service publishes.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["strata/v1/strata.proto"];
    for f in [
        "strata.proto",
        "datasets.proto",
        "ingest.proto",
        "query.proto",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("strata/v1").join(f).display()
        );
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("strata_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Arrow IPC payloads stay `Bytes` slices of the received frame: no copy.
        .bytes(".strata.v1")
        .compile_fds(fds)?;
    Ok(())
}
