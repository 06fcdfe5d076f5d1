//! The sensor's configuration file (TOML). Every section is declared here
//! (one file per larger section) and this module imports no other part of
//! the daemon: the parts read their settings from it, never the reverse.
//!
//! Every table refuses unknown keys, so a typo is an error instead of a
//! silently ignored setting. Every key has a default; the documented example
//! (`config/rxsentry-sensor.example.toml`) spells out exactly those defaults,
//! which a test checks. Values are range-checked after parsing, and every
//! error names the offending key.

use std::{
    collections::BTreeMap,
    fmt::Display,
    path::{Path, PathBuf},
};

use serde::Deserialize;

mod detection;
mod isolation;
mod metrics;
mod network;
mod response;
mod self_protection;
mod spool;
pub use detection::{DetectionConfig, YaraConfig};
pub use isolation::{AllowProtocol, AllowRule, IsolationConfig, TcAttach, proto_number};
pub use metrics::{DEFAULT_METRICS_LISTEN, MetricsConfig};
pub use network::{NetworkConfig, RemotePrefix, RemoteRule};
pub use response::{ResponseAction, ResponseRule, Signal};
pub use self_protection::SelfProtectionConfig;
pub use spool::{SpoolConfig, SpoolFsync};

/// The documented example file, identical in meaning to [`Config::default`].
pub const EXAMPLE_TOML: &str = include_str!("../../config/rxsentry-sensor.example.toml");

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Syntax error, wrong type or unknown key; the message has key and line.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// A value out of its range.
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    /// One of the above, in a file.
    #[error("config file {path}: {inner}")]
    InFile {
        path: PathBuf,
        inner: Box<ConfigError>,
    },
}

impl ConfigError {
    /// The dotted key a range error is about (`batching.max_events`).
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            Self::InFile { inner, .. } => inner.key(),
            Self::Read { .. } | Self::Parse(_) => None,
        }
    }
}

/// The whole sensor configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub host: HostConfig,
    pub collector: CollectorConfig,
    pub batching: BatchingConfig,
    /// `[spool]`: sealed batches on disk until acknowledged.
    pub spool: SpoolConfig,
    pub kernel: KernelConfig,
    pub hashing: HashingConfig,
    pub process_table: ProcessTableConfig,
    pub pipeline: PipelineConfig,
    pub policy: PolicyConfig,
    pub files: FilesConfig,
    pub log: LogConfig,
    pub network: NetworkConfig,
    /// `[isolation]`: network containment (see docs/isolation.md).
    pub isolation: IsolationConfig,
    /// `[[response]]`: detection rules and the action each triggers.
    pub response: Vec<ResponseRule>,
    /// `[detection]`: Sigma rules (see docs/detection.md).
    pub detection: DetectionConfig,
    /// `[metrics]`: the Prometheus endpoint (see docs/metrics.md).
    pub metrics: MetricsConfig,
    /// `[self_protection]`: the BPF-LSM write guard.
    pub self_protection: SelfProtectionConfig,
}

/// `[files]`: file telemetry on watched paths, filtered in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    pub enabled: bool,
    /// Watched files and directory trees.
    pub watch: Vec<WatchRule>,
    /// Subtrees of watched trees that are never reported.
    pub exclude_paths: Vec<PathBuf>,
    /// Executables whose file activity is never reported.
    pub exclude_processes: Vec<PathBuf>,
    /// Seconds between re-reads of the watched set (paths that appeared,
    /// files replaced by rename). 0: only at start and SIGHUP.
    pub refresh_seconds: u64,
    /// Repeats of one successful open (same process, file, operation and
    /// flags) inside this window are counted in the kernel and reported as
    /// one summary event per window, instead of one event each. 0: every
    /// open is its own event.
    pub open_repeat_window_ms: u64,
    /// Bound of the kernel's map of watched files by identity (device,
    /// inode): every file under a watched tree, so a hard link made outside
    /// the tree is still recognised. Files beyond it are counted
    /// (`file_identity_overflow`) and logged, never silently left out.
    pub identity_max_entries: u32,
}

/// One `[[files.watch]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchRule {
    /// Absolute path; a `*` in the last component matches names there.
    pub path: String,
    /// Operations reported (see [`FILE_OPS`]); empty or absent: all.
    #[serde(default)]
    pub ops: Vec<String>,
}

/// Names of file operations in `[[files.watch]].ops`, with their kernel op.
pub const FILE_OPS: &[(&str, u32)] = &[
    ("read", sensor_common::file_op::OPEN_READ),
    ("write", sensor_common::file_op::OPEN_WRITE),
    ("unlink", sensor_common::file_op::UNLINK),
    ("rename", sensor_common::file_op::RENAME),
    ("chmod", sensor_common::file_op::CHMOD),
    ("chown", sensor_common::file_op::CHOWN),
    ("exec", sensor_common::file_op::EXEC),
    ("link", sensor_common::file_op::LINK),
];

impl WatchRule {
    fn new(path: &str, ops: &[&str]) -> Self {
        Self {
            path: path.to_owned(),
            ops: ops.iter().map(|op| (*op).to_owned()).collect(),
        }
    }

    /// The kernel's op mask; names were checked by [`Config::validate`].
    pub fn op_mask(&self) -> u32 {
        if self.ops.is_empty() {
            return sensor_common::file_op::ALL;
        }
        self.ops
            .iter()
            .filter_map(|name| FILE_OPS.iter().find(|(n, _)| n == name))
            .fold(0, |mask, (_, op)| mask | (1 << op))
    }
}

impl Default for FilesConfig {
    fn default() -> Self {
        const CHANGES: &[&str] = &["write", "unlink", "rename", "chmod", "chown", "link"];
        Self {
            enabled: true,
            watch: vec![
                WatchRule::new("/var/lib/pharmacy", &[]),
                WatchRule::new("/opt/pos", CHANGES),
                WatchRule::new("/opt/dispensing", CHANGES),
                WatchRule::new("/etc/passwd", CHANGES),
                WatchRule::new("/etc/shadow", &[]),
                WatchRule::new("/etc/sudoers*", &[]),
            ],
            exclude_paths: Vec::new(),
            exclude_processes: Vec::new(),
            refresh_seconds: 30,
            open_repeat_window_ms: 1000,
            identity_max_entries: sensor_common::file::WATCHED_INODE_ENTRIES,
        }
    }
}

impl FilesConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (i, rule) in self.watch.iter().enumerate() {
            let key = format!("files.watch[{i}].path");
            check_absolute(&key, Path::new(&rule.path))?;
            let (dir, last) = rule.path.rsplit_once('/').unwrap_or_default();
            if dir.contains('*') || last.matches('*').count() > 1 {
                return Err(invalid(
                    &key,
                    format!(
                        "only one `*`, in the last component, is supported: {:?}",
                        rule.path
                    ),
                ));
            }
            for op in &rule.ops {
                if !FILE_OPS.iter().any(|(name, _)| name == op) {
                    let names: Vec<_> = FILE_OPS.iter().map(|(n, _)| *n).collect();
                    return Err(invalid(
                        &format!("files.watch[{i}].ops"),
                        format!(
                            "unknown operation {op:?}; expected one of {}",
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
        for (i, path) in self.exclude_paths.iter().enumerate() {
            check_absolute(&format!("files.exclude_paths[{i}]"), path)?;
        }
        for (i, path) in self.exclude_processes.iter().enumerate() {
            check_absolute(&format!("files.exclude_processes[{i}]"), path)?;
        }
        in_range("files.refresh_seconds", self.refresh_seconds, 0, 86_400)?;
        in_range(
            "files.identity_max_entries",
            u64::from(self.identity_max_entries),
            1,
            4_194_304,
        )?;
        in_range(
            "files.open_repeat_window_ms",
            self.open_repeat_window_ms,
            0,
            60_000,
        )
    }
}

fn check_absolute(key: &str, path: &Path) -> Result<(), ConfigError> {
    let text = path.to_string_lossy();
    if !path.is_absolute() || text.contains("/../") || text.ends_with("/..") {
        return Err(invalid(
            key,
            format!("must be an absolute path without `..`: {text:?}"),
        ));
    }
    Ok(())
}

/// `[policy]`: application allowlisting.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Allowlist policy file; None: no allowlisting (every exec allowed).
    pub path: Option<PathBuf>,
    /// bpffs directory holding the verdict program's link and the policy
    /// maps, so enforcement outlives the daemon (docs/allowlisting.md).
    pub pin_dir: PathBuf,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            path: None,
            pin_dir: PathBuf::from("/sys/fs/bpf/rxsentry/allowlist"),
        }
    }
}

/// `[host]`: who this sensor says it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// None: /etc/machine-id, else the hostname (see `identity`).
    pub id: Option<String>,
    /// None: the kernel's hostname.
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// `[collector]`: where batches go.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    pub endpoint: String,
    pub connect_timeout_ms: u64,
    pub max_inflight_batches: usize,
    /// The CA the collector's certificate must chain to.
    pub ca_file: PathBuf,
    /// This sensor's certificate (it carries the host id) and its key (0600).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The name the collector's certificate must carry, when the endpoint's
    /// host is not it (e.g. an IP).
    pub server_name: Option<String>,
    /// Plaintext `http://`, no certificates: refused unless the endpoint is
    /// a loopback address.
    pub insecure_plaintext: bool,
}

/// Where `rxsentry-collector pki issue-sensor` output goes on a kiosk.
pub const TLS_DIR: &str = "/etc/rxsentry/tls";

impl Default for CollectorConfig {
    fn default() -> Self {
        let tls = Path::new(TLS_DIR);
        Self {
            endpoint: "https://127.0.0.1:50051".to_owned(),
            connect_timeout_ms: 5_000,
            max_inflight_batches: 64,
            ca_file: tls.join("ca.pem"),
            cert_file: tls.join("sensor.pem"),
            key_file: tls.join("sensor.key"),
            server_name: None,
            insecure_plaintext: false,
        }
    }
}

/// `[batching]`: when a batch is sealed and how it is compressed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingConfig {
    pub max_events: usize,
    pub max_delay_ms: u64,
    pub zstd_level: i32,
    pub queue_capacity_batches: usize,
    /// An empty batch (a heartbeat) is sealed when nothing was sealed for
    /// this long, so the collector can tell an idle sensor from a dead one.
    pub heartbeat_ms: u64,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_events: 256,
            max_delay_ms: 500,
            zstd_level: 3,
            queue_capacity_batches: 1024,
            heartbeat_ms: 30_000,
        }
    }
}

/// `[kernel]`: sizes handed to the eBPF maps (read by `hooks`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KernelConfig {
    pub process_ringbuf_bytes: u32,
    pub file_ringbuf_bytes: u32,
    pub net_ringbuf_bytes: u32,
    /// Let the open programs read file fields by plain typed loads where
    /// the kernel allows it (`bpf_rdonly_cast`, Linux 6.2+); false: helper
    /// reads on every kernel (slower; an escape hatch and an A/B switch).
    pub typed_file_reads: bool,
    /// Decide opens with `fexit` on `do_filp_open` where the kernel allows
    /// trampolines (no syscall tracepoint on the open path; io_uring's
    /// opens go through it too); false: the open syscalls' exit
    /// tracepoints always.
    pub fexit_file_opens: bool,
    /// Report successful opens from BPF-LSM `file_open` where BPF-LSM
    /// runs: every open that reaches a file, io_uring's, opens by handle
    /// and a stacked filesystem's opens of its layers included; false:
    /// the open hook above reports them all (those it does not see are
    /// missed).
    pub lsm_file_opens: bool,
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            process_ringbuf_bytes: 4 << 20,
            file_ringbuf_bytes: 2 << 20,
            net_ringbuf_bytes: 1 << 20,
            typed_file_reads: true,
            fexit_file_opens: true,
            lsm_file_opens: true,
        }
    }
}

/// `[hashing]`: SHA-256 of executed files.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashingConfig {
    pub max_file_bytes: u64,
    pub cache_entries: usize,
}

impl Default for HashingConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: 256 << 20,
            cache_entries: 8192,
        }
    }
}

/// `[process_table]`: the userspace mirror of live processes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessTableConfig {
    pub max_entries: usize,
    pub lineage_depth: usize,
}

impl Default for ProcessTableConfig {
    fn default() -> Self {
        Self {
            max_entries: 65_536,
            lineage_depth: 8,
        }
    }
}

/// `[pipeline]`: queue between the ring buffer reader and enrichment.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub event_queue_capacity: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            event_queue_capacity: 65_536,
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing_subscriber::EnvFilter` directive.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file; errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|e| ConfigError::InFile {
            path: path.to_owned(),
            inner: Box::new(e),
        })
    }

    /// Parses and validates a config from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Range checks that serde's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.host.validate()?;
        let c = &self.collector;
        check_endpoint(&c.endpoint)?;
        check_transport(c)?;
        in_range(
            "collector.connect_timeout_ms",
            c.connect_timeout_ms,
            1,
            600_000,
        )?;
        in_range(
            "collector.max_inflight_batches",
            c.max_inflight_batches,
            1,
            65_536,
        )?;
        let b = &self.batching;
        in_range("batching.max_events", b.max_events, 1, 65_536)?;
        in_range("batching.max_delay_ms", b.max_delay_ms, 1, 60_000)?;
        in_range("batching.zstd_level", b.zstd_level, 1, 19)?;
        in_range(
            "batching.queue_capacity_batches",
            b.queue_capacity_batches,
            1,
            1_000_000,
        )?;
        in_range("batching.heartbeat_ms", b.heartbeat_ms, 100, 3_600_000)?;
        self.spool.validate()?;
        check_ringbuf(
            "kernel.process_ringbuf_bytes",
            self.kernel.process_ringbuf_bytes,
        )?;
        check_ringbuf("kernel.file_ringbuf_bytes", self.kernel.file_ringbuf_bytes)?;
        check_ringbuf("kernel.net_ringbuf_bytes", self.kernel.net_ringbuf_bytes)?;
        let h = &self.hashing;
        in_range("hashing.max_file_bytes", h.max_file_bytes, 1, 64 << 30)?;
        in_range("hashing.cache_entries", h.cache_entries, 1, 1_000_000)?;
        let p = &self.process_table;
        in_range("process_table.max_entries", p.max_entries, 1, 4_194_304)?;
        in_range("process_table.lineage_depth", p.lineage_depth, 0, 64)?;
        let q = self.pipeline.event_queue_capacity;
        in_range("pipeline.event_queue_capacity", q, 1, 16 << 20)?;
        self.files.validate()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", format!("not a tracing filter: {e}")));
        }
        self.network.validate()?;
        self.isolation.validate()?;
        check_absolute("policy.pin_dir", &self.policy.pin_dir)?;
        self.detection.validate()?;
        for (i, rule) in self.response.iter().enumerate() {
            rule.validate(i)?;
            if !self.detection.enabled {
                return Err(invalid(
                    &format!("response[{i}]"),
                    "response rules are detection rules: they need detection.enabled = true",
                ));
            }
            if rule.action == ResponseAction::Isolate && !self.isolation.enabled {
                return Err(invalid(
                    &format!("response[{i}]"),
                    "action \"isolate\" needs isolation.enabled = true",
                ));
            }
        }
        Ok(())
    }
}

impl HostConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.id {
            check_name("host.id", id)?;
        }
        if let Some(hostname) = &self.hostname {
            check_name("host.hostname", hostname)?;
        }
        for (key, value) in &self.labels {
            if key.is_empty() || key.chars().any(char::is_control) {
                return Err(invalid(
                    "host.labels",
                    format!("label name {key:?} must be non-empty without control characters"),
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(invalid(
                    &format!("host.labels.{key}"),
                    "must not contain control characters",
                ));
            }
        }
        Ok(())
    }
}

/// Ring buffer sizes: the kernel wants a power of two, at least a page.
fn check_ringbuf(key: &str, ring: u32) -> Result<(), ConfigError> {
    in_range(key, ring, 4096, 1 << 30)?;
    if !ring.is_power_of_two() {
        return Err(invalid(
            key,
            format!("must be a power of two (the kernel requires it), got {ring}"),
        ));
    }
    Ok(())
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn in_range<T: PartialOrd + Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            key,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(())
}

/// Ids end up in every batch and in SOC queries: keep them printable.
fn check_name(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    if value.len() > 255 || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            key,
            "must be at most 255 bytes without spaces or control characters",
        ));
    }
    Ok(())
}

/// https needs TLS; http needs `insecure_plaintext` and a loopback host.
fn check_transport(c: &CollectorConfig) -> Result<(), ConfigError> {
    const KEY: &str = "collector.endpoint";
    let https = c.endpoint.starts_with("https://");
    if c.insecure_plaintext {
        if https {
            return Err(invalid(
                "collector.insecure_plaintext",
                "is true but the endpoint is https://: use http:// for plaintext".to_owned(),
            ));
        }
        if let Err(e) = pki::tls::check_plaintext_url(&c.endpoint) {
            return Err(invalid("collector.insecure_plaintext", e.to_string()));
        }
    } else if !https {
        return Err(invalid(
            KEY,
            format!(
                "{:?} is plaintext: use https:// (mutual TLS with ca_file, cert_file, key_file), \
                 or set insecure_plaintext = true for a loopback collector",
                c.endpoint
            ),
        ));
    }
    Ok(())
}

fn check_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    const KEY: &str = "collector.endpoint";
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| {
            invalid(
                KEY,
                format!("must be an http:// or https:// URL, got {endpoint:?}"),
            )
        })?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(invalid(KEY, format!("has no host: {endpoint:?}")));
    }
    if let Err(e) = endpoint.parse::<tonic::transport::Uri>() {
        return Err(invalid(KEY, format!("not a valid URL ({e}): {endpoint:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        match Config::from_toml_str(text) {
            Ok(c) => panic!("config accepted: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn example_file_equals_the_defaults() {
        let example = Config::from_toml_str(EXAMPLE_TOML).expect("example parses");
        assert_eq!(example, Config::default());
        assert_eq!(
            Config::from_toml_str("").expect("empty parses"),
            Config::default()
        );
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::default();
        assert_eq!(c.collector.endpoint, "https://127.0.0.1:50051");
        assert!(!c.collector.insecure_plaintext);
        assert_eq!(
            c.collector.cert_file,
            Path::new("/etc/rxsentry/tls/sensor.pem")
        );
        assert_eq!(c.batching.max_events, 256);
        assert_eq!(c.batching.max_delay_ms, 500);
        assert_eq!(c.batching.zstd_level, 3);
        assert_eq!(c.batching.queue_capacity_batches, 1024);
        assert_eq!(c.batching.heartbeat_ms, 30_000);
        assert!(c.spool.enabled);
        assert_eq!(c.spool.dir, Path::new("/var/lib/rxsentry/spool"));
        assert_eq!(
            (c.spool.max_bytes, c.spool.segment_bytes),
            (256 << 20, 4 << 20)
        );
        assert_eq!(c.spool.fsync, SpoolFsync::Batch);
        assert_eq!(c.kernel.process_ringbuf_bytes, 4 * 1024 * 1024);
        assert_eq!(c.kernel.net_ringbuf_bytes, 1024 * 1024);
        assert!(c.kernel.typed_file_reads);
        assert!(c.kernel.fexit_file_opens);
        assert!(c.network.enabled);
        assert_eq!(c.network.dns_ports, [53]);
        assert_eq!(c.network.udp_dedup_window_ms, 60_000);
        assert_eq!(c.hashing.max_file_bytes, 256 * 1024 * 1024);
        assert_eq!(c.hashing.cache_entries, 8192);
        assert_eq!(c.process_table.max_entries, 65536);
        assert_eq!(c.process_table.lineage_depth, 8);
        assert_eq!(c.pipeline.event_queue_capacity, 65536);
        assert_eq!(c.log.level, "info");
        assert!(c.host.id.is_none() && c.host.hostname.is_none() && c.host.labels.is_empty());
    }

    #[test]
    fn values_and_labels_are_read() {
        let c = Config::from_toml_str(
            r#"
            [host]
            id = "kiosk-7"
            labels = { store = "0042", site = "pharmacy" }
            [collector]
            endpoint = "https://collector.example:443"
            [batching]
            max_events = 10
            "#,
        )
        .expect("valid");
        assert_eq!(c.host.id.as_deref(), Some("kiosk-7"));
        assert_eq!(c.host.labels.get("store").map(String::as_str), Some("0042"));
        assert_eq!(
            c.host.labels.get("site").map(String::as_str),
            Some("pharmacy")
        );
        assert_eq!(c.collector.endpoint, "https://collector.example:443");
        assert_eq!(c.batching.max_events, 10);
        assert_eq!(c.batching.max_delay_ms, 500, "unset keys keep defaults");
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases = [
            ("[batching]\nmax_events = 0", "batching.max_events"),
            ("[batching]\nmax_events = 65537", "batching.max_events"),
            ("[batching]\nmax_delay_ms = 0", "batching.max_delay_ms"),
            ("[batching]\nzstd_level = 20", "batching.zstd_level"),
            ("[batching]\nzstd_level = 0", "batching.zstd_level"),
            ("[batching]\nheartbeat_ms = 99", "batching.heartbeat_ms"),
            ("[spool]\ndir = \"spool\"", "spool.dir"),
            ("[spool]\nmax_bytes = 1000", "spool.max_bytes"),
            (
                "[spool]\nmax_bytes = 1048576\nsegment_bytes = 524288",
                "spool.segment_bytes",
            ),
            ("[spool]\nsegment_bytes = 1024", "spool.segment_bytes"),
            (
                "[batching]\nqueue_capacity_batches = 0",
                "batching.queue_capacity_batches",
            ),
            ("[collector]\nendpoint = \"ftp://x\"", "collector.endpoint"),
            (
                "[collector]\nendpoint = \"127.0.0.1:50051\"",
                "collector.endpoint",
            ),
            ("[collector]\nendpoint = \"http://\"", "collector.endpoint"),
            // Plaintext: only asked for, and only on loopback.
            (
                "[collector]\nendpoint = \"http://127.0.0.1:50051\"",
                "collector.endpoint",
            ),
            (
                "[collector]\nendpoint = \"http://10.0.0.1:50051\"\ninsecure_plaintext = true",
                "collector.insecure_plaintext",
            ),
            (
                "[collector]\nendpoint = \"https://127.0.0.1:1\"\ninsecure_plaintext = true",
                "collector.insecure_plaintext",
            ),
            (
                "[collector]\nconnect_timeout_ms = 0",
                "collector.connect_timeout_ms",
            ),
            (
                "[collector]\nmax_inflight_batches = 0",
                "collector.max_inflight_batches",
            ),
            (
                "[kernel]\nprocess_ringbuf_bytes = 2048",
                "kernel.process_ringbuf_bytes",
            ),
            (
                "[kernel]\nnet_ringbuf_bytes = 12288",
                "kernel.net_ringbuf_bytes",
            ),
            ("[hashing]\nmax_file_bytes = 0", "hashing.max_file_bytes"),
            ("[hashing]\ncache_entries = 0", "hashing.cache_entries"),
            (
                "[process_table]\nmax_entries = 0",
                "process_table.max_entries",
            ),
            (
                "[process_table]\nlineage_depth = 65",
                "process_table.lineage_depth",
            ),
            (
                "[pipeline]\nevent_queue_capacity = 0",
                "pipeline.event_queue_capacity",
            ),
            (
                "[files]\nopen_repeat_window_ms = 60001",
                "files.open_repeat_window_ms",
            ),
            ("[log]\nlevel = \"info,foo=notalevel\"", "log.level"),
            ("[host]\nid = \"\"", "host.id"),
            ("[host]\nhostname = \"two words\"", "host.hostname"),
            ("[host.labels]\nstore = \"a\\nb\"", "host.labels.store"),
            (
                "[detection]\nrule_dirs = [\"/etc/rules\", \"rules\"]",
                "detection.rule_dirs[1]",
            ),
            (
                "[detection.placeholders]\npos_apps = []",
                "detection.placeholders.pos_apps",
            ),
            (
                "[detection.placeholders]\n\"pos apps\" = [\"/x\"]",
                "detection.placeholders.pos apps",
            ),
            (
                "[detection.yara]\nrule_dirs = [\"yara\"]",
                "detection.yara.rule_dirs[0]",
            ),
            (
                "[detection.yara]\nmax_file_bytes = 0",
                "detection.yara.max_file_bytes",
            ),
            (
                "[detection.yara]\nqueue_capacity = 0",
                "detection.yara.queue_capacity",
            ),
            (
                "[detection.yara]\nsettle_ms = 60001",
                "detection.yara.settle_ms",
            ),
        ];
        for (text, key) in cases {
            let e = err(text);
            assert_eq!(e.key(), Some(key), "{text}: {e}");
            assert!(e.to_string().starts_with(&format!("{key}: ")), "{e}");
        }
    }

    #[test]
    fn ringbuf_size_must_be_a_power_of_two() {
        let e = err("[kernel]\nprocess_ringbuf_bytes = 12288");
        assert_eq!(e.key(), Some("kernel.process_ringbuf_bytes"));
        assert!(e.to_string().contains("power of two"), "{e}");
        let ok = Config::from_toml_str("[kernel]\nprocess_ringbuf_bytes = 65536").expect("valid");
        assert_eq!(ok.kernel.process_ringbuf_bytes, 65536);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name_and_line() {
        let e = err("[batching]\nmax_events = 5\nmax_evnets = 6\n");
        let msg = e.to_string();
        assert!(matches!(e, ConfigError::Parse(_)));
        assert!(msg.contains("max_evnets"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        let e = err("[batchin]\nmax_events = 5\n");
        assert!(e.to_string().contains("batchin"), "{e}");
        let e = err("[host]\nname = \"x\"\n");
        assert!(e.to_string().contains("name"), "{e}");
    }

    #[test]
    fn wrong_types_are_refused() {
        let e = err("[batching]\nmax_events = \"many\"\n");
        assert!(e.to_string().contains("max_events"), "{e}");
        let e = err("[kernel]\nprocess_ringbuf_bytes = -1\n");
        assert!(e.to_string().contains("process_ringbuf_bytes"), "{e}");
    }

    #[test]
    fn load_names_the_file_and_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sensor.toml");
        std::fs::write(&path, "[batching]\nzstd_level = 99\n").expect("write");
        let e = Config::load(&path).expect_err("refused");
        assert_eq!(e.key(), Some("batching.zstd_level"));
        let msg = e.to_string();
        assert!(
            msg.contains("sensor.toml") && msg.contains("batching.zstd_level"),
            "{msg}"
        );
        let missing = Config::load(dir.path().join("nope.toml")).expect_err("missing");
        assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
        std::fs::write(&path, EXAMPLE_TOML).expect("write");
        assert_eq!(Config::load(&path).expect("loads"), Config::default());
    }
}
