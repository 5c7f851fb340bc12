//! The daemon: kernel events in, knockd's log lines and actions out.

mod doors;
mod dynamic;
mod expiry;
pub mod gates;
mod links;
mod names;
mod onetime;
mod ops;
mod ratelimit;
mod reload;
mod spa;
mod spa_screen;
mod worker;

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

pub use doors::{apply_kernel_steps, door_spec, kernel_addrs, kernel_ports, kernel_steps, KernelSteps};

use crate::{
    addrs::{local_addrs, AddrWatcher},
    bpf::{AttachMode, Tables, XdpKnocker},
    commands::{pick, CommandRunner},
    config::model::{Backend, Config, Door},
    events::{monotonic_now, EventStream, KnockRecord, RecordKind},
    gate::door_backend,
    knocklog::{self, KnockLog},
    metrics,
    tracker::{Input, Knock, Outcome, Tracker},
};

/// A batch this large means a flood: pause before the next read.
const BUSY_BATCH: usize = 64;
/// The pause; the 1 MiB ring holds 16 K events, far more than a flood
/// delivers in this time.
const BUSY_PAUSE: Duration = Duration::from_millis(1);
/// How often the gates are checked (a foreign `flush ruleset` is repaired
/// within a second) and rate-limit refusals reported.
const TICK: Duration = Duration::from_millis(500);

/// What the command line adds to the config.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub interfaces: Vec<String>,
    pub xdp_mode: AttachMode,
    pub only_ipv4: bool,
    pub lookup: bool,
    /// Where `xknockd --status` finds the daemon; `None`: no socket.
    pub status_socket: Option<std::path::PathBuf>,
}

/// Whether any door opens through `backend`.
pub fn uses_backend(cfg: &Config, backend: Backend) -> bool {
    cfg.doors.iter().any(|d| crate::gate::door_backend(cfg, d) == Some(backend))
}

pub struct Daemon {
    cfg: Config,
    opts: RunOptions,
    doors: HashMap<Arc<str>, Door>,
    tracker: Tracker,
    knocker: XdpKnocker,
    log: Arc<KnockLog>,
    runner: CommandRunner,
    local: BTreeSet<IpAddr>,
    names: names::Names,
    gates: worker::GateWorker,
    limiter: ratelimit::OpenLimiter,
    spa: spa_screen::SharedSpa,
    /// The SPA configuration the loop is on; see `SpaState::configure`.
    spa_generation: u64,
    dynamic: dynamic::DynamicDoors,
    ops: ops::Ops,
}

impl Daemon {
    /// Loads the XDP program, fills its maps and attaches it. Nothing is
    /// attached if any step before attaching fails.
    pub fn start(cfg: Config, opts: RunOptions, log: Arc<KnockLog>) -> Result<Self> {
        let mut dynamic = dynamic::DynamicDoors::load(&cfg.options.state_dir);
        let cfg = dynamic.expand(cfg);
        let ops = ops::Ops::bind(&cfg, opts.status_socket.as_deref())?;
        // The XDP gate must outlive us, so its maps and links are pinned.
        let xdp_gate = uses_backend(&cfg, Backend::Xdp);
        let tables = Tables {
            first_step_slots: cfg.options.first_step_slots,
            active_entries: u32::try_from(cfg.options.max_sources).unwrap_or(u32::MAX),
        };
        let mut knocker = XdpKnocker::load_sized(Some(&cfg.options.bpffs_dir), xdp_gate, tables)
            .context("loading the XDP program")?;
        log::info!("{}", knocker.table_memory());
        let local = local_addrs().context("reading local addresses")?;
        apply_kernel_steps(&mut knocker, &cfg)?;
        knocker.set_knock_ports(&kernel_ports(&cfg))?;
        let mut spa = spa_screen::SpaState::new(opts.only_ipv4);
        let spa_generation = spa.configure(&cfg, &mut knocker)?;
        let spa = spa_screen::SharedSpa::new(spa);
        // Gates close their ports before the program sees a packet.
        let mut gates = gates::Gates::default();
        gates.sync(&cfg, &mut knocker)?;
        knocker.set_addrs(&kernel_addrs(&local, &cfg.doors, opts.only_ipv4))?;
        for iface in &opts.interfaces {
            let mode = knocker.attach(iface, opts.xdp_mode)?;
            log::debug!("{iface}: XDP attached in {mode:?} mode");
        }
        let tracker = Tracker::new(cfg.doors.iter().map(door_spec).collect(), cfg.options.max_sources);
        let runner = CommandRunner::new(log.sink());
        let doors = cfg.doors.iter().map(|d| (Arc::from(d.name.as_str()), d.clone())).collect();
        let limiter = Self::limiter(&cfg, &gates);
        let gates = worker::GateWorker::spawn(gates, log.clone(), runner.clone())
            .context("starting the gate thread")?;
        Ok(Self {
            cfg,
            opts,
            doors,
            tracker,
            knocker,
            log,
            runner,
            local,
            names: names::Names::default(),
            gates,
            limiter,
            spa,
            spa_generation,
            dynamic,
            ops,
        })
    }

    /// The rate limiter for `cfg`, knowing the windows an earlier run left,
    /// so their owners re-knock for free.
    fn limiter(cfg: &Config, gates: &gates::Gates) -> ratelimit::OpenLimiter {
        let now = monotonic_now();
        let mut limiter = ratelimit::OpenLimiter::default();
        limiter.configure(ratelimit::limits(cfg), now);
        for w in gates.windows() {
            limiter.adopt(&w.door, w.src, now + w.remaining);
        }
        limiter
    }

    /// Runs until SIGINT or SIGTERM, then closes every door it opened.
    pub async fn run(mut self) -> Result<()> {
        let mut events = EventStream::new(self.knocker.take_events()?)?;
        let mut queries = self.ops.serve()?;
        let mut addr_watch = AddrWatcher::new().context("subscribing to address changes")?;
        // A device replaced before we subscribed sends no further notice.
        self.sync_links();
        let mut hup = signal(SignalKind::hangup())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        self.log.notice(&knocklog::starting_up(&self.opts.interfaces));
        let mut batch = Vec::new();
        let mut spa_verdicts =
            self.spa.start(self.knocker.take_spa_events()?).context("starting the SPA thread")?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.purge_sleep();
            let roll = self.dynamic_sleep();
            tokio::select! {
                res = events.next_batch(&mut batch) => {
                    res.context("reading the ring buffer")?;
                    let busy = batch.len() >= BUSY_BATCH;
                    self.handle_batch(&mut batch).await;
                    if busy {
                        // Under a flood, let events pile up for a moment: one
                        // wakeup then carries hundreds instead of a few. A lone
                        // knock never waits here.
                        tokio::time::sleep(BUSY_PAUSE).await;
                    }
                }
                v = spa_verdicts.recv() => {
                    // Fail closed, and loudly: without its thread no SPA
                    // packet would ever be judged again.
                    let v = v.context("the SPA thread stopped")?;
                    self.handle_screened(v).await;
                }
                () = deadline => self.purge(&mut events, &mut batch).await?,
                () = roll => self.roll_periods().await,
                _ = tick.tick() => self.on_tick(),
                res = addr_watch.changed() => {
                    let seen = res.context("watching addresses")?;
                    if seen.links {
                        self.sync_links();
                    }
                    if seen.addrs {
                        self.sync_addrs();
                    }
                }
                _ = hup.recv() => self.reload().await,
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = usr1.recv() => log::info!("{}", self.stats()),
                Some(q) = queries.recv() => {
                    let _ = q.send(self.view());
                }
            }
        }
        self.shutdown().await;
        Ok(())
    }

    /// Sleeps until the tracker's next expiry, or forever if none.
    fn purge_sleep(&self) -> impl std::future::Future<Output = ()> {
        let wait = self.tracker.next_deadline().map(|d| d.saturating_sub(monotonic_now()));
        async move {
            match wait {
                Some(w) => tokio::time::sleep(w).await,
                None => std::future::pending().await,
            }
        }
    }

    /// A deadline passed: knocks already in the ring go first (see
    /// [`expiry`]), then the attempts due by the time the timer fired.
    async fn purge(&mut self, events: &mut EventStream, batch: &mut Vec<KnockRecord>) -> Result<()> {
        let now = monotonic_now();
        expiry::pending(events, batch).await.context("reading the ring buffer")?;
        let knocks = self.knocks(batch);
        let mut out = Vec::new();
        expiry::expire(&mut self.tracker, &knocks, now, &mut out);
        self.handle_outcomes(out).await;
        Ok(())
    }

    async fn handle_batch(&mut self, batch: &mut Vec<KnockRecord>) {
        let mut out = Vec::new();
        for input in self.knocks(batch) {
            self.tracker.feed(&input, &mut out);
        }
        self.handle_outcomes(out).await;
    }

    /// The tracker's view of `batch`, which is left empty.
    fn knocks(&self, batch: &mut Vec<KnockRecord>) -> Vec<Input> {
        let mut knocks = Vec::with_capacity(batch.len());
        for rec in batch.drain(..) {
            // One knocker is one source whichever way the stack reported it.
            let src = rec.src.to_canonical();
            if self.opts.only_ipv4 && src.is_ipv6() {
                continue;
            }
            log::debug!("knock {} -> {} {} flags {:#04x}", src, rec.dst, rec.step, rec.tcp_flags);
            let dst = rec.dst.to_canonical();
            let knock = Knock {
                src,
                dst,
                dst_is_local: self.local.contains(&dst),
                step: rec.step,
                tcp_flags: rec.tcp_flags,
                at: rec.at,
            };
            knocks.push(match rec.kind {
                RecordKind::Knock => Input::Knock(knock),
                RecordKind::Pair { first, first_flags, first_at, .. } => Input::Pair {
                    first: Knock { step: first, tcp_flags: first_flags, at: first_at, ..knock },
                    second: knock,
                },
                RecordKind::Sweep { door, count } => Input::Sweep { src, door: door.map(usize::from), count },
            });
        }
        knocks
    }

    async fn handle_outcomes(&mut self, out: Vec<Outcome>) {
        for src in self.tracker.take_released() {
            let done = !self.tracker.holds(src);
            let res = self.knocker.release_active(src).and_then(|()| match done {
                true => self.knocker.end_attempts(src),
                false => Ok(()),
            });
            if let Err(e) = res {
                log::warn!("{src}: releasing it from the kernel's active sources: {e}");
            }
        }
        for o in out {
            let Some(o) = self.dynamic_outcome(o).await else { continue };
            match o {
                Outcome::Stage { src, door, stage } => {
                    metrics::events().stage(&door, stage);
                    let who = self.who(src);
                    self.log.line(&knocklog::stage(who, &door, stage));
                }
                Outcome::Open { src, door } => {
                    // Over the limit: not even OPEN SESAME, so a flood cannot
                    // flood the log either; `on_tick` reports the count.
                    if self.limiter.admit(&door, src, monotonic_now()) == ratelimit::Verdict::Refused {
                        metrics::events().refused(&door, 1);
                        continue;
                    }
                    metrics::events().door_opened(&door);
                    let sesame = knocklog::open_sesame(self.who(src), &door);
                    if self.opts.lookup {
                        self.names.completed(src);
                    }
                    self.open(src, &door, sesame).await;
                }
                Outcome::Timeout { src, door, stage } => {
                    metrics::events().timeout(&door);
                    let who = self.who(src);
                    self.log.line(&knocklog::seq_timeout(who, &door, stage));
                }
                Outcome::Swept { src, door, count } => {
                    metrics::events().swept(door.as_deref());
                    let who = self.who(src);
                    let what = format!("sweep guard: {count} packets to other ports");
                    self.log.line(&match door {
                        Some(door) => format!("{who}: {door}: {what}, attempt dropped"),
                        None => format!("{who}: {what}, attempts dropped"),
                    });
                }
                Outcome::Evicted { src } => {
                    log::debug!("{src}: evicted: tracker is at max_sources")
                }
            }
        }
    }

    /// OPEN SESAME: consume a one-time sequence first (so a crash can never
    /// let it be replayed), then open the gate and run the door's commands.
    /// The gate thread does both, in that order, for a door with `open`, and
    /// logs `sesame` only once the window is in the kernel: whoever reads
    /// OPEN SESAME may connect at once.
    async fn open(&mut self, src: IpAddr, name: &Arc<str>, sesame: String) {
        let Some(door) = self.doors.get(name).cloned() else {
            return;
        };
        let gated = door.open.is_some() && door_backend(&self.cfg, &door).is_some();
        if !gated {
            self.log.line(&sesame);
        }
        if door.one_time_sequences.is_some() && !self.rotate_one_time(&door).await {
            if gated {
                self.log.line(&sesame);
            }
            return;
        }
        let start = pick(door.start_command.as_deref(), door.start_command_6.as_deref(), src);
        let stop = pick(door.stop_command.as_deref(), door.stop_command_6.as_deref(), src);
        let commands = (start.is_some() || stop.is_some()).then(|| worker::Commands {
            start: start.map(String::from),
            stop: stop.map(String::from),
            timeout: door.cmd_timeout,
        });
        let (Some(open), Some(backend)) = (&door.open, door_backend(&self.cfg, &door)) else {
            if let Some(c) = commands {
                self.runner.open(&door.name, src, c.start, c.stop, c.timeout);
            }
            return;
        };
        let req = worker::OpenRequest {
            door: Arc::clone(name),
            backend,
            src,
            ports: open.ports.clone(),
            duration: open.duration,
            commands,
            sesame: sesame.clone(),
        };
        // Fail closed: a stalled firewall tool must not stall the loop.
        if let Err(e) = self.gates.open(req) {
            metrics::events().gate_failed(&door.name);
            self.log.line(&sesame);
            self.log.line(&format!("{}: not opening the gate for {src}: {e}", door.name));
        }
    }

    /// Keeps the gates in place and reports refused opens, at most once a
    /// second per door.
    fn on_tick(&mut self) {
        self.gates.repair();
        for (door, n) in self.limiter.tick(monotonic_now()) {
            self.log.line(&format!("{door}: {n} opens over the rate limit in the last second, not opened"));
        }
    }

    /// The log prefix for a knocker: its address, plus its name with -l
    /// once [`names`] has found it.
    fn who(&self, ip: IpAddr) -> String {
        let name = if self.opts.lookup { self.names.get(ip) } else { None };
        knocklog::ip_prefix(ip, name.as_deref())
    }

    /// Kernel counters and tracker state, for SIGUSR1 and exit (and the bench).
    fn stats(&self) -> String {
        let c = self.knocker.counters().unwrap_or_default();
        format!(
            "stats: frames={} knock_hits={} flag_mismatch={} ringbuf_full={} not_local={} gate_drop={} \
             gate_pass={} stealth_drop={} unclassified_drop={} first_step={} pairs={} orphan_step={} \
             sweep_counted={} sweep_dropped={} active_full={} sources={} evictions={}",
            c.frames,
            c.knock_hits,
            c.flag_mismatch,
            c.ringbuf_full,
            c.not_local,
            c.gate_drop,
            c.gate_pass,
            c.stealth_drop,
            c.unclassified_drop,
            c.first_step,
            c.pairs,
            c.orphan_step,
            c.sweep_counted,
            c.sweep_dropped,
            c.active_full,
            self.tracker.sources(),
            self.tracker.evictions()
        ) + &self.spa_stats()
    }

    fn sync_addrs(&mut self) {
        match local_addrs() {
            Ok(local) => {
                if local != self.local {
                    log::debug!("local addresses changed: {local:?}");
                    self.local = local;
                }
                let want = kernel_addrs(&self.local, &self.cfg.doors, self.opts.only_ipv4);
                if let Err(e) = self.knocker.set_addrs(&want) {
                    log::error!("updating address maps: {e}");
                }
            }
            Err(e) => log::error!("re-reading local addresses: {e}"),
        }
    }

    async fn shutdown(self) {
        self.log.notice(&knocklog::shutting_down());
        log::info!("{}", self.stats());
        // Queued opens run, then windows end; protected ports stay closed
        // (fail closed).
        self.gates.shutdown().await;
        if !self.runner.shutdown().await {
            log::warn!("some commands were still running at exit");
        }
        // Dropping the knocker detaches XDP, except links pinned for the gate.
        drop(self.knocker);
    }
}
