//! The bench's outputs: `bench.md`, `bench.png` (gnuplot), `results.json`,
//! and the summary printed at the end.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::Result;
use knockd_common::counter;

use super::{
    chart::chart,
    flood::Shape,
    rig::Kind,
    scenario::{Case, FloodRun},
    stats::{median, percentile},
    targets::{cpu_ratios, map_bytes, verdicts, Agg, Target, TRACKER_CAP},
    Results,
};

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
    md_per_packet(&mut s, r);
    md_floods(&mut s, r);
    md_memory(&mut s, r);
    let _ = writeln!(
        s,
        "\n## Chart\n\n![bench](bench.png)\n\n## How it was measured\n\n- Per-packet: `tests/examples/bench_testrun.rs` (BPF_PROG_TEST_RUN through aya on `XdpKnocker::program()`; the gate classes use `XdpKnocker::load(Some(pins))` in a throwaway bpffs, `Gate::install` and `Gate::open`; kernel maps are found by name among the process's own bpf map fds).\n- Daemon CPU: utime+stime from /proc/PID/stat, from the flood's start until the daemon's CPU time stops moving (it still drains its queue and expires the flood's attempts; at most {:.0} s).\n- softirq: the `cpu` line of /proc/stat over the flood window, all CPUs; this is where XDP (xknockd) and the packet socket's filter (knockd) run, together with the rest of the receive path, for both daemons alike.\n- Delivered frames: rx_packets of the server veth (`ip -s -j link`); XDP counters are read from xknockd's own per-CPU COUNTERS map (found through /proc/PID/fdinfo).\n- Gate opens: nftables through a netlink socket bound to NFNLGRP_NFTABLES in the server namespace (each NEWSETELEM message holding the knocker's address is stamped on arrival); xdp by BPF_MAP_LOOKUP_ELEM of the knocker's key in the daemon's GATE_ALLOW, spun from the moment `xknock -v` prints its last hit.\n- Memory: VmRSS from /proc/PID/status; bpf maps from the `memlock` line of /proc/PID/fdinfo of each map the daemon holds.\n- Everything runs in namespaces created for the run and removed after it; nothing is sent anywhere but the server namespace's address.",
        p.flood.settle_max.as_secs_f64()
    );
    s
}

fn md_per_packet(s: &mut String, r: &Results) {
    let tr = &r.testrun;
    let empty = tr.empty();
    let _ = writeln!(
        s,
        "\n## 1. Per-packet cost in the kernel (BPF_PROG_TEST_RUN)\n\n{} rounds; each round runs every class {} times (`repeat`), in an order rotated every round; the kernel reports the mean per run, and the table gives the median over rounds. Classes that emit an event run in chunks of {} with the ring buffer drained between chunks, so no run finds it full. The empty program is `xknock_empty` from the same object, loaded in the same process. Three copies of the program are loaded: one that never sees a knock (the miss path with no attempt in progress anywhere), one with the door's steps (knock classes), and one with a gate.\n",
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
    for (_, label, why) in &tr.unavailable {
        let _ = writeln!(s, "| {label} | {why} | | | |");
    }
    if let Some(ev) = tr.first_step_events {
        let _ = writeln!(s, "\nEvents emitted by the first-step class over all its runs: {ev} (must be 0: the kernel keeps a first step to itself).");
    }
    let _ = writeln!(
        s,
        "\nOne run per call with the ring drained before each, so the consumer has always caught up and every submit wakes it (what a lone knock costs; includes the timer overhead of a 1-run call): empty {} ns, IPv4 hit {} ns (medians of {} calls).\n",
        opt(median(&tr.single_empty_ns), f1),
        opt(median(&tr.single_hit_ns), f1),
        tr.single_hit_ns.len()
    );
    let _ = writeln!(
        s,
        "Counter deltas over the rounds: plain program {}; program with the door's steps {}; gated program {}. (`ringbuf_full` must be 0 on the first two: no event class ran against a full ring. The gated program's ring is filled on purpose for the ring-full class.) Kernel maps: {}.",
        tr.counters_plain,
        tr.counters_steps,
        tr.counters_gated,
        tr.kernel_maps.join(", ")
    );
}

fn md_floods(s: &mut String, r: &Results) {
    let p = &r.plan;
    let _ = writeln!(
        s,
        "\n## 2. Floods, side by side with knockd 0.8\n\nTwo namespaces joined by veth. The generator (xtask's, AF_PACKET + sendmmsg, {} threads, spoofed random IPv4 sources, valid checksums) floods the server veth from the client namespace for {:.1} s per run (longer when the knocks need it: 20 sequences at 200 ms between knocks). xknockd runs first, as fast as the generator goes; knockd{} then gets the same generator paced at the rate xknockd's run reached. Both read the same knockd.conf (one door, 7000,8000,9000, `tcpflags = syn`, `seq_timeout = 5`, `LogFile` in a temp dir) whose `command` writes the knocker's address into a FIFO the bench reads. During each flood {} real sequences are sent with `xknock -v` from the client namespace, each from its own address (10.77.0.100+), spread over the flood; latency is from the moment `xknock -v` prints its last hit to the moment the command's line arrives. {} trial(s); CPU and rates are medians over trials, counts are sums, latency percentiles pool all trials. Under shape (c), `xknockd-nft` and `xknockd-xdp` run the same door with `open:` (port {}/tcp) on the nftables and xdp backends instead of a command, at the same rate, and their latency is to the kernel state change (see How it was measured).\n",
        p.flood.threads,
        p.flood.duration.as_secs_f64(),
        if p.variants { " (and xknockd with logging off, and with `--xdp-mode native`)" } else { "" },
        p.flood.sequences,
        p.trials,
        super::rig::GATED_PORT
    );
    for &case in &p.cases {
        md_case(s, r, case);
    }
}

fn md_case(s: &mut String, r: &Results, case: Case) {
    let _ = writeln!(s, "### Shape {}\n", case.describe());
    let ks = kinds(r, case);
    let _ = writeln!(
        s,
        "| | {} |\n|---|{}",
        ks.iter().map(|k| k.key()).collect::<Vec<_>>().join(" | "),
        "---:|".repeat(ks.len())
    );
    let aggs: Vec<Agg> = ks.iter().map(|&k| Agg::of(r, k, case)).collect();
    let row = |name: &str, f: &dyn Fn(&Agg) -> String| {
        format!("| {name} | {} |\n", aggs.iter().map(f).collect::<Vec<_>>().join(" | "))
    };
    let count = |i: u32| move |a: &Agg| opt(a.counter(i).map(|x| x as f64), |x| format!("{x:.0}"));
    let pcts = |l: &[f64]| format!("{} / {}", opt(percentile(l, 50.0), f2), opt(percentile(l, 99.0), f2));
    *s += &row("generator rate, Mpps", &|a| f3(a.med(|f| f.gen.rate()) / 1e6));
    *s += &row("frames delivered to the server veth per run (rx_packets)", &|a| {
        format!("{:.0}", a.med(|f| f.delivered() as f64))
    });
    *s += &row("frames dropped by the veth (client tx_dropped + server rx_dropped), total", &|a| {
        a.sum(|f| f.client.tx_dropped + f.server.rx_dropped).to_string()
    });
    *s += &row("generator sends refused (queue full, retried), total", &|a| {
        a.sum(|f| f.gen.refused).to_string()
    });
    *s += &row("frames seen by XDP, total", &count(counter::FRAMES));
    *s += &row("knock events into the ring buffer, total", &count(counter::KNOCK_HITS));
    *s += &row("first steps kept in the kernel (no event), total", &count(counter::FIRST_STEP));
    *s += &row("later steps from sources with no first step (no event), total", &count(counter::ORPHAN_STEP));
    *s += &row("ring buffer full (events lost), total", &count(counter::RINGBUF_FULL));
    if case.shape == Shape::SpaJunk {
        *s += &row("**fwknop packets accepted (`SPA accepted` lines) / sent**", &|a| {
            let acc: usize = a.runs.iter().filter_map(|f| f.spa_accepted).sum();
            format!("**{acc}/{}**", a.sent())
        });
        *s += &row("SPA datagrams handed to the daemon (spa_captured), total", &count(counter::SPA_CAPTURED));
        *s += &row("dropped by a source's token bucket (spa_limited), total", &count(counter::SPA_LIMITED));
        *s += &row("lost to a full SPA ring (spa_ring_full), total", &count(counter::SPA_RING_FULL));
    }
    *s += &row("**sequences opened / sent**", &|a| {
        format!("**{}/{}** ({:.0}%)", a.opened(), a.sent(), a.opened_pct())
    });
    *s += &row("knock-to-open latency p50 / p99, ms", &|a| pcts(&a.latencies()));
    *s += &row("same, before the flood (p50, ms)", &|a| opt(percentile(&a.idle_latencies(), 50.0), f2));
    *s += &row("beside it: a 1 ms sleep wakes late by p50 / p99, ms", &|a| {
        pcts(&a.runs.iter().flat_map(|r| r.wake_late_ms.iter().copied()).collect::<Vec<_>>())
    });
    *s += &row("beside it: `/bin/sh -c true` takes p50 / p99, ms", &|a| {
        pcts(&a.runs.iter().flat_map(|r| r.sh_ms.iter().copied()).collect::<Vec<_>>())
    });
    *s += &row("**daemon CPU (user+sys), s per run**", &|a| format!("**{}**", f2(a.med(|f| f.daemon_cpu_s))));
    *s +=
        &row("**daemon CPU, s per million delivered frames**", &|a| format!("**{}**", f3(a.cpu_per_mpkt())));
    *s += &row("system softirq, s per million delivered frames", &|a| f3(a.med(FloodRun::softirq_per_mpkt)));
    *s += &row("system softirq share of all CPU time during the flood", &|a| {
        format!("{:.0}%", 100.0 * a.med(|f| f.sys.softirq / f.sys.total.max(1e-9)))
    });
    *s += &row("daemon VmRSS before / max / after, MB", &|a| {
        format!(
            "{} / {} / {}",
            f1(a.med(|f| mb(f.rss_before_kb))),
            f1(a.med(|f| mb(f.rss_max_kb))),
            f1(a.med(|f| mb(f.rss_after_kb)))
        )
    });
    *s += &row("daemon bpf maps (memlock) before / after, MB", &|a| {
        let m = |v: &[super::bpfmap::MapMemory]| map_bytes(v) as f64 / (1 << 20) as f64;
        if a.runs.iter().all(|f| f.maps_before.is_empty()) {
            return "-".into();
        }
        format!("{} / {}", f2(a.med(|f| m(&f.maps_before))), f2(a.med(|f| m(&f.maps_after))))
    });
    md_case_notes(s, r, case);
    if case.shape == Shape::SpaJunk {
        let _ = writeln!(
            s,
            "\nShape (s) runs xknockd alone: knockd has no SPA, so there is nothing to compare. The door has an `spa` block (port {}, fwknop's HMAC-SHA256 + Rijndael keys) and `open:` port {}/tcp on nftables; each real packet is Debian's `fwknop --use-hmac -a SRC` from its own client address, and \"opened\" is its nft set element, timed from fwknop's spawn (so the latency includes fwknop's own start and key derivation).",
            super::flood::SPA_PORT,
            super::rig::GATED_PORT
        );
    }
    let _ = writeln!(s);
}

fn md_case_notes(s: &mut String, r: &Results, case: Case) {
    let busy = |k: Kind| Agg::of(r, k, case).med(|f| f.daemon_cpu_s) > 0.05;
    let ratios = cpu_ratios(r, case);
    if !ratios.is_empty() && (busy(Kind::Xknockd) || busy(Kind::Knockd)) {
        let list =
            |i: usize| ratios.iter().map(|x| format!("{:.3}", [x.0, x.1][i])).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            s,
            "\nxknockd / knockd daemon CPU, per trial (same rate): per run {}; per million delivered frames **{}**.",
            list(0),
            list(1)
        );
    } else if !ratios.is_empty() {
        let _ = writeln!(s, "\nBoth daemons idle under this shape: no CPU ratio to speak of.");
    }
    let q = Agg::of(r, Kind::XknockdQuiet, case);
    let a = Agg::of(r, Kind::Xknockd, case);
    if !q.is_empty() && !a.is_empty() {
        let _ = writeln!(
            s,
            "With logging off, xknockd's CPU per million frames is {:.3} s: knockd's per-knock log lines (LogFile + stderr) account for {:.0}% of it.",
            q.cpu_per_mpkt(),
            100.0 * (1.0 - q.cpu_per_mpkt() / a.cpu_per_mpkt())
        );
    }
    if case.shape == Shape::NonKnock {
        // No flood frame hits a knock port here: every knock is a real one.
        for k in [Kind::Xknockd, Kind::XknockdNative] {
            let x = Agg::of(r, k, case);
            let seen = x.counter(counter::KNOCK_HITS).zip(x.counter(counter::FIRST_STEP));
            if let Some(hits) = seen.map(|(e, f)| e + f).filter(|_| !x.is_empty()) {
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
    let bare = Agg::of(r, Kind::Bare, case);
    let empty = Agg::of(r, Kind::EmptyXdp, case);
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
            Agg::of(r, Kind::Knockd, case).med(FloodRun::softirq_per_mpkt)
        );
    }
}

fn md_memory(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "## 3. Memory under a spoofed first-step flood\n\nEvery frame is a first knock (port 7000) from a new random source, in two phases of {:.1} s; knockd gets the rate xknockd's first phase reached. xknockd's tracker keeps at most {TRACKER_CAP} sources (`max_sources`); its kernel maps are sized at start.\n",
        r.plan.mem_phase.as_secs_f64()
    );
    let _ = writeln!(s, "| | VmRSS idle, MB | after phase 1 | after phase 2 | bpf maps idle / phase 1 / phase 2, MB | frames sent | delivered | first steps kept in the kernel | knock events | ring full | tracker sources / evictions after phase 1, 2 |\n|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|");
    for m in &r.mem {
        let c = |i| m.counters.map_or("-".into(), |c| c.get(i).to_string());
        let tracker = m
            .tracker
            .iter()
            .map(|t| t.map_or("-".into(), |(n, e)| format!("{n} / {e}")))
            .collect::<Vec<_>>()
            .join(", ");
        let maps = if m.maps[0].is_empty() {
            "-".to_string()
        } else {
            m.maps.iter().map(|x| f2(map_bytes(x) as f64 / (1 << 20) as f64)).collect::<Vec<_>>().join(" / ")
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {maps} | {} | {} | {} | {} | {} | {tracker} |",
            m.kind.key(),
            f1(mb(m.rss_idle_kb)),
            f1(mb(m.rss_phase1_kb)),
            f1(mb(m.rss_phase2_kb)),
            m.sent[0] + m.sent[1],
            m.delivered,
            c(counter::FIRST_STEP),
            c(counter::KNOCK_HITS),
            c(counter::RINGBUF_FULL)
        );
    }
    if let Some(m) = r.mem.iter().find(|m| !m.maps[0].is_empty()) {
        let list = m.maps[0]
            .iter()
            .map(|x| format!("{} {:.0} KiB", x.name, x.bytes as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(s, "\nxknockd's bpf maps at idle (memlock): {list}.");
        if let Some(said) = &m.reported_tables {
            let _ = writeln!(s, "At start xknockd reported: `{said}`.");
        }
    }
}

fn kinds(r: &Results, case: Case) -> Vec<Kind> {
    [
        Kind::Xknockd,
        Kind::Knockd,
        Kind::XknockdQuiet,
        Kind::XknockdNative,
        Kind::XknockdNft,
        Kind::XknockdXdp,
        Kind::XknockdSpa,
        Kind::Bare,
        Kind::EmptyXdp,
    ]
    .into_iter()
    .filter(|&k| r.floods.iter().any(|f| f.kind == k && f.case == case))
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
        "\n{:<14} {:<8} {:>7} {:>9} {:>11} {:>11} {:>11} {:>9}",
        "flood", "shape", "Mpps", "opened", "p50/p99 ms", "CPU s/Mpkt", "sirq s/Mpkt", "ring full"
    );
    for &case in &r.plan.cases {
        for k in kinds(r, case) {
            let a = Agg::of(r, k, case);
            let l = a.latencies();
            let _ = writeln!(
                s,
                "{:<14} {:<8} {:>7.3} {:>9} {:>11} {:>11.3} {:>11.3} {:>9}",
                k.key(),
                case.key(),
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
        "counter_order": ["frames", "knock_hits", "flag_mismatch", "ringbuf_full", "not_local", "gate_drop", "gate_pass", "stealth_drop", "unclassified_drop", "first_step", "pairs", "orphan_step", "sweep_counted", "sweep_dropped", "active_full", "spa_captured", "spa_limited", "spa_ring_full", "spa_bad_len"],
        "testrun": {
            "rounds": r.testrun.rounds,
            "repeat": r.testrun.repeat,
            "classes": r.testrun.classes.iter().map(|c| json!({"key": c.key, "label": c.label, "median_ns": c.median(), "samples_ns": c.samples_ns})).collect::<Vec<_>>(),
            "single_empty_ns_median": median(&r.testrun.single_empty_ns),
            "single_hit_ns_median": median(&r.testrun.single_hit_ns),
            "counters_plain": r.testrun.counters_plain,
            "counters_gated": r.testrun.counters_gated,
            "counters_steps": r.testrun.counters_steps,
            "first_step_events": r.testrun.first_step_events,
            "kernel_maps": r.testrun.kernel_maps,
            "unavailable": r.testrun.unavailable.iter().map(|(k, l, w)| json!({"key": k, "label": l, "why": w})).collect::<Vec<_>>(),
        },
        "floods": r.floods.iter().map(|f| json!({
            "daemon": f.kind.key(), "shape": f.case.shape.key(), "knock_delay_ms": f.case.delay_ms, "trial": f.trial,
            "sent_sequences": f.sent_sequences, "opened": f.opened, "spa_accepted": f.spa_accepted,
            "latencies_ms": f.latencies_ms, "idle_latencies_ms": f.idle_latencies_ms,
            "generator": {"sent": f.gen.sent, "seconds": f.gen.elapsed.as_secs_f64(), "refused": f.gen.refused},
            "server": {"rx_packets": f.server.rx_packets, "rx_dropped": f.server.rx_dropped},
            "client": {"tx_packets": f.client.tx_packets, "tx_dropped": f.client.tx_dropped},
            "system_cpu_s": {"busy": f.sys.busy, "softirq": f.sys.softirq, "total": f.sys.total},
            "daemon_cpu_s": f.daemon_cpu_s,
            "counters": counters(f.counters),
            "rss_kb": {"before": f.rss_before_kb, "max": f.rss_max_kb, "after": f.rss_after_kb},
            "tracker_sources_evictions": f.tracker,
            "bpf_maps_bytes": {"before": map_bytes(&f.maps_before), "after": map_bytes(&f.maps_after)},
        })).collect::<Vec<_>>(),
        "memory": r.mem.iter().map(|m| json!({
            "daemon": m.kind.key(), "rss_idle_kb": m.rss_idle_kb, "rss_phase1_kb": m.rss_phase1_kb,
            "rss_phase2_kb": m.rss_phase2_kb, "sent": m.sent, "delivered": m.delivered,
            "counters": counters(m.counters), "series": m.series, "tracker_sources_evictions": m.tracker,
            "bpf_maps": m.maps.iter().map(|x| x.iter().map(|y| json!({"name": y.name, "bytes": y.bytes})).collect::<Vec<_>>()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
