//! `cargo xtask bench`, part 1: the XDP program's cost per packet, measured
//! in the kernel with BPF_PROG_TEST_RUN on hand-built frames, against the
//! empty XDP program (`xknock_empty`) from the same object, loaded in the same
//! process. Every class runs once per round, in a rotating order, so slow
//! drift (frequency, noisy neighbours) hits all classes alike; the report
//! quotes medians over rounds.
//!
//! Usage: bench_testrun [--rounds N] [--repeat M]   (JSON on stdout)
//!
//! Needs root (CAP_BPF, CAP_SYS_ADMIN for the bpffs mount). Loads programs,
//! never attaches them.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{MapData, RingBuf},
    programs::{TestRun, TestRunOptions, Xdp},
};
use xknock::{
    bpf::{Counters, XdpKnocker},
    config::{
        self,
        model::{Proto, Step},
    },
    daemon::{kernel_addrs, kernel_ports},
    gate::{Gate, Protected},
};
use xknock_tests::{
    frames::{self, ACK, L4, SYN},
    netns::BpffsMount,
};

const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;
const LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const KNOCKER4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const OTHER4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
const KNOCKER6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
/// The door the flood part uses too, so both parts measure the same maps.
const CONFIG: &str = "\
[openSSH]
\tsequence    = 7000,8000,9000
\tseq_timeout = 5
\ttcpflags    = syn
\tcommand     = true
";
const GATED: Step = Step { port: 2222, proto: Proto::Tcp };
/// Runs per BPF_PROG_TEST_RUN call on the event path: just under the ring's
/// 16384 records (1 MiB of 64-byte records), so no run finds it full; the
/// ring is drained between calls. (Each call that starts on an empty ring
/// wakes the consumer once, and on this VM such a call stalls for a few
/// jiffies outside the timed region: fewer, larger calls keep the bench
/// short without changing what is timed.)
const EVENT_CHUNK: u32 = 16_000;

struct Args {
    rounds: usize,
    repeat: u32,
    /// Samples for the single-run "consumer caught up" classes.
    singles: usize,
}

fn args() -> Result<Args> {
    let mut a = Args { rounds: 21, repeat: 1_000_000, singles: 2001 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => a.rounds = val()?.parse()?,
            "--repeat" => a.repeat = val()?.parse()?,
            "--singles" => a.singles = val()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if a.rounds == 0 || a.repeat == 0 || a.singles == 0 {
        bail!("--rounds, --repeat and --singles must be positive");
    }
    Ok(a)
}

fn knocker(pins: Option<&std::path::Path>) -> Result<(XdpKnocker, RingBuf<MapData>)> {
    let cfg = config::parse_str(CONFIG, std::path::Path::new("bench.conf"))?;
    let mut k = XdpKnocker::load(pins).context("loading the XDP object")?;
    k.set_knock_ports(&kernel_ports(&cfg))?;
    let local = BTreeSet::from([IpAddr::V4(LOCAL4), IpAddr::V6(LOCAL6)]);
    k.set_addrs(&kernel_addrs(&local, &cfg.doors, false))?;
    let ring = k.take_events()?;
    Ok((k, ring))
}

/// Which loaded program a class runs on.
#[derive(Clone, Copy, PartialEq)]
enum Prog {
    Empty,
    Plain,
    Gated,
}

struct Class {
    key: &'static str,
    label: &'static str,
    prog: Prog,
    frame: Vec<u8>,
    verdict: u32,
    /// Emits an event per run: run in ring-sized chunks, drained between.
    event: bool,
    /// Counts toward the targets (the rest are shown for the discussion).
    samples: Vec<f64>,
}

fn v4(src: Ipv4Addr, l4: &L4) -> Vec<u8> {
    frames::ipv4(src, LOCAL4, l4, &[], 0, 0)
}

fn main() -> Result<()> {
    let args = args()?;
    let (mut plain, mut plain_ring) = knocker(None)?;
    let bpffs = BpffsMount::new()?;
    let (mut gated, mut gated_ring) = knocker(Some(&bpffs.0.join("pins")))?;
    let mut gate = gated.gate().map_err(|e| anyhow::anyhow!("{e}"))?;
    gate.install(&[Protected { door: "openSSH".into(), port: GATED }]).map_err(|e| anyhow::anyhow!("{e}"))?;
    gate.open("openSSH", IpAddr::V4(KNOCKER4), &[GATED], Duration::from_secs(3600))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Loads the empty program of the same object.
    plain.baseline()?;

    let syn = |port| L4::tcp(port, SYN);
    let mut classes = vec![
        Class {
            key: "empty",
            label: "empty XDP program",
            prog: Prog::Empty,
            frame: v4(KNOCKER4, &syn(22)),
            verdict: XDP_PASS,
            event: false,
            samples: vec![],
        },
        Class {
            key: "non_ip",
            label: "non-IP frame (ARP)",
            prog: Prog::Plain,
            frame: frames::arp(),
            verdict: XDP_PASS,
            event: false,
            samples: vec![],
        },
        Class {
            key: "miss",
            label: "IPv4 TCP, non-knock port (miss)",
            prog: Prog::Plain,
            frame: v4(OTHER4, &syn(22)),
            verdict: XDP_PASS,
            event: false,
            samples: vec![],
        },
        Class {
            key: "hit_v4",
            label: "IPv4 TCP knock hit + event",
            prog: Prog::Plain,
            frame: v4(KNOCKER4, &syn(7000)),
            verdict: XDP_PASS,
            event: true,
            samples: vec![],
        },
        Class {
            key: "hit_v6",
            label: "IPv6 TCP knock hit + event",
            prog: Prog::Plain,
            frame: frames::ipv6(KNOCKER6, LOCAL6, &syn(7000), &[], &[]),
            verdict: XDP_PASS,
            event: true,
            samples: vec![],
        },
        Class {
            key: "gate_drop",
            label: "gated port, no window: dropped",
            prog: Prog::Gated,
            frame: v4(OTHER4, &syn(GATED.port)),
            verdict: XDP_DROP,
            event: false,
            samples: vec![],
        },
        Class {
            key: "gate_pass",
            label: "gated port, window open: passed",
            prog: Prog::Gated,
            frame: v4(KNOCKER4, &syn(GATED.port)),
            verdict: XDP_PASS,
            event: false,
            samples: vec![],
        },
        Class {
            key: "miss_gate_on",
            label: "IPv4 TCP miss, gate on",
            prog: Prog::Gated,
            frame: v4(OTHER4, &syn(22)),
            verdict: XDP_PASS,
            event: false,
            samples: vec![],
        },
        Class {
            key: "flag_mismatch",
            label: "knock port, wrong flags (bare ACK)",
            prog: Prog::Plain,
            frame: v4(KNOCKER4, &L4::tcp(7000, ACK)),
            verdict: XDP_PASS,
            event: false,
            samples: vec![],
        },
        Class {
            key: "hit_ring_full",
            label: "knock hit, ring buffer full",
            prog: Prog::Gated,
            frame: v4(KNOCKER4, &syn(7000)),
            verdict: XDP_PASS,
            event: false,
            samples: vec![],
        },
    ];

    // The ring-full class runs on the gated program, whose ring we fill once
    // and never drain; its other classes emit no events.
    fill_ring(&gated, &classes.iter().find(|c| c.key == "hit_ring_full").unwrap().frame)?;
    let before = (plain.counters()?, gated.counters()?);

    for round in 0..args.rounds {
        let n = classes.len();
        for i in 0..n {
            // Rotate the order each round.
            let c = &mut classes[(i + round) % n];
            let prog: &Xdp = match c.prog {
                Prog::Empty => plain.baseline()?,
                Prog::Plain => plain.program()?,
                Prog::Gated => gated.program()?,
            };
            let ns = if c.event {
                let mut left = args.repeat;
                let mut total_ns = 0f64;
                while left > 0 {
                    let chunk = left.min(EVENT_CHUNK);
                    let r = run(prog, &c.frame, chunk)?;
                    check(c.key, r.return_value, c.verdict)?;
                    total_ns += r.duration.as_nanos() as f64 * chunk as f64;
                    left -= chunk;
                    drain(&mut plain_ring);
                }
                total_ns / args.repeat as f64
            } else {
                let r = run(prog, &c.frame, args.repeat)?;
                check(c.key, r.return_value, c.verdict)?;
                r.duration.as_nanos() as f64
            };
            c.samples.push(ns);
        }
    }
    let after = (plain.counters()?, gated.counters()?);

    // One run per call with the ring drained in between: the consumer has
    // always caught up, so every submit wakes it (as in a daemon that keeps
    // up with a trickle of knocks). Timer overhead is in both, so compare
    // with the empty program run the same way.
    let mut single_empty = Vec::new();
    let mut single_hit = Vec::new();
    let hit = classes.iter().find(|c| c.key == "hit_v4").unwrap().frame.clone();
    let empty_frame = classes[0].frame.clone();
    for _ in 0..args.singles {
        single_empty.push(run(plain.baseline()?, &empty_frame, 1)?.duration.as_nanos() as f64);
        single_hit.push(run(plain.program()?, &hit, 1)?.duration.as_nanos() as f64);
        drain(&mut plain_ring);
    }
    drain(&mut gated_ring);

    let d = |a: &Counters, b: &Counters| {
        serde_json::json!({
            "frames": b.frames - a.frames,
            "knock_hits": b.knock_hits - a.knock_hits,
            "flag_mismatch": b.flag_mismatch - a.flag_mismatch,
            "ringbuf_full": b.ringbuf_full - a.ringbuf_full,
            "not_local": b.not_local - a.not_local,
            "gate_drop": b.gate_drop - a.gate_drop,
            "gate_pass": b.gate_pass - a.gate_pass,
            "stealth_drop": b.stealth_drop - a.stealth_drop,
            "unclassified_drop": b.unclassified_drop - a.unclassified_drop,
        })
    };
    let out = serde_json::json!({
        "rounds": args.rounds,
        "repeat": args.repeat,
        "event_chunk": EVENT_CHUNK,
        "classes": classes.iter().map(|c| serde_json::json!({
            "key": c.key, "label": c.label, "samples_ns": c.samples,
        })).collect::<Vec<_>>(),
        "single_run": {
            "samples": args.singles,
            "empty_ns": single_empty,
            "hit_v4_ns": single_hit,
        },
        "counters_plain": d(&before.0, &after.0),
        "counters_gated": d(&before.1, &after.1),
    });
    println!("{out}");
    drop(gate);
    drop(gated);
    drop(bpffs);
    Ok(())
}

fn run(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<aya::programs::TestRunResult> {
    let opts = TestRunOptions { data_in: Some(frame), repeat, ..Default::default() };
    prog.test_run(opts).context("BPF_PROG_TEST_RUN")
}

fn check(key: &str, got: u32, want: u32) -> Result<()> {
    if got != want {
        bail!("{key}: verdict {got}, expected {want}");
    }
    Ok(())
}

fn drain(ring: &mut RingBuf<MapData>) -> usize {
    let mut n = 0;
    while ring.next().is_some() {
        n += 1;
    }
    n
}

/// Emits knocks until the ring buffer refuses one.
fn fill_ring(k: &XdpKnocker, frame: &[u8]) -> Result<()> {
    let full = |k: &XdpKnocker| k.counters().map(|c| c.ringbuf_full);
    let start = full(k)?;
    for _ in 0..64 {
        run(k.program()?, frame, 1024)?;
        if full(k)? > start {
            return Ok(());
        }
    }
    bail!("the ring buffer never filled");
}
