//! Dynamic doors at run time. Each `dynamic` door D is followed in the
//! running config by [`SLOTS`] period doors, `D@T`, holding the sequences
//! of the live periods (`crate::dynamic::live_periods`), or nothing for a
//! slot with no live, unburned period. So the kernel maps, the first-step
//! state, the sweep guard and the tracker treat each period's sequence as
//! a static door, with all of knockd's rules.
//!
//! Period T always sits in slot T mod 4, so its door index (the kernel's
//! first-step key) and its name (what keeps a tracker attempt across a
//! reload) never change while it is live: a knock spanning a boundary
//! keeps its first step. Log lines name D; an open burns (D, T) first.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{reload::GateSync, Daemon};
use crate::tracker::Outcome;
use crate::{
    config::{
        dynamic::DynamicSpec,
        model::{Config, Door, Step},
    },
    dynamic::{derive, live_periods, next_change, period_index, read_secret, unix_now, Burned, LEAD_SECS},
};

/// Period doors per dynamic door: T-1..T+2 are four consecutive periods.
pub const SLOTS: u64 = 4;

#[derive(Debug, Default)]
pub struct DynamicDoors {
    /// `None`: the burned file could not be read, so no period opens.
    burned: Option<Burned>,
    /// Period door name -> (dynamic door name, T).
    labels: HashMap<Arc<str>, (Arc<str>, u64)>,
    /// Names of every period door in the running config.
    generated: HashSet<String>,
}

impl DynamicDoors {
    pub fn load(state_dir: &Path) -> Self {
        let burned = Burned::load(state_dir)
            .map_err(|e| {
                log::error!(
                    "cannot read burned dynamic sequences under {}: {e}; dynamic doors stay shut",
                    state_dir.display()
                )
            })
            .ok();
        Self { burned, ..Self::default() }
    }

    /// `cfg` with each dynamic door followed by its period doors, derived
    /// for the current time. Period doors already in `cfg` are replaced.
    pub fn expand(&mut self, cfg: Config) -> Config {
        let now = unix_now(0);
        let mut doors = Vec::with_capacity(cfg.doors.len());
        self.labels.clear();
        let generated = std::mem::take(&mut self.generated);
        for door in cfg.doors.into_iter().filter(|d| !generated.contains(&d.name)) {
            let spec = door.dynamic.clone();
            doors.push(door);
            if let Some(spec) = spec {
                let base = doors.last().expect("just pushed").clone();
                doors.extend(self.period_doors(&base, &spec, now));
            }
        }
        Config { doors, ..cfg }
    }

    fn period_doors(&mut self, door: &Door, spec: &DynamicSpec, now: u64) -> Vec<Door> {
        let key = match read_secret(&spec.secret_file) {
            Ok((key, _)) => Some(key),
            Err(e) => {
                log::error!("{}: {e}; the door stays shut", door.name);
                None
            }
        };
        let live = live_periods(now, spec.period, LEAD_SECS);
        (0..SLOTS)
            .map(|slot| {
                let t = live.iter().copied().find(|t| t % SLOTS == slot);
                if let Some(t) = t {
                    // Known even once burned, so a second completion of the
                    // same sequence in one batch is refused by name.
                    let label = (Arc::from(door.name.as_str()), t);
                    self.labels.insert(Arc::from(format!("{}@{t}", door.name)), label);
                }
                let ports = match (t, &key) {
                    (Some(t), Some(key)) if self.usable(&door.name, t) => {
                        derive(key, t, spec.steps.into(), spec.lo, spec.hi)
                    }
                    _ => None,
                };
                match (t, ports) {
                    (Some(t), Some(ports)) => {
                        let steps = ports.into_iter().map(|port| Step { port, proto: spec.proto }).collect();
                        self.period_door(door, format!("{}@{t}", door.name), steps)
                    }
                    _ => self.period_door(door, format!("{}@slot{slot}", door.name), Vec::new()),
                }
            })
            .collect()
    }

    /// A copy of `door` that knocks `sequence` and does nothing itself:
    /// opening, commands and protection stay with `door`.
    fn period_door(&mut self, door: &Door, name: String, sequence: Vec<Step>) -> Door {
        self.generated.insert(name.clone());
        Door {
            name,
            sequence,
            dynamic: None,
            open: None,
            spa: None,
            one_time_sequences: None,
            start_command: None,
            start_command_6: None,
            stop_command: None,
            stop_command_6: None,
            ..door.clone()
        }
    }

    fn usable(&self, door: &str, t: u64) -> bool {
        self.burned.as_ref().is_some_and(|b| !b.contains(door, t))
    }

    /// The dynamic door and period of a period door's name.
    pub fn resolve(&self, name: &str) -> Option<(Arc<str>, u64)> {
        self.labels.get(name).cloned()
    }

    /// The name log lines use for `name`.
    pub fn display(&self, name: Arc<str>) -> Arc<str> {
        self.labels.get(&name).map_or(name, |(door, _)| door.clone())
    }

    /// How long until some dynamic door's live periods change.
    /// Exact to the millisecond: the loop wakes often for other reasons and
    /// asks again each time, so a wait rounded to whole seconds would keep
    /// being pushed back and never end.
    pub fn until_change(&self, cfg: &Config) -> Option<Duration> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = now.as_secs();
        let periods = cfg.doors.iter().filter_map(|d| d.dynamic.as_ref().map(|s| s.period));
        let at = periods.map(|p| secs + next_change(secs, p, LEAD_SECS)).min()?;
        Some(Duration::from_secs(at).saturating_sub(now))
    }

    /// Records (door, t) as used, keeping only periods that can still be
    /// live. An error means it is not recorded: the door must not open.
    fn burn(&mut self, cfg: &Config, door: &str, t: u64) -> std::io::Result<()> {
        let Some(burned) = self.burned.as_mut() else {
            return Err(std::io::Error::other("the burned-sequence file could not be read at start"));
        };
        let now = unix_now(0);
        let period = |d: &str| {
            cfg.doors.iter().find(|x| x.name == d).and_then(|x| x.dynamic.as_ref()).map(|s| s.period)
        };
        burned.burn(door, t, |d, t| period(d).is_some_and(|p| t + 1 >= period_index(now, p)))
    }
}

impl Daemon {
    /// Burns (door, t) before the door opens, then takes the period out of
    /// the kernel and the tracker. Whether the door may open: not when the
    /// period was burned already (a second knocker of the same sequence),
    /// nor when the burn cannot be written (it would open again after a
    /// restart: fail closed).
    pub(super) async fn burn_period(&mut self, door: &Arc<str>, t: u64) -> bool {
        if !self.dynamic.usable(door, t) {
            self.log.line(&format!("{door}: sequence of period {t} already used, not opening"));
            return false;
        }
        if let Err(e) = self.dynamic.burn(&self.cfg, door, t) {
            self.log
                .line(&format!("{door}: cannot record the used sequence of period {t}: {e}; not opening"));
            return false;
        }
        self.apply(self.cfg.clone(), GateSync::IfChanged).await;
        true
    }

    /// Sleeps until the live periods change, or forever without dynamic doors.
    pub(super) fn dynamic_sleep(&self) -> impl std::future::Future<Output = ()> {
        let wait = self.dynamic.until_change(&self.cfg);
        async move {
            match wait {
                Some(w) => tokio::time::sleep(w).await,
                None => std::future::pending().await,
            }
        }
    }

    /// Names a period door's outcome after its dynamic door; an open
    /// burns the period first, and is dropped if it may not open.
    pub(super) async fn dynamic_outcome(&mut self, o: Outcome) -> Option<Outcome> {
        let d = &self.dynamic;
        Some(match o {
            Outcome::Stage { src, door, stage } => Outcome::Stage { src, door: d.display(door), stage },
            Outcome::Timeout { src, door, stage } => Outcome::Timeout { src, door: d.display(door), stage },
            Outcome::Swept { src, door, count } => {
                Outcome::Swept { src, door: door.map(|n| d.display(n)), count }
            }
            Outcome::Open { src, door } => match d.resolve(&door) {
                Some((name, t)) => {
                    if !self.burn_period(&name, t).await {
                        return None;
                    }
                    Outcome::Open { src, door: name }
                }
                None => Outcome::Open { src, door },
            },
            other => other,
        })
    }

    /// A period boundary (or the lead before it): re-derive the live
    /// sequences.
    pub(super) async fn roll_periods(&mut self) {
        log::debug!("dynamic doors: live periods change");
        self.apply(self.cfg.clone(), GateSync::IfChanged).await;
    }
}
