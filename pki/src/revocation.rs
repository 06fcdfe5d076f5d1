//! The deny list: serials of revoked certificates, one per line, which the
//! collector reloads while it runs. A file that does not parse is refused
//! and the last good list stays in force.
//!
//! A deny list rather than a CRL: tonic's TLS settings take no CRL, so the
//! collector checks the serial itself when a stream opens and at every
//! message, which also cuts streams that were open before the revocation.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};
use std::time::SystemTime;

use crate::PkiError;

/// First lines of a new deny list.
pub const HEADER: &str = "# rxsentry revoked certificates: one serial (hex) per line, `#` starts a comment.\n\
# `rxsentry-collector pki revoke` appends here; the collector reloads it within seconds.\n";

/// Parses deny-list text into serials (lowercase, leading zeros dropped).
pub fn parse(text: &str) -> Result<HashSet<String>, String> {
    let mut out = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let serial = line.split('#').next().unwrap_or_default().trim();
        if serial.is_empty() {
            continue;
        }
        let normal = normalize(serial)
            .ok_or_else(|| format!("line {}: {serial:?} is not a hex serial", i + 1))?;
        out.insert(normal);
    }
    Ok(out)
}

/// The one spelling of a serial that lists are kept in and looked up by:
/// lowercase hex without leading zero digits. A certificate's serial
/// (`serial_hex`, whole bytes) can start with a zero digit (`0a1b`), an
/// operator can type it either way: both must meet the same entry.
fn normalize(serial: &str) -> Option<String> {
    let lower = serial.to_ascii_lowercase();
    if lower.is_empty() || lower.len() > 64 || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = lower.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0" } else { trimmed }.to_owned())
}

/// Appends `serial` with a note to the deny list at `path`.
pub fn append(path: &Path, serial: &str, note: &str) -> Result<(), PkiError> {
    parse(serial).map_err(|why| PkiError::Invalid {
        path: path.to_owned(),
        why,
    })?;
    let new = !path.exists();
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(PkiError::io(path))?;
    let note: String = note.chars().filter(|c| !c.is_control()).collect();
    let text = format!("{}{serial} # {note}\n", if new { HEADER } else { "" });
    file.write_all(text.as_bytes())
        .map_err(PkiError::io(path))?;
    file.sync_all().map_err(PkiError::io(path))
}

#[derive(Debug, Default)]
struct Loaded {
    serials: HashSet<String>,
    modified: Option<SystemTime>,
    len: u64,
}

/// The deny list in force, reloaded from its file when that changes.
#[derive(Debug, Default)]
pub struct DenyList {
    path: Option<PathBuf>,
    loaded: RwLock<Loaded>,
}

impl DenyList {
    /// No file: nothing is revoked (plaintext loopback mode, tests).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads `path`; a missing file is an empty list (a CA that never revoked).
    pub fn load(path: &Path) -> Result<Self, PkiError> {
        let list = Self {
            path: Some(path.to_owned()),
            loaded: RwLock::default(),
        };
        list.reload()?;
        Ok(list)
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether `serial` (any spelling: case, leading zeros) is revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        let Some(serial) = normalize(serial) else {
            return false;
        };
        self.loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .serials
            .contains(&serial)
    }

    pub fn len(&self) -> usize {
        self.loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .serials
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-reads the file. On error the previous list stays in force.
    pub fn reload(&self) -> Result<usize, PkiError> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        // The stamp is taken before the text is read: a write racing the
        // read then shows as a change at the next poll instead of leaving
        // the new stamp on the old text.
        let (text, meta) = match fs::File::open(path) {
            Ok(mut file) => {
                let meta = file.metadata().ok();
                let mut text = String::new();
                file.read_to_string(&mut text).map_err(PkiError::io(path))?;
                (text, meta)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), None),
            Err(e) => return Err(PkiError::io(path)(e)),
        };
        let serials = parse(&text).map_err(|why| PkiError::Invalid {
            path: path.clone(),
            why,
        })?;
        let count = serials.len();
        *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = Loaded {
            serials,
            modified: meta.as_ref().and_then(|m| m.modified().ok()),
            len: meta.as_ref().map_or(0, |m| m.len()),
        };
        Ok(count)
    }

    /// Reloads when the file's mtime or size changed; `Ok(true)` if it did.
    pub fn reload_if_changed(&self) -> Result<bool, PkiError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let meta = fs::metadata(path).ok();
        let (modified, len) = (
            meta.as_ref().and_then(|m| m.modified().ok()),
            meta.as_ref().map_or(0, |m| m.len()),
        );
        {
            let loaded = self.loaded.read().unwrap_or_else(PoisonError::into_inner);
            if loaded.modified == modified && loaded.len == len {
                return Ok(false);
            }
        }
        self.reload().map(|_| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_normalised_and_garbage_refused() {
        let set = parse("# c\n00AbC1 # note\n\n  ff\n").unwrap();
        assert!(set.contains("abc1") && set.contains("ff") && set.len() == 2);
        assert!(parse("xyz\n").unwrap_err().contains("line 1"));
    }

    #[test]
    fn a_bad_edit_keeps_the_last_good_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.txt");
        append(&path, "0a1b", "test").unwrap();
        let list = DenyList::load(&path).unwrap();
        assert!(list.is_revoked("a1b"));
        assert!(list.is_revoked("0A1B"), "a certificate's own spelling");
        assert!(!list.is_revoked("a1"));
        fs::write(&path, "not hex at all, longer than before\n").unwrap();
        assert!(list.reload_if_changed().is_err());
        assert!(list.is_revoked("a1b"), "last good list stays in force");
    }
}
