//! `cargo xtask bench` (isolation part, alone with `--only-isolation`):
//! what the isolation TC programs cost normal traffic while NOT isolated,
//! and how fast an isolation takes effect.
//!
//! Two network namespaces joined by a veth pair; the programs are attached
//! to namespace A's end (`rxsentry-sensor release` attaches without
//! isolating; `isolation detach` removes them). Rounds alternate "with" and
//! "without", the order flipping each round; the ratios are of medians:
//! - TCP bulk throughput A -> B (`netprobe tput`, egress on A plus the ACKs
//!   on ingress);
//! - UDP request/response latency A <-> B (`netprobe rr`, p50).
//!
//! Time to first drop: B floods A with one UDP datagram every 100 us; the
//! clock (CLOCK_BOOTTIME) is read just before the isolate command starts,
//! and the kernel programs record the time of their first drop. Two paths:
//! the local `rxsentry-sensor isolate`, and the SOC's `rxsentry isolate`
//! (CLI in B -> collector in B -> the daemon's control stream in A).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tests::{
    Collector, InNetns, Process, Sensor, Stderr, bin_path,
    netns::{Bpffs, End, Netns, veth},
    procs::command_in,
};

use super::common::{BpfStats, block_on, median_f64, sha256_of, stop};

const PORT: &str = "7100";
const COLLECTOR_PORT: &str = "50051";
const HOST_ID: &str = "bench-iso";
/// The SOC's operator token in the SOC-path runs (its SHA-256 goes into the
/// collector's operator file).
const TOKEN: &str = "bench-operator-token";
const A_ADDR: &str = "10.232.0.1";
const B_ADDR: &str = "10.232.0.2";

/// Medians of the alternated rounds and of the isolate runs.
pub struct IsolationReport {
    rounds: usize,
    tput_with: f64,
    tput_without: f64,
    p50_with: f64,
    p50_without: f64,
    p99_with: f64,
    p99_without: f64,
    /// Median over rounds of each round's own without/with throughput
    /// ratio: less sensitive to drift (other jobs on the box) than the
    /// ratio of medians.
    tput_pair_ratio: f64,
    /// The same for the UDP round trip p50 (with / without).
    p50_pair_ratio: f64,
    /// Kernel-measured run time of the programs per packet (not isolated).
    bpf_ns_per_packet: f64,
    bpf_runs: u64,
    first_drop_ms: f64,
    command_ms: f64,
    isolate_runs: usize,
    soc_first_drop_ms: f64,
    soc_command_ms: f64,
}

/// Two namespaces, their veth, a private bpffs and a config (the test
/// harness's guards: all removed on drop, server first).
struct Lab {
    _server: Process,
    a: Netns,
    b: Netns,
    _bpffs: Bpffs,
    dir: tempfile::TempDir,
}

/// `program` (a binary of this workspace) run in `ns` by `ip netns exec`.
fn in_ns(ns: &str, program: &str) -> Command {
    InNetns::IpExec(ns.to_owned()).std_command(bin_path(program))
}

impl Lab {
    fn new() -> Result<Self> {
        let sfx = format!("{:x}", std::process::id());
        let a = Netns::new(&format!("rxb-a-{sfx}"))?;
        let b = Netns::new(&format!("rxb-b-{sfx}"))?;
        let (va, vb) = (format!("rxba{sfx}"), format!("rxbb{sfx}"));
        veth(
            &End {
                ns: &a,
                name: &va,
                v4: &format!("{A_ADDR}/24"),
                v6: "fd32::1/64",
            },
            &End {
                ns: &b,
                name: &vb,
                v4: &format!("{B_ADDR}/24"),
                v6: "fd32::2/64",
            },
        )?;
        let bpffs = Bpffs::mount()?;
        let dir = tempfile::tempdir()?;
        let config = format!(
            "[host]\nid = \"{HOST_ID}\"\n[collector]\nendpoint = \"http://{B_ADDR}:{COLLECTOR_PORT}\"\n[batching]\nmax_delay_ms = 100\n[isolation]\nenabled = true\npin_dir = \"{}\"\nstate_dir = \"{}\"\n",
            bpffs.path.join("iso").display(),
            dir.path().join("state").display()
        );
        std::fs::write(dir.path().join("sensor.toml"), config)?;
        let (server, _) = block_on(Process::start(
            "netprobe",
            command_in(Some(&b.name), bin_path("netprobe")).args(["serve", B_ADDR, PORT]),
            "",
            Duration::from_secs(5),
            Stderr::Inherit,
        ))?;
        Ok(Self {
            _server: server,
            a,
            b,
            _bpffs: bpffs,
            dir,
        })
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("sensor.toml")
    }

    fn sensor(&self, args: &[&str]) -> Result<String> {
        let out = block_on(
            Sensor::with_config_file(self.config())
                .netns(InNetns::IpExec(self.a.name.clone()))
                .args(args)
                .output(),
        )?;
        if !out.status.success() {
            bail!(
                "rxsentry-sensor {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn probe(&self, ns: &str, args: &[&str]) -> Result<String> {
        let out = in_ns(ns, "netprobe").args(args).output()?;
        if !out.status.success() {
            bail!(
                "netprobe {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// (MB/s, p50 us, p99 us) of one measurement.
    fn measure(&self) -> Result<(f64, f64, f64)> {
        let tput = self.probe(&self.a.name, &["tput", B_ADDR, PORT, "3"])?;
        let rr = self.probe(&self.a.name, &["rr", B_ADDR, PORT, "3000"])?;
        Ok((
            number_after(&tput, "MBps")?,
            number_after(&rr, "p50_us")?,
            number_after(&rr, "p99_us")?,
        ))
    }
}

/// The SOC side and a running daemon: collector in B (with an operator),
/// `rxsentry-sensor` in A holding its control stream to it.
struct Soc {
    _collector: Collector,
    daemon: Sensor,
    token_file: PathBuf,
}

impl Soc {
    fn start(lab: &Lab) -> Result<Self> {
        let token_file = lab.dir.path().join("token");
        std::fs::write(&token_file, TOKEN)?;
        let digest = sha256_of(&token_file)?;
        let operators = lab.dir.path().join("operators.toml");
        std::fs::write(
            &operators,
            format!("[[operator]]\nname = \"bench\"\ntoken_sha256 = \"{digest}\"\n"),
        )?;
        let collector = block_on(Collector::start_with(
            Some(&lab.b.name),
            &format!("{B_ADDR}:{COLLECTOR_PORT}"),
            &["--operators".as_ref(), operators.as_os_str()],
        ))?;
        // nsenter keeps this mount namespace (tracefs for the daemon's
        // telemetry hooks); only the network namespace is A's.
        let daemon = block_on(
            Sensor::with_config_file(lab.config())
                .netns(InNetns::NetOnly(lab.a.name.clone()))
                .start(),
        )?;
        let soc = Self {
            _collector: collector,
            daemon,
            token_file,
        };
        // The control stream is up once the collector lists the host.
        for _ in 0..100 {
            if soc.cli(lab, &["hosts", "--json"])?.contains(HOST_ID) {
                return Ok(soc);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("the collector never listed {HOST_ID}")
    }

    /// `rxsentry ARGS` run in B against the collector, with the token.
    fn cli(&self, lab: &Lab, args: &[&str]) -> Result<String> {
        let out = in_ns(&lab.b.name, "rxsentry")
            .args(args)
            .args(["--collector", &format!("http://{B_ADDR}:{COLLECTOR_PORT}")])
            .arg("--token-file")
            .arg(&self.token_file)
            .output()?;
        if !out.status.success() {
            bail!(
                "rxsentry {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the daemon cleanly (SIGTERM); the pins keep the state.
    fn stop(self) -> Result<()> {
        let Self { daemon, .. } = self;
        stop(daemon)
    }
}

/// Milliseconds from the isolate command's start to the first drop, and
/// how long the command ran, `isolate` being the command.
fn time_to_first_drop(lab: &Lab, isolate: impl FnOnce() -> Result<()>) -> Result<(f64, f64)> {
    let mut flood = in_ns(&lab.b.name, "netprobe")
        .args(["flood", A_ADDR, PORT, "3"])
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let t0 = boottime_ns()?;
    isolate()?;
    let t1 = boottime_ns()?;
    let status = lab.sensor(&["isolation", "status"])?;
    let _ = flood.wait();
    let first_drop = number_after(&status, "first_drop_boottime_ns:")? as u64;
    if first_drop < t0 {
        bail!("no drop recorded after the isolate command: {status}");
    }
    Ok(((first_drop - t0) as f64 / 1e6, (t1 - t0) as f64 / 1e6))
}

fn number_after(text: &str, key: &str) -> Result<f64> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            return words
                .next()
                .context("value missing")?
                .parse()
                .context(key.to_owned());
        }
    }
    bail!("no {key} in {text:?}")
}

fn boottime_ns() -> Result<u64> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)?;
    Ok(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
}

pub fn run(rounds: usize) -> Result<IsolationReport> {
    let lab = Lab::new()?;
    // Kernel-side cost per packet, counted while the programs run.
    let stats = BpfStats::enable()?;
    let (mut bpf_runs, mut bpf_ns) = (0u64, 0u64);
    let (mut tw, mut to, mut pw, mut po, mut qw, mut qo) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for round in 0..rounds {
        for with in [round % 2 == 0, round % 2 != 0] {
            if with {
                lab.sensor(&["release", "--reason", "bench: attach, not isolated"])?;
            } else {
                lab.sensor(&["isolation", "detach"])?;
            }
            let before = if with {
                lab.sensor(&["isolation", "status"])?
            } else {
                String::new()
            };
            let (t, p50, p99) = lab.measure()?;
            if with {
                let after = lab.sensor(&["isolation", "status"])?;
                if !after.contains("isolated: no") {
                    bail!("the programs were to be attached and not isolated");
                }
                let delta = |key: &str| -> Result<u64> {
                    Ok((number_after(&after, key)? - number_after(&before, key)?) as u64)
                };
                bpf_runs += delta("program_runs:")?;
                bpf_ns += delta("program_run_ns:")?;
            }
            let (t_, p_, q_) = if with {
                (&mut tw, &mut pw, &mut qw)
            } else {
                (&mut to, &mut po, &mut qo)
            };
            t_.push(t);
            p_.push(p50);
            q_.push(p99);
            println!(
                "isolation round {round} {}: {t:.0} MB/s, p50 {p50:.1} us, p99 {p99:.1} us",
                if with { "with programs" } else { "without" }
            );
        }
    }

    // Time to first drop, the programs attached and traffic flowing.
    let runs = 5;
    let (mut first, mut command) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        lab.sensor(&["release", "--reason", "bench: before isolate"])?;
        let (drop_ms, command_ms) = time_to_first_drop(&lab, || {
            lab.sensor(&["isolate", "--reason", "bench: time to first drop"])
                .map(drop)
        })?;
        first.push(drop_ms);
        command.push(command_ms);
    }
    drop(stats);
    // The same through the SOC: CLI -> collector -> the daemon.
    lab.sensor(&["release", "--reason", "bench: before the SOC runs"])?;
    let soc = Soc::start(&lab)?;
    let (mut soc_first, mut soc_command) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        soc.cli(
            &lab,
            &["release", HOST_ID, "--reason", "bench: before isolate"],
        )?;
        let (drop_ms, command_ms) = time_to_first_drop(&lab, || {
            soc.cli(
                &lab,
                &["isolate", HOST_ID, "--reason", "bench: time to first drop"],
            )
            .map(drop)
        })?;
        soc_first.push(drop_ms);
        soc_command.push(command_ms);
    }
    soc.cli(
        &lab,
        &["release", HOST_ID, "--reason", "bench: SOC runs done"],
    )?;
    soc.stop()?;
    let pairs: Vec<f64> = to.iter().zip(&tw).map(|(o, w)| o / w).collect();
    let tput_pair_ratio = median_f64(&pairs);
    let pairs: Vec<f64> = pw.iter().zip(&po).map(|(w, o)| w / o).collect();
    let p50_pair_ratio = median_f64(&pairs);
    lab.sensor(&["release", "--reason", "bench: done"])?;
    lab.sensor(&["isolation", "detach"])?;
    Ok(IsolationReport {
        rounds,
        tput_with: median_f64(&tw),
        tput_without: median_f64(&to),
        p50_with: median_f64(&pw),
        p50_without: median_f64(&po),
        p99_with: median_f64(&qw),
        p99_without: median_f64(&qo),
        tput_pair_ratio,
        p50_pair_ratio,
        bpf_ns_per_packet: bpf_ns as f64 / bpf_runs.max(1) as f64,
        bpf_runs,
        first_drop_ms: median_f64(&first),
        command_ms: median_f64(&command),
        isolate_runs: runs,
        soc_first_drop_ms: median_f64(&soc_first),
        soc_command_ms: median_f64(&soc_command),
    })
}

/// Heading of the isolation section in docs/bench.md.
pub const HEADING: &str = "## Network isolation";

impl IsolationReport {
    pub fn render(&self) -> String {
        let verdict = |ok: bool| if ok { "pass" } else { "FAIL" };
        // Throughput: how much slower with the programs (>= 1 is slower).
        let tput_ratio = self.tput_without / self.tput_with;
        let lat_ratio = self.p50_with / self.p50_without;
        let mut t = String::new();
        let _ = writeln!(t, "{HEADING}\n");
        let _ = writeln!(
            t,
            "veth pair between two network namespaces, TC programs on one end attached but not isolated vs none; {} rounds per side, alternated (order flipped each round); medians. Time to first drop: median of {} runs each of the local `rxsentry-sensor isolate` (process start, object load, map writes) and of the SOC's `rxsentry isolate` through the collector, while the peer sends a UDP datagram every 100 us.\n",
            self.rounds, self.isolate_runs
        );
        let _ = writeln!(t, "| measure | value | target | verdict |");
        let _ = writeln!(t, "| --- | --- | --- | --- |");
        let _ = writeln!(
            t,
            "| TCP throughput, without / with programs | {tput_ratio:.3} ({:.0} MB/s / {:.0} MB/s) | <= 1.03 | {} |",
            self.tput_without,
            self.tput_with,
            verdict(tput_ratio <= 1.03)
        );
        let _ = writeln!(
            t,
            "| TCP throughput, median of each round's without / with | {:.3} | <= 1.03 | {} |",
            self.tput_pair_ratio,
            verdict(self.tput_pair_ratio <= 1.03)
        );
        let _ = writeln!(
            t,
            "| UDP round trip p50, with / without programs | {lat_ratio:.3} ({:.1} us / {:.1} us) | <= 1.03 | {} |",
            self.p50_with,
            self.p50_without,
            verdict(lat_ratio <= 1.03)
        );
        let _ = writeln!(
            t,
            "| UDP round trip p50, median of each round's with / without | {:.3} | <= 1.03 | {} |",
            self.p50_pair_ratio,
            verdict(self.p50_pair_ratio <= 1.03)
        );
        let _ = writeln!(
            t,
            "| UDP round trip p99, with / without programs | {:.1} us / {:.1} us | - | - |",
            self.p99_with, self.p99_without
        );
        let _ = writeln!(
            t,
            "| BPF run time per packet, not isolated (kernel.bpf_stats_enabled, {} runs) | {:.1} ns | - | - |",
            self.bpf_runs, self.bpf_ns_per_packet
        );
        let _ = writeln!(
            t,
            "| local `rxsentry-sensor isolate` start -> first dropped packet | {:.1} ms (command ran {:.1} ms) | - | - |",
            self.first_drop_ms, self.command_ms
        );
        let _ = writeln!(
            t,
            "| SOC `rxsentry isolate` start (CLI -> collector -> sensor's control stream) -> first dropped packet | {:.1} ms (command ran {:.1} ms) | - | - |",
            self.soc_first_drop_ms, self.soc_command_ms
        );
        t
    }
}

/// Replaces (or appends) the isolation section of `path`.
pub fn write_section(path: &Path, section: &str) -> Result<()> {
    super::common::write_section(path, HEADING, section)
}
