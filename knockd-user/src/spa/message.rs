//! What an SPA packet says, once decrypted: who, when, and which ports for
//! which address. The access message grammar is fwknop's
//! `<allow-ip>,<proto>/<port>[,<proto>/<port>...]`.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
};

use super::error::DecodeError;

/// fwknop's message types (`fko.h fko_message_type_t`). Only the two access
/// types are accepted; the others run commands or set up NAT, which xknockd
/// does not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Command = 0,
    Access = 1,
    NatAccess = 2,
    ClientTimeoutAccess = 3,
    ClientTimeoutNatAccess = 4,
    LocalNatAccess = 5,
    ClientTimeoutLocalNatAccess = 6,
}

impl MessageType {
    pub fn from_code(code: u8) -> Option<Self> {
        use MessageType::*;
        [
            Command,
            Access,
            NatAccess,
            ClientTimeoutAccess,
            ClientTimeoutNatAccess,
            LocalNatAccess,
            ClientTimeoutLocalNatAccess,
        ]
        .get(usize::from(code))
        .copied()
    }

    pub fn code(self) -> u8 {
        self as u8
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpaProto {
    Tcp,
    Udp,
    Icmp,
    /// What the fwknop client sends without `-A`: asks for nothing.
    None,
}

impl SpaProto {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::None => "none",
        }
    }
}

/// One requested `proto/port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccessSpec {
    pub proto: SpaProto,
    pub port: u16,
}

impl fmt::Display for AccessSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.proto.as_str(), self.port)
    }
}

impl FromStr for AccessSpec {
    type Err = &'static str;

    /// `tcp/22`. Port 0 only with `none`, as the fwknop client sends it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (proto, port) = s.split_once('/').ok_or("expected proto/port")?;
        let proto = match proto {
            "tcp" => SpaProto::Tcp,
            "udp" => SpaProto::Udp,
            "icmp" => SpaProto::Icmp,
            "none" => SpaProto::None,
            _ => return Err("protocol must be tcp, udp, icmp or none"),
        };
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("port must be 1 to 5 digits");
        }
        let port: u16 = port.parse().map_err(|_| "port must be at most 65535")?;
        if port == 0 && proto != SpaProto::None {
            return Err("port must be 1-65535");
        }
        Ok(Self { proto, port })
    }
}

/// A decoded, digest-checked packet. Nothing here is trusted policy-wise yet:
/// see [`super::policy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaMessage {
    /// 16 decimal digits of client randomness.
    pub rand: String,
    pub user: String,
    /// Client's Unix time, seconds (fwknop caps it at 2^31-1).
    pub timestamp: u32,
    /// Not checked, as fwknopd does not check it.
    pub version: String,
    pub kind: MessageType,
    /// The address to open for. `0.0.0.0` means "the packet's source".
    /// IPv6 is an xknock extension that fwknopd refuses; fwknop clients
    /// reaching us over IPv6 send `0.0.0.0` (their `-s`).
    pub allow_ip: IpAddr,
    pub access: Vec<AccessSpec>,
    /// Seconds, present for [`MessageType::ClientTimeoutAccess`]; 0 means unset.
    pub client_timeout: Option<u32>,
}

/// The protocol version fwknop 2.6 writes.
pub const PROTOCOL_VERSION: &str = "3.0.0";

/// Longest username fwknop's client accepts (`MAX_SPA_USERNAME_SIZE` 64,
/// counting the NUL).
pub const MAX_USER_LEN: usize = 63;

/// fwknop's `validate_username`: 1-63 chars, none of its forbidden ones.
pub fn valid_user(user: &str) -> bool {
    const FORBIDDEN: &[u8] = br#""/\[]:;|=,+*?<>"#;
    (1..=MAX_USER_LEN).contains(&user.len())
        && user.bytes().all(|b| !b.is_ascii_control() && !FORBIDDEN.contains(&b))
}

/// Renders the access message, `allow_ip,spec,spec`.
pub fn access_message(allow_ip: IpAddr, access: &[AccessSpec]) -> String {
    let mut out = allow_ip.to_string();
    for spec in access {
        out.push(',');
        out.push_str(&spec.to_string());
    }
    out
}

/// Parses the decoded access message.
pub fn parse_access_message(text: &str) -> Result<(IpAddr, Vec<AccessSpec>), DecodeError> {
    let bad = |why| DecodeError::BadField { field: "message", why };
    let mut parts = text.split(',');
    let ip = parts.next().unwrap_or_default();
    let allow_ip = parse_allow_ip(ip).ok_or(bad("allow-IP is not an address"))?;
    let access = parts.map(|p| p.parse::<AccessSpec>().map_err(bad)).collect::<Result<Vec<_>, _>>()?;
    if access.is_empty() {
        return Err(bad("no proto/port requested"));
    }
    Ok((allow_ip, access))
}

/// Dotted-quad IPv4 (fwknop's only form), or IPv6 (ours).
fn parse_allow_ip(text: &str) -> Option<IpAddr> {
    if text.contains(':') {
        return text.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_messages_round_trip() {
        let (ip, acc) = parse_access_message("10.0.0.5,tcp/22,udp/53").unwrap();
        assert_eq!(ip, "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(acc.len(), 2);
        assert_eq!(access_message(ip, &acc), "10.0.0.5,tcp/22,udp/53");
        let (ip, acc) = parse_access_message("fd77::2,tcp/22").unwrap();
        assert!(ip.is_ipv6() && acc[0].port == 22);
        assert_eq!(parse_access_message("0.0.0.0,none/0").unwrap().1[0].proto, SpaProto::None);
    }

    #[test]
    fn access_messages_are_strict() {
        for bad in [
            "10.0.0.5",
            "10.0.0.5,",
            "10.0.0,tcp/22",
            "host,tcp/22",
            "10.0.0.5,tcp/0",
            "10.0.0.5,tcp/65536",
            "10.0.0.5,tcp/022222",
            "10.0.0.5,sctp/22",
            "10.0.0.5,tcp22",
            "10.0.0.5,tcp/22,",
            "10.0.0.5,tcp/+22",
        ] {
            assert!(parse_access_message(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usernames_follow_fwknop() {
        assert!(valid_user("alice") && valid_user("a.b-c_d@e"));
        for bad in ["", "a:b", "a,b", "a/b", "a\nb", "a=b", &"x".repeat(64)] {
            assert!(!valid_user(bad), "{bad:?}");
        }
    }

    #[test]
    fn message_type_codes() {
        assert_eq!(MessageType::from_code(3), Some(MessageType::ClientTimeoutAccess));
        assert_eq!(MessageType::from_code(7), None);
        assert_eq!(MessageType::ClientTimeoutLocalNatAccess.code(), 6);
    }
}
