//! The collector's store (docs/store.md): sustained ingest into SQLite,
//! bytes on disk per event, and query times for one host over a stored
//! day. The collector is the release `rxsentry-collector` binary, a process
//! of its own; the load generator is this process, on the same two cores.
//! Batches are built and compressed before the clock starts: the generator
//! only sends, like a sensor replaying its spool.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use collector::testkit::{self, SensorStream};
use proto::telemetry::v1::{
    Event, EventKind, FileEvent, HostIdentity, Process, QueryRequest, SensorBatch, event,
    file_event, telemetry_subscribe_client::TelemetrySubscribeClient,
};

use super::common::{block_on, median_f64};

/// Heading of the store section in docs/bench.md.
pub const HEADING: &str = "## Store";

/// A busy kiosk: 10 events/s around the clock.
const DAY_EVENTS: u64 = 864_000;
/// UTC start of the stored day (2026-12-03T00:00:00Z).
const DAY_START_NS: u64 = 1_796_256_000_000_000_000;
/// The sensor's default `batching.max_events`.
const EVENTS_PER_BATCH: u64 = 256;
/// Batches a stream keeps in flight (a sensor's send window).
const WINDOW: u64 = 32;
/// Query repetitions (median).
const QUERY_RUNS: usize = 3;

#[derive(Debug, Default)]
pub struct StoreReport {
    pub one_stream_events: u64,
    pub one_stream_secs: f64,
    pub streams: usize,
    pub multi_events: u64,
    pub multi_secs: f64,
    pub disk_bytes: u64,
    pub stored_events: u64,
    pub day_query_secs: f64,
    pub day_query_items: u64,
    pub first_page_ms: f64,
    pub hour_exec_ms: f64,
    pub hour_exec_items: u64,
    /// `rxsentry events --json` (release) over the whole day, to /dev/null.
    pub cli_day_secs: f64,
}

/// Event `i` of a host's day: one every 100 ms, exec/fork/exit/file in turn.
fn day_event(i: u64) -> Event {
    let pid = (1000 + i % 30_000) as u32;
    let mut e = match i % 4 {
        0 => testkit::exec_event(pid, "sh", "/usr/bin/curl", &["curl", "-s", "https://x"]),
        1 => testkit::fork_event(pid, 1, "pos-terminal"),
        2 => testkit::exit_event(pid, "curl", Some(0), None),
        _ => Event {
            kind: Some(event::Kind::File(FileEvent {
                process: Some(Process {
                    pid,
                    tid: pid,
                    ppid: 1,
                    comm: "dispense".into(),
                    ..Default::default()
                }),
                operation: file_event::Operation::OpenRead as i32,
                path: format!("/srv/phi/patients/{:06}.json", i % 5000),
                ..Default::default()
            })),
            ..Default::default()
        },
    };
    e.boot_time_unix_ns = DAY_START_NS;
    e.timestamp_ns = 1 + i * 100_000_000;
    e
}

fn batches(host: &HostIdentity, events: u64) -> Vec<SensorBatch> {
    (0..events.div_ceil(EVENTS_PER_BATCH))
        .map(|b| {
            let first = b * EVENTS_PER_BATCH;
            let last = (first + EVENTS_PER_BATCH).min(events);
            testkit::zstd_batch(host, b + 1, (first..last).map(day_event).collect())
        })
        .collect()
}

/// Sends `batches` on one stream with `WINDOW` in flight; all must be acked.
async fn send_all(url: String, batches: Vec<SensorBatch>) -> Result<()> {
    let mut s = SensorStream::connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let total = batches.len() as u64;
    let mut queue = batches.into_iter();
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < total {
        while sent < total && sent < acked + WINDOW {
            let Some(b) = queue.next() else { break };
            s.send(b).await?;
            sent += 1;
        }
        match s.next_ack().await? {
            Some(_) => acked += 1,
            None => bail!("the collector ended the stream after {acked} acks"),
        }
    }
    Ok(())
}

fn collector_binary() -> PathBuf {
    crate::cmd::workspace_root().join("target/release/rxsentry-collector")
}

/// The analyst's view: the release CLI reads the day and prints it as
/// JSON lines (counted, like `| wc -l`); median seconds.
fn cli_day(url: &str) -> Result<f64> {
    use std::io::Read as _;
    let cli = crate::cmd::workspace_root().join("target/release/rxsentry");
    let since = utc_arg(DAY_START_NS);
    let until = utc_arg(DAY_START_NS + 86_400_000_000_000);
    let mut times = Vec::new();
    for _ in 0..QUERY_RUNS {
        let start = Instant::now();
        let mut child = Command::new(&cli)
            .args([
                "events",
                "--insecure-plaintext",
                "--collector",
                url,
                "--host",
                "bench-day",
            ])
            .env("RXSENTRY_TOKEN", VIEWER_TOKEN)
            .env_remove("RXSENTRY_TOKEN_FILE")
            .args(["--json", "--since", &since, "--until", &until])
            .args(["--no-records", "--limit", "100000000"])
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", cli.display()))?;
        let mut stdout = child.stdout.take().context("rxsentry stdout")?;
        let (mut lines, mut buf) = (0u64, vec![0u8; 1 << 16]);
        loop {
            let n = stdout.read(&mut buf)?;
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        }
        let status = child.wait()?;
        if !status.success() || lines != DAY_EVENTS {
            bail!("rxsentry events {since}..{until}: {status}, {lines} of {DAY_EVENTS} lines");
        }
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(median_f64(&times))
}

/// `2026-12-03T00:00:00Z` for UTC ns since the epoch (whole seconds).
fn utc_arg(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    // Days since 1970 -> civil date (H. Hinnant's civil_from_days).
    let z = secs / 86_400 + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// The bench's viewer token (queries need the viewer role).
const VIEWER_TOKEN: &str = "store-bench-viewer";

/// Plaintext on loopback: this part measures the store (the channel part
/// measures TLS).
fn spawn(state: &Path) -> Result<(Child, String)> {
    let op =
        collector::auth::Operator::with_token("bench", collector::auth::Role::Viewer, VIEWER_TOKEN);
    std::fs::create_dir_all(state)?;
    std::fs::write(state.join("operators.toml"), op.to_toml())?;
    let mut child = Command::new(collector_binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--insecure-plaintext",
            "--stats-interval",
            "0",
        ])
        .args(["--silent-after", "1d"])
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", collector_binary().display()))?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("collector stdout")?;
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim_end()
        .strip_prefix("rxsentry-collector listening on ")
        .with_context(|| format!("unexpected collector line {line:?}"))?;
    Ok((child, format!("http://{addr}")))
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

/// Pages through `req`; returns (items, seconds).
async fn timed_query(url: &str, mut req: QueryRequest, pages: Option<usize>) -> Result<(u64, f64)> {
    let mut client = TelemetrySubscribeClient::connect(url.to_owned()).await?;
    let start = Instant::now();
    let mut items = 0u64;
    let mut n = 0usize;
    loop {
        let access = tests::CollectorAccess::plaintext(url, Some(VIEWER_TOKEN.to_owned()));
        let page = client
            .query(access.request(req.clone()))
            .await?
            .into_inner();
        items += page.items.len() as u64;
        n += 1;
        if page.next_cursor.is_empty() || pages.is_some_and(|p| n >= p) {
            return Ok((items, start.elapsed().as_secs_f64()));
        }
        req.cursor = page.next_cursor;
        req.max_store_id = page.high_water_id;
    }
}

/// Median time and the item count of `runs` runs of a query.
fn query_median(url: &str, req: &QueryRequest, pages: Option<usize>) -> Result<(u64, f64)> {
    let mut times = Vec::new();
    let mut items = 0;
    for _ in 0..QUERY_RUNS {
        let (n, secs) = block_on(timed_query(url, req.clone(), pages))?;
        items = n;
        times.push(secs);
    }
    Ok((items, median_f64(&times)))
}

pub fn run(streams: usize, days: u64) -> Result<StoreReport> {
    if !collector_binary().exists() {
        bail!(
            "{} is missing: run without --no-build",
            collector_binary().display()
        );
    }
    let state = tempfile::tempdir()?;
    let (mut child, url) = spawn(state.path())?;
    let mut report = StoreReport {
        streams,
        ..StoreReport::default()
    };
    let result = (|| -> Result<()> {
        // 1. One sensor's stream: a day of one busy kiosk.
        let day = testkit::host("bench-day", "i1");
        let day_batches = batches(&day, DAY_EVENTS);
        let start = Instant::now();
        block_on(send_all(url.clone(), day_batches))?;
        report.one_stream_secs = start.elapsed().as_secs_f64();
        report.one_stream_events = DAY_EVENTS;

        // 2. Several kiosks at once: another day's worth in total, or the
        // rest of `days` (the queries below then run on that big a store).
        let per_host = DAY_EVENTS * days.saturating_sub(1).max(1) / streams as u64;
        let sets: Vec<Vec<SensorBatch>> = (0..streams)
            .map(|k| batches(&testkit::host(&format!("bench-{k}"), "i1"), per_host))
            .collect();
        let start = Instant::now();
        block_on(async {
            let tasks: Vec<_> = sets
                .into_iter()
                .map(|b| tokio::spawn(send_all(url.clone(), b)))
                .collect();
            for t in tasks {
                t.await??;
            }
            anyhow::Ok(())
        })?;
        report.multi_secs = start.elapsed().as_secs_f64();
        report.multi_events = per_host * streams as u64;
        report.stored_events = report.one_stream_events + report.multi_events;
        report.disk_bytes = dir_bytes(&state.path().join("store"))?;

        // 3. Queries for one host over its stored day.
        let day_req = QueryRequest {
            host_ids: vec!["bench-day".into()],
            since_unix_ns: DAY_START_NS,
            until_unix_ns: DAY_START_NS + 86_400_000_000_000,
            limit: 5_000,
            ..QueryRequest::default()
        };
        (report.day_query_items, report.day_query_secs) = query_median(&url, &day_req, None)?;
        let first = QueryRequest {
            limit: 1_000,
            ..day_req.clone()
        };
        report.first_page_ms = query_median(&url, &first, Some(1))?.1 * 1e3;
        let hour = QueryRequest {
            kinds: vec![EventKind::Exec as i32],
            since_unix_ns: DAY_START_NS + 13 * 3_600_000_000_000,
            until_unix_ns: DAY_START_NS + 14 * 3_600_000_000_000,
            ..day_req
        };
        let (items, secs) = query_median(&url, &hour, None)?;
        (report.hour_exec_items, report.hour_exec_ms) = (items, secs * 1e3);
        report.cli_day_secs = cli_day(&url)?;
        Ok(())
    })();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    result?;
    Ok(report)
}

impl StoreReport {
    pub fn render(&self) -> String {
        let rate = |events: u64, secs: f64| events as f64 / secs.max(1e-9);
        let one = rate(self.one_stream_events, self.one_stream_secs);
        let multi = rate(self.multi_events, self.multi_secs);
        let verdict = |ok: bool| if ok { "pass" } else { "FAIL" };
        let mut t = String::new();
        let _ = writeln!(t, "{HEADING}\n");
        let _ = writeln!(
            t,
            "Release `rxsentry-collector` (SQLite, WAL, synchronous=FULL, group commit) and the load generator on the same two cores; batches of {EVENTS_PER_BATCH} events (exec, fork, exit, file open in turn), {WINDOW} in flight per stream, each acked only once committed. A stored day: {DAY_EVENTS} events of one host (10 events/s for 24 h), in a store of {} events in all; query times are medians of {QUERY_RUNS} runs over gRPC, decoding included (the client is the xtask, a debug build).\n",
            self.stored_events
        );
        let _ = writeln!(t, "| measure | value | target | verdict |");
        let _ = writeln!(t, "| --- | --- | --- | --- |");
        let _ = writeln!(
            t,
            "| sustained ingest, one sensor stream | {one:.0} events/s ({} events in {:.1} s) | >= 50,000 | {} |",
            self.one_stream_events,
            self.one_stream_secs,
            verdict(one >= 50_000.0)
        );
        let _ = writeln!(
            t,
            "| sustained ingest, {} streams at once | {multi:.0} events/s ({} events in {:.1} s) | >= 50,000 | {} |",
            self.streams,
            self.multi_events,
            self.multi_secs,
            verdict(multi >= 50_000.0)
        );
        let _ = writeln!(
            t,
            "| bytes on disk per event (database + WAL) | {:.0} ({:.1} MiB for {} events) | - | - |",
            self.disk_bytes as f64 / self.stored_events.max(1) as f64,
            self.disk_bytes as f64 / 1_048_576.0,
            self.stored_events
        );
        let _ = writeln!(
            t,
            "| one host, its whole day (`--host --since --until`), all pages of 5,000 | {:.2} s for {} events | - | - |",
            self.day_query_secs, self.day_query_items
        );
        let _ = writeln!(
            t,
            "| one host, its whole day, release `rxsentry events --json`, lines counted | {:.2} s ({:.1} us per event) | - | - |",
            self.cli_day_secs,
            self.cli_day_secs * 1e6 / self.day_query_items.max(1) as f64
        );
        let _ = writeln!(
            t,
            "| one host's day, first page of 1,000 | {:.1} ms | - | - |",
            self.first_page_ms
        );
        let _ = writeln!(
            t,
            "| one host, one hour, `--kind exec` | {:.1} ms for {} events | - | - |",
            self.hour_exec_ms, self.hour_exec_items
        );
        t
    }
}
