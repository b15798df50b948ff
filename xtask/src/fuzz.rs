//! `cargo xtask fuzz [--seconds N] [--target NAME]…`: builds the cargo-fuzz targets of
//! `tracer/fuzz` once, runs each for N seconds from its checked-in seed corpus, and prints what
//! each ran (executions, seconds, executions per second, inputs found). Fails, naming the
//! target and the crashing input, when any target crashes (a panic, a failed assertion, a
//! timeout or running out of memory).
//!
//! New inputs go to `target/fuzz/work/TARGET` (kept between runs, so a later run starts from
//! what an earlier one found), crashes to `target/fuzz/artifacts/TARGET/`; the checked-in
//! `tracer/fuzz/corpus/TARGET` is only read. Built without a sanitizer: the code is safe Rust
//! but for length-checked unaligned reads, and the panics libFuzzer catches are what there is
//! to find; debug assertions and overflow checks are on.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{EBPF_TOOLCHAIN, Tools, exec, workspace_root};

/// Every fuzz target (tracer/fuzz/fuzz_targets/NAME.rs, tracer::fuzzing::NAME).
pub const TARGETS: &[&str] = &[
    "ring_record",
    "replay_line",
    "replay_recording",
    "sockdiag_reply",
    "proc_file",
    "web_config",
];

/// The cargo-fuzz release `setup` installs (about 80 s to build on 2 cores).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// How long each target runs.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Only these targets (repeatable); default: all.
    #[arg(long = "target", value_name = "NAME")]
    pub targets: Vec<String>,
}

/// Installs cargo-fuzz when `cargo fuzz` is missing.
pub fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args([&format!("+{EBPF_TOOLCHAIN}"), "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (crates.io)");
    exec(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
    .context("installing cargo-fuzz failed")
}

/// `cargo +nightly fuzz SUBCOMMAND …` in tracer/, with the shared target dir.
fn cargo_fuzz(tools: &Tools, sub: &str, target: Option<&str>) -> Command {
    let root = workspace_root();
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{EBPF_TOOLCHAIN}"))
        .args(["fuzz", sub])
        .args(target)
        .args(["--sanitizer", "none", "--target-dir"])
        .arg(root.join("target/fuzz"))
        .current_dir(root.join("tracer"))
        .env("PATH", tools.path())
        // The outer cargo's choices would override the nightly toolchain.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    cmd
}

/// What one target's run reported.
struct Ran {
    target: String,
    execs: u64,
    seconds: f64,
    execs_per_sec: u64,
    new_inputs: usize,
    crash: Option<String>,
}

fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
        .and_then(|v| v.trim().parse().ok())
}

fn files_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The libFuzzer dictionary of `target`, if it has one (tracer/fuzz/NAME.dict).
fn dictionary(root: &Path, target: &str) -> Option<std::path::PathBuf> {
    let name = match target {
        "replay_line" | "replay_recording" => "replay",
        other => other,
    };
    let p = root.join("tracer/fuzz").join(format!("{name}.dict"));
    p.is_file().then_some(p)
}

pub fn run(tools: &Tools, args: &FuzzArgs) -> Result<()> {
    for t in &args.targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("--target {t:?} is not one of {}", TARGETS.join(", "));
        }
    }
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    ensure_cargo_fuzz()?;
    let root = workspace_root();
    let start = Instant::now();
    exec(&mut cargo_fuzz(tools, "build", None))?;
    eprintln!(
        "xtask: fuzz targets built in {:.0} s",
        start.elapsed().as_secs_f64()
    );

    let mut ran = Vec::new();
    for target in targets {
        let work = root.join("target/fuzz/work").join(target);
        let artifacts = root.join("target/fuzz/artifacts").join(target);
        let seeds = root.join("tracer/fuzz/corpus").join(target);
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        // Crashes of an earlier run are not this run's.
        let _ = fs::remove_dir_all(&artifacts);
        fs::create_dir_all(&artifacts)
            .with_context(|| format!("creating {}", artifacts.display()))?;
        let before = files_in(&work).len();
        let log_path = root.join("target/fuzz").join(format!("{target}.log"));
        let log_file = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        eprintln!("xtask: fuzzing {target} for {} s", args.seconds);
        let t0 = Instant::now();
        let mut cmd = cargo_fuzz(tools, "run", Some(target));
        cmd.arg(&work).arg(&seeds).arg("--");
        if let Some(dict) = dictionary(&root, target) {
            cmd.arg(format!("-dict={}", dict.display()));
        }
        let status = cmd
            .arg(format!("-max_total_time={}", args.seconds))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .arg("-timeout=10")
            .arg("-rss_limit_mb=1024")
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .status()
            .with_context(|| format!("running cargo fuzz run {target}"))?;
        let seconds = t0.elapsed().as_secs_f64();
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let crashes = files_in(&artifacts);
        let crash = if status.success() && crashes.is_empty() {
            None
        } else {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "xtask: {target} failed ({status}); last lines of {}:\n{}",
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            Some(if crashes.is_empty() {
                format!("no crash file; see {}", log_path.display())
            } else {
                crashes.join(" ")
            })
        };
        ran.push(Ran {
            target: target.to_owned(),
            execs: stat(&log, "number_of_executed_units").unwrap_or(0),
            seconds,
            execs_per_sec: stat(&log, "average_exec_per_sec").unwrap_or(0),
            new_inputs: files_in(&work).len().saturating_sub(before),
            crash,
        });
    }

    println!(
        "{:<18} {:>12} {:>8} {:>10} {:>10}  result",
        "target", "executions", "seconds", "execs/s", "new inputs"
    );
    for r in &ran {
        println!(
            "{:<18} {:>12} {:>8.0} {:>10} {:>10}  {}",
            r.target,
            r.execs,
            r.seconds,
            r.execs_per_sec,
            r.new_inputs,
            r.crash
                .as_deref()
                .map_or("ok".to_owned(), |c| format!("CRASH: {c}"))
        );
    }
    println!(
        "fuzz: {} targets, {:.0} s in all (build included)",
        ran.len(),
        start.elapsed().as_secs_f64()
    );
    let failed: Vec<&Ran> = ran.iter().filter(|r| r.crash.is_some()).collect();
    if !failed.is_empty() {
        bail!(
            "fuzzing found crashes in {}; reproduce with `cd tracer && cargo +nightly fuzz run TARGET --sanitizer none FILE`",
            failed
                .iter()
                .map(|r| r.target.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
