//! Command line: clap definitions (doc comments are the help text) and their validation into
//! the front-ends' configurations, done before anything is loaded into the kernel. The kernel
//! and engine options of every live front-end are one [`KernelArgs`], flattened into the
//! stream's [`LiveArgs`] and top's [`TopArgs`] (each keeping its own help wording and order).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::output::{Format, Show};
use crate::untrusted::CmdlinePolicy;

/// Follow every TCP connection of this host through its close sequence: how each one closed
/// (active, passive, simultaneous, reset, refused), how long it spent in each state, and which
/// process leaks sockets in CLOSE_WAIT.
///
/// Reads the kernel tracepoint sock:inet_sock_set_state through eBPF; needs root (or CAP_BPF
/// and CAP_PERFMON). Stop with Ctrl-C or SIGTERM; a summary is printed on exit.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, about, long_about, max_term_width = 100)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub live: LiveArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine offline over a recording made with `tracer --json > FILE`; prints the
    /// same close, leak and summary output. Needs no privileges.
    Replay {
        /// The recording, or `-` for standard input.
        file: PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// A live full-screen view, redrawn about once a second: which processes hold CLOSE_WAIT
    /// sockets (and which leak them), how their connections close, time in each state, and
    /// the remote endpoints with the most TIME_WAIT sockets.
    /// Keys: arrows select, Enter shows a process's sockets, / filters, < > sort, q quits.
    /// Needs a terminal and root.
    Top(TopArgs),
    /// Engine throughput and memory per socket, for `cargo xtask bench`.
    #[command(hide = true)]
    BenchEngine {
        /// Connections in the synthetic stream (10 events each).
        #[arg(long, default_value_t = 500_000)]
        connections: u64,
        /// Sockets tracked at once for the memory measurement.
        #[arg(long, default_value_t = 1_000_000)]
        sockets: u64,
    },
    /// Writes the man page and the bash, zsh and fish completions, generated from these clap
    /// definitions, into DIR (for `cargo xtask dist`).
    #[command(hide = true)]
    DistAssets {
        /// The directory to write `tracer.1` and `completions/` into (created if missing).
        dir: PathBuf,
    },
}

/// Output options of the stream, the daemon and replay.
#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// Print JSON Lines (schema: docs/output.md) instead of a table.
    #[arg(long)]
    pub json: bool,

    /// What to print on stdout: a comma-separated list of transitions, closes, leaks (or all,
    /// none). Default: all; none with --metrics-addr (a daemon logs each leak on stderr).
    #[arg(long, value_name = "LIST")]
    pub show: Option<String>,
}

/// `--close-wait-threshold`'s help in the stream's and replay's `--help`.
const CLOSE_WAIT_THRESHOLD_HELP: &str = "Report a socket as leaked once it has been in CLOSE_WAIT this long (e.g. 30s, 500ms, 5m). Default: 30s; a replay uses the recording's own setting unless this is given";

/// `--capacity`'s help in the stream's and replay's `--help`.
const CAPACITY_HELP: &str = "Most sockets followed at once; beyond it the stalest non-leaking ones are evicted (and counted). Default: 1000000; a replay uses the recording's own setting unless this is given";

/// Options of replay: the output, and the engine settings that override the recording's.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub output: OutputArgs,

    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help = CLOSE_WAIT_THRESHOLD_HELP)]
    pub close_wait_threshold: Option<Duration>,

    #[arg(long, value_name = "N", help = CAPACITY_HELP)]
    pub capacity: Option<usize>,
}

/// `--close-wait-threshold` when not given.
pub const DEFAULT_CLOSE_WAIT_THRESHOLD: Duration = Duration::from_secs(30);
/// `--capacity` when not given.
pub const DEFAULT_CAPACITY: usize = crate::engine::EngineConfig::DEFAULT_CAPACITY;

/// Options of live tracing (the stream and the daemon). The kernel and engine options are
/// [`KernelArgs`], shared with top; their help here is the stream's own, and the display
/// orders keep each option where the help has always listed it.
#[derive(Debug, clap::Args)]
#[command(
    mut_arg("json", |a| a.display_order(0)),
    mut_arg("show", |a| a.display_order(1)),
    mut_arg("close_wait_threshold", |a| a
        .help(CLOSE_WAIT_THRESHOLD_HELP)
        .hide_default_value(true)
        .display_order(2)),
    mut_arg("capacity", |a| a.help(CAPACITY_HELP).hide_default_value(true).display_order(3)),
    mut_arg("pid", |a| a
        .help("Only sockets held by this process (all its threads), including connections it accepts and sockets it already holds. Exits when the process exits")
        .display_order(4)),
    mut_arg("no_baseline", |a| a.display_order(9)),
    mut_arg("drain_interval", |a| a
        .help("How often buffered events are drained and leak timers checked: the most a leak report or an event can be late. The kernel also wakes the reader early when its buffer fills")
        .display_order(10)),
    mut_arg("ring_mib", |a| a.display_order(11)),
)]
pub struct LiveArgs {
    #[command(flatten)]
    pub output: OutputArgs,

    #[command(flatten)]
    pub kernel: KernelArgs,

    /// Stop after this long (e.g. 10s, 5m). Default: run until Ctrl-C or SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, display_order = 5)]
    pub duration: Option<Duration>,

    /// Serve Prometheus metrics, /live and /ready at this address (e.g. 127.0.0.1:9977).
    #[arg(long, value_name = "ADDR:PORT", display_order = 6)]
    pub metrics_addr: Option<String>,

    /// TLS and basic authentication for --metrics-addr, in the Prometheus exporter-toolkit web
    /// configuration format (node_exporter's --web.config.file): tls_server_config,
    /// basic_auth_users with bcrypt hashes, http_server_config.headers, rate_limit.
    #[arg(long, value_name = "FILE", display_order = 6)]
    pub web_config_file: Option<PathBuf>,

    /// Most per-process series in the CLOSE_WAIT metrics; the rest are summed under
    /// pid="other".
    #[arg(long, value_name = "N", default_value_t = 100, display_order = 7)]
    pub max_process_series: usize,

    /// Turn on the kernel's BPF run-time statistics while tracer runs, for
    /// tracer_bpf_run_time_seconds_total and tracer_bpf_runs_total. Host-wide: every run of
    /// every BPF program on the host then pays for two clock reads. Without it the metrics are
    /// there when kernel.bpf_stats_enabled=1 is already set.
    #[arg(long, display_order = 8)]
    pub bpf_stats: bool,

    /// Most remote endpoints (and local/remote pairs) named in the TIME_WAIT and ephemeral
    /// port metrics; the rest are summed under remote="other".
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub max_remote_series: usize,

    #[command(flatten)]
    pub time_wait: TimeWaitArgs,
}

/// Options of the kernel side and the engine, shared by every live front-end (the stream, the
/// daemon, top) and validated in one place ([`KernelArgs::validate`]). The help texts are
/// top's; the stream words some of its own ([`LiveArgs`]).
#[derive(Debug, clap::Args)]
pub struct KernelArgs {
    /// Only sockets held by this process (all its threads), including connections it accepts
    /// and sockets it already holds.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Count a socket as leaking once it has been in CLOSE_WAIT this long (e.g. 30s, 500ms,
    /// 5m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub close_wait_threshold: Duration,

    /// Most sockets followed at once; beyond it the stalest non-leaking ones are evicted (and
    /// counted).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CAPACITY)]
    pub capacity: usize,

    /// Do not read the sockets that exist at startup (sock_diag baseline).
    #[arg(long)]
    pub no_baseline: bool,

    /// How often buffered events are drained and leak timers checked.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub drain_interval: Duration,

    /// Kernel ring-buffer memory in MiB, a multiple of 4: one 4 MiB ring per CPU while it
    /// lasts, CPUs sharing rings beyond [default: 4 per online CPU, at most 64].
    #[arg(long, value_name = "MIB")]
    pub ring_mib: Option<u32>,

    /// How often the followed CLOSE_WAIT sockets are checked against the kernel's (one
    /// sock_diag dump filtered to CLOSE_WAIT per namespace), besides within a second after
    /// events are lost; 0s: only after losses.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub reconcile_interval: Duration,

    /// What records and screens carry of an owner's command line: full, redacted (values of
    /// secret-looking options and URL passwords hidden as ***; docs/output.md), or none.
    #[arg(long, value_name = "WHAT", value_enum, default_value_t = CmdlinePolicy::Redacted)]
    pub cmdline: CmdlinePolicy,
}

/// Validated [`KernelArgs`]: how the live driver loads the kernel side and builds the path.
#[derive(Debug, Clone, Copy)]
pub struct KernelConfig {
    /// `--pid` (resolved to its process by the driver).
    pub pid: Option<u32>,
    pub close_wait_threshold: Duration,
    pub capacity: usize,
    /// Read the sockets that exist at startup (not `--no-baseline`).
    pub baseline: bool,
    pub drain_interval: Duration,
    /// Ring-buffer memory (None: the default for this host's CPUs).
    pub ring_bytes: Option<u32>,
    /// `--reconcile-interval` (None: only after losses).
    pub reconcile_every: Option<Duration>,
    /// `--cmdline`.
    pub cmdline: CmdlinePolicy,
}

impl KernelArgs {
    /// `--pid`, `--drain-interval` and `--ring-mib`, then `--capacity` and
    /// `--close-wait-threshold`.
    pub fn validate(&self) -> Result<KernelConfig, UsageError> {
        live_limits(self.pid, self.drain_interval, self.ring_mib)?;
        engine_limits(Some(self.capacity), Some(self.close_wait_threshold))?;
        Ok(KernelConfig {
            pid: self.pid,
            close_wait_threshold: self.close_wait_threshold,
            capacity: self.capacity,
            baseline: !self.no_baseline,
            drain_interval: self.drain_interval,
            ring_bytes: self.ring_mib.map(|m| m << 20),
            reconcile_every: (!self.reconcile_interval.is_zero())
                .then_some(self.reconcile_interval),
            cmdline: self.cmdline,
        })
    }
}

/// Options of the per-remote TIME_WAIT accounting, shared by the stream, the daemon and top.
#[derive(Debug, clap::Args)]
pub struct TimeWaitArgs {
    /// Most (namespace, local address, remote endpoint) tuples whose TIME_WAIT sockets are
    /// counted; hand-overs beyond are counted as dropped until a re-sync frees room.
    #[arg(long, value_name = "N", default_value_t = 16_384)]
    pub time_wait_capacity: usize,

    /// How often the per-remote TIME_WAIT counts and ephemeral port use are re-read from the
    /// kernel (sock_diag dump of every namespace). Never more often than 20 times what the
    /// last re-read took.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub time_wait_resync: Duration,
}

impl TimeWaitArgs {
    /// The accounting's limits, `series` remotes named in the metrics.
    fn config(&self, series: usize) -> crate::pipeline::TimeWaitConfig {
        crate::pipeline::TimeWaitConfig {
            capacity: self.time_wait_capacity.max(1),
            series,
            resync_every: self.time_wait_resync.max(Duration::from_secs(1)),
        }
    }
}

/// Options of `tracer top`: [`KernelArgs`] (listed with `--refresh` after
/// `--close-wait-threshold`, as top's help always has), the refresh, [`TimeWaitArgs`].
#[derive(Debug, clap::Args)]
#[command(
    mut_arg("capacity", |a| a.display_order(3)),
    mut_arg("no_baseline", |a| a.display_order(4)),
    mut_arg("drain_interval", |a| a.display_order(5)),
    mut_arg("ring_mib", |a| a.display_order(6)),
)]
pub struct TopArgs {
    #[command(flatten)]
    pub kernel: KernelArgs,

    /// How often the view is rebuilt and redrawn (from 100ms to 60s).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration, display_order = 2)]
    pub refresh: Duration,

    #[command(flatten)]
    pub time_wait: TimeWaitArgs,
}

/// Validated configuration of `tracer top`.
#[derive(Debug, Clone)]
pub struct TopConfig {
    pub kernel: KernelConfig,
    pub refresh: Duration,
    /// The TIME_WAIT panel's accounting.
    pub time_wait: crate::pipeline::TimeWaitConfig,
}

impl TopArgs {
    pub fn validate(&self) -> Result<TopConfig, UsageError> {
        let kernel = self.kernel.validate()?;
        if self.refresh < Duration::from_millis(100) || self.refresh > Duration::from_secs(60) {
            return Err(UsageError("--refresh must be between 100ms and 60s".into()));
        }
        Ok(TopConfig {
            kernel,
            refresh: self.refresh,
            time_wait: self.time_wait.config(TOP_TIME_WAIT_ROWS),
        })
    }
}

/// Remotes named by top's TIME_WAIT panel.
pub const TOP_TIME_WAIT_ROWS: usize = 10;
/// (reason, remote) pairs of RSTs sent in `tracer top`'s host strip.
pub const TOP_RESET_ROWS: usize = 2;

/// Checks shared by every live front-end: `--pid`, `--drain-interval`, `--ring-mib`.
fn live_limits(
    pid: Option<u32>,
    drain_interval: Duration,
    ring_mib: Option<u32>,
) -> Result<(), UsageError> {
    if pid == Some(0) {
        return Err(UsageError("--pid 0 is not a process".into()));
    }
    if let Some(pid) = pid
        && let Some(comm) = kernel_thread(pid)
    {
        return Err(UsageError(format!(
            "--pid {pid} is a kernel thread ({comm}); kernel threads hold no sockets"
        )));
    }
    if drain_interval < Duration::from_millis(1) || drain_interval > Duration::from_secs(10) {
        return Err(UsageError(
            "--drain-interval must be between 1ms and 10s".into(),
        ));
    }
    if let Some(mib) = ring_mib
        && (!(4..=1024).contains(&mib) || !mib.is_multiple_of(4))
    {
        return Err(UsageError(
            "--ring-mib must be a multiple of 4 from 4 to 1024 (each ring is 4 MiB)".into(),
        ));
    }
    Ok(())
}

/// Validated configuration of a live run.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub format: Format,
    pub show: Show,
    /// The kernel side and the engine.
    pub kernel: KernelConfig,
    pub duration: Option<Duration>,
    pub metrics_addr: Option<SocketAddr>,
    /// `--web-config-file` (read when the server starts).
    pub web_config_file: Option<PathBuf>,
    pub max_process_series: usize,
    /// `--bpf-stats`.
    pub bpf_stats: bool,
    pub time_wait: crate::pipeline::TimeWaitConfig,
}

/// Validated configuration of a replay.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub file: PathBuf,
    pub format: Format,
    pub show: Show,
    /// Given on the command line; otherwise the recording's meta line, otherwise the default.
    pub close_wait_threshold: Option<Duration>,
    /// Given on the command line; otherwise the recording's meta line, otherwise the default.
    pub capacity: Option<usize>,
}

impl LiveConfig {
    /// The settings a recording starts with (`attach`: the kernel hook in use).
    pub fn meta(&self, attach: &'static str, resets: &'static str) -> crate::output::Meta {
        crate::output::Meta {
            version: env!("CARGO_PKG_VERSION"),
            close_wait_threshold_ns: u64::try_from(self.kernel.close_wait_threshold.as_nanos())
                .unwrap_or(u64::MAX),
            capacity: self.kernel.capacity as u64,
            pid: self.kernel.pid,
            attach,
            baseline: self.kernel.baseline,
            resets,
            realtime_offset_ns: i64::try_from(crate::output::realtime_offset_ns()).unwrap_or(0),
        }
    }
}

/// A usage error: one line, printed as `tracer: error: …`, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn output(c: &OutputArgs, daemon: bool) -> Result<(Format, Show), UsageError> {
    let format = if c.json { Format::Json } else { Format::Text };
    let show = match &c.show {
        Some(s) => Show::parse(s).map_err(|e| UsageError(format!("--show: {e}")))?,
        None if daemon => Show::parse("none").map_err(UsageError)?,
        None => Show::ALL,
    };
    Ok((format, show))
}

/// `--capacity` and `--close-wait-threshold`, where given.
fn engine_limits(
    capacity: Option<usize>,
    close_wait_threshold: Option<Duration>,
) -> Result<(), UsageError> {
    if capacity == Some(0) {
        return Err(UsageError("--capacity must be at least 1".into()));
    }
    if close_wait_threshold.is_some_and(|d| d.is_zero()) {
        return Err(UsageError(
            "--close-wait-threshold must be more than 0".into(),
        ));
    }
    Ok(())
}

impl LiveArgs {
    pub fn validate(&self) -> Result<LiveConfig, UsageError> {
        let (format, show) = output(&self.output, self.metrics_addr.is_some())?;
        let kernel = self.kernel.validate()?;
        let metrics_addr = self
            .metrics_addr
            .as_deref()
            .map(parse_listen_addr)
            .transpose()?;
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err(UsageError("--duration must be more than 0".into()));
        }
        if self.web_config_file.is_some() && metrics_addr.is_none() {
            return Err(UsageError(
                "--web-config-file configures the metrics server: give --metrics-addr too".into(),
            ));
        }
        Ok(LiveConfig {
            format,
            show,
            kernel,
            duration: self.duration,
            metrics_addr,
            web_config_file: self.web_config_file.clone(),
            max_process_series: self.max_process_series,
            bpf_stats: self.bpf_stats,
            time_wait: self.time_wait.config(self.max_remote_series),
        })
    }
}

pub fn validate_replay(file: &std::path::Path, c: &CommonArgs) -> Result<ReplayConfig, UsageError> {
    let (format, mut show) = output(&c.output, false)?;
    engine_limits(c.capacity, c.close_wait_threshold)?;
    if c.output.show.is_none() {
        // The recording already holds the transitions; replay's answer is closes and leaks.
        show.transitions = false;
    }
    Ok(ReplayConfig {
        file: file.to_path_buf(),
        format,
        show,
        close_wait_threshold: c.close_wait_threshold,
        capacity: c.capacity,
    })
}

/// `PF_KTHREAD` in the flags of /proc/PID/stat (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// The name of process `pid` if it is a kernel thread, by the `PF_KTHREAD` flag the kernel sets
/// on every kernel thread (robust where an empty cmdline is not: a zombie also has one, and
/// kthreadd's pid differs inside a pid namespace). `None` for a user process, or when
/// /proc/PID/stat cannot be read (an exited process is reported later, with its own message).
fn kernel_thread(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (comm, flags) = stat_comm_flags(&stat)?;
    (flags & PF_KTHREAD != 0).then(|| comm.to_owned())
}

/// The comm and the flags (field 9) of a /proc/PID/stat line. The comm is in parentheses and may
/// itself hold spaces and parentheses: the fields resume after the last `)`.
pub(crate) fn stat_comm_flags(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    // After the comm: state, ppid, pgrp, session, tty_nr, tpgid, flags.
    let flags = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(6)?
        .parse()
        .ok()?;
    Some((comm, flags))
}

/// `ADDR:PORT`, `[V6]:PORT`, or `:PORT` / `PORT` (loopback).
fn parse_listen_addr(s: &str) -> Result<SocketAddr, UsageError> {
    let bad = || {
        UsageError(format!(
            "--metrics-addr {s:?} is not ADDR:PORT (e.g. 127.0.0.1:9977, [::1]:9977, 0.0.0.0:9977)"
        ))
    };
    let s = s.trim();
    if let Ok(port) = s.trim_start_matches(':').parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse::<SocketAddr>().map_err(|_| bad())
}

/// Parses `1.5s`, `500ms`, `100us`, `2m`, `1h`, `10` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 500ms, 5m, 1h)"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ns, us, ms, s, m, h)"
            ));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("{s:?} is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn listen_addrs() {
        assert_eq!(
            parse_listen_addr("9977").unwrap(),
            "127.0.0.1:9977".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert!(parse_listen_addr("localhost").is_err());
        assert!(parse_listen_addr("1.2.3.4:99999").is_err());
    }

    #[test]
    fn top_options() {
        let top = |args: &[&str]| -> Result<TopConfig, String> {
            let cli = Cli::try_parse_from([&["tracer", "top"], args].concat())
                .map_err(|e| e.to_string())?;
            match cli.command {
                Some(Command::Top(a)) => a.validate().map_err(|e| e.to_string()),
                other => panic!("not top: {other:?}"),
            }
        };
        let c = top(&[]).unwrap();
        assert_eq!(c.refresh, Duration::from_secs(1));
        assert_eq!(c.kernel.close_wait_threshold, Duration::from_secs(30));
        assert!(c.kernel.baseline && c.kernel.pid.is_none());
        let me = std::process::id().to_string();
        let c = top(&[
            "--pid",
            &me,
            "--close-wait-threshold",
            "2s",
            "--refresh",
            "250ms",
        ])
        .unwrap();
        assert_eq!(
            (c.kernel.pid, c.kernel.close_wait_threshold),
            (Some(std::process::id()), Duration::from_secs(2))
        );
        assert_eq!(
            (c.time_wait.capacity, c.time_wait.resync_every),
            (16_384, Duration::from_secs(30))
        );
        let c = top(&["--time-wait-capacity", "100", "--time-wait-resync", "5s"]).unwrap();
        assert_eq!(
            (c.time_wait.capacity, c.time_wait.resync_every),
            (100, Duration::from_secs(5))
        );
        assert!(
            top(&["--refresh", "10ms"])
                .unwrap_err()
                .contains("--refresh")
        );
        assert!(top(&["--pid", "0"]).unwrap_err().contains("--pid 0"));
        for bad in ["3", "6", "0", "2048"] {
            assert!(
                top(&["--ring-mib", bad])
                    .unwrap_err()
                    .contains("multiple of 4"),
                "{bad}"
            );
        }
        assert_eq!(
            top(&["--ring-mib", "12"]).unwrap().kernel.ring_bytes,
            Some(12 << 20)
        );
        assert_eq!(top(&[]).unwrap().kernel.ring_bytes, None);
        // Stream-only options are not top's.
        assert!(top(&["--json"]).is_err());
    }

    #[test]
    fn kernel_threads_are_told_apart_by_their_flags() {
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 7 0 0";
        assert_eq!(stat_comm_flags(kthread), Some(("kthreadd", 2_129_984)));
        assert_ne!(2_129_984 & PF_KTHREAD, 0);
        let user = "77 (my (odd) prog) S 1 77 77 0 -1 4194560 95 0 0 0 1 0 0 0 20 0 1 0 9";
        assert_eq!(stat_comm_flags(user), Some(("my (odd) prog", 4_194_560)));
        assert_eq!(4_194_560 & PF_KTHREAD, 0);
        assert_eq!(stat_comm_flags("garbage"), None);
        assert_eq!(stat_comm_flags("1 (x) S 0"), None);
        // This process is not a kernel thread; the live /proc is read the same way.
        assert_eq!(kernel_thread(std::process::id()), None);
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
