//! The XDP knock detector and gate. It owns knock packets and new connections
//! to gated ports; everything else is passed untouched. A frame it cannot
//! fully parse is passed too, unless a gate is active and Linux could still
//! deliver that frame as a new connection: then it is dropped (fail closed,
//! see `parse`).
#![no_std]
#![no_main]

mod first_step;
mod gate;
mod icmp;
mod parse;
mod spa;
mod sweep;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use knockd_common::{
    counter, port_slot, AddrMark, KnockEvent, PortRule, ADDR_LOCAL, EVENT_KNOCK, FAMILY_V4, MAX_LOCAL_ADDRS,
    PORT_KNOCK, PORT_SLOTS, PORT_STEALTH, PROTO_ICMP, PROTO_TCP, PROTO_UDP, RING_BYTES,
};
use parse::{locate_l4, ptr_at, read_be16, read_u8, Stop, L4};

#[map]
static KNOCK_RULES: Array<PortRule> = Array::with_max_entries(PORT_SLOTS, 0);

#[map]
static LOCAL_V4: HashMap<[u8; 4], AddrMark> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);

#[map]
static LOCAL_V6: HashMap<[u8; 16], AddrMark> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[xdp]
pub fn xknock(ctx: XdpContext) -> u32 {
    bump(counter::FRAMES);
    // Only a recognised knock on a stealthy door, a gated new connection, or
    // an unclassifiable frame while a gate is active is ever dropped.
    try_xknock(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn try_xknock(ctx: &XdpContext) -> Option<u32> {
    let l4 = match locate_l4(ctx) {
        Ok(l4) => l4,
        Err(Stop::NotOurs) => return None,
        Err(Stop::Unclassified) => return gate::unclassified(),
    };
    if l4.proto == PROTO_ICMP {
        return icmp_knock(ctx, &l4);
    }
    let dst_port = read_be16(ctx, l4.l4 + 2)?;
    if l4.proto == PROTO_UDP {
        if let Some(action) = spa::check(ctx, &l4, dst_port) {
            return Some(action);
        }
    }
    let flags = if l4.proto == PROTO_TCP { read_u8(ctx, l4.l4 + 13)? } else { 0 };
    let slot = port_slot(dst_port, l4.proto);
    // A plain array load: a concurrent update gives the old or new rule.
    if let Some(rule) = KNOCK_RULES.get(slot) {
        if rule.flags & PORT_KNOCK != 0 {
            return knock(ctx, &l4, rule, slot, dst_port, flags);
        }
    }
    sweep::check(ctx, &l4, dst_port, flags);
    gate::check(ctx, &l4, slot, dst_port, flags)
}

/// An echo request of a knock length is a knock like a port's; no ICMP
/// message is ever gated.
#[inline(always)]
fn icmp_knock(ctx: &XdpContext, l4: &L4) -> Option<u32> {
    let len = icmp::echo_len(ctx, l4)?;
    let slot = port_slot(len, PROTO_ICMP);
    let rule = KNOCK_RULES.get(slot)?;
    if rule.flags & PORT_KNOCK == 0 {
        return None;
    }
    knock(ctx, l4, rule, slot, len, 0)
}

#[inline(always)]
fn knock(ctx: &XdpContext, l4: &L4, rule: &PortRule, slot: u32, dst_port: u16, flags: u8) -> Option<u32> {
    if l4.proto == PROTO_TCP && !flags_match(rule, flags) {
        bump(counter::FLAG_MISMATCH);
        return None;
    }
    let mut ev = event_addrs(ctx, l4)?;
    let Some(mark) = addr_mark(l4, &ev.dst) else {
        bump(counter::NOT_LOCAL);
        return None;
    };
    ev.dst_port = dst_port;
    ev.src_port = read_be16(ctx, l4.l4)?;
    ev.proto = l4.proto;
    ev.tcp_flags = flags;
    ev.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: a helper call with no arguments and no side effects.
    // The coarse clock (one tick) costs a few ns where the precise one
    // costs ~30; sequence timeouts are seconds.
    ev.ts_ns = unsafe { bpf_ktime_get_coarse_ns() };
    first_step::route(&mut ev, slot, mark & ADDR_LOCAL != 0);
    if rule.flags & PORT_STEALTH != 0 {
        bump(counter::STEALTH_DROP);
        return Some(xdp_action::XDP_DROP);
    }
    None
}

#[inline(always)]
fn flags_match(rule: &PortRule, flags: u8) -> bool {
    flags & rule.must_set == rule.must_set && flags & rule.must_clear == 0
}

/// Copies the addresses out of the IP header into a fresh event.
#[inline(always)]
pub(crate) fn event_addrs(ctx: &XdpContext, l4: &L4) -> Option<KnockEvent> {
    let mut ev = KnockEvent {
        ts_ns: 0,
        src: [0; 16],
        dst: [0; 16],
        ifindex: 0,
        dst_port: 0,
        src_port: 0,
        proto: 0,
        family: l4.family,
        tcp_flags: 0,
        kind: EVENT_KNOCK,
        first_port: 0,
        first_proto: 0,
        first_flags: 0,
        first_ms: 0,
        door: 0,
        count: 0,
    };
    // SAFETY (both arms): ptr_at bounds-checked the whole array.
    if l4.family == FAMILY_V4 {
        let src = ptr_at::<[u8; 4]>(ctx, l4.l3 + 12)?;
        let dst = ptr_at::<[u8; 4]>(ctx, l4.l3 + 16)?;
        ev.src[..4].copy_from_slice(unsafe { &*src });
        ev.dst[..4].copy_from_slice(unsafe { &*dst });
    } else {
        ev.src = unsafe { *ptr_at::<[u8; 16]>(ctx, l4.l3 + 8)? };
        ev.dst = unsafe { *ptr_at::<[u8; 16]>(ctx, l4.l3 + 24)? };
    }
    Some(ev)
}

/// `ADDR_LOCAL` and/or `ADDR_TARGET` for one of this host's addresses or a
/// door's target; `None` for any other.
#[inline(always)]
fn addr_mark(l4: &L4, dst: &[u8; 16]) -> Option<u8> {
    // SAFETY (both arms): plain data; a racing update gives old or new.
    if l4.family == FAMILY_V4 {
        let key = [dst[0], dst[1], dst[2], dst[3]];
        LOCAL_V4.get_ptr(key).map(|m| unsafe { (*m).kind })
    } else {
        LOCAL_V6.get_ptr(*dst).map(|m| unsafe { (*m).kind })
    }
}

/// One of this host's own addresses (not only a door's target).
#[inline(always)]
pub(crate) fn is_host(l4: &L4, dst: &[u8; 16]) -> bool {
    addr_mark(l4, dst).is_some_and(|k| k & ADDR_LOCAL != 0)
}

/// Sends `ev` to the daemon; `ts_ns` must be set.
#[inline(always)]
pub(crate) fn emit(ev: &KnockEvent) {
    match EVENTS.reserve::<KnockEvent>(0) {
        Some(mut slot) => {
            slot.write(*ev);
            slot.submit(0);
            bump(counter::KNOCK_HITS);
        }
        None => bump(counter::RINGBUF_FULL),
    }
}

#[inline(always)]
pub(crate) fn bump(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, so no other writer races us.
        unsafe { *c += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Does nothing: the baseline `cargo xtask bench` compares every path with.
/// Never attached.
#[xdp]
pub fn xknock_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
