//! The policy file (TOML). Every table refuses unknown keys; every error
//! names the entry and key it is about.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Monitor reports would-blocks; enforce kills before the first instruction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Monitor,
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Monitor => "monitor",
            Self::Enforce => "enforce",
        }
    }
}

/// An allowlisted executable: its path and the SHA-256 it must have.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    pub path: PathBuf,
    pub sha256: String,
}

/// A directory whose executables are all trusted (hashed at load).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedRoot {
    pub path: PathBuf,
}

/// An allowlisted program that must not run for some parents or users, e.g.
/// no shell started by the POS application.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    pub program: PathBuf,
    /// Denied when the parent process runs one of these programs.
    #[serde(default)]
    pub parents: Vec<PathBuf>,
    /// Denied for these real user ids.
    #[serde(default)]
    pub uids: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub mode: Mode,
    /// cgroup v2 directories the policy applies to; empty: the whole host.
    #[serde(default)]
    pub scope_cgroups: Vec<PathBuf>,
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    #[serde(default)]
    pub trusted_root: Vec<TrustedRoot>,
    #[serde(default)]
    pub deny: Vec<DenyRule>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("policy {path}: {key}: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("policy {path}: {entries} files allowed, more than the kernel map holds ({max})")]
    TooLarge {
        path: PathBuf,
        entries: usize,
        max: u32,
    },
    /// A `scope_cgroups` entry that is not a cgroup v2 directory: a scope
    /// that names nothing would enforce nothing.
    #[error("policy {path}: {key}: {cgroup}: {reason}")]
    Cgroup {
        path: PathBuf,
        key: String,
        cgroup: PathBuf,
        reason: String,
    },
    #[error("writing the policy to the kernel: {0}")]
    Kernel(#[from] aya::maps::MapError),
}

impl PolicyFile {
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates; `origin` is only used in messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, PolicyError> {
        let policy: Self = toml::from_str(text).map_err(|source| PolicyError::Parse {
            path: origin.to_owned(),
            source,
        })?;
        policy.validate(origin)?;
        Ok(policy)
    }

    fn validate(&self, origin: &Path) -> Result<(), PolicyError> {
        let invalid = |key: String, reason: &str| PolicyError::Invalid {
            path: origin.to_owned(),
            key,
            reason: reason.to_owned(),
        };
        for (i, rule) in self.allow.iter().enumerate() {
            if !rule.path.is_absolute() {
                return Err(invalid(
                    format!("allow[{i}].path"),
                    "must be an absolute path",
                ));
            }
            if rule.sha256.len() != 64 || !rule.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    format!("allow[{i}].sha256"),
                    "must be 64 hex digits",
                ));
            }
        }
        for (i, root) in self.trusted_root.iter().enumerate() {
            if !root.path.is_absolute() {
                return Err(invalid(
                    format!("trusted_root[{i}].path"),
                    "must be an absolute path",
                ));
            }
        }
        for (i, deny) in self.deny.iter().enumerate() {
            if !deny.program.is_absolute() {
                return Err(invalid(
                    format!("deny[{i}].program"),
                    "must be an absolute path",
                ));
            }
            if deny.parents.is_empty() && deny.uids.is_empty() {
                return Err(invalid(
                    format!("deny[{i}]"),
                    "needs `parents` and/or `uids` (to forbid a program everywhere, leave it out of the allowlist)",
                ));
            }
            if let Some(j) = deny.parents.iter().position(|p| !p.is_absolute()) {
                return Err(invalid(
                    format!("deny[{i}].parents[{j}]"),
                    "must be an absolute path",
                ));
            }
        }
        for (i, cgroup) in self.scope_cgroups.iter().enumerate() {
            if !cgroup.is_absolute() {
                return Err(invalid(
                    format!("scope_cgroups[{i}]"),
                    "must be an absolute path",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(text: &str) -> Result<PolicyFile, PolicyError> {
        PolicyFile::parse(text, Path::new("p.toml"))
    }

    #[test]
    fn parses_a_full_policy() {
        let p = parse(&format!(
            "mode = \"enforce\"\nscope_cgroups = [\"/sys/fs/cgroup/kiosk\"]\n\
             [[allow]]\npath = \"/usr/bin/true\"\nsha256 = \"{SHA}\"\n\
             [[trusted_root]]\npath = \"/opt/pos\"\n"
        ))
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.allow.len(), 1);
        assert_eq!(p.trusted_root[0].path, Path::new("/opt/pos"));
        assert_eq!(
            parse("").unwrap().mode,
            Mode::Monitor,
            "monitor unless told"
        );
    }

    #[test]
    fn errors_name_the_entry() {
        let err = |t: &str| parse(t).unwrap_err().to_string();
        assert!(err("[[allow]]\npath = \"bin/x\"\nsha256 = \"00\"\n").contains("allow[0].path"),);
        assert!(
            err(&format!("[[allow]]\npath = \"/x\"\nsha256 = \"{SHA}\"\n[[allow]]\npath = \"/y\"\nsha256 = \"zz\"\n"))
                .contains("allow[1].sha256")
        );
        assert!(err("mode = \"lenient\"\n").contains("mode"));
        assert!(err("[[allow]]\npath = \"/x\"\nsha256 = \"{SHA}\"\nextra = 1\n").contains("extra"));
        assert!(err("[[trusted_root]]\npath = \"rel\"\n").contains("trusted_root[0].path"));
        assert!(err("[[deny]]\nprogram = \"/bin/sh\"\n").contains("deny[0]"));
        assert!(
            err("[[deny]]\nprogram = \"/bin/sh\"\nparents = [\"/x\", \"y\"]\n")
                .contains("deny[0].parents[1]")
        );
        assert_eq!(
            parse("[[deny]]\nprogram = \"/bin/sh\"\nuids = [1001]\n")
                .unwrap()
                .deny[0]
                .uids,
            [1001]
        );
    }
}
