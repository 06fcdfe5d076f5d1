//! `rxsentry`: the analyst's command line for an rxsentry collector.

mod client;
mod render;
mod tail;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// rxsentry analyst CLI.
#[derive(Debug, Parser)]
#[command(name = "rxsentry", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// One variant per subcommand, each with its own module and `run`; the
/// planned `hosts`, `isolate`, `release` and `policy` go here.
#[derive(Debug, Subcommand)]
enum Command {
    /// Follow the live event stream of a collector.
    Tail(tail::TailArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rxsentry: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Tail(args) => tail::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rxsentry: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
