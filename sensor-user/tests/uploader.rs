//! The gRPC uploader against an in-test collector on loopback.

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{HeldPort, TestServer, held_port, wait_until};
use proto::telemetry::v1::{Compression, SensorBatch};
use sensor_user::transport::{
    CollectorLink, DropTracker, Spool, SpoolSettings, Uploader, UploaderSettings,
};

const PATIENCE: Duration = Duration::from_secs(20);

fn settings(endpoint: String, queue_capacity: usize) -> UploaderSettings {
    UploaderSettings {
        link: CollectorLink::plaintext(endpoint, Duration::from_secs(2)),
        max_inflight: 16,
        queue_capacity,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ack_timeout: Duration::from_secs(60),
    }
}

fn batch(sequence: u64, event_count: u32) -> SensorBatch {
    SensorBatch {
        sequence,
        compression: Compression::Zstd as i32,
        payload: vec![sequence as u8; 8],
        event_count,
        ..Default::default()
    }
}

/// An uploader aimed at a loopback port where nothing listens (yet).
fn uploader_without_collector(queue_capacity: usize) -> (Uploader, Arc<DropTracker>, HeldPort) {
    let port = held_port();
    let drops = Arc::new(DropTracker::new());
    let endpoint = format!("http://{}", port.addr());
    let up = Uploader::spawn(settings(endpoint, queue_capacity), drops.clone()).expect("spawn");
    (up, drops, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_arrive_in_order_and_are_acked() {
    let server = TestServer::start();
    let drops = Arc::new(DropTracker::new());
    let up = Uploader::spawn(settings(server.endpoint(), 64), drops.clone()).expect("spawn");
    let queue = up.queue();
    for seq in 1..=20 {
        assert!(queue.push(batch(seq, 3)), "no drop with room in the queue");
    }
    wait_until("20 acks", PATIENCE, || up.stats().batches_acked == 20).await;
    assert_eq!(server.sequences(), (1..=20).collect::<Vec<_>>());
    let stats = up.stats();
    assert_eq!((stats.batches_sent, stats.batches_resent), (20, 0));
    assert!(stats.connected);
    assert_eq!(stats.inflight, 0);
    let report = up.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.batches_acked, report.unsent_batches), (20, 0));
    assert_eq!(drops.snapshot().userspace_batches_dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_batches_are_resent_after_the_collector_restarts() {
    let port = held_port();
    let first = TestServer::start_on(&port);
    let drops = Arc::new(DropTracker::new());
    let up = Uploader::spawn(settings(first.endpoint(), 64), drops.clone()).expect("spawn");
    let queue = up.queue();
    for seq in 1..=3 {
        queue.push(batch(seq, 1));
    }
    wait_until("first 3 acked", PATIENCE, || up.stats().batches_acked == 3).await;

    // The collector receives 4..=6 but crashes before acking them.
    first.withhold_acks(true);
    for seq in 4..=6 {
        queue.push(batch(seq, 1));
    }
    wait_until("4..=6 received", PATIENCE, || first.sequences().len() == 6).await;
    assert_eq!(up.stats().inflight, 3);
    first.kill();
    wait_until("disconnect noticed", PATIENCE, || !up.stats().connected).await;
    for seq in 7..=8 {
        queue.push(batch(seq, 1));
    }
    // Nothing listens now; give the uploader a few failed attempts.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let second = TestServer::start_on(&port);
    wait_until("all 8 acked", PATIENCE, || up.stats().batches_acked == 8).await;
    assert_eq!(
        second.sequences(),
        vec![4, 5, 6, 7, 8],
        "unacked batches first, in order, then the queued ones"
    );
    let stats = up.stats();
    assert_eq!(stats.batches_resent, 3);
    assert!(stats.connects >= 2 && stats.disconnects >= 1, "{stats:?}");
    let report = up.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.unsent_batches, 0);
    let d = drops.snapshot();
    assert_eq!(
        (d.userspace_batches_dropped, d.userspace_events_dropped),
        (0, 0),
        "nothing lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_collector_refuses_is_dropped_and_counted_not_resent_forever() {
    let server = TestServer::start();
    server.refuse(3);
    let drops = Arc::new(DropTracker::new());
    let up = Uploader::spawn(settings(server.endpoint(), 64), drops.clone()).expect("spawn");
    let queue = up.queue();
    for seq in 1..=5 {
        queue.push(batch(seq, 7));
    }
    wait_until("4 acked", PATIENCE, || up.stats().batches_acked == 4).await;
    assert_eq!(server.sequences(), vec![1, 2, 4, 5]);
    let stats = up.stats();
    assert_eq!(
        (stats.batches_refused, stats.batches_dropped, stats.inflight),
        (1, 1, 0)
    );
    let d = drops.snapshot();
    assert_eq!(
        (d.userspace_batches_dropped, d.userspace_events_dropped),
        (1, 7)
    );
    let report = up.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.unsent_batches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_oldest_batch_and_counts_it() {
    let (up, drops, port) = uploader_without_collector(2);
    let queue = up.queue();
    assert!(queue.push(batch(1, 10)));
    assert!(queue.push(batch(2, 10)));
    for seq in 3..=5 {
        assert!(!queue.push(batch(seq, 10)), "batch {seq} pushed one out");
    }
    let stats = up.stats();
    assert_eq!(
        (stats.batches_dropped, stats.events_dropped, stats.queue_len),
        (3, 30, 2)
    );
    let d = drops.snapshot();
    assert_eq!(
        (d.userspace_batches_dropped, d.userspace_events_dropped),
        (3, 30)
    );

    // When the collector comes up, only the newest two are delivered.
    let server = TestServer::start_on(&port);
    wait_until("2 acked", PATIENCE, || up.stats().batches_acked == 2).await;
    assert_eq!(server.sequences(), vec![4, 5]);
    up.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_spool_a_full_queue_loses_nothing_and_order_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = held_port();
    let drops = Arc::new(DropTracker::new());
    let spool = Spool::open(
        SpoolSettings {
            dir: dir.path().to_owned(),
            max_bytes: 1 << 20,
            segment_bytes: 4 << 10,
            fsync: false,
        },
        drops.clone(),
    )
    .expect("spool");
    let endpoint = format!("http://{}", port.addr());
    let up =
        Uploader::spawn_with(settings(endpoint, 2), drops.clone(), Some(spool)).expect("spawn");
    let queue = up.queue();
    for seq in 1..=50 {
        assert!(
            queue.push(batch(seq, 10)),
            "batch {seq} spooled, nothing dropped"
        );
    }
    let stats = up.stats();
    assert_eq!((stats.batches_dropped, stats.spool_batches), (0, 50));
    assert_eq!(
        (stats.queue_len, stats.inflight),
        (0, 0),
        "while the collector is away the batches are on disk only"
    );

    // The collector comes up: all of them, in order, from disk.
    let server = TestServer::start_on(&port);
    wait_until("50 acked", PATIENCE, || up.stats().batches_acked == 50).await;
    assert_eq!(server.sequences(), (1..=50).collect::<Vec<_>>());
    let stats = up.stats();
    assert_eq!(
        (stats.spool_batches, stats.spool_bytes),
        (0, 0),
        "acked: deleted"
    );
    assert_eq!(drops.snapshot().userspace_batches_dropped, 0);

    // Sent but never acked when the collector dies: they leave RAM too,
    // and come back from disk, in order, to the next collector.
    server.withhold_acks(true);
    for seq in 51..=60 {
        assert!(queue.push(batch(seq, 10)));
    }
    wait_until("51..=60 received", PATIENCE, || {
        server.sequences().len() == 60
    })
    .await;
    server.kill();
    wait_until("disconnect noticed", PATIENCE, || !up.stats().connected).await;
    let stats = up.stats();
    assert_eq!(
        (stats.queue_len, stats.inflight, stats.spool_batches),
        (0, 0, 10),
        "unacked batches wait on disk, not in RAM"
    );
    let next = TestServer::start_on(&port);
    wait_until("60 acked", PATIENCE, || up.stats().batches_acked == 60).await;
    assert_eq!(next.sequences(), (51..=60).collect::<Vec<_>>());
    let report = up.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.unsent_batches, report.left_in_spool), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_and_counts_what_it_could_not_deliver() {
    let (up, drops, _) = uploader_without_collector(16);
    let queue = up.queue();
    queue.push(batch(1, 3));
    queue.push(batch(2, 4));
    let started = std::time::Instant::now();
    let report = up.shutdown(Duration::from_millis(300)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the deadline is kept"
    );
    assert_eq!((report.unsent_batches, report.unsent_events), (2, 7));
    assert!(!queue.push(batch(3, 5)), "refused after shutdown");
    let d = drops.snapshot();
    assert_eq!(
        (d.userspace_batches_dropped, d.userspace_events_dropped),
        (3, 12)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_queue_before_returning() {
    let server = TestServer::start();
    let drops = Arc::new(DropTracker::new());
    let up = Uploader::spawn(settings(server.endpoint(), 256), drops.clone()).expect("spawn");
    let queue = up.queue();
    for seq in 1..=100 {
        queue.push(batch(seq, 1));
    }
    let report = up.shutdown(Duration::from_secs(10)).await;
    assert_eq!((report.batches_acked, report.unsent_batches), (100, 0));
    assert_eq!(server.sequences(), (1..=100).collect::<Vec<_>>());
}

#[tokio::test]
async fn https_and_bad_endpoints_are_refused_at_start() {
    let drops = Arc::new(DropTracker::new());
    let e = Uploader::spawn(settings("https://collector:443".into(), 4), drops.clone())
        .expect_err("no TLS yet");
    assert!(e.to_string().contains("https"), "{e}");
    let e = Uploader::spawn(settings("http://bad host:1".into(), 4), drops).expect_err("bad URL");
    assert!(e.to_string().contains("collector.endpoint"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_long_reconnect_backoff_short() {
    let port = held_port();
    let drops = Arc::new(DropTracker::new());
    let mut slow = settings(format!("http://{}", port.addr()), 16);
    // Sleeps of 10-20 s after the first refused connection.
    slow.backoff_initial = Duration::from_secs(20);
    let up = Uploader::spawn(slow, drops.clone()).expect("spawn");
    up.queue().push(batch(1, 1));
    up.queue().push(batch(2, 1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = TestServer::start_on(&port);
    let report = up.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.batches_acked, report.unsent_batches), (2, 0));
    assert_eq!(server.sequences(), vec![1, 2]);
}
