//! The channel's cost, measured side by side in one run: events/s from one
//! sensor-side client through mutual TLS next to plaintext (rounds
//! alternated, medians compared), and 1,000 sensors (each its own
//! certificate) reconnecting: every one a full handshake plus one batch.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use collector::testkit::{self, SensorStream};
use collector::{Collector, CollectorConfig};
use proto::telemetry::v1::SensorBatch;
use tests::CollectorAccess;

use super::common::median_f64;

pub const HEADING: &str = "## Channel: mutual TLS";

/// Events per batch, as a busy sensor seals them.
const BATCH_EVENTS: usize = 256;
/// Handshakes in flight at once when the sensors reconnect.
const RECONNECT_CONCURRENCY: usize = 32;

#[derive(Debug, Default)]
pub struct ChannelBench {
    rounds: usize,
    events: usize,
    plain_eps: f64,
    tls_eps: f64,
    /// Median of each round's TLS / plaintext: the two runs of a round are
    /// seconds apart, so machine noise hits both alike.
    paired_ratio: f64,
    sensors: usize,
    handshakes_ok: usize,
    reconnect_wall: Duration,
    handshake_p50: Duration,
    handshake_p99: Duration,
}

/// A collector served on loopback until `stop` is dropped.
struct Served {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(config: CollectorConfig, tls: bool) -> Result<Served> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let collector = Collector::new(config)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(collector.serve(listener, async move {
        let _ = stopped.await;
    }));
    let scheme = if tls { "https" } else { "http" };
    Ok(Served {
        url: format!("{scheme}://{addr}"),
        _stop: stop,
    })
}

fn batches(instance: &str, events: usize) -> Vec<SensorBatch> {
    let host = testkit::host("bench-host", instance);
    (0..events.div_ceil(BATCH_EVENTS))
        .map(|i| {
            let evs = (0..BATCH_EVENTS)
                .map(|j| {
                    let pid = (i * BATCH_EVENTS + j) as u32 + 100;
                    testkit::exec_event(pid, "sh", "/usr/bin/pos-app", &["pos-app", "--till", "3"])
                })
                .collect();
            testkit::zstd_batch(&host, i as u64 + 1, evs)
        })
        .collect()
}

/// Publishes every batch on one stream (sender and ack reader concurrent)
/// and returns events per second, first send to last ack.
async fn publish_all(access: &CollectorAccess, batches: Vec<SensorBatch>) -> Result<f64> {
    let events: usize = batches.iter().map(|b| b.event_count as usize).sum();
    let last = batches.len() as u64;
    let mut stream = SensorStream::open(access.channel().await?).await?;
    let started = Instant::now();
    let sender = stream.sender();
    let send = tokio::spawn(async move {
        for b in batches {
            if sender.send(b).await.is_err() {
                break;
            }
        }
    });
    loop {
        let ack = stream.next_ack().await?.context("stream ended early")?;
        if ack.sequence >= last {
            break;
        }
    }
    let took = started.elapsed();
    send.await?;
    Ok(events as f64 / took.as_secs_f64())
}

pub fn run(
    rt: &tokio::runtime::Runtime,
    rounds: usize,
    events: usize,
    sensors: usize,
) -> Result<ChannelBench> {
    rt.block_on(run_async(rounds, events, sensors))
}

async fn run_async(rounds: usize, events: usize, sensors: usize) -> Result<ChannelBench> {
    let dir = tempfile::tempdir()?;
    let ca = pki::Ca::init(&dir.path().join("pki"), "bench CA")?;
    ca.issue(
        &pki::Leaf::Collector {
            names: vec!["127.0.0.1".into()],
        },
        1,
    )?
    .write(&dir.path().join("tls"), "collector")?;
    let quiet = CollectorConfig {
        stats_log_interval: None,
        ..CollectorConfig::default()
    };
    let tls = serve(
        CollectorConfig {
            tls: Some(pki::tls::ServerFiles {
                cert: dir.path().join("tls/collector.pem"),
                key: dir.path().join("tls/collector.key"),
                client_ca: dir.path().join("pki/ca.pem"),
            }),
            deny_list: Some(ca.deny_list()),
            ..quiet.clone()
        },
        true,
    )
    .await?;
    let plain = serve(quiet, false).await?;
    let (cert, key) = ca
        .issue(
            &pki::Leaf::Sensor {
                host_id: "bench-host".into(),
            },
            1,
        )?
        .write(&dir.path().join("sensor"), "sensor")?;
    let tls_access = CollectorAccess {
        url: tls.url.clone(),
        ca: Some(dir.path().join("pki/ca.pem")),
        identity: Some((cert, key)),
        token: None,
    };
    let plain_access = CollectorAccess::plaintext(plain.url.clone(), None);

    let (mut with_tls, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first: drift on a noisy machine hits both.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for use_tls in order {
            let instance = format!("r{round}-{use_tls}");
            let eps = if use_tls {
                publish_all(&tls_access, batches(&instance, events)).await?
            } else {
                publish_all(&plain_access, batches(&instance, events)).await?
            };
            if use_tls { &mut with_tls } else { &mut without }.push(eps);
        }
        println!(
            "channel round {round}: plaintext {:.0} events/s, mutual TLS {:.0} events/s",
            without[round], with_tls[round]
        );
    }

    let reconnect = reconnect_storm(&ca, &tls.url, dir.path(), sensors).await?;
    Ok(ChannelBench {
        rounds,
        events,
        plain_eps: median_f64(&without),
        tls_eps: median_f64(&with_tls),
        paired_ratio: median_f64(
            &with_tls
                .iter()
                .zip(&without)
                .map(|(t, p)| t / p)
                .collect::<Vec<_>>(),
        ),
        sensors,
        ..reconnect
    })
}

/// `sensors` distinct sensor certificates, each connecting (a full TLS
/// handshake) and publishing one batch, RECONNECT_CONCURRENCY at a time.
async fn reconnect_storm(
    ca: &pki::Ca,
    url: &str,
    dir: &Path,
    sensors: usize,
) -> Result<ChannelBench> {
    let mut accesses = Vec::with_capacity(sensors);
    for i in 0..sensors {
        let host_id = format!("kiosk-{i:04}");
        let (cert, key) = ca
            .issue(
                &pki::Leaf::Sensor {
                    host_id: host_id.clone(),
                },
                1,
            )?
            .write(&dir.join("fleet"), &host_id)?;
        accesses.push((
            host_id,
            CollectorAccess {
                url: url.to_owned(),
                ca: Some(dir.join("pki/ca.pem")),
                identity: Some((cert, key)),
                token: None,
            },
        ));
    }
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(sensors);
    for chunk in accesses.chunks(RECONNECT_CONCURRENCY) {
        let tasks: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|(host_id, access)| {
                tokio::spawn(async move {
                    let t = Instant::now();
                    let channel = access.channel().await?;
                    let mut stream = SensorStream::open(channel).await?;
                    let host = testkit::host(&host_id, "i1");
                    let batch = testkit::zstd_batch(
                        &host,
                        1,
                        vec![testkit::exec_event(1, "sh", "/bin/sh", &["sh"])],
                    );
                    stream.publish(batch).await?;
                    anyhow::Ok(t.elapsed())
                })
            })
            .collect();
        for task in tasks {
            if let Ok(Ok(latency)) = task.await {
                latencies.push(latency);
            }
        }
    }
    let wall = started.elapsed();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(ChannelBench {
        handshakes_ok: latencies.len(),
        reconnect_wall: wall,
        handshake_p50: at(0.5),
        handshake_p99: at(0.99),
        ..ChannelBench::default()
    })
}

impl ChannelBench {
    /// TLS throughput as a share of plaintext (target: at least 0.90),
    /// the median of the rounds' paired ratios.
    pub fn ratio(&self) -> f64 {
        self.paired_ratio
    }

    pub fn render(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "{HEADING}\n");
        let _ = writeln!(
            t,
            "One client publishing {} events ({BATCH_EVENTS}-event zstd batches, acks awaited) to an in-process collector on loopback, {} rounds alternated; medians:\n",
            self.events, self.rounds
        );
        let _ = writeln!(t, "| channel | events/s |");
        let _ = writeln!(t, "| --- | --- |");
        let _ = writeln!(t, "| plaintext | {:.0} |", self.plain_eps);
        let _ = writeln!(t, "| mutual TLS | {:.0} |", self.tls_eps);
        let _ = writeln!(
            t,
            "\nTLS / plaintext, median of the rounds' paired ratios: **{:.3}** (target at least 0.90).\n",
            self.ratio()
        );
        let _ = writeln!(
            t,
            "{} sensors, each its own certificate, reconnecting {RECONNECT_CONCURRENCY} at a time (TLS 1.3 handshake with client certificate, then one batch and its ack): {} of {} succeeded in {:.2} s ({:.0} handshakes/s); per sensor p50 {:.1} ms, p99 {:.1} ms.",
            self.sensors,
            self.handshakes_ok,
            self.sensors,
            self.reconnect_wall.as_secs_f64(),
            self.handshakes_ok as f64 / self.reconnect_wall.as_secs_f64(),
            self.handshake_p50.as_secs_f64() * 1e3,
            self.handshake_p99.as_secs_f64() * 1e3,
        );
        t
    }
}
