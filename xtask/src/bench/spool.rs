//! The sensor's disk spool (docs/durability.md), with the real sensor and
//! the real `rxsentry-collector` binary (it must be down, then up, on a
//! fixed port, which the in-process collector of the other parts is not):
//!
//! - replay: the spool filled to its bound while the collector is down (so
//!   it has dropped its oldest batches), then the collector started: how
//!   fast the next sensor empties it (batches/s, events/s), and the
//!   sensor's RSS with a full spool (while filling, and replaying);
//! - fsync cost: storms of execs delivered with the spool on (fdatasync per
//!   batch) and with the spool off (memory only), alternated round by round:
//!   ratio of the medians of the time to delivery and of the sensor's CPU.

use std::{
    fmt::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use proto::telemetry::v1::SubscribeRequest;
use rand::{Rng as _, distr::Alphanumeric};
use tests::{
    Collector, CollectorState, Stderr, Subscription,
    spool::{segments, spool_bytes, spooled},
};

use super::common::{BenchSensor, HOST_ID, block_on, median, threaded, ticks_per_sec};

pub const HEADING: &str = "## Disk spool";

/// The spool's bound in the replay run: big enough to take seconds to
/// replay, small enough to fill in under a minute of padded execs.
const MAX_BYTES: u64 = 16 << 20;
const SEGMENT_BYTES: u64 = 1 << 20;

/// What [`run`] measured.
#[derive(Debug, Default)]
pub struct SpoolBench {
    pub max_bytes: u64,
    /// The full spool at the start of the replay.
    pub batches: usize,
    pub events: u64,
    pub bytes: u64,
    pub replay: Duration,
    /// (VmRSS, VmHWM) KiB of the sensor that filled the spool, when full,
    /// and of the one that replayed it, after.
    pub rss_full_kib: (u64, u64),
    pub rss_replay_kib: (u64, u64),
    /// The same padded storm with the collector up (nothing waits on disk):
    /// what the load itself costs, spool or not.
    pub rss_connected_kib: (u64, u64),
    pub fill_execs: usize,
    pub storm_execs: usize,
    /// Per round: time to deliver a storm and the sensor's CPU (ticks).
    pub with_spool: Vec<(Duration, u64)>,
    pub ram_only: Vec<(Duration, u64)>,
}

/// Warnings only, the collector's TLS files (`[collector]` section), and
/// `spool` (a `[spool]` section, or none).
fn start(collector: &str, spool: &str) -> Result<BenchSensor> {
    let extra = format!("[log]\nlevel = \"warn\"\n{spool}");
    BenchSensor::start_configured(collector, &extra, Stderr::Inherit)
}

/// `n` execs of `/bin/true <marker> <noise>` from four threads; `noise`
/// random characters each (they compress badly: the spool fills fast).
fn storm(n: usize, marker: &str, noise: usize) -> Result<Duration> {
    threaded(n, 4, None, |_| {
        let pad: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(noise)
            .map(char::from)
            .collect();
        let status = Command::new("/bin/true").args([marker, &pad]).status()?;
        if !status.success() {
            bail!("/bin/true failed: {status}");
        }
        Ok(())
    })
}

/// Polls `done` every 20 ms until it holds or `timeout` passes.
fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let until = Instant::now() + timeout;
    while !done()? {
        if Instant::now() > until {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub fn run(rounds: usize, storm_execs: usize) -> Result<SpoolBench> {
    let mut out = SpoolBench {
        max_bytes: MAX_BYTES,
        storm_execs,
        ..SpoolBench::default()
    };
    let dir = tempfile::tempdir()?;
    let spool = dir.path().join("spool");
    let section = format!(
        "[spool]\ndir = {:?}\nmax_bytes = {MAX_BYTES}\nsegment_bytes = {SEGMENT_BYTES}\n",
        spool
    );
    let held = tests::ports::HeldPort::new()?;
    let port = held.port();
    let listen = format!("127.0.0.1:{port}");
    // The collector's CA and this sensor's certificate exist before the
    // collector first starts (it is down while the spool fills).
    let state = CollectorState::new(&listen)?;
    let tls = dir.path().join("sensor-tls");
    state.issue_sensor(HOST_ID, &tls)?;
    let link = tests::collector_section(&format!("https://{listen}"), &tls);

    // Fill to the bound with the collector down.
    let filler = start(&link, &section)?;
    let mut stormed = 0;
    while spool_bytes(&spool)? < MAX_BYTES - 2 * SEGMENT_BYTES {
        storm(5_000, "bench-spool-fill", 900)?;
        stormed += 5_000;
        if stormed > 400_000 {
            bail!("the spool did not fill");
        }
    }
    out.fill_execs = stormed;
    // The last batches sealed (500 ms), then the RSS of a full spool.
    std::thread::sleep(Duration::from_secs(1));
    out.rss_full_kib = filler.rss_kib()?;
    filler.stop()?;
    let records = spooled(&spool)?;
    out.batches = records.len();
    out.events = records.iter().map(|r| u64::from(r.batch.event_count)).sum();
    out.bytes = spool_bytes(&spool)?;
    let old = segments(&spool)?;
    println!(
        "spool full: {} batches, {} events, {:.1} MiB",
        out.batches,
        out.events,
        out.bytes as f64 / (1 << 20) as f64
    );

    // Replay: every segment of the full spool acked and deleted.
    let collector = block_on(Collector::start_on(state, None, &listen, &[]))?;
    let replayer = start(&link, &section)?;
    let t0 = Instant::now();
    wait("the replay", Duration::from_secs(600), || {
        Ok(old.iter().all(|p| !p.exists()))
    })?;
    out.replay = t0.elapsed();
    out.rss_replay_kib = replayer.rss_kib()?;
    replayer.stop()?;
    println!(
        "replayed in {:.2} s: {:.0} batches/s, {:.0} events/s",
        out.replay.as_secs_f64(),
        out.batches as f64 / out.replay.as_secs_f64(),
        out.events as f64 / out.replay.as_secs_f64()
    );

    // The same load with the collector up, for comparison.
    let connected = start(&link, "")?;
    storm(stormed, "bench-spool-connected", 900)?;
    std::thread::sleep(Duration::from_secs(1));
    out.rss_connected_kib = connected.rss_kib()?;
    connected.stop()?;

    // fsync cost: spool on (default fsync = "batch") vs off, alternated.
    for round in 0..rounds {
        for spooled in [true, false] {
            // Without a [spool] section the harness gives the sensor a
            // spool of its own (defaults: fsync per batch).
            let section = if spooled {
                ""
            } else {
                "[spool]\nenabled = false\n"
            };
            let sensor = start(&link, section)?;
            let request = SubscribeRequest {
                host_ids: vec![HOST_ID.to_owned()],
                ..Default::default()
            };
            let mut sub = block_on(Subscription::open(&collector.url(), request))?;
            let marker = format!("bench-spool-{round}-{spooled}");
            let cpu = sensor.cpu_ticks()?;
            let t0 = Instant::now();
            storm(storm_execs, &marker, 0)?;
            block_on(sub.until(Duration::from_secs(60), |s| {
                s.execs_with(&marker).len() >= storm_execs
            }))?;
            let sample = (t0.elapsed(), sensor.cpu_ticks()? - cpu);
            sensor.stop()?;
            if spooled {
                out.with_spool.push(sample);
            } else {
                out.ram_only.push(sample);
            }
        }
        println!(
            "fsync round {round}: spool {:.3} s, memory only {:.3} s",
            out.with_spool[round].0.as_secs_f64(),
            out.ram_only[round].0.as_secs_f64()
        );
    }
    drop(collector);
    Ok(out)
}

impl SpoolBench {
    pub fn render(&self) -> String {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let secs = self.replay.as_secs_f64();
        let median_of = |v: &[(Duration, u64)], f: fn(&(Duration, u64)) -> u64| {
            median(&v.iter().map(f).collect::<Vec<_>>())
        };
        let took = |s: &(Duration, u64)| s.0.as_micros() as u64;
        let cpu = |s: &(Duration, u64)| s.1;
        let (t_on, t_off) = (
            median_of(&self.with_spool, took),
            median_of(&self.ram_only, took),
        );
        let (c_on, c_off) = (
            median_of(&self.with_spool, cpu),
            median_of(&self.ram_only, cpu),
        );
        let per_exec = |ticks: u64| ticks as f64 * 1e6 / ticks_per_sec() / self.storm_execs as f64;
        let mut t = String::new();
        let _ = writeln!(t, "{HEADING}\n");
        let _ = writeln!(
            t,
            "Real sensor and real `rxsentry-collector`; `cargo xtask bench --only-spool` \
             replaces this section.\n"
        );
        let _ = writeln!(t, "| measure | value |\n| --- | --- |");
        let _ = writeln!(
            t,
            "| full spool (bound {:.0} MiB, oldest dropped) | {} batches, {} events, {:.1} MiB |",
            mib(self.max_bytes),
            self.batches,
            self.events,
            mib(self.bytes)
        );
        let _ = writeln!(
            t,
            "| replay after the outage | {secs:.2} s: {:.0} batches/s, {:.0} events/s |",
            self.batches as f64 / secs,
            self.events as f64 / secs
        );
        let _ = writeln!(
            t,
            "| sensor RSS with a full spool (target <= 40 MiB), after {} execs with ~900 bytes of random argv | {:.1} MiB (peak {:.1}) while full; {:.1} MiB (peak {:.1}) after replaying it; the same execs with the collector up: {:.1} MiB (peak {:.1}) |",
            self.fill_execs,
            self.rss_full_kib.0 as f64 / 1024.0,
            self.rss_full_kib.1 as f64 / 1024.0,
            self.rss_replay_kib.0 as f64 / 1024.0,
            self.rss_replay_kib.1 as f64 / 1024.0,
            self.rss_connected_kib.0 as f64 / 1024.0,
            self.rss_connected_kib.1 as f64 / 1024.0
        );
        let _ = writeln!(
            t,
            "| {} execs to delivery, spool (fsync per batch) / memory only, median of {} | {:.3} ({:.3} s / {:.3} s) |",
            self.storm_execs,
            self.with_spool.len(),
            t_on as f64 / t_off.max(1) as f64,
            t_on as f64 / 1e6,
            t_off as f64 / 1e6
        );
        let _ = writeln!(
            t,
            "| sensor CPU per exec, spool / memory only | {:.3} ({:.1} us / {:.1} us) |",
            c_on as f64 / c_off.max(1) as f64,
            per_exec(c_on),
            per_exec(c_off)
        );
        t
    }
}
