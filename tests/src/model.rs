//! A reference model of what Linux would deliver to a listener, frame by
//! frame, written apart from the XDP parser so the fuzzer can compare them.
//! It follows Linux 6.x receive paths (eth_type_trans, VLAN devices, ip_rcv,
//! ip_defrag, ipv6_rcv, the extension header walk, tcp_v4_rcv/udp_rcv) and
//! errs towards "might deliver" wherever Linux's choice depends on state or
//! configuration (VLAN devices present, checksums, doff, UDP length).
//!
//! Fragments are judged one by one: reassembled data delivers only what its
//! first fragment's header says, because Linux drops overlapping fragments.
//! A first fragment whose L4 header is not whole, and a TCP fragment that
//! starts inside the 20-byte header, may combine into anything: `Unknown`.

const TCP: u8 = 6;
const UDP: u8 = 17;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// What Linux could make of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing that opens a connection: dropped by Linux, not IP, not a new
    /// TCP connection, or a fragment its first fragment decides for.
    Harmless(&'static str),
    /// A new TCP connection (SYN without ACK) or a UDP datagram to this port.
    NewConn { proto: u8, port: u16 },
    /// Could become a new connection to any port (reassembly or a walk we
    /// cannot bound).
    Unknown(&'static str),
}

use Verdict::{Harmless, NewConn, Unknown};

impl Verdict {
    /// A short class name for reports.
    pub fn class(&self) -> &'static str {
        match self {
            Harmless(why) | Unknown(why) => why,
            NewConn { proto: TCP, .. } => "tcp syn",
            NewConn { .. } => "udp datagram",
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

pub fn judge(frame: &[u8]) -> Verdict {
    let Some(mut ethertype) = be16(frame, 12) else { return Harmless("shorter than ethernet") };
    let mut off = 14;
    // Stacked VLAN devices take off any number of tags.
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        let Some(inner) = be16(frame, off + 2) else { return Harmless("cut vlan tag") };
        ethertype = inner;
        off += 4;
    }
    let ip = frame.get(off..).unwrap_or_default();
    match ethertype {
        0x0800 => ipv4(ip),
        0x86dd => ipv6(ip),
        _ => Harmless("not ip"),
    }
}

fn ipv4(ip: &[u8]) -> Verdict {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Harmless("ip_rcv: bad header");
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2).unwrap_or(0));
    if ihl < 20 || total < ihl || total > ip.len() {
        return Harmless("ip_rcv: bad lengths");
    }
    // ip_rcv trims the frame to the total length.
    let ip = &ip[..total];
    let proto = ip[9];
    if proto != TCP && proto != UDP {
        return Harmless("not tcp/udp");
    }
    let frag = be16(ip, 6).unwrap_or(0);
    let offset = usize::from(frag & 0x1fff) * 8;
    if offset > 0 {
        if proto == TCP && offset < 20 {
            return Unknown("v4 fragment inside the tcp header");
        }
        return Harmless("later fragment");
    }
    l4(proto, &ip[ihl..], frag & 0x2000 != 0)
}

fn ipv6(ip: &[u8]) -> Verdict {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return Harmless("ipv6_rcv: bad header");
    }
    let plen = usize::from(be16(ip, 4).unwrap_or(0));
    // A zero length is a jumbogram, which needs more than 64 KiB.
    if plen == 0 || 40 + plen > ip.len() {
        return Harmless("ipv6_rcv: bad length");
    }
    let ip = &ip[..40 + plen];
    let mut next = ip[6];
    let mut off = 40;
    let mut first_fragment = false;
    loop {
        match next {
            TCP | UDP => break,
            0 | 43 | 60 => {
                let (Some(&n), Some(&len)) = (ip.get(off), ip.get(off + 1)) else {
                    return cut_chain(first_fragment);
                };
                next = n;
                off += (usize::from(len) + 1) * 8;
            }
            44 => {
                let Some(field) = be16(ip, off + 2).filter(|_| off + 8 <= ip.len()) else {
                    return cut_chain(first_fragment);
                };
                if field & 0xfff8 != 0 {
                    return Harmless("later fragment");
                }
                first_fragment |= field & 1 != 0;
                next = ip[off];
                off += 8;
            }
            _ => return Harmless("not tcp/udp"),
        }
    }
    l4(next, ip.get(off..).unwrap_or_default(), first_fragment)
}

fn cut_chain(first_fragment: bool) -> Verdict {
    if first_fragment {
        Unknown("v6 first fragment without the whole chain")
    } else {
        Harmless("cut extension header")
    }
}

/// The L4 header at the start of `seg` (the packet trimmed to its length).
fn l4(proto: u8, seg: &[u8], first_fragment: bool) -> Verdict {
    let hlen = if proto == TCP { 20 } else { 8 };
    if seg.len() < hlen {
        if first_fragment {
            return Unknown("first fragment without the whole l4 header");
        }
        return Harmless("cut l4 header");
    }
    let port = u16::from_be_bytes([seg[2], seg[3]]);
    if proto == UDP {
        return NewConn { proto, port };
    }
    let flags = seg[13];
    if flags & SYN != 0 && flags & ACK == 0 {
        NewConn { proto, port }
    } else {
        Harmless("not a new tcp connection")
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::frames::{
        self,
        evasion::{cases, test_run_only, Endpoints},
        Ext, L4,
    };

    const S4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const D4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn endpoints(src: IpAddr, dst: IpAddr) -> Endpoints {
        Endpoints { src_mac: [2; 6], dst_mac: [4; 6], src, dst, sport: 1234, dport: 2222 }
    }

    #[test]
    fn plain_frames() {
        let syn = frames::ipv4(S4, D4, &L4::tcp(22, SYN), &[7], 3, 0);
        assert_eq!(judge(&syn), NewConn { proto: TCP, port: 22 });
        assert_eq!(
            judge(&frames::ipv4(S4, D4, &L4::tcp(22, SYN | ACK), &[], 0, 0)).class(),
            "not a new tcp connection"
        );
        let udp = frames::ipv6(
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::LOCALHOST,
            &L4::udp(53),
            &[1, 2, 3],
            &[Ext::HopByHop; 9],
        );
        assert_eq!(judge(&udp), NewConn { proto: UDP, port: 53 });
        assert_eq!(judge(&frames::arp()), Harmless("not ip"));
    }

    #[test]
    fn every_evasion_case_has_an_unknown_or_a_syn() {
        let v4 = endpoints(S4.into(), D4.into());
        let v6 = endpoints(Ipv6Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into());
        for e in [v4, v6] {
            for case in cases(&e).into_iter().chain(test_run_only(&e)) {
                let verdicts: Vec<Verdict> = case.frames.iter().map(|f| judge(f)).collect();
                let risky = verdicts.iter().any(|v| matches!(v, Unknown(_) | NewConn { port: 2222, .. }));
                assert!(risky, "{}: {verdicts:?}", case.name);
            }
        }
    }

    #[test]
    fn linux_validity_checks() {
        let syn = frames::ipv4(S4, D4, &L4::tcp(22, SYN), &[], 0, 0);
        let mut bad_ihl = syn.clone();
        bad_ihl[14] = 0x44;
        assert_eq!(judge(&bad_ihl).class(), "ip_rcv: bad lengths");
        assert_eq!(judge(&syn[..syn.len() - 1]).class(), "ip_rcv: bad lengths");
        let mut short_total = syn.clone();
        short_total[17] -= 1;
        assert_eq!(judge(&short_total).class(), "cut l4 header");
        short_total[20] = 0x20; // now a first fragment
        assert_eq!(judge(&short_total).class(), "first fragment without the whole l4 header");
    }
}
