//! Network isolation on the real kernel, in network namespaces this test
//! creates: `term` (the sensor runs inside it, so only that namespace is
//! ever isolated), `soc` (the collector) and `other` (another host). Every
//! namespace, veth, bpffs and process is removed on drop, even on failure.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tests::{
    Collector, InNetns, Process, Sensor, Stderr, bin_path, marker,
    netns::{Bpffs, End, Netns, veth},
    procs::command_in,
};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::Child,
};

/// The traffic helper (tests/src/bin/netprobe.rs), found at run time with
/// the other binaries, so the suite also runs where it was not built (the
/// VM guest of `cargo xtask vm-test`).
fn netprobe() -> std::path::PathBuf {
    tests::bin_path("netprobe")
}
const PORT: &str = "7000";
const COLLECTOR_V4: &str = "10.231.1.2";
const TERM_V4_OTHER: &str = "10.231.2.1";
const OTHER_V4: &str = "10.231.2.2";
const TERM_V6_OTHER: &str = "fd31:2::1";
const OTHER_V6: &str = "fd31:2::2";
const TERM_V4_NEW: &str = "10.231.3.1";
const OTHER_V4_NEW: &str = "10.231.3.2";
const TOKEN: &str = "alice-token-for-tests";

/// Three namespaces, two veth pairs, a private bpffs and a state dir.
struct Lab {
    sfx: String,
    term: Netns,
    soc: Netns,
    other: Netns,
    bpffs: Bpffs,
    dir: tempfile::TempDir,
    /// Echo servers (kept alive until the lab goes).
    servers: Vec<Process>,
    /// Extra `[isolation]` keys of every sensor config.
    isolation_keys: String,
}

impl Lab {
    async fn new() -> anyhow::Result<Self> {
        let sfx = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let term = Netns::new(&format!("rxs-term-{sfx}"))?;
        let soc = Netns::new(&format!("rxs-soc-{sfx}"))?;
        let other = Netns::new(&format!("rxs-other-{sfx}"))?;
        let (ts, st, to, ot) = (
            format!("rxts{sfx}"),
            format!("rxst{sfx}"),
            format!("rxto{sfx}"),
            format!("rxot{sfx}"),
        );
        veth(
            &End {
                ns: &term,
                name: &ts,
                v4: "10.231.1.1/24",
                v6: "fd31:1::1/64",
            },
            &End {
                ns: &soc,
                name: &st,
                v4: "10.231.1.2/24",
                v6: "fd31:1::2/64",
            },
        )?;
        veth(
            &End {
                ns: &term,
                name: &to,
                v4: "10.231.2.1/24",
                v6: "fd31:2::1/64",
            },
            &End {
                ns: &other,
                name: &ot,
                v4: "10.231.2.2/24",
                v6: "fd31:2::2/64",
            },
        )?;
        let mut lab = Self {
            sfx,
            term,
            soc,
            other,
            bpffs: Bpffs::mount()?,
            dir: tempfile::tempdir()?,
            servers: Vec::new(),
            isolation_keys: String::new(),
        };
        for ns in [lab.term.name.clone(), lab.other.name.clone()] {
            lab.serve(&ns).await?;
        }
        Ok(lab)
    }

    /// A dual-stack echo server on PORT in `ns`.
    async fn serve(&mut self, ns: &str) -> anyhow::Result<()> {
        self.serve_on(ns, PORT).await
    }

    /// A dual-stack echo server on `port` (TCP and UDP) in `ns`.
    async fn serve_on(&mut self, ns: &str, port: &str) -> anyhow::Result<()> {
        let (server, _) = Process::start(
            "echo server",
            command_in(Some(ns), netprobe()).args(["serve", "::", port]),
            "",
            Duration::from_secs(5),
            Stderr::Inherit,
        )
        .await?;
        self.servers.push(server);
        Ok(())
    }

    /// The veth pair added while isolated (term <-> other, 10.231.3.0/24).
    fn add_interface(&self) -> anyhow::Result<String> {
        let (tn, nt) = (format!("rxtn{}", self.sfx), format!("rxnt{}", self.sfx));
        veth(
            &End {
                ns: &self.term,
                name: &tn,
                v4: "10.231.3.1/24",
                v6: "fd31:3::1/64",
            },
            &End {
                ns: &self.other,
                name: &nt,
                v4: "10.231.3.2/24",
                v6: "fd31:3::2/64",
            },
        )?;
        Ok(tn)
    }

    fn pin_dir(&self) -> PathBuf {
        self.bpffs.path.join("rxsentry-isolation")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn host_id(&self) -> String {
        format!("term-{}", self.sfx)
    }

    fn sensor_config(&self) -> String {
        self.sensor_config_with("")
    }

    /// The lab's sensor config plus `extra` TOML (top-level keys or tables).
    fn sensor_config_with(&self, extra: &str) -> String {
        format!(
            "[host]\nid = \"{}\"\n{}\
             [batching]\nmax_events = 16\nmax_delay_ms = 100\n\
             [isolation]\nenabled = true\npin_dir = \"{}\"\nstate_dir = \"{}\"\ninterface_poll_ms = 200\n{}{extra}",
            self.host_id(),
            // The files appear once the SOC's collector issued them.
            tests::collector_section(
                &format!("https://{COLLECTOR_V4}:50051"),
                &self.dir.path().join("tls")
            ),
            self.pin_dir().display(),
            self.state_dir().display(),
            self.isolation_keys
        )
    }

    fn config_file(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("sensor.toml");
        std::fs::write(&path, self.sensor_config())?;
        Ok(path)
    }

    /// Whether `kind` (tcp, udp, icmp) gets an echo from `to` out of `from`.
    async fn reaches(&self, from: &Netns, kind: &str, to: &str) -> anyhow::Result<bool> {
        let mut cmd = command_in(Some(&from.name), netprobe());
        cmd.arg(kind).arg(to);
        if kind != "icmp" {
            cmd.arg(PORT);
        }
        let status = cmd.arg("800").stderr(Stdio::null()).status().await?;
        Ok(status.success())
    }

    /// Whether a UDP echo from `from`'s local port `sport` to `to`:`port`
    /// comes back.
    async fn udp_from(
        &self,
        from: &Netns,
        sport: u16,
        to: &str,
        port: &str,
    ) -> anyhow::Result<bool> {
        let status = command_in(Some(&from.name), netprobe())
            .args(["udp", to, port, "800", &sport.to_string()])
            .stderr(Stdio::null())
            .status()
            .await?;
        Ok(status.success())
    }

    /// Every probe from `from` to each of `to`, as "kind addr" -> reached.
    async fn survey(&self, from: &Netns, to: &[&str]) -> anyhow::Result<Vec<(String, bool)>> {
        let mut out = Vec::new();
        for addr in to {
            for kind in ["tcp", "udp", "icmp"] {
                out.push((
                    format!("{kind} {addr}"),
                    self.reaches(from, kind, addr).await?,
                ));
            }
        }
        Ok(out)
    }

    async fn assert_all(
        &self,
        from: &Netns,
        to: &[&str],
        want: bool,
        when: &str,
    ) -> anyhow::Result<()> {
        let got = self.survey(from, to).await?;
        let wrong: Vec<&String> = got
            .iter()
            .filter(|(_, ok)| *ok != want)
            .map(|(w, _)| w)
            .collect();
        if !wrong.is_empty() {
            bail!(
                "{when}: from {} expected {} but got the opposite for {wrong:?}",
                from.name,
                if want { "reachable" } else { "dropped" }
            );
        }
        Ok(())
    }

    /// [`Self::local`], which must succeed.
    async fn local_ok(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = self.local(args).await?;
        anyhow::ensure!(
            out.status.success(),
            "rxsentry-sensor {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// `rxsentry-sensor ARGS` inside `term` with the lab's config.
    async fn local(&self, args: &[&str]) -> anyhow::Result<Output> {
        Sensor::with_config_file(self.config_file()?)
            .netns(InNetns::IpExec(self.term.name.clone()))
            .args(args)
            .output()
            .await
    }
}

/// The analyst side: the CLI run inside `soc` against the collector.
struct Soc<'a> {
    lab: &'a Lab,
    token_file: PathBuf,
    collector: Collector,
}

impl<'a> Soc<'a> {
    async fn start(lab: &'a Lab) -> anyhow::Result<Self> {
        let token_file = lab.dir.path().join("token");
        pki::files::write_secret(&token_file, TOKEN.as_bytes())?;
        let ops = Self::operators(lab);
        std::fs::write(
            &ops,
            tests::collector_operator_toml("alice", "responder", TOKEN),
        )?;
        let listen = format!("{COLLECTOR_V4}:50051");
        let state = tests::CollectorState::new(&listen)?;
        let collector = Self::collector_on(lab, state).await?;
        collector.issue_sensor(&lab.host_id(), &lab.dir.path().join("tls"))?;
        Ok(Self {
            lab,
            token_file,
            collector,
        })
    }

    fn operators(lab: &Lab) -> PathBuf {
        lab.dir.path().join("operators.toml")
    }

    async fn collector_on(lab: &Lab, state: tests::CollectorState) -> anyhow::Result<Collector> {
        let ops = Self::operators(lab);
        Collector::start_on(
            state,
            Some(&lab.soc.name),
            &format!("{COLLECTOR_V4}:50051"),
            &["--operators".as_ref(), ops.as_os_str()],
        )
        .await
    }

    /// The collector stopped and started again on its state (CA, store,
    /// operators) at the same address: an upgrade or a crash at the SOC.
    async fn restart_collector(self) -> anyhow::Result<Self> {
        let Self {
            lab,
            token_file,
            collector,
        } = self;
        let state = collector.stop_keeping_state().await?;
        let collector = Self::collector_on(lab, state).await?;
        Ok(Self {
            lab,
            token_file,
            collector,
        })
    }

    async fn cli(&self, args: &[&str], token: Option<&Path>) -> anyhow::Result<Output> {
        let mut cmd = command_in(Some(&self.lab.soc.name), bin_path("rxsentry"));
        cmd.args(args)
            .args(["--collector", &self.collector.addr])
            .arg("--ca")
            .arg(self.collector.ca_file());
        cmd.env_remove("RXSENTRY_TOKEN")
            .env_remove("RXSENTRY_TOKEN_FILE");
        if let Some(token) = token {
            cmd.arg("--token-file").arg(token);
        }
        Ok(cmd.output().await?)
    }

    /// `rxsentry release` of the lab's terminal, which must succeed.
    async fn release_checked(&self) -> anyhow::Result<()> {
        let out = self
            .cli(
                &["release", &self.lab.host_id(), "--reason", "checked"],
                Some(&self.token_file),
            )
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "release failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// `rxsentry hosts --json`, the lab's terminal only.
    async fn term_host(&self) -> anyhow::Result<Option<Host>> {
        let out = self
            .cli(&["hosts", "--json"], Some(&self.token_file))
            .await?;
        if !out.status.success() {
            bail!(
                "rxsentry hosts failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let (id, host) = Host::parse(line)?;
            if id == self.lab.host_id() {
                return Ok(Some(host));
            }
        }
        Ok(None)
    }

    async fn wait_host(&self, what: &str, ok: impl Fn(&Host) -> bool) -> anyhow::Result<Host> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let host = self.term_host().await?;
            if let Some(h) = host.as_ref().filter(|h| ok(h)) {
                return Ok(h.clone());
            }
            if Instant::now() > deadline {
                bail!("rxsentry hosts never showed {what}; last: {host:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `rxsentry tail --json --kind isolation,exec,tamper,policy`, lines
    /// kept, once it is seen to be subscribed: an exec in `term` made after
    /// it started has reached it (a sensor must be running there).
    async fn tail(&self) -> anyhow::Result<Tail> {
        self.tail_since(None).await
    }

    /// [`Self::tail`], replaying the events stored since `since` first.
    async fn tail_since(&self, since: Option<&str>) -> anyhow::Result<Tail> {
        let mut cmd = command_in(Some(&self.lab.soc.name), bin_path("rxsentry"));
        if let Some(since) = since {
            cmd.args(["tail", "--since", since]);
        } else {
            cmd.arg("tail");
        }
        let mut child = cmd
            .args([
                "--json",
                "--kind",
                "isolation",
                "--kind",
                "exec",
                "--kind",
                "tamper",
                "--kind",
                "policy",
                "--collector",
            ])
            .arg(&self.collector.addr)
            .arg("--ca")
            .arg(self.collector.ca_file())
            .arg("--token-file")
            .arg(&self.token_file)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let mut reader = BufReader::new(child.stdout.take().context("stdout")?).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let tail = Tail {
            _child: child,
            lines,
        };
        // An exec made before the subscription registered is not replayed:
        // a new one each second until one arrives.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = marker("rxtail-live");
            exec_marker(self.lab, &m)?;
            let seen = tail.wait_within(Duration::from_secs(1), |l| l.contains(&m));
            if seen.await.is_some() {
                return Ok(tail);
            }
            if Instant::now() > deadline {
                bail!("`rxsentry tail` never showed an exec made after it started");
            }
        }
    }
}

struct Tail {
    _child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Tail {
    async fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        match self.wait_within(Duration::from_secs(15), ok).await {
            Some(line) => Ok(line),
            None => bail!(
                "no {what} in `rxsentry tail` within 15 s; got {:?}",
                self.lines.lock().unwrap()
            ),
        }
    }

    /// The first line for which `ok` holds, if one comes within `limit`.
    async fn wait_within(&self, limit: Duration, ok: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| ok(l)) {
                return Some(line.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Lines for which `ok` holds, so far.
    fn count(&self, ok: impl Fn(&str) -> bool) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| ok(l)).count()
    }
}

/// One line of `rxsentry hosts --json`.
#[derive(Clone, Debug)]
struct Host {
    isolated: Option<bool>,
    requester: String,
    control_connected: bool,
    instance: String,
    interfaces: Vec<String>,
    line: String,
}

impl Host {
    fn parse(line: &str) -> anyhow::Result<(String, Self)> {
        let v: serde_json::Value = serde_json::from_str(line).context("hosts --json line")?;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        Ok((
            s("host_id"),
            Self {
                isolated: v["isolated"].as_bool(),
                requester: s("isolation_requester"),
                control_connected: v["control_connected"].as_bool().unwrap_or(false),
                instance: s("sensor_instance_id"),
                interfaces: v["isolation_interfaces"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|i| i.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                line: line.to_owned(),
            },
        ))
    }
}

/// Runs a program named after `marker` in `term`, so its exec event can be
/// picked out of the stream.
fn exec_marker(lab: &Lab, marker: &str) -> anyhow::Result<()> {
    let path = lab.dir.path().join(marker);
    // coreutils' true: a copy of busybox (the guest's /bin/true) under
    // another name would not know which applet to run.
    tests::exe::copy_executable(Path::new("/usr/bin/true"), &path)?;
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.term.name])
        .arg(&path)
        .status()?;
    anyhow::ensure!(status.success(), "{marker} failed: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolate_from_the_soc_survives_crash_and_restart_until_released() -> anyhow::Result<()> {
    let lab = Lab::new().await?;
    let soc = Soc::start(&lab).await?;
    let others = [OTHER_V4, OTHER_V6];
    let terms = [TERM_V4_OTHER, TERM_V6_OTHER];

    // Before: everything reachable both ways.
    lab.assert_all(&lab.term, &others, true, "before isolation")
        .await?;
    lab.assert_all(&lab.other, &terms, true, "before isolation")
        .await?;

    let sensor = Sensor::start_in(&lab.term.name, &lab.sensor_config()).await?;
    let before = soc
        .wait_host("the terminal connected", |h| h.control_connected)
        .await?;
    assert_eq!(before.isolated, Some(false), "{}", before.line);
    // Programs attached but not isolated: nothing changes.
    lab.assert_all(&lab.other, &terms, true, "programs attached, not isolated")
        .await?;

    // Refused without a valid token, and nothing changes.
    let host = lab.host_id();
    let wrong = lab.dir.path().join("wrong-token");
    pki::files::write_secret(&wrong, b"not-a-token")?;
    let out = soc
        .cli(&["isolate", &host, "--reason", "test"], Some(&wrong))
        .await?;
    assert!(!out.status.success(), "a wrong token was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PermissionDenied") && err.contains("not recognised"),
        "{err}"
    );
    let out = soc
        .cli(&["isolate", &host, "--reason", "test"], None)
        .await?;
    assert!(!out.status.success(), "no token was accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no operator token"));
    assert!(
        lab.reaches(&lab.other, "tcp", TERM_V4_OTHER).await?,
        "refused request changed something"
    );
    assert_eq!(soc.term_host().await?.and_then(|h| h.isolated), Some(false));

    // Isolate from the SOC.
    let tail = soc.tail().await?;
    let out = soc
        .cli(
            &["isolate", &host, "--reason", "ransomware note on screen"],
            Some(&soc.token_file),
        )
        .await?;
    assert!(
        out.status.success(),
        "isolate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ISOLATED (by alice"));
    lab.assert_all(&lab.term, &others, false, "isolated")
        .await?;
    lab.assert_all(&lab.other, &terms, false, "isolated")
        .await?;
    let audit = tail
        .wait_for("the isolate audit event", |l| {
            l.contains("\"kind\":\"isolation\"") && l.contains("\"action\":\"isolate\"")
        })
        .await?;
    assert!(
        audit.contains("\"requester\":\"alice\"") && audit.contains("ransomware note on screen"),
        "{audit}"
    );
    // Telemetry still flows: an event made after isolation arrives.
    let m = marker("rxiso");
    exec_marker(&lab, &m)?;
    tail.wait_for("the exec made while isolated", |l| l.contains(&m))
        .await?;

    // An interface that appears while isolated is isolated too.
    let new_iface = lab.add_interface()?;
    soc.wait_host("the new interface covered", |h| {
        h.interfaces.contains(&new_iface)
    })
    .await?;
    lab.assert_all(
        &lab.other,
        &[TERM_V4_NEW],
        false,
        "new interface while isolated",
    )
    .await?;
    lab.assert_all(
        &lab.term,
        &[OTHER_V4_NEW],
        false,
        "new interface while isolated",
    )
    .await?;

    // A crash changes nothing.
    let killed = sensor.kill().await?;
    assert!(!killed.success());
    lab.assert_all(&lab.other, &terms, false, "after SIGKILL of the sensor")
        .await?;
    lab.assert_all(&lab.term, &others, false, "after SIGKILL of the sensor")
        .await?;

    // A restarted sensor finds the isolation in force and reports it.
    let sensor = Sensor::start_in(&lab.term.name, &lab.sensor_config()).await?;
    exec_marker(&lab, &marker("rxiso-restart"))?;
    let after = soc
        .wait_host("the restarted sensor reporting isolation", |h| {
            h.control_connected && h.isolated == Some(true) && h.instance != before.instance
        })
        .await?;
    assert_eq!(after.requester, "alice", "{}", after.line);
    lab.assert_all(&lab.other, &terms, false, "after restart")
        .await?;

    // An attacker flips the pinned state map to "not isolated" (what a
    // bpftool map update does): the sensor isolates again at its next tick
    // and reports it, as a re-apply and as a tamper event.
    flip_isolation_off(&lab.pin_dir())?;
    let reapplied = tail
        .wait_for("the re-apply after the map was flipped", |l| {
            l.contains("\"action\":\"reapply\"") && l.contains("sensor:tamper")
        })
        .await?;
    assert!(reapplied.contains("\"isolated\":true"), "{reapplied}");
    let tamper = tail
        .wait_for("the tamper event", |l| {
            l.contains("\"kind\":\"tamper\"") && l.contains("isolation state map")
        })
        .await?;
    assert!(tamper.contains("\"restored\":true"), "{tamper}");
    // The write itself needed the map's pin, and that open is reported
    // with the process that made it (this test).
    let opened = tail
        .wait_for("the tamper event of the pin's open", |l| {
            l.contains("\"kind\":\"tamper\"")
                && l.contains("BPF_OBJ_GET")
                && l.contains("ISOLATION_STATE")
        })
        .await?;
    let pid = std::process::id();
    assert!(
        [format!("\"pid\":{pid},"), format!("\"pid\":{pid}}}")]
            .iter()
            .any(|p| opened.contains(p.as_str())),
        "{opened}"
    );

    // An attacker detaches the isolation links themselves (`bpftool link
    // detach`: the pins stay, the programs leave the interface): the
    // sensor sees each one detached at its next poll, attaches again and
    // reports it; the terminal stays cut off.
    // Kernels before 6.6 (Debian 12's 6.1 in the VM) have no TCX: the
    // programs sit in clsact filters through netlink, with no link; there
    // the attacker deletes the filters (`tc filter del`) instead.
    let links_dir = lab.pin_dir().join("links");
    let mut links: Vec<PathBuf> = std::fs::read_dir(&links_dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    links.sort();
    let tcx = tests::kernel::kernel().tcx;
    assert_eq!(!links.is_empty(), tcx, "tcx: {tcx}, links: {links:?}");
    for link in &links {
        let call = tests::attack::link_detach(link)?;
        assert_eq!(call.errno, 0, "detaching {}: {call:?}", link.display());
    }
    let mut taken_off: Vec<(&str, String)> = links
        .iter()
        .map(|l| ("isolation link", l.display().to_string()))
        .collect();
    if !tcx {
        // Our filters' priority (0x5253), on the interfaces towards `other`.
        for iface in [format!("rxto{}", lab.sfx), format!("rxtn{}", lab.sfx)] {
            for dir in ["ingress", "egress"] {
                tests::netns::tc(&[
                    "-n",
                    &lab.term.name,
                    "filter",
                    "del",
                    "dev",
                    &iface,
                    dir,
                    "pref",
                    "21075",
                ])?;
                taken_off.push(("isolation filter", format!("{iface} {dir}")));
            }
        }
    }
    for (object, name) in &taken_off {
        let found = tail
            .wait_for("the detached program's tamper event", |l| {
                l.contains("\"kind\":\"tamper\"") && l.contains(object) && l.contains(name)
            })
            .await?;
        assert!(
            found.contains("detached") && found.contains("\"restored\":true"),
            "{found}"
        );
    }
    lab.assert_all(&lab.other, &terms, false, "after the links were detached")
        .await?;
    lab.assert_all(&lab.other, &terms, false, "after the map was flipped")
        .await?;

    // The collector restarts while the terminal is isolated: the sensor's
    // control stream comes back by itself through isolation's collector
    // exception (a new TCP connection and TLS handshake), isolation holds
    // meanwhile, and the release below reaches the sensor over it.
    drop(tail);
    let soc = soc.restart_collector().await?;
    lab.assert_all(&lab.other, &terms, false, "collector restarted")
        .await?;
    // The same sensor process (this test's `sensor`) reconnects by itself.
    soc.wait_host("the control stream back after the collector restart", |h| {
        h.control_connected && h.isolated == Some(true)
    })
    .await?;
    let tail = soc.tail().await?;

    // Release: reachable again, on every interface, both ways.
    let out = soc
        .cli(
            &["release", &host, "--reason", "reimaged"],
            Some(&soc.token_file),
        )
        .await?;
    assert!(
        out.status.success(),
        "release failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.assert_all(
        &lab.term,
        &[OTHER_V4, OTHER_V6, OTHER_V4_NEW],
        true,
        "released",
    )
    .await?;
    lab.assert_all(
        &lab.other,
        &[TERM_V4_OTHER, TERM_V6_OTHER, TERM_V4_NEW],
        true,
        "released",
    )
    .await?;
    let audit = tail
        .wait_for("the release audit event", |l| {
            l.contains("\"action\":\"release\"")
        })
        .await?;
    assert!(
        audit.contains("\"requester\":\"alice\"") && audit.contains("reimaged"),
        "{audit}"
    );
    assert!(sensor.stop().await?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_isolation_works_without_the_daemon_and_is_reapplied_at_boot() -> anyhow::Result<()> {
    local_isolation(Lab::new().await?).await
}

/// The same with clsact filters through netlink, as on kernels before 6.6
/// (Debian 12's 6.1), where there are no TCX links to pin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netlink_attach_mode_isolates_and_releases_like_tcx() -> anyhow::Result<()> {
    let mut lab = Lab::new().await?;
    lab.isolation_keys = "tc_attach = \"netlink\"\n".to_owned();
    local_isolation(lab).await
}

/// `local_port` narrows an allow rule to this terminal's port, on egress
/// (source port) and ingress (destination port): the narrow DHCP form
/// `{ address = "any", port = 67, local_port = 68, protocol = "udp" }` with
/// the lab's ports. Software on the kiosk that picks another source port,
/// the allowed local port towards another peer port, or a peer that sends
/// from another port, is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_rule_with_a_local_port_lets_only_that_local_port_through() -> anyhow::Result<()> {
    // term's client port towards any peer's PORT; other's client port
    // towards term's PORT, for OTHER_V6 only.
    const CLIENT: u16 = 40068;
    const OTHER_CLIENT: u16 = 40067;
    const SECOND_PORT: &str = "7010";
    let mut lab = Lab::new().await?;
    lab.isolation_keys = format!(
        "allow = [\n  {{ address = \"any\", port = {PORT}, local_port = {CLIENT}, protocol = \"udp\" }},\n  \
         {{ address = \"{OTHER_V6}\", port = {OTHER_CLIENT}, local_port = {PORT}, protocol = \"udp\" }},\n]\n"
    );
    let other_ns = lab.other.name.clone();
    lab.serve_on(&other_ns, SECOND_PORT).await?;

    // (from term?, local port, to, port): reached while isolated?
    let probes: [(bool, u16, &str, &str, bool); 10] = [
        (true, CLIENT, OTHER_V4, PORT, true),
        (true, CLIENT, OTHER_V6, PORT, true),
        (true, CLIENT + 1, OTHER_V4, PORT, false),
        (true, CLIENT + 1, OTHER_V6, PORT, false),
        (true, 0, OTHER_V4, PORT, false),
        (true, CLIENT, OTHER_V4, SECOND_PORT, false),
        (true, CLIENT, OTHER_V6, SECOND_PORT, false),
        (false, OTHER_CLIENT, TERM_V6_OTHER, PORT, true),
        (false, OTHER_CLIENT + 1, TERM_V6_OTHER, PORT, false),
        (false, OTHER_CLIENT, TERM_V4_OTHER, PORT, false),
    ];
    let check = |isolated: bool, when: &'static str| {
        let lab = &lab;
        async move {
            let mut wrong = Vec::new();
            for (from_term, sport, to, port, allowed) in probes {
                let from = if from_term { &lab.term } else { &lab.other };
                let want = !isolated || allowed;
                if lab.udp_from(from, sport, to, port).await? != want {
                    wrong.push(format!(
                        "udp {} :{sport} -> {to}:{port} (want {})",
                        if from_term { "term" } else { "other" },
                        if want { "reached" } else { "dropped" }
                    ));
                }
            }
            if !wrong.is_empty() {
                bail!("{when}: {wrong:?}");
            }
            anyhow::Ok(())
        }
    };
    check(false, "before isolating").await?;

    lab.local_ok(&["isolate", "--reason", "local port test"])
        .await?;
    check(true, "isolated").await?;
    // ARP and neighbour discovery pass while isolated: with the neighbour
    // caches emptied, the allowed peers (IPv4 and IPv6) are reached again.
    for ns in [&lab.term, &lab.other] {
        tests::netns::ip(&["-n", &ns.name, "neigh", "flush", "all"])?;
    }
    check(true, "isolated, neighbour caches flushed").await?;
    // The rules widen nothing else: TCP and ICMP (and UDP from an
    // ephemeral port) are still dropped both ways.
    lab.assert_all(
        &lab.other,
        &[TERM_V4_OTHER, TERM_V6_OTHER],
        false,
        "isolated",
    )
    .await?;
    lab.assert_all(&lab.term, &[OTHER_V4, OTHER_V6], false, "isolated")
        .await?;
    let state = std::fs::read_to_string(lab.state_dir().join("isolation.toml"))?;
    assert!(
        state.contains(&format!("local_port = {CLIENT}"))
            && state.contains(&format!("local_port = {PORT}")),
        "{state}"
    );

    // Re-applied from the state file (as at boot), the local ports hold.
    let out = lab.local(&["isolation", "detach"]).await?;
    assert!(out.status.success());
    let out = lab.local(&["isolate", "--reapply"]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(true, "re-applied").await?;

    let out = lab.local(&["release", "--reason", "done"]).await?;
    assert!(out.status.success());
    check(false, "released").await?;
    Ok(())
}

/// Isolation fails closed on what it cannot parse, and covers L3 devices.
/// Hand-made frames leave `term` towards `other`'s address, which an allow
/// rule lets through in full: while isolated only the well-formed one
/// arrives; a UDP header cut short, an IPv4 header cut short and an
/// unknown ethertype are dropped (before and after, all four arrive, so
/// the receiver does see such frames). On a tun device (the `_l3`
/// programs, headers at offset 0) an allow rule naming the peer's port
/// lets exactly that UDP exchange through both ways and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_drops_unparseable_frames_and_covers_tun_devices() -> anyhow::Result<()> {
    const TUN_LOCAL: &str = "10.231.9.1";
    const TUN_PEER: &str = "10.231.9.2";
    let mut lab = Lab::new().await?;
    lab.isolation_keys = format!(
        "allow = [\n  {{ address = \"{OTHER_V4}\" }},\n  \
         {{ address = \"{TUN_PEER}\", port = 40000, protocol = \"udp\" }},\n]\n"
    );
    let tun = format!("rxtun{}", lab.sfx);
    let term_ns = lab.term.name.clone();
    tests::netns::ip(&["-n", &term_ns, "tuntap", "add", "dev", &tun, "mode", "tun"])?;
    tests::netns::ip(&[
        "-n", &term_ns, "addr", "add", TUN_LOCAL, "peer", TUN_PEER, "dev", &tun,
    ])?;
    tests::netns::ip(&["-n", &term_ns, "link", "set", &tun, "up"])?;

    let frames = || {
        command_in(Some(&lab.other.name), netprobe())
            .args([
                "frames",
                &term_ns,
                &format!("rxto{}", lab.sfx),
                &format!("rxot{}", lab.sfx),
                TERM_V4_OTHER,
                OTHER_V4,
                "800",
            ])
            .output()
    };
    let tun_probe = || {
        command_in(Some(&term_ns), netprobe())
            .args(["tun", &tun, TUN_LOCAL, TUN_PEER, PORT, "800"])
            .output()
    };
    let check = |isolated: bool, when: &'static str| {
        let (frames, tun_probe) = (&frames, &tun_probe);
        async move {
            let out = frames().await?;
            anyhow::ensure!(
                out.status.success(),
                "netprobe frames: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let want = if isolated {
                "udp=1 udp-cut=0 ip-cut=0 other=0"
            } else {
                "udp=1 udp-cut=1 ip-cut=1 other=1"
            };
            anyhow::ensure!(got == want, "{when}: frames {got}, want {want}");
            let out = tun_probe().await?;
            anyhow::ensure!(
                out.status.success(),
                "netprobe tun: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let want = if isolated {
                "egress=0 echo=1"
            } else {
                "egress=1 echo=1"
            };
            anyhow::ensure!(got == want, "{when}: tun {got}, want {want}");
            anyhow::Ok(())
        }
    };
    check(false, "before isolating").await?;

    lab.local_ok(&["isolate", "--reason", "fail closed test"])
        .await?;
    check(true, "isolated").await?;
    lab.local_ok(&["release", "--reason", "done"]).await?;
    check(false, "released").await?;
    Ok(())
}

async fn local_isolation(lab: Lab) -> anyhow::Result<()> {
    let terms = [TERM_V4_OTHER, TERM_V6_OTHER];

    let out = lab
        .local(&["isolate", "--reason", "staff saw ransomware"])
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.assert_all(&lab.other, &terms, false, "locally isolated")
        .await?;
    // Loopback is never isolated: the terminal's own services still talk.
    lab.assert_all(
        &lab.term,
        &["127.0.0.1", "::1"],
        true,
        "loopback while isolated",
    )
    .await?;
    let state = std::fs::read_to_string(lab.state_dir().join("isolation.toml"))?;
    assert!(
        state.contains("isolated = true") && state.contains("local:"),
        "{state}"
    );
    // The audit record waits for the daemon.
    let spooled = std::fs::read_dir(lab.state_dir().join("audit"))?.count();
    assert_eq!(spooled, 1);

    // Bad input is refused and changes nothing.
    let out = lab.local(&["release", "--reason", " "]).await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a reason is required"), "{err}");
    lab.assert_all(&lab.other, &terms, false, "after a refused release")
        .await?;

    // A reboot loses the pins but not the state file; the boot unit's
    // `isolate --reapply` isolates again before the network is up.
    let out = lab.local(&["isolation", "detach"]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.assert_all(&lab.other, &terms, true, "pins removed (as after a reboot)")
        .await?;
    let out = lab.local(&["isolate", "--reapply"]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("isolated: yes"));
    lab.assert_all(&lab.other, &terms, false, "re-applied")
        .await?;

    let out = lab.local(&["release", "--reason", "cleaned"]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.assert_all(&lab.other, &terms, true, "released locally")
        .await?;
    // Re-applying a released state does nothing.
    let out = lab.local(&["isolate", "--reapply"]).await?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to re-apply"));
    lab.assert_all(&lab.other, &terms, true, "reapply after release")
        .await?;
    Ok(())
}

/// A local `isolate` with no daemon spools its audit record; the daemon,
/// once up, delivers it to the SOC (through the isolation's collector
/// exception) and the SOC can release the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_isolation_is_audited_at_the_soc_once_the_daemon_runs() -> anyhow::Result<()> {
    let lab = Lab::new().await?;
    let soc = Soc::start(&lab).await?;
    let terms = [TERM_V4_OTHER, TERM_V6_OTHER];
    let reason = marker("staff pulled the plug");
    let out = lab.local(&["isolate", "--reason", &reason]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit_dir = lab.state_dir().join("audit");
    assert_eq!(std::fs::read_dir(&audit_dir)?.count(), 1, "spooled");

    let sensor = Sensor::start_in(&lab.term.name, &lab.sensor_config()).await?;
    let tail = soc.tail_since(Some("1h")).await?;
    let audit = tail
        .wait_for("the local isolate's audit event", |l| {
            l.contains("\"action\":\"isolate\"") && l.contains(&reason)
        })
        .await?;
    assert!(audit.contains("\"requester\":\"local:"), "{audit}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::fs::read_dir(&audit_dir)?.count() > 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the delivered record stays spooled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let host = soc
        .wait_host("the local isolation", |h| h.isolated == Some(true))
        .await?;
    assert!(host.requester.starts_with("local:"), "{}", host.line);
    lab.assert_all(&lab.other, &terms, false, "isolated locally, daemon up")
        .await?;

    soc.release_checked().await?;
    lab.assert_all(&lab.other, &terms, true, "released by the SOC")
        .await?;
    assert!(sensor.stop().await?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_rule_isolates_after_repeated_exec_blocks() -> anyhow::Result<()> {
    use tests::kernel::Exec;

    let lab = Lab::new().await?;
    let soc = Soc::start(&lab).await?;
    // Enforce an allowlist (only /usr/bin/touch) in a cgroup of the test's
    // own, so nothing else on the machine is under it.
    let cgroup = tests::cgroup::TestCgroup::new(&marker("rxiso-detect"))?;
    let policy = lab.dir.path().join("policy.toml");
    std::fs::write(&policy, cgroup.touch_only_policy()?)?;
    let intruder = lab.dir.path().join("intruder");
    tests::exe::copy_executable(Path::new("/usr/bin/touch"), &intruder)?;
    let rule = format!(
        "[policy]\npath = \"{}\"\n[[response]]\nname = \"burst\"\non = \"exec_blocked\"\nthreshold = 3\nwithin_secs = 60\naction = \"isolate\"\n",
        policy.display()
    );
    let sensor = Sensor::start_in(&lab.term.name, &lab.sensor_config_with(&rule)).await?;
    let tail = soc.tail().await?;
    let terms = [TERM_V4_OTHER, TERM_V6_OTHER];

    // Blocked as this kernel's backend blocks (tests/src/kernel.rs).
    let blocked_exec = || -> anyhow::Result<()> {
        let status = Exec::of(
            cgroup
                .command(&intruder)
                .arg(lab.dir.path().join("x"))
                .status(),
        )?;
        anyhow::ensure!(status.blocked(), "the intruder was not blocked: {status}");
        Ok(())
    };
    // Two blocks: below the threshold, nothing happens. The response rule
    // sees each block before its event is sent: once both events are in
    // the stream, the rule has counted them.
    let is_block = |l: &str| l.contains("\"kind\":\"policy\"") && l.contains("intruder");
    for _ in 0..2 {
        blocked_exec()?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while tail.count(is_block) < 2 {
        anyhow::ensure!(Instant::now() < deadline, "the two blocks never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lab.assert_all(&lab.other, &terms, true, "two blocks, threshold three")
        .await?;
    assert_eq!(
        tail.count(|l| l.contains("\"action\":\"isolate\"")),
        0,
        "isolated below the threshold"
    );

    // The third reaches it: the terminal isolates itself.
    blocked_exec()?;
    let audit = tail
        .wait_for("the detection's isolate event", |l| {
            l.contains("\"action\":\"isolate\"") && l.contains("detection:burst")
        })
        .await?;
    assert!(audit.contains("3 allowlist_block within 60 s"), "{audit}");
    lab.assert_all(&lab.other, &terms, false, "after the detection rule fired")
        .await?;
    let host = soc
        .wait_host("isolation by the rule", |h| h.isolated == Some(true))
        .await?;
    assert_eq!(host.requester, "detection:burst", "{}", host.line);

    soc.release_checked().await?;
    lab.assert_all(&lab.other, &terms, true, "released").await?;
    assert!(sensor.stop().await?.success());
    Ok(())
}

/// Writes "not isolated" into the pinned isolation state map, as an
/// attacker with bpf() would.
fn flip_isolation_off(pin_dir: &Path) -> anyhow::Result<()> {
    let data = aya::maps::MapData::from_pin(pin_dir.join("ISOLATION_STATE"))?;
    let mut state: aya::maps::Array<aya::maps::MapData, [u8; 16]> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data))?;
    state.set(0, [0u8; 16], 0)?;
    Ok(())
}
