//! Watched files by identity: every file under a watched tree, as (device,
//! inode), so the kernel recognises it whatever name it is opened by (a
//! hard link made outside the tree). The scan runs at start and whenever
//! the watched set changes; the kernel adds files created in the set, the
//! manager files renamed or linked in.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use sensor_common::{FileId, WatchEntry};

use super::CompiledWatches;
use crate::events::{
    device::{files_device_in, kernel_device_at},
    user_dev_to_kernel,
};

/// The watched files found by one scan.
#[derive(Debug, Default)]
pub struct IdentityScan {
    /// Kernel key -> the entry of the nearest watched root above the file.
    pub files: HashMap<FileId, WatchEntry>,
    /// (`st_dev`, inode) -> the path the file was found at.
    pub paths: HashMap<(u64, u64), Box<str>>,
    /// Files not added: the bound was reached.
    pub overflow: u64,
    /// Entries that could not be read (vanished, no permission).
    pub unreadable: u64,
    pub elapsed: Duration,
}

impl IdentityScan {
    /// Scans the watched roots of `c`, at most `max` files in all. Excluded
    /// subtrees, symbolic links and other filesystems are not entered.
    pub fn run(c: &CompiledWatches, max: u32) -> Self {
        let start = Instant::now();
        let mut scan = Self::default();
        for root in &c.roots {
            let Ok(meta) = std::fs::symlink_metadata(root) else {
                scan.unreadable += 1;
                continue;
            };
            let Some(entry) = c.watched.get(&key(root, &meta)).copied() else {
                continue;
            };
            if entry.ops == 0 {
                continue;
            }
            if meta.is_dir() {
                scan.tree(c, root, meta.dev(), entry, max);
            } else {
                scan.add(kernel_device_at(root, &meta), &meta, root, entry, max);
            }
        }
        scan.elapsed = start.elapsed();
        scan
    }

    /// Adds what lies below `dir` (a directory of device `dev` watched with
    /// `entry`): an iterative walk, so depth costs no stack.
    pub fn tree(&mut self, c: &CompiledWatches, dir: &Path, dev: u64, entry: WatchEntry, max: u32) {
        let mut stack = vec![(dir.to_path_buf(), entry)];
        while let Some((dir, entry)) = stack.pop() {
            let files_dev = files_device_in(&dir, dev);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                self.unreadable += 1;
                continue;
            };
            for found in entries {
                let Ok(found) = found else {
                    self.unreadable += 1;
                    continue;
                };
                let path = found.path();
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    self.unreadable += 1;
                    continue;
                };
                if meta.file_type().is_symlink() {
                    continue;
                }
                let file_dev = match files_dev {
                    Some(files_dev) if !meta.is_dir() => files_dev,
                    _ => meta.dev(),
                };
                if file_dev != dev {
                    continue;
                }
                // A root or exclusion nested inside: its own entry wins.
                let entry = c
                    .watched
                    .get(&(user_dev_to_kernel(file_dev), meta.ino()))
                    .copied()
                    .unwrap_or(entry);
                if entry.ops == 0 {
                    continue;
                }
                if meta.is_dir() {
                    stack.push((path, entry));
                } else {
                    self.add(file_dev, &meta, &path, entry, max);
                }
            }
        }
    }

    /// Adds the file at `path` of device `dev` as the kernel sees it.
    pub fn add(
        &mut self,
        dev: u64,
        meta: &std::fs::Metadata,
        path: &Path,
        entry: WatchEntry,
        max: u32,
    ) {
        let id = FileId {
            dev: user_dev_to_kernel(dev),
            _pad: 0,
            ino: meta.ino(),
        };
        if self.files.contains_key(&id) {
            return;
        }
        if self.files.len() >= max as usize {
            self.overflow += 1;
            return;
        }
        self.files.insert(id, entry);
        self.paths.insert(
            (dev, meta.ino()),
            path.to_string_lossy().into_owned().into_boxed_str(),
        );
    }
}

/// `CompiledWatches::watched`'s key of the file at `path`.
fn key(path: &Path, meta: &std::fs::Metadata) -> (u32, u64) {
    (user_dev_to_kernel(kernel_device_at(path, meta)), meta.ino())
}

/// The entry of the watched root `path` lies under (the longest root that
/// is a prefix of it), for a file renamed or linked into the set.
pub fn entry_for(c: &CompiledWatches, path: &Path) -> Option<(PathBuf, WatchEntry)> {
    let root = c
        .roots
        .iter()
        .filter(|root| path.starts_with(root))
        .max_by_key(|root| root.as_os_str().len())?;
    let meta = std::fs::symlink_metadata(root).ok()?;
    let entry = c.watched.get(&key(root, &meta)).copied()?;
    (entry.ops != 0).then(|| (root.clone(), entry))
}

/// Where the filesystem of `dev` (`st_dev`) is mounted with its own root
/// (the first such mount in /proc/self/mountinfo): the start of the path of
/// a file the kernel named from that root. `None` when it is not.
pub fn mount_point(dev: u64) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("{}:{}", libc_major(dev), libc_minor(dev));
    text.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let devno = fields.nth(2)?;
        let root = fields.next()?;
        let mount = fields.next()?;
        (devno == want && root == "/").then(|| unescape(mount))
    })
}

/// glibc's `major()` of an `st_dev`.
fn libc_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

/// glibc's `minor()` of an `st_dev`.
fn libc_minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|_| bytes[i] == b'\\');
        match octal.and_then(|o| u8::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::FilesConfig, watch::Anchors};

    #[test]
    fn a_scan_finds_every_file_below_the_roots_but_not_excluded_ones_and_counts_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let phi = base.join("phi");
        std::fs::create_dir_all(phi.join("a/b/c")).unwrap();
        std::fs::create_dir_all(phi.join("cache")).unwrap();
        for f in ["rx.db", "a/one", "a/b/c/deep"] {
            std::fs::write(phi.join(f), b"x").unwrap();
        }
        std::fs::write(phi.join("cache/tmp"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", phi.join("link")).unwrap();
        let cfg = FilesConfig {
            watch: vec![crate::config::WatchRule {
                path: phi.to_string_lossy().into_owned(),
                ops: Vec::new(),
            }],
            exclude_paths: vec![phi.join("cache")],
            ..FilesConfig::default()
        };
        let c = CompiledWatches::build(&cfg, &[], &Anchors::default()).unwrap();
        let scan = IdentityScan::run(&c, 100);
        let mut found: Vec<_> = scan.paths.values().map(|p| p.to_string()).collect();
        found.sort();
        let want: Vec<String> = ["a/b/c/deep", "a/one", "rx.db"]
            .iter()
            .map(|f| phi.join(f).to_string_lossy().into_owned())
            .collect();
        assert_eq!(found, want, "no excluded file, no symlink");
        assert_eq!(scan.files.len(), 3);
        assert_eq!(scan.overflow, 0);
        let bounded = IdentityScan::run(&c, 2);
        assert_eq!((bounded.files.len(), bounded.overflow), (2, 1));
        let (root, entry) = entry_for(&c, &phi.join("a/new")).unwrap();
        assert_eq!(root, phi);
        assert_ne!(entry.ops, 0);
        assert!(entry_for(&c, &phi.join("cache/x")).is_none(), "excluded");
    }

    #[test]
    fn the_root_filesystem_has_a_mount_point_and_mountinfo_escapes_decode() {
        let dev = std::fs::metadata("/").unwrap().dev();
        assert_eq!(mount_point(dev).as_deref(), Some("/"));
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/x\\"), r"/x\\");
    }
}
