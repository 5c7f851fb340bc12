//! First steps stay in the kernel: a knock that starts a door is written to
//! `FIRST_STEP` and goes no further. The daemon hears of a source only at
//! its second step, in one event carrying both, so a flood of first steps
//! costs it nothing. Sources the tracker holds past their second step are
//! in `ACTIVE` and report every knock, as before. See
//! `knockd_common::steps` for why nothing here is ever evicted.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use knockd_common::{
    ahead, counter, dst_seed, jhash5, key_words, ms_of, younger, ActiveKey, FirstOf, KernelConfig,
    KnockEvent, SecondOf, StepDoors, EVENT_KNOCK, EVENT_PAIR, MAX_STEP_DOORS, PROTO_TCP, SCOPE_TARGET,
};

use crate::{bump, emit, sweep};

/// Doors by knock port (`port_slot`). A knock port with no entry reports
/// every knock, as it did before first steps were kept here.
#[map]
static STEP_DOORS: HashMap<u32, StepDoors> = HashMap::with_max_entries(4096, 0);

/// Millisecond time of the last first step per hashed (source, door).
/// Sized at load (`first_step_slots`).
#[map]
static FIRST_STEP: Array<u32> = Array::with_max_entries(1 << 20, 0);

/// Seeds, masks and the sweep limit, written once at load.
#[map]
static STEP_CONFIG: Array<KernelConfig> = Array::with_max_entries(1, 0);

/// Sources past their second step, with the time (ms) their attempt
/// ends. The kernel adds them, so a sequence knocked back to back does
/// not wait for the daemon; the daemon removes them. Sized at load.
#[map]
static ACTIVE: HashMap<ActiveKey, u32> = HashMap::with_max_entries(65_536, 0);

#[inline(always)]
pub fn config() -> Option<&'static KernelConfig> {
    STEP_CONFIG.get(0)
}

#[inline(always)]
pub fn active_key(ev: &KnockEvent) -> ActiveKey {
    ActiveKey { addr: ev.src, family: ev.family, _pad: [0; 3] }
}

/// Whether `key` is past its second step with its attempt not yet over.
#[inline(always)]
pub fn is_active(key: &ActiveKey, now: u32) -> bool {
    // SAFETY: plain data; a racing update gives the old or the new time.
    unsafe { ACTIVE.get(key) }.is_some_and(|&until| knockd_common::ahead(until, now))
}

#[inline(always)]
pub fn forget_active(key: &ActiveKey) {
    let _ = ACTIVE.remove(key);
}

/// Decides what a knock on a knock port becomes: nothing (a first step,
/// kept here; or a step that can change nothing), one pair event, or the
/// knock itself. `host`: the knock is to one of this host's own addresses
/// (else to a door's target only).
#[inline(always)]
pub fn route(ev: &mut KnockEvent, port: u32, host: bool) {
    // SAFETY: plain data, written by the daemon between packets.
    let (Some(doors), Some(cfg)) = (unsafe { STEP_DOORS.get(port) }, config()) else {
        emit(ev);
        return;
    };
    let now = ms_of(ev.ts_ns);
    let key = active_key(ev);
    if is_active(&key, now) {
        emit(ev);
        record_firsts(ev, doors, cfg, now, host);
        return;
    }
    let paired = second_step(ev, doors, cfg, &key, now);
    if !paired && doors.emit != 0 {
        emit(ev);
    }
    let recorded = record_firsts(ev, doors, cfg, now, host);
    if !paired && !recorded {
        sweep::wrong_step(ev, cfg, now);
    }
    if !paired && doors.emit == 0 {
        bump(if recorded { counter::FIRST_STEP } else { counter::ORPHAN_STEP });
    }
}

#[inline(always)]
fn flags_ok(ev: &KnockEvent, must_set: u8, must_clear: u8) -> bool {
    ev.proto != PROTO_TCP || (ev.tcp_flags & must_set == must_set && ev.tcp_flags & must_clear == 0)
}

/// The slot of (source, door), and for a `SCOPE_TARGET` door also of the
/// destination (see `knockd_common::SCOPE_TARGET`).
#[inline(always)]
fn first_slot(ev: &KnockEvent, door: u16, scope: u8, cfg: &KernelConfig) -> u32 {
    let seed =
        if scope == SCOPE_TARGET { dst_seed(cfg.first_seed, &ev.dst, ev.family) } else { cfg.first_seed };
    jhash5(&key_words(&ev.src, ev.family, door), seed) & cfg.first_mask
}

/// Writes the time of this knock for every door it is the first step of;
/// a repeat restarts the attempt. A door without a target takes only knocks
/// to the host's own addresses. Returns whether any door took it.
#[inline(always)]
fn record_firsts(ev: &KnockEvent, doors: &StepDoors, cfg: &KernelConfig, now: u32, host: bool) -> bool {
    let mut longest = 0u32;
    for i in 0..MAX_STEP_DOORS {
        if i >= doors.n_first as usize {
            break;
        }
        let f: &FirstOf = &doors.first[i];
        if !flags_ok(ev, f.must_set, f.must_clear) || (f.scope != SCOPE_TARGET && !host) {
            continue;
        }
        if let Some(slot) = FIRST_STEP.get_ptr_mut(first_slot(ev, f.door, f.scope, cfg)) {
            // SAFETY: a u32 in an array slot; a racing writer leaves one time.
            unsafe { *slot = now };
        }
        longest = longest.max(f.timeout_ms);
    }
    if longest == 0 {
        return false;
    }
    sweep::started(ev, cfg, now, longest);
    true
}

/// A second step whose first step is live: one pair event, for the door
/// whose first step came last (under knockd's rules a later first step
/// ends the earlier attempt); or, if that first step was dropped (sweep
/// guard, wrong step, finished sequence), at most one report of it. The
/// slot is left as it is: clearing it would let a spoofed second step that
/// hashes there erase a real knocker's first step.
#[inline(always)]
fn second_step(
    ev: &mut KnockEvent,
    doors: &StepDoors,
    cfg: &KernelConfig,
    key: &ActiveKey,
    now: u32,
) -> bool {
    let mut best: Option<(&SecondOf, u32)> = None;
    for i in 0..MAX_STEP_DOORS {
        if i >= doors.n_second as usize {
            break;
        }
        let s: &SecondOf = &doors.second[i];
        if !flags_ok(ev, s.must_set, s.must_clear) {
            continue;
        }
        let Some(then) = FIRST_STEP.get(first_slot(ev, s.door, s.scope, cfg)).copied() else {
            continue;
        };
        if younger(then, now, s.timeout_ms) && best.is_none_or(|(_, t)| ahead(then, t)) {
            best = Some((s, then));
        }
    }
    let Some((s, then)) = best else { return false };
    if !sweep::dropped(ev, cfg, then, s.door) {
        pair(ev, s, then, key);
    }
    true
}

#[inline(always)]
fn pair(ev: &mut KnockEvent, s: &SecondOf, then: u32, key: &ActiveKey) {
    ev.kind = EVENT_PAIR;
    ev.first_port = s.first_port;
    ev.first_proto = s.first_proto;
    ev.first_flags = s.first_flags;
    ev.first_ms = then;
    ev.door = s.door;
    emit(ev);
    ev.kind = EVENT_KNOCK;
    bump(counter::PAIRS);
    let until = then.wrapping_add(s.timeout_ms);
    if ACTIVE.insert(key, until, 0).is_err() {
        bump(counter::ACTIVE_FULL);
    }
}
