//! `rxsentry events` and `rxsentry tail --since` end to end: a collector
//! with a store in this process, the real binary as a child.

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use collector::auth::{Operator, Role};
use collector::store::StoreConfig;
use collector::testkit::{self, SensorStream};
use collector::{Collector, CollectorConfig};

/// The in-process collector's viewer token (queries need the viewer role).
const TOKEN: &str = "events-test-viewer";
use tokio::process::Command;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(30);

struct Running {
    url: String,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

async fn start_collector() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let collector = Collector::new(CollectorConfig {
        stats_log_interval: None,
        store: Some(StoreConfig::at(dir.path().join("rxsentry.db"))),
        operators: vec![Operator::with_token("viewer", Role::Viewer, TOKEN)],
        ..CollectorConfig::default()
    })
    .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(collector.serve(listener, async move {
        let _ = stopped.await;
    }));
    Running {
        url,
        _dir: dir,
        _stop: stop,
    }
}

/// Runs the CLI to its end; its stdout lines as JSON (it must succeed).
async fn run_json(args: &[&str]) -> Vec<serde_json::Value> {
    let out = tokio::time::timeout(
        WAIT,
        Command::new(env!("CARGO_BIN_EXE_rxsentry"))
            .arg(args[0])
            .arg("--insecure-plaintext")
            .args(&args[1..])
            .env("RXSENTRY_TOKEN", TOKEN)
            .env_remove("RXSENTRY_TOKEN_FILE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the CLI did not finish")
    .unwrap();
    common::success_lines(out)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn pids(lines: &[serde_json::Value]) -> Vec<u64> {
    lines
        .iter()
        .filter(|v| v["type"] == "event")
        .map(|v| v["process"]["pid"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_filters_by_host_kind_process_and_time() {
    let c = start_collector().await;
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    let (a, b) = (testkit::host("kiosk-a", "i"), testkit::host("kiosk-b", "i"));
    s.publish_events(
        &a,
        1,
        vec![
            testkit::exec_event(10, "bash", "/usr/bin/curl", &["curl", "x"]),
            testkit::fork_event(11, 10, "bash"),
        ],
    )
    .await;
    // Batch 2 of kiosk-a never comes: a gap record.
    s.publish_events(
        &a,
        3,
        vec![testkit::exec_event(12, "sh", "/bin/sh", &["sh"])],
    )
    .await;
    s.publish_events(
        &b,
        1,
        vec![testkit::exec_event(20, "curl", "/usr/bin/curl", &["curl"])],
    )
    .await;
    let url = c.url.as_str();
    let all = run_json(&["events", "--collector", url, "--json"]).await;
    assert_eq!(pids(&all), [10, 11, 12, 20]);
    let gap: Vec<_> = all.iter().filter(|v| v["type"] == "gap").collect();
    assert_eq!(gap.len(), 1, "{all:?}");
    assert_eq!(
        (gap[0]["first"].as_u64(), gap[0]["last"].as_u64()),
        (Some(2), Some(2))
    );

    let q = |extra: &[&str]| {
        let mut args = vec!["events", "--collector", url, "--json", "--no-records"];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        pids(&run_json(&refs).await)
    };
    assert_eq!(run(q(&["--host", "kiosk-a"])).await, [10, 11, 12]);
    assert_eq!(run(q(&["--kind", "exec"])).await, [10, 12, 20]);
    assert_eq!(run(q(&["--process", "curl"])).await, [10, 20]);
    assert_eq!(
        run(q(&[
            "--host",
            "kiosk-a",
            "--kind",
            "exec",
            "--process",
            "curl"
        ]))
        .await,
        [10]
    );
    // The test events happened on 2026-12-04 at 12:00:01Z plus pid ns.
    assert_eq!(
        run(q(&[
            "--since",
            "2026-12-04T12:00:01.000000011Z",
            "--until",
            "2026-12-04T12:00:01.000000020Z"
        ]))
        .await,
        [11, 12]
    );
    assert!(run(q(&["--since", "2026-12-05"])).await.is_empty());
    assert_eq!(run(q(&["--limit", "2"])).await, [10, 11]);
    // Stored events carry the host's name and their receive time.
    let first = all.iter().find(|v| v["type"] == "event").unwrap();
    assert_eq!(first["hostname"], "kiosk-a.local");
    assert!(first["store_id"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_with_a_bad_time_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_rxsentry"))
        .args([
            "events",
            "--collector",
            "127.0.0.1:9",
            "--since",
            "last tuesday",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expected an age"), "{stderr}");
}

/// Events keep arriving (one sensor stream, pids 1, 2, 3... in order)
/// while `tail --since` replays and then goes live: it must print every
/// pid exactly once, in order, across the seam.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_since_replays_then_follows_without_gap_or_duplicate() {
    let c = start_collector().await;
    let host = testkit::host("kiosk-seam", "i");
    let per_batch = 5u64;
    let total_batches = 600u64;
    let (started_tx, started) = oneshot::channel();
    let url = c.url.clone();
    let publisher = tokio::spawn(async move {
        let mut s = SensorStream::connect(&url).await.unwrap();
        let mut started_tx = Some(started_tx);
        for seq in 1..=total_batches {
            let events = (0..per_batch)
                .map(|i| testkit::fork_event(((seq - 1) * per_batch + i + 1) as u32, 1, "sh"))
                .collect();
            s.publish_events(&host, seq, events).await;
            if seq == 100 {
                let _ = started_tx.take().unwrap().send(());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    // 500 events are stored; the rest arrive while tail runs (the test
    // events happened on 2026-12-04, hence that --since).
    started.await.unwrap();
    assert!(
        !publisher.is_finished(),
        "the publisher must still be sending"
    );
    let want = total_batches * per_batch;
    let count = want.to_string();
    let lines = run_json(&[
        "tail",
        "--collector",
        &c.url,
        "--since",
        "2026-12-04",
        "--json",
        "--count",
        &count,
    ])
    .await;
    publisher.await.unwrap();
    let got = pids(&lines);
    let expected: Vec<u64> = (1..=want).collect();
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
}
