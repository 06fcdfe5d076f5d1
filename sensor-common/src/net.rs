//! Network records the kernel writes to the `NET_EVENTS` ring buffer, and the
//! keys and values of the network maps the daemon fills.
//!
//! Addresses are always 16 bytes: IPv4 is stored IPv4-mapped
//! (`::ffff:a.b.c.d`), so one exclusion key and one record layout serve both
//! families; `family` says what the socket was.

use crate::{EventHeader, FileId, TaskInfo};

/// Bytes of a DNS query's UDP payload copied in the kernel (header + the
/// first question fit in far less). A power of two so the copy length can
/// be bounded with a mask the verifier understands.
pub const DNS_PAYLOAD_LEN: usize = 256;
/// Destination ports treated as DNS at most.
pub const DNS_PORTS_MAX: u32 = 16;
/// TCP sockets whose owner (the process that connected, accepted or
/// listened) is remembered until they close; least recently used first out.
pub const NET_OWNER_ENTRIES: u32 = 16_384;
/// (process, UDP destination) pairs remembered for de-duplication.
pub const NET_UDP_SEEN_ENTRIES: u32 = 8_192;
/// Exclusion rules per kind.
pub const NET_EXCLUDE_ENTRIES: u32 = 1_024;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// `NetEvent::op`.
pub mod net_op {
    /// Outbound TCP connection: established, or failed (`result` != 0).
    pub const CONNECT: u8 = 1;
    /// Inbound TCP connection returned by accept()/accept4().
    pub const ACCEPT: u8 = 2;
    /// A TCP socket started listening.
    pub const LISTEN: u8 = 3;
    /// A TCP socket whose owner the sensor knows was closed.
    pub const CLOSE: u8 = 4;
    /// connect() on a UDP socket (sets its default destination).
    pub const UDP_CONNECT: u8 = 5;
    /// A UDP datagram to a destination (first in the de-dup window).
    pub const UDP_SEND: u8 = 6;
    /// A UDP datagram to a DNS port; `payload` holds its start.
    pub const DNS_QUERY: u8 = 7;
}

/// `NetEvent::result` for a CONNECT that never got established: the socket
/// went SYN_SENT -> CLOSE (refused, unreachable, timed out or aborted).
pub const NET_CONNECT_FAILED: u8 = 1;

/// TCP states as the `sock:inet_sock_set_state` tracepoint numbers them
/// (include/net/tcp_states.h, a stable part of the tracepoint's ABI).
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const CLOSE: i32 = 7;
    pub const LISTEN: i32 = 10;
}

/// One network event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetEvent {
    pub header: EventHeader,
    /// The process: the current task, or for CONNECT results and CLOSE
    /// (which run in softirq) the owner recorded at connect/accept/listen.
    pub task: TaskInfo,
    /// A [`net_op`] value.
    pub op: u8,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub protocol: u8,
    /// AF_INET or AF_INET6: the socket's family.
    pub family: u16,
    /// Ports in host byte order; 0 when not known yet (unbound UDP socket).
    pub lport: u16,
    pub rport: u16,
    /// CONNECT: [`NET_CONNECT_FAILED`] or 0. CLOSE: the TCP state before.
    pub result: u8,
    pub _pad: [u8; 3],
    /// Valid bytes of `payload` (DNS_QUERY only).
    pub payload_len: u32,
    /// Local and remote address, IPv4-mapped for IPv4.
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    /// CLOSE of TCP: `tcp_sock.bytes_sent` (payload transmitted, with
    /// retransmissions) / `bytes_received` (payload, +1 once the peer's FIN
    /// arrived while the socket still existed).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub payload: [u8; DNS_PAYLOAD_LEN],
}

/// `NET_OWNERS` value: who a TCP socket belongs to, recorded in process
/// context so later events from softirq can name the process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetOwner {
    pub task: TaskInfo,
    /// The [`net_op`] that recorded it (CONNECT, ACCEPT or LISTEN).
    pub op: u32,
    pub _pad: u32,
}

/// `NET_UDP_SEEN` key: one UDP destination of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpSeenKey {
    pub tgid: u32,
    pub rport: u16,
    pub op: u16,
    pub raddr: [u8; 16],
}

/// `NET_EXCLUDE_REMOTE` LPM-trie key data: port (big-endian, 0 = any port),
/// two zero bytes, then the IPv4-mapped address. A rule's prefix length is
/// 32 + the address prefix (IPv4 rules: 32 + 96 + bits).
pub const REMOTE_KEY_LEN: usize = 20;
/// Prefix bits before the address in a remote exclusion key.
pub const REMOTE_KEY_PORT_BITS: u32 = 32;

/// Read-only global `NET_SETTINGS`, filled by the loader from config.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetSettings {
    /// Non-zero: network hooks report events.
    pub enabled: u32,
    /// The sensor's own tgid: always excluded.
    pub self_tgid: u32,
    /// Repeated (process, UDP destination) pairs inside this window are
    /// reported once; 0 reports every datagram.
    pub udp_window_ns: u64,
    /// `NET_EXCLUDE_*` flags: which rule maps hold entries (skip the others).
    pub exclude: u32,
    pub _pad: u32,
}

/// `NetSettings::exclude` bits.
pub mod net_exclude {
    pub const EXE: u32 = 1 << 0;
    pub const REMOTE: u32 = 1 << 1;
    pub const LOCAL_PORT: u32 = 1 << 2;
}

/// `NET_EXCLUDE_EXE` key: the executable's file identity.
pub type ExeKey = FileId;

const _: () = assert!(core::mem::size_of::<NetEvent>() == 16 + 64 + 16 + 32 + 16 + DNS_PAYLOAD_LEN);
const _: () = assert!(core::mem::size_of::<NetOwner>() == 72);
const _: () = assert!(core::mem::size_of::<UdpSeenKey>() == 24);
const _: () = assert!(core::mem::size_of::<NetSettings>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::NetEvent {}
    unsafe impl aya::Pod for super::NetOwner {}
    unsafe impl aya::Pod for super::UdpSeenKey {}
    unsafe impl aya::Pod for super::NetSettings {}
}
