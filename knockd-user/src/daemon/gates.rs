//! The daemon's side of the native gates: one `Gate` per backend the config
//! uses, installed at start and on reload, closed (windows ended, ports still
//! protected) on a clean stop.

use std::{
    collections::{btree_map::Entry, BTreeMap},
    net::IpAddr,
    path::Path,
};

use anyhow::{Context, Result};

use crate::{
    bpf::XdpKnocker,
    config::model::{Backend, Config, Door},
    gate::{door_backend, iptables::IptablesGate, nftables::NftGate, protected_by_backend, Gate, GateError},
};

#[derive(Default)]
pub struct Gates {
    gates: BTreeMap<BackendKey, Box<dyn Gate>>,
}

/// `Backend` has no `Ord`; this orders the map.
type BackendKey = u8;

fn key(b: Backend) -> BackendKey {
    match b {
        Backend::Nftables => 0,
        Backend::Iptables => 1,
        Backend::Xdp => 2,
    }
}

/// Builds the gate for `backend`. The XDP gate lives in the knocker's own
/// program and maps.
pub fn build(
    backend: Backend,
    bpffs_dir: &Path,
    knocker: Option<&mut XdpKnocker>,
) -> Result<Box<dyn Gate>, GateError> {
    match backend {
        Backend::Nftables => Ok(Box::new(NftGate::new()?)),
        Backend::Iptables => Ok(Box::new(IptablesGate::new()?)),
        Backend::Xdp => match knocker {
            Some(k) => Ok(Box::new(k.gate()?)),
            None => Ok(Box::new(crate::bpf::gate::XdpGate::from_pins(bpffs_dir)?)),
        },
    }
}

impl Gates {
    /// Installs every backend `cfg` uses. A backend that cannot work is an
    /// error here, at start, with the reason.
    pub fn sync(&mut self, cfg: &Config, knocker: &mut XdpKnocker) -> Result<()> {
        let wanted = protected_by_backend(cfg);
        for (backend, protected) in &wanted {
            let gate = match self.gates.entry(key(*backend)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(
                    build(*backend, &cfg.options.bpffs_dir, Some(&mut *knocker))
                        .with_context(|| format!("{backend:?} gate"))?,
                ),
            };
            gate.install(protected).with_context(|| format!("installing the {backend:?} gate"))?;
        }
        // Backends the config no longer uses: nothing is protected there now.
        let unused: Vec<BackendKey> =
            self.gates.keys().copied().filter(|k| !wanted.iter().any(|(b, _)| key(*b) == *k)).collect();
        for k in unused {
            if let Some(mut gate) = self.gates.remove(&k) {
                gate.flush().with_context(|| format!("removing the {:?} gate", gate.backend()))?;
            }
        }
        Ok(())
    }

    pub fn open(&mut self, cfg: &Config, door: &Door, src: IpAddr) -> Result<(), GateError> {
        let (Some(open), Some(backend)) = (&door.open, door_backend(cfg, door)) else { return Ok(()) };
        match self.gates.get_mut(&key(backend)) {
            Some(gate) => gate.open(&door.name, src, &open.ports, open.duration),
            None => Err(GateError::Other(format!("no {backend:?} gate installed"))),
        }
    }

    /// Puts back any gate another tool removed or bypassed; one log line per
    /// repair. Errors are logged and retried on the next call.
    pub fn repair(&mut self, cfg: &Config) {
        for (backend, protected) in protected_by_backend(cfg) {
            let Some(gate) = self.gates.get_mut(&key(backend)) else { continue };
            match gate.repair(&protected) {
                Ok(fixes) => fixes.iter().for_each(|f| log::warn!("{backend:?} gate: {f}")),
                Err(e) => log::error!("checking the {backend:?} gate: {e}"),
            }
        }
    }

    /// Clean stop: windows end, ports stay closed.
    pub fn close_windows(&mut self) {
        for gate in self.gates.values_mut() {
            if let Err(e) = gate.close_windows() {
                log::error!("closing {:?} windows: {e}", gate.backend());
            }
        }
    }
}
