//! What an attacker with root on the kiosk does to the sensor itself,
//! each call made from a child process of its own (so the event it causes
//! names that process, not the test): `bpf()` on the sensor's objects,
//! ptrace and the memory of the sensor process.

use std::ffi::CString;

use anyhow::Context as _;
use nix::{
    sys::wait::{WaitStatus, waitpid},
    unistd::{ForkResult, fork},
};
pub use sensor_common::bpf_cmd;

/// The outcome of one call made in a child: the child's pid and the
/// call's errno (0 when it succeeded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildCall {
    pub pid: u32,
    pub errno: i32,
}

/// Runs `call` in a forked child, which exits with the call's errno (0 on
/// success). `call` must make raw syscalls only: a forked child of a
/// threaded process may not allocate.
fn in_child(call: impl FnOnce() -> i64) -> anyhow::Result<ChildCall> {
    // SAFETY: the child runs `call` (raw syscalls, no allocation: prepared
    // by the caller) and `_exit`s; it never returns into the test.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let errno = if call() < 0 {
                std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(255)
            } else {
                0
            };
            // SAFETY: ends the child without running the parent's atexit.
            unsafe { libc::_exit(errno & 0xff) }
        }
        ForkResult::Parent { child } => match waitpid(child, None).context("waitpid")? {
            WaitStatus::Exited(pid, code) => Ok(ChildCall {
                pid: pid.as_raw() as u32,
                errno: code,
            }),
            other => anyhow::bail!("the calling child ended with {other:?}"),
        },
    }
}

fn bpf(cmd: u32, attr: &[u64; 4]) -> i64 {
    // SAFETY: `attr` is a zeroed bpf_attr prefix of the size passed.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr.as_ptr(),
            std::mem::size_of_val(attr),
        )
    }
}

/// `bpf(BPF_OBJ_GET)` of `path`, from directory `cwd` (so a relative
/// `path` is resolved from there).
pub fn obj_get(cwd: &std::path::Path, path: &str) -> anyhow::Result<ChildCall> {
    let cwd = CString::new(cwd.as_os_str().as_encoded_bytes())?;
    let path = CString::new(path)?;
    let attr = [path.as_ptr() as u64, 0, 0, 0];
    in_child(|| {
        // SAFETY: a NUL-terminated path prepared before the fork.
        if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
            return -1;
        }
        bpf(bpf_cmd::OBJ_GET, &attr)
    })
}

/// `bpf(cmd)` for one of the `*_GET_FD_BY_ID` commands.
pub fn get_fd_by_id(cmd: u32, id: u32) -> anyhow::Result<ChildCall> {
    let attr = [u64::from(id), 0, 0, 0];
    in_child(|| bpf(cmd, &attr))
}

/// `ptrace(PTRACE_SEIZE, pid)`: the tracee does not stop, and the child's
/// exit detaches it again.
pub fn ptrace_seize(pid: u32) -> anyhow::Result<ChildCall> {
    // SAFETY: a ptrace request without pointers.
    in_child(|| unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid as libc::pid_t, 0usize, 0usize) })
}

/// `process_vm_writev(pid)` of one byte to address 0 of `pid`, which is
/// never mapped: a call allowed to reach the target's memory fails with
/// EFAULT and changes nothing; one refused access fails with EPERM.
/// (A write of zero bytes would not even look at the target.)
pub fn vm_write_to_page_zero(pid: u32) -> anyhow::Result<ChildCall> {
    let byte = [0u8; 1];
    let local = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let remote = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 1,
    };
    // SAFETY: the local vector is a live one-byte array; the remote one
    // names the target's page 0, which the kernel checks, not us.
    in_child(|| unsafe {
        libc::process_vm_writev(pid as libc::pid_t, &local, 1, &remote, 1, 0) as i64
    })
}

/// `bpf(BPF_LINK_DETACH)` of the link pinned at `pin` (what `bpftool link
/// detach pinned PIN` does): the pin stays, the program leaves its hook.
pub fn link_detach(pin: &std::path::Path) -> anyhow::Result<ChildCall> {
    const LINK_DETACH: u32 = 34;
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    let get = [path.as_ptr() as u64, 0, 0, 0];
    in_child(|| {
        let fd = bpf(bpf_cmd::OBJ_GET, &get);
        if fd < 0 {
            return fd;
        }
        bpf(LINK_DETACH, &[fd as u64, 0, 0, 0])
    })
}
