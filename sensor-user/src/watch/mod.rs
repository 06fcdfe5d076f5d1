//! The watched file set: config rules -> the kernel's filter maps, and the
//! anchor table that turns the kernel's path records back into paths.
//!
//! The kernel never compares strings against the config. It looks up
//! (device, inode) of a file and of the directories above it in `WATCHED`,
//! and, for paths a syscall names, a hash of (base directory identity, path
//! prefix) in `WATCH_PREFIXES`. So for every watched root this module stores
//! its identity, and for every ancestor of it the hash of the path from that
//! ancestor down to the root (`sensor_common::file::prefix_hash`).

pub mod identity;
pub mod kernel;
pub mod manager;
pub mod repeats;
pub mod rule_paths;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Component, Path, PathBuf},
    sync::{Arc, RwLock},
};

use sensor_common::{FileId, WatchEntry, file::prefix_hash, file_op};

use crate::{
    config::FilesConfig,
    events::{FileRecord, RawPath, file_id},
};

/// Operations reported on the sensor's own files (tamper evidence).
pub const SELF_OPS: u32 = (1 << file_op::OPEN_WRITE)
    | (1 << file_op::UNLINK)
    | (1 << file_op::RENAME)
    | (1 << file_op::CHMOD)
    | (1 << file_op::CHOWN);

/// Paths the kernel's records refer to by index. Append-only, so an index
/// in a record read after a refresh still names the same path.
#[derive(Clone, Debug, Default)]
pub struct Anchors(Arc<RwLock<AnchorTable>>);

#[derive(Debug, Default)]
struct AnchorTable {
    paths: Vec<PathBuf>,
    /// `paths` as text (lossy), converted once rather than per event.
    texts: Vec<String>,
    index: HashMap<PathBuf, u32>,
    /// The watched files by identity (userspace `st_dev`, inode), as the
    /// last scan named them: `watched_path` of a file found by identity.
    identities: HashMap<(u64, u64), Box<str>>,
}

impl Anchors {
    /// The index of `path`, added if new.
    fn intern(&self, path: &Path) -> u32 {
        let mut table = self.0.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = table.index.get(path) {
            return i;
        }
        let i = table.paths.len() as u32;
        table.paths.push(path.to_owned());
        table.texts.push(path.to_string_lossy().into_owned());
        table.index.insert(path.to_owned(), i);
        i
    }

    #[cfg(test)]
    fn path(&self, anchor: u32) -> Option<PathBuf> {
        let table = self.0.read().unwrap_or_else(|e| e.into_inner());
        table.paths.get(anchor as usize).cloned()
    }

    /// Replaces the table of watched files by identity (after a scan).
    pub fn set_identities(&self, identities: HashMap<(u64, u64), Box<str>>) {
        let mut table = self.0.write().unwrap_or_else(|e| e.into_inner());
        table.identities = identities;
    }

    /// Adds one watched file by identity (created, renamed or linked in).
    pub fn add_identity(&self, id: (u64, u64), path: &str) {
        let mut table = self.0.write().unwrap_or_else(|e| e.into_inner());
        table.identities.entry(id).or_insert_with(|| path.into());
    }

    /// The name the sensor knows the watched file `id` by.
    fn identity(&self, id: (u64, u64)) -> Option<String> {
        let table = self.0.read().unwrap_or_else(|e| e.into_inner());
        table.identities.get(&id).map(|p| p.to_string())
    }

    /// Rebuilds the full path of a kernel path record: anchor, then the
    /// walked names, then the syscall's string. Built in place as one
    /// string (what `PathBuf::push` of each name, then `to_string_lossy`,
    /// gives: the names are already UTF-8, and a lossy anchor converts
    /// alone the same as within the path). A record with no anchor but
    /// names is a file found by identity (`device`'s mount point, then the
    /// names up from its filesystem's root) or too deep to place ("…/",
    /// then the names nearest the file).
    pub fn resolve(&self, raw: &RawPath, device: u64) -> String {
        let table = self.0.read().unwrap_or_else(|e| e.into_inner());
        let Some(anchor) = raw.anchor.and_then(|a| table.texts.get(a as usize)) else {
            drop(table);
            if raw.chain.is_empty() {
                // No anchor: the string is all there is.
                return raw.name.clone();
            }
            let mount = (raw.by_identity && !raw.truncated && !raw.depth_exceeded)
                .then(|| identity::mount_point(raw.chain_device.unwrap_or(device)))
                .flatten();
            let mut path = mount.unwrap_or_else(|| "…".to_owned());
            for name in raw.chain.split('/').filter(|n| !n.is_empty()) {
                push_name(&mut path, name);
            }
            return path;
        };
        let mut path = String::with_capacity(anchor.len() + raw.chain.len() + raw.name.len() + 2);
        path.push_str(anchor);
        drop(table);
        for name in raw.chain.split('/').filter(|n| !n.is_empty()) {
            push_name(&mut path, name);
        }
        for part in Path::new(raw.name.trim_start_matches('/')).components() {
            match part {
                Component::Normal(name) => push_name(&mut path, &name.to_string_lossy()),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                // The kernel never matches a path with `..` in it.
                Component::ParentDir => push_name(&mut path, ".."),
            }
        }
        path
    }

    /// Fills `path` / `new_path` of a decoded file record, then frees the
    /// raw names (only their `truncated` and `anchor` stay): freed here, on
    /// the thread that decoded them, they are a cheap glibc tcache free
    /// instead of a foreign-arena free on the enrichment thread.
    pub fn resolve_record(&self, record: &mut FileRecord) {
        record.path = self.resolve(&record.raw_path, record.device);
        if record.raw_path.by_identity {
            record.watched_path = self.identity((record.device, record.inode));
        }
        record.raw_path.drop_names();
        if let Some(raw) = &mut record.raw_new_path {
            record.new_path = Some(self.resolve(raw, record.device));
            raw.drop_names();
        }
    }
}

/// `PathBuf::push` of a relative name, on a string.
fn push_name(path: &mut String, name: &str) {
    if !path.is_empty() && !path.ends_with('/') {
        path.push('/');
    }
    path.push_str(name);
}

/// Why the watched set could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{key}: {path}: {source}")]
    Stat {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the watched set needs {needed} {map} entries, the kernel map holds {capacity}")]
    TooLarge {
        map: &'static str,
        needed: usize,
        capacity: u32,
    },
    #[error("starting the watch thread: {0}")]
    Thread(std::io::Error),
    #[error("kernel map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
}

/// Everything the kernel maps should hold for one configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledWatches {
    pub watched: BTreeMap<(u32, u64), WatchEntry>,
    pub prefixes: BTreeMap<u64, WatchEntry>,
    pub excluded_exes: Vec<FileId>,
    /// Configured paths that do not exist (yet): looked for again at refresh.
    pub missing: Vec<String>,
    /// The watched roots that exist, for the log.
    pub roots: Vec<PathBuf>,
}

/// A root of the watched set after glob expansion.
struct Root {
    path: PathBuf,
    ops: u32,
}

impl CompiledWatches {
    /// Reads the file system for `config` plus the sensor's own files
    /// (`self_files`, always watched for changes).
    pub fn build(
        config: &FilesConfig,
        self_files: &[PathBuf],
        anchors: &Anchors,
    ) -> Result<Self, WatchError> {
        let mut out = Self::default();
        let mut roots = Vec::new();
        for rule in &config.watch {
            let found = expand(&rule.path);
            if found.is_empty() {
                out.missing.push(rule.path.clone());
            }
            roots.extend(found.into_iter().map(|path| Root {
                path,
                ops: rule.op_mask(),
            }));
        }
        for path in self_files {
            match std::fs::canonicalize(path) {
                Ok(path) => roots.push(Root {
                    path,
                    ops: SELF_OPS,
                }),
                Err(_) => out.missing.push(path.display().to_string()),
            }
        }
        for path in &config.exclude_paths {
            match std::fs::canonicalize(path) {
                Ok(path) => roots.push(Root { path, ops: 0 }),
                Err(_) => out.missing.push(path.display().to_string()),
            }
        }
        for root in &roots {
            out.add_root(root, anchors);
        }
        for (i, path) in config.exclude_processes.iter().enumerate() {
            match file_id(path) {
                Ok(id) => out.excluded_exes.push(id),
                Err(source) if source.kind() == std::io::ErrorKind::NotFound => {
                    out.missing.push(path.display().to_string())
                }
                Err(source) => {
                    return Err(WatchError::Stat {
                        key: format!("files.exclude_processes[{i}]"),
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
        Ok(out)
    }

    /// One root: its own identity, and a prefix hash from each ancestor.
    /// An excluded subtree (ops 0) wins over a watch of the same path.
    fn add_root(&mut self, root: &Root, anchors: &Anchors) {
        let Ok(id) = file_id(&root.path) else { return };
        let anchor = anchors.intern(&root.path);
        merge(
            self.watched.entry((id.dev, id.ino)).or_insert(WatchEntry {
                anchor,
                ops: root.ops,
            }),
            root.ops,
        );
        self.roots.push(root.path.clone());
        let mut below: Vec<&std::ffi::OsStr> = Vec::new();
        let mut ancestor = root.path.as_path();
        while let Some(parent) = ancestor.parent() {
            below.push(ancestor.file_name().unwrap_or_default());
            ancestor = parent;
            let Ok(base) = file_id(ancestor) else {
                continue;
            };
            let hash = below
                .iter()
                .rev()
                .fold(prefix_hash::seed(base.dev, base.ino), |h, name| {
                    prefix_hash::component(h, name.as_encoded_bytes())
                });
            let anchor = anchors.intern(ancestor);
            merge(
                self.prefixes.entry(hash).or_insert(WatchEntry {
                    anchor,
                    ops: root.ops,
                }),
                root.ops,
            );
        }
    }
}

/// Two rules on one path: exclusion wins, else the operations add up.
fn merge(entry: &mut WatchEntry, ops: u32) {
    entry.ops = if entry.ops == 0 || ops == 0 {
        0
    } else {
        entry.ops | ops
    };
}

/// The paths a rule names: itself, or the matches of its `*` component.
fn expand(pattern: &str) -> Vec<PathBuf> {
    let Some((dir, last)) = pattern.rsplit_once('/') else {
        return Vec::new();
    };
    let Some((head, tail)) = last.split_once('*') else {
        return std::fs::canonicalize(pattern).into_iter().collect();
    };
    let dir = if dir.is_empty() { "/" } else { dir };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.len() >= head.len() + tail.len() && name.starts_with(head) && name.ends_with(tail)
        })
        .filter_map(|e| std::fs::canonicalize(e.path()).ok())
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WatchRule;

    fn config(watch: &[(&str, &[&str])]) -> FilesConfig {
        FilesConfig {
            watch: watch
                .iter()
                .map(|(path, ops)| WatchRule {
                    path: (*path).to_owned(),
                    ops: ops.iter().map(|s| (*s).to_owned()).collect(),
                })
                .collect(),
            ..FilesConfig::default()
        }
    }

    #[test]
    fn roots_and_every_ancestor_prefix_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let phi = dir.path().join("phi");
        std::fs::create_dir(&phi).unwrap();
        let phi = std::fs::canonicalize(&phi).unwrap();
        let anchors = Anchors::default();
        let c = CompiledWatches::build(&config(&[(phi.to_str().unwrap(), &[])]), &[], &anchors)
            .unwrap();
        let id = file_id(&phi).unwrap();
        let entry = c.watched[&(id.dev, id.ino)];
        assert_eq!(entry.ops, file_op::ALL);
        assert_eq!(anchors.path(entry.anchor).unwrap(), phi);
        // From "/" the prefix is the whole path, one component at a time.
        let root = file_id(Path::new("/")).unwrap();
        let from_root = phi
            .components()
            .skip(1)
            .fold(prefix_hash::seed(root.dev, root.ino), |h, c| {
                prefix_hash::component(h, c.as_os_str().as_encoded_bytes())
            });
        let hit = c.prefixes[&from_root];
        assert_eq!(anchors.path(hit.anchor).unwrap(), Path::new("/"));
        // And from the parent directory it is just "phi".
        let parent = file_id(phi.parent().unwrap()).unwrap();
        let from_parent = prefix_hash::component(prefix_hash::seed(parent.dev, parent.ino), b"phi");
        assert!(c.prefixes.contains_key(&from_parent));
        assert_eq!(c.prefixes.len(), phi.components().count() - 1);
    }

    #[test]
    fn globs_missing_paths_exclusions_and_op_masks() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        for name in ["sudoers", "sudoers.d", "other"] {
            std::fs::write(base.join(name), b"x").unwrap();
        }
        let pattern = format!("{}/sudoers*", base.display());
        let missing = format!("{}/nope", base.display());
        let mut cfg = config(&[(&pattern, &["write", "read"]), (&missing, &[])]);
        cfg.exclude_paths = vec![base.join("sudoers.d")];
        let anchors = Anchors::default();
        let c = CompiledWatches::build(&cfg, &[], &anchors).unwrap();
        assert_eq!(c.missing, vec![missing]);
        let sudoers = file_id(&base.join("sudoers")).unwrap();
        assert_eq!(
            c.watched[&(sudoers.dev, sudoers.ino)].ops,
            (1 << file_op::OPEN_WRITE) | (1 << file_op::OPEN_READ)
        );
        let excluded = file_id(&base.join("sudoers.d")).unwrap();
        assert_eq!(
            c.watched[&(excluded.dev, excluded.ino)].ops,
            0,
            "exclusion wins"
        );
        let other = file_id(&base.join("other")).unwrap();
        assert!(!c.watched.contains_key(&(other.dev, other.ino)));
    }

    #[test]
    fn records_resolve_to_full_paths() {
        let anchors = Anchors::default();
        let a = anchors.intern(Path::new("/var/lib/pharmacy"));
        let root = anchors.intern(Path::new("/"));
        let walked = RawPath {
            anchor: Some(a),
            chain: "2026/rx.db".into(),
            ..RawPath::default()
        };
        assert_eq!(anchors.resolve(&walked, 0), "/var/lib/pharmacy/2026/rx.db");
        let named = RawPath {
            anchor: Some(root),
            name: "/etc//./shadow".into(),
            ..RawPath::default()
        };
        assert_eq!(anchors.resolve(&named, 0), "/etc/shadow");
        let relative = RawPath {
            anchor: Some(a),
            chain: "2026".into(),
            name: "new.db".into(),
            ..RawPath::default()
        };
        assert_eq!(
            anchors.resolve(&relative, 0),
            "/var/lib/pharmacy/2026/new.db"
        );
        let unknown = RawPath {
            anchor: None,
            name: "x".into(),
            ..RawPath::default()
        };
        assert_eq!(anchors.resolve(&unknown, 0), "x");

        let mut record = FileRecord {
            raw_path: walked,
            raw_new_path: Some(RawPath {
                truncated: true,
                ..relative
            }),
            ..FileRecord::default()
        };
        anchors.resolve_record(&mut record);
        assert_eq!(record.path, "/var/lib/pharmacy/2026/rx.db");
        assert_eq!(
            record.new_path.as_deref(),
            Some("/var/lib/pharmacy/2026/new.db")
        );
        let new = record.raw_new_path.expect("kept");
        assert!(new.truncated && new.chain.is_empty() && new.name.is_empty());
        assert_eq!(record.raw_path.anchor, Some(a));
        assert!(record.raw_path.chain.is_empty());
    }
}
