//! Enforcement that outlives the daemon: the verdict program's link and
//! the maps it reads are pinned under `policy.pin_dir`. A killed or stopped
//! sensor leaves them in force; a starting one loads its object with the
//! pinned maps (so its new verdict program and the old one read the same
//! policy), writes its policy into them, then pins its own link over the
//! old one, which the kernel then detaches. Removing the pins
//! ([`detach`]) is the only way to take enforcement off.

use std::{
    fs, io,
    mem::size_of,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, MapInfo},
    programs::links::{FdLink, PinnedLink},
};
use sensor_common::{
    ALLOW_ENTRIES, AllowEntry, DENY_ENTRIES, DenyParentKey, DenyUidKey, FileId, PolicyState,
    SCOPE_ENTRIES, names,
};

use crate::object;

/// The pinned link of the verdict program, in the pin dir.
pub const LINK_PIN: &str = "verdict";
/// Where a new link is pinned before it is renamed over [`LINK_PIN`]
/// (bpffs refuses names with a dot).
const LINK_PIN_NEW: &str = "verdict-new";

/// Why the pinned allowlist state could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{0} is not on a bpf filesystem, so the allowlist could not outlive the sensor (mount one: `mount -t bpf bpf /sys/fs/bpf`, or set policy.pin_dir)"
    )]
    NotBpffs(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "pinned map {path} has another layout than this sensor's ({what}): it was pinned by another version. Run `rxsentry-sensor allowlist detach` (enforcement is off until the sensor starts again), then start the sensor"
    )]
    Layout { path: PathBuf, what: String },
    #[error("pinned map {path}: {source}")]
    Map { path: PathBuf, source: MapError },
    #[error("pinned link {path}: {why}")]
    Link { path: PathBuf, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Each pinned map: name, key size, value size, entries. A pinned map
/// whose layout differs was made by another build: refused, never reused
/// (the programs would read it with the wrong sizes).
const MAPS: [(&str, usize, usize, u32); 8] = [
    (
        names::ALLOW_A,
        size_of::<FileId>(),
        size_of::<AllowEntry>(),
        ALLOW_ENTRIES,
    ),
    (
        names::ALLOW_B,
        size_of::<FileId>(),
        size_of::<AllowEntry>(),
        ALLOW_ENTRIES,
    ),
    (
        names::DENY_PARENT_A,
        size_of::<DenyParentKey>(),
        4,
        DENY_ENTRIES,
    ),
    (
        names::DENY_PARENT_B,
        size_of::<DenyParentKey>(),
        4,
        DENY_ENTRIES,
    ),
    (names::DENY_UID_A, size_of::<DenyUidKey>(), 4, DENY_ENTRIES),
    (names::DENY_UID_B, size_of::<DenyUidKey>(), 4, DENY_ENTRIES),
    (names::POLICY_STATE, 4, size_of::<PolicyState>(), 1),
    (names::POLICY_SCOPE, 8, 1, SCOPE_ENTRIES),
];

/// Makes `loader` reuse the maps pinned in `pin_dir` (or create and pin
/// them there), after checking that the pinned ones have this build's
/// layout.
pub fn prepare(loader: &mut EbpfLoader<'_>, pin_dir: &Path) -> Result<(), PinError> {
    match object::on_bpffs(pin_dir) {
        Ok(true) => {}
        Ok(false) => return Err(PinError::NotBpffs(pin_dir.to_owned())),
        Err((path, source)) => return Err(PinError::Io { path, source }),
    }
    fs::create_dir_all(pin_dir).map_err(io_err(pin_dir))?;
    for (name, key, value, entries) in MAPS {
        let path = pin_dir.join(name);
        if path.exists() {
            check_layout(&path, key, value, entries)?;
        }
        loader.map_pin_path(name, path);
    }
    Ok(())
}

fn check_layout(path: &Path, key: usize, value: usize, entries: u32) -> Result<(), PinError> {
    let info = MapInfo::from_pin(path).map_err(|source| PinError::Map {
        path: path.to_owned(),
        source,
    })?;
    let got = (
        info.key_size() as usize,
        info.value_size() as usize,
        info.max_entries(),
    );
    if got != (key, value, entries) {
        return Err(PinError::Layout {
            path: path.to_owned(),
            what: format!(
                "key {} bytes, value {} bytes, {} entries; expected {key}, {value}, {entries}",
                got.0, got.1, got.2
            ),
        });
    }
    Ok(())
}

/// Pins `link` as the verdict link in `pin_dir`, replacing the one pinned
/// there (whose link the kernel then detaches, once nothing else holds
/// it). The rename is atomic: the pin dir always holds one verdict link.
/// Returns the link, still held by this process.
pub fn pin_link(link: FdLink, pin_dir: &Path) -> Result<FdLink, PinError> {
    // Removed with everything in it (`rm -r`): made again.
    fs::create_dir_all(pin_dir).map_err(io_err(pin_dir))?;
    let fresh = pin_dir.join(LINK_PIN_NEW);
    remove_pin(&fresh)?;
    let pinned = link.pin(&fresh).map_err(|e| PinError::Link {
        path: fresh.clone(),
        why: e.to_string(),
    })?;
    let path = pin_dir.join(LINK_PIN);
    fs::rename(&fresh, &path).map_err(io_err(&path))?;
    Ok(pinned.into())
}

/// The kernel ids of a pinned verdict link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkIds {
    pub link: u32,
    pub program: u32,
}

/// The pinned verdict link's ids, None when nothing is pinned.
pub fn pinned_link(pin_dir: &Path) -> Result<Option<LinkIds>, PinError> {
    let path = pin_dir.join(LINK_PIN);
    if !path.exists() {
        return Ok(None);
    }
    let fail = |why: String| PinError::Link {
        path: path.clone(),
        why,
    };
    let link: FdLink = PinnedLink::from_pin(&path)
        .map_err(|e| fail(e.to_string()))?
        .into();
    let info = link.info().map_err(|e| fail(e.to_string()))?;
    Ok(Some(LinkIds {
        link: info.id(),
        program: info.program_id(),
    }))
}

/// What is pinned, for `rxsentry-sensor allowlist status`.
#[derive(Clone, Debug)]
pub struct PinnedStatus {
    pub link: Option<LinkIds>,
    /// The policy state the kernel reads (None: no maps pinned).
    pub state: Option<PolicyState>,
    /// Files in the live allowlist map.
    pub allowed_files: usize,
}

/// Reads the pinned link and maps without changing them.
pub fn status(pin_dir: &Path) -> Result<PinnedStatus, PinError> {
    let link = pinned_link(pin_dir)?;
    let state_pin = pin_dir.join(names::POLICY_STATE);
    if !state_pin.exists() {
        return Ok(PinnedStatus {
            link,
            state: None,
            allowed_files: 0,
        });
    }
    let map_err = |path: &Path| {
        let path = path.to_owned();
        move |source| PinError::Map { path, source }
    };
    let data = MapData::from_pin(&state_pin).map_err(map_err(&state_pin))?;
    let state: Array<MapData, PolicyState> =
        Array::try_from(Map::Array(data)).map_err(map_err(&state_pin))?;
    let state = state.get(&0, 0).map_err(map_err(&state_pin))?;
    let live = pin_dir.join(if state.active == 0 {
        names::ALLOW_A
    } else {
        names::ALLOW_B
    });
    let data = MapData::from_pin(&live).map_err(map_err(&live))?;
    let allow: HashMap<MapData, FileId, AllowEntry> =
        HashMap::try_from(Map::HashMap(data)).map_err(map_err(&live))?;
    Ok(PinnedStatus {
        link,
        state: Some(state),
        allowed_files: allow.keys().filter(Result::is_ok).count(),
    })
}

/// Removes every pin in `pin_dir` (the link first: enforcement stops
/// there) and the directory, then waits up to 5 s until the kernel has
/// released the link (it does so from deferred work). Returns how many
/// pins were removed.
pub fn detach(pin_dir: &Path) -> Result<usize, PinError> {
    let link = pinned_link(pin_dir).ok().flatten();
    let mut removed = 0;
    for name in [LINK_PIN, LINK_PIN_NEW]
        .into_iter()
        .chain(MAPS.iter().map(|m| m.0))
    {
        removed += usize::from(remove_pin(&pin_dir.join(name))?);
    }
    if pin_dir.exists() {
        fs::remove_dir(pin_dir).map_err(io_err(pin_dir))?;
    }
    if let Some(ids) = link {
        wait_link_gone(ids.link, Duration::from_secs(5));
    }
    Ok(removed)
}

/// Removes the pin at `path` if there is one; whether there was. (Checked
/// first: an unlink of a missing name on bpffs can fail with EPERM rather
/// than ENOENT.)
fn remove_pin(path: &Path) -> Result<bool, PinError> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(false);
    }
    fs::remove_file(path).map_err(io_err(path))?;
    Ok(true)
}

/// Whether the kernel still has link `id`.
pub fn link_exists(id: u32) -> bool {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .any(|l| l.id() == id)
}

/// Waits until link `id` is gone or `limit` passed; whether it is gone.
pub fn wait_link_gone(id: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !link_exists(id) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
