//! The xknock client: knock's interface, with real exit codes, and an SPA
//! mode ([`spa`]) that speaks fwknop's packet format.

pub mod dynamic;
pub mod icmp;
pub mod spa;

use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use clap::Parser;
use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

use crate::config::model::{Proto, Step};

#[derive(Clone, Debug, Parser)]
#[command(
    name = "xknock",
    version,
    about = "Send a port-knock sequence (knock-compatible), or one fwknop SPA packet (--spa)"
)]
pub struct KnockArgs {
    /// Make every hit UDP.
    #[arg(short = 'u', long = "udp")]
    pub udp: bool,
    /// Milliseconds to wait between hits.
    #[arg(short = 'd', long = "delay", default_value_t = 0)]
    pub delay_ms: u64,
    /// Use IPv4 only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Use IPv6 only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Say what is sent.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Take the sequence from a door of this config (with --door).
    #[arg(short = 'c', long = "config", requires = "door")]
    pub config: Option<PathBuf>,
    /// Door whose sequence to knock (with -c).
    #[arg(long, requires = "config")]
    pub door: Option<String>,
    /// Host to knock on (or to send the SPA packet to).
    pub host: String,
    /// Knocks: port[:tcp|udp] or icmp:LENGTH ...
    pub ports: Vec<String>,
    #[command(flatten)]
    pub spa: spa::SpaArgs,
    #[command(flatten)]
    pub dynamic: dynamic::DynamicArgs,
}

#[derive(Debug, Error)]
pub enum KnockError {
    #[error("cannot resolve host `{0}`")]
    Resolve(String),
    #[error("invalid knock `{0}`: {1}")]
    Port(String, String),
    #[error("no knocks given: name ports, or a door with -c FILE --door NAME")]
    NoPorts,
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("no door `{0}` in the config")]
    NoDoor(String),
    #[error("SPA: {0}")]
    Spa(String),
    #[error("dynamic sequence: {0}")]
    Dynamic(String),
    #[error("sending to {0}: {1}")]
    Send(SocketAddr, std::io::Error),
}

/// Parses knock's `port[:proto]`. Unlike knock, junk is an error, not port 0.
pub fn parse_knock(item: &str, force_udp: bool) -> Result<Step, KnockError> {
    let bad = |why: &str| KnockError::Port(item.to_string(), why.to_string());
    if item.trim().to_ascii_lowercase().starts_with("icmp:") {
        return crate::config::icmp::parse_yaml_step(item).map_err(|m| bad(&m));
    }
    let (port, proto) = match item.split_once(':') {
        Some((p, proto)) => (p, Some(proto)),
        None => (item, None),
    };
    let port: u32 = port.trim().parse().map_err(|_| bad("port is not a number"))?;
    if !(1..=65535).contains(&port) {
        return Err(bad("port must be 1-65535"));
    }
    let proto = match proto.map(|p| p.trim().to_ascii_lowercase()) {
        _ if force_udp => Proto::Udp,
        None => Proto::Tcp,
        Some(p) if p == "tcp" => Proto::Tcp,
        Some(p) if p == "udp" => Proto::Udp,
        Some(_) => return Err(bad("protocol must be tcp or udp")),
    };
    Ok(Step { port: port as u16, proto })
}

/// The knocks to send: from the command line, or from a config's door.
pub fn plan(args: &KnockArgs) -> Result<Vec<Step>, KnockError> {
    let steps: Vec<Step> = match (&args.config, &args.door) {
        (Some(cfg), Some(name)) => {
            let cfg = crate::config::load(cfg)?;
            let door =
                cfg.doors.iter().find(|d| &d.name == name).ok_or_else(|| KnockError::NoDoor(name.clone()))?;
            let sequence = match &door.dynamic {
                Some(spec) => dynamic::current_sequence(spec, args.dynamic.time_offset)?,
                None => door.sequence.clone(),
            };
            sequence
                .iter()
                .map(|s| Step {
                    proto: if args.udp && s.proto != Proto::Icmp { Proto::Udp } else { s.proto },
                    ..*s
                })
                .collect()
        }
        _ => match dynamic::spec_from_args(&args.dynamic, args.udp)? {
            Some(spec) => dynamic::current_sequence(&spec, args.dynamic.time_offset)?,
            None => args.ports.iter().map(|p| parse_knock(p, args.udp)).collect::<Result<_, _>>()?,
        },
    };
    if steps.is_empty() {
        return Err(KnockError::NoPorts);
    }
    Ok(steps)
}

/// Resolves `host`, honouring -4/-6; the first address wins, as with knock.
pub fn resolve(host: &str, v4: bool, v6: bool) -> Result<IpAddr, KnockError> {
    let addrs = (host, 0).to_socket_addrs().map_err(|_| KnockError::Resolve(host.to_string()))?;
    addrs
        .map(|a| a.ip())
        .find(|ip| (!v4 || ip.is_ipv4()) && (!v6 || ip.is_ipv6()))
        .ok_or_else(|| KnockError::Resolve(host.to_string()))
}

/// Sends one hit. TCP: a non-blocking connect closed at once, so exactly one
/// SYN leaves. UDP: a one-byte datagram.
pub fn hit(ip: IpAddr, step: Step) -> Result<(), KnockError> {
    let to = SocketAddr::new(ip, step.port);
    let err = |e| KnockError::Send(to, e);
    match step.proto {
        Proto::Tcp => {
            let s = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
            s.set_nonblocking(true).map_err(err)?;
            match s.connect(&to.into()) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
                // Refused or unreachable right away: the SYN still went out.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNREFUSED)) => Ok(()),
                Err(e) => Err(err(e)),
            }
        }
        Proto::Udp => {
            let bind: SocketAddr =
                if ip.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
            let s = UdpSocket::bind(bind).map_err(err)?;
            s.send_to(&[0u8], to).map(|_| ()).map_err(err)
        }
        Proto::Icmp => icmp::echo(ip, step.port).map_err(|e| KnockError::Send(SocketAddr::new(ip, 0), e)),
    }
}

pub fn run(args: &KnockArgs) -> Result<(), KnockError> {
    if args.spa.spa {
        return spa::run(args);
    }
    let steps = plan(args)?;
    let ip = resolve(&args.host, args.ipv4, args.ipv6)?;
    for (i, step) in steps.iter().enumerate() {
        if i > 0 && args.delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(args.delay_ms));
        }
        if args.verbose {
            println!("hitting {} {}:{}", step.proto.as_str(), ip, step.port);
        }
        hit(ip, *step)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knock_items_parse_like_knock_but_strictly() {
        assert_eq!(parse_knock("7000", false).unwrap(), Step { port: 7000, proto: Proto::Tcp });
        assert_eq!(parse_knock("8000:udp", false).unwrap(), Step { port: 8000, proto: Proto::Udp });
        assert_eq!(parse_knock("8000:UDP", false).unwrap().proto, Proto::Udp);
        assert_eq!(parse_knock("9000:tcp", true).unwrap().proto, Proto::Udp, "-u makes every hit UDP");
        for bad in ["0", "65536", "70000", "x", "", "80:icmp", "-1"] {
            assert!(matches!(parse_knock(bad, false), Err(KnockError::Port(..))), "{bad}");
        }
    }

    #[test]
    fn args_follow_knock() {
        let a = KnockArgs::try_parse_from(["xknock", "-u", "-d", "100", "-4", "-v", "host", "1", "2:tcp"])
            .unwrap();
        assert!(a.udp && a.ipv4 && a.verbose && !a.ipv6);
        assert_eq!((a.delay_ms, a.host.as_str(), a.ports.len()), (100, "host", 2));
        assert!(KnockArgs::try_parse_from(["xknock", "-4", "-6", "h", "1"]).is_err());
        assert!(KnockArgs::try_parse_from(["xknock", "--door", "x", "h"]).is_err(), "--door needs -c");
    }

    #[test]
    fn resolution_honours_families_and_fails_cleanly() {
        assert_eq!(resolve("127.0.0.1", false, false).unwrap(), "127.0.0.1".parse::<IpAddr>().unwrap());
        assert!(resolve("127.0.0.1", false, true).is_err());
        assert!(matches!(resolve("no-such-host.invalid", false, false), Err(KnockError::Resolve(_))));
    }

    #[test]
    fn udp_hit_arrives_on_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = rx.local_addr().unwrap().port();
        hit("127.0.0.1".parse().unwrap(), Step { port, proto: Proto::Udp }).unwrap();
        let mut buf = [9u8; 4];
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(rx.recv(&mut buf).unwrap(), 1);
        assert_eq!(buf[0], 0);
    }

    #[test]
    fn tcp_hit_reaches_a_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        hit("127.0.0.1".parse().unwrap(), Step { port, proto: Proto::Tcp }).unwrap();
        // On loopback the SYN completes a handshake into the backlog before
        // our close, so the listener sees exactly one connection.
        l.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let peer = loop {
            match l.accept() {
                Ok((_conn, peer)) => break peer,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("no connection arrived: {e}"),
            }
        };
        assert!(peer.ip().is_loopback());
    }
}
