//! Network isolation (containment) of this terminal: the state machine
//! shared by the daemon and the local `rxsentry-sensor isolate|release`
//! command. The kernel maps are the truth for "isolated or not"; the state
//! file (`<state_dir>/isolation.toml`) says who asked and why, carries the
//! resolved allow list for a re-apply at boot without DNS, and survives a
//! reboot, which the pins do not. See docs/isolation.md.

pub mod kernel;
pub mod service;

use std::{
    fmt, fs, io,
    io::Write as _,
    net::{IpAddr, ToSocketAddrs as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use kernel::{IsolationKernel, KernelError};
use prost::Message as _;
use proto::{
    control::v1::IsolationStatus,
    telemetry::v1::{Event, IsolationEvent, event, isolation_event},
};
use sensor_common::{IsolationAllowKey, IsolationState};
use serde::{Deserialize, Serialize};

use crate::{
    clock,
    config::{IsolationConfig, proto_number},
};

#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("a reason is required (it goes into the audit record)")]
    NoReason,
    #[error("a requester is required")]
    NoRequester,
    #[error("cannot resolve the collector endpoint {endpoint:?}: {why}")]
    Resolve { endpoint: String, why: String },
    #[error("state file {path}: {why}")]
    StateFile { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IsolationError + '_ {
    move |source| IsolationError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Isolate,
    Release,
    /// Apply the persisted state again (boot, sensor start).
    Reapply,
}

/// One requested change and who asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub action: Action,
    /// An operator name, `local:<user>`, `detection:<rule>` or `sensor:<why>`.
    pub requester: String,
    pub reason: String,
}

/// A peer an isolated terminal may still talk to (address None: any).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    pub port: u16,
    /// This terminal's port, 0 for any. Absent in state files written
    /// before it existed (and omitted when 0): any local port.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub local_port: u16,
    /// IP protocol number, 0 for any.
    pub protocol: u8,
}

fn is_zero(port: &u16) -> bool {
    *port == 0
}

impl Peer {
    /// The kernel map key: IPv4 as `::ffff:a.b.c.d`, any address as zeros.
    pub fn key(&self) -> IsolationAllowKey {
        let addr = match self.address {
            Some(IpAddr::V4(v4)) => v4.to_ipv6_mapped().octets(),
            Some(IpAddr::V6(v6)) => v6.octets(),
            None => [0; 16],
        };
        IsolationAllowKey {
            addr,
            port: self.port,
            local_port: self.local_port,
            proto: self.protocol,
            _pad: [0; 3],
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            proto_number::TCP => "tcp",
            proto_number::UDP => "udp",
            _ => "any",
        };
        match self.address {
            Some(a) => write!(f, "{proto} {a}")?,
            None => write!(f, "{proto} any address")?,
        }
        if self.port != 0 {
            write!(f, " port {}", self.port)?;
        }
        if self.local_port != 0 {
            write!(f, " local port {}", self.local_port)?;
        }
        Ok(())
    }
}

/// `<state_dir>/isolation.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    pub isolated: bool,
    pub requester: String,
    pub reason: String,
    pub changed_at_unix_ms: u64,
    /// Resolved when isolating, so a re-apply at boot needs no DNS.
    #[serde(default)]
    pub allowed: Vec<Peer>,
}

impl PersistedState {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("isolation.toml")
    }

    /// The persisted state, or the default (not isolated) if there is none.
    pub fn load(state_dir: &Path) -> Result<Self, IsolationError> {
        let path = Self::path(state_dir);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        toml::from_str(&text).map_err(|e| IsolationError::StateFile {
            path,
            why: e.to_string(),
        })
    }

    /// Written to a temporary file, synced, then renamed: a crash leaves
    /// the old or the new state, never half of one.
    pub fn store(&self, state_dir: &Path) -> Result<(), IsolationError> {
        let path = Self::path(state_dir);
        let text = toml::to_string(self).map_err(|e| IsolationError::StateFile {
            path: path.clone(),
            why: e.to_string(),
        })?;
        write_atomic(&path, text.as_bytes())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IsolationError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The collector endpoint's addresses and port, as TCP peers.
pub fn collector_peers(endpoint: &str) -> Result<Vec<Peer>, IsolationError> {
    let resolve_err = |why: String| IsolationError::Resolve {
        endpoint: endpoint.to_owned(),
        why,
    };
    let uri: tonic::transport::Uri = endpoint.parse().map_err(|e| resolve_err(format!("{e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| resolve_err("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    let mut peers: Vec<Peer> = (host, port)
        .to_socket_addrs()
        .map_err(|e| resolve_err(e.to_string()))?
        .map(|a| Peer {
            address: Some(a.ip()),
            port,
            local_port: 0,
            protocol: proto_number::TCP,
        })
        .collect();
    peers.dedup();
    if peers.is_empty() {
        return Err(resolve_err("no addresses".into()));
    }
    Ok(peers)
}

/// Everything allowed while isolated: the collector, then `config.allow`.
pub fn allowed_peers(
    collector_endpoint: &str,
    config: &IsolationConfig,
) -> Result<Vec<Peer>, IsolationError> {
    let mut peers = collector_peers(collector_endpoint)?;
    for rule in &config.allow {
        // Validated with the config: a failure here is a bug, still refused.
        let (address, protocol) = rule.parse().map_err(|why| IsolationError::StateFile {
            path: PathBuf::from("isolation.allow"),
            why,
        })?;
        peers.push(Peer {
            address,
            port: rule.port,
            local_port: rule.local_port,
            protocol,
        });
    }
    Ok(peers)
}

/// Held while the state changes, so the daemon and a local command never
/// interleave their map and file updates.
struct StateLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

impl StateLock {
    fn take(state_dir: &Path) -> Result<Self, IsolationError> {
        let path = state_dir.join("isolation.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map(Self)
            .map_err(|(_, e)| io_err(&path)(e.into()))
    }
}

/// The isolation of this terminal: pinned kernel state plus state file.
pub struct Isolation {
    kernel: IsolationKernel,
    pub(crate) config: IsolationConfig,
    collector_endpoint: String,
}

impl Isolation {
    /// Opens (or creates) the pinned maps and attaches to every interface.
    pub fn open(
        config: &IsolationConfig,
        collector_endpoint: &str,
    ) -> Result<Self, IsolationError> {
        fs::create_dir_all(&config.state_dir).map_err(io_err(&config.state_dir))?;
        let mut kernel = IsolationKernel::open(&config.pin_dir, config.tc_attach)?;
        kernel.attach_missing()?;
        Ok(Self {
            kernel,
            config: config.clone(),
            collector_endpoint: collector_endpoint.to_owned(),
        })
    }

    pub fn kernel(&self) -> &IsolationKernel {
        &self.kernel
    }

    /// Attaches to interfaces that appeared since the last call, and again
    /// where someone detached a link.
    pub fn poll_interfaces(&mut self) -> Result<kernel::AttachReport, IsolationError> {
        Ok(self.kernel.attach_missing()?)
    }

    /// Applies `change` and returns its audit event, or None for a
    /// re-apply that found nothing to do. Bad input and failures change
    /// nothing: the state file is written first and restored if the kernel
    /// refuses the update.
    pub fn apply(&mut self, change: &Change) -> Result<Option<Event>, IsolationError> {
        if change.requester.trim().is_empty() {
            return Err(IsolationError::NoRequester);
        }
        if change.action != Action::Reapply && change.reason.trim().is_empty() {
            return Err(IsolationError::NoReason);
        }
        let state_dir = self.config.state_dir.clone();
        let _lock = StateLock::take(&state_dir)?;
        let prev = PersistedState::load(&state_dir)?;
        let kernel_state = self.kernel.state()?;
        let (next, peers) = match change.action {
            Action::Isolate => {
                let peers = allowed_peers(&self.collector_endpoint, &self.config)?;
                let next = PersistedState {
                    isolated: true,
                    requester: change.requester.clone(),
                    reason: change.reason.clone(),
                    changed_at_unix_ms: unix_ms(),
                    allowed: peers.clone(),
                };
                (next, peers)
            }
            Action::Release => {
                let next = PersistedState {
                    isolated: false,
                    requester: change.requester.clone(),
                    reason: change.reason.clone(),
                    changed_at_unix_ms: unix_ms(),
                    allowed: prev.allowed.clone(),
                };
                (next, prev.allowed.clone())
            }
            Action::Reapply => {
                if !prev.isolated || kernel_state.isolated != 0 {
                    return Ok(None);
                }
                (prev.clone(), prev.allowed.clone())
            }
        };
        if next != prev {
            next.store(&state_dir)?;
        }
        let keys: Vec<IsolationAllowKey> = peers.iter().map(Peer::key).collect();
        let isolated = u32::from(next.isolated);
        let updated = (|| -> Result<(), KernelError> {
            if next.isolated {
                self.kernel.set_allow(&keys)?;
                if kernel_state.isolated == 0 {
                    self.kernel.reset_stats()?;
                }
            }
            self.kernel.set_state(IsolationState {
                isolated,
                _pad: 0,
                generation: kernel_state.generation + 1,
            })
        })();
        if let Err(e) = updated {
            // Put back what was there; the kernel state is unchanged unless
            // the last step failed, which leaves the old state too.
            let _ = prev.store(&state_dir);
            return Err(e.into());
        }
        let reason = match change.action {
            Action::Reapply => format!(
                "{} (state set by {}: {})",
                change.reason, next.requester, next.reason
            ),
            _ => change.reason.clone(),
        };
        Ok(Some(self.audit_event(
            change,
            &reason,
            next.isolated,
            &peers,
            "",
        )))
    }

    /// The audit event of a change that failed (nothing changed).
    /// Whether the state file says isolated while the kernel's map says
    /// not: the map was flipped behind rxsentry's back.
    pub fn flipped(&self) -> bool {
        PersistedState::load(&self.config.state_dir).is_ok_and(|s| s.isolated)
            && self.kernel.state().is_ok_and(|s| s.isolated == 0)
    }

    /// Where the state map is pinned (for reports).
    pub fn state_map_path(&self) -> std::path::PathBuf {
        self.config
            .pin_dir
            .join(sensor_common::names::ISOLATION_STATE)
    }

    pub fn failure_event(&self, change: &Change, error: &IsolationError) -> Event {
        let isolated = self.kernel.state().is_ok_and(|s| s.isolated != 0);
        self.audit_event(change, &change.reason, isolated, &[], &error.to_string())
    }

    fn audit_event(
        &self,
        change: &Change,
        reason: &str,
        isolated: bool,
        peers: &[Peer],
        error: &str,
    ) -> Event {
        let action = match change.action {
            Action::Isolate => isolation_event::Action::Isolate,
            Action::Release => isolation_event::Action::Release,
            Action::Reapply => isolation_event::Action::Reapply,
        };
        let now = clock::now();
        Event {
            timestamp_ns: now.timestamp_ns,
            boot_time_unix_ns: now.boot_time_unix_ns,
            kind: Some(event::Kind::Isolation(IsolationEvent {
                action: action as i32,
                requester: change.requester.clone(),
                reason: reason.to_owned(),
                isolated,
                allowed_peers: if isolated {
                    peers.iter().map(Peer::to_string).collect()
                } else {
                    Vec::new()
                },
                interfaces: self.kernel.attached().unwrap_or_default(),
                error: error.to_owned(),
            })),
        }
    }

    /// The current state: isolated or not from the kernel, who and why from
    /// the state file.
    pub fn status(&self) -> Result<IsolationStatus, IsolationError> {
        let kernel = self.kernel.state()?;
        let file = PersistedState::load(&self.config.state_dir)?;
        Ok(IsolationStatus {
            isolated: kernel.isolated != 0,
            requester: file.requester,
            reason: file.reason,
            changed_at_unix_ms: file.changed_at_unix_ms,
            interfaces: self.kernel.attached()?,
        })
    }
}

/// Audit events written while the daemon cannot send them (the local
/// command); the daemon sends and deletes them.
pub mod spool {
    use super::*;

    fn dir(state_dir: &Path) -> PathBuf {
        state_dir.join("audit")
    }

    pub fn write(state_dir: &Path, event: &Event) -> Result<PathBuf, IsolationError> {
        let dir = dir(state_dir);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(format!(
            "{:020}-{}.pb",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            std::process::id()
        ));
        write_atomic(&path, &event.encode_to_vec())?;
        Ok(path)
    }

    /// Every spooled event not in `skip` (already on its way), oldest
    /// first, with its file. The files stay: they are deleted once the
    /// batch carrying their event is acknowledged by the collector. An
    /// undecodable file is removed with a warning: it can never be sent.
    pub fn pending(
        state_dir: &Path,
        skip: &std::collections::HashSet<PathBuf>,
    ) -> Vec<(PathBuf, Event)> {
        let dir = dir(state_dir);
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pb") && !skip.contains(p))
            .collect();
        files.sort();
        let mut events = Vec::new();
        for path in files {
            match fs::read(&path).map(|b| Event::decode(b.as_slice())) {
                Ok(Ok(event)) => events.push((path, event)),
                Ok(Err(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "undecodable audit record dropped");
                    let _ = fs::remove_file(&path);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read audit record");
                }
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_map_ipv4_into_ipv6_and_any_to_zero() {
        let p = Peer {
            address: Some("10.1.2.3".parse().unwrap()),
            port: 50051,
            local_port: 0,
            protocol: proto_number::TCP,
        };
        let k = p.key();
        assert_eq!(&k.addr[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&k.addr[12..], &[10, 1, 2, 3]);
        assert_eq!((k.port, k.proto), (50051, 6));
        assert_eq!(p.to_string(), "tcp 10.1.2.3 port 50051");
        let any = Peer {
            address: None,
            port: 67,
            local_port: 0,
            protocol: proto_number::UDP,
        };
        assert_eq!(any.key().addr, [0; 16]);
        assert_eq!(any.key().local_port, 0);
        assert_eq!(any.to_string(), "udp any address port 67");
        let dhcp = Peer {
            local_port: 68,
            ..any
        };
        let k = dhcp.key();
        assert_eq!(
            (k.port, k.local_port, k.proto, k._pad),
            (67, 68, 17, [0; 3])
        );
        assert_eq!(dhcp.to_string(), "udp any address port 67 local port 68");
    }

    #[test]
    fn collector_endpoint_becomes_tcp_peers() {
        let peers = collector_peers("http://127.0.0.1:50051").unwrap();
        assert_eq!(
            peers,
            [Peer {
                address: Some("127.0.0.1".parse().unwrap()),
                port: 50051,
                local_port: 0,
                protocol: proto_number::TCP
            }]
        );
        let v6 = collector_peers("http://[fd00::5]:7000").unwrap();
        assert_eq!(v6[0].address, Some("fd00::5".parse().unwrap()));
        assert_eq!(collector_peers("http://10.0.0.1").unwrap()[0].port, 80);
        assert!(collector_peers("not a url").is_err());
    }

    #[test]
    fn state_file_round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            PersistedState::load(dir.path()).unwrap(),
            PersistedState::default()
        );
        let s = PersistedState {
            isolated: true,
            requester: "alice".into(),
            reason: "ransomware".into(),
            changed_at_unix_ms: 5,
            allowed: vec![
                Peer {
                    address: None,
                    port: 67,
                    local_port: 68,
                    protocol: 17,
                },
                Peer {
                    address: Some("10.0.0.1".parse().unwrap()),
                    port: 53,
                    local_port: 0,
                    protocol: 17,
                },
            ],
        };
        s.store(dir.path()).unwrap();
        assert_eq!(PersistedState::load(dir.path()).unwrap(), s);
        // A file written before local ports existed still loads: any.
        fs::write(
            PersistedState::path(dir.path()),
            "isolated = true\nrequester = \"alice\"\nreason = \"r\"\nchanged_at_unix_ms = 5\n\
             [[allowed]]\nport = 67\nprotocol = 17\n",
        )
        .unwrap();
        let old = PersistedState::load(dir.path()).unwrap();
        assert_eq!(old.allowed.len(), 1);
        assert_eq!((old.allowed[0].port, old.allowed[0].local_port), (67, 0));
        assert_eq!(old.allowed[0].key().local_port, 0);
        fs::write(PersistedState::path(dir.path()), "isolated = \"yes\"").unwrap();
        let e = PersistedState::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("isolation.toml"), "{e}");
    }

    #[test]
    fn spool_keeps_order_and_files_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for n in 1..=3 {
            let e = Event {
                timestamp_ns: n,
                ..Default::default()
            };
            paths.push(spool::write(dir.path(), &e).unwrap());
        }
        let junk = dir.path().join("audit/zzz.pb");
        fs::write(&junk, b"\xff\xff").unwrap();
        let none = std::collections::HashSet::new();
        let got: Vec<(PathBuf, u64)> = spool::pending(dir.path(), &none)
            .into_iter()
            .map(|(p, e)| (p, e.timestamp_ns))
            .collect();
        assert_eq!(
            got,
            paths.iter().cloned().zip([1, 2, 3]).collect::<Vec<_>>()
        );
        assert!(!junk.exists(), "undecodable: removed");
        assert!(paths.iter().all(|p| p.exists()), "kept until acknowledged");
        let sent: std::collections::HashSet<PathBuf> = paths[..2].iter().cloned().collect();
        let left: Vec<u64> = spool::pending(dir.path(), &sent)
            .iter()
            .map(|(_, e)| e.timestamp_ns)
            .collect();
        assert_eq!(left, [3], "those on their way are skipped");
    }
}
