//! Deterministic frames for the differential fuzzer: valid SYN and UDP
//! frames (mostly to gated ports), fragments, IPv6 chains, VLAN stacks and
//! the known evasion cases, then a few mutations of lengths, IHL, fragment
//! fields, next-header codes, VLAN tags and truncation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::frames::{
    self,
    evasion::{cases, test_run_only, Endpoints},
    Eth, Ext, V4Header, L4, SYN, TCP, UDP,
};

/// The (proto, port) pairs the fuzzer gates.
pub const GATED: &[(u8, u16)] = &[(TCP, 2222), (UDP, 5353), (TCP, 22)];
const PORTS: &[u16] = &[2222, 5353, 22, 2222, 5353, 2223, 7000, 80, 0];
const SRC4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const DST4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 2);
const DST6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 1);

/// splitmix64: small, fast, and the same sequence everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// One generated frame and how it was made.
pub struct Sample {
    pub frame: Vec<u8>,
    pub origin: &'static str,
    pub mutations: Vec<&'static str>,
}

pub fn sample(rng: &mut Rng) -> Sample {
    let (mut frame, origin) = match rng.below(10) {
        0..=1 => (v4_plain(rng), "v4"),
        2..=3 => (v4_fragment(rng), "v4 fragment"),
        4..=5 => (v6_plain(rng), "v6"),
        6..=7 => (v6_fragment(rng), "v6 fragment"),
        _ => (evasion(rng), "evasion case"),
    };
    let count = rng.pick(&[0, 1, 1, 1, 2, 2, 3, 4]);
    let mutations = (0..count).map(|_| mutate(rng, &mut frame)).collect();
    Sample { frame, origin, mutations }
}

fn l4(rng: &mut Rng) -> L4 {
    let port = if rng.chance(90) { rng.pick(PORTS) } else { rng.next_u64() as u16 };
    let mut l4 = if rng.chance(70) { L4::tcp(port, SYN) } else { L4::udp(port) };
    if l4.proto == TCP && rng.chance(20) {
        l4.flags = rng.byte();
    }
    l4.sport = rng.next_u64() as u16;
    l4
}

fn vlans(rng: &mut Rng) -> Vec<u16> {
    let n = rng.pick(&[0, 0, 0, 0, 1, 2, 3, 4]);
    (0..n).map(|_| rng.below(4095) as u16 + 1).collect()
}

fn v4_plain(rng: &mut Rng) -> Vec<u8> {
    let frag = rng.pick(&[0, 0, 0, 0x4000, frames::IP_MF, 1, 2, 3, frames::IP_MF | 1]);
    frames::ipv4(SRC4, DST4, &l4(rng), &vlans(rng), rng.pick(&[0, 0, 0, 1, 10]), frag)
}

/// One fragment of a datagram cut at multiples of 8.
fn v4_fragment(rng: &mut Rng) -> Vec<u8> {
    let l4 = l4(rng);
    let seg = l4.segment(SRC4.into(), DST4.into());
    let hdr = V4Header { options: rng.pick(&[0, 0, 2]), ..V4Header::new(SRC4, DST4, l4.proto) };
    let vl = vlans(rng);
    let eth = Eth::tagged(&vl);
    let mut pieces = frames::ipv4_fragments(&eth, &hdr, &seg, &cut(rng, seg.len()));
    let i = rng.below(pieces.len());
    pieces.swap_remove(i)
}

/// A cut point (a multiple of 8) inside `len` bytes, if there is one.
fn cut(rng: &mut Rng, len: usize) -> Vec<usize> {
    match (len - 1) / 8 {
        0 => vec![],
        n => vec![8 * (1 + rng.below(n))],
    }
}

fn ext(rng: &mut Rng, fragments: bool) -> Ext {
    match rng.below(if fragments { 6 } else { 5 }) {
        0 => Ext::HopByHop,
        1 => Ext::Routing,
        2 => Ext::DestOpts,
        3 => Ext::DestOptsLen(8 * (1 + rng.below(64))),
        4 => Ext::DestOptsLen(8),
        _ => Ext::Fragment(rng.pick(&[0, 0, 1, 2, 100])),
    }
}

fn chain(rng: &mut Rng, fragments: bool) -> Vec<Ext> {
    let n = rng.pick(&[0, 1, 1, 2, 3, 5, 6, 7, 8]);
    (0..n).map(|_| ext(rng, fragments)).collect()
}

fn v6_plain(rng: &mut Rng) -> Vec<u8> {
    let l4 = l4(rng);
    let exts = chain(rng, true);
    let vl = vlans(rng);
    frames::ipv6_eth(&Eth::tagged(&vl), SRC6, DST6, &l4, &exts)
}

/// One fragment of a packet whose fragmentable part is a chain and the L4 header.
fn v6_fragment(rng: &mut Rng) -> Vec<u8> {
    let l4 = l4(rng);
    let unfrag = chain(rng, false);
    let (next, mut rest) = frames::ext_chain(&chain(rng, false), l4.proto);
    rest.extend(l4.segment(SRC6.into(), DST6.into()));
    let vl = vlans(rng);
    let mut pieces =
        frames::ipv6_fragments(&Eth::tagged(&vl), (SRC6, DST6), &unfrag, next, &rest, &cut(rng, rest.len()));
    let i = rng.below(pieces.len());
    pieces.swap_remove(i)
}

fn evasion(rng: &mut Rng) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) =
        if rng.chance(50) { (SRC4.into(), DST4.into()) } else { (SRC6.into(), DST6.into()) };
    let e = Endpoints {
        src_mac: [2; 6],
        dst_mac: [4; 6],
        src,
        dst,
        sport: rng.next_u64() as u16,
        dport: rng.pick(PORTS),
    };
    let all: Vec<Vec<u8>> = cases(&e).into_iter().chain(test_run_only(&e)).flat_map(|c| c.frames).collect();
    all[rng.below(all.len())].clone()
}

/// How many VLAN tags the frame carries.
pub fn vlan_tags(frame: &[u8]) -> usize {
    (l3(frame) - 14) / 4
}

/// Where the IP header starts, past any VLAN tags.
fn l3(frame: &[u8]) -> usize {
    let mut off = 12;
    while off + 2 <= frame.len()
        && matches!(u16::from_be_bytes([frame[off], frame[off + 1]]), 0x8100 | 0x88a8)
    {
        off += 4;
    }
    off + 2
}

fn set(frame: &mut [u8], at: usize, value: u8) {
    if let Some(b) = frame.get_mut(at) {
        *b = value;
    }
}

fn mutate(rng: &mut Rng, f: &mut Vec<u8>) -> &'static str {
    let ip = l3(f);
    let v4 = f.get(ip).is_some_and(|b| b >> 4 == 4);
    match rng.below(11) {
        0 => {
            let keep = 14 + rng.below(f.len().saturating_sub(14) + 1);
            f.truncate(keep);
            "truncate"
        }
        1 => {
            let at = rng.below(f.len());
            f[at] = rng.byte();
            "random byte"
        }
        2 => {
            let at = ip + rng.below(80);
            set(f, at, rng.byte());
            "header byte"
        }
        3 => {
            let value = f.get(ip).map_or(0, |b| b & 0xf0 | rng.below(16) as u8);
            set(f, ip, value);
            "ihl/version"
        }
        4 => {
            let at = if v4 { ip + 2 } else { ip + 4 };
            let old = f.get(at..at + 2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
            let new = if rng.chance(70) {
                old.wrapping_add(rng.below(33) as u16).wrapping_sub(16)
            } else {
                rng.next_u64() as u16
            };
            for (i, b) in new.to_be_bytes().into_iter().enumerate() {
                set(f, at + i, b);
            }
            "ip length"
        }
        5 if v4 => {
            let frag: u16 =
                rng.pick(&[0, 1, 2, 3, frames::IP_MF, frames::IP_MF | 1, frames::IP_MF | 2, 0x4000]);
            set(f, ip + 6, (frag >> 8) as u8);
            set(f, ip + 7, frag as u8);
            "v4 frag field"
        }
        5 => {
            // The fragment field of a first extension header that is one.
            let value = rng.pick(&[0u16, 1, 8, 9, 16, 17]);
            set(f, ip + 42, (value >> 8) as u8);
            set(f, ip + 43, value as u8);
            "v6 frag field"
        }
        6 => {
            let code =
                if rng.chance(80) { rng.pick(&[0, 43, 44, 60, 6, 17, 51, 59, 4, 41]) } else { rng.byte() };
            let at = if v4 {
                ip + 9
            } else if rng.chance(50) {
                ip + 6
            } else {
                ip + 40
            };
            set(f, at, code);
            "next header"
        }
        7 => {
            let tpid: u16 = rng.pick(&[0x8100, 0x88a8]);
            let tag = [(tpid >> 8) as u8, tpid as u8, 0, rng.byte()];
            f.splice(12..12, tag);
            "vlan push"
        }
        8 if ip > 14 && f.len() >= 16 => {
            f.drain(12..16);
            "vlan pop"
        }
        9 => {
            let n = 1 + rng.below(64);
            f.extend((0..n).map(|_| rng.byte()));
            "append"
        }
        _ => {
            let at = f.len().saturating_sub(1 + rng.below(24));
            set(f, at, rng.byte());
            "tail byte"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_frames() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..500 {
            let (x, y) = (sample(&mut a), sample(&mut b));
            assert_eq!(x.frame, y.frame);
            assert!(x.frame.len() >= 14, "{} {:?}", x.origin, x.mutations);
        }
    }
}
