//! Files a test writes and then executes, written by a subprocess.
//!
//! A file this process writes is open for writing while any other thread
//! may fork: the child inherits the writable fd and holds it until it
//! execs (or exits), and an exec of the file in that window fails with
//! ETXTBSY ("Text file busy"). So this process never opens a file it will
//! exec for writing: `install` (a child of its own, whose fds no other
//! child inherits) creates it under a temporary name in the same folder,
//! and a rename, which opens nothing, puts it in place. The temporary name
//! keeps the final name out of `install`'s command line, where an exec
//! event would show it.

use std::{
    ffi::OsString,
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Creates `dest` (mode 0755, a new inode) with the content of `src`.
pub fn copy_executable(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let dir = dest.parent().context("destination has no folder")?;
    let tmp = dir.join(format!(".install-{:016x}", rand::random::<u64>()));
    run(Command::new("install")
        .arg("-m")
        .arg("755")
        .arg(src)
        .arg(&tmp))?;
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
}

/// Creates `dest` (mode 0755, a new inode) holding `content`, e.g. a script.
pub fn write_executable(dest: &Path, content: impl AsRef<[u8]>) -> anyhow::Result<()> {
    // Never executed: this process may hold it open for writing.
    let mut src = tempfile::NamedTempFile::new()?;
    src.write_all(content.as_ref())?;
    src.flush()?;
    copy_executable(src.path(), dest)
}

/// Appends `bytes` to `path` in place (same inode: new size, mtime and
/// ctime), through `dd`.
pub fn append_to_executable(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    dd_into(path, &["oflag=append", "conv=notrunc"], bytes)
}

/// Replaces the content of `path` with `bytes` in place (same inode:
/// truncated and rewritten, new ctime), through `dd`.
pub fn overwrite_executable(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    dd_into(path, &[], bytes)
}

/// Writes `bytes` to `path` through `dd` with `flags`.
fn dd_into(path: &Path, flags: &[&str], bytes: &[u8]) -> anyhow::Result<()> {
    let mut child = Command::new("dd")
        .arg(of_arg(path))
        .args(flags)
        .arg("status=none")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting dd")?;
    // Dropped at the end of the statement: dd sees EOF.
    child.stdin.take().context("dd stdin")?.write_all(bytes)?;
    check("dd", child.wait_with_output()?)
}

fn of_arg(path: &Path) -> OsString {
    let mut arg = OsString::from("of=");
    arg.push(path);
    arg
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().with_context(|| format!("starting {name}"))?;
    check(&name, out)
}

fn check(name: &str, out: std::process::Output) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!(
            "{name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Hex SHA-256 of the file at `path`, as the sensor reports it.
pub fn sha256_of(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest as _;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", sha2::Sha256::digest(&bytes)))
}
