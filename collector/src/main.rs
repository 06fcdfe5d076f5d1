//! `rxsentry-collector`: the collector as a process.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use collector::config::{DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_DECOMPRESSED_BYTES};
use collector::{Collector, CollectorConfig};
use tracing_subscriber::EnvFilter;

mod pki_cmd;

/// Batches are decoded into many small allocations that another task frees;
/// mimalloc handles that cross-thread traffic far better than glibc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Receives telemetry from rxsentry sensors and streams it to subscribers.
#[derive(Debug, Parser)]
#[command(name = "rxsentry-collector", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on; port 0 picks a free port (printed at start).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Prometheus metrics at http://ADDR/metrics (plain HTTP, no
    /// authentication: keep it on loopback); `off`: no listener.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:9738", value_parser = parse_metrics_listen)]
    metrics_listen: MetricsListen,
    /// Largest accepted compressed batch payload, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BATCH_BYTES)]
    max_batch_bytes: usize,
    /// Largest accepted batch payload after decompression, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_DECOMPRESSED_BYTES)]
    max_decompressed_bytes: usize,
    /// Distinct host ids tracked at most; batches from more are refused.
    #[arg(long, default_value_t = CollectorConfig::default().max_hosts)]
    max_hosts: usize,
    /// Seconds between per-host stats log lines (0 turns them off).
    #[arg(long, default_value_t = 60)]
    stats_interval: u64,
    /// Operators allowed to use the analyst API (isolate, release, hosts):
    /// a TOML file of `[[operator]] name = "..." token_sha256 = "<hex>"`.
    /// Without it the analyst API refuses every call.
    #[arg(long, value_name = "FILE")]
    operators: Option<PathBuf>,
    /// The collector's state directory.
    #[arg(long, value_name = "DIR", default_value = audit::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The hash-chained audit log of analyst actions (created 0700, files
    /// 0600); default STATE_DIR/audit. The collector refuses to start if
    /// the chain there does not verify (`rxsentry audit verify DIR`).
    #[arg(long, value_name = "DIR")]
    audit_dir: Option<PathBuf>,
    /// Size at which an audit file is closed and the next one started.
    #[arg(long, value_name = "BYTES", default_value_t = audit::DEFAULT_MAX_FILE_BYTES)]
    audit_max_file_bytes: u64,
    /// The event store (SQLite, docs/store.md); default
    /// STATE_DIR/store/rxsentry.db (directory 0700, files 0600).
    #[arg(long, value_name = "FILE")]
    store: Option<PathBuf>,
    /// Delete stored items received longer ago than this (`30d`, `12h`,
    /// `90m`, `45s`; `0` keeps them).
    #[arg(long, value_name = "AGE", default_value = "30d", value_parser = parse_duration)]
    retention_max_age: Duration,
    /// Delete the oldest stored items while the store uses more than this
    /// many bytes (0: no limit).
    #[arg(long, value_name = "BYTES", default_value_t = 10 * 1024 * 1024 * 1024)]
    retention_max_bytes: u64,
    /// How often retention runs.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    retention_interval: Duration,
    /// Record a host as silent after this long without a batch (sensors
    /// send a heartbeat batch at least every 30 s).
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_duration)]
    silent_after: Duration,
    /// The collector's certificate; default STATE_DIR/tls/collector.pem
    /// (`rxsentry-collector pki init` creates it).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Its private key (0600); default STATE_DIR/tls/collector.key.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The CA that sensors' certificates must chain to; default STATE_DIR/pki/ca.pem.
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Serials of revoked certificates; default STATE_DIR/pki/revoked.txt.
    #[arg(long, value_name = "FILE")]
    deny_list: Option<PathBuf>,
    /// Serve plaintext gRPC, without certificates: for a loopback address
    /// only (refused on any other); sensors' host ids are then unchecked.
    #[arg(long)]
    insecure_plaintext: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The deployment's CA: init, issue-sensor, issue-collector, revoke,
    /// list, add-operator.
    #[command(subcommand)]
    Pki(pki_cmd::PkiCommand),
}

/// `30d`, `12h`, `90m`, `45s` or plain seconds.
/// `--metrics-listen`: an address, or off.
#[derive(Clone, Copy, Debug)]
enum MetricsListen {
    Off,
    On(SocketAddr),
}

fn parse_metrics_listen(text: &str) -> Result<MetricsListen, String> {
    match text {
        "off" => Ok(MetricsListen::Off),
        addr => addr
            .parse()
            .map(MetricsListen::On)
            .map_err(|e| format!("{addr:?}: {e} (an address such as 127.0.0.1:9738, or off)")),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and s, m, h or d"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    secs.map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?}: too large"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if let Some(Command::Pki(command)) = args.command {
        return pki_cmd::run(&args.state_dir, command);
    }
    // `pki add-operator` writes STATE_DIR/operators.toml by default.
    let operators_file = args.operators.clone().or_else(|| {
        let default = args.state_dir.join("operators.toml");
        default.exists().then_some(default)
    });
    let operators = match &operators_file {
        Some(path) => collector::auth::load_operators(path)?,
        None => Vec::new(),
    };
    tracing::info!(operators = operators.len(), "analyst API operators loaded");
    let audit = audit::AuditConfig {
        dir: args
            .audit_dir
            .clone()
            .unwrap_or_else(|| args.state_dir.join(audit::AUDIT_SUBDIR)),
        max_file_bytes: args.audit_max_file_bytes,
    };
    let tls = (!args.insecure_plaintext).then(|| pki::tls::ServerFiles {
        cert: args.tls_cert.clone().unwrap_or_else(|| {
            pki_cmd::tls_dir(&args.state_dir).join(format!("{}.pem", pki_cmd::COLLECTOR_STEM))
        }),
        key: args.tls_key.clone().unwrap_or_else(|| {
            pki_cmd::tls_dir(&args.state_dir).join(format!("{}.key", pki_cmd::COLLECTOR_STEM))
        }),
        client_ca: args
            .client_ca
            .clone()
            .unwrap_or_else(|| pki_cmd::pki_dir(&args.state_dir).join(pki::issue::CA_CERT)),
    });
    if let Some(files) = &tls {
        anyhow::ensure!(
            files.cert.exists(),
            "no TLS certificate at {} (run `rxsentry-collector --state-dir {} pki init`, \
             or give --tls-cert/--tls-key/--client-ca; --insecure-plaintext serves loopback only)",
            files.cert.display(),
            args.state_dir.display()
        );
    } else {
        anyhow::ensure!(
            args.listen.ip().is_loopback(),
            "--insecure-plaintext refuses {}: plaintext is for loopback only",
            args.listen
        );
        tracing::warn!("serving PLAINTEXT on loopback: sensors' host ids are not checked");
    }
    let deny_list = tls.as_ref().map(|_| {
        args.deny_list
            .clone()
            .unwrap_or_else(|| pki_cmd::pki_dir(&args.state_dir).join(pki::issue::DENY_LIST))
    });
    let store = collector::store::StoreConfig {
        path: args
            .store
            .clone()
            .unwrap_or_else(|| args.state_dir.join("store").join("rxsentry.db")),
        max_age: (!args.retention_max_age.is_zero()).then_some(args.retention_max_age),
        max_bytes: (args.retention_max_bytes > 0).then_some(args.retention_max_bytes),
        retention_interval: args.retention_interval,
        silent_after: args.silent_after,
    };
    let config = CollectorConfig {
        store: Some(store),
        operators,
        operators_file,
        tls,
        deny_list,
        audit: Some(audit),
        max_batch_bytes: args.max_batch_bytes,
        max_decompressed_bytes: args.max_decompressed_bytes,
        max_hosts: args.max_hosts,
        stats_log_interval: (args.stats_interval > 0)
            .then(|| Duration::from_secs(args.stats_interval)),
        ..CollectorConfig::default()
    };
    let collector = Collector::new(config)?;
    let shutdown = shutdown_signal()?;
    reload_on_hangup(collector.clone())?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // Before the listening line: whoever waits for it (tests, `cargo xtask
    // run`) finds the metrics address already logged.
    let metrics = match args.metrics_listen {
        MetricsListen::On(addr) => collector::metrics::serve(collector.clone(), addr).await,
        MetricsListen::Off => None,
    };
    // Tests and `cargo xtask run` wait for exactly this line.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "rxsentry-collector listening on {addr}")?;
    stdout.flush()?;
    drop(stdout);
    collector.serve(listener, shutdown).await?;
    if let Some(task) = metrics {
        task.abort();
    }
    Ok(())
}

/// SIGHUP re-reads the operators file and the deny list.
fn reload_on_hangup(collector: Collector) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match collector.reload_trust() {
                Ok(r) => tracing::info!(
                    operators = r.operators,
                    revoked = r.revoked,
                    "trust reloaded"
                ),
                Err(e) => tracing::error!("reload refused, the last good lists stay in force: {e}"),
            }
        }
    });
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed here, before
/// the listening line is printed, so a signal sent as soon as the line is
/// seen already means "stop gracefully".
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    })
}
