//! What operators see: the metrics listener and the status socket. Both
//! serve from tasks of their own; the event loop's only part is answering
//! a [`View`] request, which copies the tracker and reads the kernel's
//! counters (no firewall tool runs on the loop: windows are listed by the
//! task, off the runtime's thread).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, oneshot};

use super::Daemon;
use crate::{
    bpf::{spa::SpaCounters, Counters},
    config::model::{Backend, Config},
    events::monotonic_now,
    gate::{protected_by_backend, Window},
    metrics::{self, State},
    status::{self, server::StatusSocket, AttemptRow, DoorRow, Origin, Report, WindowRow},
    tracker::AttemptView,
};

/// A view request: the loop answers on the channel.
pub(super) type Query = oneshot::Sender<View>;

/// How long a scrape or a status request waits for the loop.
const LOOP_LIMIT: Duration = Duration::from_secs(5);

/// The daemon's state as the loop saw it.
pub(super) struct View {
    kernel: Option<Counters>,
    spa_kernel: Option<SpaCounters>,
    sources: usize,
    evictions: u64,
    attempts: Vec<AttemptView>,
    doors: Vec<DoorRow>,
    backends: Vec<Backend>,
    bpffs_dir: PathBuf,
}

/// The listeners, bound at start so a bad address fails start-up.
pub(super) struct Ops {
    tx: mpsc::Sender<Query>,
    rx: Option<mpsc::Receiver<Query>>,
    metrics: Option<TcpListener>,
    status: Option<StatusSocket>,
}

impl Ops {
    pub(super) fn bind(cfg: &Config, status_socket: Option<&Path>) -> Result<Self> {
        let metrics = match cfg.options.metrics_listen {
            Some(addr) => {
                let l = TcpListener::bind(addr).with_context(|| format!("metrics_listen: binding {addr}"))?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        };
        let status = match status_socket {
            Some(p) => Some(StatusSocket::bind(p).with_context(|| format!("status socket {}", p.display()))?),
            None => None,
        };
        let (tx, rx) = mpsc::channel(16);
        Ok(Self { tx, rx: Some(rx), metrics, status })
    }

    /// Starts serving; the loop answers what arrives on the receiver.
    pub(super) fn serve(&mut self) -> Result<mpsc::Receiver<Query>> {
        if let Some(listener) = self.metrics.take() {
            log::info!("metrics on http://{}/metrics", listener.local_addr()?);
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let tx = self.tx.clone();
            tokio::spawn(metrics::http::serve(listener, move || scrape(tx.clone())));
        }
        if let Some(sock) = &mut self.status {
            log::debug!("status on {}", sock.path().display());
            let tx = self.tx.clone();
            sock.serve(move || report(tx.clone())).context("serving the status socket")?;
        }
        self.rx.take().context("already serving")
    }
}

async fn ask(tx: mpsc::Sender<Query>) -> Option<View> {
    let (reply, rx) = oneshot::channel();
    tx.send(reply).await.ok()?;
    tokio::time::timeout(LOOP_LIMIT, rx).await.ok()?.ok()
}

/// Lists the windows on a blocking thread: firewall tools may be slow.
async fn windows(view: &View) -> Vec<(Backend, Window)> {
    let (backends, dir) = (view.backends.clone(), view.bpffs_dir.clone());
    match tokio::task::spawn_blocking(move || status::kernel_windows(&backends, &dir)).await {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            log::warn!("listing gate windows: {e}");
            Vec::new()
        }
        Err(e) => {
            log::warn!("listing gate windows: {e}");
            Vec::new()
        }
    }
}

async fn scrape(tx: mpsc::Sender<Query>) -> Option<State> {
    let view = ask(tx).await?;
    let windows = windows(&view).await;
    let mut attempts = std::collections::BTreeMap::<String, usize>::new();
    for a in &view.attempts {
        *attempts.entry(a.door.to_string()).or_default() += 1;
    }
    Some(State {
        kernel: view.kernel,
        spa_kernel: view.spa_kernel,
        sources: view.sources,
        evictions: view.evictions,
        attempts: attempts.into_iter().collect(),
        windows,
    })
}

async fn report(tx: mpsc::Sender<Query>) -> Option<Report> {
    let view = ask(tx).await?;
    let windows = windows(&view).await;
    let now = monotonic_now();
    let attempts = view
        .attempts
        .iter()
        .map(|a| AttemptRow {
            source: a.src,
            door: a.door.to_string(),
            stage: a.matched,
            steps: a.steps,
            left_ms: u64::try_from(a.deadline.saturating_sub(now).as_millis()).unwrap_or(u64::MAX),
        })
        .collect();
    Some(Report {
        origin: Origin::Daemon,
        version: env!("CARGO_PKG_VERSION").to_string(),
        doors: view.doors,
        attempts,
        windows: windows.iter().map(|(b, w)| WindowRow::new(*b, w)).collect(),
    })
}

impl Daemon {
    /// Cheap: a copy of the tracker's attempts and one map read.
    pub(super) fn view(&self) -> View {
        View {
            kernel: self.knocker.counters().ok(),
            spa_kernel: self.knocker.spa_counters().ok(),
            sources: self.tracker.sources(),
            evictions: self.tracker.evictions(),
            attempts: self.tracker.attempts(),
            doors: status::door_rows(&self.cfg, true),
            backends: protected_by_backend(&self.cfg).into_iter().map(|(b, _)| b).collect(),
            bpffs_dir: self.cfg.options.bpffs_dir.clone(),
        }
    }
}
