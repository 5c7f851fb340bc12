//! Dynamic knock sequences: the ports of a door change every `period`
//! seconds, derived from a shared secret as the README publishes it, so
//! any client that follows the README can knock, and a sequence seen on
//! the wire is worthless once used or a period or two old.

mod burned;
mod derive;

use std::{
    io::Read,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

pub use burned::{Burned, BURNED_FILE};
pub use derive::{derive, period_index, Secret};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DynamicError {
    #[error("{0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: not base32 (RFC 4648): {1}")]
    Base32(String, String),
    #[error("{0}: the secret is {1} bytes; at least {MIN_SECRET_BYTES} are needed")]
    Short(String, usize),
}

/// 80 bits: the shortest secret authenticator apps hand out.
pub const MIN_SECRET_BYTES: usize = 10;

/// Reads a secret file as one-time files are read (no symlink followed,
/// refused when others can write it). The second value is a warning
/// when others can read it.
pub fn read_secret(path: &Path) -> Result<(Secret, Option<String>), DynamicError> {
    let name = || path.display().to_string();
    let (mut file, warning) =
        crate::config::file_safety::open_private(path, false).map_err(|e| DynamicError::Read(name(), e))?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| DynamicError::Read(name(), e))?;
    let secret = Secret::from_base32(&text).map_err(|e| DynamicError::Base32(name(), e))?;
    if secret.len() < MIN_SECRET_BYTES {
        return Err(DynamicError::Short(name(), secret.len()));
    }
    Ok((secret, warning))
}

/// Seconds since the epoch, shifted by `offset` (a client's skew option).
pub fn unix_now(offset: i64) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    now.saturating_add_signed(offset)
}

/// Periods whose sequences the kernel must hold at unix time `now`: the
/// previous, current and next (clock skew), plus the one after next in
/// the last `lead` before a boundary, so the next period's neighbour is
/// live before the period begins.
pub fn live_periods(now: u64, period: u64, lead: u64) -> Vec<u64> {
    let t = period_index(now, period);
    let mut out = vec![t.saturating_sub(1), t, t + 1];
    if period_index(now + lead, period) > t {
        out.push(t + 2);
    }
    out.dedup();
    out
}

/// Seconds from `now` until [`live_periods`] next changes.
pub fn next_change(now: u64, period: u64, lead: u64) -> u64 {
    let boundary = (period_index(now, period) + 1) * period;
    let early = boundary.saturating_sub(lead);
    if early > now {
        early - now
    } else {
        boundary - now
    }
}

/// Seconds before a boundary at which the period after next goes live:
/// far more than a map update takes, and short against the 5 s minimum.
pub const LEAD_SECS: u64 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_set_grows_ahead_of_the_boundary() {
        assert_eq!(live_periods(100, 10, 1), vec![9, 10, 11]);
        assert_eq!(live_periods(108, 10, 1), vec![9, 10, 11]);
        assert_eq!(live_periods(109, 10, 1), vec![9, 10, 11, 12]);
        assert_eq!(live_periods(110, 10, 1), vec![10, 11, 12]);
        assert_eq!(live_periods(3, 10, 1), vec![0, 1]);
    }

    #[test]
    fn next_change_lands_on_both_edges() {
        assert_eq!(next_change(100, 10, 1), 9);
        assert_eq!(next_change(108, 10, 1), 1);
        assert_eq!(next_change(109, 10, 1), 1);
        assert_eq!(next_change(110, 10, 1), 9);
    }
}
