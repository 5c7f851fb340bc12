//! Differential fuzzer: generated and mutated frames through
//! BPF_PROG_TEST_RUN, each verdict compared with the reference model
//! (xknock_tests::model) of what Linux would deliver.
//!
//! Two copies of the program run every frame: one with a gate on
//! `fuzz::GATED` (no window open), one with no gate at all. Violations:
//! - gate on: a frame the model says could open a new connection to a gated
//!   port, or could become any connection (`Unknown`), is passed;
//! - no gate: any frame is dropped (nothing is stealthy here).
//!
//! Frames the model calls harmless but the gated program drops are counted
//! and reported by class, not failed.
//!
//! Usage: fuzz_xdp [--frames N] [--seed S]. Exits 1 on a violation, with the
//! frame in hex. Needs root (CAP_BPF, CAP_SYS_ADMIN for the bpffs mount);
//! loads programs, never attaches them.

#[path = "../tests/support/testrun.rs"]
mod testrun;

use std::{collections::BTreeMap, time::Instant};

use anyhow::{bail, Context, Result};
use testrun::{GatedRig, XDP_DROP, XDP_PASS};
use xknock::config::model::{Proto, Step};
use xknock_tests::{
    frames::TCP,
    fuzz::{sample, vlan_tags, Rng, Sample, GATED},
    model::{judge, Verdict},
};

/// Violations printed in full before the rest are only counted.
const SHOWN: usize = 10;

#[derive(Default)]
struct Tally {
    frames: u64,
    refused: u64,
    by_model: BTreeMap<&'static str, u64>,
    over_drops: BTreeMap<String, u64>,
    violations: BTreeMap<String, u64>,
}

fn main() -> Result<()> {
    let (frames, seed) = args()?;
    let steps: Vec<Step> = GATED
        .iter()
        .map(|&(proto, port)| Step { port, proto: if proto == TCP { Proto::Tcp } else { Proto::Udp } })
        .collect();
    let on = GatedRig::new(&steps)?;
    let mut off = GatedRig::new(&steps)?;
    off.set_gate(false)?;
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let started = Instant::now();
    for _ in 0..frames {
        let s = sample(&mut rng);
        check(&on, &off, &s, &mut tally);
    }
    report(&tally, seed, started.elapsed().as_secs_f64());
    let c = on.counters();
    println!("gated program counters: gate_drop {} unclassified_drop {}", c.gate_drop, c.unclassified_drop);
    if !tally.violations.is_empty() {
        bail!("{} violation(s)", tally.violations.values().sum::<u64>());
    }
    Ok(())
}

fn args() -> Result<(u64, u64)> {
    let mut frames = 1_000_000;
    let mut seed = 0x5eed_0008;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--frames" => frames = value.parse().context("--frames")?,
            "--seed" => seed = value.parse().context("--seed")?,
            _ => bail!("unknown argument {flag} (usage: fuzz_xdp [--frames N] [--seed S])"),
        }
    }
    Ok((frames, seed))
}

fn must_drop(v: Verdict) -> bool {
    match v {
        Verdict::Unknown(_) => true,
        Verdict::NewConn { proto, port } => GATED.contains(&(proto, port)),
        Verdict::Harmless(_) => false,
    }
}

fn check(on: &GatedRig, off: &GatedRig, s: &Sample, tally: &mut Tally) {
    tally.frames += 1;
    let Some(gated) = on.verdict(&s.frame) else {
        tally.refused += 1;
        return;
    };
    let ungated = off.verdict(&s.frame).expect("the same frame was accepted once");
    let model = judge(&s.frame);
    *tally.by_model.entry(model.class()).or_default() += 1;
    let must = must_drop(model);
    if must && gated != XDP_DROP {
        violation(tally, "passed with a gate", model, s);
    }
    if ungated != XDP_PASS {
        violation(tally, "dropped with no gate", model, s);
    }
    if !must && gated == XDP_DROP {
        // More tags than the program walks are dropped by design; keep
        // them apart so the other classes stand out.
        let why = match vlan_tags(&s.frame) {
            0..=2 => model.class().to_string(),
            _ => format!("{} (3+ VLAN tags)", model.class()),
        };
        *tally.over_drops.entry(why).or_default() += 1;
    }
}

fn violation(tally: &mut Tally, what: &str, model: Verdict, s: &Sample) {
    let key = format!("{what}: {} ({})", model.class(), s.origin);
    let classes = tally.violations.len();
    let seen = tally.violations.entry(key.clone()).or_default();
    *seen += 1;
    // The first frame of every class, and a second of the first few.
    if *seen == 1 || (classes <= SHOWN && *seen == 2) {
        let hex: String = s.frame.iter().map(|b| format!("{b:02x}")).collect();
        println!("VIOLATION {key}, mutations {:?}, model {model:?}\n  frame {hex}", s.mutations);
    }
}

fn report(t: &Tally, seed: u64, secs: f64) {
    println!(
        "fuzz: {} frames (seed {seed}) in {secs:.1} s; {} refused by the kernel (shorter than Ethernet)",
        t.frames, t.refused
    );
    println!("model classes:");
    for (class, n) in &t.by_model {
        println!("  {n:>9}  {class}");
    }
    let over: u64 = t.over_drops.values().sum();
    println!("harmless by the model but dropped with a gate: {over}");
    for (class, n) in &t.over_drops {
        println!("  {n:>9}  {class}");
    }
    println!("violations: {}", t.violations.values().sum::<u64>());
    for (class, n) in &t.violations {
        println!("  {n:>9}  {class}");
    }
}
