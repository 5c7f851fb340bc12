//! `xknockd --status`: the running daemon answers on a Unix socket next to
//! its pid file (root only, 0600) with doors, attempts in progress, open
//! windows and per-door counters; with no daemon, the windows come from
//! kernel state, as they always did.

pub mod client;
pub mod server;

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    config::model::{Backend, Config},
    daemon::gates,
    gate::{protected_by_backend, GateError, Window},
    metrics::{backend_name, events, Events},
};

/// The socket beside `pid_file`: `/run/xknockd/xknockd.pid` answers on
/// `/run/xknockd/xknockd.sock`. The pid file's lock makes it ours alone.
pub fn socket_path(pid_file: &Path) -> PathBuf {
    let path = pid_file.with_extension("sock");
    if path == pid_file {
        let mut name = pid_file.as_os_str().to_owned();
        name.push(".status");
        return name.into();
    }
    path
}

/// Where the report came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Daemon,
    Kernel,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub origin: Origin,
    pub version: String,
    pub doors: Vec<DoorRow>,
    pub attempts: Vec<AttemptRow>,
    pub windows: Vec<WindowRow>,
}

/// A door; the sequence itself is left out, so a report can be shared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorRow {
    pub name: String,
    pub steps: usize,
    pub backend: Option<String>,
    pub ports: Vec<String>,
    /// Only the daemon knows them.
    pub counters: Option<DoorCounters>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorCounters {
    pub opens: u64,
    pub timeouts: u64,
    pub rate_limited: u64,
    pub gate_open_failures: u64,
    pub command_runs: u64,
    pub command_failures: u64,
}

impl DoorCounters {
    pub fn of(door: &str) -> Self {
        let e = events();
        DoorCounters {
            opens: Events::of(&e.door_opens, door),
            timeouts: Events::of(&e.door_timeouts, door),
            rate_limited: Events::of(&e.rate_limited, door),
            gate_open_failures: Events::of(&e.gate_open_failures, door),
            command_runs: Events::of(&e.command_runs, door),
            command_failures: Events::of(&e.command_failures, door),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRow {
    pub source: IpAddr,
    pub door: String,
    /// Steps matched so far, of `steps`.
    pub stage: usize,
    pub steps: usize,
    pub left_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRow {
    pub door: String,
    pub backend: String,
    pub address: IpAddr,
    /// `22/tcp`.
    pub port: String,
    /// `None`: the element never expires.
    pub left_s: Option<u64>,
}

impl WindowRow {
    pub fn new(backend: Backend, w: &Window) -> Self {
        WindowRow {
            door: w.door.clone(),
            backend: backend_name(backend).to_string(),
            address: w.src,
            port: format!("{}/{}", w.port.port, w.port.proto.as_str()),
            left_s: (w.remaining != Duration::MAX).then_some(w.remaining.as_secs()),
        }
    }
}

/// The doors of `cfg`, with the daemon's counters when `live`.
pub fn door_rows(cfg: &Config, live: bool) -> Vec<DoorRow> {
    cfg.doors
        .iter()
        .map(|d| DoorRow {
            name: d.name.clone(),
            steps: d.sequence.len(),
            backend: crate::gate::door_backend(cfg, d).map(|b| backend_name(b).to_string()),
            ports: d
                .open
                .iter()
                .flat_map(|o| &o.ports)
                .map(|p| format!("{}/{}", p.port, p.proto.as_str()))
                .collect(),
            counters: live.then(|| DoorCounters::of(&d.name)),
        })
        .collect()
}

/// Open windows of `backends`, read from the kernel. It runs firewall
/// tools, so never on the event loop.
pub fn kernel_windows(backends: &[Backend], bpffs_dir: &Path) -> Result<Vec<(Backend, Window)>, GateError> {
    let mut all = Vec::new();
    for &backend in backends {
        let gate = gates::build(backend, bpffs_dir, None)?;
        all.extend(gate.windows()?.into_iter().map(|w| (backend, w)));
    }
    Ok(all)
}

/// The report with no daemon: doors from `cfg`, windows from the kernel.
pub fn kernel_report(cfg: &Config) -> Result<Report, GateError> {
    let backends: Vec<Backend> = protected_by_backend(cfg).into_iter().map(|(b, _)| b).collect();
    let windows = kernel_windows(&backends, &cfg.options.bpffs_dir)?;
    Ok(Report {
        origin: Origin::Kernel,
        version: env!("CARGO_PKG_VERSION").to_string(),
        doors: door_rows(cfg, false),
        attempts: Vec::new(),
        windows: windows.iter().map(|(b, w)| WindowRow::new(*b, w)).collect(),
    })
}

/// The windows table: the kernel fallback prints only this, as
/// `--status` always has.
pub fn render_windows(rows: &[WindowRow]) -> String {
    let mut out = String::from("DOOR\tADDRESS\tPORT\tLEFT\tBACKEND\n");
    for w in rows {
        let left = w.left_s.map_or_else(|| "never".to_string(), |s| format!("{s}s"));
        let _ = writeln!(out, "{}\t{}\t{}\t{left}\t{}", w.door, w.address, w.port, w.backend);
    }
    out
}

/// The daemon's report as tables.
pub fn render(r: &Report) -> String {
    if r.origin == Origin::Kernel {
        return render_windows(&r.windows);
    }
    let mut out = format!("xknockd {}: {} doors\n\n", r.version, r.doors.len());
    out.push_str(
        "DOOR\tSTEPS\tBACKEND\tPORTS\tOPENS\tTIMEOUTS\tRATE_LIMITED\tGATE_FAILURES\tCOMMANDS\tCMD_FAILURES\n",
    );
    for d in &r.doors {
        let c = d.counters.clone().unwrap_or_default();
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            d.name,
            d.steps,
            d.backend.as_deref().unwrap_or("-"),
            if d.ports.is_empty() { "-".to_string() } else { d.ports.join(",") },
            c.opens,
            c.timeouts,
            c.rate_limited,
            c.gate_open_failures,
            c.command_runs,
            c.command_failures
        );
    }
    out.push_str("\nSOURCE\tDOOR\tSTAGE\tLEFT\n");
    for a in &r.attempts {
        let _ = writeln!(
            out,
            "{}\t{}\t{}/{}\t{:.1}s",
            a.source,
            a.door,
            a.stage,
            a.steps,
            a.left_ms as f64 / 1e3
        );
    }
    out.push('\n');
    out.push_str(&render_windows(&r.windows));
    out
}

#[cfg(test)]
mod tests;
