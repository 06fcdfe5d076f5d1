//! The real sensor over mutual TLS: a collector with another CA (a fake at
//! the collector's address) gets nothing from it and cannot command it, and
//! the sensor's certificate is rotated under load without losing an event.

use std::time::Duration;

use proto::control::v1::{
    IsolationRequest, ListHostsRequest, analyst_api_client::AnalystApiClient,
};
use proto::telemetry::v1::SubscribeRequest;
use tests::{Collector, Sensor, Subscription, marker};

/// A sensor config for `host_id` pointing at `endpoint` with the TLS files
/// in `dir`, small batches.
fn config(host_id: &str, endpoint: &str, dir: &std::path::Path) -> String {
    format!(
        "[host]\nid = \"{host_id}\"\n{}[batching]\nmax_events = 16\nmax_delay_ms = 100\n",
        tests::collector_section(endpoint, dir)
    )
}

fn run_marked(marker: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("/bin/true")
        .arg(marker)
        .status()?;
    anyhow::ensure!(status.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_of_another_ca_gets_nothing_and_cannot_command() -> anyhow::Result<()> {
    let real = Collector::start().await?;
    let fake = Collector::start().await?;
    let host_id = format!("chan-fake-{}", std::process::id());
    let dir = tempfile::tempdir()?;
    // The sensor trusts the real CA and holds a real certificate, but the
    // address it dials answers with the fake collector's certificate.
    real.issue_sensor(&host_id, dir.path())?;
    let sensor = Sensor::with_config(config(
        &host_id,
        &format!("https://{}", fake.addr),
        dir.path(),
    ))
    .start()
    .await?;
    for i in 0..20 {
        run_marked(&format!("fake-{i}"))?;
    }
    let access = fake.url();
    let mut api = AnalystApiClient::new(access.channel().await?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        let hosts = api
            .list_hosts(access.request(ListHostsRequest {}))
            .await?
            .into_inner()
            .hosts;
        assert!(hosts.is_empty(), "the fake collector heard from {hosts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let e = api
        .isolate(access.request(IsolationRequest {
            host_id: host_id.clone(),
            reason: "fake".into(),
        }))
        .await
        .expect_err("a fake collector isolated the sensor");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    let log = sensor.log();
    assert!(
        log.contains("certificate") || log.contains("UnknownIssuer") || log.contains("tls"),
        "the sensor says nothing about the refused certificate:\n{log}"
    );
    sensor.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_loses_no_event() -> anyhow::Result<()> {
    let collector = Collector::start().await?;
    let host_id = format!("chan-rot-{}", std::process::id());
    let dir = tempfile::tempdir()?;
    collector.issue_sensor(&host_id, dir.path())?;
    let old =
        pki::PeerIdentity::from_pem(&std::fs::read_to_string(dir.path().join("sensor.pem"))?)?;
    let mut sub = Subscription::open(&collector.url(), SubscribeRequest::default()).await?;
    let sensor = Sensor::with_config(config(
        &host_id,
        &format!("https://{}", collector.addr),
        dir.path(),
    ))
    .start()
    .await?;
    let tag = marker("rot");
    let marks: Vec<String> = (0..60).map(|i| format!("{tag}-{i}")).collect();
    for m in &marks[..20] {
        run_marked(m)?;
    }
    sub.until(Duration::from_secs(20), |s| {
        !s.execs_with(&marks[19]).is_empty()
    })
    .await?;
    // Rotate: new files in place, the old serial revoked (the collector
    // cuts the old stream within its deny-list poll).
    collector.issue_sensor(&host_id, dir.path())?;
    collector.ca()?.revoke(&old.serial, "rotation test")?;
    for m in &marks[20..] {
        run_marked(m)?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sub.until(Duration::from_secs(30), |s| {
        marks.iter().all(|m| !s.execs_with(m).is_empty())
    })
    .await?;
    for m in &marks {
        assert_eq!(
            sub.execs_with(m).len(),
            1,
            "{m} delivered {} times",
            sub.execs_with(m).len()
        );
    }
    let log = collector.log();
    assert!(
        log.contains("revoked"),
        "the old certificate was never refused:\n{log}"
    );
    sensor.stop().await?;
    Ok(())
}
