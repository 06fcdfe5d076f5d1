//! `[isolation]`: where the isolation state is pinned and kept, and what an
//! isolated terminal may still reach besides its collector.

use std::{net::IpAddr, path::PathBuf};

use serde::Deserialize;

use super::ConfigError;

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
    /// How the TC programs are attached.
    pub tc_attach: TcAttach,
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
            tc_attach: TcAttach::Auto,
            allow: Vec::new(),
        }
    }
}

/// `isolation.tc_attach`: how the TC programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcAttach {
    /// TCX links (pinned) on Linux 6.6+, else clsact filters via netlink.
    #[default]
    Auto,
    /// Always clsact filters via netlink, as on kernels before 6.6.
    Netlink,
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
    /// This terminal's port (egress: source, ingress: destination); 0 or
    /// absent: any local port. Needs protocol tcp or udp.
    #[serde(default)]
    pub local_port: u16,
    /// Absent: any.
    #[serde(default)]
    pub protocol: AllowProtocol,
}

/// `protocol` of an `[[isolation.allow]]` entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowProtocol {
    Tcp,
    Udp,
    #[default]
    Any,
}

impl AllowProtocol {
    /// The IP protocol number the kernel programs compare (0: any).
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => proto_number::TCP,
            Self::Udp => proto_number::UDP,
            Self::Any => proto_number::ANY,
        }
    }
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
        let proto = self.protocol.number();
        if address.is_none() && self.port == 0 {
            return Err("address \"any\" needs a port: it would allow everything".to_owned());
        }
        if proto == proto_number::ANY && self.port != 0 {
            return Err("a port needs protocol \"tcp\" or \"udp\"".to_owned());
        }
        if proto == proto_number::ANY && self.local_port != 0 {
            return Err("local_port needs protocol \"tcp\" or \"udp\"".to_owned());
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

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(c.isolation.allow[2].protocol, AllowProtocol::Any);
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

    #[test]
    fn allow_rules_are_checked() {
        let rule = |address: &str, port, protocol| AllowRule {
            address: address.into(),
            port,
            local_port: 0,
            protocol,
        };
        use AllowProtocol::{Any, Udp};
        assert_eq!(rule("any", 67, Udp).parse().unwrap(), (None, 17));
        assert!(rule("any", 0, Udp).parse().is_err());
        assert!(rule("10.0.0.1", 53, Any).parse().is_err());
        assert!(rule("10.0.0.x", 53, Udp).parse().is_err());
        let e = Config::from_toml_str(
            "[isolation]\nallow = [{ address = \"10.0.0.1\", port = 53, protocol = \"sctp\" }]",
        )
        .expect_err("sctp");
        assert!(e.to_string().contains("sctp"), "{e}");
        assert_eq!(
            rule("fd00::1", 0, Any).parse().unwrap(),
            (Some("fd00::1".parse().unwrap()), 0)
        );
    }

    #[test]
    fn local_port_narrows_a_rule_and_needs_tcp_or_udp() {
        let c = Config::from_toml_str(
            r#"
            [isolation]
            allow = [
              { address = "any", port = 67, local_port = 68, protocol = "udp" },
              { address = "fd00::53", port = 53, protocol = "tcp" },
              { address = "10.0.0.9", local_port = 8443, protocol = "tcp" },
            ]
            "#,
        )
        .expect("valid");
        let allow = &c.isolation.allow;
        assert_eq!((allow[0].port, allow[0].local_port), (67, 68));
        assert_eq!(allow[0].parse().unwrap(), (None, 17));
        // Absent: any local port, as before the key existed.
        assert_eq!(allow[1].local_port, 0);
        assert_eq!((allow[2].port, allow[2].local_port), (0, 8443));

        // A local port without tcp/udp would be meaningless for ICMP and
        // fragments; refused rather than silently widened or ignored.
        for (text, why) in [
            (
                r#"{ address = "10.0.0.1", port = 53, protocol = "udp" },
                   { address = "10.0.0.1", local_port = 68 }"#,
                "local_port needs protocol",
            ),
            (
                r#"{ address = "10.0.0.1", port = 53, protocol = "udp" },
                   { address = "10.0.0.1", local_port = 68, protocol = "any" }"#,
                "local_port needs protocol",
            ),
            // A local port alone does not make "any address" narrow.
            (
                r#"{ address = "10.0.0.1", port = 53, protocol = "udp" },
                   { address = "any", local_port = 68, protocol = "udp" }"#,
                "needs a port",
            ),
        ] {
            let text = format!("[isolation]\nallow = [{text}]");
            let e = Config::from_toml_str(&text).expect_err(&text);
            assert_eq!(e.key(), Some("isolation.allow[1]"), "{text}: {e}");
            assert!(e.to_string().contains(why), "{text}: {e}");
        }
        for bad in [
            "local_port = 65536",
            "local_port = -1",
            "local_port = \"68\"",
        ] {
            let text = format!(
                "[isolation]\nallow = [{{ address = \"any\", port = 67, {bad}, protocol = \"udp\" }}]"
            );
            let e = Config::from_toml_str(&text).expect_err(&text);
            assert!(e.to_string().contains("local_port"), "{text}: {e}");
        }
        let e = Config::from_toml_str(
            "[isolation]\nallow = [{ address = \"any\", port = 67, localport = 68, protocol = \"udp\" }]",
        )
        .expect_err("typo");
        assert!(e.to_string().contains("localport"), "{e}");
    }

    #[test]
    fn tc_attach_is_auto_or_netlink() {
        let c = Config::from_toml_str("[isolation]\ntc_attach = \"netlink\"").expect("valid");
        assert_eq!(c.isolation.tc_attach, TcAttach::Netlink);
        assert_eq!(Config::default().isolation.tc_attach, TcAttach::Auto);
        let e = Config::from_toml_str("[isolation]\ntc_attach = \"tcx\"").expect_err("tcx");
        assert!(e.to_string().contains("tc_attach"), "{e}");
    }
}
