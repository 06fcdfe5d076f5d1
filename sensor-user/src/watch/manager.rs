//! The thread that keeps the watched set current: at start, on SIGHUP, on a
//! timer (paths that appeared), and when a watched file was replaced by a
//! rename or unlinked (its new inode must be watched, not the old one); and
//! the watched files by identity: a scan whenever the set changes (and on
//! SIGHUP), plus files renamed or linked into it.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::Duration,
};

use sensor_common::file_op;

use super::{
    Anchors, CompiledWatches, WatchError,
    identity::{self, IdentityScan},
    kernel::WatchMaps,
};
use crate::{
    config::{FilesConfig, WatchRule},
    transport::DropTracker,
};

/// Requests to the watch manager.
#[derive(Debug)]
pub enum Command {
    /// Re-read the file system for the configured set.
    Refresh(&'static str),
    /// A watched path was unlinked or renamed: if it is a root, its inode
    /// changed (or is gone) and the set must be re-read.
    PathChanged(String),
    /// A name was renamed or linked into the watched set: what it names
    /// joins the watched files by identity.
    Arrived(String),
    /// The detection rules were reloaded: the paths they need now
    /// ([`super::rule_paths::watch_rules`]), besides the configured ones.
    RuleWatches(Vec<WatchRule>),
    Stop,
}

/// Tells the manager about a successful unlink or rename (cheap: the
/// manager decides whether it touched a root).
pub fn notice(tx: &mpsc::Sender<Command>, file: &crate::events::FileRecord) {
    if file.result != 0 || !matches!(file.op, file_op::UNLINK | file_op::RENAME | file_op::LINK) {
        return;
    }
    if file.op != file_op::LINK {
        let _ = tx.send(Command::PathChanged(file.path.clone()));
    }
    if let Some(new_path) = &file.new_path {
        if file.op != file_op::LINK {
            let _ = tx.send(Command::PathChanged(new_path.clone()));
        }
        let _ = tx.send(Command::Arrived(new_path.clone()));
    }
}

/// Fills the maps once (an error here stops start-up), then starts the
/// thread that refreshes them.
pub fn start(
    mut maps: WatchMaps,
    config: FilesConfig,
    self_files: Vec<PathBuf>,
    rule_watches: Vec<WatchRule>,
    anchors: Anchors,
    drops: Arc<DropTracker>,
) -> Result<(mpsc::Sender<Command>, std::thread::JoinHandle<()>), WatchError> {
    let compiled =
        CompiledWatches::build(&with_rules(&config, &rule_watches), &self_files, &anchors)?;
    maps.apply(&compiled)?;
    log_set(&compiled, "start");
    let (tx, rx) = mpsc::channel();
    let mut manager = Manager {
        maps,
        config,
        self_files,
        rule_watches,
        anchors,
        current: compiled,
        drops,
        scan_overflow: 0,
        refused: 0,
    };
    manager.scan_identities("start")?;
    let handle = std::thread::Builder::new()
        .name("rxsentry-watch".into())
        .spawn(move || manager.run(rx))
        .map_err(WatchError::Thread)?;
    Ok((tx, handle))
}

fn log_set(c: &CompiledWatches, why: &str) {
    tracing::info!(
        reason = why,
        roots = c.roots.len(),
        kernel_entries = c.watched.len(),
        prefixes = c.prefixes.len(),
        excluded_programs = c.excluded_exes.len(),
        "file watch set in force"
    );
    for missing in &c.missing {
        tracing::warn!("file watch: {missing} does not exist (looked for again at each refresh)");
    }
}

/// The configured set plus what the detection rules need.
fn with_rules(config: &FilesConfig, rule_watches: &[WatchRule]) -> FilesConfig {
    let mut merged = config.clone();
    merged.watch.extend(rule_watches.iter().cloned());
    merged
}

struct Manager {
    maps: WatchMaps,
    config: FilesConfig,
    self_files: Vec<PathBuf>,
    rule_watches: Vec<WatchRule>,
    anchors: Anchors,
    current: CompiledWatches,
    drops: Arc<DropTracker>,
    /// Files the last scan could not add, and those refused since (renamed
    /// or linked in while the map was full).
    scan_overflow: u64,
    refused: u64,
}

impl Manager {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let period = match self.config.refresh_seconds {
            0 => Duration::MAX,
            s => Duration::from_secs(s),
        };
        loop {
            match rx.recv_timeout(period) {
                Ok(Command::Refresh(why)) => {
                    // A reload (SIGHUP) also re-reads the files by identity,
                    // dropping stale ones (deleted files whose inode may be
                    // reused); the timer only when the set changed.
                    let changed = self.refresh(why);
                    if changed || why != "timer" {
                        self.rescan(why);
                    }
                }
                Ok(Command::Arrived(path)) => self.arrived(Path::new(&path)),
                Ok(Command::RuleWatches(rules)) => {
                    self.rule_watches = rules;
                    if self.refresh("detection rules reloaded") {
                        self.rescan("detection rules reloaded");
                    }
                }
                Ok(Command::PathChanged(path)) => {
                    if self
                        .current
                        .roots
                        .iter()
                        .any(|root| root.as_os_str() == path.as_str())
                    {
                        let why = "a watched file was replaced or removed";
                        if self.refresh(why) {
                            self.rescan(why);
                        }
                    }
                }
                Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.refresh("timer") {
                        self.rescan("timer");
                    }
                }
            }
        }
        let _ = self.maps.disable();
    }

    /// Rebuilds the set; on error the maps keep the set in force. True when
    /// it changed.
    fn refresh(&mut self, why: &'static str) -> bool {
        let config = with_rules(&self.config, &self.rule_watches);
        let result =
            CompiledWatches::build(&config, &self.self_files, &self.anchors).and_then(|c| {
                if c != self.current {
                    self.maps.apply(&c)?;
                }
                Ok(c)
            });
        match result {
            Ok(c) if c != self.current => {
                log_set(&c, why);
                self.current = c;
                true
            }
            Ok(_) => {
                tracing::debug!(reason = why, "file watch set unchanged");
                false
            }
            Err(e) => {
                tracing::error!(
                    reason = why,
                    "file watch set not refreshed, the previous one stays in force: {e}"
                );
                false
            }
        }
    }

    /// [`Self::scan_identities`], an error logged (the map keeps what it has).
    fn rescan(&mut self, why: &str) {
        if let Err(e) = self.scan_identities(why) {
            tracing::error!("watched files by identity not re-read: {e}");
        }
    }

    /// Scans the watched trees and makes the kernel's identity map hold
    /// what it found; logs what it cost and what did not fit.
    fn scan_identities(&mut self, why: &str) -> Result<(), WatchError> {
        let max = self.config.identity_max_entries;
        let scan = IdentityScan::run(&self.current, max);
        let started = std::time::Instant::now();
        let refused = self.maps.apply_identities(&scan.files)?;
        let map_ms = started.elapsed().as_millis() as u64;
        let overflow = scan.overflow + refused;
        self.scan_overflow = overflow;
        self.refused = 0;
        self.drops.set_scan_identity_overflow(overflow);
        tracing::info!(
            reason = why,
            files = scan.files.len(),
            unreadable = scan.unreadable,
            overflow,
            scan_ms = scan.elapsed.as_millis() as u64,
            map_ms,
            "watched files by identity"
        );
        if overflow > 0 {
            tracing::warn!(
                "{overflow} watched file(s) beyond files.identity_max_entries = {max}: their other \
                 names (hard links) are not recognised (counted as file_identity_overflow)"
            );
        }
        self.anchors.set_identities(scan.paths);
        Ok(())
    }

    /// A name renamed or linked into the set: the file (or the tree below a
    /// directory) joins the watched files by identity.
    fn arrived(&mut self, path: &Path) {
        use std::os::unix::fs::MetadataExt as _;
        let Some((_, entry)) = identity::entry_for(&self.current, path) else {
            return;
        };
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        let mut scan = IdentityScan::default();
        let room = self.config.identity_max_entries;
        if meta.is_dir() {
            scan.tree(&self.current, path, meta.dev(), entry, room);
        } else if !meta.file_type().is_symlink() {
            let dev = crate::events::device::kernel_device_at(path, &meta);
            scan.add(dev, &meta, path, entry, room);
        }
        match self.maps.add_identities(&scan.files) {
            Ok(refused) if refused + scan.overflow > 0 => {
                self.refused += refused + scan.overflow;
                self.drops
                    .set_scan_identity_overflow(self.scan_overflow + self.refused);
            }
            Ok(_) => {}
            Err(e) => tracing::error!(
                "{}: not added to the watched files by identity: {e}",
                path.display()
            ),
        }
        for (id, path) in scan.paths {
            self.anchors.add_identity(id, &path);
        }
    }
}
