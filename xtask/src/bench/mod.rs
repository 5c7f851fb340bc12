//! `cargo xtask bench [--quick]`: what xknock costs, and how it compares with
//! Debian's knockd 0.8 under the same flood.
//!
//! 1. Per-packet cost of the XDP program (BPF_PROG_TEST_RUN, medians over
//!    rounds, against the empty program of the same object).
//! 2. Floods over veth between two throwaway namespaces, side by side with
//!    knockd: sequences opened, CPU, softirq, drops, latency, memory.
//!
//! Writes `target/bench/{bench.md,bench.png,results.json}` and prints a
//! summary. `--quick` runs the same code paths in well under a minute and is
//! part of `cargo xtask test` as root; it asserts nothing about speed.
//! Everything runs inside namespaces this process creates; the host's own
//! interfaces and firewall are never touched.

mod bpfmap;
mod flood;
mod report;
mod rig;
mod scenario;
mod stats;
mod testrun;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::{bin_dir, build, is_root, setup, workspace_root};
use flood::Shape;
use rig::{Kind, Rig};
use scenario::{FloodRun, MemRun, Params};

/// Sizes of one bench run.
pub struct Plan {
    pub quick: bool,
    pub testrun: testrun::Sizes,
    pub flood: Params,
    pub trials: usize,
    pub shapes: Vec<Shape>,
    /// Also run xknockd with logging off (shape a: what knockd's per-knock
    /// log lines cost) and in native mode (where the veth drops frames; the
    /// default `auto` attaches in skb mode on veth).
    pub variants: bool,
    pub mem_phase: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let threads = 2;
        if quick {
            Plan {
                quick,
                testrun: testrun::Sizes { rounds: 3, repeat: 100_000, singles: 201 },
                flood: Params {
                    duration: Duration::from_millis(2500),
                    sequences: 3,
                    idle_sequences: 1,
                    settle_max: Duration::from_secs(2),
                    threads,
                },
                trials: 1,
                shapes: vec![Shape::KnockRange, Shape::NonKnock],
                variants: false,
                mem_phase: Duration::from_secs(1),
            }
        } else {
            Plan {
                quick,
                testrun: testrun::Sizes { rounds: 21, repeat: 1_000_000, singles: 2001 },
                flood: Params {
                    duration: Duration::from_secs(8),
                    sequences: 20,
                    idle_sequences: 2,
                    settle_max: Duration::from_secs(8),
                    threads,
                },
                trials: 3,
                shapes: vec![Shape::KnockRange, Shape::NonKnock],
                variants: true,
                mem_phase: Duration::from_secs(5),
            }
        }
    }
}

pub struct Results {
    pub plan: Plan,
    pub release: bool,
    pub testrun: testrun::TestRun,
    pub floods: Vec<FloodRun>,
    pub mem: Vec<MemRun>,
    pub wall: Duration,
}

/// `cargo xtask bench`. `from_test`: called at the end of `cargo xtask test`,
/// which has already run setup and built the debug binaries.
pub fn run(quick: bool, from_test: bool) -> Result<()> {
    if !is_root() {
        bail!("the bench loads XDP programs and creates network namespaces: run it as root");
    }
    let t0 = Instant::now();
    if !from_test {
        setup::run()?;
    }
    setup::ensure_packages(setup::BENCH_PACKAGES)?;
    // The full bench measures release builds; --quick only keeps the paths alive.
    let release = !quick;
    build(release)?;
    let plan = Plan::new(quick);
    let bins = bin_dir(release);

    say(&format!(
        "per-packet cost: {} rounds x {} runs per class (BPF_PROG_TEST_RUN)",
        plan.testrun.rounds, plan.testrun.repeat
    ));
    let tr = testrun::run(release, &plan.testrun)?;

    let rig = Rig::new(&bins)?;
    say(&format!(
        "floods over veth {} -> {} ({} s each, {} knock sequences per run, {} trial(s))",
        rig.pair.client_if,
        rig.pair.server_if,
        plan.flood.duration.as_secs_f64(),
        plan.flood.sequences,
        plan.trials
    ));
    let mut floods = Vec::new();
    for trial in 0..plan.trials {
        for &shape in &plan.shapes {
            // xknockd as fast as the generator goes; the others at its rate.
            let ours = scenario::flood_run(&rig, Kind::Xknockd, shape, trial, None, &plan.flood)?;
            let pace = Some(ours.gen.rate());
            progress(&ours);
            floods.push(ours);
            let theirs = scenario::flood_run(&rig, Kind::Knockd, shape, trial, pace, &plan.flood)?;
            progress(&theirs);
            floods.push(theirs);
            if plan.variants {
                // Same rate: without knockd's log lines, and with XDP forced native.
                let mut kinds = vec![Kind::XknockdNative];
                if shape == Shape::KnockRange {
                    kinds.insert(0, Kind::XknockdQuiet);
                }
                for kind in kinds {
                    let run = scenario::flood_run(&rig, kind, shape, trial, pace, &plan.flood)?;
                    progress(&run);
                    floods.push(run);
                }
            }
            if shape == Shape::NonKnock {
                // Where the softirq goes: the veth alone, then with an empty
                // XDP program, at the same rate.
                for kind in [Kind::Bare, Kind::EmptyXdp] {
                    let run = scenario::flood_run(&rig, kind, shape, trial, pace, &plan.flood)?;
                    progress(&run);
                    floods.push(run);
                }
            }
        }
    }

    say(&format!("memory: spoofed first-knock flood, 2 x {} s", plan.mem_phase.as_secs_f64()));
    let mut mem = Vec::new();
    let ours = scenario::mem_run(&rig, Kind::Xknockd, plan.mem_phase, None, plan.flood.threads)?;
    let pace = Some(ours.sent[0] as f64 / plan.mem_phase.as_secs_f64());
    mem.push(ours);
    mem.push(scenario::mem_run(&rig, Kind::Knockd, plan.mem_phase, pace, plan.flood.threads)?);
    drop(rig);

    let results = Results { plan, release, testrun: tr, floods, mem, wall: t0.elapsed() };
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    report::write(&results, &dir)?;
    Ok(())
}

fn progress(r: &FloodRun) {
    say(&format!(
        "  trial {} shape {} {:<13} {:>5.2} Mpps, delivered {:>9}, opened {}/{}, daemon CPU {:.2} s, softirq {:.2} s",
        r.trial + 1,
        r.shape.key(),
        r.kind.key(),
        r.gen.rate() / 1e6,
        r.delivered(),
        r.opened,
        r.sent_sequences,
        r.daemon_cpu_s,
        r.sys.softirq
    ));
}

pub fn say(msg: &str) {
    println!("bench: {msg}");
}
