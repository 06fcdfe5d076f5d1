//! `[isolation]`: where the isolation state is pinned and kept, and what an
//! isolated terminal may still reach besides its collector.

use std::{net::IpAddr, path::PathBuf};

use serde::Deserialize;

use crate::config::ConfigError;

/// `[isolation]` of the sensor config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IsolationConfig {
    /// Off by default: when on, the daemon attaches its (pass-through until
    /// isolated) TC programs to every interface of its network namespace.
    pub enabled: bool,
    /// Directory on a bpf filesystem for the maps and the per-interface
    /// links; they keep isolation in force while no sensor runs.
    pub pin_dir: PathBuf,
    /// Directory for the persisted state (re-applied at boot) and audit
    /// records written while the daemon was down.
    pub state_dir: PathBuf,
    /// How often the daemon looks for new interfaces to attach to.
    pub interface_poll_ms: u64,
    /// Peers still reachable while isolated; the collector endpoint always is.
    pub allow: Vec<AllowRule>,
}

impl Default for IsolationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            pin_dir: PathBuf::from("/sys/fs/bpf/rxsentry/isolation"),
            state_dir: PathBuf::from("/var/lib/rxsentry"),
            interface_poll_ms: 500,
            allow: Vec::new(),
        }
    }
}

/// One `[[isolation.allow]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// An IPv4 or IPv6 address, or "any".
    pub address: String,
    /// The peer's port; 0 or absent: any port.
    #[serde(default)]
    pub port: u16,
    /// "tcp", "udp" or "any" (absent: any).
    #[serde(default = "any")]
    pub protocol: String,
}

fn any() -> String {
    "any".to_owned()
}

/// IP protocol numbers as the kernel programs compare them.
pub mod proto_number {
    pub const ANY: u8 = 0;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

impl AllowRule {
    /// The address (None: any) and protocol number, or why they are wrong.
    pub fn parse(&self) -> Result<(Option<IpAddr>, u8), String> {
        let address = match self.address.as_str() {
            "any" => None,
            a => Some(
                a.parse::<IpAddr>()
                    .map_err(|_| format!("address {a:?} is neither an IP address nor \"any\""))?,
            ),
        };
        let proto = match self.protocol.as_str() {
            "tcp" => proto_number::TCP,
            "udp" => proto_number::UDP,
            "any" => proto_number::ANY,
            p => {
                return Err(format!(
                    "protocol {p:?} must be \"tcp\", \"udp\" or \"any\""
                ));
            }
        };
        if address.is_none() && self.port == 0 {
            return Err("address \"any\" needs a port: it would allow everything".to_owned());
        }
        if proto == proto_number::ANY && self.port != 0 {
            return Err("a port needs protocol \"tcp\" or \"udp\"".to_owned());
        }
        Ok((address, proto))
    }
}

impl IsolationConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: String| ConfigError::Invalid { key, reason };
        for (key, dir) in [
            ("isolation.pin_dir", &self.pin_dir),
            ("isolation.state_dir", &self.state_dir),
        ] {
            if !dir.is_absolute() {
                return Err(invalid(key.into(), "must be an absolute path".into()));
            }
        }
        if !(50..=60_000).contains(&self.interface_poll_ms) {
            return Err(invalid(
                "isolation.interface_poll_ms".into(),
                format!(
                    "must be between 50 and 60000, got {}",
                    self.interface_poll_ms
                ),
            ));
        }
        // Leave room for the collector's own entries.
        if self.allow.len() > 200 {
            return Err(invalid(
                "isolation.allow".into(),
                format!("at most 200 entries, got {}", self.allow.len()),
            ));
        }
        for (i, rule) in self.allow.iter().enumerate() {
            rule.parse()
                .map_err(|reason| invalid(format!("isolation.allow[{i}]"), reason))?;
        }
        Ok(())
    }
}
