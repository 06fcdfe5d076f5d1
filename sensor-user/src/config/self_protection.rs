//! `[self_protection]`: what the sensor refuses to other processes where
//! the kernel lets it (docs/allowlisting.md#self-protection).

use serde::Deserialize;

/// `[self_protection]` of the sensor config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfProtectionConfig {
    /// On BPF-LSM kernels, refuse every other process (root included) any
    /// change to the sensor's binary, config, policy, state and spool
    /// while the sensor runs. Change them with the sensor stopped (the
    /// allowlist and isolation stay pinned meanwhile). Off: such changes
    /// are only reported.
    pub deny_writes: bool,
}

impl Default for SelfProtectionConfig {
    fn default() -> Self {
        Self { deny_writes: true }
    }
}
