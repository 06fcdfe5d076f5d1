//! Mounts a test makes (tmpfs, overlays), undone even when it fails.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Mounts made by the test, undone in reverse order even when it fails.
#[derive(Default)]
pub struct Mounts(Vec<PathBuf>);

impl Mounts {
    /// `mount ARGS TARGET`, TARGET made first.
    pub fn mount(&mut self, args: &[&str], target: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(target)?;
        let status = Command::new("mount").args(args).arg(target).status()?;
        anyhow::ensure!(
            status.success(),
            "mount {args:?} {}: {status}",
            target.display()
        );
        self.0.push(target.to_owned());
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for target in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(target).status();
        }
    }
}
