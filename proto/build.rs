//! Generates the prost/tonic code for every crate from `proto/` in one place.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/rxsentry/telemetry/v1/telemetry.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure().compile_protos(&files, &["proto"])?;
    Ok(())
}
