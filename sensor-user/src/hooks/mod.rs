//! Kernel side of the daemon: loads the eBPF object, fills its offsets from
//! BTF, attaches the programs, and hands out the ring buffers and counters.
//!
//! Dropping [`ProcessHooks`] detaches every program (the links belong to it).

mod backend;
mod btf;
mod kfunc;
pub mod net;
mod offsets;
mod ringbuf;

use aya::{
    EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::links::FdLink,
};
use sensor_common::{AllowEntry, FileId, drop_reason, names};

use crate::{
    object::{self, ObjectError, SensorObject},
    watch::kernel::WatchMaps,
};

pub use backend::{AllowlistBackend, FileOpenHook, FileReads, attach_exec_verdict, io_uring_state};
pub use btf::{BtfError, KernelBtf};
pub use ringbuf::{RingEvent, read_rings, register_readable};

/// aya-log's reader of the programs' log ring buffer (forwards to `log`).
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("kernel BTF: {0}")]
    Btf(#[from] BtfError),
    #[error("copying the eBPF object to patch its kfunc calls: {0}")]
    ObjectCopy(nix::Error),
    #[error("network hooks: {0}")]
    Net(#[from] net::NetHookError),
    #[error("self-protection hooks: {0}")]
    Tamper(#[source] net::NetHookError),
    #[error("allowlist pins: {0}")]
    Pins(#[from] crate::policy::pins::PinError),
}

/// Kernel-side settings taken from the config.
#[derive(Clone, Debug)]
pub struct HookConfig {
    /// Size of `PROCESS_EVENTS`; a power of two, at least one page.
    pub process_ringbuf_bytes: u32,
    /// Size of `FILE_EVENTS`; same rules.
    pub file_ringbuf_bytes: u32,
    /// Attach the file telemetry programs.
    pub files: bool,
    /// Attach the open programs that read by typed loads when the kernel
    /// can run them (`[kernel] typed_file_reads`).
    pub typed_file_reads: bool,
    /// Decide opens with `fexit/do_filp_open` where the kernel allows it
    /// (`[kernel] fexit_file_opens`).
    pub fexit_file_opens: bool,
    /// Report successful opens from `lsm/file_open` where BPF-LSM runs
    /// (`[kernel] lsm_file_opens`).
    pub lsm_file_opens: bool,
    /// Size of `NET_EVENTS`; same rules.
    pub net_ringbuf_bytes: u32,
    pub network: net::NetHookConfig,
    /// Entries of `WATCHED_INODES` (`files.identity_max_entries`).
    pub identity_max_entries: u32,
    /// Where the allowlist's maps are pinned (reused when they are); None:
    /// maps of this process's own (no policy configured, the probe).
    pub allowlist_pin_dir: Option<std::path::PathBuf>,
    /// Attach the exec verdict program only (`rxsentry-sensor allowlist
    /// apply`): no telemetry programs.
    pub verdict_only: bool,
    /// Report other processes' `bpf()` descriptor requests and ptrace
    /// attaches (the daemon keeps those that reach its own objects).
    pub tamper_calls: bool,
    /// Attach the BPF-LSM write guard where BPF-LSM runs
    /// (`self_protection.deny_writes`; the daemon arms it).
    pub write_guard: bool,
}

impl HookConfig {
    /// The kernel-side settings of `config`.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            process_ringbuf_bytes: config.kernel.process_ringbuf_bytes,
            file_ringbuf_bytes: config.kernel.file_ringbuf_bytes,
            files: config.files.enabled,
            typed_file_reads: config.kernel.typed_file_reads,
            fexit_file_opens: config.kernel.fexit_file_opens,
            lsm_file_opens: config.kernel.lsm_file_opens,
            net_ringbuf_bytes: config.kernel.net_ringbuf_bytes,
            network: net::NetHookConfig::from_config(&config.network),
            identity_max_entries: config.files.identity_max_entries,
            allowlist_pin_dir: config
                .policy
                .path
                .as_ref()
                .map(|_| config.policy.pin_dir.clone()),
            verdict_only: false,
            tamper_calls: true,
            write_guard: config.self_protection.deny_writes,
        }
    }

    /// Only the exec verdict program, on the pinned maps of `config`'s
    /// policy: what `rxsentry-sensor allowlist apply` loads at boot.
    pub fn verdict_only(config: &crate::config::Config) -> Self {
        let mut hooks = Self::from_config(config);
        hooks.allowlist_pin_dir = Some(config.policy.pin_dir.clone());
        hooks.verdict_only = true;
        hooks.tamper_calls = false;
        hooks.write_guard = false;
        hooks.files = false;
        hooks.network.enabled = false;
        // The verdict program reports blocks into the process ring; nobody
        // reads it after the command exits.
        hooks.process_ringbuf_bytes = 4096;
        hooks
    }
}

/// The loaded and attached process programs.
pub struct ProcessHooks {
    object: SensorObject,
    /// aya-log's reader; dropping it closes the log map, so it lives here.
    logger: Option<KernelLogger>,
    drops: PerCpuArray<MapData, u64>,
    allowlist_backend: AllowlistBackend,
    /// The exec verdict's link, held (and pinned by [`Self::pin_verdict`]).
    verdict_link: Option<FdLink>,
    /// Once pinned: where, and a second fd of the link to pin it again
    /// with if someone removes the pin ([`Self::check_verdict_pin`]).
    pinned: Option<(std::path::PathBuf, Option<FdLink>)>,
    file_reads: FileReads,
    file_open_hook: FileOpenHook,
    /// `lsm/file_open` reporting successful opens, or why not.
    open_lsm: Result<(), String>,
    /// The BPF-LSM socket programs reporting io_uring's UDP sends, or why not.
    io_uring_sends: Result<(), String>,
    /// The write guard's programs attached (unarmed), or why not.
    write_guard: Result<(), String>,
}

/// Loads the syscall tracepoint program `name` and attaches it to each of
/// `tracepoints` (`syscalls:<tp>`). A syscall this architecture does not
/// have (no tracepoint in tracefs) is skipped; any other failure is an error.
fn attach_syscall_tracepoints(
    object: &mut SensorObject,
    name: &'static str,
    tracepoints: &[&str],
) -> Result<usize, ObjectError> {
    let program = object.loaded_tracepoint(name)?;
    let mut attached = 0;
    for tp in tracepoints {
        match program.attach("syscalls", tp) {
            Ok(_) => attached += 1,
            // Only a syscall this kernel lacks is skipped: with no tracefs
            // at all, every attach fails and that is an error, never a
            // silently missing hook.
            Err(_) if tracefs().is_some_and(|root| !syscall_tracepoint_exists(&root, tp)) => {
                tracing::debug!("no tracepoint syscalls:{tp} on this kernel; skipped");
            }
            Err(source) => return Err(ObjectError::Program { name, source }),
        }
    }
    Ok(attached)
}

/// Where tracefs is mounted, if it is.
fn tracefs() -> Option<std::path::PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|root| root.join("events").is_dir())
}

fn syscall_tracepoint_exists(tracefs: &std::path::Path, tp: &str) -> bool {
    tracefs.join("events/syscalls").join(tp).exists()
}

/// Attaches every file telemetry program. They stay idle until the watch
/// manager fills their maps and sets `FILE_SETTINGS.enabled`. Opens go to
/// `fexit/do_filp_open` when `fexit` is `Ok` and the kernel takes it, else
/// to the open syscalls' exit tracepoints (programs reading by `reads`).
fn attach_file_programs(
    object: &mut SensorObject,
    reads: FileReads,
    fexit: Result<&aya::Btf, String>,
) -> Result<FileOpenHook, ObjectError> {
    let hook = match fexit.and_then(|btf| backend::try_fexit_open(object, btf)) {
        Ok(()) => FileOpenHook::Fexit,
        Err(fexit_unavailable) => FileOpenHook::Tracepoints { fexit_unavailable },
    };
    let opens = match (&hook, reads) {
        (FileOpenHook::Fexit, _) => &[][..],
        (_, FileReads::Typed) => names::FILE_EXIT_OPEN_TYPED_PROGRAMS,
        _ => names::FILE_EXIT_OPEN_PROGRAMS,
    };
    // Opens by handle pass no path lookup (fexit on do_filp_open does not
    // see them): their exit tracepoint is attached with either open hook.
    let by_handle = match reads {
        FileReads::Typed => names::FILE_EXIT_BY_HANDLE_TYPED,
        _ => names::FILE_EXIT_BY_HANDLE,
    };
    for (name, tp) in names::FILE_ENTER_PROGRAMS
        .iter()
        .chain(opens)
        .chain([&by_handle, &names::FILE_IO_URING_SETUP])
    {
        attach_syscall_tracepoints(object, name, &[tp])?;
    }
    attach_syscall_tracepoints(
        object,
        names::PROG_FILE_EXIT_PENDING,
        names::FILE_EXIT_PENDING_TRACEPOINTS,
    )?;
    object.attach_raw_tracepoint(names::PROG_FILE_EXEC, names::PROG_EXEC)?;
    Ok(hook)
}

/// Attaches `lsm/file_open` and hands it the successful opens: from
/// here on the exit programs report only refused and `O_PATH` ones.
fn attach_open_lsm(object: &mut SensorObject, btf: &aya::Btf) -> Result<(), String> {
    backend::attach_lsm(object, btf, &[names::PROG_FILE_OPEN_LSM])?;
    let mut on: aya::maps::Array<&mut MapData, u32> = object
        .map_mut(names::FILE_OPEN_LSM)
        .map_err(|e| e.to_string())?;
    on.set(0, 1, 0)
        .map_err(|e| format!("{}: {e}", names::FILE_OPEN_LSM))
}

/// The arguments each self-protection program reads, by tracepoint.
const TAMPER_ARGS: &[(&str, &[&str])] = &[
    ("sys_enter_bpf", &["cmd", "uattr"]),
    ("sys_enter_ptrace", &["request", "pid"]),
    ("sys_enter_process_vm_readv", &["pid"]),
    ("sys_enter_process_vm_writev", &["pid"]),
];

/// Attaches the network programs: the TCP state raw tracepoint and the
/// syscall tracepoints (each must attach: no syscall here is optional).
fn attach_net_programs(object: &mut SensorObject) -> Result<(), ObjectError> {
    let (name, tracepoint) = names::NET_SOCK_STATE;
    object.attach_raw_tracepoint(name, tracepoint)?;
    for (name, category, tracepoint) in names::NET_TRACEPOINTS {
        object.attach_tracepoint(name, category, tracepoint)?;
    }
    Ok(())
}

impl ProcessHooks {
    /// Loads the programs with offsets from the running kernel's BTF and
    /// attaches them. Nothing stays attached if any step fails.
    pub fn load_and_attach(config: &HookConfig) -> Result<Self, HookError> {
        let embedded = object::embedded()?;
        // The parsed BTF is large: freed before aya parses its own copy.
        let (offsets, typed, filp_open) = {
            let btf = KernelBtf::from_sys_fs()?;
            let mut offsets = offsets::resolve(&btf)?;
            if config.network.enabled {
                net::resolve_offsets(&mut offsets, &btf)?;
            }
            if config.tamper_calls {
                net::syscall_args(&mut offsets, TAMPER_ARGS).map_err(HookError::Tamper)?;
            }
            let typed = kfunc::TypedReads::resolve(&btf)
                .filter(|_| config.files && config.typed_file_reads);
            offsets.btf_fd_slot = typed.map_or(0, |t| t.fd_slot);
            let filp_open = if config.fexit_file_opens {
                offsets::resolve_filp_open(&mut offsets, &btf)
                    .map_err(|e| format!("kernel BTF: {e}"))
            } else {
                Err("off in the config (kernel.fexit_file_opens)".to_owned())
            };
            (offsets, typed, filp_open)
        };
        // The typed open programs call a kfunc: their calls get this
        // kernel's id (the other programs never reach the kernel).
        let patched = typed
            .map(|t| kfunc::patch_rdonly_cast(embedded, t.rdonly_cast))
            .transpose()
            .map_err(HookError::ObjectCopy)?;
        if let Some((_, 0)) = patched {
            return Err(ObjectError::Missing("bpf_rdonly_cast call").into());
        }
        let bytes = patched.as_ref().map_or(embedded, |(o, _)| o.bytes());
        let file_reads = match (config.files, typed) {
            (false, _) => FileReads::Off,
            (true, None) => FileReads::Helper,
            (true, Some(_)) => FileReads::Typed,
        };
        let net_settings = config.network.settings();
        let tamper_settings = sensor_common::TamperSettings {
            enabled: config.tamper_calls.into(),
            self_tgid: std::process::id(),
        };
        let mut loader = EbpfLoader::new();
        loader
            .override_global(names::OFFSETS, &offsets, true)
            .override_global(names::NET_SETTINGS, &net_settings, true)
            .override_global(names::TAMPER_SETTINGS, &tamper_settings, true)
            .map_max_entries(names::PROCESS_EVENTS, config.process_ringbuf_bytes)
            .map_max_entries(names::FILE_EVENTS, config.file_ringbuf_bytes)
            .map_max_entries(names::WATCHED_INODES, config.identity_max_entries)
            .map_max_entries(names::NET_EVENTS, config.net_ringbuf_bytes);
        if let Some(dir) = &config.allowlist_pin_dir {
            crate::policy::pins::prepare(&mut loader, dir)?;
        }
        let mut object = SensorObject::load_bytes(&mut loader, bytes)?;
        let logger = match aya_log::EbpfLogger::init(object.ebpf_mut()) {
            Ok(logger) => Some(logger),
            Err(e) => {
                tracing::warn!("eBPF log channel unavailable: {e}");
                None
            }
        };
        let telemetry = if config.verdict_only {
            &[][..]
        } else {
            &[names::PROG_EXEC, names::PROG_FORK, names::PROG_EXIT][..]
        };
        for name in telemetry {
            object.attach_raw_tracepoint(name, name)?;
        }
        // Attached with the policy off; enforcement starts when the daemon
        // writes a policy (PolicyMaps::apply).
        // aya's own parse of the BTF (LSM and fexit programs need it),
        // once, and freed once they are attached.
        let btf = aya::Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"));
        let (allowlist_backend, verdict_link) = attach_exec_verdict(&mut object, &btf)?;
        let ptrace_guard = match (&allowlist_backend, &btf) {
            (AllowlistBackend::Lsm, Ok(btf)) if config.tamper_calls => {
                backend::attach_lsm(&mut object, btf, &[names::PROG_TAMPER_PTRACE_LSM])
            }
            (AllowlistBackend::Lsm, _) => Err("off (self-protection hooks not attached)".into()),
            (AllowlistBackend::TracepointSigkill { .. }, _) => {
                Err("no BPF-LSM on this kernel: ptrace of the sensor is reported only".into())
            }
        };
        match &ptrace_guard {
            Ok(()) => tracing::info!(
                "ptrace guard: BPF-LSM ptrace_access_check refuses attach rights over the sensor"
            ),
            Err(why) => tracing::info!("ptrace guard: {why}"),
        }
        let write_guard = match (&allowlist_backend, &btf) {
            (AllowlistBackend::Lsm, Ok(btf)) if config.tamper_calls && config.write_guard => {
                backend::attach_lsm(&mut object, btf, &names::WRITE_GUARD_LSM)
            }
            (AllowlistBackend::Lsm, _) if config.tamper_calls => {
                Err("off in the config (self_protection.deny_writes): writes to the sensor's files are reported only".into())
            }
            (AllowlistBackend::Lsm, _) => Err("off (self-protection hooks not attached)".into()),
            (AllowlistBackend::TracepointSigkill { .. }, _) => Err(
                "no BPF-LSM on this kernel: writes to the sensor's files are reported only".into(),
            ),
        };
        let file_open_hook = if config.files {
            let fexit = filp_open.and_then(|()| btf.as_ref().map_err(Clone::clone));
            attach_file_programs(&mut object, file_reads, fexit)?
        } else {
            FileOpenHook::Off
        };
        let file_reads = match file_open_hook {
            FileOpenHook::Fexit => FileReads::FexitArgs,
            _ => file_reads,
        };
        let lsm = match (&allowlist_backend, &btf) {
            (AllowlistBackend::Lsm, Ok(btf)) => Ok(btf),
            (AllowlistBackend::Lsm, Err(e)) => Err(e.clone()),
            (AllowlistBackend::TracepointSigkill { .. }, _) => {
                Err("no BPF-LSM on this kernel".to_owned())
            }
        };
        let open_lsm = match (config.files, config.lsm_file_opens) {
            (true, true) => lsm
                .clone()
                .and_then(|btf| attach_open_lsm(&mut object, btf)),
            (true, false) => Err("off in the config (kernel.lsm_file_opens)".to_owned()),
            (false, _) => Err("file telemetry off".to_owned()),
        };
        if config.network.enabled {
            net::fill_maps(&mut object, &config.network)?;
            attach_net_programs(&mut object)?;
        }
        let io_uring_sends = if config.network.enabled {
            lsm.and_then(|btf| backend::attach_lsm(&mut object, btf, &names::NET_IO_URING_LSM))
        } else {
            Err("network telemetry off".to_owned())
        };
        drop(btf);
        if config.tamper_calls {
            for (name, tracepoint) in names::TAMPER_TRACEPOINTS {
                object.attach_tracepoint(name, "syscalls", tracepoint)?;
            }
        }
        let drops = object.take_map(names::DROPS)?;
        Ok(Self {
            object,
            logger,
            drops,
            allowlist_backend,
            verdict_link: Some(verdict_link),
            pinned: None,
            file_reads,
            file_open_hook,
            open_lsm,
            io_uring_sends,
            write_guard,
        })
    }

    /// Whether `lsm/file_open` reports the opens no open syscall carries
    /// (io_uring's, by handle, a stacked filesystem's layers), or why not.
    pub fn open_lsm(&self) -> Result<(), &str> {
        self.open_lsm.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Whether io_uring's UDP sends and connects are reported (BPF-LSM
    /// socket hooks), or why not.
    pub fn io_uring_sends(&self) -> Result<(), &str> {
        self.io_uring_sends
            .as_ref()
            .map(|_| ())
            .map_err(String::as_str)
    }

    /// What is seen of opens and sends that no syscall hook carries, as
    /// the daemon logs it and the probe prints it.
    pub fn coverage(&self) -> String {
        let opens = match self.open_lsm() {
            Ok(()) => "opens: every open that reaches a file (BPF-LSM file_open: \
                       io_uring, open_by_handle_at, overlay layers included)"
                .to_owned(),
            Err(why) => format!(
                "opens: through the open syscalls and open_by_handle_at; io_uring setups \
                 reported, not its opens unless fexit sees them (BPF-LSM file_open: {why})"
            ),
        };
        let sends = match self.io_uring_sends() {
            Ok(()) => "io_uring UDP sends: BPF-LSM socket_sendmsg/socket_connect".to_owned(),
            Err(why) => format!("io_uring UDP sends: not seen, setups reported ({why})"),
        };
        format!("{opens}; {sends}")
    }

    /// Whether the write guard's programs are attached, or why not.
    pub fn write_guard(&self) -> Result<(), &str> {
        self.write_guard
            .as_ref()
            .map(|_| ())
            .map_err(String::as_str)
    }

    /// The write guard's maps when its programs are attached, else why not
    /// (once: the maps move to the caller).
    pub fn take_write_guard(&mut self) -> Result<crate::write_guard::WriteGuard, String> {
        std::mem::replace(&mut self.write_guard, Err("already taken".into()))?;
        let why = |e: crate::object::ObjectError| format!("write guard maps: {e}");
        Ok(crate::write_guard::WriteGuard {
            guarded: self.object.take_map(names::WRITE_GUARD).map_err(why)?,
            armed: self
                .object
                .take_map(names::WRITE_GUARD_ARMED)
                .map_err(why)?,
        })
    }

    /// Which hook decides opens on this kernel.
    pub fn file_open_hook(&self) -> &FileOpenHook {
        &self.file_open_hook
    }

    /// How the open programs read file fields on this kernel.
    pub fn file_reads(&self) -> FileReads {
        self.file_reads
    }

    /// Takes the process event ring buffer (once).
    pub fn take_process_ring(&mut self) -> Result<RingBuf<MapData>, HookError> {
        self.take_ring(names::PROCESS_EVENTS)
    }

    /// Takes the network event ring buffer (once).
    pub fn take_net_ring(&mut self) -> Result<RingBuf<MapData>, HookError> {
        self.take_ring(names::NET_EVENTS)
    }

    fn take_ring(&mut self, name: &'static str) -> Result<RingBuf<MapData>, HookError> {
        Ok(self.object.take_map(name)?)
    }

    /// Takes the file event ring buffer (once).
    pub fn take_file_ring(&mut self) -> Result<RingBuf<MapData>, HookError> {
        self.take_ring(names::FILE_EVENTS)
    }

    /// Takes the file watch maps (once).
    pub fn take_watch_maps(&mut self) -> Result<WatchMaps, HookError> {
        Ok(WatchMaps {
            watched: self.object.take_map(names::WATCHED)?,
            prefixes: self.object.take_map(names::WATCH_PREFIXES)?,
            excluded_exes: self.object.take_map(names::WATCH_EXCLUDED_EXES)?,
            settings: self.object.take_map(names::FILE_SETTINGS)?,
            ino_bits: self.object.take_map(names::WATCHED_INO_BITS)?,
            ino_words: vec![0; sensor_common::file::WATCHED_INO_WORDS as usize],
            generation: 0,
            inodes: self.object.take_map(names::WATCHED_INODES)?,
            inode_bits: self.object.take_map(names::WATCHED_INODE_BITS)?,
        })
    }

    /// Takes the open-coalescing maps (once).
    pub fn take_repeat_maps(&mut self) -> Result<crate::watch::repeats::RepeatMaps, HookError> {
        Ok(crate::watch::repeats::RepeatMaps {
            counts: self.object.take_map(names::OPEN_REPEATS)?,
            generation: self.object.take_map(names::OPEN_REPEAT_GEN)?,
        })
    }

    /// The exec allowlist backend chosen at load.
    pub fn allowlist_backend(&self) -> &AllowlistBackend {
        &self.allowlist_backend
    }

    /// Pins the exec verdict's link in `pin_dir`, over the link an earlier
    /// sensor pinned there (which the kernel then detaches): call it once
    /// the policy is in the (pinned) maps. Returns its kernel ids.
    pub fn pin_verdict(
        &mut self,
        pin_dir: &std::path::Path,
    ) -> Result<crate::policy::pins::LinkIds, HookError> {
        use crate::policy::pins::{self, PinError};
        let link = self.verdict_link.take().ok_or(PinError::Link {
            path: pin_dir.join(pins::LINK_PIN),
            why: "already pinned by this sensor".to_owned(),
        })?;
        let link = pins::pin_link(link, pin_dir)?;
        let path = pin_dir.join(pins::LINK_PIN);
        let info = link.info().map_err(|e| PinError::Link {
            path: path.clone(),
            why: e.to_string(),
        })?;
        self.verdict_link = Some(link);
        let spare = aya::programs::links::PinnedLink::from_pin(&path)
            .ok()
            .map(FdLink::from);
        self.pinned = Some((pin_dir.to_owned(), spare));
        Ok(crate::policy::pins::LinkIds {
            link: info.id(),
            program: info.program_id(),
        })
    }

    /// Whether the pinned verdict link is still this sensor's: if its pin
    /// was removed or points at another link, pins this sensor's link again
    /// (so enforcement still outlives the daemon) and says what it found.
    pub fn check_verdict_pin(&mut self) -> Option<crate::tamper::Finding> {
        use crate::policy::pins;
        let ours = self.verdict_link.as_ref()?.info().ok()?.id();
        let (dir, spare) = self.pinned.as_mut()?;
        let action = match pins::pinned_link(dir) {
            Ok(Some(ids)) if ids.link == ours => return None,
            Ok(Some(ids)) => format!(
                "pin replaced by link {} (program {})",
                ids.link, ids.program
            ),
            Ok(None) => "pin removed".to_owned(),
            Err(e) => format!("pin unreadable: {e}"),
        };
        let target = dir.join(pins::LINK_PIN).display().to_string();
        // The spare fd is spent on the attempt; the held link keeps
        // enforcing while this process runs whatever happens.
        let outcome = match spare.take() {
            Some(link) => pins::pin_link(link, dir).map_err(|e| e.to_string()),
            None => Err("no spare handle of the link left".to_owned()),
        };
        let (restored, error) = match outcome {
            Ok(link) => {
                *spare = Some(link);
                (true, String::new())
            }
            Err(e) => (false, e),
        };
        Some(crate::tamper::Finding {
            object: "allowlist verdict link",
            action,
            target,
            restored,
            error,
        })
    }

    /// Takes the allowlist maps (once), with the state now in them.
    pub fn take_policy_maps(&mut self) -> Result<crate::policy::PolicyMaps, HookError> {
        let a: HashMap<MapData, FileId, AllowEntry> = self.object.take_map(names::ALLOW_A)?;
        let b = self.object.take_map(names::ALLOW_B)?;
        crate::policy::PolicyMaps::new(
            [a, b],
            [
                self.object.take_map(names::DENY_PARENT_A)?,
                self.object.take_map(names::DENY_PARENT_B)?,
            ],
            [
                self.object.take_map(names::DENY_UID_A)?,
                self.object.take_map(names::DENY_UID_B)?,
            ],
            self.object.take_map(names::POLICY_STATE)?,
            self.object.take_map(names::POLICY_SCOPE)?,
            sensor_common::ALLOW_ENTRIES,
        )
        .map_err(|source| {
            ObjectError::Map {
                name: names::POLICY_STATE,
                source,
            }
            .into()
        })
    }

    /// Takes aya-log's reader so a task can forward kernel log lines to tracing.
    pub fn take_logger(&mut self) -> Option<KernelLogger> {
        self.logger.take()
    }

    /// Detaches every program, then reads the final drop counters (no
    /// program can count a drop after this).
    pub fn detach(self) -> Result<KernelDrops, HookError> {
        let Self {
            object,
            logger,
            drops,
            allowlist_backend: _,
            verdict_link,
            pinned,
            file_reads: _,
            file_open_hook: _,
            open_lsm: _,
            io_uring_sends: _,
            write_guard: _,
        } = self;
        // Pinned, the link stays attached without this fd.
        drop(verdict_link);
        drop(pinned);
        drop(object);
        drop(logger);
        Self::sum_drops(&drops)
    }

    /// Kernel drop counters summed over CPUs.
    pub fn kernel_drops(&self) -> Result<KernelDrops, HookError> {
        Self::sum_drops(&self.drops)
    }

    fn sum_drops(drops: &PerCpuArray<MapData, u64>) -> Result<KernelDrops, HookError> {
        let sum = |reason: u32| -> Result<u64, HookError> {
            let values = drops.get(&reason, 0).map_err(|source| ObjectError::Map {
                name: names::DROPS,
                source,
            })?;
            Ok(values.iter().sum())
        };
        Ok(KernelDrops {
            process_ringbuf_full: sum(drop_reason::PROCESS_RINGBUF_FULL)?,
            kernel_read_failed: sum(drop_reason::KERNEL_READ_FAILED)?,
            file_ringbuf_full: sum(drop_reason::FILE_RINGBUF_FULL)?,
            net_ringbuf_full: sum(drop_reason::NET_RINGBUF_FULL)?,
            file_identity_full: sum(drop_reason::FILE_IDENTITY_FULL)?,
            exec_ringbuf_full: sum(drop_reason::EXEC_RINGBUF_FULL)?,
        })
    }
}

/// Totals of the kernel's per-CPU `DROPS` counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelDrops {
    /// Events lost because the ring buffer was full.
    pub process_ringbuf_full: u64,
    /// Events sent with some fields missing (not lost, but incomplete).
    pub kernel_read_failed: u64,
    /// File events lost (ring full, or not held until the syscall returned).
    pub file_ringbuf_full: u64,
    /// Files created in a watched tree the full `WATCHED_INODES` refused.
    pub file_identity_full: u64,
    /// Network events lost because `NET_EVENTS` was full.
    pub net_ringbuf_full: u64,
    /// The execs among `process_ringbuf_full`.
    pub exec_ringbuf_full: u64,
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    /// The file programs read syscall tracepoint records at fixed places:
    /// `__syscall_nr` at 8, argument n at 16 + 8n, `ret` at 16. That is the
    /// syscall trace event ABI; check it against this kernel's format files.
    #[test]
    fn syscall_tracepoint_records_have_the_layout_the_programs_read() {
        fn fields(tp: &str) -> Vec<(String, usize)> {
            let path = format!("/sys/kernel/tracing/events/syscalls/{tp}/format");
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            text.lines()
                .filter_map(|line| {
                    let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
                    let name = decl.rsplit([' ', '*']).next()?.to_owned();
                    let offset = line
                        .split("offset:")
                        .nth(1)?
                        .split(';')
                        .next()?
                        .parse()
                        .ok()?;
                    Some((name, offset))
                })
                .collect()
        }
        let enter = fields("sys_enter_renameat2");
        let want: Vec<(String, usize)> = [
            ("__syscall_nr", 8),
            ("olddfd", 16),
            ("oldname", 24),
            ("newdfd", 32),
            ("newname", 40),
            ("flags", 48),
        ]
        .iter()
        .map(|(n, o)| ((*n).to_owned(), *o))
        .collect();
        assert_eq!(enter[4..], want[..], "sys_enter_renameat2 fields");
        let exit = fields("sys_exit_openat");
        assert_eq!(exit.last(), Some(&("ret".to_owned(), 16)));
        let root = tracefs().expect("tracefs mounted");
        for (_, tp) in names::FILE_ENTER_PROGRAMS
            .iter()
            .chain(names::FILE_EXIT_OPEN_PROGRAMS)
        {
            assert!(syscall_tracepoint_exists(&root, tp), "{tp} on this kernel");
        }
    }

    use sensor_common::KernelOffsets;

    use super::*;

    /// The loader writes `KernelOffsets` over the programs' `OFFSETS` global
    /// byte for byte: the layout compiled into the eBPF object (its BTF) must
    /// be the one this side was compiled with.
    #[test]
    fn offsets_global_layout_matches_the_ebpf_object() {
        assert!(
            !crate::object::EBPF_OBJECT.is_empty(),
            "built without the eBPF object"
        );
        let object = aya_obj::Object::parse(crate::object::EBPF_OBJECT).expect("parse eBPF object");
        let btf = object.btf.expect("eBPF object carries BTF").to_bytes();
        let btf = KernelBtf::parse(&btf).expect("parse object BTF");
        assert_eq!(
            btf.struct_size("KernelOffsets").unwrap() as usize,
            size_of::<KernelOffsets>()
        );
        for (field, offset) in [
            ("valid", offset_of!(KernelOffsets, valid)),
            ("task_tgid", offset_of!(KernelOffsets, task_tgid)),
            (
                "task_group_leader",
                offset_of!(KernelOffsets, task_group_leader),
            ),
            ("bprm_file", offset_of!(KernelOffsets, bprm_file)),
            (
                "inode_mtime_nsec",
                offset_of!(KernelOffsets, inode_mtime_nsec),
            ),
            ("sb_dev", offset_of!(KernelOffsets, sb_dev)),
            (
                "tp_syscall_arg0",
                offset_of!(KernelOffsets, tp_syscall_arg0),
            ),
            ("sk_v6_daddr", offset_of!(KernelOffsets, sk_v6_daddr)),
            ("sin6_addr", offset_of!(KernelOffsets, sin6_addr)),
        ] {
            assert_eq!(
                btf.field_offset("KernelOffsets", field).unwrap() as usize,
                offset,
                "KernelOffsets.{field}"
            );
        }
        // The network settings global, written by the loader. (Records have
        // no BTF in the object; sensor-common pins their sizes for both sides.)
        use sensor_common::NetSettings;
        let same = |strukt: &str, size: usize, fields: &[(&str, usize)]| {
            assert_eq!(btf.struct_size(strukt).unwrap() as usize, size, "{strukt}");
            for &(field, offset) in fields {
                let got = btf.field_offset(strukt, field).unwrap() as usize;
                assert_eq!(got, offset, "{strukt}.{field}");
            }
        };
        same(
            "NetSettings",
            size_of::<NetSettings>(),
            &[
                ("udp_window_ns", offset_of!(NetSettings, udp_window_ns)),
                ("exclude", offset_of!(NetSettings, exclude)),
            ],
        );
    }
}
