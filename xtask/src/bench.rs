//! `cargo xtask bench`: the measurements of docs/performance.md, in one run, side by side.
//!
//! 1. Workload slowdown: connections/s of `xtask loadgen` (loopback connect/accept/close, two
//!    client threads placed by the scheduler, in a private network namespace) with nothing
//!    attached, with `tracer` as a daemon (metrics on), with `tracer --pid` of an idle process,
//!    and with libbpf-tools' `tcpstates`. Every traced run is **bracketed by two bare runs**
//!    (bare, traced A, bare, traced B, bare, …; the order of the traced setups rotates each
//!    round) and measured as a ratio to the mean of its two brackets, so that slow drifts of the
//!    machine (other work on shared cores) cancel out. A traced run whose two bare brackets
//!    disagree by more than `--bare-tolerance` is rejected and measured again in a later round.
//!    The table gives the median ratio and its spread (half the interquartile range).
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

mod scale;

/// `--hold-pairs`: one of `--scale`'s socket holders (runs before any setup).
pub fn hold(args: &BenchArgs) -> Option<Result<()>> {
    args.hold_pairs.map(|p| scale::hold(p, args.hold_index))
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A short version for CI (one round of one-second runs), so the benchmark cannot rot.
    #[arg(long)]
    pub smoke: bool,
    /// Kept (bracketed, agreeing) runs of each traced setup; medians are reported.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Load-generator client threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Reject a traced run when its two bare brackets differ by more than this (percent).
    #[arg(long, default_value_t = 3.0)]
    pub bare_tolerance: f64,
    /// Pin each client thread to its own CPU and the acceptor beside the first. Off by
    /// default: pinned, the acceptor and the first client share one CPU and the bare rate is
    /// bimodal (9.4–16.5 k connections/s over 8 runs, against 13.0–15.3 k with 10 of 12
    /// within ±3 % when the scheduler places them; docs/performance.md).
    #[arg(long)]
    pub pin: bool,
    /// Only the many-sockets measurement: RSS per tracked socket, startup to `/ready` and one
    /// scrape with `--sockets` established loopback sockets (docs/performance.md).
    #[arg(long)]
    pub scale: bool,
    /// Socket counts for `--scale`, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "200000,1000000")]
    pub sockets: Vec<usize>,
    /// Measure this tracer binary instead of building one (to compare two builds).
    #[arg(long)]
    pub tracer: Option<PathBuf>,
    /// Internal (`--scale`'s socket holders): hold this many loopback pairs until stdin closes.
    #[arg(long, hide = true)]
    pub hold_pairs: Option<usize>,
    /// Internal: which holder this is (picks its listener's address).
    #[arg(long, hide = true, default_value_t = 0)]
    pub hold_index: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    Bare,
    Daemon,
    PidIdle,
    /// The default text mode, every transition printed, stdout to a file.
    Text,
    /// `--json`, stdout to a file.
    Json,
    Tcpstates,
}

impl Setup {
    const TRACED: [Setup; 5] = [
        Setup::Daemon,
        Setup::PidIdle,
        Setup::Text,
        Setup::Json,
        Setup::Tcpstates,
    ];
    /// The setups of the harsher load (no TIME_WAIT, about 600 k events/s).
    const HARSH: [Setup; 3] = [Setup::Daemon, Setup::Text, Setup::Tcpstates];

    fn name(self) -> &'static str {
        match self {
            Setup::Bare => "nothing attached",
            Setup::Daemon => "tracer (daemon, metrics on)",
            Setup::PidIdle => "tracer --pid (idle process)",
            Setup::Text => "tracer (text mode, to a file)",
            Setup::Json => "tracer --json (to a file)",
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

/// The runs of one traced setup.
#[derive(Default)]
struct Measured {
    /// Every run (for the per-event costs, which do not depend on the brackets).
    runs: Vec<Run>,
    /// Rate ratios to the bracketing bare runs, of the runs kept.
    ratios: Vec<f64>,
    /// Rate ratios of every run, kept or not.
    all_ratios: Vec<f64>,
    /// Runs rejected because their bare brackets disagreed.
    rejected: usize,
}

/// How one run is set up.
struct RunCtx<'a> {
    tracer: &'a Path,
    xtask: &'a Path,
    seconds: f64,
    threads: usize,
    pin: bool,
    /// The load runs with `net.ipv4.tcp_max_tw_buckets=0` in its namespace (no TIME_WAIT
    /// sockets: about twice the connections per second).
    harsh: bool,
}

pub fn run(tools: &Tools, args: &BenchArgs) -> Result<()> {
    let (rounds, seconds) = if args.smoke {
        (1, 1.0)
    } else {
        (args.rounds.max(1), args.seconds)
    };
    let tracer = match &args.tracer {
        Some(t) => t.clone(),
        None => {
            cargo(tools, &["build", "--release", "-p", "tracer"])?;
            workspace_root().join("target/release/tracer")
        }
    };
    let xtask = std::env::current_exe().context("locating xtask")?;
    // The many-sockets rows first (every bench shows them; `--scale` only them).
    let counts: &[usize] = if args.smoke { &[20_000] } else { &args.sockets };
    let mut scale_rows = Vec::new();
    for &n in counts {
        scale_rows.push(
            scale::measure(&tracer, &xtask, n)
                .with_context(|| format!("bench --scale with {n} sockets"))?,
        );
    }
    if args.scale {
        scale::print(&scale_rows);
        return Ok(());
    }
    ensure_debian_tool("tcpstates", "libbpf-tools")?;
    let ctx = RunCtx {
        tracer: &tracer,
        xtask: &xtask,
        seconds,
        threads: args.threads,
        pin: args.pin,
        harsh: false,
    };
    let load_before = loadavg();

    let stats_before =
        fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_else(|_| "0".into());
    fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
        .context("enabling kernel.bpf_stats_enabled (needs root)")?;
    let tolerance = args.bare_tolerance / 100.0;
    let result = measure(&ctx, &Setup::TRACED, rounds, args.smoke, tolerance).and_then(|m| {
        let harsh = RunCtx { harsh: true, ..ctx };
        Ok((
            m,
            measure(&harsh, &Setup::HARSH, rounds, args.smoke, tolerance)?,
        ))
    });
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_before.trim());
    let ((bare, measured), (harsh_bare, harsh_measured)) = result?;

    let engine = output(Command::new(&tracer).args([
        "bench-engine",
        "--connections",
        if args.smoke { "20000" } else { "500000" },
        "--sockets",
        if args.smoke { "50000" } else { "1000000" },
    ]))
    .context("running tracer bench-engine")?;

    scale::print(&scale_rows);
    println!();
    print_report(
        &bare,
        &measured,
        engine.trim(),
        &Header {
            rounds,
            seconds,
            threads: args.threads,
            pin: ctx.pin,
            tolerance_pct: args.bare_tolerance,
            load_before,
            load_after: loadavg(),
        },
    );
    println!(
        "\nThe harsher load: the same, with net.ipv4.tcp_max_tw_buckets=0 in the load's \
         namespace (no TIME_WAIT sockets; the same transitions).\n"
    );
    print_table(&harsh_bare, &harsh_measured);
    Ok(())
}

/// The bare runs, and the runs of each traced setup.
type Measurements = (Vec<Run>, Vec<(Setup, Measured)>);

/// Runs the bracketed schedule until every traced setup has `rounds` kept runs (at most
/// `2 × rounds` rounds; one round and no retries in smoke mode).
fn measure(
    ctx: &RunCtx<'_>,
    setups: &[Setup],
    rounds: usize,
    smoke: bool,
    tolerance: f64,
) -> Result<Measurements> {
    let mut measured: Vec<(Setup, Measured)> =
        setups.iter().map(|&s| (s, Measured::default())).collect();
    let mut bare = vec![one_run(Setup::Bare, ctx).context("bench run Bare")?];
    let max_rounds = if smoke { 1 } else { 2 * rounds };
    for round in 0..max_rounds {
        if measured.iter().all(|(_, m)| m.ratios.len() >= rounds) {
            break;
        }
        // Rotate the order so that no setup always follows the same one.
        for k in 0..setups.len() {
            let (setup, m) = &mut measured[(k + round) % setups.len()];
            if m.ratios.len() >= rounds {
                continue;
            }
            let r = one_run(*setup, ctx).with_context(|| format!("bench run {setup:?}"))?;
            let after = one_run(Setup::Bare, ctx).context("bench run Bare")?;
            let before = bare.last().map_or(after.rate, |b| b.rate);
            bare.push(after);
            let mean = (before + after.rate) / 2.0;
            let disagree = if mean > 0.0 {
                (before - after.rate).abs() / mean
            } else {
                1.0
            };
            let kept = disagree <= tolerance || smoke;
            let ratio = if mean > 0.0 { r.rate / mean } else { 0.0 };
            eprintln!(
                "bench: round {} {:<28} {:>7.0} conn/s  {:.3} of bare ({:>6.0}/{:>6.0}, {:>4.1} % apart{})  bpf {:>5} ns/run  cpu {:.2}s  lost {:?}",
                round + 1,
                setup.name(),
                r.rate,
                ratio,
                before,
                after.rate,
                disagree * 100.0,
                if kept { "" } else { ": rejected" },
                r.bpf_ns.checked_div(r.bpf_runs).unwrap_or(0),
                r.cpu_s,
                r.lost
            );
            m.runs.push(r);
            m.all_ratios.push(ratio);
            if kept {
                m.ratios.push(ratio);
            } else {
                m.rejected += 1;
            }
        }
    }
    Ok((bare, measured))
}

/// Median and half the interquartile range (linear interpolation between order statistics).
fn median_spread(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let x = p * (v.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
    };
    (q(0.5), (q(0.75) - q(0.25)) / 2.0)
}

/// `/proc/loadavg`'s first three fields.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// How the run was made, for the report's first lines.
struct Header {
    rounds: usize,
    seconds: f64,
    threads: usize,
    pin: bool,
    tolerance_pct: f64,
    load_before: String,
    load_after: String,
}

fn print_report(bare: &[Run], measured: &[(Setup, Measured)], engine: &str, h: &Header) {
    println!(
        "Workload: {} client threads{} of loopback connect/accept/close in a private network \
         namespace, {} s per run; every traced run between two bare runs, kept when they agree \
         within {} %; {} kept runs per setup wanted. Medians ± half the interquartile range.",
        h.threads,
        if h.pin { " (pinned)" } else { "" },
        h.seconds,
        h.tolerance_pct,
        h.rounds
    );
    println!(
        "Load average (1, 5, 15 min) before: {}, after: {}.\n",
        h.load_before, h.load_after
    );
    print_table(bare, measured);
    println!("\nEngine (one core, synthetic stream): {engine}");
}

/// The table of one load's setups.
fn print_table(bare: &[Run], measured: &[(Setup, Measured)]) {
    println!(
        "| setup | connections/s | vs bare | kept/rejected runs | kernel ns/event | CPU s per 1M events | peak RSS MiB | lost events |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let pct = |m: f64, s: f64| {
        if m > 0.0 {
            format!("± {:.1} %", 100.0 * s / m)
        } else {
            String::new()
        }
    };
    let (b, bs) = median_spread(bare.iter().map(|r| r.rate).collect());
    println!(
        "| {} | {b:.0} {} | 1 | {} runs | – | – | – | – |",
        Setup::Bare.name(),
        pct(b, bs),
        bare.len()
    );
    for (setup, m) in measured {
        let (rate, rate_s) = median_spread(m.runs.iter().map(|r| r.rate).collect());
        let vs_bare = if m.ratios.is_empty() {
            // Nothing kept: say so, and give the unfiltered figure for what it is worth.
            let (all, all_s) = median_spread(m.all_ratios.clone());
            format!(
                "– (no run kept; all {}: {all:.3} ± {all_s:.3})",
                m.all_ratios.len()
            )
        } else {
            let (ratio, ratio_s) = median_spread(m.ratios.clone());
            format!("{ratio:.3} ± {ratio_s:.3}")
        };
        let per_event: Vec<&Run> = m.runs.iter().filter(|r| r.bpf_runs > 0).collect();
        let (ns, ns_s) = median_spread(
            per_event
                .iter()
                .map(|r| r.bpf_ns as f64 / r.bpf_runs as f64)
                .collect(),
        );
        let (cpu, cpu_s) = median_spread(
            per_event
                .iter()
                .map(|r| r.cpu_s / (r.bpf_runs as f64 / 1e6))
                .collect(),
        );
        let rss = m.runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        let lost: Option<u64> = m.runs.iter().filter_map(|r| r.lost).max();
        let or_dash = |x: f64, s: String| if x > 0.0 { s } else { "–".into() };
        println!(
            "| {} | {rate:.0} {} | {vs_bare} | {}/{} | {} | {} | {} | {} |",
            setup.name(),
            pct(rate, rate_s),
            m.ratios.len(),
            m.rejected,
            or_dash(ns, format!("{ns:.0} {}", pct(ns, ns_s))),
            or_dash(cpu, format!("{cpu:.3} {}", pct(cpu, cpu_s))),
            or_dash(rss, format!("{rss:.1}")),
            lost.map_or("–".into(), |l| l.to_string()),
        );
    }
}

fn one_run(setup: Setup, ctx: &RunCtx<'_>) -> Result<Run> {
    let RunCtx {
        tracer,
        xtask,
        seconds,
        threads,
        pin,
        harsh,
    } = *ctx;
    let mut idle: Option<Child> = None;
    let mut out_file: Option<PathBuf> = None;
    let mut err_buf: Option<Stderr> = None;
    let mut tool: Option<Child> = match setup {
        Setup::Bare => None,
        Setup::Daemon => {
            let (c, e) = spawn_tracer(
                tracer,
                &["--metrics-addr", "127.0.0.1:0", "--show", "none"],
                Stdio::null(),
            )?;
            err_buf = Some(e);
            Some(c)
        }
        Setup::Text | Setup::Json => {
            // Written to a file, as a user's `tracer > trace.txt` (the kernel's copy of the
            // bytes is part of what the mode costs); deleted after the run.
            let path =
                std::env::temp_dir().join(format!("tracer-bench-{}.out", std::process::id()));
            let file = fs::File::create(&path).context("creating the bench's output file")?;
            out_file = Some(path);
            let args: &[&str] = if setup == Setup::Json {
                &["--json"]
            } else {
                &[]
            };
            let (c, e) = spawn_tracer(tracer, args, Stdio::from(file))?;
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
            let (c, e) = spawn_tracer(tracer, &["--pid", &pid, "--show", "none"], Stdio::null())?;
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
    let mut load = Command::new("unshare");
    load.arg("-n");
    if harsh {
        // The sysctl is per network namespace: set in the load's own, before the load.
        load.args([
            "sh",
            "-c",
            "sysctl -qw net.ipv4.tcp_max_tw_buckets=0 && exec \"$0\" \"$@\"",
        ]);
    }
    load.arg(xtask).args([
        "loadgen",
        "--threads",
        &threads.to_string(),
        "--seconds",
        &seconds.to_string(),
    ]);
    if pin {
        load.arg("--pin");
    }
    let out = output(&mut load)?;
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
    if let Some(p) = out_file {
        let _ = fs::remove_file(p);
    }
    Ok(run)
}

/// A running tool and, for tracer, its collected stderr.
type Stderr = std::sync::Arc<std::sync::Mutex<String>>;

fn spawn_tracer(tracer: &Path, args: &[&str], stdout: Stdio) -> Result<(Child, Stderr)> {
    let mut c = Command::new(tracer)
        .args(args)
        .stdout(stdout)
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
            let mut g = b.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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

/// The process's BPF program stats (from its own prog fds, each program once), CPU time and
/// peak RSS. Every program of a tool on the tracepoint runs once per event, so the run time is
/// summed over them and the runs are the most any one made (tracer's `tp_btf` object attaches a
/// second, nested-event program: its time is part of each event's cost, its runs are not more
/// events).
fn sample(pid: u32) -> Sample {
    let mut s = Sample::default();
    let mut seen = std::collections::HashSet::new();
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
            if !seen.insert(field("prog_id:")) {
                continue;
            }
            s.bpf_ns += field("run_time_ns:");
            s.bpf_runs = s.bpf_runs.max(field("run_cnt:"));
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
