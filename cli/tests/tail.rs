//! `rxsentry tail` end to end: a real collector in this process, the real
//! binary as a child, real zstd batches from a sensor-side client.

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use collector::auth::{Operator, Role};
use collector::testkit::{self, SensorStream};
use collector::{Collector, CollectorConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(20);
/// The in-process collector's viewer token (tail needs the viewer role).
const TOKEN: &str = "tail-test-viewer";

struct Running {
    url: String,
    collector: Collector,
    _stop: oneshot::Sender<()>,
}

async fn start_collector() -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let collector = Collector::new(CollectorConfig {
        stats_log_interval: None,
        operators: vec![Operator::with_token("viewer", Role::Viewer, TOKEN)],
        ..CollectorConfig::default()
    })
    .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(collector.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    Running {
        url,
        collector,
        _stop: stop,
    }
}

fn tail(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rxsentry"))
        .arg("tail")
        .arg("--insecure-plaintext")
        .env("RXSENTRY_TOKEN", TOKEN)
        .env_remove("RXSENTRY_TOKEN_FILE")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits until `n` subscribers are connected, so nothing published after
/// this is missed.
async fn wait_subscribers(c: &Collector, n: usize) {
    tokio::time::timeout(WAIT, async {
        while c.stats().subscribers < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("tail never subscribed");
}

/// The child's stdout lines, once it exited successfully.
async fn finish(child: Child) -> Vec<String> {
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("tail did not exit after --count")
        .unwrap();
    common::success_lines(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_with_filters_and_count() {
    let c = start_collector().await;
    let child = tail(&[
        "--collector",
        &c.url,
        "--json",
        "--kind",
        "exec",
        "--host",
        "store-1",
        "--count",
        "2",
    ]);
    wait_subscribers(&c.collector, 1).await;

    let h1 = testkit::host("store-1", "a");
    let h2 = testkit::host("store-2", "b");
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    let before = testkit::now_unix_ns();
    s.publish(testkit::zstd_batch(
        &h2,
        1,
        vec![testkit::exec_event(1, "sh", "/bin/sh", &["sh"])],
    ))
    .await
    .unwrap();
    s.publish(testkit::zstd_batch(
        &h1,
        1,
        vec![
            testkit::fork_event(2, 1, "bash"),
            testkit::exec_event(2, "curl", "/usr/bin/curl", &["curl", "-s", "http://x"]),
            testkit::exec_event(3, "id", "/usr/bin/id", &["id"]),
            testkit::exec_event(4, "late", "/usr/bin/late", &["late"]),
        ],
    ))
    .await
    .unwrap();

    let lines = finish(child).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let v: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(v[0]["type"], "event");
    assert_eq!(v[0]["kind"], "exec");
    assert_eq!(v[0]["host_id"], "store-1");
    assert_eq!(v[0]["process"]["pid"], 2);
    assert_eq!(v[0]["argv"], serde_json::json!(["curl", "-s", "http://x"]));
    assert_eq!(v[1]["filename"], "/usr/bin/id");
    // The sensor's times as sent, the collector's receive time as set.
    assert_eq!(v[0]["timestamp_ns"], 1_000_000_002u64);
    assert_eq!(
        v[0]["wall_time_unix_ns"],
        testkit::BOOTED_AT_UNIX_NS + 1_000_000_002
    );
    assert_eq!(v[0]["time"], "2026-12-04T12:00:01.000Z");
    let received = v[0]["received_unix_ns"].as_u64().unwrap();
    assert!(
        (before..=testkit::now_unix_ns()).contains(&received),
        "received {received}"
    );
    assert!(v[0]["received_time"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_shows_events_and_gap_records() {
    let c = start_collector().await;
    let child = tail(&["--collector", &c.url, "--process", "curl", "--count", "2"]);
    wait_subscribers(&c.collector, 1).await;

    let h = testkit::host("store-0042", "a");
    let mut s = SensorStream::connect(&c.url).await.unwrap();
    s.publish(testkit::zstd_batch(
        &h,
        1,
        vec![testkit::exec_event(10, "curl", "/usr/bin/curl", &["curl"])],
    ))
    .await
    .unwrap();
    s.publish(testkit::zstd_batch(
        &h,
        5,
        vec![testkit::exit_event(10, "curl", Some(7), None)],
    ))
    .await
    .unwrap();

    let lines = finish(child).await;
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(
        lines[0].starts_with(&format!("TIME{}HOST", " ".repeat(21))),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(" exec ") && lines[1].contains("/usr/bin/curl  [curl]"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].starts_with("2026-12-04T12:00:01.000Z store-0042.local exec "),
        "UTC time and hostname: {}",
        lines[1]
    );
    assert_eq!(lines[2], "!! store-0042 GAP: batches 2..4 never arrived");
    assert!(
        lines[3].contains(" exit ") && lines[3].ends_with("exit=7"),
        "{}",
        lines[3]
    );
}

#[tokio::test]
async fn unreachable_collector_is_a_clear_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = tokio::time::timeout(
        WAIT,
        tail(&["--collector", &format!("127.0.0.1:{port}")]).wait_with_output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot connect to the collector at http://127.0.0.1:{port}"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_end_before_count_is_an_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let collector = Collector::new(CollectorConfig {
        operators: vec![Operator::with_token("viewer", Role::Viewer, TOKEN)],
        ..CollectorConfig::default()
    })
    .unwrap();
    let handle = collector.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(collector.serve(listener, async move {
        let _ = stopped.await;
    }));
    let mut child = tail(&["--collector", &url, "--json", "--count", "5"]);
    wait_subscribers(&handle, 1).await;
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success());
    let mut err = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while let Some(l) = lines.next_line().await.unwrap() {
        err.push_str(&l);
    }
    assert!(
        err.contains("ended the stream after 0 of 5 events"),
        "{err}"
    );
}
