//! The per-door open rate limit. An attacker who knows a static sequence can
//! complete it from any number of spoofed addresses; without a limit those
//! completions would fill the gate's window map and lock real knockers out.
//!
//! Each door has a token bucket (`open_rate` per second, `open_burst` deep)
//! and a record of the addresses it holds open. A completion by an address
//! with a live window is free (it only extends that window); a new address
//! needs a token and a free place among the door's
//! `open_burst + open_rate * ceil(duration)` live windows. So a door never
//! holds more live windows than that, whatever is sent, and a live window is
//! never pushed out. Pure logic: every call takes the time.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use crate::config::model::Config;

const NANOS: u64 = 1_000_000_000;

/// Refills at `rate` tokens a second up to `burst`. Tokens are counted in
/// billionths so a refill is exact integer arithmetic.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    nano_tokens: u64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Duration) -> Self {
        let (rate, burst) = (u64::from(rate.max(1)), u64::from(burst.max(1)));
        Self { rate, burst, nano_tokens: burst * NANOS, last: now }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Duration) -> bool {
        self.refill(now);
        if self.nano_tokens < NANOS {
            return false;
        }
        self.nano_tokens -= NANOS;
        true
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        // Saturating: after a long idle the bucket is simply full.
        let gained = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).saturating_mul(self.rate);
        self.nano_tokens = self.nano_tokens.saturating_add(gained).min(self.burst * NANOS);
    }
}

/// The addresses a door holds open, with their expiries.
#[derive(Clone, Debug, Default)]
pub struct Windows {
    until: HashMap<IpAddr, Duration>,
    /// The same entries ordered by expiry, so pruning touches only the
    /// expired ones.
    by_expiry: BTreeSet<(Duration, IpAddr)>,
}

impl Windows {
    pub fn is_live(&self, src: IpAddr, now: Duration) -> bool {
        self.until.get(&src).is_some_and(|&t| t > now)
    }

    /// Opens or extends `src`'s window; never shortens one.
    pub fn record(&mut self, src: IpAddr, until: Duration) {
        match self.until.get(&src) {
            Some(&old) if old >= until => return,
            Some(&old) => {
                self.by_expiry.remove(&(old, src));
            }
            None => {}
        }
        self.until.insert(src, until);
        self.by_expiry.insert((until, src));
    }

    /// Forgets windows that ended at or before `now`.
    pub fn prune(&mut self, now: Duration) {
        while let Some(&(t, src)) = self.by_expiry.first() {
            if t > now {
                break;
            }
            self.by_expiry.pop_first();
            self.until.remove(&src);
        }
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }
}

/// What the limit says about one completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Open, and the window runs until the given time (doors with `open`).
    Open(Option<Duration>),
    /// Over the limit: do nothing.
    Refused,
}

/// One door's limit, window record and refusal count.
#[derive(Clone, Debug)]
struct DoorLimit {
    bucket: TokenBucket,
    /// The window length of a door with `open`; `None` for command-only doors.
    window: Option<Duration>,
    max_windows: usize,
    windows: Windows,
    refused: u64,
    last_report: Option<Duration>,
}

/// How one door is limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub rate: u32,
    pub burst: u32,
    /// The door's `open.duration`, if it opens a gate.
    pub window: Option<Duration>,
}

impl Limit {
    /// The most live windows the door may hold:
    /// `burst + rate * ceil(window in seconds)`.
    pub fn max_windows(&self) -> usize {
        let secs = self.window.map_or(0, |w| w.as_secs() + u64::from(w.subsec_nanos() > 0));
        let n = u64::from(self.burst) + u64::from(self.rate) * secs;
        usize::try_from(n).unwrap_or(usize::MAX)
    }
}

#[derive(Default)]
pub struct OpenLimiter {
    doors: HashMap<Arc<str>, DoorLimit>,
}

impl OpenLimiter {
    /// Makes the doors and their limits `limits`. A door keeps its windows;
    /// its bucket too, unless its rate or burst changed (then it starts full).
    pub fn configure(&mut self, limits: impl IntoIterator<Item = (Arc<str>, Limit)>, now: Duration) {
        let mut old = std::mem::take(&mut self.doors);
        for (name, limit) in limits {
            let fresh = TokenBucket::new(limit.rate, limit.burst, now);
            let door = match old.remove(&name) {
                Some(mut d) => {
                    if (d.bucket.rate, d.bucket.burst) != (fresh.rate, fresh.burst) {
                        d.bucket = fresh;
                    }
                    d.window = limit.window;
                    d.max_windows = limit.max_windows();
                    d
                }
                None => DoorLimit {
                    bucket: fresh,
                    window: limit.window,
                    max_windows: limit.max_windows(),
                    windows: Windows::default(),
                    refused: 0,
                    last_report: None,
                },
            };
            self.doors.insert(name, door);
        }
    }

    /// Decides on a completion of `door` by `src`, recording the window it
    /// opens. A door the limiter does not know is not limited.
    pub fn admit(&mut self, door: &str, src: IpAddr, now: Duration) -> Verdict {
        let Some(d) = self.doors.get_mut(door) else { return Verdict::Open(None) };
        let until = d.window.map(|w| now + w);
        if d.windows.is_live(src, now) {
            d.windows.record(src, until.unwrap_or(now));
            return Verdict::Open(until);
        }
        d.windows.prune(now);
        if d.windows.len() >= d.max_windows || !d.bucket.take(now) {
            d.refused += 1;
            return Verdict::Refused;
        }
        if let Some(t) = until {
            d.windows.record(src, t);
        }
        Verdict::Open(until)
    }

    /// Records a window an earlier run left in the kernel, so its owner's
    /// re-knock is free.
    pub fn adopt(&mut self, door: &str, src: IpAddr, until: Duration) {
        if let Some(d) = self.doors.get_mut(door) {
            d.windows.record(src, until);
        }
    }

    /// Forgets ended windows and returns, per door, the refusals not yet
    /// reported if the last report is at least a second old. At most one
    /// report a second per door.
    pub fn tick(&mut self, now: Duration) -> Vec<(Arc<str>, u64)> {
        let mut out = Vec::new();
        for (name, d) in &mut self.doors {
            d.windows.prune(now);
            let due = d.last_report.is_none_or(|t| now.saturating_sub(t) >= Duration::from_secs(1));
            if d.refused > 0 && due {
                out.push((name.clone(), std::mem::take(&mut d.refused)));
                d.last_report = Some(now);
            }
        }
        out
    }
}

/// Every door's limit under `cfg`.
pub fn limits(cfg: &Config) -> impl Iterator<Item = (Arc<str>, Limit)> + '_ {
    let (rate, burst) = (cfg.options.open_rate, cfg.options.open_burst);
    cfg.doors.iter().map(move |d| {
        let window = d.open.as_ref().map(|o| o.duration);
        (Arc::from(d.name.as_str()), Limit { rate, burst, window })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(n.into())
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn limiter(rate: u32, burst: u32, window: Option<u64>) -> OpenLimiter {
        let mut l = OpenLimiter::default();
        let window = window.map(Duration::from_secs);
        l.configure([(Arc::from("d"), Limit { rate, burst, window })], Duration::ZERO);
        l
    }

    fn opened(l: &mut OpenLimiter, srcs: impl IntoIterator<Item = u32>, now: Duration) -> usize {
        srcs.into_iter().filter(|&n| l.admit("d", ip(n), now) != Verdict::Refused).count()
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut b = TokenBucket::new(10, 20, Duration::ZERO);
        assert_eq!((0..100).filter(|_| b.take(Duration::ZERO)).count(), 20);
        assert!(!b.take(ms(99)), "a token takes 100 ms at 10/s");
        assert!(b.take(ms(100)));
        assert!(!b.take(ms(150)));
        assert_eq!((0..100).filter(|_| b.take(ms(1100))).count(), 10);
        assert_eq!((0..100).filter(|_| b.take(Duration::from_secs(3600))).count(), 20, "capped at burst");
    }

    #[test]
    fn bucket_ignores_time_going_backwards() {
        let mut b = TokenBucket::new(1, 1, S * 10);
        assert!(b.take(S * 10));
        assert!(!b.take(S * 5));
        assert!(!b.take(S * 10));
        assert!(b.take(S * 11));
    }

    #[test]
    fn a_flood_opens_at_most_burst_then_rate() {
        let mut l = limiter(10, 20, Some(30));
        assert_eq!(opened(&mut l, 0..1000, Duration::ZERO), 20);
        assert_eq!(opened(&mut l, 1000..2000, S), 10);
        assert_eq!(l.tick(S), vec![(Arc::from("d"), 1970)]);
    }

    #[test]
    fn a_live_window_reknocks_for_free_and_is_extended() {
        let mut l = limiter(1, 1, Some(5));
        assert_eq!(l.admit("d", ip(1), Duration::ZERO), Verdict::Open(Some(S * 5)));
        assert_eq!(opened(&mut l, 100..200, Duration::ZERO), 0, "the bucket is empty");
        assert_eq!(l.admit("d", ip(1), S * 4), Verdict::Open(Some(S * 9)));
        // Still live at 8 s thanks to the extension, and still free.
        assert_eq!(l.admit("d", ip(1), S * 8), Verdict::Open(Some(S * 13)));
    }

    #[test]
    fn an_ended_window_needs_a_token_again() {
        let mut l = limiter(1, 1, Some(2));
        assert_ne!(l.admit("d", ip(1), Duration::ZERO), Verdict::Refused);
        assert_eq!(l.admit("d", ip(2), ms(500)), Verdict::Refused);
        // At 2 s the window has ended; a token came back at 1 s.
        assert_ne!(l.admit("d", ip(1), S * 2), Verdict::Refused);
        assert_eq!(l.admit("d", ip(1), S * 2 + ms(100)), Verdict::Open(Some(S * 4 + ms(100))));
    }

    /// Free re-knocks keep windows alive, so without the cap a flood could
    /// grow the live set by `rate` a second for ever.
    #[test]
    fn live_windows_never_exceed_burst_plus_rate_times_duration() {
        let mut l = limiter(10, 20, Some(3));
        let cap = 20 + 10 * 3;
        let mut live: Vec<u32> = Vec::new();
        let mut next = 0;
        for step in 0..200u64 {
            let now = ms(step * 100);
            // The attacker re-knocks every address it holds and tries new ones.
            assert_eq!(opened(&mut l, live.clone(), now), live.len(), "a live window was refused");
            for _ in 0..50 {
                if l.admit("d", ip(next), now) != Verdict::Refused {
                    live.push(next);
                }
                next += 1;
            }
            assert!(live.len() <= cap, "{} live windows at {now:?}", live.len());
        }
        assert_eq!(live.len(), cap);
    }

    #[test]
    fn command_only_doors_are_limited_without_windows() {
        let mut l = limiter(1, 2, None);
        assert_eq!(l.admit("d", ip(1), Duration::ZERO), Verdict::Open(None));
        assert_eq!(l.admit("d", ip(1), Duration::ZERO), Verdict::Open(None));
        assert_eq!(l.admit("d", ip(1), Duration::ZERO), Verdict::Refused);
        assert_eq!(l.admit("other", ip(1), Duration::ZERO), Verdict::Open(None), "unknown doors pass");
    }

    #[test]
    fn refusals_are_reported_at_most_once_a_second() {
        let mut l = limiter(1, 1, Some(10));
        l.admit("d", ip(1), Duration::ZERO);
        assert_eq!(opened(&mut l, 2..5, Duration::ZERO), 0);
        assert_eq!(l.tick(Duration::ZERO), vec![(Arc::from("d"), 3)]);
        assert_eq!(opened(&mut l, 5..7, ms(300)), 0);
        assert!(l.tick(ms(500)).is_empty(), "reported less than a second ago");
        assert_eq!(l.tick(S), vec![(Arc::from("d"), 2)]);
        assert!(l.tick(S * 5).is_empty(), "nothing new to report");
    }

    #[test]
    fn reconfiguring_keeps_unchanged_doors_and_resets_changed_ones() {
        let mut l = limiter(1, 1, Some(10));
        l.admit("d", ip(1), Duration::ZERO);
        let same = Limit { rate: 1, burst: 1, window: Some(S * 10) };
        l.configure([(Arc::from("d"), same)], S / 2);
        assert_eq!(l.admit("d", ip(2), S / 2), Verdict::Refused, "the bucket was kept");
        assert_ne!(l.admit("d", ip(1), S / 2), Verdict::Refused, "the window was kept");
        let bigger = Limit { rate: 1, burst: 5, window: Some(S * 10) };
        l.configure([(Arc::from("d"), bigger)], S / 2);
        assert_eq!(opened(&mut l, 10..20, S / 2), 5, "a new rate or burst refills the bucket");
        assert_ne!(l.admit("d", ip(1), S / 2), Verdict::Refused, "windows survive a new limit");
    }

    #[test]
    fn adopted_windows_reknock_for_free() {
        let mut l = limiter(1, 1, Some(10));
        l.admit("d", ip(9), Duration::ZERO);
        l.adopt("d", ip(1), S * 3);
        assert_ne!(l.admit("d", ip(1), S), Verdict::Refused);
        l.adopt("nobody", ip(1), S * 3);
    }

    #[test]
    fn max_windows_rounds_the_duration_up() {
        let l = Limit { rate: 10, burst: 20, window: Some(ms(1500)) };
        assert_eq!(l.max_windows(), 40);
        assert_eq!(Limit { window: None, ..l }.max_windows(), 20);
    }
}
