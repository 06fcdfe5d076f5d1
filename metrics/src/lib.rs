//! Prometheus metrics for the sensor and the collector, without a metrics
//! framework: both already keep their counters (atomics, snapshots), so all
//! they need is to write them in the text exposition format (version 0.0.4)
//! ([`Text`]), serve that on a local port ([`serve`]), and read it back for
//! `rxsentry-sensor status` and the tests ([`scrape`], [`parse`]).
//!
//! The listener speaks just enough HTTP/1.x for Prometheus and curl: one
//! `GET /metrics` per connection, `Connection: close`. It is meant for
//! loopback (the default address everywhere); it has no TLS and no auth.

mod http;
mod parse;
mod text;

pub use http::{ScrapeError, listen, scrape, serve};
pub use parse::{ParseError, Sample, Samples, parse};
pub use text::{Kind, Text, Value};
