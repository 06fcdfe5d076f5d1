//! `rxsentry-probe`: which kernel capabilities the sensor can use on this
//! machine, found by loading its programs (never by reading config files:
//! a kernel can list `bpf` among its LSMs and still refuse BPF-LSM programs).
//! The backend it reports is chosen by the sensor's own selection code
//! (`hooks::attach_exec_verdict`), not predicted.
//!
//! One line per capability, for people and for `cargo xtask vm-test`:
//!
//! ```text
//! process-telemetry: available (exec of pid 1234 seen through the raw tracepoints)
//! bpf-lsm: unavailable: exec_verdict_lsm: load: ...
//! exec-allowlist-backend: tracepoint+SIGKILL
//! ```
//!
//! Exit status 0 when every probed capability is available, 1 otherwise
//! (`--lsm` alone: 0 = BPF-LSM usable). Needs root, like the sensor.
//!
//! `--hold-open-hook` is a measuring aid, not a probe: it keeps a program
//! that only counts its runs on the open exit tracepoint until a line (or
//! EOF) arrives on stdin, so a workload can be timed under the hook alone.
//! The difference to no hook is what this kernel charges for the hook
//! itself, a floor under the sensor's own file programs.

use std::{
    io::BufRead as _,
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    Btf, EbpfLoader,
    maps::{MapData, PerCpuArray},
};
use clap::Parser;
use sensor_common::names;
use sensor_user::{
    events::{self, KernelEvent},
    hooks::{AllowlistBackend, HookConfig, ProcessHooks, attach_exec_verdict},
    object::SensorObject,
};

/// How long the process probe waits for its own exec to come through.
const EXEC_WAIT: Duration = Duration::from_secs(10);
/// Longest error detail printed (verifier logs can be long).
const MAX_DETAIL: usize = 400;

#[derive(Debug, Parser)]
#[command(
    name = "rxsentry-probe",
    version,
    about = "Probe which kernel capabilities rxsentry can use here"
)]
struct Args {
    /// Probe BPF-LSM only: load and attach a do-nothing `bprm_check_security` program.
    #[arg(long)]
    lsm: bool,
    /// Probe process telemetry only: attach the sensor's raw tracepoints and
    /// see one exec come through the ring buffer.
    #[arg(long)]
    process: bool,
    /// Attach only a program that counts its runs on the open exit
    /// tracepoint, print one line, hold it until a line or EOF on stdin,
    /// then print how often it ran (for timing a workload under the hook).
    #[arg(long, conflicts_with_all = ["lsm", "process"])]
    hold_open_hook: bool,
    /// Print the name of every program in the sensor's eBPF object, one a
    /// line, and exit (what a leak check must find unloaded).
    #[arg(long, conflicts_with_all = ["lsm", "process", "hold_open_hook"])]
    programs: bool,
}

/// The backend's name in the probe's output.
fn backend_name(backend: &AllowlistBackend) -> &'static str {
    match backend {
        AllowlistBackend::Lsm => "lsm",
        AllowlistBackend::TracepointSigkill { .. } => "tracepoint+SIGKILL",
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.programs {
        return match SensorObject::load(&mut EbpfLoader::new()) {
            Ok(object) => {
                object.program_names().for_each(|name| println!("{name}"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rxsentry-probe: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.hold_open_hook {
        return match hold_open_hook() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("open-hook: failed: {}", one_line(&format!("{e:#}")));
                ExitCode::FAILURE
            }
        };
    }
    let both = !args.lsm && !args.process;
    let mut all_ok = true;
    if args.process || both {
        all_ok &= report("process-telemetry", probe_process());
    }
    if args.lsm || both {
        let backend = choose_backend();
        all_ok &= report("bpf-lsm", lsm_result(&backend));
        if both && let Ok(backend) = &backend {
            println!("exec-allowlist-backend: {}", backend_name(backend));
        }
    }
    if both {
        // Not a capability (never fails the probe): whether io_uring, whose
        // operations no syscall hook sees, is open to processes here.
        println!("io-uring: {}", sensor_user::hooks::io_uring_state());
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints `name: available (detail)` or `name: unavailable: error`.
fn report(name: &str, result: anyhow::Result<String>) -> bool {
    match result {
        Ok(detail) => {
            println!("{name}: available ({detail})");
            true
        }
        Err(e) => {
            println!("{name}: unavailable: {}", one_line(&format!("{e:#}")));
            false
        }
    }
}

/// Squeezes a (possibly multi-line) error into one bounded line.
fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match joined.char_indices().nth(MAX_DETAIL) {
        Some((cut, _)) => format!("{}...", &joined[..cut]),
        None => joined,
    }
}

/// The embedded object, loaded against this kernel's BTF (no program loaded yet).
fn load_object(btf: &Btf) -> anyhow::Result<SensorObject> {
    Ok(SensorObject::load(EbpfLoader::new().btf(Some(btf)))?)
}

/// Runs the sensor's own choice of the exec allowlist backend (BPF-LSM,
/// proven by seeing it run for an exec, else the tracepoint), then
/// unloads what it attached.
fn choose_backend() -> anyhow::Result<AllowlistBackend> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"));
    let mut object = match &btf {
        Ok(btf) => load_object(btf)?,
        Err(_) => SensorObject::load(&mut EbpfLoader::new())?,
    };
    let (backend, _link) = attach_exec_verdict(&mut object, &btf)?;
    Ok(backend)
    // `_link` and `object` drop here: the program is detached and unloaded.
}

/// The `bpf-lsm` line: available when the sensor chose BPF-LSM.
fn lsm_result(backend: &anyhow::Result<AllowlistBackend>) -> anyhow::Result<String> {
    match backend {
        Ok(AllowlistBackend::Lsm) => Ok(format!(
            "{} attached to bprm_check_security and seen running for an exec",
            names::PROG_EXEC_VERDICT_LSM
        )),
        Ok(AllowlistBackend::TracepointSigkill { lsm_unavailable }) => {
            bail!("{}: {lsm_unavailable}", names::PROG_EXEC_VERDICT_LSM)
        }
        Err(e) => bail!("{e:#}"),
    }
}

/// Holds the hook-floor program on the open exit until stdin says stop.
fn hold_open_hook() -> anyhow::Result<()> {
    let btf = Btf::from_sys_fs().context("reading the kernel BTF")?;
    let mut object = load_object(&btf)?;
    let (program, category, tracepoint) = names::HOOK_FLOOR;
    object.attach_tracepoint(program, category, tracepoint)?;
    let runs: PerCpuArray<MapData, u64> = object.take_map(names::HOOK_FLOOR_RUNS)?;
    println!(
        "open-hook: attached ({program} on {category}/{tracepoint}); a line on stdin detaches it"
    );
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading stdin")?;
    let total: u64 = runs
        .get(&0, 0)
        .context("reading the run counters")?
        .iter()
        .sum();
    println!("open-hook: ran {total} time(s)");
    Ok(())
    // `object` drops here: the program is detached and unloaded.
}

/// Attaches the sensor's process hooks and waits for the exec of a child.
fn probe_process() -> anyhow::Result<String> {
    let mut hooks = ProcessHooks::load_and_attach(&HookConfig {
        process_ringbuf_bytes: 1 << 20,
        file_ringbuf_bytes: 1 << 20,
        // Proves the file programs pass this kernel's verifier too.
        files: true,
        // The open programs this kernel would run (typed where it can).
        typed_file_reads: true,
        fexit_file_opens: true,
        lsm_file_opens: true,
        net_ringbuf_bytes: 1 << 20,
        // On, so the network programs (io_uring's BPF-LSM ones included)
        // prove they pass this kernel's verifier.
        network: sensor_user::hooks::net::NetHookConfig {
            enabled: true,
            ..Default::default()
        },
        identity_max_entries: sensor_common::file::WATCHED_INODE_ENTRIES,
        // Its own maps: never a pinned policy's.
        allowlist_pin_dir: None,
        verdict_only: false,
        // Proves the self-protection programs load and attach here (the
        // write guard is never armed by the probe).
        tamper_calls: true,
        write_guard: true,
    })
    .context("attaching the process hooks")?;
    let mut ring = hooks.take_process_ring()?;
    let pid = run_child()?;
    let deadline = Instant::now() + EXEC_WAIT;
    while Instant::now() < deadline {
        while let Some(record) = ring.next() {
            if let Ok(KernelEvent::Exec(exec)) = events::decode(&record)
                && exec.task.tgid == pid
            {
                return Ok(format!(
                    "exec of pid {pid} ({}) seen through the raw tracepoints; file programs loaded with {}; file open hook: {}; write guard: {}; {}",
                    exec.filename,
                    hooks.file_reads(),
                    hooks.file_open_hook(),
                    match hooks.write_guard() {
                        Ok(()) => "BPF-LSM programs attached",
                        Err(why) => why,
                    },
                    hooks.coverage(),
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the exec of pid {pid} did not reach the ring buffer within {EXEC_WAIT:?}")
}

/// Runs `/bin/sh -c 'exit 0'` and returns its pid once it exited 0.
fn run_child() -> anyhow::Result<u32> {
    let mut child = Command::new("/bin/sh")
        .args(["-c", "exit 0"])
        .spawn()
        .context("cannot start /bin/sh")?;
    let pid = child.id();
    let status = child.wait().context("waiting for /bin/sh")?;
    if !status.success() {
        bail!("/bin/sh -c 'exit 0' failed: {status}");
    }
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names() {
        assert_eq!(backend_name(&AllowlistBackend::Lsm), "lsm");
        let fallback = AllowlistBackend::TracepointSigkill {
            lsm_unavailable: "load: EPERM".into(),
        };
        assert_eq!(backend_name(&fallback), "tracepoint+SIGKILL");
        let line = lsm_result(&Ok(fallback)).expect_err("unavailable");
        assert_eq!(line.to_string(), "exec_verdict_lsm: load: EPERM");
    }

    #[test]
    fn details_fit_on_one_bounded_line() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
        let long = "x ".repeat(MAX_DETAIL);
        let line = one_line(&long);
        assert!(line.ends_with("...") && line.len() == MAX_DETAIL + 3);
        assert!(!line.contains('\n'));
    }
}
