//! SPA capture: what the XDP program hands the daemon for each datagram to
//! an SPA port, and the limits it applies before it does.

/// fwknopd reads nothing shorter (`MIN_SPA_DATA_SIZE`).
pub const SPA_MIN_PAYLOAD: u16 = 140;
/// From 400 chars on fwknop takes a packet for GnuPG, which no SPA door
/// accepts; so nothing longer is copied.
pub const SPA_MAX_PAYLOAD: u16 = 399;
/// Room for the payload in a record: the maximum, rounded up to a multiple of 8.
pub const SPA_PAYLOAD_CAP: usize = 400;

/// The SPA ring: 8 MiB holds 18 K records of 464 bytes. Random spoofed
/// sources pass every token bucket, so in a flood the ring is what must
/// bridge the moments the screener thread is not on a CPU: at the 0.3 Mpps
/// a 2-core machine delivered in the bench that is 60 ms, several
/// scheduler slices.
pub const SPA_RING_BYTES: u32 = 1 << 23;

/// Sources whose token bucket the kernel keeps (an LRU map). One real client
/// sends one packet; 16 K entries of ~100 bytes each (with the map's own
/// overhead) take under 2 MiB and keep every source of a flood from a few
/// thousand addresses limited. A flood from more (random spoofed) sources
/// evicts buckets, and then the ring size and the daemon's HMAC-first
/// rejection are the defence.
pub const SPA_BUCKETS: u32 = 16_384;
/// Packets a source may send at once, and then per second, sustained.
pub const SPA_BURST: u64 = 16;
pub const SPA_RATE: u64 = 4;

/// One datagram to a local SPA port, with its payload.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpaEvent {
    /// `bpf_ktime_get_coarse_ns()`.
    pub ts_ns: u64,
    /// IPv4 uses the first 4 bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ifindex: u32,
    /// Host byte order.
    pub src_port: u16,
    pub dst_port: u16,
    pub family: u8,
    pub _pad: u8,
    /// Bytes of `payload` that are the datagram's.
    pub len: u16,
    pub payload: [u8; SPA_PAYLOAD_CAP],
    pub _tail: [u8; 4],
}

/// Key of the per-source bucket map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpaSource {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<SpaEvent>() == 456);
const _: () = assert!(core::mem::size_of::<SpaSource>() == 20);
const _: () = assert!(SPA_MAX_PAYLOAD as usize <= SPA_PAYLOAD_CAP);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), explicit padding, integer fields only.
    unsafe impl aya::Pod for super::SpaEvent {}
    unsafe impl aya::Pod for super::SpaSource {}
}
