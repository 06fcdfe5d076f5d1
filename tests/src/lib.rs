//! Harness for the integration tests and `cargo xtask bench`: starts the
//! real `rxsentry-collector` and `rxsentry-sensor` binaries (built by `cargo
//! xtask build`), subscribes to the collector over gRPC, and cleans
//! everything up on drop, even when a test fails.
//!
//! The tests need root (they load eBPF programs) and share kernel state, so
//! they run with `--test-threads=1` (`cargo xtask test` does this).

use anyhow::Context as _;

pub mod access;
pub mod attack;
pub mod cgroup;
pub mod exe;
pub mod kernel;
pub mod mounts;
pub mod netns;
pub mod open_hook;
pub mod pins;
pub mod ports;
pub mod procs;
pub mod root_only;
pub mod spool;
pub mod stream;

pub use access::CollectorAccess;
pub use open_hook::HeldOpenHook;
pub use procs::{
    Collector, CollectorState, InNetns, Process, Sensor, SensorCommand, SensorOptions, Stderr,
    bin_path, collector_operator_toml, collector_section, metrics_addr_in, scrape_metrics,
    sensor_with_config,
};
pub use stream::Subscription;

/// A marker unique to one test run, to find the test's own events among the
/// whole machine's.
pub fn marker(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// The sensor's programs still loaded, waiting up to 5 s: the kernel frees a
/// program after an RCU grace period, not the instant its last fd closes.
pub async fn sensor_programs_after_exit() -> anyhow::Result<Vec<String>> {
    for _ in 0..50 {
        let loaded = sensor_programs_loaded()?;
        if loaded.is_empty() {
            return Ok(loaded);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    sensor_programs_loaded()
}

/// Names of the sensor's programs the kernel has loaded now. Every program
/// of the sensor's eBPF object counts (as `rxsentry-probe --programs` lists
/// them, from the object itself), isolation's included, compared as the
/// kernel stores names: cut to BPF_OBJ_NAME_LEN - 1 = 15 bytes.
pub fn sensor_programs_loaded() -> anyhow::Result<Vec<String>> {
    let ours = object_program_names()?;
    let mut found = Vec::new();
    for program in aya::programs::loaded_programs() {
        let program = program?;
        let name = program.name_as_str().unwrap_or_default();
        if ours.iter().any(|ours| ours == name) {
            found.push(name.to_owned());
        }
    }
    Ok(found)
}

/// Every program name of the sensor's eBPF object, cut as the kernel cuts
/// them; read once from the probe binary.
fn object_program_names() -> anyhow::Result<&'static [String]> {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    if let Some(names) = NAMES.get() {
        return Ok(names);
    }
    let probe = bin_path("rxsentry-probe");
    let out = std::process::Command::new(&probe)
        .arg("--programs")
        .output()
        .with_context(|| format!("running {} --programs", probe.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} --programs: {}",
        probe.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|name| name.chars().take(15).collect())
        .collect();
    // Far more than a handful: the list comes from the object, not a hand list.
    anyhow::ensure!(names.len() > 20, "too few programs listed: {names:?}");
    Ok(NAMES.get_or_init(|| names))
}
