//! Network namespaces, veth pairs and a private bpffs made for one test,
//! all removed on drop (deleting a namespace deletes its veths; unmounting
//! the bpffs drops every pin in it). Names carry a random suffix so runs
//! never collide, and nothing touches the host's own interfaces.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// One end of a veth pair: its namespace, name and addresses.
pub struct End<'a> {
    pub ns: &'a Netns,
    pub name: &'a str,
    pub v4: &'a str,
    pub v6: &'a str,
}

/// Creates a veth pair between two namespaces, addresses both ends (IPv6
/// without duplicate address detection, so it is usable at once) and
/// brings them up.
pub fn veth(a: &End<'_>, b: &End<'_>) -> anyhow::Result<()> {
    ip(&[
        "link", "add", a.name, "netns", &a.ns.name, "type", "veth", "peer", "name", b.name,
        "netns", &b.ns.name,
    ])?;
    for end in [a, b] {
        let ns = end.ns.name.as_str();
        ip(&["-n", ns, "addr", "add", end.v4, "dev", end.name])?;
        ip(&["-n", ns, "addr", "add", end.v6, "dev", end.name, "nodad"])?;
        ip(&["-n", ns, "link", "set", end.name, "up"])?;
    }
    Ok(())
}

/// A bpf filesystem mounted on a temporary directory, unmounted on drop.
pub struct Bpffs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bpffs {
    pub fn mount() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().to_owned();
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&path)
            .status()?;
        if !status.success() {
            bail!("mount -t bpf bpf {} failed: {status}", path.display());
        }
        Ok(Self { path, _dir: dir })
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
