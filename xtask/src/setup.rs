//! `cargo xtask setup`: everything a fresh Debian bookworm machine (root,
//! rustup with stable and nightly) needs to build and run rxsentry. Every step
//! checks first and skips work already done, printing one line per step.
//! The recipe for bpf-linker is the one in shared/PLATFORM.md.

use std::{
    env, fs,
    io::Read as _,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{output_of, run_cmd};

/// Debian packages: protoc for `proto`, iproute2 for the network-namespace
/// tests, and QEMU + busybox + cpio for the VM tests.
pub const APT_PACKAGES: &[&str] = &[
    "protobuf-compiler",
    "iproute2",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    // The systemd kiosk VM image's userland.
    "debootstrap",
];

/// The LLVM major that rustc nightly ships and bpf-linker is built against.
const LLVM_MAJOR: u32 = 22;
const BPF_LINKER_VERSION: &str = "^0.13";

/// Filesystems the sensor needs: (fstype, mount point).
pub const MOUNTS: &[(&str, &str)] = &[("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing")];

pub fn setup() -> Result<()> {
    println!("== setup");
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    mounts()?;
    println!("setup: done");
    Ok(())
}

// ---------------------------------------------------------------- apt

fn apt_packages() -> Result<()> {
    let mut missing = Vec::new();
    for pkg in APT_PACKAGES {
        if dpkg_installed(pkg)? {
            println!("ok: apt package {pkg} already present");
        } else {
            missing.push(*pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    println!("installing apt packages: {list}");
    require_root(&format!("apt-get install -y {list}"))?;
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run_cmd(&mut cmd)
    };
    apt(&["update"])
        .context("apt-get update failed: check that Debian's apt mirrors are reachable")?;
    let mut args = vec!["install", "-y"];
    args.extend(&missing);
    apt(&args).with_context(|| {
        format!("installing {list} failed: run `apt-get install -y {list}` by hand to see why")
    })?;
    Ok(())
}

fn dpkg_installed(pkg: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .context(
            "cannot run dpkg-query: setup supports Debian/Ubuntu only; elsewhere install \
             protoc, iproute2, qemu-system-x86_64, a static busybox and cpio by hand",
        )?;
    // dpkg-query exits 1 for a package it has never heard of: not installed.
    Ok(out.status.success() && dpkg_status_installed(&String::from_utf8_lossy(&out.stdout)))
}

/// True when a dpkg `${Status}` ("want ok state") says the package is installed,
/// e.g. "install ok installed" or "hold ok installed", not "deinstall ok
/// config-files" or "install ok half-installed".
pub fn dpkg_status_installed(status: &str) -> bool {
    let words: Vec<&str> = status.split_whitespace().collect();
    matches!(words.as_slice(), [_, "ok", "installed"])
}

// ---------------------------------------------------------------- rust-src

fn rust_src() -> Result<()> {
    let installed = output_of(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .context(
        "cannot list the nightly toolchain's components: install rustup and the nightly \
         toolchain (`rustup toolchain install nightly`)",
    )?;
    if has_component(&installed, "rust-src") {
        println!("ok: rust-src (nightly) already present");
        return Ok(());
    }
    println!("installing rust-src for nightly");
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("cannot add rust-src to nightly: it is needed for -Z build-std=core")
}

/// True when `rustup component list --installed` output lists `name`.
pub fn has_component(list: &str, name: &str) -> bool {
    list.lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

// ---------------------------------------------------------------- bpf-linker

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, default ~/.cargo/bin.
fn cargo_bin_dir() -> Option<PathBuf> {
    match env::var_os("CARGO_HOME").filter(|v| !v.is_empty()) {
        Some(home) => Some(PathBuf::from(home).join("bin")),
        None => env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")),
    }
}

/// `bpf-linker --version` output when it runs from PATH (or from cargo's bin
/// dir, which is then put on PATH for the builds this process starts).
pub fn bpf_linker_version() -> Option<String> {
    let try_run = |prog: &Path| {
        Command::new(prog)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if let Some(v) = try_run(Path::new("bpf-linker")) {
        return Some(v);
    }
    let dir = cargo_bin_dir()?;
    let v = try_run(&dir.join("bpf-linker"))?;
    prepend_to_path(&dir);
    println!(
        "note: {} is not on PATH; using it for this run (add it to PATH)",
        dir.display()
    );
    Some(v)
}

fn prepend_to_path(dir: &Path) {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    if let Ok(joined) = env::join_paths(paths) {
        // SAFETY: called before this process starts any thread (setup and
        // build run single-threaded; `run` spawns its reader thread later).
        unsafe { env::set_var("PATH", joined) };
    }
}

fn bpf_linker() -> Result<()> {
    if let Some(v) = bpf_linker_version() {
        println!("ok: {v} already present");
        return Ok(());
    }
    println!(
        "installing bpf-linker {BPF_LINKER_VERSION} against rustc nightly's LLVM {LLVM_MAJOR} (about 4 minutes)"
    );
    let home =
        env::var_os("HOME").context("HOME is not set: cannot choose ~/.cache/rxsentry/llvm")?;
    let prefix = PathBuf::from(home).join(".cache/rxsentry/llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;

    let sysroot = output_of("rustc", &["+nightly", "--print", "sysroot"])
        .context("cannot find the nightly sysroot: is the nightly toolchain installed?")?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let names: Vec<String> = fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let Some(name) = pick_libllvm(&names, LLVM_MAJOR) else {
        bail!(
            "no libLLVM.so.{LLVM_MAJOR}.*-rust-*-nightly in {}: bpf-linker's llvm-{LLVM_MAJOR} \
             feature needs the LLVM {LLVM_MAJOR} that rustc nightly ships (found: {})",
            lib.display(),
            names.join(", ")
        );
    };
    let real = lib.join(name);
    if !is_elf(&real) {
        bail!(
            "{} is not an ELF shared library (a linker script?): cannot build bpf-linker against it",
            real.display()
        );
    }
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(name)] {
        force_symlink(&real, &link)?;
    }
    println!("  linked {} into {}", real.display(), prefix_lib.display());

    let mut cmd = Command::new("cargo");
    cmd.args([
        "+nightly",
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        &format!("llvm-{LLVM_MAJOR}"),
        // Only reached when the installed binary (if any) does not run, e.g.
        // its rpath folder was removed: rebuild it.
        "--force",
    ])
    .env("LLVM_PREFIX", &prefix);
    run_cmd(&mut cmd).context(
        "installing bpf-linker failed: it needs crates.io and the nightly toolchain; \
         see shared/PLATFORM.md (the eBPF toolchain) to do it by hand",
    )?;
    match bpf_linker_version() {
        Some(v) => {
            println!(
                "  installed {v} (keep {}: the binary's rpath points there)",
                prefix_lib.display()
            );
            Ok(())
        }
        None => bail!(
            "bpf-linker was installed but `bpf-linker --version` does not run: is {} on PATH?",
            cargo_bin_dir().unwrap_or_default().display()
        ),
    }
}

/// Picks the real LLVM shared library in rustc's sysroot lib dir:
/// `libLLVM.so.<major>.<minor>-rust-<version>-nightly`, not the
/// `libLLVM-<major>-rust-<version>-nightly.so` linker script next to it.
pub fn pick_libllvm(names: &[String], major: u32) -> Option<&str> {
    let prefix = format!("libLLVM.so.{major}.");
    names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with(&prefix) && n.contains("-rust-") && n.ends_with("-nightly"))
        .max()
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// `ln -sf target link`.
fn force_symlink(target: &Path, link: &Path) -> Result<()> {
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).with_context(|| format!("cannot replace {}", link.display()))?;
    }
    symlink(target, link)
        .with_context(|| format!("cannot link {} -> {}", link.display(), target.display()))
}

// ---------------------------------------------------------------- mounts

fn mounts() -> Result<()> {
    let table = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    for (fstype, point) in MOUNTS {
        if is_mounted(&table, fstype, point) {
            println!("ok: {fstype} at {point} already present");
            continue;
        }
        println!("installing mount: {fstype} at {point}");
        let manual = format!("mount -t {fstype} {fstype} {point}");
        require_root(&manual)?;
        if !Path::new(point).is_dir() {
            bail!("{point} does not exist: this kernel lacks {fstype}, which the sensor needs");
        }
        run_cmd(Command::new("mount").args(["-t", fstype, fstype, point])).with_context(|| {
            format!("cannot mount {fstype} at {point}: the sensor needs it (`{manual}`)")
        })?;
    }
    Ok(())
}

/// True when a /proc/mounts table has `fstype` mounted at `point`.
pub fn is_mounted(table: &str, fstype: &str, point: &str) -> bool {
    table.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_dev, mp, ty) = (f.next(), f.next(), f.next());
        mp == Some(point) && ty == Some(fstype)
    })
}

// ---------------------------------------------------------------- root

fn require_root(what: &str) -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    match effective_uid(&status) {
        Some(0) => Ok(()),
        Some(uid) => bail!(
            "this step needs root (running as uid {uid}): rerun as root, or run `{what}` as root"
        ),
        None => Ok(()), // cannot tell: let the command itself fail
    }
}

/// The effective uid from /proc/self/status ("Uid: real effective saved fs").
pub fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status() {
        assert!(dpkg_status_installed("install ok installed"));
        assert!(dpkg_status_installed("hold ok installed\n"));
        assert!(!dpkg_status_installed("deinstall ok config-files"));
        assert!(!dpkg_status_installed("install ok half-installed"));
        assert!(!dpkg_status_installed("unknown ok not-installed"));
        assert!(!dpkg_status_installed(""));
    }

    #[test]
    fn rust_src_component() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(!has_component(
            "rust-std-x86_64-unknown-linux-gnu\nrustc\n",
            "rust-src"
        ));
        assert!(!has_component("", "rust-src"));
    }

    #[test]
    fn libllvm_picks_the_real_library() {
        let names: Vec<String> = [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "librustc_driver-b5a965480ee51f9a.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "rustlib",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            pick_libllvm(&names, 22),
            Some("libLLVM.so.22.1-rust-1.97.0-nightly")
        );
        assert_eq!(pick_libllvm(&names, 21), None);
        let only_script = vec!["libLLVM-22-rust-1.97.0-nightly.so".to_owned()];
        assert_eq!(pick_libllvm(&only_script, 22), None);
    }

    #[test]
    fn mounts_table() {
        let table = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n\
                     debugfs /sys/kernel/debug debugfs rw 0 0\n";
        assert!(is_mounted(table, "bpf", "/sys/fs/bpf"));
        assert!(!is_mounted(table, "tracefs", "/sys/kernel/tracing"));
        // the right point with another filesystem is not enough
        assert!(!is_mounted(
            "tmpfs /sys/fs/bpf tmpfs rw 0 0",
            "bpf",
            "/sys/fs/bpf"
        ));
    }

    #[test]
    fn uid_from_status() {
        let status = "Name:\txtask\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Uid:\t0\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(effective_uid("Name: x\n"), None);
    }
}
