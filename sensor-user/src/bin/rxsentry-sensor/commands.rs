//! The subcommands that act without the daemon: allowlist policy tools and
//! the local isolation commands (which work on the pinned state directly,
//! daemon up or down).

use std::path::{Path, PathBuf};

use anyhow::bail;
use proto::control::v1::IsolationStatus;
use sensor_user::{
    config::{Config, IsolationConfig},
    isolation::{self, kernel::IsolationKernel},
    policy::{self, compile::CompiledPolicy},
};

/// `policy generate`: a starting policy for what is installed.
pub fn policy_generate(dpkg: bool, roots: &[PathBuf], mode: &str) -> anyhow::Result<()> {
    if !dpkg && roots.is_empty() {
        bail!("nothing to generate from: give --dpkg and/or --root DIR");
    }
    let (mut files, mut unreadable) = policy::generate::root_executables(roots);
    if dpkg {
        files.extend(policy::generate::dpkg_executables(Path::new(
            "/var/lib/dpkg/info",
        ))?);
    }
    let (text, failed) = policy::generate::render(&files, mode);
    unreadable.extend(failed);
    print!("{text}");
    for s in unreadable {
        eprintln!("not in the policy: {s}");
    }
    Ok(())
}

/// `policy check`: validates and hashes a policy file.
pub fn policy_check(path: &Path) -> anyhow::Result<()> {
    let compiled = policy::manager::load(path)?;
    print_policy_summary(path, &compiled);
    for s in &compiled.not_allowed {
        println!("not allowed: {s}");
    }
    Ok(())
}

/// `--check-config`: the configuration, and its policy if it names one.
pub fn check_config(config: &Config) -> anyhow::Result<()> {
    if let Some(path) = &config.policy.path {
        print_policy_summary(path, &policy::manager::load(path)?);
    }
    println!("configuration is valid");
    Ok(())
}

fn print_policy_summary(path: &Path, policy: &CompiledPolicy) {
    println!(
        "policy {}: mode {}, {} files allowed, {} not allowed",
        path.display(),
        policy.mode.as_str(),
        policy.entries.len(),
        policy.not_allowed.len()
    );
}

/// `local:<user>`: the user behind sudo if any, else the caller's name.
pub fn local_requester() -> String {
    let user = std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| format!("uid{}", nix::unistd::getuid()));
    format!("local:{user}")
}

fn enabled_isolation(config: &Config) -> anyhow::Result<&IsolationConfig> {
    if !config.isolation.enabled {
        bail!("network isolation is disabled on this sensor (set isolation.enabled = true)");
    }
    Ok(&config.isolation)
}

/// The local isolate/release: straight on the pinned maps and the state
/// file; the audit event is spooled for the daemon to send.
pub fn isolation_change(config: &Config, change: isolation::Change) -> anyhow::Result<()> {
    let iso_config = enabled_isolation(config)?;
    let mut iso = isolation::Isolation::open(iso_config, &config.collector.endpoint)?;
    match iso.apply(&change) {
        Ok(Some(event)) => {
            isolation::spool::write(&iso_config.state_dir, &event)?;
        }
        Ok(None) => println!("nothing to re-apply"),
        Err(e) => {
            let _ = isolation::spool::write(&iso_config.state_dir, &iso.failure_event(&change, &e));
            return Err(e.into());
        }
    }
    print_status(&iso.status()?);
    Ok(())
}

fn print_status(s: &IsolationStatus) {
    println!(
        "isolated: {}\nby: {}\nreason: {}\nchanged_at_unix_ms: {}\ninterfaces: {}",
        if s.isolated { "yes" } else { "no" },
        s.requester,
        s.reason,
        s.changed_at_unix_ms,
        s.interfaces.join(" ")
    );
}

/// `isolation status`: the state, the interfaces covered and the counters.
pub fn isolation_status(config: &Config) -> anyhow::Result<()> {
    let iso_config = enabled_isolation(config)?;
    let kernel = IsolationKernel::open(&iso_config.pin_dir, iso_config.tc_attach)?;
    let file = isolation::PersistedState::load(&iso_config.state_dir)?;
    let (dropped, allowed, first_drop) = kernel.stats()?;
    print_status(&IsolationStatus {
        isolated: kernel.state()?.isolated != 0,
        requester: file.requester,
        reason: file.reason,
        changed_at_unix_ms: file.changed_at_unix_ms,
        interfaces: kernel.attached()?,
    });
    let (runs, run_ns) = isolation::kernel::program_stats();
    println!(
        "dropped_packets: {dropped}\nallowed_packets: {allowed}\nfirst_drop_boottime_ns: {first_drop}\nprogram_runs: {runs}\nprogram_run_ns: {run_ns}"
    );
    Ok(())
}

/// `isolation detach`: emergency removal of every pin.
pub fn isolation_detach(config: &Config) -> anyhow::Result<()> {
    let iso_config = enabled_isolation(config)?;
    let n = isolation::kernel::detach_all(&iso_config.pin_dir)?;
    println!(
        "removed {n} pins under {}: nothing is filtered now",
        iso_config.pin_dir.display()
    );
    Ok(())
}
