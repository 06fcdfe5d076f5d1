//! Generates the prost/tonic code for every crate from `proto/` in one place.
//!
//! The .proto files are parsed by protox (a pure-Rust protobuf compiler), so
//! building needs no `protoc` on the machine: `cargo xtask setup` itself
//! depends on this crate and must build on a fresh machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/rxsentry/telemetry/v1/telemetry.proto",
        "proto/rxsentry/control/v1/control.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
