//! Application allowlisting on the kernel the tests run on, with the
//! backend it should pick (tests/src/kernel.rs): "tracepoint + SIGKILL" on
//! the host, "lsm" in the Debian 6.1 guest of `cargo xtask vm-test`.
//! Every test scopes the policy to a cgroup it creates, so the machine
//! running the tests is never under it.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use proto::telemetry::v1::{EventKind, PolicyEvent, SubscribeRequest, event, policy_event};
use tests::{
    Collector, Sensor, SensorOptions, Subscription,
    cgroup::TestCgroup,
    kernel::{Exec, kernel, launcher_blocked},
    marker,
};

fn sha256_hex(path: &Path) -> String {
    tests::exe::sha256_of(path).expect("readable")
}

/// A scratch dir, a cgroup, and a policy file pointing at both.
struct Setup {
    dir: tempfile::TempDir,
    cgroup: TestCgroup,
    policy: PathBuf,
}

impl Setup {
    fn new(name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let cgroup = TestCgroup::new(&marker(name))?;
        let policy = dir.path().join("policy.toml");
        Ok(Self {
            dir,
            cgroup,
            policy,
        })
    }

    /// Copy of /usr/bin/touch under a new name: same code, new inode.
    fn copy_of_touch(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        tests::exe::copy_executable(Path::new("/usr/bin/touch"), &path)?;
        Ok(path)
    }

    /// A folder for a `[[trusted_root]]`, in a folder whose directories up
    /// to `/` only root may write (a trusted root under /tmp, 1777, is
    /// refused). Deleted with the returned guard.
    fn trusted_dir(&self) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
        let dir = tests::root_only::root_only_tempdir()?;
        let root = dir.path().join("bin");
        std::fs::create_dir(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        Ok((dir, root))
    }

    /// Writes a policy in `mode` allowing `allowed` (path, sha256 now).
    fn write_policy(&self, mode: &str, allowed: &[&Path], extra: &str) -> anyhow::Result<()> {
        let mut text = format!(
            "mode = \"{mode}\"\nscope_cgroups = [\"{}\"]\n{extra}\n",
            self.cgroup.path.display()
        );
        for path in allowed {
            text.push_str(&format!(
                "[[allow]]\npath = \"{}\"\nsha256 = \"{}\"\n",
                path.display(),
                sha256_hex(path)
            ));
        }
        let tmp = self.policy.with_extension("tmp");
        std::fs::File::create(&tmp)?.write_all(text.as_bytes())?;
        std::fs::rename(tmp, &self.policy)?;
        Ok(())
    }

    /// [`Self::sensor_options`] with the allowlist pinned in `pins`
    /// (which the test owns: it outlives each sensor).
    fn pinned_options(&self, pins: &Path) -> SensorOptions {
        let mut options = self.sensor_options();
        options
            .extra_config
            .push_str(&format!("pin_dir = {pins:?}\n"));
        options
    }

    /// `rxsentry-sensor allowlist ARGS` with this setup's policy pinned in
    /// `pins`, no daemon involved; its stdout (it must succeed).
    async fn allowlist(
        &self,
        collector: &Collector,
        pins: &Path,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let config = format!(
            "{}[policy]\npath = {:?}\npin_dir = {pins:?}\n",
            collector.sensor_section("test-allowlist")?,
            self.policy
        );
        let out = Sensor::with_config(config)
            .args(["allowlist"].iter().chain(args))
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "allowlist {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Asserts that `program` is killed before it runs (or runs) in the cgroup.
    fn assert_blocked(&self, program: &Path, blocked: bool, when: &str) -> anyhow::Result<()> {
        let (status, created) = self.run(program, &marker("run"))?;
        if blocked {
            assert!(
                status.blocked() && !created,
                "{} blocked {when}: {status}",
                program.display()
            );
        } else {
            assert!(
                status.success() && created,
                "{} runs {when}: {status}",
                program.display()
            );
        }
        Ok(())
    }

    fn sensor_options(&self) -> SensorOptions {
        SensorOptions {
            extra_config: format!(
                "[batching]\nmax_events = 16\nmax_delay_ms = 100\n[policy]\npath = \"{}\"\n",
                self.policy.display()
            ),
        }
    }

    /// Runs `python -c script` in the cgroup.
    fn python(&self, python: &Path, script: &str) -> anyhow::Result<std::process::ExitStatus> {
        Ok(self.cgroup.command(python).arg("-c").arg(script).status()?)
    }

    /// Runs `program <marker file>` in the cgroup; returns its status and
    /// whether the marker file exists afterwards.
    fn run(&self, program: &Path, tag: &str) -> anyhow::Result<(Exec, bool)> {
        self.run_in(&self.cgroup, program, tag)
    }

    /// [`Self::run`] in another cgroup.
    fn run_in(
        &self,
        cgroup: &TestCgroup,
        program: &Path,
        tag: &str,
    ) -> anyhow::Result<(Exec, bool)> {
        let marker_file = self.dir.path().join(format!("marker-{tag}"));
        let status = Exec::of(cgroup.command(program).arg(&marker_file).status())?;
        Ok((status, marker_file.exists()))
    }
}

fn policy_events(sub: &Subscription) -> Vec<&PolicyEvent> {
    sub.events
        .iter()
        .filter_map(|e| match e.event.as_ref()?.kind.as_ref()? {
            event::Kind::Policy(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn policy_request() -> SubscribeRequest {
    SubscribeRequest {
        kinds: vec![EventKind::Policy as i32],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_binary_is_killed_before_it_runs_and_listed_ones_run() -> anyhow::Result<()> {
    let setup = Setup::new("allow-enforce")?;
    let intruder = setup.copy_of_touch("intruder")?;
    setup.write_policy("enforce", &[Path::new("/usr/bin/touch")], "")?;
    let collector = Collector::start().await?;
    let mut sub = Subscription::open(&collector.url(), policy_request()).await?;
    let sensor = Sensor::start(&collector, setup.sensor_options()).await?;

    let (status, created) = setup.run(&intruder, "intruder")?;
    assert!(status.blocked(), "killed by SIGKILL: {status}");
    assert!(!created, "the blocked program never ran an instruction");

    let (status, created) = setup.run(Path::new("/usr/bin/touch"), "touch")?;
    assert!(
        status.success() && created,
        "allowlisted /usr/bin/touch runs: {status}"
    );

    sub.until(Duration::from_secs(20), |s| !policy_events(s).is_empty())
        .await?;
    let events = policy_events(&sub);
    assert_eq!(events.len(), 1, "one block, nothing for the allowed exec");
    let block = events[0];
    assert_eq!(block.path, intruder.display().to_string());
    assert_eq!(block.action(), policy_event::Action::Blocked);
    assert_eq!(block.reason(), policy_event::Reason::NotAllowed);
    assert_eq!(block.mode, "enforce");
    assert_eq!(block.backend, kernel().allowlist_backend());
    assert_eq!(block.rule, "not in allowlist");
    assert_eq!(block.sha256, sha256_hex(&intruder));
    assert!(block.policy_generation >= 1);
    let process = block.process.as_ref().unwrap();
    assert_eq!(process.ppid, std::process::id());
    assert!(!process.lineage.is_empty(), "parent chain reported");

    // The backend this kernel offers (tests/src/kernel.rs): lsm where
    // BPF-LSM programs load and run, else the tracepoint, with the reason.
    assert!(
        sensor.log().contains(kernel().allowlist_log()),
        "{}",
        sensor.log()
    );

    // Outside the scoped cgroup nothing is enforced.
    let outside = std::process::Command::new(&intruder)
        .arg(setup.dir.path().join("outside"))
        .status()?;
    assert!(outside.success());
    sensor.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modified_allowlisted_binary_loses_trust() -> anyhow::Result<()> {
    let setup = Setup::new("allow-modified")?;
    let tool = setup.copy_of_touch("tool")?;
    setup.write_policy("enforce", &[&tool], "")?;
    let collector = Collector::start().await?;
    let mut sub = Subscription::open(&collector.url(), policy_request()).await?;
    let sensor = Sensor::start(&collector, setup.sensor_options()).await?;

    let (status, created) = setup.run(&tool, "before")?;
    assert!(
        status.success() && created,
        "allowlisted copy runs: {status}"
    );

    // utimes to an old mtime, content untouched: ctime moves, so the next
    // exec is stopped; the sensor re-hashes, finds the policy's content and
    // gives trust back.
    let touched = std::process::Command::new("/usr/bin/touch")
        .args(["-m", "-d", "@1000000000"])
        .arg(&tool)
        .status()?;
    assert!(touched.success());
    let (status, created) = setup.run(&tool, "after-utimes")?;
    assert!(status.blocked(), "stopped after utimes: {status}");
    assert!(!created);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !setup.run(&tool, "retrusted")?.0.success() {
        assert!(
            Instant::now() < deadline,
            "trust never came back after re-hash"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sub.until(Duration::from_secs(20), |s| !policy_events(s).is_empty())
        .await?;
    assert_eq!(
        policy_events(&sub)[0].reason(),
        policy_event::Reason::Modified
    );
    sub.events.clear();

    // Append one byte: same inode, new size and ctime, new hash.
    tests::exe::append_to_executable(&tool, b"\0")?;
    assert_eq!(
        stopped_as_modified(&setup, &mut sub, &tool, "after").await?,
        tool.display().to_string(),
        "names the rule that had allowed it"
    );
    // Its new content does not hash to the policy's: once the re-hash
    // said so, it stays untrusted.
    log_shows(&sensor, "stays untrusted: content is not the policy's").await?;
    let (status, _) = setup.run(&tool, "again")?;
    assert!(status.blocked(), "{status}");
    sensor.stop().await?;
    Ok(())
}

/// Runs `program`, which must be stopped (SIGKILL, no marker file) and
/// reported as modified; returns the rule named in the report.
async fn stopped_as_modified(
    setup: &Setup,
    sub: &mut Subscription,
    program: &Path,
    tag: &str,
) -> anyhow::Result<String> {
    let (status, created) = setup.run(program, tag)?;
    assert!(status.blocked(), "{status}");
    assert!(!created);
    sub.until(Duration::from_secs(20), |s| !policy_events(s).is_empty())
        .await?;
    let block = policy_events(sub)[0];
    assert_eq!(block.reason(), policy_event::Reason::Modified);
    Ok(block.rule.clone())
}

/// Waits until the sensor log contains `text` (10 s at most).
async fn log_shows(sensor: &Sensor, text: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sensor.log().contains(text) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sensor never logged {text:?}:\n{}",
            sensor.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A file under a trusted root is trusted for the content it had when the
/// policy was compiled, not for its path: changed in place it is blocked
/// and stays blocked; with its original bytes back (new ctime) it is
/// trusted again; made world-writable it is blocked and stays blocked even
/// though its content is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modified_file_under_a_trusted_root_is_retrusted_only_with_its_compiled_content()
-> anyhow::Result<()> {
    let setup = Setup::new("allow-root-modified")?;
    let (_trusted, root) = setup.trusted_dir()?;
    let tool = root.join("tool");
    tests::exe::copy_executable(Path::new("/usr/bin/touch"), &tool)?;
    let original = std::fs::read(&tool)?;
    setup.write_policy(
        "enforce",
        &[],
        &format!("[[trusted_root]]\npath = \"{}\"\n", root.display()),
    )?;
    let collector = Collector::start().await?;
    let mut sub = Subscription::open(&collector.url(), policy_request()).await?;
    let sensor = Sensor::start(&collector, setup.sensor_options()).await?;
    let (status, created) = setup.run(&tool, "before")?;
    assert!(
        status.success() && created,
        "trusted-root file runs: {status}"
    );

    // The attacker's change: same inode, same path under the root, new
    // content. Blocked, and the re-hash does not give trust back.
    tests::exe::append_to_executable(&tool, b"\0")?;
    assert_eq!(
        stopped_as_modified(&setup, &mut sub, &tool, "modified").await?,
        format!("trusted_root {}", root.display())
    );
    log_shows(
        &sensor,
        "stays untrusted: content is not the one hashed at compile",
    )
    .await?;
    let (status, created) = setup.run(&tool, "modified-again")?;
    assert!(status.blocked(), "not re-trusted: {status}");
    assert!(!created);

    // The original bytes back in place (new ctime): re-hashed, trusted.
    tests::exe::overwrite_executable(&tool, &original)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !setup.run(&tool, "restored")?.0.success() {
        assert!(
            Instant::now() < deadline,
            "trust never came back with the original content:\n{}",
            sensor.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Right content, but now anyone may rewrite it: stays untrusted.
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o757))?;
    let (status, created) = setup.run(&tool, "world-writable")?;
    assert!(status.blocked(), "world-writable stopped: {status}");
    assert!(!created);
    log_shows(&sensor, "stays untrusted: group/world-writable").await?;
    let (status, _) = setup.run(&tool, "world-writable-again")?;
    assert!(status.blocked(), "not re-trusted: {status}");
    sensor.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_mode_reports_but_does_not_block() -> anyhow::Result<()> {
    let setup = Setup::new("allow-monitor")?;
    let intruder = setup.copy_of_touch("intruder")?;
    setup.write_policy("monitor", &[], "")?;
    let collector = Collector::start().await?;
    let mut sub = Subscription::open(&collector.url(), policy_request()).await?;
    let sensor = Sensor::start(&collector, setup.sensor_options()).await?;

    let (status, created) = setup.run(&intruder, "m")?;
    assert!(
        status.success() && created,
        "monitor mode never blocks: {status}"
    );
    sub.until(Duration::from_secs(20), |s| !policy_events(s).is_empty())
        .await?;
    let event = policy_events(&sub)[0];
    assert_eq!(event.action(), policy_event::Action::WouldBlock);
    assert_eq!(event.mode, "monitor");
    assert_eq!(event.path, intruder.display().to_string());

    // A script run through its interpreter is reported with the script's
    // path (the verdict is on the interpreter the kernel executes).
    let script = setup.dir.path().join("restock.sh");
    tests::exe::write_executable(
        &script,
        "#!/bin/sh
exit 0
",
    )?;
    assert!(setup.cgroup.command(&script).status()?.success());
    let script_path = script.display().to_string();
    sub.until(Duration::from_secs(20), |s| {
        policy_events(s).iter().any(|p| p.path == script_path)
    })
    .await?;
    sensor.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reload_keeps_the_last_good_policy_and_good_reload_swaps() -> anyhow::Result<()> {
    let setup = Setup::new("allow-reload")?;
    let newcomer = setup.copy_of_touch("newcomer")?;
    setup.write_policy("enforce", &[Path::new("/usr/bin/touch")], "")?;
    let collector = Collector::start().await?;
    let sensor = Sensor::start(&collector, setup.sensor_options()).await?;
    assert!(setup.run(&newcomer, "a")?.0.blocked());

    // A broken file: refused with a clear error, the old policy stays.
    std::fs::write(
        &setup.policy,
        "mode = \"enforce\"\n[[allow]]\npath = \"/x\"\nsha256 = \"nope\"\n",
    )?;
    sensor.hangup()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sensor.log().contains("allowlist policy refused") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sensor.log().contains("allow[0].sha256"),
        "error names the key:\n{}",
        sensor.log()
    );
    assert!(setup.run(&newcomer, "b")?.0.blocked(), "still enforced");
    let (status, created) = setup.run(Path::new("/usr/bin/touch"), "c")?;
    assert!(status.success() && created, "still allowed");

    // A good file that allows the newcomer: one swap, then it runs.
    setup.write_policy("enforce", &[Path::new("/usr/bin/touch"), &newcomer], "")?;
    sensor.hangup()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while Instant::now() < deadline {
        let (status, created) = setup.run(&newcomer, "d")?;
        if status.success() && created {
            last = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(last.is_some(), "the reloaded policy allows the newcomer");
    sensor.stop().await?;
    Ok(())
}

/// An edit of the policy file (no SIGHUP) is picked up while allowlisted
/// programs are being started without pause: the new entry runs, the
/// allowlisted program never gets a wrong verdict during the swap, and the
/// unlisted one stays blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edited_under_an_exec_load_is_reloaded_without_a_wrong_verdict()
-> anyhow::Result<()> {
    let setup = Setup::new("allow-edit-load")?;
    let newcomer = setup.copy_of_touch("newcomer")?;
    let intruder = setup.copy_of_touch("intruder")?;
    let touch = Path::new("/usr/bin/touch");
    setup.write_policy("enforce", &[touch], "")?;
    let collector = Collector::start().await?;
    let sensor = Sensor::start(&collector, setup.sensor_options()).await?;
    assert!(setup.run(&newcomer, "before")?.0.blocked());

    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
    let (stop, done) = (AtomicBool::new(false), AtomicU32::new(0));
    // Waits until the load has run `n` more execs (or 10 s passed).
    let more = |n: u32| {
        let (target, deadline) = (
            done.load(Relaxed) + n,
            Instant::now() + Duration::from_secs(10),
        );
        while done.load(Relaxed) < target && Instant::now() < deadline {
            std::thread::yield_now();
        }
    };
    let (ran, wrong, swapped) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let load = scope.spawn(|| -> anyhow::Result<(u32, Vec<String>)> {
            let (mut ran, mut wrong) = (0, Vec::new());
            while !stop.load(Relaxed) {
                let (status, created) = setup.run(touch, &format!("load-{ran}"))?;
                if !(status.success() && created) {
                    wrong.push(format!("load-{ran}: {status}"));
                }
                ran += 1;
                done.store(ran, Relaxed);
            }
            Ok((ran, wrong))
        });
        // The load going, the file is edited in place of a SIGHUP.
        more(20);
        setup.write_policy("enforce", &[touch, &newcomer], "")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut swapped = false;
        for i in 0.. {
            if setup.run(&newcomer, &format!("after-{i}"))?.0.success() {
                swapped = true;
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            more(1);
        }
        // Some load after the swap too, then stop.
        more(20);
        stop.store(true, Relaxed);
        let (ran, wrong) = load
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        Ok((ran, wrong, swapped))
    })?;
    assert!(
        swapped,
        "the edited policy never allowed the newcomer:\n{}",
        sensor.log()
    );
    assert!(wrong.is_empty(), "wrong verdicts under load: {wrong:?}");
    assert!(ran >= 40, "only {ran} execs in the load");
    eprintln!("{ran} allowlisted execs across the reload, none refused");
    log_shows(&sensor, "generation=2").await?;
    setup.assert_blocked(&intruder, true, "after the reload")?;
    sensor.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_entry_policy_loads_and_enforces() -> anyhow::Result<()> {
    const N: usize = 10_000;
    let setup = Setup::new("allow-10k")?;
    let (_trusted, root) = setup.trusted_dir()?;
    for i in 0..N - 1 {
        let p = root.join(format!("tool-{i}"));
        std::fs::write(&p, format!("#!/bin/sh\n# {i}\n"))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    // The last entry is a program of its own (a copy of touch), so the
    // allowed case is seen to run from the big policy, not only to load.
    let last = root.join(format!("tool-{}", N - 1));
    tests::exe::copy_executable(Path::new("/usr/bin/touch"), &last)?;
    let intruder = setup.copy_of_touch("intruder")?;
    setup.write_policy(
        "enforce",
        &[Path::new("/usr/bin/touch")],
        &format!("[[trusted_root]]\npath = \"{}\"\n", root.display()),
    )?;
    let collector = Collector::start().await?;
    let mut sub = Subscription::open_kinds(&collector.url(), &[EventKind::Exec]).await?;
    let started = Instant::now();
    let sensor = Sensor::start(&collector, setup.sensor_options()).await?;
    let took = started.elapsed();
    assert!(
        sensor.log().contains(&format!("allowed_files={}", N + 1)),
        "all {} files allowed:\n{}",
        N + 1,
        sensor.log()
    );
    eprintln!("sensor start with a {}-entry policy: {took:?}", N + 1);
    assert!(setup.run(&intruder, "x")?.0.blocked());
    assert!(setup.run(Path::new("/usr/bin/touch"), "y")?.0.success());
    // The 10,000th entry runs, and its exec is reported under its path.
    let (status, created) = setup.run(&last, "last")?;
    assert!(status.success() && created, "{}: {status}", last.display());
    let argv = setup.dir.path().join("marker-last").display().to_string();
    sub.until(Duration::from_secs(20), |s| !s.execs_with(&argv).is_empty())
        .await?;
    assert_eq!(
        sub.execs_with(&argv)[0].filename,
        last.display().to_string()
    );
    sensor.stop().await?;
    Ok(())
}

/// Ways around a plain exec of an allowlisted file (see README "Security
/// notes"): the ones the kernel lets us stop are stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fileless_and_loader_tricks_are_blocked() -> anyhow::Result<()> {
    let setup = Setup::new("allow-bypass")?;
    let intruder = setup.copy_of_touch("intruder")?;
    let python = std::fs::canonicalize("/usr/bin/python3")?;
    setup.write_policy("enforce", &[Path::new("/usr/bin/touch"), &python], "")?;
    let collector = Collector::start().await?;
    let sensor = Sensor::start(&collector, setup.sensor_options()).await?;

    // 1. The dynamic loader run directly maps the intruder without an exec of
    //    it: the loader itself is the exec, and it is not allowlisted.
    let marker = setup.dir.path().join("via-ldso");
    let status = Exec::of(
        setup
            .cgroup
            .command("/lib64/ld-linux-x86-64.so.2")
            .arg(&intruder)
            .arg(&marker)
            .status(),
    )?;
    assert!(status.blocked(), "ld.so as a launcher: {status}");
    assert!(!marker.exists());

    // 2. Fileless: an allowed interpreter copies code into a memfd and
    //    fexecve()s it. The memfd's inode is in no allowlist.
    //    The interpreter leaves a mark before the fexecve: it is allowed and
    //    runs; only the memfd's code is stopped.
    let marker = setup.dir.path().join("via-memfd");
    let interpreted = setup.dir.path().join("python-ran");
    let script = format!(
        "import os\nopen('{}', 'w').close()\nfd = os.memfd_create('x')\nos.write(fd, open('/usr/bin/touch', 'rb').read())\nos.execve(fd, ['touch', '{}'], {{}})\n",
        interpreted.display(),
        marker.display()
    );
    let status = setup.python(&python, &script)?;
    assert!(
        interpreted.exists(),
        "the allowed interpreter ran: {status}"
    );
    assert!(launcher_blocked(status), "memfd + fexecve: {status}");
    assert!(!marker.exists());

    // 3. Rename a new file over an allowlisted path: new inode, not trusted.
    let tool = setup.copy_of_touch("tool")?;
    setup.write_policy(
        "enforce",
        &[Path::new("/usr/bin/touch"), &python, &tool],
        "",
    )?;
    sensor.hangup()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !setup.run(&tool, "tool-ok")?.0.success() {
        assert!(
            Instant::now() < deadline,
            "reloaded policy never allowed the tool"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let swapped = setup.dir.path().join("swapped");
    tests::exe::copy_executable(&intruder, &swapped)?;
    std::fs::rename(&swapped, &tool)?;
    let (status, created) = setup.run(&tool, "tool-swapped")?;
    assert!(status.blocked(), "renamed-over binary: {status}");
    assert!(!created);
    sensor.stop().await?;
    Ok(())
}

/// An allowlisted shell is denied when the parent runs a given program (no
/// shell spawned by "the POS app", here python3) or for a given user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_rules_forbid_a_program_by_parent_or_user() -> anyhow::Result<()> {
    let setup = Setup::new("allow-deny")?;
    let python = std::fs::canonicalize("/usr/bin/python3")?;
    let shell = std::fs::canonicalize("/bin/sh")?;
    let setpriv = std::fs::canonicalize("/usr/bin/setpriv")?;
    setup.write_policy(
        "enforce",
        &[Path::new("/usr/bin/touch"), &python, &shell, &setpriv],
        &format!(
            "[[deny]]\nprogram = \"/bin/sh\"\nparents = [\"{}\"]\nuids = [65534]\n",
            python.display()
        ),
    )?;
    let collector = Collector::start().await?;
    let mut sub = Subscription::open(&collector.url(), policy_request()).await?;
    let sensor = Sensor::start(&collector, setup.sensor_options()).await?;

    // Started by the test (not python), as root: allowed.
    let direct = setup.dir.path().join("direct");
    let status = setup
        .cgroup
        .command("/bin/sh")
        .arg("-c")
        .arg(format!("/usr/bin/touch {}", direct.display()))
        .status()?;
    assert!(
        status.success() && direct.exists(),
        "sh from the test runs: {status}"
    );

    // Spawned by python: denied, killed before it runs.
    let by_python = setup.dir.path().join("by-python");
    let script = format!(
        "import subprocess, sys\nr = subprocess.run(['/bin/sh', '-c', '/usr/bin/touch {}'])\nsys.exit(0 if r.returncode == -9 else 1)\n",
        by_python.display()
    );
    let status = setup.python(&python, &script)?;
    assert!(status.success(), "python saw its shell SIGKILLed: {status}");
    assert!(!by_python.exists());

    // As uid 65534: denied (setpriv changes uid, then execs the shell).
    let status = setup
        .cgroup
        .command(&setpriv)
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "/bin/sh",
            "-c",
            "exit 0",
        ])
        .status()?;
    assert!(launcher_blocked(status), "shell as uid 65534: {status}");

    sub.until(Duration::from_secs(20), |s| policy_events(s).len() >= 2)
        .await?;
    for event in policy_events(&sub) {
        assert_eq!(event.reason(), policy_event::Reason::DeniedContext);
        assert_eq!(event.rule, "deny[0] /bin/sh");
        assert_eq!(event.action(), policy_event::Action::Blocked);
    }
    sensor.stop().await?;
    Ok(())
}

/// A policy scoped to a cgroup covers its whole subtree: systemd puts each
/// service in a child (`kiosk.slice/pos.service`), and anyone who can write
/// `cgroup.procs` can move into a fresh sub-cgroup. Neither escapes; a
/// cgroup deeper than the kernel walks (`SCOPE_MAX_LEVELS`) is checked even
/// outside the scope (fail closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_policy_covers_every_cgroup_below_its_scope() -> anyhow::Result<()> {
    let setup = Setup::new("allow-subtree")?;
    let intruder = setup.copy_of_touch("intruder")?;
    let sh = std::fs::canonicalize("/bin/sh")?;
    let mkdir = std::fs::canonicalize("/usr/bin/mkdir")?;
    let touch = Path::new("/usr/bin/touch");
    setup.write_policy("enforce", &[touch, &sh, &mkdir], "")?;
    let slice = setup.cgroup.child("kiosk.slice")?;
    let service = slice.child("pos.service")?;
    // Made by the escaping shell below; removed on drop if it was.
    let escape = TestCgroup::adopt(setup.cgroup.path.join("escape"));
    let collector = Collector::start().await?;
    let mut sub = Subscription::open(&collector.url(), policy_request()).await?;
    let sensor = Sensor::start(&collector, setup.sensor_options()).await?;

    // A service two levels below the scope: blocked, and allowed programs run.
    let (status, ran) = setup.run_in(&service, &intruder, "service")?;
    assert!(status.blocked(), "killed in pos.service: {status}");
    assert!(!ran, "the blocked program never ran");
    let (status, ran) = setup.run_in(&service, touch, "service-touch")?;
    assert!(status.success() && ran, "touch runs: {status}");

    // A shell in the scope makes a sub-cgroup, moves itself in, and execs.
    let marker_file = setup.dir.path().join("marker-escape");
    let script = format!(
        "mkdir {escape} && echo $$ > {escape}/cgroup.procs && exec {intruder} {marker}",
        escape = escape.path.display(),
        intruder = intruder.display(),
        marker = marker_file.display()
    );
    // Run as /bin/sh, not by its resolved path: busybox (the guest's sh)
    // picks its applet by the name it is called by.
    let status = setup
        .cgroup
        .command("/bin/sh")
        .arg("-c")
        .arg(&script)
        .status()?;
    assert!(escape.path.is_dir(), "the shell made its sub-cgroup");
    assert!(launcher_blocked(status), "killed after moving: {status}");
    assert!(!marker_file.exists(), "the escaped exec never ran");

    // As deep as the walk goes, outside the scope: checked all the same.
    // (The first cgroup is level 1, below the root; the last one is level
    // SCOPE_MAX_LEVELS.)
    let mut deep = vec![TestCgroup::new(&marker("allow-deep"))?];
    for level in 1..sensor_common::SCOPE_MAX_LEVELS {
        let next = deep[deep.len() - 1].child(&format!("l{level}"))?;
        deep.push(next);
    }
    let (status, ran) = setup.run_in(&deep[deep.len() - 1], &intruder, "deep")?;
    assert!(status.blocked(), "fail closed when too deep: {status}");
    assert!(!ran);
    // One level less is walked in full: out of scope, it runs.
    let (status, ran) = setup.run_in(&deep[deep.len() - 2], &intruder, "shallower")?;
    assert!(status.success() && ran, "{status}");
    while let Some(cgroup) = deep.pop() {
        drop(cgroup);
    }

    sub.until(Duration::from_secs(20), |s| policy_events(s).len() >= 3)
        .await?;
    let blocked: Vec<&str> = policy_events(&sub)
        .iter()
        .map(|p| p.path.as_str())
        .collect();
    let intruder = intruder.display().to_string();
    assert_eq!(blocked, [intruder.as_str(); 3], "{blocked:?}");
    sensor.stop().await?;
    Ok(())
}

/// Enforcement outlives the daemon, as an attacker who kills it would find:
/// SIGKILL and SIGTERM leave the policy in force (a trusted file changed
/// meanwhile stays blocked: re-trust needs the daemon), a restarted sensor
/// adopts the pinned maps and replaces the pinned link (the old link and
/// program are released: one of each), its new policy applies, and only
/// `allowlist detach` lets the untrusted binary run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforcement_outlives_a_killed_or_stopped_sensor_and_a_restart_adopts_it()
-> anyhow::Result<()> {
    let setup = Setup::new("allow-pinned")?;
    let pins = tests::pins::PinDir::new("adopt");
    let trusted = setup.copy_of_touch("trusted")?;
    let changed = setup.copy_of_touch("changed")?;
    let untrusted = setup.copy_of_touch("untrusted")?;
    let never = setup.copy_of_touch("never")?;
    setup.write_policy("enforce", &[&trusted, &changed], "")?;
    let collector = Collector::start().await?;
    let sensor = Sensor::start(&collector, setup.pinned_options(&pins.path)).await?;
    setup.assert_blocked(&untrusted, true, "with the sensor up")?;
    setup.assert_blocked(&trusted, false, "with the sensor up")?;
    let first = tests::pins::pinned_verdict(&pins.path)?.expect("verdict link pinned");

    sensor.kill().await?;
    setup.assert_blocked(&untrusted, true, "after SIGKILL of the sensor")?;
    setup.assert_blocked(&trusted, false, "after SIGKILL of the sensor")?;
    // Changed while the daemon is gone: nothing can re-hash it, it stays out.
    let now = std::time::SystemTime::now();
    std::fs::File::options()
        .write(true)
        .open(&changed)?
        .set_times(std::fs::FileTimes::new().set_modified(now))?;
    setup.assert_blocked(&changed, true, "changed while the sensor is down")?;
    assert_eq!(
        tests::pins::pinned_verdict(&pins.path)?,
        Some(first),
        "the same link enforces"
    );

    // A restart with a new policy: adopted, one link, the new policy applies.
    setup.write_policy("enforce", &[&trusted, &untrusted], "")?;
    let sensor = Sensor::start(&collector, setup.pinned_options(&pins.path)).await?;
    let second = tests::pins::pinned_verdict(&pins.path)?.expect("verdict link pinned");
    assert_ne!(second, first, "the new sensor's link replaced the old one");
    assert!(
        tests::pins::gone(first.0, first.1).await,
        "the old link {} and program {} are released: no double attach",
        first.0,
        first.1
    );
    assert!(
        sensor.log().contains("adopted the pinned policy"),
        "{}",
        sensor.log()
    );
    setup.assert_blocked(&untrusted, false, "allowed by the new policy")?;
    setup.assert_blocked(&never, true, "with the restarted sensor")?;

    // SIGTERM leaves it in force too.
    sensor.stop().await?;
    setup.assert_blocked(&never, true, "after SIGTERM of the sensor")?;
    setup.assert_blocked(&untrusted, false, "after SIGTERM of the sensor")?;
    let status = setup.allowlist(&collector, &pins.path, &["status"]).await?;
    for line in [
        "enforcing: yes",
        "mode: enforce",
        "generation: 2",
        "scoped: yes",
        "allowed_files: 2",
    ] {
        assert!(status.contains(line), "{line} in:\n{status}");
    }
    assert!(
        status.contains(&format!("verdict_link_id: {}", second.0)),
        "{status}"
    );

    // Only detach takes it off.
    let out = setup.allowlist(&collector, &pins.path, &["detach"]).await?;
    assert!(out.contains("removed 9 pins"), "{out}");
    assert!(
        tests::pins::gone(second.0, second.1).await,
        "the link is released"
    );
    setup.assert_blocked(&never, false, "after allowlist detach")?;
    assert!(!pins.path.exists(), "the pin dir is removed");
    // Nothing of the sensor's object is left in the kernel.
    let left = tests::sensor_programs_after_exit().await?;
    assert!(left.is_empty(), "still loaded after detach: {left:?}");
    Ok(())
}

/// A script is checked as each backend documents it: `lsm` runs its
/// verdict for the script file AND for its interpreter (the kernel calls
/// `bprm_check_security` once per binary handler pass), so an unlisted
/// script under a listed interpreter is refused; `tracepoint+sigkill` sees
/// only the interpreter the kernel ends up running, so that script runs
/// (the README's documented limit). An unlisted interpreter is stopped by
/// both, whatever the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_is_checked_with_its_interpreter_as_the_backend_documents() -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let setup = Setup::new("allow-script")?;
    // dash on Debian hosts, busybox in the guest: the file the kernel runs.
    let sh = std::fs::canonicalize("/bin/sh")?;
    let body = "#!/bin/sh\n: > \"$1\"\n";
    let listed = setup.dir.path().join("listed.sh");
    tests::exe::write_executable(&listed, body)?;
    // Same content, another inode: not in the policy.
    let unlisted = setup.dir.path().join("unlisted.sh");
    tests::exe::write_executable(&unlisted, body)?;
    let sh_copy = setup.dir.path().join("sh-copy");
    tests::exe::copy_executable(&sh, &sh_copy)?;
    // Listed itself, but run by the unlisted copy of the shell.
    let foreign = setup.dir.path().join("foreign-interpreter.sh");
    tests::exe::write_executable(&foreign, format!("#!{}\n: > \"$1\"\n", sh_copy.display()))?;
    setup.write_policy("enforce", &[&sh, &listed, &foreign], "")?;
    let collector = Collector::start().await?;
    let mut sub = Subscription::open(&collector.url(), policy_request()).await?;
    let sensor = Sensor::start(&collector, setup.sensor_options()).await?;

    setup.assert_blocked(&listed, false, "(script and interpreter listed)")?;
    // The backend the sensor runs (that it is the one this kernel should
    // pick is `unlisted_binary_is_killed_before_it_runs_and_listed_ones_run`'s
    // check): what each exec must do follows from it.
    let lsm = sensor.log().contains("exec allowlist backend: lsm");
    let expect = |program: &Path, stopped: bool, when: &str| -> anyhow::Result<()> {
        use std::os::unix::process::ExitStatusExt as _;
        let (status, created) = setup.run(program, &marker("script"))?;
        let ok = match (&status, stopped, lsm) {
            (Exec::Refused(_), true, true) => !created,
            (Exec::Ran(s), true, false) => s.signal() == Some(9) && !created,
            (Exec::Ran(s), false, _) => s.success() && created,
            _ => false,
        };
        anyhow::ensure!(
            ok,
            "{} {when}: {status} (sensor backend lsm: {lsm}; kernel probe: {:?})",
            program.display(),
            kernel().lsm
        );
        Ok(())
    };
    // Under lsm a refusal; under the tracepoint it runs.
    expect(&unlisted, lsm, "(script unlisted, interpreter listed)")?;
    expect(&foreign, true, "(script listed, interpreter unlisted)")?;

    // The last block (the interpreter's) follows the others in the same
    // ring: once it is in, every block before it is too.
    let sh_copy_inode = std::fs::metadata(&sh_copy)?.ino();
    sub.until(Duration::from_secs(20), |s| {
        policy_events(s)
            .iter()
            .any(|p| p.file.as_ref().is_some_and(|f| f.inode == sh_copy_inode))
    })
    .await?;
    let blocks = policy_events(&sub);
    let unlisted_inode = std::fs::metadata(&unlisted)?.ino();
    let script_blocks: Vec<_> = blocks
        .iter()
        .filter(|p| p.file.as_ref().is_some_and(|f| f.inode == unlisted_inode))
        .collect();
    assert_eq!(blocks.len(), if lsm { 2 } else { 1 }, "{blocks:#?}");
    assert_eq!(script_blocks.len(), usize::from(lsm), "{blocks:#?}");
    if let Some(block) = script_blocks.first() {
        // The verdict was on the script file itself.
        assert_eq!(block.path, unlisted.display().to_string());
        assert_eq!(block.sha256, sha256_hex(&unlisted));
        assert_eq!(block.backend, "lsm");
    }
    for block in blocks {
        assert_eq!(block.action(), policy_event::Action::Blocked, "{block:?}");
        assert_eq!(block.reason(), policy_event::Reason::NotAllowed);
    }
    sensor.stop().await?;
    Ok(())
}

/// The dynamic loader runs any file it is given without an exec of that
/// file: a policy that lists it (by its /lib64 link or its real path) gets
/// it refused, at `policy check` and in the kernel, and every other entry
/// still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_listing_the_dynamic_loader_does_not_allow_it() -> anyhow::Result<()> {
    let setup = Setup::new("allow-loader")?;
    let intruder = setup.copy_of_touch("intruder")?;
    let link = Path::new("/lib64/ld-linux-x86-64.so.2");
    let real = std::fs::canonicalize(link)?;
    // Both names where /lib64 holds a link (Debian), the one file else.
    let mut loaders = vec![link, real.as_path()];
    loaders.dedup();
    // And a copy of it under another name, refused by its content.
    let renamed = setup.dir.path().join("innocent-tool");
    tests::exe::copy_executable(&real, &renamed)?;
    let mut refused = loaders.clone();
    refused.push(&renamed);
    let mut listed = vec![Path::new("/usr/bin/touch")];
    listed.extend(&refused);
    setup.write_policy("enforce", &listed, "")?;
    let check = std::process::Command::new(tests::bin_path("rxsentry-sensor"))
        .args(["policy", "check"])
        .arg(&setup.policy)
        .output()?;
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{out}");
    assert!(
        out.contains(&format!("1 files allowed, {} not allowed", refused.len())),
        "{out}"
    );
    for path in &loaders {
        assert!(
            out.contains(&format!(
                "not allowed: {}: the dynamic loader is never allowlisted",
                path.display()
            )),
            "{out}"
        );
    }
    assert!(
        out.contains(&format!(
            "not allowed: {}: a copy of the dynamic loader (its content) is never allowlisted",
            renamed.display()
        )),
        "{out}"
    );

    let collector = Collector::start().await?;
    let mut sub = Subscription::open(&collector.url(), policy_request()).await?;
    let sensor = Sensor::start(&collector, setup.sensor_options()).await?;
    for loader in &refused {
        let marker_file = setup.dir.path().join(marker("via-loader"));
        let status = Exec::of(
            setup
                .cgroup
                .command(loader)
                .arg(&intruder)
                .arg(&marker_file)
                .status(),
        )?;
        assert!(
            status.blocked(),
            "{} as a launcher: {status}",
            loader.display()
        );
        assert!(!marker_file.exists());
    }
    setup.assert_blocked(Path::new("/usr/bin/touch"), false, "beside the loader")?;
    sub.until(Duration::from_secs(20), |s| {
        policy_events(s).len() >= refused.len()
    })
    .await?;
    for block in policy_events(&sub) {
        assert_eq!(
            block.reason(),
            policy_event::Reason::NotAllowed,
            "{block:?}"
        );
        assert_eq!(block.action(), policy_event::Action::Blocked);
    }
    sensor.stop().await?;
    Ok(())
}

/// At boot `allowlist apply` enforces before any daemon runs (the kiosk
/// apps start after it); the daemon then adopts it without a gap, and a
/// second apply is refused while a link is pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_apply_enforces_without_the_daemon_until_one_adopts_it() -> anyhow::Result<()> {
    let setup = Setup::new("allow-apply")?;
    let pins = tests::pins::PinDir::new("apply");
    let trusted = setup.copy_of_touch("trusted")?;
    let untrusted = setup.copy_of_touch("untrusted")?;
    setup.write_policy("enforce", &[&trusted], "")?;
    let collector = Collector::start().await?;
    let out = setup.allowlist(&collector, &pins.path, &["apply"]).await?;
    assert!(out.contains("generation 1"), "{out}");
    let applied = tests::pins::pinned_verdict(&pins.path)?.expect("verdict link pinned");
    setup.assert_blocked(&untrusted, true, "applied, no daemon")?;
    setup.assert_blocked(&trusted, false, "applied, no daemon")?;

    let config = format!(
        "{}[policy]\npath = {:?}\npin_dir = {:?}\n",
        collector.sensor_section("test-allowlist")?,
        setup.policy,
        pins.path
    );
    let again = Sensor::with_config(config)
        .args(["allowlist", "apply"])
        .output()
        .await?;
    assert!(!again.status.success(), "a second apply is refused");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already pinned"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let sensor = Sensor::start(&collector, setup.pinned_options(&pins.path)).await?;
    let adopted = tests::pins::pinned_verdict(&pins.path)?.expect("verdict link pinned");
    assert_ne!(adopted, applied);
    assert!(
        tests::pins::gone(applied.0, applied.1).await,
        "one link after adoption"
    );
    setup.assert_blocked(&untrusted, true, "adopted by the daemon")?;
    setup.assert_blocked(&trusted, false, "adopted by the daemon")?;
    sensor.stop().await?;
    setup.allowlist(&collector, &pins.path, &["detach"]).await?;
    setup.assert_blocked(&untrusted, false, "after allowlist detach")?;
    Ok(())
}

fn tamper_events(sub: &Subscription) -> Vec<&proto::telemetry::v1::TamperEvent> {
    sub.tamper()
}

/// A sensor enforcing a policy (only /usr/bin/touch trusted) with its
/// pins in `pins`, its collector, and a subscription to its tamper events.
async fn tamper_watch(
    setup: &Setup,
    pins: &tests::pins::PinDir,
) -> anyhow::Result<(Collector, Subscription, Sensor)> {
    setup.write_policy("enforce", &[Path::new("/usr/bin/touch")], "")?;
    let collector = Collector::start().await?;
    let request = SubscribeRequest {
        kinds: vec![EventKind::Tamper as i32],
        ..Default::default()
    };
    let sub = Subscription::open(&collector.url(), request).await?;
    let sensor = Sensor::start(&collector, setup.pinned_options(&pins.path)).await?;
    Ok((collector, sub, sensor))
}

/// The tamper events about `object`.
fn tamper_events_on<'a>(
    sub: &'a Subscription,
    object: &str,
) -> Vec<&'a proto::telemetry::v1::TamperEvent> {
    let mut v = tamper_events(sub);
    v.retain(|t| t.object == object);
    v
}

/// Every tamper finding is counted once: the counts in the stream are
/// 1..=n, and the metric says n (waited for: findings made by the kernel
/// and by the pin check travel different ways).
async fn assert_findings_counted(sub: &mut Subscription, sensor: &Sensor) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = sensor.metrics().await?;
        let metric = samples.get("rxsentry_sensor_tamper_findings_total", &[]);
        let mut counts: Vec<u64> = tamper_events(sub).iter().map(|t| t.count).collect();
        counts.sort_unstable();
        let n = counts.len() as u64;
        if metric == Some(n as f64) && counts == (1..=n).collect::<Vec<_>>() {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "tamper counts {counts:?} vs metric {metric:?}"
        );
        sub.until(Duration::from_millis(200), |_| false).await.ok();
    }
}

/// An attacker who removes the verdict link's pin (then the whole pin
/// directory) before killing the sensor finds enforcement still in force:
/// the sensor notices within seconds, pins its link again and reports each
/// removal as a tamper event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_verdict_pin_is_reported_and_pinned_again() -> anyhow::Result<()> {
    let setup = Setup::new("allow-tamper")?;
    let pins = tests::pins::PinDir::new("tamper");
    let untrusted = setup.copy_of_touch("untrusted")?;
    let (_collector, mut sub, sensor) = tamper_watch(&setup, &pins).await?;
    let ours = tests::pins::pinned_verdict(&pins.path)?.expect("verdict link pinned");
    let pin = pins.path.join("verdict");
    const LINK: &str = "allowlist verdict link";

    for (round, attack) in ["rm verdict", "rm -r pin_dir"].into_iter().enumerate() {
        match round {
            0 => std::fs::remove_file(&pin)?,
            _ => std::fs::remove_dir_all(&pins.path)?,
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        // (Each look is a bpf() open of the pin: reported too, as this
        // test's, under another object.)
        while tests::pins::pinned_verdict(&pins.path)? != Some(ours) {
            assert!(
                Instant::now() < deadline,
                "{attack}: not pinned again within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sub.until(Duration::from_secs(20), |s| {
            tamper_events_on(s, LINK).len() > round
        })
        .await?;
        let t = tamper_events_on(&sub, LINK)[round];
        assert_eq!(t.action, "pin removed", "{attack}");
        assert_eq!(t.target, pin.display().to_string());
        assert!(t.restored && t.error.is_empty(), "{attack}: {t:?}");
        assert!(t.process.is_none(), "found by the check, not a call: {t:?}");
    }
    // Counted for the metrics too.
    assert_findings_counted(&mut sub, &sensor).await?;
    sensor.kill().await?;
    setup.assert_blocked(&untrusted, true, "pins removed, then the sensor killed")?;
    Ok(())
}

/// What an attacker with root does before touching the maps themselves:
/// open a pin (by a relative name), get descriptors of the sensor's
/// program and link by id, attach ptrace to the sensor and write its
/// memory. Each call, made by a process of its own, is a tamper event
/// naming that process; the same calls on what is not the sensor's (a
/// pin path elsewhere, ids of no sensor object, another process) are not.
/// On BPF-LSM kernels the ptrace and the memory write are also refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bpf_and_ptrace_calls_on_the_sensor_are_reported_with_their_process() -> anyhow::Result<()>
{
    use tests::attack::{self, bpf_cmd};
    let setup = Setup::new("allow-calls")?;
    let pins = tests::pins::PinDir::new("calls");
    let (_collector, mut sub, sensor) = tamper_watch(&setup, &pins).await?;
    let (link, program) = tests::pins::pinned_verdict(&pins.path)?.expect("verdict link pinned");

    // Look-alikes first, so any event they caused would arrive before the
    // attacks' ones: a pin name beside the sensor's directory, ids no
    // object has, another process.
    let elsewhere = pins.path.with_file_name("not-rxsentry-verdict");
    let mut innocent = vec![
        attack::obj_get(Path::new("/"), &elsewhere.display().to_string())?,
        attack::get_fd_by_id(bpf_cmd::PROG_GET_FD_BY_ID, u32::MAX - 1)?,
    ];
    let mut bystander = std::process::Command::new("sleep").arg("30").spawn()?;
    innocent.push(attack::ptrace_seize(bystander.id())?);
    innocent.push(attack::vm_write_to_page_zero(bystander.id())?);
    bystander.kill()?;
    bystander.wait()?;
    // Another process stays open to ptrace (the guard is the sensor's):
    // the write reaches its memory and faults on page 0.
    assert_eq!(
        (innocent[2].errno, innocent[3].errno),
        (0, libc::EFAULT),
        "{innocent:?}"
    );

    let attacks = [
        (
            attack::obj_get(&pins.path, "./verdict")?,
            "rxsentry pinned object",
            "BPF_OBJ_GET",
        ),
        (
            attack::get_fd_by_id(bpf_cmd::PROG_GET_FD_BY_ID, program)?,
            "rxsentry program",
            "by id",
        ),
        (
            attack::get_fd_by_id(bpf_cmd::LINK_GET_FD_BY_ID, link)?,
            "rxsentry link",
            "by id",
        ),
        (
            attack::ptrace_seize(sensor.pid())?,
            "sensor process",
            "PTRACE_SEIZE",
        ),
        (
            attack::vm_write_to_page_zero(sensor.pid())?,
            "sensor process",
            "process_vm_writev",
        ),
    ];
    // Root may make every bpf() call: reported, not refused. Where BPF-LSM
    // runs, the sensor refuses attach rights over itself: the ptrace and
    // the memory write fail with EPERM (and are reported all the same).
    let lsm = tests::kernel::kernel().lsm.is_ok();
    if lsm {
        assert!(
            sensor.log().contains("ptrace guard: BPF-LSM"),
            "{}",
            sensor.log()
        );
    }
    for (call, object, action) in &attacks {
        let want = match (*object, *action) {
            ("sensor process", _) if lsm => libc::EPERM,
            (_, "process_vm_writev") => libc::EFAULT,
            _ => 0,
        };
        assert_eq!(call.errno, want, "{object} {action} (lsm: {lsm}): {call:?}");
    }
    let by = |s: &Subscription, pid: u32| {
        tamper_events(s)
            .into_iter()
            .filter(|t| t.process.as_ref().is_some_and(|p| p.pid == pid))
            .count()
    };
    let waited = sub
        .until(Duration::from_secs(20), |s| {
            attacks.iter().all(|(call, ..)| by(s, call.pid) > 0)
        })
        .await;
    if let Err(e) = waited {
        anyhow::bail!("{e}: attacks {attacks:?}; events {:?}", tamper_events(&sub));
    }
    for (call, object, action) in &attacks {
        let found: Vec<_> = tamper_events(&sub)
            .into_iter()
            .filter(|t| t.process.as_ref().is_some_and(|p| p.pid == call.pid))
            .collect();
        assert_eq!(found.len(), 1, "{object}: {found:?}");
        assert_eq!(found[0].object, *object);
        assert!(found[0].action.contains(action), "{found:?}");
    }
    let opened = tamper_events_on(&sub, "rxsentry pinned object");
    assert!(
        opened
            .iter()
            .any(|t| t.target == pins.path.join("verdict").display().to_string()),
        "the relative name resolved to the pin: {opened:?}"
    );
    for call in &innocent {
        assert_eq!(by(&sub, call.pid), 0, "{call:?}: {:?}", tamper_events(&sub));
    }
    assert_findings_counted(&mut sub, &sensor).await?;
    sensor.kill().await?;
    Ok(())
}
