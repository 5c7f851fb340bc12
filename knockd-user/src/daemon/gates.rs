//! The daemon's side of the native gates: one `Gate` per backend the config
//! uses, installed at start and on reload, closed (windows ended, ports still
//! protected) on a clean stop.

use std::{
    collections::{btree_map::Entry, BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use anyhow::{Context, Result};

use crate::{
    bpf::XdpKnocker,
    config::model::{Backend, Config, Door},
    gate::{
        door_backend, iptables::IptablesGate, nftables::NftGate, protected_by_backend, Gate, GateError,
        Protected, Window,
    },
};

#[derive(Default)]
pub struct Gates {
    gates: BTreeMap<BackendKey, Installed>,
}

/// A backend's gate and the ports it holds closed now.
struct Installed {
    gate: Box<dyn Gate>,
    protected: Vec<Protected>,
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

/// `a` and `b` together, sorted, without duplicates.
fn union(a: &[Protected], b: &[Protected]) -> Vec<Protected> {
    let all: BTreeSet<&Protected> = a.iter().chain(b).collect();
    all.into_iter().cloned().collect()
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
    ///
    /// Two phases, so that no port either config protects is open at any
    /// moment: first every backend closes what `cfg` wants of it on top of
    /// what it already holds closed (a port moving between backends is then
    /// closed twice), and only then do backends release what `cfg` no longer
    /// protects there. On an error in the first phase nothing was released;
    /// the caller re-syncs to the config it keeps.
    pub fn sync(&mut self, cfg: &Config, knocker: &mut XdpKnocker) -> Result<()> {
        let wanted = protected_by_backend(cfg);
        for (backend, protected) in &wanted {
            let installed = match self.gates.entry(key(*backend)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let gate = build(*backend, &cfg.options.bpffs_dir, Some(&mut *knocker))
                        .with_context(|| format!("{backend:?} gate"))?;
                    e.insert(Installed { gate, protected: Vec::new() })
                }
            };
            let closed = union(&installed.protected, protected);
            installed.gate.install(&closed).with_context(|| format!("installing the {backend:?} gate"))?;
            installed.protected = closed;
        }
        for (backend, protected) in &wanted {
            let installed = self.gates.get_mut(&key(*backend)).expect("installed above");
            if installed.protected != *protected {
                installed
                    .gate
                    .install(protected)
                    .with_context(|| format!("updating the {backend:?} gate"))?;
                installed.protected.clone_from(protected);
            }
        }
        // Backends the config no longer uses: nothing is protected there now.
        let unused: Vec<BackendKey> =
            self.gates.keys().copied().filter(|k| !wanted.iter().any(|(b, _)| key(*b) == *k)).collect();
        for k in unused {
            if let Some(mut installed) = self.gates.remove(&k) {
                let backend = installed.gate.backend();
                installed.gate.flush().with_context(|| format!("removing the {backend:?} gate"))?;
            }
        }
        Ok(())
    }

    pub fn open(&mut self, cfg: &Config, door: &Door, src: IpAddr) -> Result<(), GateError> {
        let (Some(open), Some(backend)) = (&door.open, door_backend(cfg, door)) else { return Ok(()) };
        match self.gates.get_mut(&key(backend)) {
            Some(installed) => installed.gate.open(&door.name, src, &open.ports, open.duration),
            None => Err(GateError::Other(format!("no {backend:?} gate installed"))),
        }
    }

    /// Puts back any gate another tool removed or bypassed; one log line per
    /// repair. Errors are logged and retried on the next call. Each gate is
    /// checked against what it was last told to close, which is what the
    /// running config protects unless a reload is half done.
    pub fn repair(&mut self) {
        for Installed { gate, protected } in self.gates.values_mut() {
            let backend = gate.backend();
            match gate.repair(protected) {
                Ok(fixes) => fixes.iter().for_each(|f| log::warn!("{backend:?} gate: {f}")),
                Err(e) => log::error!("checking the {backend:?} gate: {e}"),
            }
        }
    }

    /// Every backend's open windows, as the kernel holds them; a backend
    /// that cannot be read is logged and skipped.
    pub fn windows(&self) -> Vec<Window> {
        let mut out = Vec::new();
        for Installed { gate, .. } in self.gates.values() {
            match gate.windows() {
                Ok(w) => out.extend(w),
                Err(e) => log::warn!("reading {:?} windows: {e}", gate.backend()),
            }
        }
        out
    }

    /// Clean stop: windows end, ports stay closed.
    pub fn close_windows(&mut self) {
        for Installed { gate, .. } in self.gates.values_mut() {
            if let Err(e) = gate.close_windows() {
                log::error!("closing {:?} windows: {e}", gate.backend());
            }
        }
    }
}
