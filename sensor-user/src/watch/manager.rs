//! The thread that keeps the watched set current: at start, on SIGHUP, on a
//! timer (paths that appeared), and when a watched file was replaced by a
//! rename or unlinked (its new inode must be watched, not the old one).

use std::{path::PathBuf, sync::mpsc, time::Duration};

use super::{Anchors, CompiledWatches, WatchError, kernel::WatchMaps};
use crate::config::FilesConfig;

/// Requests to the watch manager.
#[derive(Debug)]
pub enum Command {
    /// Re-read the file system for the configured set.
    Refresh(&'static str),
    /// A watched path was unlinked or renamed: if it is a root, its inode
    /// changed (or is gone) and the set must be re-read.
    PathChanged(String),
    Stop,
}

/// Tells the manager about a successful unlink or rename (cheap: the
/// manager decides whether it touched a root).
pub fn notice(tx: &mpsc::Sender<Command>, file: &crate::events::FileRecord) {
    use sensor_common::file_op;
    if file.result != 0 || !matches!(file.op, file_op::UNLINK | file_op::RENAME) {
        return;
    }
    let _ = tx.send(Command::PathChanged(file.path.clone()));
    if let Some(new_path) = &file.new_path {
        let _ = tx.send(Command::PathChanged(new_path.clone()));
    }
}

/// Fills the maps once (an error here stops start-up), then starts the
/// thread that refreshes them.
pub fn start(
    mut maps: WatchMaps,
    config: FilesConfig,
    self_files: Vec<PathBuf>,
    anchors: Anchors,
) -> Result<(mpsc::Sender<Command>, std::thread::JoinHandle<()>), WatchError> {
    let compiled = CompiledWatches::build(&config, &self_files, &anchors)?;
    maps.apply(&compiled)?;
    log_set(&compiled, "start");
    let (tx, rx) = mpsc::channel();
    let manager = Manager {
        maps,
        config,
        self_files,
        anchors,
        current: compiled,
    };
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

struct Manager {
    maps: WatchMaps,
    config: FilesConfig,
    self_files: Vec<PathBuf>,
    anchors: Anchors,
    current: CompiledWatches,
}

impl Manager {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let period = match self.config.refresh_seconds {
            0 => Duration::MAX,
            s => Duration::from_secs(s),
        };
        loop {
            match rx.recv_timeout(period) {
                Ok(Command::Refresh(why)) => self.refresh(why),
                Ok(Command::PathChanged(path)) => {
                    if self
                        .current
                        .roots
                        .iter()
                        .any(|root| root.as_os_str() == path.as_str())
                    {
                        self.refresh("a watched file was replaced or removed");
                    }
                }
                Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => self.refresh("timer"),
            }
        }
        let _ = self.maps.disable();
    }

    /// Rebuilds the set; on error the maps keep the set in force.
    fn refresh(&mut self, why: &'static str) {
        let result = CompiledWatches::build(&self.config, &self.self_files, &self.anchors)
            .and_then(|c| {
                if c != self.current {
                    self.maps.apply(&c)?;
                }
                Ok(c)
            });
        match result {
            Ok(c) if c != self.current => {
                log_set(&c, why);
                self.current = c;
            }
            Ok(_) => tracing::debug!(reason = why, "file watch set unchanged"),
            Err(e) => tracing::error!(
                reason = why,
                "file watch set not refreshed, the previous one stays in force: {e}"
            ),
        }
    }
}
