//! The flood generator: TCP SYNs (or, for shape (s), UDP junk to the SPA
//! port) from random (spoofed) IPv4 sources, written
//! to the client end of the test veth through AF_PACKET sockets, one per
//! thread, with `sendmmsg` batches.
//!
//! Why not trafgen: with the XDP program attached in native mode, the server
//! veth queues frames in its NAPI ring, the generator's socket runs out of
//! send buffer, and trafgen's TX_RING path panics on the EAGAIN ("Flushing
//! TX_RING failed: Resource temporarily unavailable!"); its sendto path
//! (`-t 0`) keeps one CPU and reached about 0.6 Mpps here, where this one
//! reaches about 0.9 Mpps with two threads. This one also retries on a full
//! queue instead of dying, and takes a pace, so knockd can be flooded at the
//! rate xknockd was.
//!
//! Every flood is bounded twice: by a packet count and by a deadline. Frames
//! only ever go to the server's namespace address (10.77.0.1) on the veth.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xknock_tests::netns::in_netns;

/// What the flood's destination ports look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// (a) Ports around each knock port: 6995-7004, 7995-8004, 8995-9004.
    /// 3 of the 30 are knock ports, so one frame in ten is a knock.
    KnockRange,
    /// (b) Non-knock ports only: 20000-29999.
    NonKnock,
    /// (c) Every frame a first knock (7000) from a new random source: the
    /// shape that costs a tracker per frame unless the kernel absorbs it.
    /// The memory test floods with it too.
    FirstStep,
    /// (s) Every frame a 200-byte UDP datagram of base64-alphabet junk to
    /// the SPA port: inside fwknop's length bounds, so the kernel hands each
    /// one to the daemon unless a source's token bucket stops it.
    SpaJunk,
}

/// The SPA door's port in shape (s) (fwknop's default).
pub const SPA_PORT: u16 = 62201;
/// Junk payload length: a plausible SPA packet (fwknop's are ~180-250).
const SPA_JUNK_LEN: usize = 200;

impl Shape {
    pub fn key(self) -> &'static str {
        match self {
            Shape::KnockRange => "a",
            Shape::NonKnock => "b",
            Shape::FirstStep => "c",
            Shape::SpaJunk => "s",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Shape::KnockRange => {
                "(a) SYNs from random sources to ports 6995-7004, 7995-8004, 8995-9004 (1 in 10 a knock port)"
            }
            Shape::NonKnock => "(b) SYNs from random sources to non-knock ports 20000-29999",
            Shape::FirstStep => "(c) SYNs from random sources, all to the first knock port 7000",
            Shape::SpaJunk => {
                "(s) 200-byte UDP datagrams of base64-alphabet junk from random sources to the SPA port 62201"
            }
        }
    }

    fn ports(self) -> Vec<u16> {
        match self {
            Shape::KnockRange => (6995..=7004).chain(7995..=8004).chain(8995..=9004).collect(),
            Shape::NonKnock => (20000..=29999).collect(),
            Shape::FirstStep => vec![7000],
            Shape::SpaJunk => vec![SPA_PORT],
        }
    }

    fn is_udp(self) -> bool {
        self == Shape::SpaJunk
    }

    /// Bytes on the wire from the Ethernet header on.
    fn frame_len(self) -> usize {
        if self.is_udp() {
            UDP_PAYLOAD + SPA_JUNK_LEN
        } else {
            TCP_FRAME_LEN
        }
    }
}

pub struct Spec {
    pub shape: Shape,
    /// Stop after this many frames...
    pub max_packets: u64,
    /// ...or at this time, whichever comes first.
    pub duration: Duration,
    /// Frames per second over all threads; `None` is as fast as it goes.
    pub pace: Option<f64>,
    pub threads: usize,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    pub sent: u64,
    pub elapsed: Duration,
    /// sendmmsg calls refused (queue full); each is retried.
    pub refused: u64,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

const BATCH: usize = 64;
/// Room for the largest frame of any shape.
const FRAME_LEN: usize = 256;
const TCP_FRAME_LEN: usize = 54;
/// Where a UDP frame's payload starts.
const UDP_PAYLOAD: usize = 42;
const SERVER: [u8; 4] = [10, 77, 0, 1];

/// Floods from namespace `ns` out of `ifname` to `dst_mac`. Blocks until done;
/// `stop` ends it early.
pub fn run(ns: &str, ifname: &str, dst_mac: [u8; 6], spec: &Spec, stop: Arc<AtomicBool>) -> Result<Outcome> {
    if spec.threads == 0 {
        bail!("a flood needs at least one thread");
    }
    let name = ifname.to_string();
    let threads = spec.threads;
    // Sockets made inside the namespace stay there whichever thread uses them.
    let (socks, ifindex) = in_netns(ns, move || -> Result<(Vec<OwnedFd>, i32)> {
        let cname = std::ffi::CString::new(name.clone())?;
        // SAFETY: a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        if ifindex == 0 {
            bail!("no interface {name} in the client namespace");
        }
        let socks = (0..threads).map(|_| packet_socket()).collect::<Result<Vec<_>>>()?;
        Ok((socks, ifindex))
    })??;
    let shape = spec.shape;
    let ports = Arc::new(shape.ports());
    let start = Instant::now();
    let deadline = start + spec.duration;
    let per_thread = spec.max_packets / threads as u64;
    let pace = spec.pace.map(|p| p / threads as f64);
    let workers: Vec<_> = socks
        .into_iter()
        .enumerate()
        .map(|(i, sock)| {
            let ports = ports.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let job = Job { shape, ports: &ports, max: per_thread, deadline, pace, seed: i as u64 };
                worker(sock, ifindex, dst_mac, &job, &stop)
            })
        })
        .collect();
    let mut out = Outcome::default();
    for w in workers {
        let (sent, refused) = w.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))?;
        out.sent += sent;
        out.refused += refused;
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

fn packet_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket calls; the fd is owned from here on.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
        }
        let sock = OwnedFd::from_raw_fd(fd);
        // A large send buffer (CAP_NET_ADMIN) so frames queued in the veth
        // do not stall the socket; the qdisc bypass trafgen uses too.
        let sndbuf: libc::c_int = 32 << 20;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&sndbuf as *const libc::c_int).cast(),
            4,
        );
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            4,
        );
        Ok(sock)
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64: fast, and good enough to make every source new.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum()
}

fn template(shape: Shape, dst_mac: [u8; 6]) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0x77, 0, 0xfe]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((shape.frame_len() - 14) as u16).to_be_bytes());
    f[22] = 64; // TTL
    f[30..34].copy_from_slice(&SERVER);
    if shape.is_udp() {
        f[23] = 17;
        f[38..40].copy_from_slice(&((shape.frame_len() - 34) as u16).to_be_bytes());
        // UDP checksum 0 (none, valid over IPv4): the payload never changes,
        // and the XDP program drops the datagram before the stack looks.
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for (i, b) in f[UDP_PAYLOAD..shape.frame_len()].iter_mut().enumerate() {
            *b = B64[(i * 37 + 11) % B64.len()];
        }
        return f;
    }
    f[23] = 6; // TCP
    f[38..42].copy_from_slice(&1u32.to_be_bytes()); // seq
    f[46] = 5 << 4;
    f[47] = 0x02; // SYN
    f[48..50].copy_from_slice(&64240u16.to_be_bytes());
    f
}

/// The parts of both checksums that never change, so that each frame costs a
/// handful of additions (xtask runs unoptimised: this loop must stay cheap).
#[derive(Clone, Copy)]
struct Sums {
    ip: u32,
    /// `None` for UDP, which goes without a checksum.
    tcp: Option<u32>,
}

fn fixed_sums(shape: Shape, f: &[u8; FRAME_LEN]) -> Sums {
    let mut t = *f;
    t[24..30].fill(0); // IP checksum and source
    t[34..38].fill(0); // ports
    t[50..52].fill(0); // TCP checksum
                       // The TCP pseudo header: destination, protocol and length (source varies).
    let tcp = (!shape.is_udp()).then(|| sum16(&t[30..34]) + 6 + 20 + sum16(&t[34..54]));
    Sums { ip: sum16(&t[14..34]), tcp }
}

/// New random source, source port and destination port, with correct IP and
/// TCP checksums (so the server's stack treats the frames as real SYNs).
/// UDP and TCP keep their ports at the same offsets.
fn randomize(f: &mut [u8; FRAME_LEN], sums: Sums, rng: &mut Rng, ports: &[u16]) {
    let x = rng.next();
    let mut src = (x >> 32) as u32;
    // Never one of the test subnet's addresses: the real knockers live there.
    if src >> 8 == u32::from_be_bytes([10, 77, 0, 0]) >> 8 {
        src ^= 0x0100_0000;
    }
    let sport = (x as u16) | 1024;
    let dport = ports[((x >> 16) as u16 as usize) % ports.len()];
    let src_sum = (src >> 16) + (src & 0xffff);
    f[26..30].copy_from_slice(&src.to_be_bytes());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[24..26].copy_from_slice(&csum_fold(sums.ip + src_sum).to_be_bytes());
    if let Some(fixed) = sums.tcp {
        let tcp = csum_fold(fixed + src_sum + sport as u32 + dport as u32);
        f[50..52].copy_from_slice(&tcp.to_be_bytes());
    }
}

/// One worker thread's share of a flood.
struct Job<'a> {
    shape: Shape,
    ports: &'a [u16],
    max: u64,
    deadline: Instant,
    pace: Option<f64>,
    seed: u64,
}

fn worker(sock: OwnedFd, ifindex: i32, dst_mac: [u8; 6], job: &Job, stop: &AtomicBool) -> (u64, u64) {
    let Job { shape, ports, max, deadline, pace, seed } = *job;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (seed + 1).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ now_nanos());
    let mut frames = vec![template(shape, dst_mac); BATCH];
    let sums = fixed_sums(shape, &frames[0]);
    let frame_len = shape.frame_len();
    // The flood is the attacker's CPU, not the server's: on this 2-core rig
    // the generator must not starve the daemon under test (nor knockd), so it
    // runs at the lowest priority. Softirq work it triggers is unaffected.
    // SAFETY: plain syscalls on this thread.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&dst_mac);
    let mut iovs: Vec<libc::iovec> = frames
        .iter_mut()
        .map(|f| libc::iovec { iov_base: f.as_mut_ptr().cast(), iov_len: frame_len })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data; the pointers set below outlive the loop.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let start = Instant::now();
    let (mut sent, mut refused) = (0u64, 0u64);
    // `pending` frames at the front of the batch were built but not yet sent.
    let mut pending = 0usize;
    while sent < max && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(rate) = pace {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(5)));
                continue;
            }
        }
        let want = ((max - sent) as usize).min(BATCH);
        if pending == 0 {
            for f in frames.iter_mut().take(want) {
                randomize(f, sums, &mut rng, ports);
            }
            pending = want;
        }
        // SAFETY: msgs points at live frames and at sll, all owned here.
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), pending as u32, 0) };
        if n <= 0 {
            // Queue full (ENOBUFS/EAGAIN): let the receiver drain, then retry.
            refused += 1;
            std::thread::yield_now();
            continue;
        }
        let n = n as usize;
        sent += n as u64;
        // Frames not taken go to the front for the next call.
        if n < pending {
            frames.copy_within(n..pending, 0);
        }
        pending -= n;
    }
    (sent, refused)
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_valid_checksums_and_stay_in_shape() {
        let mut rng = Rng(42);
        let ports = Shape::KnockRange.ports();
        assert_eq!(ports.len(), 30);
        let mut f = template(Shape::KnockRange, [2, 0, 0, 0, 0, 1]);
        let sums = fixed_sums(Shape::KnockRange, &f);
        for _ in 0..1000 {
            randomize(&mut f, sums, &mut rng, &ports);
            assert_eq!(csum_fold(sum16(&f[14..34])), 0, "IP checksum verifies");
            let pseudo = sum16(&f[26..34]) + 6 + 20;
            assert_eq!(csum_fold(pseudo + sum16(&f[34..54])), 0, "TCP checksum verifies");
            assert!(ports.contains(&u16::from_be_bytes([f[36], f[37]])));
            assert_ne!(&f[26..29], &[10, 77, 0], "never a test-subnet source");
            assert_eq!(&f[30..34], &SERVER);
        }
    }

    #[test]
    fn spa_junk_is_a_udp_datagram_of_plausible_spa_length() {
        let mut rng = Rng(7);
        let shape = Shape::SpaJunk;
        let mut f = template(shape, [2, 0, 0, 0, 0, 1]);
        let sums = fixed_sums(shape, &f);
        for _ in 0..1000 {
            randomize(&mut f, sums, &mut rng, &shape.ports());
            assert_eq!(csum_fold(sum16(&f[14..34])), 0, "IP checksum verifies");
            assert_eq!(f[23], 17, "UDP");
            assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, shape.frame_len() - 14);
            assert_eq!(u16::from_be_bytes([f[38], f[39]]) as usize, 8 + SPA_JUNK_LEN);
            assert_eq!(u16::from_be_bytes([f[36], f[37]]), SPA_PORT);
            let payload = &f[UDP_PAYLOAD..shape.frame_len()];
            assert!(payload.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/'));
        }
    }
}
