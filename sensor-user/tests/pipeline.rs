//! The whole userspace pipeline: pushed kernel events come out at a
//! collector as numbered, compressed, enriched batches; nothing is lost
//! without being counted.

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{TestServer, decode_events, held_port, wait_until};
use proto::telemetry::v1::{HostIdentity, event::Kind};
use sensor_user::{
    config::Config,
    events::{ExecRecord, ExitRecord, ForkRecord, KernelEvent, TaskIdentity},
    pipeline::{self, EventDropped},
    transport::DropTracker,
};

/// Above any pid_max, so no real /proc entry interferes.
const PID: u32 = 0x7fff_0000;

/// Memory only (the spool's own tests set `spool` up themselves).
fn config(endpoint: String, max_events: usize, queue: usize) -> Config {
    let mut c = Config::default();
    c.spool.enabled = false;
    c.collector.endpoint = endpoint;
    c.collector.insecure_plaintext = true;
    c.batching.max_events = max_events;
    c.batching.max_delay_ms = 50;
    c.pipeline.event_queue_capacity = queue;
    c
}

fn identity() -> HostIdentity {
    HostIdentity {
        host_id: "test-host".into(),
        sensor_instance_id: "test-instance".into(),
        ..Default::default()
    }
}

fn task(tgid: u32, comm: &str) -> TaskIdentity {
    TaskIdentity {
        tgid,
        tid: tgid,
        ppid: PID,
        comm: comm.into(),
        start_boottime_ns: 1_000 + u64::from(tgid - PID),
        ..Default::default()
    }
}

fn fork(tgid: u32) -> KernelEvent {
    KernelEvent::Fork(ForkRecord {
        timestamp_ns: u64::from(tgid),
        task: task(tgid, "parent"),
        partial: false,
    })
}

fn exec(timestamp_ns: u64, task: TaskIdentity, path: &std::path::Path) -> KernelEvent {
    KernelEvent::Exec(ExecRecord {
        timestamp_ns,
        task,
        filename: path.to_string_lossy().into_owned(),
        argv: vec!["prog".into()],
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_collector_enriched_and_in_order() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = dir.path().join("prog");
    std::fs::write(&prog, b"abc").expect("write");
    let drops = Arc::new(DropTracker::new());
    let handle = pipeline::spawn(
        &config(server.endpoint(), 2, 1024),
        identity(),
        drops.clone(),
    )
    .expect("spawn");
    let tx = handle.sender();
    let child = PID + 1;
    tx.push(fork(PID)).expect("queued");
    tx.push(fork(child)).expect("queued");
    tx.push(exec(5_000, task(child, "prog"), &prog))
        .expect("queued");
    tx.push(KernelEvent::Exit(ExitRecord {
        timestamp_ns: 9_000,
        task: task(child, "prog"),
        status: 3 << 8,
        partial: false,
    }))
    .expect("queued");
    // Two full batches of two, sealed by count.
    wait_until("2 batches acked", Duration::from_secs(20), || {
        handle.stats().batches_acked == 2
    })
    .await;
    let stats = handle.stats();
    assert_eq!(
        (stats.events_in, stats.events_enriched, stats.batches_sealed),
        (4, 4, 2)
    );
    assert_eq!(stats.hash_cache_misses, 1);
    assert!(
        stats.processes_seeded > 0,
        "the process table was seeded from /proc"
    );

    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.unsent_batches, report.events_abandoned), (0, 0));
    assert!(!report.deadline_exceeded);
    assert_eq!(tx.push(fork(PID + 9)), Err(EventDropped::Closed));
    assert_eq!(
        drops.snapshot().userspace_queue_full,
        1,
        "the refused push is counted"
    );

    let batches = server.received();
    assert_eq!(
        batches.iter().map(|b| b.sequence).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(
        batches
            .iter()
            .all(|b| b.host == Some(identity()) && b.drops.is_some())
    );
    let events: Vec<_> = batches.iter().flat_map(decode_events).collect();
    assert_eq!(
        events.iter().map(|e| e.timestamp_ns).collect::<Vec<_>>(),
        vec![u64::from(PID), u64::from(child), 5_000, 9_000]
    );
    // Each event's UTC time is its stamp on this host's REALTIME - BOOTTIME
    // offset (within 1 s: the test reads the offset itself, later).
    let realtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;
    let offset = realtime - i128::from(sensor_user::clock::boottime_ns());
    for e in &events {
        let expected = i128::from(e.timestamp_ns) + offset;
        let wall = e.wall_time_unix_ns().expect("a known wall time");
        assert!(
            (i128::from(wall) - expected).abs() < 1_000_000_000,
            "wall time {wall} for stamp {}, expected about {expected}",
            e.timestamp_ns
        );
    }
    let Some(Kind::Exec(exec)) = &events[2].kind else {
        panic!("exec: {:?}", events[2])
    };
    assert_eq!(
        exec.sha256,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let p = exec.process.as_ref().expect("process");
    assert_eq!(p.lineage, vec![format!("{PID}:parent")]);
    let Some(Kind::Exit(exit)) = &events[3].kind else {
        panic!("exit: {:?}", events[3])
    };
    assert_eq!(exit.exit_code, Some(3));
    assert_eq!(exit.duration_ns, 9_000 - 1_001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_delivered_or_counted() {
    let server = TestServer::start();
    let drops = Arc::new(DropTracker::new());
    // A tiny queue so a burst overflows it.
    let handle = pipeline::spawn(&config(server.endpoint(), 64, 4), identity(), drops.clone())
        .expect("spawn");
    let tx = handle.sender();
    let (mut accepted, mut refused) = (0u64, 0u64);
    for i in 0..5_000 {
        match tx.push(fork(PID + 1 + i)) {
            Ok(()) => accepted += 1,
            Err(EventDropped::QueueFull) => refused += 1,
            Err(EventDropped::Closed) => panic!("not closed yet"),
        }
    }
    assert!(refused > 0, "a burst of 5000 into a queue of 4 overflows");
    assert_eq!(drops.snapshot().userspace_queue_full, refused);
    let report = handle.shutdown(Duration::from_secs(20)).await;
    assert_eq!(report.events_in, accepted);
    assert_eq!(report.unsent_batches, 0);
    let delivered: usize = server
        .received()
        .iter()
        .map(|b| decode_events(b).len())
        .sum();
    assert_eq!(
        delivered as u64, accepted,
        "every accepted event reached the collector"
    );
    assert_eq!(report.drops.userspace_queue_full, refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_a_collector_counts_the_loss() {
    let drops = Arc::new(DropTracker::new());
    let held = held_port();
    let endpoint = format!("http://{}", held.addr());
    let handle =
        pipeline::spawn(&config(endpoint, 256, 64), identity(), drops.clone()).expect("spawn");
    let tx = handle.sender();
    for i in 0..10 {
        tx.push(fork(PID + 1 + i)).expect("queued");
    }
    let report = handle.shutdown(Duration::from_millis(500)).await;
    assert_eq!(
        (
            report.batches_sealed,
            report.unsent_batches,
            report.unsent_events
        ),
        (1, 1, 10)
    );
    assert!(report.deadline_exceeded);
    let d = drops.snapshot();
    assert_eq!(
        (d.userspace_batches_dropped, d.userspace_events_dropped),
        (1, 10)
    );
}

#[test]
fn spawn_outside_a_runtime_is_an_error() {
    let drops = Arc::new(DropTracker::new());
    let e = pipeline::spawn(&Config::default(), identity(), drops).expect_err("needs tokio");
    assert!(e.to_string().contains("tokio"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_still_queued_at_the_deadline_are_counted() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // Sparse, so cheap to make, but hashing it still takes a while.
    let big = dir.path().join("big");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(200 << 20))
        .expect("sparse file");
    let drops = Arc::new(DropTracker::new());
    let handle = pipeline::spawn(
        &config(server.endpoint(), 256, 64),
        identity(),
        drops.clone(),
    )
    .expect("spawn");
    let tx = handle.sender();
    tx.push(exec(1, task(PID, "big"), &big)).expect("queued");
    for i in 1..=4 {
        tx.push(fork(PID + i)).expect("queued");
    }
    let report = handle.shutdown(Duration::from_millis(20)).await;
    assert!(report.deadline_exceeded);
    assert_eq!(report.events_in, 5);
    assert_eq!(report.events_abandoned, 5, "{report:?}");
    assert_eq!(report.drops.userspace_queue_full, 5);
    assert_eq!(report.batches_sealed, 0);
}

/// `config` with the spool in `dir` (small segments, so acks delete files).
fn spooled(endpoint: String, dir: &std::path::Path) -> Config {
    let mut c = config(endpoint, 5, 1024);
    c.spool.enabled = true;
    c.spool.dir = dir.to_owned();
    c.spool.segment_bytes = 64 << 10;
    c
}

fn instance(id: &str) -> HostIdentity {
    HostIdentity {
        sensor_instance_id: id.into(),
        ..identity()
    }
}

fn segment_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .expect("spool dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "spl"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_batches_outlive_the_sensor_and_the_sequence_continues() {
    let spool = tempfile::tempdir().expect("tempdir");
    let held = held_port();
    let down = format!("http://{}", held.addr());
    let drops = Arc::new(DropTracker::new());
    let first = pipeline::spawn(
        &spooled(down, spool.path()),
        instance("first"),
        drops.clone(),
    )
    .expect("spawn");
    let tx = first.sender();
    for i in 0..10 {
        tx.push(fork(PID + 1 + i)).expect("queued");
    }
    wait_until("2 batches spooled", Duration::from_secs(20), || {
        first.stats().spool_batches == 2
    })
    .await;
    let report = first.shutdown(Duration::from_millis(300)).await;
    assert_eq!(
        (
            report.left_in_spool,
            report.unsent_batches,
            report.deadline_exceeded
        ),
        (2, 0, false),
        "kept on disk, not lost: {report:?}"
    );
    assert_eq!(drops.snapshot().userspace_batches_dropped, 0);
    assert!(segment_files(spool.path()) > 0);

    let server = TestServer::start();
    let drops = Arc::new(DropTracker::new());
    let mut c = spooled(server.endpoint(), spool.path());
    c.batching.heartbeat_ms = 200;
    let second = pipeline::spawn(&c, instance("second"), drops.clone()).expect("spawn");
    let tx = second.sender();
    for i in 0..5 {
        tx.push(fork(PID + 20 + i)).expect("queued");
    }
    wait_until("3 batches and a heartbeat", Duration::from_secs(20), || {
        server.received().iter().any(|b| b.event_count == 0)
    })
    .await;
    let got = server.received();
    let ids: Vec<(u64, &str, u32)> = got
        .iter()
        .map(|b| {
            let h = b.host.as_ref().expect("host");
            (b.sequence, h.sensor_instance_id.as_str(), b.event_count)
        })
        .collect();
    assert_eq!(
        ids[..4],
        [
            (1, "first", 5),
            (2, "first", 5),
            (3, "second", 5),
            (4, "second", 0)
        ],
        "replayed first, exactly as sealed; then the sequence continues"
    );
    let replayed: Vec<u64> = got[..2]
        .iter()
        .flat_map(decode_events)
        .map(|e| e.timestamp_ns)
        .collect();
    assert_eq!(
        replayed,
        (1..=10).map(|i| u64::from(PID + i)).collect::<Vec<_>>()
    );
    wait_until("acked and deleted", Duration::from_secs(20), || {
        segment_files(spool.path()) <= 1 && second.stats().spool_batches == 0
    })
    .await;
    let report = second.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.left_in_spool, report.unsent_batches), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_record_file_is_deleted_only_once_acked() {
    let spool = tempfile::tempdir().expect("tempdir");
    let audit = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start();
    server.withhold_acks(true);
    let drops = Arc::new(DropTracker::new());
    let handle = pipeline::spawn(&spooled(server.endpoint(), spool.path()), identity(), drops)
        .expect("spawn");
    let file = audit.path().join("1.pb");
    std::fs::write(&file, b"record").expect("write");
    let event = proto::telemetry::v1::Event {
        timestamp_ns: 77,
        ..Default::default()
    };
    handle
        .audit_sender()
        .send(
            sensor_user::transport::EncodedEvents::from_events([&event])
                .with_audit_file(file.clone()),
        )
        .await
        .expect("send");
    wait_until("the audit batch arrives", Duration::from_secs(20), || {
        !server.received().is_empty()
    })
    .await;
    assert!(file.exists(), "received but not acked: kept");
    server.withhold_acks(false);
    // The next batch's ack is cumulative.
    handle.sender().push(fork(PID + 1)).expect("queued");
    wait_until("acked, then deleted", Duration::from_secs(20), || {
        !file.exists()
    })
    .await;
    assert_eq!(decode_events(&server.received()[0])[0].timestamp_ns, 77);
    handle.shutdown(Duration::from_secs(5)).await;
}
