//! Keeps the kernel's allowlist in step with the policy file: reloads on
//! request (SIGHUP) or when the file changes, and gives trust back to an
//! allowlisted file that changed once its new content hashes right.
//!
//! Runs on its own thread: compiling hashes files (blocking I/O).

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    time::Duration,
};

use sensor_common::FileId;

use super::{
    compile::{CompiledPolicy, Hashed, compile, hash_file, root_only_chain, root_only_file},
    file::{PolicyError, PolicyFile},
    kernel::PolicyMaps,
};

/// How often the policy file is checked for changes.
const FILE_POLL: Duration = Duration::from_secs(2);

/// Rule names by index, shared with the event reader for reports; with
/// the generation in force.
#[derive(Clone, Debug, Default)]
pub struct RuleNames(Arc<RwLock<Vec<String>>>, PolicyState);

/// The generation in force and the reloads refused, for the metrics.
#[derive(Clone, Debug, Default)]
pub struct PolicyState(Arc<(AtomicU64, AtomicU64)>);

impl PolicyState {
    pub fn generation(&self) -> u64 {
        self.0.0.load(Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.0.1.load(Relaxed)
    }
}

impl RuleNames {
    /// The generation in force and the reloads refused.
    pub fn policy_state(&self) -> PolicyState {
        self.1.clone()
    }

    pub fn name(&self, index: Option<u32>) -> String {
        let Some(index) = index else {
            return "not in allowlist".to_owned();
        };
        self.0
            .read()
            .ok()
            .and_then(|r| r.get(index as usize).cloned())
            .unwrap_or_else(|| format!("rule #{index}"))
    }
}

/// What the manager thread is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Re-read the policy file now (SIGHUP).
    Reload,
    /// The kernel reported this allowlisted file modified: re-hash it.
    Retrust {
        file: FileId,
        rule: u32,
        path: String,
    },
    Stop,
}

/// Loads and compiles a policy file (the start-up check: errors stop the
/// sensor before anything is attached).
pub fn load(path: &Path) -> Result<CompiledPolicy, PolicyError> {
    compile(&PolicyFile::load(path)?, path)
}

/// Writes `compiled` to the kernel and starts the manager thread.
pub fn start(
    mut maps: PolicyMaps,
    path: PathBuf,
    compiled: CompiledPolicy,
) -> Result<
    (
        mpsc::Sender<Command>,
        RuleNames,
        std::thread::JoinHandle<()>,
    ),
    PolicyError,
> {
    let adopted = maps.current();
    if adopted.generation != 0 {
        tracing::info!(
            generation = adopted.generation,
            mode = adopted.mode,
            "allowlist: adopted the pinned policy an earlier sensor left in force"
        );
    }
    let generation = maps.apply(&compiled, &path)?;
    log_applied(&compiled, generation);
    let rules = RuleNames(
        Arc::new(RwLock::new(compiled.rules.clone())),
        PolicyState::default(),
    );
    rules.1.0.0.store(generation, Relaxed);
    let (tx, rx) = mpsc::channel();
    let manager = Manager {
        maps,
        stamp: stamp(&path),
        path,
        compiled,
        rules: rules.clone(),
    };
    let handle = std::thread::Builder::new()
        .name("rxsentry-policy".into())
        .spawn(move || manager.run(rx))
        .map_err(|source| PolicyError::Read {
            path: PathBuf::from("(policy thread)"),
            source,
        })?;
    Ok((tx, rules, handle))
}

fn log_applied(compiled: &CompiledPolicy, generation: u64) {
    tracing::info!(
        generation,
        mode = compiled.mode.as_str(),
        allowed_files = compiled.entries.len(),
        not_allowed = compiled.not_allowed.len(),
        scoped_cgroups = compiled.scope.len(),
        "allowlist policy in force"
    );
    for file in &compiled.not_allowed {
        tracing::warn!("allowlist: not allowed: {file}");
    }
}

/// (mtime, ctime, size, inode) of the policy file, to notice edits.
fn stamp(path: &Path) -> Option<(i64, i64, u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.mtime_nsec() + m.mtime() * 1_000_000_000,
        m.ctime(),
        m.size(),
        m.ino(),
    ))
}

struct Manager {
    maps: PolicyMaps,
    path: PathBuf,
    compiled: CompiledPolicy,
    rules: RuleNames,
    stamp: Option<(i64, i64, u64, u64)>,
}

impl Manager {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            match rx.recv_timeout(FILE_POLL) {
                Ok(Command::Reload) => self.reload("SIGHUP"),
                Ok(Command::Retrust { file, rule, path }) => self.retrust(file, rule, &path),
                Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = stamp(&self.path);
                    if now.is_some() && now != self.stamp {
                        self.reload("policy file changed");
                    }
                }
            }
        }
        // The maps and the verdict link are pinned: the policy in force
        // stays in force after the daemon (docs/allowlisting.md).
    }

    /// Compiles the file and swaps it in; on any error the generation in
    /// force stays and the error is logged.
    fn reload(&mut self, why: &str) {
        let started = std::time::Instant::now();
        self.stamp = stamp(&self.path);
        let result = load(&self.path).and_then(|compiled| {
            let generation = self.maps.apply(&compiled, &self.path)?;
            Ok((compiled, generation))
        });
        match result {
            Ok((compiled, generation)) => {
                tracing::info!(
                    reason = why,
                    took_ms = started.elapsed().as_millis() as u64,
                    "allowlist reloaded"
                );
                log_applied(&compiled, generation);
                self.rules.1.0.0.store(generation, Relaxed);
                if let Ok(mut rules) = self.rules.0.write() {
                    rules.clone_from(&compiled.rules);
                }
                self.compiled = compiled;
            }
            Err(e) => {
                self.rules.1.0.1.fetch_add(1, Relaxed);
                tracing::error!(
                    reason = why,
                    generation = self.maps.generation(),
                    "allowlist policy refused, the previous generation stays in force: {e}"
                )
            }
        }
    }

    /// Trust comes back only if the file's new content is what the rule
    /// allows: for an `[[allow]]` rule, the policy's SHA-256; for a trusted
    /// root, the SHA-256 recorded when the policy was compiled, with the
    /// file still below the root, owned by root, not group/world-writable,
    /// in directories only root can write.
    fn retrust(&mut self, file: FileId, rule: u32, path: &str) {
        let Some(expected) = self.compiled.expected.get(rule as usize) else {
            return;
        };
        let hashed = match hash_file(Path::new(path), rule) {
            Ok(hashed) => hashed,
            Err(e) => {
                tracing::warn!(
                    path,
                    "allowlisted file changed, cannot re-hash it: stays untrusted: {e}"
                );
                return;
            }
        };
        if hashed.id != file {
            return;
        }
        let verdict = match expected {
            Some(sha256) if hashed.sha256.eq_ignore_ascii_case(sha256) => Ok(()),
            Some(_) => Err("content is not the policy's".to_owned()),
            None => self.root_verdict(file, rule, path, &hashed),
        };
        match verdict {
            Ok(()) => {
                if self.maps.update_live(hashed.id, hashed.entry).is_ok() {
                    tracing::info!(path, "allowlisted file re-hashed: trusted again");
                }
            }
            Err(why) => tracing::warn!(
                path,
                sha256 = %hashed.sha256,
                "allowlisted file changed: stays untrusted: {why}"
            ),
        }
    }

    /// Whether a changed file of trusted root `rule` may be trusted again.
    fn root_verdict(
        &self,
        file: FileId,
        rule: u32,
        path: &str,
        hashed: &Hashed,
    ) -> Result<(), String> {
        let root = self
            .compiled
            .root_dirs
            .get(&rule)
            .ok_or("not a trusted root rule")?;
        let recorded = self
            .compiled
            .root_hashes
            .get(&file)
            .ok_or("no hash recorded for this file when the policy was compiled")?;
        if !hashed.sha256.eq_ignore_ascii_case(recorded) {
            return Err(format!(
                "content is not the one hashed at compile ({recorded})"
            ));
        }
        root_only_file(hashed.uid, hashed.mode)?;
        let canonical = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
        let parent = canonical.parent().ok_or("no parent directory")?;
        if !canonical.starts_with(root) {
            return Err(format!("no longer below {}", root.display()));
        }
        root_only_chain(parent)?;
        Ok(())
    }
}
