//! Operators of the analyst API and their bearer tokens. The collector
//! keeps only the SHA-256 of each token, so its config file is no secret
//! that unlocks isolation. mTLS is a known gap (docs/isolation.md).

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::{Status, metadata::MetadataMap};

/// Why an operators file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("cannot read operators file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("operators file {path}: {why}")]
    Invalid { path: String, why: String },
}

/// One operator: a name for the audit trail, the SHA-256 of the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub token_sha256: [u8; 32],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    operator: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    token_sha256: String,
}

/// Parses an operators file (`[[operator]] name, token_sha256`).
pub fn load_operators(path: &Path) -> Result<Vec<Operator>, AuthConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_operators(&text).map_err(|why| AuthConfigError::Invalid { path: shown, why })
}

pub fn parse_operators(text: &str) -> Result<Vec<Operator>, String> {
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut operators: Vec<Operator> = Vec::new();
    for (i, entry) in file.operator.into_iter().enumerate() {
        if entry.name.trim().is_empty() || entry.name.chars().any(char::is_control) {
            return Err(format!(
                "operator[{i}].name must be non-empty and printable"
            ));
        }
        let hex = entry.token_sha256.trim().to_ascii_lowercase();
        let digest = decode_hex32(&hex).ok_or_else(|| {
            format!(
                "operator[{i}].token_sha256 must be 64 hex digits (`printf %s \"$TOKEN\" | sha256sum`)"
            )
        })?;
        if operators
            .iter()
            .any(|o| o.name == entry.name || o.token_sha256 == digest)
        {
            return Err(format!(
                "operator[{i}] ({}) repeats a name or a token",
                entry.name
            ));
        }
        operators.push(Operator {
            name: entry.name,
            token_sha256: digest,
        });
    }
    Ok(operators)
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The operator named by the request's `authorization: Bearer <token>`.
/// UNAUTHENTICATED without a token, PERMISSION_DENIED with an unknown one.
pub fn authorize(operators: &[Operator], metadata: &MetadataMap) -> Result<String, Status> {
    let header = metadata
        .get("authorization")
        .ok_or_else(|| {
            Status::unauthenticated(
                "no operator token: send `authorization: Bearer <token>` \
                 (rxsentry: --token-file or RXSENTRY_TOKEN)",
            )
        })?
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization header is not text"))?;
    let token = header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Status::unauthenticated("authorization header is not `Bearer <token>`"))?;
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    // Compare every byte of every entry: the time taken says nothing about
    // how close a guess was.
    let mut found = None;
    for op in operators {
        let diff = op
            .token_sha256
            .iter()
            .zip(digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            found = Some(op.name.clone());
        }
    }
    found.ok_or_else(|| {
        if operators.is_empty() {
            Status::permission_denied(
                "this collector has no operators configured (--operators FILE): the analyst API is closed",
            )
        } else {
            Status::permission_denied("operator token not recognised")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(token: &str) -> String {
        Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn md(value: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(v) = value {
            m.insert("authorization", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn tokens_map_to_operator_names() {
        let text = format!(
            "[[operator]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n[[operator]]\nname = \"bob\"\ntoken_sha256 = \"{}\"\n",
            sha("tok-a"),
            sha("tok-b").to_uppercase()
        );
        let ops = parse_operators(&text).unwrap();
        assert_eq!(authorize(&ops, &md(Some("Bearer tok-a"))).unwrap(), "alice");
        assert_eq!(authorize(&ops, &md(Some("Bearer tok-b"))).unwrap(), "bob");
        let denied = authorize(&ops, &md(Some("Bearer tok-c"))).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let missing = authorize(&ops, &md(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        let malformed = authorize(&ops, &md(Some("Basic eA=="))).unwrap_err();
        assert_eq!(malformed.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn no_operators_means_closed() {
        let e = authorize(&[], &md(Some("Bearer x"))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("no operators configured"));
    }

    #[test]
    fn bad_files_are_refused() {
        let bad = [
            "[[operator]]\nname = \"a\"\ntoken_sha256 = \"abc\"\n",
            "[[operator]]\nname = \"\"\ntoken_sha256 = \"{h}\"\n",
            "[[operator]]\nname = \"a\"\ntoken_sha256 = \"{h}\"\n[[operator]]\nname = \"a\"\ntoken_sha256 = \"{h2}\"\n",
            "[[operator]]\nname = \"a\"\ntoken = \"x\"\n",
        ];
        for text in bad {
            let text = text.replace("{h}", &sha("1")).replace("{h2}", &sha("2"));
            assert!(parse_operators(&text).is_err(), "{text}");
        }
    }
}
