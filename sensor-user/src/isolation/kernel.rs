//! The isolation programs in the kernel. Each interface but loopback gets
//! an ingress and an egress TCX link, pinned under `<pin_dir>/links/`; the
//! state, allow and stats maps are pinned in `<pin_dir>`. Pins keep it all
//! in force while no sensor process runs; removing them is the only way to
//! take the programs off (see [`detach_all`]).
//!
//! The eBPF object is loaded only when some interface lacks its links, and
//! dropped again right after: the pins hold what must stay. In netlink
//! mode (kernels before 6.6) a daemon keeps it loaded to check its clsact
//! filters at every poll.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
        links::FdLink,
        tc::{NlOptions, TcAttachOptions, TcHandle},
    },
};
use sensor_common::{IsolationAllowKey, IsolationState, isolation_stat, names};

use crate::{
    config::TcAttach,
    object::{self, ObjectError, SensorObject},
};

/// Priority and handle of our filters when attached through netlink
/// (clsact): fixed, so attaching twice fails with EEXIST instead of
/// stacking a second copy.
const NL_PRIORITY: u16 = 0x5253;
const NL_HANDLE: TcHandle = TcHandle::new(0, 0x5253);

/// How `mode` attaches on this kernel, for status and metrics.
pub fn attach_name(mode: TcAttach) -> &'static str {
    if netlink(mode) { "netlink" } else { "tcx" }
}

/// Whether `mode` attaches through netlink (clsact filters) on this kernel.
fn netlink(mode: TcAttach) -> bool {
    use aya::util::KernelVersion;
    // An unreadable version: assume an old kernel (netlink works on all).
    mode == TcAttach::Netlink
        || KernelVersion::current().map_or(true, |v| v < KernelVersion::new(6, 6, 0))
}

const ARPHRD_ETHER: u32 = 1;
const ARPHRD_LOOPBACK: u32 = 772;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "{0} is not on a bpf filesystem, so isolation could not outlive the sensor (mount one: `mount -t bpf bpf /sys/fs/bpf`, or set isolation.pin_dir)"
    )]
    NotBpffs(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("isolation programs: {0}")]
    Object(#[from] ObjectError),
    #[error("pinned map {path}: {source}")]
    Map { path: PathBuf, source: MapError },
    #[error("interface {iface}: attaching {name}: {source}")]
    Attach {
        iface: String,
        name: &'static str,
        source: ProgramError,
    },
    #[error("pinning the {dir} link of {iface}: {why}")]
    Pin {
        iface: String,
        dir: &'static str,
        why: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A network interface as the kernel lists it in /sys/class/net.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    /// No link-layer header at TC (tun, WireGuard, IP tunnels).
    pub l3: bool,
}

/// Every interface of this network namespace but loopback. Asked of the
/// kernel through a socket (if_nameindex, SIOCGIFHWADDR), never through
/// /sys/class/net: a sysfs mounted in another namespace lists that
/// namespace's interfaces.
pub fn interfaces() -> Result<Vec<Interface>, KernelError> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

    use nix::libc;

    let sys_err = |what: &str, e: io::Error| KernelError::Io {
        path: PathBuf::from(what),
        source: e,
    };
    let list = nix::net::if_::if_nameindex().map_err(|e| sys_err("if_nameindex", e.into()))?;
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(sys_err("socket", io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut found = Vec::new();
    for entry in list.iter() {
        let name = entry.name().to_string_lossy().into_owned();
        // SAFETY: ifreq is plain data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(entry.name().to_bytes()) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of the ifreq we own.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
        if rc < 0 {
            // Vanished meanwhile: nothing to attach to.
            continue;
        }
        // SAFETY: the union member SIOCGIFHWADDR wrote.
        let kind = u32::from(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family });
        if kind == ARPHRD_LOOPBACK {
            continue;
        }
        found.push(Interface {
            name,
            index: entry.index(),
            l3: kind != ARPHRD_ETHER,
        });
    }
    found.sort_by_key(|i| i.index);
    Ok(found)
}

const DIRECTIONS: [(TcAttachType, &str); 2] = [
    (TcAttachType::Ingress, "ingress"),
    (TcAttachType::Egress, "egress"),
];

fn program_name(l3: bool, attach: TcAttachType) -> &'static str {
    match (l3, attach) {
        (false, TcAttachType::Ingress) => names::PROG_ISOLATE_INGRESS,
        (false, _) => names::PROG_ISOLATE_EGRESS,
        (true, TcAttachType::Ingress) => names::PROG_ISOLATE_INGRESS_L3,
        (true, _) => names::PROG_ISOLATE_EGRESS_L3,
    }
}

/// `<ifindex>-<name>-<direction>`: the index tells a new interface that
/// reuses a name from the one that is gone.
fn link_file(iface: &Interface, dir: &str) -> String {
    format!("{}-{}-{dir}", iface.index, iface.name)
}

/// What [`IsolationKernel::attach_missing`] did.
#[derive(Debug, Default)]
pub struct AttachReport {
    /// Interfaces attached to now (new, or whose link was detached).
    pub attached: Vec<String>,
    /// Programs someone else took off an interface (attached again).
    pub detached: Vec<Detached>,
}

/// One isolation program found taken off its interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    /// `isolation link` (TCX: the link was detached, its pin stayed) or
    /// `isolation filter` (netlink: the clsact filter was deleted).
    pub object: &'static str,
    /// The link's pin, or the interface and direction of the filter.
    pub target: String,
}

/// Whether the pinned link at `path` was detached: its interface index,
/// which the kernel shows in the link's fdinfo, went to 0. A link that
/// cannot be opened or shows no index is not called detached.
fn link_detached(path: &Path) -> bool {
    use std::os::fd::AsRawFd as _;
    let Ok(fd) = open_pin(path) else {
        return false;
    };
    fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).is_ok_and(|info| {
        info.lines()
            .filter_map(|l| l.strip_prefix("ifindex:"))
            .any(|v| v.trim() == "0")
    })
}

/// `bpf(BPF_OBJ_GET)`: a descriptor of the object pinned at `path` (aya
/// gives a pinned link no descriptor to read its fdinfo by).
fn open_pin(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};

    use nix::libc;
    const BPF_OBJ_GET: libc::c_long = 7;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // bpf_attr's obj_get part: pathname, bpf_fd, file_flags, path_fd.
    let attr: [u64; 3] = [name.as_ptr() as u64, 0, 0];
    // SAFETY: `attr` outlives the call and is as long as the size passed;
    // the path is NUL-terminated.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// The pinned maps; programs are attached by [`IsolationKernel::attach_missing`].
pub struct IsolationKernel {
    pin_dir: PathBuf,
    mode: TcAttach,
    /// Netlink mode: interfaces (index, name) this process attached to or
    /// found attached. clsact filters hold the programs without pins.
    netlink_done: Vec<(u32, String)>,
    /// Netlink mode: the loaded programs, kept to check at every poll that
    /// each filter is still there (attaching again fails with EEXIST while
    /// it is; a deleted one is attached again).
    netlink_object: Option<SensorObject>,
    state: Array<MapData, IsolationState>,
    allow: HashMap<MapData, IsolationAllowKey, u8>,
    stats: PerCpuArray<MapData, u64>,
}

impl IsolationKernel {
    /// Opens the pinned maps (creating and pinning them if this is the
    /// first time) and attaches to every interface that lacks its links.
    pub fn open(pin_dir: &Path, mode: TcAttach) -> Result<Self, KernelError> {
        object::embedded()?;
        check_bpffs(pin_dir)?;
        let links = pin_dir.join("links");
        fs::create_dir_all(&links).map_err(io_err(&links))?;
        let state_pin = pin_dir.join(names::ISOLATION_STATE);
        if !state_pin.exists() {
            // First use: loading the object creates and pins the maps.
            load_and_attach(pin_dir, &[], false)?;
        }
        let open = |name: &str| -> Result<(PathBuf, MapData), KernelError> {
            let path = pin_dir.join(name);
            let data = MapData::from_pin(&path).map_err(|source| KernelError::Map {
                path: path.clone(),
                source,
            })?;
            Ok((path, data))
        };
        let wrap = |path: PathBuf| move |source| KernelError::Map { path, source };
        let (path, data) = open(names::ISOLATION_STATE)?;
        let state = Array::try_from(Map::Array(data)).map_err(wrap(path))?;
        let (path, data) = open(names::ISOLATION_ALLOW)?;
        let allow = HashMap::try_from(Map::HashMap(data)).map_err(wrap(path))?;
        let (path, data) = open(names::ISOLATION_STATS)?;
        let stats = PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(wrap(path))?;
        Ok(Self {
            pin_dir: pin_dir.to_owned(),
            mode,
            netlink_done: Vec::new(),
            netlink_object: None,
            state,
            allow,
            stats,
        })
    }

    /// Attaches to the interfaces that have no pinned links yet (or whose
    /// pinned link someone detached) and forgets the pins of interfaces
    /// that are gone.
    pub fn attach_missing(&mut self) -> Result<AttachReport, KernelError> {
        let ifaces = interfaces()?;
        self.prune(&ifaces)?;
        let netlink = netlink(self.mode);
        let mut detached = self.unpin_detached()?;
        if netlink {
            detached.extend(self.restore_deleted_filters(&ifaces)?);
        }
        let links = self.pin_dir.join("links");
        let missing: Vec<Interface> = ifaces
            .into_iter()
            .filter(|i| {
                if netlink {
                    return !self
                        .netlink_done
                        .iter()
                        .any(|(index, name)| *index == i.index && *name == i.name);
                }
                DIRECTIONS
                    .iter()
                    .any(|(_, dir)| !links.join(link_file(i, dir)).exists())
            })
            .collect();
        if !missing.is_empty() {
            load_and_attach(&self.pin_dir, &missing, netlink)?;
        }
        if netlink {
            self.netlink_done
                .extend(missing.iter().map(|i| (i.index, i.name.clone())));
        }
        Ok(AttachReport {
            attached: missing.into_iter().map(|i| i.name).collect(),
            detached,
        })
    }

    /// Netlink mode: attaches again every filter of ours someone deleted
    /// (`tc filter del`, `tc qdisc del ... clsact`) on the interfaces
    /// attached to so far; the ones still there answer EEXIST.
    fn restore_deleted_filters(
        &mut self,
        ifaces: &[Interface],
    ) -> Result<Vec<Detached>, KernelError> {
        let done: Vec<&Interface> = ifaces
            .iter()
            .filter(|i| {
                self.netlink_done
                    .iter()
                    .any(|(index, name)| *index == i.index && *name == i.name)
            })
            .collect();
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let object = match &mut self.netlink_object {
            Some(object) => object,
            none => none.insert(load_object(&self.pin_dir)?),
        };
        let mut restored = Vec::new();
        for iface in done {
            for (attach, dir) in DIRECTIONS {
                if attach_netlink(loaded(object, iface, attach)?, iface, attach).map_err(
                    |source| KernelError::Attach {
                        iface: iface.name.clone(),
                        name: program_name(iface.l3, attach),
                        source,
                    },
                )? {
                    restored.push(Detached {
                        object: "isolation filter",
                        target: format!("{} {dir}", iface.name),
                    });
                }
            }
        }
        Ok(restored)
    }

    /// Removes the pins of TCX links that no longer hold their program on
    /// an interface (a `bpf(BPF_LINK_DETACH)` by someone else leaves the
    /// pin in place): the caller attaches again. Returns those pins.
    fn unpin_detached(&self) -> Result<Vec<Detached>, KernelError> {
        let links = self.pin_dir.join("links");
        let mut detached = Vec::new();
        for entry in fs::read_dir(&links).map_err(io_err(&links))? {
            let path = entry.map_err(io_err(&links))?.path();
            if link_detached(&path) {
                fs::remove_file(&path).map_err(io_err(&path))?;
                detached.push(Detached {
                    object: "isolation link",
                    target: path.display().to_string(),
                });
            }
        }
        Ok(detached)
    }

    /// Interfaces with pinned links, by name.
    pub fn attached(&self) -> Result<Vec<String>, KernelError> {
        if netlink(self.mode) {
            let mut names: Vec<String> = self.netlink_done.iter().map(|(_, n)| n.clone()).collect();
            names.sort();
            return Ok(names);
        }
        let links = self.pin_dir.join("links");
        let mut names = Vec::new();
        for entry in fs::read_dir(&links).map_err(io_err(&links))? {
            let file = entry.map_err(io_err(&links))?.file_name();
            let file = file.to_string_lossy();
            if let Some(rest) = file.strip_suffix("-ingress")
                && let Some((_, name)) = rest.split_once('-')
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn prune(&mut self, present: &[Interface]) -> Result<(), KernelError> {
        self.netlink_done
            .retain(|(index, name)| present.iter().any(|i| i.index == *index && i.name == *name));
        let links = self.pin_dir.join("links");
        for entry in fs::read_dir(&links).map_err(io_err(&links))? {
            let entry = entry.map_err(io_err(&links))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let current = present
                .iter()
                .any(|i| DIRECTIONS.iter().any(|(_, dir)| link_file(i, dir) == file));
            if !current {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }

    pub fn state(&self) -> Result<IsolationState, KernelError> {
        self.state
            .get(&0, 0)
            .map_err(|source| self.map_err(names::ISOLATION_STATE, source))
    }

    /// Makes `peers` the allow list, replacing what was there.
    pub fn set_allow(&mut self, peers: &[IsolationAllowKey]) -> Result<(), KernelError> {
        let old: Vec<IsolationAllowKey> = self.allow.keys().filter_map(Result::ok).collect();
        for key in peers {
            self.allow
                .insert(key, 1, 0)
                .map_err(|source| self.map_err(names::ISOLATION_ALLOW, source))?;
        }
        for key in old.iter().filter(|k| !peers.contains(k)) {
            self.allow
                .remove(key)
                .map_err(|source| self.map_err(names::ISOLATION_ALLOW, source))?;
        }
        Ok(())
    }

    /// One map update: every program sees the new state at its next packet.
    pub fn set_state(&mut self, state: IsolationState) -> Result<(), KernelError> {
        self.state
            .set(0, state, 0)
            .map_err(|source| self.map_err(names::ISOLATION_STATE, source))
    }

    /// Packets dropped and allowed while isolated, and the earliest first
    /// drop (CLOCK_BOOTTIME ns, 0 if none) since the last reset.
    pub fn stats(&self) -> Result<(u64, u64, u64), KernelError> {
        let read = |index: u32| {
            self.stats
                .get(&index, 0)
                .map_err(|source| self.map_err(names::ISOLATION_STATS, source))
        };
        let dropped = read(isolation_stat::DROPPED)?.iter().sum();
        let allowed = read(isolation_stat::ALLOWED)?.iter().sum();
        let first = read(isolation_stat::FIRST_DROP_NS)?
            .iter()
            .copied()
            .filter(|&t| t != 0)
            .min()
            .unwrap_or(0);
        Ok((dropped, allowed, first))
    }

    pub fn reset_stats(&mut self) -> Result<(), KernelError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| KernelError::Io {
            path: PathBuf::from("/sys/devices/system/cpu/possible"),
            source,
        })?;
        for index in 0..isolation_stat::COUNT {
            let zeros =
                PerCpuValues::try_from(vec![0u64; cpus]).map_err(|source| KernelError::Io {
                    path: self.pin_dir.join(names::ISOLATION_STATS),
                    source,
                })?;
            self.stats
                .set(index, zeros, 0)
                .map_err(|source| self.map_err(names::ISOLATION_STATS, source))?;
        }
        Ok(())
    }

    fn map_err(&self, name: &str, source: MapError) -> KernelError {
        KernelError::Map {
            path: self.pin_dir.join(name),
            source,
        }
    }
}

/// Loads the object with the isolation maps pinned in `pin_dir` (reused
/// when already pinned), attaches to `ifaces` and pins each link.
fn load_and_attach(pin_dir: &Path, ifaces: &[Interface], netlink: bool) -> Result<(), KernelError> {
    let mut object = load_object(pin_dir)?;
    for iface in ifaces {
        for (attach, dir) in DIRECTIONS {
            let path = pin_dir.join("links").join(link_file(iface, dir));
            if !netlink && path.exists() {
                continue;
            }
            let name = program_name(iface.l3, attach);
            let program = loaded(&mut object, iface, attach)?;
            let attach_err = |source| KernelError::Attach {
                iface: iface.name.clone(),
                name,
                source,
            };
            if netlink {
                attach_netlink(program, iface, attach).map_err(attach_err)?;
                continue;
            }
            let id = program
                .attach_with_options(
                    &iface.name,
                    attach,
                    TcAttachOptions::TcxOrder(Default::default()),
                )
                .map_err(attach_err)?;
            let link = program.take_link(id).map_err(attach_err)?;
            let pin_err = |why: String| KernelError::Pin {
                iface: iface.name.clone(),
                dir,
                why,
            };
            let link: FdLink = link.try_into().map_err(|e| pin_err(format!("{e}")))?;
            link.pin(&path).map_err(|e| pin_err(format!("{e}")))?;
        }
    }
    Ok(())
}

/// The program for `iface` and `attach` in `object`, loaded.
fn loaded<'a>(
    object: &'a mut SensorObject,
    iface: &Interface,
    attach: TcAttachType,
) -> Result<&'a mut SchedClassifier, KernelError> {
    let name = program_name(iface.l3, attach);
    let program: &mut SchedClassifier = object.program(name)?;
    if program.fd().is_err() {
        program
            .load()
            .map_err(|source| ObjectError::Program { name, source })?;
    }
    Ok(program)
}

/// The object, its isolation maps the ones pinned in `pin_dir` (pinned
/// there first if they are not yet).
fn load_object(pin_dir: &Path) -> Result<SensorObject, KernelError> {
    let mut loader = EbpfLoader::new();
    let pins: Vec<(&str, PathBuf)> = [
        names::ISOLATION_STATE,
        names::ISOLATION_ALLOW,
        names::ISOLATION_STATS,
    ]
    .into_iter()
    .map(|name| (name, pin_dir.join(name)))
    .collect();
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    // The process and allowlist maps are not used here: keep them tiny.
    loader.map_max_entries(names::PROCESS_EVENTS, 4096);
    for name in [
        names::ALLOW_A,
        names::ALLOW_B,
        names::DENY_PARENT_A,
        names::DENY_PARENT_B,
        names::DENY_UID_A,
        names::DENY_UID_B,
        names::POLICY_SCOPE,
    ] {
        loader.map_max_entries(name, 1);
    }
    Ok(SensorObject::load(&mut loader)?)
}

/// A clsact filter with our fixed priority and handle. It stays after this
/// process exits (filters are not tied to a file descriptor), so the link
/// aya hands back is forgotten instead of dropped (which would detach it).
/// A filter already there (EEXIST) is ours from an earlier run or poll.
/// True when it was attached now.
fn attach_netlink(
    program: &mut SchedClassifier,
    iface: &Interface,
    attach: TcAttachType,
) -> Result<bool, ProgramError> {
    // Fails harmlessly when the interface already has one.
    let _ = aya::programs::tc::qdisc_add_clsact(&iface.name);
    let options = TcAttachOptions::Netlink(NlOptions {
        priority: NL_PRIORITY,
        handle: NL_HANDLE,
        classid: None,
    });
    match program.attach_with_options(&iface.name, attach, options) {
        Ok(id) => {
            std::mem::forget(program.take_link(id)?);
            Ok(true)
        }
        Err(e) if already_exists(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether an I/O error with kind AlreadyExists is among `e`'s causes.
fn already_exists(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::AlreadyExists)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Removes our clsact filters (netlink mode) from every interface.
fn detach_netlink() -> Result<(), KernelError> {
    for iface in interfaces()? {
        for (attach, _) in DIRECTIONS {
            for name in [program_name(false, attach), program_name(true, attach)] {
                // NotFound: nothing of ours there.
                let _ = aya::programs::tc::qdisc_detach_program(&iface.name, attach, name);
            }
        }
    }
    Ok(())
}

/// Refuses a `pin_dir` whose nearest existing ancestor is not bpffs.
fn check_bpffs(pin_dir: &Path) -> Result<(), KernelError> {
    let bpffs =
        object::on_bpffs(pin_dir).map_err(|(path, source)| KernelError::Io { path, source })?;
    if !bpffs {
        return Err(KernelError::NotBpffs(pin_dir.to_owned()));
    }
    Ok(())
}

/// Runs and total run time of every loaded isolation program (all
/// namespaces), as the kernel counts them while `kernel.bpf_stats_enabled`
/// is 1: what the programs cost per packet.
pub fn program_stats() -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("isolate_")))
        .fold((0, 0), |(runs, ns), p| {
            (runs + p.run_count(), ns + p.run_time().as_nanos() as u64)
        })
}

/// Whether any interface of this namespace still runs an isolation program.
pub fn any_attached() -> Result<bool, KernelError> {
    for iface in interfaces()? {
        for (attach, _) in DIRECTIONS {
            // An interface that vanished meanwhile has nothing attached.
            let Ok((_, programs)) = SchedClassifier::query_tcx(&iface.name, attach) else {
                continue;
            };
            if programs
                .iter()
                .any(|p| p.name_as_str().is_some_and(|n| n.starts_with("isolate_")))
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Removes every pin under `pin_dir`: the links detach and the maps go
/// once no program uses them. The emergency exit when the sensor cannot
/// run; it does not touch the state file. The kernel releases an unpinned
/// link a moment later (deferred work), so this waits up to 5 s until no
/// interface runs the programs any more.
pub fn detach_all(pin_dir: &Path) -> Result<usize, KernelError> {
    detach_netlink()?;
    let removed = remove_pins(pin_dir)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while any_attached()? && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(removed)
}

fn remove_pins(pin_dir: &Path) -> Result<usize, KernelError> {
    let mut removed = 0;
    let links = pin_dir.join("links");
    if links.exists() {
        for entry in fs::read_dir(&links).map_err(io_err(&links))? {
            let path = entry.map_err(io_err(&links))?.path();
            fs::remove_file(&path).map_err(io_err(&path))?;
            removed += 1;
        }
        fs::remove_dir(&links).map_err(io_err(&links))?;
    }
    for name in [
        names::ISOLATION_STATE,
        names::ISOLATION_ALLOW,
        names::ISOLATION_STATS,
    ] {
        let path = pin_dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Ok(removed)
}
