//! The first-step tables: sized and seeded at load, doors per knock port
//! written on every config, `ACTIVE` pruned as the tracker lets sources go.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    maps::{Array, HashMap},
    EbpfLoader,
};
use knockd_common::{
    jhash5, key_words, ms_of, ActiveKey, KernelConfig, StepDoors, SweepSlot, FAMILY_V4, FAMILY_V6,
    SWEEP_DOOR, SWEEP_OFF, SWEEP_SHARE,
};

use super::{map_err, sync_map, BpfError, XdpKnocker};

/// Sizes of the first-step tables, fixed when the program is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tables {
    /// `FIRST_STEP` slots; rounded up to a power of two.
    pub first_step_slots: u32,
    /// `ACTIVE` entries: sources past their second step.
    pub active_entries: u32,
}

impl Default for Tables {
    fn default() -> Self {
        Self { first_step_slots: 1 << 20, active_entries: 65_536 }
    }
}

/// What was loaded: sizes and the random keys.
#[derive(Clone, Copy, Debug)]
pub(super) struct Loaded {
    first_slots: u32,
    sweep_slots: u32,
    active_entries: u32,
    cfg: KernelConfig,
}

/// The first-step tables' sizes, and the bytes of kernel memory charged for
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableMemory {
    pub first_step_slots: u32,
    pub sweep_slots: u32,
    pub active_entries: u32,
    pub bytes: u64,
}

impl std::fmt::Display for TableMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "first-step table: {} slots, sweep table: {} slots, active: {} sources, {:.1} MiB",
            self.first_step_slots,
            self.sweep_slots,
            self.active_entries,
            self.bytes as f64 / (1 << 20) as f64
        )
    }
}

impl Tables {
    pub(super) fn size(&self, loader: &mut EbpfLoader) -> Loaded {
        let first_slots = self.first_step_slots.max(2).checked_next_power_of_two().unwrap_or(1 << 31);
        let sweep_slots = (first_slots / SWEEP_SHARE).max(1);
        let active_entries = self.active_entries.max(1);
        loader.map_max_entries("FIRST_STEP", first_slots);
        loader.map_max_entries("SWEEP", sweep_slots);
        loader.map_max_entries("ACTIVE", active_entries);
        let cfg = KernelConfig {
            first_seed: random_u32(),
            sweep_seed: random_u32(),
            tag_seed: random_u32(),
            first_mask: first_slots - 1,
            sweep_mask: sweep_slots - 1,
            sweep_limit: 2,
        };
        Loaded { first_slots, sweep_slots, active_entries, cfg }
    }
}

/// A fresh key per start, so nobody can aim collisions at a slot.
fn random_u32() -> u32 {
    let mut buf = [0u8; 4];
    // SAFETY: writes at most 4 bytes into a 4-byte buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // getrandom(2) only fails before the pool is seeded, long past at boot.
        panic!("getrandom failed: {}", std::io::Error::last_os_error());
    }
    u32::from_ne_bytes(buf)
}

/// A source as the kernel keys it.
fn addr_key(src: IpAddr) -> ([u8; 16], u8) {
    let mut addr = [0u8; 16];
    match src {
        IpAddr::V4(a) => {
            addr[..4].copy_from_slice(&a.octets());
            (addr, FAMILY_V4)
        }
        IpAddr::V6(a) => (a.octets(), FAMILY_V6),
    }
}

impl XdpKnocker {
    pub(super) fn write_step_config(&mut self) -> Result<(), BpfError> {
        let cfg = self.tables.cfg;
        let map = self.map_mut("STEP_CONFIG")?;
        let mut arr: Array<_, KernelConfig> = Array::try_from(map).map_err(map_err("STEP_CONFIG"))?;
        arr.set(0, cfg, 0).map_err(map_err("STEP_CONFIG"))
    }

    /// `None`: the sweep guard is off (knockd's behaviour).
    pub fn set_sweep_limit(&mut self, limit: Option<u32>) -> Result<(), BpfError> {
        let limit = limit.map_or(SWEEP_OFF, |l| l.min(SWEEP_OFF - 1));
        if self.tables.cfg.sweep_limit != limit {
            self.tables.cfg.sweep_limit = limit;
            self.write_step_config()?;
        }
        Ok(())
    }

    /// Makes `STEP_DOORS` hold exactly `wanted` (keyed by `port_slot`).
    pub fn set_step_doors(&mut self, wanted: &BTreeMap<u32, StepDoors>) -> Result<(), BpfError> {
        let mut map: HashMap<_, u32, StepDoors> =
            HashMap::try_from(self.map_mut("STEP_DOORS")?).map_err(map_err("STEP_DOORS"))?;
        sync_map(&mut map, wanted, "STEP_DOORS")
    }

    /// The tracker no longer holds `src` past its second step.
    pub fn release_active(&mut self, src: IpAddr) -> Result<(), BpfError> {
        let mut map: HashMap<_, ActiveKey, u32> =
            HashMap::try_from(self.map_mut("ACTIVE")?).map_err(map_err("ACTIVE"))?;
        let mut forms = vec![src];
        if let IpAddr::V4(a) = src {
            forms.push(IpAddr::V6(a.to_ipv6_mapped()));
        }
        for ip in forms {
            let (addr, family) = addr_key(ip);
            // Absent is fine: the kernel never added it, or it was swept.
            let _ = map.remove(&ActiveKey { addr, family, _pad: [0; 3] });
        }
        Ok(())
    }

    /// The tracker holds nothing more for `src`: every first step the
    /// kernel kept for it until now is dead (marked in its own sweep slot,
    /// as a wrong step would). Without this, a first step the finished
    /// sequence passed through would pair with the next sequence.
    pub fn end_attempts(&mut self, src: IpAddr) -> Result<(), BpfError> {
        let Some((index, mut slot)) = self.own_sweep_slot(src)? else {
            return Ok(());
        };
        let now = ms_of(crate::events::monotonic_now().as_nanos() as u64);
        (slot.cut, slot.count, slot.reported) = (now, 0, 1);
        let mut arr: Array<_, SweepSlot> =
            Array::try_from(self.map_mut("SWEEP")?).map_err(map_err("SWEEP"))?;
        arr.set(index, slot, 0).map_err(map_err("SWEEP"))
    }

    /// Whether `src` is in `ACTIVE` (for tests and `--status`-like checks).
    pub fn is_active(&self, src: IpAddr) -> Result<bool, BpfError> {
        let map = self.ebpf.map("ACTIVE").ok_or(BpfError::MissingMap("ACTIVE"))?;
        let map: HashMap<_, ActiveKey, u32> = HashMap::try_from(map).map_err(map_err("ACTIVE"))?;
        let (addr, family) = addr_key(src);
        Ok(map.get(&ActiveKey { addr, family, _pad: [0; 3] }, 0).is_ok())
    }

    /// The tables' sizes and what the kernel charges for them (`memlock` in
    /// the maps' fdinfo: arrays round values up to 8 bytes, and the hash map
    /// carries per-entry overhead, so this is well above keys plus values).
    pub fn table_memory(&self) -> TableMemory {
        let t = &self.tables;
        let bytes = ["FIRST_STEP", "SWEEP", "ACTIVE"]
            .iter()
            .filter_map(|name| self.ebpf.map(name).and_then(|m| super::map_data(m).ok()))
            .filter_map(|d| memlock(d.fd().as_fd().as_raw_fd()))
            .sum();
        TableMemory {
            first_step_slots: t.first_slots,
            sweep_slots: t.sweep_slots,
            active_entries: t.active_entries,
            bytes,
        }
    }

    fn first_index(&self, src: IpAddr, door: u16) -> u32 {
        let (addr, family) = addr_key(src);
        jhash5(&key_words(&addr, family, door), self.tables.cfg.first_seed) & self.tables.cfg.first_mask
    }

    /// The time (ms, see `knockd_common::ms_of`) `FIRST_STEP` holds for
    /// (`src`, door index); 0 when empty. For tests.
    pub fn first_step_time(&self, src: IpAddr, door: u16) -> Result<u32, BpfError> {
        let map = self.ebpf.map("FIRST_STEP").ok_or(BpfError::MissingMap("FIRST_STEP"))?;
        let arr: Array<_, u32> = Array::try_from(map).map_err(map_err("FIRST_STEP"))?;
        arr.get(&self.first_index(src, door), 0).map_err(map_err("FIRST_STEP"))
    }

    /// Overwrites that slot. For tests (expiry without waiting).
    pub fn set_first_step_time(&mut self, src: IpAddr, door: u16, ms: u32) -> Result<(), BpfError> {
        let index = self.first_index(src, door);
        let mut arr: Array<_, u32> =
            Array::try_from(self.map_mut("FIRST_STEP")?).map_err(map_err("FIRST_STEP"))?;
        arr.set(index, ms, 0).map_err(map_err("FIRST_STEP"))
    }

    /// The sweep-guard slot `src` hashes to, if it is `src`'s. For tests.
    pub fn sweep_slot(&self, src: IpAddr) -> Result<Option<SweepSlot>, BpfError> {
        Ok(self.own_sweep_slot(src)?.map(|(_, slot)| slot))
    }

    fn own_sweep_slot(&self, src: IpAddr) -> Result<Option<(u32, SweepSlot)>, BpfError> {
        let (addr, family) = addr_key(src);
        let words = key_words(&addr, family, SWEEP_DOOR);
        let cfg = &self.tables.cfg;
        let map = self.ebpf.map("SWEEP").ok_or(BpfError::MissingMap("SWEEP"))?;
        let arr: Array<_, SweepSlot> = Array::try_from(map).map_err(map_err("SWEEP"))?;
        let index = jhash5(&words, cfg.sweep_seed) & cfg.sweep_mask;
        let slot = arr.get(&index, 0).map_err(map_err("SWEEP"))?;
        Ok((slot.tag == jhash5(&words, cfg.tag_seed)).then_some((index, slot)))
    }
}

/// The `memlock:` line of a BPF map's fdinfo: the bytes the kernel charges.
fn memlock(fd: std::os::fd::RawFd) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok())
}
