//! `rxsentry-probe --hold-open-hook`: the open exit tracepoint with a
//! program that only counts its runs, held while a [`HeldOpenHook`] lives.
//! The probe test checks it; `cargo xtask bench` times storms under it.

use std::{
    io::{BufRead as _, BufReader, Lines, Write as _},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The running probe; killed on drop if not stopped.
pub struct HeldOpenHook {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    attached: String,
}

impl HeldOpenHook {
    /// Starts `probe` and waits until it says the hook is attached.
    pub fn start(probe: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(probe)
            .arg("--hold-open-hook")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} --hold-open-hook", probe.display()))?;
        let lines = BufReader::new(child.stdout.take().context("probe stdout")?).lines();
        // From here `hook` kills the child if anything below fails.
        let mut hook = Self {
            child,
            lines,
            attached: String::new(),
        };
        match hook.lines.next() {
            Some(Ok(line)) if line.starts_with("open-hook: attached") => hook.attached = line,
            other => bail!("rxsentry-probe did not attach the open hook: {other:?}"),
        }
        Ok(hook)
    }

    /// The probe's first line: what it attached, and where.
    pub fn attached(&self) -> &str {
        &self.attached
    }

    /// Detaches the hook; how often it ran. An error unless the probe
    /// reports a count and exits 0.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        let mut stdin = self.child.stdin.take().context("probe stdin")?;
        writeln!(stdin)?;
        let line = self.lines.next().context("probe output ended")??;
        let runs = line
            .strip_prefix("open-hook: ran ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected probe output: {line}"))?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("rxsentry-probe --hold-open-hook exited with {status}");
        }
        Ok(runs)
    }
}

impl Drop for HeldOpenHook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
