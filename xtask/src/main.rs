//! Developer tasks for rxsentry: `cargo xtask setup | build | run | test |
//! vm-image | vm-test | bench`.
//!
//! Modelled on aya's own xtask: one small module per subcommand, plain
//! `std::process::Command` calls, and errors that say what failed and how to
//! fix it.

mod bench;
mod bench_isolation;
mod build;
mod run;
mod setup;
mod test;
mod vm;

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

/// The bench hosts the collector in this process: the same allocator as the
/// `rxsentry-collector` binary, so it measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "rxsentry developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh Debian bookworm machine needs (idempotent).
    Setup,
    /// Build every binary of the workspace (the eBPF object included).
    Build(build::Options),
    /// Setup, build, then run a local collector + sensor and tail the events.
    Run(run::Options),
    /// Setup, build, then run every test (as root, on the real kernel), the
    /// VM tests last.
    Test,
    /// Build the kiosk VM image of each guest kernel (target/vm-images/).
    VmImage(vm::image::Options),
    /// Boot each kiosk image in QEMU, run the in-guest tests, print the
    /// kernel x capability matrix.
    VmTest(vm::test::Options),
    /// Measure the sensor's overhead, throughput, wire size and memory.
    Bench(bench::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Build(opts) => build::build(&opts),
        Cmd::Run(opts) => run::run(&opts),
        Cmd::Test => test::test(),
        Cmd::VmImage(opts) => vm::image::vm_image(&opts),
        Cmd::VmTest(opts) => vm::test::vm_test(&opts),
        Cmd::Bench(opts) => bench::bench(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    match env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => root.join(dir), // join keeps an absolute path as is
        None => root.join("target"),
    }
}

/// `cargo` (the rustup proxy on PATH, so `+nightly` works) run from the
/// workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

/// A command line for messages: `prog arg1 arg2`.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` with inherited stdio, failing with the command line on a
/// non-zero exit or when it cannot start.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    println!("+ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout when it exits 0.
pub fn output_of(program: impl AsRef<OsStr>, args: &[&str]) -> Result<String> {
    let program = program.as_ref();
    let mut cmd = Command::new(program);
    cmd.args(args);
    let line = describe(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
