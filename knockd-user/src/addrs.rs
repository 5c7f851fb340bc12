//! The host's own addresses, read with getifaddrs and re-read whenever the
//! kernel announces an address change over rtnetlink. knockd reads them once
//! at start (its #44); a DHCP renewal must not need a restart here. The same
//! socket hears link notices, so a device deleted and created again under
//! the same name gets the XDP program back.

use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tokio::io::unix::AsyncFd;

/// Every IPv4 and IPv6 address configured on any interface of this namespace.
pub fn local_addrs() -> io::Result<BTreeSet<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = BTreeSet::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if let Some(ip) = unsafe { sockaddr_ip(ifa.ifa_addr) } {
            out.insert(ip);
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// # Safety
/// `sa` is null or points to a sockaddr of the size its family implies.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    match i32::from(unsafe { (*sa).sa_family }) {
        libc::AF_INET => {
            let sin = unsafe { &*(sa as *const libc::sockaddr_in) };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))))
        }
        libc::AF_INET6 => {
            let sin6 = unsafe { &*(sa as *const libc::sockaddr_in6) };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// What a batch of rtnetlink notices touched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// An address was added or removed.
    pub addrs: bool,
    /// A device appeared, went away, or changed.
    pub links: bool,
}

impl Changes {
    const ALL: Changes = Changes { addrs: true, links: true };

    /// Notes the type of every netlink message in `buf`.
    fn scan(&mut self, mut buf: &[u8]) {
        const HDR: usize = std::mem::size_of::<libc::nlmsghdr>();
        while buf.len() >= HDR {
            let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
            match u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes")) {
                libc::RTM_NEWADDR | libc::RTM_DELADDR => self.addrs = true,
                libc::RTM_NEWLINK | libc::RTM_DELLINK => self.links = true,
                _ => {}
            }
            // Messages are 4-aligned; a bad length ends the walk.
            let step = (len + 3) & !3;
            if len < HDR || step > buf.len() {
                break;
            }
            buf = &buf[step..];
        }
    }
}

/// Wakes whenever an address is added to or removed from any interface, or
/// a device comes or goes.
pub struct AddrWatcher {
    fd: AsyncFd<OwnedFd>,
}

impl AddrWatcher {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain socket syscall; the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_nl is valid; we set the fields we need.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR | libc::RTMGRP_LINK) as u32;
        let len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
        // SAFETY: sa is a valid sockaddr_nl of `len` bytes.
        if unsafe { libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_nl).cast(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd stays open and unchanged for the AsyncFd's lifetime.
        Ok(Self { fd: unsafe { AsyncFd::register(fd) }? })
    }

    /// Returns after at least one change notice, with all pending ones
    /// drained, saying what they touched. Beyond that the messages are not
    /// parsed: the caller re-reads the full state, which cannot drift from
    /// the kernel's view even if notices were lost.
    pub async fn changed(&mut self) -> io::Result<Changes> {
        let mut guard = self.fd.readable().await?;
        let mut buf = [0u8; 8192];
        let mut seen = Changes::default();
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => break,
                    // ENOBUFS: notices overflowed; a re-read of both covers them.
                    _ if err.raw_os_error() == Some(libc::ENOBUFS) => seen = Changes::ALL,
                    _ => return Err(err),
                }
                continue;
            }
            seen.scan(&buf[..n as usize]);
        }
        guard.clear_ready();
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_local() {
        let addrs = local_addrs().unwrap();
        // Every namespace this runs in has lo up with 127.0.0.1 (CI and dev VMs).
        assert!(addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{addrs:?}");
    }

    fn msg(kind: u16, payload: usize) -> Vec<u8> {
        let len = (std::mem::size_of::<libc::nlmsghdr>() + payload) as u32;
        let mut m = len.to_ne_bytes().to_vec();
        m.extend(kind.to_ne_bytes());
        m.resize(len as usize, 0);
        m.resize((len as usize + 3) & !3, 0);
        m
    }

    #[test]
    fn notices_are_told_apart_by_type() {
        let mut c = Changes::default();
        c.scan(&[msg(libc::RTM_NEWADDR, 9), msg(libc::NLMSG_DONE as u16, 4)].concat());
        assert_eq!(c, Changes { addrs: true, links: false });
        let mut c = Changes::default();
        c.scan(&[msg(libc::RTM_NEWROUTE, 10), msg(libc::RTM_DELLINK, 3)].concat());
        assert_eq!(c, Changes { addrs: false, links: true });
        // A truncated or zero-length header ends the walk without a panic.
        let mut c = Changes::default();
        c.scan(&[0u8; 20]);
        c.scan(&msg(libc::RTM_NEWLINK, 0)[..10]);
        assert_eq!(c, Changes::default());
    }
}
