//! What the sensor SHOULD pick on the kernel the tests run on, worked out
//! here without the sensor's own code (`sensor-user/src/hooks/backend.rs`):
//! a tiny LSM and a tiny fexit program loaded through the raw `bpf(2)`
//! syscall, the active LSM list, the kernel's BTF and its version. The
//! tests compare the sensor's choice with this, so the same test proves the
//! tracepoint paths on the host and the LSM, fexit and netlink paths in the
//! Debian 6.1 guest, and a broken backend choice fails on the kernel where
//! it is wrong.

use std::{ffi::CString, sync::OnceLock};

use aya::Btf;
use aya_obj::btf::BtfKind;

/// What this kernel offers the sensor.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `Ok` when an LSM program on `bprm_check_security` loads AND `bpf` is
    /// an active LSM (both are needed for it to run); else why not.
    pub lsm: Result<(), String>,
    /// `Ok` when an fexit program on `do_filp_open` loads (trampolines).
    pub fexit: Result<(), String>,
    /// The kernel's BTF has the `bpf_rdonly_cast` kfunc (Linux 6.2+).
    pub rdonly_cast: bool,
    /// Linux 6.6+: TC programs attach through tcx links, else through
    /// clsact filters over netlink.
    pub tcx: bool,
}

/// This kernel, probed once per test binary.
pub fn kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(Kernel::probe)
}

impl Kernel {
    fn probe() -> Self {
        let btf = Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"));
        let func_id = |name: &str| -> Result<u32, String> {
            let btf = btf.as_ref().map_err(Clone::clone)?;
            btf.id_by_type_name_kind(name, BtfKind::Func)
                .map_err(|e| format!("{name}: {e}"))
        };
        let lsm = func_id("bpf_lsm_bprm_check_security")
            .and_then(|id| load_trivial(PROG_TYPE_LSM, ATTACH_LSM_MAC, id))
            .and_then(|()| bpf_is_an_active_lsm());
        let fexit = func_id("do_filp_open")
            .and_then(|id| load_trivial(PROG_TYPE_TRACING, ATTACH_TRACE_FEXIT, id));
        let rdonly_cast = func_id("bpf_rdonly_cast").is_ok();
        let tcx = aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
        Self {
            lsm,
            fexit,
            rdonly_cast,
            tcx,
        }
    }

    /// The exec allowlist's backend as policy events name it.
    pub fn allowlist_backend(&self) -> &'static str {
        if self.lsm.is_ok() {
            "lsm"
        } else {
            "tracepoint+sigkill"
        }
    }

    /// The start of the sensor's `exec allowlist backend: ...` log line.
    pub fn allowlist_log(&self) -> &'static str {
        if self.lsm.is_ok() {
            "exec allowlist backend: lsm"
        } else {
            "exec allowlist backend: tracepoint+sigkill (BPF-LSM unavailable: "
        }
    }

    /// `rxsentry-probe`'s line for the allowlist backend.
    pub fn probe_backend_line(&self) -> &'static str {
        if self.lsm.is_ok() {
            "exec-allowlist-backend: lsm"
        } else {
            "exec-allowlist-backend: tracepoint+SIGKILL"
        }
    }

    /// Whether opens are decided at `fexit/do_filp_open` with the config's
    /// `kernel.fexit_file_opens` (default on).
    pub fn opens_by_fexit(&self, fexit_in_config: bool) -> bool {
        fexit_in_config && self.fexit.is_ok()
    }

    /// The start of the sensor's `file open hook: ...` log line.
    pub fn open_hook_log(&self, fexit_in_config: bool) -> &'static str {
        if self.opens_by_fexit(fexit_in_config) {
            "file open hook: fexit do_filp_open"
        } else if fexit_in_config {
            "file open hook: syscall exit tracepoints (fexit unavailable: load: "
        } else {
            "file open hook: syscall exit tracepoints (fexit unavailable: off in the config"
        }
    }

    /// The sensor's `file field reads: ...` log line, given the config's
    /// `kernel.typed_file_reads` and `kernel.fexit_file_opens`.
    pub fn file_reads_log(&self, typed_in_config: bool, fexit_in_config: bool) -> &'static str {
        if self.opens_by_fexit(fexit_in_config) {
            "file field reads: typed loads (fexit arguments)"
        } else if typed_in_config && self.rdonly_cast {
            "file field reads: typed loads (bpf_rdonly_cast)"
        } else {
            "file field reads: helper reads"
        }
    }

    /// How isolation's TC programs attach in `auto` mode (metrics' value).
    pub fn isolation_tc(&self) -> &'static str {
        if self.tcx { "tcx" } else { "netlink" }
    }
}

const PROG_TYPE_TRACING: u32 = 26;
const PROG_TYPE_LSM: u32 = 29;
const ATTACH_TRACE_FEXIT: u32 = 25;
const ATTACH_LSM_MAC: u32 = 27;
const BPF_PROG_LOAD: libc::c_long = 5;

/// The head of `union bpf_attr` for BPF_PROG_LOAD, up to `attach_prog_fd`
/// (the kernel accepts a shorter attr; the rest counts as zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_prog_fd: u32,
}

/// Loads `r0 = 0; exit` as a program of `prog_type` for the vmlinux
/// function `btf_id`, and closes it at once: whether the kernel allows it.
fn load_trivial(prog_type: u32, attach_type: u32, btf_id: u32) -> Result<(), String> {
    // mov64 r0, 0 ; exit
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = CString::from(c"GPL");
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: attach_type,
        attach_btf_id: btf_id,
        ..Default::default()
    };
    // SAFETY: `attr` and the buffers it points to outlive the call; the
    // size passed is the struct's.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(format!("load: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a descriptor the kernel just returned to us, closed once.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// `bpf` in /sys/kernel/security/lsm: a loaded LSM program only runs then.
fn bpf_is_an_active_lsm() -> Result<(), String> {
    let path = "/sys/kernel/security/lsm";
    let list = std::fs::read_to_string(path)
        .map_err(|e| format!("{path}: {e} (mount securityfs to tell)"))?;
    if list.trim().split(',').any(|l| l == "bpf") {
        Ok(())
    } else {
        Err(format!("bpf is not an active LSM: {}", list.trim()))
    }
}

/// How an exec ended: it ran (and exited or was killed), or the kernel
/// refused it (`execve` failed, EPERM under BPF-LSM).
#[derive(Debug)]
pub enum Exec {
    Ran(std::process::ExitStatus),
    Refused(std::io::Error),
}

impl Exec {
    /// `Command::status()`'s result; an error other than a refusal is one.
    pub fn of(result: std::io::Result<std::process::ExitStatus>) -> std::io::Result<Self> {
        match result {
            Ok(status) => Ok(Self::Ran(status)),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(Self::Refused(e)),
            Err(e) => Err(e),
        }
    }

    /// Stopped by the allowlist the way this kernel's backend stops it:
    /// refused with EPERM under `lsm`, SIGKILLed under `tracepoint+sigkill`.
    /// The other way fails: a wrong backend is not a block.
    pub fn blocked(&self) -> bool {
        use std::os::unix::process::ExitStatusExt as _;
        match self {
            Self::Ran(status) => kernel().lsm.is_err() && status.signal() == Some(9),
            Self::Refused(_) => kernel().lsm.is_ok(),
        }
    }

    /// Ran and exited 0.
    pub fn success(&self) -> bool {
        matches!(self, Self::Ran(s) if s.success())
    }
}

impl std::fmt::Display for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ran(status) => write!(f, "ran: {status}"),
            Self::Refused(e) => write!(f, "refused: {e}"),
        }
    }
}

/// A shell (or a launcher) whose own exec of a blocked program was stopped,
/// as this kernel's backend stops it: the shell itself SIGKILLed with the
/// new image under `tracepoint+sigkill`; under `lsm` its execve fails and
/// it exits non-zero by itself (no signal).
pub fn launcher_blocked(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt as _;
    if kernel().lsm.is_ok() {
        status.signal().is_none() && !status.success()
    } else {
        status.signal() == Some(9)
    }
}
