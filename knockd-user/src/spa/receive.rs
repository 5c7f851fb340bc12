//! One datagram through one door: authentication, replay lookup on the raw
//! packet, decryption and parsing, recording, then the door's policy.
//!
//! fwknopd looks the replay cache up before the HMAC. Only authentic packets
//! are ever recorded, so every packet is refused or accepted as fwknopd
//! would; HMAC first spares junk a second SHA-256 and the cache lookup.
//! Two refusals get another reason or door: a replay made under a key since
//! rotated is refused as a bad HMAC, and with several doors on one port a
//! replay is charged to the door whose key matches, not to the first.

use std::net::IpAddr;

use thiserror::Error;

use super::{
    codec::{authenticate, open, replay_digest},
    error::{DecodeError, Refusal, ReplayError},
    keys::SpaKeys,
    message::SpaMessage,
    policy::{Grant, SpaPolicy},
    replay::{expiry, ReplayCache},
};

/// Why a datagram opened nothing.
#[derive(Debug, Error)]
pub enum Rejected {
    /// Not authentic or not well formed: for another door's keys, maybe.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Authentic, but the door refuses it (replays included).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Authentic, but its digest could not be stored: refused, fail closed.
    #[error(transparent)]
    Cache(#[from] ReplayError),
}

impl Rejected {
    /// Short reason for the log line and its counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Decode(e) => e.reason(),
            Self::Refused(r) => r.reason(),
            Self::Cache(_) => "replay cache unwritable",
        }
    }
}

/// Accepts `payload` from `source` for a door with `keys` and `policy`, at
/// Unix time `now`. An authentic packet is recorded before the policy is
/// applied (as fwknopd does), so a refused one cannot be retried verbatim.
pub fn receive(
    keys: &SpaKeys,
    policy: &SpaPolicy,
    cache: &mut ReplayCache,
    payload: &[u8],
    source: IpAddr,
    now: u64,
) -> Result<(SpaMessage, Grant), Rejected> {
    let authentic = authenticate(keys, payload)?;
    let digest = replay_digest(payload);
    if cache.contains(&digest, now) {
        return Err(Refusal::Replay.into());
    }
    let msg = open(keys, authentic)?;
    cache.record(&digest, expiry(msg.timestamp, now, policy.max_age), now)?;
    let grant = policy.check(&msg, source, now)?;
    Ok((msg, grant))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spa::{
        codec::encode,
        test_door::{keys, ssh_access, ssh_policy},
    };

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn accepts_once_then_refuses_the_replay_even_after_a_restart() {
        let (keys, policy, msg) = (keys(), ssh_policy(), ssh_access("10.0.0.2", NOW));
        let wire = encode(&keys, &msg, &[7; 8]).unwrap();
        let dir = std::env::temp_dir().join(format!("xknock-receive-{}", std::process::id()));
        let src: IpAddr = "10.0.0.2".parse().unwrap();

        let mut cache = ReplayCache::open(&dir, NOW).unwrap();
        let (got, grant) = receive(&keys, &policy, &mut cache, wire.as_bytes(), src, NOW).unwrap();
        assert_eq!((got.user.as_str(), grant.ports.len()), ("alice", 1));
        let again = receive(&keys, &policy, &mut cache, wire.as_bytes(), src, NOW + 1).unwrap_err();
        assert_eq!(again.reason(), "replay");
        drop(cache);
        let mut cache = ReplayCache::open(&dir, NOW + 60).unwrap();
        let restarted = receive(&keys, &policy, &mut cache, wire.as_bytes(), src, NOW + 60).unwrap_err();
        assert_eq!(restarted.reason(), "replay");

        // Stale but authentic: recorded, then refused by age.
        let old =
            encode(&keys, &SpaMessage { timestamp: (NOW - 500) as u32, ..msg.clone() }, &[8; 8]).unwrap();
        let err = receive(&keys, &policy, &mut cache, old.as_bytes(), src, NOW).unwrap_err();
        assert_eq!(err.reason(), "too old");
        let err = receive(&keys, &policy, &mut cache, old.as_bytes(), src, NOW).unwrap_err();
        assert_eq!(err.reason(), "replay");
        let junk = receive(&keys, &policy, &mut cache, &[b'A'; 200], src, NOW).unwrap_err();
        assert_eq!(junk.reason(), "bad HMAC");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
