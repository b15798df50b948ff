//! The kernel side that every live front-end shares (the stream, the daemon, `tracer top`):
//! load and attach the program (with `--pid`'s in-kernel filter), register its ring buffer
//! with epoll, read the startup baseline into the path, drain the ring buffer into a
//! [`Pipeline`] when the kernel wakes the reader and on the front-end's timer, feed the path
//! clock readings, and keep the kernel's and the reader's counters.
//!
//! A front-end owns its loop — what it waits on besides [`Kernel::wakeup`] and its drain timer
//! (signals, a deadline, keys, a redraw timer) — and its [`Sink`].

use std::io;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::attribution;
use crate::bpf::{KernelCounters, LoadOptions, ProgramStats, Tracer};
use crate::output;
use crate::pipeline::{BaselineReport, Pipeline, Sink};

/// Counts kept by the reader (the path counts events itself).
#[derive(Debug, Default, Clone, Copy)]
pub struct ReaderStats {
    /// Times the kernel woke the reader (ring buffer past its wakeup threshold).
    pub wakeups: u64,
    /// Drains run by the reader's own timer.
    pub timer_drains: u64,
}

/// How to load the kernel side.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelOptions {
    /// `--pid` (a process id, already resolved by [`resolve_pid`]).
    pub pid: Option<u32>,
    /// Ring buffer size in bytes (a power of two).
    pub ring_bytes: u32,
    /// Turn on the kernel's run-time statistics for the program (a small cost per event).
    pub run_time_stats: bool,
}

/// `--pid`: the process must be running; a thread id names its process (sockets belong to the
/// whole thread group). Returns the process id to follow.
pub fn resolve_pid(pid: Option<u32>) -> anyhow::Result<Option<u32>> {
    let Some(pid) = pid else { return Ok(None) };
    if !attribution::process_alive(pid) {
        anyhow::bail!("no running process with pid {pid}");
    }
    match tgid_of(pid) {
        Some(tgid) if tgid != pid => {
            eprintln!("tracer: {pid} is a thread of process {tgid}; following process {tgid}");
            Ok(Some(tgid))
        }
        _ => Ok(Some(pid)),
    }
}

/// The thread-group id of a task, from /proc/PID/status.
fn tgid_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

/// Most events one drain takes from the ring buffer (~5 MiB of events; tens of milliseconds
/// of work) before the loop gets a turn.
pub const DRAIN_BATCH: usize = 65_536;

/// The loaded program and its ring buffer, registered with the async runtime's epoll.
pub struct Kernel {
    tracer: Tracer,
    ring: AsyncFd<RingBuf<MapData>>,
    /// The last drain stopped at [`DRAIN_BATCH`].
    backlog: bool,
    reader: ReaderStats,
    counters: KernelCounters,
}

impl Kernel {
    /// Loads and attaches the program; with `pid`, installs the in-kernel filter. Must run
    /// inside the tokio runtime (the ring buffer is registered with its reactor).
    pub fn load(opts: &KernelOptions) -> anyhow::Result<Kernel> {
        let mut tracer = Tracer::load(&LoadOptions {
            filter: opts.pid.is_some(),
            ring_bytes: opts.ring_bytes,
            ..LoadOptions::default()
        })?;
        if let Some(pid) = opts.pid {
            tracer.filter_pid(pid)?;
        }
        if opts.run_time_stats
            && let Err(e) = tracer.enable_stats()
        {
            tracing::warn!("BPF run-time statistics unavailable: {e}");
        }
        let ring = tracer.take_ring()?;
        // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the AsyncFd
        // (which owns the RingBuf) is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the ring buffer with epoll: {e}"))?;
        Ok(Kernel {
            tracer,
            ring,
            backlog: false,
            reader: ReaderStats::default(),
            counters: KernelCounters::default(),
        })
    }

    /// Seeds the path with the sockets that exist now (call after [`Kernel::load`]: a socket
    /// that changes state in between is seen by both, and the traced state wins); with `--pid`,
    /// passes that process's ports to the in-kernel filter.
    pub fn baseline(&mut self, path: &mut Pipeline) -> anyhow::Result<BaselineReport> {
        let now = output::clock_ns(libc::CLOCK_MONOTONIC);
        let report = path
            .baseline(now)
            .context("reading existing TCP sockets (sock_diag)")?;
        // Events carry netns 0 when the program cannot read it: key the filter the same way.
        let reports_netns = self.tracer.reports_netns();
        for &(netns, port) in &report.pid_ports {
            self.tracer
                .filter_port(if reports_netns { netns } else { 0 }, port)?;
        }
        tracing::debug!(
            "startup baseline: {} sockets in {} network namespaces ({} unreadable) in {:?}",
            report.seeded,
            report.namespaces,
            report.namespaces_failed,
            report.elapsed
        );
        Ok(report)
    }

    /// Waits until the kernel wakes the reader (its buffer passed the wakeup threshold); then
    /// call [`Kernel::drain`]. Cancel-safe: usable as a `select!` branch. Readiness is cleared
    /// before the drain, so a wakeup that comes during it is not lost.
    pub async fn wakeup(&mut self) -> anyhow::Result<()> {
        let mut guard = self
            .ring
            .readable_mut()
            .await
            .context("waiting on the ring buffer")?;
        guard.clear_ready();
        self.reader.wakeups += 1;
        Ok(())
    }

    /// Drains the ring buffer into the path, at most [`DRAIN_BATCH`] events: under a flood a
    /// drain ends, so that the loop can serve signals, `--duration`, scrapes and the clock;
    /// [`Kernel::has_backlog`] then says to drain again at once. Each item goes down the path
    /// at once; the borrow of ring memory never outlives the loop body.
    pub fn drain(&mut self, path: &mut Pipeline, sink: &mut impl Sink) -> io::Result<()> {
        let ring = self.ring.get_mut();
        self.backlog = false;
        for _ in 0..DRAIN_BATCH {
            let Some(item) = ring.next() else {
                return Ok(());
            };
            path.on_bytes(&item, sink)?;
        }
        self.backlog = true;
        Ok(())
    }

    /// The last drain stopped at its batch limit: events are still waiting.
    pub fn has_backlog(&self) -> bool {
        self.backlog
    }

    /// The drain timer's work: a drain, then [`Kernel::tick`]. Returns the time used.
    pub fn timer_drain(&mut self, path: &mut Pipeline, sink: &mut impl Sink) -> io::Result<u64> {
        self.reader.timer_drains += 1;
        self.drain(path, sink)?;
        self.tick(path, sink)
    }

    /// A clock reading for the path (leaks now due reach the sink), and the kernel counters
    /// refreshed. Returns the time used (kernel monotonic ns).
    pub fn tick(&mut self, path: &mut Pipeline, sink: &mut impl Sink) -> io::Result<u64> {
        let now = output::clock_ns(libc::CLOCK_MONOTONIC);
        path.tick(now, sink)?;
        self.counters = self.tracer.counters();
        Ok(now)
    }

    /// Kernel counters as of the last [`Kernel::tick`].
    /// Which hook delivers the events (`"tp_btf"` or `"tracepoint"`).
    pub fn attach_kind(&self) -> &'static str {
        self.tracer.attach_kind()
    }

    pub fn counters(&self) -> KernelCounters {
        self.counters
    }

    pub fn reader_stats(&self) -> ReaderStats {
        self.reader
    }

    /// The program's run-time statistics (when enabled).
    pub fn program_stats(&self) -> Option<ProgramStats> {
        self.tracer.program_stats()
    }
}
