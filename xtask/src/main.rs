//! Developer tasks for rxsentry: `cargo xtask setup | build | run | test |
//! vm-image | vm-test | bench`.
//!
//! Modelled on aya's own xtask: one small module per subcommand, plain
//! `std::process::Command` calls (helpers in `cmd`, which every module may
//! use and which uses none), and errors that say what failed and how to fix
//! it.

mod bench;
mod build;
mod cmd;
mod deb;
mod fuzz;
mod run;
mod setup;
mod test;
mod vm;

use std::process::ExitCode;

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
    /// Run the collector's hostile-input properties with many cases.
    Fuzz(fuzz::Options),
    /// Build the Debian packages rxsentry-sensor and rxsentry-soc
    /// (target/debian/).
    Deb(deb::Options),
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
        Cmd::Fuzz(opts) => fuzz::fuzz(&opts),
        Cmd::Deb(opts) => deb::deb(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
