//! Loading the XDP program, attaching it, and keeping its maps in step with
//! the configuration and the host's addresses.

pub mod gate;
mod pins;
mod slots;

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
use knockd_common::{counter, port_slot, AddrMark, PortKey, PortRule, PORT_KNOCK};
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
}

pub struct XdpKnocker {
    ebpf: Ebpf,
    attached: Vec<String>,
    /// Set when the XDP gate is in use: the gate maps and the links are
    /// pinned here so the gate outlives the daemon (fails closed).
    pins: Option<PathBuf>,
    /// What KNOCK_RULES holds, so a sync touches only changed slots.
    knock_slots: BTreeMap<u32, PortRule>,
}

impl XdpKnocker {
    /// Loads and verifies the program without attaching it anywhere. With
    /// `pins`, the gate maps are taken over from (or pinned into) that bpffs
    /// directory, so open windows survive a restart.
    pub fn load(pins: Option<&Path>) -> Result<Self, BpfError> {
        raise_memlock();
        let mut loader = EbpfLoader::new();
        let map_paths: Vec<(&str, PathBuf)> = match pins {
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
        Ok(Self {
            ebpf,
            attached: Vec::new(),
            pins: pins.map(Path::to_path_buf),
            knock_slots: BTreeMap::new(),
        })
    }

    /// Attaches to `iface`; returns the mode that worked. With pins, a link
    /// left by an earlier run is taken over in place (the kernel swaps the
    /// program atomically), else the new link is pinned.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<XdpMode, BpfError> {
        let pins = self.pins.clone();
        let prog = program_mut(&mut self.ebpf)?;
        let used = match pins {
            Some(dir) => pins::attach_pinned(prog, &dir, iface, mode)?,
            None => {
                attach_mode(prog, iface, mode)
                    .map_err(|source| BpfError::Attach { iface: iface.to_string(), source })?
                    .1
            }
        };
        self.attached.push(iface.to_string());
        Ok(used)
    }

    pub fn attached(&self) -> &[String] {
        &self.attached
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
        })
    }

    /// Hands the gate maps to an `XdpGate`. Callable once, and only when
    /// loaded with pins (the gate must outlive the daemon).
    pub fn gate(&mut self) -> Result<gate::XdpGate, crate::gate::GateError> {
        let Some(dir) = self.pins.clone() else {
            return Err(crate::gate::GateError::Other(
                "the xdp backend was enabled by a reload; restart xknockd to use it".into(),
            ));
        };
        gate::XdpGate::from_ebpf(&mut self.ebpf, &dir)
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
        AttachMode::Auto if driver_name(iface).as_deref() == Some("veth") => {
            log::info!("{iface}: veth, attaching in skb mode (native XDP on veth drops frames under load)");
            try_mode(prog, XdpMode::Skb)
        }
        AttachMode::Auto => try_mode(prog, XdpMode::Driver).or_else(|err| {
            log::info!("{iface}: native XDP unavailable ({err}), falling back to skb mode");
            try_mode(prog, XdpMode::Skb)
        }),
    }
}

/// The interface's driver, as `ethtool -i` reports it.
fn driver_name(iface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 164],
    }
    const ETHTOOL_GDRVINFO: u32 = 0x03;
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 164] };
    // SAFETY: zeroed ifreq; the name is copied in bounded; ifr_data points at
    // `info`, which outlives the ioctl; the fd is closed below.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        let name = iface.as_bytes();
        if name.len() >= ifr.ifr_name.len() {
            return None;
        }
        for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, libc::SIOCETHTOOL, &mut ifr);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
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
