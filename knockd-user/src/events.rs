//! Knock events from the ring buffer, decoded into addresses and ports.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use knockd_common::{
    ms_of, KnockEvent, DOOR_ALL, EVENT_KNOCK, EVENT_PAIR, EVENT_SWEEP, FAMILY_V4, FAMILY_V6, PROTO_ICMP,
    PROTO_TCP, PROTO_UDP,
};
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
    pub kind: RecordKind,
}

/// What the kernel says about the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A knock, as it came.
    Knock,
    /// A second step; the kernel held the door's first step until now.
    Pair { door: u16, first: Step, first_flags: u8, first_at: Duration },
    /// The sweep guard dropped the attempt the source had for `door`
    /// (`None`: every attempt) after `count` packets to other ports.
    Sweep { door: Option<u16>, count: u16 },
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
    let proto = proto_of(ev.proto)?;
    let at = Duration::from_nanos(ev.ts_ns);
    let kind = match ev.kind {
        EVENT_KNOCK => RecordKind::Knock,
        EVENT_PAIR => RecordKind::Pair {
            door: ev.door,
            first: Step { port: ev.first_port, proto: proto_of(ev.first_proto)? },
            first_flags: ev.first_flags,
            first_at: first_at(at, ev.ts_ns, ev.first_ms),
        },
        EVENT_SWEEP => RecordKind::Sweep { door: (ev.door != DOOR_ALL).then_some(ev.door), count: ev.count },
        _ => return None,
    };
    Some(KnockRecord {
        src,
        dst,
        step: Step { port: ev.dst_port, proto },
        src_port: ev.src_port,
        tcp_flags: ev.tcp_flags,
        ifindex: ev.ifindex,
        at,
        kind,
    })
}

fn proto_of(number: u8) -> Option<Proto> {
    match number {
        PROTO_TCP => Some(Proto::Tcp),
        PROTO_UDP => Some(Proto::Udp),
        PROTO_ICMP => Some(Proto::Icmp),
        _ => None,
    }
}

/// The first step's time: the kernel keeps it in wrapping milliseconds,
/// so it is this packet's time less the age in milliseconds. The kernel
/// paired the two only if that age is under the door's timeout, and so
/// the tracker, replaying both, finds the same.
fn first_at(at: Duration, ts_ns: u64, first_ms: u32) -> Duration {
    let age = ms_of(ts_ns).wrapping_sub(first_ms);
    at.saturating_sub(Duration::from_millis(u64::from(age)))
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
            kind: EVENT_KNOCK,
            first_port: 0,
            first_proto: 0,
            first_flags: 0,
            first_ms: 0,
            door: 0,
            count: 0,
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
    fn a_pair_carries_its_first_step_and_its_age() {
        let mut ev = event(FAMILY_V4, PROTO_TCP);
        ev.kind = EVENT_PAIR;
        (ev.first_port, ev.first_proto, ev.first_flags, ev.door) = (6000, PROTO_UDP, 0, 3);
        // 1.5 s is 1500 ms; the first step came 1200 ms earlier.
        ev.first_ms = 300;
        let r = decode(&raw(&ev)).unwrap();
        let first = Step { port: 6000, proto: Proto::Udp };
        let want = RecordKind::Pair { door: 3, first, first_flags: 0, first_at: Duration::from_millis(300) };
        assert_eq!(r.kind, want);
        assert_eq!(r.step.port, 7000);
    }

    #[test]
    fn a_wrapped_first_time_still_gives_the_age() {
        // The millisecond clock wrapped between the two steps.
        let at = Duration::from_millis(u64::from(u32::MAX) + 11);
        assert_eq!(first_at(at, at.as_nanos() as u64, u32::MAX - 5), at - Duration::from_millis(16));
    }

    #[test]
    fn a_sweep_record_names_its_door_or_all() {
        let mut ev = event(FAMILY_V4, PROTO_TCP);
        (ev.kind, ev.door, ev.count) = (EVENT_SWEEP, DOOR_ALL, 3);
        assert_eq!(decode(&raw(&ev)).unwrap().kind, RecordKind::Sweep { door: None, count: 3 });
        ev.door = 1;
        assert_eq!(decode(&raw(&ev)).unwrap().kind, RecordKind::Sweep { door: Some(1), count: 3 });
        ev.kind = 9;
        assert!(decode(&raw(&ev)).is_none());
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let good = raw(&event(FAMILY_V4, PROTO_TCP));
        assert!(decode(&good[..good.len() - 1]).is_none());
        assert!(decode(&raw(&event(5, PROTO_TCP))).is_none());
        assert!(decode(&raw(&event(FAMILY_V4, 47))).is_none());
    }
}
