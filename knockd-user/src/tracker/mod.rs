//! The knock sequence engine: knockd 0.8's semantics without its bugs.
//!
//! This is a pure state machine so that every rule can be tested with an
//! injected clock: the daemon feeds it knocks (stamped with the kernel's
//! monotonic time) and timer ticks, and acts on the [`Outcome`]s it returns.
//!
//! Deliberate differences from knockd 0.8:
//! - A repeat of the step an attempt matched last is ignored instead of
//!   resetting it (knockd #72, #90, #92: retransmitted SYNs, `nc -z`).
//! - Every in-scope attempt of a source sees each knock; knockd only
//!   processed the first attempt it found in its list.
//! - Expired attempts are also dropped by [`Tracker::purge`], not only when
//!   the next packet arrives, and the number of sources tracked is capped.
//!   Under a flood, a knocker still at stage 1 is indistinguishable from a
//!   spoofed source: it is lost if `max_sources` new sources arrive before
//!   its second knock. Past stage 1 only other such sources can push it out.
//!
//! - First steps are kept by the kernel (see [`kernel`]): a source reaches
//!   the tracker at its second step, as a pair replayed here as two knocks,
//!   so "Stage 1" is logged then, followed by "Stage 2". A source that never
//!   gets past its first step is never logged.
//!
//! Not a difference, but easy to miss: the XDP program reports a superset of
//! what knockd's per-door capture filter passed, so the tracker replays that
//! filter (see `Tracker::captured`) before applying the rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::model::{Proto, Step, TcpFlags};

mod kernel;
#[cfg(test)]
mod tests;

pub use kernel::Input;

/// What the tracker needs to know about a door. Equality decides whether a
/// reload may keep the door's attempts in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoorSpec {
    pub name: Arc<str>,
    pub sequence: Vec<Step>,
    pub seq_timeout: Duration,
    pub tcp_flags: TcpFlags,
    /// `None`: the door watches the host's own addresses.
    pub target: Option<IpAddr>,
}

impl DoorSpec {
    fn in_scope(&self, k: &Knock) -> bool {
        match self.target {
            Some(target) => target == k.dst,
            None => k.dst_is_local,
        }
    }

    /// knockd only looks at flags for TCP; a UDP (or ICMP) knock always "matches".
    fn flags_ok(&self, k: &Knock) -> bool {
        k.step.proto != Proto::Tcp || self.tcp_flags.matches(k.tcp_flags)
    }
}

/// One packet reported by the XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knock {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// `dst` is one of this host's addresses.
    pub dst_is_local: bool,
    pub step: Step,
    /// Byte 13 of the TCP header; ignored for UDP.
    pub tcp_flags: u8,
    /// Monotonic time of the packet.
    pub at: Duration,
}

/// What the daemon must log or act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `stage` is 1-based: the number of steps matched so far.
    Stage { src: IpAddr, door: Arc<str>, stage: usize },
    /// Always preceded by the `Stage` for the last step.
    Open { src: IpAddr, door: Arc<str> },
    /// `stage` is the number of steps that had been matched.
    Timeout { src: IpAddr, door: Arc<str>, stage: usize },
    /// The source's attempts were dropped to make room for a new source.
    Evicted { src: IpAddr },
    /// The sweep guard dropped the source's attempt at `door` (`None`: it
    /// had none here, the kernel held them) after `count` new connections
    /// to ports in no sequence.
    Swept { src: IpAddr, door: Option<Arc<str>>, count: u16 },
}

/// An attempt in progress, as [`Tracker::attempts`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptView {
    pub src: IpAddr,
    pub door: Arc<str>,
    /// Steps matched so far (the stage logged last).
    pub matched: usize,
    pub steps: usize,
    /// Monotonic time at which it times out.
    pub deadline: Duration,
}

type DoorId = usize;

#[derive(Debug)]
struct Attempt {
    door: DoorId,
    /// Steps matched so far; always in `1..sequence.len()` while stored.
    matched: usize,
    deadline: Duration,
}

/// Eviction order: the smallest rank goes first.
///
/// Evicting the source with the earliest first knock would pick the real
/// knocker as soon as a flood started after its first knock, because every
/// spoofed source is younger. Recency (`tick`, bumped on each knock) keeps
/// anyone who knocks more often than `max_sources` new sources arrive. A
/// source that has matched two steps of some door has shown it knows more
/// than a first port that any scanner can hit, so it is only evicted once no
/// source below that bar is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    proven: bool,
    tick: u64,
}

#[derive(Debug)]
struct Source {
    /// Sorted by door, so outcomes come out in config order. At most one per
    /// door: a door can only start for a source with no attempt in its scope.
    attempts: Vec<Attempt>,
    rank: Rank,
}

/// Knock attempts of every source. See the module docs for the rules.
#[derive(Debug)]
pub struct Tracker {
    doors: Vec<DoorSpec>,
    /// Doors by first step, in config order: the only doors a knock can start.
    by_first: HashMap<Step, Vec<DoorId>>,
    /// Doors by every step they contain, to replay knockd's capture filter.
    by_step: HashMap<Step, Vec<DoorId>>,
    // The default SipHash with a random key: sources are attacker-chosen, so
    // a predictable hash would let a flood degrade the map.
    sources: HashMap<IpAddr, Source>,
    deadlines: BTreeSet<(Duration, IpAddr, DoorId)>,
    ranks: BTreeMap<Rank, IpAddr>,
    max_sources: usize,
    tick: u64,
    evictions: u64,
    kernel: kernel::KernelSide,
}

impl Tracker {
    /// `max_sources` below 1 is taken as 1: a tracker that could not hold
    /// the knocker it is serving would make every multi-step door unusable.
    pub fn new(doors: Vec<DoorSpec>, max_sources: usize) -> Self {
        let (by_first, by_step) = index(&doors);
        Tracker {
            doors,
            by_first,
            by_step,
            sources: HashMap::new(),
            deadlines: BTreeSet::new(),
            ranks: BTreeMap::new(),
            max_sources: max_sources.max(1),
            tick: 0,
            evictions: 0,
            kernel: kernel::KernelSide::default(),
        }
    }

    /// Appends, in this order: timeouts of the source's due attempts,
    /// outcomes of its attempts in config order, then either evictions and
    /// new starts, or nothing more.
    pub fn on_knock(&mut self, k: &Knock, out: &mut Vec<Outcome>) {
        if !self.captured(k) {
            return;
        }
        let had_attempt = match self.sources.get_mut(&k.src) {
            None => false,
            Some(source) => {
                expire(&self.doors, &mut self.deadlines, k, &mut source.attempts, out);
                let had = source.attempts.iter().any(|a| self.doors[a.door].in_scope(k));
                if had {
                    advance(&self.doors, &mut self.deadlines, k, &mut source.attempts, out);
                }
                had
            }
        };
        // knockd: only a source with no attempt (in this knock's scope) when
        // the packet arrived may start; the knock that invalidates or
        // completes an attempt never starts another.
        if !had_attempt {
            self.start(k, out);
        }
        self.settle(k.src, true);
    }

    /// Drops every attempt whose deadline is at or before `now`.
    ///
    /// `now` must not run ahead of knocks still queued for [`Self::on_knock`]
    /// (drain the ring buffer first), or an attempt could be expired by the
    /// timer that a queued, in-time knock would have advanced.
    pub fn purge(&mut self, now: Duration, out: &mut Vec<Outcome>) {
        while let Some(&(deadline, src, door)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(source) = self.sources.get_mut(&src) {
                if let Some(i) = source.attempts.iter().position(|a| a.door == door) {
                    let attempt = source.attempts.remove(i);
                    out.push(Outcome::Timeout {
                        src,
                        door: self.doors[door].name.clone(),
                        stage: attempt.matched,
                    });
                }
            }
            // A timer is not activity: the source keeps its place in line.
            self.settle(src, false);
        }
        self.kernel.forget_before(now, self.longest_timeout());
    }

    /// The earliest time at which [`Self::purge`] has something to do.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.deadlines.first().map(|&(deadline, _, _)| deadline)
    }

    /// Installs a new door set. Attempts survive only for doors that are
    /// present with an identical spec (matched by name, wherever they now sit
    /// in the list); the rest are dropped without outcomes. If the new cap is
    /// lower than the number of sources, the surplus is evicted (counted in
    /// [`Self::evictions`], but not reported, since there is no outcome sink).
    pub fn reconfigure(&mut self, doors: Vec<DoorSpec>, max_sources: usize) {
        let mut new_by_name: HashMap<&str, DoorId> = HashMap::with_capacity(doors.len());
        for (id, door) in doors.iter().enumerate() {
            new_by_name.entry(&*door.name).or_insert(id);
        }
        let mut claimed = vec![false; doors.len()];
        let remap: Vec<Option<DoorId>> = self
            .doors
            .iter()
            .map(|old| {
                let id = *new_by_name.get(&*old.name)?;
                // Two old doors with one name must not both land on one id,
                // or a source could end up with two attempts for one door.
                (doors[id] == *old && !std::mem::replace(&mut claimed[id], true)).then_some(id)
            })
            .collect();

        self.deadlines.clear();
        let deadlines = &mut self.deadlines;
        self.sources.retain(|&src, source| {
            source.attempts.retain_mut(|a| match remap[a.door] {
                Some(id) => {
                    a.door = id;
                    deadlines.insert((a.deadline, src, id));
                    true
                }
                None => false,
            });
            source.attempts.sort_unstable_by_key(|a| a.door);
            !source.attempts.is_empty()
        });
        let sources = &self.sources;
        self.ranks.retain(|_, src| sources.contains_key(src));
        for (&src, source) in &mut self.sources {
            let proven = is_proven(&source.attempts);
            if proven != source.rank.proven {
                self.ranks.remove(&source.rank);
                source.rank.proven = proven;
                self.ranks.insert(source.rank, src);
            }
        }

        let sources = &self.sources;
        self.kernel.release_where(|src| !sources.get(&src).is_some_and(|s| is_proven(&s.attempts)));
        (self.by_first, self.by_step) = index(&doors);
        self.doors = doors;
        self.max_sources = max_sources.max(1);
        while self.sources.len() > self.max_sources {
            self.evict_one();
        }
    }

    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Every attempt in progress, for `xknockd --status` and the metrics.
    pub fn attempts(&self) -> Vec<AttemptView> {
        let mut all = Vec::new();
        for (src, source) in &self.sources {
            for a in &source.attempts {
                let door = &self.doors[a.door];
                all.push(AttemptView {
                    src: *src,
                    door: Arc::clone(&door.name),
                    matched: a.matched,
                    steps: door.sequence.len(),
                    deadline: a.deadline,
                });
            }
        }
        all
    }

    /// Whether knockd's capture filter would have passed the packet: some
    /// door in whose scope it falls contains its port and accepts its flags.
    /// The XDP program only checks the union of all doors' ports, addresses
    /// and loosest flags, so without this a packet knockd never saw (a port
    /// of a `Target` door sent to a local address, say) would invalidate
    /// attempts that knockd keeps.
    fn captured(&self, k: &Knock) -> bool {
        self.by_step.get(&k.step).is_some_and(|ids| {
            ids.iter().any(|&id| {
                let door = &self.doors[id];
                door.in_scope(k) && door.flags_ok(k)
            })
        })
    }

    fn start(&mut self, k: &Knock, out: &mut Vec<Outcome>) {
        let starts = |doors: &[DoorSpec], id: DoorId| {
            let door = &doors[id];
            door.in_scope(k) && door.flags_ok(k)
        };
        let Some(ids) = self.by_first.get(&k.step) else {
            return;
        };
        let needs_slot = !self.sources.contains_key(&k.src)
            && ids.iter().any(|&id| starts(&self.doors, id) && self.doors[id].sequence.len() > 1);
        if needs_slot {
            // Make room before the newcomer's stages, so the log reads in the
            // order things happened.
            while self.sources.len() >= self.max_sources {
                if let Some(src) = self.evict_one() {
                    out.push(Outcome::Evicted { src });
                }
            }
            self.tick += 1;
            let rank = Rank { proven: false, tick: self.tick };
            self.ranks.insert(rank, k.src);
            self.sources.insert(k.src, Source { attempts: Vec::with_capacity(1), rank });
        }

        let ids = &self.by_first[&k.step];
        for &id in ids.iter().filter(|&&id| starts(&self.doors, id)) {
            let door = &self.doors[id];
            out.push(Outcome::Stage { src: k.src, door: door.name.clone(), stage: 1 });
            if door.sequence.len() == 1 {
                out.push(Outcome::Open { src: k.src, door: door.name.clone() });
                continue;
            }
            let deadline = k.at.checked_add(door.seq_timeout).unwrap_or(Duration::MAX);
            let source = self.sources.get_mut(&k.src).expect("slot made above");
            let at = source.attempts.partition_point(|a| a.door < id);
            source.attempts.insert(at, Attempt { door: id, matched: 1, deadline });
            self.deadlines.insert((deadline, k.src, id));
        }
    }

    /// Brings `src`'s bookkeeping in line with its attempts: forgets it when
    /// none is left, else re-ranks it (`touch`: it just knocked).
    fn settle(&mut self, src: IpAddr, touch: bool) {
        let Some(source) = self.sources.get_mut(&src) else {
            self.kernel.release_unless(src, false);
            return;
        };
        if source.attempts.is_empty() {
            self.ranks.remove(&source.rank);
            self.sources.remove(&src);
            self.kernel.release_unless(src, false);
            return;
        }
        self.kernel.release_unless(src, is_proven(&source.attempts));
        let mut rank = Rank { proven: is_proven(&source.attempts), tick: source.rank.tick };
        if touch {
            self.tick += 1;
            rank.tick = self.tick;
        }
        if rank != source.rank {
            self.ranks.remove(&source.rank);
            self.ranks.insert(rank, src);
            source.rank = rank;
        }
    }

    fn evict_one(&mut self) -> Option<IpAddr> {
        let (_, src) = self.ranks.pop_first()?;
        if let Some(source) = self.sources.remove(&src) {
            for a in source.attempts {
                self.deadlines.remove(&(a.deadline, src, a.door));
            }
        }
        self.kernel.release_unless(src, false);
        self.evictions += 1;
        Some(src)
    }
}

fn index(doors: &[DoorSpec]) -> (HashMap<Step, Vec<DoorId>>, HashMap<Step, Vec<DoorId>>) {
    let mut by_first: HashMap<Step, Vec<DoorId>> = HashMap::new();
    let mut by_step: HashMap<Step, Vec<DoorId>> = HashMap::new();
    for (id, door) in doors.iter().enumerate() {
        // A used-up one-time door keeps an empty sequence (its ports stay
        // protected): indexed nowhere, it never starts.
        if let Some(&first) = door.sequence.first() {
            by_first.entry(first).or_default().push(id);
        }
        for &step in &door.sequence {
            let ids = by_step.entry(step).or_default();
            if ids.last() != Some(&id) {
                ids.push(id);
            }
        }
    }
    (by_first, by_step)
}

fn is_proven(attempts: &[Attempt]) -> bool {
    attempts.iter().any(|a| a.matched >= 2)
}

/// Rule 6: a knock at or after an attempt's deadline finds it gone. All of
/// the source's due attempts go, in scope or not: the timer would drop the
/// others anyway, and this keeps the outcome order independent of scope.
fn expire(
    doors: &[DoorSpec],
    deadlines: &mut BTreeSet<(Duration, IpAddr, DoorId)>,
    k: &Knock,
    attempts: &mut Vec<Attempt>,
    out: &mut Vec<Outcome>,
) {
    attempts.retain(|a| {
        if a.deadline > k.at {
            return true;
        }
        deadlines.remove(&(a.deadline, k.src, a.door));
        out.push(Outcome::Timeout { src: k.src, door: doors[a.door].name.clone(), stage: a.matched });
        false
    });
}

/// Rules 3, 4, 5 and 7 for every attempt in the knock's scope.
fn advance(
    doors: &[DoorSpec],
    deadlines: &mut BTreeSet<(Duration, IpAddr, DoorId)>,
    k: &Knock,
    attempts: &mut Vec<Attempt>,
    out: &mut Vec<Outcome>,
) {
    attempts.retain_mut(|a| {
        let door = &doors[a.door];
        if !door.in_scope(k) {
            return true;
        }
        let flags_ok = door.flags_ok(k);
        let keep = if flags_ok && door.sequence[a.matched] == k.step {
            a.matched += 1;
            out.push(Outcome::Stage { src: k.src, door: door.name.clone(), stage: a.matched });
            if a.matched == door.sequence.len() {
                out.push(Outcome::Open { src: k.src, door: door.name.clone() });
                false
            } else {
                true
            }
        } else {
            // Checked only after "is it the next step?", so a sequence that
            // repeats a port (7000,7000,8000) still advances on the repeat.
            let duplicate = a.matched.checked_sub(1).map(|last| door.sequence[last]) == Some(k.step);
            !flags_ok || duplicate
        };
        if !keep {
            deadlines.remove(&(a.deadline, k.src, a.door));
        }
        keep
    });
}
