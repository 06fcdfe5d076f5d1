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
    /// "auto": TCX links on Linux 6.6+, else clsact filters via netlink;
    /// "netlink": always clsact filters.
    pub tc_attach: String,
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
            tc_attach: "auto".to_owned(),
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
    pub fn attach_mode(&self) -> Option<super::kernel::AttachMode> {
        match self.tc_attach.as_str() {
            "auto" => Some(super::kernel::AttachMode::Auto),
            "netlink" => Some(super::kernel::AttachMode::Netlink),
            _ => None,
        }
    }

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
        if self.attach_mode().is_none() {
            return Err(invalid(
                "isolation.tc_attach".into(),
                format!("must be \"auto\" or \"netlink\", got {:?}", self.tc_attach),
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

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn isolation_keys_are_read() {
        let c = Config::from_toml_str(
            r#"
            [isolation]
            enabled = true
            pin_dir = "/sys/fs/bpf/x"
            interface_poll_ms = 100
            allow = [
              { address = "any", port = 67, protocol = "udp" },
              { address = "192.168.1.53", port = 53, protocol = "udp" },
              { address = "fd00::53" },
            ]
            [[response]]
            name = "burst"
            on = "exec_blocked"
            threshold = 3
            within_secs = 30
            action = "isolate"
            "#,
        )
        .expect("valid");
        assert!(c.isolation.enabled);
        assert_eq!(c.isolation.interface_poll_ms, 100);
        assert_eq!(c.isolation.allow.len(), 3);
        assert_eq!(c.isolation.allow[2].protocol, "any");
        assert_eq!(c.response.len(), 1);
        assert_eq!(c.response[0].threshold, 3);
        let defaults = Config::default();
        assert!(!defaults.isolation.enabled && defaults.response.is_empty());
        assert_eq!(
            defaults.isolation.state_dir.to_str(),
            Some("/var/lib/rxsentry")
        );
    }

    #[test]
    fn bad_isolation_values_name_their_key() {
        let cases = [
            ("[isolation]\npin_dir = \"relative\"", "isolation.pin_dir"),
            ("[isolation]\nstate_dir = \"x/y\"", "isolation.state_dir"),
            (
                "[isolation]\ninterface_poll_ms = 10",
                "isolation.interface_poll_ms",
            ),
            (
                "[isolation]\nallow = [{ address = \"any\" }]",
                "isolation.allow[0]",
            ),
            (
                "[isolation]\nallow = [{ address = \"1.2.3.4\", port = 5 }]",
                "isolation.allow[0]",
            ),
            (
                "[[response]]\nname = \"r\"\non = \"exec_blocked\"\nthreshold = 1\nwithin_secs = 1\naction = \"isolate\"",
                "response[0]",
            ),
        ];
        for (text, key) in cases {
            let e = Config::from_toml_str(text).expect_err(text);
            assert_eq!(e.key(), Some(key), "{text}: {e}");
        }
        let e = Config::from_toml_str("[isolation]\nallow = [{ adress = \"1.2.3.4\" }]")
            .expect_err("typo");
        assert!(e.to_string().contains("adress"), "{e}");
    }
}
