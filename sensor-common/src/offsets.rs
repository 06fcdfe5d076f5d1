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
    /// `struct pt_regs` slots of the first four syscall arguments (x86-64:
    /// di, si, dx, r10), read at a syscall's exit so no entry program has
    /// to carry them over.
    pub regs_args: [u32; 4],
    // network
    /// `syscalls:sys_enter_*` records: offset of the first argument and the
    /// distance between arguments; `sys_exit_*`: offset of `ret`. Checked
    /// against every format file the network programs read.
    pub tp_syscall_arg0: u32,
    pub tp_syscall_arg_size: u32,
    pub tp_syscall_ret: u32,
    /// file -> socket -> sock; `socket->file` proves the fd is a socket.
    pub file_private_data: u32,
    pub socket_sk: u32,
    pub socket_file: u32,
    /// `struct sock` fields (`__sk_common` offset already added).
    pub sk_family: u32,
    pub sk_protocol: u32,
    pub sk_num: u32,
    pub sk_dport: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    /// `inet_sock.inet_sport` (big-endian): the local port as the TCP
    /// state tracepoint reports it; `skc_num` is already 0 when a socket
    /// reaches CLOSE (its port was released just before).
    pub inet_sport: u32,
    /// `struct tcp_sock` byte counters (u64): payload bytes transmitted
    /// (retransmissions included) and received (+1 for a received FIN).
    pub tcp_bytes_sent: u32,
    pub tcp_bytes_received: u32,
    /// User ABI structs of sendto/sendmsg/sendmmsg, also taken from BTF.
    pub msghdr_name: u32,
    pub msghdr_namelen: u32,
    pub msghdr_iov: u32,
    pub mmsghdr_hdr: u32,
    pub iovec_base: u32,
    pub iovec_len: u32,
    pub sockaddr_family: u32,
    pub sin_port: u32,
    pub sin_addr: u32,
    pub sin6_port: u32,
    pub sin6_addr: u32,
    /// BTF id of a struct whose first field is a `struct file *` (so one
    /// fd table slot can be cast to it) in the running kernel when it has
    /// the `bpf_rdonly_cast` kfunc (Linux 6.2+), else 0: the open programs
    /// then read file fields by plain loads (see `sensor-ebpf`'s `Fields`).
    pub btf_fd_slot: u32,
    /// `struct filename.uptr` and `struct open_flags` (`open_flag`, `mode`):
    /// what `do_filp_open` was asked, for the `fexit` open program; 0 when
    /// this kernel's BTF lacks them (that program is then not used).
    pub filename_uptr: u32,
    pub open_flags_open_flag: u32,
    pub open_flags_mode: u32,
    /// `file->f_mode`: the write guard refuses opens for writing.
    pub file_f_mode: u32,
    /// `file->f_flags` and `inode->i_mode`: what a file was opened with,
    /// and the permissions a creating open gave it, for `lsm/file_open`.
    pub file_f_flags: u32,
    pub inode_mode: u32,
    /// `task->flags`: `PF_IO_WORKER` marks io_uring's worker threads.
    pub task_flags: u32,
    /// `pt_regs` slot of the syscall number (x86-64: `orig_ax`).
    pub regs_syscall_nr: u32,
    /// The kernel's `struct msghdr.msg_name` (a kernel copy of the
    /// destination), for `lsm/socket_sendmsg`.
    pub kmsghdr_name: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] u32 fields only.
unsafe impl aya::Pod for KernelOffsets {}

// The loader writes this struct over an 8-aligned global byte for byte.
const _: () = assert!(core::mem::size_of::<KernelOffsets>().is_multiple_of(8));
