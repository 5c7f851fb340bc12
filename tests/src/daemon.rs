//! Runs xknockd (and other programs) inside a test namespace with their
//! output captured, so tests can await log lines instead of sleeping.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{netns::ChildGuard, wait_until};

/// Where the built binaries are: `cargo xtask test` sets XKNOCK_BIN_DIR.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("XKNOCK_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    dir.join(name)
}

/// A process whose stdout and stderr lines are collected as they arrive.
pub struct Captured {
    pub child: ChildGuard,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Captured {
    pub fn spawn(mut cmd: Command) -> Result<Self> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        pump(child.stdout.take().expect("piped stdout"), lines.clone());
        pump(child.stderr.take().expect("piped stderr"), lines.clone());
        Ok(Self { child: ChildGuard(child), lines })
    }

    pub fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until at least `n` lines contain `needle`.
    pub fn wait_for_n(&mut self, needle: &str, n: usize, timeout: Duration) -> Result<()> {
        let ok = wait_until(timeout, || self.count(needle) >= n || self.exited());
        if !ok || self.count(needle) < n {
            bail!("waited {timeout:?} for {n}× {needle:?}; output so far:\n{}", self.output().join("\n"));
        }
        Ok(())
    }

    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_for_n(needle, 1, timeout)
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(Some(_)))
    }
}

fn pump(src: impl Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(src).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
}

/// A temp dir removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("xknock-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A namespace pair with xknockd running on the server side.
pub struct Server {
    pub daemon: Captured,
    pub dir: TempDir,
    // Dropped last: the daemon must die before its namespace goes.
    pub pair: crate::netns::NetPair,
}

impl Server {
    /// Writes `config` to `<tmp>/<file_name>`, with every `{DIR}` replaced by
    /// that temp dir, and starts `xknockd -v -c` on it.
    pub fn start(file_name: &str, config: &str, extra: &[&str]) -> Result<Self> {
        let pair = crate::netns::NetPair::new()?;
        let dir = TempDir::new();
        let cfg = dir.path(file_name);
        std::fs::write(&cfg, config.replace("{DIR}", dir.0.to_str().context("utf-8")?))?;
        let mut cmd = pair.server_cmd(bin("xknockd").to_str().context("utf-8")?);
        cmd.arg("-v")
            .arg("-c")
            .arg(&cfg)
            .args(["-i", &pair.server_if, "-p"])
            .arg(dir.path("pid"))
            .args(extra);
        let mut daemon = Captured::spawn(cmd)?;
        daemon.wait_for("starting up, listening on", Duration::from_secs(20))?;
        Ok(Self { daemon, dir, pair })
    }

    pub fn config_path(&self, file_name: &str) -> PathBuf {
        self.dir.path(file_name)
    }

    /// Runs `xknock ARGS` in the client namespace and insists it succeeds.
    pub fn knock(&self, args: &[&str]) {
        self.pair.xknock(args)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.daemon.child.pid() as i32, sig) };
    }

    /// The value of `key=` in a fresh stats line (SIGUSR1).
    pub fn stat(&mut self, key: &str) -> u64 {
        let before = self.daemon.count("stats: ");
        self.signal(libc::SIGUSR1);
        self.daemon.wait_for_n("stats: ", before + 1, Duration::from_secs(10)).unwrap();
        let out = self.daemon.output();
        let line = out.iter().rev().find(|l| l.contains("stats: ")).unwrap();
        let field = line.split(' ').find_map(|f| f.strip_prefix(&format!("{key}=")));
        field.unwrap_or_else(|| panic!("no {key}= in {line}")).parse().unwrap()
    }
}
