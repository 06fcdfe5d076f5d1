//! Application allowlisting. One verdict (`decide`: a map lookup by the
//! executed inode's identity), two backends the loader picks between:
//! - A, BPF-LSM `bprm_check_security`: the exec fails with -EPERM;
//! - B, raw tracepoint `sched_process_exec`: the new image is loaded but has
//!   not run a single user-space instruction; a pending SIGKILL ends it on
//!   the way back to user space.
//!
//! Userspace only fills the maps and is never in the exec path.

use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_task, bpf_get_current_uid_gid,
        bpf_send_signal,
    },
    macros::{lsm, map, raw_tracepoint},
    maps::{Array, HashMap},
    programs::{LsmContext, RawTracePointContext},
};
use sensor_common::{
    ALLOW_ENTRIES, AllowEntry, DENY_ENTRIES, DenyParentKey, DenyUidKey, EVENT_PARTIAL, EventKind,
    FileId, KernelOffsets, PolicyEvent, PolicyState, SCOPE_ENTRIES, SCOPE_MAX_LEVELS, action,
    backend, mode, reason,
};

use crate::{
    kernel::{
        InodeIdentity, header, read_exec_filename, read_exec_inode, read_parent_exe, read_task,
    },
    maps::{offsets, reserve_process_event, submit_process_event},
};

const SIGKILL: u32 = 9;
const EPERM: i32 = 1;

/// The two allowlist generations; `POLICY_STATE.active` picks the live one.
#[map]
static ALLOW_A: HashMap<FileId, AllowEntry> = HashMap::with_max_entries(ALLOW_ENTRIES, 0);
#[map]
static ALLOW_B: HashMap<FileId, AllowEntry> = HashMap::with_max_entries(ALLOW_ENTRIES, 0);

#[map]
static POLICY_STATE: Array<PolicyState> = Array::with_max_entries(1, 0);

/// Allowlisted programs denied under a given parent program or user, in
/// the same two generations as the allowlist.
#[map]
static DENY_PARENT_A: HashMap<DenyParentKey, u32> = HashMap::with_max_entries(DENY_ENTRIES, 0);
#[map]
static DENY_PARENT_B: HashMap<DenyParentKey, u32> = HashMap::with_max_entries(DENY_ENTRIES, 0);
#[map]
static DENY_UID_A: HashMap<DenyUidKey, u32> = HashMap::with_max_entries(DENY_ENTRIES, 0);
#[map]
static DENY_UID_B: HashMap<DenyUidKey, u32> = HashMap::with_max_entries(DENY_ENTRIES, 0);

/// cgroup v2 ids under enforcement, with their subtrees, when
/// `PolicyState::scoped` is set.
#[map]
static POLICY_SCOPE: HashMap<u64, u8> = HashMap::with_max_entries(SCOPE_ENTRIES, 0);

/// Whether the current task is under a scoped cgroup: its own cgroup or an
/// ancestor is in `POLICY_SCOPE`. Walks from the root (level 0) down; a
/// task [`SCOPE_MAX_LEVELS`] or more levels below the root is in scope
/// (fail closed), so a sub-cgroup made to escape a scoped policy never does.
#[inline(always)]
fn in_scope() -> bool {
    for level in 0..=SCOPE_MAX_LEVELS as i32 {
        // SAFETY: helper without preconditions; 0 below the task's own level.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            return false;
        }
        // SAFETY: only presence is read.
        if unsafe { POLICY_SCOPE.get(id) }.is_some() {
            return true;
        }
    }
    true
}

/// Why an exec is not allowed, decided from the maps alone.
struct Verdict {
    file: FileId,
    why: u32,
    rule: u32,
    enforce: bool,
    generation: u64,
    partial: bool,
}

/// The verdict for `task` executing `bprm`, or None when it may run (policy
/// off, out of scope, or allowlisted and unchanged and not denied here).
#[inline(always)]
fn decide(task: *const u8, bprm: *const u8, o: &KernelOffsets) -> Option<Verdict> {
    let state = POLICY_STATE.get(0).copied()?;
    if state.mode == mode::OFF {
        return None;
    }
    if state.scoped != 0 && !in_scope() {
        return None;
    }
    // An unreadable inode cannot be proven allowlisted: it is not allowed.
    let (inode, partial) = match read_exec_inode(bprm, o) {
        Ok(inode) => (inode, false),
        Err(_) => (InodeIdentity::default(), true),
    };
    let file = FileId {
        dev: inode.dev,
        _pad: 0,
        ino: inode.ino,
    };
    let allow = if state.active == 0 {
        &ALLOW_A
    } else {
        &ALLOW_B
    };
    // SAFETY: the value is copied out at once.
    let (why, rule) = match unsafe { allow.get(file) }.copied() {
        None => (reason::NOT_ALLOWED, u32::MAX),
        Some(entry) if unchanged(&entry, &inode) => (
            reason::DENIED_CONTEXT,
            denied_context(task, file, state.active, o)?,
        ),
        Some(entry) => (reason::MODIFIED, entry.rule),
    };
    Some(Verdict {
        file,
        why,
        rule,
        enforce: state.mode == mode::ENFORCE,
        generation: state.generation,
        partial,
    })
}

/// Backend B: `sched_process_exec(struct task_struct *p, pid_t old_pid,
/// struct linux_binprm *bprm)`.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn exec_verdict(ctx: RawTracePointContext) -> u32 {
    let Some(o) = offsets() else { return 0 };
    let task: *const u8 = ctx.arg(0);
    let bprm: *const u8 = ctx.arg(2);
    let Some(verdict) = decide(task, bprm, o) else {
        return 0;
    };
    if verdict.enforce {
        // First, so nothing below can delay or skip the kill.
        // SAFETY: signals the current task, which is the one executing.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    report(task, bprm, &verdict, backend::TRACEPOINT_SIGKILL, o);
    0
}

/// How often `exec_verdict_lsm` ran: the loader's proof that the kernel
/// really calls BPF-LSM programs (attaching alone proves nothing).
#[map]
static LSM_VERDICT_RUNS: Array<u64> = Array::with_max_entries(1, 0);

/// Backend A: `bprm_check_security(struct linux_binprm *bprm)`. Runs before
/// the point of no return; -EPERM makes execve fail with "Operation not
/// permitted" and the caller keeps running. For a script it runs once for
/// the script and once for its interpreter.
#[lsm(hook = "bprm_check_security")]
pub fn exec_verdict_lsm(ctx: LsmContext) -> i32 {
    if let Some(runs) = LSM_VERDICT_RUNS.get_ptr_mut(0) {
        // SAFETY: the map's only slot; a lost count under a race is harmless.
        unsafe { *runs += 1 };
    }
    let Some(o) = offsets() else { return 0 };
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // Argument 0 of this hook is the linux_binprm.
    let bprm: *const u8 = ctx.arg(0);
    let Some(verdict) = decide(task, bprm, o) else {
        return 0;
    };
    report(task, bprm, &verdict, backend::LSM, o);
    if verdict.enforce { -EPERM } else { 0 }
}

/// The deny rule that forbids this allowlisted program for the current
/// user or under the parent's program, if any.
#[inline(always)]
fn denied_context(task: *const u8, program: FileId, active: u32, o: &KernelOffsets) -> Option<u32> {
    let (by_uid, by_parent) = if active == 0 {
        (&DENY_UID_A, &DENY_PARENT_A)
    } else {
        (&DENY_UID_B, &DENY_PARENT_B)
    };
    let uid_key = DenyUidKey {
        program,
        // The low half is the real uid.
        uid: bpf_get_current_uid_gid() as u32,
        _pad: 0,
    };
    // SAFETY: values are copied out at once.
    if let Some(rule) = unsafe { by_uid.get(uid_key) } {
        return Some(*rule);
    }
    let parent = read_parent_exe(task, o).ok()?;
    // SAFETY: as above.
    unsafe { by_parent.get(DenyParentKey { program, parent }) }.copied()
}

#[inline(always)]
fn unchanged(entry: &AllowEntry, inode: &InodeIdentity) -> bool {
    entry.size == inode.size
        && entry.mtime_sec == inode.mtime_sec
        && entry.mtime_nsec == inode.mtime_nsec
        && entry.ctime_sec == inode.ctime_sec
        && entry.ctime_nsec == inode.ctime_nsec
}

/// Sends the block (or would-block) event.
#[inline(always)]
fn report(task: *const u8, bprm: *const u8, verdict: &Verdict, backend: u32, o: &KernelOffsets) {
    let Some(mut entry) = reserve_process_event::<PolicyEvent>() else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points into the reserved ring buffer slot of size PolicyEvent.
    unsafe {
        (*ev).header = header(EventKind::Policy as u32);
        let mut partial = verdict.partial || read_task(&mut (*ev).task, task, o).is_err();
        (*ev).file = verdict.file;
        (*ev).action = if verdict.enforce {
            action::BLOCKED
        } else {
            action::WOULD_BLOCK
        };
        (*ev).reason = verdict.why;
        (*ev).backend = backend;
        (*ev).rule = verdict.rule;
        (*ev).generation = verdict.generation;
        partial |= read_exec_filename(&mut (*ev).filename, bprm, o).is_err();
        if partial {
            (*ev).header.flags |= EVENT_PARTIAL;
        }
    }
    submit_process_event(entry);
}
