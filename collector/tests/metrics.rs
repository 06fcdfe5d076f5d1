//! The collector's metrics page moves with what it receives: scraped over
//! its real listener (loopback, port 0 read back), before and after.

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use collector::store::StoreConfig;
use collector::testkit::{self, SensorStream};
use collector::{Collector, CollectorConfig};
use common::{TestCollector, WAIT};
use proto::telemetry::v1::SubscribeRequest;
use rxsentry_metrics::Samples;

/// Serves `collector`'s page on a fresh loopback port; its address.
async fn metrics_of(collector: &Collector) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let c = collector.clone();
    let task = rxsentry_metrics::serve(listener, move || {
        collector::metrics::render(&c, SystemTime::now())
    });
    (addr, task)
}

async fn scrape(addr: std::net::SocketAddr) -> Samples {
    let page = tokio::task::spawn_blocking(move || rxsentry_metrics::scrape(addr, WAIT))
        .await
        .unwrap()
        .unwrap();
    rxsentry_metrics::parse(&page).unwrap()
}

fn host_value(s: &Samples, name: &str, host: &str) -> f64 {
    s.get(name, &[("host", host)]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_refusals_subscribers_and_store_commits_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCollector::start(CollectorConfig {
        stats_log_interval: None,
        store: Some(StoreConfig {
            path: dir.path().join("store").join("rxsentry.db"),
            max_age: None,
            max_bytes: None,
            retention_interval: Duration::from_secs(60),
            silent_after: Duration::from_secs(3600),
        }),
        ..CollectorConfig::default()
    })
    .await;
    let (addr, task) = metrics_of(&c.collector).await;
    let before = scrape(addr).await;
    let host = "store-0042";
    let received = "rxsentry_collector_batches_received_total";
    assert_eq!(host_value(&before, received, host), 0.0);
    assert_eq!(
        before.get("rxsentry_collector_hosts", &[("state", "live")]),
        Some(0.0)
    );
    assert_eq!(
        before.get("rxsentry_collector_store_commit_seconds_count", &[]),
        Some(0.0)
    );

    let identity = testkit::host(host, "inst-1");
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    for seq in 1..=2u64 {
        let events = vec![
            testkit::fork_event(seq as u32 * 10, 1, "sh"),
            testkit::fork_event(seq as u32 * 10 + 1, 1, "sh"),
        ];
        let ack = s
            .publish(testkit::zstd_batch(&identity, seq, events))
            .await
            .unwrap();
        assert_eq!(ack.sequence, seq);
    }
    let sub = c.subscribe(SubscribeRequest::default()).await;
    let mut bad = SensorStream::connect(&c.url).await.unwrap();
    let mut garbage = testkit::zstd_batch(&testkit::host("store-bad", "b"), 1, vec![]);
    garbage.payload = b"\x28\xb5\x2f\xfd not zstd".to_vec();
    bad.send(garbage).await.unwrap();
    assert!(
        tokio::time::timeout(WAIT, bad.next_ack())
            .await
            .unwrap()
            .is_err()
    );

    let after = scrape(addr).await;
    assert_eq!(host_value(&after, received, host), 2.0);
    assert_eq!(
        host_value(&after, "rxsentry_collector_events_received_total", host),
        4.0
    );
    assert!(host_value(&after, "rxsentry_collector_bytes_received_total", host) > 0.0);
    assert_eq!(
        after.get("rxsentry_collector_rejected_batches_total", &[]),
        Some(1.0)
    );
    assert_eq!(after.get("rxsentry_collector_subscribers", &[]), Some(1.0));
    assert_eq!(
        after.get("rxsentry_collector_hosts", &[("state", "live")]),
        Some(1.0)
    );
    assert_eq!(
        after.get("rxsentry_collector_hosts", &[("state", "silent")]),
        Some(0.0)
    );
    // Acked only once committed: both batches are in the store's totals.
    assert_eq!(
        after.get("rxsentry_collector_store_batches_committed_total", &[]),
        Some(2.0)
    );
    let commits = after
        .get("rxsentry_collector_store_commit_seconds_count", &[])
        .unwrap();
    assert!((1.0..=2.0).contains(&commits), "{commits}");
    assert!(
        after
            .get("rxsentry_collector_store_commit_seconds_sum", &[])
            .unwrap()
            > 0.0
    );
    drop((s, bad, sub));
    task.abort();
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_without_a_store_are_silent_after_90_s_without_a_batch() {
    let c = TestCollector::start_default().await;
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    let identity = testkit::host("store-0007", "i");
    s.publish(testkit::plain_batch(&identity, 1, vec![]))
        .await
        .unwrap();
    let now = SystemTime::now();
    let live = rxsentry_metrics::parse(&collector::metrics::render(&c.collector, now)).unwrap();
    let later = now + Duration::from_secs(91);
    let quiet = rxsentry_metrics::parse(&collector::metrics::render(&c.collector, later)).unwrap();
    let state = |s: &Samples, st| s.get("rxsentry_collector_hosts", &[("state", st)]);
    assert_eq!(
        (state(&live, "live"), state(&live, "silent")),
        (Some(1.0), Some(0.0))
    );
    assert_eq!(
        (state(&quiet, "live"), state(&quiet, "silent")),
        (Some(0.0), Some(1.0))
    );
    // No store: no store families.
    assert_eq!(
        live.named("rxsentry_collector_store_batches_committed_total")
            .count(),
        0
    );
    drop(s);
    c.shutdown().await.unwrap();
}
