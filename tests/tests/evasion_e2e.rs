//! Evasion frames end to end, per backend and address family: real frames
//! from the client namespace's veth (AF_PACKET, past the client's own
//! stack) at a real listener behind the protected port. The evidence is
//! the listener's SYN-ACK as captured on the client's link, or its absence.
//!
//! Each scenario has three parts. Without any gate, every case gets its
//! SYN-ACK: the frames really make Linux deliver a SYN, so they are an
//! evasion attempt and not just junk. With the gate on and no knock, no case
//! gets one. After a real knock from the client's address, a plain SYN gets
//! one, so the gate is not simply dead.

use std::{net::IpAddr, time::Duration};

use xknock_tests::{
    frames::evasion::{self, Endpoints},
    gate::{Family, Rig, Unstarted, PORT, WAIT},
    rawsock::{fresh_port, renumber_fragments, syn_frame, Answer, Link, Replies},
    wait_until,
};

/// How long a listener gets to answer. A SYN-ACK takes well under this,
/// neighbour resolution on the server included; a silence this long is a drop.
const ANSWER: Duration = Duration::from_millis(1500);
/// The name the plain SYN goes by next to the evasion cases.
const PLAIN: &str = "plain SYN";

/// The client's side of the link: where frames leave and answers arrive.
struct Attacker {
    link: Link,
    replies: Replies,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: IpAddr,
}

impl Attacker {
    fn new(bench: &Unstarted, f: &Family) -> Self {
        let pair = bench.pair();
        let server: IpAddr = f.server.parse().unwrap();
        Self {
            link: Link::open(&pair.client, &pair.client_if).unwrap(),
            replies: Replies { server, port: PORT },
            src_mac: pair.mac(&pair.client, &pair.client_if).unwrap(),
            dst_mac: pair.mac(&pair.server, &pair.server_if).unwrap(),
            src: f.client.parse().unwrap(),
        }
    }

    fn endpoints(&self, sport: u16) -> Endpoints {
        Endpoints {
            src_mac: self.src_mac,
            dst_mac: self.dst_mac,
            src: self.src,
            dst: self.replies.server,
            sport,
            dport: PORT,
        }
    }

    /// One attempt per case, the plain SYN first, each from its own source
    /// port and with its own fragment ids; returns each case's answer.
    fn try_every_case(&self) -> Vec<(&'static str, Option<Answer>)> {
        let count = evasion::cases(&self.endpoints(0)).len();
        let mut sent = vec![(PLAIN, self.send_plain())];
        for i in 0..count {
            let sport = fresh_port();
            let case = evasion::cases(&self.endpoints(sport)).swap_remove(i);
            let mut frames = case.frames;
            renumber_fragments(&mut frames);
            for frame in &frames {
                self.link.send(frame).unwrap();
            }
            sent.push((case.name, sport));
        }
        let sports: Vec<u16> = sent.iter().map(|&(_, p)| p).collect();
        let got = self.replies.collect(&self.link, &sports, ANSWER).unwrap();
        sent.into_iter().map(|(name, sport)| (name, got.get(&sport).copied())).collect()
    }

    /// Sends one plain SYN from a fresh port and returns that port.
    fn send_plain(&self) -> u16 {
        let sport = fresh_port();
        let frame = syn_frame((self.src_mac, self.dst_mac), self.src, self.replies.server, sport, PORT);
        self.link.send(&frame).unwrap();
        sport
    }

    /// What a plain SYN gets within `wait`.
    fn plain(&self, wait: Duration) -> Option<Answer> {
        let sport = self.send_plain();
        self.replies.collect(&self.link, &[sport], wait).unwrap().get(&sport).copied()
    }
}

fn names(cases: &[(&str, Option<Answer>)], pick: impl Fn(Option<Answer>) -> bool) -> Vec<String> {
    cases.iter().filter(|(_, a)| pick(*a)).map(|(n, a)| format!("{n} ({a:?})")).collect()
}

fn scenario(bench: Option<Unstarted>, f: &Family) {
    let Some(bench) = bench else { return };
    let attacker = Attacker::new(&bench, f);
    let control = attacker.try_every_case();
    assert!(control.len() > 1, "no evasion cases for {}", f.server);
    let silent = names(&control, |a| a != Some(Answer::SynAck));
    assert!(silent.is_empty(), "without a gate these got no SYN-ACK, so they prove nothing: {silent:?}");

    let mut rig = bench.start();
    let gated = attacker.try_every_case();
    let reset = names(&gated, |a| a == Some(Answer::Reset));
    assert!(reset.is_empty(), "an RST means no listener, not a closed gate: {reset:?}");
    let through = names(&gated, |a| a == Some(Answer::SynAck));
    assert!(through.is_empty(), "reached the protected port without a knock: {through:?}");
    rig.assert_listening();

    rig.knock(f.server);
    let mut last = None;
    let open = wait_until(WAIT, || {
        last = attacker.plain(Duration::from_millis(300));
        assert_ne!(last, Some(Answer::Reset), "the listener went away");
        last == Some(Answer::SynAck)
    });
    assert!(open, "after the knock a plain SYN still got {last:?}: the gate is dead, not selective");
}

fn nftables(test: &str, f: &Family) {
    scenario(Rig::prepare(test, "nftables", 30, &[]), f)
}

fn iptables(test: &str, f: &Family) {
    scenario(Rig::prepare(test, "iptables", 30, &["bpffs_dir: {DIR}/bpf"]), f)
}

fn xdp(test: &str, f: &Family) {
    scenario(Rig::prepare_pinned(test, "xdp", 30, &[]), f)
}

xknock_tests::per_family!(nftables:
    nftables_v4_no_evasion_frame_reaches_the_port = "evasion_nftables_v4",
    nftables_v6_no_evasion_frame_reaches_the_port = "evasion_nftables_v6");

xknock_tests::per_family!(iptables:
    iptables_v4_no_evasion_frame_reaches_the_port = "evasion_iptables_v4",
    iptables_v6_no_evasion_frame_reaches_the_port = "evasion_iptables_v6");

xknock_tests::per_family!(xdp:
    xdp_v4_no_evasion_frame_reaches_the_port = "evasion_xdp_v4",
    xdp_v6_no_evasion_frame_reaches_the_port = "evasion_xdp_v6");
