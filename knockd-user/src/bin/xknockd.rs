//! xknockd: the daemon. See `xknockd --help`.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::{Context, Result};
use clap::Parser;
use xknock::{
    cli::{DaemonArgs, DEFAULT_PIDFILE},
    config::{self, model::Config},
    daemon::{Daemon, RunOptions},
    knocklog::{KnockLog, LogConfig},
    process::{daemonize, PidFile},
};

fn main() -> ExitCode {
    let args = DaemonArgs::parse();
    env_logger::Builder::new()
        .filter_level(args.log_level())
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();
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
    if args.check {
        return Ok(match loaded {
            Ok(cfg) => {
                println!("{}: OK ({} doors)", args.config.display(), cfg.doors.len());
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
    let opts = run_options(&args, &cfg);
    let log_cfg = LogConfig {
        log_file: args
            .logfile
            .clone()
            .or_else(|| cfg.options.log_file.clone()),
        use_syslog: cfg.options.use_syslog,
    };
    let pid_path: PathBuf = args
        .pidfile
        .clone()
        .or_else(|| cfg.options.pid_file.clone())
        .unwrap_or(DEFAULT_PIDFILE.into());
    if args.daemon {
        daemonize().context("detaching")?;
    }
    let _pid = PidFile::create(&pid_path)
        .with_context(|| format!("writing pid file {}", pid_path.display()))?;
    let log = Arc::new(KnockLog::open(log_cfg).context("opening the log file")?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async { Daemon::start(cfg, opts, log)?.run().await })?;
    Ok(ExitCode::SUCCESS)
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
    }
}
