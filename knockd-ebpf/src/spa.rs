//! SPA capture. A UDP datagram to an SPA port on one of this host's
//! addresses is copied, payload and all, to the daemon through a ring of
//! its own, then dropped: the port never answers, so it looks filtered.
//! Datagrams whose length no SPA packet has are dropped uncopied. A token
//! bucket per source keeps a flood from a few sources from filling the
//! ring ahead of real packets.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_coarse_ns, bpf_xdp_load_bytes},
    macros::map,
    maps::{Array, LruHashMap, RingBuf},
    programs::XdpContext,
};
use knockd_common::{
    counter, SpaEvent, SpaSource, SPA_BUCKETS, SPA_BURST, SPA_MAX_PAYLOAD, SPA_MIN_PAYLOAD, SPA_RATE,
    SPA_RING_BYTES,
};

use crate::{
    bump, event_addrs, is_host,
    parse::{read_be16, L4, UDP_HLEN},
};

/// Non-zero for a UDP port some door receives SPA packets on.
#[map]
static SPA_PORTS: Array<u8> = Array::with_max_entries(65_536, 0);

#[map]
static SPA_EVENTS: RingBuf = RingBuf::with_byte_size(SPA_RING_BYTES, 0);

/// Per source: the GCRA "theoretical arrival time" in coarse ns. One u64
/// is a whole token bucket (`SPA_BURST` deep, `SPA_RATE` a second).
#[map]
static SPA_BUCKET: LruHashMap<SpaSource, u64> = LruHashMap::with_max_entries(SPA_BUCKETS, 0);

const INTERVAL_NS: u64 = 1_000_000_000 / SPA_RATE;
const TOLERANCE_NS: u64 = INTERVAL_NS * (SPA_BURST - 1);

/// `None`: not a datagram to a local SPA port; the caller goes on.
#[inline(always)]
pub fn check(ctx: &XdpContext, l4: &L4, port: u16) -> Option<u32> {
    if SPA_PORTS.get(u32::from(port)).copied().unwrap_or(0) == 0 {
        return None;
    }
    let mut ev = event_addrs(ctx, l4)?;
    if !is_host(l4, &ev.dst) {
        bump(counter::NOT_LOCAL);
        return None;
    }
    let len = read_be16(ctx, l4.l4 + 4)?.wrapping_sub(UDP_HLEN as u16);
    if !(SPA_MIN_PAYLOAD..=SPA_MAX_PAYLOAD).contains(&len) {
        bump(counter::SPA_BAD_LEN);
        return Some(xdp_action::XDP_DROP);
    }
    // SAFETY: a helper call with no arguments and no side effects.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let source = SpaSource { addr: ev.src, family: l4.family, _pad: [0; 3] };
    if !admit(&source, now) {
        bump(counter::SPA_LIMITED);
        return Some(xdp_action::XDP_DROP);
    }
    ev.ts_ns = now;
    let src_port = read_be16(ctx, l4.l4)?;
    capture(ctx, &ev, l4, src_port, port, len);
    Some(xdp_action::XDP_DROP)
}

/// GCRA: a packet conforms unless the source is more than a burst ahead of
/// its rate. Racing CPUs may each admit one: a bound, not an exact count.
#[inline(always)]
fn admit(source: &SpaSource, now: u64) -> bool {
    // SAFETY: plain data; a racing update gives old or new.
    let tat = unsafe { SPA_BUCKET.get(source) }.copied().unwrap_or(0);
    let tat = if tat > now { tat } else { now };
    if tat - now > TOLERANCE_NS {
        return false;
    }
    let _ = SPA_BUCKET.insert(source, tat + INTERVAL_NS, 0);
    true
}

#[inline(always)]
fn capture(ctx: &XdpContext, ev: &knockd_common::KnockEvent, l4: &L4, src_port: u16, port: u16, len: u16) {
    let Some(mut slot) = SPA_EVENTS.reserve::<SpaEvent>(0) else {
        bump(counter::SPA_RING_FULL);
        return;
    };
    let rec = slot.as_mut_ptr();
    // The verifier must see the copy length bounded by the record's room,
    // but the compiler knows `len` is in bounds and drops any check on it;
    // a volatile read hides the value so the check stays next to the call.
    let raw = u32::from(len);
    // SAFETY: reads a local.
    let n = unsafe { core::ptr::read_volatile(&raw) }.max(1);
    if n > u32::from(SPA_MAX_PAYLOAD) {
        slot.discard(0);
        return;
    }
    // SAFETY: `rec` is the reserved record; the fields are written before
    // submit, and the copy is at most SPA_MAX_PAYLOAD bytes into `payload`.
    let copied = unsafe {
        (*rec).ts_ns = ev.ts_ns;
        (*rec).src = ev.src;
        (*rec).dst = ev.dst;
        (*rec).ifindex = ctx.ingress_ifindex() as u32;
        (*rec).src_port = src_port;
        (*rec).dst_port = port;
        (*rec).family = l4.family;
        (*rec)._pad = 0;
        (*rec).len = len;
        let to = (*rec).payload.as_mut_ptr().cast();
        bpf_xdp_load_bytes(ctx.ctx, (l4.l4 + UDP_HLEN) as u32, to, n)
    };
    if copied != 0 {
        // The UDP length claims more than the frame holds.
        slot.discard(0);
        bump(counter::SPA_BAD_LEN);
        return;
    }
    slot.submit(0);
    bump(counter::SPA_CAPTURED);
}
