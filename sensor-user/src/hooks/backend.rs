//! Which kernel mechanism carries each capability on this kernel, chosen
//! by proving it (load, attach, see it run), never by reading a version or
//! a config file: the exec allowlist's backend and the hook that decides
//! file opens, with the reason for every fallback.

use aya::{
    maps::MapData,
    programs::{RawTracePoint, links::FdLink},
};
use sensor_common::names;

use crate::object::{ObjectError, SensorObject};

/// How the attached open programs read the opened file's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileReads {
    /// No file programs attached.
    Off,
    /// `bpf_probe_read_kernel` per field (every kernel).
    Helper,
    /// Plain loads from a `bpf_rdonly_cast`-typed `struct file`.
    Typed,
    /// Plain loads from the typed `struct file *` that `fexit` hands in
    /// (opens decided at `do_filp_open`).
    FexitArgs,
}

impl std::fmt::Display for FileReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::Helper => "helper reads",
            Self::Typed => "typed loads (bpf_rdonly_cast)",
            Self::FexitArgs => "typed loads (fexit arguments)",
        })
    }
}

/// Which hook decides opens on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileOpenHook {
    /// No file programs attached.
    Off,
    /// `fexit/do_filp_open`: a trampoline, no syscall tracepoint on the
    /// open path (io_uring's opens go through it too).
    Fexit,
    /// The open syscalls' exit tracepoints; why `fexit` is not used.
    Tracepoints { fexit_unavailable: String },
}

impl std::fmt::Display for FileOpenHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Fexit => write!(f, "fexit {}", names::FILP_OPEN_FUNCTION),
            Self::Tracepoints { fexit_unavailable } => write!(
                f,
                "syscall exit tracepoints (fexit unavailable: {fexit_unavailable})"
            ),
        }
    }
}

/// Where the exec allowlist verdict is enforced on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowlistBackend {
    /// BPF-LSM `bprm_check_security`: the exec fails with EPERM.
    Lsm,
    /// Raw tracepoint at exec + SIGKILL; why BPF-LSM could not be used.
    TracepointSigkill { lsm_unavailable: String },
}

impl std::fmt::Display for AllowlistBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Lsm => f.write_str("lsm"),
            Self::TracepointSigkill { lsm_unavailable } => {
                write!(
                    f,
                    "tracepoint+sigkill (BPF-LSM unavailable: {lsm_unavailable})"
                )
            }
        }
    }
}

/// Attaches the preferred backend that works here: BPF-LSM if a program on
/// `bprm_check_security` loads, attaches AND is seen running (a kernel can
/// accept the attach yet never call BPF-LSM when `bpf` is not an active
/// LSM), else the tracepoint.
///
/// The daemon and `rxsentry-probe` both choose with this function, so what
/// the probe reports is what the sensor would run. The link is returned,
/// owned by the caller (to pin it): dropping it detaches the program.
pub fn attach_exec_verdict(
    object: &mut SensorObject,
    btf: &Result<aya::Btf, String>,
) -> Result<(AllowlistBackend, FdLink), ObjectError> {
    let lsm_unavailable = match try_lsm(object, btf) {
        Ok(link) => return Ok((AllowlistBackend::Lsm, link)),
        Err(why) => why,
    };
    let name = names::PROG_EXEC_VERDICT;
    let fail = |source| ObjectError::Program { name, source };
    let program: &mut RawTracePoint = object.program(name)?;
    program.load().map_err(fail)?;
    let id = program.attach(names::PROG_EXEC).map_err(fail)?;
    let link = program.take_link(id).map_err(fail)?;
    Ok((
        AllowlistBackend::TracepointSigkill { lsm_unavailable },
        link.into(),
    ))
}

/// The first line of `text`, at most `max` characters (a verifier log can
/// run to thousands of lines; the reason for a fallback needs one).
pub(super) fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_owned(),
    }
}

/// Program `name` as its concrete type, for a program the sensor can do
/// without (a kernel feature it may lack): the error is the reason, as text.
fn optional_program<'a, P>(
    object: &'a mut SensorObject,
    name: &'static str,
) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    object.program(name).map_err(|e| e.to_string())
}

/// Loads and attaches the `fexit/do_filp_open` open program; why not, as
/// text, when this kernel refuses (no trampolines, no such function).
pub(super) fn try_fexit_open(object: &mut SensorObject, btf: &aya::Btf) -> Result<(), String> {
    let program: &mut aya::programs::FExit = optional_program(object, names::PROG_FILE_FILP_OPEN)?;
    program
        .load(names::FILP_OPEN_FUNCTION, btf)
        .map_err(|e| format!("load: {}", first_line(&e.to_string(), 300)))?;
    if let Err(e) = program.attach() {
        let _ = program.unload();
        return Err(format!("attach: {e}"));
    }
    Ok(())
}

fn try_lsm(object: &mut SensorObject, btf: &Result<aya::Btf, String>) -> Result<FdLink, String> {
    let btf = btf.as_ref().map_err(Clone::clone)?;
    let program: &mut aya::programs::Lsm = optional_program(object, names::PROG_EXEC_VERDICT_LSM)?;
    program
        .load("bprm_check_security", btf)
        .map_err(|e| format!("load: {e}"))?;
    let link = program.attach().map_err(|e| format!("attach: {e}"))?;
    let runs: aya::maps::Array<&MapData, u64> = object
        .map(names::LSM_VERDICT_RUNS)
        .map_err(|e| e.to_string())?;
    // One exec of ourselves must go through the hook. Whether it is
    // allowed does not matter (a pinned policy may refuse it): the count
    // proves the program ran.
    let _ = std::process::Command::new("/proc/self/exe")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if runs.get(&0, 0).is_ok_and(|n| n > 0) {
        let program: &mut aya::programs::Lsm =
            optional_program(object, names::PROG_EXEC_VERDICT_LSM)?;
        return program
            .take_link(link)
            .map(FdLink::from)
            .map_err(|e| format!("taking the link: {e}"));
    }
    let program: &mut aya::programs::Lsm = optional_program(object, names::PROG_EXEC_VERDICT_LSM)?;
    let _ = program.detach(link);
    Err("attached, but the kernel never ran it (is `bpf` in the lsm= list?)".to_owned())
}

/// Loads and attaches BPF-LSM `programs` (name, hook). Call only once
/// BPF-LSM is known to run here; the links stay with the object (they end
/// with the daemon). The first program the kernel refuses (e.g. no
/// `path_*` hooks without `CONFIG_SECURITY_PATH`) is the error; those
/// attached before it stay attached, idle until their maps say otherwise.
pub fn attach_lsm(
    object: &mut SensorObject,
    btf: &aya::Btf,
    programs: &[(&'static str, &'static str)],
) -> Result<(), String> {
    for &(name, hook) in programs {
        let program: &mut aya::programs::Lsm = optional_program(object, name)?;
        program
            .load(hook, btf)
            .map_err(|e| format!("{name}: load: {e}"))?;
        program
            .attach()
            .map_err(|e| format!("{name}: attach: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::first_line;

    #[test]
    fn a_fallback_reason_is_one_bounded_line() {
        assert_eq!(
            first_line("load: EPERM\nverifier: 1\n2", 300),
            "load: EPERM"
        );
        assert_eq!(first_line("abcdef", 3), "abc...");
        assert_eq!(first_line("", 3), "");
    }
}

/// What `kernel.io_uring_disabled` says (Linux 6.6+): io_uring's opens,
/// reads and sends pass no syscall tracepoint, so on a kernel without
/// BPF-LSM or trampolines the sensor sees only its setup
/// (`file_op::IO_URING_SETUP`); disabling it closes that gap.
pub fn io_uring_state() -> String {
    io_uring_state_of(std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok())
}

fn io_uring_state_of(value: Option<String>) -> String {
    match value.as_deref().map(str::trim) {
        Some("0") => "enabled for every process (kernel.io_uring_disabled = 0; set it to 2 to \
                      disable io_uring, whose operations no syscall hook sees; setups are reported)"
            .to_owned(),
        Some("1") => "restricted to kernel.io_uring_group (kernel.io_uring_disabled = 1; setups are reported)"
            .to_owned(),
        Some("2") => "disabled for every process (kernel.io_uring_disabled = 2)".to_owned(),
        Some(other) => format!("kernel.io_uring_disabled = {other:?} (unknown value; setups are reported)"),
        None => "no kernel.io_uring_disabled here (kernel before 6.6, or no io_uring); setups are reported"
            .to_owned(),
    }
}

#[cfg(test)]
mod io_uring_tests {
    use super::io_uring_state_of;

    #[test]
    fn every_io_uring_disabled_value_is_described() {
        assert!(io_uring_state_of(Some("0\n".into())).starts_with("enabled"));
        assert!(io_uring_state_of(Some("1".into())).starts_with("restricted"));
        assert!(io_uring_state_of(Some("2".into())).starts_with("disabled"));
        assert!(io_uring_state_of(Some("7".into())).contains("unknown"));
        assert!(io_uring_state_of(None).starts_with("no kernel.io_uring_disabled"));
    }
}
