//! What the kernel's first-step tables add to the tracker: pairs replayed
//! as two knocks, sweep-guard drops, and the sources the kernel's `ACTIVE`
//! map must let go once the tracker no longer holds them past stage 1.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    time::Duration,
};

use super::{Knock, Outcome, Tracker};
use crate::config::model::Step;

/// One thing the kernel reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    Knock(Knock),
    /// A first step the kernel held, and the second step that freed it.
    Pair {
        first: Knock,
        second: Knock,
    },
    /// The sweep guard dropped `src`'s attempt at `door` (an index into
    /// the doors; `None`: every attempt).
    Sweep {
        src: IpAddr,
        door: Option<usize>,
        count: u16,
    },
}

#[derive(Debug, Default)]
pub(super) struct KernelSide {
    /// Sources the kernel may hold in `ACTIVE`.
    active: HashSet<IpAddr>,
    /// Sources to remove from `ACTIVE`, for the daemon.
    released: Vec<IpAddr>,
    /// The last first step replayed per source. The kernel does not clear
    /// a first step when it pairs it (a spoofed second step could clear a
    /// real knocker's), so a repeated second step brings it again.
    replayed: HashMap<IpAddr, (Step, Duration)>,
    replay_order: VecDeque<(Duration, IpAddr)>,
}

impl KernelSide {
    /// Lets `src` go from `ACTIVE` unless it is `proven` (past stage 1).
    pub(super) fn release_unless(&mut self, src: IpAddr, proven: bool) {
        if !proven && self.active.remove(&src) {
            self.released.push(src);
        }
    }

    pub(super) fn release_where(&mut self, mut gone: impl FnMut(IpAddr) -> bool) {
        let released = &mut self.released;
        self.active.retain(|&src| {
            let keep = !gone(src);
            if !keep {
                released.push(src);
            }
            keep
        });
    }

    /// Whether `first` was replayed already; remembers it if not.
    fn seen(&mut self, first: &Knock) -> bool {
        let key = (first.step, first.at);
        if self.replayed.insert(first.src, key) == Some(key) {
            return true;
        }
        self.replay_order.push_back((first.at, first.src));
        false
    }

    /// Forgets first steps too old to pair again: the kernel pairs a first
    /// step only within its door's timeout, at most `longest`.
    pub(super) fn forget_before(&mut self, now: Duration, longest: Duration) {
        while let Some(&(at, src)) = self.replay_order.front() {
            if at.saturating_add(longest) > now {
                break;
            }
            self.replay_order.pop_front();
            if self.replayed.get(&src).is_some_and(|&(_, seen)| seen == at) {
                self.replayed.remove(&src);
            }
        }
    }
}

impl Tracker {
    /// Feeds one kernel report through the rules.
    pub fn feed(&mut self, input: &Input, out: &mut Vec<Outcome>) {
        match input {
            Input::Knock(k) => self.on_knock(k, out),
            Input::Pair { first, second } => self.on_pair(first, second, out),
            &Input::Sweep { src, door, count } => self.on_sweep(src, door, count, out),
        }
    }

    /// Replays a pair as its two knocks, in order and with their own times,
    /// so every rule holds as if both had come on their own. A first step
    /// already replayed (the second step came again) is not replayed twice.
    pub fn on_pair(&mut self, first: &Knock, second: &Knock, out: &mut Vec<Outcome>) {
        self.kernel.forget_before(second.at, self.longest_timeout());
        if !self.kernel.seen(first) {
            self.on_knock(first, out);
        }
        // The kernel put the source in ACTIVE; it stays only if the
        // second step takes it past stage 1 (`settle` decides).
        self.kernel.active.insert(second.src);
        self.on_knock(second, out);
        // `on_knock` settles only knocks knockd would have captured.
        let proven = self.sources.get(&second.src).is_some_and(|s| super::is_proven(&s.attempts));
        self.kernel.release_unless(second.src, proven);
    }

    /// The sweep guard dropped `src`'s attempt at `door`, or all of them.
    pub fn on_sweep(&mut self, src: IpAddr, door: Option<usize>, count: u16, out: &mut Vec<Outcome>) {
        let mut named = false;
        if let Some(source) = self.sources.get_mut(&src) {
            let deadlines = &mut self.deadlines;
            let doors = &self.doors;
            source.attempts.retain(|a| {
                if door.is_some_and(|d| d != a.door) {
                    return true;
                }
                deadlines.remove(&(a.deadline, src, a.door));
                out.push(Outcome::Swept { src, door: Some(doors[a.door].name.clone()), count });
                named = true;
                false
            });
        }
        if !named {
            let name = door.and_then(|d| self.doors.get(d)).map(|d| d.name.clone());
            out.push(Outcome::Swept { src, door: name, count });
        }
        // The kernel already dropped it from ACTIVE.
        self.kernel.active.remove(&src);
        self.settle(src, false);
    }

    pub(super) fn longest_timeout(&self) -> Duration {
        self.doors.iter().map(|d| d.seq_timeout).max().unwrap_or_default()
    }

    /// Whether the tracker has any attempt of `src` in progress.
    pub fn holds(&self, src: IpAddr) -> bool {
        self.sources.contains_key(&src)
    }

    /// Sources to remove from the kernel's `ACTIVE` map since last asked.
    pub fn take_released(&mut self) -> Vec<IpAddr> {
        std::mem::take(&mut self.kernel.released)
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, sync::Arc};

    use super::*;
    use crate::{
        config::model::{Proto, TcpFlags},
        tracker::DoorSpec,
    };

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const ALICE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    const SYN: u8 = 0x02;

    fn tcp(port: u16) -> Step {
        Step { port, proto: Proto::Tcp }
    }

    fn tracker(sequence: &[u16]) -> Tracker {
        let door = DoorSpec {
            name: Arc::from("d"),
            sequence: sequence.iter().map(|&p| tcp(p)).collect(),
            seq_timeout: Duration::from_secs(25),
            tcp_flags: TcpFlags { must_set: SYN, must_clear: 0x10 },
            target: None,
        };
        Tracker::new(vec![door], 16)
    }

    fn kn(port: u16, at_ms: u64) -> Knock {
        let at = Duration::from_millis(at_ms);
        Knock { src: ALICE, dst: LOCAL, dst_is_local: true, step: tcp(port), tcp_flags: SYN, at }
    }

    fn pair(first: (u16, u64), second: (u16, u64)) -> Input {
        Input::Pair { first: kn(first.0, first.1), second: kn(second.0, second.1) }
    }

    fn feed(t: &mut Tracker, input: Input) -> Vec<Outcome> {
        let mut out = Vec::new();
        t.feed(&input, &mut out);
        out
    }

    fn stage(n: usize) -> Outcome {
        Outcome::Stage { src: ALICE, door: Arc::from("d"), stage: n }
    }

    fn open() -> Outcome {
        Outcome::Open { src: ALICE, door: Arc::from("d") }
    }

    #[test]
    fn a_pair_logs_stage_1_then_stage_2_and_times_out_from_the_first_knock() {
        let mut t = tracker(&[7000, 8000, 9000]);
        assert_eq!(feed(&mut t, pair((7000, 1000), (8000, 1500))), vec![stage(1), stage(2)]);
        assert_eq!(t.next_deadline(), Some(Duration::from_millis(26_000)));
        assert!(t.take_released().is_empty(), "past stage 1: the kernel keeps reporting it");
        assert_eq!(feed(&mut t, Input::Knock(kn(9000, 2000))), vec![stage(3), open()]);
        assert_eq!(t.take_released(), vec![ALICE], "done: the kernel lets it go");
    }

    #[test]
    fn a_pair_at_the_timeout_is_judged_by_the_usual_rules() {
        let mut t = tracker(&[7000, 8000, 9000]);
        let out = feed(&mut t, pair((7000, 0), (8000, 25_000)));
        let timeout = Outcome::Timeout { src: ALICE, door: Arc::from("d"), stage: 1 };
        assert_eq!(out, vec![stage(1), timeout]);
        assert_eq!(t.take_released(), vec![ALICE]);
    }

    #[test]
    fn a_second_step_that_comes_again_does_not_replay_its_first() {
        let mut t = tracker(&[7000, 8000]);
        assert_eq!(feed(&mut t, pair((7000, 0), (8000, 100))), vec![stage(1), stage(2), open()]);
        assert_eq!(feed(&mut t, pair((7000, 0), (8000, 1100))), vec![], "a retransmitted second step");
        // A new first step is a new attempt.
        assert_eq!(feed(&mut t, pair((7000, 2000), (8000, 2100))), vec![stage(1), stage(2), open()]);
    }

    #[test]
    fn a_pair_that_leaves_the_source_at_stage_1_releases_it() {
        let mut t = tracker(&[7000, 8000, 9000]);
        let second = Knock { tcp_flags: SYN | 0x10, ..kn(8000, 100) };
        let out = feed(&mut t, Input::Pair { first: kn(7000, 0), second });
        assert_eq!(out, vec![stage(1)], "a SYN-ACK is not this door's second step");
        assert_eq!(t.take_released(), vec![ALICE]);
    }

    #[test]
    fn a_timeout_past_stage_1_releases_the_source() {
        let mut t = tracker(&[7000, 8000, 9000]);
        feed(&mut t, pair((7000, 0), (8000, 100)));
        let mut out = Vec::new();
        t.purge(Duration::from_secs(25), &mut out);
        assert_eq!(out, vec![Outcome::Timeout { src: ALICE, door: Arc::from("d"), stage: 2 }]);
        assert_eq!(t.take_released(), vec![ALICE]);
    }

    #[test]
    fn a_sweep_drops_every_attempt_with_one_line_each_and_no_timeout() {
        let mut t = tracker(&[7000, 8000, 9000]);
        feed(&mut t, pair((7000, 0), (8000, 100)));
        let swept = |door: Option<&str>| Outcome::Swept { src: ALICE, door: door.map(Arc::from), count: 3 };
        let out = feed(&mut t, Input::Sweep { src: ALICE, door: None, count: 3 });
        assert_eq!(out, vec![swept(Some("d"))]);
        assert_eq!((t.sources(), t.next_deadline()), (0, None));
        assert!(t.take_released().is_empty(), "the kernel already let it go");
        // The kernel held the attempt itself: the door is named from its id.
        assert_eq!(
            feed(&mut t, Input::Sweep { src: ALICE, door: Some(0), count: 3 }),
            vec![swept(Some("d"))]
        );
        assert_eq!(feed(&mut t, Input::Sweep { src: ALICE, door: None, count: 3 }), vec![swept(None)]);
        assert_eq!(feed(&mut t, Input::Knock(kn(9000, 200))), vec![], "its third step finds nothing");
    }
}
