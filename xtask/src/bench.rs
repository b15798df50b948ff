//! `cargo xtask bench`: the measurements of docs/performance.md.

use anyhow::{Result, bail};

use crate::Tools;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A few-second version for CI, so the benchmark cannot rot.
    #[arg(long)]
    pub smoke: bool,
}

pub fn run(_tools: &Tools, _args: &BenchArgs) -> Result<()> {
    bail!("the benchmark is not written yet")
}
