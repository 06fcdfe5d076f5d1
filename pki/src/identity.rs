//! Who a certificate says its holder is. Issued certificates carry one
//! `urn:rxsentry:...` URI in their subject alternative names; that URI, not
//! the common name and never a field of a message, is the identity.

use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::PkiError;

/// URI prefix of a sensor certificate: `urn:rxsentry:host:<host id>`.
pub const HOST_URI_PREFIX: &str = "urn:rxsentry:host:";
/// URI of a collector certificate.
pub const COLLECTOR_URI: &str = "urn:rxsentry:collector";

/// What a certificate was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A kiosk's sensor; it may publish and take commands as this host only.
    Sensor { host_id: String },
    /// The collector (a server certificate).
    Collector,
}

/// The identity read from a verified peer certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub holder: Holder,
    /// Serial number, lowercase hex without leading zeros: what the deny
    /// list holds.
    pub serial: String,
    /// SHA-256 of the DER certificate, hex: tells two certificates of the
    /// same host apart (a control-stream takeover needs the same one).
    pub fingerprint: String,
    /// End of validity, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

impl PeerIdentity {
    /// The host id of a sensor certificate.
    pub fn host_id(&self) -> Option<&str> {
        match &self.holder {
            Holder::Sensor { host_id } => Some(host_id),
            Holder::Collector => None,
        }
    }

    /// Reads the identity of a DER certificate. The TLS layer has already
    /// checked its chain and validity; this only reads what it says.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| PkiError::Certificate(format!("not an X.509 certificate: {e}")))?;
        let mut holders = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name {
                    if let Some(host_id) = uri.strip_prefix(HOST_URI_PREFIX) {
                        crate::check_host_id(host_id)?;
                        holders.push(Holder::Sensor {
                            host_id: host_id.to_owned(),
                        });
                    } else if *uri == COLLECTOR_URI {
                        holders.push(Holder::Collector);
                    }
                }
            }
        }
        let holder = match holders.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(PkiError::Certificate(
                    "certificate names no rxsentry holder (no urn:rxsentry: URI)".into(),
                ));
            }
            _ => {
                return Err(PkiError::Certificate(
                    "certificate names more than one rxsentry holder".into(),
                ));
            }
        };
        Ok(Self {
            holder,
            serial: serial_hex(cert.raw_serial()),
            fingerprint: hex(&Sha256::digest(der)),
            not_after_unix: cert.validity().not_after.timestamp(),
        })
    }

    /// Reads the first certificate of a PEM file's text.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| PkiError::Certificate(format!("not a PEM certificate: {e}")))?;
        Self::from_der(&block.contents)
    }
}

/// Lowercase hex without leading zero bytes (DER may add one).
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    let hex = hex(&raw[start..]);
    if hex.is_empty() { "0".into() } else { hex }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
