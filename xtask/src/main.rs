//! Project tasks: `cargo xtask setup|build|run|test|demo|bench|fuzz|fuzz-spa|deb|soak`.

mod bench;
mod deb;
mod demo;
mod fuzz;
mod setup;
mod soak;

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "xknock project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and tests need (idempotent).
    Setup,
    /// Build xknockd and xknock.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run xknockd with the given arguments (via sudo -E when not root).
    Run {
        #[arg(long)]
        release: bool,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, unprivileged tests, then privileged end-to-end tests.
    Test,
    /// A one-minute tour in two throwaway network namespaces.
    Demo {
        #[arg(long)]
        release: bool,
    },
    /// Per-packet cost and floods side by side with knockd; writes target/bench/.
    Bench {
        /// A few seconds through the same code paths (run by `test` as root).
        #[arg(long)]
        quick: bool,
    },
    /// Every fuzzer: each libFuzzer target in knockd-user/fuzz (knockd.conf,
    /// YAML, one-time files, ring records, SPA) for --seconds, then the XDP
    /// differential fuzzer (frames checked against a model of Linux).
    Fuzz {
        /// Seconds per libFuzzer target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        /// Frames of the differential fuzzer.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// Seed of the differential fuzzer.
        #[arg(long)]
        seed: Option<u64>,
        /// Only this libFuzzer target (and no differential run).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(fuzz::TARGETS))]
        target: Option<String>,
    },
    /// Floods, knocks, reloads and interface events against xknockd for a
    /// while; RSS, fds, children, zombies and kernel map sizes must stay
    /// flat. Writes target/soak/soak.{md,dat,png}.
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Seconds instead of minutes (short runs).
        #[arg(long, conflicts_with = "minutes")]
        seconds: Option<u64>,
    },
    /// libFuzzer on the SPA decoder only (= fuzz --target spa_decode).
    FuzzSpa {
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// Debian package: target/debian/xknock_<version>_<arch>.deb (cargo-deb).
    Deb {
        /// Pack the debug binaries (quicker; what `test` does).
        #[arg(long)]
        debug: bool,
    },
}

/// Frames of the fuzz run inside `cargo xtask test`.
const TEST_FUZZ_FRAMES: u64 = 20_000;
/// Seconds of the soak inside `cargo xtask test`.
const TEST_SOAK_SECONDS: u64 = 45;
/// Seconds per libFuzzer target inside `cargo xtask test`.
const TEST_FUZZ_SECONDS: u64 = 10;

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run().map(|_| ()),
        Task::Build { release } => build(release),
        Task::Run { release, args } => run(release, &args),
        Task::Test => test(),
        Task::Demo { release } => {
            build(release)?;
            demo::run(&bin_dir(release))
        }
        Task::Bench { quick } => bench::run(quick, false),
        Task::Fuzz { seconds, frames, seed, target } => {
            setup::run()?;
            match target {
                Some(t) => fuzz::libfuzzer(&t, seconds),
                None => fuzz::all(seconds, frames, seed),
            }
        }
        Task::Soak { minutes, seconds } => {
            build(false)?;
            let length = std::time::Duration::from_secs(seconds.unwrap_or(minutes * 60));
            let s = soak::run(&bin_dir(false), length, &soak::out_dir())?;
            println!("soak: flat; {} samples in {}", s.samples.len(), soak::out_dir().display());
            Ok(())
        }
        Task::FuzzSpa { seconds } => fuzz::libfuzzer("spa_decode", seconds),
        Task::Deb { debug } => deb::run(debug).map(|_| ()),
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
}

fn bin_dir(release: bool) -> PathBuf {
    workspace_root().join("target").join(if release { "release" } else { "debug" })
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A cargo command whose PATH finds our bpf-linker, so knockd-user's build
/// script can link the XDP object.
fn cargo(args: &[&str]) -> Result<Command> {
    let linker_bin = setup::bpf_linker_bin_dir()?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![linker_bin];
    paths.extend(std::env::split_paths(&path));
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(workspace_root()).env("PATH", std::env::join_paths(paths)?);
    Ok(cmd)
}

pub fn check(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn build(release: bool) -> Result<()> {
    setup::ensure_toolchain()?;
    let mut args = vec!["build", "--package", "knockd-user", "--bins"];
    if release {
        args.push("--release");
    }
    check(&mut cargo(&args)?)
}

fn run(release: bool, args: &[String]) -> Result<()> {
    build(release)?;
    let daemon = bin_dir(release).join("xknockd");
    let mut cmd = if is_root() {
        Command::new(&daemon)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&daemon);
        c
    };
    check(cmd.args(args))
}

fn test() -> Result<()> {
    setup::run()?;
    println!("== unprivileged tests");
    let mut tally = Tally::default();
    tally.run(&mut cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "xknock-tests",
        "--exclude",
        "knockd-ebpf",
    ])?)?;
    println!("== privileged end-to-end tests");
    build(false)?;
    // From the debug binaries just built: tests/tests/deb.rs installs it.
    let deb = deb::run(true)?;
    let mut e2e = cargo(&["test", "--package", "xknock-tests", "--", "--test-threads=1"])?;
    e2e.env("XKNOCK_BIN_DIR", bin_dir(false)).env("XKNOCK_DEB", deb);
    if is_root() {
        // Running as root: a test that would skip for lack of privilege fails instead.
        e2e.env("XKNOCK_REQUIRE_PRIV", "1");
    } else {
        println!("not root: privileged tests will report SKIPPED");
    }
    tally.run(&mut e2e)?;
    if is_root() {
        println!("== demo");
        demo::run(&bin_dir(false))?;
        fuzz::differential(TEST_FUZZ_FRAMES, None)?;
        // Keeps the bench's code paths alive; asserts nothing about speed.
        println!("== bench --quick");
        bench::run(true, true)?;
        // Asserts flatness, not speed.
        println!("== soak ({TEST_SOAK_SECONDS} s)");
        soak::run(&bin_dir(false), std::time::Duration::from_secs(TEST_SOAK_SECONDS), &soak::out_dir())?;
    }
    for target in fuzz::TARGETS {
        fuzz::libfuzzer(target, TEST_FUZZ_SECONDS)?;
    }
    // One closing line for the whole run: the per-binary summaries above end
    // with doc-test runs that have nothing to run.
    println!("{} passed, {} failed", tally.passed, tally.failed);
    Ok(())
}

/// Sums cargo's `test result:` lines while passing its output through.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    fn run(&mut self, cmd: &mut Command) -> Result<()> {
        use std::io::{BufRead, BufReader};
        let mut child =
            cmd.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("spawning {cmd:?}"))?;
        for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
            let line = line?;
            println!("{line}");
            self.count(&line);
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("{cmd:?} failed: {status}");
        }
        Ok(())
    }

    /// `test result: ok. 11 passed; 0 failed; 0 ignored; ...`
    fn count(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else { return };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else { continue };
            let n: u64 = n.parse().unwrap_or(0);
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_sums_cargo_summaries() {
        let mut t = Tally::default();
        t.count(
            "test result: ok. 11 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.15s",
        );
        t.count("test result: FAILED. 9 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.16s");
        t.count("running 3 tests");
        assert_eq!((t.passed, t.failed), (20, 1));
    }
}
