//! The durable store: ack only after commit (the real binary, SIGKILLed
//! mid-stream), duplicates and gaps against what was stored before a
//! restart, queries and their refusals, retention, silent hosts.

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use collector::CollectorConfig;
use collector::store::StoreConfig;
use collector::testkit::{self, SensorStream};
use common::{Api, Got, TestCollector, VIEWER_TOKEN, WAIT, pid_of};
use proto::telemetry::v1::{
    EventKind, HostEvent, HostRecord, QueryRequest, SubscribeRequest, SubscribeResponse,
    host_record, host_status, subscribe_response,
    telemetry_subscribe_client::TelemetrySubscribeClient,
};
use tonic::Code;

fn store_config(dir: &Path) -> StoreConfig {
    StoreConfig {
        path: dir.join("store").join("rxsentry.db"),
        max_age: None,
        max_bytes: None,
        retention_interval: Duration::from_secs(60),
        silent_after: Duration::from_secs(3600),
    }
}

fn with_store(store: StoreConfig) -> CollectorConfig {
    CollectorConfig {
        stats_log_interval: None,
        store: Some(store),
        ..CollectorConfig::default()
    }
}

async fn query(url: &str, req: QueryRequest) -> Result<Vec<SubscribeResponse>, tonic::Status> {
    let mut client = TelemetrySubscribeClient::connect(url.to_owned())
        .await
        .unwrap();
    let mut req = req;
    let mut out = Vec::new();
    loop {
        let page = client
            .query(common::as_viewer(req.clone()))
            .await?
            .into_inner();
        out.extend(page.items);
        if page.next_cursor.is_empty() {
            return Ok(out);
        }
        req.cursor = page.next_cursor;
        req.max_store_id = page.high_water_id;
    }
}

fn events(items: &[SubscribeResponse]) -> Vec<HostEvent> {
    items
        .iter()
        .filter_map(|i| match &i.item {
            Some(subscribe_response::Item::Event(e)) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn records(items: &[SubscribeResponse]) -> Vec<HostRecord> {
    items
        .iter()
        .filter_map(|i| match &i.item {
            Some(subscribe_response::Item::Record(r)) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn sequence_kinds(records: &[HostRecord]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.record {
            Some(host_record::Record::Sequence(s)) => {
                Some(format!("{}:{}-{}", s.kind().as_str_name(), s.first, s.last))
            }
            _ => None,
        })
        .collect()
}

/// Every stored event and record.
async fn everything(url: &str) -> Vec<SubscribeResponse> {
    let req = QueryRequest {
        include_records: true,
        ..QueryRequest::default()
    };
    query(url, req).await.unwrap()
}

/// Publishes batch `seq` of one fork whose pid is `seq`.
async fn publish_fork(s: &mut SensorStream, host: &proto::telemetry::v1::HostIdentity, seq: u64) {
    let events = vec![testkit::fork_event(seq as u32, 1, "sh")];
    s.publish(testkit::zstd_batch(host, seq, events))
        .await
        .unwrap();
}

const EVENTS_PER_BATCH: u64 = 20;

/// Batch `seq` of the kill test: its events' pids say (seq, index).
fn numbered_batch(
    host: &proto::telemetry::v1::HostIdentity,
    seq: u64,
) -> proto::telemetry::v1::SensorBatch {
    let events = (0..EVENTS_PER_BATCH)
        .map(|i| testkit::fork_event((seq * 1000 + i) as u32, 1, "sh"))
        .collect();
    testkit::zstd_batch(host, seq, events)
}

fn spawn_collector(state: &Path) -> (std::process::Child, String) {
    let (child, addr) = common::spawn_binary(state, &["--stats-interval", "0"]);
    (child, format!("http://{addr}"))
}

/// (batch sequence, pid) of every stored event: each must appear once.
fn stored_pids(items: &[SubscribeResponse]) -> BTreeMap<u32, usize> {
    let mut seen = BTreeMap::new();
    for e in events(items) {
        *seen.entry(pid_of(&e).unwrap()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_acked_and_resends_are_dropped() {
    let state = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_collector(state.path());
    let host = testkit::host("store-kill", "inst-1");
    let total = 400u64;

    let mut s = SensorStream::connect(&url).await.unwrap();
    // Keep up to 16 batches in flight, as a sensor does; kill -9 after 100
    // acks, while batches are still being sent.
    let mut acked = BTreeSet::new();
    let mut next = 1u64;
    let mut killed = false;
    loop {
        while next <= total && next < acked.len() as u64 + 17 {
            if s.send(numbered_batch(&host, next)).await.is_err() {
                break;
            }
            next += 1;
        }
        match s.next_ack().await {
            Ok(Some(ack)) => {
                assert!(acked.insert(ack.sequence), "acked twice: {}", ack.sequence);
                if acked.len() == 100 && !killed {
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(child.id() as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .unwrap();
                    killed = true;
                }
            }
            _ => break,
        }
    }
    assert!(killed, "the stream ended before the kill");
    child.wait().unwrap();
    let max_acked = *acked.last().unwrap();
    assert!(max_acked < total, "the kill came too late to test anything");

    // Restart on the same store: every acked batch is there exactly once.
    let (mut child, url) = spawn_collector(state.path());
    let all = QueryRequest {
        host_ids: vec!["store-kill".into()],
        ..QueryRequest::default()
    };
    let seen = stored_pids(&query(&url, all.clone()).await.unwrap());
    for seq in &acked {
        for i in 0..EVENTS_PER_BATCH {
            let pid = (seq * 1000 + i) as u32;
            assert_eq!(seen.get(&pid), Some(&1), "acked batch {seq} event {i}");
        }
    }
    assert!(seen.values().all(|&n| n == 1), "a stored event twice");

    // The sensor resends everything it did not see acked, and (worst case)
    // what it did: each batch ends up stored once, the repeats are dropped
    // against the store's persisted sequence state.
    let mut s = SensorStream::connect(&url).await.unwrap();
    for seq in 1..=total {
        s.publish(numbered_batch(&host, seq)).await.unwrap();
    }
    let items = query(
        &url,
        QueryRequest {
            include_records: true,
            ..all
        },
    )
    .await
    .unwrap();
    let seen = stored_pids(&items);
    assert_eq!(seen.len() as u64, total * EVENTS_PER_BATCH);
    assert!(seen.values().all(|&n| n == 1), "a stored event twice");
    let dups = sequence_kinds(&records(&items))
        .iter()
        .filter(|k| k.starts_with("KIND_DUPLICATE"))
        .count();
    assert!(
        dups as u64 >= acked.len() as u64,
        "{dups} duplicates recorded"
    );
    assert!(common::terminate(&mut child).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_collector_finds_gaps_and_duplicates_against_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let host = testkit::host("store-gap", "inst-1");
    let c = TestCollector::start(with_store(store_config(dir.path()))).await;
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    for seq in 1..=3 {
        publish_fork(&mut s, &host, seq).await;
    }
    drop(s);
    c.shutdown().await.unwrap();

    let c = TestCollector::start(with_store(store_config(dir.path()))).await;
    let mut sub = c.subscribe(SubscribeRequest::default()).await;
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    // 3 again (a resend), then 6: 4 and 5 never came.
    for seq in [3, 6] {
        publish_fork(&mut s, &host, seq).await;
    }
    let mut live = Vec::new();
    while live.len() < 3 {
        live.push(sub.next().await);
    }
    let live_records: Vec<HostRecord> = live
        .iter()
        .filter_map(|g| match g {
            Got::Record(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        sequence_kinds(&live_records),
        ["KIND_DUPLICATE:3-3", "KIND_GAP:4-5"]
    );
    assert!(live_records.iter().all(|r| r.store_id > 0));
    // Batch 5 turns up after all (a spool): stored, and said to be late.
    publish_fork(&mut s, &host, 5).await;

    let items = everything(&c.url).await;
    let pids: Vec<u32> = events(&items).iter().map(|e| pid_of(e).unwrap()).collect();
    assert_eq!(pids, [1, 2, 3, 5, 6]);
    assert_eq!(
        sequence_kinds(&records(&items)),
        ["KIND_DUPLICATE:3-3", "KIND_GAP:4-5", "KIND_LATE:5-5"]
    );
    let stats = &c.collector.stats().hosts["store-gap"];
    assert_eq!(
        (stats.duplicates, stats.gaps, stats.missing_batches),
        (1, 1, 2)
    );
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_filters_by_host_kind_time_and_process() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCollector::start(with_store(store_config(dir.path()))).await;
    let (a, b) = (testkit::host("q-a", "i"), testkit::host("q-b", "i"));
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    // Event time is BOOTED_AT + 1 s + pid ns.
    s.publish(testkit::zstd_batch(
        &a,
        1,
        vec![
            testkit::exec_event(10, "bash", "/usr/bin/curl", &["curl"]),
            testkit::fork_event(11, 10, "bash"),
            testkit::exit_event(12, "curl", Some(0), None),
        ],
    ))
    .await
    .unwrap();
    s.publish(testkit::zstd_batch(
        &b,
        1,
        vec![testkit::fork_event(20, 1, "sh")],
    ))
    .await
    .unwrap();
    let pids = |items: &[SubscribeResponse]| -> Vec<u32> {
        events(items).iter().map(|e| pid_of(e).unwrap()).collect()
    };
    let q = |req: QueryRequest| query(&c.url, req);
    assert_eq!(
        pids(&q(QueryRequest::default()).await.unwrap()),
        [10, 11, 12, 20]
    );
    let host_a = QueryRequest {
        host_ids: vec!["q-a".into()],
        ..QueryRequest::default()
    };
    assert_eq!(pids(&q(host_a.clone()).await.unwrap()), [10, 11, 12]);
    let unknown = QueryRequest {
        host_ids: vec!["nobody".into()],
        ..QueryRequest::default()
    };
    assert!(q(unknown).await.unwrap().is_empty());
    let forks = QueryRequest {
        kinds: vec![EventKind::Fork as i32],
        ..QueryRequest::default()
    };
    assert_eq!(pids(&q(forks).await.unwrap()), [11, 20]);
    let curl = QueryRequest {
        process_names: vec!["curl".into()],
        ..host_a.clone()
    };
    assert_eq!(pids(&q(curl).await.unwrap()), [10, 12]);
    let t0 = testkit::BOOTED_AT_UNIX_NS + 1_000_000_000;
    let window = QueryRequest {
        since_unix_ns: t0 + 11,
        until_unix_ns: t0 + 20,
        ..QueryRequest::default()
    };
    assert_eq!(pids(&q(window).await.unwrap()), [11, 12]);
    // Pages of one: same answer, in order, each page resumed by its cursor.
    let paged = QueryRequest {
        limit: 1,
        ..QueryRequest::default()
    };
    assert_eq!(pids(&q(paged).await.unwrap()), [10, 11, 12, 20]);
    // Stored items carry their identity and store ids.
    let all = events(&q(QueryRequest::default()).await.unwrap());
    assert_eq!(all[0].host.as_ref().unwrap().hostname, "q-a.local");
    assert!(all.windows(2).all(|w| w[0].store_id < w[1].store_id));
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_or_forged_queries_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCollector::start(with_store(store_config(dir.path()))).await;
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    let host = testkit::host("q-bad", "i");
    publish_fork(&mut s, &host, 1).await;
    let bad = [
        QueryRequest {
            cursor: "' OR 1=1 --".into(),
            ..QueryRequest::default()
        },
        QueryRequest {
            cursor: "99999999999999999999999.1".into(),
            ..QueryRequest::default()
        },
        QueryRequest {
            kinds: vec![42],
            ..QueryRequest::default()
        },
        QueryRequest {
            kinds: vec![0],
            ..QueryRequest::default()
        },
        QueryRequest {
            since_unix_ns: 10,
            until_unix_ns: 10,
            ..QueryRequest::default()
        },
        QueryRequest {
            limit: 1_000_000,
            ..QueryRequest::default()
        },
        QueryRequest {
            host_ids: vec!["h".into(); 10_000],
            ..QueryRequest::default()
        },
    ];
    for req in bad {
        let status = query(&c.url, req.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{req:?}: {status:?}");
    }
    // A host id made to look like SQL is only a name that matches nothing.
    let injection = QueryRequest {
        host_ids: vec!["q-bad' OR '1'='1".into()],
        ..QueryRequest::default()
    };
    assert!(query(&c.url, injection).await.unwrap().is_empty());
    // The collector still answers and still ingests.
    assert_eq!(
        events(&query(&c.url, QueryRequest::default()).await.unwrap()).len(),
        1
    );
    s.publish(testkit::zstd_batch(&host, 2, vec![]))
        .await
        .unwrap();
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_are_acked_in_order_and_nothing_after_a_refusal_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let c = TestCollector::start(with_store(store_config(dir.path()))).await;
    let host = testkit::host("pipe", "i");
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    let batch =
        |seq: u64| testkit::zstd_batch(&host, seq, vec![testkit::fork_event(seq as u32, 1, "sh")]);
    // 1..=3 valid, 4 garbled, 5 valid: all sent before any ack is read.
    for seq in 1..=3 {
        s.send(batch(seq)).await.unwrap();
    }
    let mut garbled = batch(4);
    garbled.payload = vec![0xff; 64];
    s.send(garbled).await.unwrap();
    let _ = s.send(batch(5)).await;
    for seq in 1..=3 {
        let ack = tokio::time::timeout(WAIT, s.next_ack()).await.unwrap();
        assert_eq!(ack.unwrap().unwrap().sequence, seq);
    }
    let refusal = tokio::time::timeout(WAIT, s.next_ack()).await.unwrap();
    assert_eq!(refusal.unwrap_err().code(), Code::InvalidArgument);
    let pids: Vec<u32> = events(&everything(&c.url).await)
        .iter()
        .map(|e| pid_of(e).unwrap())
        .collect();
    assert_eq!(pids, [1, 2, 3], "batch 5 came after the refusal");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_collector_on_the_same_store_is_refused() {
    let state = tempfile::tempdir().unwrap();
    let (mut first, _) = spawn_collector(state.path());
    // Its own audit log (a shared one is refused first), the same store.
    let audit = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rxsentry-collector"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--insecure-plaintext",
            "--state-dir",
        ])
        .arg(state.path())
        .arg("--audit-dir")
        .arg(audit.path().join("audit"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another collector"), "{stderr}");
    assert!(out.stdout.is_empty(), "must not claim to listen");
    assert!(common::terminate(&mut first).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_without_store_refuses_queries() {
    let c = TestCollector::start_default().await;
    let status = query(&c.url, QueryRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    c.shutdown().await.unwrap();
}

/// Polls a query until `done` says its answer is right (retention and
/// silence run on the store's own clock).
async fn wait_for_query(
    url: &str,
    req: QueryRequest,
    done: impl Fn(&[SubscribeResponse]) -> bool,
) -> Vec<SubscribeResponse> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let items = query(url, req.clone()).await.unwrap();
        if done(&items) {
            return items;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {items:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_items_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig {
        max_age: Some(Duration::from_millis(700)),
        retention_interval: Duration::from_millis(100),
        ..store_config(dir.path())
    };
    let c = TestCollector::start(with_store(store)).await;
    let host = testkit::host("old", "i");
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    publish_fork(&mut s, &host, 1).await;
    assert_eq!(
        events(&query(&c.url, QueryRequest::default()).await.unwrap()).len(),
        1
    );
    wait_for_query(&c.url, QueryRequest::default(), |items| {
        events(items).is_empty()
    })
    .await;
    // New items are kept; the sequence state outlives the deleted items.
    publish_fork(&mut s, &host, 2).await;
    let items = everything(&c.url).await;
    assert_eq!(events(&items).len(), 1);
    assert!(sequence_kinds(&records(&items)).is_empty(), "{items:?}");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_store_under_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig {
        max_bytes: Some(2 * 1024 * 1024),
        retention_interval: Duration::from_millis(100),
        ..store_config(dir.path())
    };
    let c = TestCollector::start(with_store(store)).await;
    let host = testkit::host("big", "i");
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    let argv: Vec<String> = (0..40)
        .map(|i| format!("argument-{i:04}-padding"))
        .collect();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    // About 20,000 events of ~1 KiB: well over 2 MiB.
    for seq in 1..=40u64 {
        let events = (0..500)
            .map(|i| testkit::exec_event((seq * 1000 + i) as u32, "sh", "/bin/sh", &argv))
            .collect();
        s.publish(testkit::zstd_batch(&host, seq, events))
            .await
            .unwrap();
    }
    let items = wait_for_query(&c.url, QueryRequest::default(), |items| {
        events(items).len() < 10_000
    })
    .await;
    // The newest survive, the oldest went.
    let pids: Vec<u32> = events(&items).iter().map(|e| pid_of(e).unwrap()).collect();
    assert!(pids.contains(&40_499), "newest kept");
    assert!(!pids.contains(&1_000), "oldest deleted");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_host_is_recorded_then_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig {
        silent_after: Duration::from_millis(300),
        ..store_config(dir.path())
    };
    let c = TestCollector::start(with_store(store)).await;
    let mut sub = c.subscribe(SubscribeRequest::default()).await;
    let host = testkit::host("quiet", "i");
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    let sent = testkit::now_unix_ns();
    s.publish(testkit::zstd_batch(&host, 1, vec![]))
        .await
        .unwrap();
    let state = |g: &Got| match g {
        Got::Record(HostRecord {
            record: Some(host_record::Record::Status(st)),
            ..
        }) => Some(*st),
        _ => None,
    };
    let silent = state(&sub.next().await).expect("a status record");
    assert_eq!(silent.state(), host_status::State::Silent);
    assert_eq!(silent.silent_after_ms, 300);
    assert!(silent.last_batch_unix_ns >= sent);
    assert!(testkit::now_unix_ns() >= silent.last_batch_unix_ns + 300_000_000);
    let silent_in_list = |hosts: Vec<proto::control::v1::HostInfo>| {
        hosts
            .iter()
            .find(|h| h.host_id == "quiet")
            .map(|h| h.silent)
    };
    let mut api = Api::connect(c.url.clone()).await.unwrap();
    assert_eq!(
        silent_in_list(common::hosts(&mut api, VIEWER_TOKEN).await),
        Some(true)
    );
    // A restarted collector knows it from the store alone (no batch yet).
    drop((s, sub, api));
    c.shutdown().await.unwrap();
    let c = TestCollector::start(with_store(StoreConfig {
        silent_after: Duration::from_secs(3600),
        ..store_config(dir.path())
    }))
    .await;
    let mut api = Api::connect(c.url.clone()).await.unwrap();
    assert_eq!(
        silent_in_list(common::hosts(&mut api, VIEWER_TOKEN).await),
        Some(true),
        "a silent host is listed after a restart"
    );
    let mut sub = c.subscribe(SubscribeRequest::default()).await;
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    // A heartbeat (an empty batch) brings it back.
    s.publish(testkit::zstd_batch(&host, 2, vec![]))
        .await
        .unwrap();
    let back = state(&sub.next().await).expect("a status record");
    assert_eq!(back.state(), host_status::State::Back);
    assert_eq!(
        silent_in_list(common::hosts(&mut api, VIEWER_TOKEN).await),
        Some(false)
    );
    // Both are stored, with the host's identity.
    let items = everything(&c.url).await;
    let stored: Vec<i32> = records(&items)
        .iter()
        .filter_map(|r| match &r.record {
            Some(host_record::Record::Status(st)) => Some(st.state),
            _ => None,
        })
        .collect();
    assert_eq!(
        &stored[..2],
        [
            host_status::State::Silent as i32,
            host_status::State::Back as i32
        ]
    );
    assert_eq!(records(&items)[0].host.as_ref().unwrap().host_id, "quiet");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_stream_holds_at_most_its_byte_budget_waiting_for_commits() {
    use collector::MAX_PENDING_BYTES_PER_STREAM;
    let dir = tempfile::tempdir().unwrap();
    let c = TestCollector::start(with_store(store_config(dir.path()))).await;
    let host = testkit::host("heavy", "i");
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    // 1 MiB of decoded events per batch (big command lines compress well,
    // so the wire carries little): 80 MiB in flight if nothing held back.
    let arg = "x".repeat(200 << 10);
    let batch = |seq: u64| {
        let events = (0..5)
            .map(|i| testkit::exec_event(seq as u32 * 10 + i, "sh", "/bin/sh", &["sh", &arg]))
            .collect();
        testkit::zstd_batch(&host, seq, events)
    };
    let weight = prost::Message::encoded_len(&batch(1)) + batch(1).uncompressed_size as usize;
    const BATCHES: u64 = 80;
    let sender = s.sender();
    let batches: Vec<_> = (1..=BATCHES).map(batch).collect();
    let send = tokio::spawn(async move {
        for b in batches {
            sender.send(b).await.unwrap();
        }
    });
    for seq in 1..=BATCHES {
        let ack = tokio::time::timeout(WAIT, s.next_ack()).await.unwrap();
        assert_eq!(ack.unwrap().unwrap().sequence, seq);
    }
    send.await.unwrap();
    let stats = c.collector.stats();
    println!(
        "pending high water {:.1} MiB (budget {} MiB), paused {} times",
        stats.pending_bytes_high_water as f64 / f64::from(1 << 20),
        MAX_PENDING_BYTES_PER_STREAM >> 20,
        stats.publish_throttled
    );
    assert!(stats.pending_bytes_high_water > 0);
    assert!(
        stats.pending_bytes_high_water <= (MAX_PENDING_BYTES_PER_STREAM + weight) as u64,
        "{} bytes waited for commits",
        stats.pending_bytes_high_water
    );
    assert_eq!(stats.rejected_batches, 0);
    c.shutdown().await.unwrap();
}
