//! Reading an audit directory back and checking its chain: each record
//! whole (its hash), in sequence, linked to the one before, across files.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::record::{LineError, Record, decode, hex};
use crate::{GENESIS, file_index, file_name};

/// A record that verified, with where it is.
#[derive(Debug, Clone)]
pub struct Located<'a> {
    pub file: &'a str,
    /// 1-based line number in `file`.
    pub line: u64,
    pub record: &'a Record,
    pub hash: [u8; 32],
}

/// The first place the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The file name (relative to the directory).
    pub file: String,
    /// 1-based line; 0 when the whole file is concerned.
    pub line: u64,
    /// The sequence number due there.
    pub expected_seq: u64,
    pub kind: BreakKind,
}

/// What is wrong at a [`Break`], named for what probably happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakKind {
    /// The file that should come next is not there (deleted).
    MissingFile { next_present: String },
    /// A file without records before the last file (emptied).
    EmptyFile,
    /// The last line has no newline: cut short (truncated, or a write that
    /// never finished).
    Truncated,
    /// Not a line of the format (no `,"hash":"..."}` ending).
    NoHash,
    /// The content does not match its own hash: the record was edited.
    Altered,
    /// Hashes right but is not a valid record.
    NotARecord(String),
    /// A valid record but not in the writer's encoding (rewritten).
    NotCanonical,
    /// Records `first..=last` are not there (deleted).
    Deleted { first: u64, last: u64 },
    /// Record `found` stands where `expected_seq` is due, and that one
    /// comes later, at `due_at_line`: records were swapped or moved.
    OutOfOrder { found: u64, due_at_line: u64 },
    /// Record `found` again or earlier where a later one is due: a record
    /// was inserted (or copied) here.
    Inserted { found: u64 },
    /// Right number, but `prev` is not the previous record's hash: this
    /// record was replaced, or one was inserted before it, with hashes
    /// recomputed.
    Unlinked,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = self.expected_seq;
        match &self.kind {
            BreakKind::MissingFile { next_present } => write!(
                f,
                "{}: file missing (deleted?): record {seq} was due in it, the next file present is {next_present}",
                self.file
            ),
            BreakKind::EmptyFile => write!(
                f,
                "{}: empty, but not the last file: its records were removed (record {seq} was due)",
                self.file
            ),
            other => {
                write!(f, "{} line {} (record {seq} due): ", self.file, self.line)?;
                match other {
                    BreakKind::Truncated => {
                        f.write_str("truncated: the last line has no end (cut short)")
                    }
                    BreakKind::NoHash => f.write_str("not an audit record (no hash at its end)"),
                    BreakKind::Altered => f.write_str(
                        "edited: the content does not match the record's hash",
                    ),
                    BreakKind::NotARecord(why) => write!(f, "not a valid record: {why}"),
                    BreakKind::NotCanonical => f.write_str(
                        "rewritten: a valid record, but not in the form the collector writes",
                    ),
                    BreakKind::Deleted { first, last } if first == last => {
                        write!(f, "record {first} deleted (record {} follows {})", last + 1, first.saturating_sub(1))
                    }
                    BreakKind::Deleted { first, last } => {
                        write!(f, "records {first} to {last} deleted")
                    }
                    BreakKind::OutOfOrder { found, due_at_line } => write!(
                        f,
                        "out of order: record {found} stands here and record {seq} comes later, at line {due_at_line} (swapped or moved)"
                    ),
                    BreakKind::Inserted { found } => write!(
                        f,
                        "inserted: a record numbered {found} stands where record {seq} is due"
                    ),
                    BreakKind::Unlinked => f.write_str(
                        "does not chain to the record before it (prev is not that record's hash): replaced, or inserted with recomputed hashes",
                    ),
                    BreakKind::MissingFile { .. } | BreakKind::EmptyFile => Ok(()),
                }
            }
        }
    }
}

/// The result of reading a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// The audit files read, in order.
    pub files: Vec<String>,
    /// Records that verified (all of them when `broken` is `None`).
    pub records: u64,
    /// The last verified record's sequence number and hash.
    pub head: Option<(u64, [u8; 32])>,
    /// The first break, if any; nothing after it was checked.
    pub broken: Option<Break>,
    /// The last audit file's index and length in bytes.
    pub last_file: Option<(u32, u64)>,
}

impl Chain {
    /// `head: record N sha256 <hex>` or `head: none (empty log)`.
    pub fn head_line(&self) -> String {
        match self.head {
            Some((seq, hash)) => format!("head: record {seq} sha256 {}", hex(&hash)),
            None => "head: none (no records yet)".to_owned(),
        }
    }
}

/// Why a directory could not be checked, or did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read the audit directory {}: {error}", path.display())]
    Io {
        path: PathBuf,
        /// Not a `source`: the message already says it, once.
        error: std::io::Error,
    },
    #[error("audit chain in {dir} is broken at {brk}")]
    Broken { dir: PathBuf, brk: Break },
}

/// Checks the whole chain in `dir`; `Err(Broken)` names the first break.
pub fn verify(dir: &Path) -> Result<Chain, VerifyError> {
    let chain = read_chain(dir, |_| {})?;
    match chain.broken.clone() {
        Some(brk) => Err(VerifyError::Broken {
            dir: dir.to_owned(),
            brk,
        }),
        None => Ok(chain),
    }
}

/// Reads `dir` in order, calling `visit` for each record that verifies,
/// up to the first break (recorded in [`Chain::broken`]).
pub fn read_chain(dir: &Path, mut visit: impl FnMut(&Located)) -> Result<Chain, VerifyError> {
    let io = |source| VerifyError::Io {
        path: dir.to_owned(),
        error: source,
    };
    let mut files: Vec<(u32, String)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        if let Some(name) = name.to_str()
            && let Some(index) = file_index(name)
        {
            files.push((index, name.to_owned()));
        }
    }
    files.sort();
    let mut chain = Chain::default();
    let mut prev = GENESIS;
    let mut seq = 1u64;
    let count = files.len();
    for (n, (index, name)) in files.into_iter().enumerate() {
        let due = u32::try_from(n + 1).unwrap_or(u32::MAX);
        let broken = |line, seq, kind| Break {
            file: name.clone(),
            line,
            expected_seq: seq,
            kind,
        };
        if index != due {
            chain.broken = Some(Break {
                file: file_name(due),
                line: 0,
                expected_seq: seq,
                kind: BreakKind::MissingFile {
                    next_present: name.clone(),
                },
            });
            return Ok(chain);
        }
        let path = dir.join(&name);
        let bytes = std::fs::read(&path).map_err(|error| VerifyError::Io { path, error })?;
        chain.files.push(name.clone());
        chain.last_file = Some((index, bytes.len() as u64));
        if bytes.is_empty() && n + 1 < count {
            chain.broken = Some(broken(0, seq, BreakKind::EmptyFile));
            return Ok(chain);
        }
        let lines = split_lines(&bytes);
        for (i, &(line, complete)) in lines.iter().enumerate() {
            let line_no = i as u64 + 1;
            let checked = if complete {
                decode(line).map_err(|e| match e {
                    LineError::NoHash => BreakKind::NoHash,
                    LineError::HashMismatch => BreakKind::Altered,
                    LineError::NotARecord(why) => BreakKind::NotARecord(why),
                    LineError::NotCanonical => BreakKind::NotCanonical,
                })
            } else {
                Err(BreakKind::Truncated)
            };
            let (record, hash) = match checked {
                Ok(ok) => ok,
                Err(kind) => {
                    chain.broken = Some(broken(line_no, seq, kind));
                    return Ok(chain);
                }
            };
            if record.seq != seq {
                let kind = out_of_sequence(seq, record.seq, &lines[i + 1..], line_no);
                chain.broken = Some(broken(line_no, seq, kind));
                return Ok(chain);
            }
            if record.prev != hex(&prev) {
                chain.broken = Some(broken(line_no, seq, BreakKind::Unlinked));
                return Ok(chain);
            }
            visit(&Located {
                file: &name,
                line: line_no,
                record: &record,
                hash,
            });
            chain.records += 1;
            chain.head = Some((seq, hash));
            prev = hash;
            seq += 1;
        }
    }
    Ok(chain)
}

/// The lines of a file without their `\n`, each with whether it had one.
fn split_lines(bytes: &[u8]) -> Vec<(&[u8], bool)> {
    let mut out: Vec<(&[u8], bool)> = bytes.split(|&b| b == b'\n').map(|l| (l, true)).collect();
    // `split` yields one piece after the last `\n`: empty for a complete file.
    match out.pop() {
        Some((tail, _)) if !tail.is_empty() => out.push((tail, false)),
        _ => {}
    }
    out
}

/// Names a sequence break: `found` stands where `expected` is due; `rest`
/// are the lines after it in the same file.
fn out_of_sequence(expected: u64, found: u64, rest: &[(&[u8], bool)], line_no: u64) -> BreakKind {
    if found < expected {
        return BreakKind::Inserted { found };
    }
    let later = rest.iter().position(|&(line, complete)| {
        complete && decode(line).is_ok_and(|(r, _)| r.seq == expected)
    });
    match later {
        Some(k) => BreakKind::OutOfOrder {
            found,
            due_at_line: line_no + 1 + k as u64,
        },
        None => BreakKind::Deleted {
            first: expected,
            last: found - 1,
        },
    }
}
