//! `cargo xtask bench [--quick]`: what xknock costs, and how it compares with
//! Debian's knockd 0.8 under the same flood.
//!
//! 1. Per-packet cost of the XDP program (BPF_PROG_TEST_RUN, medians over
//!    rounds, against the empty program of the same object).
//! 2. Floods over veth between two throwaway namespaces, side by side with
//!    knockd: sequences opened, CPU, softirq, drops, latency, memory; and
//!    the knock-to-open latency of `open:` doors on nftables and xdp, timed
//!    to the kernel state change.
//!
//! Writes `target/bench/{bench.md,bench.png,results.json}` and prints a
//! summary. `--quick` runs the same code paths in well under a minute and is
//! part of `cargo xtask test` as root; it asserts nothing about speed.
//! Everything runs inside namespaces this process creates; the host's own
//! interfaces and firewall are never touched.

pub(crate) mod bpfmap;
mod chart;
pub(crate) mod flood;
mod report;
mod rig;
mod scenario;
mod stats;
mod targets;
mod testrun;
mod watch;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::{bin_dir, build, is_root, setup, workspace_root};
use flood::Shape;
use rig::{Kind, Rig};
use scenario::{Case, FloodRun, MemRun, Params};

/// Sizes of one bench run.
pub struct Plan {
    pub quick: bool,
    pub testrun: testrun::Sizes,
    pub flood: Params,
    pub trials: usize,
    pub cases: Vec<Case>,
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
                cases: cases(),
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
                cases: cases(),
                variants: true,
                mem_phase: Duration::from_secs(5),
            }
        }
    }
}

/// Shapes (a) and (b) with knock's timing; (c) with it and with 200 ms
/// between knocks (a first step that waits in the kernel while the flood
/// runs); (s) junk to an SPA port with real fwknop packets. `XKNOCK_BENCH_SHAPES`
/// (e.g. `s` or `a,c`) keeps only those shapes and skips the memory run.
fn cases() -> Vec<Case> {
    let all = vec![
        Case::new(Shape::KnockRange, 0),
        Case::new(Shape::NonKnock, 0),
        Case::new(Shape::FirstStep, 0),
        Case::new(Shape::FirstStep, SLOW_KNOCK_MS),
        Case::new(Shape::SpaJunk, 0),
    ];
    match only_shapes() {
        Some(keys) => all.into_iter().filter(|c| keys.iter().any(|k| k == c.shape.key())).collect(),
        None => all,
    }
}

fn only_shapes() -> Option<Vec<String>> {
    let v = std::env::var("XKNOCK_BENCH_SHAPES").ok().filter(|v| !v.trim().is_empty())?;
    Some(v.split(',').map(|k| k.trim().to_string()).collect())
}

/// `knock -d 200` / `xknock -d 200`.
pub const SLOW_KNOCK_MS: u64 = 200;

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
        for &case in &plan.cases {
            flood_case(&rig, &plan, case, trial, &mut floods)?;
        }
    }

    let mut mem = Vec::new();
    if only_shapes().is_none() {
        say(&format!("memory: spoofed first-step flood, 2 x {} s", plan.mem_phase.as_secs_f64()));
        let ours = scenario::mem_run(&rig, Kind::Xknockd, plan.mem_phase, None, plan.flood.threads)?;
        let pace = Some(ours.sent[0] as f64 / plan.mem_phase.as_secs_f64());
        mem.push(ours);
        mem.push(scenario::mem_run(&rig, Kind::Knockd, plan.mem_phase, pace, plan.flood.threads)?);
    }
    drop(rig);
    if plan.quick {
        spa_ran(&plan, &floods)?;
    }

    let results = Results { plan, release, testrun: tr, floods, mem, wall: t0.elapsed() };
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    report::write(&results, &dir)?;
    Ok(())
}

/// One case of one trial: xknockd as fast as the generator goes, then the
/// others at the rate it reached.
fn flood_case(rig: &Rig, plan: &Plan, case: Case, trial: usize, floods: &mut Vec<FloodRun>) -> Result<()> {
    let mut run = |kind: Kind, pace: Option<f64>| -> Result<f64> {
        let r = scenario::flood_run(rig, kind, case, trial, pace, &plan.flood)?;
        progress(&r);
        let rate = r.gen.rate();
        floods.push(r);
        Ok(rate)
    };
    // knockd has no SPA: shape (s) is xknockd's alone.
    if case.shape == Shape::SpaJunk {
        run(Kind::XknockdSpa, None)?;
        return Ok(());
    }
    let pace = Some(run(Kind::Xknockd, None)?);
    run(Kind::Knockd, pace)?;
    let mut kinds = Vec::new();
    match case.shape {
        // Without knockd's log lines, and with XDP forced native.
        Shape::KnockRange if plan.variants => kinds.extend([Kind::XknockdQuiet, Kind::XknockdNative]),
        Shape::NonKnock => {
            if plan.variants {
                kinds.push(Kind::XknockdNative);
            }
            // Where the softirq goes: the veth alone, then with an empty XDP
            // program, at the same rate.
            kinds.extend([Kind::Bare, Kind::EmptyXdp]);
        }
        // `open:` doors, timed to the kernel state change.
        Shape::FirstStep if case.delay_ms == 0 => kinds.extend([Kind::XknockdNft, Kind::XknockdXdp]),
        _ => {}
    }
    for kind in kinds {
        run(kind, pace)?;
    }
    Ok(())
}

/// `--quick` asserts nothing about speed, only that shape (s) really ran:
/// the junk went out, every fwknop packet was sent, and the kernel handed
/// SPA candidates to the daemon.
fn spa_ran(plan: &Plan, floods: &[FloodRun]) -> Result<()> {
    if !plan.cases.iter().any(|c| c.shape == Shape::SpaJunk) {
        return Ok(());
    }
    let Some(r) = floods.iter().find(|f| f.kind == Kind::XknockdSpa) else {
        bail!("shape (s) did not run");
    };
    let captured = r.counters.map_or(0, |c| c.get(knockd_common::counter::SPA_CAPTURED));
    if r.gen.sent == 0
        || r.sent_sequences != plan.flood.sequences
        || captured == 0
        || r.spa_accepted.is_none()
    {
        bail!(
            "shape (s) did not run as planned: {} junk frames, {}/{} fwknop packets sent, spa_captured {captured}",
            r.gen.sent,
            r.sent_sequences,
            plan.flood.sequences
        );
    }
    Ok(())
}

fn progress(r: &FloodRun) {
    say(&format!(
        "  trial {} shape {:<8} {:<14} {:>5.2} Mpps, delivered {:>9}, opened {}/{}, daemon CPU {:.2} s, softirq {:.2} s",
        r.trial + 1,
        r.case.key(),
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
