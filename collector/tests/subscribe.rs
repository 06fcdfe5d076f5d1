//! Fan-out, filters and sequence records as a subscriber sees them.

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use collector::CollectorConfig;
use collector::testkit::{self, SensorStream};
use common::{Got, TestCollector, pids};
use proto::telemetry::v1::{
    DropCounters, EventKind, HostRecord, SubscribeRequest, host_record, sequence_record,
};

fn req(hosts: &[&str], kinds: &[EventKind], names: &[&str]) -> SubscribeRequest {
    SubscribeRequest {
        host_ids: hosts.iter().map(|s| s.to_string()).collect(),
        kinds: kinds.iter().map(|&k| k as i32).collect(),
        process_names: names.iter().map(|s| s.to_string()).collect(),
    }
}

/// (kind, first, last) of every sequence record, in order.
fn sequence_records(items: &[Got]) -> Vec<(sequence_record::Kind, u64, u64)> {
    items
        .iter()
        .filter_map(|g| match g {
            Got::Record(HostRecord {
                record: Some(host_record::Record::Sequence(s)),
                ..
            }) => Some((s.kind(), s.first, s.last)),
            _ => None,
        })
        .collect()
}

fn drop_records(items: &[Got]) -> Vec<DropCounters> {
    items
        .iter()
        .filter_map(|g| match g {
            Got::Record(HostRecord {
                record: Some(host_record::Record::Drops(d)),
                ..
            }) => Some(*d),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_the_right_events() {
    let c = TestCollector::start_default().await;
    let mut everything = c.subscribe(SubscribeRequest::default()).await;
    let mut store1_exec = c
        .subscribe(req(&["store-1"], &[EventKind::Exec], &[]))
        .await;
    let mut curl = c.subscribe(req(&[], &[], &["curl"])).await;
    let mut exits = c
        .subscribe(req(&[], &[EventKind::Exit, EventKind::Fork], &[]))
        .await;
    assert_eq!(c.collector.stats().subscribers, 4);

    let h1 = testkit::host("store-1", "a");
    let h2 = testkit::host("store-2", "b");
    let mut s1 = SensorStream::connect(&c.url).await.unwrap();
    let mut s2 = SensorStream::connect(&c.url).await.unwrap();
    s1.publish(testkit::zstd_batch(
        &h1,
        1,
        vec![
            testkit::fork_event(10, 1, "bash"),
            testkit::exec_event(10, "curl", "/usr/bin/curl", &["curl", "-s", "http://x"]),
            testkit::exec_event(11, "bash", "/bin/bash", &["bash"]),
            testkit::exit_event(10, "curl", Some(7), None),
        ],
    ))
    .await
    .unwrap();
    s2.publish(testkit::zstd_batch(
        &h2,
        1,
        vec![testkit::exec_event(
            20,
            "sh",
            "/usr/local/bin/curl",
            &["curl"],
        )],
    ))
    .await
    .unwrap();
    // A last event on store-1 that every filter matches ends each read.
    let marker = || testkit::exec_event(99, "curl", "/usr/bin/curl", &["curl"]);
    s1.publish(testkit::zstd_batch(&h1, 2, vec![marker()]))
        .await
        .unwrap();
    s1.publish(testkit::zstd_batch(
        &h1,
        3,
        vec![testkit::exit_event(99, "curl", None, Some(9))],
    ))
    .await
    .unwrap();

    assert_eq!(
        pids(&everything.until_pid(99).await),
        [10, 10, 11, 10, 20, 99]
    );
    assert_eq!(pids(&store1_exec.until_pid(99).await), [10, 11, 99]);
    // comm "curl" (exec, exit) or exec basename "curl" (pid 20 on store-2).
    assert_eq!(pids(&curl.until_pid(99).await), [10, 10, 20, 99]);
    let got = exits.until_pid(99).await;
    assert_eq!(pids(&got), [10, 10, 99], "fork 10, exit 10, then exit 99");
    let Got::Event(last) = got.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(last.host.as_ref().unwrap().host_id, "store-1");
    assert_eq!(last.batch_sequence, 3);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_duplicates_restarts_and_drops_are_reported() {
    let c = TestCollector::start_default().await;
    // Kind filter must not hide host records; host filter must.
    let mut sub = c
        .subscribe(req(&["store-42"], &[EventKind::Exec], &[]))
        .await;
    let mut other_host = c.subscribe(req(&["store-43"], &[], &[])).await;
    let host = testkit::host("store-42", "first");
    let exec = |pid| testkit::exec_event(pid, "x", "/bin/x", &["x"]);
    let mut s = SensorStream::connect(&c.url).await.unwrap();

    s.publish(testkit::zstd_batch(&host, 1, vec![exec(1)]))
        .await
        .unwrap();
    // Batches 2..4 never arrive.
    s.publish(testkit::zstd_batch(&host, 5, vec![exec(5)]))
        .await
        .unwrap();
    // Batch 5 again: acked, reported, not delivered twice.
    let ack = s
        .publish(testkit::zstd_batch(&host, 5, vec![exec(55)]))
        .await
        .unwrap();
    assert_eq!(ack.sequence, 5);
    // Drop counters move.
    let mut with_drops = testkit::zstd_batch(&host, 6, vec![exec(6)]);
    with_drops.drops = Some(DropCounters {
        kernel_ringbuf_full: 12,
        ..Default::default()
    });
    s.publish(with_drops.clone()).await.unwrap();
    with_drops.sequence = 7;
    with_drops.payload = testkit::zstd_batch(&host, 7, vec![exec(7)]).payload;
    s.publish(with_drops).await.unwrap(); // same counters: no new record
    // The sensor restarts and its batch 1 was lost.
    let restarted = testkit::host("store-42", "second");
    s.publish(testkit::zstd_batch(&restarted, 2, vec![exec(100)]))
        .await
        .unwrap();

    let got = sub.until_pid(100).await;
    assert_eq!(pids(&got), [1, 5, 6, 7, 100], "{got:?}");
    use sequence_record::Kind::*;
    assert_eq!(
        sequence_records(&got),
        [(Gap, 2, 4), (Duplicate, 5, 5), (Restart, 2, 2), (Gap, 1, 1)]
    );
    let drops = drop_records(&got);
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert_eq!(drops[0].kernel_ringbuf_full, 12);
    // The GAP record comes right before the batch that revealed it.
    let gap_at = got
        .iter()
        .position(|g| matches!(g, Got::Record(_)))
        .unwrap();
    assert_eq!(pids(&got[gap_at..gap_at + 2]), [5]);

    let stats = c.collector.stats();
    let h = &stats.hosts["store-42"];
    assert_eq!(h.gaps, 2);
    assert_eq!(h.missing_batches, 4);
    assert_eq!(h.duplicates, 1);
    assert_eq!(h.restarts, 1);
    assert_eq!(h.batches, 5);
    assert_eq!(h.sensor_instance_id, "second");
    assert_eq!(
        h.drops,
        DropCounters::default(),
        "restart resets drop counters"
    );

    // Nothing of store-42 reached the store-43 subscriber.
    let h43 = testkit::host("store-43", "z");
    s.publish(testkit::zstd_batch(&h43, 1, vec![exec(43)]))
        .await
        .unwrap();
    assert_eq!(other_host.until_pid(43).await.len(), 1);
    c.shutdown().await.unwrap();
}

/// `received_unix_ns` is the collector's clock at the batch's arrival,
/// whatever times the sensor put in the batch; the sensor's own wall time
/// passes through untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_time_is_set_by_the_collector() {
    let c = TestCollector::start_default().await;
    let mut sub = c.subscribe(SubscribeRequest::default()).await;
    let host = testkit::host("store-5", "i");
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    // A spooled event from a kiosk booted in 1970, one booted in 2100, one
    // without a boot time.
    let mut old = testkit::fork_event(1, 1, "old");
    old.boot_time_unix_ns = 1;
    let mut future = testkit::fork_event(2, 1, "future");
    future.boot_time_unix_ns = 4_102_444_800_000_000_000;
    let mut unknown = testkit::fork_event(3, 1, "unknown");
    unknown.boot_time_unix_ns = 0;
    let mut batch = testkit::zstd_batch(&host, 1, vec![old, future, unknown]);
    batch.sealed_at_ns = u64::MAX;

    let before = testkit::now_unix_ns();
    s.publish(batch).await.unwrap();
    let after = testkit::now_unix_ns();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    s.publish(testkit::zstd_batch(
        &host,
        2,
        vec![testkit::fork_event(4, 1, "next")],
    ))
    .await
    .unwrap();
    let after_second = testkit::now_unix_ns();

    let got = sub.until_pid(4).await;
    let events: Vec<_> = got
        .iter()
        .filter_map(|g| match g {
            Got::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 4, "{got:?}");
    let walls: Vec<u64> = events
        .iter()
        .map(|e| e.event.as_ref().unwrap().boot_time_unix_ns)
        .collect();
    assert_eq!(walls[..3], [1, 4_102_444_800_000_000_000, 0]);
    for e in &events[..3] {
        assert!(
            (before..=after).contains(&e.received_unix_ns),
            "received {} not within the publish [{before}, {after}]",
            e.received_unix_ns
        );
        assert_eq!(e.received_unix_ns, events[0].received_unix_ns, "one batch");
    }
    let second = events[3].received_unix_ns;
    assert!(
        second >= after + 50_000_000 && second <= after_second,
        "{second}"
    );
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_is_told_and_ingest_goes_on() {
    let c = TestCollector::start(CollectorConfig {
        subscriber_buffer: 8,
        stats_log_interval: None,
        ..CollectorConfig::default()
    })
    .await;
    let mut sub = c.subscribe(SubscribeRequest::default()).await;
    let host = testkit::host("store-9", "i");
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    const FLOOD: u32 = 5000;
    let events = (0..FLOOD)
        .map(|pid| testkit::fork_event(pid + 1, 1, "f"))
        .collect();
    // Acked even though the subscriber reads nothing meanwhile.
    s.publish(testkit::zstd_batch(&host, 1, events))
        .await
        .unwrap();
    s.publish(testkit::zstd_batch(
        &host,
        2,
        vec![testkit::fork_event(99_999, 1, "m")],
    ))
    .await
    .unwrap();

    let got = sub.until_pid(99_999).await;
    let skipped: u64 = got
        .iter()
        .map(|g| if let Got::Lagged(n) = g { *n } else { 0 })
        .sum();
    assert!(
        skipped > 0,
        "a subscriber 8 items deep must lag on {FLOOD} events"
    );
    let delivered = pids(&got).len() as u64 - 1; // minus the marker
    assert_eq!(delivered + skipped, u64::from(FLOOD));
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscribe_filter_is_refused() {
    let c = TestCollector::start_default().await;
    let mut client =
        proto::telemetry::v1::telemetry_subscribe_client::TelemetrySubscribeClient::connect(
            c.url.clone(),
        )
        .await
        .unwrap();
    let status = client
        .subscribe(c.access().request(SubscribeRequest {
            kinds: vec![EventKind::Unspecified as i32],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let c = TestCollector::start_default().await;
    let mut sub = c.subscribe(SubscribeRequest::default()).await;
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    let host = testkit::host("store-1", "i");
    s.publish(testkit::zstd_batch(&host, 1, vec![]))
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    let end = tokio::time::timeout(common::WAIT, sub.0.next())
        .await
        .unwrap();
    assert!(
        matches!(end, Ok(None)),
        "subscriber stream should end cleanly: {end:?}"
    );
    let end = tokio::time::timeout(common::WAIT, s.next_ack())
        .await
        .unwrap();
    assert!(
        matches!(end, Ok(None)),
        "publish stream should end cleanly: {end:?}"
    );
}
