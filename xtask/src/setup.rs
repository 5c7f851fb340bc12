//! `cargo xtask setup`: everything a fresh machine lacks, each step skipped
//! when already done, and each said out loud.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{check, is_root};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// What the tests need (nftables/iptables/ipset for the firewall backends,
/// knockd and fwknop's client and server for interop; Debian ships
/// fwknop-server with START_DAEMON="no", so nothing starts on install).
pub const TEST_PACKAGES: &[&str] = &[
    "nftables",
    "iptables",
    "ipset",
    "iproute2",
    "iputils-ping",
    "netcat-openbsd",
    "knockd",
    "fwknop-client",
    "fwknop-server",
    // Issue 12: a real parser for the metrics test, man(1) and dpkg for the
    // package test.
    "python3-prometheus-client",
    "man-db",
    "dpkg",
];

/// What `cargo xtask bench` adds: knockd to compare with, gnuplot-nox for the
/// chart, iproute2 for the namespaces.
pub const BENCH_PACKAGES: &[&str] = &["knockd", "gnuplot-nox", "iproute2"];

pub fn run() -> Result<()> {
    ensure_toolchain()?;
    if is_root() {
        ensure_packages(TEST_PACKAGES)?;
    } else {
        println!("setup: not root, skipping Debian packages ({})", TEST_PACKAGES.join(" "));
    }
    Ok(())
}

/// Nightly with rust-src (for -Z build-std) and a bpf-linker built against
/// the nightly's own LLVM.
pub fn ensure_toolchain() -> Result<()> {
    ensure_nightly()?;
    ensure_bpf_linker()
}

fn ensure_nightly() -> Result<()> {
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !installed.lines().any(|l| l.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain with rust-src");
        return check(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]));
    }
    let comps =
        output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if comps.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: nightly rust-src present");
        return Ok(());
    }
    println!("setup: adding rust-src to the nightly toolchain");
    check(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XKNOCK_TOOLS_DIR") {
        return dir.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/xknock")
}

/// The nightly's libLLVM, found by globbing rather than by a hard-coded version.
fn nightly_llvm() -> Result<PathBuf> {
    let sysroot = output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .collect();
    found.sort();
    found.pop().with_context(|| format!("no libLLVM.so.* in {}", lib.display()))
}

/// Per-LLVM install dir: a new nightly with another LLVM gets its own build.
fn linker_root() -> Result<(PathBuf, PathBuf)> {
    let llvm = nightly_llvm()?;
    let name = llvm.file_name().and_then(|n| n.to_str()).context("libLLVM file name")?.to_string();
    let root = tools_dir().join(format!("bpf-linker-{BPF_LINKER_VERSION}-{name}"));
    Ok((root, llvm))
}

pub fn bpf_linker_bin_dir() -> Result<PathBuf> {
    Ok(linker_root()?.0.join("bin"))
}

fn ensure_bpf_linker() -> Result<()> {
    let (root, llvm) = linker_root()?;
    let bin = root.join("bin/bpf-linker");
    if Command::new(&bin).arg("--version").output().is_ok_and(|o| o.status.success()) {
        println!("setup: bpf-linker present at {}", bin.display());
        return Ok(());
    }
    let major = llvm_major(&llvm)?;
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against {} (LLVM {major})", llvm.display());
    // The linker links against `libLLVM.so`; the loader finds the soname
    // through bpf-linker's rpath into this prefix, which must therefore last.
    let prefix = root.join("llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    let soname = llvm.file_name().context("libLLVM name")?;
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link).with_context(|| format!("symlink {}", link.display()))?;
    }
    check(
        Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{major}"), "--root"])
            .arg(&root)
            .env("LLVM_PREFIX", &prefix)
            .env("RUSTUP_TOOLCHAIN", "stable"),
    )
}

/// "libLLVM.so.22.1-rust-1.97.0-nightly" → 22.
fn llvm_major(llvm: &Path) -> Result<u32> {
    let name = llvm.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.strip_prefix("libLLVM.so.")
        .and_then(|rest| rest.split(['.', '-']).next())
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM major version from {name}"))
}

/// cargo-fuzz, for `cargo xtask fuzz-spa` (built from crates.io once).
pub fn ensure_cargo_fuzz() -> Result<()> {
    if Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success()) {
        println!("setup: cargo-fuzz present");
        return Ok(());
    }
    println!("setup: installing cargo-fuzz");
    check(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]).env("RUSTUP_TOOLCHAIN", "stable"))
}

/// cargo-deb, for `cargo xtask deb` (built from crates.io once).
pub fn ensure_cargo_deb() -> Result<()> {
    if Command::new("cargo").args(["deb", "--version"]).output().is_ok_and(|o| o.status.success()) {
        println!("setup: cargo-deb present");
        return Ok(());
    }
    println!("setup: installing cargo-deb");
    check(Command::new("cargo").args(["install", "cargo-deb", "--locked"]).env("RUSTUP_TOOLCHAIN", "stable"))
}

pub fn ensure_packages(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        println!("setup: Debian packages present: {}", pkgs.join(" "));
        return Ok(());
    }
    println!("setup: apt-get installing {}", missing.join(" "));
    check(Command::new("apt-get").arg("update").arg("-qq"))?;
    check(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", pkg])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_is_read_from_the_file_name() {
        assert_eq!(llvm_major(Path::new("/x/libLLVM.so.22.1-rust-1.97.0-nightly")).unwrap(), 22);
        assert_eq!(llvm_major(Path::new("/x/libLLVM.so.19")).unwrap(), 19);
        assert!(llvm_major(Path::new("/x/libLLVM.so.x")).is_err());
    }
}
