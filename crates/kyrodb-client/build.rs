//! Generates the KyroDB client and server stubs from `proto/kyrodb.proto`. `protox` parses the
//! proto in pure Rust, so no `protoc` is needed on the machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let proto = proto_dir.join("kyrodb.proto");
    println!("cargo:rerun-if-changed={}", proto.display());

    let descriptors = protox::compile([&proto], [&proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The fake server in test-support implements only what the client uses.
        .generate_default_stubs(true)
        .compile_fds(descriptors)?;
    Ok(())
}
