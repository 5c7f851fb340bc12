//! Interop with Debian's fwknopd: it accepts what `xknock --spa` sends from
//! the client namespace, and refuses tampered, stale, misaddressed, wrongly
//! keyed and replayed packets, each with its own log line. fwknopd runs in
//! the server namespace with its own config files in a temp dir, on a plain
//! UDP socket (`-U`). Its UDP server is IPv4-only (AF_INET), so there is no
//! IPv6 case here; `xknock --spa` over IPv6 is covered by the client's unit tests.

use std::{net::UdpSocket, process::Command, time::Duration};

use xknock_tests::{
    daemon::{bin, Captured, TempDir},
    netns::{in_netns, NetPair, CLIENT_V4, SERVER_V4},
    privileged, wait_until,
};

const WAIT: Duration = Duration::from_secs(10);
/// fwknopd's first line for each datagram, before its verdict.
const DATAGRAM: &str = "udp_server: Got UDP datagram";
const ACCEPTED: &str = "[10.77.0.2] (stanza #1) --test mode enabled, skipping firewall manipulation.";

/// A fresh key pair, as `fwknop --key-gen` prints it (padded base64).
fn key_gen() -> (String, String) {
    let out = Command::new("fwknop").args(["--key-gen"]).output().expect("fwknop --key-gen");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .trim()
            .to_string()
    };
    (field("KEY_BASE64:"), field("HMAC_KEY_BASE64:"))
}

struct Fwknopd {
    log: Captured,
    keys: (String, String),
    _dir: TempDir,
    // Dropped last: fwknopd must die before its namespace goes.
    pair: NetPair,
}

impl Fwknopd {
    /// `test_mode`: `-t`, no firewall changes and no replay cache.
    fn start(test_mode: bool) -> Self {
        let pair = NetPair::new().expect("namespaces");
        let dir = TempDir::new();
        let keys = key_gen();
        let run = dir.path("run");
        std::fs::create_dir_all(&run).unwrap();
        let conf = format!(
            "ENABLE_UDP_SERVER Y;\nUDPSERV_PORT 62201;\nMAX_SPA_PACKET_AGE 120;\nFWKNOP_RUN_DIR {};\n",
            run.display()
        );
        let access = format!(
            "SOURCE ANY\nOPEN_PORTS tcp/22, udp/53\nREQUIRE_USERNAME alice\nREQUIRE_SOURCE_ADDRESS Y\n\
             FW_ACCESS_TIMEOUT 30\nKEY_BASE64 {}\nHMAC_KEY_BASE64 {}\n",
            keys.0, keys.1
        );
        for (name, text) in [("fwknopd.conf", conf), ("access.conf", access)] {
            std::fs::write(dir.path(name), text).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(name), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let mut cmd = pair.server_cmd("fwknopd");
        cmd.arg("-c").arg(dir.path("fwknopd.conf")).arg("-a").arg(dir.path("access.conf"));
        cmd.arg("-d").arg(run.join("digest.cache")).arg("-p").arg(run.join("fwknopd.pid"));
        cmd.args(["-f", "-U", "-v"]);
        if test_mode {
            cmd.arg("-t");
        }
        let mut log = Captured::spawn(cmd).expect("spawn fwknopd");
        log.wait_for("Kicking off UDP server", WAIT).unwrap();
        // The line comes before bind(): wait for the socket itself.
        let bound = wait_until(WAIT, || {
            let out = pair.in_ns(&pair.server, &["ss", "-Hlun", "sport = :62201"]).unwrap();
            !String::from_utf8_lossy(&out.stdout).trim().is_empty()
        });
        assert!(bound, "fwknopd never bound 62201: {:?}", log.output());
        Self { log, keys, _dir: dir, pair }
    }

    /// Runs `xknock --spa ... SERVER` in the client namespace with `keys`.
    fn xknock_with(&self, keys: (&str, &str), args: &[&str]) -> String {
        let mut cmd = self.pair.client_cmd(bin("xknock").to_str().unwrap());
        cmd.args(["--spa", "--key-base64-rijndael", keys.0, "--key-base64-hmac", keys.1]);
        cmd.args(args).arg(SERVER_V4);
        let out = cmd.output().expect("spawn xknock");
        assert!(out.status.success(), "xknock {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn xknock(&self, args: &[&str]) -> String {
        self.xknock_with((&self.keys.0, &self.keys.1), args)
    }

    /// Sends raw bytes from the client namespace, as one datagram.
    fn send_raw(&self, payload: Vec<u8>) {
        in_netns(&self.pair.client, move || {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.send_to(&payload, (SERVER_V4, 62201)).map(|_| ())
        })
        .unwrap()
        .unwrap();
    }

    /// Runs `send`, which must deliver one datagram, and waits for fwknopd
    /// to have handled it with one more `verdict` line than before.
    fn expect(&mut self, verdict: &str, send: impl FnOnce(&Self)) {
        let (seen, before) = (self.log.count(DATAGRAM), self.log.count(verdict));
        send(self);
        self.log.wait_for_n(DATAGRAM, seen + 1, WAIT).unwrap();
        self.log.wait_for_n(verdict, before + 1, WAIT).unwrap();
    }
}

/// The packet `xknock -T` printed.
fn printed_packet(stdout: &str) -> String {
    stdout.trim().rsplit(' ').next().unwrap().to_string()
}

#[test]
fn fwknopd_accepts_xknock_packets() {
    if !privileged("fwknopd_accepts_xknock_packets") {
        return;
    }
    let mut d = Fwknopd::start(true);
    d.expect(ACCEPTED, |d| {
        d.xknock(&["-A", "tcp/22", "-U", "alice"]);
    });
    assert_eq!(d.log.count(&format!("Message String: {CLIENT_V4},tcp/22")), 1, "allow-IP is our source");

    d.expect(ACCEPTED, |d| {
        d.xknock(&["-A", "tcp/22,udp/53", "-U", "alice", "-f", "45"]);
    });
    assert_eq!(d.log.count("Message Type: 3 (Client timeout access msg)"), 1);
    assert_eq!(d.log.count("Client Timeout: 45"), 1);

    // fwknopd opens whatever allow-IP the packet names (xknockd, requiring
    // the source address, would not).
    d.expect(ACCEPTED, |d| {
        d.xknock(&["-A", "tcp/22", "-U", "alice", "-a", "10.77.0.3"]);
    });
    assert_eq!(d.log.count("Message String: 10.77.0.3,tcp/22"), 1);
}

#[test]
fn fwknopd_refuses_bad_packets_each_with_its_reason() {
    if !privileged("fwknopd_refuses_bad_packets_each_with_its_reason") {
        return;
    }
    let mut d = Fwknopd::start(true);
    let hmac_fail =
        "Error creating fko context: Args contain invalid data: FKO_ERROR_INVALID_DATA_HMAC_COMPAREFAIL";

    // A flipped byte, kept inside the alphabet so only the HMAC can catch it.
    let mut packet = printed_packet(&d.xknock(&["-A", "tcp/22", "-U", "alice", "-T"])).into_bytes();
    packet[40] = if packet[40] == b'A' { b'B' } else { b'A' };
    d.expect(hmac_fail, |d| d.send_raw(packet));
    assert_eq!(d.log.count(DATAGRAM), 1, "-T sent nothing");

    let (other_key, other_hmac) = key_gen();
    let (key, hmac) = d.keys.clone();
    d.expect(hmac_fail, |d| {
        d.xknock_with((&key, &other_hmac), &["-A", "tcp/22", "-U", "alice"]);
    });
    // Right HMAC key, wrong passphrase: authentic, but it does not decrypt.
    d.expect("Error creating fko context", |d| {
        d.xknock_with((&other_key, &hmac), &["-A", "tcp/22", "-U", "alice"]);
    });
    assert_eq!(d.log.count(hmac_fail), 2, "the wrong passphrase got past the HMAC");

    d.expect("SPA data time difference is too great", |d| {
        d.xknock(&["-A", "tcp/22", "-U", "alice", "--time-offset-minus", "600"]);
    });
    d.expect("Got 0.0.0.0 when valid source IP was required.", |d| {
        d.xknock(&["-A", "tcp/22", "-U", "alice", "-s"]);
    });
    d.expect("Username in SPA data (bob) does not match required username: alice", |d| {
        d.xknock(&["-A", "tcp/22", "-U", "bob"]);
    });
    // fwknopd refuses a request with any port it does not open (xknockd
    // grants the intersection instead).
    d.expect("One or more requested protocol/ports was denied per access.conf", |d| {
        d.xknock(&["-A", "tcp/22,tcp/23", "-U", "alice"]);
    });
    assert_eq!(d.log.count("--test mode enabled"), 0, "{:#?}", d.log.output());
}

#[test]
fn fwknopd_opens_its_firewall_and_refuses_a_replay() {
    if !privileged("fwknopd_opens_its_firewall_and_refuses_a_replay") {
        return;
    }
    // Without -t fwknopd runs iptables, inside the server namespace only.
    let mut d = Fwknopd::start(false);
    let added = format!("Added access rule to FWKNOP_INPUT for {CLIENT_V4} -> 0.0.0.0/0 tcp/22, expires at ");
    let sent = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut packet = String::new();
    d.expect(&added, |d| {
        packet = printed_packet(&d.xknock(&["-A", "tcp/22", "-U", "alice", "-f", "10", "-v"]));
    });
    let line = d.log.output().into_iter().find(|l| l.contains(&added)).unwrap();
    let expires: u64 = line.rsplit(' ').next().unwrap().trim_end_matches('.').parse().unwrap();
    let window = expires.saturating_sub(sent);
    assert!((8..=13).contains(&window), "client timeout 10 s under a 30 s door: got {window} s");
    let rules = d.pair.in_ns(&d.pair.server, &["iptables", "-S", "FWKNOP_INPUT"]).unwrap();
    assert!(String::from_utf8_lossy(&rules.stdout).contains(CLIENT_V4), "no rule for the client");

    d.expect(&format!("Replay detected from source IP: {CLIENT_V4}"), |d| d.send_raw(packet.into_bytes()));
    assert_eq!(d.log.count(&added), 1);
}
