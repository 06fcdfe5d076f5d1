//! `rxsentry rules list|test`: the real binary on real rule files and a
//! recorded events file (no collector needed).

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn rxsentry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rxsentry"))
        .args(args)
        .output()
        .expect("runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// SigmaHQ's Linux rules, found as detect/tests/sigmahq.rs finds them
/// (missing is a failure, never a skip).
fn sigma_dir() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    detect::sigmahq_rules_dir(&workspace).expect("SigmaHQ test rules (set RXSENTRY_SHARED)")
}

#[test]
fn list_shows_sigmahq_loaded_and_refused_with_reasons() {
    let dir = sigma_dir();
    let out = rxsentry(&[
        "rules",
        "list",
        "--no-default-pack",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.ends_with("130 loaded, 5 refused (0 broken)\n"),
        "{text}"
    );
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("REFUSED\t"))
        .collect();
    assert_eq!(refused.len(), 5, "{text}");
    for line in &refused {
        assert!(
            line.contains("the sensor does not produce field `DestinationHostname`")
                || line.contains("the sensor does not produce field `LogonId`"),
            "{line}"
        );
    }
    // The paths the file rules need watched, and the rules that see
    // watched files only.
    assert!(
        text.contains("WATCHES\tprefix\t/etc/cron.d/\twrite\n")
            && text.contains("WATCHES\texact\t/tmp/rootlog\twrite\n"),
        "{text}"
    );
    let blind: Vec<&str> = text.lines().filter(|l| l.starts_with("BLIND\t")).collect();
    assert_eq!(blind.len(), 5, "{text}");
    assert!(
        blind
            .iter()
            .any(|l| l.starts_with("BLIND\tNew Cron File Created\tpartly\t")),
        "{blind:?}"
    );
    // A loaded rule's line: id, title, level, category, ATT&CK, author, file.
    let reverse = text
        .lines()
        .find(|l| l.ends_with("proc_creation_lnx_bpftrace_unsafe_option_usage.yml"))
        .expect("a known rule is listed");
    let cols: Vec<&str> = reverse.split('\t').collect();
    assert_eq!(cols.len(), 7, "{reverse}");
    assert_eq!(cols[3], "process_creation");

    // With the built-in pack: its 7 rules and 3 sequence rules too, named
    // builtin:.
    let out = rxsentry(&["rules", "list", "--dir", dir.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(
        text.ends_with("140 loaded, 5 refused (0 broken)\n"),
        "{text}"
    );
    assert_eq!(text.matches("\tbuiltin:").count(), 10);
    let exfil = text
        .lines()
        .find(|l| l.contains("PHI Read Followed by an Outbound Connection"))
        .expect("a sequence rule is listed");
    assert!(
        exfil.contains("\tsequence by process within 60 s: file_access then network_connection\t"),
        "{exfil}"
    );
}

#[test]
fn list_fails_on_a_broken_rule_file_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.yml"), "detection: [").unwrap();
    let out = rxsentry(&["rules", "list", "--dir", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("BROKEN\t") && text.contains("broken.yml"),
        "{text}"
    );
    assert!(
        text.ends_with("10 loaded, 1 refused (1 broken)\n"),
        "{text}"
    );
}

const RULE: &str = "title: Payload Run From Tmp
id: 0d6c3c5e-0000-4000-8000-000000000001
author: soc
level: high
tags: [attack.t1204.002]
logsource: {product: linux, category: process_creation}
detection:
  selection:
    Image|startswith: /tmp/
    ParentImage|endswith: /bash
  condition: selection
";

/// Lines as `rxsentry tail --json` prints them: a shell, its child run
/// from /tmp (the match), another child from /usr/bin, a file event and a
/// collector record (skipped).
fn events_file(dir: &Path) -> PathBuf {
    let process = |pid: u32, ppid: u32, exe: &str| {
        format!(
            r#"{{"pid":{pid},"tid":{pid},"ppid":{ppid},"uid":1000,"gid":1000,"euid":1000,"egid":1000,"comm":"x","exe":"{exe}","cgroup_id":1,"lineage":[],"start_time_ns":0}}"#
        )
    };
    let exec = |pid, ppid, file: &str, ts: u64| {
        format!(
            r#"{{"type":"event","host_id":"h","hostname":"kiosk","batch_sequence":1,"received_unix_ns":0,"received_time":null,"timestamp_ns":{ts},"boot_time_unix_ns":0,"wall_time_unix_ns":0,"time":null,"kind":"exec","process":{},"filename":"{file}","argv":["{file}","-x"],"argv_truncated":false,"sha256":"","hash_error":"","file_device":1,"file_inode":2}}"#,
            process(pid, ppid, file)
        )
    };
    let lines = [
        exec(100, 1, "/usr/bin/bash", 1),
        exec(101, 100, "/tmp/payload", 2),
        exec(102, 100, "/usr/bin/id", 3),
        format!(
            r#"{{"type":"event","kind":"file","timestamp_ns":4,"process":{},"operation":"write","path":"/tmp/payload","result":3,"repeats":0}}"#,
            process(101, 100, "/tmp/payload")
        ),
        r#"{"type":"gap","host_id":"h","hostname":"kiosk","first":5,"last":9}"#.to_owned(),
    ];
    let path = dir.join("events.json");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn rules_test(rule: &Path, events: &Path) -> Output {
    rxsentry(&[
        "rules",
        "test",
        rule.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
    ])
}

#[test]
fn test_runs_a_rule_on_recorded_events() {
    let dir = tempfile::tempdir().unwrap();
    let events = events_file(dir.path());
    let rule = dir.path().join("tmp.yml");
    std::fs::write(&rule, RULE).unwrap();
    let out = rules_test(&rule, &events);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    // Only the /tmp child of bash (its parent known from the recording).
    assert!(
        text.contains("line 2: match: process_creation pid 101 /tmp/payload"),
        "{text}"
    );
    assert!(
        text.contains(&format!("1 of 4 events match {}", rule.display())),
        "{text}"
    );

    // No match: the same events under a rule for another parent.
    std::fs::write(&rule, RULE.replace("/bash", "/python3")).unwrap();
    let out = rules_test(&rule, &events);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(!text.contains("match:"), "{text}");
    assert!(text.contains("0 of 4 events match"), "{text}");
}

#[test]
fn test_refuses_an_invalid_rule_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let events = events_file(dir.path());
    let rule = dir.path().join("bad.yml");
    std::fs::write(
        &rule,
        RULE.replace("ParentImage|endswith", "CurrentDirectory|endswith"),
    )
    .unwrap();
    let out = rules_test(&rule, &events);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&rule.display().to_string()), "{err}");
    assert!(
        err.contains("detection.selection.CurrentDirectory"),
        "{err}"
    );
    assert!(stdout(&out).is_empty(), "no events evaluated");
}
