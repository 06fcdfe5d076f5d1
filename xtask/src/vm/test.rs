//! `cargo xtask vm-test`: builds each kernel's image, boots it in QEMU (TCG),
//! reads the serial console until the init's `RXSENTRY-VM-DONE` line (or a
//! timeout, or QEMU exiting, or a kernel panic), and prints the kernel ×
//! capability matrix, the host included. Fails on any problem.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use nix::sys::{prctl, signal::Signal};

use super::{
    console::{Ending, Run},
    image::{self, Image},
    matrix::{self, Capabilities, Row},
    select_kernels,
};
use crate::{
    build,
    cmd::{describe, target_dir},
    setup,
};

/// The in-guest tests every image must report as passed (the scripts in
/// vm-images/kiosk/usr/lib/rxsentry/vm-tests/NN-<name>.sh). One missing
/// fails the run: a test is never skipped.
pub const EXPECTED_TESTS: &[&str] = &[
    "mounts",
    "kiosk-apps",
    matrix::PROCESS_TEST,
    "file-telemetry",
    matrix::LSM_TEST,
    "allowlist-lsm",
    "isolation",
];
/// The whole guest's limit: boot, shell tests and the integration suites
/// (each of those also has its own limit in the guest). About 13 minutes
/// on an idle 2-core host under TCG (48 suite tests).
const DEFAULT_TIMEOUT_SECS: u64 = 1200;
/// After the DONE line, how long the guest may take to power off.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct Options {
    /// Only this kernel (repeatable; see KERNELS in xtask/src/vm/mod.rs).
    /// Default: every kernel.
    #[arg(long = "kernel", value_name = "NAME")]
    pub kernels: Vec<String>,
    /// Give up on a guest (boot + tests) after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Skip setup and build: use the binaries already in target/release.
    #[arg(long)]
    pub no_build: bool,
    /// Echo the whole serial console, not only the marker lines.
    #[arg(long)]
    pub verbose: bool,
    /// Extra kernel command line arguments, e.g. `lsm=lockdown,capability`
    /// to see the BPF-LSM test fail on a kernel booted without it.
    #[arg(long, value_name = "ARGS", default_value = "")]
    pub append: String,
    /// Skip the systemd kiosk image (its two boots).
    #[arg(long, conflicts_with = "systemd_only")]
    pub no_systemd: bool,
    /// Only the systemd kiosk image: no initramfs kernel is booted.
    #[arg(long)]
    pub systemd_only: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            kernels: Vec::new(),
            timeout: DEFAULT_TIMEOUT_SECS,
            no_build: false,
            verbose: false,
            append: String::new(),
            no_systemd: false,
            systemd_only: false,
        }
    }
}

/// The outcome of `vm-test`, for `cargo xtask test`'s summary.
#[derive(Default)]
pub struct Summary {
    pub passed: u64,
    pub failed: u64,
    pub problems: Vec<String>,
}

impl Summary {
    /// Adds another run's counts and problems.
    fn merge(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.problems.extend(other.problems);
    }

    /// Counts one boot's tests (none reported counts as a failure) and its
    /// problems, tagged with `label`.
    pub fn add(&mut self, label: &str, run: &Run, problems: &[String]) {
        self.passed += run.passed() as u64;
        self.failed += (run.failed() + usize::from(run.tests.is_empty())) as u64;
        self.problems
            .extend(problems.iter().map(|p| format!("{label}: {p}")));
    }
}

/// The last console lines of a failed boot, and where all of them are.
pub(super) fn print_tail(log: &Path, run: &Run) {
    println!(
        "last console lines (all of them in {}):\n  {}",
        log.display(),
        run.tail.iter().cloned().collect::<Vec<_>>().join("\n  ")
    );
}

pub fn vm_test(opts: &Options) -> Result<()> {
    if !opts.no_build {
        setup::setup()?;
        build::build(&build::Options { release: true })?;
    }
    let summary = run(opts)?;
    if !summary.problems.is_empty() {
        bail!("vm-test failed:\n  {}", summary.problems.join("\n  "));
    }
    Ok(())
}

/// Probes the host, then builds, boots and checks every selected kernel.
/// Errors are for what stops the run itself (no QEMU, no download).
pub fn run(opts: &Options) -> Result<Summary> {
    let kernels = if opts.systemd_only {
        Vec::new()
    } else {
        select_kernels(&opts.kernels)?
    };
    which::which("qemu-system-x86_64")
        .context("qemu-system-x86_64 not found: run `cargo xtask setup` (qemu-system-x86)")?;
    let start = Instant::now();
    let bin_dir = target_dir().join("release");

    println!("== vm-test: host probe");
    let host_caps = host_probe(&bin_dir)?;
    let host = Row::host(&crate::vm::host_release(), &host_caps);
    let mut summary = Summary::default();
    // The systemd image boots beside the initramfs kernels: each QEMU (TCG)
    // keeps one core busy, and the two together take the longer one's time
    // instead of the sum.
    let systemd = (!opts.no_systemd).then(|| {
        let (timeout, verbose) = (Duration::from_secs(opts.timeout), opts.verbose);
        std::thread::spawn(move || -> Result<Summary> {
            let mut summary = Summary::default();
            super::systemd_test::run(timeout, verbose, &mut summary)?;
            Ok(summary)
        })
    });
    if !host.passed {
        summary
            .problems
            .push("host: process telemetry unavailable".to_owned());
    }
    let mut rows = vec![host];
    let mut runs = Vec::new();
    let mut suite_names: Vec<String> = Vec::new();

    for kernel in kernels {
        let image_start = Instant::now();
        let image = image::build_image(kernel)?;
        let image_secs = image_start.elapsed().as_secs_f64();
        println!(
            "== vm-test {}: booting\n+ {}",
            kernel.name,
            image.command_line(&opts.append)
        );
        let timeout = Duration::from_secs(opts.timeout);
        let (run, ending, secs) = boot(&image, &opts.append, timeout, opts.verbose)?;
        // The shell tests and every test of the suites the image carries.
        let mut expected: Vec<String> = EXPECTED_TESTS.iter().map(|t| t.to_string()).collect();
        let suite_tests = super::suite::expected(&super::image_dir(kernel))?;
        expected.extend(suite_tests.iter().cloned());
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        let problems = run.problems(ending, &expected);
        let at = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}s"));
        println!(
            "{}: image built in {image_secs:.1}s; init after {}, tests done after {}, \
             QEMU gone after {secs:.1}s: {}",
            kernel.name,
            at(run.init_after),
            at(run.done_after),
            if problems.is_empty() { "PASS" } else { "FAIL" },
        );
        if !problems.is_empty() {
            print_tail(&super::image_dir(kernel).join("console.log"), &run);
        }
        summary.add(kernel.name, &run, &problems);
        rows.push(Row::guest(
            kernel.name,
            kernel.release(),
            &run,
            problems.is_empty(),
        ));
        for t in suite_tests {
            if !suite_names.contains(&t) {
                suite_names.push(t);
            }
        }
        runs.push((kernel.name, run));
    }

    if let Some(systemd) = systemd {
        let systemd = systemd
            .join()
            .map_err(|_| anyhow::anyhow!("the systemd image's thread panicked"))??;
        summary.merge(systemd);
    }
    println!("\n== kernel x capability matrix\n{}", matrix::render(&rows));
    let runs: Vec<(&str, &super::console::Run)> = runs.iter().map(|(k, r)| (*k, r)).collect();
    println!(
        "\n== integration tests x kernel (the host runs them all in `cargo xtask test`)\n{}",
        super::suite::render_matrix(&runs, &suite_names)
    );
    println!("vm-test: {:.0}s in all", start.elapsed().as_secs_f64());
    Ok(summary)
}

/// `rxsentry-probe` on this machine.
fn host_probe(bin_dir: &Path) -> Result<Capabilities> {
    let probe = bin_dir.join("rxsentry-probe");
    let mut cmd = Command::new(&probe);
    println!("+ {}", describe(&cmd));
    // Exit status 1 only means "not everything is available".
    let out = cmd.output().with_context(|| {
        format!(
            "cannot run {}: run `cargo xtask build --release`",
            probe.display()
        )
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    Ok(Capabilities::parse(text.lines()))
}

/// Boots `image` and reads its console until it powers off, hangs or times
/// out. The whole console goes to console.log next to the image.
fn boot(
    image: &Image,
    append: &str,
    timeout: Duration,
    verbose: bool,
) -> Result<(Run, Ending, f64)> {
    let args = super::qemu_args(&image.vmlinuz, &image.initramfs, append);
    let dir = super::image_dir(image.kernel);
    boot_qemu(args, &dir, image.kernel.name, timeout, verbose)
}

/// Runs QEMU with `args`, reading its console as [`boot`] describes;
/// console.log and qemu.stderr go to `dir`, live lines are tagged `label`.
pub(super) fn boot_qemu(
    args: Vec<std::ffi::OsString>,
    dir: &Path,
    label: &str,
    timeout: Duration,
    verbose: bool,
) -> Result<(Run, Ending, f64)> {
    let log_path = dir.join("console.log");
    let mut log =
        File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let err_path = dir.join("qemu.stderr");
    let stderr =
        File::create(&err_path).with_context(|| format!("cannot create {}", err_path.display()))?;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(args)
        // -nographic would otherwise take over a terminal on stdin.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    // SAFETY: only a prctl syscall between fork and exec: QEMU dies with us.
    unsafe {
        cmd.pre_exec(|| prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from));
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{}`", describe(&cmd)))?;
    let lines = console_lines(&mut child)?;

    let start = Instant::now();
    let mut run = Run::default();
    let mut done_at = None;
    let ending = loop {
        let limit = match done_at {
            Some(at) => at + POWEROFF_GRACE,
            None => start + timeout,
        };
        let now = Instant::now();
        if now >= limit {
            let _ = child.kill();
            break if done_at.is_some() {
                Ending::HungAfterDone
            } else {
                Ending::TimedOut(timeout)
            };
        }
        match lines.recv_timeout(limit - now) {
            Ok(line) => {
                let secs = start.elapsed().as_secs_f64();
                writeln!(log, "{line}")?;
                if run.feed(&line, secs) || verbose {
                    println!("  [{label} {secs:6.1}s] {line}");
                }
                if run.is_done() && done_at.is_none() {
                    done_at = Some(Instant::now());
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break Ending::Exited,
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let status = child.wait().context("waiting for QEMU")?;
    if ending == Ending::Exited && !run.is_done() {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        println!("QEMU exited ({status}); its stderr: {}", err.trim());
    }
    Ok((run, ending, secs))
}

/// A thread reading QEMU's stdout line by line (the channel closes at EOF).
fn console_lines(child: &mut Child) -> Result<mpsc::Receiver<String>> {
    let stdout = child.stdout.take().context("QEMU stdout")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for raw in BufReader::new(stdout).split(b'\n') {
            let Ok(raw) = raw else { break };
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches('\r')
                .to_owned();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// The test names of the `NN-<name>.sh` scripts in `dir`, sorted.
#[cfg(test)]
pub(super) fn script_tests(dir: &Path) -> Vec<String> {
    let mut scripts: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() > 3 && n.as_bytes()[..2].iter().all(u8::is_ascii_digit))
        .filter_map(|n| Some(n[3..].strip_suffix(".sh")?.to_owned()))
        .collect();
    scripts.sort();
    scripts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::workspace_root;

    /// EXPECTED_TESTS and the image's test scripts name the same tests.
    #[test]
    fn expected_tests_match_the_scripts() {
        let dir = workspace_root().join("vm-images/kiosk/usr/lib/rxsentry/vm-tests");
        let scripts = script_tests(&dir);
        let mut expected: Vec<String> = EXPECTED_TESTS.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(scripts, expected);
    }
}
