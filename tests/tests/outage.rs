//! The collector's plug pulled for a minute under a steady exec load, as a
//! pharmacy's uplink goes: the sensor spools meanwhile, and once the
//! collector is back its store holds every event of the outage exactly
//! once, in the host's order (the real sensor, collector, spool and store),
//! and the sensor's control stream is connected again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use proto::control::v1::{ListHostsRequest, analyst_api_client::AnalystApiClient};
use proto::telemetry::v1::{
    EventKind, QueryRequest, event, subscribe_response,
    telemetry_subscribe_client::TelemetrySubscribeClient,
};
use tests::{Collector, CollectorState, Sensor, marker};

/// Execs per second, from [`THREADS`] threads: with their forks and exits
/// about 3,000 events/s, a busy kiosk's steady load.
const RATE: u64 = 1_000;
const THREADS: u64 = 2;
const BEFORE: Duration = Duration::from_secs(5);
const OUTAGE: Duration = Duration::from_secs(60);
const AFTER: Duration = Duration::from_secs(5);

/// Runs `/bin/true TAG N` for N = `first`, `first + THREADS`, ... on the
/// schedule of RATE per second in all until `stop`; how many it ran.
fn paced_execs(tag: String, first: u64, stop: Arc<AtomicBool>) -> anyhow::Result<u64> {
    let start = Instant::now();
    let mut ran = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let n = first + ran * THREADS;
        let due = start + Duration::from_micros(n * 1_000_000 / RATE);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let status = std::process::Command::new("/bin/true")
            .args([tag.as_str(), &n.to_string()])
            .status()?;
        anyhow::ensure!(status.success());
        ran += 1;
    }
    Ok(ran)
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

/// Waits (up to `limit`) until `collector` lists `host` with its control
/// stream connected.
async fn control_connected(
    collector: &Collector,
    host: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let access = collector.url();
    let mut api = AnalystApiClient::new(access.channel().await?);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let hosts = api
            .list_hosts(access.request(ListHostsRequest {}))
            .await?
            .into_inner()
            .hosts;
        if hosts
            .iter()
            .any(|h| h.host_id == host && h.control_connected)
        {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{host}'s control stream is not connected: {hosts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_without_the_collector_loses_nothing() -> anyhow::Result<()> {
    let held = tests::ports::HeldPort::new()?;
    let listen = held.addr().to_string();
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
    let load: Vec<_> = (0..THREADS)
        .map(|first| {
            let (tag, stop) = (tag.clone(), stop.clone());
            std::thread::spawn(move || paced_execs(tag, first, stop))
        })
        .collect();
    let t0 = Instant::now();

    tokio::time::sleep(BEFORE).await;
    control_connected(&collector, &host, Duration::from_secs(20)).await?;
    // Unplugged: the collector stops; its store and trust stay on disk.
    let state = collector.stop_keeping_state().await?;
    tokio::time::sleep(OUTAGE).await;
    let collector = Collector::start_on(state, None, &listen, &[]).await?;
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    let load_time = t0.elapsed();
    let mut per_thread = Vec::new();
    for thread in load {
        per_thread.push(
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("load thread panicked"))??,
        );
    }
    let ran: u64 = per_thread.iter().sum();
    // Some slack for a loaded machine; the rate reached is printed.
    let expected_at_least = RATE * load_time.as_secs() * 6 / 10;
    assert!(
        ran >= expected_at_least,
        "only {ran} execs ran in {load_time:?} (at least {expected_at_least}): the load was not steady"
    );
    // N ran iff thread N % THREADS got that far.
    let ran_n = |n: u64| n / THREADS < per_thread[(n % THREADS) as usize];
    let top = (0..THREADS)
        .map(|t| t + per_thread[t as usize] * THREADS)
        .max()
        .unwrap_or(0);

    // Everything arrives (the sensor retries with a backoff up to 30 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let got = loop {
        let got = stored(&collector, &host, &tag).await?;
        if got.len() as u64 >= ran || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let mut seen = vec![0u32; top as usize];
    let mut strays = Vec::new();
    for (n, _, _) in &got {
        match seen.get_mut(*n as usize) {
            Some(count) if ran_n(*n) => *count += 1,
            _ => strays.push(*n),
        }
    }
    let missing: Vec<u64> = (0..top)
        .filter(|&n| ran_n(n) && seen[n as usize] == 0)
        .collect();
    let repeated: Vec<u64> = (0..top).filter(|&n| seen[n as usize] > 1).collect();
    assert!(
        missing.is_empty() && repeated.is_empty() && strays.is_empty(),
        "{} of {ran} execs stored; missing {:?}..., repeated {:?}..., never run {:?}...\ncollector:\n{}\nsensor:\n{}",
        got.len(),
        &missing[..missing.len().min(10)],
        &repeated[..repeated.len().min(10)],
        &strays[..strays.len().min(10)],
        collector.log(),
        sensor.log()
    );
    // In the host's order: one sensor instance, its batches stored in sequence.
    assert!(
        got.windows(2).all(|w| w[0].2 == w[1].2 && w[0].1 <= w[1].1),
        "stored out of order"
    );
    // One thread's execs come in the order it ran them.
    for t in 0..THREADS {
        let mine: Vec<u64> = got
            .iter()
            .filter(|g| g.0 % THREADS == t)
            .map(|g| g.0)
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "thread {t}'s execs stored out of order"
        );
    }
    println!(
        "{ran} execs in {:?} ({:.0}/s) with a {OUTAGE:?} outage: all stored once, in order",
        load_time,
        ran as f64 / load_time.as_secs_f64()
    );
    // The control stream came back by itself (reconnect backoff up to 30 s).
    control_connected(&collector, &host, Duration::from_secs(60)).await?;
    sensor.stop().await?;
    Ok(())
}
