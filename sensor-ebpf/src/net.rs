//! Network telemetry from tracepoints (the hooks every kiosk kernel has):
//! - `inet_sock_set_state` (raw tracepoint: the kernel's `sock` and the two
//!   states, no record built; most transitions leave after two loads): TCP
//!   CLOSE->SYN_SENT (connect, in the
//!   connecting process: its owner is recorded), SYN_SENT->ESTABLISHED
//!   (connect succeeded, full 5-tuple known), SYN_SENT->CLOSE (connect
//!   failed), CLOSE->LISTEN (listen), any->CLOSE (close, with byte counts);
//! - `sys_exit_accept{,4}`: the accepted socket, found from the returned fd;
//! - `sys_enter_connect` / `sendto` / `sendmsg` / `sendmmsg` on UDP sockets:
//!   destinations (de-duplicated per process in a time window) and the start
//!   of DNS queries.
//!
//! Events from softirq (connect result, close) name the owner recorded in
//! `NET_OWNERS` in process context. Exclusions that are cheap here (the
//! sensor itself, executables, remote address/port, local port) are applied
//! before anything reaches the ring buffer.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_user,
        generated::bpf_probe_read_user as probe_read_user_raw,
    },
    macros::{lsm, map, raw_tracepoint, tracepoint},
    maps::{HashMap, LpmTrie, LruHashMap, RingBuf, lpm_trie::Key},
    programs::{LsmContext, RawTracePointContext, TracePointContext},
};
use sensor_common::{
    AF_INET, AF_INET6, DNS_PAYLOAD_LEN, DNS_PORTS_MAX, EventKind, FileId, IPPROTO_TCP, IPPROTO_UDP,
    KernelOffsets, NET_CONNECT_FAILED, NET_EXCLUDE_ENTRIES, NET_OWNER_ENTRIES,
    NET_UDP_SEEN_ENTRIES, NetEvent, NetOwner, NetSettings, REMOTE_KEY_LEN, REMOTE_KEY_PORT_BITS,
    TaskInfo, UdpSeenKey, drop_reason, net_exclude, net_op, tcp_state,
};

use crate::{
    kernel::{
        Probe, ReadFailed, args, current_syscall_nr, current_task_btf, header, load, read,
        read_current_task, read_fd_file, read_ptr, read_task_exe, tp,
    },
    maps::{offsets, reserve_event, submit_event},
};

/// Network events. The loader resizes it from config
/// (`kernel.net_ringbuf_bytes`); this is only the default.
#[map]
pub static NET_EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Owner of each TCP socket seen at connect/accept/listen, by `struct sock *`.
#[map]
static NET_OWNERS: LruHashMap<u64, NetOwner> = LruHashMap::with_max_entries(NET_OWNER_ENTRIES, 0);

/// Last report (boot ns) of each (process, UDP destination).
#[map]
static NET_UDP_SEEN: LruHashMap<UdpSeenKey, u64> =
    LruHashMap::with_max_entries(NET_UDP_SEEN_ENTRIES, 0);

/// Destination ports whose datagrams are DNS queries.
#[map]
static NET_DNS_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(DNS_PORTS_MAX, 0);

/// Excluded remote prefixes (+ port); value: rule index.
#[map]
static NET_EXCLUDE_REMOTE: LpmTrie<[u8; REMOTE_KEY_LEN], u32> =
    LpmTrie::with_max_entries(NET_EXCLUDE_ENTRIES, 0);

/// Excluded local ports; value: rule index.
#[map]
static NET_EXCLUDE_LPORT: HashMap<u16, u32> = HashMap::with_max_entries(NET_EXCLUDE_ENTRIES, 0);

/// Excluded executables by file identity; value: rule index.
#[map]
static NET_EXCLUDE_EXE: HashMap<FileId, u32> = HashMap::with_max_entries(NET_EXCLUDE_ENTRIES, 0);

/// Filled by the loader before load; zero (disabled) otherwise.
#[unsafe(no_mangle)]
static NET_SETTINGS: NetSettings = unsafe { core::mem::zeroed() };

/// The settings, or None when network telemetry is off.
#[inline(always)]
fn settings() -> Option<NetSettings> {
    // SAFETY: plain read of a read-only global (volatile: see maps::offsets).
    let s = unsafe { core::ptr::read_volatile(&NET_SETTINGS) };
    (s.enabled != 0).then_some(s)
}

/// Both ends of a connection or datagram, as the event reports them.
#[derive(Clone, Copy, Default)]
struct Endpoints {
    family: u16,
    lport: u16,
    rport: u16,
    laddr: [u8; 16],
    raddr: [u8; 16],
}

/// Who an event is about.
enum Who<'a> {
    /// The current task (process context).
    Current,
    /// The owner recorded earlier (softirq).
    Owner(&'a TaskInfo),
}

/// What an event carries besides its endpoints.
#[derive(Clone, Copy, Default)]
struct Detail {
    op: u8,
    protocol: u8,
    result: u8,
    bytes_sent: u64,
    bytes_received: u64,
    /// DNS payload in user memory: pointer and length.
    payload: u64,
    payload_len: u64,
}

#[inline(always)]
fn user<T>(ptr: u64) -> Result<T, ReadFailed> {
    // SAFETY: bpf_probe_read_user validates the address and fails cleanly.
    unsafe { bpf_probe_read_user(ptr as *const T) }.map_err(|_| ReadFailed)
}

/// IPv4 address bytes as an IPv4-mapped IPv6 address.
#[inline(always)]
fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// True unless the current task is the sensor itself or runs an excluded
/// executable. Events in process context describe it with
/// [`read_current_task`].
#[inline(always)]
fn current_task_reported(s: &NetSettings, o: &KernelOffsets) -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == s.self_tgid {
        return false;
    }
    if s.exclude & net_exclude::EXE != 0
        && let Ok(exe) = read_task_exe(current_task_btf(), o)
        // SAFETY: presence check only.
        && unsafe { NET_EXCLUDE_EXE.get(exe) }.is_some()
    {
        return false;
    }
    true
}

/// True when endpoint rules exist at all: without them nothing needs the
/// endpoints before the event is written.
#[inline(always)]
fn endpoint_rules(s: &NetSettings) -> bool {
    s.exclude & (net_exclude::LOCAL_PORT | net_exclude::REMOTE) != 0
}

/// True when a user rule excludes these endpoints.
#[inline(always)]
fn excluded(s: &NetSettings, e: &Endpoints) -> bool {
    // SAFETY (all gets): presence checks only.
    if s.exclude & net_exclude::LOCAL_PORT != 0
        && e.lport != 0
        && unsafe { NET_EXCLUDE_LPORT.get(e.lport) }.is_some()
    {
        return true;
    }
    if s.exclude & net_exclude::REMOTE == 0 {
        return false;
    }
    let mut data = [0u8; REMOTE_KEY_LEN];
    data[4..].copy_from_slice(&e.raddr);
    const FULL: u32 = REMOTE_KEY_PORT_BITS + 128;
    // Rules for any port are stored with port 0.
    if NET_EXCLUDE_REMOTE.get(Key::new(FULL, data)).is_some() {
        return true;
    }
    let port = e.rport.to_be_bytes();
    data[0] = port[0];
    data[1] = port[1];
    NET_EXCLUDE_REMOTE.get(Key::new(FULL, data)).is_some()
}

/// The current task's `struct sock *` behind file descriptor `fd`, checked to be a
/// socket (`socket->file` points back at the file).
#[inline(always)]
fn fd_sock(fd: u64, o: &KernelOffsets) -> Result<*const u8, ReadFailed> {
    let file = read_fd_file::<Probe>(u32::try_from(fd).map_err(|_| ReadFailed)?, o)?;
    let socket = read_ptr(file, o.file_private_data)?;
    if read_ptr(socket, o.socket_file)? != file {
        return Err(ReadFailed);
    }
    read_ptr(socket, o.socket_sk)
}

/// The current task's UDP `struct sock *` and its family behind file descriptor
/// `fd`; `None` for any other socket. The protocol is read before the
/// socket is proved (`socket->file` points back, family INET): the hooks
/// that call this run for every TCP connect and send, which leave here
/// after as few reads as possible (a stray value from a non-socket file is
/// caught by the proof).
#[inline(always)]
fn fd_udp_sock(fd: u64, o: &KernelOffsets) -> Result<Option<(*const u8, u16)>, ReadFailed> {
    let file = read_fd_file::<Probe>(u32::try_from(fd).map_err(|_| ReadFailed)?, o)?;
    let socket = read_ptr(file, o.file_private_data)?;
    let sk = read_ptr(socket, o.socket_sk)?;
    if sock_protocol(sk, o)? != IPPROTO_UDP {
        return Ok(None);
    }
    if read_ptr(socket, o.socket_file)? != file {
        return Err(ReadFailed);
    }
    Ok(Some((sk, sock_family(sk, o)?)))
}

/// (family, protocol) of an INET socket; Err for other families.
#[inline(always)]
fn sock_kind(sk: *const u8, o: &KernelOffsets) -> Result<(u16, u8), ReadFailed> {
    let family = sock_family(sk, o)?;
    Ok((family, sock_protocol(sk, o)?))
}

/// AF_INET or AF_INET6 of a socket; Err for other families.
#[inline(always)]
fn sock_family(sk: *const u8, o: &KernelOffsets) -> Result<u16, ReadFailed> {
    let family = read::<u16>(sk, o.sk_family)?;
    if family != AF_INET && family != AF_INET6 {
        return Err(ReadFailed);
    }
    Ok(family)
}

/// `sk_protocol` (16 bits wide: IPPROTO_MPTCP is 262, which must not pass
/// for TCP); 0 for anything above 255.
#[inline(always)]
fn sock_protocol(sk: *const u8, o: &KernelOffsets) -> Result<u8, ReadFailed> {
    Ok(u8::try_from(read::<u16>(sk, o.sk_protocol)?).unwrap_or(0))
}

/// Local and connected-peer addresses and ports of a TCP socket, as the
/// `inet_sock_set_state` tracepoint reports them (local port from
/// `inet_sport`, still set at CLOSE). The kernel keeps `skc_daddr` and
/// `skc_rcv_saddr` side by side (`skc_addrpair`; the loader checks it), so
/// an IPv4 pair is one read.
#[inline(always)]
fn sock_endpoints(sk: *const u8, family: u16, o: &KernelOffsets) -> Result<Endpoints, ReadFailed> {
    let (laddr, raddr) = if family == AF_INET {
        let [d0, d1, d2, d3, l0, l1, l2, l3] = read::<[u8; 8]>(sk, o.sk_daddr)?;
        (v4_mapped([l0, l1, l2, l3]), v4_mapped([d0, d1, d2, d3]))
    } else {
        (
            read::<[u8; 16]>(sk, o.sk_v6_rcv_saddr)?,
            read::<[u8; 16]>(sk, o.sk_v6_daddr)?,
        )
    };
    Ok(Endpoints {
        family,
        lport: u16::from_be(read::<u16>(sk, o.inet_sport)?),
        rport: u16::from_be(read::<u16>(sk, o.sk_dport)?),
        laddr,
        raddr,
    })
}

/// (port, IPv4-mapped address) of a socket's local end.
#[inline(always)]
fn sock_local(
    sk: *const u8,
    family: u16,
    o: &KernelOffsets,
) -> Result<(u16, [u8; 16]), ReadFailed> {
    let addr = if family == AF_INET {
        v4_mapped(read::<[u8; 4]>(sk, o.sk_rcv_saddr)?)
    } else {
        read::<[u8; 16]>(sk, o.sk_v6_rcv_saddr)?
    };
    Ok((read::<u16>(sk, o.sk_num)?, addr))
}

/// (port, IPv4-mapped address) of a socket's connected peer.
#[inline(always)]
fn sock_peer(sk: *const u8, family: u16, o: &KernelOffsets) -> Result<(u16, [u8; 16]), ReadFailed> {
    let addr = if family == AF_INET {
        v4_mapped(read::<[u8; 4]>(sk, o.sk_daddr)?)
    } else {
        read::<[u8; 16]>(sk, o.sk_v6_daddr)?
    };
    Ok((u16::from_be(read::<u16>(sk, o.sk_dport)?), addr))
}

/// Writes one event (a full ring is counted); with `owner_of`, also records
/// the event's task as the owner of that socket, for its later close.
#[inline(always)]
fn emit(who: Who, e: &Endpoints, d: &Detail, owner_of: Option<u64>, o: &KernelOffsets) {
    let Some(mut entry) = reserve_event::<NetEvent>(&NET_EVENTS, drop_reason::NET_RINGBUF_FULL)
    else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points into the reserved ring buffer slot of size NetEvent.
    unsafe {
        (*ev).header = header(EventKind::Net as u32);
        match who {
            Who::Current => read_current_task(&mut (*ev).task, o),
            Who::Owner(task) => (*ev).task = *task,
        }
        (*ev).op = d.op;
        (*ev).protocol = d.protocol;
        (*ev).family = e.family;
        (*ev).lport = e.lport;
        (*ev).rport = e.rport;
        (*ev).result = d.result;
        (*ev)._pad = [0; 3];
        (*ev).laddr = e.laddr;
        (*ev).raddr = e.raddr;
        (*ev).bytes_sent = d.bytes_sent;
        (*ev).bytes_received = d.bytes_received;
        (*ev).payload_len = 0;
        if d.payload != 0 {
            // At most DNS_PAYLOAD_LEN - 1 bytes, masked after a volatile
            // read: the compiler cannot drop the mask as redundant, so every
            // verifier (6.1's too) sees the size bounded and non-negative.
            let clamped = (d.payload_len as usize).min(DNS_PAYLOAD_LEN - 1);
            let size = core::ptr::read_volatile(&clamped) & (DNS_PAYLOAD_LEN - 1);
            let ret = probe_read_user_raw(
                (*ev).payload.as_mut_ptr().cast(),
                size as u32,
                d.payload as *const core::ffi::c_void,
            );
            if ret == 0 {
                (*ev).payload_len = size as u32;
            }
        }
        if let Some(sk) = owner_of {
            record_owner(sk, &(*ev).task, d.op);
        }
    }
    submit_event(&NET_EVENTS, entry);
}

#[inline(always)]
fn record_owner(sk: u64, task: &TaskInfo, op: u8) {
    let owner = NetOwner {
        task: *task,
        op: u32::from(op),
        _pad: 0,
    };
    let _ = NET_OWNERS.insert(sk, owner, 0);
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn net_sock_state(ctx: RawTracePointContext) -> i32 {
    // It fires on every TCP state change of both ends (about ten per
    // connection); only four kinds of transition are events, decided from
    // the arguments alone before any helper or map is touched.
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let wanted = match new {
        tcp_state::SYN_SENT | tcp_state::LISTEN => old == tcp_state::CLOSE,
        tcp_state::ESTABLISHED => old == tcp_state::SYN_SENT,
        tcp_state::CLOSE => true,
        _ => false,
    };
    if !wanted {
        return 0;
    }
    if let (Some(o), Some(s)) = (offsets(), settings()) {
        let sk: *const u8 = ctx.arg(0);
        let _ = sock_state(sk, old, new, o, &s);
    }
    0
}

#[inline(always)]
fn sock_state(
    sk: *const u8,
    old: i32,
    new: i32,
    o: &KernelOffsets,
    s: &NetSettings,
) -> Result<(), ReadFailed> {
    let key = sk as u64;
    let tcp = Detail {
        protocol: IPPROTO_TCP,
        ..Detail::default()
    };
    match new {
        // In the connecting process; the local port is not chosen yet, so
        // the event waits for the result.
        tcp_state::SYN_SENT => {
            if !current_task_reported(s, o) {
                return Ok(());
            }
            let (family, protocol) = sock_kind(sk, o)?;
            if protocol != IPPROTO_TCP
                || (endpoint_rules(s) && excluded(s, &sock_endpoints(sk, family, o)?))
            {
                return Ok(());
            }
            let mut owner = NetOwner {
                op: u32::from(net_op::CONNECT),
                ..NetOwner::default()
            };
            read_current_task(&mut owner.task, o);
            let _ = NET_OWNERS.insert(key, owner, 0);
        }
        tcp_state::LISTEN => {
            if !current_task_reported(s, o) {
                return Ok(());
            }
            let (family, protocol) = sock_kind(sk, o)?;
            if protocol != IPPROTO_TCP {
                return Ok(());
            }
            let e = sock_endpoints(sk, family, o)?;
            if excluded(s, &e) {
                return Ok(());
            }
            let d = Detail {
                op: net_op::LISTEN,
                ..tcp
            };
            emit(Who::Current, &e, &d, Some(key), o);
        }
        // Only sockets with a recorded owner are reported: TCP ones (the
        // owner was recorded after the protocol check).
        tcp_state::ESTABLISHED => {
            // SAFETY: the value is copied before any other map operation.
            let Some(owner) = (unsafe { NET_OWNERS.get(key) }).copied() else {
                return Ok(());
            };
            let family = sock_family(sk, o)?;
            let e = sock_endpoints(sk, family, o)?;
            if excluded(s, &e) {
                let _ = NET_OWNERS.remove(key);
                return Ok(());
            }
            let d = Detail {
                op: net_op::CONNECT,
                ..tcp
            };
            emit(Who::Owner(&owner.task), &e, &d, None, o);
        }
        _ => {
            // SAFETY: as above.
            let Some(owner) = (unsafe { NET_OWNERS.get(key) }).copied() else {
                return Ok(());
            };
            let _ = NET_OWNERS.remove(key);
            let family = sock_family(sk, o)?;
            let e = sock_endpoints(sk, family, o)?;
            let d = if old == tcp_state::SYN_SENT {
                Detail {
                    op: net_op::CONNECT,
                    result: NET_CONNECT_FAILED,
                    ..tcp
                }
            } else {
                Detail {
                    op: net_op::CLOSE,
                    result: old as u8,
                    bytes_sent: read::<u64>(sk, o.tcp_bytes_sent).unwrap_or(0),
                    bytes_received: read::<u64>(sk, o.tcp_bytes_received).unwrap_or(0),
                    ..tcp
                }
            };
            emit(Who::Owner(&owner.task), &e, &d, None, o);
        }
    }
    Ok(())
}

/// `sys_exit_accept4(ret)`: the new connection, from the returned fd.
#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn net_accept4(ctx: TracePointContext) -> u32 {
    accepted(&ctx);
    0
}

/// `sys_exit_accept(ret)`: as accept4.
#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn net_accept(ctx: TracePointContext) -> u32 {
    accepted(&ctx);
    0
}

#[inline(always)]
fn accepted(ctx: &TracePointContext) {
    let (Some(o), Some(s)) = (offsets(), settings()) else {
        return;
    };
    let _ = try_accepted(ctx, o, &s);
}

#[inline(always)]
fn try_accepted(
    ctx: &TracePointContext,
    o: &KernelOffsets,
    s: &NetSettings,
) -> Result<(), ReadFailed> {
    let fd = tp::<i64>(ctx, o.tp_syscall_ret)?;
    if fd < 0 {
        return Ok(());
    }
    if !current_task_reported(s, o) {
        return Ok(());
    }
    let sk = fd_sock(fd as u64, o)?;
    let (family, protocol) = sock_kind(sk, o)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let e = sock_endpoints(sk, family, o)?;
    if excluded(s, &e) {
        return Ok(());
    }
    let d = Detail {
        op: net_op::ACCEPT,
        protocol: IPPROTO_TCP,
        ..Detail::default()
    };
    emit(Who::Current, &e, &d, Some(sk as u64), o);
    Ok(())
}

/// `sys_enter_connect(fd, uservaddr, addrlen)`: UDP only (TCP connects come
/// from `inet_sock_set_state`).
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn net_connect(ctx: TracePointContext) -> u32 {
    if let (Some(o), Some(s)) = (offsets(), settings()) {
        let _ = connect(&ctx, o, &s);
    }
    0
}

#[inline(always)]
fn connect(ctx: &TracePointContext, o: &KernelOffsets, s: &NetSettings) -> Result<(), ReadFailed> {
    let [fd, addr] = args::<2>(ctx, o)?;
    let Some((sk, family)) = udp_socket(s, fd, o)? else {
        return Ok(());
    };
    udp_dest(
        sk,
        family,
        s,
        net_op::UDP_CONNECT,
        Dest::User(addr),
        (0, 0),
        o,
    )
}

/// `sys_enter_sendto(fd, buff, len, flags, addr, addr_len)`.
#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn net_sendto(ctx: TracePointContext) -> u32 {
    if let (Some(o), Some(s)) = (offsets(), settings()) {
        let _ = sendto(&ctx, o, &s);
    }
    0
}

#[inline(always)]
fn sendto(ctx: &TracePointContext, o: &KernelOffsets, s: &NetSettings) -> Result<(), ReadFailed> {
    let [fd, buff, len, _flags, addr] = args::<5>(ctx, o)?;
    let Some((sk, family)) = udp_socket(s, fd, o)? else {
        return Ok(());
    };
    udp_dest(
        sk,
        family,
        s,
        net_op::UDP_SEND,
        Dest::User(addr),
        (buff, len),
        o,
    )
}

/// `sys_enter_sendmsg(fd, msg, flags)`.
#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
pub fn net_sendmsg(ctx: TracePointContext) -> u32 {
    if let (Some(o), Some(s)) = (offsets(), settings()) {
        let _ = msg_out(&ctx, o, &s, 0);
    }
    0
}

/// `sys_enter_sendmmsg(fd, mmsg, vlen, flags)`: the first message only.
#[tracepoint(category = "syscalls", name = "sys_enter_sendmmsg")]
pub fn net_sendmmsg(ctx: TracePointContext) -> u32 {
    if let (Some(o), Some(s)) = (offsets(), settings()) {
        let _ = msg_out(&ctx, o, &s, o.mmsghdr_hdr);
    }
    0
}

/// sendmsg/sendmmsg: the `user_msghdr` at `hdr_offset` in argument 1, read
/// only once the socket is known to be UDP.
#[inline(always)]
fn msg_out(
    ctx: &TracePointContext,
    o: &KernelOffsets,
    s: &NetSettings,
    hdr_offset: u32,
) -> Result<(), ReadFailed> {
    let [fd, msg] = args::<2>(ctx, o)?;
    let Some((sk, family)) = udp_socket(s, fd, o)? else {
        return Ok(());
    };
    let msg = msg + u64::from(hdr_offset);
    let name = user::<u64>(msg + u64::from(o.msghdr_name))?;
    let iov = user::<u64>(msg + u64::from(o.msghdr_iov))?;
    let payload = (
        user::<u64>(iov + u64::from(o.iovec_base)).unwrap_or(0),
        user::<u64>(iov + u64::from(o.iovec_len)).unwrap_or(0),
    );
    udp_dest(
        sk,
        family,
        s,
        net_op::UDP_SEND,
        Dest::User(name),
        payload,
        o,
    )
}

/// The current task's UDP socket (sock, family) behind `fd`; `None` for
/// the sensor, excluded executables and every other kind of file.
#[inline(always)]
fn udp_socket(
    s: &NetSettings,
    fd: u64,
    o: &KernelOffsets,
) -> Result<Option<(*const u8, u16)>, ReadFailed> {
    if !current_task_reported(s, o) {
        return Ok(None);
    }
    fd_udp_sock(fd, o)
}

/// `PF_IO_WORKER`: io_uring's worker threads and its SQPOLL thread.
const PF_IO_WORKER: u32 = 0x10;
/// `io_uring_enter`, whose requests may run inline in the caller (one
/// number on every architecture).
const NR_IO_URING_ENTER: u64 = 426;

/// True when the current task runs io_uring requests: one of its workers,
/// or a task issuing them inline in `io_uring_enter`. Only there do the
/// BPF-LSM socket programs report: the syscall tracepoints saw the rest.
#[inline(always)]
fn in_io_uring(o: &KernelOffsets) -> bool {
    // SAFETY: BTF-typed task; `unsigned int flags`.
    let flags = unsafe { load::<u32>(current_task_btf(), o.task_flags) };
    flags & PF_IO_WORKER != 0 || current_syscall_nr(o) == NR_IO_URING_ENTER
}

/// `lsm/socket_sendmsg(sock, msg, size)` (BPF-LSM kernels): a UDP
/// datagram io_uring sends (`IORING_OP_SENDMSG`, `SEND`, a `WRITE` on a
/// socket), reported as `sendmsg` reports it; the destination is the
/// kernel's copy. Never refuses.
#[lsm(hook = "socket_sendmsg")]
pub fn net_io_uring_sendmsg(ctx: LsmContext) -> i32 {
    io_uring_socket_hook(&ctx, net_op::UDP_SEND, |o| {
        read::<u64>(ctx.arg(1), o.kmsghdr_name).unwrap_or(0)
    })
}

/// `lsm/socket_connect(sock, address, addrlen)`: io_uring's connect of a
/// UDP socket (`IORING_OP_CONNECT`; a TCP one is seen by
/// `inet_sock_set_state` wherever it comes from). Never refuses.
#[lsm(hook = "socket_connect")]
pub fn net_io_uring_connect(ctx: LsmContext) -> i32 {
    io_uring_socket_hook(&ctx, net_op::UDP_CONNECT, |_| ctx.arg(1))
}

/// A BPF-LSM socket hook `(sock, ..., ret)` in an io_uring context: the
/// UDP destination `addr` finds in kernel memory, as `op`. Returns the
/// earlier programs' answer.
#[inline(always)]
fn io_uring_socket_hook(ctx: &LsmContext, op: u8, addr: impl FnOnce(&KernelOffsets) -> u64) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous == 0
        && let (Some(o), Some(s)) = (offsets(), settings())
        && in_io_uring(o)
    {
        let _ = io_uring_udp(&s, ctx.arg(0), op, Dest::Kernel(addr(o)), o);
    }
    previous
}

/// A UDP destination from an io_uring request on `socket`. No DNS query
/// name: the payload sits behind the request's iterator.
#[inline(always)]
fn io_uring_udp(
    s: &NetSettings,
    socket: *const u8,
    op: u8,
    addr: Dest,
    o: &KernelOffsets,
) -> Result<(), ReadFailed> {
    if !current_task_reported(s, o) {
        return Ok(());
    }
    let sk = read_ptr(socket, o.socket_sk)?;
    let (family, protocol) = sock_kind(sk, o)?;
    if protocol != IPPROTO_UDP {
        return Ok(());
    }
    udp_dest(sk, family, s, op, addr, (0, 0), o)
}

/// Where a `struct sockaddr` naming a destination lies (0: none given).
#[derive(Clone, Copy)]
enum Dest {
    /// In the caller's memory (a syscall's argument).
    User(u64),
    /// In the kernel's (the copy an LSM hook is handed).
    Kernel(u64),
}

/// Reports a UDP destination of socket `sk`: `addr`, or the socket's
/// connected peer when `addr` is NULL. `payload` (user pointer, length)
/// is copied when the destination is a DNS port.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn udp_dest(
    sk: *const u8,
    family: u16,
    s: &NetSettings,
    op: u8,
    addr: Dest,
    payload: (u64, u64),
    o: &KernelOffsets,
) -> Result<(), ReadFailed> {
    let (rport, raddr) = match addr {
        Dest::User(0) | Dest::Kernel(0) => sock_peer(sk, family, o)?,
        given => sockaddr(given, o)?,
    };
    if rport == 0 {
        return Ok(());
    }
    // SAFETY: presence check only.
    let dns = op == net_op::UDP_SEND && unsafe { NET_DNS_PORTS.get(rport) }.is_some();
    let mut d = Detail {
        op,
        protocol: IPPROTO_UDP,
        ..Detail::default()
    };
    if dns {
        // Every query is reported: names differ where destinations do not.
        d.op = net_op::DNS_QUERY;
        (d.payload, d.payload_len) = payload;
    } else if seen_recently(s, op, rport, &raddr) {
        // First, before the local end is read: a chatty sender costs little.
        return Ok(());
    }
    let (lport, laddr) = sock_local(sk, family, o)?;
    let e = Endpoints {
        family,
        lport,
        rport,
        laddr,
        raddr,
    };
    if excluded(s, &e) {
        return Ok(());
    }
    emit(Who::Current, &e, &d, None, o);
    Ok(())
}

/// (port, IPv4-mapped address) of the `sockaddr_in` / `sockaddr_in6` at
/// `addr`.
#[inline(always)]
fn sockaddr(addr: Dest, o: &KernelOffsets) -> Result<(u16, [u8; 16]), ReadFailed> {
    match addr.read::<u16>(o.sockaddr_family)? {
        AF_INET => Ok((
            u16::from_be(addr.read::<u16>(o.sin_port)?),
            v4_mapped(addr.read::<[u8; 4]>(o.sin_addr)?),
        )),
        AF_INET6 => Ok((
            u16::from_be(addr.read::<u16>(o.sin6_port)?),
            addr.read::<[u8; 16]>(o.sin6_addr)?,
        )),
        // AF_UNSPEC (disconnect) and anything else: no destination.
        _ => Err(ReadFailed),
    }
}

impl Dest {
    /// The `T` at `offset` in the sockaddr.
    #[inline(always)]
    fn read<T>(self, offset: u32) -> Result<T, ReadFailed> {
        match self {
            Self::User(addr) => user(addr + u64::from(offset)),
            Self::Kernel(addr) => read(addr as *const u8, offset),
        }
    }
}

/// True when this process reported this UDP destination less than the
/// window ago; otherwise remembers now.
#[inline(always)]
fn seen_recently(s: &NetSettings, op: u8, rport: u16, raddr: &[u8; 16]) -> bool {
    if s.udp_window_ns == 0 {
        return false;
    }
    let key = UdpSeenKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        rport,
        op: u16::from(op),
        raddr: *raddr,
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: the value is copied out at once.
    if let Some(last) = unsafe { NET_UDP_SEEN.get(key) }.copied()
        && now.wrapping_sub(last) < s.udp_window_ns
    {
        return true;
    }
    let _ = NET_UDP_SEEN.insert(key, now, 0);
    false
}
