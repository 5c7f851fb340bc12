//! A door's `dynamic` block (YAML only): its sequence is derived from a
//! shared secret each period (see `crate::dynamic`), instead of `sequence`.
//!
//! The range the ports come from counts as the door's knock ports for the
//! disjointness rule: any port in it may be a step some period, so it may
//! meet no other door's steps and no protected port.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{draft::DraftDoor, error::ConfigError, model::Proto, model::Step};
use crate::dynamic::read_secret;

/// The keys of a `dynamic` block, for error paths and line lookups.
pub(super) const DYNAMIC_KEYS: &[&str] = &["secret_file", "steps", "period", "ports", "proto"];

pub const MIN_PERIOD_SECS: u64 = 5;
pub const MAX_DYNAMIC_STEPS: u8 = 8;

/// A dynamic door's parameters. The secret stays in its file: it is read
/// when sequences are derived, so it never sits in a printed config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamicSpec {
    /// As resolved against the config file's directory.
    pub secret_file: PathBuf,
    pub steps: u8,
    /// Seconds each sequence lives (RFC 6238's time step).
    pub period: u64,
    pub lo: u16,
    pub hi: u16,
    pub proto: Proto,
}

impl DynamicSpec {
    /// Whether `step` could be one of this door's knocks in some period.
    pub fn covers(&self, step: &Step) -> bool {
        step.proto == self.proto && (self.lo..=self.hi).contains(&step.port)
    }

    fn overlaps(&self, other: &DynamicSpec) -> bool {
        self.proto == other.proto && self.lo <= other.hi && other.lo <= self.hi
    }

    pub fn range(&self) -> String {
        format!("{}-{}/{}", self.lo, self.hi, self.proto.as_str())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of dynamic-sequence settings")]
pub(super) struct RawDynamic {
    secret_file: PathBuf,
    steps: u8,
    period: u64,
    ports: String,
    proto: Option<String>,
}

/// Checks the block and the secret file (owner, mode, no symlink, base32).
pub(super) fn convert(raw: RawDynamic, draft: &DraftDoor, path: &Path) -> Result<DynamicSpec, ConfigError> {
    let err = |key: &str, message: String| draft.error(path, &format!("dynamic.{key}"), message);
    if !(1..=MAX_DYNAMIC_STEPS).contains(&raw.steps) {
        return Err(err("steps", format!("must be 1-{MAX_DYNAMIC_STEPS}")));
    }
    if raw.period < MIN_PERIOD_SECS {
        return Err(err("period", format!("must be at least {MIN_PERIOD_SECS} seconds")));
    }
    let (lo, hi) = parse_range(&raw.ports).map_err(|m| err("ports", m))?;
    if u32::from(hi - lo) + 1 < u32::from(raw.steps) {
        return Err(err("ports", format!("{}-{} holds fewer than {} ports", lo, hi, raw.steps)));
    }
    let proto = match raw.proto.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("tcp") => Proto::Tcp,
        Some("udp") => Proto::Udp,
        Some(other) => return Err(err("proto", format!("unknown protocol `{other}` (use tcp or udp)"))),
    };
    let secret_file = path.parent().unwrap_or(Path::new("")).join(&raw.secret_file);
    match read_secret(&secret_file) {
        Ok((_, Some(warning))) => log::warn!("{}: {warning}", secret_file.display()),
        Ok((_, None)) => {}
        Err(e) => return Err(err("secret_file", e.to_string())),
    }
    Ok(DynamicSpec { secret_file, steps: raw.steps, period: raw.period, lo, hi, proto })
}

/// `"20000-40000"`, both ends in 1-65535, low first.
pub fn parse_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("`{text}` is not a port range like \"20000-40000\"");
    let (lo, hi) = text.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || hi < lo {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// A door has `dynamic` or `sequence`, never both; its range meets no
/// other door's steps, no other dynamic range, and no protected port.
pub(super) fn check_doors(drafts: &[DraftDoor], path: &Path) -> Result<(), ConfigError> {
    for d in drafts {
        let Some(spec) = &d.door.dynamic else { continue };
        let err = |m: String| d.error(path, "dynamic.ports", m);
        if d.sequence_given || d.door.one_time_sequences.is_some() {
            return Err(d.error(path, "dynamic", "give `dynamic` or a sequence, not both"));
        }
        for other in drafts.iter().filter(|o| !std::ptr::eq(*o, d)) {
            if let Some(step) = knock_steps(other).find(|s| spec.covers(s)) {
                let name = &other.door.name;
                return Err(err(format!("{} includes {step}, a knock step of door `{name}`", spec.range())));
            }
            if other.door.dynamic.as_ref().is_some_and(|o| o.overlaps(spec)) {
                let name = &other.door.name;
                return Err(err(format!("{} overlaps the dynamic range of door `{name}`", spec.range())));
            }
        }
        for p in drafts {
            let ports = p.door.open.iter().flat_map(|o| o.ports.iter());
            if let Some(step) = ports.into_iter().find(|s| spec.covers(s)) {
                let message = format!(
                    "{} includes {step}, which door `{}` protects: knock ports are never gated, so it would be open to everyone",
                    spec.range(),
                    p.door.name
                );
                return Err(err(message));
            }
        }
    }
    Ok(())
}

/// Every step a door may knock on: its sequence, its one-time lines and
/// its SPA port.
fn knock_steps(d: &DraftDoor) -> impl Iterator<Item = Step> + '_ {
    let lines = d.one_time_lines.iter().flat_map(|l| l.steps.iter().copied());
    d.door.sequence.iter().copied().chain(lines).chain(d.door.spa.as_ref().map(|s| s.step()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("20000-40000"), Ok((20000, 40000)));
        assert_eq!(parse_range(" 7 - 7 "), Ok((7, 7)));
        assert!(parse_range("0-10").is_err());
        assert!(parse_range("10-9").is_err());
        assert!(parse_range("10").is_err());
        assert!(parse_range("1-70000").is_err());
    }

    #[test]
    fn cover_and_overlap_respect_the_protocol() {
        let spec =
            |lo, hi, proto| DynamicSpec { secret_file: PathBuf::new(), steps: 3, period: 30, lo, hi, proto };
        let a = spec(100, 200, Proto::Tcp);
        assert!(a.covers(&Step { port: 100, proto: Proto::Tcp }));
        assert!(!a.covers(&Step { port: 100, proto: Proto::Udp }));
        assert!(!a.covers(&Step { port: 201, proto: Proto::Tcp }));
        assert!(a.overlaps(&spec(200, 300, Proto::Tcp)));
        assert!(!a.overlaps(&spec(200, 300, Proto::Udp)));
        assert!(!a.overlaps(&spec(201, 300, Proto::Tcp)));
    }
}
