//! iptables backend: a chain `XKNOCKD` in the filter table of iptables and
//! ip6tables, jumped to from INPUT, plus the ipsets `xknockd4`/`xknockd6`
//! that hold the open windows as `SRC,PROTO:PORT` entries with a timeout.
//!
//! For each protected port the chain holds two rules:
//!
//! ```text
//! -A XKNOCKD -p tcp --dport 22 -m set --match-set xknockd4 src,dst -j RETURN
//! -A XKNOCKD -p tcp --dport 22 -m conntrack --ctstate INVALID,NEW,UNTRACKED -j DROP
//! ```
//!
//! A knocker's packets return to INPUT and meet the rest of the host
//! firewall; every other new connection is dropped. Established connections
//! are not, so a connection opened inside a window outlives it; UNTRACKED
//! is, or a `-j NOTRACK` in the raw table would let new connections past us.
//! The kernel expires the set entries itself, so windows end on time even
//! after a SIGKILL, and the rules stay behind to keep the ports closed.
//!
//! Our jump is the first rule of INPUT, so no rule another tool adds can
//! accept a packet before we see it. The daemon calls [`Gate::repair`] about
//! twice a second: one `iptables -S` per family compared with what install
//! makes (see `check`), and the sets listed. A rule above our jump, a
//! deleted jump, a flushed chain or a destroyed set is put back, with the
//! windows the gate remembers opening.

mod check;

use std::{
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use super::{memory::Remembered, run, Gate, GateError, Protected, Window};
use crate::config::model::{Backend, Proto, Step};

pub const CHAIN: &str = "XKNOCKD";
pub const SET_V4: &str = "xknockd4";
pub const SET_V6: &str = "xknockd6";

/// ipset's own ceiling for a timeout, in seconds (UINT_MAX/2 ms).
const MAX_TIMEOUT_SECS: u64 = 2_147_483;
/// ipset refuses longer comments.
const MAX_COMMENT_BYTES: usize = 255;
/// What the drop rule matches, in the order `iptables -S` prints it.
const DROPPED_STATES: &str = "INVALID,NEW,UNTRACKED";

/// One of the two address families, each with its own tools and set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    pub fn set(self) -> &'static str {
        match self {
            Family::V4 => SET_V4,
            Family::V6 => SET_V6,
        }
    }

    fn ipset_family(self) -> &'static str {
        match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }
}

/// The iptables gate. Everything that decides who gets in lives in the
/// kernel, so a restarted daemon (or `--status`) sees what an earlier one
/// left; the gate only remembers the windows it opened, to restore them
/// after a repair.
#[derive(Debug)]
pub struct IptablesGate {
    opened: Remembered,
}

impl IptablesGate {
    /// Checks that iptables, ip6tables and ipset are installed and can talk
    /// to the kernel, so a missing tool is an error at start with the reason.
    pub fn new() -> Result<IptablesGate, GateError> {
        probe("iptables", &["-w", "-S", "INPUT"], "iptables")?;
        probe("ip6tables", &["-w", "-S", "INPUT"], "iptables")?;
        probe("iptables-restore", &["--version"], "iptables")?;
        probe("ip6tables-restore", &["--version"], "iptables")?;
        probe("ipset", &["-n", "list"], "ipset")?;
        Ok(IptablesGate { opened: Remembered::default() })
    }
}

fn probe(program: &str, args: &[&str], package: &str) -> Result<(), GateError> {
    let unavailable = |why: String| GateError::Unavailable { backend: Backend::Iptables, why };
    let out = match super::tool::output(Command::new(program).args(args), None) {
        Ok(out) => out,
        Err(GateError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(unavailable(format!("{program} not found in PATH (apt install {package})")))
        }
        Err(e) => return Err(unavailable(format!("cannot run {program}: {e}"))),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(unavailable(format!("`{program} {}` failed: {}", args.join(" "), stderr.trim())));
    }
    Ok(())
}

impl Gate for IptablesGate {
    fn backend(&self) -> Backend {
        Backend::Iptables
    }

    fn install(&mut self, protected: &[Protected]) -> Result<(), GateError> {
        let ports = distinct_ports(protected);
        for family in Family::BOTH {
            // The rules name the set, so it must exist first. `-exist` keeps
            // an earlier run's set and the windows in it.
            run(Command::new("ipset").args(create_set_args(family)))?;
            let seen = check::parse(&rules_text(family)?);
            restore(family, &restore_script(family, &ports, &seen))?;
        }
        let now = Instant::now();
        self.opened.adopt(&self.windows()?, now);
        self.opened.prune(&ports, now);
        Ok(())
    }

    fn open(&mut self, door: &str, src: IpAddr, ports: &[Step], duration: Duration) -> Result<(), GateError> {
        // Read before the kernel starts its timer, so ours ends first.
        let start = Instant::now();
        for &port in ports {
            run(Command::new("ipset").args(add_args(door, src, port, duration)))?;
        }
        if let Some(end) = start.checked_add(duration) {
            self.opened.open(door, src, ports, end);
        }
        Ok(())
    }

    fn windows(&self) -> Result<Vec<Window>, GateError> {
        let mut windows = Vec::new();
        for family in existing_sets()? {
            let out = run(Command::new("ipset").args(["list", family.set(), "-output", "save"]))?;
            windows.extend(parse_save(&String::from_utf8_lossy(&out.stdout)));
        }
        Ok(windows)
    }

    fn close_windows(&mut self) -> Result<(), GateError> {
        self.opened.clear();
        for family in existing_sets()? {
            run(Command::new("ipset").args(["flush", family.set()]))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), GateError> {
        self.opened.clear();
        for family in Family::BOTH {
            while has_jump(family)? {
                run(iptables(family).args(["-D", "INPUT", "-j", CHAIN]))?;
            }
            if has_chain(family)? {
                run(iptables(family).args(["-F", CHAIN]))?;
                run(iptables(family).args(["-X", CHAIN]))?;
            }
        }
        // Only now: a set cannot be destroyed while a rule names it.
        for family in existing_sets()? {
            run(Command::new("ipset").args(["destroy", family.set()]))?;
        }
        Ok(())
    }

    fn repair(&mut self, protected: &[Protected]) -> Result<Vec<String>, GateError> {
        let ports = distinct_ports(protected);
        let now = Instant::now();
        self.opened.prune(&ports, now);
        let mut lines = Vec::new();
        for family in Family::BOTH {
            lines.extend(self.repair_family(family, &ports, now)?);
        }
        Ok(lines)
    }
}

impl IptablesGate {
    /// One family's set, chain, jump and remembered windows, each put back
    /// when missing or wrong; one line saying what was found and done.
    fn repair_family(
        &self,
        family: Family,
        ports: &[Step],
        now: Instant,
    ) -> Result<Option<String>, GateError> {
        let (mut what, mut done) = (Vec::new(), Vec::new());
        let set = list_set(family)?;
        if set.is_none() {
            what.push(format!("ipset {} is gone", family.set()));
            run(Command::new("ipset").args(create_set_args(family)))?;
            done.push("re-created the set".to_string());
        }
        let seen = check::parse(&rules_text(family)?);
        let found = check::findings(family, &seen, ports);
        if !found.is_empty() {
            restore(family, &restore_script(family, ports, &seen))?;
            done.push(format!("rewrote chain {CHAIN} with our jump first in INPUT"));
        }
        what.extend(found);
        let present = parse_save(set.as_deref().unwrap_or_default());
        let mut lost = self.opened.missing_from(&present, now);
        lost.retain(|w| Family::of(w.src) == family);
        if !lost.is_empty() {
            what.push(format!("{} open window(s) gone from ipset {}", lost.len(), family.set()));
            for w in &lost {
                run(Command::new("ipset").args(add_args(&w.door, w.src, w.port, w.remaining)))?;
            }
            done.push(format!("restored {} window(s)", lost.len()));
        }
        let line = format!("{}: {}; {}", family.iptables(), what.join(", "), done.join(", "));
        Ok((!what.is_empty()).then_some(line))
    }
}

/// Rules are per port, not per door: two doors guarding the same port share
/// its two rules.
fn distinct_ports(protected: &[Protected]) -> Vec<Step> {
    let mut ports: Vec<Step> = protected.iter().map(|p| p.port).collect();
    ports.sort();
    ports.dedup();
    ports
}

fn iptables(family: Family) -> Command {
    let mut cmd = Command::new(family.iptables());
    cmd.arg("-w");
    cmd
}

/// Whether INPUT jumps to our chain. `-C` also fails when the chain does not
/// exist yet, which means the same thing here: the jump must be added.
fn has_jump(family: Family) -> Result<bool, GateError> {
    let out = super::tool::output(iptables(family).args(["-C", "INPUT", "-j", CHAIN]), None)?;
    Ok(out.status.success())
}

/// The whole filter table as `iptables -S` prints it: one call shows both
/// INPUT and our chain.
fn rules_text(family: Family) -> Result<String, GateError> {
    let out = run(iptables(family).arg("-S"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One family's set as `ipset list -output save` prints it, or `None` when
/// it does not exist.
fn list_set(family: Family) -> Result<Option<String>, GateError> {
    let out =
        super::tool::output(Command::new("ipset").args(["list", family.set(), "-output", "save"]), None)?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    // Only a missing set means "nothing there"; any other failure is real.
    if existing_sets()?.contains(&family) {
        return Err(GateError::Command {
            cmd: format!("ipset list {} -output save", family.set()),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(None)
}

fn has_chain(family: Family) -> Result<bool, GateError> {
    let out = super::tool::output(iptables(family).args(["-S", CHAIN]), None)?;
    Ok(out.status.success())
}

/// The families whose set exists, so reading and flushing windows before
/// `install` (or after `flush`) finds nothing instead of failing.
fn existing_sets() -> Result<Vec<Family>, GateError> {
    let out = run(Command::new("ipset").args(["-n", "list"]))?;
    let names = String::from_utf8_lossy(&out.stdout);
    Ok(Family::BOTH.into_iter().filter(|f| names.lines().any(|n| n.trim() == f.set())).collect())
}

pub fn create_set_args(family: Family) -> Vec<String> {
    [
        "-exist",
        "create",
        family.set(),
        "hash:ip,port",
        "family",
        family.ipset_family(),
        "timeout",
        "0",
        "comment",
    ]
    .map(String::from)
    .to_vec()
}

/// `ipset add` for one window. `-exist` turns a re-knock into a new timeout
/// on the same entry instead of an error or a second entry.
pub fn add_args(door: &str, src: IpAddr, port: Step, duration: Duration) -> Vec<String> {
    let src = src.to_canonical();
    vec![
        "-exist".into(),
        "add".into(),
        Family::of(src).set().into(),
        entry(src, port),
        "timeout".into(),
        timeout_secs(duration).to_string(),
        "comment".into(),
        comment(door),
    ]
}

/// `SRC,PROTO:PORT`, the element syntax of a `hash:ip,port` set.
fn entry(src: IpAddr, port: Step) -> String {
    format!("{src},{}:{}", port.proto.as_str(), port.port)
}

/// Whole seconds, rounded up. Never 0: to ipset a timeout of 0 means
/// "permanent", which would leave the door open forever.
pub fn timeout_secs(duration: Duration) -> u64 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    secs.clamp(1, MAX_TIMEOUT_SECS)
}

/// ipset rejects `"` in comments and caps their length; the comment only
/// labels the window with its door, so a lossy copy is good enough.
fn comment(door: &str) -> String {
    let mut c = door.replace('"', "'");
    if c.len() > MAX_COMMENT_BYTES {
        let mut end = MAX_COMMENT_BYTES;
        while !c.is_char_boundary(end) {
            end -= 1;
        }
        c.truncate(end);
    }
    c
}

/// The `*-restore --noflush` transaction that makes our chain hold exactly
/// the rules for `ports`, and makes our jump the one and only first rule of
/// INPUT unless `seen` shows it already is. Chain, rules and jump change
/// together or not at all, so no packet finds the port unguarded; nothing
/// else is touched.
fn restore_script(family: Family, ports: &[Step], seen: &check::Seen) -> String {
    let mut s = format!("*filter\n:{CHAIN} - [0:0]\n-F {CHAIN}\n");
    for step in ports {
        let (proto, port, set) = (step.proto.as_str(), step.port, family.set());
        s += &format!("-A {CHAIN} -p {proto} --dport {port} -m set --match-set {set} src,dst -j RETURN\n");
        s += &format!(
            "-A {CHAIN} -p {proto} --dport {port} -m conntrack --ctstate {DROPPED_STATES} -j DROP\n"
        );
    }
    if !seen.jump_in_place() {
        s += &format!("-D INPUT -j {CHAIN}\n").repeat(seen.jumps);
        s += &format!("-I INPUT 1 -j {CHAIN}\n");
    }
    s + "COMMIT\n"
}

/// Feeds `script` to `iptables-restore -w --noflush` (or ip6tables-restore).
fn restore(family: Family, script: &str) -> Result<(), GateError> {
    let mut cmd = Command::new(family.restore());
    cmd.args(["-w", "--noflush"]);
    let out = super::tool::output(&mut cmd, Some(script.as_bytes()))?;
    if !out.status.success() {
        return Err(GateError::Command {
            cmd: format!("{cmd:?} <<< {script:?}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Windows from `ipset list SET -output save` (or `ipset save`) text. Lines
/// that are not our `add` entries (the `create` line, other sets, entries
/// someone added by hand in another shape) are skipped.
pub fn parse_save(text: &str) -> Vec<Window> {
    text.lines().filter_map(parse_add_line).collect()
}

fn parse_add_line(line: &str) -> Option<Window> {
    let rest = line.strip_prefix("add ")?;
    let (set, rest) = rest.split_once(' ')?;
    if set != SET_V4 && set != SET_V6 {
        return None;
    }
    let (element, options) = rest.split_once(' ').unwrap_or((rest, ""));
    let (src, port) = parse_element(element)?;
    Some(Window {
        door: option_comment(options).unwrap_or_default(),
        src,
        port,
        remaining: Duration::from_secs(option_timeout(options)?),
    })
}

/// `10.0.0.2,tcp:22` or `fd77::2,udp:53`.
fn parse_element(element: &str) -> Option<(IpAddr, Step)> {
    let (ip, port) = element.rsplit_once(',')?;
    let (proto, port) = port.split_once(':')?;
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return None,
    };
    Some((ip.parse().ok()?, Step { port: port.parse().ok()?, proto }))
}

fn option_timeout(options: &str) -> Option<u64> {
    let mut words = options.split_whitespace();
    words.find(|w| *w == "timeout")?;
    words.next()?.parse().ok()
}

/// The comment is last on the line and may hold spaces; `"` never occurs
/// inside it, since ipset refuses that character.
fn option_comment(options: &str) -> Option<String> {
    let start = options.find("comment \"")? + "comment \"".len();
    let end = start + options[start..].find('"')?;
    Some(options[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn tcp(port: u16) -> Step {
        Step { port, proto: Proto::Tcp }
    }

    const fn udp(port: u16) -> Step {
        Step { port, proto: Proto::Udp }
    }

    /// INPUT as `check::parse` sees it: `above` rules, then `jumps` jumps.
    fn seen(above: usize, jumps: usize) -> check::Seen {
        check::Seen { above, jumps, chain: Some(Vec::new()) }
    }

    #[test]
    fn restore_script_for_v4_adds_the_missing_jump() {
        let got = restore_script(Family::V4, &[tcp(22), udp(60001)], &seen(2, 0));
        let want = "\
*filter
:XKNOCKD - [0:0]
-F XKNOCKD
-A XKNOCKD -p tcp --dport 22 -m set --match-set xknockd4 src,dst -j RETURN
-A XKNOCKD -p tcp --dport 22 -m conntrack --ctstate INVALID,NEW,UNTRACKED -j DROP
-A XKNOCKD -p udp --dport 60001 -m set --match-set xknockd4 src,dst -j RETURN
-A XKNOCKD -p udp --dport 60001 -m conntrack --ctstate INVALID,NEW,UNTRACKED -j DROP
-I INPUT 1 -j XKNOCKD
COMMIT
";
        assert_eq!(got, want);
    }

    #[test]
    fn restore_script_for_v6_with_the_jump_first_uses_the_v6_set() {
        let got = restore_script(Family::V6, &[tcp(2222)], &seen(0, 1));
        let want = "\
*filter
:XKNOCKD - [0:0]
-F XKNOCKD
-A XKNOCKD -p tcp --dport 2222 -m set --match-set xknockd6 src,dst -j RETURN
-A XKNOCKD -p tcp --dport 2222 -m conntrack --ctstate INVALID,NEW,UNTRACKED -j DROP
COMMIT
";
        assert_eq!(got, want);
    }

    #[test]
    fn restore_script_moves_a_buried_or_doubled_jump_to_the_top() {
        let want =
            "*filter\n:XKNOCKD - [0:0]\n-F XKNOCKD\n-D INPUT -j XKNOCKD\n-I INPUT 1 -j XKNOCKD\nCOMMIT\n";
        assert_eq!(restore_script(Family::V4, &[], &seen(1, 1)), want);
        let twice = restore_script(Family::V4, &[], &seen(0, 2));
        assert_eq!(twice.matches("-D INPUT -j XKNOCKD\n").count(), 2, "{twice}");
    }

    #[test]
    fn restore_script_with_no_ports_empties_the_chain() {
        let got = restore_script(Family::V4, &[], &seen(0, 1));
        assert_eq!(got, "*filter\n:XKNOCKD - [0:0]\n-F XKNOCKD\nCOMMIT\n");
    }

    #[test]
    fn shared_ports_get_one_pair_of_rules() {
        let p = |door: &str, port| Protected { door: door.into(), port };
        let ports = distinct_ports(&[p("b", tcp(22)), p("a", udp(22)), p("a", tcp(22))]);
        assert_eq!(ports, vec![tcp(22), udp(22)]);
    }

    #[test]
    fn add_args_pick_the_set_by_family() {
        let v4 = add_args("ssh", "10.0.0.2".parse().unwrap(), tcp(22), Duration::from_secs(30));
        assert_eq!(v4, ["-exist", "add", "xknockd4", "10.0.0.2,tcp:22", "timeout", "30", "comment", "ssh"]);
        let v6 = add_args("ssh", "fd77::2".parse().unwrap(), udp(53), Duration::from_secs(5));
        assert_eq!(v6[2..4], ["xknockd6", "fd77::2,udp:53"]);
        let mapped = add_args("ssh", "::ffff:10.0.0.2".parse().unwrap(), tcp(22), Duration::from_secs(5));
        assert_eq!(mapped[2..4], ["xknockd4", "10.0.0.2,tcp:22"]);
    }

    #[test]
    fn timeouts_round_up_and_are_never_permanent() {
        assert_eq!(timeout_secs(Duration::ZERO), 1);
        assert_eq!(timeout_secs(Duration::from_millis(1)), 1);
        assert_eq!(timeout_secs(Duration::from_millis(1500)), 2);
        assert_eq!(timeout_secs(Duration::from_secs(30)), 30);
        assert_eq!(timeout_secs(Duration::from_secs(u64::MAX)), MAX_TIMEOUT_SECS);
    }

    #[test]
    fn comments_drop_quotes_and_fit_ipset() {
        assert_eq!(comment(r#"my "door""#), "my 'door'");
        let long = "é".repeat(200);
        let c = comment(&long);
        assert!(c.len() <= MAX_COMMENT_BYTES && long.starts_with(&c), "{c}");
    }

    #[test]
    fn a_missing_tool_is_unavailable_with_the_package_to_install() {
        let err = probe("xknock-no-such-tool", &[], "ipset").unwrap_err();
        let GateError::Unavailable { backend: Backend::Iptables, why } = err else { panic!("{err:?}") };
        assert_eq!(why, "xknock-no-such-tool not found in PATH (apt install ipset)");
    }

    #[test]
    fn a_failing_tool_is_unavailable_with_its_stderr() {
        let err = probe("sh", &["-c", "echo no permission >&2; exit 4"], "sh").unwrap_err();
        assert!(err.to_string().contains("no permission"), "{err}");
    }

    #[test]
    fn parses_ipset_save_output() {
        let text = r#"create xknockd4 hash:ip,port family inet hashsize 1024 maxelem 65536 timeout 0 comment bucketsize 12 initval 0x65777833
add xknockd4 10.0.0.2,udp:53 timeout 39 comment "my door"
add xknockd4 10.0.0.1,tcp:22 timeout 7 comment "ssh"
create other hash:ip family inet hashsize 1024 maxelem 65536
add other 10.9.9.9
add xknockd6 fd77::2,tcp:2222 timeout 3 comment "a,b c"
add xknockd6 fd77::3,icmpv6:128/0 timeout 3 comment "odd"
add xknockd6 fd77::4,tcp:2222 comment "no timeout"
"#;
        let w = |door: &str, src: &str, port, secs| Window {
            door: door.into(),
            src: src.parse().unwrap(),
            port,
            remaining: Duration::from_secs(secs),
        };
        assert_eq!(
            parse_save(text),
            vec![
                w("my door", "10.0.0.2", udp(53), 39),
                w("ssh", "10.0.0.1", tcp(22), 7),
                w("a,b c", "fd77::2", tcp(2222), 3),
            ]
        );
    }

    #[test]
    fn an_entry_without_a_comment_has_an_empty_door() {
        let got = parse_save("add xknockd4 10.0.0.1,tcp:22 timeout 9\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].door, "");
        assert_eq!(got[0].remaining, Duration::from_secs(9));
    }
}
