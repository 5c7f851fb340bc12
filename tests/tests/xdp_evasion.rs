//! Evasion classes through BPF_PROG_TEST_RUN: with a gate active, a frame the
//! program cannot classify but Linux could deliver as a new connection is
//! dropped and counted (`unclassified_drop`); with no gate, the same frame
//! passes. Each class and its reasoning is documented in
//! knockd-ebpf/src/parse.rs; the frames come from `frames::evasion`, the
//! ones a real listener answers in tests that send them on a veth.

#[path = "support/testrun.rs"]
mod testrun;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use testrun::{GatedRig, XDP_DROP, XDP_PASS};
use xknock::config::model::{Proto, Step};
use xknock_tests::{
    frames::{
        self,
        evasion::{cases, test_run_only, Endpoints},
        Eth, Ext, V4Header, L4, SYN, TCP, UDP,
    },
    privileged,
};

const D: u32 = XDP_DROP;
const P: u32 = XDP_PASS;
const GATED_TCP: u16 = 2222;
const GATED_UDP: u16 = 5353;
const SRC4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const DST4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 2);
const DST6: Ipv6Addr = Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 1);

fn rig() -> GatedRig {
    let ports = [Step { port: GATED_TCP, proto: Proto::Tcp }, Step { port: GATED_UDP, proto: Proto::Udp }];
    GatedRig::new(&ports).expect("gated rig")
}

fn endpoints(v6: bool) -> Endpoints {
    let (src, dst): (IpAddr, IpAddr) =
        if v6 { (SRC6.into(), DST6.into()) } else { (SRC4.into(), DST4.into()) };
    Endpoints { src_mac: Eth::TEST.src, dst_mac: Eth::TEST.dst, src, dst, sport: 40001, dport: GATED_TCP }
}

/// The frames of the named case, from `cases` or `test_run_only`.
fn case(v6: bool, name: &str) -> Vec<Vec<u8>> {
    let e = endpoints(v6);
    let all = cases(&e).into_iter().chain(test_run_only(&e));
    all.into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name}")).frames
}

/// Runs `frames` with the gate on, expecting `on` (and one unclassified drop
/// per unclassified frame), then with no gate, expecting every frame to pass.
fn check(frames: &[Vec<u8>], on: &[u32], unclassified: u64) {
    assert_eq!(frames.len(), on.len(), "one expectation per frame");
    let mut rig = rig();
    let got: Vec<u32> = frames.iter().map(|f| rig.verdict(f).expect("frame accepted")).collect();
    assert_eq!(got, on, "gate on");
    assert_eq!(rig.counters().unclassified_drop, unclassified, "unclassified drops");
    rig.set_gate(false).unwrap();
    let got: Vec<u32> = frames.iter().map(|f| rig.verdict(f).expect("frame accepted")).collect();
    assert_eq!(got, vec![P; frames.len()], "no gate");
    assert_eq!(rig.counters().unclassified_drop, unclassified, "nothing counted without a gate");
}

fn v4_frame(hdr: &V4Header, payload: &[u8]) -> Vec<u8> {
    [Eth::TEST.header(0x0800), hdr.packet(payload)].concat()
}

fn syn_segment(dport: u16) -> Vec<u8> {
    L4::tcp(dport, SYN).segment(SRC4.into(), DST4.into())
}

#[test]
fn v4_tiny_first_fragment() {
    if !privileged("v4_tiny_first_fragment") {
        return;
    }
    // 8 bytes of TCP header, then the rest at offset 1: both unclassifiable.
    check(&case(false, "v4_tiny_first_fragment"), &[D, D], 2);
    check(&case(false, "v4_tiny_fragments_reversed"), &[D, D], 2);
    check(&case(false, "v4_options_tiny_first_fragment"), &[D, D], 2);
}

#[test]
fn v4_sixteen_byte_first_fragment() {
    if !privileged("v4_sixteen_byte_first_fragment") {
        return;
    }
    // The flags are visible but the header is not whole; the tail at
    // offset 2 starts inside the TCP header.
    check(&case(false, "v4_sixteen_byte_first_fragment"), &[D, D], 2);
}

#[test]
fn v4_first_fragment_short_total_length() {
    if !privileged("v4_first_fragment_short_total_length") {
        return;
    }
    // The frame holds a whole header with ACK set, but Linux trims it to
    // the total length (8 bytes of TCP): judged by the total length.
    check(&case(false, "v4_first_fragment_short_total_length"), &[D, D], 2);
}

#[test]
fn v4_offset_one_tcp_fragment() {
    if !privileged("v4_offset_one_tcp_fragment") {
        return;
    }
    // RFC 1858 (and offset 2, still inside the TCP header), whatever else it
    // carries; a UDP or later TCP fragment has no header to rewrite.
    let at = |proto, frag| v4_frame(&V4Header { frag, ..V4Header::new(SRC4, DST4, proto) }, &[0; 16]);
    check(
        &[at(TCP, 1), at(TCP, frames::IP_MF | 1), at(UDP, 1), at(TCP, 2), at(TCP, 185)],
        &[D, D, P, D, P],
        3,
    );
}

#[test]
fn v4_empty_first_fragment() {
    if !privileged("v4_empty_first_fragment") {
        return;
    }
    let first = V4Header { frag: frames::IP_MF, ..V4Header::new(SRC4, DST4, TCP) };
    let udp_first = V4Header { proto: UDP, ..first.clone() };
    check(&[v4_frame(&first, &[]), v4_frame(&udp_first, &[])], &[D, D], 2);
}

#[test]
fn v4_first_fragment_with_whole_header_is_judged_by_it() {
    if !privileged("v4_first_fragment_whole_header") {
        return;
    }
    // Overlapping fragments are dropped by Linux, so the first fragment's
    // header is the one delivered: the gate decides, nothing is unclassified.
    let first = V4Header { frag: frames::IP_MF, ..V4Header::new(SRC4, DST4, TCP) };
    let udp = L4::udp(GATED_UDP).segment(SRC4.into(), DST4.into());
    let udp_first = V4Header { proto: UDP, ..first.clone() };
    let frames = [
        v4_frame(&first, &syn_segment(GATED_TCP)),
        v4_frame(&first, &syn_segment(2223)),
        v4_frame(&udp_first, &udp),
    ];
    check(&frames, &[D, P, D], 0);
}

#[test]
fn v4_header_length_edge_cases() {
    if !privileged("v4_header_length_edge_cases") {
        return;
    }
    let syn = frames::ipv4(SRC4, DST4, &L4::tcp(GATED_TCP, SYN), &[], 0, 0);
    let mut ihl_short = syn.clone();
    ihl_short[14] = 0x44; // IHL 4: ip_rcv drops it.
    let mut ihl_past_frame = syn[..14 + 40].to_vec();
    ihl_past_frame[14] = 0x4f; // 60-byte header in a 40-byte packet: dropped.
    let with_options = frames::ipv4(SRC4, DST4, &L4::tcp(GATED_TCP, SYN), &[], 10, 0);
    let mut cut_whole = syn[..14 + 20 + 12].to_vec(); // not a fragment: dropped.
    cut_whole[16..18].copy_from_slice(&32u16.to_be_bytes());
    let mut mf_ihl_past_total = syn.clone();
    mf_ihl_past_total[14] = 0x4f; // MF, IHL 60 > total length 40: dropped.
    mf_ihl_past_total[20] = 0x20;
    // The one with options is judged past them (a gate drop, not unclassified).
    check(&[ihl_short, ihl_past_frame, cut_whole, mf_ihl_past_total, with_options], &[P, P, P, P, D], 0);
}

#[test]
fn v6_seven_dest_opts() {
    if !privileged("v6_seven_dest_opts") {
        return;
    }
    check(&case(true, "v6_seven_dest_opts"), &[D], 1);
    // Six are still walked and judged: a gate drop, not an unclassified one.
    let six = frames::ipv6(SRC6, DST6, &L4::tcp(GATED_TCP, SYN), &[], &[Ext::DestOptsLen(8); 6]);
    let six_other = frames::ipv6(SRC6, DST6, &L4::tcp(2223, SYN), &[], &[Ext::DestOptsLen(8); 6]);
    check(&[six, six_other], &[D, P], 0);
}

#[test]
fn v6_dest_opts_beyond_offset_bound() {
    if !privileged("v6_dest_opts_beyond_offset_bound") {
        return;
    }
    check(&case(true, "v6_dest_opts_beyond_offset_bound"), &[D], 1);
}

#[test]
fn v6_first_fragment_without_whole_chain() {
    if !privileged("v6_first_fragment_without_whole_chain") {
        return;
    }
    // RFC 7112. The later fragments carry no header and pass alone.
    check(&case(true, "v6_tiny_first_fragment"), &[D, P], 1);
    check(&case(true, "v6_first_fragment_without_l4"), &[D, P], 1);
    check(&case(true, "v6_ext_header_split_across_fragments"), &[D, P], 1);
}

#[test]
fn v6_first_fragment_short_payload_length() {
    if !privileged("v6_first_fragment_short_payload_length") {
        return;
    }
    let mut f = frames::ipv6(SRC6, DST6, &L4::tcp(GATED_TCP, 0), &[], &[]);
    // Make it a first fragment (M set) whose payload length covers only 8
    // bytes of the 20-byte TCP header: the rest of the frame is padding.
    let mut frag = f.split_off(14 + 40);
    frag.splice(0..0, frames::fragment_header(TCP, 0, true, 7));
    f[14 + 6] = 44;
    f[18..20].copy_from_slice(&16u16.to_be_bytes());
    f.extend(frag);
    check(&[f], &[D], 1);
}

/// Found by the fuzzer: a first fragment whose chain runs past its payload
/// length. The frame's padding shows the chain ending harmlessly, but Linux
/// trims the padding off and the chain goes on in the next fragment.
#[test]
fn v6_first_fragment_chain_in_padding() {
    if !privileged("v6_first_fragment_chain_in_padding") {
        return;
    }
    const ICMPV6: u8 = 58;
    let frame = |after_frag: Vec<u8>, covered: u16| {
        let mut payload = frames::fragment_header(60, 0, true, 9);
        payload.extend(after_frag);
        let mut f = [Eth::TEST.header(0x86dd), frames::ipv6_packet(SRC6, DST6, 44, &payload)].concat();
        f[18..20].copy_from_slice(&covered.to_be_bytes());
        f.extend([0; 16]); // what the padding shows next: ICMPv6 or a later fragment
        f
    };
    // 16 bytes of destination options, of which the payload length covers 8.
    let icmp = frame(Ext::DestOpts.bytes(ICMPV6), 16);
    let later = frame([Ext::DestOpts.bytes(44), frames::fragment_header(TCP, 3, false, 9)].concat(), 16);
    // The same frames with the payload length covering all they show pass.
    let icmp_whole = frame(Ext::DestOpts.bytes(ICMPV6), 24);
    check(&[icmp, later, icmp_whole], &[D, D, P], 2);
}

#[test]
fn vlan_three_tags() {
    if !privileged("vlan_three_tags") {
        return;
    }
    check(&case(false, "vlan_three_tags"), &[D], 1);
    // Two tags are walked: judged by the ports.
    let two = frames::ipv4(SRC4, DST4, &L4::tcp(2223, SYN), &[10, 20], 0, 0);
    check(&[two], &[P], 0);
}

#[test]
fn classified_frames_are_unaffected_by_the_unclassified_rule() {
    if !privileged("classified_frames_unaffected") {
        return;
    }
    let v4 = |l4: L4| frames::ipv4(SRC4, DST4, &l4, &[], 0, 0);
    let frames = [
        v4(L4::tcp(2223, SYN)),
        v4(L4::tcp(GATED_TCP, frames::ACK)),
        v4(L4::udp(53)),
        frames::ipv6(SRC6, DST6, &L4::tcp(2223, SYN), &[], &[Ext::HopByHop, Ext::Fragment(0)]),
        frames::ipv6(SRC6, DST6, &L4::tcp(GATED_TCP, SYN), &[], &[Ext::Fragment(3)]),
        frames::arp(),
    ];
    check(&frames, &[P; 6], 0);
}
