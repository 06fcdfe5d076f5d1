//! Bytes from the ring buffer -> [`KernelEvent`].

use std::{borrow::Cow, mem::size_of};

use sensor_common::{
    EVENT_PARTIAL, EXEC_ARGV_TRUNCATED, EXEC_FILENAME_TRUNCATED, EventHeader, EventKind, ExecEvent,
    ExitEvent, FileEvent, FileRenameEvent, ForkEvent, NO_ANCHOR, PATH_BY_IDENTITY,
    PATH_CHAIN_TRUNCATED, PATH_DEPTH_EXCEEDED, PATH_NAME_TRUNCATED, PathRecord, PolicyEvent,
    TaskInfo, action, tamper_call,
};

use super::{
    Comm, ExecRecord, ExitRecord, FileRecord, ForkRecord, KernelEvent, NetRecord, PolicyRecord,
    RawPath, TamperCall, TamperRecord, TaskIdentity, dns,
};

/// A record that does not match any layout we know. Counted, never fatal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than an event header")]
    TooShort(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("tamper record with unknown call {0}")]
    UnknownCall(u32),
    #[error("{kind:?} record has {got} bytes, expected {want}")]
    SizeMismatch {
        kind: EventKind,
        got: usize,
        want: usize,
    },
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read_pod(bytes).ok_or(DecodeError::TooShort(bytes.len()))?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    let partial = header.flags & EVENT_PARTIAL != 0;
    match kind {
        EventKind::Exec => {
            let raw = read_exact::<ExecEvent>(bytes, kind)?;
            let argv_len = (raw.argv_len as usize).min(raw.argv.len());
            Ok(KernelEvent::Exec(ExecRecord {
                timestamp_ns: header.timestamp_ns,
                task: task_identity(&raw.task),
                filename: c_string(&raw.filename),
                argv: split_argv(&raw.argv[..argv_len]),
                argv_truncated: header.flags & EXEC_ARGV_TRUNCATED != 0,
                filename_truncated: header.flags & EXEC_FILENAME_TRUNCATED != 0,
                device: kernel_dev_to_user(raw.dev),
                inode: raw.ino,
                size: raw.size,
                mtime_sec: raw.mtime_sec,
                mtime_nsec: raw.mtime_nsec,
                ctime_sec: raw.ctime_sec,
                ctime_nsec: raw.ctime_nsec,
                partial,
            }))
        }
        EventKind::Fork => {
            let raw = read_exact::<ForkEvent>(bytes, kind)?;
            Ok(KernelEvent::Fork(ForkRecord {
                timestamp_ns: header.timestamp_ns,
                task: task_identity(&raw.task),
                partial,
            }))
        }
        EventKind::Exit => {
            let raw = read_exact::<ExitEvent>(bytes, kind)?;
            Ok(KernelEvent::Exit(ExitRecord {
                timestamp_ns: header.timestamp_ns,
                task: task_identity(&raw.task),
                status: raw.exit_code,
                partial,
            }))
        }
        EventKind::Policy => {
            let raw = read_exact::<PolicyEvent>(bytes, kind)?;
            Ok(KernelEvent::Policy(PolicyRecord {
                timestamp_ns: header.timestamp_ns,
                task: task_identity(&raw.task),
                filename: c_string(&raw.filename),
                device: kernel_dev_to_user(raw.file.dev),
                inode: raw.file.ino,
                blocked: raw.action == action::BLOCKED,
                reason: raw.reason,
                backend: raw.backend,
                rule_index: (raw.rule != u32::MAX).then_some(raw.rule),
                rule: String::new(),
                generation: raw.generation,
                partial,
            }))
        }
        EventKind::File => {
            let raw = read_exact::<FileEvent>(bytes, kind)?;
            Ok(KernelEvent::File(Box::new(file_record(
                &raw, None, partial,
            ))))
        }
        EventKind::FileRename => {
            let raw = read_exact::<FileRenameEvent>(bytes, kind)?;
            Ok(KernelEvent::File(Box::new(file_record(
                &raw.file,
                Some(raw_path(&raw.new_path)),
                partial,
            ))))
        }
        EventKind::Net => {
            let raw = read_exact::<sensor_common::NetEvent>(bytes, kind)?;
            Ok(KernelEvent::Net(Box::new(net_record(&raw, partial))))
        }
        EventKind::TamperCall => {
            let raw = read_exact::<sensor_common::TamperCallEvent>(bytes, kind)?;
            let target = raw.target as u32;
            let call = match raw.call {
                tamper_call::BPF => TamperCall::Bpf {
                    cmd: raw.op,
                    id: target,
                    path: c_string(&raw.path),
                    cwd: (raw.file.ino != 0)
                        .then(|| (kernel_dev_to_user(raw.file.dev), raw.file.ino)),
                },
                tamper_call::PTRACE => TamperCall::Ptrace {
                    request: raw.op,
                    target,
                },
                tamper_call::VM_READ => TamperCall::VmRead { target },
                tamper_call::VM_WRITE => TamperCall::VmWrite { target },
                tamper_call::WRITE_REFUSED => TamperCall::WriteRefused {
                    op: raw.op,
                    guarded: raw.file,
                    name: c_string(&raw.path),
                },
                other => return Err(DecodeError::UnknownCall(other)),
            };
            Ok(KernelEvent::Tamper(Box::new(TamperRecord {
                timestamp_ns: header.timestamp_ns,
                task: task_identity(&raw.task),
                call: Some(call),
                object: String::new(),
                action: String::new(),
                target: String::new(),
                partial,
            })))
        }
    }
}

fn file_record(raw: &FileEvent, raw_new_path: Option<RawPath>, partial: bool) -> FileRecord {
    FileRecord {
        timestamp_ns: raw.header.timestamp_ns,
        task: task_identity(&raw.task),
        op: raw.op,
        flags: raw.flags,
        result: raw.result,
        mode: raw.mode,
        uid: raw.uid,
        gid: raw.gid,
        device: kernel_dev_to_user(raw.dev),
        inode: raw.ino,
        raw_path: raw_path(&raw.path),
        raw_new_path,
        path: String::new(),
        new_path: None,
        watched_path: None,
        partial,
        repeats: None,
    }
}

/// The kernel's path record; names are cut at the chain's valid length, so
/// a hostile or stale byte after it is never read.
fn raw_path(p: &PathRecord) -> RawPath {
    let chain_len = (p.chain_len as usize).min(p.chain.len());
    // Leaf first in the record: from the anchor down is back to front.
    let mut chain = String::with_capacity(chain_len);
    for name in p.chain[..chain_len].rsplit(|&b| b == 0) {
        if !name.is_empty() {
            if !chain.is_empty() {
                chain.push('/');
            }
            chain.push_str(&String::from_utf8_lossy(name));
        }
    }
    RawPath {
        anchor: (p.anchor != NO_ANCHOR).then_some(p.anchor),
        chain,
        name: c_string(&p.name),
        truncated: p.flags & (PATH_CHAIN_TRUNCATED | PATH_NAME_TRUNCATED) != 0,
        depth_exceeded: p.flags & PATH_DEPTH_EXCEEDED != 0,
        by_identity: p.flags & PATH_BY_IDENTITY != 0,
        chain_device: (p.chain_dev != 0).then(|| kernel_dev_to_user(p.chain_dev)),
    }
}

fn net_record(raw: &sensor_common::NetEvent, partial: bool) -> NetRecord {
    let addr = |bytes: [u8; 16], port: u16| {
        let v6 = std::net::Ipv6Addr::from(bytes);
        let ip = match (raw.family, v6.to_ipv4_mapped()) {
            (sensor_common::AF_INET, Some(v4)) => std::net::IpAddr::V4(v4),
            _ => std::net::IpAddr::V6(v6),
        };
        std::net::SocketAddr::new(ip, port)
    };
    let (dns_questions, dns_error) = if raw.op == sensor_common::net_op::DNS_QUERY {
        let len = (raw.payload_len as usize).min(raw.payload.len());
        dns::parse_query_lossy(&raw.payload[..len])
    } else {
        (Vec::new(), None)
    };
    NetRecord {
        timestamp_ns: raw.header.timestamp_ns,
        task: task_identity(&raw.task),
        op: raw.op,
        protocol: raw.protocol,
        family: raw.family,
        local: addr(raw.laddr, raw.lport),
        remote: addr(raw.raddr, raw.rport),
        result: raw.result,
        bytes_sent: raw.bytes_sent,
        bytes_received: raw.bytes_received,
        dns_questions,
        dns_error,
        partial,
    }
}

/// The record as a `T`: viewed in place when aligned (ring buffer records
/// are 8-byte aligned), copied otherwise. A file record is about 1 KiB, an
/// exec record more: copying them cost more than decoding them.
fn read_exact<T: aya::Pod>(bytes: &[u8], kind: EventKind) -> Result<Cow<'_, T>, DecodeError> {
    if bytes.len() != size_of::<T>() {
        return Err(DecodeError::SizeMismatch {
            kind,
            got: bytes.len(),
            want: size_of::<T>(),
        });
    }
    if bytes.as_ptr().cast::<T>().is_aligned() {
        // SAFETY: T is Pod (any bit pattern valid), the slice holds exactly
        // one T and is aligned for it, and the borrow keeps `bytes` alive.
        Ok(Cow::Borrowed(unsafe { &*bytes.as_ptr().cast::<T>() }))
    } else {
        read_pod(bytes)
            .map(Cow::Owned)
            .ok_or(DecodeError::SizeMismatch {
                kind,
                got: bytes.len(),
                want: size_of::<T>(),
            })
    }
}

/// Copies a Pod value out of a possibly unaligned byte slice.
fn read_pod<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: T is Pod (any bit pattern valid) and the slice holds enough bytes;
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn task_identity(t: &TaskInfo) -> TaskIdentity {
    TaskIdentity {
        tgid: t.tgid,
        tid: t.pid,
        ppid: t.ppid,
        uid: t.uid,
        gid: t.gid,
        euid: t.euid,
        egid: t.egid,
        comm: Comm::from_kernel(&t.comm),
        cgroup_id: t.cgroup_id,
        start_boottime_ns: t.start_boottime_ns,
    }
}

/// Bytes up to the first NUL, lossily as UTF-8 (paths need not be UTF-8).
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn split_argv(block: &[u8]) -> Vec<String> {
    let block = block.strip_suffix(&[0]).unwrap_or(block);
    if block.is_empty() {
        return Vec::new();
    }
    block
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The kernel's internal dev_t (major << 20 | minor) to the `st_dev` that
/// stat(2) returns (glibc's makedev), so both sides compare equal.
pub fn kernel_dev_to_user(dev: u32) -> u64 {
    let major = u64::from(dev >> 20);
    let minor = u64::from(dev & 0xf_ffff);
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

/// `st_dev` (glibc makedev) back to the kernel's internal dev_t, for keys
/// of maps the kernel looks up.
pub fn user_dev_to_kernel(dev: u64) -> u32 {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    ((major << 20) | (minor & 0xf_ffff)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::{ARGV_LEN, FILENAME_LEN};

    fn as_bytes<T>(v: &T) -> &[u8] {
        // SAFETY: test-only view of a repr(C) value's bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
    }

    fn task() -> TaskInfo {
        let mut comm = [0u8; 16];
        comm[..2].copy_from_slice(b"sh");
        TaskInfo {
            tgid: 10,
            pid: 11,
            ppid: 1,
            uid: 1000,
            gid: 1000,
            euid: 0,
            egid: 0,
            _pad: 0,
            cgroup_id: 7,
            start_boottime_ns: 99,
            comm,
        }
    }

    #[test]
    fn decodes_exec_with_argv_and_flags() {
        let mut filename = [0u8; FILENAME_LEN];
        filename[..7].copy_from_slice(b"/bin/sh");
        let mut argv = [0u8; ARGV_LEN];
        let args = b"sh\0-c\0exit 7\0";
        argv[..args.len()].copy_from_slice(args);
        let raw = ExecEvent {
            header: EventHeader {
                kind: EventKind::Exec as u32,
                flags: EXEC_ARGV_TRUNCATED,
                timestamp_ns: 5,
            },
            task: task(),
            dev: (8 << 20) | 1,
            argv_len: args.len() as u32,
            ino: 1234,
            size: 77,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 5,
            ctime_nsec: 6,
            ctime_sec: 1_700_000_001,
            filename,
            argv,
        };
        let KernelEvent::Exec(e) = decode(as_bytes(&raw)).unwrap() else {
            panic!("not exec")
        };
        assert_eq!(e.filename, "/bin/sh");
        assert_eq!(e.argv, ["sh", "-c", "exit 7"]);
        assert!(e.argv_truncated);
        assert!(!e.filename_truncated);
        assert_eq!(e.task.comm, "sh");
        assert_eq!(e.task.tid, 11);
        assert_eq!(e.device, 0x801);
        assert_eq!(e.inode, 1234);
        assert_eq!((e.size, e.mtime_sec, e.mtime_nsec), (77, 1_700_000_000, 5));
        assert_eq!((e.ctime_sec, e.ctime_nsec), (1_700_000_001, 6));
    }

    #[test]
    fn decodes_file_paths_aligned_or_not() {
        use sensor_common::{FILE_CHAIN_LEN, FILE_NAME_LEN};
        let mut chain = [0u8; FILE_CHAIN_LEN];
        // Leaf first, each name NUL-terminated; one name is not UTF-8.
        let names = b"rx.db\0d\xffir\0\0" as &[u8];
        chain[..names.len()].copy_from_slice(names);
        let mut name = [0u8; FILE_NAME_LEN];
        name[..6].copy_from_slice(b"a/b.db");
        let raw = FileEvent {
            header: EventHeader {
                kind: EventKind::File as u32,
                flags: EVENT_PARTIAL,
                timestamp_ns: 3,
            },
            task: task(),
            op: sensor_common::file_op::OPEN_WRITE,
            flags: 0o101,
            result: 4,
            mode: 0o600,
            uid: u32::MAX,
            gid: u32::MAX,
            dev: (8 << 20) | 1,
            ino: 77,
            path: PathRecord {
                anchor: 2,
                flags: PATH_NAME_TRUNCATED,
                chain_len: names.len() as u32,
                chain_dev: 0,
                chain,
                name,
            },
        };
        let KernelEvent::File(f) = decode(as_bytes(&raw)).unwrap() else {
            panic!("not a file event")
        };
        assert_eq!(f.raw_path.chain, "d\u{fffd}ir/rx.db");
        assert_eq!(f.raw_path.name, "a/b.db");
        assert_eq!(f.raw_path.anchor, Some(2));
        assert!(f.raw_path.truncated && f.partial);
        assert_eq!((f.op, f.flags, f.result, f.inode), (2, 0o101, 4, 77));
        assert_eq!(f.task.comm, "sh");
        // The same record at an odd address is copied, not viewed.
        let mut shifted = vec![0u8; size_of::<FileEvent>() + 1];
        shifted[1..].copy_from_slice(as_bytes(&raw));
        assert_eq!(decode(&shifted[1..]), Ok(KernelEvent::File(f)));
    }

    #[test]
    fn decodes_exit_status() {
        let raw = ExitEvent {
            header: EventHeader {
                kind: EventKind::Exit as u32,
                flags: 0,
                timestamp_ns: 1,
            },
            task: task(),
            exit_code: 7 << 8,
            _pad: 0,
        };
        let KernelEvent::Exit(e) = decode(as_bytes(&raw)).unwrap() else {
            panic!("not exit")
        };
        assert_eq!(e.exit_code(), Some(7));
        assert_eq!(e.signal(), None);
        let killed = ExitRecord { status: 9, ..e };
        assert_eq!(killed.exit_code(), None);
        assert_eq!(killed.signal(), Some(9));
    }

    #[test]
    fn rejects_short_unknown_and_mis_sized_records() {
        assert_eq!(decode(&[0; 4]), Err(DecodeError::TooShort(4)));
        let unknown = EventHeader {
            kind: 77,
            flags: 0,
            timestamp_ns: 0,
        };
        assert_eq!(
            decode(as_bytes(&unknown)),
            Err(DecodeError::UnknownKind(77))
        );
        let fork_header = EventHeader {
            kind: EventKind::Fork as u32,
            flags: 0,
            timestamp_ns: 0,
        };
        assert!(matches!(
            decode(as_bytes(&fork_header)),
            Err(DecodeError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn decodes_network_events_v4_v6_and_dns() {
        let mut raw = sensor_common::NetEvent {
            header: EventHeader {
                kind: EventKind::Net as u32,
                flags: 0,
                timestamp_ns: 9,
            },
            task: task(),
            op: sensor_common::net_op::CLOSE,
            protocol: sensor_common::IPPROTO_TCP,
            family: sensor_common::AF_INET,
            lport: 40000,
            rport: 443,
            result: 1,
            _pad: [0; 3],
            payload_len: 0,
            laddr: std::net::Ipv4Addr::new(10, 0, 0, 2)
                .to_ipv6_mapped()
                .octets(),
            raddr: std::net::Ipv4Addr::new(192, 0, 2, 7)
                .to_ipv6_mapped()
                .octets(),
            bytes_sent: 100,
            bytes_received: 2000,
            payload: [0; sensor_common::DNS_PAYLOAD_LEN],
        };
        let KernelEvent::Net(n) = decode(as_bytes(&raw)).unwrap() else {
            panic!("not net")
        };
        assert_eq!(n.local.to_string(), "10.0.0.2:40000");
        assert_eq!(n.remote.to_string(), "192.0.2.7:443");
        assert_eq!((n.bytes_sent, n.bytes_received), (100, 2000));
        assert!(n.dns_questions.is_empty() && n.dns_error.is_none());

        // An IPv6 socket talking to an IPv4-mapped peer stays IPv6.
        raw.family = sensor_common::AF_INET6;
        raw.laddr = std::net::Ipv6Addr::LOCALHOST.octets();
        raw.op = sensor_common::net_op::DNS_QUERY;
        raw.rport = 53;
        let q = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03pos\x00\x00\x01\x00\x01";
        raw.payload[..q.len()].copy_from_slice(q);
        raw.payload_len = q.len() as u32;
        let KernelEvent::Net(n) = decode(as_bytes(&raw)).unwrap() else {
            panic!("not net")
        };
        assert_eq!(n.local.to_string(), "[::1]:40000");
        assert_eq!(n.remote.to_string(), "[::ffff:192.0.2.7]:53");
        assert_eq!(n.dns_questions.len(), 1);
        assert_eq!(
            (n.dns_questions[0].name.as_str(), n.dns_questions[0].qtype),
            ("pos", 1)
        );

        // A lying payload length is clamped, never trusted.
        raw.payload_len = u32::MAX;
        assert!(decode(as_bytes(&raw)).is_ok());
    }

    #[test]
    fn dev_encoding_matches_makedev() {
        // major 259, minor 3 (nvme0n1p3): st_dev 0x10303.
        assert_eq!(kernel_dev_to_user((259 << 20) | 3), 0x10303);
        // large minor spills into the high bits.
        assert_eq!(kernel_dev_to_user((8 << 20) | 0x123), (0x1 << 20) | 0x823);
        for dev in [(259 << 20) | 3, (8 << 20) | 0x123, (254 << 20), 0x12_3456] {
            assert_eq!(user_dev_to_kernel(kernel_dev_to_user(dev)), dev);
        }
    }
}
