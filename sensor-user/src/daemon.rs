//! The sensor daemon's life: [`Daemon::start`] starts the parts in
//! dependency order (kernel hooks, the managers that keep their maps, the
//! pipeline, isolation and the control stream, then the ring reader and its
//! [`Router`]), [`Daemon::run_until_signal`] serves until SIGTERM/SIGINT,
//! and [`Daemon::shutdown`] stops them in reverse so that every event the
//! kernel committed is delivered or counted.

use std::{path::PathBuf, sync::Arc, thread::JoinHandle, time::Duration};

use detect::yara::YaraStore;
use proto::{control::v1::IsolationStatus, telemetry::v1::HostIdentity};
use tokio::{
    signal::unix::{Signal as UnixSignal, SignalKind, signal},
    sync::{mpsc, oneshot, watch as status_watch},
    task::JoinHandle as TaskHandle,
};

use crate::{
    alerts::{self, Alerter, ResponseRoute, RuleSources, RuleStore, RulesError},
    config::{Config, YaraConfig},
    control,
    hooks::{self, HookConfig, HookError, KernelDrops, ProcessHooks},
    identity::{self, IdentityError},
    isolation::{self, IsolationError, service::Request as IsolationRequest},
    metrics::{CountingSink, SensorMetrics, Snapshot},
    pipeline::{self, PipelineError, PipelineHandle, ShutdownReport},
    policy::{
        self,
        file::PolicyError,
        manager::{Command as PolicyCommand, RuleNames},
    },
    respond::{self, Quarantine, QuarantineError, Responder},
    router::Router,
    transport::{DropTracker, EncodedEvents},
    watch::{
        self, WatchError,
        manager::Command as WatchCommand,
        repeats::{OpenRepeats, RepeatsError},
    },
};

/// How often the kernel's drop counters are copied into the batches' counters.
const DROP_POLL: Duration = Duration::from_millis(250);
/// How long SIGTERM may take to deliver what is queued.
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);
/// Isolation requests waiting for the isolation task.
const ISOLATION_QUEUE: usize = 16;

/// Why the daemon could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("attaching the kernel hooks")]
    Attach(#[source] HookError),
    #[error(transparent)]
    Hooks(#[from] HookError),
    #[error("file watch set")]
    Watch(#[source] WatchError),
    #[error("open coalescing")]
    Repeats(#[source] RepeatsError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("detection rules")]
    Rules(#[source] RulesError),
    #[error("detection responses")]
    Quarantine(#[source] QuarantineError),
    #[error("cannot start the responder thread")]
    Responder(#[source] std::io::Error),
    #[error("YARA rules")]
    Yara(#[source] detect::yara::YaraLoadError),
    #[error("network isolation")]
    Isolation(#[source] IsolationError),
    #[error("ring buffer reader")]
    Reader(#[source] std::io::Error),
    #[error("ring buffer reader stopped abnormally")]
    ReaderTask(#[source] tokio::task::JoinError),
    #[error(
        "collector did not take everything before the deadline: {batches} batches ({events} events) unsent"
    )]
    Unsent { batches: u64, events: u64 },
}

/// A manager thread and how to talk to it.
struct Manager<C> {
    tx: std::sync::mpsc::Sender<C>,
    thread: JoinHandle<()>,
}

impl<C> Manager<C> {
    fn stop(self, stop: C) {
        let _ = self.tx.send(stop);
        let _ = self.thread.join();
    }
}

/// The signals the daemon acts on.
struct Signals {
    term: UnixSignal,
    int: UnixSignal,
    hup: UnixSignal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// The running daemon.
pub struct Daemon {
    signals: Signals,
    hooks: ProcessHooks,
    drops: Arc<DropTracker>,
    policy: Option<Manager<PolicyCommand>>,
    watch: Option<Manager<WatchCommand>>,
    pipeline: PipelineHandle,
    /// Where isolation requests go; dropped first at shutdown.
    isolation: mpsc::Sender<IsolationRequest>,
    /// The isolation task and the control stream.
    tasks: Vec<TaskHandle<()>>,
    stop_reader: oneshot::Sender<()>,
    reader: TaskHandle<std::io::Result<()>>,
    /// The detection rules in force and where they are read from.
    rules: Option<(Arc<RuleStore>, RuleSources)>,
    /// The YARA rules in force and where they are read from.
    yara: Option<(Arc<YaraStore>, YaraConfig)>,
    /// The rule directories, looked at every [`crate::rule_files::POLL`].
    rule_files: Option<crate::rule_files::RuleFiles>,
    /// The figures `/metrics` shows; `isolation_status` is `None` when
    /// isolation is disabled.
    metrics: Arc<SensorMetrics>,
    isolation_status: Option<status_watch::Receiver<IsolationStatus>>,
    /// Where tamper findings go (the audit path: never dropped for load).
    tamper: mpsc::Sender<EncodedEvents>,
}

impl Daemon {
    /// Starts every part; on error, what was started is stopped again by
    /// drop (hooks detach, threads see their channels close).
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Self, DaemonError> {
        let mut host = identity::host_identity(&config.host)?;
        if !config.collector.insecure_plaintext {
            identity::bind_to_certificate(
                &mut host,
                config.host.id.as_deref(),
                &config.collector.cert_file,
            )?;
        }
        tracing::info!(host_id = %host.host_id, instance = %host.sensor_instance_id, "starting");
        let metrics = SensorMetrics::new(&host.host_id);
        let signals = Signals::install().map_err(DaemonError::Signals)?;
        // A bad policy stops start-up here, before anything is attached.
        let policy = match &config.policy.path {
            Some(path) => Some((path.clone(), policy::manager::load(path)?)),
            None => None,
        };
        // So does a broken detection rule file.
        let sources = RuleSources::from_config(&config);
        let sigma = if config.detection.enabled {
            let loaded = alerts::load(&sources).map_err(DaemonError::Rules)?;
            alerts::log_loaded(&loaded, "start");
            Some(RuleStore::new(loaded.rules))
        } else {
            tracing::info!("detection rules disabled");
            None
        };
        // And a YARA rule file that does not compile.
        let yara = if config.detection.enabled && config.detection.yara.enabled {
            let rules = crate::yara::load(&config.detection.yara).map_err(DaemonError::Yara)?;
            crate::yara::log_loaded(&rules, "start");
            Some(YaraStore::new(rules))
        } else {
            tracing::info!("YARA scans disabled");
            None
        };

        let mut hooks = ProcessHooks::load_and_attach(&HookConfig::from_config(&config))
            .map_err(DaemonError::Attach)?;
        tracing::info!("exec allowlist backend: {}", hooks.allowlist_backend());
        tracing::info!("file field reads: {}", hooks.file_reads());
        tracing::info!("file open hook: {}", hooks.file_open_hook());
        metrics.set_backend("exec_allowlist", hooks.allowlist_backend());
        metrics.set_backend("file_open", hooks.file_open_hook());
        metrics.set_backend("file_reads", hooks.file_reads());
        if config.isolation.enabled {
            let tc = isolation::kernel::attach_name(config.isolation.tc_attach);
            metrics.set_backend("isolation_tc", tc);
        }
        if let Some(store) = &sigma {
            metrics.set_sigma_hits(store.hits());
            metrics.set_sequence_hits(store.sequence_hits());
        }
        tracing::info!("io_uring: {}", hooks::io_uring_state());
        tracing::info!("beyond the syscall hooks: {}", hooks.coverage());
        let protected = protected_files(&config, config_path);
        // Process ring first (see read_rings), then files, then network.
        let mut rings = vec![hooks.take_process_ring()?];
        let anchors = watch::Anchors::default();
        let drops = Arc::new(DropTracker::new());
        let (watch, repeats) = if config.files.enabled {
            let self_files: Vec<PathBuf> = protected.iter().map(|(p, _)| p.clone()).collect();
            // Paths the detection rules need, watched from the first scan.
            let rule_watches = sigma.as_ref().map_or_else(Vec::new, |store| {
                watch::rule_paths::for_store(store, "start")
            });
            let maps = hooks.take_watch_maps()?;
            let (tx, thread) = watch::manager::start(
                maps,
                config.files.clone(),
                self_files,
                rule_watches,
                anchors.clone(),
                drops.clone(),
            )
            .map_err(DaemonError::Watch)?;
            rings.push(hooks.take_file_ring()?);
            let window = Duration::from_millis(config.files.open_repeat_window_ms);
            let repeats = OpenRepeats::start(hooks.take_repeat_maps()?, window)
                .map_err(DaemonError::Repeats)?;
            (Some(Manager { tx, thread }), Some(repeats))
        } else {
            (None, None)
        };
        rings.push(hooks.take_net_ring()?);
        if let Some(logger) = hooks.take_logger() {
            tokio::spawn(forward_kernel_logs(logger));
        }

        let (policy, rules) = match policy {
            Some((path, compiled)) => {
                let maps = hooks.take_policy_maps()?;
                let (tx, rules, thread) = policy::manager::start(maps, path, compiled)?;
                // The policy is in the pinned maps: our link replaces the
                // one an earlier sensor pinned (no gap, one link after).
                let ids = hooks.pin_verdict(&config.policy.pin_dir)?;
                tracing::info!(
                    pin_dir = %config.policy.pin_dir.display(),
                    link_id = ids.link,
                    program_id = ids.program,
                    "allowlist pinned: enforcement outlives this process"
                );
                (Some(Manager { tx, thread }), rules)
            }
            None => {
                if config.policy.pin_dir.join(policy::pins::LINK_PIN).exists() {
                    tracing::warn!(
                        pin_dir = %config.policy.pin_dir.display(),
                        "no policy configured, but an allowlist pinned by an earlier sensor is still enforced (remove it: rxsentry-sensor allowlist detach)"
                    );
                }
                (None, RuleNames::default())
            }
        };
        metrics.set_policy(rules.policy_state());

        // Rules ask the responder (its own thread, started once isolation
        // is) through `responses`.
        let (responses, requests) = respond::channel();
        let quarantine = match &sigma {
            Some(_) => Some(
                Quarantine::open(&config.detection.quarantine_dir)
                    .map_err(DaemonError::Quarantine)?,
            ),
            None => None,
        };
        let alerter = sigma.clone().zip(quarantine.clone()).map(|(store, q)| {
            Alerter::new(store).with_responses(ResponseRoute {
                responses,
                quarantine: q,
                enabled: config.detection.responses,
            })
        });
        let pipeline = pipeline::spawn_with_detection(
            &config,
            host.clone(),
            drops.clone(),
            alerter,
            yara.clone(),
        )?;
        let audit_events = pipeline.audit_sender();
        let (isolation, mut tasks, isolation_status) = start_isolation(
            &config,
            &pipeline,
            host,
            hooks.allowlist_backend().to_string(),
        )
        .await?;

        if let Some(quarantine) = quarantine {
            Responder {
                isolation: config.isolation.enabled.then(|| isolation.clone()),
                audit: pipeline.audit_sender(),
                quarantine,
            }
            .spawn(requests)
            .map_err(DaemonError::Responder)?;
        }
        let mut judge = crate::tamper::Judge::new(
            [&config.policy.pin_dir, &config.isolation.pin_dir]
                .map(Clone::clone)
                .into(),
            protected,
        );
        arm_write_guard(&mut hooks, &mut judge);
        let sink = CountingSink::new(pipeline.sender(), metrics.clone());
        let mut router = Router::new(sink, drops.clone())
            .with_policy(rules, policy.as_ref().map(|m| m.tx.clone()))
            .with_watch(anchors, watch.as_ref().map(|m| m.tx.clone()))
            .with_repeats(repeats)
            .with_tamper(judge);
        let (stop_reader, reader_stopped) = oneshot::channel::<()>();
        let reader = tokio::spawn(hooks::read_rings(
            rings,
            move |ring_event| router.on_ring_event(ring_event),
            async move {
                let _ = reader_stopped.await;
            },
        ));
        tracing::info!(
            "kernel hooks attached; streaming to {}",
            config.collector.endpoint
        );
        if config.metrics.enabled {
            tasks.extend(metrics.serve(config.metrics.listen).await);
        }
        Ok(Self {
            signals,
            hooks,
            drops,
            policy,
            watch,
            pipeline,
            isolation,
            tasks,
            stop_reader,
            reader,
            rules: sigma.map(|store| (store, sources)),
            yara: yara.map(|store| (store, config.detection.yara.clone())),
            rule_files: config.detection.enabled.then(|| {
                let mut dirs = config.detection.rule_dirs.clone();
                dirs.extend(config.detection.yara.rule_dirs.iter().cloned());
                crate::rule_files::RuleFiles::new(dirs)
            }),
            metrics,
            isolation_status,
            tamper: audit_events,
        })
    }

    /// Serves until SIGTERM or SIGINT. SIGHUP re-reads the watched set and
    /// the policy; the kernel's drop counters are copied meanwhile.
    pub async fn run_until_signal(&mut self) {
        let mut poll = tokio::time::interval(DROP_POLL);
        let mut tamper = tokio::time::interval(crate::tamper::POLL);
        let mut rule_files = tokio::time::interval(crate::rule_files::POLL);
        loop {
            tokio::select! {
                _ = self.signals.term.recv() => return,
                _ = self.signals.int.recv() => return,
                _ = self.signals.hup.recv() => self.reload(),
                _ = rule_files.tick() => {
                    if self.rule_files.as_mut().is_some_and(|f| f.changed()) {
                        self.reload_rules("rule files changed");
                    }
                }
                _ = tamper.tick() => self.check_tamper().await,
                _ = poll.tick() => match self.hooks.kernel_drops() {
                    Ok(k) => {
                        record_kernel_drops(&self.drops, k);
                        self.publish_metrics(k.kernel_read_failed);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read kernel drop counters"),
                },
            }
        }
    }

    /// The snapshot part of the metrics (see `metrics`).
    fn publish_metrics(&self, kernel_incomplete: u64) {
        self.metrics.publish(Snapshot {
            pipeline: self.pipeline.stats(),
            kernel_incomplete,
            isolation: self.isolation_status.as_ref().map(|s| s.borrow().clone()),
        });
    }

    /// Checks the pins this sensor keeps; reports (and logs) what someone
    /// else changed, after putting it back where it can.
    async fn check_tamper(&mut self) {
        let Some(finding) = self.hooks.check_verdict_pin() else {
            return;
        };
        let count = crate::tamper::count_one();
        tracing::warn!(
            object = finding.object,
            action = %finding.action,
            target = %finding.target,
            restored = finding.restored,
            error = %finding.error,
            count,
            "tamper: someone else changed rxsentry's kernel objects"
        );
        let event = finding.event(count);
        _ = self.tamper.send(EncodedEvents::from_events([&event])).await;
    }

    fn reload(&self) {
        if let Some(watch) = &self.watch {
            _ = watch.tx.send(WatchCommand::Refresh("SIGHUP"));
        }
        match &self.policy {
            Some(policy) => _ = policy.tx.send(PolicyCommand::Reload),
            None => tracing::info!("SIGHUP: no policy configured"),
        }
        self.reload_rules("SIGHUP");
    }

    /// Re-reads the Sigma and YARA rules (off the signal loop); the paths
    /// new file rules need join the watched set. A broken file keeps the
    /// last good set, logged with `why`.
    fn reload_rules(&self, why: &'static str) {
        // Reloads run one at a time, each reading the files as they are
        // when it starts: two in a row (SIGHUP and a file change) end with
        // the newer files in force, and the watched set sent last is the
        // set in force.
        static SIGMA: std::sync::Mutex<()> = std::sync::Mutex::new(());
        static YARA: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let one_at_a_time = |lock: &'static std::sync::Mutex<()>| match lock.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((store, config)) = &self.rules {
            let (store, config) = (store.clone(), config.clone());
            let watch = self.watch.as_ref().map(|w| w.tx.clone());
            // Reading and compiling files: off the signal loop. The outcome
            // (or why the last good set stays) is logged there; the paths
            // the new rules need join the watched set.
            tokio::task::spawn_blocking(move || {
                let _one = one_at_a_time(&SIGMA);
                if store.reload(&config, why).is_ok()
                    && let Some(watch) = watch
                {
                    let rules = watch::rule_paths::for_store(&store, why);
                    _ = watch.send(WatchCommand::RuleWatches(rules));
                }
            });
        }
        if let Some((store, config)) = &self.yara {
            let (store, config) = (store.clone(), config.clone());
            tokio::task::spawn_blocking(move || {
                let _one = one_at_a_time(&YARA);
                _ = crate::yara::reload(&store, &config, why);
            });
        }
    }

    /// Stops in reverse order: responses and managers, then the hooks (the
    /// final drop counts), then the reader's last drain, then the pipeline's
    /// flush within [`FLUSH_DEADLINE`].
    pub async fn shutdown(self) -> Result<ShutdownReport, DaemonError> {
        tracing::info!("stopping: detaching hooks, draining, flushing");
        // The isolation links and maps are pinned: they stay in force.
        drop(self.isolation);
        for task in self.tasks {
            task.abort();
        }
        if let Some(policy) = self.policy {
            policy.stop(PolicyCommand::Stop);
        }
        if let Some(watch) = self.watch {
            watch.stop(WatchCommand::Stop);
        }
        let final_drops = self.hooks.detach()?;
        record_kernel_drops(&self.drops, final_drops);
        let _ = self.stop_reader.send(());
        self.reader
            .await
            .map_err(DaemonError::ReaderTask)?
            .map_err(DaemonError::Reader)?;
        let report = self.pipeline.shutdown(FLUSH_DEADLINE).await;
        tracing::info!(?report, "stopped");
        if report.deadline_exceeded {
            return Err(DaemonError::Unsent {
                batches: report.unsent_batches,
                events: report.unsent_events,
            });
        }
        Ok(report)
    }
}

/// Starts the control stream and, when enabled, opens the isolation state
/// (re-applying a persisted isolation) and the task that owns it. Returns
/// where isolation requests go, the tasks to stop at exit and, when
/// The sensor's own files, always watched for changes and reported as
/// tampering when another process changes them: its binary, config and
/// policy, and the directories of its state (isolation) and spool.
fn protected_files(config: &Config, config_path: Option<PathBuf>) -> Vec<(PathBuf, &'static str)> {
    let mut files: Vec<(PathBuf, &'static str)> = std::env::current_exe()
        .into_iter()
        .map(|p| (p, "binary"))
        .chain(config_path.map(|p| (p, "config")))
        .chain(config.policy.path.clone().map(|p| (p, "policy")))
        .collect();
    // The directories are made now if missing, as their owners would
    // make them (which report any error), so they are watched from the
    // first scan.
    if config.isolation.enabled {
        _ = std::fs::create_dir_all(&config.isolation.state_dir);
        files.push((
            config.isolation.state_dir.clone(),
            crate::tamper::STATE_DIRECTORY,
        ));
    }
    if config.spool.enabled {
        use std::os::unix::fs::DirBuilderExt as _;
        _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.spool.dir);
        files.push((config.spool.dir.clone(), "spool directory"));
    }
    files
}

/// Arms the BPF-LSM write guard over the files `judge` protects, where
/// it is attached; logs what it guards or why it does not.
fn arm_write_guard(hooks: &mut ProcessHooks, judge: &mut crate::tamper::Judge) {
    let mut guard = match hooks.take_write_guard() {
        Ok(guard) => guard,
        Err(why) => return tracing::info!("write guard: {why}"),
    };
    let guarded = judge.guarded();
    match guard.arm(&guarded) {
        Ok(()) => {
            judge.set_guard_armed();
            tracing::info!(
                files = guarded.len(),
                "write guard: BPF-LSM refuses other processes changes to the sensor's binary, config, policy, state and spool"
            );
        }
        Err(e) => tracing::warn!("write guard: not armed: {e}"),
    }
}

/// Starts the control stream and, when enabled, opens the isolation state
/// (re-applying a persisted isolation) and the task that owns it. Returns
/// where isolation requests go, the tasks to stop at exit and, when
/// enabled, the isolation state as it changes.
async fn start_isolation(
    config: &Config,
    pipeline: &PipelineHandle,
    host: HostIdentity,
    allowlist_backend: String,
) -> Result<
    (
        mpsc::Sender<IsolationRequest>,
        Vec<TaskHandle<()>>,
        Option<status_watch::Receiver<IsolationStatus>>,
    ),
    DaemonError,
> {
    let (tx, mut rx) = mpsc::channel::<IsolationRequest>(ISOLATION_QUEUE);
    let audit = pipeline.audit_sender();
    let mut tasks = Vec::new();
    let (status_tx, status_rx) = status_watch::channel(IsolationStatus::default());
    let watched = config.isolation.enabled.then(|| status_rx.clone());
    if config.isolation.enabled {
        let mut iso = isolation::Isolation::open(&config.isolation, &config.collector.endpoint)
            .map_err(DaemonError::Isolation)?;
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
        let status = iso.status().map_err(DaemonError::Isolation)?;
        if status.isolated {
            tracing::warn!(by = %status.requester, reason = %status.reason,
                "this terminal is network-isolated");
            // On stdout with the readiness line, for the supervisor.
            println!("rxsentry-sensor: network isolated");
        }
        tracing::info!(interfaces = ?status.interfaces, "isolation programs attached");
        status_tx.send_replace(status);
        let poll = Duration::from_millis(config.isolation.interface_poll_ms);
        tasks.push(tokio::spawn(isolation::service::run(
            iso,
            poll,
            audit,
            rx,
            status_tx,
            pipeline.spooled_audit_files().to_vec(),
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
        crate::transport::CollectorLink::from_config(&config.collector),
        control::Hello {
            host,
            allowlist_backend,
        },
        tx.clone(),
        status_rx,
    )));
    Ok((tx, tasks, watched))
}

fn record_kernel_drops(drops: &DropTracker, k: KernelDrops) {
    drops
        .set_kernel_ringbuf_full(k.process_ringbuf_full + k.file_ringbuf_full + k.net_ringbuf_full);
    drops.set_kernel_file_ringbuf_full(k.file_ringbuf_full);
    drops.set_kernel_file_identity_full(k.file_identity_full);
    drops.set_kernel_net_ringbuf_full(k.net_ringbuf_full);
    drops.set_kernel_exec_ringbuf_full(k.exec_ringbuf_full);
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
