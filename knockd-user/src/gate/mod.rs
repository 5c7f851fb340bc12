//! Native firewall gates: a door's `open` action. Each backend keeps
//! protected ports closed to new connections from everyone and lets a knocker
//! in for a window the kernel itself expires, so the gate fails closed when
//! the daemon dies.

pub mod iptables;
mod memory;
pub mod nftables;
pub(crate) mod tool;

use std::{net::IpAddr, time::Duration};

use thiserror::Error;

use crate::config::model::{Backend, Config, Step};

/// A port a door protects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Protected {
    pub door: String,
    pub port: Step,
}

/// An open window as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub door: String,
    pub src: IpAddr,
    pub port: Step,
    pub remaining: Duration,
}

#[derive(Debug, Error)]
pub enum GateError {
    /// The backend cannot work on this host; the message says why.
    #[error("{backend:?} backend unavailable: {why}")]
    Unavailable { backend: Backend, why: String },
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    /// The tool hung and was killed; what it was asked to do counts as failed.
    #[error("`{cmd}` did not finish within {after:?} and was killed")]
    Deadline { cmd: String, after: Duration },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// One firewall mechanism. Every method is idempotent: calling it twice
/// leaves the same kernel state as calling it once.
pub trait Gate {
    fn backend(&self) -> Backend;

    /// Makes `protected` the closed set, adopting (not duplicating) what an
    /// earlier run left. Windows still open from that run are kept.
    fn install(&mut self, protected: &[Protected]) -> Result<(), GateError>;

    /// Lets `src` open new connections to `ports` until `duration` from now.
    /// A re-knock replaces the expiry; it never adds a second entry.
    fn open(&mut self, door: &str, src: IpAddr, ports: &[Step], duration: Duration) -> Result<(), GateError>;

    /// The windows open now, read from kernel state.
    fn windows(&self) -> Result<Vec<Window>, GateError>;

    /// Clean stop: every window ends, the protected ports stay closed.
    fn close_windows(&mut self) -> Result<(), GateError>;

    /// Removes every piece of kernel state this backend owns.
    fn flush(&mut self) -> Result<(), GateError>;

    /// Checks that the kernel still holds this backend's gate for
    /// `protected` exactly as `install` left it, and puts back whatever
    /// another tool removed, reordered or bypassed. Returns one line per
    /// repair made; empty when nothing was wrong. Called about twice a second.
    fn repair(&mut self, _protected: &[Protected]) -> Result<Vec<String>, GateError> {
        Ok(Vec::new())
    }
}

/// The backend each door's `open` uses, resolved against the default.
pub fn door_backend(cfg: &Config, door: &crate::config::model::Door) -> Option<Backend> {
    door.open.as_ref().map(|o| o.backend.unwrap_or(cfg.options.default_backend))
}

/// Protected ports per backend, in a stable order.
pub fn protected_by_backend(cfg: &Config) -> Vec<(Backend, Vec<Protected>)> {
    let mut out: Vec<(Backend, Vec<Protected>)> = Vec::new();
    for door in &cfg.doors {
        let (Some(open), Some(backend)) = (&door.open, door_backend(cfg, door)) else {
            continue;
        };
        let list = match out.iter_mut().find(|(b, _)| *b == backend) {
            Some((_, list)) => list,
            None => {
                out.push((backend, Vec::new()));
                &mut out.last_mut().expect("just pushed").1
            }
        };
        list.extend(open.ports.iter().map(|&port| Protected { door: door.name.clone(), port }));
    }
    for (_, list) in &mut out {
        list.sort();
    }
    out
}

/// Runs a command within [`tool::DEADLINE`], mapping a failure to
/// `GateError::Command` with its stderr.
pub(crate) fn run(cmd: &mut std::process::Command) -> Result<std::process::Output, GateError> {
    let out = tool::output(cmd, None)?;
    if !out.status.success() {
        return Err(GateError::Command {
            cmd: format!("{cmd:?}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}
