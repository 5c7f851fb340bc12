//! Knockers' host names for `-l`/`--lookup`.
//!
//! Exact behaviour:
//! - Only an address that completed a door (its `OPEN SESAME` was logged,
//!   within the rate limit) is ever looked up. A PTR query therefore tells a
//!   watching resolver only that some address opened some door, never which
//!   ports are knock ports, and a spoofed flood of first steps sends none.
//! - Lookups run in the background, never on the event loop: at most
//!   [`CONCURRENT`] at once, each given [`TIMEOUT`]. A completion that finds
//!   every slot busy starts no lookup; the address is tried again at its
//!   next completion.
//! - A line is never delayed for a name. The `OPEN SESAME` line that starts
//!   the lookup carries no name unless one was already known; every later
//!   line for that address (a later `Stage`, `OPEN SESAME` or timeout)
//!   carries `(name)` once the lookup has answered.
//! - Answers, names or "no name" (no PTR record, a refused name, a timeout),
//!   are kept for the daemon's life; the cache is emptied when it reaches
//!   [`CACHE`] addresses.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::sync::Semaphore;

use crate::knocklog;

/// Lookups in flight at most; a slow resolver ties up no more threads.
pub const CONCURRENT: usize = 3;
/// How long a lookup may take before the address counts as nameless.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Addresses remembered at most.
pub const CACHE: usize = 4096;

/// What a lookup found: `None` is "no name".
type Answers = HashMap<IpAddr, Option<String>>;

/// The host names known so far, filled in the background.
#[derive(Clone)]
pub struct Names {
    answers: Arc<Mutex<Answers>>,
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl Default for Names {
    fn default() -> Self {
        Self { answers: Arc::default(), slots: Arc::new(Semaphore::new(CONCURRENT)), timeout: TIMEOUT }
    }
}

impl Names {
    /// `ip`'s name if a lookup found one.
    pub fn get(&self, ip: IpAddr) -> Option<String> {
        self.lock().get(&ip).cloned().flatten()
    }

    /// `ip` completed a door: look its name up in the background, unless
    /// it is known or every slot is busy. Must run inside the runtime.
    pub fn completed(&self, ip: IpAddr) {
        self.completed_with(ip, knocklog::reverse_lookup);
    }

    fn completed_with(&self, ip: IpAddr, lookup: fn(IpAddr) -> Option<String>) {
        if self.lock().contains_key(&ip) {
            return;
        }
        // The permit lives as long as the blocking call itself, so a
        // resolver that outlasts TIMEOUT still holds its slot.
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else { return };
        let (answers, timeout) = (Arc::clone(&self.answers), self.timeout);
        tokio::spawn(async move {
            let job = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                lookup(ip)
            });
            let name = tokio::time::timeout(timeout, job).await.ok().and_then(Result::ok).flatten();
            let mut answers = answers.lock().unwrap_or_else(|e| e.into_inner());
            if answers.len() >= CACHE {
                answers.clear();
            }
            answers.insert(ip, name);
        });
    }

    fn lock(&self) -> MutexGuard<'_, Answers> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    fn named(ip: IpAddr) -> Option<String> {
        CALLS.fetch_add(1, Ordering::SeqCst);
        Some(format!("host{}.example", ip.to_string().rsplit('.').next().unwrap()))
    }

    fn stuck(_: IpAddr) -> Option<String> {
        std::thread::sleep(Duration::from_millis(300));
        Some("late.example".into())
    }

    async fn settle(names: &Names, ip: IpAddr) {
        for _ in 0..200 {
            if names.lock().contains_key(&ip) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no answer for {ip}");
    }

    #[tokio::test]
    async fn a_name_arrives_later_and_is_asked_for_once() {
        let names = Names::default();
        names.completed_with(ip(1), named);
        assert_eq!(names.get(ip(1)), None, "the line that starts a lookup does not wait for it");
        settle(&names, ip(1)).await;
        assert_eq!(names.get(ip(1)).as_deref(), Some("host1.example"));
        let before = CALLS.load(Ordering::SeqCst);
        names.completed_with(ip(1), named);
        assert_eq!(CALLS.load(Ordering::SeqCst), before, "a known address is not looked up again");
    }

    #[tokio::test]
    async fn at_most_a_few_lookups_run_at_once() {
        let names = Names::default();
        for n in 0..10 {
            names.completed_with(ip(n), stuck);
        }
        assert_eq!(names.slots.available_permits(), 0);
        for n in 0..CONCURRENT as u8 {
            settle(&names, ip(n)).await;
        }
        let answered = (0..10).filter(|&n| names.lock().contains_key(&ip(n))).count();
        assert_eq!(answered, CONCURRENT, "completions beyond the slots start no lookup");
    }

    #[tokio::test]
    async fn a_lookup_past_the_timeout_counts_as_nameless() {
        let names = Names { timeout: Duration::from_millis(50), ..Names::default() };
        names.completed_with(ip(9), stuck);
        settle(&names, ip(9)).await;
        assert_eq!(names.get(ip(9)), None);
        // The stuck lookup still holds its slot until it really returns.
        assert_eq!(names.slots.available_permits(), CONCURRENT - 1);
    }
}
