//! Reads a running xknockd's bpf maps: the XDP program's per-CPU counters,
//! the XDP gate's windows (to time an open), and what each map charges.
//!
//! The daemon keeps its maps to itself (`XdpKnocker::counters()` is
//! in-process), and xtask must not link knockd-user, so this finds the
//! daemon's maps through /proc/PID/fdinfo (which names each map fd's id) and
//! reads them with raw bpf(2) commands. Read-only: nothing here changes a map.

use std::{
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Context, Result};
use knockd_common::counter;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

/// Counter values summed over CPUs, indexed by `knockd_common::counter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; counter::COUNT as usize]);

impl Counters {
    pub fn get(&self, index: u32) -> u64 {
        self.0[index as usize]
    }

    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut out = [0u64; counter::COUNT as usize];
        for (i, v) in out.iter_mut().enumerate() {
            *v = self.0[i].saturating_sub(earlier.0[i]);
        }
        Counters(out)
    }
}

/// An open handle on one daemon's COUNTERS map.
pub struct CounterMap {
    fd: OwnedFd,
    cpus: usize,
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zeroed, 128-byte, 8-aligned bpf_attr; the kernel
    // reads (and for some commands writes) only within the size we pass.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

fn possible_cpus() -> Result<usize> {
    let text = fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in text.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>()? - a.parse::<usize>()? + 1,
            None => 1,
        };
    }
    Ok(n)
}

impl CounterMap {
    /// Finds the COUNTERS map among `pid`'s open bpf maps.
    pub fn of_pid(pid: u32) -> Result<Self> {
        let cpus = possible_cpus()?;
        let map = MapFd::of_pid(pid, "COUNTERS")?;
        if map.map_type != BPF_MAP_TYPE_PERCPU_ARRAY {
            bail!("COUNTERS of pid {pid} is not a per-CPU array");
        }
        Ok(Self { fd: map.fd, cpus })
    }

    pub fn read(&self) -> Result<Counters> {
        let mut out = [0u64; counter::COUNT as usize];
        let mut values = vec![0u64; self.cpus];
        for (key, slot) in out.iter_mut().enumerate() {
            let key = key as u32;
            lookup(&self.fd, &key.to_ne_bytes(), bytes_of_mut(&mut values))
                .context("BPF_MAP_LOOKUP_ELEM on COUNTERS")?;
            *slot = values.iter().sum();
        }
        Ok(Counters(out))
    }
}

/// One bpf map a process holds, opened through its id.
pub struct MapFd {
    pub fd: OwnedFd,
    map_type: u32,
}

/// A bpf map a process holds, as /proc/PID/fdinfo and the kernel name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapMemory {
    pub name: String,
    /// `memlock:` of fdinfo: what the map charges, in bytes.
    pub bytes: u64,
}

/// Every bpf map `pid` holds open, once each (a map may sit behind several
/// fds), with its id and fdinfo text.
fn maps_of_pid(pid: u32) -> Result<Vec<(u32, String)>> {
    let dir = format!("/proc/{pid}/fd");
    let mut seen = std::collections::BTreeMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))?.flatten() {
        let Ok(link) = fs::read_link(entry.path()) else { continue };
        if link.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy()))
            .unwrap_or_default();
        if let Some(id) = fdinfo_field(&info, "map_id:") {
            seen.entry(id as u32).or_insert(info);
        }
    }
    Ok(seen.into_iter().collect())
}

fn fdinfo_field(info: &str, name: &str) -> Option<u64> {
    info.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

impl MapFd {
    /// Finds the map called `name` among `pid`'s open bpf maps.
    pub fn of_pid(pid: u32, name: &str) -> Result<Self> {
        for (id, info) in maps_of_pid(pid)? {
            let Ok(fd) = map_fd_by_id(id) else { continue };
            if map_name(&fd)? == name {
                let map_type = fdinfo_field(&info, "map_type:").unwrap_or(0) as u32;
                return Ok(Self { fd, map_type });
            }
        }
        bail!("no {name} map among the bpf maps of pid {pid}")
    }

    /// Whether `key` is in the map (the value is read and dropped).
    pub fn contains(&self, key: &[u8], value_len: usize) -> Result<bool> {
        let mut value = vec![0u8; value_len];
        match lookup(&self.fd, key, &mut value) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e).context("BPF_MAP_LOOKUP_ELEM"),
        }
    }
}

/// What each bpf map of `pid` charges (fdinfo `memlock`), by name.
pub fn map_memory(pid: u32) -> Result<Vec<MapMemory>> {
    let mut out = Vec::new();
    for (id, info) in maps_of_pid(pid)? {
        let name = match map_fd_by_id(id) {
            Ok(fd) => map_name(&fd)?,
            Err(_) => format!("id {id}"),
        };
        out.push(MapMemory { name, bytes: fdinfo_field(&info, "memlock:").unwrap_or(0) });
    }
    out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
    Ok(out)
}

fn bytes_of_mut(v: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64s are plain bytes; the slice covers exactly their memory.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
}

/// BPF_MAP_LOOKUP_ELEM; `value` must be the map's value size (times the
/// possible CPUs for per-CPU maps).
fn lookup(fd: &OwnedFd, key: &[u8], value: &mut [u8]) -> std::io::Result<()> {
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u64;
    attr[1] = key.as_ptr() as u64;
    attr[2] = value.as_mut_ptr() as u64;
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map(|_| ())
}

fn map_fd_by_id(id: u32) -> Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = id as u64; // map_id; next_id and open_flags stay 0
    let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr).with_context(|| format!("BPF_MAP_GET_FD_BY_ID {id}"))?;
    // SAFETY: the kernel just gave us this fd and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn map_name(fd: &OwnedFd) -> Result<String> {
    // struct bpf_map_info: type, id, key_size, value_size, max_entries,
    // map_flags (6 × u32), then char name[16].
    let mut info = [0u64; 12];
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
    let bytes: Vec<u8> = info.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let name = &bytes[24..40];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

/// Loads a two-instruction XDP program (`r0 = XDP_PASS; exit`) and attaches
/// it with a bpf link to `ifindex` in the calling thread's network namespace.
/// The program is detached when the returned link fd is closed. For the
/// softirq baseline: what a veth costs with *an* XDP program on it.
pub fn attach_empty_xdp(ifindex: u32) -> Result<OwnedFd> {
    // BPF_ALU64|BPF_MOV|BPF_K r0 = 2 (XDP_PASS); BPF_JMP|BPF_EXIT.
    let insns: [u64; 2] =
        [u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]), u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0])];
    let license = b"GPL\0";
    let mut attr = [0u64; 16];
    attr[0] = BPF_PROG_TYPE_XDP as u64 | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // prog_name at byte 48 (attr[6..8]); expected_attach_type at byte 68.
    attr[6] = u64::from_le_bytes(*b"bench_em");
    attr[7] = u64::from_le_bytes(*b"pty\0\0\0\0\0");
    attr[8] = (BPF_XDP as u64) << 32;
    let prog = bpf(BPF_PROG_LOAD, &mut attr).context("BPF_PROG_LOAD of the empty XDP program")?;
    // SAFETY: a fresh fd from the kernel.
    let prog = unsafe { OwnedFd::from_raw_fd(prog as i32) };
    let mut attr = [0u64; 16];
    attr[0] = prog.as_raw_fd() as u64 | ((ifindex as u64) << 32);
    attr[1] = BPF_XDP as u64;
    let link = bpf(BPF_LINK_CREATE, &mut attr).context("BPF_LINK_CREATE (XDP)")?;
    // SAFETY: a fresh fd from the kernel; the link keeps the program alive.
    Ok(unsafe { OwnedFd::from_raw_fd(link as i32) })
}
