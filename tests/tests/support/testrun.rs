//! The XDP program loaded (never attached) with a gate on chosen ports, for
//! frame-by-frame verdicts through BPF_PROG_TEST_RUN. Shared by
//! tests/tests/xdp_evasion.rs and the differential fuzzer example.

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use xknock::{
    bpf::{gate::XdpGate, Counters, XdpKnocker},
    config::model::Step,
    gate::{Gate, Protected},
};
use xknock_tests::netns::BpffsMount;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

pub struct GatedRig {
    knocker: XdpKnocker,
    gate: XdpGate,
    protected: Vec<Protected>,
    // Last, so it is unmounted after the maps pinned in it are closed.
    _bpffs: BpffsMount,
}

impl GatedRig {
    /// Loads the program with its gate maps pinned in a throwaway bpffs and
    /// gates `ports` (no window open).
    pub fn new(ports: &[Step]) -> Result<Self> {
        let bpffs = BpffsMount::new()?;
        let mut knocker = XdpKnocker::load(Some(&bpffs.0.join("pins"))).context("load XDP object")?;
        let gate = knocker.gate().context("XDP gate")?;
        let protected = ports.iter().map(|&port| Protected { door: "d".into(), port }).collect();
        let mut rig = Self { knocker, gate, protected, _bpffs: bpffs };
        rig.set_gate(true)?;
        Ok(rig)
    }

    /// Gates the ports (on) or none at all (off, so no gate is active).
    pub fn set_gate(&mut self, on: bool) -> Result<()> {
        let ports = if on { &self.protected[..] } else { &[] };
        self.gate.install(ports).context("gate install")
    }

    /// The verdict on one frame; `None` when the kernel refuses the frame
    /// (shorter than an Ethernet header).
    pub fn verdict(&self, frame: &[u8]) -> Option<u32> {
        let opts = TestRunOptions { data_in: Some(frame), ..Default::default() };
        let prog = self.knocker.program().expect("loaded program");
        prog.test_run(opts).ok().map(|r| r.return_value)
    }

    pub fn counters(&self) -> Counters {
        self.knocker.counters().expect("counters")
    }
}
