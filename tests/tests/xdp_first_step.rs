//! First steps kept in the kernel, and the sweep guard, through
//! BPF_PROG_TEST_RUN: the program is loaded, never attached.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::Duration,
};

use aya::{
    maps::{MapData, RingBuf},
    programs::{TestRun, TestRunOptions},
};
use knockd_common::{ms_of, ADDR_LOCAL, ADDR_TARGET};
use xknock::{
    bpf::{Counters, Tables, XdpKnocker},
    config::{model::Proto, parse_str, Step},
    daemon::{kernel_ports, kernel_steps},
    events::{decode, monotonic_now, KnockRecord, RecordKind},
};
use xknock_tests::{
    frames::{self, ACK, L4, SYN},
    privileged, wait_until,
};

const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const TIMEOUT_MS: u32 = 5000;
/// Door 0: 7000 (syn,!ack), 8000/udp, 9000. Door 1: 6000 alone.
const CONFIG: &str = "doors:
  three:
    sequence: [7000, \"8000:udp\", 9000]
    seq_timeout: 5
    tcp_flags: syn,!ack
  single:
    sequence: [6000]
";

/// Not one of the host's addresses: door `aimed`'s target.
const TARGET: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 9);
/// Door 0 counts knocks to TARGET only, door 1 to the host's own addresses.
const TARGETED: &str = "doors:
  aimed:
    sequence: [7000, 8000]
    seq_timeout: 5
    target: 10.1.0.9
  plain:
    sequence: [7100, 8100]
    seq_timeout: 5
";

struct Rig {
    knocker: XdpKnocker,
    ring: RingBuf<MapData>,
}

impl Rig {
    fn new(first_step_slots: u32) -> Self {
        Self::with(CONFIG, first_step_slots, &[(LOCAL, ADDR_LOCAL)])
    }

    fn with(config: &str, first_step_slots: u32, addrs: &[(Ipv4Addr, u8)]) -> Self {
        let cfg = parse_str(config, Path::new("t.yaml")).expect("config");
        let tables = Tables { first_step_slots, ..Tables::default() };
        let mut knocker = XdpKnocker::load_sized(None, false, tables).expect("load XDP object");
        knocker.set_knock_ports(&kernel_ports(&cfg)).unwrap();
        let steps = kernel_steps(&cfg);
        assert!(steps.undescribed.is_empty());
        knocker.set_step_doors(&steps.ports).unwrap();
        knocker.set_addrs(&addrs.iter().map(|&(a, m)| (IpAddr::V4(a), m)).collect()).unwrap();
        let ring = knocker.take_events().unwrap();
        Self { knocker, ring }
    }

    fn from(&mut self, src: Ipv4Addr, l4: &L4) -> Vec<KnockRecord> {
        self.to(src, LOCAL, l4)
    }

    fn to(&mut self, src: Ipv4Addr, dst: Ipv4Addr, l4: &L4) -> Vec<KnockRecord> {
        self.frame(&frames::ipv4(src, dst, l4, &[], 0, 0))
    }

    fn frame(&mut self, frame: &[u8]) -> Vec<KnockRecord> {
        let opts = TestRunOptions { data_in: Some(frame), ..Default::default() };
        self.knocker.program().unwrap().test_run(opts).expect("BPF_PROG_TEST_RUN");
        let mut evs = Vec::new();
        while let Some(item) = self.ring.next() {
            evs.push(decode(&item).expect("decodable event"));
        }
        evs
    }

    fn counters(&self) -> Counters {
        self.knocker.counters().unwrap()
    }

    fn first_step(&self, src: Ipv4Addr) -> u32 {
        self.knocker.first_step_time(IpAddr::V4(src), 0).unwrap()
    }
}

fn syn(port: u16) -> L4 {
    L4::tcp(port, SYN)
}

fn now_ms() -> u32 {
    ms_of(monotonic_now().as_nanos() as u64)
}

#[test]
fn a_first_step_is_recorded_with_no_event() {
    if !privileged("first_step_recorded") {
        return;
    }
    let mut rig = Rig::new(1 << 20);
    assert_eq!(rig.first_step(REMOTE), 0);
    assert_eq!(rig.from(REMOTE, &syn(7000)), vec![]);
    assert_ne!(rig.first_step(REMOTE), 0, "recorded");
    let c = rig.counters();
    assert_eq!((c.first_step, c.knock_hits, c.orphan_step), (1, 0, 0), "{c:?}");
    // The door's flags apply: a SYN-ACK is not its first step (the port's
    // flag filter drops it before), and nothing else is recorded.
    assert_eq!(rig.from(Ipv4Addr::new(10, 1, 0, 3), &L4::tcp(7000, SYN | ACK)), vec![]);
    assert_eq!(rig.first_step(Ipv4Addr::new(10, 1, 0, 3)), 0);
}

#[test]
fn the_second_step_emits_both_and_later_steps_follow() {
    if !privileged("second_step_pair") {
        return;
    }
    let mut rig = Rig::new(1 << 20);
    rig.from(REMOTE, &syn(7000));
    let evs = rig.from(REMOTE, &L4::udp(8000));
    assert_eq!(evs.len(), 1, "{evs:?}");
    let e = evs[0];
    assert_eq!((e.src, e.step), (IpAddr::V4(REMOTE), Step { port: 8000, proto: Proto::Udp }));
    let RecordKind::Pair { door, first, first_flags, first_at } = e.kind else { panic!("not a pair: {e:?}") };
    assert_eq!((door, first, first_flags), (0, Step { port: 7000, proto: Proto::Tcp }, SYN));
    assert!(first_at <= e.at && e.at - first_at < Duration::from_secs(1), "{first_at:?} {:?}", e.at);
    assert!(rig.knocker.is_active(IpAddr::V4(REMOTE)).unwrap(), "past its second step");
    // The third step, and anything else on a knock port, now comes as is.
    let third = rig.from(REMOTE, &syn(9000));
    assert_eq!(third.len(), 1);
    assert_eq!((third[0].step.port, third[0].kind), (9000, RecordKind::Knock));
    let c = rig.counters();
    assert_eq!((c.first_step, c.pairs, c.knock_hits), (1, 1, 2), "{c:?}");
    // Once the daemon lets it go, a third step alone changes nothing.
    rig.knocker.release_active(IpAddr::V4(REMOTE)).unwrap();
    assert_eq!(rig.from(REMOTE, &syn(9000)), vec![]);
    assert_eq!(rig.counters().orphan_step, 1);
}

#[test]
fn an_expired_first_step_pairs_with_nothing() {
    if !privileged("first_step_expiry") {
        return;
    }
    let mut rig = Rig::new(1 << 20);
    rig.from(REMOTE, &syn(7000));
    let src = IpAddr::V4(REMOTE);
    // One millisecond too old for the 5 s timeout, then just young enough.
    let now = now_ms();
    rig.knocker.set_first_step_time(src, 0, now.wrapping_sub(TIMEOUT_MS)).unwrap();
    assert_eq!(rig.from(REMOTE, &L4::udp(8000)), vec![]);
    assert_eq!(rig.counters().orphan_step, 1);
    // Another source, whose first step is 4 s old, still pairs.
    let other = Ipv4Addr::new(10, 1, 0, 3);
    rig.from(other, &syn(7000));
    rig.knocker.set_first_step_time(IpAddr::V4(other), 0, now_ms().wrapping_sub(TIMEOUT_MS - 1000)).unwrap();
    assert_eq!(rig.from(other, &L4::udp(8000)).len(), 1);
    assert_eq!(rig.counters().pairs, 1);
}

#[test]
fn a_later_step_from_an_unknown_source_gives_nothing_and_is_counted() {
    if !privileged("orphan_step") {
        return;
    }
    let mut rig = Rig::new(1 << 20);
    assert_eq!(rig.from(REMOTE, &L4::udp(8000)), vec![]);
    assert_eq!(rig.from(REMOTE, &syn(9000)), vec![]);
    let c = rig.counters();
    assert_eq!((c.orphan_step, c.knock_hits, c.first_step), (2, 0, 0), "{c:?}");
}

/// knockd: a wrong step invalidates the attempt. The kernel marks the
/// source's own slot, so the second step that follows pairs with nothing,
/// with the sweep guard off as well.
#[test]
fn a_wrong_step_invalidates_the_first_step() {
    if !privileged("wrong_step") {
        return;
    }
    let mut rig = Rig::new(1 << 20);
    rig.knocker.set_sweep_limit(None).unwrap();
    rig.from(REMOTE, &syn(7000));
    assert_eq!(rig.from(REMOTE, &syn(9000)), vec![]);
    assert_eq!(rig.from(REMOTE, &L4::udp(8000)), vec![], "no pair, and no sweep report");
    // A repeated first step is not a wrong step, and a new attempt works.
    assert!(wait_until(Duration::from_secs(1), || now_ms() > rig.first_step(REMOTE)));
    rig.from(REMOTE, &syn(7000));
    rig.from(REMOTE, &syn(7000));
    assert_eq!(rig.from(REMOTE, &L4::udp(8000)).len(), 1);
}

#[test]
fn a_single_step_door_emits_at_once() {
    if !privileged("single_step_emits") {
        return;
    }
    let mut rig = Rig::new(1 << 20);
    let evs = rig.from(REMOTE, &syn(6000));
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].kind, RecordKind::Knock);
}

#[test]
fn the_sweep_guard_counts_new_connections_and_drops_the_attempt() {
    if !privileged("sweep_guard") {
        return;
    }
    let mut rig = Rig::new(1 << 20);
    let src = IpAddr::V4(REMOTE);
    // No attempt yet: nothing is counted.
    rig.from(REMOTE, &syn(22));
    assert_eq!(rig.knocker.sweep_slot(src).unwrap(), None);
    rig.from(REMOTE, &syn(7000));
    let count = |rig: &Rig| rig.knocker.sweep_slot(src).unwrap().expect("the source's slot").count;
    rig.from(REMOTE, &syn(22));
    rig.from(REMOTE, &L4::udp(53));
    assert_eq!(count(&rig), 2);
    // Established traffic, and connections to other hosts, never count.
    rig.from(REMOTE, &L4::tcp(22, ACK));
    rig.frame(&frames::ipv4(REMOTE, Ipv4Addr::new(10, 1, 0, 99), &syn(23), &[], 0, 0));
    assert_eq!(count(&rig), 2);
    // The third crosses the limit of 2: the attempt is dropped, the count reset.
    rig.from(REMOTE, &syn(24));
    let slot = rig.knocker.sweep_slot(src).unwrap().unwrap();
    assert_eq!((slot.count, rig.counters().sweep_dropped), (0, 1));
    assert_ne!(slot.cut, 0);
    // The rest of the sweep finds nothing in progress: not counted, not
    // dropped again.
    for port in [25, 26, 27] {
        rig.from(REMOTE, &syn(port));
    }
    assert_eq!((rig.counters().sweep_counted, rig.counters().sweep_dropped), (3, 1));
    let evs = rig.from(REMOTE, &L4::udp(8000));
    assert_eq!(evs.len(), 1, "reported once, at the second step: {evs:?}");
    assert_eq!(evs[0].kind, RecordKind::Sweep { door: Some(0), count: 3 });
    assert_eq!(rig.from(REMOTE, &L4::udp(8000)), vec![], "and only once");
    assert!(!rig.knocker.is_active(src).unwrap());
    // A first step after the drop starts afresh.
    assert!(wait_until(Duration::from_secs(1), || now_ms() > slot.cut));
    rig.from(REMOTE, &syn(7000));
    assert!(matches!(
        rig.from(REMOTE, &L4::udp(8000))[..],
        [KnockRecord { kind: RecordKind::Pair { .. }, .. }]
    ));
    assert_eq!(rig.counters().sweep_counted, 3);
}

#[test]
fn a_source_past_its_second_step_is_swept_with_one_record() {
    if !privileged("sweep_active") {
        return;
    }
    let mut rig = Rig::new(1 << 20);
    let src = IpAddr::V4(REMOTE);
    rig.from(REMOTE, &syn(7000));
    rig.from(REMOTE, &L4::udp(8000));
    assert!(rig.knocker.is_active(src).unwrap());
    let mut evs = Vec::new();
    for port in [22, 23, 24, 25, 26] {
        evs.extend(rig.from(REMOTE, &syn(port)));
    }
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].kind, RecordKind::Sweep { door: None, count: 3 });
    assert!(!rig.knocker.is_active(src).unwrap(), "the kernel let it go");
    assert_eq!(rig.counters().sweep_dropped, 1, "dropped once, though the sweep went on");
    assert_eq!(rig.from(REMOTE, &syn(9000)), vec![], "its third step is no longer reported");
}

#[test]
fn with_the_sweep_guard_off_nothing_counts() {
    if !privileged("sweep_off") {
        return;
    }
    let mut rig = Rig::new(1 << 20);
    rig.knocker.set_sweep_limit(None).unwrap();
    rig.from(REMOTE, &syn(7000));
    for port in 6001..6010 {
        rig.from(REMOTE, &syn(port));
    }
    assert_eq!(rig.counters().sweep_counted, 0);
    assert_eq!(rig.from(REMOTE, &L4::udp(8000)).len(), 1, "the pair still comes");
}

/// The guarantee: no flood of first steps, however many collide with the
/// knocker's slot, keeps its second step from pairing. A tiny table makes
/// every slot collide about a hundred times.
#[test]
fn a_first_step_flood_never_costs_a_knocker_its_pair() {
    if !privileged("first_step_flood") {
        return;
    }
    let mut rig = Rig::new(1024);
    rig.from(REMOTE, &syn(7000));
    let mut x: u32 = 0x9e37_79b9;
    let mut flood_events = 0;
    for _ in 0..100_000 {
        // xorshift: spoofed sources all over 11.0.0.0/8 and beyond.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let spoofed = Ipv4Addr::from(x | 0x0b00_0000);
        flood_events += rig.from(spoofed, &syn(7000)).len();
    }
    assert_eq!(flood_events, 0, "a first-step flood sends nothing to the daemon");
    let evs = rig.from(REMOTE, &L4::udp(8000));
    assert!(matches!(evs[..], [KnockRecord { kind: RecordKind::Pair { .. }, .. }]), "{evs:?}");
    let c = rig.counters();
    assert_eq!((c.first_step, c.ringbuf_full), (100_001, 0), "{c:?}");
}

/// knockd counts a door's knocks only when sent to its `target` (or, with
/// none, to the host's own addresses): a first step sent elsewhere starts
/// nothing, so the second step to the right address pairs with nothing.
#[test]
fn a_first_step_counts_only_to_the_doors_own_destination() {
    if !privileged("first_step_scope") {
        return;
    }
    let mut rig = Rig::with(TARGETED, 1 << 20, &[(LOCAL, ADDR_LOCAL), (TARGET, ADDR_TARGET)]);
    let pair_of = |evs: &[KnockRecord]| match evs {
        [KnockRecord { kind: RecordKind::Pair { door, .. }, .. }] => Some(*door),
        _ => None,
    };
    let (a, b, c, d) = (
        Ipv4Addr::new(10, 1, 0, 21),
        Ipv4Addr::new(10, 1, 0, 22),
        Ipv4Addr::new(10, 1, 0, 23),
        Ipv4Addr::new(10, 1, 0, 24),
    );
    // aimed: first step to the host, second to the target: nothing.
    assert_eq!(rig.to(a, LOCAL, &syn(7000)), vec![]);
    assert_eq!(rig.to(a, TARGET, &syn(8000)), vec![]);
    // Both to the target: a pair.
    assert_eq!(rig.to(b, TARGET, &syn(7000)), vec![]);
    assert_eq!(pair_of(&rig.to(b, TARGET, &syn(8000))), Some(0));
    // plain: a first step to the target is not to the host: nothing.
    assert_eq!(rig.to(c, TARGET, &syn(7100)), vec![]);
    assert_eq!(rig.to(c, LOCAL, &syn(8100)), vec![]);
    // Both to the host: a pair.
    assert_eq!(rig.to(d, LOCAL, &syn(7100)), vec![]);
    assert_eq!(pair_of(&rig.to(d, LOCAL, &syn(8100))), Some(1));
    let c = rig.counters();
    assert_eq!((c.first_step, c.pairs), (3, 2), "{c:?}");
}
