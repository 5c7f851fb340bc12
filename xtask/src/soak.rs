//! `cargo xtask soak --minutes N`: xknockd under everything at once for a
//! while, in a namespace pair of its own. Bounded floods from the client
//! namespace (AF_PACKET, the bench's generator, rotating through its
//! shapes), real knocks that must open, SIGHUP reloads, and the server's
//! veth deleted and made again. Every few seconds it samples the daemon's
//! RSS, open fds, children and zombies, the memory its bpf maps charge and
//! the windows in its nftables sets; then writes a table and a chart and
//! fails unless all of them are flat after the warm-up.

mod report;
mod sample;

use std::{
    path::{Path, PathBuf},
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xknock_tests::{
    daemon::{Captured, TempDir},
    netns::{NetPair, CLIENT2_V4, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
    wait_until,
};

use crate::bench::flood::{self, Shape, Spec};
pub use sample::Sample;

/// One round: a flood, knocks, a reload; every [`IFACE_EVERY`]th round the
/// interface goes away and comes back.
const ROUND: Duration = Duration::from_secs(5);
const IFACE_EVERY: u64 = 6;
/// A flood's bound, in frames and in time (at most [`FLOOD_PACE`] a second).
const FLOOD_FRAMES: u64 = 100_000;
const FLOOD_TIME: Duration = Duration::from_secs(3);
const FLOOD_PACE: f64 = 40_000.0;
const KNOCKS_PER_ROUND: usize = 3;
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

const CONFIG: &str = r#"
options:
  log_file: {DIR}/xknockd.log
  open_rate: 1000
  open_burst: 1000
doors:
  gate:
    sequence: ["7000", "8000", "9000"]
    seq_timeout: 5
    tcp_flags: syn
    start_command: "true"
    open:
      ports: ["2222/tcp"]
      duration: 10
      backend: nftables
"#;

pub struct Soak {
    pub samples: Vec<Sample>,
    pub knocks: usize,
    pub opens: usize,
    pub reloads: usize,
    pub iface_events: usize,
    pub flood_frames: u64,
    pub duration: Duration,
}

/// Runs the soak for `length` with the binaries in `bin_dir`, writes its
/// report to `out_dir`, and fails unless everything stayed flat.
pub fn run(bin_dir: &Path, length: Duration, out_dir: &Path) -> Result<Soak> {
    if !crate::is_root() {
        bail!("soak runs xknockd in network namespaces: run it as root");
    }
    let pair = NetPair::new()?;
    let dir = TempDir::new();
    std::fs::write(dir.path("xknockd.yaml"), CONFIG.replace("{DIR}", dir.0.to_str().context("utf-8")?))?;
    let mut cmd = pair.server_cmd(bin_dir.join("xknockd").to_str().context("utf-8")?);
    cmd.arg("-c").arg(dir.path("xknockd.yaml")).args(["-i", &pair.server_if, "-p"]).arg(dir.path("pid"));
    let mut daemon = Captured::spawn(cmd)?;
    daemon.wait_for("starting up, listening on", Duration::from_secs(30))?;
    let pid = daemon.child.pid();
    let soak = drive(&pair, &dir, bin_dir, pid, length, &mut daemon)?;
    report::write(&soak, out_dir)?;
    report::assert_flat(&soak.samples)?;
    Ok(soak)
}

fn drive(
    pair: &NetPair,
    dir: &TempDir,
    bin_dir: &Path,
    pid: u32,
    length: Duration,
    daemon: &mut Captured,
) -> Result<Soak> {
    let t0 = Instant::now();
    let mut s = Soak {
        samples: Vec::new(),
        knocks: 0,
        opens: 0,
        reloads: 0,
        iface_events: 0,
        flood_frames: 0,
        duration: length,
    };
    let opened = || {
        std::fs::read_to_string(dir.path("xknockd.log")).unwrap_or_default().matches("OPEN SESAME").count()
    };
    let shapes = [Shape::KnockRange, Shape::NonKnock, Shape::FirstStep];
    let mut round = 0u64;
    let mut last_sample = None::<Instant>;
    while t0.elapsed() < length {
        let round_start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let flood = {
            let (ns, ifc, mac) = (pair.client.clone(), pair.client_if.clone(), server_mac(pair)?);
            let spec = Spec {
                shape: shapes[(round % 3) as usize],
                max_packets: FLOOD_FRAMES,
                duration: FLOOD_TIME,
                pace: Some(FLOOD_PACE),
                threads: 1,
            };
            let stop = stop.clone();
            std::thread::spawn(move || flood::run(&ns, &ifc, mac, &spec, stop))
        };
        for _ in 0..KNOCKS_PER_ROUND {
            knock(pair, bin_dir)?;
            s.knocks += 1;
            if !wait_until(Duration::from_secs(10), || opened() >= s.knocks) {
                bail!("knock {} never opened (round {round}); output:\n{}", s.knocks, tail(daemon));
            }
        }
        s.flood_frames += flood.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))??.sent;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        s.reloads += 1;
        daemon.wait_for_n("re-reading config file", s.reloads, Duration::from_secs(10))?;
        if round % IFACE_EVERY == IFACE_EVERY - 1 {
            recreate_pair(pair)?;
            s.iface_events += 1;
            daemon.wait_for_n(": interface back", s.iface_events, Duration::from_secs(10))?;
        }
        while round_start.elapsed() < ROUND {
            if last_sample.is_none_or(|t| t.elapsed() >= SAMPLE_EVERY) {
                s.samples.push(sample::take(pid, &pair.server, t0.elapsed())?);
                last_sample = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        round += 1;
        if daemon.child.0.try_wait()?.is_some() {
            bail!("xknockd exited during the soak:\n{}", tail(daemon));
        }
    }
    s.opens = opened();
    s.samples.push(sample::take(pid, &pair.server, t0.elapsed())?);
    Ok(s)
}

fn tail(daemon: &Captured) -> String {
    let out = daemon.output();
    out[out.len().saturating_sub(30)..].join("\n")
}

/// One knock of the door's sequence from the client's primary address.
fn knock(pair: &NetPair, bin_dir: &Path) -> Result<()> {
    let xknock = bin_dir.join("xknock");
    let out = pair
        .client_cmd(xknock.to_str().context("utf-8")?)
        .args([SERVER_V4, "7000", "8000", "9000"])
        .output()?;
    if !out.status.success() {
        bail!("xknock failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn server_mac(pair: &NetPair) -> Result<[u8; 6]> {
    pair.mac(&pair.server, &pair.server_if)
}

/// Deletes the server's veth end (which takes the pair with it) and makes
/// the pair again under the same names and addresses.
fn recreate_pair(pair: &NetPair) -> Result<()> {
    pair.in_ns(&pair.server, &["ip", "link", "del", &pair.server_if])?;
    let (s, c) = (&pair.server_if, &pair.client_if);
    xknock_tests::netns::run(&[
        "ip",
        "link",
        "add",
        s,
        "netns",
        &pair.server,
        "type",
        "veth",
        "peer",
        "name",
        c,
        "netns",
        &pair.client,
    ])?;
    let server = [format!("{SERVER_V4}/24"), format!("{SERVER_V6}/64")];
    let client = [format!("{CLIENT_V4}/24"), format!("{CLIENT_V6}/64"), format!("{CLIENT2_V4}/24")];
    for (ns, ifc, addrs) in [(&pair.server, s, &server[..]), (&pair.client, c, &client[..])] {
        for cidr in addrs {
            pair.in_ns(ns, &["ip", "addr", "add", cidr, "dev", ifc, "nodad"])?;
        }
        pair.in_ns(ns, &["ip", "link", "set", ifc, "up"])?;
    }
    Ok(())
}

/// Where `cargo xtask soak` writes: target/soak/.
pub fn out_dir() -> PathBuf {
    crate::workspace_root().join("target/soak")
}
