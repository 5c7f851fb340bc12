//! Knocking a dynamic door: its current sequence, derived as the README
//! publishes it, from a config's door or from the command line.

use std::path::PathBuf;

use super::KnockError;
use crate::{
    config::{
        dynamic::{parse_range, DynamicSpec, MAX_DYNAMIC_STEPS},
        model::{Proto, Step},
    },
    dynamic::{derive, period_index, read_secret, unix_now},
};

#[derive(Clone, Debug, Default, clap::Args)]
pub struct DynamicArgs {
    /// Knock the current dynamic sequence of this base32 secret file
    /// (with --steps, --period and --ports).
    #[arg(long = "dynamic", value_name = "SECRET_FILE", requires_all = ["steps", "period", "port_range"])]
    pub secret_file: Option<PathBuf>,
    /// Ports in each dynamic sequence (1-8).
    #[arg(long, requires = "secret_file")]
    pub steps: Option<u8>,
    /// Seconds each dynamic sequence lives.
    #[arg(long, requires = "secret_file")]
    pub period: Option<u64>,
    /// The range dynamic ports come from, LO-HI.
    #[arg(long = "ports", value_name = "LO-HI", requires = "secret_file")]
    pub port_range: Option<String>,
    /// Seconds to add to our clock when deriving a dynamic sequence
    /// (negative: behind), for a client whose clock is known to be off.
    #[arg(long = "time-offset", value_name = "SECONDS", allow_hyphen_values = true, default_value_t = 0)]
    pub time_offset: i64,
}

/// The spec `--dynamic` describes; `udp` is knock's -u.
pub fn spec_from_args(args: &DynamicArgs, udp: bool) -> Result<Option<DynamicSpec>, KnockError> {
    let Some(secret_file) = args.secret_file.clone() else {
        return Ok(None);
    };
    let bad = |what: &str, why: String| KnockError::Port(what.to_string(), why);
    let steps = args.steps.unwrap_or(0);
    if !(1..=MAX_DYNAMIC_STEPS).contains(&steps) {
        return Err(bad("--steps", format!("must be 1-{MAX_DYNAMIC_STEPS}")));
    }
    let period = args.period.unwrap_or(0);
    if period == 0 {
        return Err(bad("--period", "must be at least 1 second".into()));
    }
    let range = args.port_range.as_deref().unwrap_or("");
    let (lo, hi) = parse_range(range).map_err(|m| bad("--ports", m))?;
    let proto = if udp { Proto::Udp } else { Proto::Tcp };
    Ok(Some(DynamicSpec { secret_file, steps, period, lo, hi, proto }))
}

/// The sequence of the period our clock (plus `offset` seconds) is in.
pub fn current_sequence(spec: &DynamicSpec, offset: i64) -> Result<Vec<Step>, KnockError> {
    let (key, _) = read_secret(&spec.secret_file).map_err(|e| KnockError::Dynamic(e.to_string()))?;
    let t = period_index(unix_now(offset), spec.period);
    let ports = derive(&key, t, spec.steps.into(), spec.lo, spec.hi).ok_or_else(|| {
        KnockError::Dynamic(format!("{}-{} is too small for {} ports", spec.lo, spec.hi, spec.steps))
    })?;
    Ok(ports.into_iter().map(|port| Step { port, proto: spec.proto }).collect())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{super::KnockArgs, *};

    #[test]
    fn dynamic_flags_go_together() {
        let ok = KnockArgs::try_parse_from([
            "xknock",
            "--dynamic",
            "s",
            "--steps",
            "3",
            "--period",
            "30",
            "--ports",
            "2-9",
            "--time-offset",
            "-30",
            "h",
        ])
        .unwrap();
        assert_eq!(ok.dynamic.time_offset, -30);
        let spec = spec_from_args(&ok.dynamic, true).unwrap().unwrap();
        assert_eq!((spec.steps, spec.period, spec.lo, spec.hi, spec.proto), (3, 30, 2, 9, Proto::Udp));
        assert!(KnockArgs::try_parse_from(["xknock", "--dynamic", "s", "h"]).is_err());
        assert!(KnockArgs::try_parse_from(["xknock", "--steps", "3", "h"]).is_err());
    }
}
