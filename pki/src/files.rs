//! Files that hold secrets (private keys, tokens) are written 0600 and read
//! only when nobody else can read them, as ssh does with its keys.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::PkiError;

/// Writes `bytes` to `path` with `mode`, replacing it atomically (a reader
/// never sees half a key; a crash leaves the old file or the new one).
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(PkiError::io(&tmp))?;
    // The umask may have narrowed the mode; a secret must not be wider.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(PkiError::io(&tmp))?;
    file.write_all(bytes).map_err(PkiError::io(&tmp))?;
    file.sync_all().map_err(PkiError::io(&tmp))?;
    fs::rename(&tmp, path).map_err(PkiError::io(path))?;
    Ok(())
}

/// Writes a secret: mode 0600.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_file(path, bytes, 0o600)
}

/// Reads a file holding a secret, refusing one that group or others can read.
pub fn read_secret(path: &Path) -> Result<String, PkiError> {
    let meta = fs::metadata(path).map_err(PkiError::io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::SecretTooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    fs::read_to_string(path).map_err(PkiError::io(path))
}

/// Reads a public file (a certificate).
pub fn read_public(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(PkiError::io(path))
}

/// Creates `dir` (and parents) as 0700 when missing.
pub fn private_dir(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(PkiError::io(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(PkiError::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_private_and_open_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_secret(&path, b"key").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_secret(&path).unwrap(), "key");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_secret(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
