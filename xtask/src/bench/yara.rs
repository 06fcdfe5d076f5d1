//! YARA scans (crate `detect`, yara-x) alone, on this thread (one core):
//! the cost per file (1 KiB files) and per MB (a 10 MiB file) of reading
//! and scanning, as the sensor's `rxsentry-yara` worker does, with no rules
//! (the read, the hash and the engine's fixed cost) and with the default
//! pack, side by side, interleaved round by round; medians.

use std::{fmt::Write as _, path::PathBuf, time::Instant};

use anyhow::{Context as _, Result, bail};
use detect::yara::YaraRules;

use super::common::median_f64;

/// Heading of the YARA section in docs/bench.md.
pub const HEADING: &str = "## YARA scans";

/// Tiny files per round and set.
const TINY_FILES: usize = 1000;
const TINY_BYTES: usize = 1024;
const LARGE_BYTES: usize = 10 << 20;

pub struct YaraReport {
    rounds: usize,
    sets: Vec<(String, usize)>,
    /// Per set: microseconds per tiny file, milliseconds per large file.
    tiny_us: Vec<f64>,
    large_ms: Vec<f64>,
    /// Median time to make a scanner (once per rule generation).
    scanner_us: Vec<f64>,
}

/// Bytes that look like a binary: pseudo-random, with some text.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
        if x.is_multiple_of(16) {
            out.extend_from_slice(b"/usr/lib/x86_64-linux-gnu/libc.so.6 GLIBC_2.34 ");
        }
    }
    out.truncate(len);
    out
}

pub fn run(rounds: usize) -> Result<YaraReport> {
    let sets = [
        ("no rules".to_owned(), YaraRules::load(false, &[])?),
        ("default pack".to_owned(), YaraRules::load(true, &[])?),
    ];
    let dir = tempfile::tempdir()?;
    let tiny: Vec<PathBuf> = (0..TINY_FILES)
        .map(|i| {
            let p = dir.path().join(format!("tiny-{i}"));
            std::fs::write(&p, content(TINY_BYTES, i as u64 + 1)).map(|()| p)
        })
        .collect::<std::io::Result<_>>()?;
    let large = dir.path().join("large");
    std::fs::write(&large, content(LARGE_BYTES, 7))?;
    let mut tiny_us = vec![Vec::new(); sets.len()];
    let mut large_ms = vec![Vec::new(); sets.len()];
    let mut scanner_us = vec![Vec::new(); sets.len()];
    for round in 0..rounds.max(1) {
        println!("yara round {}/{rounds}", round + 1);
        for (i, (_, rules)) in sets.iter().enumerate() {
            let start = Instant::now();
            let mut scanner = rules.scanner();
            scanner_us[i].push(start.elapsed().as_secs_f64() * 1e6);
            let start = Instant::now();
            for p in &tiny {
                let got = scanner.scan_path(p, 1 << 30, None).context("tiny file")?;
                if !got.matches.is_empty() {
                    bail!("{} matched {:?}", p.display(), got.matches);
                }
            }
            tiny_us[i].push(start.elapsed().as_secs_f64() * 1e6 / TINY_FILES as f64);
            let start = Instant::now();
            let got = scanner
                .scan_path(&large, 1 << 30, None)
                .context("large file")?;
            large_ms[i].push(start.elapsed().as_secs_f64() * 1e3);
            if !got.matches.is_empty() {
                bail!("the large file matched {:?}", got.matches);
            }
        }
    }
    Ok(YaraReport {
        rounds,
        sets: sets.iter().map(|(n, r)| (n.clone(), r.len())).collect(),
        tiny_us: tiny_us.iter().map(|v| median_f64(v)).collect(),
        large_ms: large_ms.iter().map(|v| median_f64(v)).collect(),
        scanner_us: scanner_us.iter().map(|v| median_f64(v)).collect(),
    })
}

impl YaraReport {
    pub fn render(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "{HEADING}\n");
        let _ = writeln!(
            t,
            "`detect::yara::FileScanner::scan_path` alone (what the sensor's `rxsentry-yara` worker does per file: open, read, SHA-256, scan in memory), on one core, {} rounds, the sets interleaved; medians. Files in the page cache (the kernel just saw them written or executed): {TINY_FILES} files of {TINY_BYTES} bytes, and one of {} MiB, pseudo-random bytes with library paths, matching nothing. \"No rules\" is the read, the hash and the engine's fixed cost; the difference is what the rules add.\n",
            self.rounds,
            LARGE_BYTES >> 20
        );
        let _ = writeln!(
            t,
            "| rule set (rules) | per 1 KiB file | 10 MiB file | per MB | MB/s | new scanner (once per rule set) |"
        );
        let _ = writeln!(t, "| --- | --- | --- | --- | --- | --- |");
        let mb = LARGE_BYTES as f64 / 1e6;
        for (i, (name, n)) in self.sets.iter().enumerate() {
            let _ = writeln!(
                t,
                "| {name} ({n}) | {:.1} us | {:.1} ms | {:.2} ms | {:.0} | {:.0} us |",
                self.tiny_us[i],
                self.large_ms[i],
                self.large_ms[i] / mb,
                mb / (self.large_ms[i] / 1e3).max(1e-9),
                self.scanner_us[i],
            );
        }
        t
    }
}
