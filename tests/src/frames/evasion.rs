//! Frames that smuggle a TCP SYN past a parser that gives up early: each
//! case is one new connection that Linux reassembles or walks and delivers.
//!
//! `cases` holds only what a Linux 6.x host delivers from a plain veth
//! (checked on 6.18 with a real listener). `test_run_only` holds classes the
//! program must fail closed on that a plain veth does not deliver: VLAN stacks
//! deeper than the program walks (delivered only through stacked VLAN
//! devices) and IPv6 first fragments without the whole chain and TCP header
//! (discarded by Linux since 5.10, RFC 7112, but not by older kernels).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{ext_chain, ipv4_fragments, ipv6_eth, ipv6_fragments, Eth, Ext, V4Header, ACK, L4, SYN, TCP};

#[derive(Clone, Debug)]
pub struct Endpoints {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub frames: Vec<Vec<u8>>,
}

/// Every evasion class for this address family: each Case's frames, sent in
/// order to a Linux host, make it deliver ONE TCP SYN from src:sport to
/// dst:dport (so a listener answers SYN-ACK).
pub fn cases(e: &Endpoints) -> Vec<Case> {
    match (e.src, e.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => v4_cases(e, s, d),
        (IpAddr::V6(s), IpAddr::V6(d)) => v6_cases(e, s, d),
        _ => panic!("{} and {} are of different families", e.src, e.dst),
    }
}

impl Endpoints {
    fn eth(&self) -> Eth<'static> {
        Eth { src: self.src_mac, dst: self.dst_mac, vlans: &[] }
    }

    /// The SYN itself, checksummed for these addresses.
    pub fn syn(&self) -> L4 {
        L4 { sport: self.sport, seq: 0x1000_0000 | u32::from(self.sport), ..L4::tcp(self.dport, SYN) }
    }

    fn segment(&self) -> Vec<u8> {
        self.syn().segment(self.src, self.dst)
    }
}

fn case(name: &'static str, frames: Vec<Vec<u8>>) -> Case {
    Case { name, frames }
}

fn v4_cases(e: &Endpoints, s: Ipv4Addr, d: Ipv4Addr) -> Vec<Case> {
    let eth = e.eth();
    let seg = e.segment();
    // Each case its own datagram id, so no two reassemblies share a queue.
    let hdr = |id: u16| V4Header { id: id ^ e.sport, ..V4Header::new(s, d, TCP) };
    let opts = V4Header { options: 10, ..hdr(5) };
    let tiny = ipv4_fragments(&eth, &hdr(1), &seg, &[8]);
    vec![
        case("v4_tiny_first_fragment", tiny.clone()),
        case("v4_tiny_fragments_reversed", tiny.into_iter().rev().collect()),
        case("v4_sixteen_byte_first_fragment", ipv4_fragments(&eth, &hdr(3), &seg, &[16])),
        case("v4_first_fragment_short_total_length", short_total_length(e, &hdr(4), &seg)),
        case("v4_options_tiny_first_fragment", ipv4_fragments(&eth, &opts, &seg, &[8])),
    ]
}

/// The first fragment's frame holds a whole TCP header, but with ACK set and
/// past the IP total length, which says 8 bytes: Linux trims the frame to the
/// total length, so the SYN's flags come from the second fragment.
fn short_total_length(e: &Endpoints, hdr: &V4Header, seg: &[u8]) -> Vec<Vec<u8>> {
    let eth = e.eth();
    let mut frames = ipv4_fragments(&eth, hdr, seg, &[8]);
    let decoy = L4 { flags: ACK, ..e.syn() }.segment(e.src, e.dst);
    let first = V4Header { frag: super::IP_MF, total_len: Some(20 + 8), ..hdr.clone() };
    frames[0] = [eth.header(0x0800), first.packet(&decoy)].concat();
    frames
}

fn v6_cases(e: &Endpoints, s: Ipv6Addr, d: Ipv6Addr) -> Vec<Case> {
    let eth = e.eth();
    let syn = e.syn();
    let seven = [Ext::DestOptsLen(8); 7];
    vec![
        case("v6_seven_dest_opts", vec![ipv6_eth(&eth, s, d, &syn, &seven)]),
        case("v6_dest_opts_beyond_offset_bound", vec![ipv6_eth(&eth, s, d, &syn, &[Ext::DestOptsLen(464)])]),
    ]
}

/// Frames a plain veth does not make Linux deliver, but on which the program
/// must still fail closed: IPv6 first fragments without the whole header
/// chain and TCP header (Linux 6.x discards them, RFC 7112, but a kernel
/// without that check would reassemble them), and a SYN behind three VLAN
/// tags (delivered only through stacked VLAN devices).
pub fn test_run_only(e: &Endpoints) -> Vec<Case> {
    let eth = e.eth();
    match (e.src, e.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let tags = Eth { vlans: &[10, 20, 30], ..eth };
            let hdr = V4Header { id: e.sport, ..V4Header::new(s, d, TCP) };
            vec![case("vlan_three_tags", vec![[tags.header(0x0800), hdr.packet(&e.segment())].concat()])]
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let frag = |exts: &[Ext], cut: usize| {
                let (next, mut rest) = ext_chain(exts, TCP);
                rest.extend(e.segment());
                ipv6_fragments(&eth, (s, d), &[], next, &rest, &[cut])
            };
            vec![
                case("v6_tiny_first_fragment", frag(&[], 8)),
                case("v6_first_fragment_without_l4", frag(&[Ext::DestOptsLen(8)], 8)),
                case("v6_ext_header_split_across_fragments", frag(&[Ext::DestOpts], 8)),
            ]
        }
        _ => panic!("{} and {} are of different families", e.src, e.dst),
    }
}
