//! `bench.png`, drawn by gnuplot from the run's data.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context, Result};

use super::{rig::Kind, scenario::FloodRun, targets::Agg, Results};

pub fn chart(r: &Results, dir: &Path) -> Result<()> {
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
    // Shape (s) has no knockd side to chart.
    for &case in r.plan.cases.iter().filter(|c| c.shape != super::flood::Shape::SpaJunk) {
        let a = Agg::of(r, Kind::Xknockd, case);
        let k = Agg::of(r, Kind::Knockd, case);
        let _ = writeln!(
            cpu,
            "\"{}\" {:.4} {:.4} {:.4} {:.4}",
            case.key(),
            a.cpu_per_mpkt(),
            k.cpu_per_mpkt(),
            a.med(FloodRun::softirq_per_mpkt),
            k.med(FloodRun::softirq_per_mpkt)
        );
        let _ = writeln!(opened, "\"{}\" {:.1} {:.1}", case.key(), a.opened_pct(), k.opened_pct());
    }
    std::fs::write(data.join("cpu.dat"), cpu)?;
    std::fs::write(data.join("opened.dat"), opened)?;
    for m in &r.mem {
        let mut t = String::from("# seconds rss_mb\n");
        for (sec, kb) in &m.series {
            let _ = writeln!(t, "{sec:.2} {:.2}", *kb as f64 / 1024.0);
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
plot "{data}/packet.dat" using 2:xtic(1) title "median" lc rgb "#4472c4"

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

set title "VmRSS under a spoofed first-step flood (two phases)"
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
    );
    let gp = data.join("bench.gp");
    std::fs::write(&gp, script)?;
    let out = Command::new("gnuplot").arg(&gp).output().context("running gnuplot")?;
    if !out.status.success() {
        anyhow::bail!("gnuplot: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
