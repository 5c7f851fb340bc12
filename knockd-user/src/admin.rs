//! `xknockd --status`, `--flush` and `--install-gate`: read, remove or put
//! in place the kernel state the gates own, with no daemon needed (it may
//! have crashed, been stopped, or not be started yet: at boot).

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use thiserror::Error;

use crate::{
    bpf::{self, AttachMode, BpfError, Pinned, XdpKnocker},
    config::model::{Backend, Config},
    daemon::gates,
    gate::{protected_by_backend, GateError, Protected, Window},
};

/// How long `--install-gate` waits for a configured interface that does not
/// exist yet (a driver still loading at `network-pre.target`).
pub const IFACE_WAIT: Duration = Duration::from_secs(5);

const ALL: [Backend; 3] = [Backend::Nftables, Backend::Iptables, Backend::Xdp];

/// Open windows of every backend `cfg` uses, as a table.
pub fn status(cfg: &Config) -> Result<String, GateError> {
    let mut rows: Vec<Window> = Vec::new();
    for (backend, _) in protected_by_backend(cfg) {
        let gate = gates::build(backend, &cfg.options.bpffs_dir, None)?;
        rows.extend(gate.windows()?);
    }
    Ok(render(&rows))
}

pub fn render(rows: &[Window]) -> String {
    let mut out = String::from("DOOR\tADDRESS\tPORT\tLEFT\n");
    for w in rows {
        // nft lists an element without a timeout as never expiring.
        let left = if w.remaining == Duration::MAX {
            "never".to_string()
        } else {
            format!("{}s", w.remaining.as_secs())
        };
        let _ = writeln!(out, "{}\t{}\t{}/{}\t{left}", w.door, w.src, w.port.port, w.port.proto.as_str());
    }
    out
}

/// Removes what every backend owns; only the xdp backend needs a place (its
/// bpffs pins). A backend that is not present (no nft, nothing pinned) has
/// nothing to remove and is reported, not failed.
pub fn flush(bpffs_dir: &Path) -> Vec<(Backend, Result<(), GateError>)> {
    ALL.iter()
        .map(|&b| {
            let mut res = gates::build(b, bpffs_dir, None).and_then(|mut g| g.flush());
            // Links pinned without their maps (an interrupted install) still
            // hold the program on the interface.
            if b == Backend::Xdp && matches!(res, Err(GateError::Unavailable { .. })) {
                if let Ok(n @ 1..) = bpf::gate::remove_pins(bpffs_dir) {
                    log::info!("removed {n} stray pins from {}", bpffs_dir.display());
                    res = Ok(());
                }
            }
            (b, res)
        })
        .collect()
}

#[derive(Debug, Error)]
pub enum InstallError {
    #[error("{backend:?} gate: {source}")]
    Gate { backend: Backend, source: GateError },
    #[error("xdp gate: {0}")]
    Bpf(#[from] BpfError),
}

/// `--install-gate`: puts every backend's gate in place from `cfg`, with no
/// window open, and leaves it there for the daemon to adopt: the nftables
/// table, the iptables chains and ipsets, and the XDP program with its gate
/// maps and links pinned. Returns one line per step, for the boot log.
///
/// A configured interface missing after [`IFACE_WAIT`] is skipped with a
/// warning line rather than failing the boot: the other backends' gates are
/// in place, the XDP gate maps are pinned, and xknockd attaches when it
/// starts (`xknockd.service` needs the interface anyway).
pub fn install_gate(cfg: &Config, ifaces: &[String], mode: AttachMode) -> Result<Vec<String>, InstallError> {
    let wanted = protected_by_backend(cfg);
    if wanted.iter().any(|(b, _)| *b == Backend::Xdp) {
        // Refuse before anything changes.
        for iface in ifaces.iter().filter(|i| bpf::ifindex(i).is_some()) {
            bpf::require_ethernet(iface)?;
        }
    }
    let mut report = Vec::new();
    for (backend, protected) in &wanted {
        if *backend == Backend::Xdp {
            report.extend(install_xdp(cfg, protected, ifaces, mode)?);
            continue;
        }
        let gate_err = |source| InstallError::Gate { backend: *backend, source };
        let mut gate = gates::build(*backend, &cfg.options.bpffs_dir, None).map_err(gate_err)?;
        gate.install(protected).map_err(gate_err)?;
        report.push(format!("{backend:?}: {} protected port(s) closed", protected.len()));
    }
    if report.is_empty() {
        report.push("no door has an `open` block: no gate to install".into());
    }
    Ok(report)
}

fn install_xdp(
    cfg: &Config,
    protected: &[Protected],
    ifaces: &[String],
    mode: AttachMode,
) -> Result<Vec<String>, InstallError> {
    let dir = &cfg.options.bpffs_dir;
    let gate_err = |source| InstallError::Gate { backend: Backend::Xdp, source };
    let mut knocker = XdpKnocker::load_in(dir, true)?;
    let mut gate = knocker.gate().map_err(gate_err)?;
    crate::gate::Gate::install(&mut gate, protected).map_err(gate_err)?;
    let mut report =
        vec![format!("Xdp: {} protected port(s) closed, maps pinned in {}", protected.len(), dir.display())];
    for iface in ifaces {
        if !wait_for_device(iface, IFACE_WAIT) {
            report.push(format!(
                "warning: {iface} does not exist after {}s: no XDP gate on it until xknockd starts",
                IFACE_WAIT.as_secs()
            ));
            continue;
        }
        let used = knocker.attach_as(iface, mode, Pinned::Keep)?;
        report.push(format!("Xdp: {iface}: attached ({used:?} mode) and pinned"));
    }
    // Dropping the knocker closes our fds; the pins keep the gate in place.
    Ok(report)
}

/// Polls for the device: at boot it may still be on its way.
fn wait_for_device(iface: &str, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while bpf::ifindex(iface).is_none() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{Proto, Step};

    #[test]
    fn status_table_lists_door_address_port_and_time_left() {
        let rows = [Window {
            door: "ssh".into(),
            src: "10.0.0.2".parse().unwrap(),
            port: Step { port: 22, proto: Proto::Tcp },
            remaining: Duration::from_millis(29_500),
        }];
        assert_eq!(render(&rows), "DOOR\tADDRESS\tPORT\tLEFT\nssh\t10.0.0.2\t22/tcp\t29s\n");
    }
}
