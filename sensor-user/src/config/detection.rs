//! `[detection]`: Sigma rules evaluated on every enriched event (see
//! docs/detection.md).

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use super::{ConfigError, check_absolute, invalid};

/// `[detection]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectionConfig {
    /// Off: no rule is loaded or evaluated, no alert is made.
    pub enabled: bool,
    /// The built-in pharmacy kiosk pack (detect/rules/).
    pub default_pack: bool,
    /// More rule directories (`*.yml`, `*.yaml`, recursively).
    pub rule_dirs: Vec<PathBuf>,
    /// Values of the `%name%` placeholders rules expand (`|expand`): the
    /// default pack's POS applications, PHI store, expected readers.
    pub placeholders: BTreeMap<String, Vec<String>>,
    /// Off: rules that ask for kill, quarantine or isolate only alert (a
    /// pilot on a new kiosk).
    pub responses: bool,
    /// Where quarantined files go (created 0700); the hashes of the files
    /// there are refused at exec.
    pub quarantine_dir: PathBuf,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            default_pack: true,
            rule_dirs: Vec::new(),
            placeholders: detect::default_placeholders().into_iter().collect(),
            responses: true,
            quarantine_dir: PathBuf::from("/var/lib/rxsentry/quarantine"),
        }
    }
}

impl DetectionConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_absolute("detection.quarantine_dir", &self.quarantine_dir)?;
        for (i, dir) in self.rule_dirs.iter().enumerate() {
            check_absolute(&format!("detection.rule_dirs[{i}]"), dir)?;
        }
        for (name, values) in &self.placeholders {
            let key = format!("detection.placeholders.{name}");
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(invalid(&key, "a placeholder name is letters, digits and _"));
            }
            if values.is_empty() || values.iter().any(String::is_empty) {
                return Err(invalid(&key, "needs at least one value, none empty"));
            }
        }
        Ok(())
    }

    /// The placeholders as the rule loader takes them: the defaults, each
    /// replaced by the configured list of the same name.
    pub fn loader_placeholders(&self) -> detect::Placeholders {
        let mut all = detect::default_placeholders();
        all.extend(
            self.placeholders
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        all
    }
}
