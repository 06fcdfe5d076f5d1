//! `rxsentry-sensor`: loads the kernel hooks and streams enriched events to
//! the collector until SIGTERM/SIGINT, then detaches and flushes.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use sensor_user::{
    config::Config,
    events,
    hooks::{self, HookConfig, KernelDrops, ProcessHooks},
    identity, pipeline,
    policy::{self, manager::Command as PolicyCommand},
    transport::DropTracker,
    watch::{self, manager::Command as WatchCommand},
};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// How often the kernel's drop counters are copied into the batches' counters.
const DROP_POLL: Duration = Duration::from_millis(250);
/// How long SIGTERM may take to deliver what is queued.
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);

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
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override `collector.endpoint`.
    #[arg(long)]
    collector: Option<String>,
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

fn policy_command(action: PolicyCmd) -> anyhow::Result<()> {
    match action {
        PolicyCmd::Generate { dpkg, root, mode } => {
            if !dpkg && root.is_empty() {
                anyhow::bail!("nothing to generate from: give --dpkg and/or --root DIR");
            }
            let (mut files, mut skipped) = policy::generate::root_executables(&root);
            if dpkg {
                files.extend(policy::generate::dpkg_executables(std::path::Path::new(
                    "/var/lib/dpkg/info",
                ))?);
            }
            let (text, failed) = policy::generate::render(&files, &mode);
            skipped.extend(failed);
            print!("{text}");
            for s in skipped {
                eprintln!("skipped: {s}");
            }
            Ok(())
        }
        PolicyCmd::Check { path } => {
            let compiled = policy::manager::load(&path)?;
            println!(
                "policy {}: mode {}, {} files allowed, {} skipped",
                path.display(),
                compiled.mode.as_str(),
                compiled.entries.len(),
                compiled.skipped.len()
            );
            for s in &compiled.skipped {
                println!("skipped: {s}");
            }
            Ok(())
        }
    }
}

fn main() -> std::process::ExitCode {
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

fn run_main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Cmd::Policy { action }) = args.command {
        return policy_command(action);
    }
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(endpoint) = args.collector {
        config.collector.endpoint = endpoint;
        config.validate()?;
    }
    if args.check_config {
        if let Some(path) = &config.policy.path {
            let policy = policy::manager::load(path)?;
            println!(
                "policy {}: mode {}, {} files allowed, {} skipped",
                path.display(),
                policy.mode.as_str(),
                policy.entries.len(),
                policy.skipped.len()
            );
        }
        println!("configuration is valid");
        return Ok(());
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
        .block_on(run(config, args.config))
}

async fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let host = identity::host_identity(&config.host)?;
    tracing::info!(host_id = %host.host_id, instance = %host.sensor_instance_id, "starting");
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // A bad policy stops start-up here, before anything is attached.
    let policy = match &config.policy.path {
        Some(path) => Some((path.clone(), policy::manager::load(path)?)),
        None => None,
    };

    let mut hooks = ProcessHooks::load_and_attach(&HookConfig {
        process_ringbuf_bytes: config.kernel.process_ringbuf_bytes,
        file_ringbuf_bytes: config.kernel.file_ringbuf_bytes,
        files: config.files.enabled,
        net_ringbuf_bytes: config.kernel.net_ringbuf_bytes,
        network: hooks::net::NetHookConfig::from_config(&config.network),
    })
    .context("attaching the kernel hooks")?;
    tracing::info!("exec allowlist backend: {}", hooks.allowlist_backend());
    let ring = hooks.take_process_ring()?;
    let anchors = watch::Anchors::default();
    let (watch_tx, watch_thread, file_ring) = if config.files.enabled {
        // The sensor's own binary, config and policy: tamper evidence.
        let self_files: Vec<PathBuf> = std::env::current_exe()
            .into_iter()
            .chain(config_path.clone())
            .chain(config.policy.path.clone())
            .collect();
        let maps = hooks.take_watch_maps()?;
        let (tx, thread) =
            watch::manager::start(maps, config.files.clone(), self_files, anchors.clone())
                .context("file watch set")?;
        (Some(tx), Some(thread), Some(hooks.take_file_ring()?))
    } else {
        (None, None, None)
    };
    let net_ring = hooks.take_net_ring()?;
    if let Some(logger) = hooks.take_logger() {
        tokio::spawn(forward_kernel_logs(logger));
    }

    let (policy_tx, rules, policy_thread) = match policy {
        Some((path, compiled)) => {
            let maps = hooks.take_policy_maps()?;
            let (tx, rules, thread) = policy::manager::start(maps, path, compiled)?;
            (Some(tx), rules, Some(thread))
        }
        None => (None, policy::manager::RuleNames::default(), None),
    };
    let retrust_tx = policy_tx.clone();

    let drops = Arc::new(DropTracker::new());
    let pipeline = pipeline::spawn(&config, host, drops.clone())?;
    let sender = pipeline.sender();
    let reader_drops = drops.clone();
    let watch_notice = watch_tx.clone();
    let (stop_reader, reader_stopped) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(hooks::read_rings(
        // Process ring first (see read_rings), then files, then network.
        std::iter::once(ring)
            .chain(file_ring)
            .chain(std::iter::once(net_ring))
            .collect(),
        move |record| match events::decode(record) {
            Ok(events::KernelEvent::Policy(mut block)) => {
                block.rule = rules.name(block.rule_index);
                if let (Some(tx), Some(rule), sensor_common::reason::MODIFIED) =
                    (&retrust_tx, block.rule_index, block.reason)
                {
                    let _ = tx.send(PolicyCommand::Retrust {
                        file: sensor_common::FileId {
                            dev: events::user_dev_to_kernel(block.device),
                            _pad: 0,
                            ino: block.inode,
                        },
                        rule,
                        path: block.filename.clone(),
                    });
                }
                _ = sender.push(events::KernelEvent::Policy(block));
            }
            Ok(events::KernelEvent::File(mut file)) => {
                anchors.resolve_record(&mut file);
                if let Some(tx) = &watch_notice {
                    watch::manager::notice(tx, &file);
                }
                _ = sender.push(events::KernelEvent::File(file));
            }
            // A refused push is already counted by the pipeline.
            Ok(event) => _ = sender.push(event),
            Err(e) => {
                reader_drops.add_malformed_kernel_records(1);
                tracing::warn!(error = %e, "undecodable kernel record");
            }
        },
        async move {
            let _ = reader_stopped.await;
        },
    ));

    println!("rxsentry-sensor ready");
    tracing::info!(
        "kernel hooks attached; streaming to {}",
        config.collector.endpoint
    );
    let mut poll = tokio::time::interval(DROP_POLL);
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                if let Some(tx) = &watch_tx {
                    _ = tx.send(WatchCommand::Refresh("SIGHUP"));
                }
                match &policy_tx {
                    Some(tx) => _ = tx.send(PolicyCommand::Reload),
                    None => tracing::info!("SIGHUP: no policy configured"),
                }
            }
            _ = poll.tick() => match hooks.kernel_drops() {
                Ok(k) => record_kernel_drops(&drops, k),
                Err(e) => tracing::warn!(error = %e, "cannot read kernel drop counters"),
            },
        }
    }

    tracing::info!("stopping: detaching hooks, draining, flushing");
    if let (Some(tx), Some(thread)) = (&policy_tx, policy_thread) {
        let _ = tx.send(PolicyCommand::Stop);
        let _ = thread.join();
    }
    if let (Some(tx), Some(thread)) = (&watch_tx, watch_thread) {
        let _ = tx.send(WatchCommand::Stop);
        let _ = thread.join();
    }
    let final_drops = hooks.detach()?;
    record_kernel_drops(&drops, final_drops);
    let _ = stop_reader.send(());
    reader.await?.context("ring buffer reader")?;
    let report = pipeline.shutdown(FLUSH_DEADLINE).await;
    tracing::info!(?report, "stopped");
    if report.deadline_exceeded {
        anyhow::bail!(
            "collector did not take everything before the deadline: {} batches ({} events) unsent",
            report.unsent_batches,
            report.unsent_events
        );
    }
    Ok(())
}

fn record_kernel_drops(drops: &DropTracker, k: KernelDrops) {
    drops
        .set_kernel_ringbuf_full(k.process_ringbuf_full + k.file_ringbuf_full + k.net_ringbuf_full);
    drops.set_kernel_file_ringbuf_full(k.file_ringbuf_full);
    drops.set_kernel_net_ringbuf_full(k.net_ringbuf_full);
}

/// Copies aya-log records from the programs into `log` (and so `tracing`).
async fn forward_kernel_logs(logger: hooks::KernelLogger) {
    let mut fd = match hooks::register_readable(logger) {
        Ok(fd) => fd,
        Err(e) => return tracing::warn!(error = %e, "kernel log channel"),
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
