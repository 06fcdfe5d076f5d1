//! Operators of the analyst API: their role and their bearer token. The
//! collector keeps a salted SHA-256 of each token, so its operators file is
//! no secret that unlocks isolation, and two operators' entries say nothing
//! about each other. Tokens are 256 random bits, so a fast hash with a salt
//! is enough: there is no password to guess.

use std::path::Path;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use tonic::{Status, metadata::MetadataMap};

/// What an operator may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: tail, hosts, queries.
    Viewer,
    /// Acts on hosts: isolate, release (and future kill, quarantine).
    Responder,
    /// Changes the collector: trust reload, operator management, policy push.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Responder => "responder",
            Self::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "responder" => Ok(Self::Responder),
            "admin" => Ok(Self::Admin),
            _ => Err(format!("unknown role {s:?}: viewer, responder or admin")),
        }
    }
}

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

/// One operator: a name for the audit trail, a role, the salted token hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub role: Role,
    pub token_salt: [u8; 16],
    /// SHA-256 of the salt followed by the token.
    pub token_sha256: [u8; 32],
}

impl Operator {
    /// An operator whose token is `token`, with a fresh random salt.
    pub fn with_token(name: &str, role: Role, token: &str) -> Self {
        let mut token_salt = [0u8; 16];
        rand::rng().fill_bytes(&mut token_salt);
        Self {
            name: name.to_owned(),
            role,
            token_salt,
            token_sha256: salted(&token_salt, token),
        }
    }

    /// Its `[[operator]]` entry for the operators file.
    pub fn to_toml(&self) -> String {
        format!(
            "[[operator]]\nname = {:?}\nrole = \"{}\"\ntoken_salt = \"{}\"\ntoken_sha256 = \"{}\"\n",
            self.name,
            self.role,
            pki::hex(&self.token_salt),
            pki::hex(&self.token_sha256)
        )
    }
}

/// First lines of an operators file the collector rewrites.
pub const OPERATORS_HEADER: &str = "# rxsentry operators: name, role (viewer|responder|admin) and a salted\n\
# SHA-256 of the token. Managed with `rxsentry operators` or `rxsentry-collector\n\
# pki add-operator`; the collector rewrites this file on `operators add|remove`.\n";

/// A new operator token: 256 random bits, hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    pki::hex(&bytes)
}

fn salted(salt: &[u8; 16], token: &str) -> [u8; 32] {
    pki::salted_token_hash(salt, token)
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
    role: Role,
    token_salt: String,
    token_sha256: String,
}

/// Parses an operators file (`[[operator]] name, role, token_salt, token_sha256`).
pub fn load_operators(path: &Path) -> Result<Vec<Operator>, AuthConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_operators(&text).map_err(|why| AuthConfigError::Invalid { path: shown, why })
}

/// An operator name as the audit log shows it: not blank, no control
/// characters (no escape sequences reach an auditor's terminal).
pub fn printable_name(name: &str) -> bool {
    !name.trim().is_empty() && !name.chars().any(char::is_control)
}

pub fn parse_operators(text: &str) -> Result<Vec<Operator>, String> {
    let file: File = toml::from_str(text).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("missing field `role`") || msg.contains("missing field `token_salt`") {
            format!(
                "{msg}\nentries need name, role (viewer|responder|admin), token_salt and \
                 token_sha256: create them with `rxsentry-collector pki add-operator`"
            )
        } else {
            msg
        }
    })?;
    let mut operators: Vec<Operator> = Vec::new();
    for (i, entry) in file.operator.into_iter().enumerate() {
        if !printable_name(&entry.name) {
            return Err(format!(
                "operator[{i}].name must be non-empty and printable"
            ));
        }
        let salt = decode_hex::<16>(&entry.token_salt)
            .ok_or_else(|| format!("operator[{i}].token_salt must be 32 hex digits"))?;
        let digest = decode_hex::<32>(&entry.token_sha256)
            .ok_or_else(|| format!("operator[{i}].token_sha256 must be 64 hex digits"))?;
        if operators.iter().any(|o| o.name == entry.name) {
            return Err(format!("operator[{i}] ({}) repeats a name", entry.name));
        }
        operators.push(Operator {
            name: entry.name,
            role: entry.role,
            token_salt: salt,
            token_sha256: digest,
        });
    }
    Ok(operators)
}

fn decode_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    let hex = hex.trim();
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The operator named by the request's `authorization: Bearer <token>`,
/// if their role is at least `needed`. UNAUTHENTICATED without a token,
/// PERMISSION_DENIED with an unknown one or too low a role.
pub fn authorize(
    operators: &[Operator],
    metadata: &MetadataMap,
    needed: Role,
    action: &str,
) -> Result<Operator, Status> {
    let header = metadata
        .get("authorization")
        .ok_or_else(|| {
            Status::unauthenticated(format!(
                "{action} needs an operator token with role {needed} or higher: send \
                 `authorization: Bearer <token>` (rxsentry: --token-file or RXSENTRY_TOKEN)"
            ))
        })?
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization header is not text"))?;
    let token = header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Status::unauthenticated("authorization header is not `Bearer <token>`"))?;
    // Compare every byte of every entry: the time taken says nothing about
    // which entry, if any, matched.
    let mut found = None;
    for op in operators {
        let digest = salted(&op.token_salt, token);
        let diff = op
            .token_sha256
            .iter()
            .zip(digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            found = Some(op);
        }
    }
    let op = found.ok_or_else(|| {
        if operators.is_empty() {
            Status::permission_denied(
                "this collector has no operators configured (--operators FILE): the analyst API is closed",
            )
        } else {
            Status::permission_denied("operator token not recognised")
        }
    })?;
    if op.role < needed {
        return Err(Status::permission_denied(format!(
            "operator {:?} has role {}; {action} needs {needed}",
            op.name, op.role
        )));
    }
    Ok(op.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(value: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(v) = value {
            m.insert("authorization", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn tokens_map_to_operators_and_roles_are_enforced() {
        let text = format!(
            "{}{}",
            Operator::with_token("alice", Role::Viewer, "tok-a").to_toml(),
            Operator::with_token("bob", Role::Responder, "tok-b").to_toml()
        );
        let ops = parse_operators(&text).unwrap();
        let a = authorize(&ops, &md(Some("Bearer tok-a")), Role::Viewer, "tail").unwrap();
        assert_eq!((a.name.as_str(), a.role), ("alice", Role::Viewer));
        let denied =
            authorize(&ops, &md(Some("Bearer tok-a")), Role::Responder, "isolate").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("needs responder"), "{denied:?}");
        assert_eq!(
            authorize(&ops, &md(Some("Bearer tok-b")), Role::Responder, "isolate")
                .unwrap()
                .name,
            "bob"
        );
        assert!(authorize(&ops, &md(Some("Bearer tok-b")), Role::Admin, "reload").is_err());
        let unknown = authorize(&ops, &md(Some("Bearer tok-c")), Role::Viewer, "x").unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::PermissionDenied);
        let missing = authorize(&ops, &md(None), Role::Viewer, "x").unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        let malformed = authorize(&ops, &md(Some("Basic eA==")), Role::Viewer, "x").unwrap_err();
        assert_eq!(malformed.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn the_same_token_hashes_differently_per_operator() {
        let a = Operator::with_token("a", Role::Viewer, "same");
        let b = Operator::with_token("b", Role::Viewer, "same");
        assert_ne!(a.token_sha256, b.token_sha256, "salted");
    }

    #[test]
    fn no_operators_means_closed() {
        let e = authorize(&[], &md(Some("Bearer x")), Role::Viewer, "tail").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("no operators configured"));
    }

    #[test]
    fn bad_files_are_refused() {
        let good = Operator::with_token("a", Role::Admin, "1").to_toml();
        let bad = [
            good.replace("role = \"admin\"", "role = \"root\""),
            good.replace("role = \"admin\"\n", ""),
            good.replace("token_salt", "salt"),
            format!("{good}{good}"),
            "[[operator]]\nname = \"a\"\ntoken_sha256 = \"00\"\n".to_owned(),
            good.replace("name = \"a\"", "name = \"\""),
        ];
        for text in bad {
            assert!(parse_operators(&text).is_err(), "{text}");
        }
        assert!(
            parse_operators("[[operator]]\nname = \"a\"\ntoken_sha256 = \"00\"\n")
                .unwrap_err()
                .contains("pki add-operator")
        );
    }
}
