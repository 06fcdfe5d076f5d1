//! Reading a guest's serial console: the marker lines the image's init prints
//! (vm-images/kiosk/usr/lib/rxsentry/vm-tests/run-all) and the verdict of a
//! run. Pure logic, no QEMU: the boot loop in `test.rs` feeds lines in.

use std::{collections::VecDeque, time::Duration};

/// Prefix of one test result: `RXSENTRY-TEST <name> PASS|FAIL <detail>`.
pub const TEST_MARKER: &str = "RXSENTRY-TEST ";
/// Prefix of the last line: `RXSENTRY-VM-DONE <pass> <fail>`.
pub const DONE_MARKER: &str = "RXSENTRY-VM-DONE ";
/// Prefix of an `rxsentry-probe` line relayed from the guest.
pub const PROBE_MARKER: &str = "RXSENTRY-PROBE ";
/// The first line of the image's init, once the kernel has booted.
pub const INIT_MARKER: &str = "init: kernel ";
/// Kernel messages that fail a run whatever the tests said.
const KERNEL_ERRORS: &[&str] = &["Kernel panic - not syncing", "BUG: ", "Oops: "];
/// Console lines kept to show when a run fails.
const TAIL_LINES: usize = 60;

/// What one console line means.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Test(TestResult),
    Done { pass: u32, fail: u32 },
    Probe(&'a str),
    InitStarted,
    KernelError(&'a str),
    Other,
}

/// One `RXSENTRY-TEST` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestResult {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// Classifies one console line. Markers may follow other text on the same
/// line (a kernel message printed without a newline before ours).
pub fn parse_line(line: &str) -> Line<'_> {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(rest) = after(line, TEST_MARKER) {
        let mut parts = rest.splitn(3, ' ');
        let (name, verdict, detail) = (parts.next(), parts.next(), parts.next());
        let passed = match verdict {
            Some("PASS") => true,
            Some("FAIL") => false,
            _ => return Line::Other,
        };
        return match name {
            Some(name) if !name.is_empty() => Line::Test(TestResult {
                name: name.to_owned(),
                passed,
                detail: detail.unwrap_or("").trim().to_owned(),
            }),
            _ => Line::Other,
        };
    }
    if let Some(rest) = after(line, DONE_MARKER) {
        let mut nums = rest.split_whitespace().map(str::parse::<u32>);
        return match (nums.next(), nums.next(), nums.next()) {
            (Some(Ok(pass)), Some(Ok(fail)), None) => Line::Done { pass, fail },
            _ => Line::Other,
        };
    }
    if let Some(rest) = after(line, PROBE_MARKER) {
        return Line::Probe(rest);
    }
    if line.starts_with(INIT_MARKER) {
        return Line::InitStarted;
    }
    if KERNEL_ERRORS.iter().any(|m| line.contains(m)) {
        return Line::KernelError(line);
    }
    Line::Other
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

/// How the QEMU process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// QEMU exited by itself (the guest powered off or rebooted).
    Exited,
    /// Killed after this long without a RXSENTRY-VM-DONE line.
    TimedOut(Duration),
    /// Killed because it did not exit within a grace period after the DONE line.
    HungAfterDone,
}

/// Everything learnt from one guest's console.
#[derive(Debug, Default)]
pub struct Run {
    pub tests: Vec<TestResult>,
    pub done: Option<(u32, u32)>,
    pub probe_lines: Vec<String>,
    pub kernel_errors: Vec<String>,
    /// Seconds from QEMU's start to the init's first line, if seen.
    pub init_after: Option<f64>,
    /// Seconds from QEMU's start to the DONE line, if seen.
    pub done_after: Option<f64>,
    /// The last console lines, for the failure report.
    pub tail: VecDeque<String>,
}

impl Run {
    /// Takes one console line seen `secs` after QEMU started; true when it
    /// was one of ours or a kernel error (worth showing live).
    pub fn feed(&mut self, line: &str, secs: f64) -> bool {
        let notable = match parse_line(line) {
            Line::Test(t) => {
                self.tests.push(t);
                true
            }
            Line::Done { pass, fail } => {
                self.done = Some((pass, fail));
                self.done_after.get_or_insert(secs);
                true
            }
            Line::Probe(p) => {
                self.probe_lines.push(p.to_owned());
                true
            }
            Line::InitStarted => {
                self.init_after.get_or_insert(secs);
                true
            }
            Line::KernelError(e) => {
                self.kernel_errors.push(e.to_owned());
                true
            }
            Line::Other => false,
        };
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.trim_end().to_owned());
        notable
    }

    /// A run fed these lines, one second apart (for tests).
    #[cfg(test)]
    pub fn of_lines(lines: &[&str]) -> Self {
        let mut run = Self::default();
        for (i, l) in lines.iter().enumerate() {
            run.feed(l, i as f64);
        }
        run
    }

    /// True once the DONE line was seen: stop waiting for more tests.
    pub fn is_done(&self) -> bool {
        self.done.is_some()
    }

    pub fn passed(&self) -> usize {
        self.tests.iter().filter(|t| t.passed).count()
    }

    pub fn failed(&self) -> usize {
        self.tests.len() - self.passed()
    }

    /// Everything wrong with this run (empty = it passed): kernel errors, a
    /// timeout, a missing DONE line, counts that do not add up, a test that
    /// failed or never reported. `expected` tests must all report PASS.
    pub fn problems(&self, ending: Ending, expected: &[&str]) -> Vec<String> {
        let mut problems: Vec<String> = self
            .kernel_errors
            .iter()
            .map(|e| format!("kernel error on the console: {e}"))
            .collect();
        match (ending, self.done) {
            (Ending::TimedOut(after), _) => problems.push(format!(
                "timed out after {}s without {}",
                after.as_secs(),
                DONE_MARKER.trim()
            )),
            (Ending::Exited, None) => problems.push(format!(
                "QEMU exited before the guest printed {} (init crashed or the kernel rebooted)",
                DONE_MARKER.trim()
            )),
            (Ending::HungAfterDone, _) => {
                problems.push("the guest did not power off after its tests".to_owned())
            }
            (Ending::Exited, Some(_)) => {}
        }
        if let Some((pass, fail)) = self.done {
            let seen = (self.passed(), self.failed());
            if (pass as usize, fail as usize) != seen {
                problems.push(format!(
                    "{} says {pass} passed, {fail} failed but the console showed {} passed, {} failed",
                    DONE_MARKER.trim(),
                    seen.0,
                    seen.1
                ));
            }
        }
        for t in self.tests.iter().filter(|t| !t.passed) {
            problems.push(format!("test {} failed: {}", t.name, t.detail));
        }
        for name in expected {
            if !self.tests.iter().any(|t| t.name == *name) {
                problems.push(format!("test {name} never reported"));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[&str] = &["mounts", "bpf-lsm"];

    #[test]
    fn test_lines() {
        assert_eq!(
            parse_line("RXSENTRY-TEST bpf-lsm PASS bpf-lsm: available (x); LSMs: a,b\r\n"),
            Line::Test(TestResult {
                name: "bpf-lsm".into(),
                passed: true,
                detail: "bpf-lsm: available (x); LSMs: a,b".into()
            })
        );
        assert_eq!(
            parse_line("RXSENTRY-TEST mounts FAIL"),
            Line::Test(TestResult {
                name: "mounts".into(),
                passed: false,
                detail: String::new()
            })
        );
        // a kernel message without a newline before the marker
        assert!(matches!(
            parse_line("[    5.1] random: crng initRXSENTRY-TEST mounts PASS ok"),
            Line::Test(TestResult { passed: true, .. })
        ));
        assert_eq!(parse_line("RXSENTRY-TEST mounts SKIP why"), Line::Other);
        assert_eq!(parse_line("RXSENTRY-TEST  PASS x"), Line::Other);
    }

    #[test]
    fn done_probe_init_and_kernel_lines() {
        assert_eq!(
            parse_line("RXSENTRY-VM-DONE 4 0"),
            Line::Done { pass: 4, fail: 0 }
        );
        assert_eq!(parse_line("RXSENTRY-VM-DONE 4"), Line::Other);
        assert_eq!(parse_line("RXSENTRY-VM-DONE 4 x"), Line::Other);
        assert_eq!(parse_line("RXSENTRY-VM-DONE 4 0 1"), Line::Other);
        assert_eq!(
            parse_line("RXSENTRY-PROBE bpf-lsm: available (y)"),
            Line::Probe("bpf-lsm: available (y)")
        );
        assert_eq!(
            parse_line("init: kernel 6.1.0-56-amd64, LSMs: bpf"),
            Line::InitStarted
        );
        assert!(matches!(
            parse_line("[    2.0] Kernel panic - not syncing: Attempted to kill init!"),
            Line::KernelError(_)
        ));
        assert_eq!(parse_line("[    0.0] Linux version 6.1.0"), Line::Other);
    }

    #[test]
    fn clean_run_passes() {
        let run = Run::of_lines(&[
            "[ 0.0] Linux version",
            "init: kernel 6.1.0-56-amd64, LSMs: bpf",
            "RXSENTRY-TEST mounts PASS ok",
            "RXSENTRY-TEST bpf-lsm PASS ok",
            "RXSENTRY-VM-DONE 2 0",
        ]);
        assert!(run.is_done());
        assert_eq!(run.init_after, Some(1.0));
        assert_eq!(run.done_after, Some(4.0));
        assert_eq!(run.problems(Ending::Exited, ALL), Vec::<String>::new());
    }

    #[test]
    fn failures_timeouts_and_panics_fail() {
        let failed = Run::of_lines(&[
            "RXSENTRY-TEST mounts PASS ok",
            "RXSENTRY-TEST bpf-lsm FAIL bpf is not an active LSM: a,b",
            "RXSENTRY-VM-DONE 1 1",
        ]);
        assert_eq!(
            failed.problems(Ending::Exited, ALL),
            ["test bpf-lsm failed: bpf is not an active LSM: a,b"]
        );

        let hung = Run::of_lines(&["RXSENTRY-TEST mounts PASS ok"]);
        assert!(!hung.is_done());
        let p = hung.problems(Ending::TimedOut(Duration::from_secs(300)), ALL);
        assert_eq!(
            p,
            [
                "timed out after 300s without RXSENTRY-VM-DONE",
                "test bpf-lsm never reported"
            ]
        );

        let panicked =
            Run::of_lines(&["[ 1.0] Kernel panic - not syncing: Attempted to kill init!"]);
        let p = panicked.problems(Ending::Exited, ALL);
        assert!(p[0].starts_with("kernel error on the console: [ 1.0] Kernel panic"));
        assert!(p[1].starts_with("QEMU exited before the guest printed RXSENTRY-VM-DONE"));

        // A panic after a clean DONE still fails the run.
        let late = Run::of_lines(&[
            "RXSENTRY-TEST mounts PASS ok",
            "RXSENTRY-TEST bpf-lsm PASS ok",
            "RXSENTRY-VM-DONE 2 0",
            "Kernel panic - not syncing: x",
        ]);
        assert_eq!(late.problems(Ending::Exited, ALL).len(), 1);
        assert_eq!(
            late.problems(Ending::HungAfterDone, ALL),
            [
                "kernel error on the console: Kernel panic - not syncing: x",
                "the guest did not power off after its tests"
            ]
        );
    }

    #[test]
    fn lost_or_missing_lines_fail() {
        // DONE counts a test whose line never arrived.
        let lost = Run::of_lines(&["RXSENTRY-TEST mounts PASS ok", "RXSENTRY-VM-DONE 2 0"]);
        assert_eq!(
            lost.problems(Ending::Exited, &["mounts"]),
            ["RXSENTRY-VM-DONE says 2 passed, 0 failed but the console showed 1 passed, 0 failed"]
        );
        // A test the host expects but the image does not run (a skip) fails.
        let skipped = Run::of_lines(&["RXSENTRY-TEST mounts PASS ok", "RXSENTRY-VM-DONE 1 0"]);
        assert_eq!(
            skipped.problems(Ending::Exited, ALL),
            ["test bpf-lsm never reported"]
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let mut run = Run::default();
        for i in 0..(TAIL_LINES + 5) {
            run.feed(&format!("line {i}\r"), 0.0);
        }
        assert_eq!(run.tail.len(), TAIL_LINES);
        assert_eq!(run.tail.front().map(String::as_str), Some("line 5"));
        assert_eq!(
            run.tail.back().map(String::as_str),
            Some(format!("line {}", TAIL_LINES + 4).as_str())
        );
    }
}
