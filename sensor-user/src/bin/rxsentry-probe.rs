//! `rxsentry-probe`: which kernel capabilities the sensor can use on this
//! machine, found by loading tiny programs (never by reading config files:
//! a kernel can list `bpf` among its LSMs and still refuse BPF-LSM programs).
//!
//! One line per capability, for people and for `cargo xtask vm-test`:
//!
//! ```text
//! process-telemetry: available (exec of pid 1234 seen through the raw tracepoints)
//! bpf-lsm: unavailable: loading lsm_probe_bprm: ...
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
    Btf, Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuArray},
    programs::{Lsm, Program, TracePoint},
};
use clap::Parser;
use sensor_user::{
    events::{self, KernelEvent},
    hooks::{HookConfig, ProcessHooks},
};

/// The same eBPF object the sensor embeds (built by this crate's build.rs).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor-ebpf"));

/// sensor-ebpf/src/lsm_probe.rs: allows everything on `bprm_check_security`.
const LSM_PROBE_PROGRAM: &str = "lsm_probe_bprm";
const LSM_PROBE_HOOK: &str = "bprm_check_security";
/// Its run counter (slot 0).
const LSM_PROBE_HITS: &str = "LSM_PROBE_HITS";
/// sensor-ebpf/src/hook_floor.rs: counts its runs on the open exit.
const HOOK_FLOOR_PROGRAM: &str = "hook_floor_open_exit";
const HOOK_FLOOR_RUNS: &str = "HOOK_FLOOR_RUNS";
/// The tracepoint the sensor decides `openat` on.
const OPEN_EXIT_TRACEPOINT: (&str, &str) = ("syscalls", "sys_exit_openat");
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
}

/// The exec-allowlist backend the sensor would pick (ARCHITECTURE.md:
/// the LSM hook when it works, else a tracepoint at exec + SIGKILL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExecAllowlistBackend {
    Lsm,
    TracepointSigkill,
}

impl ExecAllowlistBackend {
    fn choose(bpf_lsm_available: bool) -> Self {
        if bpf_lsm_available {
            Self::Lsm
        } else {
            Self::TracepointSigkill
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Lsm => "lsm",
            Self::TracepointSigkill => "tracepoint+SIGKILL",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
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
        let lsm_ok = report("bpf-lsm", probe_lsm());
        all_ok &= lsm_ok;
        if both {
            let backend = ExecAllowlistBackend::choose(lsm_ok);
            println!("exec-allowlist-backend: {}", backend.name());
        }
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

fn require_object() -> anyhow::Result<()> {
    if EBPF_OBJECT.is_empty() {
        bail!("built without the eBPF object (bpf-linker missing at build time)");
    }
    Ok(())
}

/// The embedded object, loaded against this kernel's BTF (no program loaded yet).
fn load_object(btf: &Btf) -> anyhow::Result<Ebpf> {
    require_object()?;
    EbpfLoader::new()
        .btf(Some(btf))
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")
}

/// The object's program `name` as the program type `T`.
fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut Program>,
{
    ebpf.program_mut(name)
        .with_context(|| format!("the eBPF object has no {name}"))?
        .try_into()
        .map_err(|_| anyhow::anyhow!("{name} is not a {}", std::any::type_name::<T>()))
}

/// The object's map `name`, taken out as the map type `T`.
fn take_map<T: TryFrom<Map>>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T> {
    ebpf.take_map(name)
        .with_context(|| format!("the eBPF object has no {name}"))?
        .try_into()
        .map_err(|_| anyhow::anyhow!("{name} is not a {}", std::any::type_name::<T>()))
}

/// Loads and attaches the allow-all LSM program, runs one exec, and checks
/// that the exec still ran AND the program ran for it: a kernel without
/// `bpf` among its active LSMs attaches the program but never calls it.
fn probe_lsm() -> anyhow::Result<String> {
    let btf = Btf::from_sys_fs().context("reading the kernel BTF")?;
    let mut ebpf = load_object(&btf)?;
    let program: &mut Lsm = program_mut(&mut ebpf, LSM_PROBE_PROGRAM)?;
    program
        .load(LSM_PROBE_HOOK, &btf)
        .with_context(|| format!("loading {LSM_PROBE_PROGRAM}"))?;
    program
        .attach()
        .with_context(|| format!("attaching {LSM_PROBE_PROGRAM} to {LSM_PROBE_HOOK}"))?;
    let hits: Array<MapData, u64> = take_map(&mut ebpf, LSM_PROBE_HITS)?;
    let pid = run_child().context("an exec under the attached LSM program")?;
    let runs = hits.get(&0, 0).context("reading the probe's run counter")?;
    if runs == 0 {
        bail!(
            "{LSM_PROBE_PROGRAM} attached to {LSM_PROBE_HOOK} but never ran for the exec of \
             pid {pid}: bpf is not an active LSM (see /sys/kernel/security/lsm and the lsm= \
             boot parameter)"
        );
    }
    Ok(format!(
        "{LSM_PROBE_PROGRAM} attached to {LSM_PROBE_HOOK} ran {runs} time(s); pid {pid} still executed"
    ))
    // `ebpf` drops here: the program is detached and unloaded.
}

/// Holds [`HOOK_FLOOR_PROGRAM`] on the open exit until stdin says stop.
fn hold_open_hook() -> anyhow::Result<()> {
    let btf = Btf::from_sys_fs().context("reading the kernel BTF")?;
    let mut ebpf = load_object(&btf)?;
    let program: &mut TracePoint = program_mut(&mut ebpf, HOOK_FLOOR_PROGRAM)?;
    program
        .load()
        .with_context(|| format!("loading {HOOK_FLOOR_PROGRAM}"))?;
    let (category, name) = OPEN_EXIT_TRACEPOINT;
    program
        .attach(category, name)
        .with_context(|| format!("attaching {HOOK_FLOOR_PROGRAM} to {category}/{name}"))?;
    let runs: PerCpuArray<MapData, u64> = take_map(&mut ebpf, HOOK_FLOOR_RUNS)?;
    println!(
        "open-hook: attached ({HOOK_FLOOR_PROGRAM} on {category}/{name}); a line on stdin detaches it"
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
    // `ebpf` drops here: the program is detached and unloaded.
}

/// Attaches the sensor's process hooks and waits for the exec of a child.
fn probe_process() -> anyhow::Result<String> {
    require_object()?;
    let mut hooks = ProcessHooks::load_and_attach(&HookConfig {
        process_ringbuf_bytes: 1 << 20,
        file_ringbuf_bytes: 1 << 20,
        // Proves the file programs pass this kernel's verifier too.
        files: true,
        // The open programs this kernel would run (typed where it can).
        typed_file_reads: true,
        fexit_file_opens: true,
        net_ringbuf_bytes: 1 << 20,
        // Disabled: the probe asks about process telemetry only.
        network: Default::default(),
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
                    "exec of pid {pid} ({}) seen through the raw tracepoints; file programs loaded with {}; file open hook: {}",
                    exec.filename,
                    hooks.file_reads(),
                    hooks.file_open_hook()
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
    fn backend_follows_bpf_lsm() {
        assert_eq!(ExecAllowlistBackend::choose(true).name(), "lsm");
        assert_eq!(
            ExecAllowlistBackend::choose(false).name(),
            "tracepoint+SIGKILL"
        );
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
