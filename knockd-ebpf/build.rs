use which::which;

/// Rebuild when bpf-linker changes: it is an implicit input of the link step.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
