//! Losses in the kernel are counted and reach the SOC: with a one-page ring
//! buffer and a burst of execs, every exec either arrives or is counted as
//! a lost EXEC (`kernel_exec_ringbuf_full`), not merely as some loss on the
//! ring, whose forks and exits are lost in the same burst.

use std::time::Duration;

use proto::telemetry::v1::SubscribeRequest;
use tests::{Collector, Sensor, SensorOptions, Subscription, marker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_ring_buffer_drops_are_counted_and_reported() -> anyhow::Result<()> {
    const BURST: usize = 400;
    let collector = Collector::start().await?;
    let mut sub = Subscription::open(&collector.url(), SubscribeRequest::default()).await?;
    let options = SensorOptions {
        extra_config: "[kernel]\nprocess_ringbuf_bytes = 4096\n[batching]\nmax_events = 64\nmax_delay_ms = 100\n"
            .to_owned(),
    };
    let sensor = Sensor::start(&collector, options).await?;

    let marker = marker("burst");
    // Many children at once so the kernel fills the ring faster than the
    // daemon can drain it.
    let mut children = Vec::with_capacity(BURST);
    for _ in 0..BURST {
        children.push(
            std::process::Command::new("/bin/true")
                .arg(&marker)
                .spawn()?,
        );
    }
    for mut c in children {
        c.wait()?;
    }

    sub.until(Duration::from_secs(30), |s| s.max_exec_drops() > 0)
        .await?;
    // Drop counters travel in batches: keep a little unmarked activity going
    // so batches (with the latest counters) keep flowing, until every exec
    // is accounted for or 20 s pass.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (mut seen, mut dropped);
    loop {
        let _ = sub.until(Duration::from_millis(300), |_| false).await;
        seen = sub.execs_with(&marker).len();
        dropped = sub.max_exec_drops();
        if seen as u64 + dropped >= BURST as u64 || std::time::Instant::now() > deadline {
            break;
        }
        std::process::Command::new("/bin/true").status()?;
    }
    assert!(
        seen < BURST,
        "a one-page ring cannot hold a burst of {BURST} execs (saw {seen})"
    );
    assert!(
        seen as u64 + dropped >= BURST as u64,
        "every exec arrived or was counted as a lost exec: seen {seen} + exec drops {dropped} < {BURST}"
    );
    // Lost execs are a part of the ring's losses, which also hold the
    // burst's forks and exits: the exec count alone is the smaller.
    let all = sub.max_kernel_drops();
    assert!(
        dropped <= all,
        "exec drops {dropped} within all drops {all}"
    );
    sensor.stop().await?;
    Ok(())
}
