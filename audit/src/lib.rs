//! The collector's audit log: every analyst action (isolate, release,
//! subscribe, refused attempts) as one hash-chained record per line, in
//! size-rotated files; and the verifier that `rxsentry audit verify` and
//! the tests use.
//!
//! # Format
//! A directory of `audit-00000001.jsonl`, `audit-00000002.jsonl`, ...; each
//! line one record, a JSON object whose fields are, in this order:
//! `seq, time, operator, peer, action, host, args, outcome, detail, prev,
//! hash`. `hash` is the SHA-256 of the line's bytes up to `,"hash"` with a
//! closing `}` (the "body"), `prev` the `hash` of the record before
//! (64 zeros for record 1). The body is the serde_json encoding of the
//! record, and a record must re-encode to exactly its body, so there is one
//! byte string per record: the hash is over the stored bytes, never over a
//! re-serialisation that could differ. A new file's first record carries
//! the hash of the previous file's last record, so the chain runs across
//! files. See docs/audit.md.

mod chain;
mod record;
mod time;
mod writer;

pub use chain::{Break, BreakKind, Chain, Located, VerifyError, read_chain, verify};
pub use record::{ArgValue, Entry, GENESIS, Outcome, Record, hex};
pub use time::{format_utc, parse_utc_ms};
pub use writer::{Appended, AuditConfig, AuditError, AuditLog};

/// Where the collector keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rxsentry-collector";
/// The audit directory below the state directory.
pub const AUDIT_SUBDIR: &str = "audit";
/// `DEFAULT_STATE_DIR/AUDIT_SUBDIR`, where `rxsentry audit` looks by default.
pub const DEFAULT_DIR: &str = "/var/lib/rxsentry-collector/audit";
/// Default size at which a file is closed and the next one started.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// `audit-00000042.jsonl` for index 42.
pub fn file_name(index: u32) -> String {
    format!("audit-{index:08}.jsonl")
}

/// The index of an audit file name, `None` for any other name.
pub fn file_index(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_dir_is_state_dir_audit() {
        let joined = std::path::Path::new(super::DEFAULT_STATE_DIR).join(super::AUDIT_SUBDIR);
        assert_eq!(joined, std::path::Path::new(super::DEFAULT_DIR));
        assert_eq!(super::file_index(&super::file_name(42)), Some(42));
        assert_eq!(super::file_index("audit-1.jsonl"), None);
    }
}
