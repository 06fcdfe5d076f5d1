//! Per-host batch sequence continuity.
//!
//! A sensor numbers its batches 1, 2, 3... per sensor instance. The
//! collector keeps, per host, the instance it last heard from and the next
//! sequence it expects, and says for each new batch whether something was
//! lost (gap), sent twice (duplicate) or the sensor started over (restart).

/// What one batch's sequence number says about the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Continuity {
    /// The expected next batch (or the first one ever seen from this host).
    InOrder,
    /// Batches `first..=last` were skipped; this batch is accepted.
    Gap { first: u64, last: u64 },
    /// This sequence was already accepted: do not deliver it again.
    Duplicate,
    /// Below the highest accepted sequence but never accepted itself (a
    /// batch first reported in a gap): accepted. Only the store, which
    /// knows each stored sequence, tells this from a duplicate.
    Late,
}

/// The previous sensor instance of a host that just restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    pub previous_instance_id: String,
    /// Last sequence accepted from the previous instance (0 if none).
    pub previous_last_sequence: u64,
}

/// The checker's verdict on one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Set when the batch comes from a new sensor instance of a known host.
    pub restart: Option<Restart>,
    pub continuity: Continuity,
}

impl Observation {
    /// Whether the batch's events are new and should be delivered.
    pub fn is_new(&self) -> bool {
        self.continuity != Continuity::Duplicate
    }
}

/// Continuity state of one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SequenceChecker {
    /// `None` until the first batch arrives.
    instance_id: Option<String>,
    /// Highest sequence accepted from `instance_id` (0: none yet).
    last_accepted: u64,
}

impl SequenceChecker {
    /// Feeds one batch's `(sensor_instance_id, sequence)`; `sequence` is >= 1
    /// (the ingest checks refuse 0).
    ///
    /// The first batch ever seen from a host sets the baseline without a gap:
    /// the collector cannot know what the sensor sent before the collector
    /// itself started. After a restart of a *known* host, the new instance is
    /// expected to start at 1, so a later first sequence is a gap.
    pub fn observe(&mut self, instance_id: &str, sequence: u64) -> Observation {
        let restart = match &self.instance_id {
            None => {
                self.instance_id = Some(instance_id.to_owned());
                self.last_accepted = sequence.saturating_sub(1);
                None
            }
            Some(current) if current != instance_id => {
                let restart = Restart {
                    previous_instance_id: current.clone(),
                    previous_last_sequence: self.last_accepted,
                };
                self.instance_id = Some(instance_id.to_owned());
                self.last_accepted = 0;
                Some(restart)
            }
            Some(_) => None,
        };
        let continuity = if sequence <= self.last_accepted {
            Continuity::Duplicate
        } else if sequence == self.last_accepted + 1 {
            Continuity::InOrder
        } else {
            Continuity::Gap {
                first: self.last_accepted + 1,
                last: sequence - 1,
            }
        };
        self.last_accepted = self.last_accepted.max(sequence);
        Observation {
            restart,
            continuity,
        }
    }

    /// The sensor instance currently tracked, if any batch arrived yet.
    pub fn instance_id(&self) -> Option<&str> {
        self.instance_id.as_deref()
    }

    /// Highest sequence accepted from the current instance (0: none).
    pub fn last_accepted(&self) -> u64 {
        self.last_accepted
    }
}

/// Batches a sequence may skip ahead of the last one accepted from the
/// same sensor instance beyond those the sensor reports lost. A real sensor
/// only skips batches it counted as lost (its spool dropped them, the
/// collector refused them, its queue was full); a far-ahead sequence it does
/// not account for would make every later real batch a duplicate, acked and
/// dropped, until the sensor restarted.
pub const MAX_UNEXPLAINED_JUMP: u64 = 65_536;

/// Batches a sensor reports lost in its drop counters (each a running
/// total for the instance or its spool): what explains a sequence gap.
pub fn batches_lost(drops: Option<&proto::telemetry::v1::DropCounters>) -> u64 {
    drops.map_or(0, |d| {
        d.spool_batches_dropped
            .saturating_add(d.spool_corrupt_records)
            .saturating_add(d.userspace_batches_dropped)
    })
}

/// How many batches `sequence` skips past `last` beyond the `lost_now -
/// lost_then` the sensor reported lost meanwhile, when that is more than
/// [`MAX_UNEXPLAINED_JUMP`]; `None` for an acceptable sequence.
pub fn unexplained_jump(last: u64, lost_then: u64, sequence: u64, lost_now: u64) -> Option<u64> {
    let skipped = sequence.saturating_sub(last).saturating_sub(1);
    let unexplained = skipped.saturating_sub(lost_now.saturating_sub(lost_then));
    (unexplained > MAX_UNEXPLAINED_JUMP).then_some(unexplained)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_is_refused_unless_the_sensor_reports_the_batches_lost() {
        assert_eq!(unexplained_jump(10, 0, 11, 0), None);
        assert_eq!(unexplained_jump(10, 0, 11 + MAX_UNEXPLAINED_JUMP, 0), None);
        assert_eq!(
            unexplained_jump(10, 0, 12 + MAX_UNEXPLAINED_JUMP, 0),
            Some(MAX_UNEXPLAINED_JUMP + 1)
        );
        assert_eq!(unexplained_jump(10, 0, u64::MAX, 0), Some(u64::MAX - 11));
        // A full spool dropped a million batches, counted: accepted.
        assert_eq!(unexplained_jump(10, 5, 1_000_011, 1_000_005), None);
        // Losses reported before the last batch explain nothing new.
        assert_eq!(
            unexplained_jump(10, 1_000_000, 1_000_011 + MAX_UNEXPLAINED_JUMP, 1_000_000),
            Some(1_000_000 + MAX_UNEXPLAINED_JUMP)
        );
        // Duplicates and late batches are not jumps.
        assert_eq!(unexplained_jump(10, 0, 3, 0), None);
        assert_eq!(unexplained_jump(10, 0, 10, 0), None);
    }

    fn in_order() -> Observation {
        Observation {
            restart: None,
            continuity: Continuity::InOrder,
        }
    }

    #[test]
    fn in_order_batches_are_accepted() {
        let mut c = SequenceChecker::default();
        for seq in 1..=5 {
            assert_eq!(c.observe("a", seq), in_order(), "seq {seq}");
        }
        assert_eq!(c.last_accepted(), 5);
        assert_eq!(c.instance_id(), Some("a"));
    }

    #[test]
    fn first_batch_sets_baseline_without_gap() {
        let mut c = SequenceChecker::default();
        assert_eq!(c.observe("a", 40), in_order());
        assert_eq!(c.observe("a", 41), in_order());
    }

    #[test]
    fn gap_is_reported_and_accepted() {
        let mut c = SequenceChecker::default();
        c.observe("a", 1);
        c.observe("a", 2);
        let obs = c.observe("a", 6);
        assert_eq!(obs.continuity, Continuity::Gap { first: 3, last: 5 });
        assert!(obs.is_new());
        assert_eq!(c.observe("a", 7), in_order());
    }

    #[test]
    fn duplicate_is_not_new_and_does_not_move_expectation() {
        let mut c = SequenceChecker::default();
        for seq in 1..=3 {
            c.observe("a", seq);
        }
        let obs = c.observe("a", 2);
        assert_eq!(obs.continuity, Continuity::Duplicate);
        assert!(!obs.is_new());
        assert_eq!(c.observe("a", 3).continuity, Continuity::Duplicate);
        assert_eq!(c.observe("a", 4), in_order());
    }

    #[test]
    fn new_instance_is_a_restart_from_one() {
        let mut c = SequenceChecker::default();
        for seq in 1..=9 {
            c.observe("a", seq);
        }
        let obs = c.observe("b", 1);
        assert_eq!(
            obs.restart,
            Some(Restart {
                previous_instance_id: "a".into(),
                previous_last_sequence: 9
            })
        );
        assert_eq!(obs.continuity, Continuity::InOrder);
        assert_eq!(c.observe("b", 2), in_order());
    }

    #[test]
    fn restart_whose_first_batches_were_lost_is_also_a_gap() {
        let mut c = SequenceChecker::default();
        c.observe("a", 1);
        let obs = c.observe("b", 4);
        assert!(obs.restart.is_some());
        assert_eq!(obs.continuity, Continuity::Gap { first: 1, last: 3 });
    }

    #[test]
    fn huge_sequence_does_not_overflow() {
        let mut c = SequenceChecker::default();
        c.observe("a", 1);
        let obs = c.observe("a", u64::MAX);
        assert_eq!(
            obs.continuity,
            Continuity::Gap {
                first: 2,
                last: u64::MAX - 1
            }
        );
        assert_eq!(c.observe("a", u64::MAX).continuity, Continuity::Duplicate);
    }
}
