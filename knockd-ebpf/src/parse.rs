//! Bounds-checked header walking. Every read goes through `ptr_at`, which the
//! verifier needs to see before any access to packet memory.
//!
//! The walk ends in one of three answers. `Ok(L4)`: a TCP or UDP header that
//! lies whole in the frame, whose ports and flags say what Linux would do with
//! it. `Stop::NotOurs`: nothing Linux could deliver as a new connection on
//! the strength of this frame. `Stop::Unclassified`: Linux might deliver it,
//! after reassembly or a longer walk than ours, to a port we cannot see; with
//! a gate active that frame is dropped (fail closed).
//!
//! Verdicts per class, and why (Linux 6.x):
//! - IPv4 with IHL < 5, a header longer than the frame, or a version other
//!   than 4: `ip_rcv` drops it, so `NotOurs`.
//! - IPv4 options: the L4 header is found past them, as Linux finds it.
//! - IPv4 first fragment (MF, offset 0) whose L4 header is not whole within
//!   the fragment (Linux trims the frame to the IP total length first):
//!   `Unclassified`; reassembly would take the header from later fragments.
//!   A first fragment with a whole header is judged by it: Linux (since
//!   4.19, and RFC 5722 for IPv6) drops overlapping fragments, so no later
//!   fragment can rewrite the ports or flags.
//! - IPv4 TCP fragment at offset 1 (RFC 1858) or 2: `Unclassified`; starting
//!   inside the 20-byte TCP header, it can only serve to complete or rewrite
//!   one. Other non-first fragments carry no header: `NotOurs`, their first
//!   fragment decides (and is dropped itself when its header is not whole).
//! - A whole (unfragmented) datagram whose L4 header is cut short: Linux
//!   drops it, so `NotOurs`.
//! - IPv6: hop-by-hop, routing, destination options and fragment headers
//!   are walked. A chain longer than `MAX_EXT_HDRS` or reaching past
//!   `MAX_L4_OFFSET`: `Unclassified` (Linux walks any number).
//! - IPv6 first fragment (offset 0, M set) without the whole chain and L4
//!   header inside the payload length (RFC 7112): `Unclassified`. Linux
//!   5.10+ discards most of these itself, but not every kernel does.
//! - More VLAN tags than `MAX_VLAN_TAGS`: `Unclassified`; stacked VLAN
//!   devices would deliver the frame.
//! - An unfragmented ICMP or ICMPv6 message with its 8-byte header whole:
//!   `Ok`, with `PROTO_ICMP`, for echo knocks (see `icmp`). Fragmented
//!   ones are `NotOurs`: no ICMP message opens a connection.
//! - Anything else that is not IPv4/IPv6 carrying TCP/UDP at this level
//!   (ARP, ESP/AH, tunnels): `NotOurs`. What a tunnel or IPsec decapsulates
//!   later never passes through XDP again; see the README.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use knockd_common::{FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_HLEN: usize = 4;
const MAX_VLAN_TAGS: usize = 2;

const IPV4_MF: u16 = 0x2000;
const IPV4_OFFSET: u16 = 0x1fff;
const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
const IPV6_FRAG_OFFSET: u16 = 0xfff8;
const IPV6_FRAG_MORE: u16 = 1;
/// Extension headers walked before giving up on a packet. Real stacks send one
/// or two; the bound keeps the verifier's path count small.
const MAX_EXT_HDRS: usize = 6;
/// Packets whose L4 header starts beyond this are not judged by their ports.
/// It also gives the verifier an upper bound on the variable offset.
const MAX_L4_OFFSET: usize = 512;

pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
const IPPROTO_ICMPV6: u8 = 58;

/// Where the headers of a frame's TCP, UDP or ICMP (`PROTO_ICMP`, for both
/// families) header sit. The whole L4 header lies inside the frame.
pub struct L4 {
    pub family: u8,
    pub proto: u8,
    pub l3: usize,
    pub l4: usize,
}

/// Why a frame has no L4 header to judge.
pub enum Stop {
    NotOurs,
    Unclassified,
}

use Stop::{NotOurs, Unclassified};

#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
pub fn read_u8(ctx: &XdpContext, off: usize) -> Option<u8> {
    // SAFETY: ptr_at checked the byte lies inside the frame.
    ptr_at::<u8>(ctx, off).map(|p| unsafe { *p })
}

/// Reads a big-endian u16 and returns it in host order.
#[inline(always)]
pub fn read_be16(ctx: &XdpContext, off: usize) -> Option<u16> {
    // SAFETY: ptr_at checked both bytes lie inside the frame.
    ptr_at::<[u8; 2]>(ctx, off).map(|p| u16::from_be_bytes(unsafe { *p }))
}

/// Walks Ethernet, VLAN tags and the IP header(s) down to a whole TCP or UDP
/// header.
#[inline(always)]
pub fn locate_l4(ctx: &XdpContext) -> Result<L4, Stop> {
    let (ethertype, l3) = skip_vlans(ctx)?;
    match ethertype {
        ETH_P_IP => ipv4(ctx, l3),
        ETH_P_IPV6 => ipv6(ctx, l3),
        _ => Err(NotOurs),
    }
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

#[inline(always)]
fn skip_vlans(ctx: &XdpContext) -> Result<(u16, usize), Stop> {
    let mut ethertype = read_be16(ctx, 12).ok_or(NotOurs)?;
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        ethertype = read_be16(ctx, off + 2).ok_or(NotOurs)?;
        off += VLAN_HLEN;
    }
    if is_vlan(ethertype) {
        return Err(Unclassified);
    }
    Ok((ethertype, off))
}

#[inline(always)]
fn l4_hlen(proto: u8) -> usize {
    if proto == PROTO_TCP {
        TCP_HLEN
    } else {
        UDP_HLEN
    }
}

#[inline(always)]
fn header_whole(ctx: &XdpContext, l4: &L4) -> bool {
    ptr_at::<u8>(ctx, l4.l4 + l4_hlen(l4.proto) - 1).is_some()
}

/// The bytes of the frame from `l3` on.
#[inline(always)]
fn ip_bytes(ctx: &XdpContext, l3: usize) -> usize {
    (ctx.data_end() - ctx.data()).saturating_sub(l3)
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Result<L4, Stop> {
    let ver_ihl = read_u8(ctx, l3).ok_or(NotOurs)?;
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return Err(NotOurs);
    }
    let frag = read_be16(ctx, l3 + 6).ok_or(NotOurs)?;
    let proto = read_u8(ctx, l3 + 9).ok_or(NotOurs)?;
    if proto == PROTO_ICMP {
        let whole = frag & (IPV4_OFFSET | IPV4_MF) == 0;
        return icmp(whole, L4 { family: FAMILY_V4, proto, l3, l4: l3 + ihl });
    }
    if !is_l4(proto) {
        return Err(NotOurs);
    }
    let offset = frag & IPV4_OFFSET;
    if offset != 0 {
        // RFC 1858, widened to offset 2: a TCP fragment that starts inside
        // the 20-byte TCP header can only complete or rewrite that header.
        let in_header = (offset as usize) * 8 < TCP_HLEN;
        return Err(if in_header && proto == PROTO_TCP { Unclassified } else { NotOurs });
    }
    let l4 = L4 { family: FAMILY_V4, proto, l3, l4: l3 + ihl };
    if frag & IPV4_MF != 0 {
        return first_v4_fragment(ctx, l4, ihl);
    }
    // A whole datagram with a cut-short L4 header is dropped by Linux.
    if !header_whole(ctx, &l4) {
        return Err(NotOurs);
    }
    Ok(l4)
}

/// Linux trims a frame to its IP total length, so a first fragment is judged
/// by its L4 header only when that header lies inside the total length.
#[inline(always)]
fn first_v4_fragment(ctx: &XdpContext, l4: L4, ihl: usize) -> Result<L4, Stop> {
    let total = read_be16(ctx, l4.l3 + 2).ok_or(NotOurs)? as usize;
    if ihl + l4_hlen(l4.proto) <= total && header_whole(ctx, &l4) {
        return Ok(l4);
    }
    // Linux drops a datagram longer than its frame or shorter than its header.
    if total > ip_bytes(ctx, l4.l3) || total < ihl {
        return Err(NotOurs);
    }
    Err(Unclassified)
}

#[inline(always)]
fn is_ext(next: u8) -> bool {
    matches!(next, NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Result<L4, Stop> {
    if read_u8(ctx, l3).ok_or(NotOurs)? >> 4 != 6 {
        return Err(NotOurs);
    }
    let mut next = read_u8(ctx, l3 + 6).ok_or(NotOurs)?;
    let mut off = l3 + IPV6_HLEN;
    // Set by a fragment header with offset 0 and more to come.
    let mut first_fragment = false;
    for _ in 0..MAX_EXT_HDRS {
        if !is_ext(next) {
            break;
        }
        // One bounds check for the 4 bytes all these headers start with, so
        // the compiler cannot split it into checks the verifier cannot follow.
        // SAFETY: ptr_at checked the 4 bytes lie inside the frame.
        let Some(hdr) = ptr_at::<[u8; 4]>(ctx, off).map(|p| unsafe { *p }) else {
            return Err(cut_short(first_fragment));
        };
        let len = if next == NEXTHDR_FRAGMENT {
            let field = u16::from_be_bytes([hdr[2], hdr[3]]);
            // Only the first fragment (offset 0) carries the L4 header.
            if field & IPV6_FRAG_OFFSET != 0 {
                return Err(first_fragment_stop(ctx, first_fragment, l3, off + 8));
            }
            first_fragment |= field & IPV6_FRAG_MORE != 0;
            8
        } else {
            (hdr[1] as usize + 1) * 8
        };
        next = hdr[0];
        off += len;
        if off > MAX_L4_OFFSET {
            return Err(Unclassified);
        }
    }
    if is_ext(next) {
        return Err(Unclassified);
    }
    if next == IPPROTO_ICMPV6 && !first_fragment {
        return icmp(true, L4 { family: FAMILY_V6, proto: PROTO_ICMP, l3, l4: off });
    }
    if !is_l4(next) {
        return Err(first_fragment_stop(ctx, first_fragment, l3, off));
    }
    let l4 = L4 { family: FAMILY_V6, proto: next, l3, l4: off };
    if first_fragment {
        return first_v6_fragment(ctx, l4);
    }
    if !header_whole(ctx, &l4) {
        return Err(NotOurs);
    }
    Ok(l4)
}

/// A chain that runs off the frame: Linux drops a whole packet like that,
/// but a first fragment's chain may go on in the next fragment.
#[inline(always)]
fn cut_short(first_fragment: bool) -> Stop {
    if first_fragment {
        Unclassified
    } else {
        NotOurs
    }
}

/// RFC 7112: a first fragment is judged only when the whole chain and the L4
/// header lie inside its payload length (Linux trims the frame to it).
#[inline(always)]
fn first_v6_fragment(ctx: &XdpContext, l4: L4) -> Result<L4, Stop> {
    if in_payload(ctx, l4.l3, l4.l4 + l4_hlen(l4.proto)) == Some(true) && header_whole(ctx, &l4) {
        return Ok(l4);
    }
    Err(first_fragment_stop(ctx, true, l4.l3, usize::MAX))
}

/// How a walk that read the chain up to `upto` ends without an L4 header:
/// for a first fragment, `NotOurs` only if all it read lies inside the
/// payload length. Past it, the frame's bytes are padding that Linux trims,
/// and the chain goes on in the next fragment.
#[inline(always)]
fn first_fragment_stop(ctx: &XdpContext, first_fragment: bool, l3: usize, upto: usize) -> Stop {
    if !first_fragment {
        return NotOurs;
    }
    match in_payload(ctx, l3, upto) {
        Some(true) => NotOurs,
        // Linux drops a packet longer than its frame.
        _ if payload_end(ctx, l3).is_none_or(|end| end > ctx.data_end() - ctx.data()) => NotOurs,
        _ => Unclassified,
    }
}

/// An ICMP message is an echo knock candidate only unfragmented. Its
/// header is bounds-checked where it is read (`icmp::echo_len`): a second
/// check here would be merged with that one into a form the verifier
/// cannot follow.
#[inline(always)]
fn icmp(whole: bool, l4: L4) -> Result<L4, Stop> {
    if whole {
        Ok(l4)
    } else {
        Err(NotOurs)
    }
}

/// The end of the IPv6 payload, as a frame offset.
#[inline(always)]
pub fn payload_end(ctx: &XdpContext, l3: usize) -> Option<usize> {
    Some(l3 + IPV6_HLEN + read_be16(ctx, l3 + 4)? as usize)
}

#[inline(always)]
fn in_payload(ctx: &XdpContext, l3: usize, upto: usize) -> Option<bool> {
    Some(upto <= payload_end(ctx, l3)?)
}

#[inline(always)]
fn is_l4(proto: u8) -> bool {
    proto == PROTO_TCP || proto == PROTO_UDP
}
