//! What a door grants an authentic packet: pure functions of the message,
//! the packet's source and an injected clock, so every rule is unit-tested.

use std::{net::IpAddr, time::Duration};

use super::{
    error::Refusal,
    message::{SpaMessage, SpaProto},
};
use crate::config::model::{Proto, Step};

/// fwknop's `MAX_SPA_PACKET_AGE`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(120);

/// A door's SPA rules, as its config states them.
#[derive(Debug, Clone)]
pub struct SpaPolicy {
    /// Refuse packets further than this from `now`, past or future.
    pub max_age: Duration,
    /// The allow-IP must be the packet's source (so `0.0.0.0` is refused).
    /// Off, it follows fwknopd: `0.0.0.0` means the source, any other
    /// allow-IP is opened as asked.
    pub require_source_address: bool,
    /// `None`: any user.
    pub users: Option<Vec<String>>,
    /// The door's `open.ports`: the most a packet can get.
    pub ports: Vec<Step>,
    /// The door's `open.duration`: the longest a packet can get.
    pub duration: Duration,
}

/// What to open, for whom and how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub ip: IpAddr,
    pub ports: Vec<Step>,
    pub duration: Duration,
}

impl SpaPolicy {
    /// All checks, in fwknopd's order after decryption: age, source, user,
    /// access. `now` is Unix seconds.
    pub fn check(&self, msg: &SpaMessage, source: IpAddr, now: u64) -> Result<Grant, Refusal> {
        check_age(msg.timestamp, now, self.max_age)?;
        let ip = self.allowed_ip(msg.allow_ip, source)?;
        self.check_user(&msg.user)?;
        let ports = intersect(&msg.access, &self.ports);
        if ports.is_empty() {
            return Err(Refusal::AccessNotAllowed);
        }
        Ok(Grant { ip, ports, duration: window(self.duration, msg.client_timeout) })
    }

    fn allowed_ip(&self, allow: IpAddr, source: IpAddr) -> Result<IpAddr, Refusal> {
        let source = source.to_canonical();
        if allow.is_unspecified() && !self.require_source_address {
            return Ok(source);
        }
        if allow == source || !self.require_source_address {
            return Ok(allow);
        }
        Err(Refusal::SourceMismatch { allow, from: source })
    }

    fn check_user(&self, user: &str) -> Result<(), Refusal> {
        match &self.users {
            Some(users) if !users.iter().any(|u| u == user) => Err(Refusal::User(user.to_string())),
            _ => Ok(()),
        }
    }
}

/// `|now - timestamp| <= max_age`, as fwknopd's aging check.
pub fn check_age(timestamp: u32, now: u64, max_age: Duration) -> Result<(), Refusal> {
    let ts = u64::from(timestamp);
    if now >= ts {
        let age = Duration::from_secs(now - ts);
        if age > max_age {
            return Err(Refusal::TooOld(age));
        }
    } else {
        let ahead = Duration::from_secs(ts - now);
        if ahead > max_age {
            return Err(Refusal::FromFuture(ahead));
        }
    }
    Ok(())
}

/// The requested TCP/UDP ports the door protects, in the door's order.
pub fn intersect(requested: &[super::message::AccessSpec], protected: &[Step]) -> Vec<Step> {
    protected
        .iter()
        .filter(|step| {
            requested.iter().any(|r| {
                let proto = match r.proto {
                    SpaProto::Tcp => Proto::Tcp,
                    SpaProto::Udp => Proto::Udp,
                    SpaProto::Icmp | SpaProto::None => return false,
                };
                proto == step.proto && r.port == step.port
            })
        })
        .copied()
        .collect()
}

/// A client timeout can shorten the door's window, never lengthen it; 0 is unset.
pub fn window(door: Duration, client_timeout: Option<u32>) -> Duration {
    match client_timeout.filter(|&t| t > 0) {
        Some(t) => door.min(Duration::from_secs(t.into())),
        None => door,
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
