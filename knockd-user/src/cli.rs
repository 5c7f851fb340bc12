//! xknockd's command line: knockd's flags, plus ours.

use std::path::PathBuf;

use clap::Parser;

use crate::bpf::AttachMode;

pub const DEFAULT_CONFIG: &str = "/etc/xknockd/xknockd.yaml";
pub const DEFAULT_PIDFILE: &str = "/run/xknockd.pid";

#[derive(Clone, Debug, Parser)]
#[command(
    name = "xknockd",
    version,
    about = "XDP port-knock daemon; reads YAML policies and knockd.conf files unchanged"
)]
pub struct DaemonArgs {
    /// Config file: YAML or knockd.conf (detected by content).
    #[arg(short = 'c', long = "config", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Interface to listen on (repeatable); overrides the config's.
    #[arg(short = 'i', long = "interface", visible_alias = "iface")]
    pub interfaces: Vec<String>,
    /// Detach and run in the background.
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,
    /// Debug output (most detail).
    #[arg(short = 'D', long = "debug")]
    pub debug: bool,
    /// Verbose output.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Look up hostnames of knockers for the log (blocks while resolving).
    #[arg(short = 'l', long = "lookup")]
    pub lookup: bool,
    /// Pid file (default: the config's, else /run/xknockd.pid).
    #[arg(short = 'p', long = "pidfile")]
    pub pidfile: Option<PathBuf>,
    /// Log file (overrides the config's log_file).
    #[arg(short = 'g', long = "logfile")]
    pub logfile: Option<PathBuf>,
    /// Ignore IPv6 knocks.
    #[arg(short = '4', long = "only-ip-v4")]
    pub only_ipv4: bool,
    /// Validate the config and exit 0 (valid) or 1.
    #[arg(long)]
    pub check: bool,
    /// Print the config as native YAML and exit.
    #[arg(long)]
    pub convert: bool,
    /// Ask the running daemon (on the socket beside its pid file) for its
    /// doors, attempts in progress, open windows and per-door counters; with
    /// no daemon, list open gate windows from kernel state.
    #[arg(long, conflicts_with_all = ["check", "convert", "flush"])]
    pub status: bool,
    /// With --status: print JSON.
    #[arg(long, requires = "status")]
    pub json: bool,
    /// Remove every firewall table, chain, set, pin and map xknockd owns, then exit.
    #[arg(long, conflicts_with_all = ["check", "convert", "daemon"])]
    pub flush: bool,
    /// Put every backend's gate in place from the config (protected ports
    /// closed, no window open), leave it there for xknockd to adopt, and
    /// exit: for a boot unit ordered before the network comes up.
    #[arg(long, conflicts_with_all = ["check", "convert", "status", "flush", "daemon"])]
    pub install_gate: bool,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub xdp_mode: AttachMode,
}

impl DaemonArgs {
    pub fn log_level(&self) -> log::LevelFilter {
        if self.debug {
            log::LevelFilter::Trace
        } else if self.verbose {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Info
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knockd_flags_parse() {
        let a = DaemonArgs::try_parse_from([
            "xknockd",
            "-c",
            "/etc/knockd.conf",
            "-i",
            "eth0",
            "--iface",
            "eth1",
            "-d",
            "-D",
            "-v",
            "-l",
            "-p",
            "/tmp/p",
            "-g",
            "/tmp/l",
            "-4",
        ])
        .unwrap();
        assert_eq!(a.config, PathBuf::from("/etc/knockd.conf"));
        assert_eq!(a.interfaces, ["eth0", "eth1"]);
        assert!(a.daemon && a.debug && a.verbose && a.lookup && a.only_ipv4);
        assert_eq!(a.pidfile.as_deref(), Some(std::path::Path::new("/tmp/p")));
        assert_eq!(a.logfile.as_deref(), Some(std::path::Path::new("/tmp/l")));
        assert_eq!(a.log_level(), log::LevelFilter::Trace);
    }

    #[test]
    fn defaults_and_long_forms() {
        let a = DaemonArgs::try_parse_from(["xknockd", "--interface", "eth2", "--xdp-mode", "skb"]).unwrap();
        assert_eq!(a.config, PathBuf::from(DEFAULT_CONFIG));
        assert_eq!(a.xdp_mode, AttachMode::Skb);
        assert!(!a.check && !a.convert);
        let g =
            DaemonArgs::try_parse_from(["xknockd", "--install-gate", "-c", "/x.yaml", "-i", "eth1"]).unwrap();
        assert!(g.install_gate && !g.daemon);
        assert!(DaemonArgs::try_parse_from(["xknockd", "--install-gate", "--flush"]).is_err());
        let v = DaemonArgs::try_parse_from(["xknockd", "-V"]).unwrap_err();
        assert_eq!(v.kind(), clap::error::ErrorKind::DisplayVersion);
    }
}
