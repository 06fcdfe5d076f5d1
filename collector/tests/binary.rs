//! The `rxsentry-collector` process: startup line, serving, SIGTERM.

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use collector::testkit::{self, SensorStream};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[tokio::test]
async fn prints_address_serves_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rxsentry-collector"))
        .args(["--listen", "127.0.0.1:0", "--max-batch-bytes", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim_end()
        .strip_prefix("rxsentry-collector listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
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

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "collector ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_limit_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_rxsentry-collector"))
        .args(["--listen", "127.0.0.1:0", "--max-batch-bytes", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_batch_bytes"), "{stderr}");
    assert!(out.stdout.is_empty(), "must not claim to listen");
}
