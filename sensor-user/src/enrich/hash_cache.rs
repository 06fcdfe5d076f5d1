//! SHA-256 of executed files, read once per file version.
//!
//! The cache key is (device, inode, mtime, ctime, size) taken with fstat on the
//! descriptor that is then read, so key and content come from the same open
//! file: a path swapped between the two cannot poison the cache. For an exec,
//! `/proc/<tgid>/exe` is opened first because it is the very file the kernel
//! executed, even if it was renamed or unlinked since; the path the kernel
//! saw is the fallback (the process may already be gone). When the kernel
//! reported the executed file's (device, inode), a file that does not match
//! is never hashed in its place.

use std::{
    collections::{HashMap, VecDeque},
    fs::{File, Metadata},
    io::Read,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use crate::events::ExecRecord;

/// One version of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub device: u64,
    pub inode: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    /// A write moves ctime even when mtime and size are put back
    /// (`touch -d`), and ctime cannot be set from user space.
    pub ctime_sec: i64,
    pub ctime_nsec: i64,
    pub size: u64,
}

impl FileKey {
    /// The key of the open `file`, whose fstat is `meta`; the device is the
    /// one the kernel reports (they differ on some overlays).
    fn of(file: &File, meta: &Metadata) -> Self {
        Self {
            device: crate::events::device::kernel_device(file, meta),
            inode: meta.ino(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ctime_sec: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
            size: meta.size(),
        }
    }
}

/// Why a file was not hashed; the text goes into `ExecEvent.hash_error`.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path} is {size} bytes, more than hashing.max_file_bytes ({max})")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error(
        "file replaced since exec: the kernel ran device {want_device:#x} inode {want_inode}, \
         {path} is device {device:#x} inode {inode}"
    )]
    Replaced {
        path: PathBuf,
        want_device: u64,
        want_inode: u64,
        device: u64,
        inode: u64,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} changed while it was being hashed")]
    ChangedWhileHashing { path: PathBuf },
    #[error("no path to read: the process is gone and the kernel gave no usable filename")]
    NoPath,
}

impl HashError {
    /// Whether another path may still lead to the executed file.
    fn try_next_source(&self) -> bool {
        matches!(self, Self::Open { .. } | Self::Replaced { .. })
    }
}

/// Cache counters, running totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// Exec events that got a hash_error.
    pub errors: u64,
    pub entries: usize,
}

/// Result for one exec: exactly one of the two is non-empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecHash {
    /// Lowercase hex SHA-256.
    pub sha256: String,
    pub error: String,
}

/// Bounded map from file version to its hash, first-in first-out.
#[derive(Debug)]
pub struct HashCache {
    map: HashMap<FileKey, String>,
    order: VecDeque<FileKey>,
    capacity: usize,
    max_file_bytes: u64,
    stats: HashStats,
}

impl HashCache {
    /// `capacity` is raised to 1 if 0.
    pub fn new(capacity: usize, max_file_bytes: u64) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            max_file_bytes,
            stats: HashStats::default(),
        }
    }

    pub fn stats(&self) -> HashStats {
        HashStats {
            entries: self.map.len(),
            ..self.stats
        }
    }

    /// Hash of the file an exec ran. Blocking I/O: call it off the reactor.
    pub fn hash_exec(&mut self, exec: &ExecRecord) -> ExecHash {
        let expect = (exec.device != 0 && exec.inode != 0).then_some((exec.device, exec.inode));
        // The kernel read the full key from the executed inode: a known
        // binary costs no syscall at all (exec storms stay cheap).
        if expect.is_some() && !exec.partial {
            let key = FileKey {
                device: exec.device,
                inode: exec.inode,
                mtime_sec: exec.mtime_sec,
                mtime_nsec: i64::from(exec.mtime_nsec),
                ctime_sec: exec.ctime_sec,
                ctime_nsec: i64::from(exec.ctime_nsec),
                size: exec.size,
            };
            if let Some(hex) = self.map.get(&key) {
                self.stats.hits += 1;
                return ExecHash {
                    sha256: hex.clone(),
                    error: String::new(),
                };
            }
        }
        let mut sources = vec![PathBuf::from(format!("/proc/{}/exe", exec.task.tgid))];
        if !exec.filename.is_empty() && !exec.filename_truncated {
            let name = Path::new(&exec.filename);
            sources.push(if name.is_absolute() {
                name.to_owned()
            } else {
                // Relative to the process's working directory, not ours.
                Path::new(&format!("/proc/{}/cwd", exec.task.tgid)).join(name)
            });
        }
        let mut errors = Vec::new();
        for path in sources {
            match self.hash_path(&path, expect) {
                Ok(sha256) => {
                    return ExecHash {
                        sha256,
                        error: String::new(),
                    };
                }
                Err(e) => {
                    let next = e.try_next_source();
                    errors.push(e.to_string());
                    if !next {
                        break;
                    }
                }
            }
        }
        if errors.is_empty() {
            errors.push(HashError::NoPath.to_string());
        }
        self.stats.errors += 1;
        ExecHash {
            sha256: String::new(),
            error: errors.join("; "),
        }
    }

    /// Opens `path` and hashes it, checking it is `expect` (device, inode)
    /// when given.
    pub fn hash_path(
        &mut self,
        path: &Path,
        expect: Option<(u64, u64)>,
    ) -> Result<String, HashError> {
        // Non-blocking open: a path swapped for a FIFO must not hang us.
        let file = File::options()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits() | nix::fcntl::OFlag::O_NOCTTY.bits())
            .open(path)
            .map_err(|source| HashError::Open {
                path: path.to_owned(),
                source,
            })?;
        self.hash_file(file, path, expect)
    }

    /// Hashes an open file; `path` is only used in messages.
    pub fn hash_file(
        &mut self,
        mut file: File,
        path: &Path,
        expect: Option<(u64, u64)>,
    ) -> Result<String, HashError> {
        let read_err = |source| HashError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = file.metadata().map_err(read_err)?;
        let key = FileKey::of(&file, &meta);
        if let Some((want_device, want_inode)) = expect
            && (key.device, key.inode) != (want_device, want_inode)
        {
            return Err(HashError::Replaced {
                path: path.to_owned(),
                want_device,
                want_inode,
                device: key.device,
                inode: key.inode,
            });
        }
        if !meta.is_file() {
            return Err(HashError::NotRegular {
                path: path.to_owned(),
            });
        }
        if key.size > self.max_file_bytes {
            return Err(HashError::TooLarge {
                path: path.to_owned(),
                size: key.size,
                max: self.max_file_bytes,
            });
        }
        if let Some(hex) = self.map.get(&key) {
            self.stats.hits += 1;
            return Ok(hex.clone());
        }
        self.stats.misses += 1;
        let (hex, total) = sha256_hex(&mut file, self.max_file_bytes).map_err(read_err)?;
        let after = file.metadata().map_err(read_err)?;
        if total != key.size || FileKey::of(&file, &after) != key {
            return Err(HashError::ChangedWhileHashing {
                path: path.to_owned(),
            });
        }
        self.insert(key, hex.clone());
        Ok(hex)
    }

    fn insert(&mut self, key: FileKey, hex: String) {
        while self.map.len() >= self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.map.remove(&old).is_some() {
                self.stats.evictions += 1;
            }
        }
        self.order.push_back(key);
        self.map.insert(key, hex);
    }
}

/// Hex SHA-256 of at most `limit + 1` bytes of `reader`, and how many bytes
/// were read (more than `limit` means the file grew past it).
pub fn sha256_hex(reader: &mut impl Read, limit: u64) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut limited = reader.take(limit.saturating_add(1));
    loop {
        let n = match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    // The digest's LowerHex: lowercase hex, two digits a byte.
    Ok((format!("{:x}", hasher.finalize()), total))
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        os::unix::fs::MetadataExt,
        time::{Duration, SystemTime},
    };

    use super::*;
    use crate::events::TaskIdentity;

    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    /// Above any pid_max: /proc/<it>/exe never exists.
    const GONE_PID: u32 = 0x7fff_fff0;

    fn exec_of(path: &Path, tgid: u32, identity: Option<(u64, u64)>) -> ExecRecord {
        let (device, inode) = identity.unwrap_or_default();
        ExecRecord {
            timestamp_ns: 1,
            task: TaskIdentity {
                tgid,
                ..Default::default()
            },
            filename: path.to_string_lossy().into_owned(),
            argv: vec![],
            argv_truncated: false,
            filename_truncated: false,
            device,
            inode,
            size: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            ctime_sec: 0,
            ctime_nsec: 0,
            partial: false,
        }
    }

    #[test]
    fn kernel_key_hits_the_cache_without_opening_anything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tool");
        std::fs::write(&path, b"abc").expect("write");
        let meta = std::fs::metadata(&path).expect("stat");
        let mut cache = HashCache::new(16, 1 << 20);
        let first = cache.hash_exec(&exec_of(&path, GONE_PID, Some(identity(&path))));
        assert_eq!(cache.stats().misses, 1);
        // The file is gone, but the kernel's key names the cached content.
        std::fs::remove_file(&path).expect("rm");
        let mut exec = exec_of(&path, GONE_PID, Some((meta.dev(), meta.ino())));
        exec.size = meta.size();
        exec.mtime_sec = meta.mtime();
        exec.mtime_nsec = meta.mtime_nsec() as u32;
        exec.ctime_sec = meta.ctime();
        exec.ctime_nsec = meta.ctime_nsec() as u32;
        let second = cache.hash_exec(&exec);
        assert_eq!(second.sha256, first.sha256);
        assert_eq!(cache.stats().hits, 1);
        // A different mtime is a different key: no stale hit.
        exec.mtime_nsec += 1;
        assert!(cache.hash_exec(&exec).sha256.is_empty());
        // So is a different ctime with mtime and size as they were (a write
        // followed by `touch -d`).
        exec.mtime_nsec -= 1;
        exec.ctime_nsec += 1;
        assert!(cache.hash_exec(&exec).sha256.is_empty());
    }

    fn identity(path: &Path) -> (u64, u64) {
        let m = std::fs::metadata(path).expect("stat");
        (m.dev(), m.ino())
    }

    #[test]
    fn known_digests_and_cache_hit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").expect("write");
        let mut cache = HashCache::new(8, 1 << 20);
        assert_eq!(cache.hash_path(&path, None).expect("hash"), ABC_SHA256);
        assert_eq!(cache.stats().misses, 1);
        assert_eq!(cache.hash_path(&path, None).expect("hash"), ABC_SHA256);
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").expect("write");
        assert_eq!(cache.hash_path(&empty, None).expect("hash"), EMPTY_SHA256);
    }

    #[test]
    fn rewritten_file_is_hashed_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tool");
        std::fs::write(&path, b"abc").expect("write");
        let mut cache = HashCache::new(8, 1 << 20);
        assert_eq!(cache.hash_path(&path, None).expect("hash"), ABC_SHA256);
        let mut f = File::options()
            .write(true)
            .truncate(true)
            .open(&path)
            .expect("open");
        f.write_all(b"xyz").expect("write");
        f.set_modified(SystemTime::now() + Duration::from_secs(5))
            .expect("mtime");
        drop(f);
        let new = cache.hash_path(&path, None).expect("hash");
        assert_eq!(new, format!("{:x}", Sha256::digest(b"xyz")));
        assert_ne!(new, ABC_SHA256);
        assert_eq!((cache.stats().hits, cache.stats().misses), (0, 2));
    }

    #[test]
    fn oversized_file_gets_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        std::fs::write(&path, [7u8; 11]).expect("write");
        let mut cache = HashCache::new(8, 10);
        let err = cache.hash_path(&path, None).expect_err("too large");
        assert!(
            matches!(
                err,
                HashError::TooLarge {
                    size: 11,
                    max: 10,
                    ..
                }
            ),
            "{err}"
        );
        let exec = cache.hash_exec(&exec_of(&path, GONE_PID, None));
        assert!(exec.sha256.is_empty());
        assert!(exec.error.contains("max_file_bytes"), "{}", exec.error);
        assert_eq!(cache.stats().errors, 1);
        std::fs::write(&path, [7u8; 10]).expect("write");
        assert!(
            cache.hash_path(&path, None).is_ok(),
            "exactly the limit is hashed"
        );
    }

    #[test]
    fn exec_falls_back_to_the_filename_when_the_process_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prog");
        std::fs::write(&path, b"abc").expect("write");
        let mut cache = HashCache::new(8, 1 << 20);
        let got = cache.hash_exec(&exec_of(&path, GONE_PID, Some(identity(&path))));
        assert_eq!((got.sha256.as_str(), got.error.as_str()), (ABC_SHA256, ""));
    }

    #[test]
    fn exec_skips_a_proc_exe_that_is_not_the_kernel_file() {
        // /proc/<this test>/exe is the test binary, not the file the
        // "kernel" reported: the identity check moves on to the filename.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prog");
        std::fs::write(&path, b"abc").expect("write");
        let mut cache = HashCache::new(8, 1 << 20);
        let got = cache.hash_exec(&exec_of(&path, std::process::id(), Some(identity(&path))));
        assert_eq!(got.sha256, ABC_SHA256, "{}", got.error);
    }

    #[test]
    fn exec_prefers_proc_exe_over_the_filename() {
        // Without a kernel identity, /proc/<pid>/exe wins: it is the file
        // the process runs, whatever the path now holds.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("decoy");
        std::fs::write(&path, b"abc").expect("write");
        let mut cache = HashCache::new(8, 1 << 30);
        let got = cache.hash_exec(&exec_of(&path, std::process::id(), None));
        let own = cache
            .hash_path(Path::new("/proc/self/exe"), None)
            .expect("own exe");
        assert_eq!(got.sha256, own);
        assert_ne!(got.sha256, ABC_SHA256);
    }

    #[test]
    fn replaced_file_is_reported_not_hashed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prog");
        std::fs::write(&path, b"abc").expect("write");
        let executed = identity(&path);
        let swap = dir.path().join("swap");
        std::fs::write(&swap, b"evil").expect("write");
        std::fs::rename(&swap, &path).expect("rename");
        let mut cache = HashCache::new(8, 1 << 20);
        let got = cache.hash_exec(&exec_of(&path, GONE_PID, Some(executed)));
        assert!(got.sha256.is_empty());
        assert!(
            got.error.contains("file replaced since exec"),
            "{}",
            got.error
        );
        assert_eq!(cache.stats().misses, 0, "the impostor was never read");
    }

    #[test]
    fn missing_file_and_non_regular_file_give_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cache = HashCache::new(8, 1 << 20);
        let got = cache.hash_exec(&exec_of(&dir.path().join("nope"), GONE_PID, None));
        assert!(
            got.sha256.is_empty() && got.error.contains("cannot open"),
            "{}",
            got.error
        );
        let got = cache.hash_exec(&exec_of(dir.path(), GONE_PID, None));
        assert!(got.error.contains("not a regular file"), "{}", got.error);
        let mut nameless = exec_of(Path::new(""), GONE_PID, None);
        nameless.filename.clear();
        let got = cache.hash_exec(&nameless);
        assert!(!got.error.is_empty() && got.sha256.is_empty());
    }

    #[test]
    fn cache_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cache = HashCache::new(2, 1 << 20);
        let paths: Vec<_> = (0..3)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, format!("content {i}")).expect("write");
                p
            })
            .collect();
        for p in &paths {
            cache.hash_path(p, None).expect("hash");
        }
        let s = cache.stats();
        assert_eq!((s.entries, s.evictions, s.misses), (2, 1, 3));
        cache.hash_path(&paths[0], None).expect("hash");
        assert_eq!(cache.stats().misses, 4, "the evicted file is read again");
        cache.hash_path(&paths[2], None).expect("hash");
        assert_eq!(cache.stats().hits, 1);
    }
}
