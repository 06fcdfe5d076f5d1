//! The audit log of analyst actions, end to end: a real `rxsentry-collector`
//! process with an operators file and an audit directory, a stand-in
//! sensor, an analyst client; then the chain read back with the verifier
//! the CLI uses.

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use audit::{ArgValue, Outcome, Record};
use collector::{
    CollectorConfig,
    auth::{Operator, Role},
};
use common::{Api, TestCollector, isolate, request, sensor, wait_connected};
use proto::control::v1::{ListHostsRequest, analyst_api_client::AnalystApiClient};
use proto::telemetry::v1::{
    EventKind, SubscribeRequest, telemetry_subscribe_client::TelemetrySubscribeClient,
};
use tonic::Code;

const TOKEN: &str = "alice-secret-token";

fn operators_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("operators.toml");
    std::fs::write(
        &path,
        Operator::with_token("alice", Role::Responder, TOKEN).to_toml(),
    )
    .unwrap();
    path
}

/// Starts the collector binary; its address, or its stderr if it exited.
fn start(dir: &Path, audit_dir: &Path) -> Result<(Child, String), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rxsentry-collector"))
        .args(["--listen", "127.0.0.1:0", "--stats-interval", "0"])
        .arg("--insecure-plaintext")
        .arg("--operators")
        .arg(operators_file(dir))
        .arg("--audit-dir")
        .arg(audit_dir)
        .args(["--audit-max-file-bytes", "1200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    match common::listening_line(&mut child) {
        Ok(addr) => Ok((child, format!("http://{addr}"))),
        Err(_) => {
            let out = child.wait_with_output().unwrap();
            assert!(!out.status.success(), "no listening line but exit 0");
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

async fn stop(mut child: Child) {
    assert!(common::terminate(&mut child).await.success());
}

/// Every record in `dir`, which must verify.
fn records(dir: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    let chain = audit::read_chain(dir, |l| out.push(l.record.clone())).unwrap();
    assert_eq!(chain.broken, None);
    out
}

/// (operator, action, host, outcome) of each record.
fn summary(records: &[Record]) -> Vec<(Option<&str>, &str, Option<&str>, Outcome)> {
    records
        .iter()
        .map(|r| {
            (
                r.entry.operator.as_deref(),
                r.entry.action.as_str(),
                r.entry.host.as_deref(),
                r.entry.outcome,
            )
        })
        .collect()
}

#[tokio::test]
async fn a_real_collector_records_every_action_and_continues_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let (child, url) = start(tmp.path(), &dir).unwrap();
    let _seen = sensor(&url, "kiosk-9", true).await;
    let mut api: Api = AnalystApiClient::connect(url.clone()).await.unwrap();
    wait_connected(&mut api, "kiosk-9", TOKEN).await;

    let e = api
        .isolate(request(isolate("kiosk-9", "guessing"), Some("wrong")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = api
        .release(request(isolate("kiosk-9", "no token"), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = api
        .list_hosts(request(ListHostsRequest {}, Some("wrong")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // The answer comes back only once the records are on disk: read them
    // right after, from outside the collector.
    let r = api
        .isolate(request(isolate("kiosk-9", "ransomware note"), Some(TOKEN)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.operator, "alice");
    let after_isolate = records(&dir);
    assert_eq!(after_isolate.last().unwrap().entry.outcome, Outcome::Ok);
    api.release(request(isolate("kiosk-9", "cleaned"), Some(TOKEN)))
        .await
        .unwrap();
    let e = api
        .isolate(request(isolate("kiosk-nowhere", "x"), Some(TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);

    let r = records(&dir);
    let k9 = Some("kiosk-9");
    let nowhere = Some("kiosk-nowhere");
    assert_eq!(
        summary(&r),
        vec![
            (None, "isolate", k9, Outcome::Refused),
            (None, "release", k9, Outcome::Refused),
            (None, "list_hosts", None, Outcome::Refused),
            (Some("alice"), "isolate", k9, Outcome::Requested),
            (Some("alice"), "isolate", k9, Outcome::Ok),
            (Some("alice"), "release", k9, Outcome::Requested),
            (Some("alice"), "release", k9, Outcome::Ok),
            (Some("alice"), "isolate", nowhere, Outcome::Requested),
            (Some("alice"), "isolate", nowhere, Outcome::Failed),
        ]
    );
    assert!(r[0].entry.detail.contains("not recognised"), "{:?}", r[0]);
    assert!(
        r[1].entry.detail.contains("needs an operator token"),
        "{:?}",
        r[1]
    );
    assert_eq!(
        r[4].entry.args["reason"],
        ArgValue::One("ransomware note".into())
    );
    assert!(
        r[8].entry.detail.contains("no open control stream"),
        "{:?}",
        r[8]
    );
    assert!(
        r.iter()
            .all(|x| x.entry.peer.is_some() && x.time.ends_with('Z'))
    );
    // Names, never tokens; rotated into several files, one chain.
    let chain = audit::verify(&dir).unwrap();
    assert!(chain.files.len() > 1, "{:?}", chain.files);
    for name in &chain.files {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(!text.contains(TOKEN) && !text.contains("wrong\""), "{text}");
    }
    stop(child).await;

    // A restart continues the chain.
    let (child, url) = start(tmp.path(), &dir).unwrap();
    let mut api: Api = AnalystApiClient::connect(url).await.unwrap();
    api.isolate(request(isolate("kiosk-9", "after restart"), None))
        .await
        .unwrap_err();
    stop(child).await;
    let r = records(&dir);
    assert_eq!(r.len(), 10);
    assert_eq!((r[9].seq, r[9].entry.outcome), (10, Outcome::Refused));

    // A chain that no longer verifies stops the next start, named.
    let first = dir.join(audit::file_name(1));
    let text = std::fs::read_to_string(&first).unwrap();
    std::fs::write(&first, text.replacen("kiosk-9", "kiosk-8", 1)).unwrap();
    let stderr = start(tmp.path(), &dir).unwrap_err();
    assert!(stderr.contains("audit chain"), "{stderr}");
    assert!(stderr.contains("audit-00000001.jsonl line"), "{stderr}");
    assert!(stderr.contains("edited"), "{stderr}");
}

#[tokio::test]
async fn subscriptions_are_recorded_with_their_filter_and_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let c = TestCollector::start(CollectorConfig {
        stats_log_interval: None,
        operators: vec![Operator::with_token("bob", Role::Responder, TOKEN)],
        audit: Some(audit::AuditConfig::new(&dir)),
        ..CollectorConfig::default()
    })
    .await;
    let mut client = TelemetrySubscribeClient::connect(c.url.clone())
        .await
        .unwrap();
    let filter = SubscribeRequest {
        host_ids: vec!["kiosk-1".into()],
        kinds: vec![EventKind::Exec as i32],
        process_names: vec![],
    };
    let stream = client
        .subscribe(request(filter.clone(), Some(TOKEN)))
        .await
        .unwrap()
        .into_inner();
    let anonymous = client.subscribe(request(filter, None)).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let e = client
        .subscribe(request(
            SubscribeRequest {
                kinds: vec![999],
                ..Default::default()
            },
            Some(TOKEN),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    drop(stream);
    let deadline = Instant::now() + common::WAIT;
    while records(&dir).len() < 4 {
        assert!(Instant::now() < deadline, "{:?}", records(&dir));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = records(&dir);
    let mut seen = summary(&r);
    seen.sort_by_key(|s| (s.1, s.0.is_none()));
    assert_eq!(
        seen,
        vec![
            (Some("bob"), "subscribe", None, Outcome::Ok),
            (Some("bob"), "subscribe", None, Outcome::Refused),
            (None, "subscribe", None, Outcome::Refused),
            (Some("bob"), "unsubscribe", None, Outcome::Ok),
        ]
    );
    assert_eq!(
        r[0].entry.args["kinds"],
        ArgValue::Many(vec!["EVENT_KIND_EXEC".into()])
    );
    assert_eq!(
        r[0].entry.args["hosts"],
        ArgValue::Many(vec!["kiosk-1".into()])
    );
    assert!(r[1].entry.detail.contains("operator token"), "{:?}", r[1]);
    assert!(r[2].entry.detail.contains("999"), "{:?}", r[2]);
    c.shutdown().await.unwrap();
}
