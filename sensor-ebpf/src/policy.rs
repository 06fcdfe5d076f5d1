//! Application allowlisting, backend "tracepoint + SIGKILL": at
//! `sched_process_exec` the new image is loaded but has not run a single
//! user-space instruction; a pending SIGKILL ends it on the way back to user
//! space. The verdict is a map lookup by the executed inode's identity;
//! userspace only fills the maps and is never in the exec path.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_uid_gid, bpf_send_signal},
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap},
    programs::RawTracePointContext,
};
use sensor_common::{
    ALLOW_ENTRIES, AllowEntry, DENY_ENTRIES, DenyParentKey, DenyUidKey, EVENT_PARTIAL, EventKind,
    FileId, KernelOffsets, PolicyEvent, PolicyState, action, backend, mode, reason,
};

use crate::{
    kernel::{
        InodeIdentity, header, read_exec_filename, read_exec_inode, read_parent_exe, read_task,
    },
    maps::{offsets, reserve_process_event, submit_process_event},
};

const SIGKILL: u32 = 9;

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

/// cgroup v2 ids under enforcement when `PolicyState::scoped` is set.
#[map]
static POLICY_SCOPE: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn exec_verdict(ctx: RawTracePointContext) -> u32 {
    let Some(o) = offsets() else { return 0 };
    let Some(state) = POLICY_STATE.get(0).copied() else {
        return 0;
    };
    if state.mode == mode::OFF {
        return 0;
    }
    // SAFETY: helper without preconditions.
    if state.scoped != 0 && unsafe { POLICY_SCOPE.get(&bpf_get_current_cgroup_id()) }.is_none() {
        return 0;
    }
    let bprm: *const u8 = ctx.arg(2);
    // An unreadable inode cannot be proven allowlisted: it is not allowed.
    let (inode, partial) = match read_exec_inode(bprm, &o) {
        Ok(inode) => (inode, false),
        Err(_) => (InodeIdentity::default(), true),
    };
    let key = FileId {
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
    let (why, rule) = match unsafe { allow.get(&key) }.copied() {
        None => (reason::NOT_ALLOWED, u32::MAX),
        Some(entry) if unchanged(&entry, &inode) => {
            match denied_context(&ctx, key, state.active, &o) {
                Some(rule) => (reason::DENIED_CONTEXT, rule),
                None => return 0,
            }
        }
        Some(entry) => (reason::MODIFIED, entry.rule),
    };
    let enforce = state.mode == mode::ENFORCE;
    if enforce {
        // First, so nothing below can delay or skip the kill.
        // SAFETY: signals the current task, which is the one executing.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    report(
        &ctx,
        bprm,
        key,
        why,
        rule,
        enforce,
        state.generation,
        partial,
    );
    0
}

/// The deny rule that forbids this allowlisted program for the current
/// user or under the parent's program, if any.
#[inline(always)]
fn denied_context(
    ctx: &RawTracePointContext,
    program: FileId,
    active: u32,
    o: &KernelOffsets,
) -> Option<u32> {
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
    if let Some(rule) = unsafe { by_uid.get(&uid_key) } {
        return Some(*rule);
    }
    let parent = read_parent_exe(ctx.arg(0), o).ok()?;
    // SAFETY: as above.
    unsafe { by_parent.get(&DenyParentKey { program, parent }) }.copied()
}

#[inline(always)]
fn unchanged(entry: &AllowEntry, inode: &InodeIdentity) -> bool {
    entry.size == inode.size
        && entry.mtime_sec == inode.mtime_sec
        && entry.mtime_nsec == inode.mtime_nsec
        && entry.ctime_sec == inode.ctime_sec
        && entry.ctime_nsec == inode.ctime_nsec
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn report(
    ctx: &RawTracePointContext,
    bprm: *const u8,
    file: FileId,
    why: u32,
    rule: u32,
    enforced: bool,
    generation: u64,
    mut partial: bool,
) {
    let Some(o) = offsets() else { return };
    let Some(mut entry) = reserve_process_event::<PolicyEvent>() else {
        return;
    };
    let task: *const u8 = ctx.arg(0);
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points into the reserved ring buffer slot of size PolicyEvent.
    unsafe {
        (*ev).header = header(EventKind::Policy as u32);
        partial |= read_task(&mut (*ev).task, task, &o).is_err();
        (*ev).file = file;
        (*ev).action = if enforced {
            action::BLOCKED
        } else {
            action::WOULD_BLOCK
        };
        (*ev).reason = why;
        (*ev).backend = backend::TRACEPOINT_SIGKILL;
        (*ev).rule = rule;
        (*ev).generation = generation;
        partial |= read_exec_filename(&mut (*ev).filename, bprm, &o).is_err();
        if partial {
            (*ev).header.flags |= EVENT_PARTIAL;
        }
    }
    submit_process_event(entry);
}
