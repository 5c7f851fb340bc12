//! The kernel's side of SPA: which UDP ports it captures, the ring it hands
//! the datagrams over in, and its SPA counters.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use knockd_common::{counter, SpaEvent, FAMILY_V4, FAMILY_V6};

use super::{map_err, BpfError, XdpKnocker};

/// SPA counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpaCounters {
    pub captured: u64,
    pub limited: u64,
    pub ring_full: u64,
    pub bad_len: u64,
}

/// One captured datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaDatagram {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// CLOCK_MONOTONIC (coarse) time of the packet.
    pub at: Duration,
    pub payload: Vec<u8>,
}

/// Decodes one SPA ring record; a malformed one is dropped.
pub fn decode(bytes: &[u8]) -> Option<SpaDatagram> {
    if bytes.len() < std::mem::size_of::<SpaEvent>() {
        return None;
    }
    // SAFETY: length checked; SpaEvent is Pod, so any bytes are valid.
    let ev: SpaEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let (src, dst) = match ev.family {
        FAMILY_V4 => (v4(&ev.src), v4(&ev.dst)),
        FAMILY_V6 => (IpAddr::V6(Ipv6Addr::from(ev.src)), IpAddr::V6(Ipv6Addr::from(ev.dst))),
        _ => return None,
    };
    let payload = ev.payload.get(..usize::from(ev.len))?.to_vec();
    Some(SpaDatagram {
        src,
        dst,
        src_port: ev.src_port,
        dst_port: ev.dst_port,
        at: Duration::from_nanos(ev.ts_ns),
        payload,
    })
}

fn v4(b: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

impl XdpKnocker {
    /// Moves the SPA port set from `old` to `new`: new ports first, so a
    /// port in both is never uncaptured.
    pub fn set_spa_ports(&mut self, old: &BTreeSet<u16>, new: &BTreeSet<u16>) -> Result<(), BpfError> {
        let map = self.map_mut("SPA_PORTS")?;
        let mut ports: Array<_, u8> = Array::try_from(map).map_err(map_err("SPA_PORTS"))?;
        for &p in new {
            ports.set(u32::from(p), 1, 0).map_err(map_err("SPA_PORTS"))?;
        }
        for &p in old.difference(new) {
            ports.set(u32::from(p), 0, 0).map_err(map_err("SPA_PORTS"))?;
        }
        Ok(())
    }

    /// Hands the SPA ring to its reader. Callable once.
    pub fn take_spa_events(&mut self) -> Result<RingBuf<MapData>, BpfError> {
        let map = self.ebpf.take_map("SPA_EVENTS").ok_or(BpfError::MissingMap("SPA_EVENTS"))?;
        RingBuf::try_from(map).map_err(map_err("SPA_EVENTS"))
    }

    pub fn spa_counters(&self) -> Result<SpaCounters, BpfError> {
        let map = self.ebpf.map("COUNTERS").ok_or(BpfError::MissingMap("COUNTERS"))?;
        let arr: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_err("COUNTERS"))?;
        let sum = |i: u32| -> Result<u64, BpfError> {
            Ok(arr.get(&i, 0).map_err(map_err("COUNTERS"))?.iter().sum())
        };
        Ok(SpaCounters {
            captured: sum(counter::SPA_CAPTURED)?,
            limited: sum(counter::SPA_LIMITED)?,
            ring_full: sum(counter::SPA_RING_FULL)?,
            bad_len: sum(counter::SPA_BAD_LEN)?,
        })
    }
}
