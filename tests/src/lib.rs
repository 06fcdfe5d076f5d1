//! Harness for the integration tests and `cargo xtask bench`: starts the
//! real `rxsentry-collector` and `rxsentry-sensor` binaries (built by `cargo
//! xtask build`), subscribes to the collector over gRPC, and cleans
//! everything up on drop, even when a test fails.
//!
//! The tests need root (they load eBPF programs) and share kernel state, so
//! they run with `--test-threads=1` (`cargo xtask test` does this).

pub mod cgroup;
pub mod exe;
pub mod netns;
pub mod open_hook;
pub mod procs;
pub mod stream;

pub use open_hook::HeldOpenHook;
pub use procs::{
    Collector, InNetns, Process, Sensor, SensorCommand, SensorOptions, Stderr, bin_path,
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

/// Names of the sensor's programs as the kernel lists them (truncated to
/// BPF_OBJ_NAME_LEN - 1 = 15 bytes).
pub fn sensor_programs_loaded() -> anyhow::Result<Vec<String>> {
    const OURS: [&str; 9] = [
        "sched_process_exec",
        "sched_process_fork",
        "sched_process_exit",
        "exec_verdict",
        "file_exit_open",
        "file_exit_pending",
        "file_enter_unlinkat",
        "net_sock_state",
        "hook_floor_open_exit",
    ];
    let mut found = Vec::new();
    for program in aya::programs::loaded_programs() {
        let program = program?;
        let name = program.name_as_str().unwrap_or_default().to_owned();
        if OURS
            .iter()
            .any(|ours| ours.starts_with(name.as_str()) && name.len() >= 12)
        {
            found.push(name);
        }
    }
    Ok(found)
}
