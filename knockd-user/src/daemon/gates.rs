//! The daemon's side of the native gates: one `Gate` per backend the config
//! uses, installed at start and on reload, closed (windows ended, ports still
//! protected) on a clean stop.

use std::{
    collections::{btree_map::Entry, BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    bpf::XdpKnocker,
    config::model::{Backend, Config, Step},
    gate::{
        iptables::IptablesGate, nftables::NftGate, protected_by_backend, Gate, GateError, Protected, Window,
    },
};

#[derive(Default)]
pub struct Gates {
    gates: BTreeMap<BackendKey, Installed>,
}

/// A backend's gate and the ports it holds closed now.
struct Installed {
    gate: Box<dyn Gate + Send>,
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
) -> Result<Box<dyn Gate + Send>, GateError> {
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
        self.sync_with(cfg, |backend| build(backend, &cfg.options.bpffs_dir, Some(&mut *knocker)))
    }

    /// [`Gates::sync`], building missing backends with `build`.
    pub(super) fn sync_with(
        &mut self,
        cfg: &Config,
        mut build: impl FnMut(Backend) -> Result<Box<dyn Gate + Send>, GateError>,
    ) -> Result<()> {
        let wanted = protected_by_backend(cfg);
        for (backend, protected) in &wanted {
            let installed = match self.gates.entry(key(*backend)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let gate = build(*backend).with_context(|| format!("{backend:?} gate"))?;
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

    /// Opens `door`'s window for `src` on `backend`'s gate.
    pub fn open(
        &mut self,
        backend: Backend,
        door: &str,
        src: IpAddr,
        ports: &[Step],
        duration: Duration,
    ) -> Result<(), GateError> {
        match self.gates.get_mut(&key(backend)) {
            Some(installed) => installed.gate.open(door, src, ports, duration),
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

#[cfg(test)]
pub(super) mod tests {
    use std::{
        collections::BTreeMap,
        path::PathBuf,
        sync::{Arc, Mutex},
    };

    use super::*;
    use crate::{
        config::model::{Door, Format, OpenAction, Options, Proto, TcpFlags},
        gate::Window,
    };

    /// What every fake backend holds closed, shared so a check after each
    /// call sees the whole "kernel".
    type Kernel = Arc<Mutex<BTreeMap<BackendKey, BTreeSet<Step>>>>;

    /// A backend that records its closed set in `kernel` and, after every
    /// change, checks that each port in `must_hold` is closed somewhere.
    struct Fake {
        backend: Backend,
        kernel: Kernel,
        must_hold: Arc<Vec<Step>>,
        fail_install: bool,
    }

    impl Fake {
        fn set(&self, ports: BTreeSet<Step>) {
            self.kernel.lock().unwrap().insert(key(self.backend), ports);
            let k = self.kernel.lock().unwrap();
            for p in self.must_hold.iter() {
                assert!(k.values().any(|s| s.contains(p)), "{p} open for a moment: {k:?}");
            }
        }
    }

    impl Gate for Fake {
        fn backend(&self) -> Backend {
            self.backend
        }
        fn install(&mut self, protected: &[Protected]) -> Result<(), GateError> {
            if self.fail_install {
                return Err(GateError::Other("cannot".into()));
            }
            self.set(protected.iter().map(|p| p.port).collect());
            Ok(())
        }
        fn open(&mut self, _: &str, _: IpAddr, _: &[Step], _: Duration) -> Result<(), GateError> {
            Ok(())
        }
        fn windows(&self) -> Result<Vec<Window>, GateError> {
            Ok(Vec::new())
        }
        fn close_windows(&mut self) -> Result<(), GateError> {
            Ok(())
        }
        fn flush(&mut self) -> Result<(), GateError> {
            self.set(BTreeSet::new());
            self.kernel.lock().unwrap().remove(&key(self.backend));
            Ok(())
        }
    }

    fn tcp(port: u16) -> Step {
        Step { port, proto: Proto::Tcp }
    }

    /// One door per `(ports, backend)`.
    pub(in crate::daemon) fn cfg(doors: &[(&[u16], Backend)]) -> Config {
        let door = |i: usize, (ports, backend): &(&[u16], Backend)| Door {
            name: format!("d{i}"),
            sequence: vec![tcp(7000 + i as u16)],
            one_time_sequences: None,
            seq_timeout: Duration::from_secs(5),
            tcp_flags: TcpFlags::default(),
            target: None,
            start_command: None,
            start_command_6: None,
            cmd_timeout: Duration::from_secs(10),
            stop_command: None,
            stop_command_6: None,
            open: Some(OpenAction {
                ports: ports.iter().map(|&p| tcp(p)).collect(),
                duration: Duration::from_secs(5),
                backend: Some(*backend),
            }),
            stealth: None,
            spa: None,
            dynamic: None,
        };
        Config {
            path: PathBuf::from("t.yaml"),
            format: Format::Yaml,
            options: Options {
                max_sources: 10,
                bpffs_dir: PathBuf::from("/nonexistent"),
                state_dir: PathBuf::from("/nonexistent"),
                ..crate::config::default_options()
            },
            doors: doors.iter().enumerate().map(|(i, d)| door(i, d)).collect(),
        }
    }

    /// Syncs `gates` to `to`, checking that every port in `must_hold` stays
    /// closed throughout; `broken` backends cannot be built.
    fn sync(
        gates: &mut Gates,
        kernel: &Kernel,
        to: &Config,
        must_hold: &[u16],
        broken: &[Backend],
    ) -> Result<()> {
        let must_hold = Arc::new(must_hold.iter().map(|&p| tcp(p)).collect());
        gates.sync_with(to, |backend| {
            if broken.contains(&backend) {
                return Err(GateError::Unavailable { backend, why: "broken".into() });
            }
            let fake = Fake {
                backend,
                kernel: kernel.clone(),
                must_hold: Arc::clone(&must_hold),
                fail_install: false,
            };
            Ok(Box::new(fake))
        })
    }

    fn closed(kernel: &Kernel) -> BTreeMap<BackendKey, Vec<u16>> {
        kernel.lock().unwrap().iter().map(|(k, s)| (*k, s.iter().map(|p| p.port).collect())).collect()
    }

    const NFT: Backend = Backend::Nftables;
    const IPT: Backend = Backend::Iptables;
    const XDP: Backend = Backend::Xdp;

    #[test]
    fn a_port_moving_between_backends_is_never_open() {
        for (from, to) in [(NFT, IPT), (IPT, NFT), (NFT, XDP), (XDP, NFT), (IPT, XDP), (XDP, IPT)] {
            let kernel = Kernel::default();
            let mut gates = Gates::default();
            // Both backends stay in use, in both orders, and one empties out.
            sync(&mut gates, &kernel, &cfg(&[(&[22, 80], from), (&[443], to)]), &[], &[]).unwrap();
            sync(&mut gates, &kernel, &cfg(&[(&[80], from), (&[22, 443], to)]), &[22, 80, 443], &[]).unwrap();
            assert_eq!(closed(&kernel), [(key(from), vec![80]), (key(to), vec![22, 443])].into());
            sync(&mut gates, &kernel, &cfg(&[(&[22, 80, 443], to)]), &[22, 80, 443], &[]).unwrap();
            assert_eq!(closed(&kernel), [(key(to), vec![22, 80, 443])].into(), "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn a_port_the_config_stops_protecting_is_released() {
        let kernel = Kernel::default();
        let mut gates = Gates::default();
        sync(&mut gates, &kernel, &cfg(&[(&[22, 80], NFT)]), &[], &[]).unwrap();
        sync(&mut gates, &kernel, &cfg(&[(&[22], NFT)]), &[22], &[]).unwrap();
        assert_eq!(closed(&kernel), [(key(NFT), vec![22])].into());
    }

    /// A backend that cannot be built fails the sync before anything is
    /// released; re-syncing to the kept config restores it exactly.
    #[test]
    fn a_failed_sync_keeps_the_old_protection() {
        let kernel = Kernel::default();
        let mut gates = Gates::default();
        let old = cfg(&[(&[22], NFT), (&[80], IPT)]);
        sync(&mut gates, &kernel, &old, &[], &[]).unwrap();
        let new = cfg(&[(&[22, 80, 8080], NFT), (&[443], XDP)]);
        assert!(sync(&mut gates, &kernel, &new, &[22, 80], &[XDP]).is_err());
        sync(&mut gates, &kernel, &old, &[22, 80], &[]).unwrap();
        assert_eq!(closed(&kernel), [(key(NFT), vec![22]), (key(IPT), vec![80])].into());
    }

    #[test]
    fn a_failed_install_releases_nothing() {
        let kernel = Kernel::default();
        let mut gates = Gates::default();
        sync(&mut gates, &kernel, &cfg(&[(&[22], NFT), (&[80], IPT)]), &[], &[]).unwrap();
        if let Some(installed) = gates.gates.get_mut(&key(IPT)) {
            let fake =
                Fake { backend: IPT, kernel: kernel.clone(), must_hold: Arc::default(), fail_install: true };
            installed.gate = Box::new(fake);
        }
        assert!(sync(&mut gates, &kernel, &cfg(&[(&[22, 80], NFT), (&[443], IPT)]), &[22, 80], &[]).is_err());
        assert_eq!(closed(&kernel)[&key(IPT)], vec![80]);
    }
}
