//! The sensor's disk spool with real processes (docs/durability.md): a
//! SIGKILLed sensor's spooled batches are replayed by the next one, in
//! order, with the sequence continued; a full spool's loss record reaches
//! the collector with the right count; a corrupted segment is reported and
//! the rest delivered.

use std::{collections::BTreeSet, path::Path, time::Duration};

use anyhow::Context as _;
use prost::Message as _;
use proto::telemetry::v1::{
    DropCounters, EventBatch, SensorBatch, SubscribeRequest, event, host_record,
};
use rand::{Rng as _, distr::Alphanumeric};
use tests::{
    Collector, CollectorState, Sensor, Subscription, marker,
    spool::{SpoolRecord, spool_bytes, spooled},
};

const PATIENCE: Duration = Duration::from_secs(60);

/// A sensor config for `host` pointing at 127.0.0.1:`port` with the TLS
/// files in `tls`.
fn config_text(host: &str, port: u16, spool: &Path, tls: &Path, extra: &str) -> String {
    format!(
        "[host]\nid = \"{host}\"\n{}\
         [batching]\nmax_events = 16\nmax_delay_ms = 100\nheartbeat_ms = 3600000\n\
         [files]\nenabled = false\n[spool]\ndir = {:?}\n{extra}",
        tests::collector_section(&format!("https://127.0.0.1:{port}"), tls),
        spool
    )
}

/// Where [`config`] puts the sensor's certificate: in the collector's
/// state directory, removed with it.
fn tls_dir(collector_state: &Path) -> std::path::PathBuf {
    collector_state.join("sensor-tls")
}

/// The collector's trust, made before it starts on `port`, and a sensor
/// config pointing there with a certificate for `host` from it.
fn config(
    host: &str,
    port: u16,
    spool: &Path,
    extra: &str,
) -> anyhow::Result<(CollectorState, String)> {
    let trust = CollectorState::new(&format!("127.0.0.1:{port}"))?;
    trust.issue_sensor(host, &tls_dir(spool))?;
    Ok((
        trust,
        config_text(host, port, spool, &tls_dir(spool), extra),
    ))
}

fn host_id(test: &str) -> String {
    format!("test-spool-{test}-{}", std::process::id())
}

/// Runs `/bin/true <marker> <n> [padding]` for n in `range`, one at a time.
fn run_marked(marker: &str, range: std::ops::Range<usize>, padding: usize) -> anyhow::Result<()> {
    for n in range {
        let pad: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(padding)
            .map(char::from)
            .collect();
        let status = std::process::Command::new("/bin/true")
            .args([marker, &n.to_string(), &pad])
            .status()?;
        anyhow::ensure!(status.success());
    }
    Ok(())
}

/// Execs in `batch` whose argv carries `marker`, by their number.
fn marked_in(batch: &SensorBatch, marker: &str) -> anyhow::Result<Vec<usize>> {
    let raw = zstd::stream::decode_all(batch.payload.as_slice())?;
    let mut out = Vec::new();
    for e in EventBatch::decode(raw.as_slice())?.events {
        if let Some(event::Kind::Exec(x)) = e.kind
            && x.argv.get(1).is_some_and(|a| a == marker)
        {
            out.push(x.argv.get(2).context("number")?.parse()?);
        }
    }
    Ok(out)
}

/// Waits until the spool holds the execs `0..n` of `marker`.
async fn until_spooled(spool: &Path, marker: &str, n: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        // The sensor may be appending: a torn last record is "not yet".
        let mut seen = BTreeSet::new();
        if let Ok(records) = spooled(spool) {
            for r in records {
                seen.extend(marked_in(&r.batch, marker)?);
            }
        }
        if seen.len() >= n {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} execs spooled",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn latest_drops(sub: &Subscription) -> DropCounters {
    sub.records
        .iter()
        .filter_map(|r| match r.record.as_ref()? {
            host_record::Record::Drops(d) => Some(*d),
            _ => None,
        })
        .max_by_key(|d| (d.spool_batches_dropped, d.spool_corrupt_records))
        .unwrap_or_default()
}

/// The marked execs received, as (number, batch sequence, instance id).
fn received(sub: &Subscription, marker: &str) -> anyhow::Result<Vec<(usize, u64, String)>> {
    sub.exec_host_events_with(marker)
        .iter()
        .map(|e| {
            let event::Kind::Exec(x) = e
                .event
                .as_ref()
                .context("event")?
                .kind
                .as_ref()
                .context("kind")?
            else {
                anyhow::bail!("not an exec")
            };
            let instance = e.host.as_ref().context("host")?.sensor_instance_id.clone();
            Ok((x.argv[2].parse()?, e.batch_sequence, instance))
        })
        .collect()
}

async fn subscribe(collector: &Collector, host: &str) -> anyhow::Result<Subscription> {
    let request = SubscribeRequest {
        host_ids: vec![host.to_owned()],
        ..Default::default()
    };
    Subscription::open(&collector.url(), request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_sensor_s_spool_is_replayed_in_order_and_the_sequence_continues()
-> anyhow::Result<()> {
    const BEFORE: usize = 60;
    const AFTER: usize = 10;
    let spool = tempfile::tempdir()?;
    let host = host_id("kill");
    let held = tests::ports::HeldPort::new()?;
    let port = held.port();
    let (trust, text) = config(&host, port, spool.path(), "")?;
    let sensor = Sensor::with_config(text.clone()).start().await?;
    let marker = marker("spool-kill");
    run_marked(&marker, 0..BEFORE, 0)?;
    until_spooled(spool.path(), &marker, BEFORE).await?;
    let last_spooled = spooled(spool.path())?
        .last()
        .map(|r| r.batch.sequence)
        .context("a spooled batch")?;
    sensor.kill().await?;

    let collector = Collector::start_on(trust, None, &format!("127.0.0.1:{port}"), &[]).await?;
    let mut sub = subscribe(&collector, &host).await?;
    let sensor = Sensor::with_config(text).start().await?;
    run_marked(&marker, BEFORE..BEFORE + AFTER, 0)?;
    sub.until(PATIENCE, |s| s.execs_with(&marker).len() >= BEFORE + AFTER)
        .await?;
    let got = received(&sub, &marker)?;
    let numbers: Vec<usize> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        numbers,
        (0..BEFORE + AFTER).collect::<Vec<_>>(),
        "every exec exactly once, in order"
    );
    let first_instance = &got[0].2;
    let (old, new) = got.split_at(BEFORE);
    assert!(
        old.iter()
            .all(|g| &g.2 == first_instance && g.1 <= last_spooled),
        "replayed with the identity they were sealed with"
    );
    assert!(
        new.iter()
            .all(|g| &g.2 != first_instance && g.1 > last_spooled),
        "the new instance continues the sequence after {last_spooled}: {new:?}"
    );
    assert!(got.windows(2).all(|w| w[0].1 <= w[1].1), "batches in order");
    // Acked, so deleted: nothing of the first run is left on disk.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while spooled(spool.path())?
        .iter()
        .any(|r| r.batch.sequence <= last_spooled)
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "acked batches stay on disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sensor.stop().await?;
    drop(collector);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_the_oldest_and_the_loss_reaches_the_collector() -> anyhow::Result<()> {
    const EXECS: usize = 1500;
    let spool = tempfile::tempdir()?;
    let host = host_id("full");
    let held = tests::ports::HeldPort::new()?;
    let port = held.port();
    let (trust, text) = config(
        &host,
        port,
        spool.path(),
        "max_bytes = 262144\nsegment_bytes = 16384\n",
    )?;
    let sensor = Sensor::with_config(text).start().await?;
    let marker = marker("spool-full");
    // About 900 bytes of noise per exec: 1500 of them are several times
    // what a 256 KiB spool holds.
    run_marked(&marker, 0..EXECS, 900)?;
    let done = marker.clone() + "-done";
    run_marked(&done, 0..1, 0)?;
    until_spooled(spool.path(), &done, 1).await?;
    let on_disk = spool_bytes(spool.path())?;
    assert!(on_disk <= 262_144, "bounded: {on_disk} bytes");
    // Unconnected: it stops at once and leaves the spool as it is.
    sensor.stop().await?;
    let last_spooled = spooled(spool.path())?
        .last()
        .map(|r| r.batch.sequence)
        .context("a spooled batch")?;

    // The collector back, and a sensor whose bound takes the whole spool
    // and what the machine does meanwhile: the only losses are the first
    // sensor's, and the replay is watched from its first batch.
    let collector = Collector::start_on(trust, None, &format!("127.0.0.1:{port}"), &[]).await?;
    let mut sub = subscribe(&collector, &host).await?;
    let tls = tempfile::tempdir()?;
    collector.issue_sensor(&host, tls.path())?;
    let text = config_text(
        &host,
        port,
        spool.path(),
        tls.path(),
        "max_bytes = 67108864\n",
    );
    let sensor = Sensor::with_config(text).start().await?;
    // The last spooled batch has begun to arrive, the `done` exec (after
    // every marked one) has arrived, and so has the loss record.
    let arrived = sub
        .until(PATIENCE, |s| {
            s.events.iter().any(|e| e.batch_sequence >= last_spooled)
                && !s.execs_with(&done).is_empty()
                && latest_drops(s).spool_batches_dropped > 0
        })
        .await;
    if let Err(e) = arrived {
        anyhow::bail!(
            "{e}: {} events (highest batch {:?}, last spooled {last_spooled}), done seen: {}, drops {:?}\nsensor:\n{}",
            sub.events.len(),
            sub.events.iter().map(|e| e.batch_sequence).max(),
            !sub.execs_with(&done).is_empty(),
            latest_drops(&sub),
            sensor.log()
        );
    }
    let loss = latest_drops(&sub);
    assert!(
        loss.spool_batches_dropped > 0,
        "a loss record arrived: {loss:?}"
    );
    // The oldest went: what arrived is a run of batches right after them.
    let got = received(&sub, &marker)?;
    let sequences: BTreeSet<u64> = sub
        .events
        .iter()
        .map(|e| e.batch_sequence)
        .filter(|&s| s <= last_spooled)
        .collect();
    let first = *sequences.first().context("batches")?;
    assert_eq!(
        (first, sequences.len() as u64),
        (loss.spool_batches_dropped + 1, last_spooled - first + 1),
        "batches 1..={} dropped and counted, all the later ones delivered",
        loss.spool_batches_dropped
    );
    let numbers: Vec<usize> = got.iter().map(|g| g.0).collect();
    let lost = EXECS - numbers.len();
    assert!(lost > 0 && numbers.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(numbers.last(), Some(&(EXECS - 1)), "the newest kept");
    assert!(
        loss.spool_events_dropped >= lost as u64,
        "{lost} marked execs lost, {} events counted",
        loss.spool_events_dropped
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let range = loss.spool_dropped_first_sealed_unix_ns..=loss.spool_dropped_last_sealed_unix_ns;
    assert!(
        *range.start() > now - 600_000_000_000 && *range.end() <= now && !range.is_empty(),
        "sealed in this test: {range:?}"
    );
    sensor.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_segment_is_reported_and_the_rest_delivered() -> anyhow::Result<()> {
    const EXECS: usize = 60;
    let spool = tempfile::tempdir()?;
    let host = host_id("corrupt");
    let held = tests::ports::HeldPort::new()?;
    let port = held.port();
    let (trust, text) = config(&host, port, spool.path(), "")?;
    let sensor = Sensor::with_config(text.clone()).start().await?;
    let marker = marker("spool-corrupt");
    // One batch per exec (sealed when 100 ms old), so a flipped record
    // takes few of them.
    for n in 0..EXECS {
        run_marked(&marker, n..n + 1, 0)?;
        if n % 10 == 9 {
            until_spooled(spool.path(), &marker, n + 1).await?;
        }
    }
    until_spooled(spool.path(), &marker, EXECS).await?;
    sensor.stop().await?;

    // Flip bytes in the payload of a record in the middle that carries
    // marked execs, while no sensor runs.
    let records = spooled(spool.path())?;
    let carrying: Vec<&SpoolRecord> = records
        .iter()
        .filter(|r| marked_in(&r.batch, &marker).is_ok_and(|m| !m.is_empty()))
        .collect();
    let victim = carrying[carrying.len() / 2];
    let lost = marked_in(&victim.batch, &marker)?;
    let path = &victim.segment;
    let mut bytes = std::fs::read(path)?;
    let at = victim.offset + victim.len - 8;
    bytes[at] ^= 0xff;
    bytes[at + 1] ^= 0xff;
    std::fs::write(path, &bytes)?;

    let collector = Collector::start_on(trust, None, &format!("127.0.0.1:{port}"), &[]).await?;
    let mut sub = subscribe(&collector, &host).await?;
    let sensor = Sensor::with_config(text).start().await?;
    let expected = EXECS - lost.len();
    sub.until(PATIENCE, |s| {
        s.execs_with(&marker).len() >= expected && latest_drops(s).spool_corrupt_records > 0
    })
    .await?;
    let loss = latest_drops(&sub);
    assert_eq!(loss.spool_corrupt_records, 1, "{loss:?}");
    assert_eq!(loss.spool_corrupt_bytes, victim.len as u64);
    let numbers: BTreeSet<usize> = received(&sub, &marker)?.iter().map(|g| g.0).collect();
    let want: BTreeSet<usize> = (0..EXECS).filter(|n| !lost.contains(n)).collect();
    assert_eq!(numbers, want, "everything but the corrupted batch {lost:?}");
    assert!(
        sensor.log().contains("torn or corrupt records skipped"),
        "reported in the log too"
    );
    sensor.stop().await?;
    Ok(())
}

/// A heartbeat as the sensor seals it (no events, a zstd frame of nothing,
/// the drop counters) is acknowledged by the real collector, and its
/// counters reach a subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_acks_a_heartbeat_batch() -> anyhow::Result<()> {
    use proto::telemetry::v1::{
        Compression, HostIdentity, telemetry_ingest_client::TelemetryIngestClient,
    };
    let collector = Collector::start().await?;
    let host = host_id("heartbeat");
    let mut sub = subscribe(&collector, &host).await?;
    let heartbeat = SensorBatch {
        host: Some(HostIdentity {
            host_id: host.clone(),
            sensor_instance_id: "i1".into(),
            ..Default::default()
        }),
        sequence: 7,
        drops: Some(DropCounters {
            spool_batches_dropped: 3,
            ..Default::default()
        }),
        compression: Compression::Zstd as i32,
        payload: zstd::bulk::compress(&[], 3)?,
        event_count: 0,
        uncompressed_size: 0,
        sealed_at_ns: 1,
    };
    let tls = tempfile::tempdir()?;
    collector.issue_sensor(&host, tls.path())?;
    let access = collector
        .url()
        .with_identity(tls.path().join("sensor.pem"), tls.path().join("sensor.key"));
    let mut client = TelemetryIngestClient::new(access.channel().await?);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(heartbeat).await?;
    let mut acks = client
        .publish(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let ack = tokio::time::timeout(PATIENCE, acks.message())
        .await??
        .context("no ack")?;
    assert_eq!(ack.sequence, 7);
    sub.until(PATIENCE, |s| latest_drops(s).spool_batches_dropped == 3)
        .await?;
    assert!(sub.events.is_empty(), "no event in a heartbeat");
    Ok(())
}
