//! The processes under test: `rxsentry-sensor`, `rxsentry-collector` and
//! helper servers, started the same way by the integration tests and by
//! `cargo xtask bench`. Each waits for its readiness line on stdout, keeps
//! its stderr for the failure report and is SIGKILLed on drop if still
//! running.

use std::{
    ffi::{OsStr, OsString},
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

use crate::access::CollectorAccess;

/// The sensor's line on stdout once its programs are attached.
pub const SENSOR_READY: &str = "rxsentry-sensor ready";
/// The collector's line on stdout, followed by its address.
pub const COLLECTOR_LISTENING: &str = "rxsentry-collector listening on";

/// Runs `program args...` to its end (stdout discarded); its pid, once it
/// exited successfully: what a test asserts an event or alert against.
pub fn run_for_pid(program: impl AsRef<OsStr>, args: &[&str]) -> anyhow::Result<u32> {
    let program = program.as_ref();
    let (pid, status) = run_for_status(program, args)?;
    anyhow::ensure!(status.success(), "{} {args:?}: {status}", program.display());
    Ok(pid)
}

/// Runs `program` to its end: its pid and how it exited (a refusal is
/// an answer here, not an error).
pub fn run_for_status(
    program: impl AsRef<OsStr>,
    args: &[&str],
) -> anyhow::Result<(u32, std::process::ExitStatus)> {
    let program = program.as_ref();
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let pid = child.id();
    Ok((pid, child.wait()?))
}

/// Where the release binaries are: `RXSENTRY_BIN_DIR` (set by `cargo xtask
/// test`), else `release` in cargo's target directory of this workspace
/// (`CARGO_TARGET_DIR` honoured, as `cargo xtask build` does).
pub fn bin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("RXSENTRY_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
            match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
                Some(dir) => root.join(dir).join("release"), // an absolute one is kept as is
                None => root.join("target/release"),
            }
        });
    dir.join(name)
}

/// Which network namespace a child runs in.
#[derive(Clone, Debug, Default)]
pub enum InNetns {
    /// This process's.
    #[default]
    No,
    /// `ip netns exec NAME`, which also mounts a /sys of the namespace's own
    /// (hiding tracefs and the cgroup2 tree).
    IpExec(String),
    /// `nsenter --net=/run/netns/NAME`: the network namespace only, this
    /// mount namespace kept.
    NetOnly(String),
}

impl InNetns {
    /// `program` run this way (both tools exec it, so the child's pid is the
    /// program's).
    pub fn std_command(&self, program: impl AsRef<OsStr>) -> std::process::Command {
        match self {
            Self::No => std::process::Command::new(program),
            Self::IpExec(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            Self::NetOnly(ns) => {
                let mut c = std::process::Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}"))
                    .arg("--")
                    .arg(program);
                c
            }
        }
    }

    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        Command::from(self.std_command(program))
    }
}

/// `program`, inside network namespace `netns` (`ip netns exec`) when given.
pub fn command_in(netns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    netns
        .map_or(InNetns::No, |ns| InNetns::IpExec(ns.to_owned()))
        .command(program)
}

/// Where a child's stderr goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stderr {
    /// A temporary file: [`Process::log`] reads it, and it is printed if the
    /// thread panics.
    #[default]
    Keep,
    /// This process's stderr (the bench shows the sensor's warnings live).
    Inherit,
}

/// A running child, SIGKILLed on drop if still alive.
pub struct Process {
    child: Child,
    name: String,
    log: Option<ChildLog>,
}

impl Process {
    /// Spawns `cmd` (stdout piped, stderr as asked) and waits up to
    /// `timeout` for a stdout line that starts with `ready` (any line if
    /// empty). Returns the process and the rest of that line; the remaining
    /// stdout keeps being drained.
    pub async fn start(
        name: &str,
        cmd: &mut Command,
        ready: &str,
        timeout: Duration,
        stderr: Stderr,
    ) -> anyhow::Result<(Self, String)> {
        let log = match stderr {
            Stderr::Keep => Some(ChildLog::new(name)?),
            Stderr::Inherit => None,
        };
        let stderr = match &log {
            Some(log) => log.stdio()?,
            None => Stdio::inherit(),
        };
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name} (run `cargo xtask build`)"))?;
        let mut process = Self {
            child,
            name: name.to_owned(),
            log,
        };
        match wait_for_line(&mut process.child, ready, timeout).await {
            Ok(rest) => Ok((process, rest)),
            Err(e) if process.log.is_some() => Err(e.context(format!(
                "{name} did not start; its stderr:\n{}",
                process.log()
            ))),
            Err(e) => Err(e.context(format!("{name} did not start"))),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// What it wrote to stderr so far (nothing if inherited).
    pub fn log(&self) -> String {
        self.log.as_ref().map(ChildLog::read).unwrap_or_default()
    }

    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        // Never pid 0 (this process group) for a child already reaped.
        let pid = self.child.id().context("the process was already reaped")?;
        nix::sys::signal::kill(Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    /// SIGTERM, then its exit status (within 20 s).
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        if let Some(pid) = self.child.id() {
            nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM)?;
        }
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .with_context(|| format!("{} did not exit within 20 s of SIGTERM", self.name))??;
        if !status.success() {
            // Shown with the failing test's output.
            eprintln!("{} exited {status}; its stderr:\n{}", self.name, self.log());
        }
        Ok(status)
    }

    /// SIGKILL, no chance to clean up: what a crash looks like.
    pub async fn kill(mut self) -> anyhow::Result<ExitStatus> {
        self.child.start_kill()?;
        Ok(
            tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .with_context(|| format!("{} did not die within 10 s of SIGKILL", self.name))??,
        )
    }
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

/// What a harness collector trusts and serves, made before it starts (so a
/// sensor can be given its certificate while the collector is still down):
/// a throwaway CA, the collector's certificate for its address, an admin
/// operator's token; all in the collector's --state-dir.
pub struct CollectorState {
    dir: tempfile::TempDir,
    token: String,
}

impl CollectorState {
    /// For a collector that will listen on `listen` (its IP goes into the
    /// certificate besides localhost, 127.0.0.1 and ::1).
    pub fn new(listen: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = pki::Ca::init(&dir.path().join("pki"), "rxsentry test CA")?;
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
        if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
            names.push(addr.ip().to_string());
        }
        ca.issue(&pki::Leaf::Collector { names }, 1)?
            .write(&dir.path().join("tls"), "collector")?;
        let token = format!("{:064x}", rand::random::<u128>());
        std::fs::write(
            dir.path().join("operators.toml"),
            collector_operator_toml(TEST_OPERATOR, "admin", &token),
        )?;
        Ok(Self { dir, token })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("pki/ca.pem")
    }

    /// Its CA, to issue or revoke certificates.
    pub fn ca(&self) -> anyhow::Result<pki::Ca> {
        Ok(pki::Ca::load(&self.dir.path().join("pki"))?)
    }

    /// Issues a sensor certificate for `host_id` into `dir`: `ca.pem`,
    /// `sensor.pem`, `sensor.key`, where [`collector_section`] points.
    pub fn issue_sensor(&self, host_id: &str, dir: &Path) -> anyhow::Result<()> {
        self.ca()?
            .issue(
                &pki::Leaf::Sensor {
                    host_id: host_id.to_owned(),
                },
                1,
            )?
            .write(dir, "sensor")?;
        std::fs::copy(self.ca_file(), dir.join("ca.pem"))?;
        Ok(())
    }
}

/// A running `rxsentry-collector` with mutual TLS (see [`CollectorState`]);
/// [`Collector::url`] carries the admin token.
pub struct Collector {
    process: Process,
    pub addr: String,
    state: CollectorState,
}

/// The harness's operator: an admin, so every analyst call is allowed.
pub const TEST_OPERATOR: &str = "harness";

impl Collector {
    /// On an ephemeral loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None, "127.0.0.1:0", &[]).await
    }

    /// A collector in `netns` (or this namespace) listening on `listen`,
    /// with extra command-line arguments.
    pub async fn start_with(
        netns: Option<&str>,
        listen: &str,
        args: &[&OsStr],
    ) -> anyhow::Result<Self> {
        Self::start_on(CollectorState::new(listen)?, netns, listen, args).await
    }

    /// Like [`Collector::start_with`], with trust made beforehand.
    pub async fn start_on(
        state: CollectorState,
        netns: Option<&str>,
        listen: &str,
        args: &[&OsStr],
    ) -> anyhow::Result<Self> {
        let mut cmd = command_in(netns, bin_path("rxsentry-collector"));
        cmd.args(["--listen", listen])
            .arg("--state-dir")
            .arg(state.path())
            .args(args);
        // Metrics on a port of its own (see `metrics_addr`), never the
        // default one another collector may hold.
        if !args.iter().any(|a| *a == "--metrics-listen") {
            cmd.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        let (process, addr) = Process::start(
            "rxsentry-collector",
            &mut cmd,
            COLLECTOR_LISTENING,
            Duration::from_secs(20),
            Stderr::Keep,
        )
        .await?;
        Ok(Self {
            process,
            addr,
            state,
        })
    }

    /// SIGTERM, and the state it ran on (its CA, store, audit log), to start
    /// a collector on it again: a collector whose plug was pulled.
    pub async fn stop_keeping_state(self) -> anyhow::Result<CollectorState> {
        let Self { process, state, .. } = self;
        process.stop().await?;
        Ok(state)
    }

    /// Where its metrics listener bound (from its log).
    pub fn metrics_addr(&self) -> anyhow::Result<SocketAddr> {
        metrics_addr_in(&self.log()).ok_or_else(|| anyhow::anyhow!("no metrics listener logged"))
    }

    /// Its metrics page, scraped and parsed.
    pub async fn metrics(&self) -> anyhow::Result<rxsentry_metrics::Samples> {
        scrape_metrics(self.metrics_addr()?).await
    }

    /// How to reach it: TLS against its CA, with the admin token.
    pub fn url(&self) -> CollectorAccess {
        CollectorAccess {
            url: format!("https://{}", self.addr),
            ca: Some(self.ca_file()),
            identity: None,
            token: Some(self.state.token.clone()),
        }
    }

    /// The admin token.
    pub fn token(&self) -> &str {
        &self.state.token
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.state.ca_file()
    }

    /// Its CA, to issue or revoke certificates.
    pub fn ca(&self) -> anyhow::Result<pki::Ca> {
        self.state.ca()
    }

    /// See [`CollectorState::issue_sensor`].
    pub fn issue_sensor(&self, host_id: &str, dir: &Path) -> anyhow::Result<()> {
        self.state.issue_sensor(host_id, dir)
    }

    /// Issues a sensor certificate for `host_id` and returns the
    /// `[collector]` section that points a sensor at this collector.
    pub fn sensor_section(&self, host_id: &str) -> anyhow::Result<String> {
        let dir = self.state.path().join("sensors").join(host_id);
        self.state.issue_sensor(host_id, &dir)?;
        Ok(collector_section(&format!("https://{}", self.addr), &dir))
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The collector's log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        self.process.signal(signal)
    }
}

/// A sensor's `[collector]` section: `endpoint` with the TLS files of
/// `tls_dir` (as [`Collector::issue_sensor`] writes them).
pub fn collector_section(endpoint: &str, tls_dir: &Path) -> String {
    format!(
        "[collector]\nendpoint = \"{endpoint}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        tls_dir.join("ca.pem").display(),
        tls_dir.join("sensor.pem").display(),
        tls_dir.join("sensor.key").display()
    )
}

/// An `[[operator]]` entry with a salted hash of `token`, as
/// `rxsentry-collector pki add-operator` writes it.
pub fn collector_operator_toml(name: &str, role: &str, token: &str) -> String {
    let salt: [u8; 16] = rand::random();
    format!(
        "[[operator]]\nname = {name:?}\nrole = {role:?}\ntoken_salt = \"{}\"\ntoken_sha256 = \"{}\"\n",
        pki::hex(&salt),
        pki::hex(&pki::salted_token_hash(&salt, token))
    )
}

/// How to start a sensor with [`Sensor::start`].
pub struct SensorOptions {
    /// Extra TOML appended to a config that points at the collector.
    pub extra_config: String,
}

impl SensorOptions {
    /// The defaults, then `extra` (TOML sections of the test's own).
    pub fn with_extra(extra: &str) -> Self {
        Self {
            extra_config: format!("{}{extra}", Self::default().extra_config),
        }
    }
}

impl Default for SensorOptions {
    fn default() -> Self {
        Self {
            // Small batches and a short delay keep the tests fast.
            extra_config: "[batching]\nmax_events = 64\nmax_delay_ms = 100\n".to_owned(),
        }
    }
}

/// The config a [`SensorCommand`] passes with `--config`.
enum Config {
    /// Written to a temporary file first.
    Text(String),
    File(PathBuf),
}

/// `rxsentry-sensor --config CONFIG [ARGS]`: started as the daemon
/// ([`SensorCommand::start`]) or run to its end ([`SensorCommand::output`]).
pub struct SensorCommand {
    config: Config,
    netns: InNetns,
    args: Vec<OsString>,
    stderr: Stderr,
}

impl SensorCommand {
    /// In a network namespace (see [`InNetns`]).
    pub fn netns(mut self, netns: InNetns) -> Self {
        self.netns = netns;
        self
    }

    /// Extra command-line arguments after `--config PATH`.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Where its stderr goes (kept in a temporary file by default).
    pub fn stderr(mut self, stderr: Stderr) -> Self {
        self.stderr = stderr;
        self
    }

    /// The command, and the temporary config file it reads (if any) with
    /// the sensor's own spool directory (see [`with_own_spool`]).
    fn command(&self) -> anyhow::Result<(Command, Option<TempConfig>)> {
        let (path, file) = match &self.config {
            Config::Text(text) => {
                let (text, spool) = with_own_spool(&with_writable_files(&with_own_metrics(text)))?;
                let (text, pins) = crate::pins::with_own_pins(&text);
                let mut file = tempfile::NamedTempFile::new()?;
                file.write_all(text.as_bytes())?;
                file.flush()?;
                let path = file.path().to_owned();
                (
                    path,
                    Some(TempConfig {
                        file,
                        _spool: spool,
                        _pins: pins,
                    }),
                )
            }
            Config::File(path) => (path.clone(), None),
        };
        let mut cmd = self.netns.command(bin_path("rxsentry-sensor"));
        cmd.arg("--config").arg(path).args(&self.args);
        Ok((cmd, file))
    }

    /// Starts the daemon and waits (up to 30 s) until it prints
    /// [`SENSOR_READY`].
    pub async fn start(self) -> anyhow::Result<Sensor> {
        let (mut cmd, config) = self.command()?;
        let (process, _) = Process::start(
            "rxsentry-sensor",
            &mut cmd,
            SENSOR_READY,
            Duration::from_secs(30),
            self.stderr,
        )
        .await?;
        Ok(Sensor { process, config })
    }

    /// Runs it to its end (a subcommand, or a config it refuses); its
    /// status, stdout and stderr.
    pub async fn output(self) -> anyhow::Result<Output> {
        let (mut cmd, _config) = self.command()?;
        Ok(cmd.kill_on_drop(true).output().await?)
    }
}

/// A config file written for one sensor, the spool directory it got and
/// its allowlist pin directory ([`crate::pins::with_own_pins`]).
struct TempConfig {
    file: tempfile::NamedTempFile,
    _spool: Option<tempfile::TempDir>,
    _pins: Option<crate::pins::PinDir>,
}

/// A config without a `[spool]` section gets one in a fresh temporary
/// directory (removed with the sensor): sensors running side by side must
/// not share the default /var/lib/rxsentry/spool (the second one would be
/// refused: one spool, one sensor), nor replay an earlier test's batches.
/// A test that sets `[spool]` itself owns that directory.
fn with_own_spool(text: &str) -> anyhow::Result<(String, Option<tempfile::TempDir>)> {
    if text.lines().any(|l| l.trim() == "[spool]") {
        return Ok((text.to_owned(), None));
    }
    let dir = tempfile::Builder::new()
        .prefix("rxsentry-spool")
        .tempdir()?;
    let text = format!("{text}\n[spool]\ndir = {:?}\n", dir.path().join("spool"));
    Ok((text, Some(dir)))
}

/// A config without a `[metrics]` section gets a listener on port 0 (the
/// bound address is in the sensor's log: [`Sensor::metrics_addr`]), so
/// sensors side by side never fight over the default port.
fn with_own_metrics(text: &str) -> String {
    with_default_section(text, "[metrics]", "listen = \"127.0.0.1:0\"")
}

/// A config without a `[self_protection]` section leaves the sensor's
/// files writable (`deny_writes = false`): tests rewrite a running
/// sensor's policy and config. The tests of the write guard turn it on.
fn with_writable_files(text: &str) -> String {
    with_default_section(text, "[self_protection]", "deny_writes = false")
}

/// `text` with `header` and `keys` appended, unless it has that section.
fn with_default_section(text: &str, header: &str, keys: &str) -> String {
    if text.lines().any(|l| l.trim() == header) {
        return text.to_owned();
    }
    format!("{text}\n{header}\n{keys}\n")
}

/// The address of a `metrics listening on ADDR` line in `log`.
pub fn metrics_addr_in(log: &str) -> Option<SocketAddr> {
    log.lines()
        .find_map(|l| l.split_once("metrics listening on "))
        .and_then(|(_, addr)| addr.trim().parse().ok())
}

/// `GET /metrics` from `addr` (loopback of this namespace), parsed.
pub async fn scrape_metrics(addr: SocketAddr) -> anyhow::Result<rxsentry_metrics::Samples> {
    let page = tokio::task::spawn_blocking(move || {
        rxsentry_metrics::scrape(addr, Duration::from_secs(10))
    })
    .await??;
    Ok(rxsentry_metrics::parse(&page)?)
}

/// A running `rxsentry-sensor`, SIGKILLed on drop if still alive (its
/// programs detach when its fds close).
pub struct Sensor {
    process: Process,
    config: Option<TempConfig>,
}

impl Sensor {
    /// The config file the harness wrote for it (None when the test gave
    /// its own file).
    pub fn config_file(&self) -> Option<&Path> {
        self.config.as_ref().map(|c| c.file.path())
    }

    /// `rxsentry-sensor` with exactly `config` (TOML).
    pub fn with_config(config: impl Into<String>) -> SensorCommand {
        Self::command(Config::Text(config.into()))
    }

    /// `rxsentry-sensor` with the config file at `path`.
    pub fn with_config_file(path: impl Into<PathBuf>) -> SensorCommand {
        Self::command(Config::File(path.into()))
    }

    fn command(config: Config) -> SensorCommand {
        SensorCommand {
            config,
            netns: InNetns::No,
            args: Vec::new(),
            stderr: Stderr::Keep,
        }
    }

    /// A sensor pointed at `collector`, with a test host id and label and
    /// `options.extra_config`.
    pub async fn start(collector: &Collector, options: SensorOptions) -> anyhow::Result<Self> {
        let host_id = format!("test-{}", std::process::id());
        let config = format!(
            "[host]\nid = \"{host_id}\"\n[host.labels]\nstore = \"test\"\n{}{}",
            collector.sensor_section(&host_id)?,
            options.extra_config
        );
        Self::with_config(config).start().await
    }

    /// A sensor in network namespace `netns` with exactly `config` (TOML),
    /// entered with `nsenter --net`, which keeps this mount namespace:
    /// `ip netns exec` remounts /sys, hiding tracefs (the file and network
    /// hooks read tracepoints there) and the cgroup2 tree an allowlist
    /// policy's `scope_cgroups` names. A kiosk's sensor sees both.
    pub async fn start_in(netns: &str, config: &str) -> anyhow::Result<Self> {
        Self::with_config(config)
            .netns(InNetns::NetOnly(netns.to_owned()))
            .start()
            .await
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Where its metrics listener bound (from its log; the harness gives
    /// a config without `[metrics]` port 0).
    pub fn metrics_addr(&self) -> anyhow::Result<SocketAddr> {
        metrics_addr_in(&self.log()).ok_or_else(|| anyhow::anyhow!("no metrics listener logged"))
    }

    /// Its metrics page, scraped and parsed.
    pub async fn metrics(&self) -> anyhow::Result<rxsentry_metrics::Samples> {
        scrape_metrics(self.metrics_addr()?).await
    }

    /// Sends SIGHUP (policy reload).
    pub fn hangup(&self) -> anyhow::Result<()> {
        self.process.signal(Signal::SIGHUP)
    }

    /// What the sensor logged so far (nothing if its stderr is inherited).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// SIGKILL, no chance to clean up: what a crash looks like.
    pub async fn kill(self) -> anyhow::Result<ExitStatus> {
        self.process.kill().await
    }

    /// SIGTERM, then wait (up to 20 s) for its exit status.
    pub async fn stop(self) -> anyhow::Result<ExitStatus> {
        self.process.stop().await
    }
}

/// A child's stderr, kept in a temporary file and printed if the test fails.
struct ChildLog {
    name: String,
    file: tempfile::NamedTempFile,
}

impl ChildLog {
    fn new(name: &str) -> anyhow::Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            file: tempfile::NamedTempFile::new()?,
        })
    }

    fn stdio(&self) -> anyhow::Result<Stdio> {
        Ok(Stdio::from(self.file.reopen()?))
    }

    fn read(&self) -> String {
        std::fs::read_to_string(self.file.path()).unwrap_or_default()
    }
}

impl Drop for ChildLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- {} stderr -----\n{}----- end {} -----",
                self.name,
                self.read(),
                self.name
            );
        }
    }
}

/// Runs `rxsentry-sensor --config <text>` expecting it to refuse to start;
/// returns its exit status and stderr.
pub async fn sensor_with_config(text: &str) -> anyhow::Result<(ExitStatus, String)> {
    let out = tokio::time::timeout(Duration::from_secs(20), Sensor::with_config(text).output())
        .await
        .context("sensor neither started nor failed within 20 s")??;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
