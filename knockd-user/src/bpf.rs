//! Loading the XDP program, attaching it, and keeping its maps in step with
//! the configuration and the host's addresses.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    net::IpAddr,
};

use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError,
};
use knockd_common::{counter, AddrMark, PortKey, PortRule};
use thiserror::Error;

/// The XDP object, built by build.rs for the BPF target.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xknock-xdp"));
const PROGRAM: &str = "xknock";

#[derive(Debug, Error)]
pub enum BpfError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] EbpfError),
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("map {0} missing from the XDP object")]
    MissingMap(&'static str),
    #[error("attaching to {iface}: {source}")]
    Attach { iface: String, source: ProgramError },
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
}

pub struct XdpKnocker {
    ebpf: Ebpf,
    attached: Vec<String>,
}

impl XdpKnocker {
    /// Loads and verifies the program without attaching it anywhere.
    pub fn load() -> Result<Self, BpfError> {
        raise_memlock();
        let mut ebpf = Ebpf::load(XDP_OBJECT)?;
        program_mut(&mut ebpf)?.load()?;
        Ok(Self {
            ebpf,
            attached: Vec::new(),
        })
    }

    /// Attaches to `iface`; returns the mode that worked.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<XdpMode, BpfError> {
        let prog = program_mut(&mut self.ebpf)?;
        let wrap = |source| BpfError::Attach {
            iface: iface.to_string(),
            source,
        };
        let used = match mode {
            AttachMode::Native => prog.attach(iface, XdpMode::Driver).map(|_| XdpMode::Driver),
            AttachMode::Skb => prog.attach(iface, XdpMode::Skb).map(|_| XdpMode::Skb),
            AttachMode::Auto => match prog.attach(iface, XdpMode::Driver) {
                Ok(_) => Ok(XdpMode::Driver),
                Err(err) => {
                    log::info!("{iface}: native XDP unavailable ({err}), falling back to skb mode");
                    prog.attach(iface, XdpMode::Skb).map(|_| XdpMode::Skb)
                }
            },
        }
        .map_err(wrap)?;
        self.attached.push(iface.to_string());
        Ok(used)
    }

    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    /// The loaded program, for BPF_PROG_TEST_RUN.
    pub fn program(&self) -> Result<&Xdp, BpfError> {
        let prog = self
            .ebpf
            .program(PROGRAM)
            .ok_or(BpfError::MissingMap(PROGRAM))?;
        Ok(prog.try_into()?)
    }

    /// Makes the knock-port map equal `wanted`. New entries go in before stale
    /// ones leave, so a port present in both configs is never unmatched.
    pub fn set_knock_ports(
        &mut self,
        wanted: &BTreeMap<PortKey, PortRule>,
    ) -> Result<(), BpfError> {
        let map = self.map_mut("KNOCK_PORTS")?;
        let mut ports: HashMap<_, PortKey, PortRule> =
            HashMap::try_from(map).map_err(map_err("KNOCK_PORTS"))?;
        sync_map(&mut ports, wanted, "KNOCK_PORTS")
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
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(BpfError::MissingMap("COUNTERS"))?;
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
        })
    }

    /// Hands the ring buffer to the event reader. Callable once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, BpfError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(BpfError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(map_err("EVENTS"))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, BpfError> {
        self.ebpf.map_mut(name).ok_or(BpfError::MissingMap(name))
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, BpfError> {
    let prog = ebpf
        .program_mut(PROGRAM)
        .ok_or(BpfError::MissingMap(PROGRAM))?;
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
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains_key(k))
        .collect();
    for k in stale {
        map.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}

/// Kernels since 5.11 charge BPF memory to the cgroup, so failure here is
/// harmless; older ones need the raised limit.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK; relying on memcg accounting");
    }
}
