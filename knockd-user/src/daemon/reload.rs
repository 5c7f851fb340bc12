//! SIGHUP: re-read the config atomically. A broken file leaves the running
//! config in place (knockd exits here, its #26).

use std::sync::Arc;

use super::{door_spec, kernel_ports, ratelimit, Daemon};
use crate::{
    config::{self, model::Config},
    events::monotonic_now,
    knocklog,
};

impl Daemon {
    pub(super) fn reload(&mut self) {
        self.log.notice(&knocklog::rereading(self.cfg.path.display()));
        if let Err(e) = self.log.reopen() {
            log::error!("re-opening the log file: {e}");
        }
        match config::load(&self.cfg.path) {
            Ok(new) => self.apply(new),
            Err(e) => self.log.notice(&format!("config error, keeping the running config: {e}")),
        }
    }

    /// Switches to `new`: kernel maps first (new ports in before stale ones
    /// leave), then the tracker, which keeps knocks on unchanged doors.
    pub(super) fn apply(&mut self, new: Config) {
        if let Err(e) = self.gates.sync(&new, &mut self.knocker) {
            self.log.notice(&format!("updating the gates failed, keeping the running config: {e:#}"));
            if let Err(e) = self.gates.sync(&self.cfg, &mut self.knocker) {
                log::error!("restoring the gates: {e:#}");
            }
            return;
        }
        if let Err(e) = self.knocker.set_knock_ports(&kernel_ports(&new)) {
            self.log.notice(&format!("updating the knock-port map failed, keeping the running config: {e}"));
            // Put back what the old config needs; the map may be half-updated.
            if let Err(e) = self.knocker.set_knock_ports(&kernel_ports(&self.cfg)) {
                log::error!("restoring the knock-port map: {e}");
            }
            return;
        }
        if new.options.interfaces != self.cfg.options.interfaces && !new.options.interfaces.is_empty() {
            log::warn!("interface changes take effect on restart");
        }
        self.tracker.reconfigure(new.doors.iter().map(door_spec).collect(), new.options.max_sources);
        self.limiter.configure(ratelimit::limits(&new), monotonic_now());
        self.doors = new.doors.iter().map(|d| (Arc::from(d.name.as_str()), d.clone())).collect();
        self.cfg = new;
        self.sync_addrs();
    }
}
