//! The metrics of the real sensor and collector move with the workload
//! that should move them: scrape, act, scrape again. Each listener is on
//! port 0 of loopback, its address read back from its log.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use rxsentry_metrics::Samples;
use tests::{
    Collector, InNetns, Sensor, SensorOptions, bin_path,
    cgroup::TestCgroup,
    marker,
    netns::{Bpffs, Netns},
    scrape_metrics,
};

const WAIT: Duration = Duration::from_secs(20);

fn value(s: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.get(name, labels).unwrap_or(0.0)
}

fn events(s: &Samples, kind: &str) -> f64 {
    value(s, "rxsentry_sensor_events_total", &[("kind", kind)])
}

/// Scrapes `addr` until `ok` holds; the page that satisfied it, or an
/// error naming `what` with the last page.
async fn until(
    addr: SocketAddr,
    what: &str,
    ok: impl Fn(&Samples) -> bool,
) -> anyhow::Result<Samples> {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = scrape_metrics(addr).await?;
        if ok(&s) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            anyhow::bail!("{what}: not within {WAIT:?}; last page: {s:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `rxsentry-sensor status ARGS` in this namespace (or `netns`).
fn status(netns: InNetns, args: &[&str]) -> anyhow::Result<Output> {
    Ok(netns
        .std_command(bin_path("rxsentry-sensor"))
        .arg("status")
        .args(args)
        .output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_policy_reload_rule_hit_and_batches_move_their_counters() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cgroup = TestCgroup::new(&marker("rxmetrics"))?;
    let policy = dir.path().join("policy.toml");
    let allow_true = format!(
        "mode = \"monitor\"\nscope_cgroups = [\"{}\"]\n[[allow]]\npath = \"/usr/bin/true\"\nsha256 = \"{}\"\n",
        cgroup.path.display(),
        tests::exe::sha256_of(Path::new("/usr/bin/true"))?
    );
    std::fs::write(&policy, &allow_true)?;
    // A program run from /tmp: the built-in Sigma rule's hit.
    let dropped = tempfile::Builder::new()
        .prefix("rxsentry-metrics-")
        .tempdir_in("/tmp")?;
    let payload = dropped.path().join("payload");
    std::fs::copy("/usr/bin/true", &payload)?;
    std::fs::set_permissions(&payload, std::fs::Permissions::from_mode(0o755))?;

    let collector = Collector::start().await?;
    let options = SensorOptions {
        extra_config: format!(
            "{}[policy]\npath = \"{}\"\n",
            SensorOptions::default().extra_config,
            policy.display()
        ),
    };
    let sensor = Sensor::start(&collector, options).await?;
    let addr = sensor.metrics_addr()?;
    let before = sensor.metrics().await?;
    let generation = value(&before, "rxsentry_sensor_policy_generation", &[]);
    assert!(generation >= 1.0, "a policy is in force: {generation}");
    // The backend the log names is the one the metrics show.
    let log = sensor.log();
    let backend = log
        .lines()
        .find_map(|l| l.split_once("exec allowlist backend: "))
        .map(|(_, b)| b.split(" (").next().unwrap_or(b).trim().to_owned())
        .expect("backend logged");
    assert_eq!(
        before.get(
            "rxsentry_sensor_backend_info",
            &[("capability", "exec_allowlist"), ("backend", &backend)]
        ),
        Some(1.0),
        "{before:#?}"
    );

    // Five allowlisted execs in the scope, one that is not (monitor mode:
    // a policy event, not a block), from /tmp (a Sigma hit).
    for _ in 0..5 {
        assert!(cgroup.command("/usr/bin/true").status()?.success());
    }
    assert!(cgroup.command(&payload).status()?.success());
    let sigma_rule = [
        ("engine", "sigma"),
        ("rule", "Execution From a World-Writable Directory"),
    ];
    let acked = |s: &Samples| value(s, "rxsentry_sensor_batches_total", &[("stage", "acked")]);
    let after = until(
        addr,
        "execs, forks, exits, a policy event, a rule hit",
        |s| {
            events(s, "exec") >= events(&before, "exec") + 6.0
                && events(s, "fork") >= events(&before, "fork") + 6.0
                && events(s, "exit") >= events(&before, "exit") + 6.0
                && events(s, "policy") > events(&before, "policy")
                && value(s, "rxsentry_sensor_rule_hits_total", &sigma_rule) >= 1.0
                && acked(s) > acked(&before)
        },
    )
    .await?;
    assert!(value(&after, "rxsentry_sensor_alerts_total", &[]) >= 1.0);
    assert!(
        value(&after, "rxsentry_sensor_events_enriched_total", &[])
            > value(&before, "rxsentry_sensor_events_enriched_total", &[])
    );
    let sealed = value(
        &after,
        "rxsentry_sensor_batches_total",
        &[("stage", "sealed")],
    );
    assert!(sealed >= acked(&after), "{after:#?}");
    assert_eq!(
        value(&after, "rxsentry_sensor_collector_connected", &[]),
        1.0
    );

    // The collector received them, under this host.
    let host = format!("test-{}", std::process::id());
    let received = until(collector.metrics_addr()?, "the collector's counters", |s| {
        value(
            s,
            "rxsentry_collector_batches_received_total",
            &[("host", &host)],
        ) > 0.0
    })
    .await?;
    assert!(
        value(
            &received,
            "rxsentry_collector_events_received_total",
            &[("host", &host)]
        ) >= 18.0
    );
    assert_eq!(
        received.get("rxsentry_collector_hosts", &[("state", "live")]),
        Some(1.0)
    );
    assert_eq!(
        received.get("rxsentry_collector_publish_streams", &[]),
        Some(1.0)
    );

    // A reload bumps the generation; a broken file is refused and keeps it.
    std::fs::write(
        &policy,
        format!(
            "{allow_true}[[allow]]\npath = \"/usr/bin/false\"\nsha256 = \"{}\"\n",
            tests::exe::sha256_of(Path::new("/usr/bin/false"))?
        ),
    )?;
    sensor.hangup()?;
    let reloaded = until(addr, "a higher policy generation", |s| {
        value(s, "rxsentry_sensor_policy_generation", &[]) > generation
    })
    .await?;
    let generation = value(&reloaded, "rxsentry_sensor_policy_generation", &[]);
    std::fs::write(&policy, "mode = \"enforce\"\n[[allow]]\npath = 7\n")?;
    sensor.hangup()?;
    let refused = until(addr, "a refused reload", |s| {
        value(s, "rxsentry_sensor_policy_reloads_refused_total", &[]) >= 1.0
    })
    .await?;
    assert_eq!(
        value(&refused, "rxsentry_sensor_policy_generation", &[]),
        generation
    );

    // `status` shows the same daemon to a person, and says when it is gone.
    let out = status(InNetns::No, &["--metrics", &addr.to_string()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("running on host {host}")), "{text}");
    assert!(
        text.contains(&format!("exec_allowlist {backend}")),
        "{text}"
    );
    assert!(text.contains("collector:   connected"), "{text}");
    assert!(text.contains("policy generation"), "{text}");
    assert!(
        text.contains("sigma \"Execution From a World-Writable Directory\""),
        "{text}"
    );
    assert!(sensor.stop().await?.success());
    let out = status(InNetns::No, &["--metrics", &addr.to_string()])?;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("NOT running"),
        "{out:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_depth_grows_while_the_collector_is_down_and_drains_after() -> anyhow::Result<()> {
    let collector = Collector::start().await?;
    let collector_addr = collector.addr.clone();
    let sensor = Sensor::start(&collector, SensorOptions::default()).await?;
    let addr = sensor.metrics_addr()?;
    until(addr, "connected", |s| {
        value(s, "rxsentry_sensor_collector_connected", &[]) == 1.0
    })
    .await?;
    let state = collector.stop_keeping_state().await?;
    until(addr, "the loss of the collector", |s| {
        value(s, "rxsentry_sensor_collector_connected", &[]) == 0.0
    })
    .await?;
    let before = sensor.metrics().await?;
    let tag = marker("spooled");
    let start = Instant::now();
    let spooled = until(addr, "batches in the spool", |s| {
        // Execs keep sealing batches until the spool holds some.
        for _ in 0..20 {
            let _ = std::process::Command::new("/bin/true").arg(&tag).status();
        }
        value(s, "rxsentry_sensor_spool_batches", &[])
            > value(&before, "rxsentry_sensor_spool_batches", &[])
            && value(s, "rxsentry_sensor_spool_bytes", &[]) > 0.0
    })
    .await?;
    eprintln!(
        "spool: {} batches, {} bytes after {:?}",
        value(&spooled, "rxsentry_sensor_spool_batches", &[]),
        value(&spooled, "rxsentry_sensor_spool_bytes", &[]),
        start.elapsed()
    );
    // Nothing was lost while it waited.
    assert_eq!(
        spooled.sum("rxsentry_sensor_dropped_batches_total"),
        0.0,
        "{spooled:#?}"
    );

    // Back on the same address: the spool drains.
    let collector = Collector::start_on(state, None, &collector_addr, &[]).await?;
    until(addr, "an empty spool", |s| {
        value(s, "rxsentry_sensor_spool_batches", &[]) == 0.0
            && value(s, "rxsentry_sensor_collector_connected", &[]) == 1.0
    })
    .await?;
    assert!(sensor.stop().await?.success());
    drop(collector);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_state_and_a_response_rule_hit_show_in_the_metrics() -> anyhow::Result<()> {
    let sfx = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    // A namespace of its own (loopback only): isolating it cuts nothing.
    let netns = Netns::new(&format!("rxs-metrics-{sfx}"))?;
    let bpffs = Bpffs::mount()?;
    let dir = tempfile::tempdir()?;
    let cgroup = TestCgroup::new(&marker("rxmetrics-iso"))?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, cgroup.touch_only_policy()?)?;
    let intruder = dir.path().join("intruder");
    tests::exe::copy_executable(Path::new("/usr/bin/touch"), &intruder)?;
    let config = format!(
        "[host]\nid = \"metrics-{sfx}\"\n\
         [collector]\nendpoint = \"http://127.0.0.1:50051\"\ninsecure_plaintext = true\n\
         [isolation]\nenabled = true\npin_dir = \"{}\"\nstate_dir = \"{}\"\ninterface_poll_ms = 200\n\
         [policy]\npath = \"{}\"\npin_dir = \"{}\"\n\
         [[response]]\nname = \"burst\"\non = \"exec_blocked\"\nthreshold = 2\nwithin_secs = 60\naction = \"isolate\"\n",
        bpffs.path.join("rxsentry-isolation").display(),
        dir.path().join("state").display(),
        policy.display(),
        // The allowlist's pins too go in this test's own bpffs (gone with
        // it), never in the default /sys/fs/bpf/rxsentry/allowlist.
        bpffs.path.join("rxsentry-allowlist").display()
    );
    let config_file = dir.path().join("sensor.toml");
    // A fixed port inside the namespace is nobody else's; the file is
    // also what `release` below reads.
    std::fs::write(
        &config_file,
        format!("{config}[metrics]\nlisten = \"127.0.0.1:0\"\n"),
    )?;
    let sensor = Sensor::with_config_file(&config_file)
        .netns(InNetns::NetOnly(netns.name.clone()))
        .start()
        .await?;
    let addr = sensor.metrics_addr()?.to_string();
    // The listener is in the namespace: read it from there, as printed
    // by `status --raw`.
    let scrape = || -> anyhow::Result<Samples> {
        let out = status(
            InNetns::NetOnly(netns.name.clone()),
            &["--metrics", &addr, "--raw"],
        )?;
        anyhow::ensure!(out.status.success(), "status: {out:?}");
        Ok(rxsentry_metrics::parse(&String::from_utf8_lossy(
            &out.stdout,
        ))?)
    };
    let before = scrape()?;
    assert_eq!(
        value(&before, "rxsentry_sensor_isolation_enabled", &[]),
        1.0
    );
    assert_eq!(value(&before, "rxsentry_sensor_isolated", &[]), 0.0);
    assert_eq!(
        before
            .named("rxsentry_sensor_backend_info")
            .filter(|b| b.label("capability") == Some("isolation_tc"))
            .map(|b| b.label("backend"))
            .collect::<Vec<_>>(),
        // tcx from Linux 6.6, clsact through netlink before (kernel.rs).
        [Some(tests::kernel::kernel().isolation_tc())],
        "{before:#?}"
    );
    let burst = [("engine", "sequence"), ("rule", "burst")];
    assert_eq!(
        value(&before, "rxsentry_sensor_rule_hits_total", &burst),
        0.0
    );

    // Two blocked execs reach the rule's threshold: it isolates.
    for _ in 0..2 {
        // As this kernel's backend blocks: tracepoint+sigkill kills it,
        // lsm refuses the exec itself (tests/src/kernel.rs).
        let status =
            tests::kernel::Exec::of(cgroup.command(&intruder).arg(dir.path().join("x")).status())?;
        assert!(status.blocked(), "not blocked: {status}");
    }
    let deadline = Instant::now() + WAIT;
    let isolated = loop {
        let s = scrape()?;
        if value(&s, "rxsentry_sensor_isolated", &[]) == 1.0 {
            break s;
        }
        anyhow::ensure!(Instant::now() < deadline, "not isolated: {s:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        value(&isolated, "rxsentry_sensor_rule_hits_total", &burst),
        1.0
    );
    assert!(events(&isolated, "policy") >= events(&before, "policy") + 2.0);
    assert!(
        value(
            &isolated,
            "rxsentry_sensor_isolation_changed_time_seconds",
            &[]
        ) > 0.0
    );

    // Released on site: the daemon's figure flips back.
    let out = Sensor::with_config_file(&config_file)
        .netns(InNetns::IpExec(netns.name.clone()))
        .args(["release", "--reason", "checked"])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let s = scrape()?;
        if value(&s, "rxsentry_sensor_isolated", &[]) == 0.0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "still isolated: {s:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sensor.stop().await?.success());
    drop(bpffs);
    Ok(())
}
