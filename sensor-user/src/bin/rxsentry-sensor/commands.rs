//! The subcommands that act without the daemon: allowlist policy tools and
//! the local isolation commands (which work on the pinned state directly,
//! daemon up or down).

use std::path::{Path, PathBuf};

use anyhow::bail;
use proto::control::v1::IsolationStatus;
use sensor_user::{
    config::{Config, IsolationConfig},
    hooks::{HookConfig, ProcessHooks},
    isolation::{self, kernel::IsolationKernel},
    policy::{self, compile::CompiledPolicy, pins},
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

/// `allowlist status`: what the kernel enforces from the pins.
pub fn allowlist_status(config: &Config) -> anyhow::Result<()> {
    let dir = &config.policy.pin_dir;
    let status = pins::status(dir)?;
    println!("pin_dir: {}", dir.display());
    match status.link {
        Some(ids) => println!(
            "enforcing: yes\nverdict_link_id: {}\nverdict_program_id: {}",
            ids.link, ids.program
        ),
        None => println!("enforcing: no (no verdict link pinned)"),
    }
    match status.state {
        Some(state) => println!(
            "mode: {}\ngeneration: {}\nscoped: {}\nallowed_files: {}",
            match state.mode {
                sensor_common::mode::MONITOR => "monitor",
                sensor_common::mode::ENFORCE => "enforce",
                _ => "off",
            },
            state.generation,
            if state.scoped != 0 { "yes" } else { "no" },
            status.allowed_files
        ),
        None => println!("maps: none pinned"),
    }
    Ok(())
}

/// `allowlist detach`: removes every pin; exec is no longer checked.
pub fn allowlist_detach(config: &Config) -> anyhow::Result<()> {
    let dir = &config.policy.pin_dir;
    let n = pins::detach(dir)?;
    println!(
        "removed {n} pins under {}: exec is not checked until a sensor starts again",
        dir.display()
    );
    Ok(())
}

/// `allowlist apply`: enforcement from the pins alone, without the daemon.
pub fn allowlist_apply(config: &Config) -> anyhow::Result<()> {
    let Some(path) = &config.policy.path else {
        bail!("no policy configured (policy.path)");
    };
    let dir = &config.policy.pin_dir;
    if let Some(ids) = pins::pinned_link(dir)? {
        bail!(
            "{}: a verdict link is already pinned (link {}): the running or next sensor owns the policy; reload it with SIGHUP",
            dir.display(),
            ids.link
        );
    }
    let compiled = policy::manager::load(path)?;
    let mut hooks = ProcessHooks::load_and_attach(&HookConfig::verdict_only(config))?;
    let mut maps = hooks.take_policy_maps()?;
    let generation = maps.apply(&compiled, path)?;
    let ids = hooks.pin_verdict(dir)?;
    print_policy_summary(path, &compiled);
    println!(
        "pinned in {}: generation {generation}, backend {}, link {}, program {}",
        dir.display(),
        hooks.allowlist_backend(),
        ids.link,
        ids.program
    );
    Ok(())
}
