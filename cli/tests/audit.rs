//! `rxsentry audit verify | show` as an auditor runs them, on logs the
//! collector's own writer made, intact and tampered with.

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use audit::{ArgValue, AuditConfig, AuditLog, Entry, Outcome};

fn rxsentry(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rxsentry"))
        .arg("audit")
        .args(args)
        .arg(dir)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A log of isolate/release pairs by alice and one refused attempt,
/// rotated every 600 bytes.
fn log(tmp: &Path) -> std::path::PathBuf {
    let dir = tmp.join("audit");
    let log = AuditLog::open(&AuditConfig {
        dir: dir.clone(),
        max_file_bytes: 600,
    })
    .unwrap();
    let mut refused = Entry::new("isolate", Outcome::Refused);
    refused.host = Some("kiosk-1".into());
    refused.detail = "operator token not recognised".into();
    log.append(refused).unwrap();
    for (action, reason) in [("isolate", "malware"), ("release", "clean")] {
        let mut e = Entry::new(action, Outcome::Ok);
        e.operator = Some("alice".into());
        e.host = Some("kiosk-1".into());
        e.args.insert("reason".into(), ArgValue::One(reason.into()));
        log.append(e).unwrap();
    }
    dir
}

#[test]
fn verify_reports_an_intact_chain_and_its_head() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = log(tmp.path());
    let out = rxsentry(&["verify"], &dir);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("3 records in"), "{stdout}");
    assert!(stdout.contains("chain intact"), "{stdout}");
    let head = stdout
        .lines()
        .find_map(|l| l.strip_prefix("head: record 3 sha256 "))
        .unwrap()
        .to_owned();

    // The exported head still matches.
    let anchor = format!("3:{head}");
    let out = rxsentry(&["verify", "--anchor", &anchor], &dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("anchor record 3: matches"));

    // Records cut off the end at a line boundary verify on their own; the
    // exported head is what tells.
    let last = dir.join(audit::file_name(3));
    std::fs::remove_file(&last).unwrap();
    let out = rxsentry(&["verify", "--anchor", &anchor], &dir);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not in the log, which ends at record 2"),
        "{stderr}"
    );
}

#[test]
fn verify_names_the_first_broken_record_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = log(tmp.path());
    let first = dir.join(audit::file_name(1));
    let bytes = std::fs::read(&first).unwrap();
    std::fs::write(&first, &bytes[..bytes.len() - 10]).unwrap();
    let out = rxsentry(&["verify"], &dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("audit-00000001.jsonl line 1 (record 1 due): truncated"),
        "{stderr}"
    );
    assert!(
        stderr.contains("0 records verified before the break"),
        "{stderr}"
    );
    // `show` prints what verified, then fails the same way.
    let out = rxsentry(&["show"], &dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("truncated"));
}

#[test]
fn show_prints_records_for_an_auditor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = log(tmp.path());
    let out = rxsentry(&["show"], &dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let rows: Vec<&str> = stdout.lines().collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert!(
        rows[0].contains("#1") && rows[0].contains("REFUSED"),
        "{stdout}"
    );
    assert!(
        rows[0].contains("(operator token not recognised)"),
        "{stdout}"
    );
    assert!(
        rows[1].contains("alice") && rows[1].contains("isolate"),
        "{stdout}"
    );
    assert!(rows[1].contains("kiosk-1") && rows[1].contains("reason=\"malware\""));

    // --json: the stored lines, byte for byte.
    let out = rxsentry(&["show", "--json"], &dir);
    assert!(out.status.success());
    let stored: String = (1..=3)
        .map(|i| std::fs::read_to_string(dir.join(audit::file_name(i))).unwrap())
        .collect();
    assert_eq!(text(&out.stdout), stored);
    let v: serde_json::Value = serde_json::from_str(stored.lines().nth(2).unwrap()).unwrap();
    assert_eq!(
        (v["seq"].as_u64(), v["action"].as_str()),
        (Some(3), Some("release"))
    );

    // --since: a day from now shows nothing; an old date everything.
    let out = rxsentry(&["show", "--since", "9999-01-01"], &dir);
    assert!(out.status.success() && out.stdout.is_empty());
    let out = rxsentry(&["show", "--since", "2000-01-01T00:00Z"], &dir);
    assert_eq!(text(&out.stdout).lines().count(), 3);
    let out = rxsentry(&["show", "--since", "last week"], &dir);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("YYYY-MM-DD"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let out = rxsentry(&["verify"], Path::new("/nonexistent/audit"));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("/nonexistent/audit"), "{stderr}");
}
