//! The deployment CA on the collector's host and the certificates it issues.
//!
//! Layout of the CA directory (0700): `ca.pem`, `ca.key` (0600), `issued/`
//! (a copy of every issued certificate, named by serial, so one can be
//! listed and revoked by host) and `revoked.txt` (the deny list the
//! collector reloads).

use std::fs;
use std::path::{Path, PathBuf};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::identity::{COLLECTOR_URI, HOST_URI_PREFIX, PeerIdentity};
use crate::{PkiError, files};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const ISSUED_DIR: &str = "issued";
pub const DENY_LIST: &str = "revoked.txt";

/// Ten years: the CA outlives the kiosks' hardware refresh.
pub const CA_DAYS: i64 = 3650;
/// A leaf certificate's default life (the browsers' 397-day ceiling).
pub const LEAF_DAYS: i64 = 397;

/// What to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leaf {
    /// A sensor's client certificate, bound to one host id.
    Sensor { host_id: String },
    /// The collector's server certificate, valid for these DNS names and IPs.
    Collector { names: Vec<String> },
}

/// A certificate and its private key, as PEM.
#[derive(Debug, Clone)]
pub struct Credential {
    pub cert_pem: String,
    pub key_pem: String,
    pub identity: PeerIdentity,
}

impl Credential {
    /// Writes `STEM.pem` (0644) and `STEM.key` (0600) into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        fs::create_dir_all(dir).map_err(PkiError::io(dir))?;
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        files::write_secret(&key, self.key_pem.as_bytes())?;
        files::write_file(&cert, self.cert_pem.as_bytes(), 0o644)?;
        Ok((cert, key))
    }
}

/// The CA: its certificate and signing key, loaded from its directory.
pub struct Ca {
    dir: PathBuf,
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new CA in `dir`; refuses to replace an existing one.
    pub fn init(dir: &Path, name: &str) -> Result<Self, PkiError> {
        if dir.join(CA_KEY).exists() || dir.join(CA_CERT).exists() {
            return Err(PkiError::CaExists(dir.to_owned()));
        }
        files::private_dir(dir)?;
        files::private_dir(&dir.join(ISSUED_DIR))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(CA_DAYS);
        let cert = params.self_signed(&key)?;
        files::write_secret(&dir.join(CA_KEY), key.serialize_pem().as_bytes())?;
        files::write_file(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)?;
        let deny = dir.join(DENY_LIST);
        if !deny.exists() {
            files::write_file(&deny, crate::revocation::HEADER.as_bytes(), 0o644)?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Loads the CA of `dir` (its key must be 0600).
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_pem = files::read_public(&dir.join(CA_CERT))?;
        let key_path = dir.join(CA_KEY);
        let key =
            KeyPair::from_pem(&files::read_secret(&key_path)?).map_err(|e| PkiError::Invalid {
                path: key_path,
                why: format!("not a private key: {e}"),
            })?;
        Ok(Self {
            dir: dir.to_owned(),
            cert_pem,
            key,
        })
    }

    /// Loads the CA of `dir`, creating it first when there is none.
    pub fn load_or_init(dir: &Path, name: &str) -> Result<Self, PkiError> {
        if dir.join(CA_CERT).exists() {
            Self::load(dir)
        } else {
            Self::init(dir, name)
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The deny list the collector reloads.
    pub fn deny_list(&self) -> PathBuf {
        self.dir.join(DENY_LIST)
    }

    /// Issues `leaf` valid from an hour ago (clock skew) for `days`.
    pub fn issue(&self, leaf: &Leaf, days: i64) -> Result<Credential, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.issue_between(leaf, now - Duration::hours(1), now + Duration::days(days))
    }

    /// Issues `leaf` valid in [not_before, not_after] (tests issue expired ones).
    pub fn issue_between(
        &self,
        leaf: &Leaf,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Credential, PkiError> {
        let mut params = match leaf {
            Leaf::Sensor { host_id } => {
                crate::check_host_id(host_id)?;
                let mut p = CertificateParams::default();
                p.distinguished_name = distinguished_name(host_id);
                p.subject_alt_names = vec![SanType::URI(
                    format!("{HOST_URI_PREFIX}{host_id}").try_into()?,
                )];
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                p
            }
            Leaf::Collector { names } => {
                if names.is_empty() {
                    return Err(PkiError::Certificate(
                        "a collector certificate needs at least one DNS name or IP".into(),
                    ));
                }
                let mut p = CertificateParams::new(names.clone())?;
                p.distinguished_name = distinguished_name("rxsentry collector");
                p.subject_alt_names
                    .push(SanType::URI(COLLECTOR_URI.try_into()?));
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                p
            }
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?;
        let identity = PeerIdentity::from_der(cert.der())?;
        let issued = self.dir.join(ISSUED_DIR);
        files::private_dir(&issued)?;
        files::write_file(
            &issued.join(format!("{}.pem", identity.serial)),
            cert.pem().as_bytes(),
            0o644,
        )?;
        Ok(Credential {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            identity,
        })
    }

    /// Every certificate this CA issued, oldest first by file name order.
    pub fn issued(&self) -> Result<Vec<PeerIdentity>, PkiError> {
        let dir = self.dir.join(ISSUED_DIR);
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(PkiError::io(&dir)(e)),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pem"))
            .collect();
        paths.sort();
        for path in paths {
            out.push(PeerIdentity::from_pem(&files::read_public(&path)?)?);
        }
        Ok(out)
    }

    /// Adds `serial` to the deny list (the collector picks it up within
    /// seconds, and at SIGHUP).
    pub fn revoke(&self, serial: &str, note: &str) -> Result<(), PkiError> {
        crate::revocation::append(&self.deny_list(), serial, note)
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "rxsentry");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// 128 random bits, top bit clear so DER needs no padding byte.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}
