//! `icmp:N` hits: one echo request with N bytes of payload, what
//! `ping -s N` sends. A ping socket needs no privilege where
//! `net.ipv4.ping_group_range` allows it; otherwise a raw socket (root).

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use socket2::{Domain, Protocol, Socket, Type};

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REQUEST_V6: u8 = 128;

/// Sends one echo request to `ip` with a payload of `len` bytes.
pub fn echo(ip: IpAddr, len: u16) -> io::Result<()> {
    let (domain, proto) = match ip {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(proto))
        .or_else(|_| Socket::new(domain, Type::from(libc::SOCK_RAW), Some(proto)))?;
    let packet = echo_request(ip.is_ipv4(), len);
    socket.send_to(&packet, &SocketAddr::new(ip, 0).into()).map(|_| ())
}

/// The ICMP message: header and a payload of `len` bytes. The kernel
/// fills in the checksum for ICMPv6 and for ping sockets; a raw IPv4
/// socket sends ours.
fn echo_request(v4: bool, len: u16) -> Vec<u8> {
    let kind = if v4 { ECHO_REQUEST_V4 } else { ECHO_REQUEST_V6 };
    let id = (std::process::id() as u16).to_be_bytes();
    let mut p = vec![kind, 0, 0, 0, id[0], id[1], 0, 1];
    p.extend((0..len).map(|i| i as u8));
    if v4 {
        let sum = checksum(&p).to_be_bytes();
        p[2..4].copy_from_slice(&sum);
    }
    p
}

/// RFC 1071's Internet checksum.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_the_length_and_a_valid_checksum() {
        let p = echo_request(true, 100);
        assert_eq!(p.len(), 108);
        assert_eq!(p[0], ECHO_REQUEST_V4);
        assert_eq!(checksum(&p), 0, "a correct checksum sums to zero");
        let odd = echo_request(true, 7);
        assert_eq!(checksum(&odd), 0);
        assert_eq!(echo_request(false, 0), vec![ECHO_REQUEST_V6, 0, 0, 0, p[4], p[5], 0, 1]);
    }
}
