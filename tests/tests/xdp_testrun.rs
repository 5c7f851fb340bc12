//! The XDP program run on hand-built frames through BPF_PROG_TEST_RUN: no
//! interface is touched, the program is only loaded.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    maps::{MapData, RingBuf},
    programs::{TestRun, TestRunOptions},
};
use knockd_common::{PortKey, PortRule, ADDR_LOCAL, ADDR_TARGET, PORT_STEALTH};
use xknock::{
    bpf::{Counters, XdpKnocker},
    config::model::Proto,
    events::{decode, KnockRecord},
};
use xknock_tests::{
    frames::{self, Ext, ACK, L4, SYN, TCP, UDP},
    privileged, wait_until,
};

const XDP_PASS: u32 = 2;
const LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const TARGET4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 50);
const REMOTE4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 1);
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 2);

struct Rig {
    knocker: XdpKnocker,
    ring: RingBuf<MapData>,
}

impl Rig {
    /// Knock ports: 7000/tcp (syn,!ack), 8000/udp, 9000/tcp (any flags),
    /// 9100/tcp stealthy.
    fn new() -> Self {
        Self::with_pins(None)
    }

    fn with_pins(pins: Option<&std::path::Path>) -> Self {
        let mut knocker = XdpKnocker::load(pins).expect("load XDP object");
        let ports = BTreeMap::from([
            (PortKey::new(7000, TCP), PortRule { must_set: SYN, must_clear: ACK, flags: 0, _pad: 0 }),
            (PortKey::new(8000, UDP), PortRule::default()),
            (PortKey::new(9000, TCP), PortRule::default()),
            (PortKey::new(9100, TCP), PortRule { flags: PORT_STEALTH, ..PortRule::default() }),
        ]);
        knocker.set_knock_ports(&ports).unwrap();
        let addrs = HashMap::from([
            (IpAddr::V4(LOCAL4), ADDR_LOCAL),
            (IpAddr::V4(TARGET4), ADDR_TARGET),
            (IpAddr::V6(LOCAL6), ADDR_LOCAL),
        ]);
        knocker.set_addrs(&addrs).unwrap();
        let ring = knocker.take_events().unwrap();
        Self { knocker, ring }
    }

    /// Runs one frame and returns the verdict and the events it produced.
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<KnockRecord>) {
        self.try_run(frame).expect("BPF_PROG_TEST_RUN")
    }

    /// `None` when the kernel refuses the frame (shorter than Ethernet).
    fn try_run(&mut self, frame: &[u8]) -> Option<(u32, Vec<KnockRecord>)> {
        let opts = TestRunOptions { data_in: Some(frame), ..Default::default() };
        let res = self.knocker.program().unwrap().test_run(opts).ok()?;
        let mut evs = Vec::new();
        while let Some(item) = self.ring.next() {
            evs.push(decode(&item).expect("decodable event"));
        }
        Some((res.return_value, evs))
    }

    fn counters(&self) -> Counters {
        self.knocker.counters().unwrap()
    }
}

fn v4(l4: &L4) -> Vec<u8> {
    frames::ipv4(REMOTE4, LOCAL4, l4, &[], 0, 0)
}

#[test]
fn ipv4_tcp_syn_gives_one_event_with_the_right_fields() {
    if !privileged("ipv4_tcp_syn") {
        return;
    }
    let mut rig = Rig::new();
    let (verdict, evs) = rig.run(&v4(&L4::tcp(7000, SYN)));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(evs.len(), 1, "{evs:?}");
    let e = evs[0];
    assert_eq!(e.src, IpAddr::V4(REMOTE4));
    assert_eq!(e.dst, IpAddr::V4(LOCAL4));
    assert_eq!((e.step.port, e.step.proto, e.src_port, e.tcp_flags), (7000, Proto::Tcp, 40000, SYN));
    assert!(e.at.as_nanos() > 0, "timestamp set");
    assert_eq!(rig.counters().knock_hits, 1);
}

#[test]
fn ipv6_tcp_syn_gives_one_event() {
    if !privileged("ipv6_tcp_syn") {
        return;
    }
    let mut rig = Rig::new();
    let (verdict, evs) = rig.run(&frames::ipv6(REMOTE6, LOCAL6, &L4::tcp(7000, SYN), &[], &[]));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].src, IpAddr::V6(REMOTE6));
    assert_eq!(evs[0].dst, IpAddr::V6(LOCAL6));
    assert_eq!(evs[0].step.port, 7000);
}

#[test]
fn non_knock_port_and_non_ip_give_nothing() {
    if !privileged("non_knock_port") {
        return;
    }
    let mut rig = Rig::new();
    for frame in [v4(&L4::tcp(22, SYN)), v4(&L4::udp(7000)), v4(&L4::tcp(8000, SYN)), frames::arp()] {
        assert_eq!(rig.run(&frame), (XDP_PASS, vec![]));
    }
    let c = rig.counters();
    assert_eq!((c.frames, c.knock_hits), (4, 0));
}

#[test]
fn flag_mismatch_gives_nothing_and_is_counted() {
    if !privileged("flag_mismatch") {
        return;
    }
    let mut rig = Rig::new();
    assert_eq!(rig.run(&v4(&L4::tcp(7000, SYN | ACK))), (XDP_PASS, vec![]));
    assert_eq!(rig.run(&v4(&L4::tcp(7000, 0))), (XDP_PASS, vec![]));
    assert_eq!(rig.counters().flag_mismatch, 2);
    // A port with no flag rule takes any flags.
    assert_eq!(rig.run(&v4(&L4::tcp(9000, ACK))).1.len(), 1);
}

#[test]
fn udp_and_vlan_tagged_frames_work() {
    if !privileged("udp_vlan") {
        return;
    }
    let mut rig = Rig::new();
    let udp = rig.run(&v4(&L4::udp(8000))).1;
    assert_eq!(udp.len(), 1);
    assert_eq!(udp[0].step.proto, Proto::Udp);
    for vlans in [&[10u16][..], &[100, 200]] {
        let f = frames::ipv4(REMOTE4, LOCAL4, &L4::tcp(7000, SYN), vlans, 0, 0);
        assert_eq!(rig.run(&f).1.len(), 1, "vlans {vlans:?}");
        let f6 = frames::ipv6(REMOTE6, LOCAL6, &L4::udp(8000), vlans, &[]);
        assert_eq!(rig.run(&f6).1.len(), 1, "v6 vlans {vlans:?}");
    }
}

#[test]
fn ipv4_options_and_first_fragment_are_knocks_later_fragments_are_not() {
    if !privileged("ipv4_frag") {
        return;
    }
    let mut rig = Rig::new();
    let l4 = L4::tcp(7000, SYN);
    assert_eq!(rig.run(&frames::ipv4(REMOTE4, LOCAL4, &l4, &[], 10, 0)).1.len(), 1, "IHL 15");
    // More-fragments set, offset 0: the first fragment carries the header.
    assert_eq!(rig.run(&frames::ipv4(REMOTE4, LOCAL4, &l4, &[], 0, 0x2000)).1.len(), 1);
    assert_eq!(rig.run(&frames::ipv4(REMOTE4, LOCAL4, &l4, &[], 0, 0x2000 | 185)).1.len(), 0);
    assert_eq!(rig.run(&frames::ipv4(REMOTE4, LOCAL4, &l4, &[], 0, 1)).1.len(), 0);
}

#[test]
fn ipv6_extension_headers_are_walked() {
    if !privileged("ipv6_ext") {
        return;
    }
    let mut rig = Rig::new();
    let l4 = L4::tcp(7000, SYN);
    let chains: [&[Ext]; 4] = [
        &[Ext::HopByHop],
        &[Ext::HopByHop, Ext::Routing, Ext::DestOpts],
        &[Ext::Fragment(0)],
        &[Ext::HopByHop, Ext::DestOpts, Ext::Routing, Ext::Fragment(0), Ext::DestOpts],
    ];
    for chain in chains {
        let f = frames::ipv6(REMOTE6, LOCAL6, &l4, &[], chain);
        assert_eq!(rig.run(&f).1.len(), 1, "chain {chain:?}");
    }
    let later = frames::ipv6(REMOTE6, LOCAL6, &l4, &[], &[Ext::Fragment(3)]);
    assert_eq!(rig.run(&later).1.len(), 0, "non-first fragment");
}

#[test]
fn only_local_or_target_destinations_count() {
    if !privileged("local_or_target") {
        return;
    }
    let mut rig = Rig::new();
    let l4 = L4::tcp(7000, SYN);
    assert_eq!(rig.run(&frames::ipv4(REMOTE4, TARGET4, &l4, &[], 0, 0)).1.len(), 1, "target");
    let other = Ipv4Addr::new(10, 1, 0, 99);
    assert_eq!(rig.run(&frames::ipv4(REMOTE4, other, &l4, &[], 0, 0)).1.len(), 0, "not local");
    let other6 = Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 0x99);
    assert_eq!(rig.run(&frames::ipv6(REMOTE6, other6, &l4, &[], &[])).1.len(), 0);
    assert_eq!(rig.counters().not_local, 2);
}

#[test]
fn every_truncation_passes_without_an_event() {
    if !privileged("truncation") {
        return;
    }
    let mut rig = Rig::new();
    let full: Vec<Vec<u8>> = vec![
        v4(&L4::tcp(7000, SYN)),
        v4(&L4::udp(8000)),
        frames::ipv4(REMOTE4, LOCAL4, &L4::tcp(7000, SYN), &[1, 2], 3, 0),
        frames::ipv6(REMOTE6, LOCAL6, &L4::tcp(7000, SYN), &[5], &[Ext::HopByHop, Ext::Fragment(0)]),
    ];
    for frame in full {
        assert_eq!(rig.run(&frame).1.len(), 1, "the full frame is a knock");
        // BPF_PROG_TEST_RUN rejects frames shorter than an Ethernet header, so
        // lengths below 14 are covered by the kernel's own check.
        for len in 0..frame.len() {
            match rig.try_run(&frame[..len]) {
                Some((verdict, evs)) => {
                    assert_eq!(verdict, XDP_PASS, "len {len}");
                    assert!(evs.is_empty(), "len {len} gave {evs:?}");
                }
                None => assert!(len < 14, "kernel refused a {len}-byte frame"),
            }
        }
    }
}

const XDP_DROP: u32 = 1;

#[test]
fn stealthy_knock_is_recorded_and_dropped() {
    if !privileged("stealth_testrun") {
        return;
    }
    let mut rig = Rig::new();
    let (verdict, evs) = rig.run(&v4(&L4::tcp(9100, SYN)));
    assert_eq!((verdict, evs.len()), (XDP_DROP, 1));
    assert_eq!(rig.counters().stealth_drop, 1);
    // A visible knock port still passes.
    assert_eq!(rig.run(&v4(&L4::tcp(9000, SYN))).0, XDP_PASS);
}

#[test]
fn gate_drops_new_connections_unless_a_window_is_open() {
    if !privileged("gate_testrun") {
        return;
    }
    use xknock::{
        config::model::Step,
        gate::{Gate, Protected},
    };
    let bpffs = xknock_tests::netns::BpffsMount::new().unwrap();
    let dir = bpffs.0.join("pins");
    let mut rig = Rig::with_pins(Some(&dir));
    let mut gate = rig.knocker.gate().unwrap();
    let ssh = Step { port: 2222, proto: Proto::Tcp };
    let dns = Step { port: 5353, proto: Proto::Udp };
    let protected = [Protected { door: "d".into(), port: ssh }, Protected { door: "d".into(), port: dns }];
    gate.install(&protected).unwrap();

    let syn = v4(&L4::tcp(2222, SYN));
    assert_eq!(rig.run(&syn).0, XDP_DROP, "closed before a knock");
    assert_eq!(rig.run(&v4(&L4::tcp(2222, ACK))).0, XDP_PASS, "established traffic passes");
    assert_eq!(rig.run(&v4(&L4::udp(5353))).0, XDP_DROP, "UDP outside a window");
    assert_eq!(rig.run(&v4(&L4::tcp(2223, SYN))).0, XDP_PASS, "other ports untouched");

    gate.open("d", IpAddr::V4(REMOTE4), &[ssh, dns], std::time::Duration::from_secs(60)).unwrap();
    assert_eq!(rig.run(&syn).0, XDP_PASS, "open for the knocker");
    assert_eq!(rig.run(&v4(&L4::udp(5353))).0, XDP_PASS);
    let other = frames::ipv4(Ipv4Addr::new(10, 1, 0, 3), LOCAL4, &L4::tcp(2222, SYN), &[], 0, 0);
    assert_eq!(rig.run(&other).0, XDP_DROP, "others stay refused");
    let six = frames::ipv6(REMOTE6, LOCAL6, &L4::tcp(2222, SYN), &[], &[]);
    assert_eq!(rig.run(&six).0, XDP_DROP, "the v4 window does not open v6");

    // A re-knock replaces the window; an expired one no longer lets anyone in.
    gate.open("d", IpAddr::V4(REMOTE4), &[ssh], std::time::Duration::from_nanos(1)).unwrap();
    // The kernel's clock ticks coarsely (one jiffy): the 1 ns window is over
    // at the next tick at the latest.
    let dropped = |rig: &mut Rig| rig.run(&syn).0 == XDP_DROP;
    assert!(wait_until(std::time::Duration::from_secs(1), || dropped(&mut rig)), "expired window");
    assert_eq!(gate.windows().unwrap().iter().filter(|w| w.port == ssh).count(), 0, "expired, not listed");
    let c = rig.counters();
    assert!(c.gate_drop >= 4 && c.gate_pass >= 2, "{c:?}");

    gate.close_windows().unwrap();
    assert!(gate.windows().unwrap().is_empty());
    assert_eq!(rig.run(&v4(&L4::udp(5353))).0, XDP_DROP, "still closed after close_windows");
}
