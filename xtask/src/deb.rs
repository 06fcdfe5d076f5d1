//! `cargo xtask deb`: the Debian packages `rxsentry-sensor` (sensor, probe,
//! units, example config, /var/lib/rxsentry) and `rxsentry-soc` (collector
//! and CLI, its unit) from the release binaries (packaging/README.md).
//!
//! Staged by hand and packed with `dpkg-deb`, which every Debian machine
//! has: no packaging tool to install (cargo-deb would be one more build in
//! `cargo xtask setup`), and the package's whole contents are in this file.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{
    build,
    cmd::{output_of, run_cmd, target_dir, workspace_root},
};

#[derive(Args, Default)]
pub struct Options {
    /// Package what is in target/release without building it first.
    #[arg(long)]
    pub no_build: bool,
    /// Where the .deb files go (default target/debian).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Where a packaged file comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// A release binary.
    Bin(&'static str),
    /// A file of the repository.
    Repo(&'static str),
}

/// One packaged file: source, absolute destination, mode.
type Entry = (Source, &'static str, u32);

struct Package {
    name: &'static str,
    description: &'static str,
    depends: &'static str,
    files: &'static [Entry],
    /// Empty directories the package owns (path, mode).
    dirs: &'static [(&'static str, u32)],
    /// Maintainer scripts: packaging/debian/NAME.{postinst,prerm,postrm}.
    scripts: &'static [&'static str],
}

const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// The packages' file times (2026-01-01 UTC): dpkg-deb clamps to it.
const SOURCE_DATE_EPOCH: &str = "1767225600";

const SENSOR: Package = Package {
    name: "rxsentry-sensor",
    description: "rxsentry eBPF EDR sensor for kiosks\n \
        Kernel telemetry (processes, watched files, network), application\n \
        allowlisting and network isolation, streamed to an rxsentry collector.",
    depends: "libc6",
    files: &[
        (
            Source::Bin("rxsentry-sensor"),
            "/usr/sbin/rxsentry-sensor",
            0o755,
        ),
        (
            Source::Bin("rxsentry-probe"),
            "/usr/sbin/rxsentry-probe",
            0o755,
        ),
        (
            Source::Repo("packaging/systemd/rxsentry-sensor.service"),
            "/lib/systemd/system/rxsentry-sensor.service",
            0o644,
        ),
        (
            Source::Repo("packaging/systemd/rxsentry-isolation.service"),
            "/lib/systemd/system/rxsentry-isolation.service",
            0o644,
        ),
        (
            Source::Repo("packaging/systemd/rxsentry-allowlist.service"),
            "/lib/systemd/system/rxsentry-allowlist.service",
            0o644,
        ),
        (
            Source::Repo("sensor-user/config/rxsentry-sensor.example.toml"),
            "/etc/rxsentry/sensor.toml",
            0o600,
        ),
        (
            Source::Repo("sensor-user/config/rxsentry-sensor.example.toml"),
            "/usr/share/doc/rxsentry-sensor/examples/sensor.toml",
            0o644,
        ),
        (
            Source::Repo("README.md"),
            "/usr/share/doc/rxsentry-sensor/README.md",
            0o644,
        ),
        (
            Source::Repo("docs/isolation.md"),
            "/usr/share/doc/rxsentry-sensor/isolation.md",
            0o644,
        ),
        (
            Source::Repo("docs/allowlisting.md"),
            "/usr/share/doc/rxsentry-sensor/allowlisting.md",
            0o644,
        ),
        (
            Source::Repo("docs/metrics.md"),
            "/usr/share/doc/rxsentry-sensor/metrics.md",
            0o644,
        ),
        (
            Source::Repo("packaging/README.md"),
            "/usr/share/doc/rxsentry-sensor/packaging.md",
            0o644,
        ),
    ],
    dirs: &[("/var/lib/rxsentry", 0o700)],
    scripts: SCRIPTS,
};

const SOC: Package = Package {
    name: "rxsentry-soc",
    description: "rxsentry collector and analyst CLI\n \
        Receives rxsentry sensors' telemetry over mutual TLS, stores it,\n \
        fans it out, and relays analysts' response commands.",
    depends: "libc6",
    files: &[
        (
            Source::Bin("rxsentry-collector"),
            "/usr/sbin/rxsentry-collector",
            0o755,
        ),
        (Source::Bin("rxsentry"), "/usr/bin/rxsentry", 0o755),
        (
            Source::Repo("packaging/systemd/rxsentry-collector.service"),
            "/lib/systemd/system/rxsentry-collector.service",
            0o644,
        ),
        (
            Source::Repo("packaging/debian/rxsentry-collector.default"),
            "/etc/default/rxsentry-collector",
            0o644,
        ),
        (
            Source::Repo("README.md"),
            "/usr/share/doc/rxsentry-soc/README.md",
            0o644,
        ),
        (
            Source::Repo("docs/security.md"),
            "/usr/share/doc/rxsentry-soc/security.md",
            0o644,
        ),
        (
            Source::Repo("docs/store.md"),
            "/usr/share/doc/rxsentry-soc/store.md",
            0o644,
        ),
        (
            Source::Repo("docs/metrics.md"),
            "/usr/share/doc/rxsentry-soc/metrics.md",
            0o644,
        ),
        (
            Source::Repo("packaging/README.md"),
            "/usr/share/doc/rxsentry-soc/packaging.md",
            0o644,
        ),
    ],
    dirs: &[],
    scripts: SCRIPTS,
};

pub fn deb(opts: &Options) -> Result<()> {
    if !opts.no_build {
        build::build(&build::Options { release: true })?;
    }
    println!("== deb");
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("debian"));
    let arch = output_of("dpkg", &["--print-architecture"])?;
    let bins = target_dir().join("release");
    for package in [&SENSOR, &SOC] {
        let deb = build_package(package, &bins, &out, arch.trim())?;
        println!("ok: {}", deb.display());
    }
    Ok(())
}

/// Stages `package` under `out` and packs it; the .deb's path.
fn build_package(package: &Package, bins: &Path, out: &Path, arch: &str) -> Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let stage = out.join(format!("stage-{}", package.name));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("rm -r {}", stage.display()))?;
    }
    let root = workspace_root();
    let mut conffiles = String::new();
    let mut installed_bytes = 0u64;
    for &(source, dest, mode) in package.files {
        let from = match source {
            Source::Bin(name) => bins.join(name),
            Source::Repo(path) => root.join(path),
        };
        let to = stage.join(dest.trim_start_matches('/'));
        copy_with_mode(&from, &to, mode)?;
        installed_bytes += fs::metadata(&to)?.len();
        if dest.starts_with("/etc/") {
            conffiles.push_str(dest);
            conffiles.push('\n');
        }
    }
    for &(dir, mode) in package.dirs {
        let path = stage.join(dir.trim_start_matches('/'));
        fs::create_dir_all(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let control = format!(
        "Package: {}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: rxsentry <rxsentry@localhost>\n\
         Section: admin\nPriority: optional\nDepends: {}\nInstalled-Size: {}\nDescription: {}\n",
        package.name,
        package.depends,
        installed_bytes.div_ceil(1024),
        package.description
    );
    write_with_mode(&debian.join("control"), &control, 0o644)?;
    if !conffiles.is_empty() {
        write_with_mode(&debian.join("conffiles"), &conffiles, 0o644)?;
    }
    for script in package.scripts {
        let from = root.join(format!("packaging/debian/{}.{script}", package.name));
        copy_with_mode(&from, &debian.join(script), 0o755)?;
    }
    fs::create_dir_all(out)?;
    let deb = out.join(format!("{}_{version}_{arch}.deb", package.name));
    let mut cmd = Command::new("dpkg-deb");
    cmd.args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb)
        // Reproducible: the same files make the same .deb (mtimes clamped),
        // so the systemd VM image, keyed on the .deb's hash, stays cached.
        .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH);
    run_cmd(&mut cmd)?;
    fs::remove_dir_all(&stage)?;
    Ok(deb)
}

fn copy_with_mode(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, to).with_context(|| format!("cp {} {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write_with_mode(path: &Path, text: &str, mode: u32) -> Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dpkg_deb(args: &[&str], deb: &Path) -> String {
        let out = Command::new("dpkg-deb")
            .args(args)
            .arg(deb)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Fake binaries stand in for the release build: the layout, modes,
    /// control data, conffiles and scripts are what is checked.
    #[test]
    fn both_packages_hold_their_files_units_conffiles_and_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let bins = dir.path().join("bins");
        fs::create_dir_all(&bins).unwrap();
        for name in [
            "rxsentry-sensor",
            "rxsentry-probe",
            "rxsentry-collector",
            "rxsentry",
        ] {
            fs::write(bins.join(name), format!("#!/bin/sh\necho {name}\n")).unwrap();
        }
        let out = dir.path().join("out");

        let sensor = build_package(&SENSOR, &bins, &out, "amd64").unwrap();
        assert!(sensor.ends_with(format!(
            "rxsentry-sensor_{}_amd64.deb",
            env!("CARGO_PKG_VERSION")
        )));
        let list = dpkg_deb(&["-c"], &sensor);
        for want in [
            "-rwxr-xr-x root/root",
            "./usr/sbin/rxsentry-sensor",
            "./usr/sbin/rxsentry-probe",
            "./lib/systemd/system/rxsentry-sensor.service",
            "./lib/systemd/system/rxsentry-isolation.service",
            "./lib/systemd/system/rxsentry-allowlist.service",
            "./usr/share/doc/rxsentry-sensor/metrics.md",
        ] {
            assert!(list.contains(want), "{want} not in\n{list}");
        }
        let line = |path: &str| {
            list.lines()
                .find(|l| l.ends_with(path))
                .unwrap_or_else(|| panic!("{path} not in\n{list}"))
                .to_owned()
        };
        assert!(line("./etc/rxsentry/sensor.toml").starts_with("-rw------- root/root"));
        assert!(line("./var/lib/rxsentry/").starts_with("drwx------ root/root"));
        assert!(line("./usr/sbin/rxsentry-sensor").starts_with("-rwxr-xr-x root/root"));
        let info = dpkg_deb(&["-I"], &sensor);
        for want in [
            "Package: rxsentry-sensor",
            "Architecture: amd64",
            "Depends: libc6",
            " postinst",
            " prerm",
            " postrm",
            " conffiles",
        ] {
            assert!(info.contains(want), "{want} not in\n{info}");
        }
        let conffiles = dpkg_deb(&["-I"], &sensor).contains("conffiles");
        assert!(conffiles);
        let extract = dir.path().join("control");
        let status = Command::new("dpkg-deb")
            .arg("-e")
            .arg(&sensor)
            .arg(&extract)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            fs::read_to_string(extract.join("conffiles")).unwrap(),
            "/etc/rxsentry/sensor.toml\n"
        );
        for script in SCRIPTS {
            let path = extract.join(script);
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o755, "{script}");
            let syntax = Command::new("sh").arg("-n").arg(&path).status().unwrap();
            assert!(syntax.success(), "{script} is not valid sh");
        }
        let postrm = fs::read_to_string(extract.join("postrm")).unwrap();
        assert!(postrm.contains("purge") && postrm.contains("rm -rf /var/lib/rxsentry"));

        let soc = build_package(&SOC, &bins, &out, "amd64").unwrap();
        let list = dpkg_deb(&["-c"], &soc);
        for want in [
            "./usr/sbin/rxsentry-collector",
            "./usr/bin/rxsentry",
            "./lib/systemd/system/rxsentry-collector.service",
            "./etc/default/rxsentry-collector",
        ] {
            assert!(list.contains(want), "{want} not in\n{list}");
        }
        assert!(!list.contains("rxsentry-sensor"), "{list}");
        let info = dpkg_deb(&["-I"], &soc);
        assert!(info.contains("Package: rxsentry-soc"), "{info}");
        // Staging directories are gone; only the two packages remain.
        let mut left: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left.len(), 2, "{left:?}");
    }
}
