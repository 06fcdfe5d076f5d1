//! Child processes under test, killed on drop.

use std::{io::Write as _, path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

/// Where the release binaries are: `RXSENTRY_BIN_DIR` (set by `cargo xtask
/// test`), else `target/release` of this workspace.
pub fn bin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("RXSENTRY_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release"))
        });
    dir.join(name)
}

/// Waits for a line on the child's stdout that starts with `prefix`, and
/// returns the rest of it. The remaining stdout keeps being drained.
async fn wait_for_line(
    child: &mut Child,
    prefix: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("stdout not piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(timeout, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok::<_, anyhow::Error>(rest.trim().to_owned());
            }
        }
        bail!("stdout closed before a line starting with {prefix:?}")
    })
    .await
    .with_context(|| format!("no line starting with {prefix:?} within {timeout:?}"))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(found)
}

/// A running `rxsentry-collector` on an ephemeral loopback port.
pub struct Collector {
    child: Child,
    pub addr: String,
    _log: ChildLog,
    /// Its --state-dir (the audit log): one per collector, removed after.
    _state: tempfile::TempDir,
}

/// `program`, inside network namespace `netns` when given (`ip netns exec`
/// execs it, so the child's pid is the program's).
pub fn command_in(netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        // `nsenter:<name>`: the network namespace only, mounts kept.
        Some(ns) if ns.starts_with("nsenter:") => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{}", &ns["nsenter:".len()..]))
                .arg("--")
                .arg(program);
            c
        }
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

impl Collector {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None, "127.0.0.1:0", &[]).await
    }

    /// A collector in `netns` (or this namespace) listening on `listen`,
    /// with extra command-line arguments.
    pub async fn start_with(
        netns: Option<&str>,
        listen: &str,
        args: &[&std::ffi::OsStr],
    ) -> anyhow::Result<Self> {
        let log = ChildLog::new("rxsentry-collector")?;
        let state = tempfile::tempdir()?;
        let mut child = command_in(netns, bin_path("rxsentry-collector"))
            .args(["--listen", listen])
            .arg("--state-dir")
            .arg(state.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log.stdio()?)
            .kill_on_drop(true)
            .spawn()
            .context("starting rxsentry-collector (run `cargo xtask build`)")?;
        let addr = wait_for_line(
            &mut child,
            "rxsentry-collector listening on",
            Duration::from_secs(20),
        )
        .await?;
        Ok(Self {
            child,
            addr,
            _log: log,
            _state: state,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// How to start a sensor.
pub struct SensorOptions {
    /// Extra TOML appended to a config that points at the collector.
    pub extra_config: String,
}

impl Default for SensorOptions {
    fn default() -> Self {
        Self {
            // Small batches and a short delay keep the tests fast.
            extra_config: "[batching]\nmax_events = 64\nmax_delay_ms = 100\n".to_owned(),
        }
    }
}

/// A running `rxsentry-sensor`, SIGKILLed on drop if still alive (its
/// programs detach when its fds close).
pub struct Sensor {
    child: Child,
    _config: tempfile::NamedTempFile,
    _log: ChildLog,
}

impl Sensor {
    /// A sensor in network namespace `netns` with exactly `config` (TOML),
    /// entered with `nsenter --net`, which keeps this mount namespace:
    /// `ip netns exec` remounts /sys, hiding tracefs (the file and network
    /// hooks read tracepoints there) and the cgroup2 tree an allowlist
    /// policy's `scope_cgroups` names. A kiosk's sensor sees both.
    pub async fn start_in(netns: &str, config: &str) -> anyhow::Result<Self> {
        Self::spawn(Some(&format!("nsenter:{netns}")), config).await
    }

    async fn spawn(netns: Option<&str>, config: &str) -> anyhow::Result<Self> {
        let mut file = tempfile::NamedTempFile::new()?;
        file.write_all(config.as_bytes())?;
        file.flush()?;
        let log = ChildLog::new("rxsentry-sensor")?;
        let mut child = command_in(netns, bin_path("rxsentry-sensor"))
            .arg("--config")
            .arg(file.path())
            .stdout(Stdio::piped())
            .stderr(log.stdio()?)
            .kill_on_drop(true)
            .spawn()
            .context("starting rxsentry-sensor (run `cargo xtask build`)")?;
        if let Err(e) =
            wait_for_line(&mut child, "rxsentry-sensor ready", Duration::from_secs(30)).await
        {
            let text = std::fs::read_to_string(log.file.path()).unwrap_or_default();
            return Err(e.context(format!("the sensor did not start; its stderr:\n{text}")));
        }
        Ok(Self {
            child,
            _config: file,
            _log: log,
        })
    }

    /// SIGKILL, no chance to clean up: what a crash looks like.
    pub async fn kill(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.child.start_kill()?;
        Ok(
            tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .context("sensor did not die within 10 s of SIGKILL")??,
        )
    }

    pub async fn start(collector: &Collector, options: SensorOptions) -> anyhow::Result<Self> {
        let config = format!(
            "[host]\nid = \"test-{}\"\n[host.labels]\nstore = \"test\"\n[collector]\nendpoint = \"{}\"\n{}",
            std::process::id(),
            collector.url(),
            options.extra_config
        );
        Self::spawn(None, &config).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Sends SIGHUP (policy reload).
    pub fn hangup(&self) -> anyhow::Result<()> {
        nix::sys::signal::kill(Pid::from_raw(self.pid() as i32), Signal::SIGHUP)?;
        Ok(())
    }

    /// What the sensor logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._log.file.path()).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM)?;
        }
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .context("sensor did not exit within 20 s of SIGTERM")??;
        Ok(status)
    }
}

/// A child's stderr, kept in a temporary file and printed if the test fails.
struct ChildLog {
    name: &'static str,
    file: tempfile::NamedTempFile,
}

impl ChildLog {
    fn new(name: &'static str) -> anyhow::Result<Self> {
        Ok(Self {
            name,
            file: tempfile::NamedTempFile::new()?,
        })
    }

    fn stdio(&self) -> anyhow::Result<Stdio> {
        Ok(Stdio::from(self.file.reopen()?))
    }
}

impl Drop for ChildLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(self.file.path()).unwrap_or_default();
            eprintln!(
                "----- {} stderr -----\n{text}----- end {} -----",
                self.name, self.name
            );
        }
    }
}

/// Runs `rxsentry-sensor --config <text>` expecting it to refuse to start;
/// returns its exit status and stderr.
pub async fn sensor_with_config(text: &str) -> anyhow::Result<(std::process::ExitStatus, String)> {
    let mut config = tempfile::NamedTempFile::new()?;
    config.write_all(text.as_bytes())?;
    config.flush()?;
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(bin_path("rxsentry-sensor"))
            .arg("--config")
            .arg(config.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("sensor neither started nor failed within 20 s")??;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
