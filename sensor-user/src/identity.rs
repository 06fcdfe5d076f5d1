//! Who this sensor is: the `HostIdentity` stamped on every batch.
//!
//! `host_id` must survive restarts and reinstalls of the sensor (the SOC keys
//! hosts on it), so it comes from config or /etc/machine-id; the
//! `sensor_instance_id` must change at every start, because the collector uses
//! it to tell a restart (sequence back to 1) from a gap.

use std::path::Path;

use proto::telemetry::v1::HostIdentity;
use sha2::{Digest, Sha256};

use crate::config::HostConfig;

/// systemd's stable per-installation id.
const MACHINE_ID_PATH: &str = "/etc/machine-id";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read the hostname: {0}")]
    Hostname(nix::Error),
    #[error("the kernel hostname is empty and host.hostname is not set")]
    EmptyHostname,
    #[error(
        "host.id is {configured:?} but the sensor certificate {cert} is host {certified:?}'s: \
         the collector accepts only the certificate's host id (remove host.id or issue a certificate for it)"
    )]
    CertificateMismatch {
        configured: String,
        certified: String,
        cert: String,
    },
}

/// With mutual TLS the host id is the one in the sensor's certificate:
/// the collector derives it from there and refuses batches that say
/// otherwise. A certificate that cannot be read yet (not installed) leaves
/// the configured id: enforcement does not wait for the channel, and the
/// uploader keeps retrying (and logging why).
pub fn bind_to_certificate(
    identity: &mut HostIdentity,
    configured: Option<&str>,
    cert_file: &Path,
) -> Result<(), IdentityError> {
    let parsed = std::fs::read_to_string(cert_file)
        .map_err(|e| e.to_string())
        .and_then(|pem| pki::PeerIdentity::from_pem(&pem).map_err(|e| e.to_string()));
    let certified = match parsed {
        Ok(peer) => match peer.host_id() {
            Some(id) => id.to_owned(),
            None => {
                tracing::error!(cert = %cert_file.display(), "collector.cert_file is not a sensor certificate");
                return Ok(());
            }
        },
        Err(e) => {
            tracing::error!(cert = %cert_file.display(), error = %e,
                "cannot read the sensor certificate: telemetry waits for it, enforcement does not");
            return Ok(());
        }
    };
    if let Some(configured) = configured
        && configured != certified
    {
        return Err(IdentityError::CertificateMismatch {
            configured: configured.to_owned(),
            certified,
            cert: cert_file.display().to_string(),
        });
    }
    identity.host_id = certified;
    Ok(())
}

/// Builds the identity from config and this machine.
pub fn host_identity(config: &HostConfig) -> Result<HostIdentity, IdentityError> {
    let hostname = match &config.hostname {
        Some(name) => name.clone(),
        None => kernel_hostname()?,
    };
    let host_id = resolve_host_id(config.id.as_deref(), Path::new(MACHINE_ID_PATH), &hostname);
    Ok(HostIdentity {
        host_id,
        hostname,
        labels: config.labels.clone().into_iter().collect(),
        sensor_instance_id: new_instance_id(),
        sensor_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release: kernel_release(),
    })
}

fn kernel_hostname() -> Result<String, IdentityError> {
    let name = nix::unistd::gethostname().map_err(IdentityError::Hostname)?;
    let name = name.to_string_lossy().trim().to_owned();
    if name.is_empty() {
        return Err(IdentityError::EmptyHostname);
    }
    Ok(name)
}

/// Config wins; else the machine id file; else the hostname.
pub fn resolve_host_id(configured: Option<&str>, machine_id_path: &Path, hostname: &str) -> String {
    if let Some(id) = configured {
        return id.to_owned();
    }
    std::fs::read_to_string(machine_id_path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| hostname.to_owned())
}

/// `uname -r`, or "unknown" (the field is informative only).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// A random UUID from the kernel; if /proc is unreadable, a hash of values that
/// differ between any two starts (pid, boot-relative and wall clock time).
pub fn new_instance_id() -> String {
    if let Ok(uuid) = std::fs::read_to_string("/proc/sys/kernel/random/uuid") {
        let uuid = uuid.trim();
        if !uuid.is_empty() {
            return uuid.to_owned();
        }
    }
    let mut h = Sha256::new();
    h.update(std::process::id().to_le_bytes());
    h.update(crate::clock::boottime_ns().to_le_bytes());
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.update(wall.to_le_bytes());
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_id_prefers_config_then_machine_id_then_hostname() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mid = dir.path().join("machine-id");
        std::fs::write(&mid, "0123abcd\n").expect("write");
        assert_eq!(resolve_host_id(Some("cfg"), &mid, "h"), "cfg");
        assert_eq!(resolve_host_id(None, &mid, "h"), "0123abcd");
        std::fs::write(&mid, "  \n").expect("write");
        assert_eq!(resolve_host_id(None, &mid, "h"), "h");
        assert_eq!(resolve_host_id(None, &dir.path().join("absent"), "h"), "h");
    }

    #[test]
    fn identity_carries_config_and_machine_facts() {
        let config = HostConfig {
            id: Some("kiosk-1".into()),
            hostname: Some("till-3".into()),
            labels: [("store".to_owned(), "0042".to_owned())]
                .into_iter()
                .collect(),
        };
        let a = host_identity(&config).expect("identity");
        let b = host_identity(&config).expect("identity");
        assert_eq!(a.host_id, "kiosk-1");
        assert_eq!(a.hostname, "till-3");
        assert_eq!(a.labels.get("store").map(String::as_str), Some("0042"));
        assert_eq!(a.sensor_version, env!("CARGO_PKG_VERSION"));
        assert!(!a.kernel_release.is_empty());
        assert!(!a.sensor_instance_id.is_empty());
        assert_ne!(
            a.sensor_instance_id, b.sensor_instance_id,
            "new id per start"
        );
        let from_machine = host_identity(&HostConfig::default()).expect("identity");
        assert!(!from_machine.hostname.is_empty());
        assert!(!from_machine.host_id.is_empty());
    }
}
