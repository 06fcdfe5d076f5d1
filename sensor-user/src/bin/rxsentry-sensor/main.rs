//! `rxsentry-sensor`: loads the kernel hooks and streams enriched events to
//! the collector until SIGTERM/SIGINT, then detaches and flushes. This file
//! parses the command line and dispatches: the daemon is
//! `sensor_user::daemon`, the other subcommands are in `commands`.

mod commands;
mod status;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use sensor_user::{config::Config, daemon::Daemon, isolation};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "rxsentry-sensor",
    version,
    about = "rxsentry kernel sensor daemon"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Configuration file (TOML); every key is documented in
    /// config/rxsentry-sensor.example.toml. Without it, the built-in defaults.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Override `collector.endpoint`.
    #[arg(long)]
    collector: Option<String>,
    /// Override `collector.ca_file`, `cert_file` and `key_file` with DIR's
    /// ca.pem, sensor.pem and sensor.key (`rxsentry-collector pki issue-sensor --out DIR`).
    #[arg(long, value_name = "DIR")]
    collector_tls: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Application allowlist tools.
    Policy {
        #[command(subcommand)]
        action: PolicyCmd,
    },
    /// Isolate this terminal from the network now, acting on the pinned
    /// state directly (works while the daemon is down).
    Isolate {
        /// Why (recorded in the audit event). Required unless --reapply.
        #[arg(long, required_unless_present = "reapply")]
        reason: Option<String>,
        /// Re-apply the persisted state (boot, rxsentry-isolation.service):
        /// isolates again only if the state file says isolated.
        #[arg(long)]
        reapply: bool,
    },
    /// Release this terminal's network isolation.
    Release {
        /// Why (recorded in the audit event).
        #[arg(long)]
        reason: String,
    },
    /// Isolation state and emergency tools.
    Isolation {
        #[command(subcommand)]
        action: IsolationCmd,
    },
    /// Whether the daemon runs and what it is doing: events, losses,
    /// batches, spool, backends, policy, isolation, rule hits (read from
    /// its metrics endpoint). Exit status 3 when it is not running.
    Status {
        /// Read this address instead of the config's `[metrics] listen`.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Print the metrics page as served (Prometheus text format).
        #[arg(long)]
        raw: bool,
    },
    /// The pinned exec allowlist: enforced in the kernel whether the daemon
    /// runs or not.
    Allowlist {
        #[command(subcommand)]
        action: AllowlistCmd,
    },
}

#[derive(Debug, clap::Subcommand)]
enum AllowlistCmd {
    /// Print what is pinned: the verdict link and program, the mode, the
    /// generation and how many files are allowed.
    Status,
    /// Remove the pins: the verdict program detaches and every exec is
    /// allowed until a sensor starts again (package removal, emergencies).
    Detach,
    /// Compile the configured policy, attach the verdict program, pin it
    /// with the policy and exit (boot: rxsentry-allowlist.service, before
    /// the kiosk apps). The daemon adopts it when it starts. Refused when a
    /// verdict link is already pinned: the daemon owns reloads (SIGHUP).
    Apply,
}

#[derive(Debug, clap::Subcommand)]
enum IsolationCmd {
    /// Print the isolation state, the interfaces covered and the counters.
    Status,
    /// Emergency: remove every pin, so the programs detach and nothing is
    /// filtered. The state file is left alone: a sensor that starts again
    /// re-applies it (use `release` when the sensor works).
    Detach,
}

#[derive(Debug, clap::Subcommand)]
enum PolicyCmd {
    /// Print a starting policy (paths + SHA-256) for what is installed.
    Generate {
        /// Include every executable dpkg installed (/var/lib/dpkg/info/*.list).
        #[arg(long)]
        dpkg: bool,
        /// Include every executable below this directory (repeatable).
        #[arg(long)]
        root: Vec<PathBuf>,
        /// Mode written into the policy: start with monitor, then enforce.
        #[arg(long, default_value = "monitor", value_parser = ["monitor", "enforce"])]
        mode: String,
    },
    /// Validate and hash a policy file, print what it allows.
    Check { path: PathBuf },
}

fn main() -> std::process::ExitCode {
    sensor_user::memory::tune_allocator();
    match run_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rxsentry-sensor: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// One line for an operator: each cause once, even when an error's own
/// message already quotes its source.
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `Type=notify` (packaging/systemd/rxsentry-sensor.service): tells systemd
/// the hooks are attached, so the units ordered after the sensor (the
/// kiosk apps) start only then. Nothing without `$NOTIFY_SOCKET`; a failure
/// is logged (systemd then times the start out, and says so).
fn notify_systemd_ready() {
    use std::os::{linux::net::SocketAddrExt as _, unix::net};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => net::SocketAddr::from_abstract_name(name)?,
            None => net::SocketAddr::from_pathname(&path)?,
        };
        net::UnixDatagram::unbound()?.send_to_addr(b"READY=1", &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::error!(error = %e, "cannot tell systemd the sensor is ready");
    }
}

fn run_main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Cmd::Policy { action }) = args.command {
        return match action {
            PolicyCmd::Generate { dpkg, root, mode } => {
                commands::policy_generate(dpkg, &root, &mode)
            }
            PolicyCmd::Check { path } => commands::policy_check(&path),
        };
    }
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &args.collector_tls {
        config.collector.ca_file = dir.join("ca.pem");
        config.collector.cert_file = dir.join("sensor.pem");
        config.collector.key_file = dir.join("sensor.key");
        config.collector.insecure_plaintext = false;
    }
    let overridden = args.collector.is_some() || args.collector_tls.is_some();
    if let Some(endpoint) = args.collector {
        config.collector.endpoint = endpoint;
    }
    if overridden {
        config.validate()?;
    }
    let local_change = |action, reason| isolation::Change {
        action,
        requester: commands::local_requester(),
        reason,
    };
    match args.command {
        Some(Cmd::Isolate { reason, reapply }) => {
            let (action, reason) = match reapply {
                true => (
                    isolation::Action::Reapply,
                    reason.unwrap_or_else(|| "re-applied at boot".to_owned()),
                ),
                false => (isolation::Action::Isolate, reason.unwrap_or_default()),
            };
            return commands::isolation_change(&config, local_change(action, reason));
        }
        Some(Cmd::Release { reason }) => {
            let change = local_change(isolation::Action::Release, reason);
            return commands::isolation_change(&config, change);
        }
        Some(Cmd::Isolation {
            action: IsolationCmd::Status,
        }) => return commands::isolation_status(&config),
        Some(Cmd::Isolation {
            action: IsolationCmd::Detach,
        }) => return commands::isolation_detach(&config),
        Some(Cmd::Status { metrics, raw }) => {
            if !status::run(&config, metrics, raw)? {
                std::process::exit(status::NOT_RUNNING.into());
            }
            return Ok(());
        }
        Some(Cmd::Allowlist { action }) => {
            return match action {
                AllowlistCmd::Status => commands::allowlist_status(&config),
                AllowlistCmd::Detach => commands::allowlist_detach(&config),
                AllowlistCmd::Apply => commands::allowlist_apply(&config),
            };
        }
        Some(Cmd::Policy { .. }) | None => {}
    }
    if args.check_config {
        return commands::check_config(&config);
    }
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .context("log.level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // journald and log files get plain text; a terminal gets colour.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rxsentry-sensor")
        .enable_all()
        .build()?
        .block_on(async {
            let mut daemon = Daemon::start(config, args.config).await?;
            println!("rxsentry-sensor ready");
            notify_systemd_ready();
            daemon.run_until_signal().await;
            daemon.shutdown().await?;
            Ok(())
        })
}
