//! Debian's `fwknop` client opens an xknockd door on every backend: closed
//! before, open to the client after (and to no one else), closed after
//! `duration`; replays (also after a restart), wrong keys, tampering, old
//! packets and a wrong allow-IP are refused, each with its log line. A
//! burst of spoofed junk ahead of a real packet costs it nothing, and keys
//! change by SIGHUP in every direction.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use xknock_tests::{
    frames::{Eth, V4Header, UDP},
    gate::{Rig, Unstarted, FILE, PORT, WAIT},
    netns::{in_netns, CLIENT2_V4, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
    rawsock::Link,
    spa::{HMAC, KEY},
};

/// Another 64-byte HMAC key, as `fwknop --key-gen` would print.
const OTHER_HMAC: &str =
    "Pz49PDs6OTg3NjU0MzIxMC8uLSwrKikoJyYlJCMiISAfHh0cGxoZGBcWFRQTEhEQDw4NDAsKCQgHBgUEAwIBAA==";
const SPA_PORT: u16 = 62201;
const DURATION: u64 = 3;
/// Spoofed junk datagrams in one burst: ten times what the SPA ring held
/// before it grew (1150 records), within what it holds now (18 K).
const JUNK: u32 = 12_000;

/// The rig's config plus an `spa` block on its door (the door is the last
/// block, so appending puts the keys inside it).
fn prepare(unstarted: Unstarted, require_source: bool) -> Rig {
    let path = unstarted.config_path();
    let mut yaml = std::fs::read_to_string(&path).unwrap();
    yaml.push_str(&format!(
        "    spa:\n      port: {SPA_PORT}\n      key_base64: \"{KEY}\"\n      hmac_key_base64: \"{HMAC}\"\n      \
         require_source_address: {require_source}\n      users: [alice]\n"
    ));
    std::fs::write(&path, yaml).unwrap();
    unstarted.start()
}

fn rig(test: &str, backend: &str, require_source: bool) -> Option<Rig> {
    let opts = ["state_dir: {DIR}/state"];
    let unstarted = if backend == "xdp" {
        Rig::prepare_pinned(test, backend, DURATION, &opts)?
    } else {
        Rig::prepare(test, backend, DURATION, &opts)?
    };
    Some(prepare(unstarted, require_source))
}

/// `fwknop` in the client namespace with the door's keys (or `hmac`),
/// asking for the protected port; `extra` adds or overrides flags.
fn fwknop(rig: &Rig, server: &str, hmac: &str, extra: &[&str]) -> Output {
    let access = format!("tcp/{PORT}");
    let out = rig
        .pair()
        .client_cmd("fwknop")
        .args(["--no-rc-file", "--no-save-args", "-A", &access, "-D", server])
        .args(["-p", &SPA_PORT.to_string(), "--use-hmac", "--key-base64-rijndael", KEY])
        .args(["--key-base64-hmac", hmac, "-U", "alice"])
        .args(extra)
        .output()
        .expect("spawn fwknop");
    assert!(out.status.success(), "fwknop {extra:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The packet `fwknop -B` saved, without its trailing newline.
fn saved(path: &Path) -> Vec<u8> {
    let mut b = std::fs::read(path).unwrap();
    while b.last() == Some(&b'\n') {
        b.pop();
    }
    b
}

/// Sends `payload` as one datagram from `src` in the client namespace.
fn send_raw(rig: &Rig, src: &str, server: &str, payload: Vec<u8>) {
    let from = SocketAddr::new(src.parse().unwrap(), 0);
    let to = SocketAddr::new(server.parse().unwrap(), SPA_PORT);
    in_netns(&rig.pair().client, move || UdpSocket::bind(from)?.send_to(&payload, to).map(|_| ()))
        .unwrap()
        .unwrap();
}

/// `JUNK` datagrams of 200 base64 chars to the SPA port, each from its own
/// spoofed source in 11.0.0.0/8, as fast as AF_PACKET takes them (a full
/// queue is retried, so each one is sent).
fn junk_burst(rig: &Rig, server: Ipv4Addr) {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let p = rig.pair();
    let link = Link::open(&p.client, &p.client_if).unwrap();
    let eth = Eth {
        src: p.mac(&p.client, &p.client_if).unwrap(),
        dst: p.mac(&p.server, &p.server_if).unwrap(),
        vlans: &[],
    };
    let payload: Vec<u8> = (0..200).map(|i| B64[i * 7 % 64]).collect();
    // A zero UDP checksum means "none" over IPv4.
    let udp =
        [&40000u16.to_be_bytes()[..], &SPA_PORT.to_be_bytes(), &208u16.to_be_bytes(), &[0, 0], &payload]
            .concat();
    for i in 0..JUNK {
        let src = Ipv4Addr::from(0x0b00_0000 | i);
        let frame = [eth.header(0x0800), V4Header::new(src, server, UDP).packet(&udp)].concat();
        while link.send(&frame).is_err() {
            std::thread::yield_now();
        }
    }
}

/// Waits for one more `needle` line than there were before `act`.
fn expect_line(rig: &mut Rig, needle: &str, act: impl FnOnce(&Rig)) {
    let before = rig.srv.daemon.count(needle);
    act(rig);
    rig.srv.daemon.wait_for_n(needle, before + 1, WAIT).unwrap_or_else(|e| {
        panic!("no `{needle}` line: {e}\n{}", rig.srv.daemon.output().join("\n"));
    });
}

fn interop(test: &str, backend: &str) {
    let Some(mut rig) = rig(test, backend, true) else { return };
    let (server, client) = (SERVER_V4, CLIENT_V4);
    assert!(!rig.connects(Some(client), server), "closed before any packet");
    let probe = rig.srv.dir.path("probe");
    let accepted = format!("{client}: ssh: SPA accepted (user alice, tcp/{PORT})");
    expect_line(&mut rig, &accepted, |r| {
        fwknop(r, server, HMAC, &["-a", client, "-B", probe.to_str().unwrap()]);
    });
    let opened = Instant::now();
    assert!(rig.connects(Some(client), server), "open to the client");
    assert!(!rig.connects(Some(CLIENT2_V4), server), "closed to another address");
    let closed = rig.time_until_closed(Some(client), server, opened, WAIT);
    assert!(closed >= Duration::from_secs(DURATION) - Duration::from_millis(500), "closed early: {closed:?}");

    // The same packet again: refused, and nothing opens.
    let packet = saved(&probe);
    expect_line(&mut rig, &format!("{client}: ssh: SPA refused: replay"), |r| {
        send_raw(r, client, server, packet.clone())
    });
    assert!(!rig.connects(Some(client), server));
    // Refusals of every kind, each with its own line.
    expect_line(&mut rig, &format!("{client}: ssh: SPA refused: bad HMAC"), |r| {
        fwknop(r, server, OTHER_HMAC, &["-a", client]);
    });
    expect_line(&mut rig, &format!("{client}: ssh: SPA refused: too old"), |r| {
        fwknop(r, server, HMAC, &["-a", client, "--time-offset-minus", "10m"]);
    });
    expect_line(&mut rig, &format!("{client}: ssh: SPA refused: source mismatch"), |r| {
        fwknop(r, server, HMAC, &["-a", CLIENT2_V4]);
    });
    assert!(!rig.connects(Some(client), server) && !rig.connects(Some(CLIENT2_V4), server));

    // After a restart the replay cache still knows the packet.
    rig.stop(libc::SIGTERM);
    rig.restart(Duration::from_secs(20));
    expect_line(&mut rig, &format!("{client}: ssh: SPA refused: replay"), |r| {
        send_raw(r, client, server, packet.clone())
    });
    assert!(!rig.connects(Some(client), server));
    // A flipped byte (still base64) fails the HMAC: tampering.
    let fresh = rig.srv.dir.path("fresh");
    fwknop(&rig, server, HMAC, &["-a", client, "-T", "-B", fresh.to_str().unwrap()]);
    let mut tampered = saved(&fresh);
    tampered[60] = if tampered[60] == b'A' { b'B' } else { b'A' };
    expect_line(&mut rig, &format!("{client}: ssh: SPA refused: bad HMAC"), |r| {
        send_raw(r, client, server, tampered)
    });
    assert!(!rig.connects(Some(client), server));
    // And a fresh packet from the client still opens after all that.
    expect_line(&mut rig, &accepted, |r| {
        fwknop(r, server, HMAC, &["-a", client]);
    });
    assert!(rig.connects(Some(client), server));
}

/// Debian's fwknop 2.6.10 cannot send over IPv6 (getaddrinfo is asked for
/// IPv4 only) and its allow-IP is IPv4 only. So the client builds the packet
/// with `-s` (allow-IP 0.0.0.0, "my source"; a door takes it only with
/// `require_source_address: false`) and `-T -B`, and we send its bytes.
fn interop_v6(test: &str, backend: &str) {
    let Some(mut rig) = rig(test, backend, false) else { return };
    let (server, client) = (SERVER_V6, CLIENT_V6);
    assert!(!rig.connects(Some(client), server));
    let file = rig.srv.dir.path("v6");
    fwknop(&rig, SERVER_V4, HMAC, &["-s", "-T", "-B", file.to_str().unwrap()]);
    let packet = saved(&file);
    let accepted = format!("{client}: ssh: SPA accepted (user alice, tcp/{PORT})");
    expect_line(&mut rig, &accepted, |r| send_raw(r, client, server, packet));
    assert!(rig.connects(Some(client), server), "open to the client over IPv6");
    assert!(!rig.connects(Some(xknock_tests::netns::CLIENT2_V6), server));
    assert!(!rig.connects(Some(CLIENT_V4), SERVER_V4), "the v4 address was not opened");
}

#[test]
fn fwknop_opens_nftables() {
    interop("spa_nftables", "nftables");
}

#[test]
fn fwknop_opens_iptables() {
    interop("spa_iptables", "iptables");
}

#[test]
fn fwknop_opens_xdp() {
    interop("spa_xdp", "xdp");
}

/// The junk is ahead of the real packet in the ring; the screener judges
/// all of it, loses none, and the real packet still opens the door.
#[test]
fn fwknop_opens_behind_a_burst_of_spoofed_junk() {
    let Some(mut rig) = rig("spa_junk", "nftables", true) else { return };
    let (server, client) = (SERVER_V4, CLIENT_V4);
    let accepted = format!("{client}: ssh: SPA accepted (user alice, tcp/{PORT})");
    expect_line(&mut rig, &accepted, |r| {
        junk_burst(r, server.parse().unwrap());
        fwknop(r, server, HMAC, &["-a", client]);
    });
    assert!(rig.connects(Some(client), server), "open to the client");
    let captured = rig.srv.stat("spa_captured");
    assert_eq!(rig.srv.stat("spa_ring_full"), 0, "no datagram lost to a full ring");
    assert!(captured > u64::from(JUNK), "{captured} captured: the burst did not arrive");
    assert_eq!(rig.srv.stat("spa_refused[bad_HMAC]"), captured - 1, "every junk datagram was judged");
}

/// Rewrites the config with `edit` and sends SIGHUP; returns once the loop
/// has logged `done` for this reload.
fn reload(rig: &mut Rig, edit: impl FnOnce(String) -> String, done: &str) {
    let path = rig.srv.config_path(FILE);
    std::fs::write(&path, edit(std::fs::read_to_string(&path).unwrap())).unwrap();
    let before = rig.srv.daemon.count(done);
    rig.srv.signal(libc::SIGHUP);
    rig.srv.daemon.wait_for_n(done, before + 1, WAIT).unwrap();
}

/// Rewrites and reloads, then waits until the loop has applied it: the
/// status query is served only after the reload it queued behind.
fn reload_applied(rig: &mut Rig, edit: impl FnOnce(String) -> String) {
    reload(rig, edit, "re-reading config file");
    rig.admin("--status");
}

/// A rotated HMAC key refuses the old key's packets at once and takes the
/// new key's; a broken key keeps the running one; dropping the `spa` block
/// stops the capture (the door stays protected); restoring it still knows
/// the packets accepted before.
#[test]
fn spa_keys_change_by_sighup_in_every_direction() {
    let Some(mut rig) = rig("spa_reload", "nftables", true) else { return };
    let (server, client) = (SERVER_V4, CLIENT_V4);
    let accepted = format!("{client}: ssh: SPA accepted (user alice, tcp/{PORT})");
    let bad_hmac = format!("{client}: ssh: SPA refused: bad HMAC");
    reload_applied(&mut rig, |c| c.replace(HMAC, OTHER_HMAC));
    expect_line(&mut rig, &bad_hmac, |r| {
        fwknop(r, server, HMAC, &["-a", client]);
    });
    let kept = rig.srv.dir.path("kept");
    expect_line(&mut rig, &accepted, |r| {
        fwknop(r, server, OTHER_HMAC, &["-a", client, "-B", kept.to_str().unwrap()]);
    });

    reload(&mut rig, |c| c.replace(KEY, "not base64!"), "config error, keeping the running config");
    expect_line(&mut rig, &accepted, |r| {
        fwknop(r, server, OTHER_HMAC, &["-a", client]);
    });

    let with_spa = std::fs::read_to_string(rig.srv.config_path(FILE)).unwrap().replace("not base64!", KEY);
    reload_applied(&mut rig, |c| c[..c.find("    spa:\n").unwrap()].to_string());
    let captured = rig.srv.stat("spa_captured");
    fwknop(&rig, server, OTHER_HMAC, &["-a", CLIENT2_V4]);
    send_raw(&rig, client, server, saved(&kept));
    assert!(!rig.connects(Some(CLIENT2_V4), server), "the door is still protected");
    assert_eq!(rig.srv.stat("spa_captured"), captured, "no SPA port is captured any more");

    reload_applied(&mut rig, |_| with_spa);
    expect_line(&mut rig, &format!("{client}: ssh: SPA refused: replay"), |r| {
        send_raw(r, client, server, saved(&kept))
    });
    expect_line(&mut rig, &accepted, |r| {
        fwknop(r, server, OTHER_HMAC, &["-a", client]);
    });
    assert!(rig.connects(Some(client), server));
}

#[test]
fn fwknop_opens_nftables_v6() {
    interop_v6("spa_nftables_v6", "nftables");
}

#[test]
fn fwknop_opens_iptables_v6() {
    interop_v6("spa_iptables_v6", "iptables");
}

#[test]
fn fwknop_opens_xdp_v6() {
    interop_v6("spa_xdp_v6", "xdp");
}
