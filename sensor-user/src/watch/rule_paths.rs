//! The paths the loaded detection rules need (`detect::PathNeeds`) as watch
//! rules, added to the configured set so a file rule never waits for an
//! event the kernel filters out (docs/detection.md#what-the-kernel-watches).

use std::{collections::BTreeMap, path::Path};

use detect::{PathBound, PathNeeds};

use crate::config::WatchRule;

/// What a `file_event` rule sees: creations and writes, renames onto.
const EVENT_OPS: &[&str] = &["write", "rename"];
/// What a `file_access` rule sees.
const ACCESS_OPS: &[&str] = &["read"];

/// One watch rule per path, ops merged. An exact file that exists is
/// watched itself, else its directory (where it would be created); a prefix
/// ending in `/` is that directory; any other prefix, the directory it
/// names a part of (`/var/spool/cron/root` -> `/var/spool/cron`). The root
/// directory is never watched whole: a rule bounded only by it stays blind.
pub fn watch_rules(needs: &PathNeeds) -> Vec<WatchRule> {
    let mut by_path: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for need in &needs.needs {
        let Some(path) = watched_path(&need.bound) else {
            continue;
        };
        let ops = by_path.entry(path).or_default();
        for op in if need.read { ACCESS_OPS } else { EVENT_OPS } {
            if !ops.contains(op) {
                ops.push(op);
            }
        }
    }
    by_path
        .into_iter()
        .map(|(path, ops)| WatchRule {
            path,
            ops: ops.into_iter().map(str::to_owned).collect(),
        })
        .collect()
}

fn watched_path(bound: &PathBound) -> Option<String> {
    let path = match bound {
        PathBound::Exact(p) if Path::new(p).exists() => p.as_str(),
        PathBound::Prefix(p) if p.ends_with('/') => p.trim_end_matches('/'),
        PathBound::Exact(p) | PathBound::Prefix(p) => p.rsplit_once('/').map_or("", |(d, _)| d),
    };
    // Watched as the rule writes it (Sigma matches it in any case; the
    // kernel's names have one).
    (!path.is_empty() && path != "/" && !path.contains('*')).then(|| path.to_owned())
}

/// The watch rules the rule set in force needs, logged (with its blind
/// rules) under `why`: at start and after each reload.
pub fn for_store(store: &crate::alerts::RuleStore, why: &str) -> Vec<WatchRule> {
    let needs = store.path_needs();
    let rules = watch_rules(&needs);
    log(&needs, &rules, why);
    rules
}

/// Logs what the rules added to the watched set, and the rules that see
/// watched files only.
fn log(needs: &PathNeeds, rules: &[WatchRule], why: &str) {
    for rule in rules {
        tracing::info!(
            "{why}: watched for detection rules: {} (ops {})",
            rule.path,
            rule.ops.join(",")
        );
    }
    for blind in &needs.blind {
        tracing::warn!(
            "{why}: detection rule {}: {} ({}): {}",
            if blind.partly {
                "partly blind"
            } else {
                "blind"
            },
            blind.title,
            blind.source,
            blind.reason
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detect::PathNeed;

    #[test]
    fn needs_become_directories_or_files_with_their_operations() {
        let existing = tempfile::NamedTempFile::new().expect("temp file");
        let existing = existing.path().display().to_string();
        let need = |bound, read| PathNeed { bound, read };
        let needs = PathNeeds {
            needs: vec![
                need(PathBound::Prefix("/etc/cron.d/".into()), false),
                need(PathBound::Prefix("/var/spool/cron/root".into()), false),
                need(PathBound::Exact("/nonexistent-dir/rootlog".into()), false),
                need(PathBound::Exact(existing.clone()), true),
                need(PathBound::Prefix("/etc/cron.d/".into()), true),
                // Never the whole file system.
                need(PathBound::Prefix("/".into()), false),
                need(PathBound::Exact("/rootlog".into()), false),
            ],
            blind: vec![],
        };
        let got: Vec<(String, Vec<String>)> = watch_rules(&needs)
            .into_iter()
            .map(|r| (r.path, r.ops))
            .collect();
        let ops = |o: &[&str]| o.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let mut want = vec![
            ("/etc/cron.d".to_owned(), ops(&["write", "rename", "read"])),
            ("/var/spool/cron".to_owned(), ops(&["write", "rename"])),
            ("/nonexistent-dir".to_owned(), ops(&["write", "rename"])),
            (existing, ops(&["read"])),
        ];
        want.sort();
        assert_eq!(got, want);
    }
}
