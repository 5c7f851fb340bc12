//! ICMP echo knocks through BPF_PROG_TEST_RUN: an echo request (ICMPv6
//! for v6) of a knock length is a knock; other lengths, other ICMP types
//! and fragments are not; a stealthy length is recorded and dropped.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    maps::{MapData, RingBuf},
    programs::{TestRun, TestRunOptions},
};
use knockd_common::{PortKey, PortRule, ADDR_LOCAL, PORT_STEALTH, PROTO_ICMP};
use xknock::{
    bpf::XdpKnocker,
    config::model::{Proto, Step},
    events::{decode, KnockRecord},
};
use xknock_tests::{
    frames::{checksum, ipv6_packet, pseudo_header, Eth, V4Header, IP_MF},
    privileged,
};

const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;
const LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const REMOTE4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 1);
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 2);
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

struct Rig {
    knocker: XdpKnocker,
    ring: RingBuf<MapData>,
}

impl Rig {
    /// Knock lengths: 64 (visible), 100 (stealthy), and TCP port 64, which
    /// must stay apart from ICMP length 64.
    fn new() -> Self {
        let mut knocker = XdpKnocker::load(None).expect("load XDP object");
        let ports = BTreeMap::from([
            (PortKey::new(64, PROTO_ICMP), PortRule::default()),
            (PortKey::new(100, PROTO_ICMP), PortRule { flags: PORT_STEALTH, ..PortRule::default() }),
        ]);
        knocker.set_knock_ports(&ports).unwrap();
        let addrs = HashMap::from([(IpAddr::V4(LOCAL4), ADDR_LOCAL), (IpAddr::V6(LOCAL6), ADDR_LOCAL)]);
        knocker.set_addrs(&addrs).unwrap();
        let ring = knocker.take_events().unwrap();
        Self { knocker, ring }
    }

    fn run(&mut self, frame: &[u8]) -> (u32, Vec<KnockRecord>) {
        let opts = TestRunOptions { data_in: Some(frame), ..Default::default() };
        let res = self.knocker.program().unwrap().test_run(opts).expect("BPF_PROG_TEST_RUN");
        let mut evs = Vec::new();
        while let Some(item) = self.ring.next() {
            evs.push(decode(&item).expect("decodable event"));
        }
        (res.return_value, evs)
    }
}

fn echo(kind: u8, len: usize) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0, 0x12, 0x34, 0, 1];
    m.extend((0..len).map(|i| i as u8));
    m
}

fn v4_echo(kind: u8, len: usize, frag: u16) -> Vec<u8> {
    let mut m = echo(kind, len);
    let sum = checksum(&[&m]);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    let hdr = V4Header { frag, ..V4Header::new(REMOTE4, LOCAL4, ICMP) };
    [Eth::TEST.header(ETH_P_IP), hdr.packet(&m)].concat()
}

fn v6_echo(kind: u8, len: usize) -> Vec<u8> {
    let mut m = echo(kind, len);
    let sum = checksum(&[&pseudo_header(REMOTE6.into(), LOCAL6.into(), ICMPV6, m.len()), &m]);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    [Eth::TEST.header(ETH_P_IPV6), ipv6_packet(REMOTE6, LOCAL6, ICMPV6, &m)].concat()
}

fn icmp_step(len: u16) -> Step {
    Step { port: len, proto: Proto::Icmp }
}

#[test]
fn echo_requests_of_a_knock_length_are_knocks_on_both_families() {
    if !privileged("xdp_icmp_echo") {
        return;
    }
    let mut rig = Rig::new();
    let (verdict, evs) = rig.run(&v4_echo(8, 64, 0));
    assert_eq!(verdict, XDP_PASS, "a visible door lets the echo through, so ping gets its reply");
    assert_eq!(evs.len(), 1);
    assert_eq!((evs[0].src, evs[0].step), (IpAddr::V4(REMOTE4), icmp_step(64)));
    let (verdict, evs) = rig.run(&v6_echo(128, 64));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(evs.len(), 1);
    assert_eq!((evs[0].src, evs[0].step), (IpAddr::V6(REMOTE6), icmp_step(64)));
}

#[test]
fn padding_does_not_change_the_length() {
    if !privileged("xdp_icmp_padding") {
        return;
    }
    let mut rig = Rig::new();
    // Ethernet pads short frames; the length comes from the IP header.
    let mut frame = v4_echo(8, 64, 0);
    frame.extend([0u8; 30]);
    assert_eq!(rig.run(&frame).1.len(), 1);
    let mut frame = v6_echo(128, 64);
    frame.extend([0u8; 30]);
    assert_eq!(rig.run(&frame).1.len(), 1);
}

#[test]
fn other_lengths_types_and_fragments_are_not_knocks() {
    if !privileged("xdp_icmp_not_knocks") {
        return;
    }
    let mut rig = Rig::new();
    for (what, frame) in [
        ("v4 length 63", v4_echo(8, 63, 0)),
        ("v4 length 65", v4_echo(8, 65, 0)),
        ("v4 echo reply", v4_echo(0, 64, 0)),
        ("v4 first fragment", v4_echo(8, 64, IP_MF)),
        ("v4 later fragment", v4_echo(8, 64, 3)),
        ("v6 length 63", v6_echo(128, 63)),
        ("v6 echo reply", v6_echo(129, 64)),
        ("v6 with the v4 type", v6_echo(8, 64)),
    ] {
        let (verdict, evs) = rig.run(&frame);
        assert_eq!(verdict, XDP_PASS, "{what}");
        assert!(evs.is_empty(), "{what}: {evs:?}");
    }
    // A length the IP header claims but the frame does not hold: Linux
    // drops it, so it is no knock.
    let mut short = v4_echo(8, 64, 0);
    let total = u16::from_be_bytes([short[16], short[17]]) + 8;
    short[16..18].copy_from_slice(&total.to_be_bytes());
    assert!(rig.run(&short).1.is_empty(), "total length past the frame");
}

#[test]
fn stealthy_length_is_recorded_and_dropped() {
    if !privileged("xdp_icmp_stealth") {
        return;
    }
    let mut rig = Rig::new();
    for frame in [v4_echo(8, 100, 0), v6_echo(128, 100)] {
        let (verdict, evs) = rig.run(&frame);
        assert_eq!(verdict, XDP_DROP, "no echo reply may go out");
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].step, icmp_step(100));
    }
    assert_eq!(rig.knocker.counters().unwrap().stealth_drop, 2);
}

#[test]
fn icmp_slots_do_not_alias_tcp_or_udp_ports() {
    if !privileged("xdp_icmp_slots") {
        return;
    }
    let mut rig = Rig::new();
    // TCP and UDP port 64 are not knock ports although ICMP length 64 is.
    let tcp =
        xknock_tests::frames::ipv4(REMOTE4, LOCAL4, &xknock_tests::frames::L4::tcp(64, 0x02), &[], 0, 0);
    let udp = xknock_tests::frames::ipv4(REMOTE4, LOCAL4, &xknock_tests::frames::L4::udp(64), &[], 0, 0);
    assert!(rig.run(&tcp).1.is_empty());
    assert!(rig.run(&udp).1.is_empty());
    // Length 64 + 2048 would alias 64 if the slot were masked unchecked.
    assert!(rig.run(&v4_echo(8, 64 + 2048, 0)).1.is_empty());
}
