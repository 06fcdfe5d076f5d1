//! `rxsentry-sensor`: loads the kernel hooks and streams enriched events to
//! the collector until SIGTERM/SIGINT, then detaches and flushes.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use sensor_user::{
    config::Config,
    control, detect, events,
    hooks::{self, HookConfig, KernelDrops, ProcessHooks},
    identity, isolation, pipeline,
    policy::{self, manager::Command as PolicyCommand},
    transport::{DropTracker, EncodedEvents},
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
    #[arg(long, global = true)]
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

fn policy_command(action: PolicyCmd) -> anyhow::Result<()> {
    match action {
        PolicyCmd::Generate { dpkg, root, mode } => {
            if !dpkg && root.is_empty() {
                anyhow::bail!("nothing to generate from: give --dpkg and/or --root DIR");
            }
            let (mut files, mut unreadable) = policy::generate::root_executables(&root);
            if dpkg {
                files.extend(policy::generate::dpkg_executables(std::path::Path::new(
                    "/var/lib/dpkg/info",
                ))?);
            }
            let (text, failed) = policy::generate::render(&files, &mode);
            unreadable.extend(failed);
            print!("{text}");
            for s in unreadable {
                eprintln!("not in the policy: {s}");
            }
            Ok(())
        }
        PolicyCmd::Check { path } => {
            let compiled = policy::manager::load(&path)?;
            println!(
                "policy {}: mode {}, {} files allowed, {} not allowed",
                path.display(),
                compiled.mode.as_str(),
                compiled.entries.len(),
                compiled.not_allowed.len()
            );
            for s in &compiled.not_allowed {
                println!("not allowed: {s}");
            }
            Ok(())
        }
    }
}

/// `local:<user>`: the user behind sudo if any, else the caller's name.
fn local_requester() -> String {
    let user = std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| format!("uid{}", nix::unistd::getuid()));
    format!("local:{user}")
}

fn enabled_isolation(config: &Config) -> anyhow::Result<&isolation::IsolationConfig> {
    if !config.isolation.enabled {
        anyhow::bail!(
            "network isolation is disabled on this sensor (set isolation.enabled = true)"
        );
    }
    Ok(&config.isolation)
}

/// The local isolate/release: straight on the pinned maps and the state
/// file; the audit event is spooled for the daemon to send.
fn isolation_command(config: &Config, change: isolation::Change) -> anyhow::Result<()> {
    let iso_config = enabled_isolation(config)?;
    let mut iso = isolation::Isolation::open(iso_config, &config.collector.endpoint)?;
    match iso.apply(&change) {
        Ok(Some(event)) => {
            isolation::spool::write(&iso_config.state_dir, &event)?;
        }
        Ok(None) => println!("nothing to re-apply"),
        Err(e) => {
            let _ = isolation::spool::write(&iso_config.state_dir, &iso.failure_event(&change, &e));
            return Err(e.into());
        }
    }
    print_status(&iso.status()?);
    Ok(())
}

fn print_status(s: &proto::control::v1::IsolationStatus) {
    println!(
        "isolated: {}\nby: {}\nreason: {}\nchanged_at_unix_ms: {}\ninterfaces: {}",
        if s.isolated { "yes" } else { "no" },
        s.requester,
        s.reason,
        s.changed_at_unix_ms,
        s.interfaces.join(" ")
    );
}

fn isolation_admin(config: &Config, action: IsolationCmd) -> anyhow::Result<()> {
    let iso_config = enabled_isolation(config)?;
    match action {
        IsolationCmd::Status => {
            let mode = iso_config
                .attach_mode()
                .unwrap_or(isolation::kernel::AttachMode::Auto);
            let kernel = isolation::kernel::IsolationKernel::open(&iso_config.pin_dir, mode)?;
            let file = isolation::PersistedState::load(&iso_config.state_dir)?;
            let (dropped, allowed, first_drop) = kernel.stats()?;
            print_status(&proto::control::v1::IsolationStatus {
                isolated: kernel.state()?.isolated != 0,
                requester: file.requester,
                reason: file.reason,
                changed_at_unix_ms: file.changed_at_unix_ms,
                interfaces: kernel.attached()?,
            });
            let (runs, run_ns) = isolation::kernel::program_stats();
            println!(
                "dropped_packets: {dropped}\nallowed_packets: {allowed}\nfirst_drop_boottime_ns: {first_drop}\nprogram_runs: {runs}\nprogram_run_ns: {run_ns}"
            );
        }
        IsolationCmd::Detach => {
            let n = isolation::kernel::detach_all(&iso_config.pin_dir)?;
            println!(
                "removed {n} pins under {}: nothing is filtered now",
                iso_config.pin_dir.display()
            );
        }
    }
    Ok(())
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
    let command = match args.command {
        Some(Cmd::Policy { action }) => return policy_command(action),
        other => other,
    };
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(endpoint) = args.collector {
        config.collector.endpoint = endpoint;
        config.validate()?;
    }
    let requester = local_requester;
    match command {
        Some(Cmd::Isolate { reason, reapply }) => {
            let change = isolation::Change {
                action: if reapply {
                    isolation::Action::Reapply
                } else {
                    isolation::Action::Isolate
                },
                requester: requester(),
                reason: reason.unwrap_or_else(|| "re-applied at boot".to_owned()),
            };
            return isolation_command(&config, change);
        }
        Some(Cmd::Release { reason }) => {
            let change = isolation::Change {
                action: isolation::Action::Release,
                requester: requester(),
                reason,
            };
            return isolation_command(&config, change);
        }
        Some(Cmd::Isolation { action }) => return isolation_admin(&config, action),
        Some(Cmd::Policy { .. }) | None => {}
    }
    if args.check_config {
        if let Some(path) = &config.policy.path {
            let policy = policy::manager::load(path)?;
            println!(
                "policy {}: mode {}, {} files allowed, {} not allowed",
                path.display(),
                policy.mode.as_str(),
                policy.entries.len(),
                policy.not_allowed.len()
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
        typed_file_reads: config.kernel.typed_file_reads,
        fexit_file_opens: config.kernel.fexit_file_opens,
        net_ringbuf_bytes: config.kernel.net_ringbuf_bytes,
        network: hooks::net::NetHookConfig::from_config(&config.network),
    })
    .context("attaching the kernel hooks")?;
    tracing::info!("exec allowlist backend: {}", hooks.allowlist_backend());
    tracing::info!("file field reads: {}", hooks.file_reads());
    tracing::info!("file open hook: {}", hooks.file_open_hook());
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
    let mut repeats = if config.files.enabled {
        let window = std::time::Duration::from_millis(config.files.open_repeat_window_ms);
        Some(
            watch::repeats::OpenRepeats::start(hooks.take_repeat_maps()?, window)
                .context("open coalescing")?,
        )
    } else {
        None
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
    let pipeline = pipeline::spawn(&config, host.clone(), drops.clone())?;
    let sender = pipeline.sender();
    let (isolation_tx, isolation_task) = start_isolation(
        &config,
        &pipeline,
        host,
        hooks.allowlist_backend().to_string(),
    )
    .await?;
    let mut detector = detect::Detector::new(&config.response);
    let detection_tx = isolation_tx.clone();
    let reader_drops = drops.clone();
    let watch_notice = watch_tx.clone();
    let (stop_reader, reader_stopped) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(hooks::read_rings(
        // Process ring first (see read_rings), then files, then network.
        std::iter::once(ring)
            .chain(file_ring)
            .chain(std::iter::once(net_ring))
            .collect(),
        move |ring_event| {
            let record = match ring_event {
                hooks::RingEvent::Record(record) => record,
                hooks::RingEvent::Drained { last } => {
                    if let Some(repeats) = &mut repeats {
                        push_repeat_summaries(repeats, &sender, last);
                    }
                    return;
                }
            };
            match events::decode(record) {
                Ok(events::KernelEvent::Policy(mut block)) => {
                    block.rule = rules.name(block.rule_index);
                    if block.blocked {
                        respond(&mut detector, &detection_tx);
                    }
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
                    if let Some(repeats) = &mut repeats {
                        repeats.observe(&file);
                    }
                    _ = sender.push(events::KernelEvent::File(file));
                }
                // A refused push is already counted by the pipeline.
                Ok(event) => _ = sender.push(event),
                Err(e) => {
                    reader_drops.add_malformed_kernel_records(1);
                    tracing::warn!(error = %e, "undecodable kernel record");
                }
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
    // The isolation links and maps are pinned: they stay in force.
    drop(isolation_tx);
    for task in isolation_task {
        task.abort();
    }
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

/// Hands the summaries of the coalescing windows that are over to the
/// pipeline (all of them with `last`, once the hooks are detached).
fn push_repeat_summaries(
    repeats: &mut watch::repeats::OpenRepeats,
    sender: &pipeline::EventSender,
    last: bool,
) {
    match repeats.collect(std::time::Instant::now(), last) {
        Ok(summaries) => {
            for file in summaries {
                // A refused push is already counted by the pipeline.
                _ = sender.push(events::KernelEvent::File(Box::new(file)));
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot collect repeated opens"),
    }
}

/// Starts the control stream and, when enabled, opens the isolation state
/// (re-applying a persisted isolation) and the task that owns it. Returns
/// where isolation requests go and the tasks to stop at exit.
async fn start_isolation(
    config: &Config,
    pipeline: &pipeline::PipelineHandle,
    host: proto::telemetry::v1::HostIdentity,
    allowlist_backend: String,
) -> anyhow::Result<(
    tokio::sync::mpsc::Sender<isolation::service::Request>,
    Vec<tokio::task::JoinHandle<()>>,
)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<isolation::service::Request>(16);
    let audit = pipeline.audit_sender();
    let mut tasks = Vec::new();
    let (status_tx, status_rx) =
        tokio::sync::watch::channel(proto::control::v1::IsolationStatus::default());
    if config.isolation.enabled {
        let mut iso = isolation::Isolation::open(&config.isolation, &config.collector.endpoint)
            .context("network isolation")?;
        let startup = isolation::Change {
            action: isolation::Action::Reapply,
            requester: "sensor:startup".to_owned(),
            reason: "sensor started with a persisted isolation".to_owned(),
        };
        match iso.apply(&startup) {
            Ok(Some(event)) => _ = audit.send(EncodedEvents::from_events([&event])).await,
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot re-apply the persisted isolation");
                _ = audit
                    .send(EncodedEvents::from_events([
                        &iso.failure_event(&startup, &e)
                    ]))
                    .await;
            }
        }
        let status = iso.status()?;
        if status.isolated {
            tracing::warn!(by = %status.requester, reason = %status.reason,
                "this terminal is network-isolated");
            println!("rxsentry-sensor: network isolated");
        }
        tracing::info!(interfaces = ?status.interfaces, "isolation programs attached");
        status_tx.send_replace(status);
        let poll = std::time::Duration::from_millis(config.isolation.interface_poll_ms);
        tasks.push(tokio::spawn(isolation::service::run(
            iso, poll, audit, rx, status_tx,
        )));
    } else {
        // Commands still get an answer, and the status channel stays open.
        tasks.push(tokio::spawn(async move {
            let _status_tx = status_tx;
            while let Some(request) = rx.recv().await {
                if let Some(reply) = request.reply {
                    let _ = reply.send(Err(
                        "network isolation is disabled on this sensor (isolation.enabled = false)"
                            .to_owned(),
                    ));
                }
            }
        }));
    }
    tasks.push(tokio::spawn(control::run(
        config.collector.endpoint.clone(),
        control::Hello {
            host,
            allowlist_backend,
        },
        tx.clone(),
        status_rx,
    )));
    Ok((tx, tasks))
}

/// Feeds one blocked exec to the detection rules and asks for the response
/// of every rule that fired.
fn respond(
    detector: &mut detect::Detector,
    requests: &tokio::sync::mpsc::Sender<isolation::service::Request>,
) {
    for trigger in detector.observe("exec_blocked", std::time::Instant::now()) {
        tracing::warn!(rule = %trigger.requester, reason = %trigger.reason, "detection rule fired");
        let change = isolation::Change {
            action: isolation::Action::Isolate,
            requester: trigger.requester,
            reason: trigger.reason,
        };
        if requests
            .try_send(isolation::service::Request {
                change,
                reply: None,
            })
            .is_err()
        {
            tracing::error!("isolation request queue full: detection response not applied");
        }
    }
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
