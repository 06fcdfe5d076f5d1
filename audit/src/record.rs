//! One audit record and its line encoding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev` of the very first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// `,"hash":"<64 hex>"}`: the fixed-size end of every line.
const HASH_PREFIX: &[u8] = b",\"hash\":\"";
const SUFFIX_LEN: usize = HASH_PREFIX.len() + 64 + 2;

/// A value of `args`: one string (a reason) or a list (a filter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ArgValue {
    One(String),
    Many(Vec<String>),
}

/// How the action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Authorized and about to be carried out; a second record says how it
    /// ended. Written first, so nothing changes without a record.
    Requested,
    /// Done.
    Ok,
    /// Refused by the collector: no or a wrong token, invalid arguments.
    Refused,
    /// Authorized but not done: the sensor refused, was unreachable, or
    /// did not answer in time.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Requested => "requested",
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// What the caller records; the log adds `seq`, `time` and `prev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The operator's name from the token (never the token); `None` when
    /// no operator was authenticated.
    pub operator: Option<String>,
    /// The client's address, when known.
    pub peer: Option<String>,
    /// `isolate`, `release`, `list_hosts`, `subscribe`, `unsubscribe`.
    pub action: String,
    /// The target host_id, if the action has one.
    pub host: Option<String>,
    pub args: BTreeMap<String, ArgValue>,
    pub outcome: Outcome,
    /// Why it was refused or failed; empty when there is nothing to add.
    pub detail: String,
}

impl Entry {
    pub fn new(action: &str, outcome: Outcome) -> Self {
        Self {
            operator: None,
            peer: None,
            action: action.to_owned(),
            host: None,
            args: BTreeMap::new(),
            outcome,
            detail: String::new(),
        }
    }
}

/// A record as stored, without its own hash (which is over these fields).
/// Fields the format does not know are refused by the canonical check in
/// [`decode`] (they do not survive re-encoding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// UTC, `2026-11-24T10:00:00.123Z`.
    pub time: String,
    #[serde(flatten)]
    pub entry: Entry,
    /// The previous record's hash, lower-case hex.
    pub prev: String,
}

impl Record {
    pub fn new(seq: u64, time: String, prev: &[u8; 32], entry: Entry) -> Self {
        Self {
            seq,
            time,
            entry,
            prev: hex(prev),
        }
    }

    /// The line to store (with its `\n`) and the record's hash.
    pub fn encode(&self) -> Result<(Vec<u8>, [u8; 32]), serde_json::Error> {
        let mut line = serde_json::to_vec(self)?;
        let hash: [u8; 32] = Sha256::digest(&line).into();
        line.pop(); // the closing brace, put back after the hash
        line.extend_from_slice(HASH_PREFIX);
        line.extend_from_slice(hex(&hash).as_bytes());
        line.extend_from_slice(b"\"}\n");
        Ok((line, hash))
    }
}

/// Why one line is not a valid record (on its own, before chaining).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// Does not end in `,"hash":"<64 hex>"}`.
    NoHash,
    /// The content does not hash to the stored hash.
    HashMismatch,
    /// Hashes right but is not a record: `why`.
    NotARecord(String),
    /// A record, but not in the one encoding the writer produces.
    NotCanonical,
}

/// A line (without its `\n`) as a record and its hash, checked on its own.
pub fn decode(line: &[u8]) -> Result<(Record, [u8; 32]), LineError> {
    let split = line
        .len()
        .checked_sub(SUFFIX_LEN)
        .ok_or(LineError::NoHash)?;
    let (head, suffix) = line.split_at(split);
    let stored = suffix
        .strip_prefix(HASH_PREFIX)
        .and_then(|s| s.strip_suffix(b"\"}"))
        .and_then(unhex32)
        .ok_or(LineError::NoHash)?;
    let mut body = head.to_vec();
    body.push(b'}');
    let hash: [u8; 32] = Sha256::digest(&body).into();
    if hash != stored {
        return Err(LineError::HashMismatch);
    }
    let record: Record =
        serde_json::from_slice(&body).map_err(|e| LineError::NotARecord(e.to_string()))?;
    if unhex32(record.prev.as_bytes()).is_none() {
        return Err(LineError::NotARecord("prev is not 64 hex digits".into()));
    }
    match serde_json::to_vec(&record) {
        Ok(again) if again == body => Ok((record, hash)),
        _ => Err(LineError::NotCanonical),
    }
}

/// Lower-case hex of a hash.
pub fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 lower-case hex digits as bytes.
pub(crate) fn unhex32(text: &[u8]) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = digit(text[2 * i])? << 4 | digit(text[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        let mut entry = Entry::new("isolate", Outcome::Ok);
        entry.operator = Some("alice".into());
        entry.host = Some("kiosk-1".into());
        entry
            .args
            .insert("reason".into(), ArgValue::One("malware \"x\"\n".into()));
        entry.args.insert(
            "kinds".into(),
            ArgValue::Many(vec!["exec".into(), "file".into()]),
        );
        Record::new(7, "2026-11-24T10:00:00.000Z".into(), &GENESIS, entry)
    }

    #[test]
    fn a_line_decodes_to_its_record_and_hash() {
        let (line, hash) = record().encode().unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let (back, h) = decode(&line[..line.len() - 1]).unwrap();
        assert_eq!((back, h), (record(), hash));
        let text = String::from_utf8(line).unwrap();
        assert!(text.starts_with("{\"seq\":7,\"time\":"), "{text}");
    }

    #[test]
    fn non_canonical_or_foreign_lines_are_refused() {
        let (line, _) = record().encode().unwrap();
        let line = &line[..line.len() - 1];
        assert_eq!(decode(b"{}"), Err(LineError::NoHash));
        // Same content, another encoding (a space), hash recomputed.
        let body = String::from_utf8(line[..line.len() - SUFFIX_LEN].to_vec()).unwrap();
        let spaced = format!("{}}}", body.replacen(":7,", ": 7,", 1));
        let h = hex(&Sha256::digest(spaced.as_bytes()).into());
        let forged = format!("{},\"hash\":\"{h}\"}}", &spaced[..spaced.len() - 1]);
        assert_eq!(decode(forged.as_bytes()), Err(LineError::NotCanonical));
        // An unknown field, hash recomputed.
        let extra = format!("{},\"x\":1}}", body);
        let h = hex(&Sha256::digest(extra.as_bytes()).into());
        let forged = format!("{},\"hash\":\"{h}\"}}", &extra[..extra.len() - 1]);
        assert_eq!(decode(forged.as_bytes()), Err(LineError::NotCanonical));
        // Not JSON at all, hash recomputed.
        let h = hex(&Sha256::digest(b"{x}").into());
        let forged = format!("{{x,\"hash\":\"{h}\"}}");
        assert!(matches!(
            decode(forged.as_bytes()),
            Err(LineError::NotARecord(_))
        ));
    }
}
