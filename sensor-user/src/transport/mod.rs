//! Telemetry out of the sensor: drop accounting, batching (prost + zstd)
//! and the gRPC uploader.

pub mod batcher;
pub mod drops;
pub mod uploader;

pub use batcher::{Accumulator, EncodedEvents, Frame, SealError, Sealer};
pub use drops::DropTracker;
pub use uploader::{
    UploadQueue, UploadReport, Uploader, UploaderError, UploaderSettings, UploaderStats,
};

/// CLOCK_BOOTTIME in ns: the clock of kernel event timestamps, so batch and
/// event times compare directly. 0 if the clock cannot be read.
pub fn boottime_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|ts| {
            (ts.tv_sec() as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(ts.tv_nsec() as u64)
        })
        .unwrap_or(0)
}
