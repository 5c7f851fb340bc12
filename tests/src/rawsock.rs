//! Real frames on a real link: an AF_PACKET socket bound to one interface
//! of a test namespace sends hand-built frames, bypassing the client's own
//! stack, and captures what comes back. The evidence an end-to-end evasion
//! test wants is the listener's answer to a SYN: a SYN-ACK, an RST, or
//! nothing at all.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::frames::{self, L4};

const ETH_P_ALL: u16 = 0x0003;
const IPV4: u16 = 0x0800;
const IPV6: u16 = 0x86dd;
const RST: u8 = 0x04;
const SYN_ACK: u8 = frames::SYN | frames::ACK;

/// An AF_PACKET socket bound to one interface. It was created inside that
/// interface's namespace, and stays there whichever thread uses it.
pub struct Link {
    fd: OwnedFd,
}

impl Link {
    /// Opens a link on `ifname` in namespace `ns`. It captures from the
    /// moment it is open, so open it before sending what it should see.
    pub fn open(ns: &str, ifname: &str) -> Result<Self> {
        let ifname = ifname.to_string();
        crate::netns::in_netns(ns, move || Self::open_here(&ifname))?
            .with_context(|| format!("AF_PACKET socket in {ns}"))
    }

    fn open_here(ifname: &str) -> io::Result<Self> {
        let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: plain libc calls on a fresh fd owned right away; the
        // sockaddr is zeroed and then filled for AF_PACKET with its real size.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            let raw = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ALL.to_be()));
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ALL.to_be();
            sll.sll_ifindex = ifindex as i32;
            let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            if libc::bind(raw, (&sll as *const libc::sockaddr_ll).cast(), len) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Self { fd })
        }
    }

    /// Puts `frame` on the wire as it is: MACs, checksums and all.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != frame.len() {
            return Err(io::Error::other(format!("sent {n} of {} bytes", frame.len())));
        }
        Ok(())
    }

    /// The next frame that arrived on the link (not one we sent), or `None`
    /// once `timeout` passes without one.
    fn recv(&self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.readable(left)? {
                return Ok(None);
            }
            let mut buf = vec![0u8; 2048];
            // SAFETY: zeroed sockaddr_ll with its real size; the buffer is
            // valid for its length.
            let (n, sll) = unsafe {
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                let n = libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                );
                (n, sll)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // Our own frames loop back to a packet socket as outgoing.
            if sll.sll_pkttype != libc::PACKET_OUTGOING {
                buf.truncate(n as usize);
                return Ok(Some(buf));
            }
        }
    }

    fn readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        match rc {
            0 => Ok(false),
            n if n > 0 => Ok(true),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(true)
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// What a listener said to a SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The SYN reached a listening socket.
    SynAck,
    /// The SYN reached the stack but nothing listens: a missing listener,
    /// never a gate (all gates drop silently).
    Reset,
}

/// The TCP segments from `server:port` to the client, as (client port, answer).
pub struct Replies {
    pub server: IpAddr,
    pub port: u16,
}

impl Replies {
    /// Captures on `link` for up to `window`, and returns the answer each
    /// of `sports` got. Returns early once every one has an answer, so a
    /// negative check always waits the whole window.
    pub fn collect(&self, link: &Link, sports: &[u16], window: Duration) -> io::Result<HashMap<u16, Answer>> {
        let mut got = HashMap::new();
        let deadline = Instant::now() + window;
        while got.len() < sports.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(frame) = link.recv(left)? else { break };
            if let Some((dport, answer)) = self.parse(&frame) {
                if sports.contains(&dport) {
                    // An RST after a SYN-ACK is our own kernel's doing; keep the first.
                    got.entry(dport).or_insert(answer);
                }
            }
        }
        Ok(got)
    }

    /// (destination port, answer) of a TCP segment from the server's port.
    fn parse(&self, frame: &[u8]) -> Option<(u16, Answer)> {
        let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
        let ip = frame.get(14..)?;
        let (src, proto, l4) = match ethertype {
            IPV4 => {
                let ihl = usize::from(ip.first()? & 0x0f) * 4;
                let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
                (IpAddr::from(src), *ip.get(9)?, ip.get(ihl..)?)
            }
            IPV6 => {
                let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
                (IpAddr::from(src), *ip.get(6)?, ip.get(40..)?)
            }
            _ => return None,
        };
        let sport = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
        if proto != frames::TCP || src != self.server || sport != self.port {
            return None;
        }
        let dport = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
        let flags = *l4.get(13)?;
        let answer = if flags & SYN_ACK == SYN_ACK {
            Answer::SynAck
        } else if flags & RST != 0 {
            Answer::Reset
        } else {
            return None;
        };
        Some((dport, answer))
    }
}

/// A source port no earlier attempt in this process used, below the
/// ephemeral range so the client's own connects never pick it.
pub fn fresh_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(20000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Gives the fragments of one attempt identifications no other attempt in
/// this process used, keeping which fragments belong together. Leftover
/// fragments of an earlier attempt, held by the server's reassembly for
/// its 30 s, would otherwise join or poison a later attempt's: the kernel
/// would then drop a case the gate let through, and the test would pass
/// for the wrong reason.
pub fn renumber_fragments(frames: &mut [Vec<u8>]) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0x5a00_0000);
    let mut given: HashMap<u32, u32> = HashMap::new();
    let mut fresh = |old: u32| *given.entry(old).or_insert_with(|| NEXT.fetch_add(1, Ordering::Relaxed));
    for frame in frames {
        match locate_id(frame) {
            Some(FragId::V4(at)) => {
                let old = u32::from(u16::from_be_bytes([frame[at + 4], frame[at + 5]]));
                let id = fresh(old) as u16;
                frame[at + 4..at + 6].copy_from_slice(&id.to_be_bytes());
                refill_header_checksum(frame, at);
            }
            Some(FragId::V6(at)) => {
                let old = u32::from_be_bytes(frame[at..at + 4].try_into().unwrap());
                frame[at..at + 4].copy_from_slice(&fresh(old).to_be_bytes());
            }
            None => {}
        }
    }
}

/// Where a frame's fragment identification is: the offset of the IPv4
/// header, or of the IPv6 fragment header's identification field.
enum FragId {
    V4(usize),
    V6(usize),
}

fn locate_id(frame: &[u8]) -> Option<FragId> {
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        at += 4;
        ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    }
    let l3 = at + 2;
    match ethertype {
        IPV4 if frame.len() >= l3 + 20 => Some(FragId::V4(l3)),
        IPV6 => {
            let (mut next, mut at) = (*frame.get(l3 + 6)?, l3 + 40);
            loop {
                match next {
                    44 => return (frame.len() >= at + 8).then_some(FragId::V6(at + 4)),
                    0 | 43 | 60 => {
                        next = *frame.get(at)?;
                        at += (usize::from(*frame.get(at + 1)?) + 1) * 8;
                    }
                    51 => {
                        next = *frame.get(at)?;
                        at += (usize::from(*frame.get(at + 1)?) + 2) * 4;
                    }
                    _ => return None,
                }
            }
        }
        _ => None,
    }
}

/// Recomputes the IPv4 header checksum of the header at `at`, if its
/// length field fits the frame (a malformed header stays as it is).
fn refill_header_checksum(frame: &mut [u8], at: usize) {
    let ihl = usize::from(frame[at] & 0x0f) * 4;
    if ihl < 20 || frame.len() < at + ihl {
        return;
    }
    frame[at + 10..at + 12].fill(0);
    let sum = checksum(&[&frame[at..at + ihl]]);
    frame[at + 10..at + 12].copy_from_slice(&sum.to_be_bytes());
}

/// A plain, well-formed TCP SYN frame from `src:sport` to `dst:dport`, with
/// the MACs set and every checksum right, as a Linux host accepts it.
pub fn syn_frame(macs: ([u8; 6], [u8; 6]), src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    let l4 = L4 { sport, ..L4::tcp(dport, frames::SYN) };
    let mut frame = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => frames::ipv4(s, d, &l4, &[], 0, 0),
        (IpAddr::V6(s), IpAddr::V6(d)) => frames::ipv6(s, d, &l4, &[], &[]),
        _ => panic!("{src} and {dst} are of different families"),
    };
    frame[..6].copy_from_slice(&macs.1);
    frame[6..12].copy_from_slice(&macs.0);
    fill_checksums(&mut frame, src, dst);
    frame
}

/// Fills in the IPv4 header checksum and the TCP checksum of an unfragmented,
/// untagged frame without IPv6 extension headers.
fn fill_checksums(frame: &mut [u8], src: IpAddr, dst: IpAddr) {
    let (l3_len, mut pseudo) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            refill_header_checksum(frame, 14);
            (ihl, [s.octets().as_slice(), d.octets().as_slice()].concat())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => (40, [s.octets().as_slice(), d.octets().as_slice()].concat()),
        _ => unreachable!("checked by the caller"),
    };
    let l4 = 14 + l3_len;
    let seg_len = (frame.len() - l4) as u32;
    pseudo.extend(seg_len.to_be_bytes());
    pseudo.extend([0, 0, 0, frames::TCP]);
    frame[l4 + 16..l4 + 18].fill(0);
    let sum = checksum(&[&pseudo, &frame[l4..]]);
    frame[l4 + 16..l4 + 18].copy_from_slice(&sum.to_be_bytes());
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`, each
/// of even length except perhaps the last.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        for pair in part.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let macs = ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
        for (src, dst) in [("10.0.0.2", "10.0.0.1"), ("fd77::2", "fd77::1")] {
            let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let f = syn_frame(macs, src, dst, 20001, 2222);
            let l3 = if src.is_ipv4() { 20 } else { 40 };
            let pseudo: Vec<u8> = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => [s.octets(), d.octets()].concat(),
                (IpAddr::V6(s), IpAddr::V6(d)) => [s.octets(), d.octets()].concat(),
                _ => unreachable!(),
            };
            let tail = [(f.len() - 14 - l3) as u32, u32::from(frames::TCP)];
            let tail: Vec<u8> = tail.iter().flat_map(|w| w.to_be_bytes()).collect();
            assert_eq!(checksum(&[&pseudo, &tail, &f[14 + l3..]]), 0, "TCP checksum of {src}");
            if src.is_ipv4() {
                assert_eq!(checksum(&[&f[14..34]]), 0, "IPv4 header checksum");
            }
            assert_eq!((&f[..6], &f[6..12]), (&macs.1[..], &macs.0[..]));
        }
    }

    #[test]
    fn renumbering_keeps_fragments_together_and_checksums_right() {
        let (s, d) = ("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap());
        let syn = L4::tcp(2222, frames::SYN);
        let first = frames::ipv4(s, d, &syn, &[7], 0, 0x2000);
        let mut attempt = vec![first.clone(), frames::ipv4(s, d, &syn, &[7], 0, 1), first];
        renumber_fragments(&mut attempt);
        let id = |f: &Vec<u8>| u16::from_be_bytes([f[18 + 4], f[18 + 5]]);
        assert_eq!(id(&attempt[0]), id(&attempt[1]), "one datagram keeps one id");
        assert_ne!(id(&attempt[0]), 1, "the builder's id is replaced");
        assert_eq!(checksum(&[&attempt[0][18..38]]), 0);

        let (s6, d6) = ("fd77::2".parse().unwrap(), "fd77::1".parse().unwrap());
        let exts = [frames::Ext::DestOpts, frames::Ext::Fragment(0)];
        let mut v6 = vec![frames::ipv6(s6, d6, &syn, &[], &exts)];
        let before = v6[0].clone();
        renumber_fragments(&mut v6);
        let at = 14 + 40 + 16 + 4;
        assert_ne!(v6[0][at..at + 4], before[at..at + 4]);
        assert_eq!(v6[0][..at], before[..at], "nothing else changes");
    }

    #[test]
    fn parses_only_the_servers_answers() {
        let server: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "10.0.0.2".parse().unwrap();
        let r = Replies { server, port: 2222 };
        let mut synack = syn_frame(([0; 6], [0; 6]), server, client, 2222, 20001);
        synack[14 + 20 + 13] = SYN_ACK;
        assert_eq!(r.parse(&synack), Some((20001, Answer::SynAck)));
        synack[14 + 20 + 13] = RST | frames::ACK;
        assert_eq!(r.parse(&synack), Some((20001, Answer::Reset)));
        let ours = syn_frame(([0; 6], [0; 6]), client, server, 20001, 2222);
        assert_eq!(r.parse(&ours), None);
    }
}
