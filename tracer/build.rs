//! Builds the eBPF object (tracer-ebpf, target bpfel-unknown-none, nightly + build-std) and puts
//! it in OUT_DIR, where src/bpf.rs embeds it. `cargo xtask setup` provides the toolchain pieces.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata()?;
    let ebpf = meta
        .iter()
        .find(|(name, _)| name == "tracer-ebpf")
        .ok_or_else(|| anyhow!("tracer-ebpf package not found in the workspace"))?;
    aya_build::build_ebpf(
        [Package {
            name: "tracer-ebpf",
            root_dir: &ebpf.1,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
    .context("building the eBPF program failed; run `cargo xtask setup` (bpf-linker, rust-src)")
}

/// (package name, package root dir) for the workspace members, from `cargo metadata`.
fn cargo_metadata() -> anyhow::Result<Vec<(String, String)>> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .context("tracer has no parent directory")?;
    Ok(vec![(
        "tracer-ebpf".to_owned(),
        root.join("tracer-ebpf").display().to_string(),
    )])
}
