//! `cargo xtask vm-image` and `cargo xtask vm-test`: kiosk images built from
//! pinned Debian kernel packages plus our own initramfs, booted in QEMU to
//! test what the host kernel cannot (BPF-LSM) and to prove the sensor works
//! on the kiosks' kernels, not only the host's.
//!
//! The shape follows aya's xtask/src/run.rs: kernels from Debian .debs, an
//! initramfs with our own init and the test binaries, the serial console read
//! to tell pass from fail. Every input comes from Debian's packages or this
//! workspace.

pub mod console;
pub mod image;
pub mod matrix;
pub mod suite;
pub mod systemd_image;
pub mod systemd_test;
pub mod test;

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

use crate::cmd::target_dir;

/// One guest kernel, pinned by its exact Debian package name.
#[derive(Debug, PartialEq, Eq)]
pub struct Kernel {
    /// Short name for `--kernel` and for directories.
    pub name: &'static str,
    /// The exact binary package (`apt-get download <package>`): never a
    /// glob, which would download dozens of kernels.
    pub package: &'static str,
    /// Where it comes from, for people.
    pub origin: &'static str,
}

/// The guest kernels, in test order. To add one, add an entry whose package
/// `apt-get download` can find with this machine's apt sources.
pub const KERNELS: &[Kernel] = &[Kernel {
    name: "debian12-6.1",
    package: "linux-image-6.1.0-56-amd64",
    origin: "Debian 12 bookworm (bookworm-security), the kiosks' distribution",
}];

impl Kernel {
    /// `uname -r` of the kernel: the package is `linux-image-<release>`.
    pub fn release(&self) -> &'static str {
        self.package
            .strip_prefix("linux-image-")
            .unwrap_or(self.package)
    }

    /// The kernel image inside the package's data archive.
    pub fn vmlinuz_member(&self) -> String {
        format!("./boot/vmlinuz-{}", self.release())
    }
}

/// The kernels named by `--kernel` (all when none is named), in list order.
pub fn select_kernels(names: &[String]) -> Result<Vec<&'static Kernel>> {
    if let Some(unknown) = names
        .iter()
        .find(|n| !KERNELS.iter().any(|k| k.name == n.as_str()))
    {
        let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        bail!("unknown kernel {unknown:?}; known: {}", known.join(", "));
    }
    Ok(KERNELS
        .iter()
        .filter(|k| names.is_empty() || names.iter().any(|n| n == k.name))
        .collect())
}

/// The kernel command line: serial console, reboot (so QEMU exits, with
/// `-no-reboot`) at once on a panic, and BPF-LSM explicitly in the LSM list.
pub const KERNEL_CMDLINE: &str =
    "console=ttyS0 panic=-1 lsm=lockdown,capability,landlock,yama,apparmor,bpf";

/// The guest machine of every image: TCG, 1 GiB, 2 CPUs, serial console,
/// QEMU exits when the guest reboots (or panics, with `panic=-1`).
pub fn qemu_machine_args() -> Vec<OsString> {
    [
        // KVM hangs with QEMU 7.2 on our machines (shared/PLATFORM.md).
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
    ]
    .map(OsString::from)
    .to_vec()
}

/// `qemu-system-x86_64` arguments that boot `vmlinuz` + `initramfs` on the
/// serial console; `extra` is appended to the kernel command line.
pub fn qemu_args(vmlinuz: &Path, initramfs: &Path, extra: &str) -> Vec<OsString> {
    let append = if extra.is_empty() {
        KERNEL_CMDLINE.to_owned()
    } else {
        format!("{KERNEL_CMDLINE} {extra}")
    };
    let mut args = qemu_machine_args();
    args.push("-kernel".into());
    args.push(vmlinuz.into());
    args.push("-initrd".into());
    args.push(initramfs.into());
    args.push("-append".into());
    args.push(append.into());
    args
}

/// `uname -r` of this machine, for the matrix.
pub fn host_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Where images are built: target/vm-images/<kernel>/.
pub fn image_dir(kernel: &Kernel) -> PathBuf {
    target_dir().join("vm-images").join(kernel.name)
}

/// Where downloaded .debs are kept across clones: ~/.cache/rxsentry/debs
/// (target/vm-images/debs without a HOME).
pub fn deb_cache_dir() -> PathBuf {
    match env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache/rxsentry/debs"),
        None => target_dir().join("vm-images/debs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_are_pinned_exactly() {
        assert!(!KERNELS.is_empty());
        for k in KERNELS {
            assert!(
                !k.package.contains(['*', '?', '[', ']', ' ']),
                "{}: a package name, never a pattern",
                k.package
            );
            assert!(k.package.starts_with("linux-image-"), "{}", k.package);
            assert!(
                k.release()
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit())
            );
            assert!(
                !k.name.is_empty() && !k.name.contains('/'),
                "{} must be usable as a directory name",
                k.name
            );
        }
        let mut names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KERNELS.len(), "kernel names must be unique");
    }

    #[test]
    fn bookworm_kernel_is_listed() {
        let k = KERNELS
            .iter()
            .find(|k| k.package == "linux-image-6.1.0-56-amd64")
            .expect("the bookworm kernel");
        assert_eq!(k.release(), "6.1.0-56-amd64");
        assert_eq!(k.vmlinuz_member(), "./boot/vmlinuz-6.1.0-56-amd64");
    }

    #[test]
    fn kernel_selection() {
        assert_eq!(select_kernels(&[]).unwrap().len(), KERNELS.len());
        let first = KERNELS[0].name.to_owned();
        assert_eq!(select_kernels(&[first]).unwrap(), [&KERNELS[0]]);
        let err = select_kernels(&["nope".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("unknown kernel \"nope\""), "{err}");
    }

    #[test]
    fn qemu_command_line() {
        let args = qemu_args(Path::new("/k"), Path::new("/i"), "rxsentry.mode=shell");
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        let joined = args.join(" ");
        assert!(joined.starts_with("-accel tcg -m 1024 -smp 2 -nographic -no-reboot"));
        assert!(joined.contains("-kernel /k -initrd /i -append"));
        let append = args.last().unwrap();
        assert!(append.contains("console=ttyS0") && append.contains("panic=-1"));
        assert!(append.contains(",bpf") && append.ends_with(" rxsentry.mode=shell"));
        let plain = qemu_args(Path::new("/k"), Path::new("/i"), "");
        assert_eq!(plain.last().unwrap(), KERNEL_CMDLINE);
    }
}
