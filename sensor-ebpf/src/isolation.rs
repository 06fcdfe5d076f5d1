//! Network isolation: TC programs on ingress and egress of every interface
//! but loopback. While `ISOLATION_STATE.isolated` is set, a packet passes
//! only if its peer (egress: destination, ingress: source) is in
//! `ISOLATION_ALLOW`, or it is ARP or IPv6 neighbour discovery (so the
//! allowed peers and the gateway stay resolvable); everything else is
//! dropped before any socket or forwarding sees it. Not isolated, a packet
//! costs one array lookup.
//!
//! The same code serves Ethernet-like interfaces (L3 header after 14 bytes)
//! and L3 interfaces such as tun or WireGuard (L3 header at 0): the loader
//! picks the `_l3` programs for those.

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::bpf_ktime_get_boot_ns,
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use sensor_common::{ISOLATION_ALLOW_ENTRIES, IsolationAllowKey, IsolationState, isolation_stat};

#[map]
static ISOLATION_STATE: Array<IsolationState> = Array::with_max_entries(1, 0);

#[map]
static ISOLATION_ALLOW: HashMap<IsolationAllowKey, u8> =
    HashMap::with_max_entries(ISOLATION_ALLOW_ENTRIES, 0);

#[map]
static ISOLATION_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(isolation_stat::COUNT, 0);

/// TC_ACT_UNSPEC: not our decision; later TCX programs still run, and the
/// packet goes on when none is left.
const PASS: i32 = -1;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 router solicitation .. neighbour advertisement.
const ND_FIRST: u8 = 133;
const ND_LAST: u8 = 136;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

#[classifier]
pub fn isolate_ingress(ctx: TcContext) -> i32 {
    verdict(&ctx, Dir::Ingress, ETH_HLEN)
}

#[classifier]
pub fn isolate_egress(ctx: TcContext) -> i32 {
    verdict(&ctx, Dir::Egress, ETH_HLEN)
}

#[classifier]
pub fn isolate_ingress_l3(ctx: TcContext) -> i32 {
    verdict(&ctx, Dir::Ingress, 0)
}

#[classifier]
pub fn isolate_egress_l3(ctx: TcContext) -> i32 {
    verdict(&ctx, Dir::Egress, 0)
}

#[inline(always)]
fn verdict(ctx: &TcContext, dir: Dir, l3: usize) -> i32 {
    let Some(state) = ISOLATION_STATE.get(0) else {
        return PASS;
    };
    if state.isolated == 0 {
        return PASS;
    }
    if allowed(ctx, dir, l3) {
        bump(isolation_stat::ALLOWED);
        return PASS;
    }
    if let Some(first) = ISOLATION_STATS.get_ptr_mut(isolation_stat::FIRST_DROP_NS) {
        // SAFETY: this CPU's slot; nothing else writes it while we run.
        unsafe {
            if *first == 0 {
                *first = bpf_ktime_get_boot_ns();
            }
        }
    }
    bump(isolation_stat::DROPPED);
    TC_ACT_SHOT
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(counter) = ISOLATION_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Whether an isolated terminal may send or receive this packet. Anything
/// that cannot be parsed is dropped (fail closed).
#[inline(always)]
fn allowed(ctx: &TcContext, dir: Dir, l3: usize) -> bool {
    // skb->protocol is the ethertype (network order) on L2 and L3 devices.
    match u16::from_be(ctx.skb.protocol() as u16) {
        ETH_P_ARP => true,
        ETH_P_IP => ipv4_allowed(ctx, dir, l3).unwrap_or(false),
        ETH_P_IPV6 => ipv6_allowed(ctx, dir, l3).unwrap_or(false),
        _ => false,
    }
}

#[inline(always)]
fn ipv4_allowed(ctx: &TcContext, dir: Dir, l3: usize) -> Option<bool> {
    let ihl = (ctx.load::<u8>(l3).ok()? & 0x0f) as usize * 4;
    let fragment = u16::from_be(ctx.load::<u16>(l3 + 6).ok()?) & 0x1fff;
    let proto = ctx.load::<u8>(l3 + 9).ok()?;
    let peer4 = ctx
        .load::<[u8; 4]>(l3 + if dir == Dir::Egress { 16 } else { 12 })
        .ok()?;
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12..].copy_from_slice(&peer4);
    // Only a first fragment carries the ports.
    let (port, local_port) = if fragment == 0 && ihl >= 20 {
        ports(ctx, dir, l3 + ihl, proto)?
    } else {
        (0, 0)
    };
    Some(peer_allowed(addr, port, local_port, proto))
}

/// Extension headers are not walked: such packets match only rules without
/// a port.
#[inline(always)]
fn ipv6_allowed(ctx: &TcContext, dir: Dir, l3: usize) -> Option<bool> {
    let next = ctx.load::<u8>(l3 + 6).ok()?;
    if next == IPPROTO_ICMPV6 {
        let kind = ctx.load::<u8>(l3 + 40).ok()?;
        if (ND_FIRST..=ND_LAST).contains(&kind) {
            return Some(true);
        }
    }
    let addr = ctx
        .load::<[u8; 16]>(l3 + if dir == Dir::Egress { 24 } else { 8 })
        .ok()?;
    let (port, local_port) = ports(ctx, dir, l3 + 40, next)?;
    Some(peer_allowed(addr, port, local_port, next))
}

/// The peer's and this terminal's TCP/UDP ports (egress: destination and
/// source, ingress: source and destination); (0, 0) for other protocols.
#[inline(always)]
fn ports(ctx: &TcContext, dir: Dir, l4: usize, proto: u8) -> Option<(u16, u16)> {
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Some((0, 0));
    }
    let source = u16::from_be(ctx.load::<u16>(l4).ok()?);
    let destination = u16::from_be(ctx.load::<u16>(l4 + 2).ok()?);
    Some(match dir {
        Dir::Egress => (destination, source),
        Dir::Ingress => (source, destination),
    })
}

/// At most seven lookups, narrowest first: (address, port, protocol), then
/// (address, any port, protocol), each with this terminal's port and then
/// any local port; then (address, any protocol); then (any address, port,
/// protocol), with the local port and then without. Rules with a local
/// port always name TCP or UDP, so the any-protocol key has none.
#[inline(always)]
fn peer_allowed(addr: [u8; 16], port: u16, local_port: u16, proto: u8) -> bool {
    let hit = |key: &IsolationAllowKey| {
        // SAFETY: only presence is checked; the value is not kept.
        unsafe { ISOLATION_ALLOW.get(key) }.is_some()
    };
    // The key with this terminal's port, then with any local port.
    let hit_local = |mut key: IsolationAllowKey| {
        if local_port != 0 {
            key.local_port = local_port;
            if hit(&key) {
                return true;
            }
            key.local_port = 0;
        }
        hit(&key)
    };
    let mut key = IsolationAllowKey {
        addr,
        port,
        local_port: 0,
        proto,
        _pad: [0; 3],
    };
    if hit_local(key) {
        return true;
    }
    key.port = 0;
    if hit_local(key) {
        return true;
    }
    key.proto = 0;
    if hit(&key) {
        return true;
    }
    hit_local(IsolationAllowKey {
        addr: [0; 16],
        port,
        local_port: 0,
        proto,
        _pad: [0; 3],
    })
}
