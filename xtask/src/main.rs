//! Developer tasks: `cargo xtask setup | run | test | lint | bench | vmtest | fuzz`.
//!
//! `setup` makes a fresh machine able to build and test: rust-src for the nightly toolchain
//! that builds the eBPF crate, bpf-linker built against that toolchain's own libLLVM (rebuilt
//! when it changes), the Debian tools the tests drive (promtool, tmux, openssl, curl), and
//! cargo-fuzz for `fuzz`. It is idempotent and
//! takes well under a second when everything is in place. `run` and `test` call it first.
#![warn(unused_crate_dependencies)]

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod dist;
mod fuzz;
mod loadgen;
mod tiers;
mod vmtest;

/// The toolchain aya-build uses for the eBPF crate.
const EBPF_TOOLCHAIN: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The target aya-build builds the eBPF crate for: the host's byte order.
const EBPF_TARGET: &str = if cfg!(target_endian = "big") {
    "bpfeb-unknown-none"
} else {
    "bpfel-unknown-none"
};

#[derive(Parser)]
#[command(about = "Developer tasks for tracer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Build tracer (release) and run it with the given arguments.
    Run {
        /// Arguments for tracer, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test, including those that load the eBPF program (needs root).
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// rustfmt --check, and clippy -D warnings on the host crates and on the eBPF crate for
    /// its target.
    Lint,
    /// The benchmark's load generator: loopback connect/accept/close loops (run it in a
    /// private network namespace: `unshare -n`).
    Loadgen {
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 10_000_000)]
        max_connections: u64,
        /// Pin each client thread to its own CPU.
        #[arg(long)]
        pin: bool,
    },
    /// Benchmarks: workload slowdown, kernel cost per event, userspace CPU, engine throughput.
    Bench(bench::BenchArgs),
    /// Every root test inside VMs booting Debian's 5.10, 6.1 and 6.12 kernels (or on the host).
    Vmtest(vmtest::VmtestArgs),
    /// Run each fuzz target of tracer/fuzz (cargo-fuzz, libFuzzer) from its seed corpus.
    Fuzz(fuzz::FuzzArgs),
    /// The release artefacts in target/dist: a static binary, a tarball (man page, shell
    /// completions, systemd unit), a .deb, an OCI image archive, SHA256SUMS.
    Dist,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => setup(SetupLevel::Test).map(drop),
        Cmd::Run { args } => {
            let tools = setup(SetupLevel::Build)?;
            cargo(&tools, &["build", "--release", "-p", "tracer"])?;
            let bin = workspace_root().join("target/release/tracer");
            let status = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Test { args } => {
            // Every test file declares its tier (docs/vmtest.md); refuse before building.
            tiers::read(&workspace_root().join("tracer/tests"))?;
            let tools = setup(SetupLevel::Test)?;
            // tests/dist.rs and tests/container.rs test the artefacts.
            dist::run(&tools)?;
            // The default members: the eBPF crate only builds for the BPF target.
            let mut a = vec!["test", "--all-targets"];
            a.extend(args.iter().map(String::as_str));
            cargo(&tools, &a)
        }
        Cmd::Lint => lint(&setup(SetupLevel::Build)?),
        Cmd::Loadgen {
            threads,
            seconds,
            max_connections,
            pin,
        } => {
            if Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .is_err()
            {
                eprintln!("xtask: could not bring lo up");
            }
            let r = loadgen::run(
                threads,
                Duration::from_secs_f64(seconds),
                max_connections,
                pin,
            )?;
            println!(
                "{{\"connections\":{},\"errors\":{},\"seconds\":{:.3},\"rate\":{:.0}}}",
                r.connections,
                r.errors,
                r.elapsed.as_secs_f64(),
                r.rate()
            );
            Ok(())
        }
        Cmd::Bench(args) => {
            if let Some(r) = bench::hold(&args) {
                return r;
            }
            let tools = setup(SetupLevel::Test)?;
            bench::run(&tools, &args)
        }
        Cmd::Vmtest(args) => {
            let tools = setup(SetupLevel::Test)?;
            vmtest::run(&tools, &args)
        }
        Cmd::Fuzz(args) => {
            let tools = setup(SetupLevel::Build)?;
            fuzz::run(&tools, &args)
        }
        Cmd::Dist => dist::run(&setup(SetupLevel::Build)?).map(drop),
    }
}

/// `cargo xtask lint`: rustfmt, clippy on the host crates, clippy on the eBPF crate. Runs all
/// three and names every one that failed.
fn lint(tools: &Tools) -> Result<()> {
    let results = [
        cargo(tools, &["fmt", "--all", "--", "--check"]),
        cargo(tools, &["clippy", "--all-targets", "--", "-D", "warnings"]),
        clippy_ebpf(tools),
    ];
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(Result::err)
        .map(|e| format!("{e:#}"))
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("; "))
    }
}

/// Clippy on tracer-ebpf for its own target, built the way aya-build (tracer/build.rs) builds
/// it: the nightly toolchain, `-Z build-std=core`, RUSTC and RUSTC_WORKSPACE_WRAPPER unset so
/// that the toolchain is nightly's. The host-side clippy leaves the crate out (it is not a
/// default member: for the host it does not build).
fn clippy_ebpf(tools: &Tools) -> Result<()> {
    exec(
        Command::new("rustup")
            .args([
                "run",
                EBPF_TOOLCHAIN,
                "cargo",
                "clippy",
                "--package",
                "tracer-ebpf",
            ])
            .args([
                "--lib",
                "--bins",
                "--target",
                EBPF_TARGET,
                "-Z",
                "build-std=core",
            ])
            .args(["--", "-D", "warnings"])
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .current_dir(workspace_root())
            .env("PATH", tools.path()),
    )
}

/// Paths that setup prepared.
pub struct Tools {
    /// Directory holding bpf-linker, to put first on PATH.
    pub bin_dir: PathBuf,
}

impl Tools {
    /// PATH with bpf-linker's directory first.
    pub fn path(&self) -> OsString {
        let mut parts = vec![self.bin_dir.clone()];
        if let Some(p) = env::var_os("PATH") {
            parts.extend(env::split_paths(&p));
        }
        env::join_paths(parts).unwrap_or_default()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SetupLevel {
    Build,
    Test,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command, naming it when it fails.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Runs a command and returns its standard output.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("could not start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo(tools: &Tools, args: &[&str]) -> Result<()> {
    exec(
        Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(args)
            .current_dir(workspace_root())
            .env("PATH", tools.path()),
    )
}

fn setup(level: SetupLevel) -> Result<Tools> {
    ensure_rust_src()?;
    let tools = ensure_bpf_linker()?;
    if level >= SetupLevel::Test {
        ensure_debian_tool("promtool", "prometheus")?;
        ensure_pip_tool(&tools, "kubernetes-validate", KUBERNETES_VALIDATE)?;
        // tests/top.rs runs `tracer top` in a real terminal.
        ensure_debian_tool("tmux", "tmux")?;
        // tests/web_config.rs makes its CA and certificates with openssl and checks the
        // refusals with curl.
        ensure_debian_tools(&[("openssl", "openssl"), ("curl", "curl")])?;
        // `dist` and the tests of its artefacts (tests/dist.rs, tests/container.rs).
        dist::ensure_test_tools()?;
        // `cargo xtask fuzz` (CI runs it after the tests).
        fuzz::ensure_cargo_fuzz()?;
    }
    Ok(tools)
}

fn ensure_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
    .with_context(|| {
        format!("the {EBPF_TOOLCHAIN} toolchain is needed to build the eBPF program")
    })?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to the {EBPF_TOOLCHAIN} toolchain");
        exec(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]))?;
    }
    Ok(())
}

/// bpf-linker must link against the same LLVM major as the rustc that builds the eBPF crate;
/// the nightly toolchain ships that LLVM as a shared library, so build bpf-linker against it.
/// The install is keyed by the library's file name and rebuilt when it changes.
fn ensure_bpf_linker() -> Result<Tools> {
    let sysroot = output(Command::new("rustc").args([
        format!("+{EBPF_TOOLCHAIN}").as_str(),
        "--print",
        "sysroot",
    ]))?;
    let sysroot = PathBuf::from(sysroot.trim());
    let version =
        output(Command::new("rustc").args([format!("+{EBPF_TOOLCHAIN}").as_str(), "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc -vV printed no LLVM version")?
        .to_owned();
    let libdir = sysroot.join("lib");
    let lib = fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so") || n.starts_with("libLLVM-"))
        })
        .with_context(|| format!("no libLLVM shared library in {}", libdir.display()))?;
    let lib_name = lib
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();

    let cache = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    let prefix = cache.join("tracer-tools").join(format!("llvm-{major}"));
    let bin_dir = prefix.join("bpf-linker/bin");
    let stamp = prefix.join("stamp");
    let want = format!("{lib_name} bpf-linker {BPF_LINKER_VERSION}\n");
    if bin_dir.join("bpf-linker").is_file()
        && fs::read_to_string(&stamp).ok().as_deref() == Some(&want)
    {
        return Ok(Tools { bin_dir });
    }

    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {lib_name} (about two minutes, once)"
    );
    let llvm = prefix.join("llvm");
    let llvm_lib = llvm.join("lib");
    fs::create_dir_all(&llvm_lib).with_context(|| format!("creating {}", llvm_lib.display()))?;
    for link in [llvm_lib.join("libLLVM.so"), llvm_lib.join(&lib_name)] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("linking {} to {}", link.display(), lib.display()))?;
    }
    exec(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
                "--root",
            ])
            .arg(prefix.join("bpf-linker"))
            .env("LLVM_PREFIX", &llvm)
            .env_remove("RUSTUP_TOOLCHAIN")
            .current_dir(&cache),
    )?;
    fs::write(&stamp, want).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(Tools { bin_dir })
}

/// The Kubernetes manifest validator the tests run on dist/kubernetes (PyPI).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// Installs a PyPI package into a virtualenv of the tool cache (once) and links its command
/// into `tools.bin_dir`, which `cargo` commands run by xtask have first on PATH.
fn ensure_pip_tool(tools: &Tools, command: &str, requirement: &str) -> Result<()> {
    let link = tools.bin_dir.join(command);
    let venv = tools
        .bin_dir
        .parent()
        .and_then(Path::parent)
        .context("tool cache layout")?
        .join("venv");
    let stamp = venv.join("requirements.txt");
    if link.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(requirement) {
        return Ok(());
    }
    eprintln!(
        "xtask: installing {requirement} (PyPI) into {}",
        venv.display()
    );
    exec(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        .context("python3 -m venv failed (install python3 and python3-venv)")?;
    exec(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        requirement,
    ]))?;
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(venv.join("bin").join(command), &link)
        .with_context(|| format!("linking {}", link.display()))?;
    fs::write(&stamp, requirement).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

/// Installs a Debian package when the command it provides is missing.
pub fn ensure_debian_tool(command: &str, package: &str) -> Result<()> {
    ensure_debian_tools(&[(command, package)])
}

/// Installs the Debian packages (`(command, package)`) whose commands are missing, with one
/// `apt-get update` and one `apt-get install`.
pub fn ensure_debian_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<(&str, &str)> = tools.iter().copied().filter(|(c, _)| !which(c)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    eprintln!(
        "xtask: installing {} with apt-get (for {})",
        packages.join(" "),
        missing
            .iter()
            .map(|(c, _)| *c)
            .collect::<Vec<_>>()
            .join(", ")
    );
    exec(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update failed (run as root on a Debian-based machine)")?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still: Vec<&str> = missing
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| !which(c))
        .collect();
    if !still.is_empty() {
        bail!(
            "{} installed but {} still not on PATH",
            packages.join(" "),
            still.join(", ")
        );
    }
    Ok(())
}

pub fn which(command: &str) -> bool {
    env::var_os("PATH").is_some_and(|p| env::split_paths(&p).any(|d| d.join(command).is_file()))
}
