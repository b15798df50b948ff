//! `cargo xtask bench`: the measurements of docs/performance.md, in one run, side by side.
//!
//! 1. Workload slowdown: connections/s of `xtask loadgen` (loopback connect/accept/close, in a
//!    private network namespace) with nothing attached, with `tracer` as a daemon (metrics on),
//!    with `tracer --pid` of an idle process, and with libbpf-tools' `tcpstates`. Rounds
//!    alternate the order; medians are reported as ratios to the bare runs.
//! 2. Kernel cost per event: `run_time_ns / run_cnt` of each tool's BPF programs, read from the
//!    tool's own program fds in /proc/PID/fdinfo (with kernel.bpf_stats_enabled=1 during the run).
//! 3. Userspace: CPU seconds of the tool per million events, peak RSS, lost events.
//! 4. Engine: `tracer bench-engine` (events/s on one core, bytes per tracked socket at 1M).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::{Tools, cargo, ensure_debian_tool, output, workspace_root};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A few-second version for CI, so the benchmark cannot rot.
    #[arg(long)]
    pub smoke: bool,
    /// Rounds of each configuration (medians are reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Load-generator client threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    Bare,
    Daemon,
    PidIdle,
    Tcpstates,
}

impl Setup {
    const ALL: [Setup; 4] = [Setup::Bare, Setup::Daemon, Setup::PidIdle, Setup::Tcpstates];

    fn name(self) -> &'static str {
        match self {
            Setup::Bare => "nothing attached",
            Setup::Daemon => "tracer (daemon, metrics on)",
            Setup::PidIdle => "tracer --pid (idle process)",
            Setup::Tcpstates => "libbpf-tools tcpstates",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Run {
    rate: f64,
    /// BPF program run time and count of the tool during the run.
    bpf_ns: u64,
    bpf_runs: u64,
    /// CPU seconds of the tool's process.
    cpu_s: f64,
    peak_rss_kib: u64,
    lost: Option<u64>,
}

pub fn run(tools: &Tools, args: &BenchArgs) -> Result<()> {
    let (rounds, seconds) = if args.smoke {
        (1, 1.0)
    } else {
        (args.rounds.max(1), args.seconds)
    };
    cargo(tools, &["build", "--release", "-p", "tracer"])?;
    ensure_debian_tool("tcpstates", "libbpf-tools")?;
    let tracer = workspace_root().join("target/release/tracer");
    let xtask = std::env::current_exe().context("locating xtask")?;

    let stats_before =
        fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_else(|_| "0".into());
    fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
        .context("enabling kernel.bpf_stats_enabled (needs root)")?;
    let result = (|| -> Result<Vec<(Setup, Vec<Run>)>> {
        let mut runs: Vec<(Setup, Vec<Run>)> =
            Setup::ALL.iter().map(|&s| (s, Vec::new())).collect();
        for round in 0..rounds {
            // Rotate the order so that no setup always runs first (warm caches, thermal state).
            for k in 0..Setup::ALL.len() {
                let setup = Setup::ALL[(k + round) % Setup::ALL.len()];
                let r = one_run(setup, &tracer, &xtask, seconds, args.threads)
                    .with_context(|| format!("bench run {:?}", setup))?;
                eprintln!(
                    "bench: round {} {:<30} {:>8.0} conn/s  bpf {:>6} ns/run  cpu {:.2}s  lost {:?}",
                    round + 1,
                    setup.name(),
                    r.rate,
                    r.bpf_ns.checked_div(r.bpf_runs).unwrap_or(0),
                    r.cpu_s,
                    r.lost
                );
                runs.iter_mut()
                    .find(|(s, _)| *s == setup)
                    .unwrap()
                    .1
                    .push(r);
            }
        }
        Ok(runs)
    })();
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_before.trim());
    let runs = result?;

    let engine = output(Command::new(&tracer).args([
        "bench-engine",
        "--connections",
        if args.smoke { "20000" } else { "500000" },
        "--sockets",
        if args.smoke { "50000" } else { "1000000" },
    ]))
    .context("running tracer bench-engine")?;

    print_report(&runs, engine.trim(), rounds, seconds, args.threads);
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn print_report(
    runs: &[(Setup, Vec<Run>)],
    engine: &str,
    rounds: usize,
    seconds: f64,
    threads: usize,
) {
    let bare = median(runs[0].1.iter().map(|r| r.rate).collect());
    println!(
        "Workload: {threads} client threads of loopback connect/accept/close in a private network \
         namespace, {seconds} s per run, {rounds} alternating round(s); medians.\n"
    );
    println!(
        "| setup | connections/s | vs bare | kernel ns/event | CPU s per 1M events | peak RSS MiB | lost events |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (setup, rs) in runs {
        let rate = median(rs.iter().map(|r| r.rate).collect());
        let ns = median(
            rs.iter()
                .filter(|r| r.bpf_runs > 0)
                .map(|r| r.bpf_ns as f64 / r.bpf_runs as f64)
                .collect(),
        );
        let cpu = median(
            rs.iter()
                .filter(|r| r.bpf_runs > 0)
                .map(|r| r.cpu_s / (r.bpf_runs as f64 / 1e6))
                .collect(),
        );
        let rss = rs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        let lost: Option<u64> = rs.iter().filter_map(|r| r.lost).max();
        let dash = |x: f64, f: &dyn Fn(f64) -> String| if x > 0.0 { f(x) } else { "–".into() };
        println!(
            "| {} | {:.0} | {:.3} | {} | {} | {} | {} |",
            setup.name(),
            rate,
            if bare > 0.0 { rate / bare } else { 0.0 },
            dash(ns, &|x| format!("{x:.0}")),
            dash(cpu, &|x| format!("{x:.3}")),
            dash(rss, &|x| format!("{x:.1}")),
            lost.map_or("–".into(), |l| l.to_string()),
        );
    }
    println!("\nEngine (one core, synthetic stream): {engine}");
}

fn one_run(setup: Setup, tracer: &Path, xtask: &Path, seconds: f64, threads: usize) -> Result<Run> {
    let mut idle: Option<Child> = None;
    let mut err_buf: Option<Stderr> = None;
    let mut tool: Option<Child> = match setup {
        Setup::Bare => None,
        Setup::Daemon => {
            let (c, e) =
                spawn_tracer(tracer, &["--metrics-addr", "127.0.0.1:0", "--show", "none"])?;
            err_buf = Some(e);
            Some(c)
        }
        Setup::PidIdle => {
            let c = Command::new("sleep")
                .arg("3600")
                .spawn()
                .context("spawning an idle process")?;
            let pid = c.id().to_string();
            idle = Some(c);
            let (c, e) = spawn_tracer(tracer, &["--pid", &pid, "--show", "none"])?;
            err_buf = Some(e);
            Some(c)
        }
        Setup::Tcpstates => {
            let c = Command::new("tcpstates")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("spawning tcpstates")?;
            wait_for_prog(c.id())?;
            Some(c)
        }
    };
    let before = tool.as_ref().map(|c| sample(c.id()));
    let out = output(Command::new("unshare").arg("-n").arg(xtask).args([
        "loadgen",
        "--threads",
        &threads.to_string(),
        "--seconds",
        &seconds.to_string(),
    ]))?;
    let rate = json_field(&out, "rate").context("loadgen printed no rate")?;
    let mut run = Run {
        rate,
        ..Run::default()
    };
    if let (Some(c), Some(b)) = (tool.as_mut(), before) {
        // Let the tool drain what the load left in its buffers before sampling.
        std::thread::sleep(Duration::from_millis(300));
        let a = sample(c.id());
        run.bpf_ns = a.bpf_ns.saturating_sub(b.bpf_ns);
        run.bpf_runs = a.bpf_runs.saturating_sub(b.bpf_runs);
        run.cpu_s = a.cpu_s - b.cpu_s;
        run.peak_rss_kib = a.peak_rss_kib;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = c.wait()?;
        if let Some(e) = &err_buf {
            std::thread::sleep(Duration::from_millis(100));
            let err = e.lock().map(|g| g.clone()).unwrap_or_default();
            if !status.success() {
                bail!("tracer exited with {status}: {err}");
            }
            run.lost = lost_from_summary(&err);
        }
    }
    if let Some(mut i) = idle {
        let _ = i.kill();
        let _ = i.wait();
    }
    Ok(run)
}

/// A running tool and, for tracer, its collected stderr.
type Stderr = std::sync::Arc<std::sync::Mutex<String>>;

fn spawn_tracer(tracer: &Path, args: &[&str]) -> Result<(Child, Stderr)> {
    let mut c = Command::new(tracer)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning tracer")?;
    let stderr = c.stderr.take().context("tracer stderr")?;
    let buf: Stderr = Default::default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let b = buf.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("tracing TCP state changes") {
                let _ = ready_tx.send(());
            }
            let mut g = b.lock().unwrap_or_else(|e| e.into_inner());
            g.push_str(&line);
            g.push('\n');
        }
    });
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = c.kill();
        let err = buf.lock().map(|g| g.clone()).unwrap_or_default();
        bail!("tracer did not start within 30 s: {err}");
    }
    Ok((c, buf))
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    bpf_ns: u64,
    bpf_runs: u64,
    cpu_s: f64,
    peak_rss_kib: u64,
}

/// The process's BPF program stats (from its own prog fds), CPU time and peak RSS.
fn sample(pid: u32) -> Sample {
    let mut s = Sample::default();
    let dir = PathBuf::from(format!("/proc/{pid}/fdinfo"));
    if let Ok(entries) = fs::read_dir(&dir) {
        for e in entries.flatten() {
            let Ok(text) = fs::read_to_string(e.path()) else {
                continue;
            };
            if !text.contains("prog_type:") {
                continue;
            }
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            s.bpf_ns += field("run_time_ns:");
            s.bpf_runs += field("run_cnt:");
        }
    }
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat"))
        && let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
    {
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields after the comm: state is index 0, utime 11, stime 12.
        let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        s.cpu_s = ticks as f64 / hz;
    }
    if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
        s.peak_rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
    }
    s
}

fn wait_for_prog(pid: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let found = fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .map(|d| {
                d.flatten()
                    .any(|e| fs::read_to_string(e.path()).is_ok_and(|t| t.contains("prog_type:")))
            })
            .unwrap_or(false);
        if found {
            // Programs load before they attach; give the attach a moment.
            std::thread::sleep(Duration::from_millis(500));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("tcpstates (pid {pid}) loaded no BPF program within 20 s")
}

fn json_field(s: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let start = s.find(&pat)? + pat.len();
    let rest = &s[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// Lost events from tracer's exit line `tracer: N events, M lost, …`.
fn lost_from_summary(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        let (_, rest) = l.split_once(" events, ")?;
        rest.split_once(" lost")?.0.trim().parse().ok()
    })
}
