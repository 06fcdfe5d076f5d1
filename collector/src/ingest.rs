//! Checks one `SensorBatch` and turns its payload into an `EventBatch`.
//!
//! Everything here treats the batch as hostile: sizes are checked before
//! anything is allocated, zstd output is capped while it is produced, and
//! every failure is an [`IngestError`] that maps to a gRPC status.

use std::io::Read;

use prost::Message;
use proto::telemetry::v1::{Compression, EventBatch, SensorBatch};
use tonic::{Code, Status};

use crate::config::CollectorConfig;

/// Why a batch was refused. Each one ends the sensor's stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    #[error("batch has no host identity")]
    MissingHost,
    #[error("host.host_id is empty")]
    EmptyHostId,
    #[error("host.sensor_instance_id is empty")]
    EmptyInstanceId,
    #[error("sequence must start at 1, got 0")]
    ZeroSequence,
    #[error("compression is COMPRESSION_UNSPECIFIED; send COMPRESSION_ZSTD or COMPRESSION_NONE")]
    UnspecifiedCompression,
    #[error("unknown compression value {0}")]
    UnknownCompression(i32),
    #[error("payload is {size} bytes, more than the limit of {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("payload decompresses to {declared} bytes, more than the limit of {limit} bytes")]
    DecompressedTooLarge { declared: u64, limit: usize },
    #[error("payload decompresses to more than the limit of {limit} bytes")]
    DecompressionOverLimit { limit: usize },
    #[error("zstd frame needs a window larger than 2^{window_log} bytes")]
    WindowTooLarge { window_log: u32 },
    #[error("payload is not valid zstd: {0}")]
    Zstd(String),
    #[error("payload is not a valid EventBatch: {0}")]
    Decode(String),
    #[error("uncompressed_size says {declared} bytes but the payload decompressed to {actual}")]
    SizeMismatch { declared: u64, actual: usize },
    #[error("event_count says {declared} events but the payload holds {actual}")]
    CountMismatch { declared: u32, actual: usize },
    #[error(
        "the collector is full: it tracks its limit of {limit} hosts and none has been idle long enough to evict; retry later"
    )]
    TooManyHosts { limit: usize },
    #[error(
        "sequence {sequence} skips {unexplained} batches past the last accepted ({last}) that the \
         sensor does not report lost (at most {max} may be)"
    )]
    SequenceJump {
        sequence: u64,
        last: u64,
        unexplained: u64,
        max: u64,
    },
    #[error("the batch holds {count} events, more than the limit of {limit}")]
    TooManyEvents { count: usize, limit: usize },
    #[error("event {index} is {size} bytes encoded, more than the limit of {limit} bytes")]
    EventTooLarge {
        index: usize,
        size: usize,
        limit: usize,
    },
}

impl IngestError {
    /// RESOURCE_EXHAUSTED for limits, INVALID_ARGUMENT for malformed input:
    /// a sensor can tell "send smaller batches" from "you are broken".
    pub fn code(&self) -> Code {
        match self {
            Self::PayloadTooLarge { .. }
            | Self::DecompressedTooLarge { .. }
            | Self::DecompressionOverLimit { .. }
            | Self::WindowTooLarge { .. }
            | Self::TooManyEvents { .. }
            | Self::EventTooLarge { .. } => Code::ResourceExhausted,
            // "Collector full" is the collector's state, not the batch's
            // fault: UNAVAILABLE, which the sensor retries (keeping it).
            Self::TooManyHosts { .. } => Code::Unavailable,
            _ => Code::InvalidArgument,
        }
    }

    /// A status naming the batch, so the sensor's log says which one failed.
    pub fn to_status(&self, host_id: &str, sequence: u64) -> Status {
        let who = if host_id.is_empty() {
            format!("batch {sequence}")
        } else {
            format!("batch {sequence} from host {host_id:?}")
        };
        Status::new(self.code(), format!("{who} refused: {self}"))
    }
}

/// The limits that apply to one batch, taken from [`CollectorConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestLimits {
    pub max_batch_bytes: usize,
    pub max_decompressed_bytes: usize,
    pub max_events_per_batch: usize,
    /// Cap on one event's encoded size, which bounds every string in it
    /// (argv, paths, DNS names) whatever the field.
    pub max_event_bytes: usize,
}

impl From<&CollectorConfig> for IngestLimits {
    fn from(cfg: &CollectorConfig) -> Self {
        Self {
            max_batch_bytes: cfg.max_batch_bytes,
            max_decompressed_bytes: cfg.max_decompressed_bytes,
            max_events_per_batch: cfg.max_events_per_batch,
            max_event_bytes: cfg.max_event_bytes,
        }
    }
}

/// The cheap checks, done before touching the payload.
pub fn check_header(batch: &SensorBatch, limits: &IngestLimits) -> Result<(), IngestError> {
    let host = batch.host.as_ref().ok_or(IngestError::MissingHost)?;
    if host.host_id.is_empty() {
        return Err(IngestError::EmptyHostId);
    }
    if host.sensor_instance_id.is_empty() {
        return Err(IngestError::EmptyInstanceId);
    }
    if batch.sequence == 0 {
        return Err(IngestError::ZeroSequence);
    }
    compression(batch)?;
    if batch.payload.len() > limits.max_batch_bytes {
        return Err(IngestError::PayloadTooLarge {
            size: batch.payload.len(),
            limit: limits.max_batch_bytes,
        });
    }
    if u64::from(batch.uncompressed_size) > limits.max_decompressed_bytes as u64 {
        return Err(IngestError::DecompressedTooLarge {
            declared: batch.uncompressed_size.into(),
            limit: limits.max_decompressed_bytes,
        });
    }
    Ok(())
}

/// Runs every check and returns the decoded events. CPU-bound: call it off
/// the async executor for large payloads.
pub fn decode_batch(batch: &SensorBatch, limits: &IngestLimits) -> Result<EventBatch, IngestError> {
    check_header(batch, limits)?;
    let decoded = match compression(batch)? {
        Compression::Zstd => {
            let raw = decompress_zstd(&batch.payload, limits.max_decompressed_bytes)?;
            check_uncompressed_size(batch, raw.len())?;
            EventBatch::decode(raw.as_slice())
        }
        // Payload is already within max_batch_bytes; the decompressed limit
        // still applies so the two limits mean the same for both encodings.
        _ => {
            if batch.payload.len() > limits.max_decompressed_bytes {
                return Err(IngestError::DecompressionOverLimit {
                    limit: limits.max_decompressed_bytes,
                });
            }
            check_uncompressed_size(batch, batch.payload.len())?;
            EventBatch::decode(batch.payload.as_slice())
        }
    }
    .map_err(|e| IngestError::Decode(e.to_string()))?;
    if decoded.events.len() > limits.max_events_per_batch {
        return Err(IngestError::TooManyEvents {
            count: decoded.events.len(),
            limit: limits.max_events_per_batch,
        });
    }
    if let Some((index, size)) = decoded
        .events
        .iter()
        .map(Message::encoded_len)
        .enumerate()
        .find(|&(_, size)| size > limits.max_event_bytes)
    {
        return Err(IngestError::EventTooLarge {
            index,
            size,
            limit: limits.max_event_bytes,
        });
    }
    if decoded.events.len() != batch.event_count as usize {
        return Err(IngestError::CountMismatch {
            declared: batch.event_count,
            actual: decoded.events.len(),
        });
    }
    Ok(decoded)
}

fn compression(batch: &SensorBatch) -> Result<Compression, IngestError> {
    match Compression::try_from(batch.compression) {
        Ok(Compression::Unspecified) => Err(IngestError::UnspecifiedCompression),
        Ok(c) => Ok(c),
        Err(_) => Err(IngestError::UnknownCompression(batch.compression)),
    }
}

/// `uncompressed_size` is optional (0 = not said); when said it must be
/// right, since a wrong one means the sensor and collector disagree.
fn check_uncompressed_size(batch: &SensorBatch, actual: usize) -> Result<(), IngestError> {
    let declared = u64::from(batch.uncompressed_size);
    if declared != 0 && declared != actual as u64 {
        return Err(IngestError::SizeMismatch { declared, actual });
    }
    Ok(())
}

/// Decompresses at most `limit` bytes. A frame that says it is larger is
/// refused from its header; one that lies (or does not say) is cut off after
/// `limit + 1` bytes, so a bomb never gets its full size allocated. The
/// window size is capped too, so a crafted header cannot make the decoder
/// reserve a huge window.
pub fn decompress_zstd(payload: &[u8], limit: usize) -> Result<Vec<u8>, IngestError> {
    if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(payload)
        && declared > limit as u64
    {
        return Err(IngestError::DecompressedTooLarge { declared, limit });
    }
    let window_log = window_log_for(limit);
    let zstd_err = |e: std::io::Error| {
        let msg = e.to_string();
        // ZSTD_error_frameParameter_windowTooLarge has no code in io::Error.
        if msg.contains("too much memory") {
            IngestError::WindowTooLarge { window_log }
        } else {
            IngestError::Zstd(msg)
        }
    };
    let mut decoder = zstd::stream::read::Decoder::with_buffer(payload).map_err(zstd_err)?;
    decoder.window_log_max(window_log).map_err(zstd_err)?;
    let mut out = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(zstd_err)?;
    if out.len() > limit {
        return Err(IngestError::DecompressionOverLimit { limit });
    }
    Ok(out)
}

/// Largest zstd window accepted: enough for `limit` bytes, never less than
/// 8 MiB (what every standard level up to 19 may use in streaming mode,
/// whatever the content size) and never more than 128 MiB (libzstd's own
/// default maximum).
fn window_log_for(limit: usize) -> u32 {
    let needed = usize::BITS - limit.saturating_sub(1).leading_zeros();
    needed.clamp(23, 27)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    fn limits() -> IngestLimits {
        IngestLimits {
            max_batch_bytes: 1024 * 1024,
            max_decompressed_bytes: 4 * 1024 * 1024,
            max_events_per_batch: 100,
            max_event_bytes: 4096,
        }
    }

    #[test]
    fn too_many_or_too_large_events_are_refused() {
        let host = testkit::host("store-1", "inst-a");
        let many = (0..101)
            .map(|i| testkit::fork_event(10 + i, 1, "sh"))
            .collect();
        let err = decode_batch(&testkit::zstd_batch(&host, 1, many), &limits()).unwrap_err();
        assert!(
            matches!(err, IngestError::TooManyEvents { count: 101, .. }),
            "{err}"
        );
        let long = "A".repeat(5000);
        let big = vec![testkit::exec_event(10, "sh", "/bin/sh", &["sh", &long])];
        let err = decode_batch(&testkit::zstd_batch(&host, 1, big), &limits()).unwrap_err();
        assert!(
            matches!(err, IngestError::EventTooLarge { index: 0, .. }),
            "{err}"
        );
        assert_eq!(err.code(), Code::ResourceExhausted);
    }

    fn valid() -> SensorBatch {
        let host = testkit::host("store-1", "inst-a");
        testkit::zstd_batch(&host, 1, vec![testkit::fork_event(10, 1, "sh")])
    }

    #[test]
    fn valid_zstd_batch_decodes() {
        let batch = decode_batch(&valid(), &limits()).unwrap();
        assert_eq!(batch.events.len(), 1);
    }

    #[test]
    fn uncompressed_batch_decodes() {
        let host = testkit::host("store-1", "inst-a");
        let events = vec![
            testkit::fork_event(10, 1, "sh"),
            testkit::fork_event(11, 1, "sh"),
        ];
        let batch = testkit::plain_batch(&host, 3, events);
        assert_eq!(decode_batch(&batch, &limits()).unwrap().events.len(), 2);
    }

    #[test]
    fn header_problems_are_refused() {
        let mut b = valid();
        b.host = None;
        assert_eq!(decode_batch(&b, &limits()), Err(IngestError::MissingHost));

        let mut b = valid();
        b.host.as_mut().unwrap().host_id.clear();
        assert_eq!(decode_batch(&b, &limits()), Err(IngestError::EmptyHostId));

        let mut b = valid();
        b.host.as_mut().unwrap().sensor_instance_id.clear();
        assert_eq!(
            decode_batch(&b, &limits()),
            Err(IngestError::EmptyInstanceId)
        );

        let mut b = valid();
        b.sequence = 0;
        assert_eq!(decode_batch(&b, &limits()), Err(IngestError::ZeroSequence));

        let mut b = valid();
        b.compression = Compression::Unspecified as i32;
        assert_eq!(
            decode_batch(&b, &limits()),
            Err(IngestError::UnspecifiedCompression)
        );

        let mut b = valid();
        b.compression = 99;
        assert_eq!(
            decode_batch(&b, &limits()),
            Err(IngestError::UnknownCompression(99))
        );
    }

    #[test]
    fn oversized_payload_is_resource_exhausted() {
        let mut b = valid();
        b.payload = vec![0; limits().max_batch_bytes + 1];
        let err = decode_batch(&b, &limits()).unwrap_err();
        assert!(matches!(err, IngestError::PayloadTooLarge { .. }));
        assert_eq!(err.code(), Code::ResourceExhausted);
    }

    #[test]
    fn zstd_bomb_without_size_header_is_cut_off() {
        // Streaming encoder: the frame does not declare its content size.
        let zeros = vec![0u8; 8 * 1024 * 1024];
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
        let bomb = enc.finish().unwrap();
        let err = decompress_zstd(&bomb, 1024 * 1024).unwrap_err();
        assert_eq!(
            err,
            IngestError::DecompressionOverLimit { limit: 1024 * 1024 }
        );
        assert_eq!(err.code(), Code::ResourceExhausted);
    }

    #[test]
    fn zstd_bomb_with_size_header_is_refused_from_header() {
        let bomb = zstd::bulk::compress(&vec![0u8; 8 * 1024 * 1024], 3).unwrap();
        let err = decompress_zstd(&bomb, 1024 * 1024).unwrap_err();
        assert_eq!(
            err,
            IngestError::DecompressedTooLarge {
                declared: 8 * 1024 * 1024,
                limit: 1024 * 1024
            }
        );
    }

    #[test]
    fn streaming_level_19_under_a_small_limit_is_accepted() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
        enc.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut enc, &data).unwrap();
        let z = enc.finish().unwrap();
        assert_eq!(decompress_zstd(&z, 1024 * 1024).unwrap(), data);
    }

    #[test]
    fn huge_window_is_resource_exhausted() {
        // Long-distance mode with a 2^28 window, far above what 16 MiB needs.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        enc.long_distance_matching(true).unwrap();
        enc.window_log(28).unwrap();
        std::io::Write::write_all(&mut enc, b"tiny").unwrap();
        let z = enc.finish().unwrap();
        let err = decompress_zstd(&z, 16 * 1024 * 1024).unwrap_err();
        assert_eq!(err, IngestError::WindowTooLarge { window_log: 24 });
        assert_eq!(err.code(), Code::ResourceExhausted);
    }

    #[test]
    fn exact_limit_is_accepted() {
        let data = vec![7u8; 4096];
        let z = zstd::bulk::compress(&data, 1).unwrap();
        assert_eq!(decompress_zstd(&z, 4096).unwrap(), data);
    }

    #[test]
    fn garbage_is_invalid_argument() {
        let mut b = valid();
        b.payload = b"definitely not zstd".to_vec();
        let err = decode_batch(&b, &limits()).unwrap_err();
        assert!(matches!(err, IngestError::Zstd(_)), "{err:?}");
        assert_eq!(err.code(), Code::InvalidArgument);

        // Valid zstd around bytes that are not an EventBatch.
        let mut b = valid();
        b.payload = zstd::bulk::compress(&[0xff, 0xff, 0xff, 0xff], 1).unwrap();
        b.uncompressed_size = 0;
        let err = decode_batch(&b, &limits()).unwrap_err();
        assert!(matches!(err, IngestError::Decode(_)), "{err:?}");
    }

    #[test]
    fn count_and_size_mismatch_are_refused() {
        let mut b = valid();
        b.event_count = 2;
        assert_eq!(
            decode_batch(&b, &limits()),
            Err(IngestError::CountMismatch {
                declared: 2,
                actual: 1
            })
        );
        let mut b = valid();
        b.uncompressed_size += 1;
        assert!(matches!(
            decode_batch(&b, &limits()),
            Err(IngestError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn status_names_the_batch() {
        let st = IngestError::ZeroSequence.to_status("store-9", 0);
        assert_eq!(st.code(), Code::InvalidArgument);
        assert!(st.message().contains("store-9"), "{}", st.message());
    }

    #[test]
    fn window_log_covers_limit() {
        assert_eq!(window_log_for(16 * 1024 * 1024), 24);
        assert_eq!(window_log_for(16 * 1024 * 1024 + 1), 25);
        assert_eq!(window_log_for(1), 23);
        assert_eq!(window_log_for(usize::MAX), 27);
    }
}
