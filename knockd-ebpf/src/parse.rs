//! Bounds-checked header walking. Every read goes through `ptr_at`, which the
//! verifier needs to see before any access to packet memory.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use knockd_common::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_HLEN: usize = 4;
const MAX_VLAN_TAGS: usize = 2;

const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Extension headers walked before giving up on a packet. Real stacks send one
/// or two; the bound keeps the verifier's path count small.
const MAX_EXT_HDRS: usize = 6;
/// Packets whose L4 header starts beyond this are not treated as knocks.
/// It also gives the verifier an upper bound on the variable offset.
const MAX_L4_OFFSET: usize = 512;

pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;

/// Where the headers of a candidate knock sit in the frame.
pub struct L4 {
    pub family: u8,
    pub proto: u8,
    pub l3: usize,
    pub l4: usize,
}

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

/// Walks Ethernet, VLAN tags and the IP header(s) down to a TCP or UDP
/// header. `None` means "not a knock candidate", never an error.
#[inline(always)]
pub fn locate_l4(ctx: &XdpContext) -> Option<L4> {
    let (ethertype, l3) = skip_vlans(ctx)?;
    match ethertype {
        ETH_P_IP => ipv4(ctx, l3),
        ETH_P_IPV6 => ipv6(ctx, l3),
        _ => None,
    }
}

#[inline(always)]
fn skip_vlans(ctx: &XdpContext) -> Option<(u16, usize)> {
    let mut ethertype = read_be16(ctx, 12)?;
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = read_be16(ctx, off + 2)?;
        off += VLAN_HLEN;
    }
    Some((ethertype, off))
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Option<L4> {
    let ver_ihl = read_u8(ctx, l3)?;
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    // Later fragments carry no L4 header; the bytes there are payload.
    let frag = read_be16(ctx, l3 + 6)?;
    if frag & 0x1fff != 0 {
        return None;
    }
    let proto = read_u8(ctx, l3 + 9)?;
    l4_proto(proto)?;
    Some(L4 { family: FAMILY_V4, proto, l3, l4: l3 + ihl })
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Option<L4> {
    if read_u8(ctx, l3)? >> 4 != 6 {
        return None;
    }
    let mut next = read_u8(ctx, l3 + 6)?;
    let mut off = l3 + IPV6_HLEN;
    for _ in 0..MAX_EXT_HDRS {
        if !matches!(next, NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_FRAGMENT) {
            break;
        }
        // One bounds check for the 4 bytes all these headers start with, so
        // the compiler cannot split it into checks the verifier cannot follow.
        // SAFETY: ptr_at checked the 4 bytes lie inside the frame.
        let hdr = unsafe { *ptr_at::<[u8; 4]>(ctx, off)? };
        let len = if next == NEXTHDR_FRAGMENT {
            // Only the first fragment (offset 0) carries the L4 header.
            if u16::from_be_bytes([hdr[2], hdr[3]]) & 0xfff8 != 0 {
                return None;
            }
            8
        } else {
            (hdr[1] as usize + 1) * 8
        };
        next = hdr[0];
        off += len;
        if off > MAX_L4_OFFSET {
            return None;
        }
    }
    l4_proto(next)?;
    Some(L4 { family: FAMILY_V6, proto: next, l3, l4: off })
}

#[inline(always)]
fn l4_proto(proto: u8) -> Option<()> {
    (proto == PROTO_TCP || proto == PROTO_UDP).then_some(())
}
