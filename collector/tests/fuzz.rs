//! Property tests of the collector's hostile-input paths: whatever bytes or
//! fields arrive, the batch decoder returns a result (never panics, never
//! allocates past its limits), and a control stream fed arbitrary messages
//! leaves the collector serving. Bounded: PROPTEST_CASES (default 256 here;
//! `cargo xtask fuzz --cases N` runs longer).

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use collector::ingest::{IngestLimits, decode_batch};
use collector::testkit;
use common::{TestCollector, VIEWER_TOKEN};
use proptest::prelude::*;
use prost::Message;
use proto::control::v1::{
    ListHostsRequest, SensorMessage, analyst_api_client::AnalystApiClient,
    sensor_control_client::SensorControlClient,
};
use proto::telemetry::v1::SensorBatch;

const LIMITS: IngestLimits = IngestLimits {
    max_batch_bytes: 64 * 1024,
    max_decompressed_bytes: 256 * 1024,
    max_events_per_batch: 1024,
    max_event_bytes: 16 * 1024,
};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(256),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Raw bytes as a whole `SensorBatch` message, then through the checks.
    #[test]
    fn any_bytes_as_a_batch_are_refused_or_decoded(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(batch) = SensorBatch::decode(bytes.as_slice()) {
            let _ = decode_batch(&batch, &LIMITS);
        }
    }

    /// A well-formed envelope around a hostile payload and counters.
    #[test]
    fn hostile_payloads_and_headers_never_panic(
        payload in prop::collection::vec(any::<u8>(), 0..8192),
        compression in -1i32..4,
        event_count in any::<u32>(),
        uncompressed_size in any::<u32>(),
        sequence in any::<u64>(),
        zstd_magic in any::<bool>(),
    ) {
        let mut payload = payload;
        if zstd_magic {
            // Past the magic number, into the frame header parser.
            let mut framed = vec![0x28, 0xb5, 0x2f, 0xfd];
            framed.extend(payload);
            payload = framed;
        }
        let batch = SensorBatch {
            host: Some(testkit::host("kiosk-f", "i1")),
            sequence,
            compression,
            payload,
            event_count,
            uncompressed_size,
            ..Default::default()
        };
        let _ = decode_batch(&batch, &LIMITS);
    }

    /// A valid batch whose events were re-encoded with flipped bytes.
    #[test]
    fn corrupted_event_encodings_are_refused_cleanly(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..16)) {
        let events = (0..8).map(|i| testkit::exec_event(100 + i, "sh", "/bin/sh", &["sh", "-c", "x"])).collect();
        let mut batch = testkit::plain_batch(&testkit::host("kiosk-f", "i1"), 1, events);
        let len = batch.payload.len();
        for (at, xor) in flips {
            batch.payload[at % len] ^= xor;
        }
        let _ = decode_batch(&batch, &LIMITS);
    }
}

/// Arbitrary control messages on a live stream: the collector keeps
/// serving (ListHosts answers) whatever a sensor sends.
#[test]
fn arbitrary_control_messages_leave_the_collector_serving() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = rt.block_on(TestCollector::start_default());
    let url = c.url.clone();
    let cases = config().cases.min(64);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &prop::collection::vec(prop::collection::vec(any::<u8>(), 0..512), 1..8),
            |messages| {
                rt.block_on(async {
                    let decoded: Vec<SensorMessage> = messages
                        .iter()
                        .filter_map(|m| SensorMessage::decode(m.as_slice()).ok())
                        .collect();
                    let mut client = SensorControlClient::connect(url.clone()).await.unwrap();
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        client.open(tokio_stream::iter(decoded)),
                    )
                    .await;
                    let mut api = AnalystApiClient::connect(url.clone()).await.unwrap();
                    let mut req = tonic::Request::new(ListHostsRequest {});
                    req.metadata_mut().insert(
                        "authorization",
                        format!("Bearer {VIEWER_TOKEN}").parse().unwrap(),
                    );
                    api.list_hosts(req).await.unwrap();
                });
                Ok(())
            },
        )
        .unwrap();
    rt.block_on(c.shutdown()).unwrap();
}
