//! One reading of the daemon: what /proc says about the process, what its
//! bpf maps charge, and how many windows its nftables sets hold.

use std::time::Duration;

use anyhow::{Context, Result};

#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    pub fds: u64,
    /// Live children (commands, firewall tools) and, of them, zombies.
    pub children: u64,
    pub zombies: u64,
    /// `memlock` summed over the daemon's bpf maps.
    pub map_kib: u64,
    /// Elements in the nftables gate's window sets.
    pub windows: u64,
}

pub fn take(pid: u32, server_ns: &str, at: Duration) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    let (children, zombies) = children(pid);
    let map_kib = crate::bench::bpfmap::map_memory(pid)?.iter().map(|m| m.bytes).sum::<u64>() / 1024;
    Ok(Sample { at, rss_kib, fds, children, zombies, map_kib, windows: windows(server_ns) })
}

/// (children, zombies among them) of `pid`, from /proc/*/stat.
fn children(pid: u32) -> (u64, u64) {
    let mut n = (0, 0);
    let Ok(dir) = std::fs::read_dir("/proc") else { return n };
    for stat in dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok()) {
        // After the parenthesised name: state, ppid, ...
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut fields = rest.split_whitespace();
        let (Some(state), Some(ppid)) = (fields.next(), fields.next()) else { continue };
        if ppid.parse() == Ok(pid) {
            n.0 += 1;
            n.1 += u64::from(state == "Z");
        }
    }
    n
}

/// Elements of `allow4` and `allow6` in table `inet xknockd`.
fn windows(ns: &str) -> u64 {
    ["allow4", "allow6"]
        .iter()
        .filter_map(|set| {
            let out = xknock_tests::netns::ns_command(ns, "nft")
                .args(["-j", "list", "set", "inet", "xknockd", set])
                .output()
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let sets = v["nftables"].as_array()?;
            let elems = sets.iter().find_map(|e| e["set"]["elem"].as_array());
            Some(elems.map_or(0, |e| e.len() as u64))
        })
        .sum()
}
