//! Appending records: one writer per directory (a lock file), continuing
//! the chain found on disk, rotating by size, fsync before returning.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use crate::chain::{Break, VerifyError, read_chain};
use crate::record::{Entry, GENESIS, Record};
use crate::{file_name, format_utc};

/// Where the log lives and when a file is full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub dir: PathBuf,
    /// A file is closed and the next one started before a record would
    /// take it past this many bytes (a single larger record gets a file of
    /// its own).
    pub max_file_bytes: u64,
}

impl AuditConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_file_bytes: crate::DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// Why the log could not be opened or a record not written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {}: {error}", path.display())]
    Io {
        path: PathBuf,
        /// Not a `source`: the message already says it, once.
        error: std::io::Error,
    },
    #[error(
        "audit log {0} is in use by another process (a second collector with the same --audit-dir?)"
    )]
    Locked(PathBuf),
    #[error(
        "audit chain in {dir} is broken at {brk}. The collector does not append to a chain that does not verify: keep the directory as evidence, inspect it with `rxsentry audit verify {dir}`, then move it aside (or give another --audit-dir) to start a new chain at record 1",
        dir = dir.display()
    )]
    Broken { dir: PathBuf, brk: Break },
    #[error("cannot encode an audit record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(
        "the audit log stopped taking records after a failed write it could not undo ({0}); restart the collector"
    )]
    Poisoned(String),
}

/// Where a record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// The open log. `append` is synchronous (write + fsync); share it behind
/// an `Arc` and call it from a blocking context.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    max_file_bytes: u64,
    /// Index of the current file; 0 before the first.
    index: u32,
    file: Option<File>,
    len: u64,
    next_seq: u64,
    prev: [u8; 32],
    poisoned: Option<String>,
    /// Held (flock) for as long as the log is open.
    _lock: File,
}

impl AuditLog {
    /// Creates `dir` (0700) if needed, takes its lock, verifies the chain
    /// on disk and continues it; a chain that does not verify is refused.
    pub fn open(config: &AuditConfig) -> Result<Self, AuditError> {
        let dir = config.dir.clone();
        let io = |path: &Path| {
            let path = path.to_owned();
            move |error| AuditError::Io { path, error }
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        restrict(&dir, 0o700).map_err(io(&dir))?;
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(AuditError::Locked(dir)),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let chain = read_chain(&dir, |_| {}).map_err(|e| match e {
            VerifyError::Io { path, error } => AuditError::Io { path, error },
            VerifyError::Broken { dir, brk } => AuditError::Broken { dir, brk },
        })?;
        if let Some(brk) = chain.broken {
            return Err(AuditError::Broken { dir, brk });
        }
        let (index, len) = chain.last_file.unwrap_or((0, 0));
        let file = if index > 0 {
            let path = dir.join(file_name(index));
            restrict(&path, 0o600).map_err(io(&path))?;
            Some(open_append(&path, false).map_err(io(&path))?)
        } else {
            None
        };
        let (last_seq, prev) = chain.head.unwrap_or((0, GENESIS));
        Ok(Self {
            dir,
            state: Mutex::new(State {
                max_file_bytes: config.max_file_bytes,
                index,
                file,
                len,
                next_seq: last_seq + 1,
                prev,
                poisoned: None,
                _lock: lock,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last record's sequence number and hash (`0` and zeros when empty).
    pub fn head(&self) -> (u64, [u8; 32]) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (state.next_seq - 1, state.prev)
    }

    /// Appends `entry` as the next record, stamped now, and returns once it
    /// is on disk (fsync). On a failed write the partial line is cut off
    /// again; if even that fails the log refuses every later record.
    pub fn append(&self, entry: Entry) -> Result<Appended, AuditError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = &state.poisoned {
            return Err(AuditError::Poisoned(why.clone()));
        }
        let seq = state.next_seq;
        let record = Record::new(seq, format_utc(SystemTime::now()), &state.prev, entry);
        let (line, hash) = record.encode()?;
        let full = state.len > 0 && state.len + line.len() as u64 > state.max_file_bytes;
        if state.file.is_none() || full {
            let index = state.index + 1;
            let path = self.dir.join(file_name(index));
            let io = |error| AuditError::Io {
                path: path.clone(),
                error,
            };
            let file = open_append(&path, true).map_err(io)?;
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
            state.file = Some(file);
            state.index = index;
            state.len = 0;
        }
        let path = self.dir.join(file_name(state.index));
        let len = state.len;
        let Some(file) = state.file.as_mut() else {
            return Err(AuditError::Poisoned("no open file".into()));
        };
        if let Err(source) = file.write_all(&line).and_then(|()| file.sync_data()) {
            if let Err(undo) = file.set_len(len).and_then(|()| file.sync_data()) {
                state.poisoned = Some(format!("{}: {source}, then {undo}", path.display()));
            }
            return Err(AuditError::Io {
                path,
                error: source,
            });
        }
        state.len += line.len() as u64;
        state.next_seq += 1;
        state.prev = hash;
        Ok(Appended { seq, hash })
    }
}

fn open_append(path: &Path, new: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create_new(new)
        .mode(0o600)
        .open(path)
}

/// Takes group and other permissions away from `path`.
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current & !mode != 0 {
        std::fs::set_permissions(path, Permissions::from_mode(mode))?;
    }
    Ok(())
}
