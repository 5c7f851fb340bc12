//! xknockd: the daemon. See `xknockd --help`.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::{Context, Result};
use clap::Parser;
use xknock::{
    admin,
    cli::{DaemonArgs, DEFAULT_PIDFILE},
    config::{
        self,
        model::{Config, DEFAULT_BPFFS_DIR},
    },
    daemon::{Daemon, RunOptions},
    gate::GateError,
    knocklog::{KnockLog, LogConfig},
    pidfile::PidFile,
    process::{daemonize, Readiness},
    status,
};

fn main() -> ExitCode {
    let args = DaemonArgs::parse();
    let mut logger = env_logger::Builder::new();
    logger.filter_level(args.log_level()).parse_env("RUST_LOG").format_timestamp_millis();
    xknock::journal::configure(&mut logger);
    logger.init();
    match real_main(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xknockd: {e:#}");
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(args: DaemonArgs) -> Result<ExitCode> {
    let loaded = config::load(&args.config);
    if args.flush {
        return Ok(flush(loaded.ok()));
    }
    if args.check {
        return Ok(match loaded {
            Ok(cfg) => {
                let n = cfg.doors.len();
                println!("{}: OK ({n} door{})", args.config.display(), if n == 1 { "" } else { "s" });
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        });
    }
    let cfg = loaded?;
    if args.convert {
        print!("{}", config::to_yaml(&cfg));
        return Ok(ExitCode::SUCCESS);
    }
    if args.status {
        return status(&args, &cfg);
    }
    if args.install_gate {
        let opts = run_options(&args, &cfg);
        for line in admin::install_gate(&cfg, &opts.interfaces, opts.xdp_mode)? {
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut opts = run_options(&args, &cfg);
    let log_file = args.logfile.clone().or_else(|| cfg.options.log_file.clone());
    let use_syslog = cfg.options.use_syslog;
    let echo = (log_file.is_none() && !use_syslog) || args.verbose || args.debug;
    let log_cfg = LogConfig { log_file, use_syslog, echo };
    let pid_path = pid_path(&args, &cfg);
    opts.status_socket = Some(status::socket_path(&pid_path));
    let ready = if args.daemon { Some(daemonize().context("detaching")?) } else { None };
    serve(cfg, opts, log_cfg, &pid_path, ready)?;
    Ok(ExitCode::SUCCESS)
}

/// Start-up, then the event loop. With `-d` the starting process learns the
/// start-up outcome through `ready`.
fn serve(
    cfg: Config,
    opts: RunOptions,
    log_cfg: LogConfig,
    pid_path: &std::path::Path,
    ready: Option<Readiness>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Inside the runtime: the daemon's command runner binds to it.
    match rt.block_on(async { start_up(cfg, opts, log_cfg, pid_path) }) {
        // The pid file stays locked until `run` returns; with -d it was taken
        // after detaching, so the lock belongs to the process that stays.
        Ok((_pid_file, daemon)) => {
            if let Some(r) = ready {
                r.ready();
            }
            rt.block_on(daemon.run())
        }
        Err(e) => {
            if let Some(r) = ready {
                r.failed(&format!("{e:#}"));
            }
            Err(e)
        }
    }
}

/// Pid file, log, XDP program and gates. A fatal error also goes to the log.
fn start_up(
    cfg: Config,
    opts: RunOptions,
    log_cfg: LogConfig,
    pid_path: &std::path::Path,
) -> Result<(PidFile, Daemon)> {
    let pid =
        PidFile::create(pid_path).with_context(|| format!("writing pid file {}", pid_path.display()))?;
    let log = Arc::new(KnockLog::open(log_cfg).context("opening the log file")?);
    let daemon =
        Daemon::start(cfg, opts, log.clone()).inspect_err(|e| log.notice(&format!("fatal: {e:#}")))?;
    Ok((pid, daemon))
}

fn pid_path(args: &DaemonArgs, cfg: &Config) -> PathBuf {
    args.pidfile.clone().or_else(|| cfg.options.pid_file.clone()).unwrap_or(DEFAULT_PIDFILE.into())
}

/// `--status [--json]`: the daemon's answer on the socket beside its pid
/// file, or kernel state when none answers.
fn status(args: &DaemonArgs, cfg: &Config) -> Result<ExitCode> {
    let socket = status::socket_path(&pid_path(args, cfg));
    let report = status::client::status(&socket, cfg)?;
    if report.origin == status::Origin::Kernel {
        eprintln!("xknockd: no daemon answered on {}: open windows from kernel state", socket.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", status::render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--flush` works without a readable config: it then uses the default
/// bpffs directory.
fn flush(cfg: Option<Config>) -> ExitCode {
    let bpffs_dir = cfg.map_or_else(|| PathBuf::from(DEFAULT_BPFFS_DIR), |c| c.options.bpffs_dir);
    let mut failed = false;
    for (backend, res) in admin::flush(&bpffs_dir) {
        match res {
            Ok(()) => println!("{backend:?}: flushed"),
            Err(GateError::Unavailable { why, .. }) => println!("{backend:?}: nothing to flush ({why})"),
            Err(e) => {
                eprintln!("{backend:?}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn run_options(args: &DaemonArgs, cfg: &Config) -> RunOptions {
    let interfaces = if !args.interfaces.is_empty() {
        args.interfaces.clone()
    } else if !cfg.options.interfaces.is_empty() {
        cfg.options.interfaces.clone()
    } else {
        vec!["eth0".to_string()] // knockd's default
    };
    RunOptions {
        interfaces,
        xdp_mode: args.xdp_mode,
        only_ipv4: args.only_ipv4,
        lookup: args.lookup,
        status_socket: None,
    }
}
