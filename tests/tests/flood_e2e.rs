//! Issue 9, items 1 and 2, end to end: a spoofed first-step flood, a port
//! sweep through a sequence, and a knock beside a busy connection. Frames
//! are sent with AF_PACKET from the client namespace; every check is on
//! opens, never on speed.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use xknock_tests::{
    daemon::Server,
    netns::{connect_from, EchoServer, CLIENT_V4, SERVER_V4},
    privileged,
    rawsock::{syn_frame, Link},
    wait_until,
};

const WAIT: Duration = Duration::from_secs(10);
/// How long the flood lasts, and the most frames it sends.
const FLOOD_FOR: Duration = Duration::from_secs(4);
const FLOOD_MAX: u64 = 2_000_000;
/// Real sequences knocked during the flood.
const SEQUENCES: usize = 5;

fn config(options: &str) -> String {
    format!(
        r#"
options:
  open_rate: 100
{options}
doors:
  main:
    sequence: ["7000", "8000:udp", "9000"]
    seq_timeout: 5
    tcp_flags: syn
  swept:
    sequence: ["7100", "7200", "7300"]
    seq_timeout: 5
    tcp_flags: syn
"#
    )
}

fn start(options: &str) -> Server {
    Server::start("xknockd.yaml", &config(options), &[]).unwrap()
}

fn server_ip() -> IpAddr {
    SERVER_V4.parse().unwrap()
}

/// The AF_PACKET link on the client side, with the MACs a frame needs.
fn link(srv: &Server) -> (Link, ([u8; 6], [u8; 6])) {
    let p = &srv.pair;
    let link = Link::open(&p.client, &p.client_if).unwrap();
    let macs = (p.mac(&p.client, &p.client_if).unwrap(), p.mac(&p.server, &p.server_if).unwrap());
    (link, macs)
}

/// Spoofed SYNs to the first knock port from sources all over 11.0.0.0/8
/// for `FLOOD_FOR` or `FLOOD_MAX` frames, counted in `sent`.
fn flood(link: Link, macs: ([u8; 6], [u8; 6]), sent: Arc<AtomicU64>) {
    let t0 = Instant::now();
    let mut x: u32 = 0x2545_f491;
    while t0.elapsed() < FLOOD_FOR && sent.load(Ordering::Relaxed) < FLOOD_MAX {
        for _ in 0..256 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let src = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 | (x & 0x00ff_ffff)));
            // A full send buffer only slows the flood down.
            let _ = link.send(&syn_frame(macs, src, server_ip(), (x >> 16) as u16 | 1024, 7000));
        }
        sent.fetch_add(256, Ordering::Relaxed);
    }
}

#[test]
fn real_knocks_open_during_a_spoofed_first_step_flood() {
    if !privileged("first_step_flood_e2e") {
        return;
    }
    let mut srv = start("");
    let (link, macs) = link(&srv);
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = {
        let sent = sent.clone();
        thread::spawn(move || flood(link, macs, sent))
    };
    assert!(wait_until(WAIT, || sent.load(Ordering::Relaxed) > 10_000), "the flood did not start");
    let open_line = format!("{CLIENT_V4}: main: OPEN SESAME");
    let mut during = 0;
    for n in 1..=SEQUENCES {
        srv.knock(&[SERVER_V4, "7000", "8000:udp", "9000"]);
        srv.daemon.wait_for_n(&open_line, n, WAIT).unwrap();
        during += usize::from(!flooder.is_finished());
    }
    // The flood runs its course: the knocks above all came in the middle of it.
    flooder.join().unwrap();
    let sent = sent.load(Ordering::Relaxed);
    eprintln!("{sent} spoofed first steps sent, {during} of {SEQUENCES} sequences during the flood");
    assert_eq!(during, SEQUENCES, "the flood ended early ({sent} frames)");
    // Nothing from the flood reached the log or the ring.
    assert_eq!(srv.daemon.count("main: Stage 1"), SEQUENCES, "{:#?}", srv.daemon.output());
    assert_eq!(srv.stat("ringbuf_full"), 0);
    assert!(srv.stat("first_step") >= sent / 2, "{sent} frames sent");
}

/// Ports 7000 to 7400 from one address, in order: they run through the
/// `swept` door's sequence 7100, 7200, 7300.
fn sweep(srv: &Server) {
    let (link, macs) = link(srv);
    let src: IpAddr = CLIENT_V4.parse().unwrap();
    for port in 7000..=7400u16 {
        link.send(&syn_frame(macs, src, server_ip(), 50_000, port)).unwrap();
    }
}

#[test]
fn a_sweep_through_a_sequence_does_not_open_it() {
    if !privileged("sweep_e2e") {
        return;
    }
    let mut srv = start("");
    sweep(&srv);
    srv.daemon.wait_for(&format!("{CLIENT_V4}: swept: sweep guard: 3 packets to other ports"), WAIT).unwrap();
    // A real knock afterwards opens, and is the only open: the sweep's
    // last step (7300), which came before it, opened nothing.
    srv.knock(&[SERVER_V4, "7100", "7200", "7300"]);
    srv.daemon.wait_for(&format!("{CLIENT_V4}: swept: OPEN SESAME"), WAIT).unwrap();
    assert_eq!(srv.daemon.count("swept: OPEN SESAME"), 1, "{:#?}", srv.daemon.output());
    assert_eq!(srv.daemon.count("swept: Stage 1"), 1, "the sweep's first step is never logged");
}

/// The control: with the guard off (knockd's behaviour, knockd #71) the
/// same sweep opens the door, so the test above sweeps what it claims to.
#[test]
fn with_the_guard_off_the_same_sweep_opens() {
    if !privileged("sweep_off_e2e") {
        return;
    }
    let mut srv = start("  sweep_limit: off");
    sweep(&srv);
    srv.daemon.wait_for(&format!("{CLIENT_V4}: swept: OPEN SESAME"), WAIT).unwrap();
}

#[test]
fn a_knock_beside_a_busy_connection_opens() {
    if !privileged("busy_connection_e2e") {
        return;
    }
    let mut srv = start("");
    let _echo = EchoServer::start(&srv.pair.server, &format!("{SERVER_V4}:5001")).unwrap();
    let dst = SocketAddr::new(server_ip(), 5001);
    let mut conn = connect_from(&srv.pair.client, None, dst, WAIT).unwrap().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let streamer = {
        let (stop, echoed) = (stop.clone(), echoed.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                conn.write_all(&[7u8; 512]).unwrap();
                conn.read_exact(&mut buf).unwrap();
                echoed.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    assert!(wait_until(WAIT, || echoed.load(Ordering::Relaxed) > 100), "no data streaming");
    let before = echoed.load(Ordering::Relaxed);
    srv.knock(&[SERVER_V4, "7100", "7200", "7300"]);
    srv.daemon.wait_for(&format!("{CLIENT_V4}: swept: OPEN SESAME"), WAIT).unwrap();
    assert!(echoed.load(Ordering::Relaxed) > before, "the connection was not busy during the knock");
    stop.store(true, Ordering::Relaxed);
    streamer.join().unwrap();
    assert_eq!(srv.daemon.count("sweep guard"), 0, "{:#?}", srv.daemon.output());
}
