//! `cargo xtask vmtest`: every test binary of `tracer` (they load the real eBPF program) run
//! inside VMs booting Debian's own kernels, or on the host.
//!
//! 1. Host tools, installed once and idempotently: Debian's `qemu-system-x86`, `kmod` (depmod)
//!    `udev` (without it virtme-ng loses the guest command's output) and `busybox-static` (its
//!    initramfs), and virtme-ng from
//!    PyPI in a virtualenv under the cache.
//! 2. Kernels: the newest `linux-image-<series>…-amd64-unsigned` of each series, resolved with
//!    `apt-cache` (5.10 needs the bullseye suites, added under /etc/apt/sources.list.d/ with a
//!    low pin so nothing else comes from them), fetched with `apt-get download` and unpacked
//!    with `dpkg-deb -x` into the cache. Nothing is installed into /boot.
//! 3. Test binaries: built on the host (`cargo test --release --no-run --message-format=json -p tracer`);
//!    their compile-time environment (CARGO_BIN_EXE_tracer, CARGO_MANIFEST_DIR) points at host
//!    paths, which the guest sees because virtme-ng shares the host's root filesystem read-only.
//! 4. Each kernel boots with virtme-ng (KVM when it can boot a stock kernel, else TCG emulation)
//!    and runs a generated shell script: open-files limit up, lo up, tracefs/debugfs/cgroup2
//!    mounted, the tracer run once to see which program it attaches, then every test binary,
//!    each one's output and exit code written to a shared writable directory. The host reads
//!    those files, not the console, and prints one line per kernel.
//!
//! The cache is `$XDG_CACHE_HOME/tracer-vmtest` (or `~/.cache/tracer-vmtest`): `venv/`,
//! `debs/`, `kernels/<package>/`, and `runs/<kernel>/` with each run's logs.

use std::collections::BTreeMap;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};

use crate::{Tools, ensure_debian_tools, exec, output, tiers, workspace_root};

/// The kernel series of the matrix (`--kernel all`): Debian 11, Debian 12, and 6.12 (Debian 12
/// security updates, Debian 13).
const SERIES: [&str; 3] = ["5.10", "6.1", "6.12"];
const VIRTME_NG_VERSION: &str = "1.42";
/// The suites added for kernels the host's own sources lack (5.10 is Debian 11's).
const EXTRA_SOURCES: &str = "/etc/apt/sources.list.d/tracer-vmtest-bullseye.sources";
const EXTRA_PIN: &str = "/etc/apt/preferences.d/tracer-vmtest-bullseye.pref";
/// A test binary that has not finished after this long is killed in the guest (under TCG on a
/// busy shared host, attribution and daemon took 10-15 minutes each).
const BINARY_TIMEOUT_S: u32 = 2400;
/// The whole VM (boot, every binary) is killed after this long (CI's own limit is 90 minutes).
const VM_TIMEOUT: Duration = Duration::from_secs(90 * 60);

#[derive(clap::Args)]
pub struct VmtestArgs {
    /// Kernels to test: 5.10, 6.1, 6.12, host (no VM), or all (the three VM kernels).
    /// Repeat the flag or separate with commas.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub kernel: Vec<String>,
    /// auto: KVM when /dev/kvm can boot a stock kernel, else TCG (software emulation).
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: String,
    /// Multi-threaded TCG (default: one host thread for all vCPUs; see docs/vmtest.md).
    #[arg(long)]
    pub mttcg: bool,
    /// Run only these test binaries (e.g. `live`, `daemon`, `tracer` for the unit tests).
    #[arg(long = "test")]
    pub tests: Vec<String>,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// VMs run at once (default: all of them). Under TCG a VM keeps about one host core busy
    /// (one emulation thread), so with more kernels than cores, running them all at once keeps
    /// every core busy until the end instead of leaving the last kernel to run alone. Each has
    /// its own run directory.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Arguments for every test binary (a name filter, `--test-threads 1`…), after `--`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub test_args: Vec<String>,
}

/// Where a kernel comes from.
enum Target {
    Host,
    Debian(&'static str),
}

impl Target {
    fn label(&self) -> &str {
        match self {
            Target::Host => "host",
            Target::Debian(s) => s,
        }
    }
}

/// A test binary built on the host.
#[derive(Clone)]
struct TestBinary {
    /// Target name: `tracer` for the library's unit tests, else the tests/ file name.
    name: String,
    path: PathBuf,
}

/// What one kernel's run produced.
struct Outcome {
    label: String,
    release: String,
    attach: String,
    passed: u64,
    failed: u64,
    failures: Vec<String>,
    fetch: Duration,
    /// From starting vng to the guest script's start.
    boot: Option<Duration>,
    /// The guest script (setup, tracer, test binaries) and the VM's shutdown.
    tests: Option<Duration>,
    total: Duration,
}

pub fn run(tools: &Tools, args: &VmtestArgs) -> Result<()> {
    let targets = parse_targets(&args.kernel)?;
    let cache = cache_dir()?;
    let vm = targets.iter().any(|t| matches!(t, Target::Debian(_)));
    if vm {
        if env::consts::ARCH != "x86_64" {
            bail!("vmtest boots Debian amd64 kernels and needs an x86_64 host");
        }
        ensure_debian_tools(&[
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("depmod", "kmod"),
            ("udevadm", "udev"),
            // virtme-ng builds its initramfs (needed for modular kernels) with busybox.
            ("busybox", "busybox-static"),
        ])?;
    }
    let vng = if vm {
        Some(ensure_virtme_ng(&cache)?)
    } else {
        None
    };
    // Each test file declares its tier (`//! Tier: offline | root | host`); none declared, no run.
    let tiers = tiers::read(&workspace_root().join("tracer/tests"))?;
    let (tracer, binaries) = build_tests(tools, &args.tests)?;
    // Binaries that neither load the program nor make sockets (tier offline) are the same on
    // every kernel: the host run covers them; a VM runs them only when named with --test. The
    // library's unit tests (`tracer`) have no file of their own and run everywhere.
    let vm_binaries: Vec<TestBinary> = binaries
        .iter()
        .filter(|b| !args.tests.is_empty() || tiers.get(&b.name) == Some(&tiers::Tier::Root))
        .cloned()
        .collect();
    let accel = if vm {
        Some(pick_accel(&args.accel)?)
    } else {
        None
    };

    // Kernels are fetched one at a time (apt-get and dpkg-deb are not for running
    // concurrently); then the VMs boot, `--jobs` at a time.
    let mut queue = std::collections::VecDeque::new();
    for (i, t) in targets.iter().enumerate() {
        let started = Instant::now();
        let kernel = match t {
            Target::Host => Ok(None),
            Target::Debian(series) => fetch_kernel(&cache, series).map(Some),
        };
        queue.push_back((i, t, kernel, started.elapsed()));
    }
    let queue = std::sync::Mutex::new(queue);
    let done = std::sync::Mutex::new(Vec::new());
    let jobs = args
        .jobs
        .unwrap_or(targets.len())
        .clamp(1, targets.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let Some((i, t, kernel, fetch)) = queue
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .pop_front()
                    else {
                        break;
                    };
                    let started = Instant::now();
                    let result = kernel.and_then(|k| match (t, k) {
                        (Target::Debian(series), Some(k)) => run_vm(
                            &VmRun {
                                vng: vng.as_deref().unwrap_or(Path::new("vng")),
                                accel: accel.unwrap_or(Accel::Tcg),
                                mttcg: args.mttcg,
                                cpus: args.cpus,
                                cache: &cache,
                                label: series,
                                kernel: &k,
                            },
                            &tracer,
                            &vm_binaries,
                            &args.test_args,
                        ),
                        _ => run_host(&cache, &tracer, &binaries, &args.test_args),
                    });
                    let result = result.map(|mut o| {
                        o.fetch = fetch;
                        o.total = fetch + started.elapsed();
                        println!("{}", summary_line(&o));
                        for f in &o.failures {
                            println!("    failed: {f}");
                        }
                        o
                    });
                    if let Err(e) = &result {
                        println!("{:<6} error: {e:#}", t.label());
                    }
                    done.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((i, t.label(), result));
                }
            });
        }
    });
    let mut done = done
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    done.sort_by_key(|d| d.0);
    let mut outcomes = Vec::new();
    let mut errors = Vec::new();
    for (_, label, result) in done {
        match result {
            Ok(o) => outcomes.push(o),
            Err(e) => errors.push(format!("{label}: {e:#}")),
        }
    }
    if jobs > 1 && outcomes.len() > 1 {
        // In parallel the per-kernel lines came out as each finished: repeat them in order.
        println!("vmtest: {} kernels, {jobs} at a time:", outcomes.len());
        for o in &outcomes {
            println!("{}", summary_line(o));
        }
    }
    for o in outcomes.iter().filter(|o| o.failed > 0) {
        errors.push(format!("{}: {} failed", o.label, o.failed));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("vmtest: {}", errors.join("; "))
    }
}

fn parse_targets(kernels: &[String]) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    for k in kernels {
        match k.trim() {
            "all" => out.extend(SERIES.iter().map(|s| Target::Debian(s))),
            "host" => out.push(Target::Host),
            s => match SERIES.iter().find(|x| **x == s) {
                Some(x) => out.push(Target::Debian(x)),
                None => bail!("unknown kernel {s:?}: use 5.10, 6.1, 6.12, host or all"),
            },
        }
    }
    Ok(out)
}

fn summary_line(o: &Outcome) -> String {
    let mut times = String::new();
    if o.fetch > Duration::from_millis(500) {
        let _ = write!(times, "fetch {}, ", secs(o.fetch));
    }
    if let Some(b) = o.boot {
        let _ = write!(times, "boot {}, ", secs(b));
    }
    if let Some(t) = o.tests {
        let _ = write!(times, "tests {}, ", secs(t));
    }
    let _ = write!(times, "total {}", secs(o.total));
    format!(
        "{:<6} {:<28} attach {:<10} passed {:>4} failed {:>3}  ({times})",
        o.label, o.release, o.attach, o.passed, o.failed
    )
}

fn secs(d: Duration) -> String {
    format!("{:.0}s", d.as_secs_f64())
}

fn cache_dir() -> Result<PathBuf> {
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    let dir = base.join("tracer-vmtest");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------
// Host tools

/// virtme-ng in its own virtualenv (pinned version), created once.
fn ensure_virtme_ng(cache: &Path) -> Result<PathBuf> {
    let venv = cache.join("venv");
    let vng = venv.join("bin/vng");
    let stamp = venv.join("tracer-stamp");
    let want = format!("virtme-ng {VIRTME_NG_VERSION}\n");
    if vng.is_file() && fs::read_to_string(&stamp).ok().as_deref() == Some(&want) {
        return Ok(vng);
    }
    eprintln!(
        "xtask: installing virtme-ng {VIRTME_NG_VERSION} from PyPI into {}",
        venv.display()
    );
    exec(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        .context("creating a Python virtualenv for virtme-ng (needs python3 with venv)")?;
    exec(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q"])
            .arg(format!("virtme-ng=={VIRTME_NG_VERSION}")),
    )
    .context("installing virtme-ng from PyPI")?;
    fs::write(&stamp, want).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(vng)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Accel {
    Kvm,
    Tcg,
}

/// KVM when /dev/kvm can boot a stock kernel. A PVM backend (module kvm_pvm, as on the
/// machines this project is developed on) exposes /dev/kvm but only boots PVM-enabled guests:
/// a stock kernel hangs after "Probing EDD", so it is treated as no KVM.
fn pick_accel(wanted: &str) -> Result<Accel> {
    let why_not = if !Path::new("/dev/kvm").exists() {
        Some("no /dev/kvm")
    } else if Path::new("/sys/module/kvm_pvm").exists() {
        Some("/dev/kvm is backed by PVM (kvm_pvm), which cannot boot a stock kernel")
    } else if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        Some("/dev/kvm cannot be opened read-write")
    } else {
        None
    };
    match (wanted, why_not) {
        ("kvm", Some(why)) => bail!("--accel kvm: {why}; use --accel tcg"),
        ("kvm", None) | ("auto", None) => Ok(Accel::Kvm),
        ("auto", Some(why)) => {
            eprintln!("xtask: {why}: using TCG (software emulation, 10-50x slower)");
            Ok(Accel::Tcg)
        }
        _ => Ok(Accel::Tcg),
    }
}

// ---------------------------------------------------------------------------------------------
// Kernels

/// An unpacked kernel package.
struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-57-amd64`.
    release: String,
    vmlinuz: PathBuf,
}

fn fetch_kernel(cache: &Path, series: &str) -> Result<Kernel> {
    let package = match newest_kernel_package(series)? {
        Some(p) => p,
        None => {
            ensure_extra_sources()?;
            exec(Command::new("apt-get").args(["update", "-qq"]))
                .context("apt-get update failed (run as root on a Debian-based machine)")?;
            newest_kernel_package(series)?.with_context(|| {
                format!("apt-cache knows no linux-image-{series}.*-amd64-unsigned package")
            })?
        }
    };
    let unpacked = cache.join("kernels").join(&package);
    let done = unpacked.join(".unpacked");
    if !done.is_file() {
        let debs = cache.join("debs");
        fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
        let deb = match find_deb(&debs, &package)? {
            Some(d) => d,
            None => {
                eprintln!("xtask: downloading {package}");
                exec(
                    Command::new("apt-get")
                        // As root, apt would otherwise download as _apt, which cannot
                        // write to the cache, and warn.
                        .args(["download", "-q", "-o", "APT::Sandbox::User=root", &package])
                        .current_dir(&debs),
                )?;
                find_deb(&debs, &package)?
                    .with_context(|| format!("apt-get download left no {package}_*.deb"))?
            }
        };
        let _ = fs::remove_dir_all(&unpacked);
        fs::create_dir_all(&unpacked)
            .with_context(|| format!("creating {}", unpacked.display()))?;
        exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        fs::write(&done, "").with_context(|| format!("writing {}", done.display()))?;
    }
    let boot = unpacked.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_owned();
    Ok(Kernel { release, vmlinuz })
}

/// The newest plain (not -rt, not -cloud) unsigned amd64 image of `series` that apt knows.
fn newest_kernel_package(series: &str) -> Result<Option<String>> {
    let pattern = format!("^linux-image-{}\\.", series.replace('.', "\\."));
    let list = output(Command::new("apt-cache").args(["search", "--names-only", &pattern]))?;
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| is_plain_image(name, series))
        .max_by_key(|name| version_key(name))
        .map(str::to_owned))
}

/// `linux-image-5.10.0-46-amd64-unsigned`, `linux-image-6.12.117+deb12-amd64-unsigned`.
fn is_plain_image(name: &str, series: &str) -> bool {
    let Some(version) = name
        .strip_prefix("linux-image-")
        .and_then(|n| n.strip_suffix("-amd64-unsigned"))
    else {
        return false;
    };
    let Some(rest) = version.strip_prefix(series) else {
        return false;
    };
    rest.starts_with('.')
        && rest
            .replace("+deb", "")
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
}

/// The numbers in a package name, compared in order (ABI and upload numbers).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    Ok(fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        }))
}

/// Debian 11's suites (5.10 kernels) on the same archive, pinned low so that only packages
/// asked for by name come from them.
fn ensure_extra_sources() -> Result<()> {
    let sources = "\
# Added by `cargo xtask vmtest` (tracer) to download Debian 11's 5.10 kernels; pinned low.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bullseye-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";
    let pin = "\
# Added by `cargo xtask vmtest` (tracer): nothing is installed from bullseye unless asked for.
Package: *
Pin: release n=bullseye
Pin-Priority: 1

Package: *
Pin: release n=bullseye-security
Pin-Priority: 1
";
    for (path, text) in [(EXTRA_SOURCES, sources), (EXTRA_PIN, pin)] {
        if fs::read_to_string(path).ok().as_deref() != Some(text) {
            eprintln!("xtask: adding {path}");
            if let Some(dir) = Path::new(path).parent() {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            fs::write(path, text).with_context(|| {
                format!("writing {path} (vmtest needs root to add apt sources)")
            })?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Test binaries

/// Builds tracer's test binaries; returns the tracer binary they run and the test binaries.
fn build_tests(tools: &Tools, only: &[String]) -> Result<(PathBuf, Vec<TestBinary>)> {
    let out = output(
        Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            // Release builds: under software emulation the debug tracer spent about 8 s of CPU
            // on each start (its own BTF parse, the namespace baseline) against 1.5 s, and the
            // tests start it over a hundred times per kernel. The host run keeps debug builds.
            .args([
                "test",
                "--release",
                "--no-run",
                "--message-format=json",
                "-p",
                "tracer",
            ])
            .current_dir(workspace_root())
            .env("PATH", tools.path())
            .stderr(Stdio::inherit()),
    )?;
    let mut tracer = None;
    let mut binaries = Vec::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let name = v["target"]["name"].as_str().unwrap_or_default().to_owned();
        let is_bin = v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "bin"));
        if v["profile"]["test"] == true {
            // The binary's own unit tests (main.rs) duplicate none of the library's.
            if is_bin && name == "tracer" {
                continue;
            }
            if only.is_empty() || only.contains(&name) {
                binaries.push(TestBinary {
                    name,
                    path: PathBuf::from(exe),
                });
            }
        } else if is_bin && name == "tracer" {
            tracer = Some(PathBuf::from(exe));
        }
    }
    binaries.sort_by(|a, b| a.name.cmp(&b.name));
    if binaries.is_empty() {
        bail!("no test binaries of tracer matched {only:?}");
    }
    let tracer = tracer.context("cargo test --no-run built no tracer binary")?;
    Ok((tracer, binaries))
}

/// The script run as root in the guest (and on the host for `--kernel host`): the setup the
/// tests need, the tracer once to see its program, then every test binary. Results go to
/// files in `out`; the console only shows progress.
fn guest_script(
    out: &Path,
    tracer: &Path,
    binaries: &[TestBinary],
    test_args: &[String],
) -> String {
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let manifest = workspace_root().join("tracer");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "#!/bin/sh\n# Generated by `cargo xtask vmtest`.\nOUT={out}\nexport PATH={path}\n\
         export CARGO_MANIFEST_DIR={manifest}\nexport RUST_BACKTRACE=1\n\
         uname -r > \"$OUT/uname\"\n\
         ulimit -n 65536 || echo 'vmtest: could not raise the open-files limit'\n\
         ip link set lo up\n\
         mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing\n\
         mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug\n\
         mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         {{ ulimit -n; cat /proc/mounts; \
         cat /sys/kernel/tracing/events/sock/inet_sock_set_state/format; }} \
         > \"$OUT/setup.log\" 2>&1\n\
         cd {manifest}\n\
         echo 'vmtest: which program the tracer attaches'\n\
         timeout 300 {tracer} --duration 1s --show none > /dev/null 2> \"$OUT/attach.log\"\n\
         echo $? > \"$OUT/attach.rc\"",
        out = q(out),
        path = shell_quote(&env::var("PATH").unwrap_or_default()),
        manifest = q(&manifest),
        tracer = q(tracer),
    );
    let args: Vec<String> = test_args.iter().map(|a| shell_quote(a)).collect();
    for b in binaries {
        let _ = writeln!(
            s,
            "echo 'vmtest: running {name}'\n\
             timeout -k 10 {BINARY_TIMEOUT_S} {bin} {args} > \"$OUT/{name}.log\" 2>&1\n\
             echo $? > \"$OUT/{name}.rc\"\n\
             grep -E '^test result:|FAILED|panicked' \"$OUT/{name}.log\" | head -20",
            name = b.name,
            bin = q(&b.path),
            args = args.join(" "),
        );
    }
    s.push_str("dmesg > \"$OUT/dmesg.log\" 2>&1\necho done > \"$OUT/done\"\necho 'vmtest: done'\n");
    s
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

// ---------------------------------------------------------------------------------------------
// Running

struct VmRun<'a> {
    vng: &'a Path,
    accel: Accel,
    mttcg: bool,
    cpus: u32,
    cache: &'a Path,
    label: &'a str,
    kernel: &'a Kernel,
}

fn fresh_run_dir(cache: &Path, label: &str) -> Result<PathBuf> {
    let dir = cache.join("runs").join(label);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn run_host(
    cache: &Path,
    tracer: &Path,
    binaries: &[TestBinary],
    test_args: &[String],
) -> Result<Outcome> {
    let out = fresh_run_dir(cache, "host")?;
    let script = out.join("guest.sh");
    fs::write(&script, guest_script(&out, tracer, binaries, test_args))
        .with_context(|| format!("writing {}", script.display()))?;
    exec(Command::new("sh").arg(&script))?;
    let started = Instant::now();
    let mut o = collect("host", &out, binaries);
    o.tests = Some(started.elapsed());
    Ok(o)
}

fn run_vm(
    vm: &VmRun<'_>,
    tracer: &Path,
    binaries: &[TestBinary],
    test_args: &[String],
) -> Result<Outcome> {
    let out = fresh_run_dir(vm.cache, vm.label)?;
    let script = out.join("guest.sh");
    fs::write(&script, guest_script(&out, tracer, binaries, test_args))
        .with_context(|| format!("writing {}", script.display()))?;
    // vng runs its helpers (virtme-run) from PATH.
    let mut path = vec![vm.vng.parent().unwrap_or(Path::new(".")).to_path_buf()];
    path.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    let mut cmd = Command::new(vm.vng);
    cmd.env("PATH", env::join_paths(path).context("PATH")?)
        .arg("--run")
        .arg(&vm.kernel.vmlinuz)
        .args(["--cpus", &vm.cpus.to_string(), "--memory", "4G"])
        .arg("--rwdir")
        .arg(&out)
        .arg("--exec")
        .arg(format!("sh {}", shell_quote(&script.to_string_lossy())));
    if vm.accel == Accel::Tcg {
        // No lockup detectors: under emulation on a busy host a vCPU can go without host CPU
        // for tens of seconds, which the soft-lockup watchdog reports as "BUG: soft lockup"
        // (seen once in clear_page_erms with three VMs on two cores). That is the emulator's
        // scheduling, not the kernel's; a real hang still fails the tests by their bounds.
        cmd.arg("--disable-kvm").args(["--append", "nowatchdog"]);
        if !vm.mttcg {
            // Multi-threaded TCG once crashed a 6.12 guest in text_poke (docs/vmtest.md).
            cmd.arg("--qemu-opts=-accel tcg,thread=single");
        }
    }
    eprintln!(
        "xtask: booting {} ({:?}{}); console in {}",
        vm.kernel.release,
        vm.accel,
        if vm.accel == Accel::Tcg && !vm.mttcg {
            ", one thread"
        } else {
            ""
        },
        out.join("console.log").display()
    );
    let started = Instant::now();
    let started_at = SystemTime::now();
    let status = run_teed(&mut cmd, &out.join("console.log"), vm.label)?;
    if !out.join("uname").exists() {
        bail!(
            "the guest never ran the test script (vng: {status}); see {}",
            out.join("console.log").display()
        );
    }
    let mut o = collect(vm.label, &out, binaries);
    // Boot: from starting vng (which first builds an initramfs) to the guest script's first
    // file, by the host's clock (the 9p server stamps it).
    o.boot = fs::metadata(out.join("uname"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(started_at).ok());
    o.tests = Some(started.elapsed().saturating_sub(o.boot.unwrap_or_default()));
    // The kernel's log (an Oops that does not panic shows only there; one that panics, only
    // on the console).
    for log in ["dmesg.log", "console.log"] {
        let text = fs::read_to_string(out.join(log)).unwrap_or_default();
        for marker in ["Oops", "BUG:", "Kernel panic", "general protection fault"] {
            if text.contains(marker) {
                o.failed += 1;
                o.failures
                    .push(format!("the guest kernel logged {marker:?} (see {log})"));
            }
        }
    }
    if !out.join("done").exists() {
        o.failed += 1;
        o.failures.push(format!(
            "the guest did not finish the script (vng exit: {status}); see {}",
            out.join("console.log").display()
        ));
    }
    if o.release != vm.kernel.release && !o.release.is_empty() {
        bail!(
            "the guest ran {} instead of {}",
            o.release,
            vm.kernel.release
        );
    }
    Ok(o)
}

/// Runs `cmd`, copying its stdout and stderr to ours (prefixed) and to `log`, like `| tee`:
/// QEMU reopens /proc/self/fd/1 and 2, which garbles a plain file redirection. Kills it after
/// [`VM_TIMEOUT`].
fn run_teed(cmd: &mut Command, log: &Path, label: &str) -> Result<String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {shown}"))?;
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let file = std::sync::Arc::new(std::sync::Mutex::new(file));
    let mut copiers = Vec::new();
    let streams: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(child.stdout.take().context("vng stdout")?),
        Box::new(child.stderr.take().context("vng stderr")?),
    ];
    for stream in streams {
        let file = file.clone();
        let label = label.to_owned();
        copiers.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches('\r');
                if let Ok(mut f) = file.lock() {
                    let _ = writeln!(f, "{text}");
                }
                eprintln!("[{label}] {text}");
            }
        }));
    }
    let deadline = Instant::now() + VM_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().context("waiting for vng")? {
            break s.to_string();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break format!("killed after {}", secs(VM_TIMEOUT));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for c in copiers {
        let _ = c.join();
    }
    Ok(status)
}

/// Reads the result files of a run.
fn collect(label: &str, out: &Path, binaries: &[TestBinary]) -> Outcome {
    let read = |name: &str| fs::read_to_string(out.join(name)).unwrap_or_default();
    let release = read("uname").trim().to_owned();
    let attach_log = read("attach.log");
    let attach = attach_log
        .lines()
        .find_map(|l| {
            l.split_once("sock:inet_sock_set_state via ")
                .and_then(|(_, rest)| rest.split(')').next())
        })
        .unwrap_or("none")
        .to_owned();
    let mut o = Outcome {
        label: label.to_owned(),
        release,
        attach,
        passed: 0,
        failed: 0,
        failures: Vec::new(),
        fetch: Duration::ZERO,
        boot: None,
        tests: None,
        total: Duration::ZERO,
    };
    if o.attach == "none" {
        o.failed += 1;
        o.failures.push(format!(
            "the tracer did not start: {}",
            attach_log.lines().last().unwrap_or("(no output)")
        ));
    }
    let mut per_binary = BTreeMap::new();
    for b in binaries {
        let log = read(&format!("{}.log", b.name));
        let rc = read(&format!("{}.rc", b.name)).trim().to_owned();
        let (mut passed, mut failed) = (0, 0);
        for l in log.lines() {
            if let Some(rest) = l.strip_prefix("test result: ") {
                passed += count_before(rest, " passed");
                failed += count_before(rest, " failed");
            }
            if let Some(name) = l
                .strip_prefix("test ")
                .and_then(|r| r.strip_suffix(" ... FAILED"))
            {
                o.failures.push(format!("{}::{name}", b.name));
            }
        }
        if rc != "0" && failed == 0 {
            failed = 1;
            o.failures.push(format!(
                "{}: exited with {} before reporting (see {}.log)",
                b.name,
                if rc.is_empty() { "nothing" } else { &rc },
                out.join(&b.name).display()
            ));
        }
        o.passed += passed;
        o.failed += failed;
        per_binary.insert(b.name.clone(), (passed, failed));
    }
    let mut table = String::new();
    for (name, (p, f)) in &per_binary {
        let _ = writeln!(table, "{name} {p} passed {f} failed");
    }
    let _ = fs::write(out.join("results.txt"), table);
    o
}

/// `5` from `ok. 5 passed; 0 failed; …` for `what` = " passed".
fn count_before(s: &str, what: &str) -> u64 {
    s.split(';')
        .find_map(|part| {
            part.trim_end()
                .strip_suffix(what.trim_start())
                .map(str::trim)
                .and_then(|n| n.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_images_only() {
        assert!(is_plain_image(
            "linux-image-5.10.0-46-amd64-unsigned",
            "5.10"
        ));
        assert!(is_plain_image(
            "linux-image-6.12.117+deb12-amd64-unsigned",
            "6.12"
        ));
        assert!(is_plain_image("linux-image-6.1.0-57-amd64-unsigned", "6.1"));
        assert!(!is_plain_image(
            "linux-image-6.12.117+deb12-amd64-unsigned",
            "6.1"
        ));
        assert!(!is_plain_image(
            "linux-image-6.1.0-57-rt-amd64-unsigned",
            "6.1"
        ));
        assert!(!is_plain_image(
            "linux-image-6.1.0-57-cloud-amd64-unsigned",
            "6.1"
        ));
        assert!(!is_plain_image("linux-image-6.1.0-57-amd64", "6.1"));
        assert!(!is_plain_image("linux-image-6.1.0-57-amd64-dbg", "6.1"));
    }

    #[test]
    fn newest_by_numbers() {
        let mut names = [
            "linux-image-5.10.0-9-amd64-unsigned",
            "linux-image-5.10.0-46-amd64-unsigned",
            "linux-image-5.10.0-32-amd64-unsigned",
        ];
        names.sort_by_key(|n| version_key(n));
        assert_eq!(names[2], "linux-image-5.10.0-46-amd64-unsigned");
    }

    #[test]
    fn test_result_counts() {
        let r = "ok. 5 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.2s";
        assert_eq!(count_before(r, " passed"), 5);
        assert_eq!(count_before(r, " failed"), 2);
        assert_eq!(count_before("FAILED. 0 passed; 1 failed;", " failed"), 1);
    }
}
