//! The `tests` crate's integration suites inside the guest: the same Rust
//! tests the host runs (`cargo xtask test`), built once, copied into the
//! kiosk image with what they exec, and run one by one (`--exact`, under a
//! time limit) by `usr/lib/rxsentry/suite/run-suite.sh`, which prints one
//! `RXSENTRY-TEST <suite>::<test> PASS|FAIL` line each. Each test asserts
//! the backend its kernel should pick (tests/src/kernel.rs), so in the
//! Debian 6.1 guest they prove the lsm, fexit and netlink paths with the
//! host's scenarios.
//!
//! The binaries go into the same initramfs as the shell tests (one boot,
//! one image to keep in step): they add about 30 MiB, which the guest's
//! 1 GiB holds.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{cargo, output_of};

/// The suites (test binaries of the `tests` crate) the guest runs, in order.
/// Left out, for time under TCG (each test starts its own sensor, whose
/// programs the verifier checks slowly there): config, channel, outage,
/// spool, drops, detection, metrics; the host runs them. Of
/// [`PARTIAL`]'s suites, the guest runs the tests named there.
pub const SUITES: &[&str] = &[
    "probe",
    "process_events",
    "file_events",
    "allowlist",
    "isolation",
    "network_events",
];

/// Suites of [`SUITES`] the guest runs only some tests of (the rest for
/// time under TCG; the host runs them all): the tests whose hooks differ
/// on BPF-LSM kernels.
pub const PARTIAL: &[(&str, &[&str])] = &[(
    "network_events",
    &["udp_through_io_uring_is_reported_where_bpf_lsm_runs"],
)];

/// Tests of [`SUITES`] the guest cannot run, and why: the only place a
/// test is left out. Every other test of those suites must report.
pub const EXCLUDED: &[(&str, &str, &str)] = &[
    (
        "allowlist",
        "fileless_and_loader_tricks_are_blocked",
        "needs python3 (memfd + fexecve), which the busybox image lacks",
    ),
    (
        "allowlist",
        "deny_rules_forbid_a_program_by_parent_or_user",
        "needs python3 (the parent the deny rule names), which the busybox image lacks",
    ),
    (
        "file_events",
        "every_open_syscall_reports_its_own_arguments",
        "needs python3 (raw open/openat/openat2/creat syscalls), which the busybox image lacks",
    ),
];

/// Host programs the suites exec beyond busybox, copied to the same path
/// with their libraries (coreutils and util-linux: busybox's applets live
/// in /bin, and the tests hash and copy these exact files).
pub const TOOLS: &[&str] = &[
    "/usr/bin/touch",
    "/usr/bin/install",
    "/usr/bin/mkdir",
    "/usr/bin/true",
    "/usr/bin/setpriv",
    "/usr/bin/nsenter",
];

/// Where the suite lives in the image.
const GUEST_DIR: &str = "usr/lib/rxsentry/suite";
/// The list of tests the guest must report, next to the image and in it.
pub const LIST_FILE: &str = "suite-tests.list";

/// One test the guest runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuiteTest {
    pub suite: String,
    pub test: String,
}

impl SuiteTest {
    /// Its name on the console: `<suite>::<test>`.
    pub fn name(&self) -> String {
        format!("{}::{}", self.suite, self.test)
    }
}

/// Builds the suites (release, as the host runs them) and returns each
/// suite's executable.
pub fn build() -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "-p",
        "tests",
        "--no-run",
        "--message-format=json",
    ]);
    for suite in SUITES {
        cmd.args(["--test", suite]);
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the guest's test suites failed ({})", out.status);
    }
    let found = executables(&String::from_utf8_lossy(&out.stdout));
    for suite in SUITES {
        if !found.iter().any(|(s, _)| s == suite) {
            bail!("cargo built no test binary for suite {suite}");
        }
    }
    Ok(found)
}

/// `(suite, executable)` of every test target in cargo's JSON messages.
pub fn executables(json: &str) -> Vec<(String, PathBuf)> {
    json.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"))
        })
        .filter_map(|m| {
            let name = m["target"]["name"].as_str()?.to_owned();
            let exe = m["executable"].as_str()?;
            Some((name, PathBuf::from(exe)))
        })
        .collect()
}

/// The tests of `suite` (`<exe> --list`), without the [`EXCLUDED`] ones.
fn listed(suite: &str, exe: &Path) -> Result<Vec<SuiteTest>> {
    let text = output_of(exe, &["--list", "--format", "terse"])?;
    let tests = parse_list(suite, &text);
    if tests.is_empty() {
        bail!("{} --list shows no test", exe.display());
    }
    Ok(tests)
}

/// libtest's terse list (`name: test` lines) minus the excluded tests
/// (and, for a [`PARTIAL`] suite, the tests it does not name).
pub fn parse_list(suite: &str, text: &str) -> Vec<SuiteTest> {
    let only = PARTIAL.iter().find(|(s, _)| *s == suite).map(|(_, t)| *t);
    text.lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .filter(|t| !EXCLUDED.iter().any(|(s, x, _)| *s == suite && x == t))
        .filter(|t| only.is_none_or(|only| only.contains(t)))
        .map(|t| SuiteTest {
            suite: suite.to_owned(),
            test: t.to_owned(),
        })
        .collect()
}

/// Copies the suites and [`TOOLS`] into `root`, writes the list of tests
/// to run (in the image and as `list_out` for the console reader), and
/// returns the host files whose libraries the image needs.
pub fn install(root: &Path, list_out: &Path) -> Result<Vec<PathBuf>> {
    let exes = build()?;
    let dir = root.join(GUEST_DIR);
    fs::create_dir_all(dir.join("bin"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut all = Vec::new();
    let mut needs_libs = Vec::new();
    for suite in SUITES {
        let Some((_, exe)) = exes.iter().find(|(s, _)| s == suite) else {
            bail!("no executable for suite {suite}");
        };
        all.extend(listed(suite, exe)?);
        let dest = dir.join("bin").join(suite);
        fs::copy(exe, &dest).with_context(|| format!("cannot copy {}", exe.display()))?;
        needs_libs.push(exe.clone());
    }
    for tool in TOOLS {
        let tool = Path::new(tool);
        if !tool.is_file() {
            bail!("{} not found: run `cargo xtask setup`", tool.display());
        }
        let dest = root.join(tool.strip_prefix("/").unwrap_or(tool));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(tool, &dest).with_context(|| format!("cannot copy {}", tool.display()))?;
        needs_libs.push(tool.to_path_buf());
    }
    let list: String = all
        .iter()
        .map(|t| format!("{} {}\n", t.suite, t.test))
        .collect();
    fs::write(dir.join("tests.list"), &list)?;
    fs::write(list_out, &list).with_context(|| format!("cannot write {}", list_out.display()))?;
    let excluded: String = EXCLUDED
        .iter()
        .map(|(s, t, why)| format!("{s}::{t}: {why}\n"))
        .collect();
    fs::write(dir.join("excluded"), excluded)?;
    println!(
        "guest suites: {} tests of {} ({} excluded)",
        all.len(),
        SUITES.join(", "),
        EXCLUDED.len()
    );
    Ok(needs_libs)
}

/// The tests the guest image of `image_dir` must report, as console names.
pub fn expected(image_dir: &Path) -> Result<Vec<String>> {
    let path = image_dir.join(LIST_FILE);
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(s, t)| {
            SuiteTest {
                suite: s.to_owned(),
                test: t.to_owned(),
            }
            .name()
        })
        .collect())
}

/// The per-test matrix: one row per test, one column per kernel, each cell
/// PASS, FAIL or `-` (never reported).
pub fn render_matrix(kernels: &[(&str, &super::console::Run)], tests: &[String]) -> String {
    let width = tests.iter().map(String::len).max().unwrap_or(4).max(4);
    let mut out = format!("{:<width$}", "test");
    for (k, _) in kernels {
        out.push_str(&format!("  {k}"));
    }
    out.push('\n');
    for t in tests {
        out.push_str(&format!("{t:<width$}"));
        for (k, run) in kernels {
            let cell = match run.tests.iter().find(|r| &r.name == t) {
                Some(r) if r.passed => "PASS",
                Some(_) => "FAIL",
                None => "-",
            };
            out.push_str(&format!("  {cell:<w$}", w = k.len()));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parsing_leaves_out_exactly_the_excluded() {
        let text = "a_test: test\nfileless_and_loader_tricks_are_blocked: test\nb: test\n\n2 tests, 0 benchmarks\n";
        let got: Vec<String> = parse_list("allowlist", text)
            .iter()
            .map(SuiteTest::name)
            .collect();
        assert_eq!(got, ["allowlist::a_test", "allowlist::b"]);
        // The same name in another suite is not excluded.
        assert_eq!(parse_list("probe", text).len(), 3);
    }

    #[test]
    fn a_partial_suite_runs_only_its_named_tests() {
        let (suite, named) = PARTIAL[0];
        let text = format!("other: test\n{}: test\n", named[0]);
        let got: Vec<String> = parse_list(suite, &text)
            .iter()
            .map(|t| t.test.clone())
            .collect();
        assert_eq!(got, [named[0]]);
        for (suite, named) in PARTIAL {
            assert!(SUITES.contains(suite) && !named.is_empty(), "{suite}");
        }
    }

    #[test]
    fn executables_from_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"probe"},"executable":"/t/probe-1"}
{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"tests"},"executable":null}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executables(json),
            [("probe".to_owned(), PathBuf::from("/t/probe-1"))]
        );
    }

    #[test]
    fn every_exclusion_names_a_guest_suite_and_a_reason() {
        for (suite, test, why) in EXCLUDED {
            assert!(SUITES.contains(suite), "{suite}");
            assert!(!test.is_empty() && why.len() > 10, "{test}: {why}");
        }
    }
}
