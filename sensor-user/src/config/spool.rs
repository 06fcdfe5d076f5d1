//! `[spool]`: where sealed batches wait on disk for the collector's ack.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, check_absolute, in_range, invalid};

/// `[spool]` of the sensor config (docs/durability.md).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Off: batches wait in memory only (lost, and counted, on a crash or
    /// when the queue overflows).
    pub enabled: bool,
    pub dir: PathBuf,
    /// Bound of the spool on disk; the oldest batches go first.
    pub max_bytes: u64,
    /// A segment file is closed at this size and a new one started.
    pub segment_bytes: u64,
    pub fsync: SpoolFsync,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("/var/lib/rxsentry/spool"),
            max_bytes: 256 << 20,
            segment_bytes: 4 << 20,
            fsync: SpoolFsync::Batch,
        }
    }
}

/// `spool.fsync`: when an appended batch is made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolFsync {
    /// fdatasync after every sealed batch, before it may be sent.
    #[default]
    Batch,
    /// Never asked for: the kernel writes back in its own time.
    None,
}

impl SpoolConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_absolute("spool.dir", &self.dir)?;
        in_range("spool.max_bytes", self.max_bytes, 256 << 10, 64 << 30)?;
        // At least four segments fit: dropping one when full frees a
        // quarter at most, and the active segment is never the one dropped.
        in_range(
            "spool.segment_bytes",
            self.segment_bytes,
            16 << 10,
            self.max_bytes / 4,
        )
        .map_err(|_| {
            invalid(
                "spool.segment_bytes",
                format!(
                    "must be between 16384 and a quarter of spool.max_bytes ({}), got {}",
                    self.max_bytes / 4,
                    self.segment_bytes
                ),
            )
        })
    }
}
