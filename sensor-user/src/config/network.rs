//! `[network]`: what network telemetry reports and what it leaves out.

use std::{net::IpAddr, path::PathBuf};

use serde::Deserialize;

use super::{ConfigError, in_range, invalid};

/// Most DNS ports the kernel map holds (`sensor_common::DNS_PORTS_MAX`).
const MAX_DNS_PORTS: usize = sensor_common::DNS_PORTS_MAX as usize;
/// Most rules of each kind (`sensor_common::NET_EXCLUDE_ENTRIES`).
const MAX_RULES: usize = sensor_common::NET_EXCLUDE_ENTRIES as usize;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Attach the network hooks at all.
    pub enabled: bool,
    /// UDP destination ports whose datagrams are DNS queries.
    pub dns_ports: Vec<u16>,
    /// Repeats of one (process, UDP destination) inside this window are
    /// reported once; 0 reports every datagram.
    pub udp_dedup_window_ms: u64,
    /// Local ports whose connections and datagrams are not reported.
    pub exclude_local_ports: Vec<u16>,
    /// Programs (absolute paths) whose network activity is not reported.
    pub exclude_executables: Vec<PathBuf>,
    /// Remote endpoints not reported.
    pub exclude_remote: Vec<RemoteRule>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dns_ports: vec![53],
            udp_dedup_window_ms: 60_000,
            exclude_local_ports: Vec::new(),
            exclude_executables: Vec::new(),
            exclude_remote: Vec::new(),
        }
    }
}

/// `[[network.exclude_remote]]`: an address or CIDR prefix, and a port.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteRule {
    /// "10.0.0.0/8", "192.0.2.7", "fe80::/10", "::1".
    pub address: String,
    /// 0 or absent: any port.
    #[serde(default)]
    pub port: u16,
}

/// A parsed remote prefix, IPv4 as IPv4-mapped IPv6 (the kernel's form).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemotePrefix {
    pub addr: [u8; 16],
    /// Bits of `addr` that must match (IPv4 /n becomes 96 + n).
    pub bits: u32,
    pub port: u16,
}

impl RemoteRule {
    /// Parses `address`; the error says what is wrong with it.
    pub fn prefix(&self) -> Result<RemotePrefix, String> {
        let (ip, bits) = match self.address.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (self.address.as_str(), None),
        };
        let ip: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{:?} is not an IP address or CIDR prefix", self.address))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|&b| b <= max)
                .ok_or_else(|| format!("prefix length in {:?} must be 0..={max}", self.address))?,
        };
        let (addr, bits) = match ip {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 96 + bits),
            IpAddr::V6(v6) => (v6.octets(), bits),
        };
        Ok(RemotePrefix {
            addr: mask(addr, bits),
            bits,
            port: self.port,
        })
    }
}

/// `addr` with the bits after `bits` cleared (the kernel's LPM trie wants
/// canonical keys).
fn mask(mut addr: [u8; 16], bits: u32) -> [u8; 16] {
    for (i, byte) in addr.iter_mut().enumerate() {
        let keep = bits.saturating_sub(i as u32 * 8).min(8);
        *byte &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    addr
}

impl NetworkConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.dns_ports.len() > MAX_DNS_PORTS {
            return Err(invalid(
                "network.dns_ports",
                format!(
                    "at most {MAX_DNS_PORTS} ports, got {}",
                    self.dns_ports.len()
                ),
            ));
        }
        if self.dns_ports.contains(&0) {
            return Err(invalid("network.dns_ports", "port 0 is not a port"));
        }
        in_range(
            "network.udp_dedup_window_ms",
            self.udp_dedup_window_ms,
            0,
            86_400_000,
        )?;
        if self.exclude_local_ports.len() > MAX_RULES {
            return Err(invalid(
                "network.exclude_local_ports",
                format!("at most {MAX_RULES} ports"),
            ));
        }
        if self.exclude_local_ports.contains(&0) {
            return Err(invalid(
                "network.exclude_local_ports",
                "port 0 is not a port",
            ));
        }
        if self.exclude_executables.len() > MAX_RULES {
            return Err(invalid(
                "network.exclude_executables",
                format!("at most {MAX_RULES} paths"),
            ));
        }
        if let Some(p) = self.exclude_executables.iter().find(|p| !p.is_absolute()) {
            return Err(invalid(
                "network.exclude_executables",
                format!("{} must be an absolute path", p.display()),
            ));
        }
        if self.exclude_remote.len() > MAX_RULES {
            return Err(invalid(
                "network.exclude_remote",
                format!("at most {MAX_RULES} rules"),
            ));
        }
        for (i, rule) in self.exclude_remote.iter().enumerate() {
            rule.prefix().map_err(|reason| {
                invalid(&format!("network.exclude_remote[{i}].address"), reason)
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn rule(address: &str, port: u16) -> RemoteRule {
        RemoteRule {
            address: address.to_owned(),
            port,
        }
    }

    #[test]
    fn prefixes_parse_to_the_kernel_form() {
        let p = rule("10.1.2.3/8", 443).prefix().unwrap();
        assert_eq!(p.bits, 104);
        assert_eq!(&p.addr[10..], &[0xff, 0xff, 10, 0, 0, 0]);
        assert_eq!(p.port, 443);
        let p = rule("::1", 0).prefix().unwrap();
        assert_eq!((p.bits, p.addr[15]), (128, 1));
        let p = rule("fe80::1/10", 0).prefix().unwrap();
        assert_eq!(
            (p.bits, p.addr[0], p.addr[1], p.addr[15]),
            (10, 0xfe, 0x80, 0)
        );
        assert_eq!(rule("0.0.0.0/0", 53).prefix().unwrap().bits, 96);
    }

    #[test]
    fn bad_rules_name_their_key() {
        let cases = [
            (
                "[[network.exclude_remote]]\naddress = \"10.0.0.0/33\"",
                "network.exclude_remote[0].address",
            ),
            (
                "[[network.exclude_remote]]\naddress = \"::1\"\n[[network.exclude_remote]]\naddress = \"kiosk.local\"",
                "network.exclude_remote[1].address",
            ),
            ("[network]\ndns_ports = [0]", "network.dns_ports"),
            (
                "[network]\nexclude_local_ports = [0]",
                "network.exclude_local_ports",
            ),
            (
                "[network]\nexclude_executables = [\"bin/pos\"]",
                "network.exclude_executables",
            ),
            (
                "[network]\nudp_dedup_window_ms = 86400001",
                "network.udp_dedup_window_ms",
            ),
        ];
        for (text, key) in cases {
            let e = Config::from_toml_str(text).expect_err(text);
            assert_eq!(e.key(), Some(key), "{text}: {e}");
            assert!(e.to_string().starts_with(&format!("{key}: ")), "{e}");
        }
        let e = Config::from_toml_str("[network]\ndns_port = [53]").expect_err("typo");
        assert!(e.to_string().contains("dns_port"), "{e}");
        let e = Config::from_toml_str("[network]\ndns_ports = [70000]").expect_err("range");
        assert!(e.to_string().contains("dns_ports"), "{e}");
    }

    #[test]
    fn rules_are_read() {
        let c = Config::from_toml_str(
            "[network]\nexclude_local_ports = [8080]\n[[network.exclude_remote]]\naddress = \"192.0.2.0/24\"\nport = 443\n",
        )
        .expect("valid");
        assert_eq!(c.network.exclude_local_ports, [8080]);
        assert_eq!(c.network.exclude_remote, [rule("192.0.2.0/24", 443)]);
        assert!(c.network.enabled);
    }
}
