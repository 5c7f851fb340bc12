//! Writes xknockd(8), xknock(1) and both programs' bash, zsh and fish
//! completions into the directory given, from the clap definitions
//! themselves; `cargo xtask deb` runs it (xtask must not link knockd-user).
//!
//! xknockd(8) carries the README's "Configuration reference" section,
//! converted by [`md_roff`], so the man page cannot drift from it.

mod md_roff;

use std::{fs, io::Write, path::Path};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use xknock::{cli::DaemonArgs, client::KnockArgs};

const README: &str = include_str!("../../../README.md");

const DAEMON_DESCRIPTION: &str = "\
xknockd watches for knock sequences with an XDP program on the network interface and opens \
the door when one completes: knockd-style commands, or a native gate in nftables, iptables \
or XDP that fails closed. Existing knockd.conf files run unchanged; new policies are written \
in YAML.";

const DAEMON_EXTRA: &str = r#".SH SIGNALS
.TP
\fBSIGHUP\fR
Re-read the config atomically (a broken file is logged and the old config keeps running) and reopen the log file.
.TP
\fBSIGUSR1\fR
Log the kernel counters and tracker state.
.TP
\fBSIGINT\fR, \fBSIGTERM\fR
Run every pending stop command, end gate windows (protected ports stay closed), remove the pid file and exit.
.SH METRICS AND STATUS
With \fBmetrics_listen\fR set, \fBGET /metrics\fR on that address serves Prometheus metrics (names start with \fBxknockd_\fR).
\fBxknockd \-\-status\fR asks the running daemon over the Unix socket beside its pid file (\fB/run/xknockd/xknockd.sock\fR for the packaged unit) and falls back to kernel state when none answers; \fB\-\-json\fR prints JSON.
.SH FILES
.TP
\fB/etc/xknockd/xknockd.yaml\fR
The default configuration.
.TP
\fB/run/xknockd/xknockd.pid\fR, \fB/run/xknockd/xknockd.sock\fR
Pid file and status socket of the packaged unit.
.TP
\fB/sys/fs/bpf/xknockd\fR
Pins of the XDP gate.
.SH SEE ALSO
\fBxknock\fR(1), \fBknockd\fR(1), \fBnft\fR(8), \fBiptables\fR(8), \fBipset\fR(8)
"#;

const CLIENT_EXTRA: &str = r#".SH EXAMPLES
.TP
\fBxknock server.example 7000 8000:udp 9000\fR
Knock three ports, the second over UDP.
.TP
\fBxknock \-c /etc/xknockd/xknockd.yaml \-\-door ssh server.example\fR
Knock the sequence of a door from a config.
.SH SEE ALSO
\fBxknockd\fR(8), \fBknock\fR(1), \fBfwknop\fR(8)
"#;

fn main() -> Result<()> {
    let out = std::env::args().nth(1).context("usage: gen-docs OUTPUT_DIR")?;
    let out = Path::new(&out);
    fs::create_dir_all(out)?;
    let config = md_roff::section(README, "Configuration reference")
        .context("README has no configuration reference")?;
    let daemon = DaemonArgs::command().long_about(DAEMON_DESCRIPTION);
    let extra = format!(".SH CONFIGURATION\n{}{DAEMON_EXTRA}", md_roff::convert(config));
    man_page(daemon.clone(), "8", &extra, &out.join("xknockd.8"))?;
    man_page(KnockArgs::command(), "1", CLIENT_EXTRA, &out.join("xknock.1"))?;
    for (cmd, name) in [(daemon, "xknockd"), (KnockArgs::command(), "xknock")] {
        completions(cmd, name, out)?;
    }
    Ok(())
}

/// clap_mangen's sections, with `extra` before VERSION.
fn man_page(cmd: clap::Command, section: &str, extra: &str, path: &Path) -> Result<()> {
    let man = clap_mangen::Man::new(cmd)
        .section(section)
        .manual("xknock")
        .source(concat!("xknock ", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    page.write_all(extra.as_bytes())?;
    man.render_version_section(&mut page)?;
    fs::write(path, page).with_context(|| format!("writing {}", path.display()))
}

/// `NAME` (bash), `_NAME` (zsh) and `NAME.fish`.
fn completions(mut cmd: clap::Command, name: &str, out: &Path) -> Result<()> {
    for (shell, file) in [
        (Shell::Bash, name.to_string()),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, name, &mut buf);
        fs::write(out.join(&file), buf).with_context(|| format!("writing {file}"))?;
    }
    Ok(())
}
