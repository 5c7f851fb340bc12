//! The gate stays in place while xknockd runs: another tool flushing the
//! ruleset, deleting our table, putting a rule above our jump or bypassing
//! conntrack is noticed within a second, logged, and repaired, with a real
//! echo server behind the protected port. Every firewall command runs inside
//! the test's own server namespace.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use xknock::{
    config::model::{Proto, Step},
    gate::{iptables::IptablesGate, nftables::NftGate, Gate, GateError, Protected},
};
use xknock_tests::{
    gate::{server_out, Family, Rig, PORT, WAIT},
    netns::{connect_from, in_netns, EchoServer, NetPair, CLIENT2_V4, CLIENT_V4, CLIENT_V6, SERVER_V4},
    privileged, wait_until,
};

/// Long enough that a window opened before a flush is still open after it.
const DURATION: u64 = 30;
/// The bound on noticing and repairing: the daemon checks twice a second.
const REPAIRED: Duration = Duration::from_secs(2);

fn nft_rig(test: &str) -> Option<Rig> {
    Rig::start(test, "nftables", DURATION, &[])
}

fn iptables_rig(test: &str) -> Option<Rig> {
    Rig::start(test, "iptables", DURATION, &["bpffs_dir: {DIR}/bpf"])
}

/// Runs `argv` in the server namespace; it must succeed.
fn server(rig: &Rig, argv: &[&str]) -> String {
    server_out(rig.pair(), argv)
}

/// Whether `argv` succeeds in the server namespace.
fn server_ok(pair: &NetPair, argv: &[&str]) -> bool {
    let out = pair.server_cmd(argv[0]).args(&argv[1..]).output().unwrap();
    out.status.success()
}

/// Runs `tamper` in the server namespace, then waits for the daemon's
/// `needle` log line and for `repaired` to hold; returns how long the
/// repair took.
fn tamper_and_await(
    rig: &mut Rig,
    tamper: &[&str],
    needle: &str,
    repaired: impl Fn(&Rig) -> bool,
) -> Duration {
    assert!(repaired(rig), "not in place before {tamper:?}");
    let before = rig.srv.daemon.count(needle);
    let start = Instant::now();
    server(rig, tamper);
    assert!(wait_until(REPAIRED, || repaired(rig)), "{tamper:?} not repaired within {REPAIRED:?}");
    let took = start.elapsed();
    rig.srv.daemon.wait_for_n(needle, before + 1, REPAIRED).unwrap();
    took
}

/// The non-knocker's SYN is dropped (a timeout, never a refusal), while
/// the knocker gets in when `knocker_in`.
fn assert_gate_holds(rig: &Rig, f: &Family, knocker_in: bool) {
    assert!(!rig.connects_or_times_out(Some(f.client2), f.server), "{} got in", f.client2);
    assert_eq!(rig.connects_or_times_out(Some(f.client), f.server), knocker_in, "knocker {}", f.client);
}

// ---- nftables -------------------------------------------------------------

fn nft_table_present(rig: &Rig) -> bool {
    server_ok(rig.pair(), &["nft", "list", "table", "inet", "xknockd"])
}

/// `nft flush ruleset`, as `systemctl reload nftables` does on Debian:
/// the table is back within the bound, with the knocker's window.
#[test]
fn nft_flush_ruleset_is_repaired_and_keeps_the_knockers_window() {
    let Some(mut rig) = nft_rig("gate_repair_nft_flush") else { return };
    let f = &xknock_tests::gate::V4;
    rig.knock(f.server);
    assert!(wait_until(WAIT, || rig.connects(Some(f.client), f.server)), "the knock opened nothing");

    let took = tamper_and_await(
        &mut rig,
        &["nft", "flush", "ruleset"],
        "table inet xknockd is gone",
        nft_table_present,
    );
    assert!(took <= Duration::from_millis(1500), "repair took {took:?}");
    let windows = server(&rig, &["nft", "list", "set", "inet", "xknockd", "allow4"]);
    assert!(windows.contains(&format!("{} . tcp . {PORT}", f.client)), "window not restored: {windows}");
    assert!(windows.contains("expires"), "restored without a timeout: {windows}");
    assert_gate_holds(&rig, f, true);
}

/// Deleting our table, then flushing our chain, are each repaired.
#[test]
fn nft_deleted_table_and_flushed_chain_are_repaired() {
    let Some(mut rig) = nft_rig("gate_repair_nft_delete") else { return };
    let f = &xknock_tests::gate::V6;
    let delete = ["nft", "delete", "table", "inet", "xknockd"];
    tamper_and_await(&mut rig, &delete, "table inet xknockd is gone", nft_table_present);
    assert_gate_holds(&rig, f, false);

    let drop_rules =
        |rig: &Rig| server(rig, &["nft", "list", "chain", "inet", "xknockd", "input"]).contains("drop");
    let flush = ["nft", "flush", "chain", "inet", "xknockd", "input"];
    tamper_and_await(&mut rig, &flush, "chain input holds 0 rules", drop_rules);
    assert_gate_holds(&rig, f, false);
}

/// A `notrack` rule in another table's raw-priority chains takes new
/// connections out of conntrack; the drop still catches them.
#[test]
fn nft_notrack_elsewhere_does_not_let_a_non_knocker_in() {
    let Some(mut rig) = nft_rig("gate_repair_nft_notrack") else { return };
    let f = &xknock_tests::gate::V4;
    server(&rig, &["nft", NOTRACK]);
    assert!(untracked_seen(rig.pair(), || assert_gate_holds(&rig, f, false)));
    // With the window open, untracked knockers' packets get in.
    rig.knock(f.server);
    assert!(wait_until(WAIT, || rig.connects(Some(f.client), f.server)), "the knock opened nothing");
    assert!(!rig.connects_or_times_out(Some(f.client2), f.server));
}

/// Takes every new packet out of conntrack and counts the ones that are
/// untracked when they reach the input hook.
const NOTRACK: &str = "add table inet sneak; \
    add chain inet sneak pre { type filter hook prerouting priority raw; }; \
    add rule inet sneak pre notrack; \
    add chain inet sneak out { type filter hook output priority raw; }; \
    add rule inet sneak out notrack; \
    add chain inet sneak seen { type filter hook input priority filter - 20; }; \
    add rule inet sneak seen tcp dport 2222 ct state untracked counter";

/// Runs `probe` and says whether untracked SYNs to the port reached the
/// input hook meanwhile: proof the notrack rule was in force.
fn untracked_seen(pair: &NetPair, probe: impl FnOnce()) -> bool {
    let count = || {
        let chain = server_out(pair, &["nft", "list", "chain", "inet", "sneak", "seen"]);
        let at = chain.find("packets ").expect("a counter") + "packets ".len();
        chain[at..].split_whitespace().next().unwrap().parse::<u64>().unwrap()
    };
    let before = count();
    probe();
    count() > before
}

/// A table an older xknockd left, whose drop matched `ct state new` only,
/// is rewritten at start: before, notrack let anyone in; after, it does not.
#[test]
fn nft_an_old_new_only_drop_rule_is_replaced_at_install() {
    if !privileged("gate_repair_nft_old_rule") {
        return;
    }
    let pair = NetPair::new().unwrap();
    let _echo = EchoServer::start(&pair.server, &format!("[::]:{PORT}")).unwrap();
    let old = "add table inet xknockd; \
        add set inet xknockd allow4 { type ipv4_addr . inet_proto . inet_service; flags timeout; }; \
        add set inet xknockd allow6 { type ipv6_addr . inet_proto . inet_service; flags timeout; }; \
        add set inet xknockd protected { type inet_proto . inet_service; }; \
        add element inet xknockd protected { tcp . 2222 }; \
        add chain inet xknockd input { type filter hook input priority filter - 10; policy accept; }; \
        add rule inet xknockd input meta l4proto . th dport @protected ct state new drop";
    server_out(&pair, &["nft", old]);
    server_out(&pair, &["nft", NOTRACK]);
    // The old rule held against tracked SYNs, but the notrack rule gets past it.
    assert!(untracked_seen(&pair, || assert!(plain_connects(&pair, CLIENT2_V4), "the bypass did not work")));

    let install = |g: &mut NftGate| {
        let port = Step { port: PORT, proto: Proto::Tcp };
        g.install(&[Protected { door: "ssh".into(), port }])?;
        g.repair(&[Protected { door: "ssh".into(), port }])
    };
    let fixes = in_netns(&pair.server, move || install(&mut NftGate::new()?)).unwrap().unwrap();
    assert!(fixes.is_empty(), "a fresh install needed repairs: {fixes:?}");
    let chain = server_out(&pair, &["nft", "list", "chain", "inet", "xknockd", "input"]);
    assert!(chain.contains("ct state invalid,new,untracked drop"), "{chain}");
    assert_eq!(chain.matches(" drop").count(), 1, "{chain}");
    assert!(!plain_connects(&pair, CLIENT2_V4), "{CLIENT2_V4} got in past the new rule");
}

/// A connect from `src` to the server's port, outside any rig: in, or a
/// timeout; a refusal fails the test.
fn plain_connects(pair: &NetPair, src: &str) -> bool {
    let dst = SocketAddr::new(SERVER_V4.parse().unwrap(), PORT);
    let src: IpAddr = src.parse().unwrap();
    match connect_from(&pair.client, Some(src), dst, Duration::from_secs(1)).unwrap() {
        Ok(_) => true,
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "connect from {src}: {e}");
            false
        }
    }
}

// ---- iptables and ip6tables -----------------------------------------------

fn tool(f: &Family) -> &'static str {
    if f.server.contains(':') {
        "ip6tables"
    } else {
        "iptables"
    }
}

/// Whether INPUT's first rule is our jump, and the only one.
fn jump_first(rig: &Rig, tool: &str) -> bool {
    let rules = server(rig, &[tool, "-w", "-S", "INPUT"]);
    let input: Vec<&str> = rules.lines().filter(|l| l.starts_with("-A INPUT")).collect();
    input.first() == Some(&"-A INPUT -j XKNOCKD")
        && input.iter().filter(|l| l.contains("XKNOCKD")).count() == 1
}

xknock_tests::per_family!(jump_scenario:
    iptables_rule_above_the_jump_and_deleted_jump_are_repaired = "gate_repair_iptables_jump_v4",
    ip6tables_rule_above_the_jump_and_deleted_jump_are_repaired = "gate_repair_iptables_jump_v6");

/// `-I INPUT 1 -j ACCEPT` above our jump, then a deleted jump: each is
/// noticed, logged and undone, and the non-knocker stays out.
fn jump_scenario(test: &str, f: &Family) {
    let Some(mut rig) = iptables_rig(test) else { return };
    let tool = tool(f);
    let first = |rig: &Rig| jump_first(rig, tool);
    let needle = format!("{tool}: 1 rule(s) above our jump in INPUT");
    tamper_and_await(&mut rig, &[tool, "-w", "-I", "INPUT", "1", "-j", "ACCEPT"], &needle, first);
    assert_gate_holds(&rig, f, false);

    let needle = format!("{tool}: INPUT does not jump to XKNOCKD");
    tamper_and_await(&mut rig, &[tool, "-w", "-D", "INPUT", "-j", "XKNOCKD"], &needle, first);
    assert_gate_holds(&rig, f, false);
}

/// A flushed chain and a destroyed ipset (in that order: the set is in
/// use until the chain is empty) are put back, with the knocker's window.
#[test]
fn iptables_flushed_chain_and_destroyed_set_are_repaired_with_the_window() {
    let Some(mut rig) = iptables_rig("gate_repair_iptables_set") else { return };
    let f = &xknock_tests::gate::V4;
    rig.knock(f.server);
    assert!(wait_until(WAIT, || rig.connects(Some(f.client), f.server)), "the knock opened nothing");

    let set_has_window = |rig: &Rig| {
        let pair = rig.pair();
        server_ok(pair, &["ipset", "test", "xknockd4", &format!("{CLIENT_V4},tcp:{PORT}")])
            && server(rig, &["iptables", "-w", "-S", "XKNOCKD"]).contains("DROP")
    };
    let tamper = ["sh", "-c", "iptables -w -F XKNOCKD && ipset destroy xknockd4"];
    tamper_and_await(&mut rig, &tamper, "iptables: ipset xknockd4 is gone", set_has_window);
    let entry = server(&rig, &["ipset", "list", "xknockd4", "-output", "save"]);
    assert!(entry.contains("timeout"), "restored without a timeout: {entry}");
    assert_gate_holds(&rig, f, true);
}

// ---- the backends on their own ----------------------------------------------

/// Drives `gate` in a fresh server namespace: install, a window per
/// family, then `tamper` (a shell line); returns what each repair call said:
/// before the tampering, after it, and once more. `None`: skipped.
fn repair_rounds<G: Gate + 'static>(
    test: &str,
    gate: fn() -> Result<G, GateError>,
    tamper: &'static str,
) -> Option<Vec<Vec<String>>> {
    if !privileged(test) {
        return None;
    }
    let pair = NetPair::new().unwrap();
    let rounds = move || -> Result<Vec<Vec<String>>, GateError> {
        let mut g = gate()?;
        let port = Step { port: PORT, proto: Proto::Tcp };
        let protected = [Protected { door: "ssh".into(), port }];
        g.install(&protected)?;
        for src in [CLIENT_V4, CLIENT_V6] {
            g.open("ssh", src.parse().unwrap(), &[port], Duration::from_secs(60))?;
        }
        let quiet = g.repair(&protected)?;
        let status = std::process::Command::new("sh").args(["-c", tamper]).status()?;
        assert!(status.success(), "{tamper}");
        let fixed = g.repair(&protected)?;
        let windows = g.windows()?;
        assert_eq!(windows.len(), 2, "windows after the repair: {windows:?}");
        Ok(vec![quiet, fixed, g.repair(&protected)?])
    };
    Some(in_netns(&pair.server, rounds).unwrap().unwrap())
}

/// An intact gate with windows in both families needs no repair; a window
/// wiped in one family is restored, in that family only, with one line.
fn assert_one_repair(rounds: &[Vec<String>], needle: &str) {
    assert!(rounds[0].is_empty(), "repaired an intact gate: {:?}", rounds[0]);
    assert_eq!(rounds[1].len(), 1, "{:?}", rounds[1]);
    assert!(rounds[1][0].contains(needle), "{:?}", rounds[1]);
    assert!(rounds[2].is_empty(), "repaired twice: {:?}", rounds[2]);
}

#[test]
fn nft_backend_restores_a_flushed_allow_set_and_is_quiet_otherwise() {
    let tamper = "nft flush set inet xknockd allow6";
    let Some(rounds) = repair_rounds("gate_repair_nft_backend", NftGate::new, tamper) else { return };
    assert_one_repair(&rounds, "1 open window(s) gone from the allow sets");
}

#[test]
fn iptables_backend_restores_a_flushed_ipset_and_is_quiet_otherwise() {
    let tamper = "ipset flush xknockd6";
    let Some(rounds) = repair_rounds("gate_repair_iptables_backend", IptablesGate::new, tamper) else {
        return;
    };
    assert_one_repair(&rounds, "ip6tables: 1 open window(s) gone from ipset xknockd6");
}
