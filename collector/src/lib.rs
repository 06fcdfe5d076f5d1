//! rxsentry collector: receives sensor telemetry over gRPC, checks every
//! batch (limits, zstd bombs, sequence continuity) and streams the events
//! and host records to live subscribers.
//!
//! Entry points: [`serve`] for a one-shot server, or [`Collector`] when the
//! caller also wants [`Collector::stats`] while it runs.

pub mod auth;
pub mod config;
pub mod control;
pub mod fanout;
pub mod hosts;
pub mod ingest;
pub mod metrics;
pub mod sequence;
mod server;
pub mod store;
pub mod testkit;
pub mod tls_listener;
pub mod trail;
pub mod trust;

use std::future::Future;

pub use config::CollectorConfig;
pub use hosts::HostStats;
pub use server::{Collector, CollectorStats, MAX_PENDING_BYTES_PER_STREAM};

/// Why the collector could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("listen socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(
        "{0} is not a loopback address: plaintext is refused off loopback (give the collector its TLS files)"
    )]
    PlaintextOffLoopback(std::net::SocketAddr),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Serves on `listener` with `config` until `shutdown` completes.
pub async fn serve(
    config: CollectorConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CollectorError> {
    Collector::new(config)?.serve(listener, shutdown).await
}
