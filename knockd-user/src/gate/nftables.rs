//! nftables backend. We own one table, `inet xknockd`, and talk to it only
//! through nft's JSON API (`nft -j -f -`), so no value we got from a config or
//! a packet is ever parsed as nft syntax.
//!
//! ```text
//! table inet xknockd {
//!     set allow4 { type ipv4_addr . inet_proto . inet_service; flags timeout; }
//!     set allow6 { type ipv6_addr . inet_proto . inet_service; flags timeout; }
//!     set protected { type inet_proto . inet_service; }
//!     chain input {
//!         type filter hook input priority filter - 10; policy accept;
//!         ip saddr . meta l4proto . th dport @allow4 accept
//!         ip6 saddr . meta l4proto . th dport @allow6 accept
//!         meta l4proto . th dport @protected ct state invalid,new,untracked drop
//!     }
//! }
//! ```
//!
//! Beside an existing firewall: every table's base chains on the input hook
//! see the packet in priority order. Our `drop` is final, so a protected port
//! stays closed whatever other tables say. Our `accept` only ends *our* chain:
//! a later table (a usual `filter` at priority 0) can still drop the knocker,
//! so a host with a default-drop policy must let the protected ports through
//! itself. Established connections are not dropped, so connections opened
//! inside a window keep working after it, through conntrack. Everything else
//! is: `untracked` too, or a `notrack` rule in someone else's raw-priority
//! chain would let new connections past us, and `invalid`, since a packet
//! conntrack cannot place is no part of a connection we let in.
//!
//! Windows are set elements with a timeout: the kernel expires them, so they
//! end on time even when the daemon is SIGKILLed, and the ports stay closed.
//!
//! The daemon calls [`Gate::repair`] about twice a second: one `nft -j list
//! table` compared with what install makes (see `check`). A flushed ruleset,
//! a deleted table, chain or set, a rule added to our chain or a changed
//! chain is put back in one transaction, with the windows the gate
//! remembers opening.

mod check;
mod listing;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use listing::{entries, known_windows, parse_port, parse_proto, parse_windows};

use super::{memory::Remembered, Gate, GateError, Protected, Window};
use crate::config::model::{Backend, Step};

const FAMILY: &str = "inet";
const TABLE: &str = "xknockd";
const CHAIN: &str = "input";
const ALLOW4: &str = "allow4";
const ALLOW6: &str = "allow6";
const PROTECTED: &str = "protected";
/// Ahead of a filter table at the usual priority 0, so our drop comes first.
const PRIORITY: i64 = -10;
/// nft (libnftnl) rejects element comments longer than this.
const COMMENT_MAX: usize = 128;

/// The nftables gate. The kernel's table is the truth; the gate only
/// remembers the windows it opened, to restore them after a repair.
#[derive(Debug)]
pub struct NftGate {
    opened: Remembered,
}

impl NftGate {
    /// Checks that `nft` runs and that the kernel accepts our whole ruleset.
    pub fn new() -> Result<NftGate, GateError> {
        let unavailable = |why: String| GateError::Unavailable { backend: Backend::Nftables, why };
        match super::tool::output(Command::new("nft").arg("--version"), None) {
            Err(GateError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(unavailable("nft not found in PATH (apt install nftables)".into()))
            }
            Err(e) => return Err(unavailable(format!("cannot run nft: {e}"))),
            Ok(out) if !out.status.success() => {
                return Err(unavailable(format!("`nft --version` failed: {}", stderr(&out))))
            }
            Ok(_) => {}
        }
        // `nft -c` sends the batch to the kernel, which validates it and then
        // aborts it: this proves nf_tables, concatenated timeout sets and
        // conntrack matching are all there, and changes nothing.
        apply_with(&["-c"], &install_doc(&[], true, &[]))
            .map_err(|e| unavailable(format!("the kernel refused a dry run of our ruleset: {e}")))?;
        Ok(NftGate { opened: Remembered::default() })
    }
}

impl Gate for NftGate {
    fn backend(&self) -> Backend {
        Backend::Nftables
    }

    fn install(&mut self, protected: &[Protected]) -> Result<(), GateError> {
        let ports: Vec<Step> = protected.iter().map(|p| p.port).collect();
        let listing = list_table()?;
        let windows = listing.as_ref().map(parse_windows).unwrap_or_default();
        let doc = match &listing {
            Some(listing) if !check::shape_matches(listing) => {
                // An earlier layout (another version, or a hand edit): replace
                // the table in the same transaction, carrying its windows over.
                log::warn!("nftables: replacing table {FAMILY} {TABLE} left in another layout");
                install_doc(&ports, true, &finite(windows.clone()))
            }
            // Same layout: the chain's rules (an older drop rule among them)
            // and the protected set are rewritten in place.
            _ => install_doc(&ports, false, &[]),
        };
        apply(&doc)?;
        let now = Instant::now();
        self.opened.adopt(&windows, now);
        self.opened.prune(&ports, now);
        Ok(())
    }

    fn open(&mut self, door: &str, src: IpAddr, ports: &[Step], duration: Duration) -> Result<(), GateError> {
        // Read before the kernel starts its timer, so ours ends first.
        let start = Instant::now();
        let Some(doc) = open_doc(door, src, ports, duration) else { return Ok(()) };
        apply(&doc)?;
        if let Some(end) = start.checked_add(duration) {
            self.opened.open(door, src, ports, end);
        }
        Ok(())
    }

    fn windows(&self) -> Result<Vec<Window>, GateError> {
        Ok(list_table()?.map(|listing| parse_windows(&listing)).unwrap_or_default())
    }

    fn close_windows(&mut self) -> Result<(), GateError> {
        self.opened.clear();
        if list_table()?.is_none() {
            return Ok(());
        }
        apply(&close_doc())
    }

    fn flush(&mut self) -> Result<(), GateError> {
        self.opened.clear();
        apply(&flush_doc())
    }

    fn repair(&mut self, protected: &[Protected]) -> Result<Vec<String>, GateError> {
        let wanted: BTreeSet<Step> = protected.iter().map(|p| p.port).collect();
        let ports: Vec<Step> = wanted.iter().copied().collect();
        let now = Instant::now();
        self.opened.prune(&ports, now);
        let listing = list_table()?;
        let found = check::inspect(listing.as_ref(), &wanted);
        let present = listing.as_ref().map(known_windows).unwrap_or_default();
        let lost = self.opened.missing_from(&present, now);
        if found.lines.is_empty() && lost.is_empty() {
            return Ok(Vec::new());
        }
        let mut what = found.lines;
        if !lost.is_empty() {
            what.push(format!("{} open window(s) gone from the allow sets", lost.len()));
        }
        let done = put_back(&ports, found.replace, present, &lost)?;
        Ok(vec![format!("{}; {done}", what.join(", "))])
    }
}

/// Puts the table back in one transaction with the `lost` windows, and says
/// what it did. A `replace` also keeps the windows still `present`.
fn put_back(
    ports: &[Step],
    replace: bool,
    present: Vec<Window>,
    lost: &[Window],
) -> Result<String, GateError> {
    if !replace {
        apply(&install_doc(ports, false, lost))?;
        return Ok(format!("put the gate back, restoring {} window(s)", lost.len()));
    }
    let carried: Vec<Window> = finite(present).into_iter().chain(lost.iter().cloned()).collect();
    apply(&install_doc(ports, true, &carried))?;
    Ok(format!("replaced the table, keeping {} window(s), {} of them restored", carried.len(), lost.len()))
}

/// An element that never expires is no window of ours: a replace drops it.
fn finite(mut windows: Vec<Window>) -> Vec<Window> {
    windows.retain(|w| w.remaining != Duration::MAX);
    windows
}

// ---- JSON documents -------------------------------------------------------

fn doc(cmds: Vec<Value>) -> Value {
    json!({ "nftables": cmds })
}

fn cmd(verb: &str, kind: &str, body: Value) -> Value {
    json!({ verb: { kind: body } })
}

fn table() -> Value {
    json!({ "family": FAMILY, "name": TABLE })
}

fn set(name: &str, types: &[&str], timeout: bool) -> Value {
    let mut s = json!({ "family": FAMILY, "table": TABLE, "name": name, "type": types });
    if timeout {
        s["flags"] = json!(["timeout"]);
    }
    s
}

fn sets() -> [Value; 3] {
    [
        set(ALLOW4, &["ipv4_addr", "inet_proto", "inet_service"], true),
        set(ALLOW6, &["ipv6_addr", "inet_proto", "inet_service"], true),
        set(PROTECTED, &["inet_proto", "inet_service"], false),
    ]
}

fn chain() -> Value {
    json!({
        "family": FAMILY, "table": TABLE, "name": CHAIN,
        "type": "filter", "hook": "input", "prio": PRIORITY, "policy": "accept",
    })
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({ "payload": { "protocol": protocol, "field": field } })
}

fn l4proto() -> Value {
    json!({ "meta": { "key": "l4proto" } })
}

fn rule(expr: Value) -> Value {
    json!({ "family": FAMILY, "table": TABLE, "chain": CHAIN, "expr": expr })
}

fn in_set(left: Vec<Value>, set: &str) -> Value {
    json!({ "match": { "op": "==", "left": { "concat": left }, "right": format!("@{set}") } })
}

/// The chain's rules, in order (see the module doc for the nft syntax).
fn rules() -> [Value; 3] {
    let allow = |ip: &str, set: &str| {
        let key = vec![payload(ip, "saddr"), l4proto(), payload("th", "dport")];
        rule(json!([in_set(key, set), { "accept": null }]))
    };
    // In the order nft lists them, so a listing compares equal.
    let states = json!(["invalid", "new", "untracked"]);
    let new = json!({ "match": { "op": "in", "left": { "ct": { "key": "state" } }, "right": states } });
    let protected = in_set(vec![l4proto(), payload("th", "dport")], PROTECTED);
    [allow("ip", ALLOW4), allow("ip6", ALLOW6), rule(json!([protected, new, { "drop": null }]))]
}

fn elements(set: &str, elem: Vec<Value>) -> Value {
    json!({ "family": FAMILY, "table": TABLE, "name": set, "elem": elem })
}

/// One transaction that leaves exactly our table, chain, rules and protected
/// set. `add` is a no-op for what exists, and the chain and the protected
/// set are flushed and refilled, so a second run changes nothing; the allow
/// sets are not flushed, so windows of an earlier run stay open. `replace`
/// deletes the table first (`add` before `delete` makes that valid when
/// there is none) and re-adds `carried` windows with their time left.
fn install_doc(ports: &[Step], replace: bool, carried: &[Window]) -> Value {
    let mut cmds = vec![cmd("add", "table", table())];
    if replace {
        cmds.push(cmd("delete", "table", table()));
        cmds.push(cmd("add", "table", table()));
    }
    cmds.extend(sets().into_iter().map(|s| cmd("add", "set", s)));
    cmds.push(cmd("add", "chain", chain()));
    cmds.push(cmd("flush", "chain", named(CHAIN)));
    cmds.extend(rules().into_iter().map(|r| cmd("add", "rule", r)));
    cmds.push(cmd("flush", "set", named(PROTECTED)));
    let unique: BTreeSet<Step> = ports.iter().copied().collect();
    if !unique.is_empty() {
        let elem = unique.iter().map(|p| json!({ "concat": [p.proto.as_str(), p.port] }));
        cmds.push(cmd("add", "element", elements(PROTECTED, elem.collect())));
    }
    for w in carried {
        let set = allow_set(w.src);
        let elem = window_elem(&w.door, w.src, w.port, w.remaining);
        cmds.push(cmd("add", "element", elements(set, vec![elem])));
    }
    doc(cmds)
}

/// A set or chain of our table, by name.
fn named(name: &str) -> Value {
    json!({ "family": FAMILY, "table": TABLE, "name": name })
}

/// A v4-mapped v6 source is the v4 host; the v4 set is where it belongs.
fn allow_set(src: IpAddr) -> &'static str {
    match src.to_canonical() {
        IpAddr::V4(_) => ALLOW4,
        IpAddr::V6(_) => ALLOW6,
    }
}

fn key(src: IpAddr, port: Step) -> Value {
    json!({ "concat": [src.to_canonical().to_string(), port.proto.as_str(), port.port] })
}

/// nft's JSON takes whole seconds, and a timeout of 0 would mean "never
/// expires": round up, never below one second.
fn timeout_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0)).max(1)
}

/// The door's name rides in the comment so `windows()` can report it.
fn comment(door: &str) -> &str {
    let mut end = door.len().min(COMMENT_MAX);
    while !door.is_char_boundary(end) {
        end -= 1;
    }
    &door[..end]
}

fn window_elem(door: &str, src: IpAddr, port: Step, d: Duration) -> Value {
    json!({ "elem": {
        "val": key(src, port), "timeout": timeout_secs(d), "comment": comment(door),
    } })
}

/// Opens (or re-opens) `ports` for `src`. A plain `add` would keep an
/// existing element's old expiry, so: add (a no-op when present, and it makes
/// the delete valid when absent), delete, add with the new timeout. One
/// transaction, so no packet ever sees the key missing, and the set ends
/// with exactly one element per port.
fn open_doc(door: &str, src: IpAddr, ports: &[Step], duration: Duration) -> Option<Value> {
    let unique: BTreeSet<Step> = ports.iter().copied().collect();
    if unique.is_empty() {
        return None;
    }
    let set = allow_set(src);
    let full: Vec<Value> = unique.iter().map(|&p| window_elem(door, src, p, duration)).collect();
    let keys = unique.iter().map(|&p| key(src, p)).collect();
    Some(doc(vec![
        cmd("add", "element", elements(set, full.clone())),
        cmd("delete", "element", elements(set, keys)),
        cmd("add", "element", elements(set, full)),
    ]))
}

/// Ends every window; the protected set and the drop rule stay.
fn close_doc() -> Value {
    doc(vec![cmd("flush", "set", named(ALLOW4)), cmd("flush", "set", named(ALLOW6))])
}

/// Removes the table; adding it first makes this valid when it is gone.
fn flush_doc() -> Value {
    doc(vec![cmd("add", "table", table()), cmd("delete", "table", table())])
}

// ---- running nft ----------------------------------------------------------

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

fn apply(doc: &Value) -> Result<(), GateError> {
    apply_with(&[], doc)
}

/// Feeds `doc` to `nft -j -f -`: one document, one kernel transaction.
fn apply_with(flags: &[&str], doc: &Value) -> Result<(), GateError> {
    let text = doc.to_string();
    let out =
        super::tool::output(Command::new("nft").args(flags).args(["-j", "-f", "-"]), Some(text.as_bytes()))?;
    if !out.status.success() {
        return Err(GateError::Command {
            cmd: format!("nft {} -j -f - <<< {doc}", flags.join(" ")),
            stderr: stderr(&out),
        });
    }
    Ok(())
}

/// Our table as `nft -j list table` prints it, or `None` if there is none.
fn list_table() -> Result<Option<Value>, GateError> {
    let out = super::tool::output(Command::new("nft").args(["-j", "list", "table", FAMILY, TABLE]), None)?;
    if out.status.success() {
        return serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| GateError::Other(format!("parsing `nft -j list table`: {e}")));
    }
    // Only a missing table means "nothing there"; any other failure is real.
    if !table_exists()? {
        return Ok(None);
    }
    Err(GateError::Command { cmd: format!("nft -j list table {FAMILY} {TABLE}"), stderr: stderr(&out) })
}

fn table_exists() -> Result<bool, GateError> {
    let out = super::run(Command::new("nft").args(["-j", "list", "tables", FAMILY]))?;
    let listing: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| GateError::Other(format!("parsing `nft -j list tables`: {e}")))?;
    let found = entries(&listing).any(|(k, t)| k == "table" && t["name"] == TABLE);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::Proto;

    fn tcp(port: u16) -> Step {
        Step { port, proto: Proto::Tcp }
    }

    fn udp(port: u16) -> Step {
        Step { port, proto: Proto::Udp }
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    const RULES: &str = r#"
      {"add": {"rule": {"family": "inet", "table": "xknockd", "chain": "input", "expr": [
        {"match": {"op": "==", "left": {"concat": [{"payload": {"protocol": "ip", "field": "saddr"}},
          {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "right": "@allow4"}},
        {"accept": null}]}}},
      {"add": {"rule": {"family": "inet", "table": "xknockd", "chain": "input", "expr": [
        {"match": {"op": "==", "left": {"concat": [{"payload": {"protocol": "ip6", "field": "saddr"}},
          {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "right": "@allow6"}},
        {"accept": null}]}}},
      {"add": {"rule": {"family": "inet", "table": "xknockd", "chain": "input", "expr": [
        {"match": {"op": "==", "left": {"concat": [{"meta": {"key": "l4proto"}},
          {"payload": {"protocol": "th", "field": "dport"}}]}, "right": "@protected"}},
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["invalid", "new", "untracked"]}},
        {"drop": null}]}}}"#;

    const SETS_AND_CHAIN: &str = r#"
      {"add": {"set": {"family": "inet", "table": "xknockd", "name": "allow4",
                       "type": ["ipv4_addr", "inet_proto", "inet_service"], "flags": ["timeout"]}}},
      {"add": {"set": {"family": "inet", "table": "xknockd", "name": "allow6",
                       "type": ["ipv6_addr", "inet_proto", "inet_service"], "flags": ["timeout"]}}},
      {"add": {"set": {"family": "inet", "table": "xknockd", "name": "protected",
                       "type": ["inet_proto", "inet_service"]}}},
      {"add": {"chain": {"family": "inet", "table": "xknockd", "name": "input",
                         "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}}},
      {"flush": {"chain": {"family": "inet", "table": "xknockd", "name": "input"}}},"#;

    #[test]
    fn install_adopts_and_refills_protected_only() {
        let want = format!(
            r#"{{"nftables": [
              {{"add": {{"table": {{"family": "inet", "name": "xknockd"}}}}}},
              {SETS_AND_CHAIN}
              {RULES},
              {{"flush": {{"set": {{"family": "inet", "table": "xknockd", "name": "protected"}}}}}},
              {{"add": {{"element": {{"family": "inet", "table": "xknockd", "name": "protected",
                "elem": [{{"concat": ["tcp", 22]}}, {{"concat": ["udp", 60001]}}]}}}}}}
            ]}}"#
        );
        let ports = [udp(60001), tcp(22), udp(60001)];
        assert_eq!(install_doc(&ports, false, &[]), parse(&want));
    }

    #[test]
    fn install_replacing_deletes_the_table_and_carries_windows() {
        let carried = Window {
            door: "ssh".into(),
            src: "fd77::2".parse().unwrap(),
            port: tcp(2222),
            remaining: Duration::ZERO,
        };
        let want = format!(
            r#"{{"nftables": [
              {{"add": {{"table": {{"family": "inet", "name": "xknockd"}}}}}},
              {{"delete": {{"table": {{"family": "inet", "name": "xknockd"}}}}}},
              {{"add": {{"table": {{"family": "inet", "name": "xknockd"}}}}}},
              {SETS_AND_CHAIN}
              {RULES},
              {{"flush": {{"set": {{"family": "inet", "table": "xknockd", "name": "protected"}}}}}},
              {{"add": {{"element": {{"family": "inet", "table": "xknockd", "name": "allow6",
                "elem": [{{"elem": {{"val": {{"concat": ["fd77::2", "tcp", 2222]}},
                                     "timeout": 1, "comment": "ssh"}}}}]}}}}}}
            ]}}"#
        );
        assert_eq!(install_doc(&[], true, &[carried]), parse(&want));
    }

    #[test]
    fn open_adds_deletes_and_adds_in_one_document() {
        let elems = r#"[{"elem": {"val": {"concat": ["10.77.0.2", "tcp", 2222]}, "timeout": 3, "comment": "ssh"}},
                        {"elem": {"val": {"concat": ["10.77.0.2", "udp", 60001]}, "timeout": 3, "comment": "ssh"}}]"#;
        let want = format!(
            r#"{{"nftables": [
              {{"add": {{"element": {{"family": "inet", "table": "xknockd", "name": "allow4", "elem": {elems}}}}}}},
              {{"delete": {{"element": {{"family": "inet", "table": "xknockd", "name": "allow4", "elem": [
                {{"concat": ["10.77.0.2", "tcp", 2222]}}, {{"concat": ["10.77.0.2", "udp", 60001]}}]}}}}}},
              {{"add": {{"element": {{"family": "inet", "table": "xknockd", "name": "allow4", "elem": {elems}}}}}}}
            ]}}"#
        );
        let src = "10.77.0.2".parse().unwrap();
        let ports = [udp(60001), tcp(2222)];
        let got = open_doc("ssh", src, &ports, Duration::from_millis(2500));
        assert_eq!(got, Some(parse(&want)));
        assert_eq!(open_doc("ssh", src, &[], Duration::from_secs(3)), None);
    }

    #[test]
    fn open_puts_mapped_v4_in_the_v4_set_and_v6_in_the_v6_set() {
        let one = |src: &str| {
            let got = open_doc("d", src.parse().unwrap(), &[tcp(1)], Duration::from_secs(1)).unwrap();
            got["nftables"][1]["delete"]["element"].clone()
        };
        let mapped = one("::ffff:10.77.0.2");
        assert_eq!(
            (&mapped["name"], &mapped["elem"][0]["concat"][0]),
            (&json!("allow4"), &json!("10.77.0.2"))
        );
        assert_eq!(one("fd77::2")["name"], "allow6");
    }

    #[test]
    fn close_and_flush_documents() {
        let close = r#"{"nftables": [
          {"flush": {"set": {"family": "inet", "table": "xknockd", "name": "allow4"}}},
          {"flush": {"set": {"family": "inet", "table": "xknockd", "name": "allow6"}}}]}"#;
        assert_eq!(close_doc(), parse(close));
        let flush = r#"{"nftables": [
          {"add": {"table": {"family": "inet", "name": "xknockd"}}},
          {"delete": {"table": {"family": "inet", "name": "xknockd"}}}]}"#;
        assert_eq!(flush_doc(), parse(flush));
    }

    #[test]
    fn timeouts_round_up_to_whole_seconds_and_never_zero() {
        assert_eq!(timeout_secs(Duration::ZERO), 1);
        assert_eq!(timeout_secs(Duration::from_millis(1)), 1);
        assert_eq!(timeout_secs(Duration::from_secs(3)), 3);
        assert_eq!(timeout_secs(Duration::from_millis(3001)), 4);
        assert_eq!(timeout_secs(Duration::MAX), u64::MAX);
    }

    #[test]
    fn comments_are_cut_on_a_char_boundary() {
        assert_eq!(comment("ssh"), "ssh");
        let long = "é".repeat(100);
        assert_eq!(comment(&long).len(), 128);
        assert_eq!(comment(&"a".repeat(129 + 2)).len(), 128);
    }
}
