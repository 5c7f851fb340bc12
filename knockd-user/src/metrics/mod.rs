//! Prometheus metrics: what happened (the [`events`] counters, bumped where
//! it happens) and what is (a [`State`] taken at scrape time), encoded by
//! prometheus-client, served over HTTP by [`http`].
//!
//! A new kernel counter is one row in [`table::KERNEL`]; a new event is one
//! field in [`Events`] and one line in [`Events::register`].

pub mod http;
mod table;

use std::{collections::BTreeMap, sync::LazyLock};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::ConstGauge, info::Info},
    registry::Registry,
};

use crate::{
    bpf::{spa::SpaCounters, Counters},
    config::model::Backend,
    gate::Window,
};

/// Label of the per-door families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct DoorLabel {
    pub door: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub door: String,
    pub stage: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabel {
    pub door: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Counters of events, process-wide: the daemon, its gate thread and its
/// command runner all count without sharing a handle.
#[derive(Debug, Default)]
pub struct Events {
    pub door_opens: Family<DoorLabel, Counter>,
    pub door_stages: Family<StageLabel, Counter>,
    pub door_timeouts: Family<DoorLabel, Counter>,
    pub rate_limited: Family<DoorLabel, Counter>,
    pub gate_open_failures: Family<DoorLabel, Counter>,
    pub sweep_guard_drops: Family<DoorLabel, Counter>,
    pub command_runs: Family<DoorLabel, Counter>,
    pub command_failures: Family<DoorLabel, Counter>,
    pub spa: Family<OutcomeLabel, Counter>,
}

static EVENTS: LazyLock<Events> = LazyLock::new(Events::default);

/// The process's event counters.
pub fn events() -> &'static Events {
    &EVENTS
}

fn door(name: &str) -> DoorLabel {
    DoorLabel { door: name.to_string() }
}

impl Events {
    pub fn door_opened(&self, name: &str) {
        self.door_opens.get_or_create(&door(name)).inc();
    }

    /// `stage` is 1-based, as logged.
    pub fn stage(&self, name: &str, stage: usize) {
        let stage = u32::try_from(stage).unwrap_or(u32::MAX);
        self.door_stages.get_or_create(&StageLabel { door: name.to_string(), stage }).inc();
    }

    pub fn timeout(&self, name: &str) {
        self.door_timeouts.get_or_create(&door(name)).inc();
    }

    pub fn refused(&self, name: &str, n: u64) {
        self.rate_limited.get_or_create(&door(name)).inc_by(n);
    }

    pub fn gate_failed(&self, name: &str) {
        self.gate_open_failures.get_or_create(&door(name)).inc();
    }

    /// `None`: the kernel held the source's attempts, so no door is to blame.
    pub fn swept(&self, name: Option<&str>) {
        self.sweep_guard_drops.get_or_create(&door(name.unwrap_or(""))).inc();
    }

    pub fn command_ran(&self, name: &str, ok: bool) {
        self.command_runs.get_or_create(&door(name)).inc();
        if !ok {
            self.command_failures.get_or_create(&door(name)).inc();
        }
    }

    /// `n` SPA packets' fate: `accepted`, or why they were refused.
    pub fn spa(&self, outcome: &str, n: u64) {
        self.spa.get_or_create(&OutcomeLabel { outcome: outcome.to_string() }).inc_by(n);
    }

    /// One door's count in `family`, for the status report.
    pub fn of(family: &Family<DoorLabel, Counter>, name: &str) -> u64 {
        family.get(&door(name)).map_or(0, |c| c.get())
    }

    fn register(&self, reg: &mut Registry) {
        let rows: [(&str, &str, &Family<DoorLabel, Counter>); 7] = [
            ("door_opens", "Sequences completed and admitted (OPEN SESAME), by door", &self.door_opens),
            ("door_timeouts", "Attempts that ran out of seq_timeout, by door", &self.door_timeouts),
            ("rate_limited", "Completions refused by the door's open_rate, by door", &self.rate_limited),
            (
                "gate_open_failures",
                "Gate windows that could not be opened, by door",
                &self.gate_open_failures,
            ),
            ("sweep_guard_drops", "Attempts dropped by the sweep guard, by door", &self.sweep_guard_drops),
            ("command_runs", "start/stop commands run, by door", &self.command_runs),
            (
                "command_failures",
                "Commands that failed to spawn or exited non-zero, by door",
                &self.command_failures,
            ),
        ];
        for (name, help, family) in rows {
            reg.register(name, help, family.clone());
        }
        reg.register("door_stages", "Steps matched, by door and stage", self.door_stages.clone());
        reg.register("spa_packets", "SPA packets, by outcome", self.spa.clone());
    }
}

/// What the daemon is, read at scrape time: the kernel's counters, the
/// tracker, and the gate windows.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// `None` when the kernel's counter map could not be read.
    pub kernel: Option<Counters>,
    /// The XDP program's SPA capture counters.
    pub spa_kernel: Option<SpaCounters>,
    pub sources: usize,
    pub evictions: u64,
    /// Attempts in progress by door.
    pub attempts: Vec<(String, usize)>,
    pub windows: Vec<(Backend, Window)>,
}

/// The exposition format a scraper asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Prometheus,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it, as Prometheus does.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// The whole exposition for `state` and the process's events.
pub fn render(state: &State, format: Format) -> String {
    let mut reg = Registry::with_prefix("xknockd");
    reg.register(
        "build",
        "The running xknockd",
        Info::new(vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]),
    );
    events().register(&mut reg);
    table::register_state(&mut reg, state);
    let mut out = String::new();
    let res = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &reg),
        Format::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut out, &reg),
    };
    // Writing to a String cannot fail.
    res.expect("encoding metrics into a String");
    out
}

/// Windows per (door, backend), as the gauge wants them.
fn window_counts(windows: &[(Backend, Window)]) -> BTreeMap<(String, String), i64> {
    let mut counts = BTreeMap::new();
    for (backend, w) in windows {
        let key = (w.door.clone(), backend_name(*backend).to_string());
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

pub fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Nftables => "nftables",
        Backend::Iptables => "iptables",
        Backend::Xdp => "xdp",
    }
}

/// A gauge with a fixed value, for state read at scrape time.
fn gauge(v: usize) -> ConstGauge {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
