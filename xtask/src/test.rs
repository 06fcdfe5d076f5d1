//! `cargo xtask test`: setup, release build, then every test.
//!
//! 1. unit + in-process tests: `cargo test --release --workspace --exclude tests`
//! 2. integration tests (the real sensor as root on the real kernel; they share
//!    kernel state, hence one thread): `cargo test --release -p tests --
//!    --test-threads=1` with `RXSENTRY_BIN_DIR` set to target/release.
//!
//! 3. VM tests (`cargo xtask vm-test`): each guest kernel's kiosk image booted
//!    in QEMU, the systemd kiosk image booted twice, then the kernel x
//!    capability matrix.
//!
//! Every step always runs; the exit is non-zero when any fails. libtest's
//! `test result:` lines (and the VM tests' counts) are added up into one
//! closing summary line.
//!
//! The gate: every test binary (suite) must run exactly the number of tests
//! that `xtask/expected-tests.txt` lists for it, with none ignored or
//! filtered out, so a deleted, ignored or silently skipped test turns the
//! run red. The VM tests have their own expected count (`vm::test`).

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
    pub filtered_out: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.ignored += o.ignored;
        self.filtered_out += o.filtered_out;
    }

    /// How many tests the suite has.
    fn total(&self) -> u64 {
        self.passed + self.failed + self.ignored + self.filtered_out
    }
}

/// The file of expected test counts, one `<count> <suite>` per line.
const EXPECTED_FILE: &str = "xtask/expected-tests.txt";

struct StepResult {
    name: &'static str,
    ok: bool,
    status: String,
    counts: Counts,
    /// Each test binary's counts, in the order they ran.
    suites: Vec<(String, Counts)>,
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

    let mut results = vec![
        run_step("unit + in-process tests", &mut unit)?,
        run_step("integration tests (root, real kernel)", &mut integration)?,
        vm_step(),
    ];
    let expected_path = crate::cmd::workspace_root().join(EXPECTED_FILE);
    let expected = std::fs::read_to_string(&expected_path)
        .with_context(|| format!("cannot read {}", expected_path.display()))?;
    let ran: Vec<(String, Counts)> = results
        .iter()
        .flat_map(|r| r.suites.iter().cloned())
        .collect();
    let gate_problems = gate(&parse_expected(&expected)?, &ran);
    if !gate_problems.is_empty() {
        println!(
            "\n== test gate ({EXPECTED_FILE}): {} problem(s)",
            gate_problems.len()
        );
        for p in &gate_problems {
            println!("  {p}");
        }
        println!("what ran, in the file's format:\n{}", render_expected(&ran));
    }
    results.push(StepResult {
        name: "test gate (expected counts)",
        ok: gate_problems.is_empty(),
        status: gate_problems.join("; "),
        counts: Counts::default(),
        suites: Vec::new(),
        secs: 0.0,
    });

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

/// Runs one `cargo test` with its stdout and stderr in one pipe (so each
/// `test result:` line follows the `Running` line of its binary), echoing
/// it live while adding up the results per test binary.
fn run_step(name: &'static str, cmd: &mut Command) -> Result<StepResult> {
    let line = describe(cmd);
    println!("\n== {name}\n+ {line}");
    let start = Instant::now();
    let (reader, writer) = std::io::pipe().context("pipe")?;
    let writer2 = writer.try_clone().context("pipe")?;
    let mut child = cmd
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    // Our copies of the write end are gone with `cmd`'s: EOF when it exits.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut counts = Counts::default();
    let mut suites = Vec::new();
    let mut suite = String::from("(unnamed)");
    for raw in BufReader::new(reader).split(b'\n') {
        let Ok(raw) = raw else { break };
        let text = String::from_utf8_lossy(&raw);
        println!("{text}");
        if let Some(name) = parse_suite_line(&text) {
            suite = name;
        } else if let Some(c) = parse_test_result(&text) {
            counts.add(c);
            suites.push((suite.clone(), c));
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
        suites,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// The suite a cargo line starts: `Running tests/allowlist.rs
/// (target/release/deps/allowlist-0123abcd)` is `allowlist tests/allowlist.rs`,
/// `Doc-tests sensor_user` is `sensor_user doc-tests`.
pub fn parse_suite_line(line: &str) -> Option<String> {
    let line = line.trim();
    if let Some(krate) = line.strip_prefix("Doc-tests ") {
        return Some(format!("{} doc-tests", krate.trim()));
    }
    let rest = line.strip_prefix("Running ")?;
    let (path, binary) = rest.rsplit_once(" (")?;
    let file = binary.trim_end_matches(')').rsplit('/').next()?;
    let stem = file.rsplit_once('-').map_or(file, |(stem, _hash)| stem);
    Some(format!("{stem} {}", path.trim()))
}

/// `<count> <suite>` lines; `#` starts a comment.
pub fn parse_expected(text: &str) -> Result<Vec<(String, u64)>> {
    let mut expected = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let (count, suite) = line
            .split_once(' ')
            .with_context(|| format!("{EXPECTED_FILE}:{}: want `<count> <suite>`", i + 1))?;
        let count = count
            .parse()
            .with_context(|| format!("{EXPECTED_FILE}:{}: {count:?} is not a count", i + 1))?;
        expected.push((suite.trim().to_owned(), count));
    }
    Ok(expected)
}

/// What ran, as lines of the expected file.
fn render_expected(ran: &[(String, Counts)]) -> String {
    ran.iter()
        .map(|(suite, c)| format!("{} {suite}", c.total()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every expected suite ran its count of tests, none ignored or filtered
/// out, and nothing ran that is not expected. Two crates can have a test
/// file of the same name (cargo's `Running` line does not name the crate),
/// so a suite may be listed more than once: its counts are compared as a
/// set.
pub fn gate(expected: &[(String, u64)], ran: &[(String, Counts)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (suite, c) in ran {
        if c.ignored > 0 {
            problems.push(format!("{suite}: {} test(s) ignored", c.ignored));
        }
        if c.filtered_out > 0 {
            problems.push(format!("{suite}: {} test(s) filtered out", c.filtered_out));
        }
    }
    let mut suites: Vec<&str> = ran
        .iter()
        .map(|(s, _)| s.as_str())
        .chain(expected.iter().map(|(s, _)| s.as_str()))
        .collect();
    suites.sort_unstable();
    suites.dedup();
    for suite in suites {
        let counts = |of: &mut dyn Iterator<Item = u64>| {
            let mut v: Vec<u64> = of.collect();
            v.sort_unstable();
            v
        };
        let got = counts(
            &mut ran
                .iter()
                .filter(|(s, _)| s == suite)
                .map(|(_, c)| c.total()),
        );
        let want = counts(&mut expected.iter().filter(|(s, _)| s == suite).map(|(_, n)| *n));
        if got == want {
            continue;
        }
        problems.push(match (got.is_empty(), want.is_empty()) {
            (_, true) => format!("{suite}: not in {EXPECTED_FILE} (a new suite: add it)"),
            (true, _) => format!("{suite}: did not run ({want:?} test(s) expected)"),
            _ => format!("{suite}: {got:?} test(s), {EXPECTED_FILE} expects {want:?}"),
        });
    }
    problems
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
                ..Counts::default()
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
        suites: Vec::new(),
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
            "filtered" => counts.filtered_out = n,
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
                ignored: 1,
                filtered_out: 0
            })
        );
        assert_eq!(
            parse_test_result(
                "test result: FAILED. 10 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.52s"
            ),
            Some(Counts {
                passed: 10,
                failed: 2,
                ignored: 0,
                filtered_out: 0
            })
        );
        assert_eq!(parse_test_result("test foo::bar ... ok"), None);
        assert_eq!(parse_test_result("running 3 tests"), None);
    }

    #[test]
    fn suite_lines() {
        assert_eq!(
            parse_suite_line(
                "     Running tests/allowlist.rs (target/release/deps/allowlist-0a1b2c3d4e5f)"
            )
            .as_deref(),
            Some("allowlist tests/allowlist.rs")
        );
        assert_eq!(
            parse_suite_line(
                "     Running unittests src/lib.rs (target/release/deps/sensor_user-0123abcd)"
            )
            .as_deref(),
            Some("sensor_user unittests src/lib.rs")
        );
        assert_eq!(
            parse_suite_line("   Doc-tests sensor_user").as_deref(),
            Some("sensor_user doc-tests")
        );
        assert_eq!(parse_suite_line("test foo ... ok"), None);
        assert_eq!(
            parse_test_result(
                "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 2 filtered out; finished in 0.00s"
            )
            .map(|c| c.filtered_out),
            Some(2)
        );
    }

    #[test]
    fn the_gate_refuses_missing_ignored_filtered_and_unexpected_tests() {
        let expected =
            parse_expected("# comment\n3 a tests/a.rs\n2 b tests/b.rs  # two\n").unwrap();
        let ok = |passed| Counts {
            passed,
            ..Counts::default()
        };
        let ran = vec![
            ("a tests/a.rs".to_owned(), ok(3)),
            ("b tests/b.rs".to_owned(), ok(2)),
        ];
        assert!(gate(&expected, &ran).is_empty());
        // One test fewer, one ignored, one filtered out, one suite gone,
        // one suite unknown: each is named.
        let cases: [(Vec<(String, Counts)>, &str); 5] = [
            (
                vec![ran[0].clone(), ("b tests/b.rs".into(), ok(1))],
                "expects [2]",
            ),
            (
                vec![
                    ran[0].clone(),
                    (
                        "b tests/b.rs".into(),
                        Counts {
                            ignored: 1,
                            ..ok(1)
                        },
                    ),
                ],
                "ignored",
            ),
            (
                vec![
                    ran[0].clone(),
                    (
                        "b tests/b.rs".into(),
                        Counts {
                            filtered_out: 1,
                            ..ok(1)
                        },
                    ),
                ],
                "filtered out",
            ),
            (vec![ran[0].clone()], "did not run"),
            (
                vec![
                    ran[0].clone(),
                    ran[1].clone(),
                    ("c tests/c.rs".into(), ok(1)),
                ],
                "not in",
            ),
        ];
        for (ran, what) in cases {
            let problems = gate(&expected, &ran);
            assert!(
                problems.iter().any(|p| p.contains(what)),
                "{what}: {problems:?}"
            );
        }
        assert!(parse_expected("x tests/a.rs").is_err());
        // Two crates' tests/a.rs: both counts must be there.
        let twice = parse_expected("3 a tests/a.rs\n5 a tests/a.rs\n").unwrap();
        let both = vec![
            ("a tests/a.rs".to_owned(), ok(5)),
            ("a tests/a.rs".to_owned(), ok(3)),
        ];
        assert!(gate(&twice, &both).is_empty());
        let one_short = vec![
            ("a tests/a.rs".to_owned(), ok(5)),
            ("a tests/a.rs".to_owned(), ok(2)),
        ];
        assert!(!gate(&twice, &one_short).is_empty());
    }
}
