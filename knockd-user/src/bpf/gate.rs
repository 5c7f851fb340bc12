//! The XDP gate backend: protected ports and open windows are maps the XDP
//! program reads, with expiries checked in the kernel against packet time.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use knockd_common::{
    port_slot, AllowKey, AllowValue, DOOR_NAME_LEN, FAMILY_V4, FAMILY_V6, GATE_ACTIVE_SLOT, MAX_WINDOWS,
};

use super::slots;
use crate::{
    config::model::{Backend, Proto, Step},
    events::monotonic_now,
    gate::{Gate, GateError, Protected, Window},
};

/// Maps pinned so that windows and the closed set survive the daemon.
pub const PINNED_MAPS: &[&str] = &["GATED", "GATE_ALLOW"];

/// How often ended windows are swept out of GATE_ALLOW, so the map never
/// fills with them.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

pub struct XdpGate {
    /// Non-zero per gated (proto, port) slot.
    gated: Array<MapData, u8>,
    /// What `gated` holds; read back from the pinned array at start, since an
    /// earlier run may have left slots set.
    shadow: std::collections::BTreeMap<u32, u8>,
    allow: HashMap<MapData, AllowKey, AllowValue>,
    dir: PathBuf,
    /// When ended windows were last swept; `None` until the first sweep, so
    /// a new gate sweeps what an earlier run left at its first check.
    swept: Option<Instant>,
}

fn err(e: impl std::fmt::Display) -> GateError {
    GateError::Other(format!("xdp gate: {e}"))
}

impl XdpGate {
    /// Opens the gate maps pinned in `dir`: those a (possibly dead) daemon
    /// left, for `--status` and `--flush`, and the running daemon's own,
    /// which `XdpKnocker::gate` pins first.
    pub fn from_pins(dir: &Path) -> Result<Self, GateError> {
        let open = |name: &str| {
            let path = dir.join(name);
            MapData::from_pin(&path).map_err(|e| GateError::Unavailable {
                backend: Backend::Xdp,
                why: format!("no pinned map at {} ({e})", path.display()),
            })
        };
        let gated = Array::try_from(Map::Array(open("GATED")?)).map_err(err)?;
        let allow = HashMap::try_from(Map::HashMap(open("GATE_ALLOW")?)).map_err(err)?;
        Ok(Self::new(gated, allow, dir))
    }

    fn new(gated: Array<MapData, u8>, allow: HashMap<MapData, AllowKey, AllowValue>, dir: &Path) -> Self {
        let shadow = slots::scan(&gated);
        Self { gated, shadow, allow, dir: dir.to_path_buf(), swept: None }
    }

    /// Removes every window that has ended; returns how many. Only the
    /// daemon writes this map, so an entry read as ended cannot be renewed
    /// before it is removed.
    pub fn sweep(&mut self) -> Result<usize, GateError> {
        let now = monotonic_now().as_nanos() as u64;
        let ended: Vec<AllowKey> = self
            .allow
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.expires_ns <= now)
            .map(|(k, _)| k)
            .collect();
        for k in &ended {
            match self.allow.remove(k) {
                Err(e) if os_error(&e) != Some(libc::ENOENT) => return Err(err(e)),
                _ => {}
            }
        }
        self.swept = Some(Instant::now());
        Ok(ended.len())
    }

    fn sweep_if_due(&mut self) -> Result<(), GateError> {
        if self.swept.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
            let n = self.sweep()?;
            if n > 0 {
                log::debug!("xdp gate: swept {n} ended windows");
            }
        }
        Ok(())
    }

    /// Inserts a window. A full map is swept of ended windows and tried
    /// again; a live window is never evicted to make room.
    fn insert(&mut self, key: AllowKey, value: AllowValue) -> Result<(), GateError> {
        match self.allow.insert(key, value, 0) {
            Err(e) if os_error(&e) == Some(libc::E2BIG) => {
                let n = self.sweep()?;
                log::warn!("xdp gate: window map full, swept {n} ended windows");
                self.allow.insert(key, value, 0).map_err(|e| {
                    err(format!("window map full of {MAX_WINDOWS} live windows, not opening ({e})"))
                })
            }
            res => res.map_err(err),
        }
    }

    /// Puts back GATED slots that differ from what we wrote (someone with
    /// bpftool); only our slots are read, so the check stays cheap.
    fn repair_slots(&mut self) -> Result<Vec<String>, GateError> {
        let mut fixes = Vec::new();
        for (&slot, &v) in &self.shadow {
            if self.gated.get(&slot, 0).map_err(err)? != v {
                self.gated.set(slot, v, 0).map_err(err)?;
                fixes.push(format!("GATED slot {slot} was changed by someone else; restored"));
            }
        }
        Ok(fixes)
    }

    fn set_gated(&mut self, wanted: std::collections::BTreeMap<u32, u8>) -> Result<(), GateError> {
        slots::sync(&mut self.gated, &mut self.shadow, wanted).map_err(err)
    }
}

fn allow_key(src: IpAddr, port: Step) -> AllowKey {
    let (addr, family) = match src {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, FAMILY_V4)
        }
        IpAddr::V6(a) => (a.octets(), FAMILY_V6),
    };
    AllowKey { addr, port: port.port, proto: port.proto.number(), family }
}

fn key_src(k: &AllowKey) -> IpAddr {
    if k.family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(k.addr))
    }
}

fn proto_of(n: u8) -> Proto {
    if n == Proto::Udp.number() {
        Proto::Udp
    } else {
        Proto::Tcp
    }
}

fn os_error(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    }
}

fn door_bytes(door: &str) -> [u8; DOOR_NAME_LEN] {
    let mut b = [0u8; DOOR_NAME_LEN];
    let n = door.len().min(DOOR_NAME_LEN);
    b[..n].copy_from_slice(&door.as_bytes()[..n]);
    b
}

fn door_name(b: &[u8; DOOR_NAME_LEN]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(DOOR_NAME_LEN);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl Gate for XdpGate {
    fn backend(&self) -> Backend {
        Backend::Xdp
    }

    fn install(&mut self, protected: &[Protected]) -> Result<(), GateError> {
        let mut wanted: std::collections::BTreeMap<u32, u8> =
            protected.iter().map(|p| (port_slot(p.port.port, p.port.proto.number()), 1)).collect();
        if !wanted.is_empty() {
            wanted.insert(GATE_ACTIVE_SLOT, 1);
        }
        self.set_gated(wanted)
    }

    fn open(&mut self, door: &str, src: IpAddr, ports: &[Step], duration: Duration) -> Result<(), GateError> {
        let expires = monotonic_now() + duration;
        let value = AllowValue { expires_ns: expires.as_nanos() as u64, door: door_bytes(door) };
        for &port in ports {
            self.insert(allow_key(src, port), value)?;
        }
        Ok(())
    }

    fn windows(&self) -> Result<Vec<Window>, GateError> {
        let now = monotonic_now().as_nanos() as u64;
        let mut out: Vec<Window> = self
            .allow
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.expires_ns > now)
            .map(|(k, v)| Window {
                door: door_name(&v.door),
                src: key_src(&k),
                port: Step { port: k.port, proto: proto_of(k.proto) },
                remaining: Duration::from_nanos(v.expires_ns - now),
            })
            .collect();
        out.sort_by(|a, b| (&a.door, a.src, a.port).cmp(&(&b.door, b.src, b.port)));
        Ok(out)
    }

    fn close_windows(&mut self) -> Result<(), GateError> {
        let keys: Vec<AllowKey> = self.allow.keys().filter_map(Result::ok).collect();
        for k in keys {
            self.allow.remove(&k).map_err(err)?;
        }
        Ok(())
    }

    /// Besides the slot check, this is where ended windows are swept, every
    /// [`SWEEP_EVERY`].
    fn repair(&mut self, _protected: &[Protected]) -> Result<Vec<String>, GateError> {
        self.sweep_if_due()?;
        self.repair_slots()
    }

    fn flush(&mut self) -> Result<(), GateError> {
        self.close_windows()?;
        self.set_gated(Default::default())?;
        remove_pins(&self.dir).map(drop)
    }
}

/// Removes our pins and returns how many there were. A link with no pin and
/// no open fd detaches by itself: that is `--flush`. A running daemon holds
/// its own link fds, so when it flushes this gate (the config stopped using
/// the xdp backend) it keeps hearing knocks.
pub(crate) fn remove_pins(dir: &Path) -> Result<usize, GateError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("link_") || PINNED_MAPS.contains(&name.as_ref()) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    let _ = std::fs::remove_dir(dir);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::{super::pins::link_path, *};

    #[test]
    fn keys_and_names_round_trip() {
        let step = Step { port: 22, proto: Proto::Tcp };
        for ip in ["10.0.0.2", "fd00::2"] {
            let ip: IpAddr = ip.parse().unwrap();
            let k = allow_key(ip, step);
            assert_eq!(key_src(&k), ip);
            assert_eq!((k.port, proto_of(k.proto)), (22, Proto::Tcp));
        }
        assert_eq!(door_name(&door_bytes("ssh")), "ssh");
        let long = "a-door-name-longer-than-24-bytes";
        assert_eq!(door_name(&door_bytes(long)), &long[..DOOR_NAME_LEN]);
        assert_eq!(link_path(Path::new("/x"), "eth1"), PathBuf::from("/x/link_eth1"));
    }
}
