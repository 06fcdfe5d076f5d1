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
    /// `[detection.yara]`: YARA rules on new executables and written files.
    pub yara: YaraConfig,
}

/// `[detection.yara]` (see docs/detection.md, "YARA").
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct YaraConfig {
    /// Off: nothing is compiled or scanned (also off when
    /// `detection.enabled` is false).
    pub enabled: bool,
    /// The built-in YARA pack (detect/yara/).
    pub default_pack: bool,
    /// More rule directories (`*.yar`, `*.yara`, recursively).
    pub rule_dirs: Vec<PathBuf>,
    /// Larger files are not scanned (counted in `too_large`).
    pub max_file_bytes: u64,
    /// Scans waiting (queued, and written files settling); beyond it a
    /// scan is dropped and counted.
    pub queue_capacity: usize,
    /// A written file is scanned this long after its last reported write.
    pub settle_ms: u64,
}

impl Default for YaraConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            default_pack: true,
            rule_dirs: Vec::new(),
            max_file_bytes: 32 << 20,
            queue_capacity: 256,
            settle_ms: 500,
        }
    }
}

impl YaraConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (i, dir) in self.rule_dirs.iter().enumerate() {
            check_absolute(&format!("detection.yara.rule_dirs[{i}]"), dir)?;
        }
        if self.max_file_bytes == 0 {
            return Err(invalid(
                "detection.yara.max_file_bytes",
                "must be at least 1",
            ));
        }
        if self.max_file_bytes > 1 << 30 {
            // The file is read into memory to be scanned.
            return Err(invalid(
                "detection.yara.max_file_bytes",
                "at most 1 GiB (1073741824)",
            ));
        }
        if !(1..=65_536).contains(&self.queue_capacity) {
            return Err(invalid(
                "detection.yara.queue_capacity",
                "must be 1..=65536",
            ));
        }
        if self.settle_ms > 60_000 {
            return Err(invalid(
                "detection.yara.settle_ms",
                "at most 60000 (a minute)",
            ));
        }
        Ok(())
    }
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
            yara: YaraConfig::default(),
        }
    }
}

impl DetectionConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_absolute("detection.quarantine_dir", &self.quarantine_dir)?;
        self.yara.validate()?;
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
