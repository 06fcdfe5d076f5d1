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
    transport::DropTracker,
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(endpoint) = args.collector {
        config.collector.endpoint = endpoint;
        config.validate()?;
    }
    if args.check_config {
        println!("configuration is valid");
        return Ok(());
    }
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .context("log.level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rxsentry-sensor")
        .enable_all()
        .build()?
        .block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let host = identity::host_identity(&config.host)?;
    tracing::info!(host_id = %host.host_id, instance = %host.sensor_instance_id, "starting");
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let mut hooks = ProcessHooks::load_and_attach(&HookConfig {
        process_ringbuf_bytes: config.kernel.process_ringbuf_bytes,
    })
    .context("attaching the kernel hooks")?;
    let ring = hooks.take_process_ring()?;
    if let Some(logger) = hooks.take_logger() {
        tokio::spawn(forward_kernel_logs(logger));
    }

    let drops = Arc::new(DropTracker::new());
    let pipeline = pipeline::spawn(&config, host, drops.clone())?;
    let sender = pipeline.sender();
    let reader_drops = drops.clone();
    let (stop_reader, reader_stopped) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(hooks::read_ring(
        ring,
        move |record| match events::decode(record) {
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
            _ = poll.tick() => match hooks.kernel_drops() {
                Ok(k) => record_kernel_drops(&drops, k),
                Err(e) => tracing::warn!(error = %e, "cannot read kernel drop counters"),
            },
        }
    }

    tracing::info!("stopping: detaching hooks, draining, flushing");
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
    drops.set_kernel_ringbuf_full(k.process_ringbuf_full);
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
