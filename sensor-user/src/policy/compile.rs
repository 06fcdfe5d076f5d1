//! Policy file -> the exact entries for the kernel maps: every allowed path
//! is opened, identified (device, inode, size, mtime, ctime from fstat of the
//! opened file) and hashed; a file whose hash is not the one the policy
//! names is NOT allowed (and reported).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use sensor_common::{AllowEntry, DenyParentKey, DenyUidKey, FileId};

use super::file::{Mode, PolicyError, PolicyFile};
use crate::{
    enrich::hash_cache::sha256_hex,
    events::{device::kernel_device, file_id, user_dev_to_kernel},
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
    /// Canonical directory of each `trusted_root` rule, by rule index.
    pub root_dirs: HashMap<u32, PathBuf>,
    /// SHA-256 of each file a trusted root allowed, as hashed at compile:
    /// a changed file gets trust back only with this content.
    pub root_hashes: HashMap<FileId, String>,
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

/// Folders the system's dynamic loaders live in; their multiarch
/// subfolders (`x86_64-linux-gnu`, ...) are searched too.
const LOADER_DIRS: &[&str] = &[
    "/lib",
    "/lib64",
    "/lib32",
    "/usr/lib",
    "/usr/lib64",
    "/usr/lib32",
];

/// How long a scan of the system's loaders is reused: a trusted root of
/// hundreds of files is compiled with one scan, and a new loader (a libc
/// upgrade) is seen at a compile soon after.
const LOADER_SCAN_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// SHA-256 of every dynamic loader of this system, found by name in
/// [`LOADER_DIRS`]: a copy of one under another name runs any file it is
/// given just the same, so it is refused by its content.
fn system_loader_hashes() -> HashSet<String> {
    static SCAN: std::sync::Mutex<Option<(std::time::Instant, HashSet<String>)>> =
        std::sync::Mutex::new(None);
    let mut scan = SCAN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((at, hashes)) = scan.as_ref()
        && at.elapsed() < LOADER_SCAN_TTL
    {
        return hashes.clone();
    }
    let mut dirs: Vec<PathBuf> = LOADER_DIRS.iter().map(PathBuf::from).collect();
    for dir in LOADER_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        dirs.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir() && p.to_string_lossy().contains("-linux-")),
        );
    }
    let mut hashes = HashSet::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if !is_dynamic_loader(&path) {
                continue;
            }
            if let Ok(mut file) = File::open(&path)
                && let Ok((hex, _)) = sha256_hex(&mut file, MAX_BINARY_BYTES)
            {
                hashes.insert(hex);
            }
        }
    }
    *scan = Some((std::time::Instant::now(), hashes.clone()));
    hashes
}

/// One allowlisted file as hashed now.
pub struct Hashed {
    pub id: FileId,
    pub entry: AllowEntry,
    pub sha256: String,
    /// Owner and mode of the opened file (fstat), for trusted roots.
    pub uid: u32,
    pub mode: u32,
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
    if system_loader_hashes().contains(&sha256) {
        return Err(std::io::Error::other(
            "a copy of the dynamic loader (its content) is never allowlisted: it would run any \
             file it is given",
        ));
    }
    let after = file.metadata()?;
    if read != before.size()
        || after.ctime_nsec() != before.ctime_nsec()
        || after.ctime() != before.ctime()
    {
        return Err(std::io::Error::other("changed while being hashed"));
    }
    Ok(Hashed {
        id: FileId {
            dev: user_dev_to_kernel(kernel_device(&file, &before)),
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
        uid: before.uid(),
        mode: before.mode(),
    })
}

/// Why a file's owner or mode lets someone other than root change it.
pub fn root_only_file(uid: u32, mode: u32) -> Result<(), String> {
    if uid != 0 {
        return Err(format!("owned by uid {uid}, not root"));
    }
    if mode & 0o022 != 0 {
        return Err(format!("group/world-writable (mode {:o})", mode & 0o7777));
    }
    Ok(())
}

/// Canonicalizes `dir` and checks it and every directory above it up to
/// `/`: each must be owned by root and not group/world-writable (a sticky
/// bit is no exception). On failure: the offending path and why.
pub fn root_only_chain(dir: &Path) -> Result<PathBuf, String> {
    let canonical = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for ancestor in canonical.ancestors() {
        let meta = std::fs::symlink_metadata(ancestor)
            .map_err(|e| format!("{}: {e}", ancestor.display()))?;
        if !meta.is_dir() {
            return Err(format!("{}: not a directory", ancestor.display()));
        }
        root_only_file(meta.uid(), meta.mode())
            .map_err(|why| format!("{}: {why}", ancestor.display()))?;
    }
    Ok(canonical)
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
    for (i, root) in policy.trusted_root.iter().enumerate() {
        let index = out.rules.len() as u32;
        out.rules
            .push(format!("trusted_root {}", root.path.display()));
        out.expected.push(None);
        let dir = root_only_chain(&root.path).map_err(|reason| PolicyError::Invalid {
            path: origin.to_owned(),
            key: format!("trusted_root[{i}].path"),
            reason: format!("only root may write it and every directory above it: {reason}"),
        })?;
        let mut files = Vec::new();
        executables_below(&dir, 0, &mut files, &mut out.not_allowed);
        // Directories between the root and its files, checked once each.
        let mut dirs: HashMap<PathBuf, Result<(), String>> = HashMap::new();
        for path in files {
            let parent = path.parent().unwrap_or(&dir).to_owned();
            let chain = dirs
                .entry(parent)
                .or_insert_with_key(|parent| root_only_chain(parent).map(drop));
            if let Err(why) = chain {
                out.not_allowed.push(format!("{}: {why}", path.display()));
                continue;
            }
            match hash_file(&path, index) {
                Ok(h) => match root_only_file(h.uid, h.mode) {
                    Ok(()) => {
                        out.root_hashes.insert(h.id, h.sha256);
                        out.entries.push((h.id, h.entry));
                    }
                    Err(why) => out.not_allowed.push(format!("{}: {why}", path.display())),
                },
                Err(e) => out.not_allowed.push(format!("{}: {e}", path.display())),
            }
        }
        out.root_dirs.insert(index, dir);
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

    /// A renamed copy of the system's loader is refused by its content;
    /// the program beside it is not.
    #[test]
    fn a_renamed_copy_of_the_dynamic_loader_is_refused() {
        let loader = std::fs::canonicalize("/lib64/ld-linux-x86-64.so.2").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("innocent-tool");
        std::fs::copy(&loader, &copy).unwrap();
        let error = hash_file(&copy, 0).err().expect("a loader copy is refused");
        assert!(
            error.to_string().contains("copy of the dynamic loader"),
            "{error}"
        );
        assert!(hash_file(Path::new("/usr/bin/touch"), 0).is_ok());
    }

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
        let dir = scratch();
        let good = dir.path().join("good");
        let bad = dir.path().join("bad");
        std::fs::write(&good, b"abc").unwrap();
        std::fs::write(&bad, b"xyz").unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        for d in [root.clone(), root.join("sub")] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
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

    /// A scratch directory only root can write, whose chain up to `/` is
    /// root-owned and 0755 (/run here; /tmp is 1777 and would be refused).
    fn scratch() -> tempfile::TempDir {
        let dir = tempfile::tempdir_in("/run").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn mkdir(path: &Path, mode: u32) {
        std::fs::create_dir_all(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn executable(path: &Path, content: &str, mode: u32) {
        std::fs::write(path, content).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn compile_root(root: &Path) -> Result<CompiledPolicy, PolicyError> {
        let text = format!("[[trusted_root]]\npath = \"{}\"\n", root.display());
        compile(
            &PolicyFile::parse(&text, Path::new("t")).unwrap(),
            Path::new("t"),
        )
    }

    /// A group-writable directory anywhere between the root and `/` lets a
    /// non-root user swap the files: the policy is refused, naming the entry
    /// and that directory.
    #[test]
    fn group_writable_directory_in_the_chain_refuses_the_policy() {
        let dir = scratch();
        let shared = dir.path().join("shared");
        mkdir(&shared, 0o775);
        let root = shared.join("pos/bin");
        mkdir(&shared.join("pos"), 0o755);
        mkdir(&root, 0o755);
        executable(&root.join("tool"), "#!/bin/sh\n", 0o755);
        let err = compile_root(&root).unwrap_err().to_string();
        assert!(err.contains("trusted_root[0].path"), "{err}");
        assert!(
            err.contains(&format!("{}: group/world-writable", shared.display())),
            "{err}"
        );
        // Owned by someone else: refused too.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&shared, Some(65534), None).unwrap();
        let err = compile_root(&root).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{}: owned by uid 65534", shared.display())),
            "{err}"
        );
        std::os::unix::fs::chown(&shared, Some(0), None).unwrap();
        assert!(compile_root(&root).is_ok());
    }

    /// The sticky bit keeps others from renaming files, not from creating
    /// them: a root under /tmp (1777) is refused, naming /tmp.
    #[test]
    fn sticky_tmp_is_no_exception() {
        let tmp = Path::new("/tmp");
        if std::fs::metadata(tmp).unwrap().mode() & 0o022 == 0 {
            return; // /tmp is not world-writable here: nothing to show.
        }
        let dir = tempfile::tempdir_in(tmp).unwrap();
        executable(&dir.path().join("tool"), "#!/bin/sh\n", 0o755);
        let err = compile_root(dir.path()).unwrap_err().to_string();
        assert!(err.contains("trusted_root[0].path"), "{err}");
        assert!(
            err.contains(&format!("{}: group/world-writable", tmp.display())),
            "{err}"
        );
    }

    /// A world-writable executable (or one in a group-writable directory
    /// below the root) is not allowlisted, and is listed with the reason.
    #[test]
    fn world_writable_file_is_not_allowlisted() {
        let dir = scratch();
        let root = dir.path().join("bin");
        mkdir(&root, 0o755);
        executable(&root.join("open"), "#!/bin/sh\n# open\n", 0o757);
        mkdir(&root.join("drop"), 0o775);
        executable(&root.join("drop/tool"), "#!/bin/sh\n# drop\n", 0o755);
        let compiled = compile_root(&root).unwrap();
        assert!(compiled.entries.is_empty(), "{:?}", compiled.entries);
        assert!(compiled.root_hashes.is_empty());
        assert_eq!(compiled.not_allowed.len(), 2, "{:?}", compiled.not_allowed);
        let open = format!(
            "{}: group/world-writable (mode 757)",
            root.join("open").display()
        );
        assert!(
            compiled.not_allowed.contains(&open),
            "{:?}",
            compiled.not_allowed
        );
        let drop = format!(
            "{}: {}: group/world-writable",
            root.join("drop/tool").display(),
            root.join("drop").display()
        );
        assert!(
            compiled.not_allowed.iter().any(|n| n.starts_with(&drop)),
            "{:?}",
            compiled.not_allowed
        );
    }

    /// An executable owned by another user can be rewritten by that user:
    /// not allowlisted, listed with the reason.
    #[test]
    fn non_root_owned_file_is_not_allowlisted() {
        let dir = scratch();
        let root = dir.path().join("bin");
        mkdir(&root, 0o755);
        let theirs = root.join("theirs");
        executable(&theirs, "#!/bin/sh\n", 0o755);
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let compiled = compile_root(&root).unwrap();
        assert!(compiled.entries.is_empty(), "{:?}", compiled.entries);
        assert_eq!(
            compiled.not_allowed,
            [format!(
                "{}: owned by uid 65534, not root",
                theirs.display()
            )]
        );
    }

    /// Root-owned 0755 files in root-owned 0755 directories are allowed,
    /// with their SHA-256 recorded by identity for re-trust.
    #[test]
    fn root_owned_0755_is_allowlisted_with_its_hash_recorded() {
        let dir = scratch();
        let root = dir.path().join("bin");
        mkdir(&root, 0o755);
        let tool = root.join("tool");
        executable(&tool, "abc", 0o755);
        let compiled = compile_root(&root).unwrap();
        assert!(
            compiled.not_allowed.is_empty(),
            "{:?}",
            compiled.not_allowed
        );
        assert_eq!(compiled.entries.len(), 1);
        let id = compiled.entries[0].0;
        assert_eq!(id.ino, std::fs::metadata(&tool).unwrap().ino());
        assert_eq!(
            compiled.root_hashes.get(&id).map(String::as_str),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            compiled.root_dirs.get(&0),
            Some(&std::fs::canonicalize(&root).unwrap())
        );
    }
}
