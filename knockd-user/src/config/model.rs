//! The parsed, validated configuration: what both file formats become.

use std::{fmt, net::IpAddr, path::PathBuf, time::Duration};

/// Transport protocol of a knock step or a protected port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    /// An ICMP (ICMPv6 for v6) echo request; a step's `port` is then the
    /// payload length (YAML `icmp:N`).
    Icmp,
}

impl Proto {
    /// The IP protocol number, as the kernel reports it.
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => knockd_common::PROTO_ICMP,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }
}

/// One knock: a destination port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Step {
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            Proto::Icmp => write!(f, "icmp:{}", self.port),
            _ => write!(f, "{}:{}", self.port, self.proto.as_str()),
        }
    }
}

/// TCP flag bits as they sit in byte 13 of the TCP header.
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// knockd's `TCPFlags`: named flags must be set, `!`-named ones must be clear,
/// the rest do not matter. The default (both zero) matches every TCP packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags {
    pub must_set: u8,
    pub must_clear: u8,
}

impl TcpFlags {
    pub const fn matches(self, flags: u8) -> bool {
        flags & self.must_set == self.must_set && flags & self.must_clear == 0
    }
}

/// Which firewall mechanism an `open` action uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Nftables,
    Iptables,
    Xdp,
}

/// A door's native firewall action (issue 4): open `ports` to the knocker for `duration`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenAction {
    pub ports: Vec<Step>,
    pub duration: Duration,
    /// `None` means "use `Options::default_backend`".
    pub backend: Option<Backend>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Door {
    pub name: String,
    /// The active sequence. For a one-time door this is the file's first live line.
    pub sequence: Vec<Step>,
    pub one_time_sequences: Option<PathBuf>,
    pub seq_timeout: Duration,
    pub tcp_flags: TcpFlags,
    pub target: Option<IpAddr>,
    pub start_command: Option<String>,
    pub start_command_6: Option<String>,
    pub cmd_timeout: Duration,
    pub stop_command: Option<String>,
    pub stop_command_6: Option<String>,
    pub open: Option<OpenAction>,
    /// `None` means "use `Options::stealth`".
    pub stealth: Option<bool>,
    /// Single-packet authorization (YAML only).
    pub spa: Option<super::spa::SpaConfig>,
    /// A sequence derived anew each period, instead of `sequence` (YAML only).
    pub dynamic: Option<super::dynamic::DynamicSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub interfaces: Vec<String>,
    pub log_file: Option<PathBuf>,
    pub use_syslog: bool,
    pub pid_file: Option<PathBuf>,
    /// Cap on knock sources tracked at once; the oldest are evicted beyond it.
    pub max_sources: usize,
    pub default_backend: Backend,
    pub stealth: bool,
    /// Where the XDP gate pins its program link and maps.
    pub bpffs_dir: PathBuf,
    /// Opens per second each door may make, sustained (YAML `open_rate`, default
    /// [`DEFAULT_OPEN_RATE`], at least 1). Bounds how fast completions, even from
    /// spoofed addresses, can add gate windows.
    pub open_rate: u32,
    /// Opens a door may make at once before `open_rate` applies (YAML `open_burst`,
    /// default [`DEFAULT_OPEN_BURST`], at least 1).
    pub open_burst: u32,
    /// Slots of the kernel's first-step table (YAML `first_step_slots`, a
    /// power of two, default [`DEFAULT_FIRST_STEP_SLOTS`]); fixed at start.
    pub first_step_slots: u32,
    /// New connections to other ports a knocking source may make before
    /// its attempts are dropped (YAML `sweep_limit`, default
    /// [`DEFAULT_SWEEP_LIMIT`]); `None` (`off`) is knockd's behaviour.
    pub sweep_limit: Option<u32>,
    /// Where state that must survive a restart lives (YAML `state_dir`,
    /// default [`DEFAULT_STATE_DIR`]): the SPA replay cache. Created 0700.
    pub state_dir: PathBuf,
    /// Where `GET /metrics` is served (YAML `metrics_listen`); `None`: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Where a config came from, so reloads and error messages can name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    KnockdConf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    pub format: Format,
    pub options: Options,
    /// In file order; names are unique.
    pub doors: Vec<Door>,
}

pub const DEFAULT_SEQ_TIMEOUT: Duration = Duration::from_secs(25);
pub const DEFAULT_CMD_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_SOURCES: usize = 65_536;
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/xknockd";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xknockd";
pub const MAX_SEQUENCE_LEN: usize = 32;
/// The longest `icmp:N` payload: what one frame holds at the usual MTU of
/// 1500 over IPv6 (1500 - 40 - 8), so a step fits unfragmented on both
/// families (IPv4 alone would allow 1472).
pub const MAX_ICMP_PAYLOAD: u16 = 1452;
pub const DEFAULT_OPEN_RATE: u32 = 10;
pub const DEFAULT_OPEN_BURST: u32 = 20;
/// 2^20 slots of 4 bytes: 4 MiB.
pub const DEFAULT_FIRST_STEP_SLOTS: u32 = 1 << 20;
pub const MIN_FIRST_STEP_SLOTS: u32 = 1 << 10;
pub const MAX_FIRST_STEP_SLOTS: u32 = 1 << 28;
pub const DEFAULT_SWEEP_LIMIT: u32 = 2;
