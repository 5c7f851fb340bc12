//! When did the door open for a knocker? Three ways to see it, one per kind
//! of door the bench runs:
//!
//! - a command door: its command writes `%IP%` into a FIFO, stamped as each
//!   line arrives (what a user's command costs, process creation included);
//! - an `open:` door on nftables: a netlink socket on NFNLGRP_NFTABLES in the
//!   server namespace, stamped as each new set element arrives (polling
//!   `nft -j list set` would take milliseconds a round);
//! - an `open:` door on xdp: a lookup of the knocker's key in the daemon's
//!   `GATE_ALLOW` map, spun from the moment the last knock is about to leave
//!   until the window appears, so the poll costs CPU only while it matters.
//!
//! The gate watchers time the kernel state change, not a spawned shell.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use knockd_common::{AllowKey, FAMILY_V4, PROTO_TCP};
use xknock_tests::netns::in_netns;

use super::{bpfmap::MapFd, rig::KNOCKER_BASE};

/// The first open seen per knocker address.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

pub enum Opens {
    Fifo(Fifo),
    Nft(NftMonitor),
    Xdp(AllowPoller),
}

impl Opens {
    /// The last knock from `src` is about to leave.
    pub fn arm(&self, src: Ipv4Addr) {
        if let Opens::Xdp(p) = self {
            p.arm(src);
        }
    }

    /// Knockers seen opening so far.
    pub fn count(&self) -> usize {
        self.seen().lock().unwrap().len()
    }

    fn seen(&self) -> &Seen {
        match self {
            Opens::Fifo(f) => &f.seen,
            Opens::Nft(n) => &n.seen,
            Opens::Xdp(p) => &p.seen,
        }
    }

    /// Stops watching; the first open per knocker address.
    pub fn finish(self) -> HashMap<String, Instant> {
        let seen = self.seen().clone();
        drop(self);
        let out = seen.lock().unwrap().clone();
        out
    }
}

/// Records `ip` as open at `at` unless it was seen before.
fn record(seen: &Seen, ip: String, at: Instant) {
    seen.lock().unwrap().entry(ip).or_insert(at);
}

// ---------------------------------------------------------------- command FIFO

/// The door's command writes the knocker's address into a FIFO; a thread
/// stamps each line as it arrives.
pub struct Fifo {
    /// A write end of the FIFO, to wake the reader with STOP.
    writer: fs::File,
    seen: Seen,
    thread: Option<JoinHandle<()>>,
}

const STOP: &str = "bench-stop";

impl Fifo {
    pub fn new(path: &Path) -> Result<Self> {
        let c = std::ffi::CString::new(path.to_str().context("utf-8")?)?;
        // SAFETY: a valid C string.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(std::io::Error::last_os_error()).context("mkfifo");
        }
        // Read-write, so opening does not wait for a writer and the reader
        // never sees end-of-file between commands.
        let fifo = fs::OpenOptions::new().read(true).write(true).open(path)?;
        let writer = fifo.try_clone()?;
        let seen = Seen::default();
        let sink = seen.clone();
        let thread = std::thread::spawn(move || {
            for line in BufReader::new(fifo).lines().map_while(Result::ok) {
                let at = Instant::now();
                if line == STOP {
                    break;
                }
                record(&sink, line.trim().to_string(), at);
            }
        });
        Ok(Self { writer, seen, thread: Some(thread) })
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            if writeln!(self.writer, "{STOP}").is_ok() {
                let _ = t.join();
            }
        }
    }
}

// ------------------------------------------------------------ nftables monitor

const NETLINK_NETFILTER: i32 = 12;
const NFNLGRP_NFTABLES: u32 = 7;
/// (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM
const NFT_NEWSETELEM: u16 = (10 << 8) | 12;

/// Listens to nftables' change notifications in one namespace and stamps
/// every new set element that holds a knocker's address.
pub struct NftMonitor {
    seen: Seen,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NftMonitor {
    pub fn new(ns: &str) -> Result<Self> {
        let sock = in_netns(ns, nft_socket)??;
        let seen = Seen::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, halt) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while !halt.load(Ordering::Relaxed) {
                // SAFETY: reading into a buffer we own, within its length.
                let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let at = Instant::now();
                if n > 0 {
                    for ip in new_elements(&buf[..n as usize]) {
                        record(&sink, ip.to_string(), at);
                    }
                }
            }
        });
        Ok(Self { seen, stop, thread: Some(thread) })
    }
}

impl Drop for NftMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn nft_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket calls; the fd is owned from here on.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("netlink socket");
        }
        let sock = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = 1 << (NFNLGRP_NFTABLES - 1);
        let len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        if libc::bind(fd, (&addr as *const libc::sockaddr_nl).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error()).context("binding to NFNLGRP_NFTABLES");
        }
        // A short timeout so the reader notices it should stop.
        let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        let tv_len = std::mem::size_of::<libc::timeval>() as u32;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            tv_len,
        );
        let buf: libc::c_int = 4 << 20;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&buf as *const libc::c_int).cast(), 4);
        Ok(sock)
    }
}

/// Knocker addresses in the NEWSETELEM messages of one datagram. The
/// element's key is the address in network order (alone or concatenated with
/// a port), so a knocker shows as its four bytes inside the message.
fn new_elements(datagram: &[u8]) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
        if len < 16 || len > rest.len() {
            break;
        }
        if kind == NFT_NEWSETELEM {
            out.extend(knocker_addrs(&rest[16..len]));
        }
        rest = &rest[(len + 3) & !3..];
    }
    out
}

fn knocker_addrs(payload: &[u8]) -> Vec<Ipv4Addr> {
    let [a, b, c, first] = KNOCKER_BASE;
    payload
        .windows(4)
        .filter(|w| w[..3] == [a, b, c] && w[3] >= first)
        .map(|w| Ipv4Addr::new(w[0], w[1], w[2], w[3]))
        .collect()
}

// ----------------------------------------------------------------- xdp poller

/// Spins on `GATE_ALLOW` lookups for the knocker whose last knock is leaving.
pub struct AllowPoller {
    seen: Seen,
    armed: Arc<(Mutex<Option<Ipv4Addr>>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How long a poll spins at most before giving that knock up.
const SPIN_MAX: Duration = Duration::from_secs(3);

impl AllowPoller {
    /// Polls `pid`'s GATE_ALLOW for windows on TCP `port`.
    pub fn new(pid: u32, port: u16) -> Result<Self> {
        let map = MapFd::of_pid(pid, "GATE_ALLOW")?;
        let seen = Seen::default();
        let armed = Arc::new((Mutex::new(None), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, arm, halt) = (seen.clone(), armed.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while let Some(src) = next_armed(&arm, &halt) {
                let key = allow_key(src, port);
                let until = Instant::now() + SPIN_MAX;
                while Instant::now() < until && !halt.load(Ordering::Relaxed) {
                    if map.contains(&key, std::mem::size_of::<knockd_common::AllowValue>()).unwrap_or(false) {
                        record(&sink, src.to_string(), Instant::now());
                        break;
                    }
                    std::thread::yield_now();
                }
            }
        });
        Ok(Self { seen, armed, stop, thread: Some(thread) })
    }

    fn arm(&self, src: Ipv4Addr) {
        let (lock, cv) = &*self.armed;
        *lock.lock().unwrap() = Some(src);
        cv.notify_one();
    }
}

/// Waits for the next armed address; `None` once stopped.
fn next_armed(armed: &(Mutex<Option<Ipv4Addr>>, Condvar), stop: &AtomicBool) -> Option<Ipv4Addr> {
    let (lock, cv) = armed;
    let mut slot = lock.lock().unwrap();
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(src) = slot.take() {
            return Some(src);
        }
        slot = cv.wait_timeout(slot, Duration::from_millis(100)).unwrap().0;
    }
}

impl Drop for AllowPoller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.armed.1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// GATE_ALLOW's key for an IPv4 knocker on a TCP port, byte for byte.
fn allow_key(src: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&src.octets());
    let key = AllowKey { addr, port, proto: PROTO_TCP, family: FAMILY_V4 };
    // SAFETY: AllowKey is repr(C) plain data with no padding (16 + 2 + 1 + 1).
    unsafe {
        std::slice::from_raw_parts((&key as *const AllowKey).cast::<u8>(), std::mem::size_of::<AllowKey>())
    }
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut m = Vec::new();
        m.extend((len as u32).to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(payload);
        m.resize((len + 3) & !3, 0);
        m
    }

    #[test]
    fn only_new_elements_with_a_knocker_address_count() {
        let [a, b, c, d] = KNOCKER_BASE;
        let mut dgram = nlmsg((10 << 8) | 14, &[a, b, c, d + 1, 0, 0]); // a deletion
        dgram.extend(nlmsg(NFT_NEWSETELEM, &[1, 2, a, b, c, d + 5, 8, 0xae, 0]));
        dgram.extend(nlmsg(NFT_NEWSETELEM, &[10, 77, 0, 1, 9]));
        assert_eq!(new_elements(&dgram), vec![Ipv4Addr::new(a, b, c, d + 5)]);
    }

    #[test]
    fn allow_keys_match_the_kernel_layout() {
        let k = allow_key(Ipv4Addr::new(10, 77, 0, 100), 2222);
        assert_eq!(k.len(), 20);
        assert_eq!(&k[..4], &[10, 77, 0, 100]);
        assert_eq!(&k[16..18], &2222u16.to_ne_bytes());
        assert_eq!(&k[18..], &[PROTO_TCP, FAMILY_V4]);
    }
}
