//! Knock events from the ring buffer, decoded into addresses and ports.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use knockd_common::{KnockEvent, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use tokio::io::unix::AsyncFd;

use crate::config::model::{Proto, Step};

/// One knock packet as the kernel saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnockRecord {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub step: Step,
    pub src_port: u16,
    pub tcp_flags: u8,
    pub ifindex: u32,
    /// CLOCK_MONOTONIC time of the packet.
    pub at: Duration,
}

/// Decodes one ring-buffer record. Records of the wrong size or with an
/// unknown family or protocol are dropped rather than guessed at.
pub fn decode(bytes: &[u8]) -> Option<KnockRecord> {
    if bytes.len() < std::mem::size_of::<KnockEvent>() {
        return None;
    }
    // SAFETY: length checked above; KnockEvent is Pod, so any bytes are valid.
    let ev: KnockEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let (src, dst) = match ev.family {
        FAMILY_V4 => (IpAddr::V4(v4(&ev.src)), IpAddr::V4(v4(&ev.dst))),
        FAMILY_V6 => (IpAddr::V6(Ipv6Addr::from(ev.src)), IpAddr::V6(Ipv6Addr::from(ev.dst))),
        _ => return None,
    };
    let proto = match ev.proto {
        PROTO_TCP => Proto::Tcp,
        PROTO_UDP => Proto::Udp,
        _ => return None,
    };
    Some(KnockRecord {
        src,
        dst,
        step: Step { port: ev.dst_port, proto },
        src_port: ev.src_port,
        tcp_flags: ev.tcp_flags,
        ifindex: ev.ifindex,
        at: Duration::from_nanos(ev.ts_ns),
    })
}

fn v4(b: &[u8; 16]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// The ring buffer wrapped for tokio: wakes when the kernel signals data.
pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its map fd, which stays open and
        // unchanged for the AsyncFd's lifetime.
        Ok(Self { fd: unsafe { AsyncFd::register(ring) }? })
    }

    /// Waits for at least one wakeup, then drains everything available.
    pub async fn next_batch(&mut self, out: &mut Vec<KnockRecord>) -> io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            out.extend(decode(&item));
        }
        guard.clear_ready();
        Ok(())
    }
}

/// Now on the clock the XDP program stamps events and checks windows with:
/// CLOCK_MONOTONIC_COARSE, which `bpf_ktime_get_coarse_ns` reads.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer; CLOCK_MONOTONIC_COARSE always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(ev: &KnockEvent) -> Vec<u8> {
        // SAFETY: KnockEvent is repr(C) plain data.
        unsafe {
            std::slice::from_raw_parts(
                (ev as *const KnockEvent).cast::<u8>(),
                std::mem::size_of::<KnockEvent>(),
            )
        }
        .to_vec()
    }

    fn event(family: u8, proto: u8) -> KnockEvent {
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[10, 0, 0, 2]);
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[10, 0, 0, 1]);
        KnockEvent {
            ts_ns: 1_500_000_000,
            src,
            dst,
            ifindex: 7,
            dst_port: 7000,
            src_port: 40000,
            proto,
            family,
            tcp_flags: 0x02,
            _pad: [0; 5],
        }
    }

    #[test]
    fn decodes_ipv4_tcp() {
        let r = decode(&raw(&event(FAMILY_V4, PROTO_TCP))).unwrap();
        assert_eq!(r.src, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(r.dst, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.step, Step { port: 7000, proto: Proto::Tcp });
        assert_eq!((r.src_port, r.tcp_flags, r.ifindex), (40000, 0x02, 7));
        assert_eq!(r.at, Duration::from_millis(1500));
    }

    #[test]
    fn decodes_ipv6_udp() {
        let mut ev = event(FAMILY_V6, PROTO_UDP);
        ev.src = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        let r = decode(&raw(&ev)).unwrap();
        assert_eq!(r.src, "fd00::2".parse::<IpAddr>().unwrap());
        assert_eq!(r.step.proto, Proto::Udp);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let good = raw(&event(FAMILY_V4, PROTO_TCP));
        assert!(decode(&good[..good.len() - 1]).is_none());
        assert!(decode(&raw(&event(5, PROTO_TCP))).is_none());
        assert!(decode(&raw(&event(FAMILY_V4, 1))).is_none());
    }
}
