//! Private bpffs directories for the allowlist's pins (`policy.pin_dir`):
//! each sensor a test starts gets its own unless the test names one, and
//! the pins are removed when the test is done with them, even when it
//! fails, so no verdict program outlives a test.

use std::path::{Path, PathBuf};

/// Where test pin directories go: the host's bpffs.
const BPFFS: &str = "/sys/fs/bpf";
const PREFIX: &str = "rxsentry-test-";

/// A pin directory removed (with every pin in it) on drop.
#[derive(Debug)]
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    /// A fresh name under /sys/fs/bpf (not created: the sensor creates it).
    /// Directories left by test processes that no longer run are removed
    /// first (a test killed before its drop ran).
    pub fn new(tag: &str) -> Self {
        sweep_stale();
        let path = Path::new(BPFFS).join(format!(
            "{PREFIX}{}-{tag}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        Self { path }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes `rxsentry-test-<pid>-*` directories whose process is gone.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(BPFFS) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `text` with a private `pin_dir` in its `[policy]` table when it has one
/// without a `pin_dir`, and that directory's guard.
pub fn with_own_pins(text: &str) -> (String, Option<PinDir>) {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim() == "[policy]") else {
        return (text.to_owned(), None);
    };
    let table = lines[start + 1..]
        .iter()
        .take_while(|l| !l.trim_start().starts_with('['));
    if table.clone().any(|l| l.trim_start().starts_with("pin_dir")) {
        return (text.to_owned(), None);
    }
    let dir = PinDir::new("sensor");
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        out.push_str(line);
        out.push('\n');
        if i == start {
            out.push_str(&format!("pin_dir = {:?}\n", dir.path));
        }
    }
    (out, Some(dir))
}

/// The kernel ids (link, program) of the verdict link pinned in `dir`.
pub fn pinned_verdict(dir: &Path) -> anyhow::Result<Option<(u32, u32)>> {
    let path = dir.join("verdict");
    if !path.exists() {
        return Ok(None);
    }
    let link: aya::programs::links::FdLink =
        aya::programs::links::PinnedLink::from_pin(&path)?.into();
    let info = link.info()?;
    Ok(Some((info.id(), info.program_id())))
}

/// Whether the kernel still has link `link` or program `program`.
pub fn link_or_program_alive(link: u32, program: u32) -> bool {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .any(|l| l.id() == link)
        || aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .any(|p| p.id() == program)
}

/// Waits up to 5 s until link `link` and program `program` are gone (the
/// kernel frees them from deferred work); whether they are.
pub async fn gone(link: u32, program: u32) -> bool {
    for _ in 0..50 {
        if !link_or_program_alive(link, program) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    !link_or_program_alive(link, program)
}
