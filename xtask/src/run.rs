//! `cargo xtask run`: the local demo. Starts `rxsentry-collector` on loopback,
//! then `rxsentry-sensor` pointed at it, then `rxsentry tail` in the
//! foreground. Ctrl-C (or `--duration`) stops tail, then SIGTERMs the sensor
//! and the collector and waits for them. Every child is held by a guard whose
//! Drop stops it, so no error path leaves one running; each also gets
//! PR_SET_PDEATHSIG so even a killed xtask takes them down.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use nix::{
    sys::{
        prctl,
        signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal},
    },
    unistd::Pid,
};

use crate::{
    build,
    cmd::{describe, target_dir, workspace_root},
    setup,
};

const LISTEN: &str = "127.0.0.1:50051";
const DEFAULT_CONFIG: &str = "sensor-user/config/rxsentry-sensor.example.toml";
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

#[derive(Args)]
pub struct Options {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Sensor config file (default: sensor-user/config/rxsentry-sensor.example.toml).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Skip setup and build: run the binaries already in target/release.
    #[arg(long)]
    pub no_build: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    let config = match &opts.config {
        Some(p) => p.clone(),
        None => workspace_root().join(DEFAULT_CONFIG),
    };
    let config = fs::canonicalize(&config)
        .with_context(|| format!("sensor config {} not found", config.display()))?;

    if !opts.no_build {
        setup::setup()?;
        build::build(&build::Options { release: true })?;
    }

    install_stop_handler()?;
    demo(
        &target_dir().join("release"),
        &config,
        &target_dir().join("xtask-run"),
        opts.duration,
    )
}

/// Collector, sensor, then tail in the foreground, from the binaries in
/// `bin_dir`; logs (truncated first) in `log_dir`.
fn demo(bin_dir: &Path, config: &Path, log_dir: &Path, duration: Option<u64>) -> Result<()> {
    let bin = |name: &str| -> Result<PathBuf> {
        let path = bin_dir.join(name);
        if !path.is_file() {
            bail!(
                "{} was not built: no crate defines a `{name}` binary",
                path.display()
            );
        }
        Ok(path)
    };
    let (collector_bin, sensor_bin, cli_bin) = (
        bin("rxsentry-collector")?,
        bin("rxsentry-sensor")?,
        bin("rxsentry")?,
    );

    fs::create_dir_all(log_dir).with_context(|| format!("cannot create {}", log_dir.display()))?;
    let collector_log = log_dir.join("collector.log");
    let sensor_log = log_dir.join("sensor.log");
    for log in [&collector_log, &sensor_log] {
        fs::write(log, "").with_context(|| format!("cannot write {}", log.display()))?;
    }
    println!(
        "== run (logs: {}, {})",
        collector_log.display(),
        sensor_log.display()
    );

    let trust = DemoTrust::prepare(&log_dir.join("collector-state"), config)?;

    // Declared in start order, so they drop (and stop) in reverse: tail,
    // sensor, collector.
    let mut collector_cmd = Command::new(&collector_bin);
    collector_cmd
        .args(["--listen", LISTEN])
        .arg("--state-dir")
        .arg(&trust.state_dir)
        .stdout(Stdio::piped())
        .stderr(log_file(&collector_log)?);
    let mut collector = Guard::spawn("collector", &mut collector_cmd, true, &collector_log)?;
    let addr = wait_listening(&mut collector, &collector_log)?;
    println!("collector listening on {addr}");

    let url = format!("https://{addr}");
    let mut sensor_cmd = Command::new(&sensor_bin);
    sensor_cmd.arg("--config").arg(config);
    if let Some(url) = collector_override(config_endpoint(config).as_deref(), addr) {
        sensor_cmd.args(["--collector", &url]);
    }
    sensor_cmd.arg("--collector-tls").arg(&trust.sensor_tls);
    sensor_cmd
        .stdout(log_file(&sensor_log)?)
        .stderr(log_file(&sensor_log)?);
    let mut sensor = Guard::spawn("sensor", &mut sensor_cmd, true, &sensor_log)?;

    println!("tailing events (Ctrl-C to stop)");
    let mut tail_cmd = Command::new(&cli_bin);
    tail_cmd
        .args(["tail", "--collector", &url, "--ca"])
        .arg(&trust.ca)
        .arg("--token-file")
        .arg(&trust.token_file);
    // Same process group as us: Ctrl-C reaches tail directly.
    let mut tail = Guard::spawn("tail", &mut tail_cmd, false, Path::new(""))?;

    let deadline = duration.map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        if STOP.load(Ordering::SeqCst) {
            println!("\nstopping (signal)");
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            println!("stopping (--duration elapsed)");
            break;
        }
        if let Some(status) = tail.try_wait()? {
            // Ctrl-C reaches tail too; it may exit before our handler runs.
            if STOP.load(Ordering::SeqCst) || status.signal() == Some(Signal::SIGINT as i32) {
                println!("\nstopping (tail ended: {status})");
                break;
            }
            bail!("`rxsentry tail` exited on its own ({status})");
        }
        sensor.fail_if_exited()?;
        collector.fail_if_exited()?;
        thread::sleep(POLL);
    }
    tail.stop();
    sensor.stop();
    collector.stop();
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ctrl-C / SIGTERM set a flag so the run loop can stop the children in order.
fn install_stop_handler() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { signal::sigaction(sig, &action) }
            .with_context(|| format!("cannot install a {sig} handler"))?;
    }
    Ok(())
}

fn log_file(path: &Path) -> Result<File> {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Waits for the collector's `rxsentry-collector listening on <addr>` line on
/// its stdout (copied, like the rest of it, into its log).
fn wait_listening(collector: &mut Guard, log: &Path) -> Result<SocketAddr> {
    let stdout = collector
        .child
        .as_mut()
        .and_then(|c| c.stdout.take())
        .context("collector stdout not captured")?;
    let mut log_out = log_file(log)?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line);
            let _ = writeln!(log_out, "{line}");
            if let Some(addr) = parse_listening_line(&line)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr);
            }
        }
    });
    let start = Instant::now();
    loop {
        match rx.recv_timeout(POLL) {
            Ok(addr) => return Ok(addr),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                collector.fail_if_exited()?;
                bail!("the collector closed its stdout without printing its listening line");
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted while waiting for the collector");
        }
        collector.fail_if_exited()?;
        if start.elapsed() > LISTEN_TIMEOUT {
            bail!(
                "the collector did not print `rxsentry-collector listening on <addr>` within {}s; \
                 see {}",
                LISTEN_TIMEOUT.as_secs(),
                log.display()
            );
        }
    }
}

/// `rxsentry-collector listening on 127.0.0.1:50051` -> the address
/// (an `http://` prefix is accepted too).
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    const MARK: &str = "rxsentry-collector listening on ";
    let rest = &line[line.find(MARK)? + MARK.len()..];
    let word = rest.split_whitespace().next()?;
    let word = word.strip_prefix("http://").unwrap_or(word);
    word.trim_end_matches('/').parse().ok()
}

/// `[collector] endpoint` from the sensor's config, if it can be read.
fn config_endpoint(config: &Path) -> Option<String> {
    let text = fs::read_to_string(config).ok()?;
    endpoint_from_toml(&text)
}

pub fn endpoint_from_toml(text: &str) -> Option<String> {
    let table: toml::Table = text.parse().ok()?;
    Some(
        table
            .get("collector")?
            .get("endpoint")?
            .as_str()?
            .to_owned(),
    )
}

/// The demo's throwaway trust: a local CA made on the first run (kept in
/// the state dir, so later runs reuse it), the collector's certificate, a
/// sensor certificate for this host, and an admin operator token for tail.
struct DemoTrust {
    state_dir: PathBuf,
    ca: PathBuf,
    sensor_tls: PathBuf,
    token_file: PathBuf,
}

impl DemoTrust {
    fn prepare(state_dir: &Path, config: &Path) -> Result<Self> {
        let pki_dir = state_dir.join("pki");
        let first = !pki_dir.join(pki::issue::CA_CERT).exists();
        let ca = pki::Ca::load_or_init(&pki_dir, "rxsentry demo CA (cargo xtask run)")?;
        let tls = state_dir.join("tls");
        if first || !tls.join("collector.pem").exists() {
            let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
            ca.issue(&pki::Leaf::Collector { names }, pki::issue::LEAF_DAYS)?
                .write(&tls, "collector")?;
            println!("created a local demo CA in {}", pki_dir.display());
        }
        let host_id = demo_host_id(config);
        let sensor_tls = state_dir.join("sensor-tls");
        ca.issue(&pki::Leaf::Sensor { host_id }, pki::issue::LEAF_DAYS)?
            .write(&sensor_tls, "sensor")?;
        pki::files::write_file(&sensor_tls.join("ca.pem"), ca.cert_pem().as_bytes(), 0o644)?;
        let token_file = state_dir.join("demo.token");
        let operators = state_dir.join("operators.toml");
        if !operators.exists() || !token_file.exists() {
            let token = collector::auth::new_token();
            pki::files::write_secret(&token_file, format!("{token}\n").as_bytes())?;
            let op =
                collector::auth::Operator::with_token("demo", collector::auth::Role::Admin, &token);
            pki::files::write_file(&operators, op.to_toml().as_bytes(), 0o600)?;
        }
        Ok(Self {
            state_dir: state_dir.to_owned(),
            ca: pki_dir.join(pki::issue::CA_CERT),
            sensor_tls,
            token_file,
        })
    }
}

/// The host id the sensor will use (its config's `host.id`, else
/// /etc/machine-id, else the hostname): its certificate must carry it.
fn demo_host_id(config: &Path) -> String {
    let configured = fs::read_to_string(config)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("host")?.get("id")?.as_str().map(str::to_owned));
    configured
        .or_else(|| {
            fs::read_to_string("/etc/machine-id")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .map(|h| h.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The `--collector` URL to give the sensor when its config does not already
/// point at the address the collector reported.
pub fn collector_override(config_endpoint: Option<&str>, addr: SocketAddr) -> Option<String> {
    let url = format!("https://{addr}");
    match config_endpoint {
        Some(ep) if ep.trim_end_matches('/') == url => None,
        _ => Some(url),
    }
}

/// A running child that is stopped (SIGTERM, then SIGKILL after a grace
/// period) when dropped.
struct Guard {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Guard {
    /// `background`: the child logs to a file and gets its own process group,
    /// so the terminal's Ctrl-C reaches only us and we stop it in order.
    fn spawn(name: &'static str, cmd: &mut Command, background: bool, log: &Path) -> Result<Self> {
        if background {
            cmd.process_group(0);
            // No terminal colour codes in the log file.
            cmd.env("NO_COLOR", "1");
        }
        // SAFETY: the closure only makes a syscall (prctl), which is
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(|| prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from));
        }
        let line = describe(cmd);
        println!("+ {line}");
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start the {name}: `{line}`"))?;
        Ok(Self {
            name,
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .with_context(|| format!("cannot wait for the {}", self.name)),
            None => Ok(None),
        }
    }

    /// An error (with the end of its log) when the child has exited.
    fn fail_if_exited(&mut self) -> Result<()> {
        let Some(status) = self.try_wait()? else {
            return Ok(());
        };
        self.child = None;
        let tail = last_lines(&self.log, 20);
        bail!(
            "the {} exited early ({status}); last lines of {}:\n{tail}",
            self.name,
            self.log.display()
        );
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let pid = Pid::from_raw(child.id() as i32);
        let _ = signal::kill(pid, Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < STOP_GRACE {
            if let Ok(Some(status)) = child.try_wait() {
                println!("{} stopped ({status})", self.name);
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{} ignored SIGTERM for {}s: killing it",
            self.name,
            STOP_GRACE.as_secs()
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn last_lines(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temp dir with fake collector/sensor/cli scripts that record their
    /// arguments and pid, and a sensor config.
    fn fake_bins(test: &str, sensor_body: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("xtask-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // Written to a temporary name and renamed: a child stopped while
        // recording leaves no file, never an empty one (read as pid "").
        let record =
            "echo $$ > \"$0.pid.tmp\" && mv \"$0.pid.tmp\" \"$0.pid\"\necho \"$@\" > \"$0.args\"\n";
        let scripts = [
            (
                "rxsentry-collector",
                format!(
                    "{record}echo 'rxsentry-collector listening on 127.0.0.1:45678'\nexec sleep 60\n"
                ),
            ),
            ("rxsentry-sensor", format!("{record}{sensor_body}")),
            ("rxsentry", format!("{record}exec sleep 60\n")),
        ];
        // Not fs::write + chmod: other test threads fork meanwhile, and a
        // child that inherited the writable fd makes the exec fail with
        // ETXTBSY until it execs itself (see ::tests::exe).
        for (name, body) in scripts {
            ::tests::exe::write_executable(&dir.join(name), format!("#!/bin/sh\n{body}")).unwrap();
        }
        let config = dir.join("sensor.toml");
        fs::write(
            &config,
            "[host]\nid = \"demo-test\"\n[collector]\nendpoint = \"https://127.0.0.1:50051\"\n",
        )
        .unwrap();
        (dir, config)
    }

    fn recorded(dir: &Path, name: &str, what: &str) -> Option<String> {
        let text = fs::read_to_string(dir.join(format!("{name}.{what}"))).ok()?;
        Some(text.trim().to_owned())
    }

    /// No child is left running: each recorded pid is gone (reaped).
    fn assert_all_stopped(dir: &Path) {
        for name in ["rxsentry-collector", "rxsentry-sensor", "rxsentry"] {
            if let Some(pid) = recorded(dir, name, "pid") {
                assert!(
                    !Path::new(&format!("/proc/{pid}")).exists(),
                    "{name} ({pid}) still running"
                );
            }
        }
    }

    #[test]
    fn demo_runs_and_stops_every_child() {
        let (dir, config) = fake_bins("demo-ok", "exec sleep 60\n");
        demo(&dir, &config, &dir.join("logs"), Some(1)).unwrap();
        let state = dir.join("logs/collector-state");
        assert_eq!(
            recorded(&dir, "rxsentry-collector", "args"),
            Some(format!(
                "--listen 127.0.0.1:50051 --state-dir {}",
                state.display()
            ))
        );
        // the config points at :50051, the collector reported :45678
        assert_eq!(
            recorded(&dir, "rxsentry-sensor", "args"),
            Some(format!(
                "--config {} --collector https://127.0.0.1:45678 --collector-tls {}",
                config.display(),
                state.join("sensor-tls").display()
            ))
        );
        assert_eq!(
            recorded(&dir, "rxsentry", "args"),
            Some(format!(
                "tail --collector https://127.0.0.1:45678 --ca {} --token-file {}",
                state.join("pki/ca.pem").display(),
                state.join("demo.token").display()
            ))
        );
        // the throwaway CA issued this host's sensor certificate
        let cert = fs::read_to_string(state.join("sensor-tls/sensor.pem")).unwrap();
        let id = pki::PeerIdentity::from_pem(&cert).unwrap();
        assert_eq!(id.host_id(), Some("demo-test"));
        assert_all_stopped(&dir);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn demo_reports_a_sensor_that_dies() {
        let (dir, config) = fake_bins("demo-sensor-dies", "echo 'boom: no BTF' >&2\nexit 3\n");
        let err = demo(&dir, &config, &dir.join("logs"), Some(30)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("sensor exited early"), "{msg}");
        assert!(msg.contains("boom: no BTF"), "{msg}");
        assert_all_stopped(&dir);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn demo_reports_missing_binaries() {
        let dir = std::env::temp_dir().join(format!("xtask-demo-none-{}", std::process::id()));
        let err = demo(&dir, &dir.join("c.toml"), &dir.join("logs"), Some(1)).unwrap_err();
        assert!(format!("{err:#}").contains("rxsentry-collector"), "{err:#}");
    }

    #[test]
    fn listening_line() {
        let addr: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        assert_eq!(
            parse_listening_line("rxsentry-collector listening on 127.0.0.1:50051"),
            Some(addr)
        );
        assert_eq!(
            parse_listening_line(
                "2026-11-25T03:00:00Z INFO rxsentry-collector listening on http://127.0.0.1:50051/ (tls off)"
            ),
            Some(addr)
        );
        assert_eq!(
            parse_listening_line("rxsentry-collector listening on [::1]:4000"),
            Some("[::1]:4000".parse().unwrap())
        );
        assert_eq!(parse_listening_line("rxsentry-collector starting"), None);
        assert_eq!(
            parse_listening_line("rxsentry-collector listening on "),
            None
        );
        assert_eq!(
            parse_listening_line("rxsentry-collector listening on nowhere"),
            None
        );
    }

    #[test]
    fn endpoint_in_config() {
        let cfg =
            "[host]\nid = \"kiosk-1\"\n\n[collector]\nendpoint = \"http://127.0.0.1:50051\"\n";
        assert_eq!(
            endpoint_from_toml(cfg).as_deref(),
            Some("http://127.0.0.1:50051")
        );
        assert_eq!(endpoint_from_toml("[collector]\n"), None);
        assert_eq!(endpoint_from_toml("not toml ["), None);
    }

    #[test]
    fn override_only_when_needed() {
        let addr: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        assert_eq!(
            collector_override(Some("https://127.0.0.1:50051"), addr),
            None
        );
        assert_eq!(
            collector_override(Some("https://127.0.0.1:50051/"), addr),
            None
        );
        let other: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(
            collector_override(Some("https://127.0.0.1:50051"), other).as_deref(),
            Some("https://127.0.0.1:40000")
        );
        assert_eq!(
            collector_override(None, addr).as_deref(),
            Some("https://127.0.0.1:50051")
        );
    }
}
