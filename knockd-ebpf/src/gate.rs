//! The XDP gate: new connections to a gated port are dropped unless the
//! source holds an unexpired window. The expiry is checked here against the
//! packet time, so windows end on time with no daemon running.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, HashMap},
    programs::XdpContext,
};
use knockd_common::{
    counter, AllowKey, AllowValue, FAMILY_V4, GATE_ACTIVE_SLOT, MAX_WINDOWS, PORT_SLOTS, PROTO_TCP,
};

use crate::{
    bump,
    parse::{ptr_at, L4},
};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Non-zero for a gated (proto, port) slot. An array, not a hash, so the
/// check costs ordinary traffic one inlined load.
#[map]
static GATED: Array<u8> = Array::with_max_entries(PORT_SLOTS, 0);

#[map]
static GATE_ALLOW: HashMap<AllowKey, AllowValue> = HashMap::with_max_entries(MAX_WINDOWS, 0);

#[inline(always)]
pub fn check(ctx: &XdpContext, l4: &L4, slot: u32, port: u16, flags: u8) -> Option<u32> {
    if GATED.get(slot).copied().unwrap_or(0) == 0 {
        return None;
    }
    // Packets of established TCP connections pass: a connection opened
    // inside a window outlives it. UDP has no such state here.
    let new_conn = l4.proto != PROTO_TCP || (flags & TCP_SYN != 0 && flags & TCP_ACK == 0);
    if !new_conn {
        return None;
    }
    let allow = AllowKey { addr: src_addr(ctx, l4)?, port, proto: l4.proto, family: l4.family };
    // SAFETY: the value is plain data; a racing update yields old or new expiry.
    if let Some(v) = unsafe { GATE_ALLOW.get(allow) } {
        // SAFETY: a helper call with no arguments and no side effects. The
        // coarse clock lags by at most a tick, so a window may run a tick long.
        if v.expires_ns > unsafe { bpf_ktime_get_coarse_ns() } {
            bump(counter::GATE_PASS);
            return None;
        }
    }
    bump(counter::GATE_DROP);
    Some(xdp_action::XDP_DROP)
}

/// A frame the parser could not classify, though Linux might deliver it as a
/// new connection to some port: while any port is gated it is dropped, since
/// its port might be one of them. Only this slow path reads the flag.
#[inline(always)]
pub fn unclassified() -> Option<u32> {
    if GATED.get(GATE_ACTIVE_SLOT).copied().unwrap_or(0) == 0 {
        return None;
    }
    bump(counter::UNCLASSIFIED_DROP);
    Some(xdp_action::XDP_DROP)
}

#[inline(always)]
fn src_addr(ctx: &XdpContext, l4: &L4) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    // SAFETY (both arms): ptr_at bounds-checked the whole array.
    if l4.family == FAMILY_V4 {
        out[..4].copy_from_slice(unsafe { &*ptr_at::<[u8; 4]>(ctx, l4.l3 + 12)? });
    } else {
        out = unsafe { *ptr_at::<[u8; 16]>(ctx, l4.l3 + 8)? };
    }
    Some(out)
}
