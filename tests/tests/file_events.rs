//! File telemetry on watched paths, on the real kernel: the kernel reports
//! operations on the watched set (with the full path, the operation, the
//! result and the process) and nothing outside it.

use std::{os::unix::fs::MetadataExt as _, path::Path, process::Command, time::Duration};

use proto::telemetry::v1::{EventKind, FileEvent, SubscribeRequest, file_event::Operation};
use tests::{Collector, Sensor, SensorOptions, Subscription, marker};

/// A temporary tree: `phi/` (watched) and `other/` (not).
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("rxsentry-files-")
            .tempdir()?;
        std::fs::create_dir(dir.path().join("phi"))?;
        std::fs::create_dir(dir.path().join("other"))?;
        std::fs::write(dir.path().join("phi/rx.db"), b"patient record\n")?;
        std::fs::write(dir.path().join("other/notes.txt"), b"nothing to see\n")?;
        Ok(Self { dir })
    }

    /// Canonical path of `rel` inside the tree, as the sensor reports it.
    fn path(&self, rel: &str) -> String {
        let root = std::fs::canonicalize(self.dir.path()).expect("tree exists");
        root.join(rel).to_string_lossy().into_owned()
    }
}

async fn start(tree: &Tree, files: &str) -> anyhow::Result<(Collector, Subscription, Sensor)> {
    let collector = Collector::start().await?;
    let sub = Subscription::open(
        &collector.url(),
        SubscribeRequest {
            kinds: vec![EventKind::File as i32],
            ..Default::default()
        },
    )
    .await?;
    let extra_config = format!(
        "[batching]\nmax_events = 64\nmax_delay_ms = 100\n[files]\nrefresh_seconds = 0\n{files}\n[[files.watch]]\npath = \"{}\"\n",
        tree.path("phi")
    );
    let sensor = Sensor::start(&collector, SensorOptions { extra_config }).await?;
    Ok((collector, sub, sensor))
}

/// Runs `program args...`, returns its pid after it exited successfully.
fn run(program: &str, args: &[&str]) -> anyhow::Result<u32> {
    tests::procs::run_for_pid(program, args)
}

/// Reads a fresh watched file and waits for its event: the ring buffer and
/// the stream keep order, so everything caused before it has arrived too.
async fn barrier(sub: &mut Subscription, tree: &Tree) -> anyhow::Result<()> {
    let name = marker("phi/end");
    std::fs::write(tree.path(&name), b"end")?;
    let pid = run("/bin/cat", &[&tree.path(&name)])?;
    let path = tree.path(&name);
    sub.until(Duration::from_secs(20), |s| {
        s.files_under(&path)
            .iter()
            .any(|f| f.process.as_ref().is_some_and(|p| p.pid == pid))
    })
    .await
}

/// Opens a fresh watched file twice from this process and waits for the
/// summary of the repeat: every coalescing window up to now has been summed.
async fn repeat_barrier(sub: &mut Subscription, tree: &Tree) -> anyhow::Result<()> {
    let path = tree.path(&marker("phi/repeat-end"));
    std::fs::write(&path, b"end")?;
    for _ in 0..2 {
        std::fs::File::open(&path)?;
    }
    let me = std::process::id();
    sub.until(Duration::from_secs(20), |s| {
        by_pid(s.files_under(&path), me)
            .iter()
            .any(|f| f.repeats > 0)
    })
    .await
}

fn by_pid(events: Vec<&FileEvent>, pid: u32) -> Vec<&FileEvent> {
    events
        .into_iter()
        .filter(|f| f.process.as_ref().is_some_and(|p| p.pid == pid))
        .collect()
}

/// Config that makes the open programs read file fields by helper calls
/// from the open syscalls' exit tracepoints, as on kernels without
/// `bpf_rdonly_cast`, trampolines and BPF-LSM, so that path runs on every kernel
/// (the default picks typed loads or fexit where the kernel has them).
const HELPER_READS: &str =
    "[kernel]\ntyped_file_reads = false\nfexit_file_opens = false\nlsm_file_opens = false";
/// The default: the kernel's best open hook and field reads.
const DEFAULT_READS: &str = "";

/// The open hook and field reads the sensor must report for `config`
/// (one of the two above) on this kernel (tests/src/kernel.rs).
fn assert_open_programs(sensor: &tests::Sensor, config: &str) {
    let defaults = config == DEFAULT_READS;
    let log = sensor.log();
    let k = tests::kernel::kernel();
    let reads = k.file_reads_log(defaults, defaults);
    assert!(log.contains(reads), "want {reads:?}:\n{log}");
    // Never a silent fallback: the hook and why fexit is not used.
    let hook = k.open_hook_log(defaults);
    assert!(log.contains(hook), "want {hook:?}:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_read_is_one_event_and_an_unwatched_read_is_none() -> anyhow::Result<()> {
    one_event_per_watched_read(DEFAULT_READS).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helper_read_open_programs_report_the_same() -> anyhow::Result<()> {
    one_event_per_watched_read(HELPER_READS).await
}

/// One read of a watched file is one event; unwatched reads and the
/// sensor's own are none. `config` picks the open programs.
async fn one_event_per_watched_read(config: &str) -> anyhow::Result<()> {
    let tree = Tree::new()?;
    let (_collector, mut sub, sensor) = start(&tree, config).await?;
    assert_open_programs(&sensor, config);

    let reader = run("/bin/cat", &[&tree.path("phi/rx.db")])?;
    let outsider = run("/bin/cat", &[&tree.path("other/notes.txt")])?;
    barrier(&mut sub, &tree).await?;

    let reads = by_pid(sub.files_under(&tree.path("phi/rx.db")), reader);
    assert_eq!(reads.len(), 1, "exactly one event for one read: {reads:?}");
    let read = reads[0];
    assert_eq!(read.operation(), Operation::OpenRead);
    assert_eq!(read.path, tree.path("phi/rx.db"));
    assert!(read.result >= 0, "open succeeded: {}", read.result);
    assert_eq!(read.flags & 0o3, 0, "O_RDONLY");
    let meta = std::fs::metadata(tree.path("phi/rx.db"))?;
    let file = read.file.expect("the kernel held the file");
    assert_eq!((file.device, file.inode), (meta.dev(), meta.ino()));
    let process = read.process.as_ref().expect("process");
    assert_eq!(process.comm, "cat");
    assert_eq!(process.ppid, std::process::id());
    assert!(
        process.exe.ends_with("/cat"),
        "exe from the process table: {:?}",
        process.exe
    );

    assert!(
        sub.files_under(&tree.path("other")).is_empty(),
        "nothing outside the watched set"
    );
    assert!(
        by_pid(sub.files_under(""), outsider).is_empty(),
        "the unwatched reader caused no event at all"
    );
    assert!(
        by_pid(sub.files_under(""), sensor.pid()).is_empty(),
        "the sensor's own activity is never reported"
    );
    sensor.stop().await?;
    Ok(())
}

/// A file watched on its own (like /etc/shadow) in a directory that is not:
/// the kernel caches that directory as "outside the watched set" after the
/// first unwatched open there, and the file must still be reported, also
/// through a hard link in another unwatched directory (same inode).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_file_in_an_unwatched_directory_survives_the_directory_cache()
-> anyhow::Result<()> {
    watched_file_survives_the_directory_cache(DEFAULT_READS).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helper_read_open_programs_keep_the_directory_cache_right() -> anyhow::Result<()> {
    watched_file_survives_the_directory_cache(HELPER_READS).await
}

async fn watched_file_survives_the_directory_cache(config: &str) -> anyhow::Result<()> {
    let tree = Tree::new()?;
    let (secret, link) = (tree.path("other/secret"), tree.path("link-to-secret"));
    std::fs::write(&secret, b"hash\n")?;
    std::fs::hard_link(&secret, &link)?;
    let watch = format!("{config}\n[[files.watch]]\npath = \"{secret}\"\n");
    let (_collector, mut sub, sensor) = start(&tree, &watch).await?;
    assert_open_programs(&sensor, config);

    // Warm every cache: many unwatched opens in both directories, from
    // one process (one CPU's cache) and from many.
    let notes = tree.path("other/notes.txt");
    let warm: Vec<&str> = std::iter::repeat_n(notes.as_str(), 200).collect();
    run("/bin/cat", &warm)?;
    for _ in 0..4 {
        run("/bin/cat", &[&notes])?;
    }
    let reader = run("/bin/cat", &[&secret])?;
    let via_link = run("/bin/cat", &[&link])?;
    barrier(&mut sub, &tree).await?;

    let reads = by_pid(sub.files_under(&secret), reader);
    assert_eq!(reads.len(), 1, "the watched file, read once: {reads:?}");
    assert_eq!(reads[0].operation(), Operation::OpenRead);
    let linked = by_pid(sub.files_under(""), via_link);
    assert_eq!(
        linked.len(),
        1,
        "its inode, through a hard link: {linked:?}"
    );
    assert!(
        sub.files_under(&notes).is_empty(),
        "its unwatched neighbour is never reported"
    );
    sensor.stop().await?;
    Ok(())
}

/// Opens of one watched file by one process, the same way, from two threads
/// at once: each window reports the first in full and counts the rest in
/// the kernel; the reported opens plus the summaries' counts are exactly
/// the opens made (the count is atomic: both threads add to it), and an
/// open with other flags is its own event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_opens_are_counted_not_lost() -> anyhow::Result<()> {
    const PER_THREAD: u64 = 20_000;
    let tree = Tree::new()?;
    let (_collector, mut sub, sensor) = start(&tree, "open_repeat_window_ms = 200").await?;
    let path = tree.path("phi/rx.db");

    let storm: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                for _ in 0..PER_THREAD {
                    std::fs::File::open(&path)?;
                }
                Ok(())
            })
        })
        .collect();
    for thread in storm {
        thread.join().expect("storm thread")?;
    }
    std::fs::OpenOptions::new().append(true).open(&path)?;
    let me = std::process::id();
    let opens = |s: &Subscription| -> (u64, u64, Vec<FileEvent>) {
        let mine: Vec<FileEvent> = by_pid(s.files_under(&path), me)
            .into_iter()
            .filter(|f| f.operation() == Operation::OpenRead)
            .cloned()
            .collect();
        let reported = mine.iter().filter(|f| f.repeats == 0).count() as u64;
        let repeats = mine.iter().map(|f| f.repeats).sum();
        (reported, repeats, mine)
    };
    sub.until(Duration::from_secs(20), |s| {
        let (reported, repeats, _) = opens(s);
        reported + repeats >= 2 * PER_THREAD
    })
    .await?;
    // A late or double count would come in a later window's summary: a
    // repeat of our own, made after the storm, is summed in a window no
    // earlier than the storm's last, and windows are summed in order; the
    // file barrier then flushes what was summed with it.
    repeat_barrier(&mut sub, &tree).await?;
    barrier(&mut sub, &tree).await?;

    let (reported, repeats, mine) = opens(&sub);
    assert_eq!(
        reported + repeats,
        2 * PER_THREAD,
        "every open accounted for"
    );
    assert!(
        reported < 20,
        "coalesced: {reported} opens reported in full"
    );
    for summary in mine.iter().filter(|f| f.repeats > 0) {
        assert_eq!(summary.path, path);
        assert_eq!(summary.result, 0);
        assert_eq!(summary.flags & 0o3, 0, "O_RDONLY, as the reported open");
        assert!(summary.repeat_first_ns <= summary.repeat_last_ns);
        let process = summary.process.as_ref().expect("process");
        assert_eq!(process.pid, me);
    }
    let writes: Vec<_> = by_pid(sub.files_under(&path), me)
        .into_iter()
        .filter(|f| f.operation() == Operation::OpenWrite)
        .collect();
    assert_eq!(writes.len(), 1, "other flags, its own event: {writes:?}");
    sensor.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renames_unlinks_and_attribute_changes_carry_both_paths() -> anyhow::Result<()> {
    let tree = Tree::new()?;
    let (_collector, mut sub, sensor) = start(&tree, "").await?;

    let (a, b) = (tree.path("phi/a.tmp"), tree.path("phi/b.db"));
    std::fs::write(&a, b"draft")?;
    let mover = run("/bin/mv", &[&a, &b])?;
    let chmod = run("/bin/chmod", &["600", &b])?;
    let chown = run("/bin/chown", &["1:2", &b])?;
    let remover = run("/bin/rm", &[&b])?;
    // In from outside, then out again: the watched side may be either one.
    let outside = tree.path("other/notes.txt");
    let inside = tree.path("phi/notes.txt");
    let move_in = run("/bin/mv", &[&outside, &inside])?;
    let move_out = run("/bin/mv", &[&inside, &outside])?;
    barrier(&mut sub, &tree).await?;

    let all = sub.files_under("");
    let one = |pid: u32, what: &str| -> anyhow::Result<FileEvent> {
        let found = by_pid(all.clone(), pid);
        anyhow::ensure!(found.len() == 1, "{what}: {found:?}");
        Ok(found[0].clone())
    };
    let rename = one(mover, "rename")?;
    assert_eq!(rename.operation(), Operation::Rename);
    assert_eq!(
        (rename.path.as_str(), rename.new_path.as_str()),
        (a.as_str(), b.as_str())
    );
    assert_eq!(rename.result, 0);

    let chmod = one(chmod, "chmod")?;
    assert_eq!(chmod.operation(), Operation::Chmod);
    assert_eq!(chmod.path, b);
    assert_eq!(chmod.mode.map(|m| m & 0o7777), Some(0o600));

    let chown = one(chown, "chown")?;
    assert_eq!(chown.operation(), Operation::Chown);
    assert_eq!((chown.uid, chown.gid), (Some(1), Some(2)));

    let unlink = one(remover, "unlink")?;
    assert_eq!(unlink.operation(), Operation::Unlink);
    assert_eq!(unlink.path, b);
    assert_eq!(unlink.result, 0);

    let moved_in = one(move_in, "move in")?;
    assert_eq!(
        (moved_in.path.as_str(), moved_in.new_path.as_str()),
        (outside.as_str(), inside.as_str())
    );
    let moved_out = one(move_out, "move out")?;
    assert_eq!(
        (moved_out.path.as_str(), moved_out.new_path.as_str()),
        (inside.as_str(), outside.as_str())
    );
    sensor.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusions_failed_opens_writes_and_execs() -> anyhow::Result<()> {
    let tree = Tree::new()?;
    std::fs::create_dir(tree.dir.path().join("phi/cache"))?;
    std::fs::write(tree.dir.path().join("phi/cache/tmp"), b"cached")?;
    // An excluded program: a copy of cat only this test runs, still named
    // `cat` (a copy of busybox, the guest's cat, runs the applet its name
    // says).
    std::fs::create_dir(tree.dir.path().join("other/quiet"))?;
    let quiet_cat = tree.path("other/quiet/cat");
    tests::exe::copy_executable(Path::new("/bin/cat"), Path::new(&quiet_cat))?;
    let files = format!(
        "exclude_paths = [\"{}\"]\nexclude_processes = [\"{quiet_cat}\"]",
        tree.path("phi/cache")
    );
    let (_collector, mut sub, sensor) = start(&tree, &files).await?;

    let cached = run("/bin/cat", &[&tree.path("phi/cache/tmp")])?;
    let quiet = run(&quiet_cat, &[&tree.path("phi/rx.db")])?;
    // A refused open is reported; one of a path that does not exist is not
    // (the loader's library search fails that way dozens of times per exec).
    let secret = tree.path("phi/secret.db");
    std::fs::write(&secret, b"locked")?;
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let refused = Command::new("/usr/bin/setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/bin/cat",
            &secret,
        ])
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let refused_pid = refused.id();
    refused.wait_with_output()?;
    let missing = Command::new("/bin/cat")
        .arg(tree.path("phi/missing.db"))
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let missing_pid = missing.id();
    missing.wait_with_output()?;
    let writer = run(
        "/bin/sh",
        &["-c", &format!("echo more >> {}", tree.path("phi/rx.db"))],
    )?;
    let tool = tree.path("phi/tool");
    // coreutils' true: a copy of busybox (the guest's /bin/true) named
    // `tool` would not know which applet to run.
    tests::exe::copy_executable(Path::new("/usr/bin/true"), Path::new(&tool))?;
    let executed = run(&tool, &[])?;
    barrier(&mut sub, &tree).await?;

    let all = sub.files_under("");
    assert!(by_pid(all.clone(), cached).is_empty(), "excluded subtree");
    assert!(by_pid(all.clone(), quiet).is_empty(), "excluded program");

    let failed = by_pid(all.clone(), refused_pid);
    assert_eq!(failed.len(), 1, "refused open: {failed:?}");
    assert_eq!(failed[0].path, secret);
    assert_eq!(failed[0].result, -13, "EACCES");
    assert_eq!(failed[0].process.as_ref().map(|p| p.uid), Some(65534));
    assert!(
        by_pid(all.clone(), missing_pid).is_empty(),
        "an open of a path that does not exist is not an event"
    );

    let writes = by_pid(all.clone(), writer);
    assert_eq!(writes.len(), 1, "append: {writes:?}");
    assert_eq!(writes[0].operation(), Operation::OpenWrite);
    assert_ne!(writes[0].flags & 0o2000, 0, "O_APPEND as passed");

    let execs: Vec<_> = by_pid(all, executed)
        .into_iter()
        .filter(|f| f.operation() == Operation::Exec)
        .collect();
    assert_eq!(execs.len(), 1, "exec of a watched file: {execs:?}");
    assert_eq!(execs[0].path, tool);
    sensor.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_file_replaced_by_rename_stays_watched() -> anyhow::Result<()> {
    let tree = Tree::new()?;
    let passwd = tree.path("other/passwd");
    std::fs::write(&passwd, b"root:x:0:0\n")?;
    let files = format!("[[files.watch]]\npath = \"{passwd}\"\nops = [\"write\", \"rename\"]");
    let (_collector, mut sub, sensor) = start(&tree, &files).await?;

    // vipw-style: write a new file, rename it over the watched one.
    let staged = tree.path("other/passwd.new");
    std::fs::write(&staged, b"root:x:0:0\nmallory:x:0:0\n")?;
    let replacer = run("/bin/mv", &[&staged, &passwd])?;
    let path = passwd.clone();
    sub.until(Duration::from_secs(20), |s| {
        !by_pid(s.files_under(&path), replacer).is_empty()
    })
    .await?;
    // The new inode must be watched now (the sensor re-reads the set when a
    // watched root is replaced); a write shows it.
    let mut writer_pid = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        writer_pid = run("/bin/sh", &["-c", &format!("echo x >> {passwd}")])?;
        barrier(&mut sub, &tree).await?;
        if !by_pid(sub.files_under(&passwd), writer_pid).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let writes = by_pid(sub.files_under(&passwd), writer_pid);
    assert_eq!(writes.len(), 1, "write to the replaced file: {writes:?}");
    assert_eq!(writes[0].operation(), Operation::OpenWrite);
    assert!(Path::new(&passwd).exists());
    sensor.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_moved_into_the_watched_tree_is_watched_at_once() -> anyhow::Result<()> {
    let tree = Tree::new()?;
    std::fs::create_dir_all(tree.dir.path().join("other/outer/batch"))?;
    std::fs::write(tree.dir.path().join("other/outer/batch/rx-42.csv"), b"rows")?;
    let (_collector, mut sub, sensor) = start(&tree, "").await?;

    // Read it outside first: the kernel now caches "outer/batch is not
    // watched" (keyed by the directory, its parent and inode, none of which
    // change when `outer` moves); the move must invalidate that.
    let before = run("/bin/cat", &[&tree.path("other/outer/batch/rx-42.csv")])?;
    run(
        "/bin/mv",
        &[&tree.path("other/outer"), &tree.path("phi/outer")],
    )?;
    let after = run("/bin/cat", &[&tree.path("phi/outer/batch/rx-42.csv")])?;
    barrier(&mut sub, &tree).await?;

    let all = sub.files_under("");
    assert!(
        by_pid(all.clone(), before).is_empty(),
        "unwatched before the move"
    );
    let reads = by_pid(all, after);
    assert_eq!(reads.len(), 1, "watched after the move: {reads:?}");
    assert_eq!(reads[0].path, tree.path("phi/outer/batch/rx-42.csv"));

    // And out again: the kernel now caches "batch is watched, two levels
    // below phi"; moving it out must invalidate that too. The file itself,
    // moved into the tree, joined the watched files by identity, so a
    // read may still be reported, but only as such, under its new name.
    run(
        "/bin/mv",
        &[&tree.path("phi/outer"), &tree.path("other/outer")],
    )?;
    let outside = tree.path("other/outer/batch/rx-42.csv");
    let moved_out = run("/bin/cat", &[&outside])?;
    barrier(&mut sub, &tree).await?;
    let after = by_pid(sub.files_under(""), moved_out);
    assert!(
        after.iter().all(|f| f.by_identity && f.path == outside),
        "not placed under the watched root after moving out: {after:?}"
    );
    sensor.stop().await?;
    Ok(())
}

/// Opens are decided at exit with their arguments read from the registers
/// saved at entry: every open syscall (open, openat, openat2, creat) must
/// report the flags and mode it was given, and a refused open named
/// relative to a directory fd must be matched through that fd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_open_syscall_reports_its_own_arguments() -> anyhow::Result<()> {
    const SCRIPT: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
d = sys.argv[1]
def sc(*a):
    r = libc.syscall(*a)
    if r < 0:
        raise OSError(ctypes.get_errno(), str(a))
    os.close(r)
sc(2, (d + "/a").encode(), 0, 0)                           # open: read
sc(257, -100, (d + "/b").encode(), 0o1 | 0o2000, 0)       # openat: O_WRONLY|O_APPEND
how = (ctypes.c_uint64 * 3)(0o2 | 0o100, 0o640, 0)
sc(437, -100, (d + "/c").encode(), ctypes.byref(how), 24) # openat2: O_RDWR|O_CREAT, 0640
sc(85, (d + "/d").encode(), 0o600)                         # creat
dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
try:
    os.open("secret", os.O_RDONLY, dir_fd=dfd)
    sys.exit("the 0600 file opened")
except PermissionError:
    pass
"#;
    let tree = Tree::new()?;
    for name in ["a", "b"] {
        std::fs::write(tree.path(&format!("phi/{name}")), b"x")?;
    }
    let secret = tree.path("phi/secret");
    std::fs::write(&secret, b"locked")?;
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let (_collector, mut sub, sensor) = start(&tree, "").await?;

    let pid = run(&tests::netns::python(), &["-c", SCRIPT, &tree.path("phi")])?;
    barrier(&mut sub, &tree).await?;

    let events = by_pid(sub.files_under(&tree.path("phi")), pid);
    let of = |name: &str| -> Vec<&FileEvent> {
        let path = tree.path(&format!("phi/{name}"));
        events.iter().copied().filter(|f| f.path == path).collect()
    };
    let open = of("a");
    assert_eq!(open.len(), 1, "open(2): {events:?}");
    assert_eq!(open[0].operation(), Operation::OpenRead);
    assert_eq!(open[0].flags & 0o3, 0, "O_RDONLY");
    assert!(open[0].result >= 0);

    let openat = of("b");
    assert_eq!(openat.len(), 1, "openat: {events:?}");
    assert_eq!(openat[0].operation(), Operation::OpenWrite);
    assert_eq!(openat[0].flags, 0o2001, "O_WRONLY|O_APPEND as passed");

    let openat2 = of("c");
    assert_eq!(openat2.len(), 1, "openat2: {events:?}");
    assert_eq!(openat2[0].operation(), Operation::OpenWrite);
    assert_eq!(
        openat2[0].flags, 0o102,
        "O_RDWR|O_CREAT from struct open_how"
    );
    assert_eq!(openat2[0].mode, Some(0o640));

    let creat = of("d");
    assert_eq!(creat.len(), 1, "creat: {events:?}");
    assert_eq!(creat[0].operation(), Operation::OpenWrite);
    assert_eq!(creat[0].mode, Some(0o600));

    let refused = of("secret");
    assert_eq!(
        refused.len(),
        1,
        "refused openat through a dir fd: {events:?}"
    );
    assert_eq!(refused[0].result, -13, "EACCES");
    assert_eq!(refused[0].process.as_ref().map(|p| p.uid), Some(65534));
    sensor.stop().await?;
    Ok(())
}

/// No depth limit fails silent: a file 19 directories below the watched
/// root is reported with its full path, and one deeper than the kernel's
/// walk (64 levels) is reported too, flagged as possibly watched, with the
/// names nearest it (created after the sensor started, so only the walk,
/// not the identity scan, can know it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_file_is_reported_and_one_deeper_than_the_walk_is_flagged() -> anyhow::Result<()> {
    let tree = Tree::new()?;
    let deep19 = format!("phi/{}f19.txt", "d/".repeat(19));
    let dir70 = format!("phi/{}", "d/".repeat(70));
    std::fs::create_dir_all(tree.path(&dir70))?;
    std::fs::write(tree.path(&deep19), b"rx")?;
    let (_collector, mut sub, sensor) = start(&tree, "").await?;

    let deep70 = format!("{dir70}f70.txt");
    std::fs::write(tree.path(&deep70), b"rx")?;
    let reader19 = run("/bin/cat", &[&tree.path(&deep19)])?;
    let reader70 = run("/bin/cat", &[&tree.path(&deep70)])?;
    barrier(&mut sub, &tree).await?;

    let all = sub.files_under("");
    let r19 = by_pid(all.clone(), reader19);
    assert_eq!(r19.len(), 1, "19 levels deep: {r19:?}");
    assert_eq!(r19[0].path, tree.path(&deep19));
    assert_eq!(r19[0].operation(), Operation::OpenRead);
    assert!(!r19[0].depth_exceeded && !r19[0].by_identity);

    let r70 = by_pid(all, reader70);
    assert_eq!(r70.len(), 1, "70 levels deep, never dropped: {r70:?}");
    let read = r70[0];
    assert!(read.depth_exceeded, "flagged possibly watched: {read:?}");
    assert_eq!(read.operation(), Operation::OpenRead);
    assert!(
        read.path.starts_with("…/") && read.path.ends_with("/d/d/f70.txt"),
        "the names nearest the file: {}",
        read.path
    );
    let meta = std::fs::metadata(tree.path(&deep70))?;
    let file = read.file.expect("the kernel held the file");
    assert_eq!((file.device, file.inode), (meta.dev(), meta.ino()));
    assert_eq!(read.process.as_ref().map(|p| p.comm.as_str()), Some("cat"));
    sensor.stop().await?;
    Ok(())
}

/// A second name cannot hide a watched file: a hard link made outside the
/// watched tree before the sensor started (found by the identity scan), one
/// made while it runs (reported as a link), and one to a file created in
/// the tree while it runs (added by the kernel at creation) are reported
/// on read and on write, with the name used and the watched name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_outside_the_tree_are_reported_by_identity() -> anyhow::Result<()> {
    let tree = Tree::new()?;
    let rx = tree.path("phi/rx.db");
    let old_link = tree.path("other/old-link");
    std::fs::hard_link(&rx, &old_link)?;
    let (_collector, mut sub, sensor) = start(&tree, "").await?;
    assert!(
        sensor.log().contains("watched files by identity"),
        "{}",
        sensor.log()
    );

    let old_reader = run("/bin/cat", &[&old_link])?;
    let new_link = tree.path("other/new-link");
    let linker = run("/bin/ln", &[&rx, &new_link])?;
    let writer = run("/bin/sh", &["-c", &format!("echo more >> {new_link}")])?;
    let created = tree.path("phi/new.db");
    let creator = run("/bin/sh", &["-c", &format!("echo fresh > {created}")])?;
    let created_link = tree.path("other/created-link");
    run("/bin/ln", &[&created, &created_link])?;
    let created_reader = run("/bin/cat", &[&created_link])?;
    let outsider = run("/bin/cat", &[&tree.path("other/notes.txt")])?;
    barrier(&mut sub, &tree).await?;

    let all = sub.files_under("");
    let meta = std::fs::metadata(&rx)?;
    let old = by_pid(all.clone(), old_reader);
    assert_eq!(
        old.len(),
        1,
        "read through a link made before start: {old:?}"
    );
    assert_eq!(old[0].operation(), Operation::OpenRead);
    assert!(old[0].by_identity, "{:?}", old[0]);
    assert_eq!(old[0].path, old_link, "the name used");
    assert_eq!(old[0].watched_path, rx, "the watched name");
    let file = old[0].file.expect("the kernel held the file");
    assert_eq!((file.device, file.inode), (meta.dev(), meta.ino()));

    let link = by_pid(all.clone(), linker);
    assert_eq!(link.len(), 1, "the link itself: {link:?}");
    assert_eq!(link[0].operation(), Operation::Link);
    assert_eq!(
        (link[0].path.as_str(), link[0].new_path.as_str()),
        (rx.as_str(), new_link.as_str())
    );
    assert_eq!(link[0].result, 0);

    let writes = by_pid(all.clone(), writer);
    assert_eq!(writes.len(), 1, "a write through the new link: {writes:?}");
    assert_eq!(writes[0].operation(), Operation::OpenWrite);
    assert!(writes[0].by_identity);
    assert_eq!(writes[0].path, new_link);

    assert_eq!(
        by_pid(all.clone(), creator).len(),
        1,
        "the creation in the tree is itself reported"
    );
    let fresh = by_pid(all.clone(), created_reader);
    assert_eq!(
        fresh.len(),
        1,
        "a link to a file created while running: {fresh:?}"
    );
    assert!(fresh[0].by_identity);
    assert_eq!(fresh[0].path, created_link);
    assert!(
        by_pid(all, outsider).is_empty(),
        "an unwatched file stays unreported"
    );
    sensor.stop().await?;
    Ok(())
}

/// The opens no open syscall's tracepoint sees. Every kernel: an io_uring
/// instance is reported when it is made (with its process), and an open
/// by file handle (name_to_handle_at, then open_by_handle_at) of a
/// watched file as its read. Where BPF-LSM (`file_open`) or fexit
/// (`do_filp_open`) runs, io_uring's open of a watched file too, inline
/// in `io_uring_enter` and in its worker threads, once each; where
/// neither does (this host), the setup is all there is to see, and the
/// test says so by finding no open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_through_io_uring_and_by_handle_are_reported_where_the_kernel_shows_them()
-> anyhow::Result<()> {
    let tree = Tree::new()?;
    let (_collector, mut sub, sensor) = start(&tree, "").await?;
    assert!(sensor.log().contains("io_uring: "), "{}", sensor.log());
    let kernel = tests::kernel::kernel();
    let sees_io_uring_opens = kernel.lsm.is_ok() || kernel.fexit.is_ok();
    let coverage = if kernel.lsm.is_ok() {
        "opens: every open that reaches a file (BPF-LSM file_open"
    } else {
        "opens: through the open syscalls and open_by_handle_at; io_uring setups reported"
    };
    assert!(sensor.log().contains(coverage), "{}", sensor.log());
    let rx = tree.path("phi/rx.db");
    let uring = tests::bin_path("uring");
    let uring = uring.to_str().expect("utf-8 path");
    let inline = run(uring, &["read", &rx])?;
    let worker = run(uring, &["read", &rx, "--worker"])?;
    let by_handle = run(uring, &["handle", &rx])?;
    barrier(&mut sub, &tree).await?;

    let all = sub.files_under("");
    for pid in [inline, worker] {
        let events = by_pid(all.clone(), pid);
        let setups: Vec<_> = events
            .iter()
            .filter(|f| f.operation() == Operation::IoUringSetup)
            .collect();
        assert_eq!(setups.len(), 1, "io_uring_setup: {events:?}");
        let setup = setups[0];
        let disabled =
            std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").unwrap_or_default();
        if disabled.trim() == "0" {
            assert!(setup.result >= 0, "the ring's fd: {setup:?}");
        }
        assert!(setup.path.is_empty());
        let opens: Vec<_> = events.iter().filter(|f| f.path == rx).collect();
        if sees_io_uring_opens {
            assert_eq!(opens.len(), 1, "io_uring's open of {rx}: {events:?}");
            assert_eq!(opens[0].operation(), Operation::OpenRead);
            assert!(opens[0].result >= 0);
        } else {
            assert!(
                opens.is_empty(),
                "no hook here sees io_uring's opens; if one does now, this test must say so: {opens:?}"
            );
        }
    }

    let events = by_pid(all, by_handle);
    let opens: Vec<_> = events.iter().filter(|f| f.path == rx).collect();
    assert_eq!(
        opens.len(),
        1,
        "open_by_handle_at of a watched file: {events:?}"
    );
    assert_eq!(opens[0].operation(), Operation::OpenRead);
    assert!(opens[0].result >= 0);
    sensor.stop().await?;
    Ok(())
}

/// A read through an overlay whose lower layer is the watched tree: the
/// overlay's file is another inode on another device, under a path no
/// watch names. Where BPF-LSM runs, the overlay's own open of the layer's
/// file passes `file_open`, and is reported once, by the layer file's
/// identity, under the name it was read by (the overlay's mount point
/// and names). Where it does not (this host), nothing sees that open and
/// the test finds none (docs/file-telemetry.md says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_an_overlay_of_the_watched_tree_are_reported_where_bpf_lsm_runs()
-> anyhow::Result<()> {
    let tree = Tree::new()?;
    let scratch = tempfile::tempdir()?;
    load_overlay_module()?;
    let mut mounts = tests::mounts::Mounts::default();
    // Upper and work on a tmpfs of their own (xattrs), the lower layer is
    // the watched directory itself.
    let rw = scratch.path().join("rw");
    mounts.mount(&["-t", "tmpfs", "tmpfs"], &rw)?;
    std::fs::create_dir(rw.join("upper"))?;
    std::fs::create_dir(rw.join("work"))?;
    let merged = scratch.path().join("merged");
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        tree.path("phi"),
        rw.join("upper").display(),
        rw.join("work").display()
    );
    mounts.mount(&["-t", "overlay", "overlay", "-o", &options], &merged)?;
    let merged = std::fs::canonicalize(&merged)?;
    let (_collector, mut sub, sensor) = start(&tree, "").await?;

    let through = merged.join("rx.db").to_string_lossy().into_owned();
    let reader = run("/bin/cat", &[&through])?;
    barrier(&mut sub, &tree).await?;

    let reads = by_pid(sub.files_under(""), reader);
    if tests::kernel::kernel().lsm.is_ok() {
        assert_eq!(reads.len(), 1, "the read through the overlay: {reads:?}");
        let read = reads[0];
        assert_eq!(read.operation(), Operation::OpenRead);
        assert!(read.by_identity, "{read:?}");
        assert_eq!(read.path, through, "the name it was read by");
        assert_eq!(
            read.watched_path,
            tree.path("phi/rx.db"),
            "the watched name"
        );
        let meta = std::fs::metadata(tree.path("phi/rx.db"))?;
        let file = read.file.expect("the kernel held the file");
        assert_eq!(
            (file.device, file.inode),
            (meta.dev(), meta.ino()),
            "the layer's file"
        );
    } else {
        assert!(
            reads.is_empty(),
            "no hook here sees an overlay's opens of its layers; if one does now, this test must say so: {reads:?}"
        );
    }
    sensor.stop().await?;
    drop(mounts);
    Ok(())
}

/// Loads overlayfs where the kernel has it as a module not yet loaded
/// (Debian's kernels; the kiosk guest carries the module).
fn load_overlay_module() -> anyhow::Result<()> {
    let listed = |fs: &str| {
        std::fs::read_to_string("/proc/filesystems")
            .is_ok_and(|l| l.lines().any(|l| l.ends_with(&format!("\t{fs}"))))
    };
    if listed("overlay") {
        return Ok(());
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let module = format!(
        "/lib/modules/{}/kernel/fs/overlayfs/overlay.ko",
        release.trim()
    );
    let status = Command::new("insmod").arg(&module).status()?;
    anyhow::ensure!(
        status.success() || listed("overlay"),
        "insmod {module}: {status}"
    );
    Ok(())
}

/// The sensor's own files, its allowlist policy, its config and its
/// binary, are always watched for changes (tamper evidence), though no
/// `[[files.watch]]` covers them: a write and a chmod by another process
/// are reported, a read is not (only changes are).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sensor_s_policy_file_is_always_watched_for_changes() -> anyhow::Result<()> {
    let tree = Tree::new()?;
    let own = tempfile::Builder::new().prefix("rxsentry-own-").tempdir()?;
    let cgroup = tests::cgroup::TestCgroup::new(&marker("rxfiles-own"))?;
    let policy = std::fs::canonicalize(own.path())?.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "mode = \"monitor\"\nscope_cgroups = [\"{}\"]\n",
            cgroup.path.display()
        ),
    )?;
    let policy_path = policy.display().to_string();
    let spool = own.path().join("spool");
    let (collector, mut sub, sensor) = start(
        &tree,
        // After `[files]`'s keys; `[[files.watch]]` follows it.
        &format!(
            "[policy]\npath = \"{policy_path}\"\n[spool]\ndir = \"{}\"\n[self_protection]\ndeny_writes = true",
            spool.display()
        ),
    )
    .await?;
    let mut tamper = Subscription::open(
        &collector.url(),
        SubscribeRequest {
            kinds: vec![EventKind::Tamper as i32],
            ..Default::default()
        },
    )
    .await?;

    // Where BPF-LSM runs the write guard refuses every change below
    // (each still reported); elsewhere they are made and reported.
    let guard = tests::kernel::kernel().lsm.is_ok();
    assert!(
        sensor.log().contains(if guard {
            "write guard: BPF-LSM refuses"
        } else {
            "write guard: no BPF-LSM on this kernel"
        }),
        "{}",
        sensor.log()
    );
    let made = |status: std::process::ExitStatus, what: &str| {
        assert_eq!(status.success(), !guard, "{what} (guard: {guard})");
    };
    let reader = run("/bin/cat", &[&policy_path])?;
    let appended = std::fs::OpenOptions::new().append(true).open(&policy);
    assert_eq!(
        appended
            .as_ref()
            .err()
            .and_then(std::io::Error::raw_os_error),
        guard.then_some(libc::EPERM),
        "append to the policy: {appended:?}"
    );
    let (chmod, status) = tests::procs::run_for_status("/bin/chmod", &["600", &policy_path])?;
    made(status, "chmod of the policy");
    let me = std::process::id();
    sub.until(Duration::from_secs(20), |s| {
        let mine = s.files_under(&policy_path);
        mine.iter().any(|f| f.operation() == Operation::OpenWrite)
            && mine.iter().any(|f| f.operation() == Operation::Chmod)
    })
    .await?;
    barrier(&mut sub, &tree).await?;
    let events = sub.files_under(&policy_path);
    let write = by_pid(events.clone(), me);
    assert_eq!(write.len(), 1, "{events:?}");
    assert_eq!(write[0].operation(), Operation::OpenWrite);
    let chmods = by_pid(events.clone(), chmod);
    assert_eq!(chmods.len(), 1, "{events:?}");
    assert_eq!(chmods[0].operation(), Operation::Chmod);
    assert!(
        by_pid(events, reader).is_empty(),
        "a read of the policy is not a change"
    );

    // Its config and its binary: a chmod of each to the mode it already
    // has (a change of metadata the test can make without harm).
    let config = std::fs::canonicalize(sensor.config_file().expect("harness config"))?;
    let binary = std::fs::canonicalize(tests::bin_path("rxsentry-sensor"))?;
    let mut chmodded = Vec::new();
    for file in [&config, &binary] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(file)?.permissions().mode() & 0o7777;
        let path = file.display().to_string();
        let (pid, status) =
            tests::procs::run_for_status("/bin/chmod", &[&format!("{mode:o}"), &path])?;
        made(status, &path);
        chmodded.push((path, pid));
    }
    sub.until(Duration::from_secs(20), |s| {
        chmodded.iter().all(|(path, pid)| {
            by_pid(s.files_under(path), *pid)
                .iter()
                .any(|f| f.operation() == Operation::Chmod)
        })
    })
    .await?;

    // A file dropped into its spool directory (where unsent batches wait).
    let dropped = spool.join("0000-forged.seg").display().to_string();
    let (dropper, status) = tests::procs::run_for_status("/usr/bin/touch", &[&dropped])?;
    made(status, "a file created in the spool");
    assert_eq!(Path::new(&dropped).exists(), !guard);

    // Each change is also a tamper event naming what and who; the read
    // is not.
    let spool_dir = std::fs::canonicalize(&spool)?.display().to_string();
    let refused = |op: &str, name: &str| format!("{op} of {name:?} refused (BPF-LSM)");
    let file_name = |p: &str| {
        Path::new(p)
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned())
    };
    let expected_refused = [
        (
            "sensor policy",
            me,
            refused("open for writing", "policy.toml"),
            policy_path.clone(),
        ),
        (
            "sensor policy",
            chmod,
            refused("chmod", "policy.toml"),
            policy_path.clone(),
        ),
        (
            "sensor config",
            chmodded[0].1,
            refused("chmod", &file_name(&chmodded[0].0)),
            chmodded[0].0.clone(),
        ),
        (
            "sensor binary",
            chmodded[1].1,
            refused("chmod", "rxsentry-sensor"),
            chmodded[1].0.clone(),
        ),
        (
            "sensor spool directory",
            dropper,
            refused("create", "0000-forged.seg"),
            spool_dir.clone(),
        ),
    ];
    let expected_made = [
        (
            "sensor policy",
            me,
            "opened for writing",
            policy_path.clone(),
        ),
        ("sensor policy", chmod, "mode changed", policy_path.clone()),
        (
            "sensor config",
            chmodded[0].1,
            "mode changed",
            chmodded[0].0.clone(),
        ),
        (
            "sensor binary",
            chmodded[1].1,
            "mode changed",
            chmodded[1].0.clone(),
        ),
        (
            "sensor spool directory",
            dropper,
            "opened for writing",
            dropped,
        ),
    ]
    .map(|(o, p, a, t)| (o, p, a.to_owned(), t));
    let expected = if guard {
        expected_refused
    } else {
        expected_made
    };
    let findings = |s: &Subscription| -> Vec<(String, u32, String, String)> {
        s.tamper()
            .into_iter()
            .map(|t| {
                let pid = t.process.as_ref().map_or(0, |p| p.pid);
                (t.object.clone(), pid, t.action.clone(), t.target.clone())
            })
            .collect()
    };
    let want: Vec<(String, u32, String, String)> = expected
        .iter()
        .map(|(o, p, a, t)| ((*o).to_owned(), *p, a.clone(), t.clone()))
        .collect();
    let waited = tamper
        .until(Duration::from_secs(20), |s| {
            want.iter().all(|w| findings(s).contains(w))
        })
        .await;
    assert!(waited.is_ok(), "want {want:?}, got {:?}", findings(&tamper));
    assert!(
        findings(&tamper).iter().all(|(_, pid, ..)| *pid != reader),
        "a read is not tampering: {:?}",
        findings(&tamper)
    );
    if guard {
        // A refused write is reported once (by the guard), not again as
        // a failed call.
        let twice = findings(&tamper)
            .into_iter()
            .filter(|(_, pid, action, _)| *pid == me && action.contains("opened for writing"))
            .count();
        assert_eq!(twice, 0, "{:?}", findings(&tamper));
    }
    // The guard ends with the sensor: a stopped sensor's files can be
    // changed (upgrades, maintenance), and the allowlist stays pinned.
    sensor.stop().await?;
    std::fs::OpenOptions::new().append(true).open(&policy)?;
    Ok(())
}
