//! Types shared by the XDP program and the daemon. Every type is `#[repr(C)]`
//! with explicit padding, so both sides agree on the layout byte for byte.
#![no_std]

/// Address family tags carried in [`KnockEvent::family`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// ICMP echo requests, and ICMPv6 ones (next header 58) too: one kind of
/// step for both families, whose "port" is the echo payload length.
pub const PROTO_ICMP: u8 = 1;

/// Ring buffer size in bytes: a power-of-two number of pages. At 64 bytes a
/// record this holds 16 K knocks, enough to ride out a burst while the daemon
/// is descheduled.
pub const RING_BYTES: u32 = 1 << 20;

/// ICMP echo payload lengths with a slot: enough for one frame at any
/// usual MTU. Longer echoes are never knocks.
pub const ICMP_SLOTS: u32 = 2048;

/// Slots of the per-port arrays: one per (proto, port), TCP then UDP, then
/// one per ICMP payload length below [`ICMP_SLOTS`]. Array lookups are
/// inlined by the verifier, so a frame to an ordinary port costs two loads
/// rather than a hash computation.
pub const PORT_SLOTS: u32 = 2 * 65_536 + ICMP_SLOTS;

/// The per-port array index of (port, proto). For ICMP, `port` is the
/// payload length, which callers keep below [`ICMP_SLOTS`] (it is masked,
/// so the index stays in bounds whatever they pass).
#[inline(always)]
pub const fn port_slot(port: u16, proto: u8) -> u32 {
    match proto {
        PROTO_UDP => port as u32 | 1 << 16,
        PROTO_ICMP => (port as u32 & (ICMP_SLOTS - 1)) | 2 << 16,
        _ => port as u32,
    }
}
/// Capacity of each local/target address map.
pub const MAX_LOCAL_ADDRS: u32 = 1024;

/// Indexes into the per-CPU counter array.
pub mod counter {
    pub const FRAMES: u32 = 0;
    pub const KNOCK_HITS: u32 = 1;
    pub const FLAG_MISMATCH: u32 = 2;
    pub const RINGBUF_FULL: u32 = 3;
    pub const NOT_LOCAL: u32 = 4;
    /// New connections to a gated port dropped (no open window).
    pub const GATE_DROP: u32 = 5;
    /// New connections to a gated port let through by a window.
    pub const GATE_PASS: u32 = 6;
    /// Knock packets dropped because their door is stealthy.
    pub const STEALTH_DROP: u32 = 7;
    /// Frames dropped because they could not be fully classified while a
    /// gate was active, and Linux might still have delivered them as a new
    /// connection to a gated port (fail closed).
    pub const UNCLASSIFIED_DROP: u32 = 8;
    /// First steps recorded in `FIRST_STEP` with no event sent.
    pub const FIRST_STEP: u32 = 9;
    /// Events carrying a first step and a second step (pairs).
    pub const PAIRS: u32 = 10;
    /// Knocks on a later step from a source with neither a live first step
    /// nor an `ACTIVE` entry: they could change nothing, so no event.
    pub const ORPHAN_STEP: u32 = 11;
    /// New connections to other ports counted against a knocking source.
    pub const SWEEP_COUNTED: u32 = 12;
    /// Times a source crossed `sweep_limit` and its attempts were dropped.
    pub const SWEEP_DROPPED: u32 = 13;
    /// Pairs whose source did not fit in `ACTIVE` (its later steps are lost).
    pub const ACTIVE_FULL: u32 = 14;
    /// SPA datagrams handed to the daemon.
    pub const SPA_CAPTURED: u32 = 15;
    /// SPA datagrams dropped by their source's token bucket.
    pub const SPA_LIMITED: u32 = 16;
    /// SPA datagrams lost because the SPA ring was full.
    pub const SPA_RING_FULL: u32 = 17;
    /// Datagrams to an SPA port with a length no SPA packet has (dropped).
    pub const SPA_BAD_LEN: u32 = 18;
    pub const COUNT: u32 = 19;
}

/// A (port, proto) pair, as the daemon names knock ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl PortKey {
    pub const fn new(port: u16, proto: u8) -> Self {
        Self { port, proto, _pad: 0 }
    }
}

/// Value of the knock-port array: the kernel-side TCP flag pre-filter. When
/// several doors share a port the daemon stores the loosest combination and
/// checks each door's exact flags itself. A slot is a knock port only with
/// `PORT_KNOCK` set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    pub must_set: u8,
    pub must_clear: u8,
    /// `PORT_KNOCK`, and `PORT_STEALTH`: drop the knock after recording it.
    pub flags: u8,
    pub _pad: u8,
}

pub const PORT_STEALTH: u8 = 1;
pub const PORT_KNOCK: u8 = 2;
/// The `GATED` slot of TCP port 0, which no protected port can use: non-zero
/// while any port is gated, so the program knows to drop what it cannot
/// classify.
pub const GATE_ACTIVE_SLOT: u32 = 0;
/// Capacity of the open-window map.
pub const MAX_WINDOWS: u32 = 65_536;

/// Key of the open-window map: who may open which port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllowKey {
    /// Source address; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Door names are kept to this many bytes in the window map.
pub const DOOR_NAME_LEN: usize = 24;

/// Value of the open-window map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowValue {
    /// CLOCK_MONOTONIC ns after which the window is shut; the kernel checks it
    /// against the packet time, so it needs no daemon.
    pub expires_ns: u64,
    /// The door that opened it, NUL-padded, for `--status`.
    pub door: [u8; DOOR_NAME_LEN],
}

/// Value of the local-address maps. The key is the address itself
/// (`[u8; 4]` or `[u8; 16]`, network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrMark {
    /// Bit 0: an address of this host. Bit 1: some door's `target`.
    pub kind: u8,
    pub _pad: [u8; 3],
}

pub const ADDR_LOCAL: u8 = 1;
pub const ADDR_TARGET: u8 = 2;

/// One recognised knock, as pushed through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnockEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC in nanoseconds.
    pub ts_ns: u64,
    /// Source address; IPv4 uses the first 4 bytes.
    pub src: [u8; 16],
    /// Destination address; IPv4 uses the first 4 bytes.
    pub dst: [u8; 16],
    pub ifindex: u32,
    /// Host byte order.
    pub dst_port: u16,
    /// Host byte order.
    pub src_port: u16,
    pub proto: u8,
    pub family: u8,
    pub tcp_flags: u8,
    /// `EVENT_KNOCK`, `EVENT_PAIR` or `EVENT_SWEEP`.
    pub kind: u8,
    /// `EVENT_PAIR`: the first step's port (host order), protocol and the
    /// TCP flags its door demands, and its time in [`ms_of`] milliseconds.
    pub first_port: u16,
    pub first_proto: u8,
    pub first_flags: u8,
    pub first_ms: u32,
    /// `EVENT_PAIR` and `EVENT_SWEEP`: the door (its index in the config),
    /// or `DOOR_ALL` for every attempt of the source.
    pub door: u16,
    /// `EVENT_SWEEP`: how many packets to other ports crossed the limit.
    pub count: u16,
}

/// A knock, reported as it came.
pub const EVENT_KNOCK: u8 = 0;
/// A second step with the first step the kernel held for it.
pub const EVENT_PAIR: u8 = 1;
/// The sweep guard dropped the source's attempts.
pub const EVENT_SWEEP: u8 = 2;
pub const DOOR_ALL: u16 = u16::MAX;

const _: () = assert!(core::mem::size_of::<PortKey>() == 4);
const _: () = assert!(port_slot(65_535, PROTO_UDP) < PORT_SLOTS);
const _: () = assert!(port_slot(u16::MAX, PROTO_ICMP) < PORT_SLOTS);
const _: () = assert!(port_slot(0, PROTO_ICMP) > port_slot(65_535, PROTO_UDP));
const _: () = assert!(core::mem::size_of::<PortRule>() == 4);
const _: () = assert!(core::mem::size_of::<AddrMark>() == 4);
const _: () = assert!(core::mem::size_of::<AllowKey>() == 20);
const _: () = assert!(core::mem::size_of::<AllowValue>() == 32);
const _: () = assert!(core::mem::size_of::<KnockEvent>() == 64);
const _: () = assert!(core::mem::align_of::<KnockEvent>() == 8);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C) with explicit padding and only integer fields,
    // so every bit pattern is valid.
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for PortRule {}
    unsafe impl aya::Pod for AddrMark {}
    unsafe impl aya::Pod for KnockEvent {}
    unsafe impl aya::Pod for AllowKey {}
    unsafe impl aya::Pod for AllowValue {}
    unsafe impl aya::Pod for StepDoors {}
    unsafe impl aya::Pod for KernelConfig {}
    unsafe impl aya::Pod for SweepSlot {}
    unsafe impl aya::Pod for ActiveKey {}
}

pub mod spa;
pub mod steps;
pub use spa::*;
pub use steps::*;
