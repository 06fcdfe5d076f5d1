//! The collector's plug pulled for a minute under a steady exec load, as a
//! pharmacy's uplink goes: the sensor spools meanwhile, and once the
//! collector is back its store holds every event of the outage exactly
//! once, in the host's order (the real sensor, collector, spool and store).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use proto::telemetry::v1::{
    EventKind, QueryRequest, event, subscribe_response,
    telemetry_subscribe_client::TelemetrySubscribeClient,
};
use tests::{Collector, CollectorState, Sensor, marker};

/// Execs per second: with their forks and exits about 3x as many events.
const RATE: u64 = 400;
const BEFORE: Duration = Duration::from_secs(5);
const OUTAGE: Duration = Duration::from_secs(60);
const AFTER: Duration = Duration::from_secs(5);

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs `/bin/true TAG N` at RATE per second until `stop`; how many ran.
fn paced_execs(tag: String, stop: Arc<AtomicBool>) -> anyhow::Result<u64> {
    let start = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = start + Duration::from_micros(n * 1_000_000 / RATE);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let status = std::process::Command::new("/bin/true")
            .args([tag.as_str(), &n.to_string()])
            .status()?;
        anyhow::ensure!(status.success());
        n += 1;
    }
    Ok(n)
}

/// The stored execs of `tag` on `host`, in store order: (N, batch sequence, instance).
async fn stored(
    collector: &Collector,
    host: &str,
    tag: &str,
) -> anyhow::Result<Vec<(u64, u64, String)>> {
    let access = collector.url();
    let mut client = TelemetrySubscribeClient::new(access.channel().await?);
    let mut req = QueryRequest {
        host_ids: vec![host.to_owned()],
        kinds: vec![EventKind::Exec as i32],
        limit: 5_000,
        ..QueryRequest::default()
    };
    let mut out = Vec::new();
    loop {
        let page = client
            .query(access.request(req.clone()))
            .await?
            .into_inner();
        for item in &page.items {
            let Some(subscribe_response::Item::Event(e)) = &item.item else {
                continue;
            };
            let Some(event::Kind::Exec(x)) = e.event.as_ref().and_then(|e| e.kind.as_ref()) else {
                continue;
            };
            if x.argv.get(1).is_some_and(|a| a == tag) {
                let n = x.argv.get(2).context("number")?.parse()?;
                let instance = e
                    .host
                    .as_ref()
                    .map(|h| h.sensor_instance_id.clone())
                    .unwrap_or_default();
                out.push((n, e.batch_sequence, instance));
            }
        }
        if page.next_cursor.is_empty() {
            return Ok(out);
        }
        req.cursor = page.next_cursor;
        req.max_store_id = page.high_water_id;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_without_the_collector_loses_nothing() -> anyhow::Result<()> {
    let listen = format!("127.0.0.1:{}", free_port()?);
    let collector = Collector::start_on(CollectorState::new(&listen)?, None, &listen, &[]).await?;
    let host = format!("test-outage-{}", std::process::id());
    let tls = collector.state_dir().join("sensor-tls");
    collector.issue_sensor(&host, &tls)?;
    let config = format!(
        "[host]\nid = \"{host}\"\n{}[batching]\nmax_events = 256\nmax_delay_ms = 200\n[files]\nenabled = false\n",
        tests::collector_section(&format!("https://{listen}"), &tls)
    );
    let sensor = Sensor::with_config(config).start().await?;
    let tag = marker("outage");
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (tag, stop) = (tag.clone(), stop.clone());
        std::thread::spawn(move || paced_execs(tag, stop))
    };

    tokio::time::sleep(BEFORE).await;
    // Unplugged: the collector stops; its store and trust stay on disk.
    let state = collector.stop_keeping_state().await?;
    tokio::time::sleep(OUTAGE).await;
    let collector = Collector::start_on(state, None, &listen, &[]).await?;
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    let ran = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    let expected_at_least = RATE * (BEFORE + OUTAGE).as_secs() / 2;
    assert!(
        ran >= expected_at_least,
        "only {ran} execs ran: the load was not steady"
    );

    // Everything arrives (the sensor retries with a backoff up to 30 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let got = loop {
        let got = stored(&collector, &host, &tag).await?;
        if got.len() as u64 >= ran || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let mut seen = vec![0u32; ran as usize];
    for (n, _, _) in &got {
        seen[*n as usize] += 1;
    }
    let missing: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] == 0).collect();
    let repeated: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] > 1).collect();
    assert!(
        missing.is_empty() && repeated.is_empty(),
        "{} of {ran} execs stored; missing {:?}..., repeated {:?}...\ncollector:\n{}\nsensor:\n{}",
        got.len(),
        &missing[..missing.len().min(10)],
        &repeated[..repeated.len().min(10)],
        collector.log(),
        sensor.log()
    );
    // In the host's order: one sensor instance, its batches stored in sequence.
    assert!(
        got.windows(2).all(|w| w[0].2 == w[1].2 && w[0].1 <= w[1].1),
        "stored out of order"
    );
    // The execs of one batch come in the order they ran.
    assert!(
        got.windows(2).all(|w| w[0].1 < w[1].1 || w[0].0 < w[1].0),
        "execs out of order within a batch"
    );
    sensor.stop().await?;
    Ok(())
}
