//! The flood rig: one namespace pair, the daemon under test in the server
//! namespace, the knocking client and the readings taken from /proc and the
//! interfaces. Nothing here touches the root namespace's interfaces or
//! firewall: the daemons attach (XDP) or listen (pcap) on the server veth.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xknock_tests::{
    daemon::TempDir,
    netns::{BpffsMount, ChildGuard, NetPair, SERVER_V4},
    wait_until,
};

use super::{
    bpfmap::{self, CounterMap, Counters, MapMemory},
    watch::{AllowPoller, Fifo, NftMonitor, Opens},
};

/// The sources the real knocks come from: one per sequence, all on the client
/// veth, so every OPEN can be matched to the sequence that caused it.
pub const KNOCKER_BASE: [u8; 4] = [10, 77, 0, 100];
pub const KNOCKER_COUNT: u8 = 120;

pub struct Rig {
    pub pair: NetPair,
    pub server_mac: [u8; 6],
    pub bin_dir: PathBuf,
}

impl Rig {
    pub fn new(bin_dir: &Path) -> Result<Self> {
        let pair = NetPair::new()?;
        let mac =
            pair.in_ns(&pair.server, &["cat", &format!("/sys/class/net/{}/address", pair.server_if)])?;
        let mac = String::from_utf8_lossy(&mac.stdout).trim().to_string();
        let bytes: Vec<u8> = mac.split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
        let server_mac: [u8; 6] = bytes.try_into().map_err(|_| anyhow::anyhow!("bad MAC {mac:?}"))?;
        let mut batch = String::new();
        for i in 0..KNOCKER_COUNT {
            batch.push_str(&format!("addr add {}/24 dev {}\n", knocker(i), pair.client_if));
        }
        let mut ip = Command::new("ip")
            .args(["-n", &pair.client, "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("spawning ip -batch")?;
        ip.stdin.take().context("ip stdin")?.write_all(batch.as_bytes())?;
        if !ip.wait()?.success() {
            bail!("adding the knocker addresses failed");
        }
        Ok(Self { pair, server_mac, bin_dir: bin_dir.to_path_buf() })
    }

    /// Sends one knock sequence (7000 8000 9000) with our `xknock` client from
    /// source `src`, `delay_ms` apart (`-d`, 0 is knock's default), and
    /// returns when its last knock left, as read from `xknock -v` (it prints
    /// each hit just before sending it). `opens` is armed at that moment.
    pub fn knock(&self, src: Ipv4Addr, delay_ms: u64, opens: &Opens) -> Result<Instant> {
        self.route_from(src)?;
        let mut cmd = self.pair.client_cmd(self.bin_dir.join("xknock").to_str().context("utf-8")?);
        cmd.args(["-v", "-d", &delay_ms.to_string(), SERVER_V4, "7000", "8000", "9000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard(cmd.spawn().context("spawning xknock")?);
        let mut sent = None;
        for line in BufReader::new(child.0.stdout.take().context("stdout")?).lines().map_while(Result::ok) {
            if line.contains(":9000") {
                sent = Some(Instant::now());
                opens.arm(src);
            }
        }
        let status = child.0.wait()?;
        if !status.success() {
            bail!("xknock from {src} failed: {status}");
        }
        sent.context("xknock printed no last hit")
    }

    /// Sends one SPA packet with Debian's `fwknop` from source `src` (its
    /// allow-IP), asking for the gated port, and returns when it was
    /// spawned: the latency then includes fwknop's own start and key
    /// derivation. `--no-rc-file`/`--no-save-args` keep ~/.fwknoprc out,
    /// `-a` avoids fwknop's external IP lookup.
    pub fn spa(&self, src: Ipv4Addr, opens: &Opens) -> Result<Instant> {
        self.route_from(src)?;
        let mut cmd = self.pair.client_cmd("fwknop");
        cmd.args(["--no-rc-file", "--no-save-args", "-A", &format!("tcp/{GATED_PORT}"), "-D", SERVER_V4])
            .args(["-p", &super::flood::SPA_PORT.to_string(), "--use-hmac"])
            .args(["--key-base64-rijndael", SPA_KEY, "--key-base64-hmac", SPA_HMAC])
            .args(["-U", "bench", "-a", &src.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        opens.arm(src);
        let sent = Instant::now();
        let out = cmd.output().context("spawning fwknop")?;
        if !out.status.success() {
            bail!("fwknop from {src} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(sent)
    }

    /// Packets to the server leave from `src`.
    fn route_from(&self, src: Ipv4Addr) -> Result<()> {
        self.pair.in_ns(
            &self.pair.client,
            &[
                "ip",
                "route",
                "replace",
                &format!("{SERVER_V4}/32"),
                "dev",
                &self.pair.client_if,
                "src",
                &src.to_string(),
            ],
        )?;
        Ok(())
    }

    /// `ip -j -s link show dev IF` in `ns`.
    pub fn link_json(&self, ns: &str, ifname: &str) -> Result<serde_json::Value> {
        let out = self.pair.in_ns(ns, &["ip", "-j", "-s", "link", "show", "dev", ifname])?;
        serde_json::from_slice(&out.stdout).context("ip -j output")
    }

    /// Packets and drops on an interface, from `ip -s -j`.
    pub fn link_stats(&self, ns: &str, ifname: &str) -> Result<LinkStats> {
        let v = self.link_json(ns, ifname)?;
        let s = &v[0]["stats64"];
        let n = |dir: &str, key: &str| s[dir][key].as_u64().unwrap_or(0);
        Ok(LinkStats {
            rx_packets: n("rx", "packets"),
            rx_dropped: n("rx", "dropped"),
            tx_packets: n("tx", "packets"),
            tx_dropped: n("tx", "dropped"),
        })
    }

    pub fn server_stats(&self) -> Result<LinkStats> {
        self.link_stats(&self.pair.server, &self.pair.server_if)
    }

    pub fn client_stats(&self) -> Result<LinkStats> {
        self.link_stats(&self.pair.client, &self.pair.client_if)
    }
}

pub fn knocker(i: u8) -> Ipv4Addr {
    let [a, b, c, d] = KNOCKER_BASE;
    Ipv4Addr::new(a, b, c, d + i)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

impl LinkStats {
    pub fn since(&self, e: &LinkStats) -> LinkStats {
        LinkStats {
            rx_packets: self.rx_packets.saturating_sub(e.rx_packets),
            rx_dropped: self.rx_dropped.saturating_sub(e.rx_dropped),
            tx_packets: self.tx_packets.saturating_sub(e.tx_packets),
            tx_dropped: self.tx_dropped.saturating_sub(e.tx_dropped),
        }
    }
}

/// The daemons compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// xknockd as a user runs it: `xknockd -c knockd.conf -i IF`, logging
    /// knockd's lines to the LogFile and to stderr.
    Xknockd,
    /// The same with logging off (no LogFile, RUST_LOG=warn): what the
    /// knock path costs without knockd's per-knock log lines.
    XknockdQuiet,
    /// xknockd with `--xdp-mode native`: the program runs in the veth's own
    /// 256-slot XDP ring, which drops frames under a flood. (The default,
    /// `auto`, attaches in skb mode on veth for that reason.)
    XknockdNative,
    /// Debian's knockd 0.8, `knockd -i IF -c knockd.conf`, in the foreground.
    Knockd,
    /// xknockd with an `open:` door on the nftables backend (YAML), timed
    /// to the set element's arrival rather than to a command.
    XknockdNft,
    /// The same door on the xdp backend, timed to the GATE_ALLOW entry.
    XknockdXdp,
    /// The nftables door with an `spa` block instead of a sequence, opened
    /// by Debian's `fwknop` client (shape s).
    XknockdSpa,
    /// No daemon and no XDP program: the veth alone (softirq baseline).
    Bare,
    /// No daemon, an empty XDP program attached natively: what any XDP
    /// program costs on this veth before it does anything.
    EmptyXdp,
}

impl Kind {
    pub fn key(self) -> &'static str {
        match self {
            Kind::Xknockd => "xknockd",
            Kind::XknockdQuiet => "xknockd-quiet",
            Kind::XknockdNative => "xknockd-native",
            Kind::Knockd => "knockd",
            Kind::XknockdNft => "xknockd-nft",
            Kind::XknockdXdp => "xknockd-xdp",
            Kind::XknockdSpa => "xknockd-spa",
            Kind::Bare => "no-daemon",
            Kind::EmptyXdp => "empty-xdp",
        }
    }

    pub fn is_ours(self) -> bool {
        matches!(
            self,
            Kind::Xknockd
                | Kind::XknockdQuiet
                | Kind::XknockdNative
                | Kind::XknockdNft
                | Kind::XknockdXdp
                | Kind::XknockdSpa
        )
    }

    /// Opens through a gate (`open:` door) rather than a command.
    pub fn is_gate(self) -> bool {
        matches!(self, Kind::XknockdNft | Kind::XknockdXdp | Kind::XknockdSpa)
    }

    /// The gate lives in the server namespace's nftables.
    fn is_nft(self) -> bool {
        matches!(self, Kind::XknockdNft | Kind::XknockdSpa)
    }

    /// A daemon that can open the door (the others only load the link).
    pub fn is_daemon(self) -> bool {
        self == Kind::Knockd || self.is_ours()
    }
}

/// The port the gate runs' `open:` door protects.
pub const GATED_PORT: u16 = 2222;

/// The SPA door's keys (the ones tests/tests/spa_gate.rs uses).
const SPA_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const SPA_HMAC: &str =
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";

/// The gate runs' YAML: the same door as [`config`] with an `open:` block
/// instead of a command, or for shape (s) an `spa` block instead of a
/// sequence. The replay cache goes to the run's temp dir, not /var/lib.
fn gate_config(kind: Kind, dir: &Path, pins: Option<&Path>) -> String {
    let backend = if kind == Kind::XknockdXdp { "xdp" } else { "nftables" };
    let pins = pins.map_or(String::new(), |p| format!("  bpffs_dir: {}\n", p.display()));
    if kind == Kind::XknockdSpa {
        return format!(
            "options:\n  log_file: {}\n  state_dir: {}\ndoors:\n  openSSH:\n    spa:\n      port: {}\n      key_base64: \"{SPA_KEY}\"\n      hmac_key_base64: \"{SPA_HMAC}\"\n    open:\n      ports: [\"{GATED_PORT}/tcp\"]\n      duration: 3600\n      backend: {backend}\n",
            dir.join("daemon.log").display(),
            dir.join("state").display(),
            super::flood::SPA_PORT
        );
    }
    format!(
        "options:\n  log_file: {}\n{pins}doors:\n  openSSH:\n    sequence: [\"7000\", \"8000\", \"9000\"]\n    seq_timeout: 5\n    tcp_flags: syn\n    open:\n      ports: [\"{GATED_PORT}/tcp\"]\n      duration: 3600\n      backend: {backend}\n",
        dir.join("daemon.log").display()
    )
}

/// knockd.conf for both daemons: one door, knocks 7000 8000 9000 (TCP SYN),
/// whose command tells the bench which knocker got in.
fn config(kind: Kind, dir: &Path, fifo: &Path) -> String {
    let log = match kind {
        Kind::XknockdQuiet => String::new(),
        _ => format!("[options]\n\tLogFile = {}\n\n", dir.join("daemon.log").display()),
    };
    format!(
        "{log}[openSSH]\n\tsequence    = 7000,8000,9000\n\tseq_timeout = 5\n\ttcpflags    = syn\n\tcommand     = echo %IP% > {}\n",
        fifo.display()
    )
}

/// A daemon running in the server namespace, stopped when dropped.
pub struct Running {
    pub kind: Kind,
    child: Option<ChildGuard>,
    /// The daemon's pid; 0 when there is none.
    pub pid: u32,
    /// The empty program's XDP link (detached when dropped).
    _link: Option<std::os::fd::OwnedFd>,
    pub counters: Option<CounterMap>,
    pub opens: Opens,
    pub dir: TempDir,
    /// The xdp gate's pins; dropped after the daemon, which detaches the
    /// gate's pinned link so the next run finds a bare veth.
    bpffs: Option<BpffsMount>,
    ns: String,
}

impl Running {
    pub fn start(rig: &Rig, kind: Kind) -> Result<Self> {
        let dir = TempDir::new();
        let pair = &rig.pair;
        let ns = pair.server.clone();
        let bpffs = if kind == Kind::XknockdXdp { Some(BpffsMount::new()?) } else { None };
        let conf = if kind.is_gate() {
            let conf = dir.path("xknockd.yaml");
            fs::write(&conf, gate_config(kind, &dir.0, bpffs.as_ref().map(|b| b.0.join("pins")).as_deref()))?;
            conf
        } else {
            let conf = dir.path("knockd.conf");
            fs::write(&conf, config(kind, &dir.0, &dir.path("opens.fifo")))?;
            conf
        };
        let opens = match kind {
            // Listening before the daemon starts, so no element goes unseen.
            Kind::XknockdNft | Kind::XknockdSpa => Opens::Nft(NftMonitor::new(&pair.server)?),
            // The xdp poller replaces this once the daemon holds GATE_ALLOW.
            _ => Opens::Fifo(Fifo::new(&dir.path("opens.fifo"))?),
        };
        let out = fs::File::create(dir.path("daemon.out"))?;
        if !kind.is_daemon() {
            let link = match kind {
                Kind::EmptyXdp => {
                    let ifname = pair.server_if.clone();
                    Some(xknock_tests::netns::in_netns(&pair.server, move || -> Result<_> {
                        let c = std::ffi::CString::new(ifname)?;
                        // SAFETY: a valid C string.
                        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
                        super::bpfmap::attach_empty_xdp(ifindex)
                    })??)
                }
                _ => None,
            };
            return Ok(Self {
                kind,
                child: None,
                pid: 0,
                _link: link,
                counters: None,
                opens,
                dir,
                bpffs,
                ns,
            });
        }
        let mut cmd = match kind {
            Kind::Knockd => {
                let mut c = pair.server_cmd("knockd");
                c.args(["-i", &pair.server_if, "-c"]).arg(&conf).arg("-p").arg(dir.path("daemon.pid"));
                c
            }
            _ => {
                let mut c = pair.server_cmd(rig.bin_dir.join("xknockd").to_str().context("utf-8")?);
                c.arg("-c").arg(&conf).args(["-i", &pair.server_if, "-p"]).arg(dir.path("daemon.pid"));
                if kind == Kind::XknockdQuiet {
                    c.env("RUST_LOG", "warn");
                }
                if kind == Kind::XknockdNative {
                    c.args(["--xdp-mode", "native"]);
                }
                c
            }
        };
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        // `ip netns exec` execs the daemon, so the child's pid is the daemon's.
        let child = ChildGuard(cmd.spawn().with_context(|| format!("spawning {}", kind.key()))?);
        let pid = child.pid();
        let mut me =
            Self { kind, child: Some(child), pid, _link: None, counters: None, opens, dir, bpffs, ns };
        // xknockd says it is listening on stderr, knockd only in its LogFile;
        // the quiet xknockd says nothing, so wait for its XDP link instead.
        let ready_file = if kind == Kind::Knockd { "daemon.log" } else { "daemon.out" };
        let ready = me.dir.path(ready_file);
        let is_ready = || {
            if kind == Kind::XknockdQuiet {
                rig.link_json(&rig.pair.server, &rig.pair.server_if).is_ok_and(|v| !v[0]["xdp"].is_null())
            } else {
                fs::read_to_string(&ready).is_ok_and(|t| t.contains("listening on"))
            }
        };
        let mut up = false;
        wait_until(Duration::from_secs(30), || {
            up = is_ready();
            up || me.child.as_mut().is_some_and(|c| matches!(c.0.try_wait(), Ok(Some(_))))
        });
        if !up {
            bail!(
                "{} did not start:\n{}{}",
                kind.key(),
                fs::read_to_string(&ready).unwrap_or_default(),
                fs::read_to_string(me.dir.path("daemon.out")).unwrap_or_default()
            );
        }
        if kind == Kind::XknockdQuiet {
            // Attached; give the event loop a moment to start.
            std::thread::sleep(Duration::from_millis(300));
        }
        if kind.is_ours() {
            me.counters = Some(CounterMap::of_pid(pid)?);
            if kind == Kind::XknockdXdp {
                me.opens = Opens::Xdp(AllowPoller::new(pid, GATED_PORT)?);
            }
        } else {
            // knockd logs before its capture loop spins up.
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(me)
    }

    /// Of `sources`, those with an `SPA accepted` line in the daemon's log.
    pub fn spa_accepted(&self, sources: &[String]) -> usize {
        let log = fs::read_to_string(self.dir.path("daemon.log")).unwrap_or_default();
        let accepted: std::collections::HashSet<&str> = log
            .lines()
            .filter(|l| l.contains("SPA accepted"))
            .flat_map(|l| l.split_whitespace().filter_map(|w| w.strip_suffix(':')))
            .collect();
        sources.iter().filter(|ip| accepted.contains(ip.as_str())).count()
    }

    pub fn counters(&self) -> Result<Option<Counters>> {
        self.counters.as_ref().map(|c| c.read()).transpose()
    }

    /// utime + stime of the daemon, in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        if self.child.is_none() {
            return Ok(0.0);
        }
        proc_cpu_seconds(self.pid)
    }

    /// What xknockd says at start about its kernel tables (the line with
    /// `first-step table:`), to set beside what the kernel charges.
    pub fn reported_tables(&self) -> Option<String> {
        let text = fs::read_to_string(self.dir.path("daemon.out")).ok()?;
        let line = text.lines().find(|l| l.contains("first-step table:"))?;
        Some(line[line.find("first-step table:")?..].trim().to_string())
    }

    pub fn rss_kb(&self) -> Result<u64> {
        if self.child.is_none() {
            return Ok(0);
        }
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:")?.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")
    }

    /// xknockd's SIGUSR1 line (`stats: ... sources=N evictions=M`), read
    /// from its stderr: the tracker's size and evictions so far. `None` for
    /// knockd, for the quiet variant (it logs nothing at info) or if no line
    /// comes within 5 s.
    pub fn tracker(&self) -> Option<(u64, u64)> {
        if !matches!(self.kind, Kind::Xknockd | Kind::XknockdNative) {
            return None;
        }
        let out = self.dir.path("daemon.out");
        let lines = || fs::read_to_string(&out).unwrap_or_default().matches("stats: ").count();
        let before = lines();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid as i32, libc::SIGUSR1) };
        if !wait_until(Duration::from_secs(5), || lines() > before) {
            return None;
        }
        let text = fs::read_to_string(&out).ok()?;
        let line = text.lines().rev().find(|l| l.contains("stats: "))?;
        let field = |name: &str| -> Option<u64> {
            line.split_whitespace().find_map(|w| w.strip_prefix(name)?.parse().ok())
        };
        Some((field("sources=")?, field("evictions=")?))
    }

    /// What each of the daemon's bpf maps charges (empty without a daemon).
    pub fn map_memory(&self) -> Result<Vec<MapMemory>> {
        if self.child.is_none() || !self.kind.is_ours() {
            return Ok(Vec::new());
        }
        bpfmap::map_memory(self.pid)
    }

    /// SIGTERM, a bounded wait, then SIGKILL (by the guard). A gate left in
    /// place on purpose (it fails closed) is removed, so it costs the next
    /// run nothing.
    pub fn stop(mut self) -> Opens {
        // knockd has nothing to clean up here and, still busy with a
        // flood's backlog, can sit on SIGTERM; xknockd closes its gates.
        let grace = Duration::from_secs(if self.kind == Kind::Knockd { 3 } else { 15 });
        if let Some(mut child) = self.child.take() {
            if child.signal_and_wait(libc::SIGTERM, grace).is_none() {
                eprintln!("bench: {} ignored SIGTERM for {} s; killing it", self.kind.key(), grace.as_secs());
            }
        }
        if self.kind.is_nft() {
            let _ = xknock_tests::netns::ns_command(&self.ns, "nft")
                .args(["delete", "table", "inet", "xknockd"])
                .stderr(Stdio::null())
                .status();
        }
        drop(self.bpffs.take());
        let Running { opens, .. } = self;
        opens
    }
}

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

pub fn proc_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may itself hold spaces.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let utime: f64 = f.get(11).context("utime")?.parse()?;
    let stime: f64 = f.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / clock_ticks())
}

/// The whole machine's CPU time from /proc/stat, in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct SysCpu {
    pub busy: f64,
    pub softirq: f64,
    pub total: f64,
}

impl SysCpu {
    pub fn now() -> Result<Self> {
        let stat = fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().context("empty /proc/stat")?;
        let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        if v.len() < 7 {
            bail!("short cpu line in /proc/stat");
        }
        let hz = clock_ticks();
        // user nice system idle iowait irq softirq steal (guest is in user).
        let total: f64 = v.iter().take(8).sum();
        let idle = v[3] + v[4];
        Ok(Self { busy: (total - idle) / hz, softirq: v[6] / hz, total: total / hz })
    }

    pub fn since(&self, e: &SysCpu) -> SysCpu {
        SysCpu { busy: self.busy - e.busy, softirq: self.softirq - e.softirq, total: self.total - e.total }
    }
}
