//! What the XDP attachment needs to know about a network device, asked of
//! the kernel in the calling thread's network namespace (sysfs may show
//! another one, e.g. under `ip netns exec` without a remount).

use std::{ffi::CString, io};

use super::BpfError;

/// ARPHRD_ETHER: frames start with a 14-byte Ethernet header.
const ARPHRD_ETHER: u16 = 1;

/// The device's index now, or `None` when no device has that name.
pub fn ifindex(iface: &str) -> Option<u32> {
    let name = CString::new(iface).ok()?;
    // SAFETY: a valid C string; the call only reads it.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// The program parses an Ethernet header first: on a device whose frames
/// start with an IP header (wireguard, tun, ppp, ipip) or on loopback it
/// would read IP bytes as MAC addresses and gate nothing.
pub fn require_ethernet(iface: &str) -> Result<(), BpfError> {
    let hw =
        hardware_type(iface).map_err(|e| BpfError::Device { iface: iface.into(), why: e.to_string() })?;
    if hw != ARPHRD_ETHER {
        return Err(BpfError::Device {
            iface: iface.into(),
            why: format!(
                "not an Ethernet device (link type {hw}: {}); the XDP program parses Ethernet frames \
                 only, so it cannot see knocks or gate ports here. Attach to the Ethernet device \
                 the traffic arrives on instead",
                hardware_name(hw)
            ),
        });
    }
    Ok(())
}

fn hardware_name(hw: u16) -> &'static str {
    match hw {
        512 => "ppp",
        768 => "ipip tunnel",
        769 => "ip6ip6 tunnel",
        772 => "loopback",
        776 => "sit tunnel",
        778 => "gre tunnel",
        823 => "ip6gre tunnel",
        65534 => "no link-layer header: tun, wireguard",
        _ => "not Ethernet",
    }
}

/// SIOCGIFHWADDR's `sa_family`: the device's ARPHRD type.
fn hardware_type(iface: &str) -> io::Result<u16> {
    let mut ifr = ifreq(iface)?;
    ioctl(libc::SIOCGIFHWADDR, &mut ifr)?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    Ok(unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_family })
}

/// The interface's driver, as `ethtool -i` reports it.
pub fn driver_name(iface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 164],
    }
    const ETHTOOL_GDRVINFO: u32 = 0x03;
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 164] };
    let mut ifr = ifreq(iface).ok()?;
    ifr.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // `info` outlives the ioctl that writes through ifru_data.
    ioctl(libc::SIOCETHTOOL, &mut ifr).ok()?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

fn ifreq(iface: &str) -> io::Result<libc::ifreq> {
    // SAFETY: an all-zero ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= ifr.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "invalid interface name"));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    Ok(ifr)
}

fn ioctl(request: libc::Ioctl, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: plain socket syscall; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifr is a valid ifreq for this request; any pointer in it is
    // the caller's and outlives the call.
    let rc = unsafe { libc::ioctl(fd, request, ifr as *mut libc::ifreq) };
    let err = io::Error::last_os_error();
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_refused_with_the_reason() {
        let err = require_ethernet("lo").unwrap_err().to_string();
        assert!(err.contains("not an Ethernet device") && err.contains("loopback"), "{err}");
    }

    #[test]
    fn missing_device_has_no_index() {
        assert_eq!(ifindex("xk-no-such-if"), None);
        assert!(ifindex("lo").is_some());
    }
}
