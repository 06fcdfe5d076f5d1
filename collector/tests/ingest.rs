//! Refusals: every bad batch ends only its own stream with a clear status.

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use collector::CollectorConfig;
use collector::testkit::{self, SensorStream};
use common::{Got, TestCollector, WAIT, pids};
use proto::telemetry::v1::{Compression, SensorBatch, SubscribeRequest};
use tonic::Code;

fn small_limits() -> CollectorConfig {
    CollectorConfig {
        max_batch_bytes: 256 * 1024,
        max_decompressed_bytes: 1024 * 1024,
        stats_log_interval: None,
        ..CollectorConfig::default()
    }
}

/// A change that makes a valid batch invalid.
type Mutation = fn(&mut SensorBatch);

async fn refusal(stream: &mut SensorStream) -> tonic::Status {
    match tokio::time::timeout(WAIT, stream.next_ack()).await.unwrap() {
        Err(status) => status,
        Ok(other) => panic!("expected a refusal, got {other:?}"),
    }
}

/// Sends `batch` on a fresh stream and checks the refusal's code and text.
async fn assert_refused(url: &str, batch: SensorBatch, code: Code, needle: &str) {
    let mut s = SensorStream::connect(url).await.unwrap();
    s.send(batch).await.unwrap();
    let status = refusal(&mut s).await;
    assert_eq!(status.code(), code, "{needle}: {status:?}");
    assert!(
        status.message().contains(needle),
        "{needle}: {}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_batches_are_acked_in_order() {
    let c = TestCollector::start_default().await;
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    let host = testkit::host("store-0001", "inst-1");
    for seq in 1..=3 {
        let events = vec![testkit::fork_event(seq as u32, 1, "sh")];
        assert_eq!(
            s.publish(testkit::zstd_batch(&host, seq, events))
                .await
                .unwrap()
                .sequence,
            seq
        );
    }
    let ack = s
        .publish(testkit::plain_batch(&host, 4, vec![]))
        .await
        .unwrap();
    assert_eq!(ack.sequence, 4);
    let stats = c.collector.stats();
    let h = &stats.hosts["store-0001"];
    assert_eq!((h.batches, h.events, h.last_sequence), (4, 3, 4));
    assert!(h.bytes_received > 0);
    assert_eq!(stats.publish_streams, 1);
    drop(s);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_ends_only_its_own_stream() {
    let c = TestCollector::start_default().await;
    let mut sub = c.subscribe(SubscribeRequest::default()).await;
    let good_host = testkit::host("store-good", "g");
    let bad_host = testkit::host("store-bad", "b");
    let mut good = SensorStream::connect(&c.url).await.unwrap();
    let mut bad = SensorStream::connect(&c.url).await.unwrap();

    good.publish(testkit::zstd_batch(
        &good_host,
        1,
        vec![testkit::fork_event(1, 0, "a")],
    ))
    .await
    .unwrap();
    let mut garbage = testkit::zstd_batch(&bad_host, 1, vec![testkit::fork_event(2, 0, "b")]);
    garbage.payload = b"\x28\xb5\x2f\xfd this is not a zstd frame".to_vec();
    bad.send(garbage).await.unwrap();
    let status = refusal(&mut bad).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("store-bad"),
        "{}",
        status.message()
    );
    assert!(status.message().contains("zstd"), "{}", status.message());

    // The other sensor and the subscriber carry on.
    let ack = good
        .publish(testkit::zstd_batch(
            &good_host,
            2,
            vec![testkit::fork_event(3, 0, "c")],
        ))
        .await
        .unwrap();
    assert_eq!(ack.sequence, 2);
    let got = sub.until_pid(3).await;
    assert_eq!(
        pids(&got),
        [1, 3],
        "bad host's event must not be delivered: {got:?}"
    );

    let stats = c.collector.stats();
    assert_eq!(stats.rejected_batches, 1);
    assert!(!stats.hosts.contains_key("store-bad"));
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_headers_are_invalid_argument() {
    let c = TestCollector::start_default().await;
    let host = testkit::host("store-0002", "i");
    let cases: Vec<(&str, Mutation)> = vec![
        ("no host", |b| b.host = None),
        ("host_id is empty", |b| {
            b.host.as_mut().unwrap().host_id.clear()
        }),
        ("sensor_instance_id is empty", |b| {
            b.host.as_mut().unwrap().sensor_instance_id.clear()
        }),
        ("sequence must start at 1", |b| b.sequence = 0),
        ("COMPRESSION_UNSPECIFIED", |b| {
            b.compression = Compression::Unspecified as i32
        }),
        ("event_count says 5", |b| b.event_count = 5),
        ("not a valid EventBatch", |b| {
            b.compression = Compression::None as i32;
            b.payload = vec![0xff; 8];
            b.uncompressed_size = 8;
        }),
    ];
    for (expected, mutate) in cases {
        let mut batch = testkit::zstd_batch(&host, 1, vec![testkit::fork_event(1, 0, "a")]);
        mutate(&mut batch);
        assert_refused(&c.url, batch, Code::InvalidArgument, expected).await;
    }
    assert_eq!(c.collector.stats().rejected_batches, 7);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads_are_resource_exhausted() {
    let c = TestCollector::start(small_limits()).await;
    let host = testkit::host("store-0003", "i");

    // Just over max_batch_bytes: the collector's own check.
    let mut batch = testkit::plain_batch(&host, 1, vec![]);
    batch.payload = vec![0; 256 * 1024 + 1];
    let needle = "limit of 262144 bytes";
    assert_refused(&c.url, batch, Code::ResourceExhausted, needle).await;

    // Far over: tonic's max decoding size refuses the message itself.
    let mut batch = testkit::plain_batch(&host, 1, vec![]);
    batch.payload = vec![0; 2 * 1024 * 1024];
    assert_refused(&c.url, batch, Code::ResourceExhausted, "gRPC limit").await;

    // The collector still works afterwards.
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    assert_eq!(
        s.publish(testkit::zstd_batch(&host, 1, vec![]))
            .await
            .unwrap()
            .sequence,
        1
    );
    assert_eq!(c.collector.stats().rejected_batches, 2);
    c.shutdown().await.unwrap();
}

/// 100 MiB of zeros, compressed to a few KiB: refused without being inflated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_bombs_are_resource_exhausted() {
    let c = TestCollector::start_default().await;
    let host = testkit::host("store-0004", "i");
    let zeros = vec![0u8; 100 * 1024 * 1024];

    // Frame that declares its 100 MiB size.
    let declared = zstd::bulk::compress(&zeros, 1).unwrap();
    // Frame that does not say how large it is: must be cut off while inflating.
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.include_contentsize(false).unwrap();
    std::io::Write::write_all(&mut enc, &zeros).unwrap();
    let undeclared = enc.finish().unwrap();
    drop(zeros);

    for (name, payload) in [("declared", declared), ("undeclared", undeclared)] {
        assert!(
            payload.len() < 4 * 1024 * 1024,
            "{name} bomb too big to be a bomb"
        );
        let mut batch = testkit::zstd_batch(&host, 1, vec![]);
        batch.payload = payload;
        batch.event_count = 1000;
        batch.uncompressed_size = 0;
        // The 16 MiB default limit is named in the refusal.
        assert_refused(&c.url, batch, Code::ResourceExhausted, "16777216").await;
    }
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_valid_batch_is_delivered_whole() {
    let c = TestCollector::start_default().await;
    let mut sub = c.subscribe(SubscribeRequest::default()).await;
    let host = testkit::host("store-0005", "i");
    // Random hex argv, so the payload stays above the inline-decode size.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = move || {
        (0..25)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                format!("{state:016x}")
            })
            .collect::<String>()
    };
    let events: Vec<_> = (0..2000u32)
        .map(|i| testkit::exec_event(10_000 + i, "worker", "/usr/bin/worker", &[&noise()]))
        .collect();
    let batch = testkit::zstd_batch(&host, 1, events);
    assert!(
        batch.payload.len() > 64 * 1024,
        "payload only {} bytes",
        batch.payload.len()
    );
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    assert_eq!(s.publish(batch).await.unwrap().sequence, 1);
    let got = sub.until_pid(10_000 + 1999).await;
    assert_eq!(got.len(), 2000);
    assert!(got.iter().all(|g| matches!(g, Got::Event(_))));
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_table_is_bounded() {
    let c = TestCollector::start(CollectorConfig {
        max_hosts: 1,
        stats_log_interval: None,
        ..CollectorConfig::default()
    })
    .await;
    let mut known = SensorStream::connect(&c.url).await.unwrap();
    let first = testkit::host("store-a", "i");
    known
        .publish(testkit::zstd_batch(&first, 1, vec![]))
        .await
        .unwrap();
    let other = testkit::zstd_batch(&testkit::host("store-b", "i"), 1, vec![]);
    assert_refused(&c.url, other, Code::Unavailable, "collector is full").await;
    // The known host is still served.
    let ack = known.publish(testkit::zstd_batch(&first, 2, vec![])).await;
    assert_eq!(ack.unwrap().sequence, 2);
    c.shutdown().await.unwrap();
}

/// The host itself (a sensor on a compromised kiosk, or a broken one) sends
/// a sequence near the maximum: refused, so the real batches after it are
/// still new, not "duplicates" acked and dropped. A jump the sensor reports
/// as lost batches (a full spool dropped its oldest) is accepted as a gap.
async fn far_ahead_sequence_does_not_blind_the_host(config: CollectorConfig) {
    let c = TestCollector::start(config).await;
    let host = testkit::host("store-jump", "inst-1");
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    for seq in 1..=3 {
        let events = vec![testkit::fork_event(seq as u32, 1, "sh")];
        s.publish(testkit::plain_batch(&host, seq, events))
            .await
            .unwrap();
    }
    assert_refused(
        &c.url,
        testkit::plain_batch(&host, u64::MAX - 1, vec![]),
        Code::InvalidArgument,
        "that the sensor does not report lost",
    )
    .await;
    let just_over = 4 + collector::sequence::MAX_UNEXPLAINED_JUMP + 1;
    assert_refused(
        &c.url,
        testkit::plain_batch(&host, just_over, vec![]),
        Code::InvalidArgument,
        "skips 65537 batches",
    )
    .await;

    let events = vec![testkit::fork_event(4, 1, "sh")];
    s.publish(testkit::plain_batch(&host, 4, events))
        .await
        .unwrap();
    let stats = c.collector.stats();
    let h = &stats.hosts["store-jump"];
    assert_eq!(
        (h.batches, h.events, h.last_sequence, h.duplicates),
        (4, 4, 4, 0),
        "batch 4 is new after the refused jumps"
    );
    assert_eq!(stats.rejected_batches, 2);

    // A million batches the sensor's full spool dropped, counted: a gap.
    let mut after_outage = testkit::plain_batch(&host, 1_000_005, vec![]);
    after_outage.drops = Some(proto::telemetry::v1::DropCounters {
        spool_batches_dropped: 1_000_000,
        ..Default::default()
    });
    s.publish(after_outage).await.unwrap();
    let stats = c.collector.stats();
    let h = &stats.hosts["store-jump"];
    assert_eq!((h.last_sequence, h.missing_batches), (1_000_005, 1_000_000));
    drop(s);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_ahead_sequence_is_refused_and_does_not_blind_the_host() {
    far_ahead_sequence_does_not_blind_the_host(CollectorConfig {
        stats_log_interval: None,
        ..CollectorConfig::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_store_a_far_ahead_sequence_is_refused_too() {
    let dir = tempfile::tempdir().unwrap();
    far_ahead_sequence_does_not_blind_the_host(CollectorConfig {
        stats_log_interval: None,
        store: Some(collector::store::StoreConfig {
            path: dir.path().join("rxsentry.db"),
            max_age: None,
            max_bytes: None,
            retention_interval: std::time::Duration::from_secs(60),
            silent_after: std::time::Duration::from_secs(3600),
        }),
        ..CollectorConfig::default()
    })
    .await;
}
