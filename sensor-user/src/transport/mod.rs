//! Telemetry out of the sensor: drop accounting, batching (prost + zstd)
//! and the gRPC uploader.

pub mod batcher;
pub mod drops;
pub mod link;
pub mod uploader;

pub use batcher::{Accumulator, EncodedEvents, Frame, SealError, Sealer};
pub use drops::DropTracker;
pub use link::{CollectorLink, LinkError};
pub use uploader::{
    UploadQueue, UploadReport, Uploader, UploaderError, UploaderSettings, UploaderStats,
};
