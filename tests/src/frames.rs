//! Hand-built Ethernet frames for BPF_PROG_TEST_RUN. Checksums are left zero:
//! the XDP program never reads them.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

#[derive(Clone, Debug)]
pub struct L4 {
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
}

impl L4 {
    pub fn tcp(dport: u16, flags: u8) -> Self {
        Self { proto: TCP, sport: 40000, dport, flags }
    }
    pub fn udp(dport: u16) -> Self {
        Self { proto: UDP, sport: 40000, dport, flags: 0 }
    }

    /// The bare L4 header, as a raw socket sends it.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(self.sport.to_be_bytes());
        b.extend(self.dport.to_be_bytes());
        if self.proto == TCP {
            b.extend([0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
            b.push(5 << 4); // data offset
            b.push(self.flags);
            b.extend([0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
        } else {
            b.extend(8u16.to_be_bytes());
            b.extend([0, 0]);
        }
        b
    }
}

fn ethernet(vlans: &[u16], ethertype: u16) -> Vec<u8> {
    let mut b = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, &vid) in vlans.iter().enumerate() {
        // The outer tag of a double-tagged frame is 802.1ad.
        let tpid: u16 = if i == 0 && vlans.len() == 2 { 0x88a8 } else { 0x8100 };
        b.extend(tpid.to_be_bytes());
        b.extend(vid.to_be_bytes());
    }
    b.extend(ethertype.to_be_bytes());
    b
}

/// IPv4 frame. `options` adds IHL words; `frag` is the raw flags+offset field.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, l4: &L4, vlans: &[u16], options: usize, frag: u16) -> Vec<u8> {
    let payload = l4.bytes();
    let ihl = 5 + options;
    let mut b = ethernet(vlans, 0x0800);
    b.push(0x40 | ihl as u8);
    b.push(0);
    b.extend(((ihl * 4 + payload.len()) as u16).to_be_bytes());
    b.extend([0, 1]);
    b.extend(frag.to_be_bytes());
    b.extend([64, l4.proto, 0, 0]);
    b.extend(src.octets());
    b.extend(dst.octets());
    b.extend(std::iter::repeat_n(1u8, options * 4)); // NOP options
    b.extend(payload);
    b
}

/// An IPv6 extension header in a chain.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    /// Fragment header with this offset (in 8-byte units).
    Fragment(u16),
}

impl Ext {
    fn code(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::Fragment(_) => 44,
            Ext::DestOpts => 60,
        }
    }
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, l4: &L4, vlans: &[u16], exts: &[Ext]) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(l4.proto, |e| e.code());
        match ext {
            Ext::Fragment(off) => {
                chain.extend([next, 0]);
                chain.extend((off << 3).to_be_bytes());
                chain.extend([0, 0, 0, 1]);
            }
            // Length 1 = 16 bytes, so the walker's length arithmetic is exercised.
            _ => {
                chain.extend([next, 1]);
                chain.extend([1, 12]);
                chain.extend([0; 12]);
            }
        }
    }
    let payload = l4.bytes();
    let mut b = ethernet(vlans, 0x86dd);
    b.extend([0x60, 0, 0, 0]);
    b.extend(((chain.len() + payload.len()) as u16).to_be_bytes());
    b.push(exts.first().map_or(l4.proto, |e| e.code()));
    b.push(64);
    b.extend(src.octets());
    b.extend(dst.octets());
    b.extend(chain);
    b.extend(payload);
    b
}

/// An ARP frame: not IP at all.
pub fn arp() -> Vec<u8> {
    let mut b = ethernet(&[], 0x0806);
    b.extend([0u8; 28]);
    b
}
