//! Policy file -> the exact entries for the kernel maps: every allowed path
//! is opened, identified (device, inode, size, mtime, ctime from fstat of the
//! opened file) and hashed; a file whose hash is not the one the policy
//! names is NOT allowed (and reported).

use std::{
    fs::File,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use sensor_common::{AllowEntry, DenyParentKey, DenyUidKey, FileId};

use super::file::{Mode, PolicyError, PolicyFile};
use crate::{
    enrich::hash_cache::sha256_hex,
    events::{file_id, user_dev_to_kernel},
};

/// Files larger than this are never allowlisted (and never hashed).
const MAX_BINARY_BYTES: u64 = 1 << 30;
/// Directory depth walked below a trusted root.
const MAX_ROOT_DEPTH: usize = 16;

/// A policy ready to be written to the kernel.
#[derive(Clone, Debug, Default)]
pub struct CompiledPolicy {
    pub mode: Mode,
    /// cgroup v2 ids (inode numbers of the cgroup directories); empty: all.
    pub scope: Vec<u64>,
    pub entries: Vec<(FileId, AllowEntry)>,
    /// Deny-in-context entries, valued with their rule index.
    pub deny_parent: Vec<(DenyParentKey, u32)>,
    pub deny_uid: Vec<(DenyUidKey, u32)>,
    /// Rule names by `AllowEntry::rule`.
    pub rules: Vec<String>,
    /// Expected SHA-256 by rule (None for trusted roots).
    pub expected: Vec<Option<String>>,
    /// Files that were not allowed and why (missing, hash mismatch, ...).
    pub not_allowed: Vec<String>,
}

/// The dynamic loader run as a program executes any file it is given
/// without an exec of that file: never allowlist it (programs that need it
/// get it from the kernel through PT_INTERP, with no exec check).
pub fn is_dynamic_loader(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
        n.starts_with("ld-linux") || n.starts_with("ld.so") || n.starts_with("ld-musl")
    })
}

/// One allowlisted file as hashed now.
pub struct Hashed {
    pub id: FileId,
    pub entry: AllowEntry,
    pub sha256: String,
}

/// Opens and hashes `path`, identifying the opened file.
pub fn hash_file(path: &Path, rule: u32) -> std::io::Result<Hashed> {
    if is_dynamic_loader(path) || std::fs::canonicalize(path).is_ok_and(|p| is_dynamic_loader(&p)) {
        return Err(std::io::Error::other(
            "the dynamic loader is never allowlisted: it would run any file it is given",
        ));
    }
    let mut file = File::open(path)?;
    let before = file.metadata()?;
    if !before.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if before.size() > MAX_BINARY_BYTES {
        return Err(std::io::Error::other("larger than 1 GiB"));
    }
    let (sha256, read) = sha256_hex(&mut file, MAX_BINARY_BYTES)?;
    let after = file.metadata()?;
    if read != before.size()
        || after.ctime_nsec() != before.ctime_nsec()
        || after.ctime() != before.ctime()
    {
        return Err(std::io::Error::other("changed while being hashed"));
    }
    Ok(Hashed {
        id: FileId {
            dev: user_dev_to_kernel(before.dev()),
            _pad: 0,
            ino: before.ino(),
        },
        entry: AllowEntry {
            size: before.size(),
            mtime_sec: before.mtime(),
            ctime_sec: before.ctime(),
            mtime_nsec: before.mtime_nsec() as u32,
            ctime_nsec: before.ctime_nsec() as u32,
            rule,
            _pad: 0,
        },
        sha256,
    })
}

/// The id the kernel gives the cgroup v2 directory `path` (its inode
/// number), or why `path` is not one.
fn cgroup_id(path: &Path) -> Result<u64, String> {
    let fs = nix::sys::statfs::statfs(path).map_err(|e| e.desc().to_owned())?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Err("not a cgroup v2 directory (see the cgroup2 line of /proc/mounts)".to_owned());
    }
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("not a cgroup v2 directory".to_owned());
    }
    Ok(meta.ino())
}

/// Resolves and hashes everything `policy` allows. Blocking I/O.
pub fn compile(policy: &PolicyFile, origin: &Path) -> Result<CompiledPolicy, PolicyError> {
    let mut out = CompiledPolicy {
        mode: policy.mode,
        ..Default::default()
    };
    for (i, cgroup) in policy.scope_cgroups.iter().enumerate() {
        let id = cgroup_id(cgroup).map_err(|reason| PolicyError::Cgroup {
            path: origin.to_owned(),
            key: format!("scope_cgroups[{i}]"),
            cgroup: cgroup.clone(),
            reason,
        })?;
        out.scope.push(id);
    }
    for rule in &policy.allow {
        let index = out.rules.len() as u32;
        out.rules.push(rule.path.display().to_string());
        out.expected.push(Some(rule.sha256.to_ascii_lowercase()));
        match hash_file(&rule.path, index) {
            Ok(h) if h.sha256.eq_ignore_ascii_case(&rule.sha256) => {
                out.entries.push((h.id, h.entry))
            }
            Ok(h) => out.not_allowed.push(format!(
                "{}: sha256 is {}, policy says {}",
                rule.path.display(),
                h.sha256,
                rule.sha256
            )),
            Err(e) => out
                .not_allowed
                .push(format!("{}: {e}", rule.path.display())),
        }
    }
    for root in &policy.trusted_root {
        let index = out.rules.len() as u32;
        out.rules
            .push(format!("trusted_root {}", root.path.display()));
        out.expected.push(None);
        let mut files = Vec::new();
        executables_below(&root.path, 0, &mut files, &mut out.not_allowed);
        for path in files {
            match hash_file(&path, index) {
                Ok(h) => out.entries.push((h.id, h.entry)),
                Err(e) => out.not_allowed.push(format!("{}: {e}", path.display())),
            }
        }
    }
    for (i, deny) in policy.deny.iter().enumerate() {
        let index = out.rules.len() as u32;
        out.rules
            .push(format!("deny[{i}] {}", deny.program.display()));
        out.expected.push(None);
        let key = |path: &Path, what: &str| {
            file_id(path).map_err(|source| PolicyError::Invalid {
                path: origin.to_owned(),
                key: format!("deny[{i}].{what}"),
                reason: format!("{}: {source}", path.display()),
            })
        };
        let program = key(&deny.program, "program")?;
        for parent in &deny.parents {
            let parent = key(parent, "parents")?;
            out.deny_parent
                .push((DenyParentKey { program, parent }, index));
        }
        for &uid in &deny.uids {
            out.deny_uid.push((
                DenyUidKey {
                    program,
                    uid,
                    _pad: 0,
                },
                index,
            ));
        }
    }
    Ok(out)
}

/// Regular files with an exec bit below `dir` (symlinks are not followed).
pub fn executables_below(
    dir: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
    unreadable: &mut Vec<String>,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return unreadable.push(format!("{}: {e}", dir.display())),
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() && depth < MAX_ROOT_DEPTH {
            executables_below(&path, depth + 1, out, unreadable);
        } else if kind.is_file()
            && entry
                .metadata()
                .is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
        {
            out.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scope must be a cgroup v2 directory: the mount point itself is one;
    /// a plain directory, a file in the cgroup file system and a missing
    /// path are not.
    #[test]
    fn scope_paths_must_be_cgroup2_directories() {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .expect("a cgroup2 mount");
        assert_eq!(
            cgroup_id(&root).unwrap(),
            std::fs::metadata(&root).unwrap().ino()
        );
        let tmp = tempfile::tempdir().unwrap();
        for bad in [
            tmp.path().to_path_buf(),
            tmp.path().join("missing"),
            root.join("cgroup.procs"),
        ] {
            assert!(cgroup_id(&bad).is_err(), "{} accepted", bad.display());
        }
    }
    use crate::policy::file::PolicyFile;

    #[test]
    fn allows_matching_hashes_only_and_walks_trusted_roots() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        let bad = dir.path().join("bad");
        std::fs::write(&good, b"abc").unwrap();
        std::fs::write(&bad, b"xyz").unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        for (name, mode) in [("a", 0o755), ("sub/b", 0o700), ("data", 0o644)] {
            let p = root.join(name);
            std::fs::write(&p, name).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let text = format!(
            "mode = \"enforce\"\n[[allow]]\npath = \"{}\"\nsha256 = \"{abc}\"\n\
             [[allow]]\npath = \"{}\"\nsha256 = \"{abc}\"\n\
             [[allow]]\npath = \"{}/missing\"\nsha256 = \"{abc}\"\n\
             [[trusted_root]]\npath = \"{}\"\n",
            good.display(),
            bad.display(),
            dir.path().display(),
            root.display()
        );
        let policy = PolicyFile::parse(&text, Path::new("t")).unwrap();
        let compiled = compile(&policy, Path::new("t")).unwrap();
        // good + a + sub/b; not bad (hash), not missing, not data (no x bit).
        assert_eq!(compiled.entries.len(), 3, "{:?}", compiled.not_allowed);
        assert_eq!(compiled.not_allowed.len(), 2, "{:?}", compiled.not_allowed);
        let meta = std::fs::metadata(&good).unwrap();
        let (id, entry) = compiled.entries[0];
        assert_eq!(id.ino, meta.ino());
        assert_eq!(crate::events::kernel_dev_to_user(id.dev), meta.dev());
        assert_eq!((entry.size, entry.rule), (3, 0));
        assert_eq!(
            compiled.rules[3],
            format!("trusted_root {}", root.display())
        );
    }
}
