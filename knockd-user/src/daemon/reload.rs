//! SIGHUP: re-read the config atomically. A broken file leaves the running
//! config in place (knockd exits here, its #26).

use std::sync::Arc;

use anyhow::Context;

use super::{door_spec, kernel_ports, ratelimit, uses_backend, Daemon};
use crate::{
    config::{
        self,
        model::{Backend, Config},
    },
    events::monotonic_now,
    gate::protected_by_backend,
    knocklog,
};

/// Whether [`Daemon::apply`] re-installs gates whose ports did not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GateSync {
    /// SIGHUP: always, as a fresh start would.
    Always,
    /// A one-time rotation changes only a sequence: the gates are left
    /// alone unless the protected ports moved, so an open does not wait
    /// behind a firewall tool.
    IfChanged,
}

impl Daemon {
    pub(super) async fn reload(&mut self) {
        self.log.notice(&knocklog::rereading(self.cfg.path.display()));
        if let Err(e) = self.log.reopen() {
            log::error!("re-opening the log file: {e}");
        }
        match config::load(&self.cfg.path) {
            Ok(new) => self.apply(new, GateSync::Always).await,
            Err(e) => self.log.notice(&format!("config error, keeping the running config: {e}")),
        }
    }

    /// Switches to `new`: kernel maps first (new ports in before stale ones
    /// leave), then the tracker, which keeps knocks on unchanged doors.
    pub(super) async fn apply(&mut self, new: Config, when: GateSync) {
        let new = self.dynamic.expand(new);
        let changed = protected_by_backend(&new) != protected_by_backend(&self.cfg);
        if when == GateSync::Always || changed {
            if let Err(e) = self.sync_gates(&new).await {
                self.log.notice(&format!("updating the gates failed, keeping the running config: {e:#}"));
                return;
            }
        }
        if let Err(e) = super::apply_kernel_steps(&mut self.knocker, &new) {
            log::error!("updating the first-step tables: {e}");
        }
        if new.options.first_step_slots != self.cfg.options.first_step_slots {
            log::warn!("first_step_slots changes take effect on restart");
        }
        if let Err(e) = self.knocker.set_knock_ports(&kernel_ports(&new)) {
            self.log.notice(&format!("updating the knock-port map failed, keeping the running config: {e}"));
            // Put back what the old config needs; the map may be half-updated.
            if let Err(e) = self.knocker.set_knock_ports(&kernel_ports(&self.cfg)) {
                log::error!("restoring the knock-port map: {e}");
            }
            if let Err(e) = super::apply_kernel_steps(&mut self.knocker, &self.cfg) {
                log::error!("restoring the first-step tables: {e}");
            }
            return;
        }
        let configured = self.spa.lock().configure(&new, &mut self.knocker);
        match configured {
            Ok(generation) => self.spa_generation = generation,
            Err(e) => log::error!("updating SPA doors: {e:#}"),
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

impl Daemon {
    /// Syncs the gate thread to `new`, after every update queued before.
    /// On an error it is back on the running config. The XDP gate's maps
    /// are pinned here first: the gate thread opens them from their pins.
    async fn sync_gates(&mut self, new: &Config) -> anyhow::Result<()> {
        if uses_backend(new, Backend::Xdp) || uses_backend(&self.cfg, Backend::Xdp) {
            if let Err(e) = self.knocker.gate() {
                if uses_backend(new, Backend::Xdp) {
                    return Err(e).context("Xdp gate");
                }
                log::warn!("re-pinning the xdp gate: {e}");
            }
        }
        self.gates.sync(Arc::new(new.clone()), Arc::new(self.cfg.clone())).await
    }
}
