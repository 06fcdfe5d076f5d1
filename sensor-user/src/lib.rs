//! The rxsentry sensor daemon as a library: data flows
//! `hooks` (kernel programs, ring buffers) -> `events` (decode) -> `enrich`
//! (process table, hashes) -> `transport` (protobuf, batches, zstd, gRPC).
//! `policy` (exec allowlist) and `watch` (watched files) keep the kernel's
//! decision maps in sync with their configuration. `clock` turns the
//! kernel's CLOCK_BOOTTIME stamps into UTC wall time. `alerts` evaluates
//! the detection rules on enriched events; `respond` carries out what the
//! rules that fired ask for (kill, quarantine, isolate).

pub mod alerts;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod enrich;
pub mod events;
pub mod hooks;
pub mod identity;
pub mod isolation;
pub mod memory;
pub mod metrics;
pub mod object;
pub mod pipeline;
pub mod policy;
pub mod respond;
pub mod router;
pub mod rule_files;
pub mod tamper;
pub mod transport;
pub mod watch;
pub mod write_guard;
pub mod yara;
