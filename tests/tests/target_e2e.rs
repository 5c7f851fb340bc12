//! A door with `target` counts only knocks sent to that address, as knockd's
//! does, now that its first step is kept in the kernel too: a sequence sent
//! to the host's own address, or one whose first step went there, opens
//! nothing; the same sequence to the target opens. The evidence is a real
//! listener behind the nftables gate.

use xknock_tests::{
    gate::{Rig, SEQUENCE, WAIT},
    netns::{CLIENT2_V4, CLIENT_V4, SERVER_V4},
};

/// A second address of the server, and the door's target.
const TARGET: &str = "10.77.0.9";
const DURATION: u64 = 30;

/// The rig's `ssh` door with `target: TARGET`, and a single-step door on
/// 6000 whose OPEN SESAME (logged by the loop, in event order) says every
/// knock sent before it has been handled.
fn rig() -> Option<Rig> {
    let unstarted = Rig::prepare("target_scope", "nftables", DURATION, &[])?;
    let p = unstarted.pair();
    p.in_ns(&p.server, &["ip", "addr", "add", &format!("{TARGET}/24"), "dev", &p.server_if]).unwrap();
    let path = unstarted.config_path();
    let mut yaml = std::fs::read_to_string(&path).unwrap();
    yaml.push_str(&format!(
        "    target: {TARGET}\n  sentinel:\n    sequence: [\"6000\"]\n    seq_timeout: 5\n    tcp_flags: syn\n"
    ));
    std::fs::write(&path, yaml).unwrap();
    Some(unstarted.start())
}

/// Knocks on the sentinel door and waits until its OPEN SESAME is logged.
fn sentinel(rig: &mut Rig) {
    let line = format!("{CLIENT_V4}: sentinel: OPEN SESAME");
    let before = rig.srv.daemon.count(&line);
    rig.pair().xknock(&[SERVER_V4, "6000"]);
    rig.srv.daemon.wait_for_n(&line, before + 1, WAIT).unwrap();
}

#[test]
fn a_targeted_door_opens_only_for_knocks_to_its_target() {
    let Some(mut rig) = rig() else { return };
    let knock = |rig: &Rig, to: &str, steps: &[&str]| rig.pair().xknock(&[&[to], steps].concat());
    // The whole sequence to the host's own address: the kernel pairs the
    // first two steps (same destination) and the tracker refuses them.
    knock(&rig, SERVER_V4, &SEQUENCE);
    // The first step to the host, the rest to the target: the kernel keeps
    // no first step for the target, so nothing reaches the tracker.
    knock(&rig, SERVER_V4, &SEQUENCE[..1]);
    knock(&rig, TARGET, &SEQUENCE[1..]);
    sentinel(&mut rig);
    let staged: Vec<String> = rig.srv.daemon.output().into_iter().filter(|l| l.contains(": ssh: ")).collect();
    assert!(staged.is_empty(), "knocks not sent to the target counted: {staged:#?}");
    assert!(!rig.connects(Some(CLIENT_V4), SERVER_V4), "opened without a knock to the target");

    let opened = format!("{CLIENT_V4}: ssh: OPEN SESAME");
    knock(&rig, TARGET, &SEQUENCE);
    rig.srv.daemon.wait_for(&opened, WAIT).unwrap();
    assert!(rig.connects(Some(CLIENT_V4), SERVER_V4), "the knock to the target did not open");
    assert!(!rig.connects(Some(CLIENT2_V4), SERVER_V4), "opened for another address");
}
