//! The Sigma engine (crate `detect`) alone, on this thread (one core):
//! events per second through `RuleSet::matches` with no rules, the default
//! pack, and the default pack plus SigmaHQ's Linux rules from
//! ../shared/sigma; a typical event mix and a worst case (execs with 4 KiB
//! command lines, which every `contains` scans in full). The three sets are
//! interleaved round by round; medians.

use std::{
    fmt::Write as _,
    hint::black_box,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use detect::{Category, CommandLine, EventRef, Loader, RuleSet, Scratch};

use super::common::median_f64;
use crate::cmd::workspace_root;

/// Heading of the detection section in docs/bench.md.
pub const HEADING: &str = "## Detection (Sigma rules)";

/// Events evaluated per round and set.
const EVENTS: usize = 200_000;
/// Events of the worst case per round (each 4 KiB).
const LONG_EVENTS: usize = 20_000;

pub struct DetectionReport {
    rounds: usize,
    sets: Vec<(String, usize)>,
    /// Events/s per set, typical mix and worst case.
    typical: Vec<f64>,
    worst: Vec<f64>,
    alerts_typical: Vec<usize>,
}

/// ../shared/sigma/rules (see `detect::sigmahq_rules_dir`).
pub(super) fn sigma_dir() -> Result<PathBuf> {
    let Some(dir) = detect::sigmahq_rules_dir(&workspace_root()) else {
        bail!(
            "SigmaHQ rules not found: set RXSENTRY_SHARED to the shared folder (looked beside {} and in /work/shared)",
            workspace_root().display()
        );
    };
    Ok(dir)
}

/// How many rules (Sigma and sequence) the sensor loads from these.
pub(super) fn rules_in(default_pack: bool, dir: Option<&Path>) -> Result<usize> {
    Ok(load(default_pack, dir)?.len())
}

fn load(default_pack: bool, dir: Option<&Path>) -> Result<RuleSet> {
    let mut l = Loader::new(detect::default_placeholders());
    if default_pack {
        l.add_default_pack();
    }
    if let Some(dir) = dir {
        l.add_dir(dir).context("loading the SigmaHQ rules")?;
    }
    Ok(l.finish().0)
}

/// Owned fields of the bench's events (the views borrow them).
struct Sample {
    category: Category,
    image: &'static str,
    argv: Vec<String>,
    parent: &'static str,
    target: Option<&'static str>,
    remote: Option<(&'static str, u32)>,
}

impl Sample {
    fn view(&self) -> EventRef<'_> {
        let mut e = EventRef::new(self.category);
        e.image = Some(self.image);
        e.command_line = CommandLine::Argv(&self.argv);
        e.parent_image = Some(self.parent);
        e.parent_command_line = Some("-bash");
        e.user = Some("kiosk");
        e.pid = Some(4242);
        e.ppid = Some(4000);
        e.target_filename = self.target;
        if let Some((ip, port)) = self.remote {
            e.destination_ip = Some(ip);
            e.destination_port = Some(port);
            e.source_ip = Some("10.0.0.2");
            e.source_port = Some(40000);
            e.initiated = Some(true);
            e.protocol = Some("tcp");
        }
        e
    }
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// A kiosk's ordinary events: execs, reads of the PHI store by the
/// dispensing app, the POS's connections.
fn typical() -> Vec<Sample> {
    let exec = |image, argv: &[&str]| Sample {
        category: Category::ProcessCreation,
        image,
        argv: args(argv),
        parent: "/usr/bin/bash",
        target: None,
        remote: None,
    };
    vec![
        exec("/usr/bin/ls", &["ls", "-la", "/var/lib/pharmacy/reports"]),
        exec("/usr/bin/grep", &["grep", "-r", "rx-2026", "/var/log/pos"]),
        exec(
            "/usr/bin/python3.11",
            &["python3", "/opt/pos/lib/report.py", "--daily"],
        ),
        Sample {
            category: Category::FileAccess,
            image: "/opt/dispensing/bin/dispense",
            argv: args(&["dispense", "--kiosk"]),
            parent: "/usr/lib/systemd/systemd",
            target: Some("/var/lib/pharmacy/rx.db"),
            remote: None,
        },
        Sample {
            category: Category::FileEvent,
            image: "/opt/dispensing/bin/dispense",
            argv: args(&["dispense", "--kiosk"]),
            parent: "/usr/lib/systemd/systemd",
            target: Some("/var/lib/pharmacy/rx.db-journal"),
            remote: None,
        },
        Sample {
            category: Category::NetworkConnection,
            image: "/opt/pos/bin/pos",
            argv: args(&["pos"]),
            parent: "/usr/lib/systemd/systemd",
            target: None,
            remote: Some(("10.20.0.5", 443)),
        },
    ]
}

/// An exec whose command line is 4 KiB that matches nothing.
fn worst() -> Vec<Sample> {
    let script = "x = compute_totals(day, store); ".repeat(128);
    vec![Sample {
        category: Category::ProcessCreation,
        image: "/usr/bin/python3.11",
        argv: vec!["python3".into(), "-c".into(), script],
        parent: "/usr/bin/bash",
        target: None,
        remote: None,
    }]
}

/// Events/s of `n` evaluations cycling through `samples`; alerts made.
fn rate(set: &RuleSet, samples: &[Sample], n: usize) -> (f64, usize) {
    let views: Vec<EventRef<'_>> = samples.iter().map(Sample::view).collect();
    let mut scratch = Scratch::default();
    let mut hits = Vec::new();
    let mut alerts = 0;
    let start = Instant::now();
    for i in 0..n {
        hits.clear();
        set.matches(black_box(&views[i % views.len()]), &mut scratch, &mut hits);
        alerts += hits.len();
    }
    let secs = start.elapsed().as_secs_f64();
    (n as f64 / secs.max(1e-9), alerts)
}

pub fn run(rounds: usize) -> Result<DetectionReport> {
    let dir = sigma_dir()?;
    let sets = [
        ("no rules".to_owned(), RuleSet::default()),
        ("default pack".to_owned(), load(true, None)?),
        (
            "default pack + SigmaHQ Linux".to_owned(),
            load(true, Some(&dir))?,
        ),
    ];
    let (typical_samples, worst_samples) = (typical(), worst());
    let mut typical_rates = vec![Vec::new(); sets.len()];
    let mut worst_rates = vec![Vec::new(); sets.len()];
    let mut alerts_typical = vec![0; sets.len()];
    for round in 0..rounds.max(1) {
        println!("detection round {}/{rounds}", round + 1);
        for (i, (_, set)) in sets.iter().enumerate() {
            let (r, alerts) = rate(set, &typical_samples, EVENTS);
            typical_rates[i].push(r);
            alerts_typical[i] = alerts;
            worst_rates[i].push(rate(set, &worst_samples, LONG_EVENTS).0);
        }
    }
    Ok(DetectionReport {
        rounds,
        sets: sets.iter().map(|(n, s)| (n.clone(), s.len())).collect(),
        typical: typical_rates.iter().map(|v| median_f64(v)).collect(),
        worst: worst_rates.iter().map(|v| median_f64(v)).collect(),
        alerts_typical,
    })
}

impl DetectionReport {
    pub fn render(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "{HEADING}\n");
        let _ = writeln!(
            t,
            "The engine alone (`detect::RuleSet::matches`, which is what the sensor's enrichment thread adds per event), on one core, {} rounds, the sets interleaved; medians. Typical: a kiosk's mix of execs (short command lines), PHI reads and writes by the dispensing app and the POS's connections, {EVENTS} events per round. Worst case: execs with a 4 KiB command line matching nothing, {LONG_EVENTS} per round. The ratio is events/s without rules over events/s with them (how many times the no-rules cost: the view, the scratch reset).\n",
            self.rounds
        );
        let _ = writeln!(
            t,
            "| rule set (rules) | typical events/s | ns per event | ratio to no rules | worst case events/s | ns per event | ratio to no rules | target | verdict |"
        );
        let _ = writeln!(t, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for (i, (name, n)) in self.sets.iter().enumerate() {
            let ns = |r: f64| 1e9 / r.max(1e-9);
            let (target, verdict) = if i == 0 {
                ("-", "-".to_owned())
            } else {
                let ok = self.typical[i] >= 100_000.0;
                (
                    ">= 100,000/s typical",
                    if ok { "pass" } else { "FAIL" }.to_owned(),
                )
            };
            let _ = writeln!(
                t,
                "| {name} ({n}; {} alerts in a typical round) | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.1} | {target} | {verdict} |",
                self.alerts_typical[i],
                self.typical[i],
                ns(self.typical[i]),
                self.typical[0] / self.typical[i].max(1e-9),
                self.worst[i],
                ns(self.worst[i]),
                self.worst[0] / self.worst[i].max(1e-9),
            );
        }
        t
    }
}
