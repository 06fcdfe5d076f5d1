//! `cargo xtask build`: every binary of the workspace. The eBPF object is
//! built by sensor-user's build.rs (aya-build, nightly, bpf-linker); without
//! bpf-linker it silently writes an empty object, so check for it first.

use anyhow::{Result, bail};
use clap::Args;

use crate::{
    cmd::{cargo, run_cmd},
    setup::bpf_linker_version,
};

#[derive(Args, Default)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn build(opts: &Options) -> Result<()> {
    println!("== build");
    let Some(linker) = bpf_linker_version() else {
        bail!(
            "bpf-linker not found: without it the eBPF object is empty and the sensor \
             refuses to start. Run `cargo xtask setup` first"
        );
    };
    println!("ok: {linker}");
    let mut cmd = cargo();
    cmd.arg("build");
    if opts.release {
        cmd.arg("--release");
    }
    // sensor-ebpf only builds for bpfel-unknown-none (sensor-user's build.rs
    // does that); as a host crate it does not build.
    cmd.args(["--workspace", "--exclude", "sensor-ebpf", "--bins"]);
    run_cmd(&mut cmd)
}
