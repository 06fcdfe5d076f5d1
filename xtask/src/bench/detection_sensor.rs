//! The detection rules' cost inside the real sensor: an exec storm with no
//! sensor, the sensor with detection off (no rules) and the sensor with the
//! default pack plus every SigmaHQ Linux rule of ../shared/sigma (read from
//! there, never copied), the three interleaved round by round (the order
//! rotating), medians. Measured per side: the storm's wall time and the
//! sensor's own CPU time (its threads' on-CPU ns from
//! /proc/<pid>/task/*/schedstat) per exec and per event it sent, from the
//! storm's start until every event of the storm reached the collector. YARA
//! is off on both sensor sides: this is the Sigma rules' cost (YARA has its
//! own section).

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use collector::Collector;
use tests::Stderr;

use super::{
    common::{BenchSensor, host_totals, median, median_f64},
    detection::sigma_dir,
    storm,
};

/// Heading of this section in docs/bench.md.
pub const HEADING: &str = "## Detection in the sensor (rules on / off)";

/// Events a storm exec makes at least (fork, exec, exit).
const EVENTS_PER_EXEC: u64 = 3;

/// What one side of the comparison runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    NoSensor,
    RulesOff,
    RulesOn,
}

/// Medians of one sensor side.
#[derive(Default)]
struct SensorSide {
    wall: Vec<Duration>,
    cpu_ns_per_exec: Vec<f64>,
    cpu_ns_per_event: Vec<f64>,
    events_per_exec: Vec<f64>,
    /// Each round's CPU per event over the rules-off side's of the same
    /// round.
    cpu_ratio: Vec<f64>,
}

pub struct DetectionSensorReport {
    rounds: usize,
    execs: usize,
    rules: usize,
    no_sensor: Vec<Duration>,
    off: SensorSide,
    on: SensorSide,
    /// Each round's storm wall time, rules on / rules off.
    wall_ratio: Vec<f64>,
}

/// The sensor's config for a side: warnings only, no YARA.
fn config(side: Side, rule_dir: &std::path::Path) -> String {
    let mut c = String::from("[log]\nlevel = \"warn\"\n");
    match side {
        Side::RulesOn => {
            let _ = writeln!(
                c,
                "[detection]\nenabled = true\ndefault_pack = true\nrule_dirs = [{:?}]\n[detection.yara]\nenabled = false",
                rule_dir.display().to_string()
            );
        }
        Side::RulesOff | Side::NoSensor => c.push_str("[detection]\nenabled = false\n"),
    }
    c
}

/// On-CPU time (ns) of every live thread of process `pid` so far.
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let text = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        total += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// One storm of `execs` with a sensor of `side` (started and stopped here).
fn sensor_round(
    url: &str,
    collector: &Collector,
    side: Side,
    rule_dir: &std::path::Path,
    execs: usize,
    marker: &str,
    into: &mut SensorSide,
) -> Result<f64> {
    let sensor = BenchSensor::start_with(url, &config(side, rule_dir), Stderr::Keep)?;
    sensor.settle()?;
    let pid = sensor.sensor().pid();
    let (cpu0, events0) = (cpu_ns(pid)?, host_totals(collector).events);
    let wall = storm(execs, marker, None)?;
    // Every event of the storm evaluated and sent, then read the CPU.
    let want = events0 + EVENTS_PER_EXEC * execs as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while host_totals(collector).events < want {
        if Instant::now() > deadline {
            bail!(
                "{marker}: {} of {want} events reached the collector in 60 s",
                host_totals(collector).events
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu = cpu_ns(pid)?.saturating_sub(cpu0) as f64;
    let events = (host_totals(collector).events - events0) as f64;
    sensor.stop()?;
    into.wall.push(wall);
    into.cpu_ns_per_exec.push(cpu / execs as f64);
    into.cpu_ns_per_event.push(cpu / events.max(1.0));
    into.events_per_exec.push(events / execs as f64);
    Ok(cpu / events.max(1.0))
}

pub fn run(
    url: &str,
    collector: &Collector,
    rounds: usize,
    execs: usize,
) -> Result<DetectionSensorReport> {
    let rule_dir = sigma_dir()?;
    let rules = super::detection::rules_in(true, Some(&rule_dir))?;
    let mut report = DetectionSensorReport {
        rounds,
        execs,
        rules,
        no_sensor: Vec::new(),
        off: SensorSide::default(),
        on: SensorSide::default(),
        wall_ratio: Vec::new(),
    };
    let sides = [Side::NoSensor, Side::RulesOff, Side::RulesOn];
    for round in 0..rounds.max(1) {
        let (mut off_cpu, mut on_cpu) = (0.0, 0.0);
        for k in 0..sides.len() {
            let side = sides[(round + k) % sides.len()];
            let marker = format!("bench-rules-{round}-{k}");
            match side {
                Side::NoSensor => report.no_sensor.push(storm(execs, &marker, None)?),
                Side::RulesOff | Side::RulesOn => {
                    let (into, cpu) = if side == Side::RulesOn {
                        (&mut report.on, &mut on_cpu)
                    } else {
                        (&mut report.off, &mut off_cpu)
                    };
                    *cpu = sensor_round(url, collector, side, &rule_dir, execs, &marker, into)?;
                }
            }
        }
        let (on_wall, off_wall) = (report.on.wall[round], report.off.wall[round]);
        report
            .wall_ratio
            .push(on_wall.as_secs_f64() / off_wall.as_secs_f64().max(1e-9));
        report.on.cpu_ratio.push(on_cpu / f64::max(off_cpu, 1.0));
        println!(
            "rules round {}/{rounds}: storm with rules {:.3} s, without {:.3} s, no sensor {:.3} s; sensor CPU per event {:.1} / {:.1} us",
            round + 1,
            on_wall.as_secs_f64(),
            off_wall.as_secs_f64(),
            report.no_sensor[round].as_secs_f64(),
            on_cpu / 1e3,
            off_cpu / 1e3
        );
    }
    Ok(report)
}

impl DetectionSensorReport {
    pub fn render(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "{HEADING}\n");
        let _ = writeln!(
            t,
            "The real sensor (release), exec storms of {} fork+exec of /bin/true from 4 threads, {} rounds, each round three storms in rotating order: no sensor, the sensor with `[detection] enabled = false` (no rules), the sensor with the default pack + SigmaHQ's Linux rules from ../shared/sigma ({} rules; YARA off on both sides); medians. Sensor CPU: its threads' on-CPU time (schedstat) from the storm's start until every storm event reached the in-process collector, over the storm's execs and over the events it sent (fork, exec, exit of each exec, plus the box's other processes'). Ratios are of the same round's storms (this machine is shared and noisy).\n",
            self.execs, self.rounds, self.rules
        );
        let _ = writeln!(t, "| measure | value | target | verdict |");
        let _ = writeln!(t, "| --- | --- | --- | --- |");
        let us = |v: &[f64]| median_f64(v) / 1e3;
        let secs = |v: &[Duration]| median(v).as_secs_f64();
        let (on, off) = (&self.on, &self.off);
        let _ = writeln!(
            t,
            "| sensor CPU per event, rules on / off (median of each round's ratio) | {:.3} ({:.1} us / {:.1} us) | - | - |",
            median_f64(&on.cpu_ratio),
            us(&on.cpu_ns_per_event),
            us(&off.cpu_ns_per_event)
        );
        let _ = writeln!(
            t,
            "| sensor CPU added by the rules, per event / per exec | {:.1} us / {:.1} us | - | - |",
            us(&on.cpu_ns_per_event) - us(&off.cpu_ns_per_event),
            us(&on.cpu_ns_per_exec) - us(&off.cpu_ns_per_exec)
        );
        let _ = writeln!(
            t,
            "| sensor CPU per exec, rules on / off | {:.1} us / {:.1} us ({:.1} / {:.1} events per exec) | - | - |",
            us(&on.cpu_ns_per_exec),
            us(&off.cpu_ns_per_exec),
            median_f64(&on.events_per_exec),
            median_f64(&off.events_per_exec)
        );
        let ratio = median_f64(&self.wall_ratio);
        let _ = writeln!(
            t,
            "| exec storm, rules on / off (median of each round's ratio) | {:.3} ({:.3} s / {:.3} s) | <= 1.05 | {} |",
            ratio,
            secs(&on.wall),
            secs(&off.wall),
            if ratio <= 1.05 { "pass" } else { "FAIL" }
        );
        let none = secs(&self.no_sensor);
        let _ = writeln!(
            t,
            "| exec storm, rules on / no sensor and rules off / no sensor | {:.3} / {:.3} ({:.3} s without a sensor) | - | - |",
            secs(&on.wall) / none.max(1e-9),
            secs(&off.wall) / none.max(1e-9),
            none
        );
        t
    }
}
