//! Rule directories watched for changes: a rule file added, edited or
//! removed reloads the rules as SIGHUP does (a broken file keeps the last
//! good set), so a SOC engineer who drops a rule in sees it load or be
//! refused without touching the sensor.

use std::{os::unix::fs::MetadataExt as _, path::PathBuf, time::Duration};

/// How often the directories are looked at.
pub const POLL: Duration = Duration::from_secs(2);

/// What a rule file looked like: path, size, mtime and ctime (ns).
type Seen = Vec<(PathBuf, u64, i64, i64)>;

/// The rule files of some directories, as last seen.
pub struct RuleFiles {
    dirs: Vec<PathBuf>,
    last: Seen,
}

impl RuleFiles {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        let last = look(&dirs);
        Self { dirs, last }
    }

    /// Whether a file was added, removed or changed since the last call.
    pub fn changed(&mut self) -> bool {
        let now = look(&self.dirs);
        let changed = now != self.last;
        self.last = now;
        changed
    }
}

/// A directory that cannot be read counts as empty: it coming back is a
/// change too (the reload then says what is wrong with it).
fn look(dirs: &[PathBuf]) -> Seen {
    let mut seen = Seen::new();
    for dir in dirs {
        for path in detect::rule_files(dir).unwrap_or_default() {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
            seen.push((
                path,
                meta.size(),
                ns(meta.mtime(), meta.mtime_nsec()),
                ns(meta.ctime(), meta.ctime_nsec()),
            ));
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_added_edited_or_removed_rule_file_is_a_change_and_others_are_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut files = RuleFiles::new(vec![dir.path().to_owned()]);
        assert!(!files.changed());
        std::fs::write(dir.path().join("notes.txt"), "not a rule").expect("write");
        assert!(!files.changed(), "not a rule file");
        let rule = dir.path().join("sub/a.yml");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(&rule, "title: a").expect("write");
        assert!(files.changed(), "added");
        assert!(!files.changed());
        std::fs::write(&rule, "title: b, longer").expect("write");
        assert!(files.changed(), "edited");
        std::fs::remove_file(&rule).expect("rm");
        assert!(files.changed(), "removed");
    }
}
