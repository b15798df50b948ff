//! `tracer dist-assets DIR` (hidden): the man page and the shell completions, generated from
//! the clap definitions in [`crate::cli`] so that they say what `--help` says. `cargo xtask
//! dist` runs it with the release binary and ships what it writes.

use std::fs;
use std::path::Path;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;

/// Writes `DIR/tracer.1` and `DIR/completions/{tracer.bash,_tracer,tracer.fish}`.
pub fn write(dir: &Path) -> Result<()> {
    let completions = dir.join("completions");
    fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;

    let cmd = crate::cli::Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .context("rendering the man page")?;
    let man = dir.join("tracer.1");
    fs::write(&man, page).with_context(|| format!("writing {}", man.display()))?;

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        let path = clap_complete::generate_to(shell, &mut cmd, "tracer", &completions)
            .with_context(|| format!("writing the {shell} completion"))?;
        eprintln!("tracer: wrote {}", path.display());
    }
    eprintln!("tracer: wrote {}", man.display());
    Ok(())
}
