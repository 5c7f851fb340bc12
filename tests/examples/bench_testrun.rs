//! `cargo xtask bench`, part 1: the XDP program's cost per packet, measured
//! in the kernel with BPF_PROG_TEST_RUN on hand-built frames, against the
//! empty XDP program (`xknock_empty`) from the same object, loaded in the same
//! process. Every class runs once per round, in a rotating order, so slow
//! drift (frequency, noisy neighbours) hits all classes alike; the report
//! quotes medians over rounds.
//!
//! Three copies of the program are loaded: `plain` never sees a knock, so its
//! miss path runs with no attempt in progress anywhere; `steps` takes the
//! knock classes (first steps kept in the kernel, pairs, the sweep guard);
//! `gated` has a gate installed. Classes that need kernel maps this build
//! lacks (found by name among the process's bpf map fds) are reported as
//! unavailable instead of failing.
//!
//! Usage: bench_testrun [--rounds N] [--repeat M] [--singles K]   (JSON on stdout)
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
use knockd_common::{KnockEvent, RING_BYTES};
use xknock::{
    bpf::{Counters, XdpKnocker},
    config::{
        self,
        model::{Proto, Step},
    },
    daemon::{kernel_addrs, kernel_ports, kernel_steps},
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
/// The door the flood part uses too, so both parts measure the same maps,
/// and a single-step door, whose knocks the kernel reports at once.
const CONFIG: &str = "\
[openSSH]
\tsequence    = 7000,8000,9000
\tseq_timeout = 5
\ttcpflags    = syn
\tcommand     = true

[single]
\tsequence    = 7500
\tseq_timeout = 5
\ttcpflags    = syn
\tcommand     = true
";
const SINGLE_STEP: u16 = 7500;
const GATED: Step = Step { port: 2222, proto: Proto::Tcp };
/// Runs per BPF_PROG_TEST_RUN call on the event path: 15/16 of what the ring
/// holds (each record is the event plus an 8-byte header), so no run finds
/// it full; the ring is drained between calls. (Each call that starts on an
/// empty ring wakes the consumer once, and on this VM such a call stalls for
/// a few jiffies outside the timed region: fewer, larger calls keep the
/// bench short without changing what is timed.)
const EVENT_CHUNK: u32 = RING_BYTES / (std::mem::size_of::<KnockEvent>() as u32 + 8) / 16 * 15;

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
    // What the daemon writes: the doors per knock port and the sweep limit.
    k.set_step_doors(&kernel_steps(&cfg).ports)?;
    k.set_sweep_limit(cfg.options.sweep_limit)?;
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
    Steps,
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
    /// Run once, untimed, right before each timed call: the state the class
    /// needs (an attempt in progress).
    prime: Option<Vec<u8>>,
    /// A kernel map the class needs.
    needs: Option<&'static str>,
    samples: Vec<f64>,
}

impl Class {
    fn new(key: &'static str, label: &'static str, prog: Prog, frame: Vec<u8>) -> Self {
        Self {
            key,
            label,
            prog,
            frame,
            verdict: XDP_PASS,
            event: false,
            prime: None,
            needs: None,
            samples: vec![],
        }
    }

    fn verdict(mut self, v: u32) -> Self {
        self.verdict = v;
        self
    }

    fn event(mut self) -> Self {
        self.event = true;
        self
    }

    fn primed(mut self, frame: Vec<u8>) -> Self {
        self.prime = Some(frame);
        self
    }

    fn needs(mut self, map: &'static str) -> Self {
        self.needs = Some(map);
        self
    }
}

fn v4(src: Ipv4Addr, l4: &L4) -> Vec<u8> {
    frames::ipv4(src, LOCAL4, l4, &[], 0, 0)
}

fn classes() -> Vec<Class> {
    let syn = |port| L4::tcp(port, SYN);
    let first = v4(KNOCKER4, &syn(7000));
    vec![
        Class::new("empty", "empty XDP program", Prog::Empty, v4(KNOCKER4, &syn(22))),
        Class::new("non_ip", "non-IP frame (ARP)", Prog::Plain, frames::arp()),
        Class::new(
            "miss",
            "IPv4 TCP, non-knock port, nothing in progress (miss)",
            Prog::Plain,
            v4(OTHER4, &syn(22)),
        ),
        Class::new(
            "first_step",
            "IPv4 first step, kept in the kernel (no event)",
            Prog::Steps,
            first.clone(),
        )
        .needs("FIRST_STEP"),
        Class::new(
            "orphan_step",
            "IPv4 second step, unknown source (no event)",
            Prog::Steps,
            v4(OTHER4, &syn(8000)),
        )
        .needs("FIRST_STEP"),
        Class::new(
            "sweep_lookup",
            "SYN to a non-knock port, another source's attempt in progress (sweep lookup)",
            Prog::Steps,
            v4(OTHER4, &syn(22)),
        )
        .primed(first.clone())
        .needs("SWEEP"),
        Class::new(
            "sweep_count",
            "SYN to a non-knock port from a source in the middle of an attempt (counted)",
            Prog::Steps,
            v4(KNOCKER4, &syn(22)),
        )
        .primed(first)
        .needs("SWEEP"),
        Class::new(
            "hit_v4",
            "IPv4 TCP knock hit + event (single-step door)",
            Prog::Steps,
            v4(KNOCKER4, &syn(SINGLE_STEP)),
        )
        .event(),
        Class::new(
            "hit_v6",
            "IPv6 TCP knock hit + event (single-step door)",
            Prog::Steps,
            frames::ipv6(KNOCKER6, LOCAL6, &syn(SINGLE_STEP), &[], &[]),
        )
        .event(),
        Class::new("gate_drop", "gated port, no window: dropped", Prog::Gated, v4(OTHER4, &syn(GATED.port)))
            .verdict(XDP_DROP),
        Class::new(
            "gate_pass",
            "gated port, window open: passed",
            Prog::Gated,
            v4(KNOCKER4, &syn(GATED.port)),
        ),
        Class::new("miss_gate_on", "IPv4 TCP miss, gate on", Prog::Gated, v4(OTHER4, &syn(22))),
        Class::new(
            "flag_mismatch",
            "knock port, wrong flags (bare ACK)",
            Prog::Plain,
            v4(KNOCKER4, &L4::tcp(7000, ACK)),
        ),
        Class::new(
            "hit_ring_full",
            "knock hit, ring buffer full",
            Prog::Gated,
            v4(KNOCKER4, &syn(SINGLE_STEP)),
        ),
    ]
}

/// The three loaded programs and their rings.
struct Progs {
    plain: (XdpKnocker, RingBuf<MapData>),
    steps: (XdpKnocker, RingBuf<MapData>),
    gated: (XdpKnocker, RingBuf<MapData>),
}

impl Progs {
    fn knocker(&self, p: Prog) -> &XdpKnocker {
        match p {
            Prog::Empty | Prog::Plain => &self.plain.0,
            Prog::Steps => &self.steps.0,
            Prog::Gated => &self.gated.0,
        }
    }

    fn prog(&mut self, p: Prog) -> Result<&Xdp> {
        Ok(match p {
            Prog::Empty => self.plain.0.baseline()?,
            _ => self.knocker(p).program()?,
        })
    }

    /// Drains the ring of `p` (not the gated one, kept full on purpose).
    fn drain(&mut self, p: Prog) -> usize {
        match p {
            Prog::Empty | Prog::Plain => drain(&mut self.plain.1),
            Prog::Steps => drain(&mut self.steps.1),
            Prog::Gated => 0,
        }
    }
}

/// One timed sample of `c`: the kernel's mean ns per run, and the events
/// the class left in its ring.
fn sample(progs: &mut Progs, c: &Class, repeat: u32) -> Result<(f64, usize)> {
    if let Some(frame) = &c.prime {
        run(progs.prog(c.prog)?, frame, 1)?;
    }
    let mut events = progs.drain(c.prog);
    if !c.event {
        let r = run(progs.prog(c.prog)?, &c.frame, repeat)?;
        check(c.key, r.return_value, c.verdict)?;
        return Ok((r.duration.as_nanos() as f64, progs.drain(c.prog)));
    }
    let mut left = repeat;
    let mut total_ns = 0f64;
    while left > 0 {
        let chunk = left.min(EVENT_CHUNK);
        let r = run(progs.prog(c.prog)?, &c.frame, chunk)?;
        check(c.key, r.return_value, c.verdict)?;
        total_ns += r.duration.as_nanos() as f64 * chunk as f64;
        left -= chunk;
        events += progs.drain(c.prog);
    }
    Ok((total_ns / repeat as f64, events))
}

fn main() -> Result<()> {
    let args = args()?;
    let mut plain = knocker(None)?;
    let steps = knocker(None)?;
    let bpffs = BpffsMount::new()?;
    let mut gated = knocker(Some(&bpffs.0.join("pins")))?;
    let mut gate = gated.0.gate().map_err(|e| anyhow::anyhow!("{e}"))?;
    gate.install(&[Protected { door: "openSSH".into(), port: GATED }]).map_err(|e| anyhow::anyhow!("{e}"))?;
    gate.open("openSSH", IpAddr::V4(KNOCKER4), &[GATED], Duration::from_secs(3600))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Loads the empty program of the same object.
    plain.0.baseline()?;
    let mut progs = Progs { plain, steps, gated };
    let maps = own_map_names()?;

    let (mut classes, unavailable): (Vec<Class>, Vec<Class>) =
        classes().into_iter().partition(|c| c.needs.is_none_or(|m| maps.contains(m)));

    // The ring-full class runs on the gated program, whose ring we fill once
    // and never drain; its other classes emit no events.
    fill_ring(&progs.gated.0, &classes.iter().find(|c| c.key == "hit_ring_full").unwrap().frame)?;
    let before = [Prog::Plain, Prog::Steps, Prog::Gated].map(|p| progs.knocker(p).counters());
    let mut first_step_events = 0;

    for round in 0..args.rounds {
        let n = classes.len();
        for i in 0..n {
            // Rotate the order each round.
            let c = &mut classes[(i + round) % n];
            let (ns, events) = sample(&mut progs, c, args.repeat)?;
            if c.key == "first_step" {
                first_step_events += events;
            }
            c.samples.push(ns);
        }
    }
    let after = [Prog::Plain, Prog::Steps, Prog::Gated].map(|p| progs.knocker(p).counters());

    // One run per call with the ring drained in between: the consumer has
    // always caught up, so every submit wakes it (as in a daemon that keeps
    // up with a trickle of knocks). Timer overhead is in both, so compare
    // with the empty program run the same way.
    let mut single_empty = Vec::new();
    let mut single_hit = Vec::new();
    let hit = classes.iter().find(|c| c.key == "hit_v4").unwrap().frame.clone();
    let empty_frame = classes[0].frame.clone();
    for _ in 0..args.singles {
        single_empty.push(run(progs.prog(Prog::Empty)?, &empty_frame, 1)?.duration.as_nanos() as f64);
        single_hit.push(run(progs.prog(Prog::Steps)?, &hit, 1)?.duration.as_nanos() as f64);
        progs.drain(Prog::Steps);
    }
    drain(&mut progs.gated.1);

    let delta = |i: usize| -> Result<serde_json::Value> {
        let err = |e: &xknock::bpf::BpfError| anyhow::anyhow!("reading counters: {e}");
        Ok(counter_delta(before[i].as_ref().map_err(err)?, after[i].as_ref().map_err(err)?))
    };
    let out = serde_json::json!({
        "rounds": args.rounds,
        "repeat": args.repeat,
        "event_chunk": EVENT_CHUNK,
        "classes": classes.iter().map(|c| serde_json::json!({
            "key": c.key, "label": c.label, "samples_ns": c.samples,
        })).collect::<Vec<_>>(),
        "unavailable": unavailable.iter().map(|c| serde_json::json!({
            "key": c.key, "label": c.label,
            "why": format!("n/a (kernel lacks {})", c.needs.unwrap_or("?")),
        })).collect::<Vec<_>>(),
        "first_step_events": classes.iter().any(|c| c.key == "first_step").then_some(first_step_events),
        "kernel_maps": maps,
        "single_run": {
            "samples": args.singles,
            "empty_ns": single_empty,
            "hit_v4_ns": single_hit,
        },
        "counters_plain": delta(0)?,
        "counters_steps": delta(1)?,
        "counters_gated": delta(2)?,
    });
    println!("{out}");
    drop(gate);
    drop(progs);
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

fn counter_delta(a: &Counters, b: &Counters) -> serde_json::Value {
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
        "first_step": b.first_step - a.first_step,
        "pairs": b.pairs - a.pairs,
        "orphan_step": b.orphan_step - a.orphan_step,
        "sweep_counted": b.sweep_counted - a.sweep_counted,
        "sweep_dropped": b.sweep_dropped - a.sweep_dropped,
        "active_full": b.active_full - a.active_full,
    })
}

/// Names of the bpf maps this process holds, as the kernel has them (aya
/// names each map after its symbol, cut to 15 bytes).
fn own_map_names() -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let is_map =
            std::fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-map");
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if is_map {
            names.insert(map_name(fd)?);
        }
    }
    Ok(names)
}

fn map_name(fd: i32) -> Result<String> {
    // struct bpf_map_info: type, id, key_size, value_size, max_entries,
    // map_flags (6 x u32), then char name[16].
    let mut info = [0u64; 12];
    let mut attr = [0u64; 16];
    attr[0] = fd as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: `attr` is a zeroed, 8-aligned bpf_attr and `info` outlives the
    // call; the kernel writes at most the size we pass.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_mut_ptr(), std::mem::size_of_val(&attr))
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_OBJ_GET_INFO_BY_FD");
    }
    let bytes: Vec<u8> = info.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let name = &bytes[24..40];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}
