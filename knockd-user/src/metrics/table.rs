//! Metrics read from the daemon's state at scrape time.

use prometheus_client::{
    metrics::{counter::ConstCounter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{gauge, window_counts, DoorLabel, State, WindowLabel};
use crate::bpf::{spa::SpaCounters, Counters};

type Getter = fn(&Counters) -> u64;
type SpaGetter = fn(&SpaCounters) -> u64;

/// Every kernel counter, summed over CPUs: (name after `xknockd_xdp_`,
/// help, getter). Counters suffix `_total` themselves.
pub const KERNEL: &[(&str, &str, Getter)] = &[
    ("frames", "Frames the XDP program saw", |c| c.frames),
    ("knock_hits", "Frames on a knock port reported as knocks", |c| c.knock_hits),
    ("flag_mismatch", "TCP knocks whose flags no door accepts", |c| c.flag_mismatch),
    ("ringbuf_full", "Knocks lost because the ring buffer was full", |c| c.ringbuf_full),
    ("not_local", "Knocks to an address that is not this host's", |c| c.not_local),
    ("gate_drop", "New connections to a protected port dropped by the xdp gate", |c| c.gate_drop),
    ("gate_pass", "Connections to a protected port passed by an open window", |c| c.gate_pass),
    ("stealth_drop", "Knock packets dropped after recording (stealth)", |c| c.stealth_drop),
    ("unclassified_drop", "Frames dropped because they could not be classified while gating", |c| {
        c.unclassified_drop
    }),
    ("first_step", "First steps kept in the kernel without an event", |c| c.first_step),
    ("pairs", "Events carrying a first and a second step", |c| c.pairs),
    ("orphan_step", "Later steps from sources with no live first step", |c| c.orphan_step),
    ("sweep_counted", "New connections to other ports counted by the sweep guard", |c| c.sweep_counted),
    ("sweep_dropped", "Sources whose attempts the sweep guard dropped", |c| c.sweep_dropped),
    ("active_full", "Pairs whose source found the active-source table full", |c| c.active_full),
];

/// The XDP program's SPA capture counters, as [`KERNEL`].
pub const SPA_KERNEL: &[(&str, &str, SpaGetter)] = &[
    ("spa_captured", "UDP datagrams to an SPA port passed to the daemon", |c| c.captured),
    ("spa_limited", "SPA datagrams dropped by the kernel's rate limit", |c| c.limited),
    ("spa_ring_full", "SPA datagrams lost because the SPA ring was full", |c| c.ring_full),
    ("spa_bad_len", "SPA datagrams of an impossible length", |c| c.bad_len),
];

pub(super) fn register_state(reg: &mut Registry, state: &State) {
    if let Some(c) = &state.kernel {
        for (name, help, get) in KERNEL {
            reg.register(format!("xdp_{name}"), *help, ConstCounter::new(get(c)));
        }
    }
    if let Some(c) = &state.spa_kernel {
        for (name, help, get) in SPA_KERNEL {
            reg.register(format!("xdp_{name}"), *help, ConstCounter::new(get(c)));
        }
    }
    reg.register("tracker_sources", "Sources with an attempt in progress", gauge(state.sources));
    reg.register(
        "tracker_evictions",
        "Sources evicted because the tracker was at max_sources",
        ConstCounter::new(state.evictions),
    );
    let attempts = Family::<DoorLabel, Gauge>::default();
    for (door, n) in &state.attempts {
        attempts
            .get_or_create(&DoorLabel { door: door.clone() })
            .inc_by(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    reg.register("attempts_in_progress", "Attempts past their first step, by door", attempts);
    let windows = Family::<WindowLabel, Gauge>::default();
    for ((door, backend), n) in window_counts(&state.windows) {
        windows.get_or_create(&WindowLabel { door, backend }).set(n);
    }
    reg.register("open_windows", "Open gate windows (address and port pairs), by door and backend", windows);
}
