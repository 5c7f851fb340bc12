//! Kernel state for first steps and the sweep guard, shared by the XDP
//! program and the daemon (which sizes, seeds and inspects it).
//!
//! `FIRST_STEP` is a fixed array of millisecond times indexed by a keyed
//! hash of (source, door). A first step writes the time; a second step
//! whose slot is younger than the door's `seq_timeout` sends one event with
//! both. Nothing is ever evicted: a flood can only make slots newer, so a
//! real knocker's first step is never lost (no false negatives); a slot a
//! flood made live lets a spoofed second step through to the tracker (a
//! false positive).

/// Doors described per knock port, as first steps and as second steps.
pub const MAX_STEP_DOORS: usize = 4;

/// A door without `target`: its knocks count when sent to one of this
/// host's own addresses.
pub const SCOPE_HOST: u8 = 0;
/// A door with `target`: its knocks count when sent to that address. Its
/// first step is kept per (source, door, destination), so it pairs only
/// with a second step to the same address, which the daemon checks is the
/// target: a first step to any other address starts nothing, as in knockd.
pub const SCOPE_TARGET: u8 = 1;

/// A door for which a knock port is the first step.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirstOf {
    /// Index of the door in the config.
    pub door: u16,
    /// The door's exact TCP flag rule (zero for UDP).
    pub must_set: u8,
    pub must_clear: u8,
    /// The door's `seq_timeout` in milliseconds.
    pub timeout_ms: u32,
    /// `SCOPE_HOST` or `SCOPE_TARGET`.
    pub scope: u8,
    pub _pad: [u8; 3],
}

/// A door for which a knock port is the second step.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecondOf {
    pub door: u16,
    pub must_set: u8,
    pub must_clear: u8,
    pub timeout_ms: u32,
    /// The door's first step, reported in the pair event.
    pub first_port: u16,
    pub first_proto: u8,
    /// Flags that satisfy the door's rule for the first step, which the
    /// kernel checked but did not keep.
    pub first_flags: u8,
    /// As in [`FirstOf`].
    pub scope: u8,
    pub _pad: [u8; 3],
}

/// Value of `STEP_DOORS`, keyed by `port_slot`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepDoors {
    pub n_first: u8,
    pub n_second: u8,
    /// Non-zero: also report every knock on this port as it comes, for
    /// single-step doors and doors the kernel cannot describe.
    pub emit: u8,
    pub _pad: u8,
    pub first: [FirstOf; MAX_STEP_DOORS],
    pub second: [SecondOf; MAX_STEP_DOORS],
}

/// `sweep_limit` when the guard is off.
pub const SWEEP_OFF: u32 = u32::MAX;

/// The one entry of `STEP_CONFIG`: hash keys chosen at random at each
/// start, table masks, and the sweep limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    pub first_seed: u32,
    pub sweep_seed: u32,
    /// A second, independent hash of the source kept in its sweep slot, so
    /// packets from another source hashing to the same slot do not count.
    pub tag_seed: u32,
    /// Slots minus one; slot counts are powers of two.
    pub first_mask: u32,
    pub sweep_mask: u32,
    pub sweep_limit: u32,
}

/// Value of `SWEEP`, one per hashed source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepSlot {
    pub tag: u32,
    /// The source's attempts are live until this time (ms, wrapping).
    pub until: u32,
    /// First steps at or before this time were invalidated (0: none).
    pub cut: u32,
    pub count: u16,
    /// The invalidation was reported already.
    pub reported: u16,
}

/// Key of `ACTIVE`: a source the tracker holds past its second step.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ActiveKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Slots of `SWEEP` per slot of `FIRST_STEP`: the guard needs one per
/// source, not one per (source, door).
pub const SWEEP_SHARE: u32 = 4;
/// Door id that keys a source's sweep slot.
pub const SWEEP_DOOR: u16 = u16::MAX;

/// Milliseconds of a CLOCK_MONOTONIC time, rounded up and wrapping; never
/// 0, which marks an empty slot.
#[inline(always)]
pub fn ms_of(ns: u64) -> u32 {
    let ms = ns.div_ceil(1_000_000) as u32;
    if ms == 0 {
        1
    } else {
        ms
    }
}

/// Whether a slot written at `then` is younger than `timeout_ms` at `now`.
#[inline(always)]
pub fn younger(then: u32, now: u32, timeout_ms: u32) -> bool {
    then != 0 && now.wrapping_sub(then) < timeout_ms
}

/// Whether `until` is still ahead of `now` (wrapping).
#[inline(always)]
pub fn ahead(until: u32, now: u32) -> bool {
    (until.wrapping_sub(now) as i32) > 0
}

/// The hashed words of (source, door): the address and, in the last word,
/// the family and the door, so an IPv4 source never shares a key with the
/// IPv6 address that begins with the same bytes.
#[inline(always)]
pub fn key_words(addr: &[u8; 16], family: u8, door: u16) -> [u32; 5] {
    let w = |i: usize| u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [w(0), w(4), w(8), w(12), (family as u32) << 16 | door as u32]
}

/// The `FIRST_STEP` seed for a knock to `dst` on a `SCOPE_TARGET` door: the
/// destination keyed into the seed, so each address has slots of its own.
#[inline(always)]
pub fn dst_seed(first_seed: u32, dst: &[u8; 16], family: u8) -> u32 {
    jhash5(&key_words(dst, family, 0), first_seed)
}

/// Linux's `jhash2` (Bob Jenkins' lookup3) of five words with `seed` as
/// the initial value: what the kernel keys its own hash tables with
/// against hash flooding. Not a cryptographic hash, nor meant to be.
#[inline(always)]
pub fn jhash5(k: &[u32; 5], seed: u32) -> u32 {
    let init = 0xdead_beef_u32.wrapping_add(5 << 2).wrapping_add(seed);
    let (mut a, mut b, mut c) = (init, init, init);
    a = a.wrapping_add(k[0]);
    b = b.wrapping_add(k[1]);
    c = c.wrapping_add(k[2]);
    mix(&mut a, &mut b, &mut c);
    b = b.wrapping_add(k[4]);
    a = a.wrapping_add(k[3]);
    final_mix(&mut a, &mut b, &mut c);
    c
}

#[inline(always)]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c) ^ c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c) ^ c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a) ^ a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b) ^ b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline(always)]
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(14));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(11));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(25));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(16));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(4));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(14));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(24));
}

const _: () = assert!(core::mem::size_of::<FirstOf>() == 12);
const _: () = assert!(core::mem::size_of::<SecondOf>() == 16);
const _: () = assert!(core::mem::size_of::<StepDoors>() == 116);
const _: () = assert!(core::mem::size_of::<KernelConfig>() == 24);
const _: () = assert!(core::mem::size_of::<SweepSlot>() == 16);
const _: () = assert!(core::mem::size_of::<ActiveKey>() == 20);
