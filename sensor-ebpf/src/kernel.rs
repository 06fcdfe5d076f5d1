//! Reads of kernel objects through offsets taken from BTF at load time.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
    bpf_probe_read_kernel_str_bytes,
    generated::{bpf_get_current_comm, bpf_get_current_task_btf, bpf_task_pt_regs},
};
use aya_ebpf::programs::TracePointContext;
use sensor_common::{COMM_LEN, EventHeader, FILENAME_LEN, FileId, KernelOffsets, TaskInfo};

/// A failed kernel read; the event is still sent, marked partial.
pub struct ReadFailed;

/// Reads a `T` at `base + offset`.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Result<T, ReadFailed> {
    if base.is_null() {
        return Err(ReadFailed);
    }
    // SAFETY: bpf_probe_read_kernel validates the address and fails cleanly.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
        .map_err(|_| ReadFailed)
}

/// Reads a pointer field and returns it as a byte pointer.
#[inline(always)]
pub fn read_ptr(base: *const u8, offset: u32) -> Result<*const u8, ReadFailed> {
    read::<*const u8>(base, offset)
}

/// The current syscall's first four arguments, from the registers the
/// kernel saved at entry. An exit program reads them here instead of an
/// entry program storing them in a map for every call.
#[inline(always)]
pub fn read_syscall_args(o: &KernelOffsets) -> [u64; 4] {
    // SAFETY: helpers without preconditions; the verifier types the task,
    // and the registers (`struct pt_regs`), which are loaded directly.
    unsafe {
        let regs = bpf_task_pt_regs(current_task_btf() as *mut _) as *const u8;
        [
            load::<u64>(regs, o.regs_args[0]),
            load::<u64>(regs, o.regs_args[1]),
            load::<u64>(regs, o.regs_args[2]),
            load::<u64>(regs, o.regs_args[3]),
        ]
    }
}

/// The number of the syscall the current task is in (from the registers
/// saved at entry; meaningless outside one).
#[inline(always)]
pub fn current_syscall_nr(o: &KernelOffsets) -> u64 {
    // SAFETY: as in `read_syscall_args`.
    unsafe {
        let regs = bpf_task_pt_regs(current_task_btf() as *mut _) as *const u8;
        load::<u64>(regs, o.regs_syscall_nr)
    }
}

/// Reads a `T` at `offset` of a tracepoint record.
#[inline(always)]
pub fn tp<T>(ctx: &TracePointContext, offset: u32) -> Result<T, ReadFailed> {
    // SAFETY: bpf_probe_read_kernel on the tracepoint record; fails cleanly.
    unsafe { ctx.read_at::<T>(offset as usize) }.map_err(|_| ReadFailed)
}

/// The first `N` syscall arguments of a `sys_enter_*` record, in one read
/// (the loader checked that they are consecutive 8-byte slots).
#[inline(always)]
pub fn args<const N: usize>(
    ctx: &TracePointContext,
    o: &KernelOffsets,
) -> Result<[u64; N], ReadFailed> {
    tp::<[u64; N]>(ctx, o.tp_syscall_arg0)
}

/// A fresh event header stamped with CLOCK_BOOTTIME.
#[inline(always)]
pub fn header(kind: u32) -> EventHeader {
    EventHeader {
        kind,
        flags: 0,
        // SAFETY: helper without preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_boot_ns() },
    }
}

/// Fills `info` from `task`; fields that cannot be read stay zero.
///
/// `cgroup_id` is the current task's cgroup: every caller runs in the context
/// of `task` or of its parent at fork, which shares it.
#[inline(always)]
pub fn read_task(
    info: &mut TaskInfo,
    task: *const u8,
    o: &KernelOffsets,
) -> Result<(), ReadFailed> {
    *info = TaskInfo::default();
    // SAFETY: helper without preconditions.
    info.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    info.tgid = read::<u32>(task, o.task_tgid)?;
    info.pid = read::<u32>(task, o.task_pid)?;
    // The process's start, not the thread's: exit may come from any thread.
    let leader = read_ptr(task, o.task_group_leader)?;
    info.start_boottime_ns = read::<u64>(leader, o.task_start_boottime)?;
    // SAFETY: bounded read into a fixed-size array.
    unsafe {
        bpf_probe_read_kernel_buf(
            task.wrapping_add(o.task_comm as usize),
            &mut info.comm[..COMM_LEN],
        )
    }
    .map_err(|_| ReadFailed)?;
    let parent = read_ptr(task, o.task_real_parent)?;
    info.ppid = read::<u32>(parent, o.task_tgid)?;
    let cred = read_ptr(task, o.task_cred)?;
    info.uid = read::<u32>(cred, o.cred_uid)?;
    info.gid = read::<u32>(cred, o.cred_gid)?;
    info.euid = read::<u32>(cred, o.cred_euid)?;
    info.egid = read::<u32>(cred, o.cred_egid)?;
    Ok(())
}

/// [`read_task`] for the current task: ids, comm and real uid/gid come
/// from helpers, the rest from plain loads of the BTF-typed task (hooks on
/// hot paths such as TCP connect/accept fill one per event). A field that
/// cannot be read is zero.
#[inline(always)]
pub fn read_current_task(info: &mut TaskInfo, o: &KernelOffsets) {
    *info = TaskInfo::default();
    // SAFETY (helpers): no preconditions; comm is written into a
    // COMM_LEN-byte array.
    let (pid_tgid, uid_gid) = unsafe {
        info.cgroup_id = bpf_get_current_cgroup_id();
        bpf_get_current_comm(info.comm.as_mut_ptr().cast(), COMM_LEN as u32);
        (bpf_get_current_pid_tgid(), bpf_get_current_uid_gid())
    };
    info.tgid = (pid_tgid >> 32) as u32;
    info.pid = pid_tgid as u32;
    info.uid = uid_gid as u32;
    info.gid = (uid_gid >> 32) as u32;
    let task = current_task_btf();
    // SAFETY: the BTF-typed task and the task and cred pointers loaded from
    // it; u64 start time, pid_t and kuid_t/kgid_t fields.
    unsafe {
        // The process's start, not the thread's; the main thread is its
        // own leader.
        let leader = if info.pid == info.tgid {
            task
        } else {
            load::<*const u8>(task, o.task_group_leader)
        };
        info.start_boottime_ns = load::<u64>(leader, o.task_start_boottime);
        let parent = load::<*const u8>(task, o.task_real_parent);
        info.ppid = load::<u32>(parent, o.task_tgid);
        let cred = load::<*const u8>(task, o.task_cred);
        info.euid = load::<u32>(cred, o.cred_euid);
        info.egid = load::<u32>(cred, o.cred_egid);
    }
}

/// Nanoseconds fit in 30 bits; since 6.13 (multigrain timestamps) the kernel
/// keeps an "I_CTIME_QUERIED" flag in bit 31 of `i_ctime_nsec`.
const NSEC_MASK: u32 = (1 << 30) - 1;

/// Identity and change-detection fields of an inode.
#[derive(Clone, Copy, Default)]
pub struct InodeIdentity {
    /// Kernel dev_t of the inode's superblock.
    pub dev: u32,
    pub ino: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
}

/// The inode of the file an exec runs (`bprm->file->f_inode`): the kernel's
/// own object, not a path from user memory.
#[inline(always)]
pub fn read_exec_inode(bprm: *const u8, o: &KernelOffsets) -> Result<InodeIdentity, ReadFailed> {
    read_file_inode(read_ptr(bprm, o.bprm_file)?, o)
}

/// The file identity of the program `task`'s parent process runs
/// (`real_parent->mm->exe_file`); fails for kernel threads (no mm).
#[inline(always)]
pub fn read_parent_exe(task: *const u8, o: &KernelOffsets) -> Result<FileId, ReadFailed> {
    read_task_exe(read_ptr(task, o.task_real_parent)?, o)
}

/// The file identity of the program `task` runs (`mm->exe_file`); fails
/// for kernel threads (no mm).
#[inline(always)]
pub fn read_task_exe(task: *const u8, o: &KernelOffsets) -> Result<FileId, ReadFailed> {
    let mm = read_ptr(task, o.task_mm)?;
    let inode = read_file_inode(read_ptr(mm, o.mm_exe_file)?, o)?;
    Ok(FileId {
        dev: inode.dev,
        _pad: 0,
        ino: inode.ino,
    })
}

/// The current task as the verifier knows it: a BTF-typed pointer, whose
/// fields [`load`] reads without a helper call.
#[inline(always)]
pub fn current_task_btf() -> *const u8 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_task_btf() as *const u8 }
}

/// Loads the field at `base + offset` of a BTF-typed kernel object with a
/// plain load. The offset comes from the read-only `OFFSETS` global, which
/// the verifier sees as a constant; it checks the access against the
/// kernel's BTF and makes it fault-safe (a NULL `base` reads zero). About a
/// third of what `bpf_probe_read_kernel` costs per field.
///
/// # Safety
/// `base` must be BTF-typed for the verifier ([`current_task_btf`], or a
/// struct pointer field loaded from one), and `T` the field's exact size:
/// the verifier refuses the program otherwise, it never reads garbage.
#[inline(always)]
pub unsafe fn load<T>(base: *const u8, offset: u32) -> T {
    // SAFETY: per the contract; the verifier checks the access.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize).cast::<T>()) }
}

/// How a program reads the objects it reaches from a file (`struct file`,
/// its dentries, inodes and super block).
///
/// [`Probe`] calls `bpf_probe_read_kernel` per field and works on every
/// kernel. [`Typed`] gets a typed `struct file` from the fd table with
/// `bpf_rdonly_cast` (Linux 6.2+) and then reads each field with a plain
/// load the verifier makes fault-safe: a few nanoseconds instead of a
/// helper call, which was most of what an open outside the watched set
/// cost. The loader picks the open programs built for the kernel it runs
/// on; the rest use [`Probe`].
pub trait Fields {
    /// Slot `fd` of the fd table at `array` (a `struct file *`, maybe NULL),
    /// ready for [`Fields::get`].
    fn fd_slot(array: *const u8, fd: u32, o: &KernelOffsets) -> Result<*const u8, ReadFailed>;
    /// The `T` at `base + offset`; an error for a NULL `base`.
    fn get<T>(base: *const u8, offset: u32) -> Result<T, ReadFailed>;
    /// A pointer field.
    #[inline(always)]
    fn ptr(base: *const u8, offset: u32) -> Result<*const u8, ReadFailed> {
        Self::get::<*const u8>(base, offset)
    }
}

/// Field reads by helper call (every kernel).
pub struct Probe;

impl Fields for Probe {
    #[inline(always)]
    fn fd_slot(array: *const u8, fd: u32, _: &KernelOffsets) -> Result<*const u8, ReadFailed> {
        read::<*const u8>(array, fd * 8)
    }
    #[inline(always)]
    fn get<T>(base: *const u8, offset: u32) -> Result<T, ReadFailed> {
        read(base, offset)
    }
}

/// Field reads by plain loads from BTF-typed pointers (kernels with
/// `bpf_rdonly_cast`; the loader fills `KernelOffsets::btf_fd_slot`).
pub struct Typed;

impl Fields for Typed {
    /// The verifier allows typed loads at constant offsets only, so the
    /// slot's own address is cast to a struct whose first field is a
    /// `struct file *` (the loader checks which) and that field is loaded:
    /// no helper call, and the result is a typed `struct file`.
    #[inline(always)]
    fn fd_slot(array: *const u8, fd: u32, o: &KernelOffsets) -> Result<*const u8, ReadFailed> {
        let slot = rdonly_cast(array.wrapping_add(fd as usize * 8), o.btf_fd_slot);
        // SAFETY: typed by the cast; offset 0 is a `struct file *` field.
        Ok(unsafe { load::<*const u8>(slot, 0) })
    }
    #[inline(always)]
    fn get<T>(base: *const u8, offset: u32) -> Result<T, ReadFailed> {
        if base.is_null() {
            return Err(ReadFailed);
        }
        // SAFETY: `base` came from `Typed::fd_slot` or a pointer field
        // loaded from it, so the verifier knows its type and checks each load (a
        // fault reads zero); `T` is the field's size, or it refuses.
        Ok(unsafe { load(base, offset) })
    }
}

/// The kfunc call instruction of [`rdonly_cast`] as the compiler emits it:
/// `call` (0x85) with `src_reg` = `BPF_PSEUDO_KFUNC_CALL` (2) and the
/// placeholder id the loader replaces with the kernel's BTF id of
/// `bpf_rdonly_cast` (aya 0.14 does not resolve kfuncs itself).
const RDONLY_CAST_CALL: u64 =
    ((sensor_common::KFUNC_PLACEHOLDER_RDONLY_CAST as u64) << 32) | 0x2085;

/// `bpf_rdonly_cast(obj, btf_id)`: `obj` typed as the kernel's BTF type
/// `btf_id` (read-only, untrusted: loads only, each fault-safe). The
/// verifier turns the call into a register move; `btf_id` must be a
/// constant to it, which a field of the frozen `OFFSETS` global is.
#[inline(always)]
fn rdonly_cast(obj: *const u8, btf_id: u32) -> *const u8 {
    let cast: *const u8;
    // SAFETY: a kfunc call that only types a pointer; r1-r5 are clobbered
    // as for any call.
    unsafe {
        core::arch::asm!(
            ".8byte {call}",
            call = const RDONLY_CAST_CALL,
            inlateout("r1") obj => _,
            inlateout("r2") u64::from(btf_id) => _,
            lateout("r0") cast,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
            options(nostack, pure, nomem),
        );
    }
    cast
}

/// The current task's `files->fdt->fd[fd]`, or an error for a closed or
/// out-of-range fd. The fd table is reached by direct loads; the indexed
/// slot as `F` reads it.
#[inline(always)]
pub fn read_fd_file<F: Fields>(fd: u32, o: &KernelOffsets) -> Result<*const u8, ReadFailed> {
    let task = current_task_btf();
    // SAFETY: BTF-typed task; pointer and `unsigned int` fields.
    let (array, max_fds) = unsafe {
        let files: *const u8 = load(task, o.task_files);
        let fdt: *const u8 = load(files, o.files_fdt);
        (
            load::<*const u8>(fdt, o.fdt_fd),
            load::<u32>(fdt, o.fdt_max_fds),
        )
    };
    if fd >= max_fds {
        return Err(ReadFailed);
    }
    let file = F::fd_slot(array, fd, o)?;
    if file.is_null() {
        return Err(ReadFailed);
    }
    Ok(file)
}

/// `file->f_path.dentry`.
#[inline(always)]
pub fn read_file_dentry<F: Fields>(
    file: *const u8,
    o: &KernelOffsets,
) -> Result<*const u8, ReadFailed> {
    F::ptr(file, o.file_f_path + o.path_dentry)
}

/// The dentry of the file the current task has open at `fd`.
#[inline(always)]
pub fn read_fd_dentry<F: Fields>(fd: u32, o: &KernelOffsets) -> Result<*const u8, ReadFailed> {
    read_fd_file::<F>(fd, o).and_then(|file| read_file_dentry::<F>(file, o))
}

/// The dentry of `task`'s root (`true`) or working directory (`false`).
#[inline(always)]
pub fn read_fs_dentry(
    task: *const u8,
    root: bool,
    o: &KernelOffsets,
) -> Result<*const u8, ReadFailed> {
    let fs = read_ptr(task, o.task_fs)?;
    let path = if root { o.fs_root } else { o.fs_pwd };
    read_ptr(fs, path + o.path_dentry)
}

/// (device, inode) of a dentry; inode 0 for a negative dentry.
#[inline(always)]
pub fn read_dentry_id<F: Fields>(
    dentry: *const u8,
    o: &KernelOffsets,
) -> Result<FileId, ReadFailed> {
    let sb = F::ptr(dentry, o.dentry_sb)?;
    let inode = F::ptr(dentry, o.dentry_inode)?;
    let ino = if inode.is_null() {
        0
    } else {
        F::get::<u64>(inode, o.inode_ino)?
    };
    Ok(FileId {
        dev: F::get::<u32>(sb, o.sb_dev)?,
        _pad: 0,
        ino,
    })
}

/// Identity fields of `file->f_inode`.
#[inline(always)]
fn read_file_inode(file: *const u8, o: &KernelOffsets) -> Result<InodeIdentity, ReadFailed> {
    let inode = read_ptr(file, o.file_inode)?;
    let sb = read_ptr(inode, o.inode_sb)?;
    Ok(InodeIdentity {
        dev: read::<u32>(sb, o.sb_dev)?,
        ino: read::<u64>(inode, o.inode_ino)?,
        size: read::<u64>(inode, o.inode_size)?,
        mtime_sec: read::<i64>(inode, o.inode_mtime_sec)?,
        mtime_nsec: read::<u32>(inode, o.inode_mtime_nsec)? & NSEC_MASK,
        ctime_sec: read::<i64>(inode, o.inode_ctime_sec)?,
        ctime_nsec: read::<u32>(inode, o.inode_ctime_nsec)? & NSEC_MASK,
    })
}

/// Copies the NUL-terminated `bprm->filename` into `dst`; true if it was cut.
#[inline(always)]
pub fn read_exec_filename(
    dst: &mut [u8; FILENAME_LEN],
    bprm: *const u8,
    o: &KernelOffsets,
) -> Result<bool, ReadFailed> {
    dst[0] = 0;
    let name = read_ptr(bprm, o.bprm_filename)?;
    // SAFETY: bounded string read into a fixed-size array.
    let len = unsafe { bpf_probe_read_kernel_str_bytes(name, dst) }
        .map_err(|_| ReadFailed)?
        .len();
    Ok(len >= FILENAME_LEN - 1)
}
