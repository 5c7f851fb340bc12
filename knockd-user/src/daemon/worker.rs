//! Firewall updates off the event loop. `nft`, `iptables-restore` and
//! `ipset` are processes that can take seconds on a loaded host; run on the
//! daemon's only thread they would stop it reading knocks. So [`Gates`]
//! lives on a thread of its own, fed through a bounded queue in order:
//! an open queued after a reload's sync runs against the new gates.
//!
//! Opens are fire-and-forget. When the queue is full an open is refused
//! (the door stays shut, fail closed) rather than making the loop wait.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Result;
use tokio::sync::{mpsc, oneshot};

use super::gates::{self, Gates};
use crate::{
    commands::CommandRunner,
    config::model::{Backend, Config, Step},
    gate::{Gate, GateError},
    knocklog::KnockLog,
};

/// Updates waiting for the worker. Opens are rate-limited per door, so a
/// full queue means the firewall tool has stalled, not a busy door.
pub const QUEUE: usize = 256;

/// A door's gate opening for one knocker.
#[derive(Clone, Debug)]
pub struct OpenRequest {
    pub door: Arc<str>,
    pub backend: Backend,
    pub src: IpAddr,
    pub ports: Vec<Step>,
    pub duration: Duration,
    /// The door's commands, run once the gate is open, as before the gate
    /// moved off the loop.
    pub commands: Option<Commands>,
    /// The door's OPEN SESAME line, logged once the window is in place.
    pub sesame: String,
}

/// A door's start and stop commands for one knocker.
#[derive(Clone, Debug)]
pub struct Commands {
    pub start: Option<String>,
    pub stop: Option<String>,
    pub timeout: Duration,
}

enum Job {
    Open(OpenRequest),
    /// Sync to `new`; on failure back to `old`, before any later job runs.
    Sync {
        new: Arc<Config>,
        old: Arc<Config>,
        reply: oneshot::Sender<Result<()>>,
    },
    Repair,
    CloseWindows {
        reply: oneshot::Sender<()>,
    },
}

/// Why an open was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the gate worker is {QUEUE} updates behind")]
    Full,
    #[error("the gate worker has stopped")]
    Stopped,
}

/// The loop's handle on the gate thread.
pub struct GateWorker {
    tx: mpsc::Sender<Job>,
    /// A repair is queued and not started: ticks do not pile up behind a
    /// slow firewall tool.
    repair_queued: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Builds a backend's gate the config newly uses.
type Builder = fn(Backend, &Config) -> Result<Box<dyn Gate + Send>, GateError>;

/// The gate thread's builder: the XDP gate is opened from its pins, which
/// the loop puts in place with `XdpKnocker::gate` before a sync.
fn from_pins(backend: Backend, cfg: &Config) -> Result<Box<dyn Gate + Send>, GateError> {
    gates::build(backend, &cfg.options.bpffs_dir, None)
}

/// What the gate thread owns.
struct Worker {
    gates: Gates,
    build: Builder,
    log: Arc<KnockLog>,
    runner: CommandRunner,
    repair_queued: Arc<AtomicBool>,
}

impl GateWorker {
    /// Moves `gates`, installed at start, to a thread of their own.
    pub fn spawn(gates: Gates, log: Arc<KnockLog>, runner: CommandRunner) -> std::io::Result<Self> {
        Self::spawn_with(gates, from_pins, log, runner)
    }

    fn spawn_with(
        gates: Gates,
        build: Builder,
        log: Arc<KnockLog>,
        runner: CommandRunner,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let repair_queued = Arc::new(AtomicBool::new(false));
        let worker = Worker { gates, build, log, runner, repair_queued: Arc::clone(&repair_queued) };
        let thread =
            std::thread::Builder::new().name("xknockd-gates".into()).spawn(move || worker.run(rx))?;
        Ok(Self { tx, repair_queued, thread: Some(thread) })
    }

    /// Queues an open without waiting.
    pub fn open(&self, req: OpenRequest) -> Result<(), QueueError> {
        self.tx.try_send(Job::Open(req)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => QueueError::Full,
            mpsc::error::TrySendError::Closed(_) => QueueError::Stopped,
        })
    }

    /// Syncs the gates to `new` after every update queued before, and
    /// waits for the outcome. On an error the gates are back on `old`.
    pub async fn sync(&self, new: Arc<Config>, old: Arc<Config>) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Sync { new, old, reply })
            .await
            .map_err(|_| anyhow::anyhow!(QueueError::Stopped))?;
        rx.await.map_err(|_| anyhow::anyhow!(QueueError::Stopped))?
    }

    /// Queues a check of every gate unless one is already waiting; a full
    /// queue skips this tick's check.
    pub fn repair(&self) {
        if self.repair_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.tx.try_send(Job::Repair).is_err() {
            self.repair_queued.store(false, Ordering::Release);
        }
    }

    /// Clean stop: every queued update runs, then the windows end; the
    /// protected ports stay closed.
    pub async fn shutdown(mut self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job::CloseWindows { reply }).await.is_ok() {
            let _ = rx.await;
        }
        drop(self.tx);
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.blocking_recv() {
            match job {
                Job::Open(req) => self.open(req),
                Job::Sync { new, old, reply } => {
                    let _ = reply.send(self.sync(&new, &old));
                }
                Job::Repair => {
                    self.repair_queued.store(false, Ordering::Release);
                    self.gates.repair();
                }
                Job::CloseWindows { reply } => {
                    self.gates.close_windows();
                    let _ = reply.send(());
                }
            }
        }
    }

    fn open(&mut self, req: OpenRequest) {
        let OpenRequest { door, backend, src, ports, duration, commands, sesame } = req;
        let opened = self.gates.open(backend, &door, src, &ports, duration);
        self.log.line(&sesame);
        if let Err(e) = opened {
            crate::metrics::events().gate_failed(&door);
            self.log.line(&format!("{door}: opening the gate for {src} failed: {e}"));
        }
        if let Some(c) = commands {
            self.runner.open(&door, src, c.start, c.stop, c.timeout);
        }
    }

    fn sync(&mut self, new: &Config, old: &Config) -> Result<()> {
        let build = self.build;
        let res = self.gates.sync_with(new, |b| build(b, new));
        if res.is_err() {
            if let Err(e) = self.gates.sync_with(old, |b| build(b, old)) {
                log::error!("restoring the gates: {e:#}");
            }
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use std::{pin::pin, sync::Mutex};

    use super::*;
    use crate::{gate::Protected, knocklog::LogConfig};

    /// A gate that records each call in `calls` and holds `open` and
    /// `repair` while `hold` is locked, standing in for a stalled tool.
    struct Fake {
        backend: Backend,
        calls: &'static Mutex<Vec<String>>,
        hold: &'static Mutex<()>,
    }

    impl Fake {
        fn record(&self, what: &str) {
            self.calls.lock().unwrap().push(format!("{what} {:?}", self.backend));
        }
    }

    impl Gate for Fake {
        fn backend(&self) -> Backend {
            self.backend
        }
        fn install(&mut self, _: &[Protected]) -> Result<(), GateError> {
            self.record("install");
            Ok(())
        }
        fn open(&mut self, _: &str, _: IpAddr, _: &[Step], _: Duration) -> Result<(), GateError> {
            drop(self.hold.lock().unwrap());
            self.record("open");
            Ok(())
        }
        fn windows(&self) -> Result<Vec<crate::gate::Window>, GateError> {
            Ok(Vec::new())
        }
        fn close_windows(&mut self) -> Result<(), GateError> {
            self.record("close");
            Ok(())
        }
        fn flush(&mut self) -> Result<(), GateError> {
            self.record("flush");
            Ok(())
        }
        fn repair(&mut self, _: &[Protected]) -> Result<Vec<String>, GateError> {
            drop(self.hold.lock().unwrap());
            self.record("repair");
            Ok(Vec::new())
        }
    }

    /// A worker on `cfg`, whose gates are [`Fake`]s built by `build`.
    fn worker(cfg: &Config, build: Builder) -> GateWorker {
        let mut gates = Gates::default();
        gates.sync_with(cfg, |b| build(b, cfg)).unwrap();
        let log = Arc::new(KnockLog::open(LogConfig::default()).unwrap());
        let runner = CommandRunner::new(log.sink());
        GateWorker::spawn_with(gates, build, log, runner).unwrap()
    }

    fn request(backend: Backend) -> OpenRequest {
        OpenRequest {
            door: Arc::from("d0"),
            backend,
            src: "192.0.2.1".parse().unwrap(),
            ports: Vec::new(),
            duration: Duration::from_secs(5),
            commands: None,
            sesame: "192.0.2.1: d0: OPEN SESAME".into(),
        }
    }

    fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> std::task::Poll<F::Output> {
        let waker = std::task::Waker::noop();
        std::pin::Pin::new(f).poll(&mut std::task::Context::from_waker(waker))
    }

    static ORDER_CALLS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static ORDER_HOLD: Mutex<()> = Mutex::new(());

    fn order_fake(backend: Backend, _: &Config) -> Result<Box<dyn Gate + Send>, GateError> {
        Ok(Box::new(Fake { backend, calls: &ORDER_CALLS, hold: &ORDER_HOLD }))
    }

    /// An open queued behind a reload's sync, while the worker is still
    /// busy, runs on the gate that sync installs.
    #[tokio::test]
    async fn an_open_queued_after_a_sync_uses_the_new_gates() {
        let old = gates::tests::cfg(&[(&[22], Backend::Nftables)]);
        let new = gates::tests::cfg(&[(&[22], Backend::Iptables)]);
        let w = worker(&old, order_fake);
        let hold = ORDER_HOLD.lock().unwrap();
        w.open(request(Backend::Nftables)).unwrap();
        {
            let mut sync = pin!(w.sync(Arc::new(new), Arc::new(old)));
            assert!(poll_once(&mut sync).is_pending(), "the sync waits behind the held open");
            w.open(request(Backend::Iptables)).unwrap();
            drop(hold);
            sync.await.unwrap();
        }
        w.shutdown().await;
        let calls = ORDER_CALLS.lock().unwrap().clone();
        let at = |c: &str| calls.iter().position(|x| x == c).unwrap_or_else(|| panic!("no {c}: {calls:?}"));
        assert!(at("open Nftables") < at("install Iptables"), "{calls:?}");
        assert!(at("install Iptables") < at("open Iptables"), "{calls:?}");
        assert!(at("open Iptables") < at("close Iptables"), "{calls:?}");
    }

    static FULL_CALLS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static FULL_HOLD: Mutex<()> = Mutex::new(());

    fn full_fake(backend: Backend, _: &Config) -> Result<Box<dyn Gate + Send>, GateError> {
        Ok(Box::new(Fake { backend, calls: &FULL_CALLS, hold: &FULL_HOLD }))
    }

    /// A stalled worker: opens beyond the queue are refused at once, ticks
    /// queue one repair, not one each, and every accepted open still runs.
    #[tokio::test]
    async fn a_full_queue_refuses_opens_without_waiting() {
        let w = worker(&gates::tests::cfg(&[(&[22], Backend::Nftables)]), full_fake);
        let hold = FULL_HOLD.lock().unwrap();
        for _ in 0..10 {
            w.repair();
        }
        let mut accepted = 0;
        let refused = loop {
            match w.open(request(Backend::Nftables)) {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted <= QUEUE + 1, "the queue is not bounded");
        };
        assert!(matches!(refused, QueueError::Full), "{refused}");
        assert!(accepted >= QUEUE - 1, "refused early, after {accepted}");
        drop(hold);
        w.shutdown().await;
        let calls = FULL_CALLS.lock().unwrap();
        // One queued, plus at most the one the worker had already started.
        let repairs = calls.iter().filter(|c| c.starts_with("repair")).count();
        assert!((1..=2).contains(&repairs), "{repairs} repairs for 10 ticks");
        assert_eq!(calls.iter().filter(|c| c.starts_with("open")).count(), accepted);
    }
}
