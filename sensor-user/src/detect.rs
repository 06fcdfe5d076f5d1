//! A minimal detection engine: `[[response]]` rules that count one kind of
//! signal in a sliding window and ask for a response action when the count
//! reaches a threshold. Today's only signal is `exec_blocked` (an allowlist
//! block in enforce mode) and the only action is `isolate`.
//!
//! It runs beside the policy events, never in the exec path: the kernel has
//! already blocked the exec when the signal arrives.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::{
    config::{ResponseAction, ResponseRule, Signal},
    metrics::RuleHits,
};

/// A rule that fired: who asks and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    /// `detection:<rule name>`.
    pub requester: String,
    pub reason: String,
    pub action: ResponseAction,
}

/// The rules with their windows.
#[derive(Debug, Default)]
pub struct Detector {
    rules: Vec<(ResponseRule, VecDeque<Instant>)>,
    /// Firings per rule name, for the metrics.
    hits: RuleHits,
}

impl Detector {
    pub fn new(rules: &[ResponseRule]) -> Self {
        Self {
            rules: rules.iter().map(|r| (r.clone(), VecDeque::new())).collect(),
            hits: RuleHits::default(),
        }
    }

    /// Counts the rules that fire in `hits`.
    pub fn with_hits(mut self, hits: RuleHits) -> Self {
        self.hits = hits;
        self
    }

    /// Counts one `signal` at `now`; returns the rules that reached their
    /// threshold. A rule's window is emptied when it fires, so it fires
    /// again only after `threshold` further signals.
    pub fn observe(&mut self, signal: Signal, now: Instant) -> Vec<Trigger> {
        let mut fired = Vec::new();
        for (rule, seen) in &mut self.rules {
            if rule.on != signal {
                continue;
            }
            let window = Duration::from_secs(rule.within_secs);
            while seen
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) >= window)
            {
                seen.pop_front();
            }
            seen.push_back(now);
            if seen.len() >= rule.threshold as usize {
                seen.clear();
                self.hits.hit(&rule.name);
                fired.push(Trigger {
                    requester: format!("detection:{}", rule.name),
                    reason: format!("{} {signal} within {} s", rule.threshold, rule.within_secs),
                    action: rule.action,
                });
            }
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(threshold: u32, within_secs: u64) -> ResponseRule {
        ResponseRule::burst(threshold, within_secs)
    }

    #[test]
    fn fires_at_the_threshold_within_the_window_only() {
        let mut d = Detector::new(&[rule(3, 10)]);
        let t0 = Instant::now();
        assert!(d.observe(Signal::ExecBlocked, t0).is_empty());
        assert!(
            d.observe(Signal::ExecBlocked, t0 + Duration::from_secs(1))
                .is_empty()
        );
        let fired = d.observe(Signal::ExecBlocked, t0 + Duration::from_secs(2));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].requester, "detection:burst");
        assert_eq!(fired[0].action, ResponseAction::Isolate);
        assert!(fired[0].reason.contains("3 exec_blocked within 10 s"));
        assert_eq!(d.hits.snapshot().get("burst"), Some(&1));
        // The window restarted: one more signal is not enough.
        assert!(
            d.observe(Signal::ExecBlocked, t0 + Duration::from_secs(3))
                .is_empty()
        );
    }

    #[test]
    fn old_signals_fall_out_of_the_window() {
        let mut d = Detector::new(&[rule(2, 5)]);
        let t0 = Instant::now();
        assert!(d.observe(Signal::ExecBlocked, t0).is_empty());
        assert!(
            d.observe(Signal::ExecBlocked, t0 + Duration::from_secs(6))
                .is_empty()
        );
        assert_eq!(
            d.observe(Signal::ExecBlocked, t0 + Duration::from_secs(7))
                .len(),
            1
        );
    }
}
