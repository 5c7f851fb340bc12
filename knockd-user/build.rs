use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Builds the XDP object for the BPF target with the nightly toolchain and
/// leaves it in OUT_DIR, where `xknockd` embeds it.
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "knockd-ebpf")
        .ok_or_else(|| anyhow!("knockd-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("knockd-ebpf manifest has no parent"))?;
    let package = Package {
        name: ebpf.name.as_str(),
        root_dir: root.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
