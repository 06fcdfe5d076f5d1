//! `cargo xtask vm-image`: for each kernel of `KERNELS`, a bootable kiosk
//! image in target/vm-images/<kernel>/:
//!
//! - `vmlinuz`, extracted from the kernel's Debian package (downloaded once
//!   with `apt-get download` into ~/.cache/rxsentry/debs);
//! - `initramfs.cpio`: the files of vm-images/kiosk/ (init, kiosk apps, PHI
//!   data, sensor config, in-guest tests), a static busybox with its applet
//!   links, and our release binaries with the shared libraries and dynamic
//!   loader that `ldd` lists for them. Rebuilt every time (it is cheap).

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::Write as _,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::{Kernel, deb_cache_dir, image_dir, qemu_args, select_kernels};
use crate::{
    build,
    cmd::{describe, output_of, run_cmd, target_dir, workspace_root},
    setup,
};

/// Our binaries in the image, from target/release, installed in /usr/bin.
pub const BINARIES: &[&str] = &[
    "rxsentry-sensor",
    "rxsentry-collector",
    "rxsentry",
    "rxsentry-probe",
    // The isolation test's traffic (tests crate).
    "netprobe",
    // io_uring and by-handle opens, io_uring sends (tests crate).
    "uring",
];
/// Host tools the in-guest tests need beyond busybox, copied to the same
/// path with their libraries: iproute2's `ip` (busybox's applet has no
/// `netns` and no veth) and `tc` (the isolation test deletes filters),
/// installed by `cargo xtask setup`.
const HOST_TOOLS: &[&str] = &["/usr/sbin/ip", "/usr/sbin/tc"];
/// The static busybox of Debian's busybox-static package.
const BUSYBOX: &str = "/bin/busybox";
/// Files copied verbatim into the image's root.
const OVERLAY: &str = "vm-images/kiosk";
/// Directories the init expects, beyond those of the overlay.
const DIRS: &[&str] = &[
    "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "root", "var/log",
];

#[derive(Args, Default)]
pub struct Options {
    /// Only this kernel (repeatable; see KERNELS in xtask/src/vm/mod.rs).
    /// Default: every kernel.
    #[arg(long = "kernel", value_name = "NAME")]
    pub kernels: Vec<String>,
    /// Skip setup and build: use the binaries already in target/release.
    #[arg(long)]
    pub no_build: bool,
    /// Build the systemd kiosk image instead (debootstrap, our .debs, a
    /// disk; vm-images/README.md).
    #[arg(long)]
    pub systemd: bool,
}

/// A built image.
pub struct Image {
    pub kernel: &'static Kernel,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
}

impl Image {
    /// The QEMU command line, ready to paste into a shell.
    pub fn command_line(&self, extra_append: &str) -> String {
        let mut words = vec!["qemu-system-x86_64".to_owned()];
        words.extend(
            qemu_args(&self.vmlinuz, &self.initramfs, extra_append)
                .iter()
                .map(|a| shell_quote(&a.to_string_lossy())),
        );
        words.join(" ")
    }
}

pub fn vm_image(opts: &Options) -> Result<()> {
    let kernels = select_kernels(&opts.kernels)?;
    if !opts.no_build {
        setup::setup()?;
        build::build(&build::Options { release: true })?;
    }
    if opts.systemd {
        return super::systemd_test::build_image();
    }
    for kernel in kernels {
        let image = build_image(kernel)?;
        println!(
            "image {}: boot it with a shell (leave the shell to power off):\n  {}",
            kernel.name,
            image.command_line("rxsentry.mode=shell")
        );
    }
    Ok(())
}

/// Downloads (once) and extracts the kernel, then builds the initramfs.
pub fn build_image(kernel: &'static Kernel) -> Result<Image> {
    println!("== vm-image {} ({})", kernel.name, kernel.package);
    let dir = image_dir(kernel);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Held until the process exits: another vm-image/vm-test on the same
    // target/ (engineers share it) waits instead of rebuilding under us.
    lock_image_dir(&dir)?;
    let deb = fetch_deb(kernel)?;
    let vmlinuz = dir.join("vmlinuz");
    extract_vmlinuz(kernel, &deb, &vmlinuz)?;
    let initramfs = dir.join("initramfs.cpio");
    build_initramfs(kernel, &deb, &dir.join("root"), &initramfs)?;
    Ok(Image {
        kernel,
        vmlinuz,
        initramfs,
    })
}

/// Locks `dir/.lock` for the rest of this process (an flock, released when
/// the process exits), waiting for whoever holds it.
pub(crate) fn lock_image_dir(dir: &Path) -> Result<()> {
    // An flock held by this process through another open file would block
    // us: lock each folder once.
    static HELD: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    if held.iter().any(|d| d == dir) {
        return Ok(());
    }
    let path = dir.join(".lock");
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    if file.try_lock().is_err() {
        println!(
            "waiting for another vm-image/vm-test using {}",
            dir.display()
        );
        file.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
    }
    // Deliberately leaked: the lock must outlive the boot that follows.
    std::mem::forget(file);
    held.push(dir.to_path_buf());
    Ok(())
}

// ---------------------------------------------------------------- kernel

/// The cached .deb of `kernel`, downloading it when absent. apt-get needs
/// its package lists: when the download fails, they are updated once.
pub(crate) fn fetch_deb(kernel: &Kernel) -> Result<PathBuf> {
    let cache = deb_cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    if let Some(name) = pick_deb(&file_names(&cache)?, kernel.package) {
        println!("ok: {name} already in {}", cache.display());
        return Ok(cache.join(name));
    }
    // Download into a private folder, then rename: a concurrent or
    // interrupted run never sees half a .deb.
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&cache)
        .with_context(|| format!("cannot create a folder in {}", cache.display()))?;
    let download = || {
        let mut cmd = Command::new("apt-get");
        // As root, apt would hand the download to its `_apt` user, which
        // cannot write here; say up front that root downloads.
        cmd.args(["-o", "APT::Sandbox::User=root", "download", kernel.package])
            .current_dir(tmp.path());
        run_cmd(&mut cmd)
    };
    if download().is_err() {
        println!("apt-get download failed: updating the package lists once and retrying");
        run_cmd(Command::new("apt-get").arg("update"))
            .context("apt-get update failed: check that Debian's apt mirrors are reachable")?;
        download().with_context(|| {
            format!(
                "cannot download {}: is it in this machine's apt sources (`apt-cache policy {0}`)?",
                kernel.package
            )
        })?;
    }
    let name = pick_deb(&file_names(tmp.path())?, kernel.package)
        .with_context(|| format!("apt-get download left no {}_*.deb", kernel.package))?
        .to_owned();
    let dest = cache.join(&name);
    fs::rename(tmp.path().join(&name), &dest)
        .with_context(|| format!("cannot move {name} into {}", cache.display()))?;
    Ok(dest)
}

fn file_names(dir: &Path) -> Result<Vec<String>> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// The .deb of exactly `package` among `names` (`<package>_<version>_<arch>.deb`;
/// `linux-image-X-unsigned_…` is another package), the highest name if several.
pub fn pick_deb<'a>(names: &'a [String], package: &str) -> Option<&'a str> {
    let prefix = format!("{package}_");
    names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        .max()
}

/// `dpkg-deb --fsys-tarfile DEB | tar -xO MEMBER > dest`, skipped when
/// `dest` already came from this very .deb.
pub(crate) fn extract_vmlinuz(kernel: &Kernel, deb: &Path, dest: &Path) -> Result<()> {
    let source = deb.file_name().unwrap_or_default().to_string_lossy();
    let stamp = dest.with_extension("from");
    if dest.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s == source) {
        println!("ok: {} already extracted from {source}", dest.display());
        return Ok(());
    }
    let member = kernel.vmlinuz_member();
    println!("extracting {member} from {source}");
    let partial = dest.with_extension("partial");
    let out =
        File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let mut tar = Command::new("tar");
    tar.args(["-xO", "-f", "-", &member]).stdout(out);
    untar_from_deb(deb, tar)?;
    if fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) == 0 {
        bail!("{member} in {} is empty", deb.display());
    }
    fs::rename(&partial, dest).with_context(|| format!("cannot write {}", dest.display()))?;
    fs::write(&stamp, source.as_bytes())
        .with_context(|| format!("cannot write {}", stamp.display()))
}

// ---------------------------------------------------------------- initramfs

/// Fills `root` (emptied first) and packs it into `out` as a newc cpio.
fn build_initramfs(kernel: &Kernel, deb: &Path, root: &Path, out: &Path) -> Result<()> {
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("cannot empty {}", root.display()))?;
    }
    copy_tree(&workspace_root().join(OVERLAY), root)?;
    for dir in DIRS {
        fs::create_dir_all(root.join(dir))
            .with_context(|| format!("cannot create {dir} in {}", root.display()))?;
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    install_busybox(root)?;
    install_binaries(&target_dir().join("release"), root)?;
    // The `tests` crate's suites and the tools they exec (vm/suite.rs).
    let suite_files = super::suite::install(root, &out.with_file_name(super::suite::LIST_FILE))?;
    install_libraries(root, &suite_files)?;
    install_modules(kernel, deb, root)?;
    fs::write(
        root.join("etc/rxsentry/image"),
        format!(
            "kernel={}\npackage={}\norigin={}\n",
            kernel.name, kernel.package, kernel.origin
        ),
    )?;
    pack_cpio(root, out)?;
    let size = fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    println!(
        "initramfs: {} ({:.1} MiB)",
        out.display(),
        size as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// Kernel modules the in-guest tests load (Debian builds them as modules):
/// veth for the isolation test's peer, tun for its L3 device, the clsact
/// qdisc and BPF classifier that isolation attaches through before Linux
/// 6.6, and overlayfs for the file test that reads through an overlay.
const MODULES: &[&str] = &[
    "kernel/fs/overlayfs/overlay.ko",
    "kernel/drivers/net/veth.ko",
    "kernel/drivers/net/tun.ko",
    "kernel/net/sched/sch_ingress.ko",
    "kernel/net/sched/cls_bpf.ko",
];

/// Extracts [`MODULES`] from the kernel's .deb into the image's
/// /lib/modules/<release>/.
fn install_modules(kernel: &Kernel, deb: &Path, root: &Path) -> Result<()> {
    let members: Vec<String> = MODULES
        .iter()
        .map(|m| format!("./lib/modules/{}/{m}", kernel.release()))
        .collect();
    let mut tar = Command::new("tar");
    tar.args(["-x", "-f", "-", "-C"]).arg(root).args(&members);
    untar_from_deb(deb, tar)
}

/// `dpkg-deb --fsys-tarfile DEB | TAR`: `tar` reads the package's files
/// from stdin.
pub(crate) fn untar_from_deb(deb: &Path, mut tar: Command) -> Result<()> {
    let mut dpkg = Command::new("dpkg-deb");
    dpkg.arg("--fsys-tarfile").arg(deb).stdout(Stdio::piped());
    let mut dpkg_child = dpkg
        .spawn()
        .with_context(|| format!("cannot start `{}`", describe(&dpkg)))?;
    let what = describe(&tar);
    let tar_status = tar
        .stdin(dpkg_child.stdout.take().context("dpkg-deb stdout")?)
        .status()
        .with_context(|| format!("cannot start `{what}`"))?;
    let dpkg_status = dpkg_child.wait().context("waiting for dpkg-deb")?;
    if !dpkg_status.success() || !tar_status.success() {
        bail!(
            "`{what}` on {} failed (dpkg-deb: {dpkg_status}, tar: {tar_status})",
            deb.display()
        );
    }
    Ok(())
}

/// Copies a tree, keeping permissions and symlinks.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            symlink(fs::read_link(&src)?, &dst)
                .with_context(|| format!("cannot link {}", dst.display()))?;
        } else {
            copy_file(&src, &dst)?;
        }
    }
    Ok(())
}

/// Copies a file's contents (following symlinks) and permissions, creating
/// the parent folders.
pub(crate) fn copy_file(src: &Path, dst: &Path) -> Result<()> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    fs::copy(src, dst)
        .map(drop)
        .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))
}

/// /bin/busybox (it must be static) and a /bin link for each of its applets.
pub(crate) fn install_busybox(root: &Path) -> Result<()> {
    let busybox = Path::new(BUSYBOX);
    if !ldd(busybox)
        .with_context(|| format!("{BUSYBOX} missing: run `cargo xtask setup` (busybox-static)"))?
        .is_empty()
    {
        bail!("{BUSYBOX} is not statically linked: install busybox-static");
    }
    copy_file(busybox, &root.join("bin/busybox"))?;
    let applets = output_of(BUSYBOX, &["--list"])?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let link = root.join("bin").join(applet);
        if fs::symlink_metadata(&link).is_err() {
            symlink("busybox", &link).with_context(|| format!("cannot link {}", link.display()))?;
        }
    }
    Ok(())
}

/// Our binaries into /usr/bin, the host tools at their own paths, and the
/// shared libraries and loader they need at the same paths as on this
/// machine.
fn install_binaries(bin_dir: &Path, root: &Path) -> Result<()> {
    let mut libs = BTreeSet::new();
    for name in BINARIES {
        let bin = bin_dir.join(name);
        if !bin.is_file() {
            bail!(
                "{} not found: run `cargo xtask build --release` first",
                bin.display()
            );
        }
        copy_file(&bin, &root.join("usr/bin").join(name))?;
        libs.extend(ldd(&bin)?);
    }
    for tool in HOST_TOOLS {
        let tool = Path::new(tool);
        if !tool.is_file() {
            bail!("{} not found: run `cargo xtask setup`", tool.display());
        }
        copy_file(tool, &root.join(tool.strip_prefix("/").unwrap_or(tool)))?;
        libs.extend(ldd(tool)?);
    }
    for lib in &libs {
        let rel = lib.strip_prefix("/").unwrap_or(lib);
        copy_file(lib, &root.join(rel))?;
    }
    let names: Vec<String> = libs.iter().map(|l| l.display().to_string()).collect();
    println!("shared libraries: {}", names.join(" "));
    Ok(())
}

/// The shared libraries of `files` (already in the image) at their paths.
fn install_libraries(root: &Path, files: &[PathBuf]) -> Result<()> {
    let mut libs = BTreeSet::new();
    for file in files {
        libs.extend(ldd(file)?);
    }
    for lib in &libs {
        copy_file(lib, &root.join(lib.strip_prefix("/").unwrap_or(lib)))?;
    }
    Ok(())
}

/// The libraries and loader `ldd` lists for `bin` (none for a static binary).
fn ldd(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("cannot run ldd")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("not a dynamic executable") || stdout.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        bail!("`ldd {}` failed: {}", bin.display(), stderr.trim());
    }
    parse_ldd(&stdout).with_context(|| format!("ldd {}", bin.display()))
}

/// Absolute paths in `ldd` output: `libc.so.6 => /lib/…/libc.so.6 (0x…)` and
/// the loader's `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((lib, target)) => {
                if target.trim() == "not found" {
                    bail!("{} not found", lib.trim());
                }
                target
            }
            None => line,
        };
        if let Some(path) = target
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// Every path under `root`, relative (`.`, `./bin`, …), parents first.
fn walk(root: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = vec![PathBuf::from(".")];
    let mut i = 0;
    while i < paths.len() {
        let dir = root.join(&paths[i]);
        if fs::symlink_metadata(&dir)?.is_dir() {
            let mut children: Vec<PathBuf> = fs::read_dir(&dir)?
                .map(|e| e.map(|e| paths[i].join(e.file_name())))
                .collect::<Result<_, _>>()?;
            children.sort();
            paths.extend(children);
        }
        i += 1;
    }
    Ok(paths)
}

/// `cpio -o -H newc` of the whole tree, owned by root, reproducible.
pub(crate) fn pack_cpio(root: &Path, out: &Path) -> Result<()> {
    let list: String = walk(root)?
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut cmd = Command::new("cpio");
    cmd.args(["-o", "-H", "newc", "-R", "0:0", "--reproducible", "--quiet"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(file);
    let line = describe(&cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{line}` (apt package cpio)"))?;
    child
        .stdin
        .take()
        .context("cpio stdin")?
        .write_all(list.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Single-quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd5b5f2000)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f6815013000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f681473e000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f6815049000)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        // older glibc prints the vDSO with an empty target
        assert!(
            parse_ldd("\tlinux-vdso.so.1 =>  (0x00007ffd)\n")
                .unwrap()
                .is_empty()
        );
        let err = parse_ldd("\tlibssl.so.3 => not found\n").unwrap_err();
        assert_eq!(err.to_string(), "libssl.so.3 not found");
    }

    #[test]
    fn cached_deb_is_the_exact_package() {
        let names: Vec<String> = [
            "linux-image-6.1.0-56-amd64-unsigned_6.1.192-2_amd64.deb",
            "linux-image-6.1.0-56-amd64_6.1.192-1_amd64.deb",
            "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb",
            "linux-image-6.1.0-56-amd64_6.1.192-3_amd64.deb.partial",
            ".download-abc",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            pick_deb(&names, "linux-image-6.1.0-56-amd64"),
            Some("linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb")
        );
        assert_eq!(pick_deb(&names, "linux-image-6.1.0-55-amd64"), None);
        assert_eq!(pick_deb(&[], "linux-image-6.1.0-56-amd64"), None);
    }

    #[test]
    fn quoting_for_the_readme_command() {
        assert_eq!(shell_quote("-m"), "-m");
        assert_eq!(shell_quote("/a/b.cpio"), "/a/b.cpio");
        assert_eq!(
            shell_quote("console=ttyS0 panic=-1"),
            "'console=ttyS0 panic=-1'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn walk_lists_parents_first() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("b/c")).unwrap();
        fs::write(dir.path().join("b/c/f"), "x").unwrap();
        fs::write(dir.path().join("a"), "x").unwrap();
        symlink("busybox", dir.path().join("l")).unwrap();
        let got = walk(dir.path()).unwrap();
        assert_eq!(
            got,
            [".", "./a", "./b", "./l", "./b/c", "./b/c/f"].map(PathBuf::from)
        );
    }
}
