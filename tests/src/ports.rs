//! Loopback ports for a server that must come back on the same address
//! (a collector stopped and restarted in an outage test).
//!
//! A port the OS gave with `bind(0)` and then released can be handed to
//! anything else at once: it is in the ephemeral range, where the kernel
//! picks every outgoing connection's local port and every other test's
//! `bind(0)`. The ports here come from below that range, which the kernel
//! never assigns by itself, so only another caller of this function could
//! take one; each is chosen at random and checked free when chosen.

use std::net::{Ipv4Addr, TcpListener};

use anyhow::Context as _;
use rand::Rng as _;

/// Lowest port handed out: above the well-known and common service ports.
const FLOOR: u16 = 20_000;

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> anyhow::Result<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .context("reading the ephemeral port range")?;
    text.split_whitespace()
        .next()
        .context("empty ip_local_port_range")?
        .parse()
        .context("ip_local_port_range")
}

/// A free loopback port outside the kernel's ephemeral range.
pub fn restartable_port() -> anyhow::Result<u16> {
    let low = ephemeral_low()?;
    anyhow::ensure!(
        low > FLOOR + 1_000,
        "the ephemeral range starts at {low}: no room below it for test ports"
    );
    let mut rng = rand::rng();
    for _ in 0..100 {
        let port = rng.random_range(FLOOR..low);
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port in {FLOOR}..{low} after 100 tries")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_free() {
        let low = ephemeral_low().unwrap();
        for _ in 0..20 {
            let port = restartable_port().unwrap();
            assert!((FLOOR..low).contains(&port), "{port}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }
}
