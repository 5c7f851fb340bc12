//! `cargo xtask demo`: the product in under a minute, in two throwaway
//! namespaces. The host's interfaces and firewall are never touched.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use xknock_tests::{
    daemon::Captured,
    netns::{connect_from, echoes, EchoServer, NetPair, SERVER_V4},
    wait_until,
};

use crate::workspace_root;

pub fn run(bin_dir: &Path) -> Result<()> {
    if !crate::is_root() {
        bail!("the demo creates network namespaces: run it as root");
    }
    let pair = NetPair::new()?;
    say(&format!("created namespaces {} (server) and {} (client), joined by veth", pair.server, pair.client));
    let config = workspace_root().join("configs/demo.yaml");
    let pid = std::env::temp_dir().join(format!("xknockd-demo-{}.pid", std::process::id()));
    let mut daemon_cmd = pair.server_cmd(bin_dir.join("xknockd").to_str().context("utf-8 path")?);
    daemon_cmd.arg("-c").arg(&config).args(["-i", &pair.server_if, "-p"]).arg(&pid);
    say(&format!("starting xknockd on {} with {}", pair.server_if, config.display()));
    let mut daemon = Captured::spawn(daemon_cmd)?;
    daemon.wait_for("starting up, listening on", Duration::from_secs(20))?;

    let _echo = EchoServer::start(&pair.server, "0.0.0.0:2222")?;
    say("an echo server listens on port 2222 in the server namespace; the door protects it");
    let gate = || -> Result<bool> {
        let dst = format!("{SERVER_V4}:2222").parse()?;
        Ok(match connect_from(&pair.client, None, dst, Duration::from_millis(700))? {
            Ok(mut conn) => echoes(&mut conn, b"ping"),
            Err(_) => false,
        })
    };
    if gate()? {
        bail!("port 2222 answered before any knock: the gate is not closed");
    }
    say("before the knock: connect to 10.77.0.1:2222 fails (closed)");

    say(&format!("knocking from the client: xknock -v {SERVER_V4} 7000 8000:udp 9000"));
    let knock = Command::new("ip")
        .args(["netns", "exec", &pair.client])
        .arg(bin_dir.join("xknock"))
        .args(["-v", SERVER_V4, "7000", "8000:udp", "9000"])
        .output()?;
    print!("{}", String::from_utf8_lossy(&knock.stdout));
    if !knock.status.success() {
        bail!("xknock failed: {}", String::from_utf8_lossy(&knock.stderr));
    }
    let result = daemon
        .wait_for("OPEN SESAME", Duration::from_secs(10))
        .and_then(|()| daemon.wait_for("door opened for", Duration::from_secs(10)))
        .and_then(|()| {
            if !gate()? {
                bail!("port 2222 still closed after the knock");
            }
            say("after the knock: connect works and the echo server answers (open)");
            if !wait_until(Duration::from_secs(20), || gate().is_ok_and(|open| !open)) {
                bail!("port 2222 still open 20 s after a 5 s window");
            }
            say("after the 5 s window: connect fails again (closed)");
            daemon.wait_for("door closed for", Duration::from_secs(15))
        });
    daemon.child.signal_and_wait(libc::SIGTERM, Duration::from_secs(15));
    say("what xknockd logged:");
    for line in daemon.output() {
        println!("    {line}");
    }
    result.context("the demo knock was not recognised and acted on")?;
    say("the knock was recognised (OPEN SESAME), the gate opened port 2222 and closed it again,");
    say("and the start and stop commands ran");
    drop(pair);
    say("namespaces removed");
    Ok(())
}

fn say(msg: &str) {
    println!("demo: {msg}");
}
