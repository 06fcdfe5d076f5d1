//! The systemd kiosk image in `cargo xtask vm-test`: a fresh copy of the
//! cached disk is booted twice, as a kiosk is rebooted. The first boot (the
//! disk read-write) checks the sensor at boot, the allowlist scoped to
//! kiosk.slice and a package upgrade, then isolates; the second boot (the
//! disk read-only under a tmpfs overlay) checks that isolation was back
//! before the network and the allowlist on the overlay root. The guest's
//! tests (vm-images/systemd-kiosk/rootfs/usr/lib/rxsentry/vm-tests/) print
//! the same marker lines as the initramfs image's.

use std::{ffi::OsString, fs, path::Path, process::Command, time::Duration, time::Instant};

use anyhow::{Context as _, Result};

use super::{
    KERNEL_CMDLINE,
    image::shell_quote,
    qemu_machine_args,
    systemd_image::{self, NAME, SystemdImage},
    test::{Summary, boot_qemu, print_tail},
};
use crate::{cmd::run_cmd, deb};

/// One boot of the disk: its name (the tests' folder), what it adds to the
/// kernel command line, and the tests it must report as passed.
pub struct Boot {
    pub name: &'static str,
    pub append: &'static str,
    pub tests: &'static [&'static str],
}

/// The boots, in order, of the same disk.
pub const BOOTS: &[Boot] = &[
    Boot {
        name: "first-boot",
        append: "rxsentry.tests=first-boot",
        tests: &[
            "sensor-at-boot",
            "write-guard",
            "kiosk-slice-allowlist",
            "package-upgrade",
            "isolate-before-reboot",
        ],
    },
    Boot {
        name: "second-boot",
        append: "rxsentry.root=overlay rxsentry.tests=second-boot",
        tests: &[
            "overlay-root",
            "isolation-at-boot",
            "overlay-trusted-replaced",
            "package-remove-purge",
        ],
    },
];

/// QEMU's arguments for the image with `disk` as virtio-blk /dev/vda, no
/// network device (the guest's network is its loopback and what the tests
/// make), `extra` appended to the kernel command line.
pub fn qemu_args(image: &SystemdImage, disk: &Path, extra: &str) -> Vec<OsString> {
    let mut args = qemu_machine_args();
    args.extend(["-nic", "none", "-kernel"].map(OsString::from));
    args.push(image.vmlinuz.clone().into());
    args.push("-initrd".into());
    args.push(image.initramfs.clone().into());
    args.push("-drive".into());
    let mut drive = OsString::from("file=");
    drive.push(disk);
    drive.push(",format=raw,if=virtio");
    args.push(drive);
    args.push("-append".into());
    args.push(format!("{KERNEL_CMDLINE} {extra}").into());
    args
}

/// `cargo xtask vm-image --systemd`: packages target/release, then builds
/// what changed of the image.
pub fn build_image() -> Result<()> {
    deb::deb(&deb::Options {
        no_build: true,
        out: None,
    })?;
    let image = systemd_image::build()?;
    let disk = image.dir.join("run.ext4");
    println!(
        "image {NAME}: boot a copy of its disk (cp --sparse=always {} {}):\n  qemu-system-x86_64 {}",
        image.disk.display(),
        disk.display(),
        qemu_args(&image, &disk, "")
            .iter()
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

/// Builds (or reuses) the image, boots a copy of its disk once per entry of
/// [`BOOTS`] and adds what it saw to `summary`.
pub fn run(timeout: Duration, verbose: bool, summary: &mut Summary) -> Result<()> {
    let start = Instant::now();
    deb::deb(&deb::Options {
        no_build: true,
        out: None,
    })?;
    let image = systemd_image::build()?;
    println!(
        "{NAME}: image ready after {:.1}s",
        start.elapsed().as_secs_f64()
    );
    // The boots change the disk (upgrade, isolation state): never the cached one.
    let disk = image.dir.join("run.ext4");
    run_cmd(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&image.disk)
            .arg(&disk),
    )?;
    for boot in BOOTS {
        let dir = image.dir.join(boot.name);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let args = qemu_args(&image, &disk, boot.append);
        println!("== vm-test {NAME} {}: booting", boot.name);
        let label = format!("{NAME} {}", boot.name);
        let (run, ending, secs) = boot_qemu(args, &dir, &label, timeout, verbose)?;
        let problems = run.problems(ending, boot.tests);
        let at = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}s"));
        println!(
            "{label}: initramfs after {}, tests done after {}, QEMU gone after {secs:.1}s: {}",
            at(run.init_after),
            at(run.done_after),
            if problems.is_empty() { "PASS" } else { "FAIL" },
        );
        if !problems.is_empty() {
            print_tail(&dir.join("console.log"), &run);
        }
        summary.add(&label, &run, &problems);
    }
    let _ = fs::remove_file(&disk);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::workspace_root;

    /// Each boot's tests and the scripts in its folder name the same tests.
    #[test]
    fn boot_tests_match_the_scripts() {
        let root =
            workspace_root().join("vm-images/systemd-kiosk/rootfs/usr/lib/rxsentry/vm-tests");
        for boot in BOOTS {
            let scripts = crate::vm::test::script_tests(&root.join(boot.name));
            let mut expected: Vec<String> = boot.tests.iter().map(|s| s.to_string()).collect();
            expected.sort();
            assert_eq!(scripts, expected, "{}", boot.name);
            assert!(
                boot.append
                    .contains(&format!("rxsentry.tests={}", boot.name))
            );
        }
    }

    #[test]
    fn disk_is_virtio_and_no_network_device() {
        let image = SystemdImage {
            dir: "/d".into(),
            vmlinuz: "/d/vmlinuz".into(),
            initramfs: "/d/initramfs.cpio".into(),
            disk: "/d/disk.ext4".into(),
        };
        let args = qemu_args(&image, Path::new("/d/run.ext4"), "rxsentry.root=overlay");
        let joined = args
            .iter()
            .map(|a| a.to_str().unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(joined.starts_with("-accel tcg "), "{joined}");
        assert!(joined.contains(" -nic none "), "{joined}");
        assert!(
            joined.contains(" -drive file=/d/run.ext4,format=raw,if=virtio "),
            "{joined}"
        );
        assert!(joined.ends_with(",bpf rxsentry.root=overlay"), "{joined}");
    }
}
