//! knockd's start and stop commands, without knockd's defects.
//!
//! knockd forks per knock, runs the start command, sleeps `Cmd_Timeout` and runs the stop
//! command, remembering nothing. So a re-knock adds a duplicate firewall rule (#14, #70),
//! nothing is closed when knockd exits, and children can be left as zombies (#11). Here:
//! - one registry entry per open (door, address): a re-knock while the stop is pending does
//!   NOT run the start command again, it only postpones the stop to now + `Cmd_Timeout`;
//! - a re-knock while the stop command is running waits for it, then opens afresh, so a
//!   start and a stop for the same address never run at the same time;
//! - every child is awaited, and `shutdown()` runs all pending stops before we exit.
//!
//! Doors without a stop command keep knockd's behaviour: every knock runs the start command,
//! since there is nothing to postpone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::process::Command;
use tokio::runtime::Handle;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::knocklog;

/// Where log lines go: normally `KnockLog::sink()`.
pub type LogSink = Arc<dyn Fn(String) + Send + Sync>;

/// How long `shutdown()` waits for stop and start commands to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Replaces every `%IP%` with the address. The only substitution knockd makes; an address's
/// Display holds only hex digits, dots and colons, so nothing in it is special to the shell.
pub fn render(template: &str, ip: IpAddr) -> String {
    template.replace("%IP%", &ip.to_string())
}

/// The command for this knocker: IPv6 knockers use the `_6` variant and fall back to the
/// plain one, as knockd does; IPv4 knockers use the plain one. Give IPv4-mapped addresses
/// as IPv4 (`IpAddr::to_canonical`), or they count as IPv6.
pub fn pick<'a>(cmd: Option<&'a str>, cmd6: Option<&'a str>, ip: IpAddr) -> Option<&'a str> {
    match ip {
        IpAddr::V4(_) => cmd,
        IpAddr::V6(_) => cmd6.or(cmd),
    }
}

/// What `CommandRunner::open` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// The start command runs now (if any) and the stop command (if any) is scheduled.
    Started,
    /// The door was already open for this address: start not run again, stop postponed.
    Postponed,
    /// The stop command is running: the door opens again once it has finished.
    Queued,
    /// `shutdown()` has been called.
    Refused,
}

/// Runs doors' commands in the background. Cheap to clone; clones share one registry.
#[derive(Clone)]
pub struct CommandRunner {
    inner: Arc<Inner>,
}

type Key = (String, IpAddr);

struct Inner {
    sink: LogSink,
    rt: Handle,
    state: Mutex<State>,
    shutdown: watch::Sender<bool>,
    // Signalled when the last background task ends.
    idle: Notify,
}

#[derive(Default)]
struct State {
    slots: HashMap<Key, Slot>,
    closed: bool,
    tasks: usize,
}

/// An open door awaiting its stop command.
struct Slot {
    deadline: Instant,
    stop: String,
    closing: bool,
    // A knock that came while the stop command ran: opened again once it ends.
    reopen: Option<Request>,
}

struct Request {
    start: Option<String>,
    stop: Option<String>,
    cmd_timeout: Duration,
}

impl CommandRunner {
    /// A runner logging through `sink`.
    ///
    /// # Panics
    /// Outside a tokio runtime: the runner spawns its tasks on the current one, which lets
    /// `open()` be called later from any thread.
    pub fn new(sink: LogSink) -> Self {
        let inner = Inner {
            sink,
            rt: Handle::current(),
            state: Mutex::new(State::default()),
            shutdown: watch::channel(false).0,
            idle: Notify::new(),
        };
        CommandRunner { inner: Arc::new(inner) }
    }

    /// A knock completed: run `start` now and `stop` after `cmd_timeout`, in the background.
    /// Both are rendered for `ip` here (rendering twice changes nothing). See the module
    /// documentation for re-knocks.
    pub fn open(
        &self,
        door: &str,
        ip: IpAddr,
        start: Option<String>,
        stop: Option<String>,
        cmd_timeout: Duration,
    ) -> Opened {
        let req =
            Request { start: start.map(|c| render(&c, ip)), stop: stop.map(|c| render(&c, ip)), cmd_timeout };
        let key = (door.to_owned(), ip);
        let outcome = self.inner.register(&key, req);
        if outcome == Opened::Postponed {
            (self.inner.sink)(knocklog::reknock(ip, door));
        }
        outcome
    }

    /// Runs every pending stop command now, refuses further `open()`s, and waits up to
    /// `SHUTDOWN_GRACE` for all running commands. Returns false if some were still running
    /// then; they go on as orphans (init reaps them) rather than being killed halfway.
    pub async fn shutdown(&self) -> bool {
        self.inner.lock().closed = true;
        self.inner.shutdown.send_replace(true);
        tokio::time::timeout(SHUTDOWN_GRACE, self.inner.wait_idle()).await.is_ok()
    }

    /// Open doors awaiting their stop command, with the time left, sorted by door and
    /// address. Doors whose stop command is already running are left out.
    pub fn pending(&self) -> Vec<(String, IpAddr, Duration)> {
        let now = Instant::now();
        let state = self.inner.lock();
        let mut out: Vec<_> = state
            .slots
            .iter()
            .filter(|(_, slot)| !slot.closing)
            .map(|((door, ip), slot)| (door.clone(), *ip, slot.deadline.saturating_duration_since(now)))
            .collect();
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic in a log sink: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides, under the lock so concurrent knocks agree, what a knock does.
    fn register(self: &Arc<Self>, key: &Key, req: Request) -> Opened {
        let start = {
            let mut state = self.lock();
            if state.closed {
                return Opened::Refused;
            }
            if let Some(slot) = state.slots.get_mut(key) {
                if slot.closing {
                    slot.reopen = Some(req);
                    return Opened::Queued;
                }
                // Never shorten: a reload may have lowered Cmd_Timeout.
                slot.deadline = slot.deadline.max(Instant::now() + req.cmd_timeout);
                return Opened::Postponed;
            }
            state.tasks += 1;
            open_slot(&mut state, key, req)
        };
        // Spawned after unlocking: a runtime that is shutting down drops the task at once,
        // and the guard's drop takes the lock.
        let guard = TaskGuard(Arc::clone(self));
        self.rt.spawn(Arc::clone(self).session(key.clone(), start, guard));
        Opened::Started
    }

    /// One open door's life: start, wait, stop, and again for knocks queued meanwhile.
    async fn session(self: Arc<Self>, key: Key, mut start: Option<String>, _guard: TaskGuard) {
        loop {
            if let Some(cmd) = start.take() {
                self.run(&key.0, &cmd).await;
            }
            let Some(stop) = self.wait_deadline(&key).await else {
                return;
            };
            self.run(&key.0, &stop).await;
            match self.finish_close(&key) {
                Some(next) => start = next,
                None => return,
            }
        }
    }

    /// Sleeps until the slot's (movable) deadline or shutdown; then marks it closing and
    /// returns its stop command. None when there is no stop command to run.
    async fn wait_deadline(&self, key: &Key) -> Option<String> {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let deadline = {
                let mut state = self.lock();
                let closed = state.closed;
                let slot = state.slots.get_mut(key)?;
                if closed || Instant::now() >= slot.deadline {
                    slot.closing = true;
                    let stop = slot.stop.clone();
                    drop(state);
                    let line = if closed { knocklog::closing_on_shutdown } else { knocklog::cmd_timeout };
                    (self.sink)(line(key.1, &key.0));
                    return Some(stop);
                }
                slot.deadline
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.wait_for(|down| *down) => {}
            }
        }
    }

    /// The stop command has finished: forget the slot, or reopen it for a queued knock.
    /// Returns the start command to run next, if the door opens again.
    fn finish_close(&self, key: &Key) -> Option<Option<String>> {
        let mut state = self.lock();
        let slot = state.slots.remove(key)?;
        let req = slot.reopen.filter(|_| !state.closed)?;
        Some(open_slot(&mut state, key, req))
    }

    async fn run(&self, door: &str, cmd: &str) {
        (self.sink)(knocklog::running(door, cmd));
        let child = Command::new("/bin/sh").arg("-c").arg(cmd).stdin(Stdio::null()).spawn();
        let status = match child {
            // Awaiting the child reaps it: no zombies.
            Ok(mut child) => child.wait().await,
            Err(e) => Err(e),
        };
        crate::metrics::events().command_ran(door, matches!(&status, Ok(s) if s.success()));
        let line = match status {
            Ok(status) => exit_line(door, status),
            Err(e) => Some(knocklog::spawn_failed(door, e)),
        };
        if let Some(line) = line {
            (self.sink)(line);
        }
    }

    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so a task ending in between still wakes us.
            idle.as_mut().enable();
            if self.lock().tasks == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Inserts the slot for a request with a stop command; returns its start command.
fn open_slot(state: &mut State, key: &Key, req: Request) -> Option<String> {
    if let Some(stop) = req.stop {
        let slot = Slot { deadline: Instant::now() + req.cmd_timeout, stop, closing: false, reopen: None };
        state.slots.insert(key.clone(), slot);
    }
    req.start
}

fn exit_line(door: &str, status: ExitStatus) -> Option<String> {
    match (status.code(), status.signal()) {
        (Some(0), _) => None,
        (Some(code), _) => Some(knocklog::nonzero(door, code)),
        (None, Some(sig)) => Some(knocklog::killed(door, sig)),
        (None, None) => Some(knocklog::nonzero(door, -1)),
    }
}

/// Counts a background task, so `shutdown()` knows when all are done, even if the runtime
/// drops the task unfinished.
struct TaskGuard(Arc<Inner>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.tasks -= 1;
        if state.tasks == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4));
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    const HOUR: Duration = Duration::from_secs(3600);

    struct Fixture {
        runner: CommandRunner,
        lines: Arc<Mutex<Vec<String>>>,
        dir: PathBuf,
    }

    impl Fixture {
        fn new(tag: &str) -> Self {
            let _ = env_logger::builder().is_test(true).try_init();
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("commands-{}-{tag}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink_lines = Arc::clone(&lines);
            let sink: LogSink = Arc::new(move |l: String| sink_lines.lock().unwrap().push(l));
            Fixture { runner: CommandRunner::new(sink), lines, dir }
        }

        fn file(&self, name: &str) -> PathBuf {
            self.dir.join(name)
        }

        /// A command appending `word %IP%` to `name`.
        fn append(&self, name: &str, word: &str) -> String {
            format!("echo {word} %IP% >> {}", self.file(name).display())
        }

        fn logged(&self, line: &str) -> bool {
            self.lines.lock().unwrap().iter().any(|l| l == line)
        }

        fn log_index(&self, line: &str) -> Option<usize> {
            self.lines.lock().unwrap().iter().position(|l| l == line)
        }
    }

    fn read(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Real-time sleep. Under paused time, a pending spawn_blocking also keeps tokio from
    /// jumping the clock forward while a child process runs.
    async fn real_sleep(ms: u64) {
        tokio::task::spawn_blocking(move || std::thread::sleep(Duration::from_millis(ms))).await.unwrap();
    }

    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            real_sleep(10).await;
        }
        panic!("timed out waiting for {what}");
    }

    async fn wait_lines(path: &Path, n: usize) {
        wait_until(&format!("{} lines in {}", n, path.display()), || read(path).len() >= n).await;
    }

    #[test]
    fn render_replaces_every_ip() {
        assert_eq!(render("a %IP% b %IP%%IP%", V4), "a 1.2.3.4 b 1.2.3.41.2.3.4");
        assert_eq!(render("ip6tables -s %IP%", V6), "ip6tables -s 2001:db8::1");
        assert_eq!(render("%ip% %PORT% 100%", V4), "%ip% %PORT% 100%");
        assert_eq!(render(&render("%IP%", V6), V6), "2001:db8::1");
    }

    #[test]
    fn pick_uses_v6_variant_with_fallback() {
        assert_eq!(pick(Some("v4"), Some("v6"), V4), Some("v4"));
        assert_eq!(pick(None, Some("v6"), V4), None);
        assert_eq!(pick(Some("v4"), Some("v6"), V6), Some("v6"));
        assert_eq!(pick(Some("v4"), None, V6), Some("v4"));
        assert_eq!(pick(None, None, V6), None);
    }

    #[tokio::test]
    async fn start_command_gets_the_address() {
        let fx = Fixture::new("start");
        let cmd = fx.append("out", "start");
        assert_eq!(fx.runner.open("openSSH", V4, Some(cmd), None, HOUR), Opened::Started);
        wait_lines(&fx.file("out"), 1).await;
        assert_eq!(read(&fx.file("out")), ["start 1.2.3.4"]);
        let rendered = format!("echo start 1.2.3.4 >> {}", fx.file("out").display());
        assert!(fx.logged(&format!("openSSH: running command: {rendered}")));
        assert!(fx.runner.pending().is_empty());
    }

    #[tokio::test]
    async fn ipv6_knockers_use_the_v6_command_or_fall_back() {
        let fx = Fixture::new("v6");
        let (v4, v6) = (fx.append("out", "v4"), fx.append("out", "v6"));
        let cmd = pick(Some(&v4), Some(&v6), V6).map(str::to_owned);
        fx.runner.open("both", V6, cmd, None, HOUR);
        wait_lines(&fx.file("out"), 1).await;
        let cmd = pick(Some(&v4), None, V6).map(str::to_owned);
        fx.runner.open("plain", V6, cmd, None, HOUR);
        wait_lines(&fx.file("out"), 2).await;
        assert_eq!(read(&fx.file("out")), ["v6 2001:db8::1", "v4 2001:db8::1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_follows_after_cmd_timeout() {
        let fx = Fixture::new("stop");
        let (start, stop) = (fx.append("start", "open"), fx.append("stop", "close"));
        fx.runner.open("d", V4, Some(start), Some(stop.clone()), Duration::from_secs(30));
        wait_lines(&fx.file("start"), 1).await;
        real_sleep(200).await;
        assert!(read(&fx.file("stop")).is_empty());
        let pending = fx.runner.pending();
        assert_eq!((pending[0].0.as_str(), pending[0].1), ("d", V4));
        assert!(pending[0].2 <= Duration::from_secs(30) && pending[0].2 > Duration::from_secs(29));

        tokio::time::advance(Duration::from_secs(31)).await;
        wait_lines(&fx.file("stop"), 1).await;
        assert_eq!(read(&fx.file("stop")), ["close 1.2.3.4"]);
        let timeout = fx.log_index("1.2.3.4: d: command timeout").unwrap();
        let running = fx.log_index(&format!("d: running command: {}", render(&stop, V4))).unwrap();
        assert!(timeout < running);
        wait_until("slot removal", || fx.runner.pending().is_empty()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn reknock_postpones_stop_without_rerunning_start() {
        let fx = Fixture::new("reknock");
        let (start, stop) = (fx.append("start", "open"), fx.append("stop", "close"));
        let t = Duration::from_secs(30);
        assert_eq!(fx.runner.open("d", V4, Some(start.clone()), Some(stop.clone()), t), Opened::Started);
        wait_lines(&fx.file("start"), 1).await;
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(fx.runner.open("d", V4, Some(start), Some(stop), t), Opened::Postponed);
        assert!(fx.logged("1.2.3.4: d: already open, stop command postponed"));

        // Past the first deadline (30 s), before the postponed one (50 s).
        tokio::time::advance(Duration::from_secs(15)).await;
        real_sleep(200).await;
        assert!(read(&fx.file("stop")).is_empty());
        tokio::time::advance(Duration::from_secs(20)).await;
        wait_lines(&fx.file("stop"), 1).await;
        real_sleep(200).await;
        assert_eq!(read(&fx.file("start")), ["open 1.2.3.4"]);
        assert_eq!(read(&fx.file("stop")), ["close 1.2.3.4"]);
    }

    #[tokio::test(start_paused = true)]
    async fn knock_during_stop_reopens_after_it() {
        let fx = Fixture::new("queued");
        let start = fx.append("log", "open");
        let stop = format!("sleep 0.3; {}", fx.append("log", "close"));
        let t = Duration::from_secs(30);
        fx.runner.open("d", V4, Some(start.clone()), Some(stop.clone()), t);
        wait_lines(&fx.file("log"), 1).await;
        tokio::time::advance(t).await;
        wait_until("stop to start", || fx.logged("1.2.3.4: d: command timeout")).await;
        assert_eq!(fx.runner.open("d", V4, Some(start), Some(stop), t), Opened::Queued);
        wait_lines(&fx.file("log"), 3).await;
        assert_eq!(read(&fx.file("log")), ["open 1.2.3.4", "close 1.2.3.4", "open 1.2.3.4"]);
        assert_eq!(fx.runner.pending().len(), 1);
    }

    #[tokio::test]
    async fn shutdown_runs_pending_stops_now() {
        let fx = Fixture::new("shutdown");
        let (start, stop) = (fx.append("start", "open"), fx.append("stop", "close"));
        fx.runner.open("d", V4, Some(start.clone()), Some(stop.clone()), HOUR);
        fx.runner.open("d", V6, Some(start.clone()), Some(stop.clone()), HOUR);
        wait_lines(&fx.file("start"), 2).await;
        assert!(fx.runner.shutdown().await);
        let mut closed = read(&fx.file("stop"));
        closed.sort();
        assert_eq!(closed, ["close 1.2.3.4", "close 2001:db8::1"]);
        assert!(fx.logged("1.2.3.4: d: closing on shutdown"));
        assert!(fx.runner.pending().is_empty());
        assert_eq!(fx.runner.open("d", V4, Some(start), Some(stop), HOUR), Opened::Refused);
    }

    #[tokio::test]
    async fn shutdown_waits_for_running_starts() {
        let fx = Fixture::new("slowstart");
        let start = format!("sleep 0.3; {}", fx.append("start", "open"));
        fx.runner.open("d", V4, Some(start), None, HOUR);
        assert!(fx.runner.shutdown().await);
        assert_eq!(read(&fx.file("start")), ["open 1.2.3.4"]);
    }

    #[tokio::test]
    async fn failures_are_logged() {
        let fx = Fixture::new("fail");
        fx.runner.open("openSSH", V4, Some("exit 3".into()), None, HOUR);
        fx.runner.open("other", V4, Some("kill -9 $$".into()), None, HOUR);
        assert!(fx.runner.shutdown().await);
        assert!(fx.logged("openSSH: command returned non-zero status code (3)"));
        assert!(fx.logged("other: command returned non-zero status code (killed by signal 9)"));
    }
}
