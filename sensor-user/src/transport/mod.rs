//! Telemetry out of the sensor: drop accounting, batching (prost + zstd)
//! and the gRPC uploader.

pub mod batcher;
pub mod drops;
pub mod link;
pub mod spool;
pub mod uploader;

pub use batcher::{Accumulator, EncodedEvents, Frame, SealError, Sealed, Sealer};
pub use drops::{DropTracker, SpoolLosses};
pub use link::{CollectorLink, LinkError};
pub use spool::{Spool, SpoolError, SpoolSettings};
pub use uploader::{
    UploadQueue, UploadReport, Uploader, UploaderError, UploaderSettings, UploaderStats,
};
