//! Fills [`KernelOffsets`] for the running kernel from its BTF.

use sensor_common::KernelOffsets;

use super::btf::{BtfError, KernelBtf};

/// Fills the fields the `fexit/do_filp_open` program reads (`struct
/// filename`, `struct open_flags`); an error leaves them 0 and that program
/// unused.
pub fn resolve_filp_open(offsets: &mut KernelOffsets, btf: &KernelBtf) -> Result<(), BtfError> {
    offsets.filename_uptr = btf.field_offset("filename", "uptr")?;
    offsets.open_flags_open_flag = btf.field_offset("open_flags", "open_flag")?;
    offsets.open_flags_mode = btf.field_offset("open_flags", "mode")?;
    Ok(())
}

/// Resolves every offset the programs use; any missing field is an error that
/// names it, so the sensor refuses to start rather than read garbage.
pub fn resolve(btf: &KernelBtf) -> Result<KernelOffsets, BtfError> {
    let f = |s: &str, f: &str| btf.field_offset(s, f);
    let (inode_mtime_sec, inode_mtime_nsec) = inode_time(btf, "mtime")?;
    let (inode_ctime_sec, inode_ctime_nsec) = inode_time(btf, "ctime")?;
    Ok(KernelOffsets {
        valid: 1,
        task_pid: f("task_struct", "pid")?,
        task_tgid: f("task_struct", "tgid")?,
        task_real_parent: f("task_struct", "real_parent")?,
        task_cred: f("task_struct", "cred")?,
        task_comm: f("task_struct", "comm")?,
        task_mm: f("task_struct", "mm")?,
        task_signal: f("task_struct", "signal")?,
        task_exit_code: f("task_struct", "exit_code")?,
        task_start_boottime: f("task_struct", "start_boottime")?,
        task_group_leader: f("task_struct", "group_leader")?,
        cred_uid: f("cred", "uid")?,
        cred_gid: f("cred", "gid")?,
        cred_euid: f("cred", "euid")?,
        cred_egid: f("cred", "egid")?,
        mm_arg_start: f("mm_struct", "arg_start")?,
        mm_arg_end: f("mm_struct", "arg_end")?,
        mm_exe_file: f("mm_struct", "exe_file")?,
        signal_live: f("signal_struct", "live")?,
        bprm_filename: f("linux_binprm", "filename")?,
        bprm_file: f("linux_binprm", "file")?,
        file_inode: f("file", "f_inode")?,
        inode_ino: f("inode", "i_ino")?,
        inode_sb: f("inode", "i_sb")?,
        inode_size: f("inode", "i_size")?,
        inode_mtime_sec,
        inode_mtime_nsec,
        inode_ctime_sec,
        inode_ctime_nsec,
        sb_dev: f("super_block", "s_dev")?,
        task_files: f("task_struct", "files")?,
        task_fs: f("task_struct", "fs")?,
        files_fdt: f("files_struct", "fdt")?,
        fdt_fd: f("fdtable", "fd")?,
        fdt_max_fds: f("fdtable", "max_fds")?,
        fs_root: f("fs_struct", "root")?,
        fs_pwd: f("fs_struct", "pwd")?,
        path_dentry: f("path", "dentry")?,
        file_f_path: f("file", "f_path")?,
        file_f_mode: f("file", "f_mode")?,
        file_f_flags: f("file", "f_flags")?,
        inode_mode: f("inode", "i_mode")?,
        task_flags: f("task_struct", "flags")?,
        regs_syscall_nr: f("pt_regs", "orig_ax")?,
        dentry_parent: f("dentry", "d_parent")?,
        dentry_name: f("dentry", "d_name")? + f("qstr", "name")?,
        dentry_inode: f("dentry", "d_inode")?,
        dentry_sb: f("dentry", "d_sb")?,
        regs_args: [
            f("pt_regs", "di")?,
            f("pt_regs", "si")?,
            f("pt_regs", "dx")?,
            f("pt_regs", "r10")?,
        ],
        // network: filled by `net::resolve_offsets` when enabled.
        ..KernelOffsets::default()
    })
}

/// The inode's mtime and ctime moved twice: `i_mtime` (timespec64) until
/// 6.5, `__i_mtime` in 6.6-6.10, split `i_mtime_sec`/`i_mtime_nsec` since.
/// `which` is "mtime" or "ctime".
fn inode_time(btf: &KernelBtf, which: &str) -> Result<(u32, u32), BtfError> {
    if let (Ok(sec), Ok(nsec)) = (
        btf.field_offset("inode", &format!("i_{which}_sec")),
        btf.field_offset("inode", &format!("i_{which}_nsec")),
    ) {
        return Ok((sec, nsec));
    }
    let base = btf
        .field_offset("inode", &format!("__i_{which}"))
        .or_else(|_| btf.field_offset("inode", &format!("i_{which}")))?;
    Ok((
        base + btf.field_offset("timespec64", "tv_sec")?,
        base + btf.field_offset("timespec64", "tv_nsec")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against the host kernel's real BTF: every field must resolve, and
    /// the ones whose position is fixed by the kernel's ABI must match.
    #[test]
    fn resolves_every_offset_on_this_kernel() {
        let btf = KernelBtf::from_sys_fs().expect("this host has /sys/kernel/btf/vmlinux");
        let o = resolve(&btf).expect("all fields present");
        assert_eq!(o.valid, 1);
        // `struct cred` starts with `atomic_long_t usage` (8 bytes) then uid.
        assert!(
            o.cred_uid >= 4 && o.cred_uid < 32,
            "cred.uid at {}",
            o.cred_uid
        );
        assert_eq!(o.cred_gid, o.cred_uid + 4);
        assert_eq!(o.mm_arg_end, o.mm_arg_start + 8);
        assert_ne!(o.task_pid, o.task_tgid);
        assert!(o.task_comm > 0);
    }

    #[test]
    fn missing_fields_are_named() {
        let btf = KernelBtf::from_sys_fs().expect("kernel BTF");
        let err = btf
            .field_offset("task_struct", "no_such_field")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel BTF struct task_struct has no field no_such_field"
        );
        assert!(matches!(
            btf.field_offset("no_such_struct", "x"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            KernelBtf::parse(b"not btf at all"),
            Err(BtfError::Malformed(_))
        ));
    }
}
