//! `cargo xtask vm-image --systemd`: the systemd kiosk image in
//! target/vm-images/systemd-kiosk/, a Debian bookworm userland as kiosks run
//! it (systemd as PID 1, our .deb packages, the apps as services in
//! `kiosk.slice`), booted from a virtio disk:
//!
//! - `base/`: `debootstrap --variant=minbase` of [`PACKAGES`], cached until
//!   the package list changes (its .debs also stay in
//!   ~/.cache/rxsentry/debootstrap, so a rebuild downloads nothing);
//! - `disk.ext4`: a copy of the base with `target/debian/*.deb` installed by
//!   `dpkg -i` in a chroot (the maintainer scripts run there: `systemctl
//!   enable` works without a running systemd), the files of
//!   vm-images/systemd-kiosk/rootfs and the kiosk apps of vm-images/kiosk,
//!   packed by `mkfs.ext4 -d` (no mount, no loop device);
//! - `initramfs.cpio`: busybox, the kernel's virtio/ext4/overlay modules and
//!   vm-images/systemd-kiosk/initramfs/init, which mounts the disk (or an
//!   overlay over it) and switches to systemd;
//! - `vmlinuz` of the same kernel package.
//!
//! The disk and initramfs are rebuilt only when an input changed: the base,
//! the .deb files, the image's files, the kernel package (`image.key`).

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result};
use sha2::{Digest as _, Sha256};

use super::{
    KERNELS, Kernel,
    image::{
        copy_file, copy_tree, extract_vmlinuz, fetch_deb, install_busybox, lock_image_dir,
        pack_cpio, untar_from_deb,
    },
};
use crate::cmd::{run_cmd, target_dir, workspace_root};

/// The image's folder name under target/vm-images.
pub const NAME: &str = "systemd-kiosk";
/// Debian release and mirror of the userland (the kiosks' distribution).
pub const SUITE: &str = "bookworm";
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// Packages on top of `minbase`: systemd as init, udev (device units, the
/// serial console), kmod (modprobe for the isolation's qdisc modules),
/// iproute2 (the isolation test's veth peer).
pub const PACKAGES: &[&str] = &["systemd", "systemd-sysv", "udev", "kmod", "iproute2"];
/// Bump when the build steps change in a way the inputs do not show.
const RECIPE: &str = "systemd-kiosk 1";
/// The disk's size (sparse: only what is written takes space).
const DISK_SIZE: &str = "1G";
/// This repository's files of the image.
const IMAGE_FILES: &str = "vm-images/systemd-kiosk";
/// Module folders and files extracted from the kernel package into the
/// root's /lib/modules/<release>/ (depmod then runs in the chroot): the
/// root disk's and the overlay's drivers for the initramfs, and what
/// isolation (clsact qdisc, BPF classifier) and its test (veth) load.
const MODULES: &[&str] = &[
    "kernel/drivers/virtio",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/lib/crc16.ko",
    "kernel/crypto/crc32c_generic.ko",
    "kernel/fs/mbcache.ko",
    "kernel/fs/jbd2",
    "kernel/fs/ext4",
    "kernel/fs/overlayfs",
    "kernel/drivers/net/veth.ko",
    "kernel/net/sched/sch_ingress.ko",
    "kernel/net/sched/cls_bpf.ko",
    "modules.builtin",
    "modules.order",
];
/// What the initramfs loads, with their dependencies first (from the
/// guest's modules.dep). ext4 needs crc32c for its checksums but does not
/// depend on the module, hence listed.
const INITRAMFS_MODULES: &[&str] = &[
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/crypto/crc32c_generic.ko",
    "kernel/fs/ext4/ext4.ko",
    "kernel/fs/overlayfs/overlay.ko",
];
/// Units of the image enabled in the chroot (the packages enable theirs).
const UNITS: &[&str] = &[
    "pos.service",
    "dispense.service",
    "rxsentry-vmtest-early.service",
    "rxsentry-vmtest.service",
];
/// The packages installed, from `cargo xtask deb` (target/debian).
const DEBS: &[&str] = &["rxsentry-sensor", "rxsentry-soc"];
/// Our test binary the isolation test talks to its veth peer with.
const NETPROBE: &str = "netprobe";

/// A built image.
pub struct SystemdImage {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    pub disk: PathBuf,
}

pub fn image_dir() -> PathBuf {
    target_dir().join("vm-images").join(NAME)
}

/// The kernel the image boots: the first of `KERNELS`.
pub fn kernel() -> &'static Kernel {
    &KERNELS[0]
}

/// Builds what changed. The .debs must already be in target/debian.
pub fn build() -> Result<SystemdImage> {
    let kernel = kernel();
    println!(
        "== vm-image {NAME} (Debian {SUITE} + systemd, {})",
        kernel.package
    );
    let dir = image_dir();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    lock_image_dir(&dir)?;
    let base_key = base_rootfs(&dir)?;
    let kernel_deb = fetch_deb(kernel)?;
    let debs = package_files()?;
    let image = SystemdImage {
        vmlinuz: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio"),
        disk: dir.join("disk.ext4"),
        dir: dir.clone(),
    };
    extract_vmlinuz(kernel, &kernel_deb, &image.vmlinuz)?;

    let mut inputs = Sha256::new();
    inputs.update(format!("{RECIPE}\n{base_key}\n{}\n", kernel_deb.display()));
    for deb in &debs {
        hash_file(&mut inputs, deb)?;
    }
    let root = workspace_root();
    for tree in [
        IMAGE_FILES,
        "vm-images/kiosk/opt",
        "vm-images/kiosk/var",
        "vm-images/kiosk/usr/lib/rxsentry",
    ] {
        hash_tree(&mut inputs, &root.join(tree))?;
    }
    hash_file(&mut inputs, &target_dir().join("release").join(NETPROBE))?;
    let key = hex(&inputs.finalize());
    let key_file = dir.join("image.key");
    if image.disk.is_file()
        && image.initramfs.is_file()
        && fs::read_to_string(&key_file).is_ok_and(|k| k == key)
    {
        println!("ok: disk and initramfs up to date ({})", dir.display());
        return Ok(image);
    }
    let _ = fs::remove_file(&key_file);
    let start = Instant::now();
    let rootfs = dir.join("root");
    fill_root(&dir.join("base"), &rootfs, kernel, &kernel_deb, &debs)?;
    make_disk(&rootfs, &image.disk)?;
    build_initramfs(&rootfs, &dir.join("initramfs"), kernel, &image.initramfs)?;
    // The trees are in the disk and the cpio now: 300 MB less on disk.
    for tree in [rootfs, dir.join("initramfs")] {
        fs::remove_dir_all(&tree).with_context(|| format!("cannot remove {}", tree.display()))?;
    }
    fs::write(&key_file, &key).with_context(|| format!("cannot write {}", key_file.display()))?;
    println!(
        "{NAME}: disk and initramfs built in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(image)
}

/// The debootstrapped userland in `dir/base`, made when absent or when the
/// package list changed; its key.
fn base_rootfs(dir: &Path) -> Result<String> {
    let key = hex(&Sha256::digest(format!(
        "{SUITE} {MIRROR} minbase {}",
        PACKAGES.join(",")
    )));
    let base = dir.join("base");
    let key_file = dir.join("base.key");
    if base.is_dir() && fs::read_to_string(&key_file).is_ok_and(|k| k == key) {
        println!("ok: debootstrap of {SUITE} cached in {}", base.display());
        return Ok(key);
    }
    which::which("debootstrap")
        .context("debootstrap not found: run `cargo xtask setup` (apt package debootstrap)")?;
    let _ = fs::remove_file(&key_file);
    let partial = dir.join("base.partial");
    for old in [&partial, &base] {
        if old.exists() {
            fs::remove_dir_all(old).with_context(|| format!("cannot remove {}", old.display()))?;
        }
    }
    let cache = super::deb_cache_dir()
        .parent()
        .map_or_else(|| dir.join("debootstrap-cache"), |p| p.join("debootstrap"));
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let start = Instant::now();
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(format!("--cache-dir={}", cache.display()))
        .arg(SUITE)
        .arg(&partial)
        .arg(MIRROR);
    run_cmd(&mut cmd).context("debootstrap failed: is the Debian mirror reachable?")?;
    run_cmd(
        Command::new("chroot")
            .arg(&partial)
            .args(["apt-get", "clean"]),
    )?;
    fs::rename(&partial, &base).with_context(|| format!("cannot rename to {}", base.display()))?;
    fs::write(&key_file, &key)?;
    println!(
        "debootstrap of {SUITE}: {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(key)
}

/// target/debian/<package>_<version>_<arch>.deb of each of [`DEBS`].
fn package_files() -> Result<Vec<PathBuf>> {
    let out = target_dir().join("debian");
    let names: Vec<String> = fs::read_dir(&out)
        .with_context(|| format!("cannot list {}: run `cargo xtask deb`", out.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    DEBS.iter()
        .map(|package| {
            super::image::pick_deb(&names, package)
                .map(|name| out.join(name))
                .with_context(|| {
                    format!(
                        "no {package}_*.deb in {}: run `cargo xtask deb`",
                        out.display()
                    )
                })
        })
        .collect()
}

/// `root`: a copy of `base`, our packages installed, the image's files,
/// the kernel modules, the units enabled.
fn fill_root(
    base: &Path,
    root: &Path,
    kernel: &Kernel,
    kernel_deb: &Path,
    debs: &[PathBuf],
) -> Result<()> {
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("cannot empty {}", root.display()))?;
    }
    run_cmd(
        Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(base)
            .arg(root),
    )?;
    let chroot = |args: &[&str]| {
        let mut cmd = Command::new("chroot");
        cmd.arg(root).args(args);
        run_cmd(&mut cmd)
    };
    // Installed as pharmacy IT would: dpkg -i, maintainer scripts included.
    let staging = root.join("tmp/rxsentry-debs");
    fs::create_dir_all(&staging)?;
    let mut args = vec!["dpkg".to_owned(), "-i".to_owned()];
    for deb in debs {
        let name = deb
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        copy_file(deb, &staging.join(&name))?;
        args.push(format!("/tmp/rxsentry-debs/{name}"));
    }
    chroot(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    fs::remove_dir_all(&staging)?;
    let upgrade_dir = root.join("var/cache/rxsentry-vmtest");
    fs::create_dir_all(&upgrade_dir)?;
    bumped_package(&debs[0], &upgrade_dir)?;

    let repo = workspace_root();
    copy_tree(&repo.join("vm-images/kiosk/opt"), &root.join("opt"))?;
    copy_tree(&repo.join("vm-images/kiosk/var"), &root.join("var"))?;
    copy_tree(&repo.join(IMAGE_FILES).join("rootfs"), root)?;
    // The initramfs image's test helpers, which lib.sh sources.
    let kiosk_lib = repo.join("vm-images/kiosk/usr/lib/rxsentry");
    copy_file(
        &kiosk_lib.join("kiosk-services.sh"),
        &root.join("usr/lib/rxsentry/kiosk-services.sh"),
    )?;
    copy_file(
        &kiosk_lib.join("vm-tests/lib.sh"),
        &root.join("usr/lib/rxsentry/vm-tests/kiosk-lib.sh"),
    )?;
    copy_file(
        &target_dir().join("release").join(NETPROBE),
        &root.join("usr/local/bin").join(NETPROBE),
    )?;

    let mut tar = Command::new("tar");
    tar.args(["-x", "-f", "-", "-C"]).arg(root).args(
        MODULES
            .iter()
            .map(|m| format!("./lib/modules/{}/{m}", kernel.release())),
    );
    untar_from_deb(kernel_deb, tar)?;
    chroot(&["depmod", kernel.release()])?;
    let mut enable = vec!["systemctl", "enable"];
    enable.extend(UNITS);
    chroot(&enable)?;
    // Root logs in on the console without a password (a test image).
    chroot(&["passwd", "-d", "root"])?;
    // Each boot makes its own (first boot semantics, also read-only).
    fs::write(root.join("etc/machine-id"), "")?;
    Ok(())
}

/// A copy of the sensor package with its version bumped (`+vmupgrade1`),
/// for the in-guest upgrade test, into `dir`.
fn bumped_package(deb: &Path, dir: &Path) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let tree = tmp.path().join("tree");
    run_cmd(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree))?;
    let control_path = tree.join("DEBIAN/control");
    let control = fs::read_to_string(&control_path)?;
    let control = bump_version(&control).context("no Version in the sensor's control file")?;
    fs::write(&control_path, control)?;
    let name = deb.file_name().unwrap_or_default().to_string_lossy();
    run_cmd(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&tree)
            .arg(dir.join(name.replacen('_', "_upgrade-", 1))),
    )
}

/// The control file with `+vmupgrade1` appended to its version.
fn bump_version(control: &str) -> Option<String> {
    let mut found = false;
    let lines: Vec<String> = control
        .lines()
        .map(|l| match l.strip_prefix("Version: ") {
            Some(v) => {
                found = true;
                format!("Version: {v}+vmupgrade1")
            }
            None => l.to_owned(),
        })
        .collect();
    found.then(|| lines.join("\n") + "\n")
}

/// `mkfs.ext4 -d`: the tree into a new file system image, as root owns it.
fn make_disk(root: &Path, disk: &Path) -> Result<()> {
    let partial = disk.with_extension("partial");
    let _ = fs::remove_file(&partial);
    run_cmd(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "rxsentry-root", "-d"])
            .arg(root)
            .arg(&partial)
            .arg(DISK_SIZE),
    )?;
    fs::rename(&partial, disk).with_context(|| format!("cannot write {}", disk.display()))
}

/// The initramfs: busybox, [`INITRAMFS_MODULES`] (from the root, where
/// depmod checked them) listed in /modules in load order, and the init.
fn build_initramfs(root: &Path, tree: &Path, kernel: &Kernel, out: &Path) -> Result<()> {
    if tree.exists() {
        fs::remove_dir_all(tree).with_context(|| format!("cannot empty {}", tree.display()))?;
    }
    for d in ["bin", "proc", "sys", "dev", "newroot"] {
        fs::create_dir_all(tree.join(d))?;
    }
    install_busybox(tree)?;
    copy_file(
        &workspace_root().join(IMAGE_FILES).join("initramfs/init"),
        &tree.join("init"),
    )?;
    let modules_dir = root.join("lib/modules").join(kernel.release());
    let dep_path = modules_dir.join("modules.dep");
    let deps = fs::read_to_string(&dep_path)
        .with_context(|| format!("cannot read {}", dep_path.display()))?;
    let order = load_order(&deps, INITRAMFS_MODULES)?;
    let mut list = String::new();
    for module in &order {
        let rel = format!("lib/modules/{}/{module}", kernel.release());
        copy_file(&root.join(&rel), &tree.join(&rel))?;
        list.push_str(&rel);
        list.push('\n');
    }
    fs::write(tree.join("modules"), list)?;
    pack_cpio(tree, out)
}

/// The modules to insmod for `wanted`, each after its dependencies (a
/// modules.dep line lists them so that the last loads first), once.
fn load_order(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let mut order: Vec<String> = Vec::new();
    for module in wanted {
        let deps = modules_dep
            .lines()
            .find_map(|l| l.strip_prefix(module)?.strip_prefix(':'))
            .with_context(|| format!("{module} is not in modules.dep"))?;
        for m in deps
            .split_whitespace()
            .rev()
            .chain(std::iter::once(*module))
        {
            if !order.iter().any(|o| o == m) {
                order.push(m.to_owned());
            }
        }
    }
    Ok(order)
}

fn hash_file(hasher: &mut Sha256, path: &Path) -> Result<()> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    hasher.update(path.as_os_str().as_encoded_bytes());
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// Every file's path, mode and content below `dir`, in a stable order.
fn hash_tree(hasher: &mut Sha256, dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)?;
        hasher.update(meta.permissions().mode().to_le_bytes());
        if meta.is_dir() {
            hasher.update(path.as_os_str().as_encoded_bytes());
            hash_tree(hasher, &path)?;
        } else if meta.is_symlink() {
            hasher.update(fs::read_link(&path)?.as_os_str().as_encoded_bytes());
        } else {
            hash_file(hasher, &path)?;
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies_once() {
        let dep = "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n\
                   kernel/fs/overlayfs/overlay.ko:\n\
                   kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n";
        let order = load_order(
            dep,
            &[
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/fs/ext4/ext4.ko",
                "kernel/fs/overlayfs/overlay.ko",
            ],
        )
        .unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko",
                "kernel/fs/ext4/ext4.ko",
                "kernel/fs/overlayfs/overlay.ko",
            ]
        );
        let err = load_order(dep, &["kernel/fs/xfs/xfs.ko"]).unwrap_err();
        assert!(err.to_string().contains("not in modules.dep"), "{err}");
        // A module whose name is a prefix of another's is not confused with it.
        assert!(load_order(dep, &["kernel/fs/ext4/ext4"]).is_err());
    }

    #[test]
    fn upgrade_package_bumps_only_the_version() {
        let control = "Package: rxsentry-sensor\nVersion: 0.1.0\nArchitecture: amd64\n";
        assert_eq!(
            bump_version(control).unwrap(),
            "Package: rxsentry-sensor\nVersion: 0.1.0+vmupgrade1\nArchitecture: amd64\n"
        );
        assert_eq!(bump_version("Package: x\n"), None);
    }
}
