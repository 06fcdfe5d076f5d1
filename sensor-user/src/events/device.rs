//! The device number the kernel's programs see for a file, which `stat()`
//! does not always report.
//!
//! The kernel's programs identify a file by its inode's superblock device
//! and inode number. On an overlay whose layers are on different file
//! systems, mounted without `xino=on` (the default, and what overlayroot
//! does), `stat()` of a regular file reports a pseudo device of the layer
//! it comes from (the inode number is the layer's, and the overlay inode the
//! kernel sees has that same number), while directories report the overlay's
//! own device. Taking `st_dev` as it is would make every trusted program on
//! such a root unknown to the kernel, and every watched file unknown to the
//! identity map. Two files of different layers can share an inode number
//! there; the allowlist also compares size, mtime and ctime to the
//! nanosecond, which a file made in another layer cannot copy.

use std::{
    collections::HashMap,
    fs::{File, Metadata},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
};

use nix::sys::statfs::{OVERLAYFS_SUPER_MAGIC, fstatfs, statfs};

/// `st_dev` as the kernel's programs see the open `file` (`meta` is its
/// fstat): the overlay's own device for a file on an overlay, else
/// `meta.dev()`.
pub fn kernel_device(file: &File, meta: &Metadata) -> u64 {
    if meta.is_dir() || meta.file_type().is_symlink() {
        return meta.dev();
    }
    match fstatfs(file) {
        Ok(fs) if fs.filesystem_type() == OVERLAYFS_SUPER_MAGIC => {}
        _ => return meta.dev(),
    }
    mount_device(file).unwrap_or_else(|| meta.dev())
}

/// What [`kernel_device`] gives the regular files found, not opened, in
/// the directory `dir` of device `dir_dev` (a directory walk): the
/// directory's device on an overlay, whose directories report the overlay's
/// own; `None` elsewhere (each file's own `st_dev`).
pub fn files_device_in(dir: &Path, dir_dev: u64) -> Option<u64> {
    on_overlay(dir).then_some(dir_dev)
}

/// [`files_device_in`] for one file found at `path`, with its `meta`.
pub fn kernel_device_at(path: &Path, meta: &Metadata) -> u64 {
    if meta.is_dir() || meta.file_type().is_symlink() {
        return meta.dev();
    }
    path.parent()
        .and_then(|dir| files_device_in(dir, std::fs::metadata(dir).ok()?.dev()))
        .unwrap_or_else(|| meta.dev())
}

/// Whether `path` is on an overlay.
pub fn on_overlay(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == OVERLAYFS_SUPER_MAGIC)
}

/// Devices of the mounts seen so far, by mount id: an exec of a file on an
/// overlay root would otherwise read all of mountinfo each time. Mount ids
/// are reused only after an unmount; a stale entry gives a device the kernel
/// does not report, which fails closed (not allowed, not hashed).
static MOUNT_DEVICES: std::sync::Mutex<Option<HashMap<u64, u64>>> = std::sync::Mutex::new(None);

/// The device of the mount `file` was opened on: its `mnt_id` from
/// /proc/self/fdinfo, looked up in /proc/self/mountinfo.
fn mount_device(file: &File) -> Option<u64> {
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd())).ok()?;
    let mnt_id: u64 = fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))?
        .trim()
        .parse()
        .ok()?;
    let mut cache = MOUNT_DEVICES.lock().ok()?;
    let devices = cache.get_or_insert_with(HashMap::new);
    if let Some(dev) = devices.get(&mnt_id) {
        return Some(*dev);
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    *devices = mount_devices(&mountinfo);
    devices.get(&mnt_id).copied()
}

/// Each mount's `major:minor` in a mountinfo text, as `st_dev`, by mount id.
/// Lines that do not parse are left out.
fn mount_devices(mountinfo: &str) -> HashMap<u64, u64> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let id = fields.next()?.parse().ok()?;
            let (major, minor) = fields.nth(1)?.split_once(':')?;
            Some((
                id,
                nix::sys::stat::makedev(major.parse().ok()?, minor.parse().ok()?),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
51 25 0:42 / /run/x/merged rw,relatime shared:30 - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
";

    #[test]
    fn each_mount_id_gives_its_device() {
        let devices = mount_devices(MOUNTINFO);
        assert_eq!(devices.get(&51), Some(&nix::sys::stat::makedev(0, 42)));
        assert_eq!(devices.get(&25), Some(&nix::sys::stat::makedev(254, 0)));
        assert_eq!(devices.len(), 2);
        assert!(mount_devices("garbage\n51 x\n").is_empty());
    }

    #[test]
    fn a_file_off_overlays_keeps_its_stat_device() {
        let file = File::open("/proc/self/exe").unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(kernel_device(&file, &meta), meta.dev());
    }
}
