//! The one live driver, shared by the stream, the daemon and `tracer top`: it owns the kernel
//! side ([`Kernel`]) and the per-event path ([`Pipeline`], in the [`Shared`] state the metrics
//! endpoint also reads), built from the kernel and engine options ([`KernelConfig`]) and the
//! TIME_WAIT accounting. It decides what happens on a kernel wakeup, on a backlog, on a drain
//! tick (drain, counters refreshed, newly lost events reported as they happen, TIME_WAIT
//! re-sync, reconciliation with the kernel and holder confirmation, each rate-limited inside
//! the path, program statistics once a second when asked) and when `--pid`'s process exits
//! (its sockets followed until they are gone, within [`EXIT_FOLLOW`]); and the final drain
//! and the summary's numbers.
//!
//! A front-end waits on [`Driver::wait`] (cancel-safe: a `select!` branch beside its own:
//! signals, `--duration`, keys, a redraw timer) and passes what woke it to
//! [`Driver::handle`] with its [`Sink`]. Notices go through [`crate::logs::line`], so that
//! they wait while a full-screen view owns the terminal.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::time::{Interval, MissedTickBehavior};

use crate::attribution;
use crate::bpf::{KernelCounters, ProgramStats};
use crate::cli::KernelConfig;
use crate::engine::{EngineConfig, Summary};
use crate::live::{Kernel, KernelOptions, ReaderStats};
use crate::metrics::MetricsSnapshot;
use crate::pipeline::{Pipeline, PipelineConfig, ReconcileConfig, Sink, TimeWaitConfig};

/// How long `--pid` keeps following the sockets of its process after the process is gone.
pub const EXIT_FOLLOW: Duration = Duration::from_secs(2);

/// How often the sockets of an exited `--pid` process are looked at while they are followed.
const FOLLOW_STEP: Duration = Duration::from_millis(10);

/// How often the program's run-time statistics are read, when asked for.
const PROGRAM_STATS_EVERY: Duration = Duration::from_secs(1);

/// What the reader shares with the metrics endpoint. Locked once per drained batch and once
/// per scrape; never per event.
pub struct Shared {
    pub path: Pipeline,
    /// The reader's counters, as of the last drain.
    pub reader: ReaderStats,
    /// The kernel's counters, as of the last tick.
    pub kernel: KernelCounters,
    /// The program's run-time statistics, when read.
    pub program: Option<ProgramStats>,
}

impl Shared {
    /// The metrics view: the path's, plus the kernel's and the reader's counters.
    pub fn metrics(&mut self, now_ns: u64) -> MetricsSnapshot {
        let mut m = self.path.metrics(now_ns);
        m.events_lost_total = self.kernel.lost();
        m.bpf_transitions_seen_total = Some(self.kernel.seen);
        m.bpf_filtered_total = Some(self.kernel.filtered);
        m.bpf_recursion_misses_total = Some(self.kernel.skipped);
        m.bpf_recursion_recovered_total = Some(self.kernel.recovered);
        m.bpf_run_time_ns = self.program.map(|p| p.run_time.as_nanos() as u64);
        m.bpf_run_count = self.program.map(|p| p.run_count);
        m
    }
}

/// Locks the shared state (a panic elsewhere leaves it usable).
pub fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the driver has besides the options of [`KernelConfig`].
#[derive(Debug, Clone, Copy)]
pub struct DriverOptions {
    pub time_wait: TimeWaitConfig,
    /// `--bpf-stats`: turn the kernel's run-time accounting on.
    pub run_time_stats: bool,
    /// Read the program's run-time statistics once a second (for the metrics endpoint).
    pub program_stats: bool,
}

/// What woke [`Driver::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The kernel woke the reader (a ring passed its wakeup threshold).
    Ring,
    /// The last drain stopped at its batch limit.
    Backlog,
    /// The drain timer.
    Drain,
    /// Time to look again at the sockets of `--pid`'s exited process.
    Follow,
}

/// `--pid`'s process, as the driver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Followed {
    /// No `--pid`, or the process is running.
    Running,
    /// Gone; its sockets are followed until none is left or the deadline.
    Exiting { pid: u32, until: Instant },
    /// Gone, and said so.
    Exited,
}

/// The live driver (module docs).
pub struct Driver {
    kernel: Kernel,
    shared: Arc<Mutex<Shared>>,
    cfg: KernelConfig,
    opts: DriverOptions,
    /// Made at the first [`Driver::wait`]: its first tick is at once.
    drain_timer: Option<Interval>,
    lost_reported: u64,
    last_program_read: Instant,
    followed: Followed,
    /// While following an exited process: when to look again.
    follow_next: Option<tokio::time::Instant>,
}

impl Driver {
    /// Loads the kernel side and opens the path (`cfg.pid` already resolved by
    /// [`crate::live::resolve_pid`]). Must run inside the tokio runtime. The baseline is read
    /// by [`Driver::baseline`].
    pub fn open(cfg: KernelConfig, opts: DriverOptions) -> anyhow::Result<Driver> {
        let kernel = Kernel::load(&KernelOptions {
            pid: cfg.pid,
            ring_bytes: cfg.ring_bytes,
            // Run-time accounting for the tracer_bpf_run* metrics: host-wide, so only when asked.
            run_time_stats: opts.run_time_stats,
        })?;
        let mut path = Pipeline::live(PipelineConfig {
            engine: EngineConfig {
                capacity: cfg.capacity,
                close_wait_threshold_ns: cfg.close_wait_threshold.as_nanos() as u64,
            },
            pid: cfg.pid,
            cmdline: cfg.cmdline,
        })
        .context("opening sock_diag")?;
        path.set_time_wait_config(opts.time_wait);
        path.set_reconcile_config(ReconcileConfig {
            every: cfg.reconcile_every,
            ..ReconcileConfig::default()
        });
        let shared = Arc::new(Mutex::new(Shared {
            path,
            reader: ReaderStats::default(),
            kernel: KernelCounters::default(),
            program: None,
        }));
        Ok(Driver {
            kernel,
            shared,
            cfg,
            opts,
            drain_timer: None,
            lost_reported: 0,
            last_program_read: Instant::now(),
            followed: Followed::Running,
            follow_next: None,
        })
    }

    /// Which hook delivers the events (`"tp_btf"` or `"tracepoint"`).
    pub fn attach_kind(&self) -> &'static str {
        self.kernel.attach_kind()
    }

    /// What the run traces of resets sent: `"reason"` (the kernel names why, 6.10+),
    /// `"unnamed"` (counted, no reason), `"none"` (not traced).
    pub fn resets_traced(&self) -> &'static str {
        self.kernel.resets_traced()
    }

    /// The state the metrics endpoint reads.
    pub fn shared(&self) -> Arc<Mutex<Shared>> {
        self.shared.clone()
    }

    /// The shared state, locked.
    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }

    /// Unless `--no-baseline`: seeds the path with the sockets that exist now (call after
    /// [`Driver::open`]: a socket that changes state in between is seen by both, and the traced
    /// state wins); with `--pid`, passes that process's ports to the in-kernel filter.
    pub fn baseline(&mut self) -> anyhow::Result<()> {
        if self.cfg.baseline {
            self.kernel.baseline(&mut lock(&self.shared).path)?;
        }
        Ok(())
    }

    /// Waits for the next thing to do; pass it to [`Driver::handle`]. Cancel-safe.
    pub async fn wait(&mut self) -> anyhow::Result<Wake> {
        let follow_at = self.follow_next;
        let backlog = self.kernel.has_backlog();
        let interval = self.cfg.drain_interval;
        let timer = self.drain_timer.get_or_insert_with(|| {
            let mut t = tokio::time::interval(interval);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        tokio::select! {
            woken = self.kernel.wakeup() => woken.map(|()| Wake::Ring),
            // A drain that stopped at its batch limit goes on at once, after the other
            // branches (the front-end's too) have had their turn.
            _ = std::future::ready(()), if backlog => Ok(Wake::Backlog),
            _ = timer.tick() => Ok(Wake::Drain),
            _ = sleep_until(follow_at), if follow_at.is_some() => Ok(Wake::Follow),
        }
    }

    /// Does what `wake` asks, records to `sink`. Returns true once: when `--pid`'s process has
    /// exited and its sockets have been followed (the front-end says so).
    pub fn handle(&mut self, wake: Wake, sink: &mut impl Sink) -> anyhow::Result<bool> {
        match wake {
            Wake::Ring => {
                let mut sh = lock(&self.shared);
                self.kernel
                    .drain(&mut sh.path, sink)
                    .context("writing output")?;
                sh.reader = self.kernel.reader_stats();
                Ok(false)
            }
            Wake::Backlog => {
                self.drain(sink)?;
                Ok(false)
            }
            Wake::Drain => {
                self.drain_tick(sink)?;
                self.check_followed();
                self.follow(sink)
            }
            Wake::Follow => self.follow(sink),
        }
    }

    /// A clock reading for the path (leak timers; leaks due reach the sink), the kernel's and
    /// the reader's counters refreshed and newly lost events reported. Returns the time used.
    pub fn tick(&mut self, sink: &mut impl Sink) -> anyhow::Result<u64> {
        let mut sh = lock(&self.shared);
        let now = self
            .kernel
            .tick(&mut sh.path, sink)
            .context("writing output")?;
        refresh_counters(&self.kernel, &mut sh, &mut self.lost_reported);
        Ok(now)
    }

    /// At the end: every event still in the rings or the merge down the path, a last tick,
    /// and the summary (with the events lost).
    pub fn finish(&mut self, sink: &mut impl Sink) -> anyhow::Result<Summary> {
        {
            let mut sh = lock(&self.shared);
            self.kernel
                .drain(&mut sh.path, sink)
                .and_then(|()| self.kernel.flush(&mut sh.path, sink))
                .context("writing output")?;
        }
        let now = self.tick(sink)?;
        let sh = lock(&self.shared);
        let mut summary = sh.path.summary(now);
        summary.events_lost = Some(sh.kernel.lost());
        Ok(summary)
    }

    /// The kernel's counters, as of the last tick.
    pub fn counters(&self) -> KernelCounters {
        self.kernel.counters()
    }

    /// The reader's counters.
    pub fn reader_stats(&self) -> ReaderStats {
        self.kernel.reader_stats()
    }

    /// The program's run-time statistics (when the kernel's accounting is on).
    pub fn program_stats(&self) -> Option<ProgramStats> {
        self.kernel.program_stats()
    }

    /// `--pid`'s process has exited (its sockets are followed, or have been).
    pub fn followed_exited(&self) -> bool {
        self.followed != Followed::Running
    }

    fn drain(&mut self, sink: &mut impl Sink) -> anyhow::Result<()> {
        let mut sh = lock(&self.shared);
        self.kernel
            .drain(&mut sh.path, sink)
            .context("writing output")
    }

    /// The drain timer's work (module docs).
    fn drain_tick(&mut self, sink: &mut impl Sink) -> anyhow::Result<()> {
        let mut sh = lock(&self.shared);
        let now = self
            .kernel
            .timer_drain(&mut sh.path, sink)
            .context("writing output")?;
        refresh_counters(&self.kernel, &mut sh, &mut self.lost_reported);
        // Rate-limited inside; after the drain, so the dump and the trace agree.
        if let Some(took) = sh.path.resync_time_wait(now) {
            tracing::debug!("TIME_WAIT re-sync took {took:?}");
        }
        // Both rate-limited inside, both after the drain: the engine's CLOSE_WAIT sockets
        // checked against the kernel's (at once after a loss), and their holders by inode.
        let lost = sh.kernel.lost();
        sh.path.reconcile(lost);
        sh.path.confirm_holders();
        sh.path.trim_after_growth(Instant::now());
        if self.opts.program_stats && self.last_program_read.elapsed() >= PROGRAM_STATS_EVERY {
            sh.program = self.kernel.program_stats();
            self.last_program_read = Instant::now();
        }
        Ok(())
    }

    /// Starts following the sockets of `--pid`'s process when it is gone. The kernel closes
    /// what the process held just after it exits (a socket in LAST_ACK waits for the peer's
    /// ACK): they are followed until none is left, within a bound for sockets whose end is
    /// never seen.
    fn check_followed(&mut self) {
        if let (Followed::Running, Some(pid)) = (self.followed, self.cfg.pid)
            && !attribution::process_alive(pid)
        {
            self.followed = Followed::Exiting {
                pid,
                until: Instant::now() + EXIT_FOLLOW,
            };
        }
    }

    /// While following an exited process: a drain, then true once none of its sockets is
    /// left (or the bound has passed).
    fn follow(&mut self, sink: &mut impl Sink) -> anyhow::Result<bool> {
        let Followed::Exiting { pid, until } = self.followed else {
            return Ok(false);
        };
        let left = {
            let mut sh = lock(&self.shared);
            self.kernel
                .drain(&mut sh.path, sink)
                .context("writing output")?;
            sh.path.engine().sockets_owned_by(pid)
        };
        if left == 0 || Instant::now() >= until {
            self.followed = Followed::Exited;
            self.follow_next = None;
            return Ok(true);
        }
        self.follow_next = Some(tokio::time::Instant::now() + FOLLOW_STEP);
        Ok(false)
    }
}

/// The kernel's and the reader's counters, as of the kernel's last tick, copied where the
/// metrics endpoint reads them; newly lost events reported.
fn refresh_counters(kernel: &Kernel, sh: &mut Shared, lost_reported: &mut u64) {
    sh.kernel = kernel.counters();
    sh.reader = kernel.reader_stats();
    report_lost(&sh.kernel, lost_reported);
}

/// Sleeps until `at` (never resolves without one).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Newly lost events, reported on stderr (held while a full-screen view is up).
fn report_lost(c: &KernelCounters, reported: &mut u64) {
    if c.lost() > *reported {
        crate::logs::line(&format!(
            "tracer: lost {} events (total lost {}: {} with the ring buffer full — try a larger --ring-mib; {} skipped by the kernel, the program already running on that CPU)",
            c.lost() - *reported,
            c.lost(),
            c.ring_full,
            c.skipped
        ));
        *reported = c.lost();
    }
}
