//! Builds the eBPF object from `sensor-ebpf` (nightly + bpf-linker) and puts
//! it in OUT_DIR for `include_bytes!`.
//!
//! When the eBPF toolchain is absent (plain `cargo check`/`clippy` on a host
//! that never ran `cargo xtask setup`) or `AYA_BUILD_SKIP=1`, an empty object is
//! written instead and the daemon refuses to start with a clear error.

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("cargo sets OUT_DIR")?);
    let object = out_dir.join("sensor-ebpf");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=PATH");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let have_linker = which::which("bpf-linker").is_ok();
    if skip || !have_linker {
        println!(
            "cargo:warning=eBPF object not built ({}); the sensor will refuse to start. Run `cargo xtask setup`.",
            if skip {
                "AYA_BUILD_SKIP set"
            } else {
                "bpf-linker not found"
            }
        );
        fs::write(&object, [])?;
        return Ok(());
    }
    let package = aya_build::Package {
        name: "sensor-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../sensor-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
