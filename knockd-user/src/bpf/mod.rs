//! Loading the XDP program, attaching it, and keeping its maps in step with
//! the configuration and the host's addresses.

pub mod gate;
mod iface;
mod links;
mod pins;
mod slots;
pub mod spa;
mod steps;

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
pub use iface::{ifindex, require_ethernet};
use knockd_common::{counter, port_slot, AddrMark, PortKey, PortRule, PORT_KNOCK};
pub use links::{LinkEvent, Pinned};
pub use steps::Tables;
use thiserror::Error;

/// The XDP object, built by build.rs for the BPF target.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xknock-xdp"));
const PROGRAM: &str = "xknock";
const BASELINE: &str = "xknock_empty";

#[derive(Debug, Error)]
pub enum BpfError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] EbpfError),
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("map {name}")]
    Map { name: &'static str, source: MapError },
    #[error("map {0} missing from the XDP object")]
    MissingMap(&'static str),
    #[error("attaching to {iface}")]
    Attach { iface: String, source: ProgramError },
    #[error("{iface}: {why}")]
    Device { iface: String, why: String },
    #[error("pinning in {path}: {why}")]
    Pin { path: PathBuf, why: String },
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}

/// How to attach: `auto` tries native (driver) mode and falls back to skb.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    #[default]
    Auto,
    Native,
    Skb,
}

/// Frame and knock counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub frames: u64,
    pub knock_hits: u64,
    pub flag_mismatch: u64,
    pub ringbuf_full: u64,
    pub not_local: u64,
    pub gate_drop: u64,
    pub gate_pass: u64,
    pub stealth_drop: u64,
    pub unclassified_drop: u64,
    /// First steps kept in the kernel with no event.
    pub first_step: u64,
    /// Events carrying a first and a second step.
    pub pairs: u64,
    /// Later steps from sources with no live first step: no event.
    pub orphan_step: u64,
    /// New connections to other ports counted by the sweep guard.
    pub sweep_counted: u64,
    /// Sources whose attempts the sweep guard dropped.
    pub sweep_dropped: u64,
    /// Pairs whose source found `ACTIVE` full.
    pub active_full: u64,
}

pub struct XdpKnocker {
    ebpf: Ebpf,
    links: links::Links,
    /// Where the XDP gate pins its maps and links, so the gate outlives the
    /// daemon (fails closed); `None` only for tests that never gate.
    pins: Option<PathBuf>,
    /// What KNOCK_RULES holds, so a sync touches only changed slots.
    knock_slots: BTreeMap<u32, PortRule>,
    /// The sizes loaded and the seeds drawn for the first-step tables.
    tables: steps::Loaded,
}

impl XdpKnocker {
    /// Loads and verifies the program without attaching it anywhere. With
    /// `pins`, the gate maps are taken over from (or pinned into) that bpffs
    /// directory, so open windows survive a restart.
    pub fn load(pins: Option<&Path>) -> Result<Self, BpfError> {
        match pins {
            Some(dir) => Self::load_in(dir, true),
            None => Self::load_with(None, false, Tables::default()),
        }
    }

    /// The daemon's load: `bpffs_dir` is where the XDP gate lives, whether
    /// or not the config uses it now (a reload may enable it, and a gate an
    /// earlier run left there must be found). With `gate`, pinned gate maps
    /// are adopted with their windows, or created and pinned.
    pub fn load_in(bpffs_dir: &Path, gate: bool) -> Result<Self, BpfError> {
        Self::load_with(Some(bpffs_dir), gate, Tables::default())
    }

    /// Like [`XdpKnocker::load_in`], with the first-step tables sized by
    /// `tables` (fixed for the program's lifetime).
    pub fn load_sized(dir: Option<&Path>, gate: bool, tables: Tables) -> Result<Self, BpfError> {
        Self::load_with(dir, gate, tables)
    }

    fn load_with(dir: Option<&Path>, gate: bool, tables: Tables) -> Result<Self, BpfError> {
        raise_memlock();
        let mut loader = EbpfLoader::new();
        let sized = tables.size(&mut loader);
        let map_paths: Vec<(&str, PathBuf)> = match dir.filter(|_| gate) {
            Some(dir) => {
                pins::ensure_bpffs(dir)
                    .map_err(|e| BpfError::Pin { path: dir.into(), why: e.to_string() })?;
                gate::PINNED_MAPS.iter().map(|&m| (m, dir.join(m))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(XDP_OBJECT)?;
        program_mut(&mut ebpf)?.load()?;
        let mut knocker = Self {
            ebpf,
            links: links::Links::default(),
            pins: dir.map(Path::to_path_buf),
            knock_slots: BTreeMap::new(),
            tables: sized,
        };
        knocker.write_step_config()?;
        Ok(knocker)
    }

    /// Attaches to `iface` and holds the link; returns the mode that worked.
    /// A live link an earlier run pinned for this device is taken over in
    /// place (the kernel swaps the program atomically); a stale one is
    /// replaced. While the gate is in use the link is pinned too; while it
    /// is not, a taken-over pin is removed, since that gate is no longer
    /// wanted and our fd keeps us attached.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<XdpMode, BpfError> {
        self.attach_as(iface, mode, Pinned::TakeOver)
    }

    /// Like [`XdpKnocker::attach`], with a choice for a live pinned link.
    pub fn attach_as(&mut self, iface: &str, mode: AttachMode, pinned: Pinned) -> Result<XdpMode, BpfError> {
        let dir = self.pins.clone();
        let used = self.links.attach(program_mut(&mut self.ebpf)?, dir.as_deref(), iface, mode, pinned)?;
        if let Some(dir) = &dir {
            if self.gate_pinned() {
                self.links.pin_all(dir)?;
            } else {
                self.links.unpin_all(dir)?;
                remove_orphan_maps(dir);
            }
        }
        Ok(used)
    }

    /// The interfaces attached to (or waiting for their device to return).
    pub fn attached(&self) -> Vec<String> {
        self.links.names().map(String::from).collect()
    }

    /// Attaches again to every interface whose device was recreated, and
    /// reports what changed (called on rtnetlink link notices).
    pub fn refresh_links(&mut self) -> Vec<LinkEvent> {
        let gate = self.gate_pinned();
        let dir = self.pins.clone();
        match program_mut(&mut self.ebpf) {
            Ok(prog) => self.links.refresh(prog, dir.as_deref(), gate),
            Err(e) => vec![LinkEvent::Failed { iface: "*".into(), error: e }],
        }
    }

    /// The empty XDP program from the same object, loaded on first use: the
    /// baseline the benchmark measures every path against.
    pub fn baseline(&mut self) -> Result<&Xdp, BpfError> {
        let prog: &mut Xdp =
            self.ebpf.program_mut(BASELINE).ok_or(BpfError::MissingMap(BASELINE))?.try_into()?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        Ok(prog)
    }

    /// The loaded program, for BPF_PROG_TEST_RUN.
    pub fn program(&self) -> Result<&Xdp, BpfError> {
        let prog = self.ebpf.program(PROGRAM).ok_or(BpfError::MissingMap(PROGRAM))?;
        Ok(prog.try_into()?)
    }

    /// Makes the knock-port array hold exactly `wanted`. New entries go in
    /// before stale ones leave, so a port in both configs is never unmatched.
    pub fn set_knock_ports(&mut self, wanted: &BTreeMap<PortKey, PortRule>) -> Result<(), BpfError> {
        let wanted: BTreeMap<u32, PortRule> = wanted
            .iter()
            .map(|(k, r)| (port_slot(k.port, k.proto), PortRule { flags: r.flags | PORT_KNOCK, ..*r }))
            .collect();
        let map = self.ebpf.map_mut("KNOCK_RULES").ok_or(BpfError::MissingMap("KNOCK_RULES"))?;
        let mut rules: Array<_, PortRule> = Array::try_from(map).map_err(map_err("KNOCK_RULES"))?;
        slots::sync(&mut rules, &mut self.knock_slots, wanted).map_err(map_err("KNOCK_RULES"))
    }

    /// Makes the address maps hold exactly `addrs` (local addresses and targets).
    pub fn set_addrs(&mut self, addrs: &StdHashMap<IpAddr, u8>) -> Result<(), BpfError> {
        let mut v4 = BTreeMap::new();
        let mut v6 = BTreeMap::new();
        for (ip, &kind) in addrs {
            let mark = AddrMark { kind, _pad: [0; 3] };
            match ip {
                IpAddr::V4(a) => v4.insert(a.octets(), mark),
                IpAddr::V6(a) => v6.insert(a.octets(), mark),
            };
        }
        let mut m4: HashMap<_, [u8; 4], AddrMark> =
            HashMap::try_from(self.map_mut("LOCAL_V4")?).map_err(map_err("LOCAL_V4"))?;
        sync_map(&mut m4, &v4, "LOCAL_V4")?;
        let mut m6: HashMap<_, [u8; 16], AddrMark> =
            HashMap::try_from(self.map_mut("LOCAL_V6")?).map_err(map_err("LOCAL_V6"))?;
        sync_map(&mut m6, &v6, "LOCAL_V6")
    }

    pub fn counters(&self) -> Result<Counters, BpfError> {
        let map = self.ebpf.map("COUNTERS").ok_or(BpfError::MissingMap("COUNTERS"))?;
        let arr: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_err("COUNTERS"))?;
        let sum = |i: u32| -> Result<u64, BpfError> {
            Ok(arr.get(&i, 0).map_err(map_err("COUNTERS"))?.iter().sum())
        };
        Ok(Counters {
            frames: sum(counter::FRAMES)?,
            knock_hits: sum(counter::KNOCK_HITS)?,
            flag_mismatch: sum(counter::FLAG_MISMATCH)?,
            ringbuf_full: sum(counter::RINGBUF_FULL)?,
            not_local: sum(counter::NOT_LOCAL)?,
            gate_drop: sum(counter::GATE_DROP)?,
            gate_pass: sum(counter::GATE_PASS)?,
            stealth_drop: sum(counter::STEALTH_DROP)?,
            unclassified_drop: sum(counter::UNCLASSIFIED_DROP)?,
            first_step: sum(counter::FIRST_STEP)?,
            pairs: sum(counter::PAIRS)?,
            orphan_step: sum(counter::ORPHAN_STEP)?,
            sweep_counted: sum(counter::SWEEP_COUNTED)?,
            sweep_dropped: sum(counter::SWEEP_DROPPED)?,
            active_full: sum(counter::ACTIVE_FULL)?,
        })
    }

    /// Puts the XDP gate in use: pins the gate maps and every link in the
    /// bpffs directory (so the gate outlives us), then hands the maps to an
    /// `XdpGate`. Works at any time, also when a reload first enables the
    /// xdp backend, and again after the gate was flushed.
    pub fn gate(&mut self) -> Result<gate::XdpGate, crate::gate::GateError> {
        let dir = self.pins.clone().ok_or_else(|| {
            crate::gate::GateError::Other("xdp gate: loaded without a bpffs directory".into())
        })?;
        self.pin_gate(&dir).map_err(|e| crate::gate::GateError::Other(format!("xdp gate: {e}")))?;
        gate::XdpGate::from_pins(&dir)
    }

    fn pin_gate(&mut self, dir: &Path) -> Result<(), BpfError> {
        pins::ensure_bpffs(dir).map_err(|e| BpfError::Pin { path: dir.into(), why: e.to_string() })?;
        for &name in gate::PINNED_MAPS {
            let path = dir.join(name);
            let data = map_data(self.ebpf.map(name).ok_or(BpfError::MissingMap("gate map"))?)?;
            pins::pin_map(data, &path).map_err(|e| BpfError::Pin { path, why: e.to_string() })?;
        }
        self.links.pin_all(dir)
    }

    /// Whether our gate maps are pinned in the bpffs directory: the gate is
    /// in use, so links must be pinned too. A flush of the gate removes
    /// these pins, which is how the knocker learns the gate went away.
    fn gate_pinned(&self) -> bool {
        let Some(dir) = &self.pins else { return false };
        let Some(Ok(ours)) = self.ebpf.map(gate::PINNED_MAPS[0]).map(|m| map_data(m).and_then(map_info))
        else {
            return false;
        };
        aya::maps::MapInfo::from_pin(dir.join(gate::PINNED_MAPS[0])).is_ok_and(|i| i.id() == ours.id())
    }

    /// Hands the ring buffer to the event reader. Callable once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, BpfError> {
        let map = self.ebpf.take_map("EVENTS").ok_or(BpfError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(map_err("EVENTS"))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, BpfError> {
        self.ebpf.map_mut(name).ok_or(BpfError::MissingMap(name))
    }
}

/// `auto`: native first, then skb with a log line; but skb at once on veth,
/// whose native XDP path queues frames in a 256-slot ring that drops knocks
/// under a flood (`cargo xtask bench`: 53/60 sequences native, 60/60 skb).
fn attach_mode(
    prog: &mut Xdp,
    iface: &str,
    mode: AttachMode,
) -> Result<(aya::programs::xdp::XdpLinkId, XdpMode), ProgramError> {
    let try_mode = |prog: &mut Xdp, m: XdpMode| prog.attach(iface, m).map(|id| (id, m));
    match mode {
        AttachMode::Native => try_mode(prog, XdpMode::Driver),
        AttachMode::Skb => try_mode(prog, XdpMode::Skb),
        AttachMode::Auto if iface::driver_name(iface).as_deref() == Some("veth") => {
            log::info!("{iface}: veth, attaching in skb mode (native XDP on veth drops frames under load)");
            try_mode(prog, XdpMode::Skb)
        }
        AttachMode::Auto => try_mode(prog, XdpMode::Driver).or_else(|err| {
            log::info!("{iface}: native XDP unavailable ({err}), falling back to skb mode");
            try_mode(prog, XdpMode::Skb)
        }),
    }
}

/// Gate maps an earlier run pinned, once no pinned link uses them any more:
/// the config no longer gates with XDP, so `--status` must not list them.
fn remove_orphan_maps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let names: Vec<String> =
        entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    if names.iter().any(|n| n.starts_with("link_")) {
        return;
    }
    for name in gate::PINNED_MAPS.iter().filter(|m| names.iter().any(|n| n == *m)) {
        match pins::remove(&dir.join(name)) {
            Ok(()) => log::info!("removed {name} from {}: the xdp backend is not in use", dir.display()),
            Err(e) => log::warn!("removing {name} from {}: {e}", dir.display()),
        }
    }
}

/// The gate maps are an array and a hash map; aya's `Map` hides the data.
fn map_data(map: &aya::maps::Map) -> Result<&MapData, BpfError> {
    match map {
        aya::maps::Map::Array(d) | aya::maps::Map::HashMap(d) => Ok(d),
        _ => Err(BpfError::MissingMap("gate map of the expected type")),
    }
}

fn map_info(d: &MapData) -> Result<aya::maps::MapInfo, BpfError> {
    d.info().map_err(map_err("gate map"))
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, BpfError> {
    let prog = ebpf.program_mut(PROGRAM).ok_or(BpfError::MissingMap(PROGRAM))?;
    Ok(prog.try_into()?)
}

fn sync_map<K, V>(
    map: &mut HashMap<&mut MapData, K, V>,
    wanted: &BTreeMap<K, V>,
    name: &'static str,
) -> Result<(), BpfError>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    for (k, v) in wanted {
        if map.get(k, 0).ok().as_ref() != Some(v) {
            map.insert(k, v, 0).map_err(map_err(name))?;
        }
    }
    let stale: Vec<K> = map.keys().filter_map(Result::ok).filter(|k| !wanted.contains_key(k)).collect();
    for k in stale {
        map.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}

/// Kernels since 5.11 charge BPF memory to the cgroup, so failure here is
/// harmless; older ones need the raised limit.
fn raise_memlock() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall on a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK; relying on memcg accounting");
    }
}
