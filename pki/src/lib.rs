//! rxsentry's PKI: one certificate authority per deployment, certificates
//! that say who holds them (a sensor's host id, the collector), a deny list
//! of revoked serials, and the tonic TLS settings built from those files.
//!
//! The collector derives a sensor's host id from the certificate the sensor
//! presented, never from what the sensor writes in a batch; that binding is
//! the reason this crate exists rather than plain rustls settings.

pub mod files;
pub mod identity;
pub mod issue;
pub mod revocation;
pub mod tls;

pub use identity::{Holder, PeerIdentity, hex};
pub use issue::{Ca, Credential, Leaf};
pub use revocation::DenyList;

use std::path::PathBuf;

/// Why a PKI file or operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} holds a secret but is readable by group or others (mode {mode:o}): `chmod 600 {path}`"
    )]
    SecretTooOpen { path: PathBuf, mode: u32 },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("a CA already exists in {0}; refusing to overwrite it")]
    CaExists(PathBuf),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("host id {0:?} is not usable: 1 to 64 of [A-Za-z0-9._-]")]
    BadHostId(String),
    #[error("TLS settings: {0}")]
    Tls(#[from] tonic::transport::Error),
    #[error(
        "{0} is not a loopback address: plaintext is refused off loopback (use TLS; see docs/security.md)"
    )]
    PlaintextOffLoopback(String),
}

impl PkiError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// How an operator token is stored: SHA-256 of its per-operator random salt
/// followed by the token. One definition for the collector, which checks
/// tokens, and for whatever writes operators files.
pub fn salted_token_hash(salt: &[u8; 16], token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(salt);
    h.update(token.as_bytes());
    h.finalize().into()
}

/// Host ids go into certificates, file names and logs: keep them plain.
pub fn check_host_id(host_id: &str) -> Result<(), PkiError> {
    let ok = !host_id.is_empty()
        && host_id.len() <= 64
        && host_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadHostId(host_id.to_owned()))
    }
}
