//! What the bench's parts share (a leaf: it uses none of them): the sensor
//! as the bench runs it (the test harness's, plus what the bench reads of
//! it in /proc), the storm skeleton, the kernel's BPF run-time statistics,
//! the in-process collector's totals, medians.

use std::{
    future::Future,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use collector::Collector;
use tests::{Sensor, Stderr};

use crate::cmd::output_of;

/// The host id of the sensors that report to the in-process collector.
pub const HOST_ID: &str = "bench";

/// Runs `future` on the bench's tokio runtime (entered by `bench`): the
/// harness's processes and subscriptions are async.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(future)
}

/// SIGTERM, then an error unless the sensor exits 0.
pub fn stop(sensor: Sensor) -> Result<()> {
    let status = block_on(sensor.stop())?;
    if !status.success() {
        bail!("rxsentry-sensor exited with {status}");
    }
    Ok(())
}

/// The real `rxsentry-sensor` with a bench config, reporting to the
/// collector at `url` as [`HOST_ID`].
pub struct BenchSensor(Sensor);

impl BenchSensor {
    /// Warnings only, on this process's stderr.
    pub fn start(url: &str) -> Result<Self> {
        Self::start_with(url, "[log]\nlevel = \"warn\"\n", Stderr::Inherit)
    }

    /// With extra config (TOML appended) and its stderr as asked.
    pub fn start_with(url: &str, extra: &str, stderr: Stderr) -> Result<Self> {
        let link = format!("[collector]\nendpoint = \"{url}\"\ninsecure_plaintext = true\n");
        Self::start_configured(&link, extra, stderr)
    }

    /// A sensor with its own `[collector]` section (`collector`), e.g. the
    /// TLS files of a real collector process.
    pub fn start_configured(collector: &str, extra: &str, stderr: Stderr) -> Result<Self> {
        let config = format!("[host]\nid = \"{HOST_ID}\"\n{collector}{extra}");
        let sensor = block_on(Sensor::with_config(config).stderr(stderr).start())?;
        Ok(Self(sensor))
    }

    pub fn sensor(&self) -> &Sensor {
        &self.0
    }

    pub fn stop(self) -> Result<()> {
        stop(self.0)
    }

    /// Total run time (ns) and runs of every BPF program the sensor holds,
    /// from /proc/<pid>/fdinfo (counted while `BpfStats` is alive).
    pub fn bpf_run_time(&self) -> Result<(u64, u64)> {
        let mut total = (0, 0);
        for fd in std::fs::read_dir(format!("/proc/{}/fdinfo", self.0.pid()))? {
            let info = std::fs::read_to_string(fd?.path()).unwrap_or_default();
            if let (Some(ns), Some(runs)) = (
                line_value(&info, "run_time_ns:"),
                line_value(&info, "run_cnt:"),
            ) {
                total.0 += ns;
                total.1 += runs;
            }
        }
        Ok(total)
    }

    /// Waits (up to 3 s) until the sensor's start-up work is done: its CPU
    /// time stops growing for 200 ms. A storm measured while it still
    /// seeds its process table and builds the watch set would charge that
    /// one-off work to every open.
    pub fn settle(&self) -> Result<()> {
        wait_until_still(Duration::from_millis(200), 0, || self.cpu_ticks())
    }

    /// User + system CPU time of the sensor so far, in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.pid()))?;
        // Fields after the `(comm)`, which may contain spaces.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // utime and stime are fields 14 and 15 of the line: 11 and 12 here.
        Ok(field(11) + field(12))
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn rss_kib(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.pid()))?;
        let field = |name: &str| line_value(&status, name).unwrap_or(0);
        Ok((field("VmRSS:"), field("VmHWM:")))
    }
}

/// The number after `key` on the first line of `text` that starts with it
/// (`run_cnt:\t42`, `VmRSS:\t 1234 kB`).
fn line_value(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `kernel.bpf_stats_enabled` on for its lifetime (restored on drop): the
/// kernel then times every BPF program run.
pub struct BpfStats {
    before: String,
}

impl BpfStats {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn enable() -> Result<Self> {
        let before = std::fs::read_to_string(Self::SYSCTL)?;
        std::fs::write(Self::SYSCTL, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self { before })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::SYSCTL, self.before.trim());
    }
}

/// Wall time of a storm and the CPU time its threads used (user + system:
/// kernel programs that run in a thread's syscalls count in its system
/// time). The CPU time is the steadier of the two on a noisy machine, but it
/// leaves out the sensor's own threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct StormTime {
    pub wall: Duration,
    pub cpu: Duration,
}

/// [`threaded_timed`], returning the wall time only.
pub fn threaded(
    n: usize,
    threads: usize,
    rate: Option<f64>,
    work: impl Fn(usize) -> Result<()> + Sync,
) -> Result<Duration> {
    threaded_timed(n, threads, rate, work).map(|t| t.wall)
}

/// The skeleton of every storm: `work(i)` for each i in `0..n`, item i on
/// thread `i % threads`, paced to `rate` items per second if given. A
/// thread sleeps only once it is a millisecond ahead of the schedule, so
/// items of a few microseconds are paced in small bursts instead of a
/// timer sleep each.
pub fn threaded_timed(
    n: usize,
    threads: usize,
    rate: Option<f64>,
    work: impl Fn(usize) -> Result<()> + Sync,
) -> Result<StormTime> {
    const AHEAD: Duration = Duration::from_millis(1);
    let thread_cpu = || -> Result<Duration> {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)?;
        Ok(Duration::from(t))
    };
    let start = Instant::now();
    let work = &work;
    let cpu = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<Duration> {
                    let cpu_start = thread_cpu()?;
                    for i in (t..n).step_by(threads) {
                        if let Some(rate) = rate {
                            let due = start + Duration::from_secs_f64(i as f64 / rate);
                            if let Some(wait) = due.checked_duration_since(Instant::now())
                                && wait >= AHEAD
                            {
                                std::thread::sleep(wait);
                            }
                        }
                        work(i)?;
                    }
                    Ok(thread_cpu()? - cpu_start)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a storm thread panicked")))
            })
            .sum::<Result<Duration>>()
    })?;
    Ok(StormTime {
        wall: start.elapsed(),
        cpu,
    })
}

/// Waits (up to 3 s) until `ticks` grows by at most `slack` over one
/// `period`.
pub fn wait_until_still(
    period: Duration,
    slack: u64,
    ticks: impl Fn() -> Result<u64>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = ticks()?;
    while Instant::now() < deadline {
        std::thread::sleep(period);
        let now = ticks()?;
        if now.saturating_sub(last) <= slack {
            break;
        }
        last = now;
    }
    Ok(())
}

pub fn ticks_per_sec() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |v| v as f64)
}

/// The middle of `samples` (the upper one of an even count).
pub fn median<T: Ord + Copy>(samples: &[T]) -> T {
    let mut v = samples.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// [`median`] of floats.
pub fn median_f64(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What the in-process collector received from [`HOST_ID`] so far.
#[derive(Clone, Default)]
pub struct Totals {
    pub events: u64,
    pub bytes: u64,
    pub drops: proto::telemetry::v1::DropCounters,
}

pub fn host_totals(collector: &Collector) -> Totals {
    collector
        .stats()
        .hosts
        .get(HOST_ID)
        .map(|h| Totals {
            events: h.events,
            bytes: h.bytes_received,
            drops: h.drops,
        })
        .unwrap_or_default()
}

/// Hex SHA-256 of a file.
pub fn sha256_of(path: &Path) -> Result<String> {
    let out = output_of("sha256sum", &[&path.to_string_lossy()])?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .context("sha256sum printed nothing")
}

/// Replaces (or appends) the section of `path` that starts with `heading`
/// (a `## ` line), up to the next `## `.
pub fn write_section(path: &Path, heading: &str, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let kept = match old.find(heading) {
        Some(at) => {
            let rest = &old[at + heading.len()..];
            let end = rest
                .find("\n## ")
                .map_or(old.len(), |e| at + heading.len() + e + 1);
            format!("{}{}", &old[..at], &old[end..])
        }
        None => old,
    };
    let mut text = kept.trim_end().to_owned();
    text.push_str("\n\n");
    text.push_str(section);
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
