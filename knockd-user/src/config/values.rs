//! Parsers for the scalar values both formats share. They return plain messages;
//! the caller knows the file, line and key and wraps them into a `ConfigError`.

use std::{net::IpAddr, time::Duration};

use super::model::{tcp_flag, Backend, Proto, Step, TcpFlags, MAX_SEQUENCE_LEN};

/// Separators allowed between port and protocol in knock sequences (knockd syntax).
pub(crate) const SEQUENCE_SEPARATORS: &[char] = &[':'];
/// `open.ports` also takes the `22/tcp` spelling people know from /etc/services.
pub(crate) const OPEN_PORT_SEPARATORS: &[char] = &[':', '/'];

const FLAG_NAMES: [(&str, u8); 6] = [
    ("fin", tcp_flag::FIN),
    ("syn", tcp_flag::SYN),
    ("rst", tcp_flag::RST),
    ("psh", tcp_flag::PSH),
    ("ack", tcp_flag::ACK),
    ("urg", tcp_flag::URG),
];

/// A port number from an integer. knockd cast with `(unsigned short)atoi()`, so 70000
/// silently became 4464 (its issue #67); we refuse instead.
pub(crate) fn check_port(n: i128) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port {n} is outside 1-65535")),
    }
}

/// A port number from text: digits only, so junk cannot become port 0 as with atoi.
pub(crate) fn parse_port(text: &str) -> Result<u16, String> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` is not a port number"));
    }
    // All digits, so a parse failure can only be overflow.
    let n = text.parse::<i128>().unwrap_or(i128::MAX);
    check_port(n).map_err(|_| format!("port {text} is outside 1-65535"))
}

/// `7000`, `7000:udp`, `7000:TCP` (and `7000/udp` where `separators` allow it).
pub(crate) fn parse_step(text: &str, separators: &[char]) -> Result<Step, String> {
    let item = text.trim();
    if item.is_empty() {
        return Err("empty item in the sequence (a stray comma?)".to_string());
    }
    let (port, proto) = match item.split_once(separators) {
        None => (item, None),
        Some((port, proto)) => (port, Some(proto)),
    };
    let proto = match proto {
        None => Proto::Tcp,
        Some(p) => parse_proto(p, item)?,
    };
    Ok(Step { port: parse_port(port)?, proto })
}

fn parse_proto(text: &str, item: &str) -> Result<Proto, String> {
    // knockd 0.8 itself rejects anything but tcp/udp here; its `knock` client, by
    // contrast, sends tcp for any other suffix. A typo must not silently change protocol.
    match text.trim().to_ascii_lowercase().as_str() {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        _ => Err(format!("unknown protocol `{}` in `{item}` (use tcp or udp)", text.trim())),
    }
}

/// knockd's `Sequence` value: comma-separated steps, spaces allowed.
pub(crate) fn parse_sequence(text: &str) -> Result<Vec<Step>, String> {
    if text.trim().is_empty() {
        return Err("the sequence is empty".to_string());
    }
    let steps =
        text.split(',').map(|item| parse_step(item, SEQUENCE_SEPARATORS)).collect::<Result<Vec<_>, _>>()?;
    check_sequence_len(&steps)?;
    Ok(steps)
}

/// knockd keeps at most 32 steps in a fixed array.
pub(crate) fn check_sequence_len(steps: &[Step]) -> Result<(), String> {
    match steps.len() {
        0 => Err("the sequence is empty".to_string()),
        n if n > MAX_SEQUENCE_LEN => {
            Err(format!("the sequence has {n} steps; at most {MAX_SEQUENCE_LEN} are allowed"))
        }
        _ => Ok(()),
    }
}

/// knockd's `TCPFlags`: `syn,!ack`, case-insensitive, spaces allowed around items.
pub(crate) fn parse_tcp_flags(text: &str) -> Result<TcpFlags, String> {
    let mut flags = TcpFlags::default();
    for item in text.split(',') {
        let item = item.trim();
        let (negated, name) = match item.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, item),
        };
        let bit = flag_bit(name)?;
        if negated {
            flags.must_clear |= bit;
        } else {
            flags.must_set |= bit;
        }
        if flags.must_set & flags.must_clear != 0 {
            return Err(format!("tcp flag `{}` is both required and forbidden", name.to_ascii_lowercase()));
        }
    }
    Ok(flags)
}

fn flag_bit(name: &str) -> Result<u8, String> {
    if name.is_empty() {
        return Err("empty tcp flag (a stray comma?)".to_string());
    }
    let lower = name.to_ascii_lowercase();
    FLAG_NAMES
        .iter()
        .find(|(flag, _)| *flag == lower)
        .map(|(_, bit)| *bit)
        .ok_or_else(|| format!("unknown tcp flag `{name}` (valid: fin, syn, rst, psh, ack, urg)"))
}

/// The inverse of `parse_tcp_flags`, in header bit order; empty for "any packet".
pub(crate) fn format_tcp_flags(flags: TcpFlags) -> String {
    let mut items = Vec::new();
    for (name, bit) in FLAG_NAMES {
        if flags.must_set & bit != 0 {
            items.push(name.to_string());
        } else if flags.must_clear & bit != 0 {
            items.push(format!("!{name}"));
        }
    }
    items.join(",")
}

/// knockd's timeouts: a whole number of seconds and nothing else.
pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` is not a whole number of seconds"));
    }
    let secs = text.parse::<u128>().unwrap_or(u128::MAX);
    cap(secs.saturating_mul(1_000_000_000), text)
}

/// The daemon adds timeouts to `Instant`s, which panics on overflow; nothing sensible
/// waits longer than a year anyway.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn cap(nanos: u128, text: &str) -> Result<Duration, String> {
    if nanos > MAX_DURATION.as_nanos() {
        return Err(format!("`{text}` is too long (at most 365 days)"));
    }
    // Below the cap, so the seconds fit in a u64 and the remainder in a u32.
    Ok(Duration::new((nanos / 1_000_000_000) as u64, (nanos % 1_000_000_000) as u32))
}

/// A whole number of seconds from a YAML integer.
pub(crate) fn seconds_from_int(n: i128) -> Result<Duration, String> {
    if n < 0 {
        return Err(format!("duration {n} is negative"));
    }
    cap((n as u128).saturating_mul(1_000_000_000), &n.to_string())
}

/// Native durations: `30` (seconds), `5s`, `2m`, `1h`, `500ms`; `us` and `ns` exist so
/// that `to_yaml` can write any `Duration` back exactly.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let bad =
        || format!("`{text}` is not a duration (use seconds, or a whole number with ns, us, ms, s, m or h)");
    if number.is_empty() {
        return Err(bad());
    }
    let n = number.parse::<u128>().unwrap_or(u128::MAX);
    let nanos_per_unit: u128 = match unit.trim() {
        "" | "s" => 1_000_000_000,
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(bad()),
    };
    cap(n.saturating_mul(nanos_per_unit), text)
}

/// `Target`: knockd compared it textually with the packet's destination, so only a
/// literal address ever worked; a hostname is refused instead of never matching.
pub(crate) fn parse_target(text: &str) -> Result<IpAddr, String> {
    let text = text.trim();
    text.parse().map_err(|_| format!("`{text}` is not an IP address"))
}

/// A network interface name as Linux accepts it (see dev_valid_name()).
pub(crate) fn parse_interface(text: &str) -> Result<String, String> {
    let name = text.trim();
    let bad_char = name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace());
    if name.is_empty() || name.len() > 15 || bad_char || name == "." || name == ".." {
        return Err(format!("`{name}` is not a valid interface name"));
    }
    Ok(name.to_string())
}

/// `nftables`, `iptables` or `xdp`.
pub(crate) fn parse_backend(text: &str) -> Result<Backend, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "nftables" => Ok(Backend::Nftables),
        "iptables" => Ok(Backend::Iptables),
        "xdp" => Ok(Backend::Xdp),
        _ => Err(format!("unknown backend `{}` (use nftables, iptables or xdp)", text.trim())),
    }
}

pub(crate) const fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Nftables => "nftables",
        Backend::Iptables => "iptables",
        Backend::Xdp => "xdp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(port: u16) -> Step {
        Step { port, proto: Proto::Tcp }
    }

    #[test]
    fn steps() {
        assert_eq!(parse_step(" 7000 ", SEQUENCE_SEPARATORS), Ok(tcp(7000)));
        let udp = Step { port: 53, proto: Proto::Udp };
        assert_eq!(parse_step("53:UDP", SEQUENCE_SEPARATORS), Ok(udp));
        assert_eq!(parse_step("53 : udp", SEQUENCE_SEPARATORS), Ok(udp));
        assert_eq!(parse_step("53/udp", OPEN_PORT_SEPARATORS), Ok(udp));
        assert!(parse_step("53/udp", SEQUENCE_SEPARATORS).is_err());
        assert_eq!(
            parse_step("7000:sctp", SEQUENCE_SEPARATORS),
            Err("unknown protocol `sctp` in `7000:sctp` (use tcp or udp)".into())
        );
        assert_eq!(
            parse_step("7000:tcp:x", SEQUENCE_SEPARATORS),
            Err("unknown protocol `tcp:x` in `7000:tcp:x` (use tcp or udp)".into())
        );
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("65535"), Ok(65535));
        assert_eq!(parse_port("70000"), Err("port 70000 is outside 1-65535".into()));
        assert_eq!(parse_port("0"), Err("port 0 is outside 1-65535".into()));
        assert_eq!(
            parse_port("99999999999999999999999999999999999999999"),
            Err("port 99999999999999999999999999999999999999999 is outside 1-65535".into())
        );
        assert_eq!(parse_port("70a0"), Err("`70a0` is not a port number".into()));
        assert_eq!(parse_port("+80"), Err("`+80` is not a port number".into()));
        assert_eq!(check_port(-5), Err("port -5 is outside 1-65535".into()));
    }

    #[test]
    fn sequences() {
        assert_eq!(parse_sequence("7000, 8000 ,9000"), Ok(vec![tcp(7000), tcp(8000), tcp(9000)]));
        assert_eq!(parse_sequence("7000,"), Err("empty item in the sequence (a stray comma?)".into()));
        assert_eq!(parse_sequence("  "), Err("the sequence is empty".into()));
        let long = vec!["1"; 33].join(",");
        assert_eq!(parse_sequence(&long), Err("the sequence has 33 steps; at most 32 are allowed".into()));
        assert_eq!(parse_sequence(&vec!["1"; 32].join(",")).map(|s| s.len()), Ok(32));
    }

    #[test]
    fn flags() {
        let f = parse_tcp_flags("SYN, !ack").unwrap();
        assert_eq!(f, TcpFlags { must_set: tcp_flag::SYN, must_clear: tcp_flag::ACK });
        assert_eq!(format_tcp_flags(f), "syn,!ack");
        assert_eq!(parse_tcp_flags("syn,syn").unwrap().must_set, tcp_flag::SYN);
        assert_eq!(parse_tcp_flags("syn,!syn"), Err("tcp flag `syn` is both required and forbidden".into()));
        assert_eq!(
            parse_tcp_flags("syn,sin"),
            Err("unknown tcp flag `sin` (valid: fin, syn, rst, psh, ack, urg)".into())
        );
        assert_eq!(parse_tcp_flags(""), Err("empty tcp flag (a stray comma?)".into()));
        let all = parse_tcp_flags("fin,syn,rst,psh,ack,urg").unwrap();
        assert_eq!(all.must_set, 0x3f);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-5").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert_eq!(
            parse_duration("99999999999999999999h"),
            Err("`99999999999999999999h` is too long (at most 365 days)".into())
        );
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        assert!(parse_duration("8761h").is_err());
        assert_eq!(parse_seconds("31536000"), Ok(MAX_DURATION));
        assert!(parse_seconds("31536001").is_err());
        assert!(parse_seconds("99999999999999999999999999999999999999999").is_err());
        assert_eq!(seconds_from_int(5), Ok(Duration::from_secs(5)));
        assert_eq!(seconds_from_int(-1), Err("duration -1 is negative".into()));
        assert_eq!(parse_seconds(" 5 "), Ok(Duration::from_secs(5)));
        assert_eq!(parse_seconds("5s"), Err("`5s` is not a whole number of seconds".into()));
    }

    #[test]
    fn interfaces_and_backends() {
        assert_eq!(parse_interface(" eth0 "), Ok("eth0".to_string()));
        assert!(parse_interface("eth 0").is_err());
        assert!(parse_interface("averyveryverylongname").is_err());
        assert!(parse_interface("").is_err());
        assert_eq!(parse_backend("XDP"), Ok(Backend::Xdp));
        assert_eq!(parse_backend("pf"), Err("unknown backend `pf` (use nftables, iptables or xdp)".into()));
        assert_eq!(backend_name(Backend::Iptables), "iptables");
    }

    #[test]
    fn targets() {
        assert_eq!(parse_target("192.0.2.1").unwrap().to_string(), "192.0.2.1");
        assert_eq!(parse_target("2001:db8::1").unwrap().to_string(), "2001:db8::1");
        assert_eq!(parse_target("example.com"), Err("`example.com` is not an IP address".into()));
    }
}
