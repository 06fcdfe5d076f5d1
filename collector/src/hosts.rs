//! What the collector knows about each host: sequence continuity, counters
//! and the last drop counters, and which records a new batch produces.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use proto::telemetry::v1::{
    DropCounters, HostIdentity, HostRecord, SequenceRecord, host_record, sequence_record,
};

use crate::ingest::IngestError;
use crate::sequence::{Continuity, Observation, SequenceChecker};

/// Counters of one host, as returned by [`crate::Collector::stats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostStats {
    pub hostname: String,
    pub sensor_instance_id: String,
    pub sensor_version: String,
    /// New batches accepted and delivered (duplicates not included).
    pub batches: u64,
    /// Events in those batches.
    pub events: u64,
    /// Compressed payload bytes of every valid batch, duplicates included.
    pub bytes_received: u64,
    /// GAP records emitted.
    pub gaps: u64,
    /// Batches those gaps covered.
    pub missing_batches: u64,
    /// Batches that arrived again and were dropped.
    pub duplicates: u64,
    /// Sensor instance changes seen.
    pub restarts: u64,
    /// Highest sequence accepted from the current sensor instance.
    pub last_sequence: u64,
    pub last_seen: Option<SystemTime>,
    /// Latest drop counters of the current sensor instance.
    pub drops: DropCounters,
}

/// What to do with one valid batch after the host table has seen it.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    pub observation: Observation,
    /// Records for subscribers, in the order they happened.
    pub records: Vec<HostRecord>,
}

#[derive(Debug, Default)]
struct HostState {
    checker: SequenceChecker,
    stats: HostStats,
}

/// All hosts seen since the collector started (kept in memory only).
#[derive(Debug)]
pub struct HostTable {
    hosts: HashMap<String, HostState>,
    max_hosts: usize,
    idle_evict: std::time::Duration,
    evicted: u64,
}

/// The parts of a valid batch the host table needs.
#[derive(Debug, Clone, Copy)]
pub struct BatchMeta<'a> {
    pub host: &'a HostIdentity,
    pub sequence: u64,
    pub drops: Option<&'a DropCounters>,
    pub event_count: u64,
    pub payload_bytes: u64,
}

impl HostTable {
    /// An empty table that accepts at most `max_hosts` distinct host ids.
    pub fn new(max_hosts: usize) -> Self {
        Self::with_eviction(max_hosts, std::time::Duration::from_secs(24 * 3600))
    }

    /// A table that, when full, evicts the longest-silent host once it has
    /// been silent for `idle_evict` (a decommissioned kiosk, or an id an
    /// attacker made up) to make room for a new one.
    pub fn with_eviction(max_hosts: usize, idle_evict: std::time::Duration) -> Self {
        Self {
            hosts: HashMap::new(),
            max_hosts,
            idle_evict,
            evicted: 0,
        }
    }

    /// Hosts evicted for being idle while the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Makes room for one more host if the longest-silent one has been
    /// silent for `idle_evict`; false if none may go.
    fn evict_idle(&mut self, now: SystemTime) -> bool {
        let oldest = self
            .hosts
            .iter()
            .min_by_key(|(_, h)| h.stats.last_seen)
            .map(|(id, h)| (id.clone(), h.stats.last_seen));
        match oldest {
            Some((id, last_seen))
                if last_seen
                    .and_then(|t| now.duration_since(t).ok())
                    .is_none_or(|idle| idle >= self.idle_evict) =>
            {
                self.hosts.remove(&id);
                self.evicted += 1;
                tracing::info!(host_id = %id, "idle host evicted from the full host table");
                true
            }
            _ => false,
        }
    }

    /// Updates continuity and counters for one batch that passed the ingest
    /// checks, and returns the records to fan out. Fails only for a new
    /// host once the table is full.
    pub fn record_batch(
        &mut self,
        batch: BatchMeta<'_>,
        now: SystemTime,
    ) -> Result<BatchOutcome, IngestError> {
        let host = batch.host;
        self.admit(&host.host_id, now)?;
        let state = self.hosts.entry(host.host_id.clone()).or_default();
        let observation = state
            .checker
            .observe(&host.sensor_instance_id, batch.sequence);
        let last = state.checker.last_accepted();
        let records = count(&mut state.stats, batch, &observation, last, now);
        Ok(BatchOutcome {
            observation,
            records,
        })
    }

    /// Refuses a batch whose sequence jumps further ahead of the last one
    /// accepted from the same sensor instance than its drop counters explain
    /// ([`crate::sequence::unexplained_jump`]). A new instance is a restart,
    /// not a jump: it starts its own count.
    pub fn check_jump(
        &self,
        host: &HostIdentity,
        sequence: u64,
        drops: Option<&DropCounters>,
    ) -> Result<(), IngestError> {
        let Some(state) = self.hosts.get(&host.host_id) else {
            return Ok(());
        };
        let stats = &state.stats;
        if stats.sensor_instance_id != host.sensor_instance_id || stats.last_sequence == 0 {
            return Ok(());
        }
        match crate::sequence::unexplained_jump(
            stats.last_sequence,
            crate::sequence::batches_lost(Some(&stats.drops)),
            sequence,
            crate::sequence::batches_lost(drops),
        ) {
            None => Ok(()),
            Some(unexplained) => Err(IngestError::SequenceJump {
                sequence,
                last: stats.last_sequence,
                unexplained,
                max: crate::sequence::MAX_UNEXPLAINED_JUMP,
            }),
        }
    }

    /// Refuses a new host once the table is full (before a store keeps
    /// anything of its batch).
    pub fn admit(&mut self, host_id: &str, now: SystemTime) -> Result<(), IngestError> {
        if self.hosts.len() >= self.max_hosts
            && !self.hosts.contains_key(host_id)
            && !self.evict_idle(now)
        {
            return Err(IngestError::TooManyHosts {
                limit: self.max_hosts,
            });
        }
        Ok(())
    }

    /// Counts a batch the store already checked and recorded: the store's
    /// observation replaces this table's own checker.
    pub fn count_stored(
        &mut self,
        batch: BatchMeta<'_>,
        observation: &Observation,
        now: SystemTime,
    ) {
        let state = self.hosts.entry(batch.host.host_id.clone()).or_default();
        let last = if observation.is_new() {
            state.stats.last_sequence.max(batch.sequence)
        } else {
            state.stats.last_sequence
        };
        let last = if observation.restart.is_some() && observation.is_new() {
            batch.sequence
        } else {
            last
        };
        count(&mut state.stats, batch, observation, last, now);
    }

    /// A copy of every host's counters, keyed and sorted by host_id.
    pub fn snapshot(&self) -> BTreeMap<String, HostStats> {
        self.hosts
            .iter()
            .map(|(id, s)| (id.clone(), s.stats.clone()))
            .collect()
    }
}

/// The sequence records (restart, gap, duplicate, late) one batch's
/// observation makes, in the order they happened.
pub fn sequence_records(
    host: &HostIdentity,
    sequence: u64,
    observation: &Observation,
) -> Vec<HostRecord> {
    let record = |kind: sequence_record::Kind, first: u64, last: u64| HostRecord {
        host: Some(host.clone()),
        record: Some(host_record::Record::Sequence(SequenceRecord {
            kind: kind as i32,
            first,
            last,
        })),
        ..HostRecord::default()
    };
    let mut records = Vec::new();
    if observation.restart.is_some() {
        records.push(record(sequence_record::Kind::Restart, sequence, sequence));
    }
    match observation.continuity {
        Continuity::InOrder => {}
        Continuity::Gap { first, last } => {
            records.push(record(sequence_record::Kind::Gap, first, last));
        }
        Continuity::Duplicate => {
            records.push(record(sequence_record::Kind::Duplicate, sequence, sequence));
        }
        Continuity::Late => {
            records.push(record(sequence_record::Kind::Late, sequence, sequence));
        }
    }
    records
}

/// Updates one host's counters for a batch; returns its records (sequence
/// records, then a drops record when the counters changed).
fn count(
    stats: &mut HostStats,
    batch: BatchMeta<'_>,
    observation: &Observation,
    last_accepted: u64,
    now: SystemTime,
) -> Vec<HostRecord> {
    let host = batch.host;
    let mut records = sequence_records(host, batch.sequence, observation);
    if observation.restart.is_some() {
        stats.restarts += 1;
        // Drop counters are totals since sensor start: a new instance
        // starts from zero again.
        stats.drops = DropCounters::default();
    }
    match observation.continuity {
        Continuity::InOrder | Continuity::Late => {}
        Continuity::Gap { first, last } => {
            stats.gaps += 1;
            stats.missing_batches += last - first + 1;
        }
        Continuity::Duplicate => stats.duplicates += 1,
    }
    stats.bytes_received += batch.payload_bytes;
    stats.last_seen = Some(now);
    if observation.is_new() {
        stats.hostname.clone_from(&host.hostname);
        stats
            .sensor_instance_id
            .clone_from(&host.sensor_instance_id);
        stats.sensor_version.clone_from(&host.sensor_version);
        stats.batches += 1;
        stats.events += batch.event_count;
        stats.last_sequence = last_accepted;
        if let Some(drops) = batch.drops
            && *drops != stats.drops
        {
            stats.drops = *drops;
            records.push(HostRecord {
                host: Some(host.clone()),
                record: Some(host_record::Record::Drops(*drops)),
                ..HostRecord::default()
            });
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    fn meta<'a>(
        host: &'a HostIdentity,
        sequence: u64,
        drops: Option<&'a DropCounters>,
    ) -> BatchMeta<'a> {
        BatchMeta {
            host,
            sequence,
            drops,
            event_count: 2,
            payload_bytes: 100,
        }
    }

    fn kinds(outcome: &BatchOutcome) -> Vec<String> {
        outcome
            .records
            .iter()
            .map(|r| match &r.record {
                Some(host_record::Record::Sequence(s)) => {
                    format!("{}:{}-{}", s.kind().as_str_name(), s.first, s.last)
                }
                Some(host_record::Record::Drops(d)) => format!("drops:{}", d.kernel_ringbuf_full),
                Some(host_record::Record::Status(s)) => format!("status:{}", s.state),
                None => "none".into(),
            })
            .collect()
    }

    #[test]
    fn counters_follow_gaps_and_duplicates() {
        let mut t = HostTable::new(10);
        let h = testkit::host("store-7", "i1");
        let now = SystemTime::now();
        assert!(kinds(&t.record_batch(meta(&h, 1, None), now).unwrap()).is_empty());
        let gap = t.record_batch(meta(&h, 4, None), now).unwrap();
        assert_eq!(kinds(&gap), ["KIND_GAP:2-3"]);
        let dup = t.record_batch(meta(&h, 4, None), now).unwrap();
        assert_eq!(kinds(&dup), ["KIND_DUPLICATE:4-4"]);
        assert!(!dup.observation.is_new());

        let s = &t.snapshot()["store-7"];
        assert_eq!(s.batches, 2);
        assert_eq!(s.events, 4);
        assert_eq!(s.bytes_received, 300);
        assert_eq!((s.gaps, s.missing_batches, s.duplicates), (1, 2, 1));
        assert_eq!(s.last_sequence, 4);
        assert!(s.last_seen.is_some());
    }

    #[test]
    fn drop_changes_are_reported_once() {
        let mut t = HostTable::new(10);
        let h = testkit::host("store-7", "i1");
        let now = SystemTime::now();
        let zero = DropCounters::default();
        let three = DropCounters {
            kernel_ringbuf_full: 3,
            ..zero
        };
        assert!(kinds(&t.record_batch(meta(&h, 1, Some(&zero)), now).unwrap()).is_empty());
        assert_eq!(
            kinds(&t.record_batch(meta(&h, 2, Some(&three)), now).unwrap()),
            ["drops:3"]
        );
        assert!(kinds(&t.record_batch(meta(&h, 3, Some(&three)), now).unwrap()).is_empty());
        assert_eq!(t.snapshot()["store-7"].drops, three);
    }

    #[test]
    fn a_full_table_evicts_only_an_idle_host() {
        let mut t = HostTable::with_eviction(1, std::time::Duration::from_secs(60));
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let (a, b) = (testkit::host("a", "i"), testkit::host("b", "i"));
        t.record_batch(meta(&a, 1, None), t0).unwrap();
        let busy = t
            .record_batch(meta(&b, 1, None), t0 + std::time::Duration::from_secs(59))
            .unwrap_err();
        assert_eq!(busy.code(), tonic::Code::Unavailable, "retryable");
        t.record_batch(meta(&b, 1, None), t0 + std::time::Duration::from_secs(61))
            .unwrap();
        assert_eq!(t.evicted(), 1);
        assert!(t.snapshot().contains_key("b") && !t.snapshot().contains_key("a"));
    }

    #[test]
    fn table_is_bounded_but_known_hosts_go_on() {
        let mut t = HostTable::new(2);
        let now = SystemTime::now();
        let (a, b, c) = (
            testkit::host("a", "i"),
            testkit::host("b", "i"),
            testkit::host("c", "i"),
        );
        t.record_batch(meta(&a, 1, None), now).unwrap();
        t.record_batch(meta(&b, 1, None), now).unwrap();
        let err = t.record_batch(meta(&c, 1, None), now).unwrap_err();
        assert_eq!(err, IngestError::TooManyHosts { limit: 2 });
        assert!(t.record_batch(meta(&a, 2, None), now).is_ok());
        assert_eq!(t.snapshot().len(), 2);
    }

    #[test]
    fn restart_resets_drops_and_is_recorded() {
        let mut t = HostTable::new(10);
        let now = SystemTime::now();
        let three = DropCounters {
            kernel_ringbuf_full: 3,
            ..Default::default()
        };
        let a = testkit::host("store-7", "i1");
        t.record_batch(meta(&a, 1, Some(&three)), now).unwrap();
        let b = testkit::host("store-7", "i2");
        let out = t.record_batch(meta(&b, 1, Some(&three)), now).unwrap();
        assert_eq!(kinds(&out), ["KIND_RESTART:1-1", "drops:3"]);
        let s = &t.snapshot()["store-7"];
        assert_eq!(s.restarts, 1);
        assert_eq!(s.sensor_instance_id, "i2");
    }
}
