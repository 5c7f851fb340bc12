//! What a gate has opened, remembered in the daemon beside the kernel's own
//! copy. The kernel stays the truth for who may connect; this record only
//! lets a repair put back windows that another tool wiped (a `flush
//! ruleset`, a destroyed ipset), so a real knocker keeps the door it earned.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::Window;
use crate::config::model::Step;

/// Windows by (canonical source, port), each with its door and its end.
#[derive(Debug, Default)]
pub struct Remembered {
    windows: BTreeMap<(IpAddr, Step), (String, Instant)>,
}

impl Remembered {
    /// Records a window that ends at `end`. Take `end` from a clock read
    /// before the kernel got the window, so this copy never outlives it.
    pub fn open(&mut self, door: &str, src: IpAddr, ports: &[Step], end: Instant) {
        for &port in ports {
            self.windows.insert((src.to_canonical(), port), (door.to_string(), end));
        }
    }

    /// Adopts windows read from the kernel (an earlier run's), unless a
    /// later knock is already recorded for the same key. Windows that never
    /// end are not ours and are left out.
    pub fn adopt(&mut self, windows: &[Window], now: Instant) {
        for w in windows.iter().filter(|w| w.remaining != Duration::MAX) {
            let Some(end) = now.checked_add(w.remaining) else { continue };
            let key = (w.src.to_canonical(), w.port);
            let keep = self.windows.get(&key).is_some_and(|(_, old)| *old >= end);
            if !keep {
                self.windows.insert(key, (w.door.clone(), end));
            }
        }
    }

    /// Drops ended windows, and windows of ports no longer protected.
    pub fn prune(&mut self, protected: &[Step], now: Instant) {
        self.windows.retain(|(_, port), (_, end)| *end > now && protected.contains(port));
    }

    pub fn clear(&mut self) {
        self.windows.clear();
    }

    /// The live windows `present` lacks, with the time each has left.
    pub fn missing_from(&self, present: &[Window], now: Instant) -> Vec<Window> {
        let here =
            |src: IpAddr, port: Step| present.iter().any(|w| w.src.to_canonical() == src && w.port == port);
        self.windows
            .iter()
            .filter(|((src, port), (_, end))| *end > now && !here(*src, *port))
            .map(|(&(src, port), (door, end))| Window {
                door: door.clone(),
                src,
                port,
                remaining: *end - now,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::Proto;

    const SSH: Step = Step { port: 22, proto: Proto::Tcp };
    const DNS: Step = Step { port: 53, proto: Proto::Udp };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn window(src: &str, port: Step, secs: u64) -> Window {
        Window { door: "d".into(), src: ip(src), port, remaining: Duration::from_secs(secs) }
    }

    #[test]
    fn reports_live_windows_the_kernel_lost_with_their_time_left() {
        let t0 = Instant::now();
        let mut r = Remembered::default();
        r.open("ssh", ip("::ffff:10.0.0.2"), &[SSH, DNS], t0 + Duration::from_secs(30));
        let present = [window("10.0.0.2", DNS, 30)];
        let missing = r.missing_from(&present, t0 + Duration::from_secs(10));
        let want =
            Window { door: "ssh".into(), src: ip("10.0.0.2"), port: SSH, remaining: Duration::from_secs(20) };
        assert_eq!(missing, [want]);
    }

    #[test]
    fn ended_windows_are_never_reported_and_are_pruned() {
        let t0 = Instant::now();
        let mut r = Remembered::default();
        r.open("ssh", ip("10.0.0.2"), &[SSH], t0 + Duration::from_secs(5));
        let later = t0 + Duration::from_secs(5);
        assert!(r.missing_from(&[], later).is_empty());
        r.prune(&[SSH], later);
        assert!(r.windows.is_empty());
    }

    #[test]
    fn prune_forgets_ports_no_longer_protected() {
        let t0 = Instant::now();
        let mut r = Remembered::default();
        r.open("ssh", ip("fd77::2"), &[SSH, DNS], t0 + Duration::from_secs(60));
        r.prune(&[DNS], t0);
        let missing = r.missing_from(&[], t0);
        assert_eq!(missing.iter().map(|w| w.port).collect::<Vec<_>>(), [DNS]);
    }

    #[test]
    fn adopt_keeps_the_later_end_and_skips_permanent_elements() {
        let t0 = Instant::now();
        let mut r = Remembered::default();
        r.open("ssh", ip("10.0.0.2"), &[SSH], t0 + Duration::from_secs(60));
        let mut forever = window("10.0.0.9", SSH, 0);
        forever.remaining = Duration::MAX;
        r.adopt(&[window("10.0.0.2", SSH, 5), window("10.0.0.3", SSH, 7), forever], t0);
        let mut left: Vec<_> = r.missing_from(&[], t0).into_iter().map(|w| (w.src, w.remaining)).collect();
        left.sort();
        assert_eq!(
            left,
            [(ip("10.0.0.2"), Duration::from_secs(60)), (ip("10.0.0.3"), Duration::from_secs(7))]
        );
    }
}
