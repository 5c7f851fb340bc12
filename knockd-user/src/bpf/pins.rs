//! bpffs pinning for the XDP gate: links and gate maps live on after the
//! daemon, so protected ports stay closed if it dies, and a restart takes
//! them over instead of attaching a second time. The daemon never relies on
//! a pin to stay attached: it holds its own link fds, and pins only say what
//! outlives it.
//!
//! aya pins a link only by consuming it (a failed pin would detach us), so
//! links are pinned through a second fd opened by id, with raw bpf(2) calls.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use aya::maps::{MapData, MapInfo};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

pub fn link_path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("link_{iface}"))
}

/// A pinned link as the kernel sees it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinnedLinkInfo {
    pub id: u32,
    /// 0 once the device it was attached to is gone (the link is defunct).
    pub ifindex: u32,
}

/// The link pinned at `path`, or `None` when nothing is pinned there.
pub fn pinned_link(path: &Path) -> io::Result<Option<PinnedLinkInfo>> {
    match obj_get(path) {
        Ok(fd) => link_info(&fd).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Pins link `id` at `path`, replacing whatever is pinned there unless it
/// already is that link. The caller keeps its own fd either way.
pub fn pin_link(id: u32, path: &Path) -> io::Result<()> {
    if pinned_link(path).ok().flatten().is_some_and(|p| p.id == id) {
        return Ok(());
    }
    remove(path)?;
    let fd = link_fd_by_id(id)?;
    obj_pin(&fd, path)
}

/// Pins `map` at `path`, replacing a pin of any other map there.
pub fn pin_map(map: &MapData, path: &Path) -> io::Result<()> {
    let ours = map.info().map_err(io::Error::other)?.id();
    if MapInfo::from_pin(path).is_ok_and(|i| i.id() == ours) {
        return Ok(());
    }
    remove(path)?;
    map.pin(path).map_err(io::Error::other)
}

/// Removes a pin; a missing one is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes `dir` a directory on a bpffs, mounting one if none is there:
/// on /sys/fs/bpf for the default layout, else on `dir` itself.
pub fn ensure_bpffs(dir: &Path) -> io::Result<()> {
    if dir.ancestors().any(|a| a.exists() && is_bpffs(a)) {
        return std::fs::create_dir_all(dir);
    }
    let target = match dir.parent() {
        Some(p) if p == Path::new("/sys/fs/bpf") => p.to_path_buf(),
        _ => dir.to_path_buf(),
    };
    std::fs::create_dir_all(&target)?;
    mount_bpffs(&target)?;
    log::info!("mounted bpffs on {}", target.display());
    std::fs::create_dir_all(dir)
}

pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs fills a zeroed struct from a valid C path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

fn mount_bpffs(target: &Path) -> io::Result<()> {
    let t = CString::new(target.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), t.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `union bpf_attr`, as wide as every command here needs; the kernel
/// requires the unused tail to be zero.
#[repr(C, align(8))]
#[derive(Default)]
struct Attr([u32; 16]);

/// `struct bpf_link_info`: type, id, prog_id, then (8-aligned) the
/// per-type union, whose `xdp.ifindex` is its first word.
#[repr(C, align(8))]
#[derive(Default)]
struct LinkInfo([u32; 32]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, std::mem::size_of::<Attr>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us, and nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

fn set_ptr(attr: &mut Attr, word: usize, ptr: u64) {
    attr.0[word] = ptr as u32;
    attr.0[word + 1] = (ptr >> 32) as u32;
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = Attr::default();
    set_ptr(&mut attr, 0, c.as_ptr() as u64);
    bpf(BPF_OBJ_GET, &mut attr).map(owned)
}

fn obj_pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = Attr::default();
    set_ptr(&mut attr, 0, c.as_ptr() as u64);
    attr.0[2] = fd.as_raw_fd() as u32;
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

fn link_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::default();
    attr.0[0] = id;
    bpf(BPF_LINK_GET_FD_BY_ID, &mut attr).map(owned)
}

fn link_info(fd: &OwnedFd) -> io::Result<PinnedLinkInfo> {
    let mut info = LinkInfo::default();
    let mut attr = Attr::default();
    attr.0[0] = fd.as_raw_fd() as u32;
    attr.0[1] = std::mem::size_of::<LinkInfo>() as u32;
    set_ptr(&mut attr, 2, &mut info as *mut LinkInfo as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    const BPF_LINK_TYPE_XDP: u32 = 6;
    if info.0[0] != BPF_LINK_TYPE_XDP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an XDP link (type {})", info.0[0]),
        ));
    }
    Ok(PinnedLinkInfo { id: info.0[1], ifindex: info.0[4] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_pinned_is_none_and_removing_nothing_is_fine() {
        let p = Path::new("/nonexistent-xknock/link_x");
        assert!(pinned_link(p).unwrap().is_none());
        remove(p).unwrap();
        assert_eq!(link_path(Path::new("/x"), "eth1"), PathBuf::from("/x/link_eth1"));
    }
}
