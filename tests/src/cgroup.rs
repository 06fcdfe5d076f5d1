//! A cgroup v2 directory made for one test, removed on drop. Allowlist tests
//! scope enforcement to it, so the machine running the tests is never under
//! the test policy.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

/// The cgroup2 mount point (hybrid hosts mount it at /sys/fs/cgroup/unified).
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, point, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(point))
        })
        .context("no cgroup2 mount in /proc/mounts")
}

pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    /// An enforcing allowlist policy scoped to this cgroup that allows
    /// `/usr/bin/touch` (by its SHA-256 now) and nothing else.
    pub fn touch_only_policy(&self) -> anyhow::Result<String> {
        Ok(format!(
            "mode = \"enforce\"\nscope_cgroups = [\"{}\"]\n[[allow]]\npath = \"/usr/bin/touch\"\nsha256 = \"{}\"\n",
            self.path.display(),
            crate::exe::sha256_of(Path::new("/usr/bin/touch"))?
        ))
    }

    pub fn new(name: &str) -> anyhow::Result<Self> {
        let path = cgroup2_root()?.join(name);
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path })
    }

    /// A child cgroup `name` of this one (drop it before its parent).
    pub fn child(&self, name: &str) -> anyhow::Result<Self> {
        let path = self.path.join(name);
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path })
    }

    /// Takes over the removal of `path`, a cgroup a process under test may
    /// create (nothing happens on drop if it never did).
    pub fn adopt(path: PathBuf) -> Self {
        Self { path }
    }

    /// `program args...` started inside this cgroup (it moves itself in
    /// between fork and exec, so the exec is the cgroup's).
    pub fn command(&self, program: impl AsRef<Path>) -> Command {
        let procs = self.path.join("cgroup.procs");
        let mut cmd = Command::new(program.as_ref());
        // SAFETY: only async-signal-safe work between fork and exec: open,
        // write, close through std's thin wrappers.
        unsafe {
            cmd.pre_exec(move || std::fs::write(&procs, b"0"));
        }
        cmd
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if !self.path.exists() {
            return;
        }
        // Children have exited by now; rmdir fails only if one lingers.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("could not remove test cgroup {}", self.path.display());
    }
}
