//! One-time sequences: each successful knock burns the file's active line
//! before the door opens, and the next line goes live in the kernel map at
//! once, for IPv4 and IPv6 alike (knockd forgets the IPv6 filter).

use std::io;

use super::{reload::GateSync, Daemon};
use crate::config::{
    self,
    model::{Config, Door, Step},
    one_time::OneTimeFile,
};

/// Burns the active line if it is the sequence that was knocked. `Ok(None)`:
/// it is not; `Ok(Some(next))`: burnt, with the next live sequence if any.
fn burn(file: &mut OneTimeFile, knocked: &[Step]) -> io::Result<Option<Option<Vec<Step>>>> {
    if file.active().map(|(_, _, seq)| seq).as_deref() != Some(knocked) {
        return Ok(None);
    }
    file.consume_active().map(Some)
}

impl Daemon {
    /// Burns the active line of `door`'s file. Returns whether the door may
    /// open: if the line cannot be burnt, opening would allow a replay, so
    /// the door stays shut (fail closed).
    pub(super) async fn rotate_one_time(&mut self, door: &Door) -> bool {
        let Some(path) = door.one_time_sequences.as_deref() else {
            return true;
        };
        let next = match OneTimeFile::open(path).and_then(|mut f| burn(&mut f, &door.sequence)) {
            Ok(Some(next)) => next,
            Ok(None) => {
                // The file changed under us: the knocked line is no longer the
                // active one. Refuse, and arm whatever the file now says.
                self.log.line(&format!(
                    "{}: one-time sequences file changed; not opening, reloading it",
                    door.name
                ));
                self.reload().await;
                return false;
            }
            Err(e) => {
                self.log.line(&format!(
                    "{}: cannot update one-time sequences file {}: {e}; not opening",
                    door.name,
                    path.display()
                ));
                return false;
            }
        };
        let mut cfg = self.cfg.clone();
        let Some(d) = cfg.doors.iter_mut().find(|d| d.name == door.name) else {
            return true;
        };
        // The door stays in the config whatever happens: its protected ports
        // are the config's, and stay closed while it is disabled.
        match next {
            Some(seq) => {
                d.sequence = seq;
                if let Err(e) = config::check_disjoint(&cfg) {
                    self.log.line(&format!(
                        "{}: the next one-time sequence is refused ({e}) --> disabling the door",
                        door.name
                    ));
                    disable(&mut cfg, &door.name);
                }
            }
            None => {
                self.log.line(&format!(
                    "no more sequences left in the one time sequences file for door {} --> disabling the door",
                    door.name
                ));
                disable(&mut cfg, &door.name);
            }
        }
        self.apply(cfg, GateSync::IfChanged).await;
        true
    }
}

/// A disabled door has an empty sequence: it never matches, and keeps its
/// `open`, so its ports stay protected.
fn disable(cfg: &mut Config, name: &str) {
    if let Some(d) = cfg.doors.iter_mut().find(|d| d.name == name) {
        d.sequence.clear();
    }
}
