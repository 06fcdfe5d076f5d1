//! The kernel × capability matrix printed at the end of `vm-test`: for the
//! host and each guest kernel, whether process telemetry works through the
//! raw tracepoints, whether BPF-LSM programs attach, which exec-allowlist
//! backend the sensor would therefore choose, what it sees beyond the
//! syscall hooks (opens and sends no syscall tracepoint carries), and how
//! the tests went.
//!
//! Capabilities come from `rxsentry-probe` lines (run on the host directly,
//! relayed from a guest as `RXSENTRY-PROBE <line>`).

use super::console::Run;

/// One capability as `rxsentry-probe` reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Available(String),
    Unavailable(String),
}

impl Probe {
    pub fn is_available(&self) -> bool {
        matches!(self, Self::Available(_))
    }
}

/// What the probe found on one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub process: Option<Probe>,
    pub bpf_lsm: Option<Probe>,
    pub backend: Option<String>,
}

impl Capabilities {
    /// Reads `name: available (…)`, `name: unavailable: …` and
    /// `exec-allowlist-backend: …` lines; others are ignored.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Self {
        let mut caps = Self::default();
        for line in lines {
            let Some((name, rest)) = line.trim().split_once(": ") else {
                continue;
            };
            let probe = if let Some(detail) = rest.strip_prefix("available") {
                Probe::Available(detail.trim().to_owned())
            } else if let Some(detail) = rest.strip_prefix("unavailable") {
                Probe::Unavailable(detail.trim_start_matches(':').trim().to_owned())
            } else {
                Probe::Unavailable(rest.to_owned())
            };
            match name {
                "process-telemetry" => caps.process = Some(probe),
                "bpf-lsm" => caps.bpf_lsm = Some(probe),
                "exec-allowlist-backend" => caps.backend = Some(rest.trim().to_owned()),
                _ => {}
            }
        }
        caps
    }

    /// What the sensor sees of the opens and sends no syscall hook
    /// carries (io_uring's, by handle, an overlay's layers), from the
    /// process probe's report of the hooks it attached.
    pub fn beyond_syscalls(&self) -> &'static str {
        let Some(Probe::Available(detail)) = &self.process else {
            return "?";
        };
        let all_opens = detail.contains("opens: every open that reaches a file");
        let sends = detail.contains("io_uring UDP sends: BPF-LSM");
        let fexit = detail.contains("file open hook: fexit");
        match (all_opens, sends, fexit) {
            (true, true, _) => "every open, io_uring sends",
            (true, false, _) => "every open; io_uring setups",
            (false, _, true) => "io_uring opens (fexit); setups",
            (false, _, false) => "io_uring setups only",
        }
    }
}

/// One line of the matrix.
#[derive(Debug, PartialEq, Eq)]
pub struct Row {
    pub kernel: String,
    pub process: &'static str,
    pub bpf_lsm: &'static str,
    pub backend: String,
    pub beyond_syscalls: &'static str,
    pub tests: String,
    pub passed: bool,
}

/// The in-guest test that proves process telemetry end to end.
pub const PROCESS_TEST: &str = "process-telemetry";
/// The in-guest test that requires BPF-LSM.
pub const LSM_TEST: &str = "bpf-lsm";

impl Row {
    /// The host: only the probe (the integration tests cover the rest). It
    /// passes when process telemetry works; BPF-LSM is reported as found.
    pub fn host(release: &str, caps: &Capabilities) -> Self {
        let process_ok = caps.process.as_ref().is_some_and(Probe::is_available);
        Self {
            kernel: format!("host {release}"),
            process: pass_fail(process_ok),
            bpf_lsm: availability(caps.bpf_lsm.as_ref()),
            backend: caps.backend.clone().unwrap_or_else(|| "?".to_owned()),
            beyond_syscalls: caps.beyond_syscalls(),
            tests: "probe only".to_owned(),
            passed: process_ok,
        }
    }

    /// A guest: the probe's view confirmed by the in-guest tests; `passed`
    /// is the verdict of the whole run (no problem found).
    pub fn guest(name: &str, release: &str, run: &Run, passed: bool) -> Self {
        let caps = Capabilities::parse(run.probe_lines.iter().map(String::as_str));
        let test_passed = |name: &str| run.tests.iter().any(|t| t.name == name && t.passed);
        let process_ok =
            caps.process.as_ref().is_some_and(Probe::is_available) && test_passed(PROCESS_TEST);
        let bpf_lsm = match caps.bpf_lsm.as_ref() {
            Some(p) if p.is_available() && !test_passed(LSM_TEST) => "FAILED TEST",
            other => availability(other),
        };
        Self {
            kernel: format!("{name} {release}"),
            process: pass_fail(process_ok),
            bpf_lsm,
            beyond_syscalls: caps.beyond_syscalls(),
            backend: caps.backend.unwrap_or_else(|| "?".to_owned()),
            tests: format!("{} pass, {} fail", run.passed(), run.failed()),
            passed,
        }
    }
}

fn pass_fail(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

fn availability(probe: Option<&Probe>) -> &'static str {
    match probe {
        Some(Probe::Available(_)) => "available",
        Some(Probe::Unavailable(_)) => "unavailable",
        None => "not probed",
    }
}

const HEADERS: [&str; 7] = [
    "kernel",
    "process telemetry (raw tp)",
    "BPF-LSM",
    "exec-allowlist backend",
    "beyond the syscall hooks",
    "tests",
    "result",
];

/// The matrix as aligned text.
pub fn render(rows: &[Row]) -> String {
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.kernel.clone(),
                r.process.to_owned(),
                r.bpf_lsm.to_owned(),
                r.backend.clone(),
                r.beyond_syscalls.to_owned(),
                r.tests.clone(),
                pass_fail(r.passed).to_owned(),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: [&str; 7]| {
        let padded: Vec<String> = cols
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(HEADERS);
    out.push_str(&line(
        widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str),
    ));
    for row in &cells {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_PROBE: &str = "process-telemetry: available (exec of pid 7 (/bin/sh) seen)\n\
        bpf-lsm: unavailable: loading lsm_probe_bprm: Operation not permitted (os error 1)\n\
        exec-allowlist-backend: tracepoint+SIGKILL\n";

    #[test]
    fn probe_lines() {
        let caps = Capabilities::parse(HOST_PROBE.lines());
        assert_eq!(
            caps.process,
            Some(Probe::Available("(exec of pid 7 (/bin/sh) seen)".into()))
        );
        assert_eq!(
            caps.bpf_lsm,
            Some(Probe::Unavailable(
                "loading lsm_probe_bprm: Operation not permitted (os error 1)".into()
            ))
        );
        assert_eq!(caps.backend.as_deref(), Some("tracepoint+SIGKILL"));
        assert_eq!(Capabilities::parse(["noise", ""]), Capabilities::default());
    }

    #[test]
    fn what_is_seen_beyond_the_syscall_hooks_per_kernel() {
        let seen = |detail: &str| {
            Capabilities::parse([format!("process-telemetry: available ({detail})").as_str()])
                .beyond_syscalls()
        };
        assert_eq!(
            seen(
                "file open hook: fexit do_filp_open; opens: every open that reaches a file (BPF-LSM file_open: ...); io_uring UDP sends: BPF-LSM socket_sendmsg/socket_connect"
            ),
            "every open, io_uring sends"
        );
        assert_eq!(
            seen("file open hook: fexit do_filp_open; opens: through the open syscalls"),
            "io_uring opens (fexit); setups"
        );
        assert_eq!(
            seen("file open hook: syscall exit tracepoints (...)"),
            "io_uring setups only"
        );
        assert_eq!(Capabilities::default().beyond_syscalls(), "?");
    }

    #[test]
    fn host_row() {
        let row = Row::host("6.18.44", &Capabilities::parse(HOST_PROBE.lines()));
        assert_eq!(row.process, "PASS");
        assert_eq!(row.bpf_lsm, "unavailable");
        assert_eq!(row.backend, "tracepoint+SIGKILL");
        assert!(row.passed);
        let broken = Row::host("x", &Capabilities::default());
        assert_eq!(
            (broken.process, broken.bpf_lsm, broken.passed),
            ("FAIL", "not probed", false)
        );
    }

    #[test]
    fn guest_rows_need_probe_and_test() {
        let good = Run::of_lines(&[
            "RXSENTRY-PROBE process-telemetry: available (x)",
            "RXSENTRY-PROBE bpf-lsm: available (y)",
            "RXSENTRY-PROBE exec-allowlist-backend: lsm",
            "RXSENTRY-TEST process-telemetry PASS ok",
            "RXSENTRY-TEST bpf-lsm PASS ok",
            "RXSENTRY-VM-DONE 2 0",
        ]);
        let row = Row::guest("debian12-6.1", "6.1.0-56-amd64", &good, true);
        assert_eq!(
            (row.process, row.bpf_lsm, row.backend.as_str()),
            ("PASS", "available", "lsm")
        );
        assert_eq!(row.tests, "2 pass, 0 fail");
        assert_eq!(row.beyond_syscalls, "io_uring setups only");

        let bad = Run::of_lines(&[
            "RXSENTRY-PROBE process-telemetry: available (x)",
            "RXSENTRY-PROBE bpf-lsm: available (y)",
            "RXSENTRY-TEST process-telemetry FAIL no exec",
            "RXSENTRY-TEST bpf-lsm FAIL z",
        ]);
        let row = Row::guest("k", "r", &bad, false);
        assert_eq!(
            (row.process, row.bpf_lsm, row.backend.as_str()),
            ("FAIL", "FAILED TEST", "?")
        );
    }

    #[test]
    fn rendering_aligns_columns() {
        let rows = [
            Row::host("6.18", &Capabilities::parse(HOST_PROBE.lines())),
            Row {
                kernel: "debian12-6.1 6.1.0-56-amd64".into(),
                process: "PASS",
                bpf_lsm: "available",
                backend: "lsm".into(),
                beyond_syscalls: "every open, io_uring sends",
                tests: "4 pass, 0 fail".into(),
                passed: true,
            },
        ];
        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("kernel "));
        let col = lines[0].find("BPF-LSM").unwrap();
        assert_eq!(&lines[2][col..col + 11], "unavailable");
        assert_eq!(&lines[3][col..col + 9], "available");
        assert!(lines[3].ends_with("PASS"));
    }
}
