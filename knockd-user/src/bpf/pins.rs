//! bpffs pinning for the XDP gate: links and gate maps live on after the
//! daemon, so protected ports stay closed if it dies, and a restart takes
//! them over instead of attaching a second time.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
    Xdp, XdpMode,
};

use super::{attach_mode, AttachMode, BpfError};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub fn link_path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("link_{iface}"))
}

/// Takes over the link pinned for `iface` (swapping in this program) or
/// attaches anew and pins the link.
pub fn attach_pinned(prog: &mut Xdp, dir: &Path, iface: &str, mode: AttachMode) -> Result<XdpMode, BpfError> {
    let path = link_path(dir, iface);
    let pin_err = |why: String| BpfError::Pin { path: path.clone(), why };
    if path.exists() {
        let fd: FdLink = PinnedLink::from_pin(&path).map_err(|e| pin_err(e.to_string()))?.into();
        let link = XdpLink::try_from(fd).map_err(|e| pin_err(e.to_string()))?;
        prog.attach_to_link(link).map_err(|e| pin_err(e.to_string()))?;
        log::info!("{iface}: took over the pinned XDP link {}", path.display());
        return Ok(XdpMode::Default);
    }
    let (id, used) = attach_mode(prog, iface, mode)
        .map_err(|source| BpfError::Attach { iface: iface.to_string(), source })?;
    let link = prog.take_link(id).map_err(|e| pin_err(e.to_string()))?;
    let fd = FdLink::try_from(link).map_err(|e| pin_err(format!("not a bpf_link ({e})")))?;
    // Dropping the PinnedLink closes our fd; the pin keeps the program attached.
    fd.pin(&path).map_err(|e| pin_err(e.to_string()))?;
    Ok(used)
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
