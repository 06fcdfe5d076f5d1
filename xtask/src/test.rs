//! `cargo xtask test`: setup, release build, then every test.
//!
//! 1. unit + in-process tests: `cargo test --release --workspace --exclude tests`
//! 2. integration tests (the real sensor as root on the real kernel; they share
//!    kernel state, hence one thread): `cargo test --release -p tests --
//!    --test-threads=1` with `RXSENTRY_BIN_DIR` set to target/release.
//!
//! 3. VM tests (`cargo xtask vm-test`): each guest kernel's kiosk image booted
//!    in QEMU, then the kernel x capability matrix.
//!
//! Every step always runs; the exit is non-zero when any fails. libtest's
//! `test result:` lines (and the VM tests' counts) are added up into one
//! closing summary line.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    build,
    cmd::{cargo, describe, target_dir},
    setup, vm,
};

/// Counts from libtest's `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.ignored += o.ignored;
    }
}

struct StepResult {
    name: &'static str,
    ok: bool,
    status: String,
    counts: Counts,
    secs: f64,
}

pub fn test() -> Result<()> {
    setup::setup()?;
    build::build(&build::Options { release: true })?;

    let bin_dir = target_dir().join("release");
    let bin_dir = bin_dir.canonicalize().unwrap_or(bin_dir);

    let mut unit = cargo();
    // sensor-ebpf only builds for bpfel-unknown-none: not a host test crate.
    unit.args([
        "test",
        "--release",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "tests",
        "--exclude",
        "sensor-ebpf",
    ]);
    let mut integration = cargo();
    integration
        .args([
            "test",
            "--release",
            "--no-fail-fast",
            "-p",
            "tests",
            "--",
            "--test-threads=1",
        ])
        .env("RXSENTRY_BIN_DIR", &bin_dir);

    let results = vec![
        run_step("unit + in-process tests", &mut unit)?,
        run_step("integration tests (root, real kernel)", &mut integration)?,
        vm_step(),
    ];

    println!("\n== xtask test summary");
    let mut total = Counts::default();
    for r in &results {
        total.add(r.counts);
        println!(
            "  {:<40} {:<6} {} passed, {} failed, {} ignored  ({:.0}s{})",
            r.name,
            if r.ok { "ok" } else { "FAILED" },
            r.counts.passed,
            r.counts.failed,
            r.counts.ignored,
            r.secs,
            if r.ok {
                String::new()
            } else {
                format!(", {}", r.status)
            },
        );
    }
    println!(
        "summary: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.ignored
    );
    let failed: Vec<&str> = results.iter().filter(|r| !r.ok).map(|r| r.name).collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join("; "));
    }
    Ok(())
}

/// Runs one `cargo test`, echoing its stdout live while adding up its
/// `test result:` lines (cargo's own messages go to stderr untouched).
fn run_step(name: &'static str, cmd: &mut Command) -> Result<StepResult> {
    let line = describe(cmd);
    println!("\n== {name}\n+ {line}");
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let mut counts = Counts::default();
    if let Some(stdout) = child.stdout.take() {
        for raw in BufReader::new(stdout).split(b'\n') {
            let Ok(raw) = raw else { break };
            let text = String::from_utf8_lossy(&raw);
            println!("{text}");
            if let Some(c) = parse_test_result(&text) {
                counts.add(c);
            }
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("cannot wait for `{line}`"))?;
    Ok(StepResult {
        name,
        ok: status.success(),
        status: status.to_string(),
        counts,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// `vm-test` on the binaries just built, as one step of the summary.
fn vm_step() -> StepResult {
    const NAME: &str = "VM tests (QEMU, Debian kernels)";
    println!("\n== {NAME}");
    let start = Instant::now();
    let opts = vm::test::Options {
        no_build: true,
        ..Default::default()
    };
    let (counts, status) = match vm::test::run(&opts) {
        Ok(summary) => {
            let counts = Counts {
                passed: summary.passed,
                failed: summary.failed,
                ignored: 0,
            };
            (counts, summary.problems.join("; "))
        }
        Err(e) => (Counts::default(), format!("{e:#}")),
    };
    if !status.is_empty() {
        println!("vm-test failed: {status}");
    }
    StepResult {
        name: NAME,
        ok: status.is_empty(),
        status,
        counts,
        secs: start.elapsed().as_secs_f64(),
    }
}

/// Parses libtest's closing line, e.g.
/// `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s`.
pub fn parse_test_result(line: &str) -> Option<Counts> {
    let rest = line.trim().strip_prefix("test result:")?;
    let (_verdict, rest) = rest.split_once('.')?;
    let mut counts = Counts::default();
    for part in rest.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => counts.passed = n,
            "failed" => counts.failed = n,
            "ignored" => counts.ignored = n,
            _ => {}
        }
    }
    Some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines() {
        assert_eq!(
            parse_test_result(
                "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s"
            ),
            Some(Counts {
                passed: 3,
                failed: 0,
                ignored: 1
            })
        );
        assert_eq!(
            parse_test_result(
                "test result: FAILED. 10 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.52s"
            ),
            Some(Counts {
                passed: 10,
                failed: 2,
                ignored: 0
            })
        );
        assert_eq!(parse_test_result("test foo::bar ... ok"), None);
        assert_eq!(parse_test_result("running 3 tests"), None);
    }
}
