//! Window state can never fill up: with opens limited per door to `open_burst` at once
//! and `open_rate` per second, a door can hold at most
//! `(open_burst + open_rate * ceil(duration)) * ports` live windows, whoever knocks.
//! The sum over the doors of a backend must fit that backend's window store, so a
//! flood of completions (spoofed sources included) can never crowd out a real knocker.
//!
//! Capacities:
//! - xdp: the `GATE_ALLOW` map, [`knockd_common::MAX_WINDOWS`] entries (both families).
//! - iptables: one ipset per family; `gate/iptables.rs` creates them without
//!   `maxelem`, so ipset's default of 65536 applies. The worst case is every window in
//!   one family, so that is the bound.
//! - nftables: no bound checked. Our sets are created without `size`, and a set
//!   without a size has no element limit in the kernel (only memory).

use std::path::Path;

use super::{
    draft::{Draft, DraftDoor},
    error::ConfigError,
    model::{Backend, Options},
    values::backend_name,
};

/// ipset's default `maxelem`, which our sets get (see the module doc).
pub(crate) const IPSET_MAXELEM: u64 = 65_536;

/// How many windows `backend` can hold at once; `None`: no limit to check.
pub(crate) fn window_capacity(backend: Backend) -> Option<u64> {
    match backend {
        Backend::Xdp => Some(u64::from(knockd_common::MAX_WINDOWS)),
        Backend::Iptables => Some(IPSET_MAXELEM),
        Backend::Nftables => None,
    }
}

/// The most windows `door` can have live at once under the open rate limit.
pub(crate) fn worst_case_windows(door: &DraftDoor, options: &Options) -> u128 {
    let Some(open) = &door.door.open else {
        return 0;
    };
    let secs = u128::from(open.duration.as_secs()) + u128::from(open.duration.subsec_nanos() > 0);
    let opens = u128::from(options.open_burst) + u128::from(options.open_rate) * secs;
    opens * open.ports.len() as u128
}

/// Refuses a config whose doors could, together, fill a backend's window store.
/// The door named is the one whose windows push its backend over the limit.
pub(crate) fn check_window_capacity(draft: &Draft, path: &Path) -> Result<(), ConfigError> {
    for backend in [Backend::Nftables, Backend::Iptables, Backend::Xdp] {
        let Some(capacity) = window_capacity(backend) else {
            continue;
        };
        let mut total: u128 = 0;
        for door in draft.doors.iter().filter(|d| uses(d, backend, &draft.options)) {
            total += worst_case_windows(door, &draft.options);
            if total > u128::from(capacity) {
                return Err(door.error(
                    path,
                    "open.duration",
                    message(backend, capacity, total, &draft.options),
                ));
            }
        }
    }
    Ok(())
}

fn uses(door: &DraftDoor, backend: Backend, options: &Options) -> bool {
    door.door.open.as_ref().is_some_and(|o| o.backend.unwrap_or(options.default_backend) == backend)
}

fn message(backend: Backend, capacity: u64, total: u128, options: &Options) -> String {
    format!(
        "the doors using the {} backend could hold up to {total} windows at once (with open_rate {} and open_burst {}: (open_burst + open_rate × duration in seconds) × ports, summed over doors), more than its {capacity}: lower options.open_rate, options.open_burst or open.duration",
        backend_name(backend),
        options.open_rate,
        options.open_burst,
    )
}
