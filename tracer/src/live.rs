//! The kernel side that every live front-end shares (the stream, the daemon, `tracer top`):
//! load and attach the program (with `--pid`'s in-kernel filter), register its ring buffers
//! with epoll, read the startup baseline into the path, drain the rings into a [`Pipeline`] in
//! time order when the kernel wakes the reader and on the driver's timer, feed the path
//! clock readings, and keep the kernel's and the reader's counters.
//!
//! # Merging the per-CPU rings
//! Each CPU writes to its own ring (CPUs share rings when there are fewer rings than CPUs), so
//! each ring is in time order, but the rings are not in order with each other, and one socket's
//! transitions can run on different CPUs (a close() on one, the peer's FIN in softirq on
//! another). A drain reads every ring, then passes down the path, sorted by time, only the
//! events older than a cut; the rest wait for the next drain ([`Merge`]). The cut is the clock
//! reading taken before the first ring was read, and no later than the newest event read from
//! a ring that the batch limit left unfinished. That keeps each socket's order: a transition
//! runs inside the kernel's state change, so a socket's next transition starts only after the
//! previous one's event was committed. An event older than the cut therefore has every earlier
//! event of its socket already committed when the drain began, in a ring read after that (or,
//! for an unfinished ring, older than what was read from it).
//!
//! The rings themselves are [`bpf::Ring`]s (aya stays in `bpf`); this module registers their
//! fds with epoll and copies each event out of ring memory as it is read. The live driver
//! ([`crate::driver`]) owns a [`Kernel`] and decides when to drain it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd};

use anyhow::Context as _;
use tokio::io::unix::AsyncFd;

use crate::attribution;
use crate::bpf::{self, KernelCounters, LoadOptions, ProgramStats, Ring, Tracer};
use crate::event::Event;
use crate::output;
use crate::pipeline::{BaselineReport, Pipeline, Sink};

/// Counts kept by the reader (the path counts events itself).
#[derive(Debug, Default, Clone, Copy)]
pub struct ReaderStats {
    /// Times the kernel woke the reader (ring buffer past its wakeup threshold).
    pub wakeups: u64,
    /// Drains run by the reader's own timer.
    pub timer_drains: u64,
    /// Ring buffers read (one per CPU, or CPUs sharing).
    pub rings: usize,
}

/// How to load the kernel side.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelOptions {
    /// `--pid` (a process id, already resolved by [`resolve_pid`]).
    pub pid: Option<u32>,
    /// Ring-buffer memory in bytes, all rings together (None: the default for this host).
    pub ring_bytes: Option<u32>,
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

/// Most events one drain takes from the rings (a few milliseconds of work; the merge holds
/// them, ~2 MiB) before the loop gets a turn.
pub const DRAIN_BATCH: usize = 16_384;

/// Events read from the rings, waiting to go down the path in time order (module docs). Pure.
#[derive(Debug, Default)]
pub struct Merge {
    pending: Vec<Event>,
    /// (time, socket, position in `pending`) of the events, sorted at each release: the
    /// 24-byte keys move in the sort, not the ~100-byte events (the sort of the events was 6 %
    /// of the daemon's time).
    order: Vec<(u64, u64, u32)>,
}

impl Merge {
    /// Room for a drain's events without growing while the tracer runs at a steady rate.
    const INITIAL: usize = 4096;

    pub fn new() -> Self {
        Merge {
            pending: Vec::with_capacity(Self::INITIAL),
            order: Vec::with_capacity(Self::INITIAL),
        }
    }

    pub fn push(&mut self, e: Event) {
        self.pending.push(e);
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Passes every event older than `cut` to `f`, oldest first (equal times by socket
    /// address: one socket's transitions never share a time); the rest keep waiting. Sorted
    /// through reused buffers: no allocation once they have grown to a drain's size.
    pub fn release<E>(
        &mut self,
        cut: u64,
        mut f: impl FnMut(&Event) -> Result<(), E>,
    ) -> Result<(), E> {
        self.order.clear();
        self.order.extend(
            self.pending
                .iter()
                .enumerate()
                .filter(|(_, e)| e.ts_ns() < cut)
                .map(|(i, e)| (e.ts_ns(), e.sk(), i as u32)),
        );
        self.order.sort_unstable();
        let mut result = Ok(());
        for &(_, _, i) in &self.order {
            result = f(&self.pending[i as usize]);
            if result.is_err() {
                break;
            }
        }
        if self.order.len() == self.pending.len() {
            self.pending.clear();
        } else {
            self.pending.retain(|e| e.ts_ns() >= cut);
        }
        result
    }
}

/// An epoll set of the ring buffers' fds, itself registered with the async runtime: readable
/// when the kernel woke any ring (edge-triggered, like the runtime's own registrations, so a
/// ring holding less than the wakeup threshold does not keep it readable).
struct RingSet {
    epoll: AsyncFd<OwnedFd>,
}

impl RingSet {
    fn new(rings: &[Ring]) -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new epoll fd that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        for (i, ring) in rings.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                u64: i as u64,
            };
            // SAFETY: both fds are open; `ev` is a valid epoll_event.
            let rc = unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    ring.as_raw_fd(),
                    &raw mut ev,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: the AsyncFd owns the epoll fd, which stays open and unchanged until it is
        // dropped.
        let epoll =
            unsafe { AsyncFd::register_with_interest(epoll, tokio::io::Interest::READABLE) }?;
        Ok(RingSet { epoll })
    }

    /// Takes what the set has to report (without waiting), so that it can become readable
    /// again on the next wakeup.
    fn consume(&self) {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 16];
        loop {
            // SAFETY: `evs` has room for the count passed.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.get_ref().as_raw_fd(),
                    evs.as_mut_ptr(),
                    evs.len() as i32,
                    0,
                )
            };
            if n < evs.len() as i32 {
                return;
            }
        }
    }
}

/// The loaded program and its ring buffers, registered with the async runtime's epoll.
pub struct Kernel {
    tracer: Tracer,
    rings: Vec<Ring>,
    set: RingSet,
    merge: Merge,
    /// The last drain stopped at [`DRAIN_BATCH`].
    backlog: bool,
    reader: ReaderStats,
    counters: KernelCounters,
}

impl Kernel {
    /// Loads and attaches the program; with `pid`, installs the in-kernel filter. Must run
    /// inside the tokio runtime (the rings are registered with its reactor).
    pub fn load(opts: &KernelOptions) -> anyhow::Result<Kernel> {
        let mut tracer = Tracer::load(&LoadOptions {
            filter: opts.pid.is_some(),
            ring_bytes: opts.ring_bytes.unwrap_or_else(bpf::default_ring_bytes),
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
        let rings = tracer.take_rings()?;
        let set = RingSet::new(&rings)
            .map_err(|e| anyhow::anyhow!("registering the ring buffers with epoll: {e}"))?;
        Ok(Kernel {
            tracer,
            reader: ReaderStats {
                rings: rings.len(),
                ..ReaderStats::default()
            },
            rings,
            set,
            merge: Merge::new(),
            backlog: false,
            counters: KernelCounters::default(),
        })
    }

    /// Seeds the path with the sockets that exist now (call after [`Kernel::load`]: a socket
    /// that changes state in between is seen by both, and the traced state wins); with `--pid`,
    /// passes that process's ports to the in-kernel filter.
    pub fn baseline(&mut self, path: &mut Pipeline) -> anyhow::Result<BaselineReport> {
        path.trace_resets(self.tracer.reset_decoder().cloned());
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

    /// Waits until the kernel wakes the reader (a ring passed the wakeup threshold); then call
    /// [`Kernel::drain`]. Cancel-safe: usable as a `select!` branch. Readiness is cleared
    /// before the drain, so a wakeup that comes during it is not lost.
    pub async fn wakeup(&mut self) -> anyhow::Result<()> {
        let mut guard = self
            .set
            .epoll
            .readable()
            .await
            .context("waiting on the ring buffers")?;
        guard.clear_ready();
        self.set.consume();
        self.reader.wakeups += 1;
        Ok(())
    }

    /// Drains the rings into the path in time order (module docs), at most [`DRAIN_BATCH`]
    /// events: under a flood a drain ends, so that the loop can serve signals, `--duration`,
    /// scrapes and the clock; [`Kernel::has_backlog`] then says to drain again at once. Events
    /// are copied out of ring memory as they are read.
    pub fn drain(&mut self, path: &mut Pipeline, sink: &mut impl Sink) -> io::Result<()> {
        let mut cut = output::clock_ns(libc::CLOCK_MONOTONIC);
        self.backlog = false;
        let per_ring = (DRAIN_BATCH / self.rings.len().max(1)).max(1);
        for ring in &mut self.rings {
            let mut last = None;
            let mut finished = false;
            for _ in 0..per_ring {
                let Some(item) = ring.read() else {
                    finished = true;
                    break;
                };
                if let Some(e) = path.decode(&item) {
                    last = Some(e.ts_ns());
                    self.merge.push(e);
                }
            }
            if !finished {
                self.backlog = true;
                if let Some(ts) = last {
                    cut = cut.min(ts);
                }
            }
        }
        path.set_batch_now(Some(std::time::Instant::now()));
        let released = self.merge.release(cut, |e| path.on_event(e, sink));
        path.set_batch_now(None);
        released
    }

    /// Passes down the path every event read and still waiting for the merge (at the end).
    pub fn flush(&mut self, path: &mut Pipeline, sink: &mut impl Sink) -> io::Result<()> {
        self.merge.release(u64::MAX, |e| path.on_event(e, sink))?;
        path.finish(sink)
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
    /// The reset program's cost, when the kernel's accounting is on.
    pub fn reset_program_stats(&self) -> Option<ProgramStats> {
        self.tracer.reset_program_stats()
    }

    /// What is traced of resets sent ([`crate::driver::Driver::resets_traced`]).
    pub fn resets_traced(&self) -> &'static str {
        match self.tracer.reset_decoder() {
            Some(d) if d.layout.has_reason() => "reason",
            Some(_) => "unnamed",
            None => "none",
        }
    }

    pub fn program_stats(&self) -> Option<ProgramStats> {
        self.tracer.program_stats()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::event::{Comm, Family, TcpState, Transition};

    fn ev(ts_ns: u64, sk: u64) -> Event {
        Event::Transition(Transition {
            ts_ns,
            sk,
            family: Family::V4,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 1,
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport: 2,
            old: TcpState::Established,
            new: TcpState::FinWait1,
            dwell_ns: None,
            netns: 0,
            sk_err: 0,
            task_pid: 1,
            task_tid: 1,
            task_comm: Comm::new("t"),
            idle: crate::event::Idle::NONE,
        })
    }

    fn released(m: &mut Merge, cut: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        m.release(cut, |t| {
            out.push((t.ts_ns(), t.sk()));
            Ok::<(), ()>(())
        })
        .unwrap();
        out
    }

    #[test]
    fn rings_merge_in_time_order_up_to_the_cut() {
        let mut m = Merge::new();
        // Two rings, each in time order, read one after the other.
        for ts in [10, 30, 50, 70] {
            m.push(ev(ts, 1));
        }
        for ts in [20, 40, 60] {
            m.push(ev(ts, 2));
        }
        assert_eq!(
            released(&mut m, 55),
            [(10, 1), (20, 2), (30, 1), (40, 2), (50, 1)]
        );
        // The rest waits; what the next drain reads joins it in order.
        assert_eq!(m.len(), 2);
        m.push(ev(65, 3));
        assert_eq!(released(&mut m, u64::MAX), [(60, 2), (65, 3), (70, 1)]);
        assert!(m.is_empty());
    }

    #[test]
    fn equal_times_go_by_socket() {
        let mut m = Merge::new();
        m.push(ev(5, 2));
        m.push(ev(5, 1));
        m.push(ev(4, 3));
        assert_eq!(released(&mut m, 6), [(4, 3), (5, 1), (5, 2)]);
    }

    #[test]
    fn a_failing_sink_stops_the_release() {
        let mut m = Merge::new();
        for ts in 1..=4 {
            m.push(ev(ts, ts));
        }
        let mut seen = 0;
        let r = m.release(10, |_| {
            seen += 1;
            if seen == 2 {
                Err("broken pipe")
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err("broken pipe"));
        assert_eq!(seen, 2);
        assert!(m.is_empty(), "the output is gone: nothing is kept for it");
    }
}
