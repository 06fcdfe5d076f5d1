//! The audit log as an attacker with write access to its files would try
//! it: every edit short of rebuilding the whole chain is caught and named
//! at the first record it breaks.

// A test crate: its helpers may unwrap (a panic is a failed test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use audit::{
    ArgValue, AuditConfig, AuditError, AuditLog, BreakKind, Entry, Outcome, Record, file_name,
    verify,
};

/// A log in a fresh directory with `n` records, rotated every
/// `max_file_bytes`.
fn log_with(n: u64, max_file_bytes: u64) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state/audit");
    let log = AuditLog::open(&AuditConfig {
        dir: dir.clone(),
        max_file_bytes,
    })
    .unwrap();
    for i in 1..=n {
        log.append(entry(i)).unwrap();
    }
    (tmp, dir)
}

fn entry(i: u64) -> Entry {
    let mut e = Entry::new(if i % 2 == 1 { "isolate" } else { "release" }, Outcome::Ok);
    e.operator = Some("alice".into());
    e.host = Some(format!("kiosk-{i}"));
    e.args
        .insert("reason".into(), ArgValue::One(format!("case {i}")));
    e
}

/// One file, everything in it.
fn single(n: u64) -> (tempfile::TempDir, PathBuf) {
    log_with(n, u64::MAX)
}

/// A one-file log of `n` records whose lines went through `edit`.
fn tampered(n: u64, edit: impl FnOnce(&mut Vec<String>)) -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = single(n);
    let path = dir.join(first());
    let mut l = lines(&path);
    edit(&mut l);
    write_lines(&path, &l);
    (tmp, dir)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

/// The break `verify` reports: file, line, expected record, kind.
fn broken(dir: &Path) -> (String, u64, u64, BreakKind) {
    match verify(dir) {
        Err(audit::VerifyError::Broken { brk, .. }) => {
            // The message names the file and what happened.
            assert!(brk.to_string().contains(&brk.file), "{brk}");
            (brk.file, brk.line, brk.expected_seq, brk.kind)
        }
        other => panic!("expected a break, got {other:?}"),
    }
}

fn first() -> String {
    file_name(1)
}

#[test]
fn an_intact_chain_verifies_across_rotated_files() {
    let (_tmp, dir) = log_with(30, 1500);
    let chain = verify(&dir).unwrap();
    assert_eq!(chain.records, 30);
    assert!(chain.files.len() >= 3, "{:?}", chain.files);
    assert_eq!(chain.head.unwrap().0, 30);
    // Each file starts with the hash of the previous file's last record.
    for pair in chain.files.windows(2) {
        let last = lines(&dir.join(&pair[0])).pop().unwrap();
        let next = lines(&dir.join(&pair[1])).remove(0);
        let last_hash = &last[last.len() - 66..last.len() - 2];
        let record: serde_json::Value = serde_json::from_str(&next).unwrap();
        assert_eq!(record["prev"], last_hash, "{pair:?}");
    }
    for name in &chain.files {
        let mode = std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn a_flipped_byte_is_an_edited_record() {
    let (_tmp, dir) = single(8);
    let path = dir.join(first());
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(6).position(|w| w == b"case 5").unwrap();
    bytes[at + 5] ^= 0x01; // "case 5" -> "case 4"
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(broken(&dir), (first(), 5, 5, BreakKind::Altered));
}

#[test]
fn an_edit_of_the_last_record_is_caught_too() {
    let (_tmp, dir) = tampered(4, |l| {
        l[3] = l[3].replace("\"alice\"", "\"mallo\"");
    });
    assert_eq!(broken(&dir), (first(), 4, 4, BreakKind::Altered));
}

#[test]
fn a_deleted_record_is_named() {
    let (_tmp, dir) = tampered(8, |l| {
        l.remove(4); // record 5
    });
    assert_eq!(
        broken(&dir),
        (first(), 5, 5, BreakKind::Deleted { first: 5, last: 5 })
    );
}

#[test]
fn an_inserted_record_is_named() {
    // A copy of an earlier record.
    let (_tmp, dir) = tampered(8, |l| {
        let copy = l[1].clone();
        l.insert(4, copy);
    });
    assert_eq!(
        broken(&dir),
        (first(), 5, 5, BreakKind::Inserted { found: 2 })
    );

    // A forged record 5 with its own valid hash, chained to record 4: the
    // real record 5 after it is then out of place.
    let (_tmp, dir) = tampered(8, |l| {
        l.insert(4, forge_after(&l[3]));
    });
    assert_eq!(
        broken(&dir),
        (first(), 6, 6, BreakKind::Inserted { found: 5 })
    );

    // The same forgery in place of the real record 5: record 6 no longer
    // chains to it.
    let (_tmp, dir) = tampered(8, |l| {
        l[4] = forge_after(&l[3]);
    });
    assert_eq!(broken(&dir), (first(), 6, 6, BreakKind::Unlinked));
}

/// A record by "mallory" that follows the stored line `before`, with a
/// valid hash of its own.
fn forge_after(before: &str) -> String {
    let previous = strip_hash(serde_json::from_str(before).unwrap());
    let mut forged = Record {
        seq: previous.seq + 1,
        prev: before[before.len() - 66..before.len() - 2].to_owned(),
        ..previous
    };
    forged.entry.operator = Some("mallory".into());
    let (line, _) = forged.encode().unwrap();
    String::from_utf8(line).unwrap().trim_end().to_owned()
}

/// A record parsed from a stored line (which has the extra `hash` field).
fn strip_hash(mut v: serde_json::Value) -> Record {
    v.as_object_mut().unwrap().remove("hash");
    serde_json::from_value(v).unwrap()
}

#[test]
fn a_swapped_pair_is_out_of_order() {
    let (_tmp, dir) = tampered(8, |l| {
        l.swap(2, 3); // records 3 and 4
    });
    assert_eq!(
        broken(&dir),
        (
            first(),
            3,
            3,
            BreakKind::OutOfOrder {
                found: 4,
                due_at_line: 4
            }
        )
    );
}

#[test]
fn a_deleted_middle_file_is_named() {
    let (_tmp, dir) = log_with(30, 1500);
    let files = verify(&dir).unwrap().files;
    std::fs::remove_file(dir.join(&files[1])).unwrap();
    let first_of_second = lines(&dir.join(&files[0])).len() as u64 + 1;
    assert_eq!(
        broken(&dir),
        (
            file_name(2),
            0,
            first_of_second,
            BreakKind::MissingFile {
                next_present: file_name(3)
            }
        )
    );
    // Renaming the later files down to close the gap does not help.
    for (i, name) in files.iter().enumerate().skip(2) {
        std::fs::rename(dir.join(name), dir.join(file_name(i as u32))).unwrap();
    }
    let (file, line, seq, kind) = broken(&dir);
    assert_eq!((file, line, seq), (file_name(2), 1, first_of_second));
    assert!(matches!(kind, BreakKind::Deleted { first, .. } if first == first_of_second));
}

#[test]
fn an_emptied_middle_file_is_named() {
    let (_tmp, dir) = log_with(30, 1500);
    std::fs::write(dir.join(file_name(2)), b"").unwrap();
    let (file, line, _, kind) = broken(&dir);
    assert_eq!((file, line, kind), (file_name(2), 0, BreakKind::EmptyFile));
}

#[test]
fn a_truncated_tail_is_named() {
    let (_tmp, dir) = single(5);
    let path = dir.join(first());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 20]).unwrap();
    assert_eq!(broken(&dir), (first(), 5, 5, BreakKind::Truncated));
    // Only the final newline gone.
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert_eq!(broken(&dir), (first(), 5, 5, BreakKind::Truncated));
}

#[test]
fn a_restart_continues_the_chain() {
    let (_tmp, dir) = log_with(3, 700);
    let head = verify(&dir).unwrap().head.unwrap();
    let log = AuditLog::open(&AuditConfig {
        dir: dir.clone(),
        max_file_bytes: 700,
    })
    .unwrap();
    assert_eq!(log.head(), head);
    let next = log.append(entry(4)).unwrap();
    assert_eq!(next.seq, 4);
    drop(log);
    let log = AuditLog::open(&AuditConfig::new(&dir)).unwrap();
    assert_eq!(log.append(entry(5)).unwrap().seq, 5);
    let chain = verify(&dir).unwrap();
    assert_eq!(chain.records, 5);
    assert_eq!(chain.head.unwrap().0, 5);
}

#[test]
fn a_broken_chain_stops_the_writer_with_a_clear_error() {
    let (_tmp, dir) = tampered(4, |l| {
        l.remove(1);
    });
    let before = std::fs::read(dir.join(first())).unwrap();
    let e = AuditLog::open(&AuditConfig::new(&dir)).unwrap_err();
    assert!(matches!(e, AuditError::Broken { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("record 2 deleted"), "{text}");
    assert!(text.contains("rxsentry audit verify"), "{text}");
    // Nothing was appended to it.
    assert_eq!(std::fs::read(dir.join(first())).unwrap(), before);
}

#[test]
fn one_writer_per_directory() {
    let (_tmp, dir) = single(1);
    let a = AuditLog::open(&AuditConfig::new(&dir)).unwrap();
    let e = AuditLog::open(&AuditConfig::new(&dir)).unwrap_err();
    assert!(matches!(e, AuditError::Locked(_)), "{e}");
    drop(a);
    AuditLog::open(&AuditConfig::new(&dir)).unwrap();
}

#[test]
fn an_open_directory_is_closed_to_others() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    AuditLog::open(&AuditConfig::new(&dir)).unwrap();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// The limit the docs state: whoever can write the files can rebuild the
/// whole chain, and it verifies. Only a head hash kept elsewhere shows it.
#[test]
fn a_rebuilt_chain_verifies_so_the_head_must_be_exported() {
    let (_tmp, dir) = single(3);
    let exported = verify(&dir).unwrap().head.unwrap();
    let path = dir.join(first());
    let mut prev = audit::GENESIS;
    let mut rebuilt = Vec::new();
    for line in lines(&path) {
        let mut r = strip_hash(serde_json::from_str(&line).unwrap());
        r.entry.operator = Some("mallory".into());
        r.prev = audit::hex(&prev);
        let (bytes, hash) = r.encode().unwrap();
        rebuilt.push(String::from_utf8(bytes).unwrap().trim_end().to_owned());
        prev = hash;
    }
    write_lines(&path, &rebuilt);
    let head = verify(&dir).unwrap().head.unwrap();
    assert_eq!(head.0, exported.0);
    assert_ne!(head.1, exported.1, "the exported head tells the rebuild");
}
