//! One flood run: a daemon, a flood of one shape, real knock sequences spread
//! over it, and everything measured around it.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use xknock_tests::wait_until;

use super::{
    bpfmap::{Counters, MapMemory},
    flood::{self, Shape, Spec},
    rig::{knocker, Kind, LinkStats, Rig, Running, SysCpu},
};

/// A flood shape and the timing of the real knocks sent during it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub shape: Shape,
    /// `xknock -d`: ms between the knocks of a sequence (0: knock's default).
    pub delay_ms: u64,
}

impl Case {
    pub const fn new(shape: Shape, delay_ms: u64) -> Self {
        Self { shape, delay_ms }
    }

    pub fn key(self) -> String {
        match self.delay_ms {
            0 => self.shape.key().to_string(),
            d => format!("{} -d {d}", self.shape.key()),
        }
    }

    pub fn describe(self) -> String {
        match self.delay_ms {
            0 => format!("{}, knocks with knock's default timing", self.shape.describe()),
            d => format!("{}, knocks {d} ms apart (`xknock -d {d}`)", self.shape.describe()),
        }
    }

    /// Long enough for every sequence to be sent inside the flood.
    fn duration(self, p: &Params) -> Duration {
        let per_sequence = Duration::from_millis(2 * self.delay_ms + 100);
        p.duration.max(per_sequence * p.sequences as u32 + Duration::from_secs(1))
    }
}

#[derive(Clone, Debug)]
pub struct Params {
    pub duration: Duration,
    /// Real knock sequences sent during the flood.
    pub sequences: usize,
    /// Sequences sent before the flood (latency without load).
    pub idle_sequences: usize,
    /// After the flood, how long to wait at most for the daemon to go quiet
    /// (it still drains its queue and expires the flood's attempts).
    pub settle_max: Duration,
    pub threads: usize,
}

#[derive(Clone, Debug)]
pub struct FloodRun {
    pub kind: Kind,
    pub case: Case,
    pub trial: usize,
    pub sent_sequences: usize,
    pub opened: usize,
    pub latencies_ms: Vec<f64>,
    pub idle_latencies_ms: Vec<f64>,
    pub gen: flood::Outcome,
    /// Over the flood window.
    pub server: LinkStats,
    pub client: LinkStats,
    pub sys: SysCpu,
    /// From the flood's start until the daemon went quiet.
    pub daemon_cpu_s: f64,
    pub counters: Option<Counters>,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub rss_max_kb: u64,
    /// xknockd's tracker after the flood: (sources, evictions).
    pub tracker: Option<(u64, u64)>,
    /// What the daemon's bpf maps charge, before and after the flood.
    pub maps_before: Vec<MapMemory>,
    pub maps_after: Vec<MapMemory>,
    /// What any process gets from this machine during the flood, measured
    /// beside the daemon: how late a 1 ms sleep wakes (ms) ...
    pub wake_late_ms: Vec<f64>,
    /// ... and how long `/bin/sh -c true` takes to spawn and finish (ms),
    /// which is what a door's command costs before it does anything.
    pub sh_ms: Vec<f64>,
    /// Shape (s): `SPA accepted` lines the daemon logged for the packets
    /// sent during the flood.
    pub spa_accepted: Option<usize>,
}

impl FloodRun {
    /// Frames that reached the server end of the veth during the flood.
    pub fn delivered(&self) -> u64 {
        self.server.rx_packets
    }

    pub fn cpu_per_mpkt(&self) -> f64 {
        self.daemon_cpu_s / (self.delivered().max(1) as f64 / 1e6)
    }

    pub fn softirq_per_mpkt(&self) -> f64 {
        self.sys.softirq / (self.delivered().max(1) as f64 / 1e6)
    }
}

pub fn flood_run(
    rig: &Rig,
    kind: Kind,
    case: Case,
    trial: usize,
    pace: Option<f64>,
    p: &Params,
) -> Result<FloodRun> {
    let d = Running::start(rig, kind)?;
    let duration = case.duration(p);
    // Knocks only where something can open the door.
    let (idle_n, seq_n) = if kind.is_daemon() { (p.idle_sequences, p.sequences) } else { (0, 0) };
    let mut idle_sends = Vec::new();
    for i in 0..idle_n {
        let src = knocker(i as u8);
        idle_sends.push((src.to_string(), send(rig, case, src, &d)?));
        wait_until(Duration::from_secs(2), || d.opens.count() > i);
    }
    let maps_before = d.map_memory()?;
    let rss_before_kb = d.rss_kb()?;
    let c0 = d.counters()?;
    let cpu0 = d.cpu_seconds()?;
    let sys0 = SysCpu::now()?;
    let (srv0, cli0) = (rig.server_stats()?, rig.client_stats()?);

    let stop = Arc::new(AtomicBool::new(false));
    let spec = Spec {
        shape: case.shape,
        max_packets: (duration.as_secs_f64() * 5e6) as u64,
        duration,
        pace,
        threads: p.threads,
    };
    let start = Instant::now();
    let mut rss_max_kb = rss_before_kb;
    let probe_stop = AtomicBool::new(false);
    let (gen, sends, wake_late_ms, sh_ms) = std::thread::scope(|s| -> Result<_> {
        let flood = s
            .spawn(|| flood::run(&rig.pair.client, &rig.pair.client_if, rig.server_mac, &spec, stop.clone()));
        let knocks = s.spawn(|| -> Result<Vec<(String, Instant)>> {
            let mut sends = Vec::new();
            // Spread over the flood, clear of its first and last half second.
            let span = duration.saturating_sub(Duration::from_secs(1)).as_secs_f64();
            for j in 0..seq_n {
                let at = start + Duration::from_secs_f64(0.5 + span * j as f64 / seq_n.max(1) as f64);
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let src = knocker((idle_n + j) as u8);
                sends.push((src.to_string(), send(rig, case, src, &d)?));
            }
            Ok(sends)
        });
        let probe = s.spawn(|| {
            let (mut late, mut sh) = (Vec::new(), Vec::new());
            let mut next_sh = Instant::now();
            while !probe_stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                std::thread::sleep(Duration::from_millis(1));
                late.push((t.elapsed().as_secs_f64() - 1e-3).max(0.0) * 1e3);
                if Instant::now() >= next_sh {
                    next_sh = Instant::now() + Duration::from_millis(200);
                    let t = Instant::now();
                    if std::process::Command::new("/bin/sh").args(["-c", "true"]).status().is_ok() {
                        sh.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
            (late, sh)
        });
        while !flood.is_finished() || !knocks.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            rss_max_kb = rss_max_kb.max(d.rss_kb().unwrap_or(0));
        }
        probe_stop.store(true, Ordering::Relaxed);
        let (late, sh) = probe.join().map_err(|_| anyhow::anyhow!("probe thread panicked"))?;
        let gen = flood.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))?;
        let sends = knocks.join().map_err(|_| anyhow::anyhow!("knock thread panicked"));
        stop.store(true, Ordering::Relaxed);
        Ok((gen?, sends??, late, sh))
    })?;
    let sys = SysCpu::now()?.since(&sys0);
    let server = rig.server_stats()?.since(&srv0);
    let client = rig.client_stats()?.since(&cli0);

    // Opens still on their way.
    let want = idle_n + sends.len();
    wait_until(Duration::from_secs(2), || d.opens.count() >= want);
    // The daemon is quiet once its CPU time stops moving for a second.
    let settle_end = Instant::now() + p.settle_max;
    let mut last = d.cpu_seconds()?;
    let mut still = 0;
    while still < 2 && Instant::now() < settle_end {
        std::thread::sleep(Duration::from_millis(500));
        let now = d.cpu_seconds()?;
        still = if now == last { still + 1 } else { 0 };
        last = now;
        rss_max_kb = rss_max_kb.max(d.rss_kb().unwrap_or(0));
    }
    let daemon_cpu_s = d.cpu_seconds()? - cpu0;
    let rss_after_kb = d.rss_kb()?;
    let counters = match (c0, d.counters()?) {
        (Some(a), Some(b)) => Some(b.since(&a)),
        _ => None,
    };
    let tracker = d.tracker();
    let maps_after = d.map_memory()?;
    let spa_accepted = (case.shape == Shape::SpaJunk).then(|| {
        let ips: Vec<String> = sends.iter().map(|(ip, _)| ip.clone()).collect();
        d.spa_accepted(&ips)
    });
    let first_open: HashMap<String, Instant> = d.stop().finish();
    let lat = |sends: &[(String, Instant)]| -> Vec<f64> {
        sends
            .iter()
            .filter_map(|(ip, sent)| {
                first_open.get(ip).map(|o| o.saturating_duration_since(*sent).as_secs_f64() * 1e3)
            })
            .collect()
    };
    let latencies_ms = lat(&sends);
    Ok(FloodRun {
        kind,
        case,
        trial,
        sent_sequences: sends.len(),
        opened: latencies_ms.len(),
        latencies_ms,
        idle_latencies_ms: lat(&idle_sends),
        gen,
        server,
        client,
        sys,
        daemon_cpu_s,
        counters,
        rss_before_kb,
        rss_after_kb,
        rss_max_kb,
        tracker,
        maps_before,
        maps_after,
        wake_late_ms,
        sh_ms,
        spa_accepted,
    })
}

/// One real knock sequence, or under shape (s) one real fwknop packet, from
/// `src`; returns when it left.
fn send(rig: &Rig, case: Case, src: std::net::Ipv4Addr, d: &Running) -> Result<Instant> {
    if case.shape == Shape::SpaJunk {
        rig.spa(src, &d.opens)
    } else {
        rig.knock(src, case.delay_ms, &d.opens)
    }
}

/// Memory under a spoofed-source flood: every frame a first knock from a new
/// source, in two equal phases. If the tracker is bounded, the second phase
/// adds (almost) nothing.
#[derive(Clone, Debug)]
pub struct MemRun {
    pub kind: Kind,
    pub rss_idle_kb: u64,
    pub rss_phase1_kb: u64,
    pub rss_phase2_kb: u64,
    /// (seconds since the first phase started, VmRSS kB)
    pub series: Vec<(f64, u64)>,
    pub sent: [u64; 2],
    pub delivered: u64,
    pub counters: Option<Counters>,
    /// xknockd's tracker after each phase: (sources, evictions).
    pub tracker: [Option<(u64, u64)>; 2],
    /// What the daemon's bpf maps charge: idle, after phase 1, after phase 2.
    pub maps: [Vec<MapMemory>; 3],
    /// What xknockd said at start its kernel tables take.
    pub reported_tables: Option<String>,
}

pub fn mem_run(rig: &Rig, kind: Kind, phase: Duration, pace: Option<f64>, threads: usize) -> Result<MemRun> {
    let d = Running::start(rig, kind)?;
    let rss_idle_kb = d.rss_kb()?;
    let mut maps = [d.map_memory()?, Vec::new(), Vec::new()];
    let reported_tables = d.reported_tables();
    let c0 = d.counters()?;
    let srv0 = rig.server_stats()?;
    let start = Instant::now();
    let mut series = vec![(0.0, rss_idle_kb)];
    let mut rss = [0u64; 2];
    let mut sent = [0u64; 2];
    let mut tracker = [None; 2];
    for i in 0..2 {
        let spec = Spec {
            shape: Shape::FirstStep,
            max_packets: (phase.as_secs_f64() * 5e6) as u64,
            duration: phase,
            pace,
            threads,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let out = std::thread::scope(|s| {
            let flood = s.spawn(|| {
                flood::run(&rig.pair.client, &rig.pair.client_if, rig.server_mac, &spec, stop.clone())
            });
            while !flood.is_finished() {
                std::thread::sleep(Duration::from_millis(100));
                series.push((start.elapsed().as_secs_f64(), d.rss_kb().unwrap_or(0)));
            }
            flood.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))
        })??;
        sent[i] = out.sent;
        // Let the daemon catch up with what is queued before reading RSS.
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
            series.push((start.elapsed().as_secs_f64(), d.rss_kb().unwrap_or(0)));
        }
        rss[i] = d.rss_kb()?;
        maps[i + 1] = d.map_memory()?;
        tracker[i] = d.tracker();
    }
    let delivered = rig.server_stats()?.since(&srv0).rx_packets;
    let counters = match (c0, d.counters()?) {
        (Some(a), Some(b)) => Some(b.since(&a)),
        _ => None,
    };
    drop(d.stop());
    Ok(MemRun {
        kind,
        rss_idle_kb,
        rss_phase1_kb: rss[0],
        rss_phase2_kb: rss[1],
        series,
        sent,
        delivered,
        counters,
        tracker,
        maps,
        reported_tables,
    })
}
