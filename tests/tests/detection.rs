//! Sigma rules in the real sensor: an exec from /tmp (the default pack) and
//! a SOC's own rule from a rule directory alert at a real collector, with
//! the rule's author and ATT&CK ids; the same program elsewhere does not.

use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use proto::telemetry::v1::EventKind;
use tests::{Collector, Sensor, SensorOptions, Subscription, marker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_from_tmp_and_a_soc_rule_alert_at_the_collector() -> anyhow::Result<()> {
    let marker = marker("sigma-marker");
    // A SOC rule directory with one rule on this test's marker.
    let rules = tempfile::tempdir()?;
    let soc_rule = format!(
        "title: Test marker seen\nid: 0b0e7c1a-0000-4000-8000-000000000001\nauthor: soc-test\n\
         tags: [attack.execution, attack.t1059]\nlevel: low\n\
         logsource: {{product: linux, category: process_creation}}\n\
         detection:\n  selection:\n    CommandLine|contains: '{marker}'\n    Image|startswith: /usr/\n  condition: selection\n"
    );
    std::fs::write(rules.path().join("marker.yml"), soc_rule)?;
    // The payload: a copy of true under /tmp (tempdir's default root).
    let dropped = tempfile::Builder::new()
        .prefix("rxsentry-sigma-")
        .tempdir_in("/tmp")?;
    let payload = dropped.path().join("payload");
    tests::exe::copy_executable(std::path::Path::new("/usr/bin/true"), &payload)?;
    let payload = payload.to_str().expect("utf-8 path").to_owned();

    let collector = Collector::start().await?;
    let mut sub =
        Subscription::open_kinds(&collector.url(), &[EventKind::Exec, EventKind::Alert]).await?;
    let options = SensorOptions::with_extra(&format!(
        "[detection]\nrule_dirs = [\"{}\"]\n",
        rules.path().display()
    ));
    let sensor = Sensor::start(&collector, options).await?;

    let mut from_tmp = std::process::Command::new(&payload).arg(&marker).spawn()?;
    let tmp_pid = from_tmp.id();
    assert!(from_tmp.wait()?.success());
    // The look-alike: the same program from /usr/bin, same marker.
    let mut benign = std::process::Command::new("/usr/bin/true")
        .arg(&marker)
        .spawn()?;
    let benign_pid = benign.id();
    assert!(benign.wait()?.success());

    sub.until(Duration::from_secs(20), |s| {
        !s.alerts_on(&payload).is_empty()
            && !s.alerts_on("/usr/bin/true").is_empty()
            && s.execs_with(&marker).len() == 2
    })
    .await?;

    let tmp_alerts = sub.alerts_on(&payload);
    assert_eq!(tmp_alerts.len(), 1, "{tmp_alerts:?}");
    let a = tmp_alerts[0];
    assert_eq!(a.rule_title, "Execution From a World-Writable Directory");
    assert_eq!(a.rule_author, "rxsentry");
    assert_eq!(a.rule_source, "builtin:exec_world_writable.yml");
    assert_eq!(a.level, "high");
    assert!(
        a.attack_ids.iter().any(|t| t == "T1204.002"),
        "{:?}",
        a.attack_ids
    );
    assert_eq!(a.matched_kind(), EventKind::Exec);
    assert_eq!(a.process.as_ref().map(|p| p.pid), Some(tmp_pid));

    // The SOC rule fires on /usr/bin/true only (Image|startswith: /usr/),
    // and the /tmp rule does not fire on it.
    let soc: Vec<_> = sub
        .alerts_on("/usr/bin/true")
        .into_iter()
        .filter(|a| a.process.as_ref().is_some_and(|p| p.pid == benign_pid))
        .collect();
    assert_eq!(soc.len(), 1, "{soc:?}");
    assert_eq!(soc[0].rule_title, "Test marker seen");
    assert_eq!(soc[0].rule_author, "soc-test");
    assert_eq!(soc[0].attack_ids, ["T1059"]);
    assert!(soc[0].rule_source.ends_with("marker.yml"));
    assert!(
        sub.alerts_on(&payload)
            .iter()
            .all(|a| a.rule_title != "Test marker seen"),
        "the SOC rule needs /usr/"
    );

    let status = sensor.stop().await?;
    assert!(status.success(), "sensor exit status: {status}");
    drop(collector);
    Ok(())
}

/// The responses carried out by the sensor, as the collector got them.
fn responses(sub: &Subscription) -> Vec<&proto::telemetry::v1::ResponseEvent> {
    sub.events
        .iter()
        .filter_map(|e| match e.event.as_ref()?.kind.as_ref()? {
            proto::telemetry::v1::event::Kind::Response(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// Waits (up to 20 s) for `child` to end; its exit status.
fn wait_end(child: &mut std::process::Child) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "pid {} still runs",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A shell script, written without this process opening it for writing
/// (see `tests::exe`: no "Text file busy" when it is executed).
fn write_script(path: &std::path::Path, body: &str) -> anyhow::Result<()> {
    tests::exe::write_executable(path, format!("#!/bin/sh\n{body}\n"))
}

/// A SOC rule asks for kill_tree and quarantine: the payload's process and
/// its child die, the file is moved aside and its hash refused, so another
/// copy under a name no rule knows is killed at exec; a look-alike runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_tree_and_quarantine_responses_act_and_are_audited() -> anyhow::Result<()> {
    use std::{io::BufRead as _, os::unix::process::ExitStatusExt as _};
    let marker = marker("respond");
    let rules = tempfile::tempdir()?;
    std::fs::write(
        rules.path().join("payload.yml"),
        format!(
            "title: Test payload\nauthor: soc-test\nlevel: critical\n\
             tags: [attack.execution, attack.t1204.002]\nresponse: [kill_tree, quarantine]\n\
             logsource: {{product: linux, category: process_creation}}\n\
             detection:\n  selection:\n    Image|endswith: '/payload-{marker}'\n  condition: selection\n"
        ),
    )?;
    std::fs::write(
        rules.path().join("binary.yml"),
        format!(
            "title: Test binary\nauthor: soc-test\nlevel: critical\nresponse: [kill, quarantine]\n\
             logsource: {{product: linux, category: process_creation}}\n\
             detection:\n  selection:\n    Image|endswith: '/binary-{marker}'\n  condition: selection\n"
        ),
    )?;
    let work = tempfile::tempdir()?;
    let quarantine = work.path().join("quarantine");
    // A tree of two made before the rule can fire: a shell starts a sleep,
    // prints its pid, then execs the payload (same pid, the sleep still its
    // child), which execs another sleep. (A payload that forked and printed
    // itself could be killed by the rule before it printed.)
    let body = format!("# {marker}\nexec sleep 30");
    let payload = work.path().join(format!("payload-{marker}"));
    write_script(&payload, &body)?;
    // A program of its own (sleep with the marker appended: no other
    // test's or the host's binary has its hash), and a copy of it made
    // before the quarantine, under a name no rule matches.
    let binary = work.path().join(format!("binary-{marker}"));
    tests::exe::copy_executable(std::path::Path::new("/usr/bin/sleep"), &binary)?;
    tests::exe::append_to_executable(&binary, marker.as_bytes())?;
    let copy = work.path().join("innocent-name");
    tests::exe::copy_executable(&binary, &copy)?;
    let binary_sha = tests::exe::sha256_of(&binary)?;
    let lookalike = work.path().join(format!("payload-{marker}-not"));
    write_script(&lookalike, &format!("# {marker} benign\nexit 0"))?;
    let content_sha = tests::exe::sha256_of(&payload)?;

    let collector = Collector::start().await?;
    let mut sub =
        Subscription::open_kinds(&collector.url(), &[EventKind::Alert, EventKind::Response])
            .await?;
    let options = SensorOptions {
        extra_config: format!(
            "{}[detection]\nrule_dirs = [\"{}\"]\nquarantine_dir = \"{}\"\n",
            SensorOptions::default().extra_config,
            rules.path().display(),
            quarantine.display()
        ),
    };
    let sensor = Sensor::start(&collector, options).await?;

    let mut child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg("sleep 30 & echo $!; exec \"$0\"")
        .arg(&payload)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line)?;
    let sleeper: u32 = line.trim().parse()?;
    let status = wait_end(&mut child)?;
    assert_eq!(
        status.signal(),
        Some(9),
        "the payload was not killed: {status}"
    );
    let subject = payload.display().to_string();
    // The rule's own alert: the default pack's alert on the same exec (from
    // /tmp) may arrive first, in another batch.
    let payload_alert = |s: &Subscription| {
        s.alerts_on(&subject)
            .into_iter()
            .any(|a| a.rule_title == "Test payload")
    };
    sub.until(Duration::from_secs(20), |s| {
        responses(s).len() >= 2 && payload_alert(s)
    })
    .await?;
    let alert = sub
        .alerts_on(&subject)
        .into_iter()
        .find(|a| a.rule_title == "Test payload")
        .expect("waited for above");
    assert_eq!(alert.responses, ["kill_tree", "quarantine"]);
    let got = responses(&sub);
    let kill = got
        .iter()
        .find(|r| r.action == "kill_tree")
        .expect("kill_tree");
    assert_eq!(kill.error, "", "{kill:?}");
    assert_eq!(kill.requester, "detection:Test payload");
    assert_eq!(kill.target_pid, pid);
    let mut killed = kill.killed_pids.clone();
    killed.sort_unstable();
    let mut want = vec![pid, sleeper];
    want.sort_unstable();
    assert_eq!(killed, want, "the script and its sleep");
    let q = got
        .iter()
        .find(|r| r.action == "quarantine")
        .expect("quarantine");
    assert_eq!(q.error, "", "{q:?}");
    assert_eq!(q.sha256, content_sha);
    let moved = quarantine.join(&content_sha);
    assert_eq!(q.quarantine_path, moved.display().to_string());
    assert!(!payload.exists(), "moved away");
    let mode = std::fs::metadata(&moved)?.permissions().mode();
    assert_eq!(mode & 0o7777, 0, "mode {mode:o}");
    assert!(std::fs::read_to_string(&moved)?.contains(&marker));
    // The sleep is gone too (SIGKILL, reaped by init).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
        .is_ok_and(|s| !s.contains(") Z "))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
            .map_or(true, |s| s.contains(") Z ")),
        "the payload's child {sleeper} still runs"
    );

    // The binary: killed and quarantined; then its copy is killed at exec
    // for its hash alone.
    let mut bin = std::process::Command::new(&binary).arg("30").spawn()?;
    let bin_pid = bin.id();
    let status = wait_end(&mut bin)?;
    assert_eq!(
        status.signal(),
        Some(9),
        "the binary was not killed: {status}"
    );
    sub.until(Duration::from_secs(20), |s| {
        responses(s)
            .iter()
            .any(|r| r.action == "quarantine" && r.target_pid == bin_pid)
    })
    .await?;
    let q = responses(&sub)
        .into_iter()
        .find(|r| r.action == "quarantine" && r.target_pid == bin_pid)
        .expect("quarantined");
    assert_eq!(
        (q.error.as_str(), q.sha256.as_str()),
        ("", binary_sha.as_str())
    );
    assert!(!binary.exists());
    let mut again = std::process::Command::new(&copy).arg("30").spawn()?;
    let again_pid = again.id();
    let status = wait_end(&mut again)?;
    assert_eq!(
        status.signal(),
        Some(9),
        "the copy was not killed: {status}"
    );
    // The look-alike (same name prefix, other content) runs to its end.
    let status = std::process::Command::new(&lookalike).status()?;
    assert!(status.success(), "{status}");
    let copy_subject = copy.display().to_string();
    sub.until(Duration::from_secs(20), |s| {
        // The response (audit path) and the alert (event batches) travel
        // separately: either may come first.
        responses(s).iter().any(|r| r.target_pid == again_pid)
            && s.alerts_on(&copy_subject)
                .iter()
                .any(|a| a.rule_title == "Execution of a Quarantined File")
    })
    .await?;
    // (It runs from /tmp: the default pack's world-writable rule fires too.)
    let refused: Vec<_> = sub
        .alerts_on(&copy_subject)
        .into_iter()
        .filter(|a| a.rule_title == "Execution of a Quarantined File")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].responses, ["kill"]);
    assert!(
        sub.alerts_on(&lookalike.display().to_string())
            .iter()
            .all(|a| a.rule_title != "Test payload"),
        "the look-alike does not match"
    );
    let actions: Vec<(&str, u32)> = responses(&sub)
        .iter()
        .map(|r| (r.action.as_str(), r.target_pid))
        .collect();
    assert_eq!(
        actions,
        [
            ("kill_tree", pid),
            ("quarantine", pid),
            ("kill", bin_pid),
            ("quarantine", bin_pid),
            ("kill", again_pid)
        ],
        "{:?}",
        responses(&sub)
    );
    assert!(sensor.stop().await?.success());
    Ok(())
}

/// Sequence rules of the default pack on the real kernel: a PHI read and
/// then a connection to another host by the same process is exfiltration;
/// a connection without the read, or by another process, is not. 25 PHI
/// files written within seconds by one process is ransomware-like; 10 are
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_rules_fire_on_exfiltration_and_mass_changes_only() -> anyhow::Result<()> {
    use tests::netns::{Helper, NetnsPair};
    let netns = NetnsPair::create()?;
    let work = tempfile::tempdir()?;
    let phi = work.path().join("phi");
    std::fs::create_dir(&phi)?;
    let record = phi.join("patient-0001.json");
    std::fs::write(&record, "{\"name\": \"FAKE PATIENT\"}")?;
    let collector = Collector::start().await?;
    let mut sub = Subscription::open_kinds(&collector.url(), &[EventKind::Alert]).await?;
    let options = SensorOptions {
        extra_config: format!(
            "{}[files]\nrefresh_seconds = 0\n[[files.watch]]\npath = \"{}\"\n\
             [detection.placeholders]\nphi_dirs = [\"{}/\"]\n",
            SensorOptions::default().extra_config,
            phi.display(),
            phi.display()
        ),
    };
    let sensor = Sensor::start(&collector, options).await?;

    // Reads the record (argv[1], or nothing), then connects to argv[2]:9
    // (nothing listens there: refused, still an attempt on the wire).
    const READ_THEN_CONNECT: &str = "import socket,sys\nif sys.argv[1]:\n  open(sys.argv[1]).read()\ns = socket.socket()\ntry:\n  s.connect((sys.argv[2], 9))\nexcept OSError:\n  pass\nprint('done', flush=True)\n";
    let record_path = record.display().to_string();
    // The look-alikes first: in each ring, events are evaluated in order,
    // so once the real one's alert is in, theirs would be in too.
    let no_read = Helper::python(Some(&netns.a.name), READ_THEN_CONNECT, &["", &netns.addr_b])?;
    let no_read_pid = no_read.pid();
    no_read.wait()?;
    // One process reads, another connects.
    let reader = Helper::python(
        None,
        "import sys\nopen(sys.argv[1]).read()\n",
        &[&record_path],
    )?;
    reader.wait()?;
    let other = Helper::python(Some(&netns.a.name), READ_THEN_CONNECT, &["", &netns.addr_b])?;
    other.wait()?;
    let exfil = Helper::python(
        Some(&netns.a.name),
        READ_THEN_CONNECT,
        &[&record_path, &netns.addr_b],
    )?;
    let exfil_pid = exfil.pid();
    exfil.wait()?;

    const WRITE_MANY: &str = "import sys,os\nfor i in range(int(sys.argv[2])):\n  open(os.path.join(sys.argv[1], 'enc-%d-%s' % (i, os.getpid())), 'w').write('x')\n";
    let phi_dir = phi.display().to_string();
    let few = Helper::python(None, WRITE_MANY, &[&phi_dir, "10"])?;
    let few_pid = few.pid();
    few.wait()?;
    let many = Helper::python(None, WRITE_MANY, &[&phi_dir, "25"])?;
    let many_pid = many.pid();
    many.wait()?;

    let exfil_title = "PHI Read Followed by an Outbound Connection";
    let burst_title = "Many Files Changed in the PHI Store Within Seconds";
    let fired = |s: &Subscription, title: &str| -> Vec<(u32, Vec<String>)> {
        s.events
            .iter()
            .filter_map(|e| match e.event.as_ref()?.kind.as_ref()? {
                proto::telemetry::v1::event::Kind::Alert(a) if a.rule_title == title => {
                    Some((a.process.as_ref()?.pid, a.sequence_steps.clone()))
                }
                _ => None,
            })
            .collect()
    };
    sub.until(Duration::from_secs(20), |s| {
        !fired(s, exfil_title).is_empty() && !fired(s, burst_title).is_empty()
    })
    .await?;
    // Barrier: an exec from /tmp after everything above, so "nothing else"
    // is checked after every earlier alert went through.
    let barrier = tempfile::Builder::new()
        .prefix("rxsentry-barrier-")
        .tempdir_in("/tmp")?;
    let barrier_exe = barrier.path().join("barrier");
    tests::exe::copy_executable(std::path::Path::new("/usr/bin/true"), &barrier_exe)?;
    assert!(std::process::Command::new(&barrier_exe).status()?.success());
    let barrier_subject = barrier_exe.display().to_string();
    sub.until(Duration::from_secs(20), |s| {
        !s.alerts_on(&barrier_subject).is_empty()
    })
    .await?;

    let exfils = fired(&sub, exfil_title);
    assert_eq!(exfils.len(), 1, "{exfils:?}");
    assert_eq!(exfils[0].0, exfil_pid);
    assert_eq!(
        exfils[0].1,
        [record_path.clone(), format!("{}:9", netns.addr_b)]
    );
    assert_ne!(exfils[0].0, no_read_pid);
    let bursts = fired(&sub, burst_title);
    assert_eq!(bursts.len(), 1, "{bursts:?}");
    assert_eq!(bursts[0].0, many_pid);
    assert_ne!(bursts[0].0, few_pid);
    assert!(sensor.stop().await?.success());
    Ok(())
}

/// Detection does not need the uplink: a rule fires while the collector
/// is down, its alert and response wait in the sensor (spool) and reach
/// the collector's store once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_made_while_the_collector_is_down_arrive_after_it_returns() -> anyhow::Result<()> {
    use proto::telemetry::v1::{
        QueryRequest, event, subscribe_response,
        telemetry_subscribe_client::TelemetrySubscribeClient,
    };
    use tests::CollectorState;
    let held = tests::ports::HeldPort::new()?;
    let listen = held.addr().to_string();
    let collector = Collector::start_on(CollectorState::new(&listen)?, None, &listen, &[]).await?;
    let host = format!("test-offline-alert-{}", std::process::id());
    let tls = collector.state_dir().join("sensor-tls");
    collector.issue_sensor(&host, &tls)?;
    let marker = marker("offline");
    let rules = tempfile::tempdir()?;
    std::fs::write(
        rules.path().join("offline.yml"),
        format!(
            "title: Offline marker\nauthor: soc-test\nlevel: high\nresponse: kill\n\
             logsource: {{product: linux, category: process_creation}}\n\
             detection:\n  selection:\n    Image|endswith: '/sleep-{marker}'\n  condition: selection\n"
        ),
    )?;
    let config = format!(
        "[host]\nid = \"{host}\"\n{}[batching]\nmax_events = 64\nmax_delay_ms = 100\n\
         [detection]\nrule_dirs = [\"{}\"]\n",
        tests::collector_section(&format!("https://{listen}"), &tls),
        rules.path().display()
    );
    let sensor = Sensor::with_config(config).start().await?;
    let state = collector.stop_keeping_state().await?;

    // Offline: the rule still kills (a sleep of its own name).
    let victim_exe = rules.path().join(format!("sleep-{marker}"));
    tests::exe::copy_executable(std::path::Path::new("/usr/bin/sleep"), &victim_exe)?;
    let mut victim = std::process::Command::new(&victim_exe).arg("30").spawn()?;
    let victim_pid = victim.id();
    let status = wait_end(&mut victim)?;
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(9), "not killed offline: {status}");

    let collector = Collector::start_on(state, None, &listen, &[]).await?;
    let access = collector.url();
    let mut client = TelemetrySubscribeClient::new(access.channel().await?);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (alert, response) = loop {
        let page = client
            .query(access.request(QueryRequest {
                host_ids: vec![host.clone()],
                kinds: vec![EventKind::Alert as i32, EventKind::Response as i32],
                limit: 1_000,
                ..QueryRequest::default()
            }))
            .await?
            .into_inner();
        let mut alert = None;
        let mut response = None;
        for item in page.items {
            let Some(subscribe_response::Item::Event(e)) = item.item else {
                continue;
            };
            match e.event.and_then(|e| e.kind) {
                Some(event::Kind::Alert(a)) if a.rule_title == "Offline marker" => alert = Some(a),
                Some(event::Kind::Response(r)) if r.target_pid == victim_pid => {
                    response = Some(r);
                }
                _ => {}
            }
        }
        if let (Some(a), Some(r)) = (&alert, &response) {
            break (a.clone(), r.clone());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the offline alert and response never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(alert.process.as_ref().map(|p| p.pid), Some(victim_pid));
    assert_eq!(alert.responses, ["kill"]);
    assert_eq!(
        (response.action.as_str(), response.error.as_str()),
        ("kill", "")
    );
    assert_eq!(response.killed_pids, [victim_pid]);
    assert!(sensor.stop().await?.success());
    Ok(())
}

/// The default pack against intrusion steps done for real, each next to a
/// look-alike that must stay quiet: a shell started by the POS app (not
/// by another program), a shell that connects out itself (not python), a
/// read of /etc/shadow (not of /etc/hostname), a TCP listen by an
/// unexpected program (not a UDP bind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_pack_alerts_on_intrusion_steps_and_not_on_look_alikes() -> anyhow::Result<()> {
    use tests::netns::Helper;
    let work = tempfile::tempdir()?;
    let pos_bin = work.path().join("pos/bin");
    std::fs::create_dir_all(&pos_bin)?;
    // A POS app that starts a child command (timeout forks, then execs).
    let pos_app = pos_bin.join("pos-app");
    tests::exe::copy_executable(std::path::Path::new("/usr/bin/timeout"), &pos_app)?;
    let collector = Collector::start().await?;
    let mut sub = Subscription::open_kinds(&collector.url(), &[EventKind::Alert]).await?;
    let options = SensorOptions {
        extra_config: format!(
            // No [[files.watch]] for /etc/shadow: the rule's own path is
            // watched (file_rules_watch_the_paths_they_name).
            "{}[detection.placeholders]\npos_apps = [\"{}/*\"]\n",
            SensorOptions::default().extra_config,
            pos_bin.display()
        ),
    };
    let sensor = Sensor::start(&collector, options).await?;
    let run = |program: &std::path::Path, args: &[&str]| tests::procs::run_for_pid(program, args);

    // In each ring the look-alike goes first: once the real step's alert
    // is in, the look-alike before it was evaluated too (events of one
    // ring are enriched in order; rings are not ordered among themselves).
    // 1. A shell started by timeout, then by the POS app (process ring).
    let plain_pid = run(
        std::path::Path::new("/usr/bin/timeout"),
        &["10", "/bin/sh", "-c", "exit 0"],
    )?;
    let pos_pid = run(&pos_app, &["10", "/bin/sh", "-c", "exit 0"])?;
    // 4. A UDP bind (no listen), then a TCP listen (network ring) ...
    let udp = Helper::python(
        None,
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('127.0.0.1', 0))\n",
        &[],
    )?;
    let udp_pid = udp.pid();
    udp.wait()?;
    let mut listener = Helper::python(
        None,
        "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen(4)\nprint('port', s.getsockname()[1], flush=True)\nfor _ in range(2):\n  c, _ = s.accept()\n  c.close()\n",
        &[],
    )?;
    let listener_pid = listener.pid();
    let port = listener.line("port")?;
    // 2. ... python connecting to it, then a shell that connects itself
    // (bash's /dev/tcp).
    let client = Helper::python(
        None,
        "import socket,sys\nsocket.create_connection(('127.0.0.1', int(sys.argv[1]))).close()\n",
        &[&port],
    )?;
    let python_client_pid = client.pid();
    client.wait()?;
    let bash_pid = run(
        std::path::Path::new("/bin/bash"),
        &[
            // A reverse shell stays connected: it lives on after the
            // connect, here by exec'ing into sleep at once (bash runs the
            // last command of `-c` in its own process). The exec comes
            // through the process ring, read before the network ring's
            // connect: the connect is still bash's, not sleep's.
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; sleep 2"),
        ],
    )?;
    listener.wait()?;
    // 3. /etc/hostname read (not watched), then /etc/shadow (file ring).
    let hostname_pid = run(std::path::Path::new("/bin/cat"), &["/etc/hostname"])?;
    let shadow_pid = run(std::path::Path::new("/bin/cat"), &["/etc/shadow"])?;

    let alerted = |s: &Subscription, title: &str, pid: u32, parent: bool| {
        s.events.iter().any(|e| {
            matches!(
                e.event.as_ref().and_then(|e| e.kind.as_ref()),
                Some(proto::telemetry::v1::event::Kind::Alert(a))
                    if a.rule_title == title
                        && a.process.as_ref().is_some_and(|p| {
                            if parent { p.ppid == pid } else { p.pid == pid }
                        })
            )
        })
    };
    sub.until(Duration::from_secs(30), |s| {
        alerted(
            s,
            "Shell or Interpreter Started by the POS or Dispensing Application",
            pos_pid,
            true,
        ) && alerted(
            s,
            "Shell Process Making a Network Connection",
            bash_pid,
            false,
        ) && alerted(
            s,
            "Read of the Shadow Password File by an Unexpected Program",
            shadow_pid,
            false,
        ) && alerted(s, "New Listening Port", listener_pid, false)
    })
    .await?;

    let by_rule = |title: &str| -> Vec<(u32, String)> {
        sub.events
            .iter()
            .filter_map(|e| match e.event.as_ref()?.kind.as_ref()? {
                proto::telemetry::v1::event::Kind::Alert(a) if a.rule_title == title => {
                    Some((a.process.as_ref()?.ppid, a.matched_subject.clone()))
                }
                _ => None,
            })
            .collect()
    };
    let pids_of = |title: &str| -> Vec<u32> {
        sub.events
            .iter()
            .filter_map(|e| match e.event.as_ref()?.kind.as_ref()? {
                proto::telemetry::v1::event::Kind::Alert(a) if a.rule_title == title => {
                    Some(a.process.as_ref()?.pid)
                }
                _ => None,
            })
            .collect()
    };
    // 1: the shell's parent is the POS app; timeout's shell is quiet.
    let shells = by_rule("Shell or Interpreter Started by the POS or Dispensing Application");
    assert_eq!(shells.len(), 1, "{shells:?}");
    assert_eq!(shells[0].0, pos_pid);
    assert_ne!(shells[0].0, plain_pid);
    // Other tests of this binary run beside this one (their collectors
    // listen too): each check looks at this test's own processes only.
    let exactly = |title: &str, hit: u32, quiet: u32| {
        let pids = pids_of(title);
        assert_eq!(
            pids.iter().filter(|p| **p == hit).count(),
            1,
            "{title}: {pids:?}"
        );
        assert!(
            !pids.contains(&quiet),
            "{title}: look-alike {quiet} alerted"
        );
    };
    // 2: bash's connection; python's is not a shell's.
    exactly(
        "Shell Process Making a Network Connection",
        bash_pid,
        python_client_pid,
    );
    // ... and the alert names the program that connected, not the sleep
    // it had become when the connect was read.
    let shell_exes: Vec<String> = sub
        .events
        .iter()
        .filter_map(|e| match e.event.as_ref()?.kind.as_ref()? {
            proto::telemetry::v1::event::Kind::Alert(a)
                if a.rule_title == "Shell Process Making a Network Connection" =>
            {
                let p = a.process.as_ref()?;
                (p.pid == bash_pid).then(|| p.exe.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(shell_exes, ["/bin/bash"], "the connect's program");
    // 3: the shadow read only.
    exactly(
        "Read of the Shadow Password File by an Unexpected Program",
        shadow_pid,
        hostname_pid,
    );
    // 4: python's TCP listen; the UDP bind is not one.
    exactly("New Listening Port", listener_pid, udp_pid);
    assert!(sensor.stop().await?.success());
    Ok(())
}

/// File rules bring the paths they name into the kernel's watched set, with
/// no `[[files.watch]]` for them: a SOC rule on a directory under /run, a
/// SigmaHQ rule on `/tmp/rootlog` (loaded from ../shared with the rest of
/// SigmaHQ's Linux rules) and the default pack's rule on /etc/rxsentry/
/// each alert on a real write, a look-alike path next to each does not, a
/// SIGHUP with the SOC rule moved to another directory watches that one
/// (and so does an edit of the rule file alone, with no signal),
/// and the rules the watched set cannot cover are named in the log. Two of
/// SigmaHQ's process rules (a history file deleted, a service file
/// timestomped) alert on the real commands and not on look-alikes, and so
/// does the default pack's PHI read rule (`cat`, not the expected `head`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_rules_watch_the_paths_they_name() -> anyhow::Result<()> {
    let area = tempfile::Builder::new()
        .prefix("rxsentry-test-rulepaths-")
        .tempdir_in("/run")?;
    let dir = |name: &str| -> anyhow::Result<String> {
        let d = area.path().join(name);
        std::fs::create_dir_all(&d)?;
        Ok(d.display().to_string())
    };
    let (drop_dir, lookalike_dir, moved_dir) = (dir("drop")?, dir("dropzone")?, dir("moved")?);
    let rules = tempfile::tempdir()?;
    let soc_rule = |target: &str| {
        format!(
            "title: Test drop\nauthor: soc-test\nlevel: high\n\
             logsource: {{product: linux, category: file_event}}\n\
             detection:\n  selection:\n    TargetFilename|startswith: '{target}/'\n  condition: selection\n"
        )
    };
    std::fs::write(rules.path().join("drop.yml"), soc_rule(&drop_dir))?;
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sigmahq = detect::sigmahq_rules_dir(workspace)
        .ok_or_else(|| anyhow::anyhow!("SigmaHQ rules not found (set RXSENTRY_SHARED)"))?;
    // The default pack's /etc/rxsentry/ must exist to be watched.
    let etc = std::path::Path::new("/etc/rxsentry");
    let made_etc = !etc.exists();
    std::fs::create_dir_all(etc)?;
    let _etc_guard = RemoveOnDrop(made_etc.then(|| etc.to_owned()));
    let own_file = etc.join(format!("{}.toml", marker("rxsentry-test-own")));
    let _own_guard = RemoveOnDrop(Some(own_file.clone()));
    let rootlog = std::path::Path::new("/tmp/rootlog");
    anyhow::ensure!(!rootlog.exists(), "/tmp/rootlog exists before the test");
    let _rootlog_guard = RemoveOnDrop(Some(rootlog.to_owned()));
    let _rootlog_lookalike = RemoveOnDrop(Some("/tmp/rootlog.bak".into()));

    let collector = Collector::start().await?;
    let mut sub = Subscription::open_kinds(&collector.url(), &[EventKind::Alert]).await?;
    // The PHI store of the default pack's rules: a directory of the test's
    // (watched for them too), read as expected by `head` only.
    let phi = dir("phi")?;
    let record = format!("{phi}/rx-0001.json");
    std::fs::write(&record, "{}")?;
    let options = SensorOptions::with_extra(&format!(
        "[detection]\nrule_dirs = [\"{}\", \"{}\"]\n\
         [detection.placeholders]\nphi_dirs = [\"{phi}/\"]\nphi_readers = [\"/usr/bin/head\"]\n",
        rules.path().display(),
        sigmahq.display()
    ));
    let sensor = Sensor::start(&collector, options).await?;
    let log = sensor.log();
    for path in [drop_dir.as_str(), "/tmp", "/etc/rxsentry"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("watched for detection rules: {path} "))),
            "{path} watched for the rules:\n{log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("detection rule blind")
                && l.contains("Linux Doas Conf File Creation")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("detection rule partly blind")
                && l.contains("New Cron File Created")),
        "{log}"
    );

    // Look-alikes first: in the file ring they come before the writes that
    // alert, so once those alerts are in, the look-alikes were evaluated.
    let write =
        |path: &str| tests::procs::run_for_pid("/bin/sh", &["-c", "echo x > \"$1\"", "sh", path]);
    let read = |program: &str| tests::procs::run_for_pid(program, &[&record]);
    write(&format!("{lookalike_dir}/payload"))?;
    write("/tmp/rootlog.bak")?;
    read("/usr/bin/head")?;
    let soc_pid = write(&format!("{drop_dir}/payload"))?;
    let rootlog_pid = write("/tmp/rootlog")?;
    let own_pid = write(&own_file.display().to_string())?;
    let phi_pid = read("/usr/bin/cat")?;
    let titles = [
        "Test drop",
        "Triple Cross eBPF Rootkit Default LockFile",
        "Write to rxsentry's Own Files",
        "Read of the PHI Store by an Unexpected Program",
    ];
    sub.until(Duration::from_secs(20), |s| {
        titles.iter().all(|t| alerts_titled(s, t).next().is_some())
    })
    .await?;
    let pids = |sub: &Subscription, title: &str| -> Vec<u32> {
        alerts_titled(sub, title)
            .filter_map(|a| a.process.as_ref().map(|p| p.pid))
            .collect()
    };
    assert_eq!(pids(&sub, "Test drop"), [soc_pid]);
    assert_eq!(
        pids(&sub, "Triple Cross eBPF Rootkit Default LockFile"),
        [rootlog_pid]
    );
    assert_eq!(pids(&sub, "Write to rxsentry's Own Files"), [own_pid]);
    // `head` is an expected PHI reader; `cat` is not.
    assert_eq!(
        pids(&sub, "Read of the PHI Store by an Unexpected Program"),
        [phi_pid]
    );
    let lockfile = alerts_titled(&sub, "Triple Cross eBPF Rootkit Default LockFile")
        .next()
        .expect("seen above");
    assert_eq!(
        lockfile.rule_author,
        "Nasreddine Bencherchali (Nextron Systems)"
    );
    assert!(
        lockfile
            .rule_source
            .ends_with("file_event_lnx_triple_cross_rootkit_lock_file.yml"),
        "{}",
        lockfile.rule_source
    );

    // Two of SigmaHQ's process rules, exercised for real: a shell history
    // deleted and a service file's time set back. Look-alikes first, in
    // the same ring.
    let file = |name: &str| -> anyhow::Result<String> {
        let path = area.path().join(name);
        std::fs::write(&path, "x")?;
        Ok(path.display().to_string())
    };
    let (notes, history) = (file("notes.txt")?, file(".bash_history")?);
    let service = area.path().join("fake.service").display().to_string();
    let run = |program: &str, args: &[&str]| tests::procs::run_for_pid(program, args);
    run("/usr/bin/rm", &[&notes])?;
    run("/usr/bin/touch", &[&service])?;
    let rm_pid = run("/usr/bin/rm", &[&history])?;
    let touch_pid = run("/usr/bin/touch", &["-t", "202001010000", &service])?;
    let process_titles = ["History File Deletion", "Touch Suspicious Service File"];
    sub.until(Duration::from_secs(20), |s| {
        process_titles
            .iter()
            .all(|t| alerts_titled(s, t).next().is_some())
    })
    .await?;
    assert_eq!(pids(&sub, "History File Deletion"), [rm_pid]);
    assert_eq!(pids(&sub, "Touch Suspicious Service File"), [touch_pid]);
    let history_alert = alerts_titled(&sub, "History File Deletion")
        .next()
        .expect("seen above");
    assert_eq!(history_alert.rule_author, "Florian Roth (Nextron Systems)");
    assert_eq!(history_alert.matched_kind(), EventKind::Exec);

    // The SOC moves its rule: after SIGHUP the new directory is watched;
    // moved again with no signal, the rule directory's change reloads it.
    let auto_dir = dir("auto")?;
    for (target, why, signal) in [
        (&moved_dir, "SIGHUP", true),
        (&auto_dir, "rule files changed", false),
    ] {
        std::fs::write(rules.path().join("drop.yml"), soc_rule(target))?;
        if signal {
            sensor.hangup()?;
        }
        let line = format!("{why}: watched for detection rules: {target} ");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !sensor.log().lines().any(|l| l.contains(&line)) {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "no `{line}`:\n{}",
                sensor.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The watch manager applies the set after that line: a first write
        // may come before it; write until one alerts.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let pid = write(&format!("{target}/payload"))?;
            let arrived = sub
                .until(Duration::from_secs(2), |s| {
                    alerts_titled(s, "Test drop")
                        .any(|a| a.process.as_ref().is_some_and(|p| p.pid == pid))
                })
                .await;
            if arrived.is_ok() {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{why}: no alert for {target}"
            );
        }
    }
    assert!(sensor.stop().await?.success());
    Ok(())
}

/// Alerts of the rule titled `title`.
fn alerts_titled<'s>(
    sub: &'s Subscription,
    title: &'s str,
) -> impl Iterator<Item = &'s proto::telemetry::v1::AlertEvent> + 's {
    sub.events
        .iter()
        .filter_map(move |e| match e.event.as_ref()?.kind.as_ref()? {
            proto::telemetry::v1::event::Kind::Alert(a) if a.rule_title == title => Some(a),
            _ => None,
        })
}

/// Removes a file or an (empty) directory the test made, even on failure.
struct RemoveOnDrop(Option<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir(path));
        }
    }
}

/// The default pack's "Repeated Allowlist Blocks" (5 blocks on the host
/// within 60 s, a sequence rule): four blocks do not alert, the fifth does,
/// with the fifth block's process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_allowlist_blocks_alert_and_four_do_not() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let cgroup = tests::cgroup::TestCgroup::new(&marker("rxdetect-blocks"))?;
    let touch = std::path::Path::new("/usr/bin/touch");
    let intruder = work.path().join("intruder");
    tests::exe::copy_executable(touch, &intruder)?;
    let policy = work.path().join("policy.toml");
    std::fs::write(&policy, cgroup.touch_only_policy()?)?;
    let collector = Collector::start().await?;
    let mut sub =
        Subscription::open_kinds(&collector.url(), &[EventKind::Policy, EventKind::Alert]).await?;
    let options =
        SensorOptions::with_extra(&format!("[policy]\npath = \"{}\"\n", policy.display()));
    let sensor = Sensor::start(&collector, options).await?;
    let blocks = |s: &Subscription| {
        s.events
            .iter()
            .filter(|e| {
                matches!(
                    e.event.as_ref().and_then(|e| e.kind.as_ref()),
                    Some(proto::telemetry::v1::event::Kind::Policy(_))
                )
            })
            .count()
    };
    let mut last_pid = 0;
    for n in 1..=5 {
        let mut child = cgroup
            .command(&intruder)
            .arg(work.path().join("x"))
            .spawn()?;
        last_pid = child.id();
        anyhow::ensure!(!child.wait()?.success(), "block {n}: the intruder ran");
        // Each block in the stream before the next: the rule counts events.
        sub.until(Duration::from_secs(20), |s| blocks(s) >= n)
            .await?;
        if n == 4 {
            let early: Vec<_> = alerts_titled(&sub, "Repeated Allowlist Blocks").collect();
            assert!(early.is_empty(), "alerted after 4 blocks: {early:?}");
        }
    }
    sub.until(Duration::from_secs(20), |s| {
        alerts_titled(s, "Repeated Allowlist Blocks")
            .next()
            .is_some()
    })
    .await?;
    let alerts: Vec<_> = alerts_titled(&sub, "Repeated Allowlist Blocks").collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].process.as_ref().map(|p| p.pid), Some(last_pid));
    assert_eq!(alerts[0].rule_author, "rxsentry");
    assert!(sensor.stop().await?.success());
    Ok(())
}
