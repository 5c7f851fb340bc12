//! SPA in the daemon: datagrams from the kernel's SPA ring, tried against
//! the doors on their port (HMAC first, so junk costs one hash per door),
//! checked against the replay cache and the door's policy, then opened
//! through the same gate worker and rate limit as a knock.
//!
//! A flood cannot stall the loop: each wakeup handles at most
//! [`PER_WAKEUP`] datagrams and leaves the rest in the ring for the next
//! turn, so knocks, ticks and signals are served in between. Refusals are
//! counted per reason, and logged once per reason per second at most.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use super::{ratelimit, worker, Daemon};
use crate::{
    bpf::{
        spa::{decode, SpaDatagram},
        BpfError, XdpKnocker,
    },
    commands::pick,
    config::model::{Config, Proto},
    events::monotonic_now,
    gate::door_backend,
    spa::{receive, DecodeError, Grant, ReplayCache, SpaKeys, SpaMessage, SpaPolicy},
};

/// Datagrams decoded per wakeup: at a few µs of hashing each, a wakeup
/// stays well under a millisecond.
pub const PER_WAKEUP: usize = 64;
/// Each reason's refusals are logged at most once in this long.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The SPA ring wrapped for tokio.
pub struct SpaStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl SpaStream {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its map fd, open for the AsyncFd's life.
        Ok(Self { fd: unsafe { AsyncFd::register(ring) }? })
    }

    /// Waits for data, then takes at most `max` datagrams. Readiness is
    /// cleared only once the ring is empty, so what is left wakes us again.
    pub async fn next_batch(&mut self, out: &mut Vec<SpaDatagram>, max: usize) -> io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut drained = false;
        for _ in 0..max {
            match ring.next() {
                Some(item) => out.extend(decode(&item)),
                None => {
                    drained = true;
                    break;
                }
            }
        }
        if drained {
            guard.clear_ready();
        }
        Ok(())
    }
}

/// One door's SPA settings as the daemon uses them.
#[derive(Debug)]
struct SpaDoor {
    name: Arc<str>,
    keys: SpaKeys,
    policy: SpaPolicy,
}

/// Counts for the stats line (and the metrics work).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpaStats {
    pub accepted: u64,
    pub refused: BTreeMap<&'static str, u64>,
}

/// Per reason: when its current log second began, and what it suppressed.
#[derive(Debug, Default)]
struct RefusalLog {
    reasons: BTreeMap<&'static str, (Duration, u64)>,
}

impl RefusalLog {
    /// Whether to log this refusal now; else it is counted for `flush`.
    fn admit(&mut self, reason: &'static str, now: Duration) -> bool {
        let entry = self.reasons.entry(reason).or_insert((now, 0));
        if now.saturating_sub(entry.0) >= LOG_EVERY && entry.1 == 0 {
            entry.0 = now;
        }
        if entry.0 == now {
            return true;
        }
        entry.1 += 1;
        false
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
    stats: SpaStats,
    log: RefusalLog,
}

/// What one datagram came to.
enum Verdict {
    Accepted { door: Arc<str>, msg: SpaMessage, grant: Grant },
    Refused { door: Option<Arc<str>>, reason: &'static str, detail: String },
}

impl SpaState {
    /// Takes `cfg`'s SPA doors: the kernel captures their ports, and the
    /// replay cache is opened under `state_dir`. Without it no packet can
    /// be told from a replay, so an error here is an error at start.
    pub fn configure(&mut self, cfg: &Config, knocker: &mut XdpKnocker) -> Result<()> {
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
        Ok(())
    }

    pub fn take_stream(knocker: &mut XdpKnocker) -> Result<RingBuf<MapData>, BpfError> {
        knocker.take_spa_events()
    }

    /// ` spa_accepted=N spa_refused[reason]=M ...` for the stats line.
    pub fn stats_line(&self) -> String {
        let mut out = format!(" spa_accepted={}", self.stats.accepted);
        for (reason, n) in &self.stats.refused {
            out.push_str(&format!(" spa_refused[{}]={n}", reason.replace(' ', "_")));
        }
        out
    }

    /// Tries the doors on the datagram's port in config order. The first
    /// whose HMAC matches decides; a bad HMAC for all of them is junk.
    fn judge(&mut self, d: &SpaDatagram, now: u64) -> Verdict {
        let src = d.src.to_canonical();
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

impl Daemon {
    /// Handles a batch from the SPA ring, which is left empty.
    pub(super) async fn handle_spa(&mut self, batch: &mut Vec<SpaDatagram>) {
        let now = unix_now();
        for d in batch.drain(..) {
            if self.opts.only_ipv4 && d.src.to_canonical().is_ipv6() {
                continue;
            }
            match self.spa.judge(&d, now) {
                Verdict::Accepted { door, msg, grant } => {
                    self.spa.stats.accepted += 1;
                    crate::metrics::events().spa("accepted");
                    self.spa_open(&door, &msg, grant).await;
                }
                Verdict::Refused { door, reason, detail } => self.spa_refused(&d, door, reason, detail),
            }
        }
    }

    fn spa_refused(&mut self, d: &SpaDatagram, door: Option<Arc<str>>, reason: &'static str, detail: String) {
        *self.spa.stats.refused.entry(reason).or_default() += 1;
        crate::metrics::events().spa(reason);
        if !self.spa.log.admit(reason, monotonic_now()) {
            return;
        }
        let src = d.src.to_canonical();
        let place = door.map_or_else(|| format!("SPA port {}", d.dst_port), |n| n.to_string());
        let detail =
            if detail.is_empty() || detail == reason { String::new() } else { format!(" ({detail})") };
        self.log.line(&format!("{}: {place}: SPA refused: {reason}{detail}", self.who(src)));
    }

    /// The kernel's SPA counters and ours, for the stats line.
    pub(super) fn spa_stats(&self) -> String {
        let k = self.knocker.spa_counters().unwrap_or_default();
        format!(
            " spa_captured={} spa_limited={} spa_ring_full={} spa_bad_len={}{}",
            k.captured,
            k.limited,
            k.ring_full,
            k.bad_len,
            self.spa.stats_line()
        )
    }

    /// Reports the refusals the log held back, once their second is over.
    pub(super) fn spa_tick(&mut self) {
        for (reason, n) in self.spa.log.flush(monotonic_now()) {
            self.log.line(&format!("SPA: {n} more refused ({reason}) in the last second"));
        }
    }

    /// Opens the granted ports for the granted time, as a knock would: the
    /// rate limit first, then the gate thread, which logs `sesame` once
    /// the window is in the kernel, then the door's commands with %IP%.
    async fn spa_open(&mut self, name: &Arc<str>, msg: &SpaMessage, grant: Grant) {
        let Some(door) = self.doors.get(name).cloned() else { return };
        let ip = grant.ip.to_canonical();
        if self.limiter.admit(name, ip, monotonic_now()) == ratelimit::Verdict::Refused {
            *self.spa.stats.refused.entry("over the open rate").or_default() += 1;
            crate::metrics::events().spa("over the open rate");
            return;
        }
        let ports: Vec<String> =
            grant.ports.iter().map(|p| format!("{}/{}", proto(p.proto), p.port)).collect();
        let sesame =
            format!("{}: {name}: SPA accepted (user {}, {})", self.who(ip), msg.user, ports.join(", "));
        let start = pick(door.start_command.as_deref(), door.start_command_6.as_deref(), ip);
        let stop = pick(door.stop_command.as_deref(), door.stop_command_6.as_deref(), ip);
        let commands = (start.is_some() || stop.is_some()).then(|| worker::Commands {
            start: start.map(String::from),
            stop: stop.map(String::from),
            timeout: door.cmd_timeout,
        });
        let Some(backend) = door_backend(&self.cfg, &door) else { return };
        let req = worker::OpenRequest {
            door: Arc::clone(name),
            backend,
            src: ip,
            ports: grant.ports,
            duration: grant.duration,
            commands,
            sesame: sesame.clone(),
        };
        // Fail closed: a stalled firewall tool must not stall the loop.
        if let Err(e) = self.gates.open(req) {
            self.log.line(&sesame);
            self.log.line(&format!("{name}: not opening the gate for {ip}: {e}"));
        }
    }
}

fn proto(p: Proto) -> &'static str {
    p.as_str()
}

/// Unix seconds: SPA timestamps are wall-clock time.
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn refusals_are_logged_once_per_reason_per_second_and_counted() {
        let mut log = RefusalLog::default();
        let t0 = Duration::from_secs(100);
        assert!(log.admit("bad HMAC", t0));
        assert!(log.admit("replay", t0), "each reason has its own second");
        for i in 1..=5 {
            assert!(!log.admit("bad HMAC", t0 + Duration::from_millis(i * 100)));
        }
        assert_eq!(log.flush(t0 + S / 2), vec![], "the second is not over");
        assert_eq!(log.flush(t0 + S), vec![("bad HMAC", 5)]);
        assert_eq!(log.flush(t0 + S * 2), vec![]);
        // A quiet second later, the next refusal is logged at once again.
        assert!(log.admit("bad HMAC", t0 + S * 3));
    }

    #[test]
    fn junk_is_rejected_by_the_hmac_at_a_measured_rate() {
        let keys = SpaKeys::new(b"passphrase".to_vec(), b"hmac key".to_vec()).unwrap();
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
