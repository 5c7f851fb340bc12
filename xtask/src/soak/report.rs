//! The soak's table (Markdown) and chart (gnuplot PNG), and the flatness
//! verdict: after the warm-up, nothing may grow.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use super::{Sample, Soak};

/// The first quarter of the run is warm-up: caches, the allocator's arenas
/// and the first windows settle there.
const WARMUP_FRACTION: f64 = 0.25;
/// RSS may move by this much after the warm-up (allocator noise); a leak
/// of even a few bytes per knock, reload or flood frame would exceed it.
const RSS_SLACK_KIB: u64 = 2048;
/// The floor of open fds may rise by this much.
const FD_SLACK: u64 = 1;
/// Children and zombies caught between spawn and reap.
const CHILD_MAX: u64 = 4;
const ZOMBIE_MAX: u64 = 2;

pub fn write(s: &Soak, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("soak.md"), table(s))?;
    let mut dat = String::from("# seconds rss_mib fds children zombies map_mib windows\n");
    for x in &s.samples {
        let _ = writeln!(
            dat,
            "{:.1} {:.3} {} {} {} {:.3} {}",
            x.at.as_secs_f64(),
            x.rss_kib as f64 / 1024.0,
            x.fds,
            x.children,
            x.zombies,
            x.map_kib as f64 / 1024.0,
            x.windows
        );
    }
    std::fs::write(dir.join("soak.dat"), dat)?;
    chart(dir)
}

fn table(s: &Soak) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{} min: {} knocks ({} opened), {} reloads, {} interface delete/recreate, {} flood frames.\n",
        s.duration.as_secs() / 60,
        s.knocks,
        s.opens,
        s.reloads,
        s.iface_events,
        s.flood_frames
    );
    t.push_str("| t (s) | RSS (KiB) | fds | children | zombies | bpf maps (KiB) | nft windows |\n");
    t.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
    // At most ~40 rows: every sample of a short run, a stride of a long one.
    let stride = s.samples.len().div_ceil(40).max(1);
    let last = s.samples.len().saturating_sub(1);
    for (_, x) in s.samples.iter().enumerate().filter(|(i, _)| i % stride == 0 || *i == last) {
        let _ = writeln!(
            t,
            "| {:.0} | {} | {} | {} | {} | {} | {} |",
            x.at.as_secs_f64(),
            x.rss_kib,
            x.fds,
            x.children,
            x.zombies,
            x.map_kib,
            x.windows
        );
    }
    t
}

fn chart(dir: &Path) -> Result<()> {
    let script = r#"set terminal png size 1000,700
set output 'soak.png'
set multiplot layout 3,1 title 'xknockd soak'
set xlabel 'seconds'
set ylabel 'MiB'
plot 'soak.dat' using 1:2 with lines title 'RSS', '' using 1:6 with lines title 'bpf maps'
set ylabel 'count'
plot 'soak.dat' using 1:3 with lines title 'fds', '' using 1:4 with lines title 'children', '' using 1:5 with lines title 'zombies'
set ylabel 'windows'
plot 'soak.dat' using 1:7 with lines title 'nft windows'
unset multiplot
"#;
    std::fs::write(dir.join("soak.gp"), script)?;
    let ok = Command::new("gnuplot").arg("soak.gp").current_dir(dir).status().context("running gnuplot")?;
    if !ok.success() {
        bail!("gnuplot failed on {}", dir.join("soak.gp").display());
    }
    Ok(())
}

/// Fails unless every series is flat after the warm-up. The samples after
/// it are split in halves: RSS may not peak higher in the second than in
/// the first (within slack), the floor of open fds may not rise (tools'
/// pipes come and go, a leak lifts the floor), the bpf maps charge the
/// same throughout, and children and zombies stay bounded.
pub fn assert_flat(samples: &[Sample]) -> Result<()> {
    let end = samples.last().context("no samples")?.at.as_secs_f64();
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.at.as_secs_f64() >= end * WARMUP_FRACTION).collect();
    if warm.len() < 4 {
        bail!("only {} samples after the warm-up: run longer", warm.len());
    }
    let (early, late) = warm.split_at(warm.len() / 2);
    let max = |h: &[&Sample], f: fn(&Sample) -> u64| h.iter().map(|s| f(s)).max().unwrap_or(0);
    let min = |h: &[&Sample], f: fn(&Sample) -> u64| h.iter().map(|s| f(s)).min().unwrap_or(0);
    let mut bad = Vec::new();
    let (rss0, rss1) = (max(early, |s| s.rss_kib), max(late, |s| s.rss_kib));
    if rss1 > rss0 + RSS_SLACK_KIB {
        bad.push(format!("RSS peaked at {rss0} KiB, then at {rss1} KiB"));
    }
    let (fd0, fd1) = (min(early, |s| s.fds), min(late, |s| s.fds));
    if fd1 > fd0 + FD_SLACK {
        bad.push(format!("the fd floor rose from {fd0} to {fd1}"));
    }
    if let Some(s) = warm.iter().find(|s| s.map_kib != warm[0].map_kib) {
        bad.push(format!("bpf maps went from {} to {} KiB at {:?}", warm[0].map_kib, s.map_kib, s.at));
    }
    if let Some(s) = warm.iter().find(|s| s.children > CHILD_MAX || s.zombies > ZOMBIE_MAX) {
        bad.push(format!("{} children, {} zombies at {:?}", s.children, s.zombies, s.at));
    }
    if !bad.is_empty() {
        bail!("soak not flat after the warm-up: {}", bad.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn series(f: impl Fn(u64) -> (u64, u64)) -> Vec<Sample> {
        (0..40)
            .map(|i| {
                let (rss_kib, fds) = f(i);
                let at = Duration::from_secs(i * 2);
                Sample { at, rss_kib, fds, children: 0, zombies: 0, map_kib: 100, windows: 1 }
            })
            .collect()
    }

    #[test]
    fn flat_series_pass_and_growing_ones_fail() {
        assert!(assert_flat(&series(|i| (20_000 + (i % 3) * 100, 34 + (i % 2) * 5))).is_ok());
        assert!(assert_flat(&series(|i| (20_000 + i * 200, 34))).is_err(), "an RSS leak passed");
        assert!(assert_flat(&series(|i| (20_000, 34 + i))).is_err(), "an fd leak passed");
    }
}
