//! Kernel struct field offsets, resolved by the daemon from the running
//! kernel's BTF (/sys/kernel/btf/vmlinux) and handed to the programs as the
//! read-only global `OFFSETS`. Nothing in sensor-ebpf hard-codes a layout.

/// Byte offsets of the fields the programs read. Zero in `valid` means the
/// loader never filled the struct; programs then emit nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// Non-zero once filled by the loader.
    pub valid: u32,
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_cred: u32,
    pub task_comm: u32,
    pub task_mm: u32,
    pub task_signal: u32,
    pub task_exit_code: u32,
    pub task_start_boottime: u32,
    pub task_group_leader: u32,
    pub cred_uid: u32,
    pub cred_gid: u32,
    pub cred_euid: u32,
    pub cred_egid: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub mm_exe_file: u32,
    pub signal_live: u32,
    pub bprm_filename: u32,
    pub bprm_file: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub inode_size: u32,
    /// Seconds and nanoseconds of the inode's mtime (one timespec64 before
    /// 6.11, two fields since).
    pub inode_mtime_sec: u32,
    pub inode_mtime_nsec: u32,
    pub inode_ctime_sec: u32,
    pub inode_ctime_nsec: u32,
    pub sb_dev: u32,
    // files
    pub task_files: u32,
    pub task_fs: u32,
    pub files_fdt: u32,
    pub fdt_fd: u32,
    pub fdt_max_fds: u32,
    pub fs_root: u32,
    pub fs_pwd: u32,
    pub path_dentry: u32,
    pub file_f_path: u32,
    pub dentry_parent: u32,
    /// `d_name.name`: the qstr's name pointer, offsets added up.
    pub dentry_name: u32,
    pub dentry_inode: u32,
    pub dentry_sb: u32,
    pub _pad: [u32; 1],
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] u32 fields only.
unsafe impl aya::Pod for KernelOffsets {}
