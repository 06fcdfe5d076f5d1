//! The control channel end to end inside one process: a stand-in sensor
//! on `SensorControl/Open`, an analyst on `AnalystApi`, the real collector
//! between them.

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use collector::{
    CollectorConfig,
    auth::{Operator, Role},
};
use common::{Api, TestCollector, hosts, isolate, request, sensor, wait_connected};
use proto::control::v1::{ListHostsRequest, analyst_api_client::AnalystApiClient, command};
use tokio::sync::mpsc;
use tonic::Code;

const TOKEN: &str = "op-token";

async fn collector() -> TestCollector {
    TestCollector::start(CollectorConfig {
        stats_log_interval: None,
        // The stand-in sensors keep their streams open to the end.
        shutdown_grace: Duration::from_millis(200),
        operators: vec![Operator::with_token("alice", Role::Responder, TOKEN)],
        ..CollectorConfig::default()
    })
    .await
}

/// A collector, a stand-in sensor for `host` (answering `ok`) connected
/// to it, and an analyst client.
async fn setup(
    host: &str,
    ok: bool,
) -> (TestCollector, mpsc::UnboundedReceiver<command::Action>, Api) {
    let c = collector().await;
    let seen = sensor(&c.url, host, ok).await;
    let mut api = AnalystApiClient::connect(c.url.clone()).await.unwrap();
    wait_connected(&mut api, host, TOKEN).await;
    (c, seen, api)
}

#[tokio::test]
async fn unauthorized_requests_are_refused_and_reach_no_sensor() {
    let (c, mut seen, mut api) = setup("kiosk-1", true).await;

    let e = api
        .isolate(request(isolate("kiosk-1", "x"), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let e = api
        .isolate(request(isolate("kiosk-1", "x"), Some("guess")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let e = api
        .list_hosts(request(ListHostsRequest {}, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let e = api
        .isolate(request(isolate("kiosk-1", "  "), Some(TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        seen.try_recv().is_err(),
        "a refused request reached the sensor"
    );
    c.shutdown().await.unwrap();
}

#[tokio::test]
async fn isolate_goes_to_the_sensor_and_returns_its_state() {
    let (c, mut seen, mut api) = setup("kiosk-2", true).await;

    let r = api
        .isolate(request(isolate("kiosk-2", "malware"), Some(TOKEN)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.operator, "alice");
    assert!(r.isolation.as_ref().unwrap().isolated);
    match seen.recv().await.unwrap() {
        command::Action::Isolate(c) => assert_eq!(
            (c.requester.as_str(), c.reason.as_str()),
            ("alice", "malware")
        ),
        other => panic!("sent {other:?}"),
    }
    let hosts = hosts(&mut api, TOKEN).await;
    let h = hosts.iter().find(|h| h.host_id == "kiosk-2").unwrap();
    assert!(h.isolation.as_ref().unwrap().isolated && h.control_connected);
    assert_eq!(h.allowlist_backend, "tracepoint+sigkill");
    assert!(h.last_seen_unix_ms > 0);

    let e = api
        .isolate(request(isolate("nobody", "x"), Some(TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    c.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_sensor_refusal_is_reported() {
    let (c, _seen, mut api) = setup("kiosk-3", false).await;
    let e = api
        .isolate(request(isolate("kiosk-3", "x"), Some(TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("isolation disabled"), "{e}");
    c.shutdown().await.unwrap();
}
