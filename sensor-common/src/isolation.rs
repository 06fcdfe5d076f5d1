//! Network isolation (containment): the maps the daemon (or the local
//! `rxsentry-sensor isolate` command) fills and the TC programs read on
//! every packet. All three maps are pinned in bpffs, so isolation outlives
//! the process that set it.

/// Entries of `ISOLATION_ALLOW`: collectors plus the operator's exceptions.
pub const ISOLATION_ALLOW_ENTRIES: u32 = 256;

/// Single entry of `ISOLATION_STATE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IsolationState {
    /// Non-zero: drop everything not allowed by `ISOLATION_ALLOW`.
    pub isolated: u32,
    pub _pad: u32,
    /// Incremented at every change, so a reader can tell two states apart.
    pub generation: u64,
}

/// Key of `ISOLATION_ALLOW`: one peer the terminal may still talk to.
///
/// `addr` is the peer's IPv6 address, or an IPv4 address mapped into IPv6
/// (`::ffff:a.b.c.d`); all-zero means any address. `port` (host byte order)
/// is the peer's port, 0 for any; `local_port` (host byte order) is this
/// terminal's port (egress: source, ingress: destination), 0 for any, and
/// only set with TCP or UDP; `proto` is an IP protocol number (6 TCP,
/// 17 UDP), 0 for any. `_pad` is always zero (the key is hashed as bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IsolationAllowKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub local_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Indexes of the per-CPU `ISOLATION_STATS` array.
pub mod isolation_stat {
    /// Packets dropped because the terminal is isolated.
    pub const DROPPED: u32 = 0;
    /// Packets let through while isolated (allowed peers, ARP, ND).
    pub const ALLOWED: u32 = 1;
    /// CLOCK_BOOTTIME ns of this CPU's first drop since the counters were
    /// last reset (the daemon resets them when it isolates).
    pub const FIRST_DROP_NS: u32 = 2;
    pub const COUNT: u32 = 3;
}

const _: () = assert!(core::mem::size_of::<IsolationState>() == 16);
const _: () = assert!(core::mem::size_of::<IsolationAllowKey>() == 24);
const _: () = assert!(core::mem::offset_of!(IsolationAllowKey, local_port) == 18);
const _: () = assert!(core::mem::offset_of!(IsolationAllowKey, proto) == 20);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::IsolationState {}
    unsafe impl aya::Pod for super::IsolationAllowKey {}
}
