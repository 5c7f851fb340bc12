//! `cargo xtask fuzz`: every fuzzer we have. The libFuzzer targets in
//! knockd-user/fuzz (parsers and decoders that read what anyone may hand
//! us) run for a time each, then the differential fuzzer pushes frames
//! through the XDP program and checks each verdict against a model of Linux.

use std::process::Command;

use anyhow::{bail, Result};

use crate::{cargo, check, is_root, setup, workspace_root};

/// The libFuzzer targets, as named in knockd-user/fuzz/Cargo.toml.
pub const TARGETS: [&str; 5] =
    ["config_knockd_conf", "config_yaml", "one_time", "event_decode", "spa_decode"];

/// Every libFuzzer target for `seconds` each, then `frames` frames of the
/// differential fuzzer (root only: it loads XDP programs).
pub fn all(seconds: u64, frames: u64, seed: Option<u64>) -> Result<()> {
    for target in TARGETS {
        libfuzzer(target, seconds)?;
    }
    differential(frames, seed)
}

/// Runs the fuzzer example (it needs the XDP object, which xtask must not
/// link); fails when it finds a frame the program wrongly passes.
pub fn differential(frames: u64, seed: Option<u64>) -> Result<()> {
    if !is_root() {
        bail!("the differential fuzzer loads XDP programs: run it as root");
    }
    println!("== fuzz: XDP differential ({frames} frames)");
    let frames = frames.to_string();
    let mut args = vec!["run", "--quiet", "--package", "xknock-tests", "--example", "fuzz_xdp", "--"];
    args.extend(["--frames", &frames]);
    let seed = seed.map(|s| s.to_string());
    if let Some(seed) = &seed {
        args.extend(["--seed", seed]);
    }
    check(&mut cargo(&args)?)
}

/// Runs one libFuzzer target for `seconds` from its committed seeds; fails
/// on a crash (libFuzzer keeps the input under fuzz/artifacts; a fixed
/// crash's input belongs in fuzz/regressions/<target>/).
pub fn libfuzzer(target: &str, seconds: u64) -> Result<()> {
    println!("== fuzz: {target} ({seconds} s)");
    setup::ensure_toolchain()?;
    setup::ensure_cargo_fuzz()?;
    let fuzz_dir = workspace_root().join("knockd-user/fuzz");
    // Fresh finds go to a scratch corpus; the committed seeds stay as they are.
    let scratch = workspace_root().join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&scratch)?;
    let max_time = format!("-max_total_time={seconds}");
    // The rustup proxy, not $CARGO: only it can switch to the nightly that
    // libFuzzer's instrumentation needs. One build serves every target.
    let mut cmd = Command::new("cargo");
    cmd.env("RUSTUP_TOOLCHAIN", "nightly")
        .args(["fuzz", "run", "--fuzz-dir"])
        .arg(&fuzz_dir)
        .arg(target)
        .arg(&scratch)
        .arg(fuzz_dir.join("corpus").join(target));
    cmd.args(["--", &max_time]).current_dir(&fuzz_dir);
    check(&mut cmd)
}
