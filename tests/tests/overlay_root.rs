//! A root file system on an overlay, as overlayroot mounts it on kiosks
//! (layers on two file systems, `xino` off): `stat()` reports a regular
//! file with a pseudo device of its layer while the kernel identifies it by
//! the overlay's own device. The allowlist and the exec hashes must use the
//! kernel's view, and a file of another layer that shares a trusted file's
//! inode number must not pass for it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use proto::telemetry::v1::{EventKind, SubscribeRequest};
use tests::{
    Collector, Sensor, SensorOptions, Subscription, cgroup::TestCgroup, kernel::Exec, marker,
    mounts::Mounts,
};

/// An overlay at `<dir>/merged`: the lower layer and the upper one on two
/// tmpfs mounts (two file systems, both numbering inodes from 1, so a file
/// made in the upper layer can take a lower file's inode number).
struct Overlay {
    mounts: Mounts,
    lower: PathBuf,
    upper: PathBuf,
    merged: PathBuf,
}

impl Overlay {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let mut mounts = Mounts::default();
        let lower = dir.join("lower");
        mounts.mount(&["-t", "tmpfs", "-o", "mode=0755", "tmpfs"], &lower)?;
        let rw = dir.join("rw");
        mounts.mount(&["-t", "tmpfs", "-o", "mode=0755", "tmpfs"], &rw)?;
        let upper = rw.join("upper");
        let work = rw.join("work");
        std::fs::create_dir(&upper)?;
        std::fs::create_dir(&work)?;
        std::fs::create_dir(lower.join("bin"))?;
        Ok(Self {
            mounts,
            lower,
            upper,
            merged: dir.join("merged"),
        })
    }

    /// Mounts the overlay (default options: no `xino`) once the lower
    /// layer is filled.
    fn mount(&mut self) -> anyhow::Result<()> {
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.upper.with_file_name("work").display()
        );
        let merged = self.merged.clone();
        self.mounts
            .mount(&["-t", "overlay", "overlay", "-o", &options], &merged)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_programs_on_an_overlay_without_xino_run_and_others_are_blocked()
-> anyhow::Result<()> {
    let scratch = tests::root_only::root_only_tempdir()?;
    let mut overlay = Overlay::new(scratch.path())?;
    // Files first, so the trusted one's inode number is one the upper
    // layer reaches below.
    for i in 0..32 {
        std::fs::write(overlay.lower.join(format!("bin/data-{i}")), b"")?;
    }
    let tool = overlay.lower.join("bin/tool");
    tests::exe::copy_executable(Path::new("/usr/bin/touch"), &tool)?;
    let lower_ino = std::fs::metadata(&tool)?.ino();
    overlay.mount()?;

    let bin = overlay.merged.join("bin");
    let merged_tool = bin.join("tool");
    // The case this test is about: stat() disagrees with the kernel.
    assert_ne!(
        std::fs::metadata(&merged_tool)?.dev(),
        std::fs::metadata(&bin)?.dev(),
        "the overlay reports its files with the layer's pseudo device (xino off)"
    );

    let cgroup = TestCgroup::new(&marker("overlay-root"))?;
    let policy = scratch.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "mode = \"enforce\"\nscope_cgroups = [\"{}\"]\n[[trusted_root]]\npath = \"{}\"\n",
            cgroup.path.display(),
            bin.display()
        ),
    )?;
    let collector = Collector::start().await?;
    let mut sub = Subscription::open(
        &collector.url(),
        SubscribeRequest {
            kinds: vec![EventKind::Exec as i32],
            ..Default::default()
        },
    )
    .await?;
    let sensor = Sensor::start(
        &collector,
        SensorOptions {
            extra_config: format!("[policy]\npath = \"{}\"\n", policy.display()),
        },
    )
    .await?;
    let run = |program: &Path, tag: &str| -> anyhow::Result<(Exec, bool, String)> {
        let tag = marker(tag);
        let made = scratch.path().join(&tag);
        // Run from the scratch folder with the bare marker as argument, so
        // the exec event's argv holds it as it is.
        let status = Exec::of(
            cgroup
                .command(program)
                .current_dir(scratch.path())
                .arg(&tag)
                .status(),
        )?;
        Ok((status, made.exists(), tag))
    };

    // The trusted program runs, and its exec carries its hash.
    let (status, made, tag) = run(&merged_tool, "trusted")?;
    assert!(
        status.success() && made,
        "a trusted program on the overlay runs: {status}\n{}",
        sensor.log()
    );
    sub.until(Duration::from_secs(20), |s| !s.execs_with(&tag).is_empty())
        .await?;
    let exec = sub.execs_with(&tag)[0].clone();
    assert_eq!(
        exec.sha256,
        tests::exe::sha256_of(&tool)?,
        "hashed on the overlay: {}",
        exec.hash_error
    );

    // The attacker's file in the upper layer with the trusted file's inode
    // number, size and mtime and other code (the overlay's device and that number are the
    // kernel's key): the upper tmpfs numbers its inodes one by one, so
    // empty files are made until the next number is the trusted file's.
    let evil = bin.join("evil");
    let mut spares = Vec::new();
    loop {
        let spare = bin.join(format!("spare-{}", spares.len()));
        std::fs::write(&spare, b"")?;
        let ino = std::fs::metadata(&spare)?.ino();
        spares.push(spare);
        anyhow::ensure!(
            ino < lower_ino,
            "the upper layer's inode {ino} is past the trusted file's {lower_ino}"
        );
        if ino + 1 == lower_ino {
            break;
        }
    }
    // Made by a child (cp creates the file itself): no descriptor of ours
    // is open on a file that is then executed.
    let copied = Command::new("cp")
        .arg("/usr/bin/touch")
        .arg(&evil)
        .status()?;
    assert!(copied.success());
    // Other code (one byte of the last section header, which the program
    // does not use, flipped), same size: what an attacker would run. (A
    // byte-identical copy would get the entry re-trusted for itself, its
    // content being the trusted one's.)
    let size = std::fs::metadata(&evil)?.len();
    let last = std::fs::read(&evil)?[size as usize - 1];
    let flipped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf '\\{:03o}' | dd of={} bs=1 seek={} conv=notrunc status=none",
            last ^ 1,
            evil.display(),
            size - 1
        ))
        .status()?;
    assert!(flipped.success());
    assert_ne!(tests::exe::sha256_of(&evil)?, tests::exe::sha256_of(&tool)?);
    let touched = Command::new("touch")
        .arg("-r")
        .arg(&merged_tool)
        .arg(&evil)
        .status()?;
    assert!(touched.success());
    let (evil_meta, tool_meta) = (std::fs::metadata(&evil)?, std::fs::metadata(&merged_tool)?);
    assert_eq!(
        evil_meta.ino(),
        lower_ino,
        "the attack needs the same inode number"
    );
    assert_eq!(
        (evil_meta.len(), evil_meta.mtime(), evil_meta.mtime_nsec()),
        (tool_meta.len(), tool_meta.mtime(), tool_meta.mtime_nsec())
    );
    for spare in &spares {
        std::fs::remove_file(spare)?;
    }
    let (status, made, _) = run(&evil, "same-inode")?;
    assert!(
        status.blocked() && !made,
        "an upper-layer file with a trusted inode number is blocked: {status}"
    );

    // A trusted program written in place (copied up) and one replaced by a
    // rename are blocked; the trusted one on the lower layer ran above.
    let (status, _, _) = run(&merged_tool, "still-trusted")?;
    assert!(status.success(), "the trusted program still runs: {status}");
    tests::exe::copy_executable(Path::new("/usr/bin/touch"), &bin.join("replacement"))?;
    std::fs::rename(bin.join("replacement"), &merged_tool)?;
    let (status, made, _) = run(&merged_tool, "replaced")?;
    assert!(
        status.blocked() && !made,
        "a replaced program is blocked: {status}"
    );
    sensor.stop().await?;
    Ok(())
}
