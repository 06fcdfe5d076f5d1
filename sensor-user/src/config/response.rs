//! `[[response]]`: detection rules that count one kind of signal in a
//! sliding window and ask for an action when the count reaches a threshold.
//! Each one is loaded as a sequence rule (`alerts::load`), so it alerts,
//! responds and is audited like every other rule.

use serde::Deserialize;

use super::ConfigError;

/// What a rule counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// An allowlist block in enforce mode.
    ExecBlocked,
}

impl Signal {
    /// The name used in the config file and in alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExecBlocked => "exec_blocked",
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rule triggers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseAction {
    /// Network isolation of this terminal (needs `isolation.enabled`).
    Isolate,
}

/// One `[[response]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRule {
    /// Reported as the requester `detection:<name>`.
    pub name: String,
    /// The signal counted.
    pub on: Signal,
    /// How many signals within `within_secs` trigger the action.
    pub threshold: u32,
    pub within_secs: u64,
    pub action: ResponseAction,
}

impl ResponseRule {
    /// Range checks; `index` names the entry in errors.
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let key = format!("response[{index}]");
        let bad = |reason: String| ConfigError::Invalid {
            key: key.clone(),
            reason,
        };
        if self.name.is_empty() || self.name.chars().any(|c| c.is_control() || c == ' ') {
            return Err(bad("name must be non-empty without spaces".into()));
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

impl ResponseRule {
    /// This rule as a sequence rule file (docs/detection.md#sequence-rules):
    /// `threshold` allowlist blocks anywhere on the host within
    /// `within_secs`.
    pub fn to_sequence_rule(&self) -> String {
        let category = match self.on {
            Signal::ExecBlocked => "allowlist_block",
        };
        let action = match self.action {
            ResponseAction::Isolate => "isolate",
        };
        // A YAML single-quoted string: only ' needs escaping (validate()
        // refused control characters).
        let title = self.name.replace('\'', "''");
        format!(
            "title: '{title}'\nauthor: rxsentry configuration\nlevel: high\n\
             tags: [attack.execution, attack.t1204.002]\nresponse: {action}\n\
             sequence:\n  by: host\n  within: {within}\n  steps:\n\
             \x20   - count: {count}\n\
             \x20     logsource: {{product: linux, category: {category}}}\n\
             \x20     detection: {{selection: {{Image|exists: true}}, condition: selection}}\n",
            within = self.within_secs,
            count = self.threshold,
        )
    }
}

#[cfg(test)]
impl ResponseRule {
    /// "burst": isolate after `threshold` blocked execs in `within_secs`.
    pub(crate) fn burst(threshold: u32, within_secs: u64) -> Self {
        Self {
            name: "burst".into(),
            on: Signal::ExecBlocked,
            threshold,
            within_secs,
            action: ResponseAction::Isolate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn rule(threshold: u32, within_secs: u64) -> ResponseRule {
        ResponseRule::burst(threshold, within_secs)
    }

    #[test]
    fn bad_rules_name_their_index_and_field() {
        let cases = [
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

    /// Signals and actions are closed sets: an unknown one is refused by
    /// the parser, naming the value and what is accepted.
    #[test]
    fn unknown_signals_and_actions_are_refused() {
        let entry = |on: &str, action: &str| {
            format!(
                "[isolation]\nenabled = true\n[[response]]\nname = \"r\"\non = \"{on}\"\nthreshold = 1\nwithin_secs = 1\naction = \"{action}\""
            )
        };
        let e = Config::from_toml_str(&entry("exec", "isolate")).expect_err("signal");
        let msg = e.to_string();
        assert!(
            msg.contains("`exec`") && msg.contains("exec_blocked"),
            "{msg}"
        );
        let e = Config::from_toml_str(&entry("exec_blocked", "kill")).expect_err("action");
        let msg = e.to_string();
        assert!(msg.contains("`kill`") && msg.contains("isolate"), "{msg}");
        let c = Config::from_toml_str(&entry("exec_blocked", "isolate")).expect("valid");
        assert_eq!(c.response[0].on, Signal::ExecBlocked);
        assert_eq!(c.response[0].action, ResponseAction::Isolate);
    }
}
