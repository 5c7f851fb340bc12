use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Builds the XDP object for the BPF target with the nightly toolchain and
/// leaves it in OUT_DIR, where `xknockd` embeds it.
fn main() -> anyhow::Result<()> {
    find_bpf_linker();
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "knockd-ebpf")
        .ok_or_else(|| anyhow!("knockd-ebpf package not found"))?;
    let root = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("knockd-ebpf manifest has no parent"))?;
    let package = Package { name: ebpf.name.as_str(), root_dir: root.as_str(), ..Default::default() };
    aya_build::build_ebpf([package], Toolchain::default())
}

/// `cargo xtask setup` installs bpf-linker under ~/.cache/xknock (or
/// XKNOCK_TOOLS_DIR); put it on PATH so a plain `cargo build` finds it too.
fn find_bpf_linker() {
    println!("cargo:rerun-if-env-changed=XKNOCK_TOOLS_DIR");
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| d.join("bpf-linker").is_file()) {
        return;
    }
    let tools = std::env::var_os("XKNOCK_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/xknock")));
    let Some(Ok(entries)) = tools.map(std::fs::read_dir) else {
        return;
    };
    let mut bins: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("bpf-linker").is_file())
        .collect();
    bins.sort();
    if let Some(bin) = bins.pop() {
        let mut dirs = vec![bin];
        dirs.extend(std::env::split_paths(&path));
        if let Ok(joined) = std::env::join_paths(dirs) {
            // SAFETY: build scripts are single-threaded at this point.
            unsafe { std::env::set_var("PATH", joined) };
        }
    }
}
