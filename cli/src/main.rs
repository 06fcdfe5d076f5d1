//! `rxsentry`: the analyst's command line for an rxsentry collector.

mod admin;
mod audit;
mod client;
mod events;
mod operators;
mod render;
mod rules;
mod tail;
mod when;

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
/// planned `policy` goes here.
#[derive(Debug, Subcommand)]
enum Command {
    /// Follow the live event stream of a collector (`--since 1h`: replay
    /// the stored events first).
    Tail(tail::TailArgs),
    /// Query the events and host records stored by the collector.
    Events(events::EventsArgs),
    /// Cut a terminal off the network (all but its collector and the
    /// peers its config allows); needs an operator token.
    Isolate(admin::ChangeArgs),
    /// Give an isolated terminal its network back; needs an operator token.
    Release(admin::ChangeArgs),
    /// Each host's isolation state, sensor health and last-seen time.
    Hosts(admin::HostsArgs),
    /// Make the collector re-read its operators file and deny list (needs
    /// the admin role; what SIGHUP does on the collector host).
    ReloadTrust(client::Access),
    /// List, add or remove the collector's operators (admin role).
    Operators(operators::OperatorsArgs),
    /// The collector's audit log of analyst actions: `verify` its hash
    /// chain, `show` its records (reads the directory, not the network).
    Audit(audit::AuditArgs),
    /// Detection rules without a sensor: `list` what a sensor would load
    /// (and refuse, and why), `test` a Sigma rule file on recorded events.
    Rules(rules::RulesArgs),
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
            Command::Events(args) => events::run(args).await,
            Command::Isolate(args) => admin::change(args, true).await,
            Command::Release(args) => admin::change(args, false).await,
            Command::Hosts(args) => admin::hosts(args).await,
            Command::ReloadTrust(access) => admin::reload_trust(access).await,
            Command::Operators(args) => operators::run(args).await,
            Command::Audit(args) => audit::run(args),
            Command::Rules(args) => rules::run(args),
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

/// Parses one subcommand's flags alone, for the unit tests.
#[cfg(test)]
mod test_args {
    #[derive(clap::Parser)]
    struct Wrapper<T: clap::Args> {
        #[command(flatten)]
        inner: T,
    }

    pub fn try_parse<T: clap::Args>(name: &str, args: &[&str]) -> Result<T, clap::Error> {
        use clap::Parser;
        Wrapper::<T>::try_parse_from(std::iter::once(name).chain(args.iter().copied()))
            .map(|w| w.inner)
    }

    pub fn parse<T: clap::Args>(name: &str, args: &[&str]) -> T {
        try_parse(name, args).unwrap()
    }
}
