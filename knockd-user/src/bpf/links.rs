//! The program's attachments, one per interface, each held by an fd of our
//! own so that knock detection never depends on the gate's pins. A pin is
//! added beside the fd while the XDP gate is in use, so the gate outlives
//! us; removing the pin never detaches a running daemon.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
    Xdp, XdpMode,
};

use super::{attach_mode, iface, pins, AttachMode, BpfError};

/// One interface we attach to. `link` is `None` while the device is gone.
struct Attached {
    ifindex: u32,
    /// What to ask for when attaching again: the mode that worked, so a
    /// device that comes back gets the same one.
    mode: AttachMode,
    link: Option<FdLink>,
    gone_since: Option<Instant>,
}

/// What happened to an attached interface, for the daemon's log.
#[derive(Debug)]
pub enum LinkEvent {
    Gone { iface: String },
    Back { iface: String, ifindex: u32, gap: Duration, mode: XdpMode },
    Failed { iface: String, error: BpfError },
}

#[derive(Default)]
pub struct Links {
    by_iface: BTreeMap<String, Attached>,
}

/// What to do with a link some earlier run (or `--install-gate`) pinned.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    /// Swap our program into it (a restart of the daemon).
    TakeOver,
    /// Leave a live one as it is (`--install-gate`: the gate is in place).
    Keep,
}

impl Links {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_iface.keys().map(String::as_str)
    }

    /// Attaches `prog` to `name`; with `dir`, a live link pinned there for
    /// this very device is handled as `pinned` says, and a stale one (its
    /// device is gone) is replaced. Returns the mode in use (`Default` when
    /// an existing link was taken over).
    pub fn attach(
        &mut self,
        prog: &mut Xdp,
        dir: Option<&Path>,
        name: &str,
        mode: AttachMode,
        pinned: Pinned,
    ) -> Result<XdpMode, BpfError> {
        iface::require_ethernet(name)?;
        let ifindex = iface::ifindex(name)
            .ok_or_else(|| BpfError::Device { iface: name.into(), why: "no such device".into() })?;
        let (link, used) = match dir.and_then(|d| live_pin(d, name, ifindex)) {
            Some(path) if pinned == Pinned::Keep => {
                log::info!("{name}: already gated by the pinned XDP link {}", path.display());
                (None, XdpMode::Default)
            }
            Some(path) => (Some(take_over(prog, &path, name)?), XdpMode::Default),
            None => {
                let (link, used) = attach_new(prog, name, mode)?;
                (Some(link), used)
            }
        };
        let mode = remembered(mode, used);
        self.by_iface.insert(name.to_string(), Attached { ifindex, mode, link, gone_since: None });
        Ok(used)
    }

    /// Pins every held link in `dir` (the gate is in use), replacing stale
    /// pins. Idempotent.
    pub fn pin_all(&self, dir: &Path) -> Result<(), BpfError> {
        for (name, a) in &self.by_iface {
            let Some(link) = &a.link else { continue };
            let path = pins::link_path(dir, name);
            let id = link.info().map_err(|e| pin_err(&path, e))?.id();
            pins::pin_link(id, &path).map_err(|e| pin_err(&path, e))?;
        }
        Ok(())
    }

    /// Removes the pins of the links we hold (the gate is no longer in use);
    /// our fds keep the program attached.
    pub fn unpin_all(&self, dir: &Path) -> Result<(), BpfError> {
        for name in self.by_iface.keys() {
            let path = pins::link_path(dir, name);
            pins::remove(&path).map_err(|e| pin_err(&path, e))?;
        }
        Ok(())
    }

    /// Compares every attached interface with the device now under its
    /// name: a device that went away is noted, one that came back (a new
    /// ifindex) is attached again, and pinned in `dir` when `gate` is set.
    pub fn refresh(&mut self, prog: &mut Xdp, dir: Option<&Path>, gate: bool) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        for (name, a) in &mut self.by_iface {
            let now = iface::ifindex(name);
            if now == Some(a.ifindex) && a.gone_since.is_none() {
                continue;
            }
            if a.gone_since.is_none() {
                // Our link died with the device; its fd and pin are useless.
                a.link = None;
                a.gone_since = Some(Instant::now());
                events.push(LinkEvent::Gone { iface: name.clone() });
            }
            let Some(ifindex) = now else { continue };
            match reattach(prog, dir, gate, name, ifindex, a.mode) {
                Ok((link, used)) => {
                    let gap = a.gone_since.take().map_or(Duration::ZERO, |t| t.elapsed());
                    *a = Attached {
                        ifindex,
                        mode: remembered(a.mode, used),
                        link: Some(link),
                        gone_since: None,
                    };
                    events.push(LinkEvent::Back { iface: name.clone(), ifindex, gap, mode: used });
                }
                Err(error) => events.push(LinkEvent::Failed { iface: name.clone(), error }),
            }
        }
        events
    }
}

/// A device that came back: its old pin (if any) names a defunct link, so
/// it is replaced, never taken over.
fn reattach(
    prog: &mut Xdp,
    dir: Option<&Path>,
    gate: bool,
    name: &str,
    ifindex: u32,
    mode: AttachMode,
) -> Result<(FdLink, XdpMode), BpfError> {
    iface::require_ethernet(name)?;
    let (link, used) = attach_new(prog, name, mode)?;
    if let Some(dir) = dir {
        let path = pins::link_path(dir, name);
        if gate {
            let id = link.info().map_err(|e| pin_err(&path, e))?.id();
            pins::pin_link(id, &path).map_err(|e| pin_err(&path, e))?;
        } else {
            pins::remove(&path).map_err(|e| pin_err(&path, e))?;
        }
    }
    log::debug!("{name}: attached again as ifindex {ifindex}");
    Ok((link, used))
}

/// The path of a link pinned for `name` that is attached to `ifindex` now.
/// A pin of a link whose device is gone, or that is not an XDP link, is
/// removed: taking it over would attach us to nothing.
fn live_pin(dir: &Path, name: &str, ifindex: u32) -> Option<std::path::PathBuf> {
    let path = pins::link_path(dir, name);
    match pins::pinned_link(&path) {
        Ok(None) => None,
        Ok(Some(info)) if info.ifindex == ifindex => Some(path),
        stale => {
            log::info!("{name}: replacing the stale pinned XDP link {} ({stale:?})", path.display());
            if let Err(e) = pins::remove(&path) {
                log::warn!("{name}: removing {}: {e}", path.display());
            }
            None
        }
    }
}

/// Swaps our program into the link pinned at `path` (atomically: no frame
/// sees no program) and returns our own fd for it.
fn take_over(prog: &mut Xdp, path: &Path, name: &str) -> Result<FdLink, BpfError> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| pin_err(path, e))?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| pin_err(path, e))?;
    let id = prog.attach_to_link(link).map_err(|e| pin_err(path, e))?;
    let link = own(prog, id, name)?;
    log::info!("{name}: took over the pinned XDP link {}", path.display());
    Ok(link)
}

fn attach_new(prog: &mut Xdp, name: &str, mode: AttachMode) -> Result<(FdLink, XdpMode), BpfError> {
    let (id, used) = attach_mode(prog, name, mode)
        .map_err(|source| BpfError::Attach { iface: name.to_string(), source })?;
    Ok((own(prog, id, name)?, used))
}

/// Moves the link out of the program's own list, so that it lives exactly
/// as long as we hold it.
fn own(prog: &mut Xdp, id: aya::programs::xdp::XdpLinkId, name: &str) -> Result<FdLink, BpfError> {
    let link = prog.take_link(id).map_err(|source| BpfError::Attach { iface: name.into(), source })?;
    FdLink::try_from(link).map_err(|e| BpfError::Device {
        iface: name.into(),
        why: format!(
            "the kernel gave a netlink XDP attachment, not a bpf_link ({e}); Linux 5.9 or later is needed"
        ),
    })
}

/// The mode to ask for next time: the one that worked, else what was asked.
fn remembered(asked: AttachMode, used: XdpMode) -> AttachMode {
    match used {
        XdpMode::Skb => AttachMode::Skb,
        XdpMode::Driver => AttachMode::Native,
        _ => asked,
    }
}

fn pin_err(path: &Path, e: impl std::fmt::Display) -> BpfError {
    BpfError::Pin { path: path.into(), why: e.to_string() }
}
