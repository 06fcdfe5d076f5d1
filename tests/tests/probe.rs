//! `rxsentry-probe` on the kernel the tests run on, against what that
//! kernel offers (tests/src/kernel.rs). shared/PLATFORM.md: the host kernel
//! lists `bpf` among its LSMs but refuses BPF-LSM programs (BPF_PROG_LOAD
//! fails with EPERM before the verifier runs), so the probe must report
//! BPF-LSM unavailable there, and with it the tracepoint + SIGKILL
//! exec-allowlist backend; in the Debian 6.1 guest of `cargo xtask vm-test`
//! the same test wants BPF-LSM available and the `lsm` backend.

use std::process::Command;

use tests::{HeldOpenHook, bin_path, kernel::kernel, sensor_programs_after_exit};

/// Runs the probe: (exit status 0?, stdout).
fn probe(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin_path("rxsentry-probe"))
        .args(args)
        .output()
        .expect("run rxsentry-probe (`cargo xtask build --release`)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn bpf_lsm_is_reported_as_this_kernel_offers_it() {
    let (ok, out) = probe(&["--lsm"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one line per probed capability: {out}");
    // tests/src/kernel.rs: a tiny LSM program loaded by raw bpf(2), and
    // `bpf` among the active LSMs.
    match &kernel().lsm {
        Ok(()) => {
            assert!(ok, "--lsm exits 0 when BPF-LSM is available: {out}");
            assert!(lines[0].starts_with("bpf-lsm: available"), "{out}");
        }
        Err(why) => {
            assert!(!ok, "--lsm must exit 1 when BPF-LSM is unavailable: {out}");
            assert!(
                lines[0].starts_with("bpf-lsm: unavailable: "),
                "this kernel refuses BPF-LSM ({why}), yet: {out}"
            );
            assert!(
                lines[0].contains("exec_verdict_lsm"),
                "the reason names the sensor's LSM program: {out}"
            );
        }
    }
}

#[tokio::test]
async fn full_probe_picks_this_kernels_backend_and_leaves_nothing_loaded() -> anyhow::Result<()> {
    let (_, out) = probe(&[]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("process-telemetry: available (exec of pid ")),
        "{out}"
    );
    let lsm = if kernel().lsm.is_ok() {
        "bpf-lsm: available"
    } else {
        "bpf-lsm: unavailable: "
    };
    assert!(out.lines().any(|l| l.starts_with(lsm)), "{out}");
    assert!(
        out.lines().any(|l| l == kernel().probe_backend_line()),
        "{out}"
    );
    // io_uring's operations pass no syscall hook here: the probe says
    // whether the kernel lets processes use it (kernel.io_uring_disabled).
    // (Before Linux 6.6 there is no such sysctl: the probe says so.)
    let io_uring = match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(value) => format!("kernel.io_uring_disabled = {}", value.trim()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "no kernel.io_uring_disabled here".to_owned()
        }
        Err(e) => return Err(e.into()),
    };
    assert!(
        out.lines()
            .any(|l| l.starts_with("io-uring: ") && l.contains(&io_uring)),
        "{out}"
    );
    // What is seen beyond the syscall hooks, per kernel: on BPF-LSM
    // kernels, every open that reaches a file and io_uring's UDP sends.
    let coverage: &[&str] = if kernel().lsm.is_ok() {
        &[
            "opens: every open that reaches a file (BPF-LSM file_open",
            "io_uring UDP sends: BPF-LSM socket_sendmsg/socket_connect",
        ]
    } else {
        &[
            "opens: through the open syscalls and open_by_handle_at; io_uring setups reported",
            "io_uring UDP sends: not seen, setups reported (no BPF-LSM on this kernel)",
        ]
    };
    for said in coverage {
        assert!(out.contains(said), "want {said:?}: {out}");
    }
    assert_eq!(sensor_programs_after_exit().await?, Vec::<String>::new());
    Ok(())
}

/// `--hold-open-hook` keeps its counting program on the open exit until
/// told to stop, counts every open made meanwhile, and unloads it.
#[tokio::test]
async fn held_open_hook_counts_every_open_and_goes_away() -> anyhow::Result<()> {
    const OPENS: u64 = 500;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("f");
    std::fs::write(&file, b"x")?;
    let hook = HeldOpenHook::start(&bin_path("rxsentry-probe"))?;
    assert!(
        hook.attached()
            .starts_with("open-hook: attached (hook_floor_open_exit on syscalls/sys_exit_openat)"),
        "{}",
        hook.attached()
    );
    for _ in 0..OPENS {
        std::fs::File::open(&file)?;
    }
    // The leak check sees a program of ours while it is loaded.
    assert_eq!(
        tests::sensor_programs_loaded()?,
        ["hook_floor_open"],
        "the held program, as the kernel names it"
    );
    // An error unless the probe prints its count and exits 0.
    let runs = hook.stop()?;
    assert!(runs >= OPENS, "{OPENS} opens, the hook counted {runs}");
    assert_eq!(sensor_programs_after_exit().await?, Vec::<String>::new());
    Ok(())
}
