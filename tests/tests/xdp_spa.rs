//! SPA capture through BPF_PROG_TEST_RUN: the program is loaded, never
//! attached. A datagram to a local SPA port reaches the SPA ring with its
//! payload and is dropped; everything else keeps its old fate.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    maps::{MapData, RingBuf},
    programs::{TestRun, TestRunOptions},
};
use knockd_common::{ADDR_LOCAL, SPA_BURST, SPA_MAX_PAYLOAD, SPA_MIN_PAYLOAD};
use xknock::bpf::{
    spa::{decode, SpaCounters, SpaDatagram},
    XdpKnocker,
};
use xknock_tests::{
    frames::{checksum, ipv6_packet, pseudo_header, Eth, V4Header, UDP},
    privileged,
};

const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const PORT: u16 = 62201;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

struct Rig {
    knocker: XdpKnocker,
    ring: RingBuf<MapData>,
}

impl Rig {
    fn new() -> Self {
        let mut knocker = XdpKnocker::load(None).expect("load XDP object");
        let local = HashMap::from([(IpAddr::V4(LOCAL), ADDR_LOCAL), (IpAddr::V6(LOCAL6), ADDR_LOCAL)]);
        knocker.set_addrs(&local).unwrap();
        knocker.set_spa_ports(&BTreeSet::new(), &BTreeSet::from([PORT])).unwrap();
        let ring = knocker.take_spa_events().unwrap();
        Self { knocker, ring }
    }

    /// The program's verdict on `frame`, and what reached the SPA ring.
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<SpaDatagram>) {
        let opts = TestRunOptions { data_in: Some(frame), ..Default::default() };
        let out = self.knocker.program().unwrap().test_run(opts).expect("BPF_PROG_TEST_RUN");
        let mut got = Vec::new();
        while let Some(item) = self.ring.next() {
            got.push(decode(&item).expect("decodable SPA record"));
        }
        (out.return_value, got)
    }

    fn counters(&self) -> SpaCounters {
        self.knocker.spa_counters().unwrap()
    }
}

/// A UDP segment with a correct checksum; `claim` overrides the length field.
fn udp(src: IpAddr, dst: IpAddr, dport: u16, payload: &[u8], claim: Option<u16>) -> Vec<u8> {
    let len = claim.unwrap_or((8 + payload.len()) as u16);
    let mut b =
        [&40000u16.to_be_bytes()[..], &dport.to_be_bytes(), &len.to_be_bytes(), &[0, 0], payload].concat();
    let sum = checksum(&[&pseudo_header(src, dst, UDP, b.len()), &b]);
    b[6..8].copy_from_slice(&sum.to_be_bytes());
    b
}

fn v4(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let seg = udp(src.into(), dst.into(), dport, payload, None);
    [Eth::TEST.header(0x0800), V4Header::new(src, dst, UDP).packet(&seg)].concat()
}

fn v6(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let seg = udp(src.into(), dst.into(), PORT, payload, None);
    [Eth::TEST.header(0x86dd), ipv6_packet(src, dst, UDP, &seg)].concat()
}

/// `n` base64-looking bytes, different per `seed`.
fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(i + seed as usize) % 64]
        })
        .collect()
}

#[test]
fn a_datagram_to_a_local_spa_port_is_captured_with_its_payload_and_dropped() {
    if !privileged("spa_captured") {
        return;
    }
    let mut rig = Rig::new();
    let p = payload(204, 0);
    let (verdict, got) = rig.run(&v4(REMOTE, LOCAL, PORT, &p));
    assert_eq!(verdict, XDP_DROP, "dropped, so the port never answers");
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!((d.src, d.dst, d.src_port, d.dst_port), (REMOTE.into(), LOCAL.into(), 40000, PORT));
    assert_eq!(d.payload, p);
    let (verdict, got) = rig.run(&v6(REMOTE6, LOCAL6, &payload(300, 1)));
    assert_eq!(verdict, XDP_DROP);
    assert_eq!((got[0].src, got[0].payload.len()), (REMOTE6.into(), 300));
    assert_eq!(rig.counters(), SpaCounters { captured: 2, ..Default::default() });
}

#[test]
fn only_lengths_an_spa_packet_can_have_are_captured() {
    if !privileged("spa_length_bounds") {
        return;
    }
    let mut rig = Rig::new();
    let (min, max) = (usize::from(SPA_MIN_PAYLOAD), usize::from(SPA_MAX_PAYLOAD));
    for (n, captured) in
        [(0, false), (min - 1, false), (min, true), (max, true), (max + 1, false), (1400, false)]
    {
        let (verdict, got) = rig.run(&v4(REMOTE, LOCAL, PORT, &payload(n, 2)));
        assert_eq!(verdict, XDP_DROP, "{n} bytes: every datagram to the port is dropped");
        assert_eq!(got.len(), usize::from(captured), "{n} bytes");
        if captured {
            assert_eq!(got[0].payload, payload(n, 2));
        }
    }
    assert_eq!(rig.counters(), SpaCounters { captured: 2, bad_len: 4, ..Default::default() });
    // A UDP length that claims more than the frame holds copies nothing.
    let seg = udp(REMOTE.into(), LOCAL.into(), PORT, &payload(150, 3), Some(8 + 300));
    let frame = [Eth::TEST.header(0x0800), V4Header::new(REMOTE, LOCAL, UDP).packet(&seg)].concat();
    let (verdict, got) = rig.run(&frame);
    assert_eq!((verdict, got.len(), rig.counters().bad_len), (XDP_DROP, 0, 5));
}

#[test]
fn other_destinations_and_ports_pass() {
    if !privileged("spa_not_local") {
        return;
    }
    let mut rig = Rig::new();
    let p = payload(204, 4);
    let elsewhere = Ipv4Addr::new(10, 9, 9, 9);
    assert_eq!(rig.run(&v4(REMOTE, elsewhere, PORT, &p)), (XDP_PASS, vec![]), "not ours: forwarded on");
    assert_eq!(rig.run(&v4(REMOTE, LOCAL, PORT + 1, &p)), (XDP_PASS, vec![]), "another port");
    // A port no door uses any more is left alone at once.
    rig.knocker.set_spa_ports(&BTreeSet::from([PORT]), &BTreeSet::from([PORT + 1])).unwrap();
    assert_eq!(rig.run(&v4(REMOTE, LOCAL, PORT, &p)), (XDP_PASS, vec![]));
    assert_eq!(rig.run(&v4(REMOTE, LOCAL, PORT + 1, &p)).1.len(), 1);
    assert_eq!(rig.counters().captured, 1);
}

#[test]
fn a_flooding_source_is_limited_and_others_are_not() {
    if !privileged("spa_bucket") {
        return;
    }
    let mut rig = Rig::new();
    let burst = SPA_BURST as usize;
    let mut captured = 0;
    // Far faster than the refill (one token per 250 ms): the burst passes,
    // then almost nothing.
    for i in 0..burst * 4 {
        let (verdict, got) = rig.run(&v4(REMOTE, LOCAL, PORT, &payload(200, i as u8)));
        assert_eq!(verdict, XDP_DROP);
        captured += got.len();
    }
    assert!((burst..=burst + 1).contains(&captured), "{captured} captured");
    let c = rig.counters();
    assert_eq!(c.limited as usize, burst * 4 - captured, "{c:?}");
    // Another source has its own bucket.
    let other = Ipv4Addr::new(10, 1, 0, 3);
    assert_eq!(rig.run(&v4(other, LOCAL, PORT, &payload(200, 9))).1.len(), 1);
}
