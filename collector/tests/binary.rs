//! The `rxsentry-collector` process: startup line, serving, SIGTERM.

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use collector::testkit::{self, SensorStream};

#[tokio::test]
async fn prints_address_serves_and_stops_on_sigterm() {
    let state = tempfile::tempdir().unwrap();
    let (mut child, addr) = common::spawn_binary(state.path(), &["--max-batch-bytes", "1000"]);
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);

    let mut s = SensorStream::connect(&format!("http://{addr}"))
        .await
        .unwrap();
    let host = testkit::host("store-bin", "i");
    assert_eq!(
        s.publish(testkit::zstd_batch(&host, 1, vec![]))
            .await
            .unwrap()
            .sequence,
        1
    );
    // --max-batch-bytes reached the server.
    let mut big = testkit::plain_batch(&host, 2, vec![]);
    big.payload = vec![0; 1001];
    let status = s.publish(big).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);

    let status = common::terminate(&mut child).await;
    assert!(status.success(), "{status:?}");
    // The audit log went under --state-dir, closed to others.
    let mode = std::fs::metadata(state.path().join("audit"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn bad_limit_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_rxsentry-collector"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--insecure-plaintext",
            "--max-batch-bytes",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_batch_bytes"), "{stderr}");
    assert!(out.stdout.is_empty(), "must not claim to listen");
}
