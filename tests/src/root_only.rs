//! Scratch folders that only root may write, up to `/`: a `[[trusted_root]]`
//! must live in one (the sensor refuses a policy whose trusted root has a
//! group- or world-writable directory above it, /tmp included). Made under
//! /run (root's, 0755, on every systemd host), never under the checkout,
//! which may itself be under /tmp.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::{Context as _, bail};

/// Where the folders are made.
const PARENT: &str = "/run";

/// A new 0755 folder under [`PARENT`], removed when the guard drops. Fails,
/// naming it, if a directory above it is not root's alone.
pub fn root_only_tempdir() -> anyhow::Result<tempfile::TempDir> {
    for dir in Path::new(PARENT).ancestors() {
        let meta = std::fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            bail!(
                "{} is not root's alone (uid {}, mode {:o}): no root-only scratch folder here",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            );
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("rxsentry-test-")
        .tempdir_in(PARENT)
        .with_context(|| format!("a folder in {PARENT}"))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}
