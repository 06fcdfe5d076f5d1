//! Exec, fork and exit of a marked command travel kernel -> sensor ->
//! collector -> subscriber with the right fields.

use std::time::Duration;

use proto::telemetry::v1::{EventKind, SubscribeRequest};
use tests::{Collector, Sensor, SensorOptions, Subscription, marker, sensor_programs_after_exit};

fn sha256_hex(path: &str) -> String {
    tests::exe::sha256_of(std::path::Path::new(path)).expect("readable binary")
}

/// What "within a few seconds" of the test's own clock means.
const SLACK_NS: u64 = 3_000_000_000;

/// This process's CLOCK_REALTIME, UTC ns since the epoch.
fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_fork_and_exit_reach_a_subscriber() -> anyhow::Result<()> {
    let collector = Collector::start().await?;
    let mut sub = Subscription::open(&collector.url(), SubscribeRequest::default()).await?;
    let sensor = Sensor::start(&collector, SensorOptions::default()).await?;

    let marker = marker("exec-marker");
    let spawned_at = unix_ns();
    let status = std::process::Command::new("/bin/sh")
        .args(["-c", "exit 7", &marker])
        .spawn()?;
    let mut child = status;
    let child_pid = child.id();
    let exit = child.wait()?;
    let exited_at = unix_ns();
    assert_eq!(exit.code(), Some(7));

    sub.until(Duration::from_secs(20), |s| {
        !s.execs_with(&marker).is_empty() && !s.exits_of(child_pid).is_empty()
    })
    .await?;
    let seen_at = unix_ns();

    let execs = sub.execs_with(&marker);
    assert_eq!(execs.len(), 1, "exactly one exec of the marked command");
    let exec = execs[0];
    let process = exec.process.as_ref().expect("process");
    assert_eq!(process.pid, child_pid);
    assert_eq!(process.ppid, std::process::id());
    assert_eq!(process.uid, nix::unistd::getuid().as_raw());
    assert_eq!(process.comm, "sh");
    assert_eq!(exec.filename, "/bin/sh");
    assert_eq!(exec.argv, ["/bin/sh", "-c", "exit 7", marker.as_str()]);
    assert!(!exec.argv_truncated);
    let real = std::fs::canonicalize("/bin/sh")?;
    assert_eq!(
        exec.sha256,
        sha256_hex(real.to_str().unwrap()),
        "hash of the executed file"
    );
    let file = exec.file.as_ref().expect("file identity");
    let meta = std::fs::metadata(&real)?;
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!((file.device, file.inode), (meta.dev(), meta.ino()));
    assert!(
        process
            .lineage
            .iter()
            .any(|a| a.starts_with(&format!("{}:", std::process::id()))),
        "lineage {:?} names the test process",
        process.lineage
    );

    // The exec's UTC time, made by the sensor from the kernel's stamp, is
    // when the test ran it (a few seconds' slack for the offset and NTP);
    // the collector's receive time comes after it.
    let received = sub.exec_host_events_with(&marker)[0];
    let wall = received
        .event
        .as_ref()
        .and_then(|e| e.wall_time_unix_ns())
        .expect("an exec with its UTC time");
    assert!(
        wall + SLACK_NS >= spawned_at && wall <= exited_at + SLACK_NS,
        "exec wall time {wall} not within [{spawned_at}, {exited_at}] +- {SLACK_NS} ns"
    );
    assert!(
        received.received_unix_ns + SLACK_NS >= wall && received.received_unix_ns <= seen_at,
        "received at {} (exec at {wall}, seen by the test at {seen_at})",
        received.received_unix_ns
    );

    let exits = sub.exits_of(child_pid);
    assert_eq!(exits.len(), 1);
    assert_eq!(exits[0].exit_code, Some(7));
    assert_eq!(exits[0].signal, None);

    let forks = sub.forks_of(child_pid);
    assert_eq!(forks.len(), 1, "the child's creation is a fork event");
    assert_eq!(forks[0].process.as_ref().unwrap().ppid, std::process::id());

    // Every event names the host and a batch sequence.
    let host = sub.events[0].host.as_ref().expect("host identity");
    assert_eq!(host.host_id, format!("test-{}", std::process::id()));
    assert_eq!(host.labels.get("store").map(String::as_str), Some("test"));
    assert!(sub.events.iter().all(|e| e.batch_sequence >= 1));

    let status = sensor.stop().await?;
    assert!(
        status.success(),
        "sensor exit status after SIGTERM: {status}"
    );
    assert_eq!(
        sensor_programs_after_exit().await?,
        Vec::<String>::new(),
        "programs detached"
    );
    drop(collector);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_reports_its_signal_and_filters_apply() -> anyhow::Result<()> {
    let collector = Collector::start().await?;
    let request = SubscribeRequest {
        kinds: vec![EventKind::Exit as i32],
        ..Default::default()
    };
    let mut sub = Subscription::open(&collector.url(), request).await?;
    let sensor = Sensor::start(&collector, SensorOptions::default()).await?;

    let mut child = std::process::Command::new("/bin/sleep").arg("30").spawn()?;
    let pid = child.id();
    child.kill()?;
    child.wait()?;

    sub.until(Duration::from_secs(20), |s| !s.exits_of(pid).is_empty())
        .await?;
    let exit = sub.exits_of(pid)[0];
    assert_eq!(exit.signal, Some(9));
    assert_eq!(exit.exit_code, None);
    assert!(
        sub.execs_with("30").is_empty(),
        "exec events were filtered out"
    );
    assert!(
        sub.events.iter().all(|e| matches!(
            e.event.as_ref().and_then(|e| e.kind.as_ref()),
            Some(proto::telemetry::v1::event::Kind::Exit(_))
        )),
        "only exit events pass a kind=exit filter"
    );
    sensor.stop().await?;
    Ok(())
}

/// Events from just before SIGTERM are flushed to the collector, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_pending_events() -> anyhow::Result<()> {
    let collector = Collector::start().await?;
    let mut sub = Subscription::open(&collector.url(), SubscribeRequest::default()).await?;
    let options = SensorOptions {
        // A long batching delay: only the shutdown flush can deliver in time.
        extra_config: "[batching]\nmax_events = 4096\nmax_delay_ms = 60000\n".to_owned(),
    };
    let sensor = Sensor::start(&collector, options).await?;
    let marker = marker("flush-marker");
    std::process::Command::new("/bin/true")
        .arg(&marker)
        .status()?;
    // No wait: the exec's record is in the ring before `status()` returns,
    // and the shutdown detaches the hooks, then drains the rings, then
    // flushes (the record may still be in the ring when SIGTERM arrives).
    let status = sensor.stop().await?;
    assert!(status.success(), "{status}");
    sub.until(Duration::from_secs(10), |s| {
        !s.execs_with(&marker).is_empty()
    })
    .await?;
    Ok(())
}

/// A binary changed in place with its size and mtime put back (`touch -d`)
/// is reported with the SHA-256 of its new content, never the cached hash
/// of the old one: ctime, which user space cannot set, is in the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_changed_in_place_with_its_mtime_restored_is_hashed_again() -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let dir = tempfile::tempdir()?;
    let tool = dir.path().join("tool");
    tests::exe::copy_executable(std::path::Path::new("/usr/bin/true"), &tool)?;
    let collector = Collector::start().await?;
    let mut sub = Subscription::open(&collector.url(), SubscribeRequest::default()).await?;
    let sensor = Sensor::start(&collector, SensorOptions::default()).await?;

    let before = marker("hash-before");
    assert!(
        std::process::Command::new(&tool)
            .arg(&before)
            .status()?
            .success()
    );
    sub.until(Duration::from_secs(20), |s| {
        !s.execs_with(&before).is_empty()
    })
    .await?;
    let tool_path = tool.to_str().expect("utf-8 path");
    let old_sha = sha256_hex(tool_path);
    assert_eq!(sub.execs_with(&before)[0].sha256, old_sha);

    // One byte of the last section header (not used to run the program),
    // then mtime put back; the size never changed. (Written here, with no
    // other thread forking: nothing can hold the fd into the exec below.)
    let meta = std::fs::metadata(&tool)?;
    {
        let file = std::fs::OpenOptions::new().write(true).open(&tool)?;
        let last = meta.len() - 1;
        let mut byte = [0u8; 1];
        std::fs::File::open(&tool)?.read_exact_at(&mut byte, last)?;
        file.write_all_at(&[byte[0] ^ 0x01], last)?;
        file.set_modified(meta.modified()?)?;
    }
    let after_meta = std::fs::metadata(&tool)?;
    assert_eq!(after_meta.modified()?, meta.modified()?, "mtime put back");
    assert_eq!(after_meta.len(), meta.len());
    let new_sha = sha256_hex(tool_path);
    assert_ne!(new_sha, old_sha);

    let after = marker("hash-after");
    assert!(
        std::process::Command::new(&tool)
            .arg(&after)
            .status()?
            .success()
    );
    sub.until(Duration::from_secs(20), |s| {
        !s.execs_with(&after).is_empty()
    })
    .await?;
    assert_eq!(
        sub.execs_with(&after)[0].sha256,
        new_sha,
        "the new content's hash, not the cached one"
    );
    sensor.stop().await?;
    Ok(())
}
