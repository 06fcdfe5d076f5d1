//! Limits and tunables of the collector.

use std::time::Duration;

use crate::CollectorError;

/// Default cap on one batch's compressed payload: large enough for a busy
/// kiosk's flush interval, small enough that one sensor cannot hog memory.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Default cap on one batch's payload after decompression (zip-bomb guard).
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 16 * 1024 * 1024;

/// Default cap on events in one batch (a sensor seals at 256 by default).
pub const DEFAULT_MAX_EVENTS_PER_BATCH: usize = 65_536;

/// Default cap on one event's encoded size: bounds every string in it.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 256 * 1024;

/// Room for the `SensorBatch` fields around the payload (host identity,
/// labels, counters) when sizing the gRPC decoding limit.
pub const GRPC_ENVELOPE_HEADROOM: usize = 64 * 1024;

/// Largest `SubscribeRequest` accepted: filters are short lists of names.
pub const MAX_SUBSCRIBE_REQUEST_BYTES: usize = 1024 * 1024;

/// Everything the collector needs to know before it starts serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorConfig {
    /// Largest accepted `SensorBatch.payload`, in bytes, as received.
    pub max_batch_bytes: usize,
    /// Largest accepted payload after decompression, in bytes.
    pub max_decompressed_bytes: usize,
    /// Most events in one batch.
    pub max_events_per_batch: usize,
    /// Largest encoded event, in bytes (bounds every string in it).
    pub max_event_bytes: usize,
    /// A host silent this long may be evicted from a full host table to
    /// make room for a new one.
    pub host_idle_evict: Duration,
    /// Items buffered per subscriber before a slow one starts losing items
    /// (it is then told how many with `subscriber_lagged`).
    pub subscriber_buffer: usize,
    /// Hosts tracked at most. Anyone who can reach the port can invent
    /// host ids, so the table is bounded; batches from further hosts are
    /// refused with RESOURCE_EXHAUSTED.
    pub max_hosts: usize,
    /// Large payloads decoded at the same time at most, which bounds the
    /// memory spent on decompression to about this many times
    /// `max_decompressed_bytes`.
    pub max_concurrent_decodes: usize,
    /// How often per-host counters are logged; `None` turns that off.
    pub stats_log_interval: Option<Duration>,
    /// How long open streams get to finish once shutdown was asked for.
    pub shutdown_grace: Duration,
    /// Who may use the analyst API (isolate, release, hosts); empty: nobody.
    pub operators: Vec<crate::auth::Operator>,
    /// Where the operators came from, re-read at [`crate::Collector::reload_trust`].
    pub operators_file: Option<std::path::PathBuf>,
    /// The collector's certificate, key and the CA that sensors' client
    /// certificates must chain to. `None` serves plaintext, which is
    /// refused on any address but loopback.
    pub tls: Option<pki::tls::ServerFiles>,
    /// Serials of revoked certificates (`pki revoke`), polled for changes.
    pub deny_list: Option<std::path::PathBuf>,
    /// The hash-chained audit log of analyst actions (crate `audit`);
    /// `None` records nothing (embedded collectors in tests). The
    /// `rxsentry-collector` binary always has one.
    pub audit: Option<audit::AuditConfig>,
    /// The durable store (docs/store.md). With one, a batch is acked only
    /// once committed there; `None` keeps nothing (embedded collectors in
    /// tests). The `rxsentry-collector` binary always has one.
    pub store: Option<crate::store::StoreConfig>,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
            max_events_per_batch: DEFAULT_MAX_EVENTS_PER_BATCH,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            host_idle_evict: Duration::from_secs(24 * 3600),
            subscriber_buffer: 8192,
            max_hosts: 65_536,
            max_concurrent_decodes: 4,
            stats_log_interval: Some(Duration::from_secs(60)),
            shutdown_grace: Duration::from_secs(5),
            operators: Vec::new(),
            operators_file: None,
            tls: None,
            deny_list: None,
            audit: None,
            store: None,
        }
    }
}

impl CollectorConfig {
    /// Refuses settings the server cannot work with, before it binds anything.
    pub fn validate(&self) -> Result<(), CollectorError> {
        let bad = |what: &str| Err(CollectorError::InvalidConfig(what.to_owned()));
        if self.max_batch_bytes == 0 {
            return bad("max_batch_bytes must be at least 1");
        }
        if self.max_decompressed_bytes == 0 {
            return bad("max_decompressed_bytes must be at least 1");
        }
        if self.max_events_per_batch == 0 || self.max_event_bytes == 0 {
            return bad("max_events_per_batch and max_event_bytes must be at least 1");
        }
        if self.subscriber_buffer == 0 {
            return bad("subscriber_buffer must be at least 1");
        }
        if self.max_hosts == 0 {
            return bad("max_hosts must be at least 1");
        }
        if self.max_concurrent_decodes == 0 {
            return bad("max_concurrent_decodes must be at least 1");
        }
        if self.max_batch_bytes > usize::MAX - GRPC_ENVELOPE_HEADROOM {
            return bad("max_batch_bytes is too large");
        }
        if self.stats_log_interval.is_some_and(|d| d.is_zero()) {
            return bad("stats_log_interval must not be zero");
        }
        if let Some(store) = &self.store {
            if store.silent_after.is_zero() || store.retention_interval.is_zero() {
                return bad("store silent_after and retention_interval must not be zero");
            }
            if store.max_age.is_some_and(|d| d.is_zero()) || store.max_bytes == Some(0) {
                return bad("store max_age and max_bytes must not be zero");
            }
        }
        if self.audit.as_ref().is_some_and(|a| a.max_file_bytes == 0) {
            return bad("audit max_file_bytes must be at least 1");
        }
        Ok(())
    }

    /// gRPC-level cap on one incoming `SensorBatch` message: the payload
    /// limit plus headroom, so that tonic refuses absurd messages before
    /// buffering them while a slightly-too-large payload still gets the
    /// collector's own, more precise, message.
    pub fn max_grpc_message_bytes(&self) -> usize {
        self.max_batch_bytes + GRPC_ENVELOPE_HEADROOM
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert!(CollectorConfig::default().validate().is_ok());
    }

    #[test]
    fn zero_limits_are_refused() {
        let cfg = CollectorConfig {
            max_batch_bytes: 0,
            ..CollectorConfig::default()
        };
        assert!(cfg.validate().is_err());
        let cfg = CollectorConfig {
            max_decompressed_bytes: 0,
            ..CollectorConfig::default()
        };
        assert!(cfg.validate().is_err());
        let cfg = CollectorConfig {
            stats_log_interval: Some(Duration::ZERO),
            ..CollectorConfig::default()
        };
        assert!(cfg.validate().is_err());
    }
}
