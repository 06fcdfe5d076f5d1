//! Network namespaces, veth pairs, a private bpffs and helper processes
//! made for one test, all removed on drop even when the test fails
//! (deleting a namespace deletes its veths; unmounting the bpffs drops every
//! pin in it). Names carry a random suffix so runs never collide; addresses
//! live only inside the namespaces the test creates, and nothing touches the
//! host's own interfaces.

use std::{
    io::{BufRead as _, BufReader, Lines},
    path::PathBuf,
    process::{ChildStdout, Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    run_tool("ip", args)
}

/// Runs iproute2's `tc` with `args`; an error carries its stderr.
pub fn tc(args: &[&str]) -> anyhow::Result<()> {
    run_tool("tc", args)
}

fn run_tool(tool: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .with_context(|| format!("running {tool} (iproute2)"))?;
    if !out.status.success() {
        bail!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// One end of a veth pair: its namespace, name and addresses.
pub struct End<'a> {
    pub ns: &'a Netns,
    pub name: &'a str,
    pub v4: &'a str,
    pub v6: &'a str,
}

/// Creates a veth pair between two namespaces, addresses both ends (IPv6
/// without duplicate address detection, so it is usable at once) and
/// brings them up.
pub fn veth(a: &End<'_>, b: &End<'_>) -> anyhow::Result<()> {
    ip(&[
        "link", "add", a.name, "netns", &a.ns.name, "type", "veth", "peer", "name", b.name,
        "netns", &b.ns.name,
    ])?;
    for end in [a, b] {
        let ns = end.ns.name.as_str();
        ip(&["-n", ns, "addr", "add", end.v4, "dev", end.name])?;
        ip(&["-n", ns, "addr", "add", end.v6, "dev", end.name, "nodad"])?;
        ip(&["-n", ns, "link", "set", end.name, "up"])?;
    }
    Ok(())
}

/// A bpf filesystem mounted on a temporary directory, unmounted on drop.
pub struct Bpffs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bpffs {
    pub fn mount() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().to_owned();
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&path)
            .status()?;
        if !status.success() {
            bail!("mount -t bpf bpf {} failed: {status}", path.display());
        }
        Ok(Self { path, _dir: dir })
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Two namespaces `a` and `b` (loopback up in both), a veth pair between
/// them and `addr_a`/`addr_b` on it, a /30 of 10.0.0.0/8 picked at random.
/// Deleting the namespaces on drop deletes the pair with them.
pub struct NetnsPair {
    pub a: Netns,
    pub b: Netns,
    pub addr_a: String,
    pub addr_b: String,
}

impl NetnsPair {
    pub fn create() -> anyhow::Result<Self> {
        let id: u32 = rand::random();
        let suffix = format!("{:06x}", id & 0xff_ffff);
        let net = format!("10.{}.{}", 200 + (id >> 24) % 50, (id >> 16) & 0xff);
        let pair = Self {
            a: Netns::new(&format!("rxs-na-{suffix}"))?,
            b: Netns::new(&format!("rxs-nb-{suffix}"))?,
            addr_a: format!("{net}.1"),
            addr_b: format!("{net}.2"),
        };
        let (va, vb) = (format!("rxsva{suffix}"), format!("rxsvb{suffix}"));
        ip(&[
            "link",
            "add",
            &va,
            "netns",
            &pair.a.name,
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            &pair.b.name,
        ])?;
        for (ns, dev, addr) in [(&pair.a, &va, &pair.addr_a), (&pair.b, &vb, &pair.addr_b)] {
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                dev,
            ])?;
            ip(&["-n", &ns.name, "link", "set", dev, "up"])?;
        }
        Ok(pair)
    }
}

/// The Python interpreter the helper scripts run with.
pub fn python() -> String {
    ["/usr/bin/python3", "/root/.pyenv/shims/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("python3")
        .to_owned()
}

/// A helper process (optionally inside a namespace), killed on drop, whose
/// stdout lines the test reads.
pub struct Helper {
    child: std::process::Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Helper {
    /// `python3 -c script args...`, in `netns` if given. `ip netns exec`
    /// execs the command itself, so the pid is the script's.
    pub fn python(netns: Option<&str>, script: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::python_at(&python(), netns, script, args)
    }

    /// [`Helper::python`] with another interpreter binary.
    pub fn python_at(
        interpreter: &str,
        netns: Option<&str>,
        script: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, interpreter]);
                c
            }
            None => Command::new(interpreter),
        };
        let mut child = cmd
            .arg("-c")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a python helper")?;
        let stdout = child.stdout.take().context("helper stdout")?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The rest of the next stdout line that starts with `prefix`.
    pub fn line(&mut self, prefix: &str) -> anyhow::Result<String> {
        for line in self.lines.by_ref() {
            if let Some(rest) = line?.strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
        bail!("helper {} ended before a line {prefix:?}", self.pid())
    }

    /// Waits for a successful exit.
    pub fn wait(mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        if !status.success() {
            bail!("helper {} failed: {status}", self.child.id());
        }
        Ok(())
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
