//! Test tiers, as each test file declares its own: every `tracer/tests/*.rs` says in its `//!`
//! header which machines it needs, with one line `//! Tier: offline` (touches neither BPF nor
//! the kernel's TCP: the same on every kernel, run on the host only), `//! Tier: root`
//! (loads the eBPF program or drives real sockets: run on every kernel of the matrix) or
//! `//! Tier: host` (needs root and the real program, but what it proves does not depend on the
//! kernel's version: packaging, containers, TLS; run on the host only, like offline). `cargo
//! xtask vmtest` and `cargo xtask test` read them and refuse to run while a file declares none.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// Where a test binary runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Neither BPF nor sockets: the host run covers it; a VM runs it only when named.
    Offline,
    /// Loads the program or makes sockets: run in every VM.
    Root,
    /// Root on the host (containers, TLS, packages): nothing in it varies with the kernel's
    /// version, so the matrix runs it only when named.
    Host,
}

/// The tier a test file's leading `//!` header declares, or why it declares none.
pub fn parse_tier(source: &str) -> Result<Tier, String> {
    let mut found: Option<Tier> = None;
    for line in source.lines().take_while(|l| l.starts_with("//!")) {
        let Some(value) = line.trim_start_matches("//!").trim().strip_prefix("Tier:") else {
            continue;
        };
        let tier = match value.trim() {
            "offline" => Tier::Offline,
            "root" => Tier::Root,
            "host" => Tier::Host,
            other => return Err(format!("unknown tier `{other}` (offline, root or host)")),
        };
        if found.is_some() {
            return Err("more than one `//! Tier:` line".to_owned());
        }
        found = Some(tier);
    }
    found.ok_or_else(|| {
        "no `//! Tier: offline`, `//! Tier: root` or `//! Tier: host` line in its `//!` header"
            .into()
    })
}

/// The tier of every test binary in `tests_dir` (by target name, the file name without
/// `.rs`). Fails naming each file that declares none (or a wrong one), and the rule.
pub fn read(tests_dir: &Path) -> Result<BTreeMap<String, Tier>> {
    let mut tiers = BTreeMap::new();
    let mut problems = Vec::new();
    let entries =
        fs::read_dir(tests_dir).with_context(|| format!("reading {}", tests_dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "rs") || !path.is_file() {
            continue;
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let source =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        match parse_tier(&source) {
            Ok(tier) => {
                tiers.insert(name, tier);
            }
            Err(why) => problems.push(format!("{}: {why}", path.display())),
        }
    }
    if !problems.is_empty() {
        problems.sort();
        bail!(
            "every test file declares its tier in its `//!` header (`//! Tier: offline`: no BPF, \
             no sockets, host only; `//! Tier: root`: run in every VM; `//! Tier: host`: root but not \
             kernel-dependent, host only; see docs/vmtest.md):\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(tiers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_declares_the_tier() {
        let src = "//! Replay tests.\n//!\n//! Tier: offline\n\nmod common;\n";
        assert_eq!(parse_tier(src), Ok(Tier::Offline));
        assert_eq!(
            parse_tier("//! A.\n//! Tier: root\nfn f() {}\n"),
            Ok(Tier::Root)
        );
        assert_eq!(parse_tier("//! Tier:root\n"), Ok(Tier::Root));
        assert_eq!(parse_tier("//! Tier: host\n"), Ok(Tier::Host));
    }

    #[test]
    fn a_file_without_a_tier_is_refused() {
        assert!(parse_tier("//! No tier here.\n\nfn f() {}\n").is_err());
        assert!(parse_tier("").is_err());
        // Only the leading header counts.
        assert!(parse_tier("//! Header.\n\n//! Tier: root\n").is_err());
        assert!(parse_tier("//! Header.\n// Tier: root\n").is_err());
    }

    #[test]
    fn a_wrong_or_repeated_tier_is_refused() {
        let e = parse_tier("//! Tier: kernel\n").unwrap_err();
        assert!(e.contains("unknown tier `kernel`"), "{e}");
        let e = parse_tier("//! Tier: root\n//! Tier: offline\n").unwrap_err();
        assert!(e.contains("more than one"), "{e}");
    }

    #[test]
    fn every_test_file_of_the_workspace_declares_one() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracer/tests");
        let tiers = read(&dir).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(tiers.get("replay"), Some(&Tier::Offline));
        assert_eq!(tiers.get("live"), Some(&Tier::Root));
        assert!(!tiers.contains_key("common"), "common/ is no test binary");
    }

    #[test]
    fn a_directory_with_an_undeclared_file_fails_naming_it() {
        let dir = std::env::temp_dir().join(format!("xtask-tiers-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("good.rs"), "//! Good.\n//! Tier: root\n").unwrap();
        fs::write(dir.join("bad.rs"), "//! Bad.\n").unwrap();
        let r = read(&dir);
        let _ = fs::remove_dir_all(&dir);
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("bad.rs: no `//! Tier: offline`"), "{e}");
        assert!(!e.contains("good.rs"), "{e}");
    }
}
