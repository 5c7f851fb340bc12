//! The SPA screener: a thread of its own drains the kernel's SPA ring and
//! judges every datagram (HMAC first, then the replay cache, decryption and
//! the door's policy). A junk flood costs this thread, never the event loop
//! that serves knocks, ticks and signals, and on a machine with a core to
//! spare the two run side by side. The loop is sent only what it must act
//! on: accepted packets, and at most one refusal per reason per second to
//! log, with the count of the rest.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;

use crate::{
    bpf::{
        spa::{decode, SpaDatagram},
        XdpKnocker,
    },
    config::model::Config,
    events::monotonic_now,
    spa::{receive, DecodeError, Grant, ReplayCache, SpaKeys, SpaMessage, SpaPolicy},
};

/// Datagrams judged per lock of the state: at about a µs of hashing each,
/// a reload waits well under a millisecond.
const BATCH: usize = 256;
/// How long the screener sleeps with nothing to read before it reports the
/// refusals it held back and checks that the daemon still listens.
const IDLE: Duration = Duration::from_secs(1);
/// Each reason's refusals are logged at most once in this long.
const LOG_EVERY: Duration = Duration::from_secs(1);
/// Verdicts waiting for the loop. Accepted packets are authentic and never
/// replays, so only a key holder can fill this; the screener then waits.
const QUEUE: usize = 256;

/// What the loop hears from the screener.
#[derive(Debug)]
pub enum Screened {
    /// `generation`: the configuration it was judged under (see
    /// [`SpaState::configure`]).
    Accepted { door: Arc<str>, msg: SpaMessage, grant: Grant, generation: u64 },
    /// The first refusal of its reason in a second, to log.
    Refused { src: IpAddr, port: u16, door: Option<Arc<str>>, reason: &'static str, detail: String },
    /// Refusals of `reason` not logged in the second that ended.
    Suppressed { reason: &'static str, n: u64 },
}

/// Counts for the stats line (and the metrics work).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpaStats {
    pub accepted: u64,
    pub refused: BTreeMap<&'static str, u64>,
}

/// One door's SPA settings as the screener uses them.
#[derive(Debug)]
struct SpaDoor {
    name: Arc<str>,
    keys: SpaKeys,
    policy: SpaPolicy,
}

/// Per reason: when its current log second began, and what it suppressed.
#[derive(Debug, Default)]
struct RefusalLog {
    reasons: BTreeMap<&'static str, (Duration, u64)>,
}

impl RefusalLog {
    /// Whether to log this refusal now; else it is counted for `flush`.
    /// Held counts not yet flushed keep the reason quiet, so the "N more"
    /// line comes before the next sample.
    fn admit(&mut self, reason: &'static str, now: Duration) -> bool {
        match self.reasons.get_mut(reason) {
            Some((start, n)) if now.saturating_sub(*start) < LOG_EVERY || *n > 0 => {
                *n += 1;
                false
            }
            _ => {
                self.reasons.insert(reason, (now, 0));
                true
            }
        }
    }

    /// Suppressed counts of the seconds that have ended.
    fn flush(&mut self, now: Duration) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        for (reason, (start, n)) in &mut self.reasons {
            if *n > 0 && now.saturating_sub(*start) >= LOG_EVERY {
                out.push((*reason, *n));
                *n = 0;
            }
        }
        out
    }
}

/// The doors by SPA port, the replay cache and the counts.
#[derive(Debug, Default)]
pub struct SpaState {
    doors: BTreeMap<u16, Vec<SpaDoor>>,
    ports: BTreeSet<u16>,
    cache: Option<ReplayCache>,
    state_dir: Option<PathBuf>,
    only_ipv4: bool,
    /// Bumped by every `configure`.
    generation: u64,
    stats: SpaStats,
    log: RefusalLog,
}

/// What one datagram came to.
enum Verdict {
    Accepted { door: Arc<str>, msg: SpaMessage, grant: Grant },
    Refused { door: Option<Arc<str>>, reason: &'static str, detail: String },
}

impl SpaState {
    pub fn new(only_ipv4: bool) -> Self {
        Self { only_ipv4, ..Self::default() }
    }

    /// Takes `cfg`'s SPA doors: the kernel captures their ports, and the
    /// replay cache is opened under `state_dir`. Without it no packet can
    /// be told from a replay, so an error here is an error at start.
    /// Returns the new generation: a packet accepted under an older one and
    /// still queued for the loop was judged by keys and a policy that are
    /// gone, so the loop does not open it.
    pub fn configure(&mut self, cfg: &Config, knocker: &mut XdpKnocker) -> Result<u64> {
        let mut doors: BTreeMap<u16, Vec<SpaDoor>> = BTreeMap::new();
        for d in &cfg.doors {
            let Some(spa) = &d.spa else { continue };
            let door =
                SpaDoor { name: Arc::from(d.name.as_str()), keys: spa.keys.clone(), policy: spa.policy(d) };
            doors.entry(spa.port).or_default().push(door);
        }
        let dir = &cfg.options.state_dir;
        if !doors.is_empty() && (self.cache.is_none() || self.state_dir.as_ref() != Some(dir)) {
            let cache = ReplayCache::open(dir, unix_now()).context("opening the SPA replay cache")?;
            self.cache = Some(cache);
            self.state_dir = Some(dir.clone());
        }
        let ports: BTreeSet<u16> = doors.keys().copied().collect();
        knocker.set_spa_ports(&self.ports, &ports).context("updating the SPA port map")?;
        self.ports = ports;
        self.doors = doors;
        self.generation += 1;
        Ok(self.generation)
    }

    /// ` spa_accepted=N spa_refused[reason]=M ...` for the stats line.
    pub fn stats_line(&self) -> String {
        let mut out = format!(" spa_accepted={}", self.stats.accepted);
        for (reason, n) in &self.stats.refused {
            out.push_str(&format!(" spa_refused[{}]={n}", reason.replace(' ', "_")));
        }
        out
    }

    /// Counts a refusal the loop made (the open rate limit).
    pub fn count_refused(&mut self, reason: &'static str) {
        *self.stats.refused.entry(reason).or_default() += 1;
        crate::metrics::events().spa(reason, 1);
    }

    /// Judges a batch into `out`; the metrics get one update per reason.
    fn screen(&mut self, batch: &[SpaDatagram], out: &mut Vec<Screened>) {
        let (now, mono) = (unix_now(), monotonic_now());
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        for d in batch {
            let src = d.src.to_canonical();
            if self.only_ipv4 && src.is_ipv6() {
                continue;
            }
            match self.judge(d, src, now) {
                Verdict::Accepted { door, msg, grant } => {
                    self.stats.accepted += 1;
                    *counts.entry("accepted").or_default() += 1;
                    out.push(Screened::Accepted { door, msg, grant, generation: self.generation });
                }
                Verdict::Refused { door, reason, detail } => {
                    *self.stats.refused.entry(reason).or_default() += 1;
                    *counts.entry(reason).or_default() += 1;
                    if self.log.admit(reason, mono) {
                        out.push(Screened::Refused { src, port: d.dst_port, door, reason, detail });
                    }
                }
            }
        }
        for (outcome, n) in counts {
            crate::metrics::events().spa(outcome, n);
        }
    }

    /// Tries the doors on the datagram's port in config order. The first
    /// whose HMAC matches decides; a bad HMAC for all of them is junk.
    /// `src`: the datagram's source, an IPv4-mapped address made plain.
    fn judge(&mut self, d: &SpaDatagram, src: IpAddr, now: u64) -> Verdict {
        let Some(doors) = self.doors.get(&d.dst_port) else {
            return Verdict::Refused {
                door: None,
                reason: "no door",
                detail: "no SPA door on this port".into(),
            };
        };
        let Some(cache) = self.cache.as_mut() else {
            return Verdict::Refused { door: None, reason: "no replay cache", detail: String::new() };
        };
        let only = (doors.len() == 1).then(|| Arc::clone(&doors[0].name));
        for door in doors {
            match receive(&door.keys, &door.policy, cache, &d.payload, src, now) {
                Ok((msg, grant)) => return Verdict::Accepted { door: Arc::clone(&door.name), msg, grant },
                Err(crate::spa::Rejected::Decode(DecodeError::BadHmac)) => continue,
                Err(e) => {
                    let door = Some(Arc::clone(&door.name));
                    return Verdict::Refused { door, reason: e.reason(), detail: e.to_string() };
                }
            }
        }
        let detail = DecodeError::BadHmac.to_string();
        Verdict::Refused { door: only, reason: DecodeError::BadHmac.reason(), detail }
    }
}

/// The loop's handle on the SPA state the screener works with.
#[derive(Debug, Clone)]
pub struct SharedSpa(Arc<Mutex<SpaState>>);

impl SharedSpa {
    pub fn new(state: SpaState) -> Self {
        Self(Arc::new(Mutex::new(state)))
    }

    /// The state; a panic elsewhere leaves it usable (every update is whole).
    pub fn lock(&self) -> MutexGuard<'_, SpaState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the screener on `ring`; its verdicts arrive on the receiver.
    pub fn start(&self, ring: RingBuf<MapData>) -> std::io::Result<mpsc::Receiver<Screened>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let state = self.clone();
        std::thread::Builder::new().name("xknockd-spa".into()).spawn(move || state.run(ring, &tx))?;
        Ok(rx)
    }

    /// Drains the ring in batches, then sleeps until it has data again.
    /// After every batch the refusals held back in a second that has ended
    /// are reported, so a flood that never lets the ring empty is still
    /// summarised each second. Ends when the loop drops its receiver.
    fn run(&self, mut ring: RingBuf<MapData>, tx: &mpsc::Sender<Screened>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut out = Vec::new();
        loop {
            batch.clear();
            while batch.len() < BATCH {
                let Some(item) = ring.next() else { break };
                batch.extend(decode(&item));
            }
            {
                let mut state = self.lock();
                state.screen(&batch, &mut out);
                let held = state.log.flush(monotonic_now());
                out.extend(held.into_iter().map(|(reason, n)| Screened::Suppressed { reason, n }));
            }
            if !send_all(tx, &mut out) || tx.is_closed() {
                return;
            }
            if batch.len() < BATCH {
                wait_readable(&ring, IDLE);
            }
        }
    }
}

fn send_all(tx: &mpsc::Sender<Screened>, out: &mut Vec<Screened>) -> bool {
    out.drain(..).all(|v| tx.blocking_send(v).is_ok())
}

/// Blocks until the ring has a record or `timeout` passes. poll(2) is level
/// triggered on a ring buffer, so a record that came after the drain wakes
/// us at once.
fn wait_readable(ring: &RingBuf<MapData>, timeout: Duration) {
    let mut fd = libc::pollfd { fd: ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd; an error or EINTR only means we look again.
    unsafe { libc::poll(&mut fd, 1, ms) };
}

/// Unix seconds: SPA timestamps are wall-clock time.
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spa::test_door::{keys, ssh_access, ssh_policy};

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn refusals_are_logged_once_per_reason_per_second_and_counted() {
        let mut log = RefusalLog::default();
        let t0 = Duration::from_secs(100);
        assert!(log.admit("bad HMAC", t0));
        assert!(log.admit("replay", t0), "each reason has its own second");
        assert!(!log.admit("replay", t0), "the same instant is the same second");
        for i in 1..=5 {
            assert!(!log.admit("bad HMAC", t0 + Duration::from_millis(i * 100)));
        }
        assert_eq!(log.flush(t0 + S / 2), vec![], "the second is not over");
        assert!(!log.admit("bad HMAC", t0 + S), "held counts go out first");
        assert_eq!(log.flush(t0 + S), vec![("bad HMAC", 6), ("replay", 1)]);
        assert_eq!(log.flush(t0 + S * 2), vec![]);
        // A quiet second later, the next refusal is logged at once again.
        assert!(log.admit("bad HMAC", t0 + S * 3));
    }

    fn datagram(src: &str, payload: &[u8]) -> SpaDatagram {
        SpaDatagram {
            src: src.parse().unwrap(),
            dst: "10.0.0.1".parse().unwrap(),
            src_port: 40000,
            dst_port: 62201,
            at: Duration::ZERO,
            payload: payload.to_vec(),
        }
    }

    /// One door on 62201 whose replay cache lives in a fresh directory.
    fn state(tag: &str) -> SpaState {
        let door = SpaDoor { name: Arc::from("ssh"), keys: keys(), policy: ssh_policy() };
        let dir = std::env::temp_dir().join(format!("xknock-screen-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut st = SpaState::new(false);
        st.cache = Some(ReplayCache::open(&dir, unix_now()).unwrap());
        st.doors.insert(62201, vec![door]);
        st
    }

    #[test]
    fn a_real_packet_in_a_junk_batch_is_accepted_once_and_junk_is_logged_once() {
        let mut st = state("batch");
        let junk: Vec<u8> = (0..200).map(|i| b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef"[i % 32]).collect();
        let salt = crate::spa::random_salt().unwrap();
        let real =
            crate::spa::encode(&keys(), &ssh_access("10.0.0.2", unix_now()), &salt).unwrap().into_bytes();
        let mut batch: Vec<SpaDatagram> =
            (0..300).map(|i| datagram(&format!("10.9.{}.{}", i / 250, i % 250), &junk)).collect();
        batch.insert(150, datagram("10.0.0.2", &real));
        batch.push(datagram("10.0.0.2", &real));
        let mut out = Vec::new();
        st.screen(&batch, &mut out);
        let accepted: Vec<_> = out.iter().filter(|v| matches!(v, Screened::Accepted { .. })).collect();
        assert_eq!(accepted.len(), 1, "{out:?}");
        let logged: Vec<&str> = out
            .iter()
            .filter_map(|v| match v {
                Screened::Refused { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect();
        assert_eq!(logged, vec!["bad HMAC", "replay"], "one line per reason in a second");
        assert_eq!(st.stats.accepted, 1);
        assert_eq!(st.stats.refused.get("bad HMAC"), Some(&300));
        assert_eq!(st.stats.refused.get("replay"), Some(&1));
    }

    #[test]
    fn junk_is_rejected_by_the_hmac_at_a_measured_rate() {
        let keys = keys();
        let junk: Vec<u8> = (0..300).map(|i| b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef"[i % 32]).collect();
        let start = std::time::Instant::now();
        let n = 20_000;
        for _ in 0..n {
            assert_eq!(crate::spa::decode(&keys, &junk), Err(DecodeError::BadHmac));
        }
        let rate = f64::from(n) / start.elapsed().as_secs_f64();
        eprintln!("junk rejected by HMAC: {rate:.0}/s on one core");
    }
}
