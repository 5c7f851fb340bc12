//! The sweep guard (knockd #71): while a source has an attempt in progress,
//! its new connections to this host on ports in no sequence count against
//! it; past `sweep_limit` its attempts are dropped. A port scan that walks
//! through a sequence in order therefore opens nothing.
//!
//! The source's slot also marks its attempts invalid after a wrong step
//! (`wrong_step`), which knockd's rules demand and the tracker cannot see
//! while the kernel holds the first step.
//!
//! Ordinary traffic pays one array load: sources are looked up only for a
//! SYN or UDP datagram, and only while some first step is live (`LIVE`).

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, macros::map, maps::Array, programs::XdpContext};
use knockd_common::{
    ahead, counter, jhash5, key_words, ms_of, KernelConfig, KnockEvent, SweepSlot, DOOR_ALL, EVENT_SWEEP,
    PROTO_TCP, SWEEP_DOOR, SWEEP_OFF,
};

use crate::{
    bump, emit, event_addrs,
    first_step::{active_key, config, forget_active, is_active},
    is_host,
    parse::L4,
};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// One slot per hashed source. Sized at load.
#[map]
static SWEEP: Array<SweepSlot> = Array::with_max_entries(1 << 18, 0);

/// The time (ms) until which some attempt may be in progress.
#[map]
static LIVE: Array<u32> = Array::with_max_entries(1, 0);

struct Source {
    slot: u32,
    tag: u32,
}

#[inline(always)]
fn source(ev: &KnockEvent, cfg: &KernelConfig) -> Source {
    let words = key_words(&ev.src, ev.family, SWEEP_DOOR);
    Source { slot: jhash5(&words, cfg.sweep_seed) & cfg.sweep_mask, tag: jhash5(&words, cfg.tag_seed) }
}

/// A first step at `now` for doors whose longest timeout is `timeout_ms`:
/// the source's attempts are live until then. A slot another source held
/// is taken over (the newest first step wins, so the guard may miss a
/// sweep, but never rejects a knock it should not).
#[inline(always)]
pub fn started(ev: &KnockEvent, cfg: &KernelConfig, now: u32, timeout_ms: u32) {
    let until = now.wrapping_add(timeout_ms);
    if let Some(live) = LIVE.get_ptr_mut(0) {
        // SAFETY: a u32; written only when it moves, so a flood does not
        // keep one cache line bouncing between CPUs.
        unsafe {
            if ahead(until, *live) {
                *live = until;
            }
        }
    }
    let src = source(ev, cfg);
    let Some(slot) = SWEEP.get_ptr_mut(src.slot) else { return };
    // SAFETY: plain data in an array slot; racing writers leave a mix that
    // at worst miscounts one source's sweep.
    let slot = unsafe { &mut *slot };
    if slot.tag == src.tag && ahead(slot.until, now) {
        if ahead(until, slot.until) {
            slot.until = until;
        }
        return;
    }
    let cut = if slot.tag == src.tag { slot.cut } else { 0 };
    *slot = SweepSlot { tag: src.tag, until, cut, count: 0, reported: 0 };
}

/// At a second step whose first step came at `then`: whether the guard
/// dropped that first step. The first time it says so, the daemon is told.
#[inline(always)]
pub fn dropped(ev: &mut KnockEvent, cfg: &KernelConfig, then: u32, door: u16) -> bool {
    let src = source(ev, cfg);
    let Some(slot) = SWEEP.get_ptr_mut(src.slot) else { return false };
    // SAFETY: as in `started`.
    let slot = unsafe { &mut *slot };
    if slot.tag != src.tag || slot.cut == 0 || ahead(then, slot.cut) {
        return false;
    }
    if slot.reported == 0 {
        slot.reported = 1;
        report(ev, door, cfg.sweep_limit);
    }
    true
}

/// A knock on a step that neither starts a door nor follows one: under
/// knockd's rules it invalidates the source's attempts. Only the source's
/// own slot (its tag) is marked, never `FIRST_STEP`, so a spoofed knock
/// cannot erase another source's first step.
#[inline(always)]
pub fn wrong_step(ev: &KnockEvent, cfg: &KernelConfig, now: u32) {
    let src = source(ev, cfg);
    let Some(slot) = SWEEP.get_ptr_mut(src.slot) else { return };
    // SAFETY: as in `started`.
    let slot = unsafe { &mut *slot };
    if slot.tag == src.tag && ahead(slot.until, now) {
        // Not a sweep: nothing to report at the second step.
        (slot.cut, slot.count, slot.reported) = (now, 0, 1);
    }
}

/// A frame to a port in no sequence: counted against its source if it is
/// a new connection to this host while the source has an attempt live.
#[inline(always)]
pub fn check(ctx: &XdpContext, l4: &L4, dst_port: u16, flags: u8) {
    let new_conn = l4.proto != PROTO_TCP || (flags & TCP_SYN != 0 && flags & TCP_ACK == 0);
    if !new_conn {
        return;
    }
    // SAFETY: a helper call with no arguments and no side effects.
    let now = ms_of(unsafe { bpf_ktime_get_coarse_ns() });
    if !LIVE.get(0).is_some_and(|&until| ahead(until, now)) {
        return;
    }
    let Some(cfg) = config() else { return };
    if cfg.sweep_limit == SWEEP_OFF {
        return;
    }
    let Some(mut ev) = event_addrs(ctx, l4) else { return };
    if !is_host(l4, &ev.dst) {
        return;
    }
    (ev.proto, ev.dst_port, ev.tcp_flags) = (l4.proto, dst_port, flags);
    count(&mut ev, cfg, now);
}

#[inline(always)]
fn count(ev: &mut KnockEvent, cfg: &KernelConfig, now: u32) {
    let src = source(ev, cfg);
    let Some(slot) = SWEEP.get_ptr_mut(src.slot) else { return };
    // SAFETY: as in `started`.
    let slot = unsafe { &mut *slot };
    if slot.tag != src.tag || !ahead(slot.until, now) {
        return;
    }
    bump(counter::SWEEP_COUNTED);
    slot.count = slot.count.saturating_add(1);
    if (slot.count as u32) <= cfg.sweep_limit {
        return;
    }
    // Every first step so far is dropped; a new one starts afresh. Nothing
    // is in progress any more, so the sweep's next frames count for nothing
    // (and the source is dropped once, not once per `sweep_limit` frames).
    bump(counter::SWEEP_DROPPED);
    slot.cut = now;
    slot.until = now;
    slot.count = 0;
    slot.reported = 0;
    let key = active_key(ev);
    if is_active(&key, now) {
        forget_active(&key);
        slot.reported = 1;
        // SAFETY: as above.
        ev.ts_ns = unsafe { bpf_ktime_get_coarse_ns() };
        report(ev, DOOR_ALL, cfg.sweep_limit);
    }
}

#[inline(always)]
fn report(ev: &mut KnockEvent, door: u16, limit: u32) {
    ev.kind = EVENT_SWEEP;
    ev.door = door;
    ev.count = limit.saturating_add(1).min(u16::MAX as u32) as u16;
    emit(ev);
    ev.kind = knockd_common::EVENT_KNOCK;
}
