//! The bench's outputs: `bench.md`, `bench.png` (gnuplot), `results.json`,
//! and the summary printed at the end.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context, Result};
use knockd_common::counter;

use super::{
    flood::Shape,
    rig::Kind,
    scenario::{FloodRun, MemRun},
    stats::{median, percentile},
    Results,
};

/// xknockd's default `max_sources` (knockd-user's DEFAULT_MAX_SOURCES).
const TRACKER_CAP: u64 = 65_536;
const HIT_TARGET_NS: f64 = 60.0;
const MISS_TARGET_RATIO: f64 = 2.0;
const P99_TARGET_MS: f64 = 2.0;
const CPU_TARGET_RATIO: f64 = 0.1;

pub fn write(r: &Results, dir: &Path) -> Result<()> {
    let verdicts = verdicts(r);
    let md = markdown(r, &verdicts);
    std::fs::write(dir.join("bench.md"), &md)?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&json(r))?)?;
    let chart = match chart(r, dir) {
        Ok(()) => format!("{}", dir.join("bench.png").display()),
        Err(e) => format!("not drawn: {e:#}"),
    };
    println!();
    print!("{}", summary(r, &verdicts));
    println!();
    println!("bench: report {}", dir.join("bench.md").display());
    println!("bench: chart  {chart}");
    println!("bench: data   {}", dir.join("results.json").display());
    Ok(())
}

// ---------------------------------------------------------------- aggregates

/// One daemon under one flood shape, over every trial.
struct Agg<'a> {
    runs: Vec<&'a FloodRun>,
}

impl<'a> Agg<'a> {
    fn of(r: &'a Results, kind: Kind, shape: Shape) -> Self {
        Agg { runs: r.floods.iter().filter(|f| f.kind == kind && f.shape == shape).collect() }
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    fn med(&self, f: impl Fn(&FloodRun) -> f64) -> f64 {
        median(&self.runs.iter().map(|r| f(r)).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    }

    fn sum(&self, f: impl Fn(&FloodRun) -> u64) -> u64 {
        self.runs.iter().map(|r| f(r)).sum()
    }

    fn sent(&self) -> usize {
        self.runs.iter().map(|r| r.sent_sequences).sum()
    }

    fn opened(&self) -> usize {
        self.runs.iter().map(|r| r.opened).sum()
    }

    fn opened_pct(&self) -> f64 {
        100.0 * self.opened() as f64 / self.sent().max(1) as f64
    }

    fn latencies(&self) -> Vec<f64> {
        self.runs.iter().flat_map(|r| r.latencies_ms.iter().copied()).collect()
    }

    fn idle_latencies(&self) -> Vec<f64> {
        self.runs.iter().flat_map(|r| r.idle_latencies_ms.iter().copied()).collect()
    }

    fn counter(&self, index: u32) -> Option<u64> {
        self.runs.iter().map(|r| r.counters.map(|c| c.get(index))).sum()
    }

    fn cpu_per_mpkt(&self) -> f64 {
        self.med(FloodRun::cpu_per_mpkt)
    }
}

fn ratio_cpu(r: &Results, shape: Shape) -> Option<f64> {
    let ours = Agg::of(r, Kind::Xknockd, shape);
    let theirs = Agg::of(r, Kind::Knockd, shape);
    if ours.is_empty() || theirs.is_empty() {
        return None;
    }
    let t = theirs.cpu_per_mpkt();
    (t > 0.0).then(|| ours.cpu_per_mpkt() / t)
}

// ------------------------------------------------------------------ verdicts

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Met,
    Missed,
    NotShown,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::NotShown => "not shown",
        }
    }
}

struct Target {
    name: &'static str,
    verdict: Verdict,
    evidence: String,
}

fn verdicts(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    let tr = &r.testrun;

    // 1. Every sequence opened, in both shapes.
    let mut ev = Vec::new();
    let mut all = true;
    for shape in [Shape::KnockRange, Shape::NonKnock] {
        let a = Agg::of(r, Kind::Xknockd, shape);
        if a.is_empty() {
            continue;
        }
        all &= a.sent() > 0 && a.opened() == a.sent();
        let k = Agg::of(r, Kind::Knockd, shape);
        let native = Agg::of(r, Kind::XknockdNative, shape);
        let native = if native.is_empty() {
            String::new()
        } else {
            format!(", xknockd --xdp-mode native {}/{}", native.opened(), native.sent())
        };
        ev.push(format!(
            "shape {}: {}/{} (knockd {}/{}{native}) at {:.2} Mpps",
            shape.key(),
            a.opened(),
            a.sent(),
            k.opened(),
            k.sent(),
            a.med(|f| f.gen.rate()) / 1e6
        ));
    }
    out.push(Target {
        name: "100% of knock sequences opened under flood, both shapes",
        verdict: if all { Verdict::Met } else { Verdict::Missed },
        evidence: ev.join("; "),
    });

    // 2. CPU per million flood packets <= 1/10 of knockd's.
    let mut ev = Vec::new();
    let mut verdict = Verdict::Met;
    for shape in [Shape::KnockRange, Shape::NonKnock] {
        let a = Agg::of(r, Kind::Xknockd, shape);
        let k = Agg::of(r, Kind::Knockd, shape);
        if a.is_empty() || k.is_empty() {
            continue;
        }
        let (ours, theirs) = (a.cpu_per_mpkt(), k.cpu_per_mpkt());
        // An idle daemon (a few ticks of housekeeping per run) is no cost to compare.
        let idle = 0.05;
        let part = if a.med(|f| f.daemon_cpu_s) <= idle && k.med(|f| f.daemon_cpu_s) <= idle {
            format!(
                "shape {}: both daemons idle ({:.2} vs {:.2} s per run: no knock reaches xknockd, knockd's capture filter drops these in the kernel)",
                shape.key(),
                a.med(|f| f.daemon_cpu_s),
                k.med(|f| f.daemon_cpu_s)
            )
        } else {
            let ratio = ours / theirs.max(1e-12);
            if ratio > CPU_TARGET_RATIO {
                verdict = Verdict::Missed;
            }
            format!("shape {}: {:.3} vs {:.3} s/Mpkt = {:.2}x", shape.key(), ours, theirs, ratio)
        };
        ev.push(format!(
            "{part}; softirq {:.3} vs {:.3} s/Mpkt",
            a.med(FloodRun::softirq_per_mpkt),
            k.med(FloodRun::softirq_per_mpkt)
        ));
    }
    out.push(Target {
        name: "daemon CPU per million flood packets <= 1/10 of knockd's",
        verdict,
        evidence: ev.join("; "),
    });

    // 3. Miss path <= 2x empty.
    let empty = tr.empty();
    let miss = tr.class("miss").map_or(f64::NAN, |c| c.median());
    out.push(Target {
        name: "miss path <= 2x the empty XDP program",
        verdict: if miss <= MISS_TARGET_RATIO * empty { Verdict::Met } else { Verdict::Missed },
        evidence: format!("{miss:.1} ns vs {empty:.1} ns = {:.2}x", miss / empty),
    });

    // 4. Hit with event <= 60 ns.
    let hit = tr.class("hit_v4").map_or(f64::NAN, |c| c.median());
    let hit6 = tr.class("hit_v6").map_or(f64::NAN, |c| c.median());
    out.push(Target {
        name: "knock hit with its event <= 60 ns median",
        verdict: if hit <= HIT_TARGET_NS { Verdict::Met } else { Verdict::Missed },
        evidence: format!("IPv4 {hit:.1} ns, IPv6 {hit6:.1} ns (empty {empty:.1} ns)"),
    });

    // 5. Latency p99 <= 2 ms under flood.
    let mut lat = Vec::new();
    let mut ev = Vec::new();
    for shape in [Shape::KnockRange, Shape::NonKnock] {
        let a = Agg::of(r, Kind::Xknockd, shape);
        let l = a.latencies();
        if let (Some(p50), Some(p99)) = (percentile(&l, 50.0), percentile(&l, 99.0)) {
            ev.push(format!("shape {}: p50 {p50:.2} ms, p99 {p99:.2} ms (n={})", shape.key(), l.len()));
        }
        lat.extend(l);
    }
    let p99 = percentile(&lat, 99.0);
    out.push(Target {
        name: "knock-to-open latency p99 <= 2 ms under flood",
        verdict: match p99 {
            Some(p) if p <= P99_TARGET_MS => Verdict::Met,
            Some(_) => Verdict::Missed,
            None => Verdict::NotShown,
        },
        evidence: ev.join("; "),
    });

    // 6. RSS bounded by the tracker cap.
    let (verdict, evidence) = match r.mem.iter().find(|m| m.kind == Kind::Xknockd) {
        Some(m) => mem_verdict(m),
        None => (Verdict::NotShown, "no memory run".into()),
    };
    out.push(Target {
        name: "RSS bounded by the tracker cap under a spoofed-source flood",
        verdict,
        evidence,
    });
    out
}

fn mem_verdict(m: &MemRun) -> (Verdict, String) {
    let events = m.counters.map_or(0, |c| c.get(counter::KNOCK_HITS));
    let growth1 = m.rss_phase1_kb as f64 - m.rss_idle_kb as f64;
    let growth2 = m.rss_phase2_kb as f64 - m.rss_phase1_kb as f64;
    let text = format!(
        "{events} new sources delivered (cap {TRACKER_CAP}); VmRSS {:.1} MB idle, {:.1} MB after phase 1, {:.1} MB after phase 2 ({:+.1} MB)",
        mb(m.rss_idle_kb),
        mb(m.rss_phase1_kb),
        mb(m.rss_phase2_kb),
        growth2 / 1024.0
    );
    // The second phase must push at least a cap's worth of new sources
    // through a full tracker (its evictions say so), and add next to nothing.
    let pushed = match m.tracker {
        [Some((_, e1)), Some((_, e2))] => e2.saturating_sub(e1),
        _ => events / 2,
    };
    let text = format!("{text}; phase 2 evicted {pushed} sources");
    if pushed < TRACKER_CAP {
        return (Verdict::NotShown, format!("{text}: too few new sources to cycle the tracker"));
    }
    let bounded = growth2 <= (0.1 * growth1.max(0.0)).max(1024.0);
    (if bounded { Verdict::Met } else { Verdict::Missed }, text)
}

// ------------------------------------------------------------------ markdown

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let commit = sh(
        "git",
        &["-C", crate::workspace_root().to_str().unwrap_or("."), "describe", "--always", "--dirty"],
    );
    vec![
        ("date".into(), sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"])),
        ("nproc".into(), sh("nproc", &[])),
        ("CPU".into(), model),
        ("memory".into(), mem),
        ("kernel (uname -r)".into(), sh("uname", &["-r"])),
        (
            "clocksource".into(),
            std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        ("knockd".into(), sh("dpkg-query", &["-W", "-f=${Version}", "knockd"])),
        ("xknock commit".into(), commit),
    ]
}

fn f1(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "-".into()
    }
}

fn f2(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".into()
    }
}

fn f3(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "-".into()
    }
}

fn opt(x: Option<f64>, f: fn(f64) -> String) -> String {
    x.map_or("-".into(), f)
}

fn markdown(r: &Results, verdicts: &[Target]) -> String {
    let mut s = String::new();
    let p = &r.plan;
    let _ = writeln!(s, "# xknock benchmark{}\n", if p.quick { " (--quick: not for quoting)" } else { "" });
    let _ = writeln!(
        s,
        "Produced by `cargo xtask bench{}` in {:.0} s ({} build). Medians are over rounds (per-packet) or trials (floods); nothing below is a single sample unless it says so.\n",
        if p.quick { " --quick" } else { "" },
        r.wall.as_secs_f64(),
        if r.release { "release" } else { "debug" }
    );
    let _ = writeln!(s, "## Machine\n\n| | |\n|---|---|");
    for (k, v) in machine() {
        let _ = writeln!(s, "| {k} | {v} |");
    }

    let _ = writeln!(s, "\n## Targets\n\n| target | verdict | measured |\n|---|---|---|");
    for t in verdicts {
        let _ = writeln!(s, "| {} | **{}** | {} |", t.name, t.verdict.word(), t.evidence);
    }

    // Per-packet.
    let tr = &r.testrun;
    let empty = tr.empty();
    let _ = writeln!(
        s,
        "\n## 1. Per-packet cost in the kernel (BPF_PROG_TEST_RUN)\n\n{} rounds; each round runs every class {} times (`repeat`), in an order rotated every round; the kernel reports the mean per run, and the table gives the median over rounds. Classes that emit an event run in chunks of {} with the ring buffer drained between chunks, so no run finds it full. The empty program is `xknock_empty` from the same object, loaded in the same process.\n",
        tr.rounds, tr.repeat, tr.event_chunk
    );
    let _ = writeln!(s, "| class | median ns | x empty | min | max |\n|---|---:|---:|---:|---:|");
    for c in &tr.classes {
        let min = c.samples_ns.iter().copied().fold(f64::INFINITY, f64::min);
        let max = c.samples_ns.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            c.label,
            f1(c.median()),
            f2(c.median() / empty),
            f1(min),
            f1(max)
        );
    }
    let se = median(&tr.single_empty_ns);
    let shit = median(&tr.single_hit_ns);
    let _ = writeln!(
        s,
        "\nOne run per call with the ring drained before each, so the consumer has always caught up and every submit wakes it (what a lone knock costs; includes the timer overhead of a 1-run call): empty {} ns, IPv4 hit {} ns (medians of {} calls).\n",
        opt(se, f1),
        opt(shit, f1),
        tr.single_hit_ns.len()
    );
    let _ = writeln!(
        s,
        "Counter deltas over the rounds: plain program {}; gated program {}. (`ringbuf_full` on the plain program must be 0: no event class ran against a full ring. The gated program's ring is filled on purpose for the ring-full class.)",
        tr.counters_plain, tr.counters_gated
    );

    // Floods.
    let _ = writeln!(
        s,
        "\n## 2. Floods, side by side with knockd 0.8\n\nTwo namespaces joined by veth. The generator (xtask's, AF_PACKET + sendmmsg, {} threads, spoofed random IPv4 sources, valid checksums) floods the server veth from the client namespace for {:.1} s per run. xknockd runs first, as fast as the generator goes; knockd{} then gets the same generator paced at the rate xknockd's run reached. Both read the same knockd.conf (one door, 7000,8000,9000, `tcpflags = syn`, `LogFile` in a temp dir) whose `command` writes the knocker's address into a FIFO the bench reads. During each flood {} real sequences are sent with `xknock -v` from the client namespace, each from its own address (10.77.0.100+), spread over the flood; latency is from the moment `xknock -v` prints its last hit to the moment the command's line arrives. {} trial(s); CPU and rates are medians over trials, counts are sums, latency percentiles pool all trials.\n",
        p.flood.threads,
        p.flood.duration.as_secs_f64(),
        if p.variants { " (and xknockd with logging off, and with `--xdp-mode native`)" } else { "" },
        p.flood.sequences,
        p.trials
    );
    for shape in &p.shapes {
        let _ = writeln!(s, "### Shape {}\n", shape.describe());
        let _ = writeln!(
            s,
            "| | {} |\n|---|{}",
            kinds(r, *shape).iter().map(|k| k.key()).collect::<Vec<_>>().join(" | "),
            "---:|".repeat(kinds(r, *shape).len())
        );
        let aggs: Vec<Agg> = kinds(r, *shape).iter().map(|&k| Agg::of(r, k, *shape)).collect();
        let row = |name: &str, f: &dyn Fn(&Agg) -> String| {
            format!("| {name} | {} |\n", aggs.iter().map(f).collect::<Vec<_>>().join(" | "))
        };
        s += &row("generator rate, Mpps", &|a| f3(a.med(|f| f.gen.rate()) / 1e6));
        s += &row("frames delivered to the server veth per run (rx_packets)", &|a| {
            format!("{:.0}", a.med(|f| f.delivered() as f64))
        });
        s += &row("frames dropped by the veth (client tx_dropped + server rx_dropped), total", &|a| {
            a.sum(|f| f.client.tx_dropped + f.server.rx_dropped).to_string()
        });
        s += &row("generator sends refused (queue full, retried), total", &|a| {
            a.sum(|f| f.gen.refused).to_string()
        });
        s += &row("frames seen by XDP, total", &|a| {
            opt(a.counter(counter::FRAMES).map(|x| x as f64), |x| format!("{x:.0}"))
        });
        s += &row("knock events into the ring buffer, total", &|a| {
            opt(a.counter(counter::KNOCK_HITS).map(|x| x as f64), |x| format!("{x:.0}"))
        });
        s += &row("ring buffer full (events lost), total", &|a| {
            opt(a.counter(counter::RINGBUF_FULL).map(|x| x as f64), |x| format!("{x:.0}"))
        });
        s += &row("**sequences opened / sent**", &|a| {
            format!("**{}/{}** ({:.0}%)", a.opened(), a.sent(), a.opened_pct())
        });
        s += &row("knock-to-open latency p50 / p99, ms", &|a| {
            let l = a.latencies();
            format!("{} / {}", opt(percentile(&l, 50.0), f2), opt(percentile(&l, 99.0), f2))
        });
        s += &row("same, before the flood (p50, ms)", &|a| opt(percentile(&a.idle_latencies(), 50.0), f2));
        s += &row("beside it: a 1 ms sleep wakes late by p50 / p99, ms", &|a| {
            let l: Vec<f64> = a.runs.iter().flat_map(|r| r.wake_late_ms.iter().copied()).collect();
            format!("{} / {}", opt(percentile(&l, 50.0), f2), opt(percentile(&l, 99.0), f2))
        });
        s += &row("beside it: `/bin/sh -c true` takes p50 / p99, ms", &|a| {
            let l: Vec<f64> = a.runs.iter().flat_map(|r| r.sh_ms.iter().copied()).collect();
            format!("{} / {}", opt(percentile(&l, 50.0), f2), opt(percentile(&l, 99.0), f2))
        });
        s += &row("daemon CPU (user+sys), s per run", &|a| f2(a.med(|f| f.daemon_cpu_s)));
        s += &row("**daemon CPU, s per million delivered frames**", &|a| {
            format!("**{}**", f3(a.cpu_per_mpkt()))
        });
        s +=
            &row(
                "system softirq, s per million delivered frames",
                &|a| f3(a.med(FloodRun::softirq_per_mpkt)),
            );
        s += &row("system softirq share of all CPU time during the flood", &|a| {
            format!("{:.0}%", 100.0 * a.med(|f| f.sys.softirq / f.sys.total.max(1e-9)))
        });
        s += &row("daemon VmRSS before / max / after, MB", &|a| {
            format!(
                "{} / {} / {}",
                f1(a.med(|f| mb(f.rss_before_kb))),
                f1(a.med(|f| mb(f.rss_max_kb))),
                f1(a.med(|f| mb(f.rss_after_kb)))
            )
        });
        let busy = |k: Kind| Agg::of(r, k, *shape).med(|f| f.daemon_cpu_s) > 0.05;
        match ratio_cpu(r, *shape) {
            Some(x) if busy(Kind::Xknockd) || busy(Kind::Knockd) => {
                let _ = writeln!(s, "\nxknockd / knockd daemon CPU per million frames: **{:.3}x**.", x);
            }
            _ => {
                let _ = writeln!(s, "\nBoth daemons idle under this shape: no CPU ratio to speak of.");
            }
        }
        let q = Agg::of(r, Kind::XknockdQuiet, *shape);
        let a = Agg::of(r, Kind::Xknockd, *shape);
        if !q.is_empty() && !a.is_empty() {
            let _ = writeln!(
                s,
                "With logging off, xknockd's CPU per million frames is {:.3} s: knockd's per-knock log lines (LogFile + stderr) account for {:.0}% of it.",
                q.cpu_per_mpkt(),
                100.0 * (1.0 - q.cpu_per_mpkt() / a.cpu_per_mpkt())
            );
        }
        if *shape == Shape::NonKnock {
            // No flood frame hits a knock port here: every knock event is a real knock.
            for k in [Kind::Xknockd, Kind::XknockdNative] {
                let x = Agg::of(r, k, *shape);
                if let Some(hits) = x.counter(counter::KNOCK_HITS).filter(|_| !x.is_empty()) {
                    let sent = 3 * x.runs.iter().map(|f| f.sent_sequences).sum::<usize>();
                    let lost = if hits < sent as u64 {
                        "; the rest were dropped by the veth before any program saw them (client tx_dropped above)"
                    } else {
                        ""
                    };
                    let _ = writeln!(
                        s,
                        "{}: {hits} of the {sent} knock SYNs sent during the floods reached XDP{lost}.",
                        k.key()
                    );
                }
            }
        }
        let bare = Agg::of(r, Kind::Bare, *shape);
        let empty = Agg::of(r, Kind::EmptyXdp, *shape);
        if !bare.is_empty() && !empty.is_empty() && !a.is_empty() {
            let (b, e, x) = (
                bare.med(FloodRun::softirq_per_mpkt),
                empty.med(FloodRun::softirq_per_mpkt),
                a.med(FloodRun::softirq_per_mpkt),
            );
            let _ = writeln!(
                s,
                "Where the softirq goes, at the same rate: the veth alone {b:.3} s/Mpkt; with an empty XDP program attached {e:.3} ({:+.0} ns per frame: veth switches to its NAPI/XDP receive path); with xknock's program {x:.3} ({:+.0} ns per frame more). knockd's run: {:.3}.",
                (e - b) * 1e3,
                (x - e) * 1e3,
                Agg::of(r, Kind::Knockd, *shape).med(FloodRun::softirq_per_mpkt)
            );
        }
        if let Some(ev) = a.counter(counter::KNOCK_HITS).filter(|&e| e > 1000) {
            let per_ev = a.runs.iter().map(|f| f.daemon_cpu_s).sum::<f64>() / ev.max(1) as f64;
            let _ = writeln!(s, "xknockd spent {:.2} µs of CPU per knock event it received.", per_ev * 1e6);
        }
        let _ = writeln!(s);
    }

    // Memory.
    let _ = writeln!(
        s,
        "## 3. Memory under a spoofed-source flood\n\nEvery frame is a first knock (port 7000) from a new random source, in two phases of {:.1} s; knockd gets the rate xknockd's first phase reached. xknockd's tracker keeps at most {TRACKER_CAP} sources (`max_sources`).\n",
        p.mem_phase.as_secs_f64()
    );
    let _ = writeln!(s, "| | VmRSS idle, MB | after phase 1 | after phase 2 | frames sent | delivered | knock events | ring full | tracker sources / evictions after phase 1, 2 |\n|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for m in &r.mem {
        let c = |i| m.counters.map_or("-".into(), |c| c.get(i).to_string());
        let tracker = m
            .tracker
            .iter()
            .map(|t| t.map_or("-".into(), |(n, e)| format!("{n} / {e}")))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {tracker} |",
            m.kind.key(),
            f1(mb(m.rss_idle_kb)),
            f1(mb(m.rss_phase1_kb)),
            f1(mb(m.rss_phase2_kb)),
            m.sent[0] + m.sent[1],
            m.delivered,
            c(counter::KNOCK_HITS),
            c(counter::RINGBUF_FULL)
        );
    }
    let _ = writeln!(
        s,
        "\n## Chart\n\n![bench](bench.png)\n\n## How it was measured\n\n- Per-packet: `tests/examples/bench_testrun.rs` (BPF_PROG_TEST_RUN through aya on `XdpKnocker::program()`; the gate classes use `XdpKnocker::load(Some(pins))` in a throwaway bpffs, `Gate::install` and `Gate::open`).\n- Daemon CPU: utime+stime from /proc/PID/stat, from the flood's start until the daemon's CPU time stops moving (it still drains its queue and expires the flood's attempts; at most {:.0} s).\n- softirq: the `cpu` line of /proc/stat over the flood window, all CPUs; this is where XDP (xknockd) and the packet socket's filter (knockd) run, together with the rest of the receive path, for both daemons alike.\n- Delivered frames: rx_packets of the server veth (`ip -s -j link`); XDP counters are read from xknockd's own per-CPU COUNTERS map (found through /proc/PID/fdinfo).\n- Everything runs in namespaces created for the run and removed after it; nothing is sent anywhere but the server namespace's address.",
        p.flood.settle_max.as_secs_f64()
    );
    s
}

fn kinds(r: &Results, shape: Shape) -> Vec<Kind> {
    [Kind::Xknockd, Kind::Knockd, Kind::XknockdQuiet, Kind::XknockdNative, Kind::Bare, Kind::EmptyXdp]
        .into_iter()
        .filter(|&k| r.floods.iter().any(|f| f.kind == k && f.shape == shape))
        .collect()
}

fn summary(r: &Results, verdicts: &[Target]) -> String {
    let mut s = String::new();
    let tr = &r.testrun;
    let _ = writeln!(
        s,
        "== xknock bench{} ==",
        if r.plan.quick { " (--quick: smoke only, not for quoting)" } else { "" }
    );
    let _ = writeln!(s, "{:<34} {:>10} {:>9}", "per-packet (median)", "ns", "x empty");
    for c in &tr.classes {
        let _ = writeln!(s, "{:<34} {:>10.1} {:>9.2}", c.key, c.median(), c.median() / tr.empty());
    }
    let _ = writeln!(
        s,
        "\n{:<14} {:<6} {:>7} {:>9} {:>11} {:>11} {:>11} {:>9}",
        "flood", "shape", "Mpps", "opened", "p50/p99 ms", "CPU s/Mpkt", "sirq s/Mpkt", "ring full"
    );
    for shape in &r.plan.shapes {
        for k in kinds(r, *shape) {
            let a = Agg::of(r, k, *shape);
            let l = a.latencies();
            let _ = writeln!(
                s,
                "{:<14} {:<6} {:>7.3} {:>9} {:>11} {:>11.3} {:>11.3} {:>9}",
                k.key(),
                shape.key(),
                a.med(|f| f.gen.rate()) / 1e6,
                format!("{}/{}", a.opened(), a.sent()),
                format!("{}/{}", opt(percentile(&l, 50.0), f2), opt(percentile(&l, 99.0), f2)),
                a.cpu_per_mpkt(),
                a.med(FloodRun::softirq_per_mpkt),
                a.counter(counter::RINGBUF_FULL).map_or("-".into(), |x| x.to_string())
            );
        }
    }
    for m in &r.mem {
        let _ = writeln!(
            s,
            "memory {:<8} VmRSS {:.1} -> {:.1} -> {:.1} MB (idle, phase 1, phase 2)",
            m.kind.key(),
            mb(m.rss_idle_kb),
            mb(m.rss_phase1_kb),
            mb(m.rss_phase2_kb)
        );
    }
    let _ = writeln!(s, "\n{:<62} verdict", "target");
    for t in verdicts {
        let _ = writeln!(s, "{:<62} {}", t.name, t.verdict.word());
    }
    s
}

// ---------------------------------------------------------------------- json

fn json(r: &Results) -> serde_json::Value {
    use serde_json::json;
    let counters = |c: Option<super::bpfmap::Counters>| c.map(|c| c.0.to_vec());
    json!({
        "quick": r.plan.quick,
        "release": r.release,
        "wall_s": r.wall.as_secs_f64(),
        "machine": machine().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "counter_order": ["frames", "knock_hits", "flag_mismatch", "ringbuf_full", "not_local", "gate_drop", "gate_pass", "stealth_drop", "unclassified_drop"],
        "testrun": {
            "rounds": r.testrun.rounds,
            "repeat": r.testrun.repeat,
            "classes": r.testrun.classes.iter().map(|c| json!({"key": c.key, "label": c.label, "median_ns": c.median(), "samples_ns": c.samples_ns})).collect::<Vec<_>>(),
            "single_empty_ns_median": median(&r.testrun.single_empty_ns),
            "single_hit_ns_median": median(&r.testrun.single_hit_ns),
            "counters_plain": r.testrun.counters_plain,
            "counters_gated": r.testrun.counters_gated,
        },
        "floods": r.floods.iter().map(|f| json!({
            "daemon": f.kind.key(), "shape": f.shape.key(), "trial": f.trial,
            "sent_sequences": f.sent_sequences, "opened": f.opened,
            "latencies_ms": f.latencies_ms, "idle_latencies_ms": f.idle_latencies_ms,
            "generator": {"sent": f.gen.sent, "seconds": f.gen.elapsed.as_secs_f64(), "refused": f.gen.refused},
            "server": {"rx_packets": f.server.rx_packets, "rx_dropped": f.server.rx_dropped},
            "client": {"tx_packets": f.client.tx_packets, "tx_dropped": f.client.tx_dropped},
            "system_cpu_s": {"busy": f.sys.busy, "softirq": f.sys.softirq, "total": f.sys.total},
            "daemon_cpu_s": f.daemon_cpu_s,
            "counters": counters(f.counters),
            "rss_kb": {"before": f.rss_before_kb, "max": f.rss_max_kb, "after": f.rss_after_kb},
            "tracker_sources_evictions": f.tracker,
        })).collect::<Vec<_>>(),
        "memory": r.mem.iter().map(|m| json!({
            "daemon": m.kind.key(), "rss_idle_kb": m.rss_idle_kb, "rss_phase1_kb": m.rss_phase1_kb,
            "rss_phase2_kb": m.rss_phase2_kb, "sent": m.sent, "delivered": m.delivered,
            "counters": counters(m.counters), "series": m.series, "tracker_sources_evictions": m.tracker,
        })).collect::<Vec<_>>(),
    })
}

// --------------------------------------------------------------------- chart

fn chart(r: &Results, dir: &Path) -> Result<()> {
    let data = dir.join("chart");
    std::fs::create_dir_all(&data)?;
    let tr = &r.testrun;
    let mut pkt = String::from("# class median_ns\n");
    for c in &tr.classes {
        let _ = writeln!(pkt, "\"{}\" {:.2}", c.key.replace('_', " "), c.median());
    }
    std::fs::write(data.join("packet.dat"), pkt)?;

    let mut cpu = String::from("# shape xknockd knockd xknockd_softirq knockd_softirq\n");
    let mut opened = String::from("# shape xknockd knockd\n");
    for shape in &r.plan.shapes {
        let a = Agg::of(r, Kind::Xknockd, *shape);
        let k = Agg::of(r, Kind::Knockd, *shape);
        let _ = writeln!(
            cpu,
            "\"shape {}\" {:.4} {:.4} {:.4} {:.4}",
            shape.key(),
            a.cpu_per_mpkt(),
            k.cpu_per_mpkt(),
            a.med(FloodRun::softirq_per_mpkt),
            k.med(FloodRun::softirq_per_mpkt)
        );
        let _ = writeln!(opened, "\"shape {}\" {:.1} {:.1}", shape.key(), a.opened_pct(), k.opened_pct());
    }
    std::fs::write(data.join("cpu.dat"), cpu)?;
    std::fs::write(data.join("opened.dat"), opened)?;
    for m in &r.mem {
        let mut t = String::from("# seconds rss_mb\n");
        for (sec, kb) in &m.series {
            let _ = writeln!(t, "{sec:.2} {:.2}", mb(*kb));
        }
        std::fs::write(data.join(format!("rss-{}.dat", m.kind.key())), t)?;
    }
    let script = format!(
        r##"set terminal png size 1400,1000 font ",11"
set output "{out}"
set multiplot layout 2,2 title "xknock bench{quick}"
set style fill solid 0.8 border -1
set grid ytics
set key top left

set title "XDP per-packet cost (BPF\\_PROG\\_TEST\\_RUN, median ns)"
set style data histograms
set style histogram clustered gap 1
set xtics rotate by -35 scale 0
set yrange [0:*]
set ylabel "ns"
plot "{data}/packet.dat" using 2:xtic(1) title "median" lc rgb "#4472c4", \
     {hit} with lines dt 2 lc rgb "#c00000" title "hit target 60 ns"

set title "Daemon CPU per million delivered frames"
set xtics norotate
set ylabel "CPU s / Mpkt"
plot "{data}/cpu.dat" using 2:xtic(1) title "xknockd (user+sys)" lc rgb "#4472c4", \
     "" using 3 title "knockd (user+sys)" lc rgb "#ed7d31", \
     "" using 4 title "softirq, xknockd run" lc rgb "#a5c8ff", \
     "" using 5 title "softirq, knockd run" lc rgb "#f8cbad"

set title "Knock sequences opened during the flood"
set ylabel "% of sequences sent"
set yrange [0:110]
plot "{data}/opened.dat" using 2:xtic(1) title "xknockd" lc rgb "#4472c4", \
     "" using 3 title "knockd" lc rgb "#ed7d31"

set title "VmRSS under a spoofed first-knock flood (two phases)"
set style data lines
set xtics auto
set yrange [0:*]
set xlabel "s"
set ylabel "MB"
plot "{data}/rss-xknockd.dat" using 1:2 lw 2 lc rgb "#4472c4" title "xknockd", \
     "{data}/rss-knockd.dat" using 1:2 lw 2 lc rgb "#ed7d31" title "knockd"
unset multiplot
"##,
        out = dir.join("bench.png").display(),
        data = data.display(),
        quick = if r.plan.quick { " (--quick: smoke run)" } else { "" },
        hit = HIT_TARGET_NS,
    );
    let gp = data.join("bench.gp");
    std::fs::write(&gp, script)?;
    let out = Command::new("gnuplot").arg(&gp).output().context("running gnuplot")?;
    if !out.status.success() {
        anyhow::bail!("gnuplot: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
