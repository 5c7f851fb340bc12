//! Hand-built Ethernet frames, for BPF_PROG_TEST_RUN and for real links.
//! Every frame carries a correct IPv4 header checksum and a correct TCP/UDP
//! checksum (over the whole L4 segment, also when it is later cut into
//! fragments), so Linux accepts it on a veth; MACs, source port and sequence
//! number can be chosen. The XDP program itself never reads checksums.

pub mod evasion;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
/// IPv4 flags+offset field: more fragments.
pub const IP_MF: u16 = 0x2000;
const NEXTHDR_FRAGMENT: u8 = 44;

#[derive(Clone, Debug)]
pub struct L4 {
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    /// TCP sequence number (ignored for UDP).
    pub seq: u32,
}

impl L4 {
    pub fn tcp(dport: u16, flags: u8) -> Self {
        Self { proto: TCP, sport: 40000, dport, flags, seq: 1 }
    }
    pub fn udp(dport: u16) -> Self {
        Self { proto: UDP, sport: 40000, dport, flags: 0, seq: 0 }
    }

    /// The bare L4 header with a zero checksum, as a raw socket sends it.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(self.sport.to_be_bytes());
        b.extend(self.dport.to_be_bytes());
        if self.proto == TCP {
            b.extend(self.seq.to_be_bytes());
            b.extend([0, 0, 0, 0]); // ack
            b.push(5 << 4); // data offset
            b.push(self.flags);
            b.extend([0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
        } else {
            b.extend(8u16.to_be_bytes());
            b.extend([0, 0]);
        }
        b
    }

    /// The L4 header with its checksum over the pseudo-header of `src` and
    /// `dst` (both of one family).
    pub fn segment(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let mut b = self.bytes();
        let at = if self.proto == TCP { 16 } else { 6 };
        let mut sum = checksum(&[&pseudo_header(src, dst, self.proto, b.len()), &b]);
        // A computed zero is sent as all ones in UDP (zero means "none").
        if sum == 0 && self.proto == UDP {
            sum = 0xffff;
        }
        b[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        b
    }
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for &byte in parts.iter().flat_map(|p| p.iter()) {
        match odd.take() {
            Some(hi) => sum += u32::from(u16::from_be_bytes([hi, byte])),
            None => odd = Some(byte),
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(hi) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The TCP/UDP pseudo-header for an upper-layer packet of `len` bytes.
pub fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = [s.octets(), d.octets()].concat();
            p.extend([0, proto]);
            p.extend((len as u16).to_be_bytes());
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = [s.octets(), d.octets()].concat();
            p.extend((len as u32).to_be_bytes());
            p.extend([0, 0, 0, proto]);
            p
        }
        _ => panic!("{src} and {dst} are of different families"),
    }
}

/// The link layer of a frame: MACs and VLAN tags (outermost first).
#[derive(Clone, Copy, Debug)]
pub struct Eth<'a> {
    pub src: [u8; 6],
    pub dst: [u8; 6],
    pub vlans: &'a [u16],
}

impl Eth<'_> {
    /// Fixed MACs, enough for BPF_PROG_TEST_RUN.
    pub const TEST: Eth<'static> = Eth { src: [0x02, 0, 0, 0, 0, 2], dst: [0x02, 0, 0, 0, 0, 1], vlans: &[] };

    pub fn tagged(vlans: &[u16]) -> Eth<'_> {
        Eth { vlans, ..Eth::TEST }
    }

    /// The Ethernet header, VLAN tags included, for a frame of `ethertype`.
    pub fn header(&self, ethertype: u16) -> Vec<u8> {
        let mut b = [self.dst, self.src].concat();
        for (i, &vid) in self.vlans.iter().enumerate() {
            // The outer tag of a multi-tagged frame is 802.1ad.
            let tpid: u16 = if i == 0 && self.vlans.len() > 1 { 0x88a8 } else { 0x8100 };
            b.extend(tpid.to_be_bytes());
            b.extend(vid.to_be_bytes());
        }
        b.extend(ethertype.to_be_bytes());
        b
    }
}

/// An IPv4 header. `total_len` of `None` means "header plus payload".
#[derive(Clone, Debug)]
pub struct V4Header {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub id: u16,
    /// The raw flags+offset field (offset in 8-byte units).
    pub frag: u16,
    /// NOP-filled option words (IHL = 5 + options).
    pub options: usize,
    pub total_len: Option<u16>,
}

impl V4Header {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self { src, dst, proto, id: 1, frag: 0, options: 0, total_len: None }
    }

    /// The header, checksummed, followed by `payload`.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let ihl = 5 + self.options;
        let total = self.total_len.unwrap_or((ihl * 4 + payload.len()) as u16);
        let mut b = vec![0x40 | ihl as u8, 0];
        b.extend(total.to_be_bytes());
        b.extend(self.id.to_be_bytes());
        b.extend(self.frag.to_be_bytes());
        b.extend([64, self.proto, 0, 0]);
        b.extend(self.src.octets());
        b.extend(self.dst.octets());
        b.extend(std::iter::repeat_n(1u8, self.options * 4));
        let sum = checksum(&[&b]);
        b[10..12].copy_from_slice(&sum.to_be_bytes());
        b.extend(payload);
        b
    }
}

/// IPv4 frame. `options` adds IHL words; `frag` is the raw flags+offset field.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, l4: &L4, vlans: &[u16], options: usize, frag: u16) -> Vec<u8> {
    let hdr = V4Header { frag, options, ..V4Header::new(src, dst, l4.proto) };
    let segment = l4.segment(src.into(), dst.into());
    [Eth::tagged(vlans).header(ETH_P_IP), hdr.packet(&segment)].concat()
}

/// An IPv4 datagram carrying `payload` cut into fragments at the given byte
/// offsets of the payload (each a multiple of 8), one frame per fragment.
pub fn ipv4_fragments(eth: &Eth, hdr: &V4Header, payload: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    pieces(payload.len(), cuts)
        .map(|(start, end)| {
            assert_eq!(start % 8, 0, "fragment offsets are in 8-byte units");
            let mf = if end < payload.len() { IP_MF } else { 0 };
            let frag = V4Header { frag: mf | (start / 8) as u16, ..hdr.clone() };
            [eth.header(ETH_P_IP), frag.packet(&payload[start..end])].concat()
        })
        .collect()
}

/// `[0, cuts.., len]` as consecutive (start, end) pairs.
fn pieces(len: usize, cuts: &[usize]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let bounds: Vec<usize> = std::iter::once(0).chain(cuts.iter().copied()).chain([len]).collect();
    (0..bounds.len() - 1).map(move |i| (bounds[i], bounds[i + 1]))
}

/// An IPv6 extension header in a chain.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// 16 bytes: one option Linux skips (type 0x1e, "ignore if unknown").
    HopByHop,
    /// 16 bytes, type 1 with segments left 0, which Linux steps over.
    Routing,
    /// 16 bytes, like `HopByHop`.
    DestOpts,
    /// Destination options of this many bytes (a multiple of 8, at least 8).
    DestOptsLen(usize),
    /// Fragment header with this offset (in 8-byte units), more-fragments clear.
    Fragment(u16),
}

impl Ext {
    pub fn code(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::Fragment(_) => NEXTHDR_FRAGMENT,
            Ext::DestOpts | Ext::DestOptsLen(_) => 60,
        }
    }

    /// The header's bytes, pointing at `next`.
    pub fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Ext::Fragment(off) => fragment_header(next, off, false, 1),
            Ext::Routing => {
                let mut b = vec![next, 1, 1, 0];
                b.extend([0; 12]);
                b
            }
            Ext::HopByHop | Ext::DestOpts => options_header(next, 16),
            Ext::DestOptsLen(len) => options_header(next, len),
        }
    }
}

/// A hop-by-hop or destination options header of `len` bytes whose options
/// Linux accepts: PadN only up to its 7-byte limit, else skippable unknown
/// options of at most 257 bytes, at most 8 of them (the default limits).
fn options_header(next: u8, len: usize) -> Vec<u8> {
    assert!(len >= 8 && len.is_multiple_of(8) && len <= 2048, "options header of {len} bytes");
    let mut b = vec![next, (len / 8 - 1) as u8];
    let mut left = len - 2;
    if left <= 7 {
        // PadN of `left` bytes: type, length, zeros.
        b.extend([1, (left - 2) as u8]);
        b.extend(std::iter::repeat_n(0, left - 2));
        return b;
    }
    while left > 0 {
        let data = (left - 2).min(255);
        b.extend([0x1e, data as u8]);
        b.extend(std::iter::repeat_n(0, data));
        left -= data + 2;
        // A 1-byte remainder cannot hold an option header: pad it with Pad1.
        if left == 1 {
            b.push(0);
            left = 0;
        }
    }
    b
}

/// An IPv6 fragment header (offset in 8-byte units).
pub fn fragment_header(next: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut b = vec![next, 0];
    b.extend(((offset << 3) | u16::from(more)).to_be_bytes());
    b.extend(id.to_be_bytes());
    b
}

/// Encodes `exts` as a chain ending in `last`; returns (first code, bytes).
pub fn ext_chain(exts: &[Ext], last: u8) -> (u8, Vec<u8>) {
    let mut chain = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(last, |e| e.code());
        chain.extend(ext.bytes(next));
    }
    (exts.first().map_or(last, |e| e.code()), chain)
}

/// The IPv6 header followed by `payload` (whose first header is `next`).
pub fn ipv6_packet(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0x60, 0, 0, 0];
    b.extend((payload.len() as u16).to_be_bytes());
    b.extend([next, 64]);
    b.extend(src.octets());
    b.extend(dst.octets());
    b.extend(payload);
    b
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, l4: &L4, vlans: &[u16], exts: &[Ext]) -> Vec<u8> {
    ipv6_eth(&Eth::tagged(vlans), src, dst, l4, exts)
}

/// An IPv6 frame with the given link layer and extension chain.
pub fn ipv6_eth(eth: &Eth, src: Ipv6Addr, dst: Ipv6Addr, l4: &L4, exts: &[Ext]) -> Vec<u8> {
    let (first, mut payload) = ext_chain(exts, l4.proto);
    payload.extend(l4.segment(src.into(), dst.into()));
    [eth.header(ETH_P_IPV6), ipv6_packet(src, dst, first, &payload)].concat()
}

/// An IPv6 packet cut into fragments: `unfragmentable` headers go in every
/// fragment, then a fragment header, then the slice of `fragmentable` (the
/// rest of the chain and the L4 segment, whose first header is `next`) cut at
/// the given byte offsets (multiples of 8).
pub fn ipv6_fragments(
    eth: &Eth,
    (src, dst): (Ipv6Addr, Ipv6Addr),
    unfragmentable: &[Ext],
    next: u8,
    fragmentable: &[u8],
    cuts: &[usize],
) -> Vec<Vec<u8>> {
    let (first, unfrag) = ext_chain(unfragmentable, NEXTHDR_FRAGMENT);
    pieces(fragmentable.len(), cuts)
        .map(|(start, end)| {
            assert_eq!(start % 8, 0, "fragment offsets are in 8-byte units");
            let mut payload = unfrag.clone();
            payload.extend(fragment_header(next, (start / 8) as u16, end < fragmentable.len(), 0x4b1d));
            payload.extend(&fragmentable[start..end]);
            [eth.header(ETH_P_IPV6), ipv6_packet(src, dst, first, &payload)].concat()
        })
        .collect()
}

/// An ARP frame: not IP at all.
pub fn arp() -> Vec<u8> {
    let mut b = Eth::TEST.header(ETH_P_ARP);
    b.extend([0u8; 28]);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let (s, d) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let f = ipv4(s, d, &L4::tcp(22, SYN), &[], 2, 0);
        let ip = &f[ETH_HLEN..];
        assert_eq!(checksum(&[&ip[..28]]), 0, "IPv4 header");
        let seg = &ip[28..];
        assert_eq!(checksum(&[&pseudo_header(s.into(), d.into(), TCP, seg.len()), seg]), 0);
        let (s6, d6) = (Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);
        let f6 = ipv6(s6, d6, &L4::udp(53), &[], &[Ext::DestOpts]);
        let seg6 = &f6[ETH_HLEN + 40 + 16..];
        assert_eq!(checksum(&[&pseudo_header(s6.into(), d6.into(), UDP, 8), seg6]), 0);
    }

    #[test]
    fn options_headers_have_their_length() {
        for len in [8, 16, 24, 72, 264, 464, 2048] {
            let h = options_header(TCP, len);
            assert_eq!(h.len(), len, "{len}");
            assert_eq!((usize::from(h[1]) + 1) * 8, len);
        }
    }

    #[test]
    fn fragments_cover_the_payload_once() {
        let hdr = V4Header::new(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, TCP);
        let frames = ipv4_fragments(&Eth::TEST, &hdr, &[7; 20], &[8]);
        assert_eq!(frames.len(), 2);
        assert_eq!(u16::from_be_bytes([frames[0][20], frames[0][21]]), IP_MF);
        assert_eq!(u16::from_be_bytes([frames[1][20], frames[1][21]]), 1);
        assert_eq!((frames[0].len(), frames[1].len()), (14 + 20 + 8, 14 + 20 + 12));
    }
}
