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

use serde::Deserialize;

use crate::config::ConfigError;

/// Signals a rule can count.
pub const SIGNALS: [&str; 1] = ["exec_blocked"];
/// Actions a rule can trigger.
pub const ACTIONS: [&str; 1] = ["isolate"];

/// One `[[response]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRule {
    /// Reported as the requester `detection:<name>`.
    pub name: String,
    /// The signal counted: "exec_blocked".
    pub on: String,
    /// How many signals within `within_secs` trigger the action.
    pub threshold: u32,
    pub within_secs: u64,
    /// "isolate".
    pub action: String,
}

impl ResponseRule {
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let key = format!("response[{index}]");
        let bad = |reason: String| ConfigError::Invalid {
            key: key.clone(),
            reason,
        };
        if self.name.is_empty() || self.name.chars().any(|c| c.is_control() || c == ' ') {
            return Err(bad("name must be non-empty without spaces".into()));
        }
        if !SIGNALS.contains(&self.on.as_str()) {
            return Err(bad(format!(
                "on = {:?}: known signals are {SIGNALS:?}",
                self.on
            )));
        }
        if !ACTIONS.contains(&self.action.as_str()) {
            return Err(bad(format!(
                "action = {:?}: known actions are {ACTIONS:?}",
                self.action
            )));
        }
        if !(1..=10_000).contains(&self.threshold) {
            return Err(bad(format!(
                "threshold must be between 1 and 10000, got {}",
                self.threshold
            )));
        }
        if !(1..=86_400).contains(&self.within_secs) {
            return Err(bad(format!(
                "within_secs must be between 1 and 86400, got {}",
                self.within_secs
            )));
        }
        Ok(())
    }
}

/// A rule that fired: who asks and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    /// `detection:<rule name>`.
    pub requester: String,
    pub reason: String,
    pub action: String,
}

/// The rules with their windows.
#[derive(Debug, Default)]
pub struct Detector {
    rules: Vec<(ResponseRule, VecDeque<Instant>)>,
}

impl Detector {
    pub fn new(rules: &[ResponseRule]) -> Self {
        Self {
            rules: rules.iter().map(|r| (r.clone(), VecDeque::new())).collect(),
        }
    }

    /// Counts one `signal` at `now`; returns the rules that reached their
    /// threshold. A rule's window is emptied when it fires, so it fires
    /// again only after `threshold` further signals.
    pub fn observe(&mut self, signal: &str, now: Instant) -> Vec<Trigger> {
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
                fired.push(Trigger {
                    requester: format!("detection:{}", rule.name),
                    reason: format!("{} {signal} within {} s", rule.threshold, rule.within_secs),
                    action: rule.action.clone(),
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
        ResponseRule {
            name: "burst".into(),
            on: "exec_blocked".into(),
            threshold,
            within_secs,
            action: "isolate".into(),
        }
    }

    #[test]
    fn fires_at_the_threshold_within_the_window_only() {
        let mut d = Detector::new(&[rule(3, 10)]);
        let t0 = Instant::now();
        assert!(d.observe("exec_blocked", t0).is_empty());
        assert!(
            d.observe("exec_blocked", t0 + Duration::from_secs(1))
                .is_empty()
        );
        let fired = d.observe("exec_blocked", t0 + Duration::from_secs(2));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].requester, "detection:burst");
        assert_eq!(fired[0].action, "isolate");
        assert!(fired[0].reason.contains("3 exec_blocked within 10 s"));
        // The window restarted: one more signal is not enough.
        assert!(
            d.observe("exec_blocked", t0 + Duration::from_secs(3))
                .is_empty()
        );
    }

    #[test]
    fn old_signals_fall_out_of_the_window() {
        let mut d = Detector::new(&[rule(2, 5)]);
        let t0 = Instant::now();
        assert!(d.observe("exec_blocked", t0).is_empty());
        assert!(
            d.observe("exec_blocked", t0 + Duration::from_secs(6))
                .is_empty()
        );
        assert_eq!(
            d.observe("exec_blocked", t0 + Duration::from_secs(7)).len(),
            1
        );
    }

    #[test]
    fn other_signals_do_not_count() {
        let mut d = Detector::new(&[rule(1, 5)]);
        assert!(d.observe("something_else", Instant::now()).is_empty());
        assert_eq!(d.observe("exec_blocked", Instant::now()).len(), 1);
    }

    #[test]
    fn bad_rules_name_their_index_and_field() {
        let cases = [
            (
                ResponseRule {
                    on: "exec".into(),
                    ..rule(1, 1)
                },
                "on =",
            ),
            (
                ResponseRule {
                    action: "kill".into(),
                    ..rule(1, 1)
                },
                "action =",
            ),
            (rule(0, 1), "threshold"),
            (rule(1, 0), "within_secs"),
            (
                ResponseRule {
                    name: "".into(),
                    ..rule(1, 1)
                },
                "name",
            ),
        ];
        for (r, what) in cases {
            let e = r.validate(2).expect_err("refused");
            assert_eq!(e.key(), Some("response[2]"));
            assert!(e.to_string().contains(what), "{e}");
        }
        assert!(rule(3, 60).validate(0).is_ok());
    }
}
