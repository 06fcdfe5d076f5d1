//! `[metrics]`: the Prometheus endpoint (docs/metrics.md).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Deserialize;

/// The default endpoint: loopback only, for a local agent and
/// `rxsentry-sensor status`.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9737);

/// `[metrics]` of the sensor config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Off: no listener at all (and `status` has nothing to read).
    pub enabled: bool,
    /// Where `GET /metrics` is served. Plain HTTP without authentication:
    /// an address other than loopback shows the figures to the network.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: DEFAULT_METRICS_LISTEN,
        }
    }
}
