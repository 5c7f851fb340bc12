//! `cargo xtask deb`: `target/debian/xknock_<version>_<arch>.deb`, built
//! by cargo-deb from the metadata in knockd-user/Cargo.toml. Before that,
//! the man pages and completions are generated from the clap definitions
//! by knockd-user's `gen-docs` example (xtask must not link knockd-user),
//! and the units are rewritten for /usr/sbin.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{build, cargo, check, setup, workspace_root};

/// Where the generated assets go; knockd-user/Cargo.toml lists them there.
const ASSETS: &str = "target/deb-assets";
const UNITS: [&str; 2] = ["xknockd.service", "xknockd-gate.service"];

/// Builds the package; `debug` packs the debug binaries (what the test
/// uses: a release build takes minutes). Returns the .deb's path.
pub fn run(debug: bool) -> Result<PathBuf> {
    setup::ensure_cargo_deb()?;
    build(!debug)?;
    let root = workspace_root();
    let assets = root.join(ASSETS);
    if assets.exists() {
        fs::remove_dir_all(&assets)?;
    }
    fs::create_dir_all(&assets)?;
    generate_docs(&assets, debug)?;
    for unit in UNITS {
        let text = fs::read_to_string(root.join("configs").join(unit))?;
        fs::write(assets.join(unit), packaged_unit(&text))?;
    }
    let out_dir = root.join("target/debian");
    fs::create_dir_all(&out_dir)?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["deb", "--quiet", "--package", "knockd-user", "--no-build", "--output"])
        .arg(&out_dir)
        .current_dir(&root);
    if debug {
        cmd.args(["--profile", "dev"]);
    }
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!("cargo deb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = String::from_utf8(out.stdout)?
        .lines()
        .last()
        .map(PathBuf::from)
        .context("cargo deb printed nothing")?;
    let path = if path.is_absolute() { path } else { root.join(path) };
    println!("deb: {}", path.display());
    Ok(path)
}

/// Man pages (gzipped, as Debian ships them) and completions.
fn generate_docs(assets: &Path, debug: bool) -> Result<()> {
    let dir = assets.to_str().context("utf-8 path")?;
    let mut args = vec!["run", "--quiet", "--package", "knockd-user", "--example", "gen-docs"];
    if !debug {
        args.push("--release");
    }
    args.extend(["--", dir]);
    check(&mut cargo(&args)?)?;
    check(Command::new("gzip").args(["-9nf"]).arg(assets.join("xknockd.8")).arg(assets.join("xknock.1")))
}

/// The units as shipped in configs/ point at /usr/local/sbin (a hand
/// install); the package puts xknockd in /usr/sbin.
fn packaged_unit(text: &str) -> String {
    text.replace("/usr/local/sbin", "/usr/sbin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_point_at_usr_sbin() {
        let root = workspace_root();
        for unit in UNITS {
            let text = packaged_unit(&fs::read_to_string(root.join("configs").join(unit)).unwrap());
            assert!(!text.contains("/usr/local"), "{unit}:\n{text}");
            assert!(text.contains("ExecStart=/usr/sbin/xknockd "), "{unit}:\n{text}");
        }
    }
}
