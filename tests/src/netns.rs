//! Two network namespaces joined by a veth pair, created per test with unique
//! names and removed by `Drop`, so a panicking test leaves nothing behind.
//! Nothing here touches the root namespace's interfaces or firewall.

use std::{
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

pub const SERVER_V4: &str = "10.77.0.1";
pub const CLIENT_V4: &str = "10.77.0.2";
/// A second client address, for "someone else knocks/connects" cases.
pub const CLIENT2_V4: &str = "10.77.0.3";
/// Routed to the server but not one of its addresses.
pub const OTHER_V4: &str = "10.77.0.99";
pub const SERVER_V6: &str = "fd77::1";
pub const CLIENT_V6: &str = "fd77::2";
pub const CLIENT2_V6: &str = "fd77::3";
pub const OTHER_V6: &str = "fd77::99";

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct NetPair {
    pub server: String,
    pub client: String,
    /// The server-side veth end, where XDP attaches.
    pub server_if: String,
    pub client_if: String,
}

impl NetPair {
    pub fn new() -> Result<Self> {
        let id = format!("{}x{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let pair = Self {
            server: format!("xks{id}"),
            client: format!("xkc{id}"),
            server_if: format!("xs{id}"),
            client_if: format!("xc{id}"),
        };
        // From here on Drop cleans up whatever part got created.
        pair.setup().context("creating test namespaces")?;
        Ok(pair)
    }

    fn setup(&self) -> Result<()> {
        run(&["ip", "netns", "add", &self.server])?;
        run(&["ip", "netns", "add", &self.client])?;
        run(&[
            "ip",
            "link",
            "add",
            &self.server_if,
            "netns",
            &self.server,
            "type",
            "veth",
            "peer",
            "name",
            &self.client_if,
            "netns",
            &self.client,
        ])?;
        for (ns, ifc, addrs) in [
            (&self.server, &self.server_if, [SERVER_V4, SERVER_V6, ""]),
            (&self.client, &self.client_if, [CLIENT_V4, CLIENT_V6, ""]),
        ] {
            self.in_ns(ns, &["ip", "link", "set", "lo", "up"])?;
            self.in_ns(ns, &["ip", "link", "set", ifc, "up"])?;
            for a in addrs.iter().filter(|a| !a.is_empty()) {
                let cidr = if a.contains(':') { format!("{a}/64") } else { format!("{a}/24") };
                self.in_ns(ns, &["ip", "addr", "add", &cidr, "dev", ifc, "nodad"])?;
            }
        }
        self.in_ns(
            &self.client,
            &["ip", "addr", "add", &format!("{CLIENT2_V4}/24"), "dev", &self.client_if],
        )?;
        // Deprecated (preferred_lft 0), so the stack never picks it as a source
        // address unless a socket binds to it.
        let second_v6 = format!("{CLIENT2_V6}/64");
        self.in_ns(
            &self.client,
            &["ip", "addr", "add", &second_v6, "dev", &self.client_if, "nodad", "preferred_lft", "0"],
        )?;
        // Static neighbours for the non-local address, so packets to it leave
        // the client instead of waiting on ARP/ND that nobody answers.
        let mac = self.server_mac()?;
        for other in [OTHER_V4, OTHER_V6] {
            self.in_ns(
                &self.client,
                &["ip", "neigh", "replace", other, "lladdr", &mac, "dev", &self.client_if],
            )?;
        }
        Ok(())
    }

    fn server_mac(&self) -> Result<String> {
        let out =
            self.in_ns(&self.server, &["cat", &format!("/sys/class/net/{}/address", self.server_if)])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The MAC address of `ifname` in namespace `ns`, as `ip -j link` reports it.
    pub fn mac(&self, ns: &str, ifname: &str) -> Result<[u8; 6]> {
        let out = self.in_ns(ns, &["ip", "-j", "link", "show", "dev", ifname])?;
        let json = String::from_utf8_lossy(&out.stdout);
        let text = json
            .split("\"address\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .with_context(|| format!("no address for {ifname} in {json}"))?;
        let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>()?;
        bytes.try_into().map_err(|b| anyhow::anyhow!("not a MAC: {b:?}"))
    }

    /// Whether a TCP socket listens on `port` in namespace `ns`: what tells a
    /// gate's silent drop apart from a listener that died.
    pub fn listening(&self, ns: &str, port: u16) -> Result<bool> {
        let filter = format!("sport = :{port}");
        let out = self.in_ns(ns, &["ss", "-Hltn", &filter])?;
        Ok(!String::from_utf8_lossy(&out.stdout).trim().is_empty())
    }

    /// Runs a command in `ns` and fails on a non-zero exit.
    pub fn in_ns(&self, ns: &str, argv: &[&str]) -> Result<Output> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(argv);
        run(&full)
    }

    pub fn server_cmd(&self, program: &str) -> Command {
        ns_command(&self.server, program)
    }

    pub fn client_cmd(&self, program: &str) -> Command {
        ns_command(&self.client, program)
    }

    /// Runs `xknock ARGS` in the client namespace and insists it succeeds.
    pub fn xknock(&self, args: &[&str]) {
        let xknock = crate::daemon::bin("xknock");
        let out = self.client_cmd(xknock.to_str().unwrap()).args(args).output().expect("spawn xknock");
        assert!(out.status.success(), "xknock {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

pub fn ns_command(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

pub fn run(argv: &[&str]) -> Result<Output> {
    let out =
        Command::new(argv[0]).args(&argv[1..]).output().with_context(|| format!("spawning {argv:?}"))?;
    if !out.status.success() {
        bail!("{argv:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// A child process killed (and reaped) when the guard drops.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends `sig` and waits for the exit, bounded by `timeout`.
    pub fn signal_and_wait(
        &mut self,
        sig: i32,
        timeout: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.0.id() as i32, sig) };
        let mut status = None;
        crate::wait_until(timeout, || {
            status = self.0.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `f` on a thread that has joined network namespace `ns`, so sockets
/// it creates live there (for raw packets the client tools cannot make).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::anyhow!("setns: {}", std::io::Error::last_os_error()));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

/// Sends one bare TCP segment with the given flags from a raw socket (the
/// kernel adds the IPv4 header). Call inside `in_netns`.
pub fn send_tcp_flags(dst: std::net::Ipv4Addr, dport: u16, flags: u8) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
    let segment = crate::frames::L4::tcp(dport, flags).bytes();
    sock.send_to(&segment, &std::net::SocketAddr::from((dst, 0)).into())?;
    Ok(())
}

/// A TCP echo server in a namespace, stopped when dropped.
pub struct EchoServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `addr` (use "[::]:PORT" for both families) inside `ns`.
    pub fn start(ns: &str, addr: &str) -> Result<Self> {
        let addr = addr.to_string();
        let listener = in_netns(ns, move || std::net::TcpListener::bind(&addr))??;
        listener.set_nonblocking(true)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        std::thread::spawn(move || echo(conn));
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        Ok(Self { stop, thread: Some(thread) })
    }
}

fn echo(mut conn: std::net::TcpStream) {
    use std::io::{Read, Write};
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(30)));
    let mut buf = [0u8; 512];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP connect made from inside `ns`, optionally from a chosen source
/// address. The socket stays in `ns` whichever thread uses it later.
pub fn connect_from(
    ns: &str,
    src: Option<std::net::IpAddr>,
    dst: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> Result<std::io::Result<std::net::TcpStream>> {
    in_netns(ns, move || {
        let sock = socket2::Socket::new(socket2::Domain::for_address(dst), socket2::Type::STREAM, None)?;
        if let Some(ip) = src {
            sock.bind(&std::net::SocketAddr::new(ip, 0).into())?;
        }
        sock.connect_timeout(&dst.into(), timeout)?;
        Ok(sock.into())
    })
}

/// Sends `msg` and expects it echoed back.
pub fn echoes(conn: &mut std::net::TcpStream, msg: &[u8]) -> bool {
    use std::io::{Read, Write};
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(3)));
    let mut back = vec![0u8; msg.len()];
    conn.write_all(msg).is_ok() && conn.read_exact(&mut back).is_ok() && back == msg
}

/// A bpffs mounted at a throwaway path in the root mount namespace, so pins
/// outlive each `ip netns exec` (which gets its own mount namespace).
/// Unmounted, with everything pinned in it, when dropped.
pub struct BpffsMount(pub std::path::PathBuf);

impl BpffsMount {
    pub fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "xk-bpf-{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)?;
        run(&["mount", "-t", "bpf", "bpf", path.to_str().context("utf-8")?])?;
        Ok(Self(path))
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}
