//! `xknock --spa`: one fwknop-compatible SPA datagram, as `fwknop --use-hmac`
//! sends it, so either fwknopd or xknockd can open a door for us.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use clap::Args;

use super::{resolve, KnockArgs, KnockError};
use crate::{
    config::model::Door,
    spa::{self, AccessSpec, SpaKeys, SpaMessage, SpaProto},
};

/// SPA mode's options; names follow the fwknop client where it has one.
#[derive(Clone, Debug, Default, Args)]
pub struct SpaArgs {
    /// Send one SPA packet (fwknop's format) instead of knocks.
    #[arg(long)]
    pub spa: bool,
    /// Ports to open: proto/port[,proto/port...] (fwknop -A). Default with
    /// -c/--door: the door's open ports.
    #[arg(short = 'A', long = "access", requires = "spa")]
    pub access: Option<String>,
    /// Address to open for (fwknop -a). Default: our source address towards
    /// the server, as the local routing picks it (behind NAT, give the public one).
    #[arg(short = 'a', long = "allow-ip", requires = "spa", conflicts_with = "source_ip")]
    pub allow_ip: Option<IpAddr>,
    /// Send allow-IP 0.0.0.0: "open for the packet's source" (fwknop -s).
    /// Refused by servers that require the source address.
    #[arg(short = 's', long = "source-ip", requires = "spa")]
    pub source_ip: bool,
    /// UDP port of the server (fwknop -p); default 62201.
    #[arg(short = 'p', long = "server-port", requires = "spa")]
    pub port: Option<u16>,
    /// KEY_BASE64, as `fwknop --key-gen` prints it.
    #[arg(long = "key-base64-rijndael", requires = "spa", conflicts_with = "key_rijndael")]
    pub key_b64: Option<String>,
    /// HMAC_KEY_BASE64, as `fwknop --key-gen` prints it.
    #[arg(long = "key-base64-hmac", requires = "spa", conflicts_with = "key_hmac")]
    pub hmac_b64: Option<String>,
    /// The Rijndael passphrase as plain text (fwknop KEY).
    #[arg(long = "key-rijndael", requires = "spa")]
    pub key_rijndael: Option<String>,
    /// The HMAC key as plain text (fwknop HMAC_KEY).
    #[arg(long = "key-hmac", requires = "spa")]
    pub key_hmac: Option<String>,
    /// User name in the packet (fwknop -U). Default: $LOGNAME, then $USER.
    #[arg(short = 'U', long = "user", requires = "spa")]
    pub user: Option<String>,
    /// Ask for a shorter opening, in seconds (fwknop -f); servers cap it.
    #[arg(short = 'f', long = "fw-timeout", requires = "spa")]
    pub timeout: Option<u32>,
    /// Date the packet this many seconds ahead (fwknop --time-offset-plus).
    #[arg(long = "time-offset-plus", requires = "spa", default_value_t = 0)]
    pub offset_plus: u32,
    /// Date the packet this many seconds back (fwknop --time-offset-minus).
    #[arg(long = "time-offset-minus", requires = "spa", default_value_t = 0)]
    pub offset_minus: u32,
    /// Build the packet and print it, but send nothing (fwknop -T).
    #[arg(short = 'T', long = "test", requires = "spa")]
    pub test: bool,
    /// Also write the packet, without a newline, to this file (fwknop -B).
    #[arg(short = 'B', long = "save-packet", requires = "spa")]
    pub save: Option<PathBuf>,
}

/// What a door's config supplies to SPA mode.
#[derive(Debug, Default)]
pub struct DoorSpa {
    pub access: Vec<AccessSpec>,
    pub keys: Option<SpaKeys>,
    pub port: Option<u16>,
}

/// A door's SPA defaults: its open ports, and the keys and port of its
/// `spa` block when it has one (flags still win).
pub fn door_spa(door: &Door) -> DoorSpa {
    let access = door.open.iter().flat_map(|o| &o.ports).map(|s| step_spec(s.port, s.proto)).collect();
    let spa = door.spa.as_ref();
    DoorSpa { access, keys: spa.map(|c| c.keys.clone()), port: spa.map(|c| c.port) }
}

fn step_spec(port: u16, proto: crate::config::model::Proto) -> AccessSpec {
    use crate::config::model::Proto;
    let proto = match proto {
        Proto::Tcp => SpaProto::Tcp,
        Proto::Udp => SpaProto::Udp,
        Proto::Icmp => unreachable!("protected ports are TCP or UDP"),
    };
    AccessSpec { proto, port }
}

/// Everything one packet needs, resolved.
#[derive(Debug)]
pub struct SpaPlan {
    pub keys: SpaKeys,
    pub server: SocketAddr,
    pub access: Vec<AccessSpec>,
    /// `None`: our own source address towards `server`.
    pub allow_ip: Option<IpAddr>,
    pub user: String,
    pub timeout: Option<u32>,
    pub timestamp: u32,
}

pub fn plan(args: &KnockArgs) -> Result<SpaPlan, KnockError> {
    let spa = &args.spa;
    if !args.ports.is_empty() {
        return Err(KnockError::Spa("knock ports make no sense with --spa; use -A proto/port".into()));
    }
    let door = match (&args.config, &args.door) {
        (Some(cfg), Some(name)) => Some(load_door(cfg, name)?),
        _ => None,
    };
    let door = door.as_ref().map(door_spa).unwrap_or_default();
    let access = match &spa.access {
        Some(list) => parse_access(list)?,
        None if !door.access.is_empty() => door.access,
        None => return Err(KnockError::Spa("name the ports to open with -A proto/port".into())),
    };
    let keys = match flag_keys(spa)? {
        Some(keys) => keys,
        None => door.keys.ok_or_else(|| {
            KnockError::Spa("no keys: give --key-base64-rijndael and --key-base64-hmac".into())
        })?,
    };
    let ip = resolve(&args.host, args.ipv4, args.ipv6)?;
    let port = spa.port.or(door.port).unwrap_or(spa::DEFAULT_PORT);
    Ok(SpaPlan {
        keys,
        server: SocketAddr::new(ip, port),
        access,
        allow_ip: if spa.source_ip { Some(Ipv4Addr::UNSPECIFIED.into()) } else { spa.allow_ip },
        user: spa.user.clone().unwrap_or_else(login_name),
        timeout: spa.timeout,
        timestamp: timestamp(spa.offset_plus, spa.offset_minus)?,
    })
}

fn load_door(cfg: &std::path::Path, name: &str) -> Result<Door, KnockError> {
    let cfg = crate::config::load(cfg)?;
    cfg.doors.into_iter().find(|d| d.name == name).ok_or_else(|| KnockError::NoDoor(name.to_string()))
}

/// `tcp/22,udp/53`.
pub fn parse_access(list: &str) -> Result<Vec<AccessSpec>, KnockError> {
    list.split(',')
        .map(|item| {
            let item = item.trim();
            item.to_ascii_lowercase()
                .parse()
                .map_err(|why| KnockError::Port(item.to_string(), String::from(why)))
        })
        .collect()
}

fn flag_keys(spa: &SpaArgs) -> Result<Option<SpaKeys>, KnockError> {
    let keys = match (&spa.key_b64, &spa.hmac_b64, &spa.key_rijndael, &spa.key_hmac) {
        (None, None, None, None) => return Ok(None),
        (Some(k), Some(h), None, None) => SpaKeys::from_base64(k, h),
        (None, Some(h), Some(k), None) => SpaKeys::from_base64(&spa::keys::to_base64(k.as_bytes()), h),
        (Some(k), None, None, Some(h)) => SpaKeys::from_base64(k, &spa::keys::to_base64(h.as_bytes())),
        (None, None, Some(k), Some(h)) => SpaKeys::new(k.clone().into_bytes(), h.clone().into_bytes()),
        _ => return Err(KnockError::Spa("give one encryption key and one HMAC key".into())),
    };
    keys.map(Some).map_err(|e| KnockError::Spa(e.to_string()))
}

/// fwknop's default user: the login name from the environment.
fn login_name() -> String {
    ["LOGNAME", "USER"].iter().find_map(|v| std::env::var(v).ok()).unwrap_or_else(|| "root".into())
}

fn timestamp(plus: u32, minus: u32) -> Result<u32, KnockError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let ts = (now + u64::from(plus)).saturating_sub(u64::from(minus));
    u32::try_from(ts)
        .ok()
        .filter(|&t| t <= i32::MAX as u32)
        .ok_or_else(|| KnockError::Spa(format!("timestamp {ts} is beyond what fwknop accepts")))
}

/// Builds the packet for `plan`, with our source address as the allow-IP
/// when none was given.
pub fn build(plan: &SpaPlan, local: IpAddr) -> Result<String, KnockError> {
    let rng = |e: getrandom::Error| KnockError::Spa(format!("no randomness from the OS: {e}"));
    let msg = SpaMessage {
        rand: spa::random_digits().map_err(rng)?,
        user: plan.user.clone(),
        timestamp: plan.timestamp,
        version: spa::PROTOCOL_VERSION.to_string(),
        kind: spa::MessageType::Access,
        allow_ip: plan.allow_ip.unwrap_or(local.to_canonical()),
        access: plan.access.clone(),
        client_timeout: plan.timeout,
    };
    let salt = spa::random_salt().map_err(rng)?;
    spa::encode(&plan.keys, &msg, &salt).map_err(|e| KnockError::Spa(e.to_string()))
}

pub fn run(args: &KnockArgs) -> Result<(), KnockError> {
    let plan = plan(args)?;
    let to = plan.server;
    let err = |e| KnockError::Send(to, e);
    let bind: SocketAddr =
        if to.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let sock = UdpSocket::bind(bind).map_err(err)?;
    // connect() picks the route, and with it the source address the server sees.
    sock.connect(to).map_err(err)?;
    let wire = build(&plan, sock.local_addr().map_err(err)?.ip())?;
    if let Some(path) = &args.spa.save {
        std::fs::write(path, &wire).map_err(|e| KnockError::Spa(format!("{}: {e}", path.display())))?;
    }
    if args.verbose || args.spa.test {
        println!("SPA packet for {to}: {wire}");
    }
    if !args.spa.test {
        sock.send(wire.as_bytes()).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "spa_tests.rs"]
mod tests;
