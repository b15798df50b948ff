//! The per-event path, in one place: raw ring-buffer record → [`Transition`] → owners (context,
//! listener, startup baseline) → [`Engine`] → [`Record`]s → owner confirmation, container
//! identity and the `--pid` filter → a [`Sink`].
//!
//! Every front-end drives this and only this: the streaming tracer and the daemon (app.rs),
//! `tracer top`, and replay. A front-end is its loop (where events and clock ticks come from)
//! and its sink (where transitions and records go); it never re-implements a step of the path.
//!
//! Network namespaces: the kernel reports each socket's namespace (inode number; 0 when
//! unknown, then taken as the tracer's own). Everything that names a socket by address is
//! keyed by namespace too: listener owners by (netns, port), baseline sockets by (netns,
//! 4-tuple), and sock_diag questions go to a socket made inside that namespace
//! ([`Namespaces`]). A leak's owner is confirmed only through its own namespace; when that
//! namespace cannot be reached the owner stays what the trace showed, never another
//! namespace's answer.
//!
//! Cost per event: one decode, a few hash lookups (listener and baseline maps only on the
//! transitions that use them), the engine's O(1) step, and nothing else unless a record is
//! produced. No allocation: records go through a reused vector.
//!
//! Schedule: per event (and per clock tick). What runs on other schedules lives in the child
//! modules around it: `owners` (who owns a socket, per event), `baseline` (once at startup),
//! `timewait_sync` (the periodic TIME_WAIT re-sync) and `views` (built on demand, per scrape
//! or redraw).

mod baseline;
mod forensics;
mod holders;
mod owners;
mod reconcile;
pub mod resets;
mod timewait_sync;
mod views;

#[cfg(test)]
mod tests;

pub use baseline::BaselineReport;
pub use forensics::SocketForensics;
pub use holders::HolderStats;
pub use reconcile::{ReconcileConfig, ReconcileStats};
pub use timewait_sync::TimeWaitConfig;

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use crate::attribution::{self, Attributor, AttributorConfig, ProcFs};
use crate::container::Containers;
use crate::engine::{BaselineSummary, Engine, EngineConfig, LeakCheck, LeakDecision};
use crate::event::{self, Event, Idle, RingRecord, TcpState, Transition};
use crate::hz::HzEstimator;
use crate::netns::{Namespaces, NetnsStats};
use crate::record::{CloseRecord, LeakRecord, Owner, OwnerSource, Record, SocketId};
use crate::rst::{ResetDecoder, ResetSent};
use crate::sockdiag::{FourTuple, SockDiagError};
use crate::timewait::TimeWait;
use crate::untrusted::{Cmdline, CmdlinePolicy};

use baseline::STAND_IN_BASE;
use owners::{Owners, tuple_of};

/// Facts about a record's owner that the engine does not know (gathered from /proc by the
/// per-event path; empty in replay).
#[derive(Clone, Debug, Default)]
pub struct RecordContext {
    /// Command line of the owning process (leaks only).
    pub cmdline: Option<Cmdline>,
    /// CLOSE_WAIT sockets the owner holds now (leaks only).
    pub close_wait_held: Option<u64>,
    /// The owner's cgroup v2 path and container.
    pub cgroup: Option<crate::container::Cgroup>,
    /// The owner's fd numbers for the socket (leaks only; empty when not known), for
    /// `lsof -p PID -a -d FD`, `/proc/PID/fdinfo/FD` or a debugger.
    pub fds: Vec<u32>,
    /// Bytes the peer sent that the owner never read, at report time (leaks only): the
    /// application stopped reading before it stopped closing.
    pub unread_bytes: Option<u32>,
    /// Bytes the owner wrote that the peer has not acknowledged, at report time (leaks only).
    pub unsent_bytes: Option<u32>,
    /// For a socket never accepted (still in the accept queue): its listener.
    pub listener: Option<ListenerInfo>,
}

/// The listener whose accept queue holds a socket that was never accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerInfo {
    /// The process that holds the listener (by inode).
    pub owner: Option<Owner>,
    pub addr: std::net::IpAddr,
    pub port: u16,
    /// Connections waiting in its accept queue now, and the most it takes (the backlog).
    pub accept_queue: u32,
    pub backlog: u32,
}

/// Where a front-end sends what the path produces. Called only for what passes the `--pid`
/// filter.
pub trait Sink {
    /// A transition, with the socket's owner when known.
    fn transition(&mut self, t: &Transition, owner: Option<&Owner>) -> io::Result<()>;
    /// A socket reached CLOSE.
    fn close(&mut self, c: &CloseRecord, cx: &RecordContext) -> io::Result<()>;
    /// A socket's CLOSE_WAIT age crossed the threshold.
    fn leak(&mut self, l: &LeakRecord, cx: &RecordContext) -> io::Result<()>;
    /// A reset this host sent (every one: resets belong to no process filter).
    fn reset(&mut self, r: &ResetSent) -> io::Result<()> {
        let _ = r;
        Ok(())
    }
}

/// Counts kept by the path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounts {
    /// Records decoded (or transitions fed).
    pub events: u64,
    /// Records that could not be decoded (should stay 0; counted, never silent).
    pub undecodable: u64,
    /// Transitions per (from, to), by [`TcpState::index`].
    pub transitions: [[u64; 12]; 12],
    /// Leak candidates whose owner's activity was asked through sock_diag (tcp_info).
    pub leak_checks: u64,
    /// Of those, the owner had sent data within the threshold: re-checked later.
    pub leak_checks_deferred: u64,
    /// Of those, the kernel could not be asked (namespace unreachable, sock_diag error):
    /// decided by the CLOSE_WAIT age alone.
    pub leak_checks_unanswered: u64,
    /// Of those, the kernel said the socket was not in CLOSE_WAIT: asked again a moment later.
    pub leak_checks_reasked: u64,
    /// Of those, the kernel no longer had the socket, twice: not a leak, closed out unseen.
    pub leak_checks_gone: u64,
    /// Of those, the kernel had it in another state, twice: not a leak, state corrected.
    pub leak_checks_other_state: u64,
}

/// Configuration of a [`Pipeline`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineConfig {
    pub engine: EngineConfig,
    /// `--pid`: only this process's sockets reach the sink.
    pub pid: Option<u32>,
    /// `--cmdline`: what a record carries of its owner's command line.
    pub cmdline: CmdlinePolicy,
}

/// The socket table's size at the last trim of freed memory, when that was, and its size at
/// the last look.
#[derive(Clone, Copy, Debug, Default)]
struct Trimmed {
    bytes: usize,
    at: Option<Instant>,
    seen: usize,
}

/// Gives the pages of freed heap memory back to the system (`malloc_trim`): glibc keeps them
/// resident, and after a startup baseline of 10^5–10^6 sockets (the dumps, the /proc scan's
/// growth) or the table's growth that is tens of MiB the tracer no longer uses.
pub(crate) fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only returns free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resolution of tcp_info's "ms ago" stamps: one jiffy, at most 10 ms (HZ=100).
const IDLE_RESOLUTION_NS: u64 = 10_000_000;

/// A leak candidate the kernel says is not in CLOSE_WAIT is asked about again this much later
/// (engine clock), after at least one more drain: the events that took it out of CLOSE_WAIT may
/// still have been in a ring buffer.
const KERNEL_RECHECK_NS: u64 = 250_000_000;

/// What the kernel says of a leak candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeakAnswer {
    /// Still in CLOSE_WAIT; the owner has sent nothing for `idle_ns` (0 with data queued),
    /// `None` without tcp_info. What else the kernel said is kept for the record.
    CloseWait {
        idle_ns: Option<u64>,
        facts: forensics::LeakFacts,
    },
    /// The kernel has no such socket.
    Gone,
    /// The kernel has it in another state.
    InState(TcpState),
    /// The kernel could not be asked (namespace unreachable, sock_diag error, offline).
    Unasked,
}

/// What only a live path has: the host's /proc and sock_diag.
struct Live {
    attributor: Attributor,
    namespaces: Namespaces,
    containers: Containers,
    proc: ProcFs,
    /// The last host-wide TIME_WAIT count and when it was read.
    time_wait_total: Option<(Instant, crate::netns::TimeWaitTotal)>,
}

/// The per-event path. See the module documentation.
pub struct Pipeline {
    engine: Engine,
    owners: Owners,
    live: Option<Live>,
    pid: Option<u32>,
    records: Vec<Record>,
    /// Leak checks taken from the engine (buffer reused).
    checks: Vec<LeakCheck>,
    /// Leak candidates the kernel said once were not in CLOSE_WAIT, and when (engine clock):
    /// the next answer is taken.
    kernel_said: Vec<(u64, u64)>,
    /// What the kernel said of the leaks decided in this batch, for their records (cleared
    /// after each emit).
    leak_facts: Vec<forensics::LeakFacts>,
    /// TIME_WAIT sockets and ephemeral ports per remote endpoint.
    tw: TimeWait,
    tw_cfg: TimeWaitConfig,
    /// When the TIME_WAIT table was last re-synced from sock_diag, and how long that took.
    tw_last_resync: Option<(Instant, Duration)>,
    counts: PathCounts,
    own_netns: u32,
    next_stand_in: u64,
    /// Sockets seeded under a hashed stand-in key and not yet matched to a kernel address
    /// (while above 0, an untracked socket's first event looks for its stand-in).
    stand_ins: u64,
    /// Seeds whose hashed stand-in key was taken (kept under a sequential key, never matched).
    stand_in_collisions: u64,
    baseline: Option<BaselineSummary>,
    /// The engine's heap bytes at the last [`release_freed_memory`].
    trimmed: Trimmed,
    /// The clock reading of the batch of events going down the path now (a drain's), used
    /// for the caches' ages instead of reading the clock per record.
    batch_now: Option<Instant>,
    /// The engine's CLOSE_WAIT sockets checked against the kernel's.
    reconcile: reconcile::Reconciler,
    /// Who holds each CLOSE_WAIT socket, by inode.
    holders: holders::Holders,
    /// `--cmdline`.
    cmdline_policy: CmdlinePolicy,
    /// The kernel's tick rate, for the idle stamps of close events.
    hz: HzEstimator,
    /// How to decode resets from the rings (`None`: not traced).
    rst: Option<ResetDecoder>,
    /// Resets sent: per remote, and joined to close records.
    resets: resets::Resets,
}

impl Pipeline {
    /// A path without /proc or sock_diag (replay, benchmarks): owners come from the trace and
    /// from hints only; records carry no container.
    pub fn offline(cfg: PipelineConfig) -> Self {
        Pipeline {
            engine: Engine::new(cfg.engine),
            owners: Owners::default(),
            live: None,
            pid: cfg.pid,
            records: Vec::with_capacity(256),
            checks: Vec::new(),
            kernel_said: Vec::new(),
            leak_facts: Vec::new(),
            tw: TimeWait::new(TimeWait::DEFAULT_CAPACITY),
            tw_cfg: TimeWaitConfig::default(),
            tw_last_resync: None,
            counts: PathCounts::default(),
            own_netns: 0,
            next_stand_in: STAND_IN_BASE,
            stand_ins: 0,
            stand_in_collisions: 0,
            baseline: None,
            trimmed: Trimmed::default(),
            batch_now: None,
            reconcile: reconcile::Reconciler::default(),
            holders: holders::Holders::default(),
            cmdline_policy: cfg.cmdline,
            hz: HzEstimator::default(),
            rst: None,
            resets: resets::Resets::new(false),
        }
    }

    /// Resets come from the rings too, decoded with `d` (the running kernel's layout).
    pub fn trace_resets(&mut self, d: Option<ResetDecoder>) {
        self.resets.reasons = d.as_ref().is_some_and(|d| d.layout.has_reason());
        self.rst = d;
    }

    /// Whether the input says why each reset was sent (a kernel with the reason, or a
    /// recording of one): closes this side reset wait for theirs.
    pub fn set_reset_reasons(&mut self, on: bool) {
        self.resets.reasons = on;
    }

    pub fn resets(&self) -> &resets::Resets {
        &self.resets
    }

    /// Whether resets sent come down the path (traced live, or present in a recording).
    pub fn traces_resets(&self) -> bool {
        self.rst.is_some() || self.resets.stats().sent > 0
    }

    /// The tick rate learnt from the events, if any yet.
    pub fn hz(&self) -> Option<u32> {
        self.hz.hz()
    }

    /// A path on the live host: owners are confirmed through sock_diag (in each socket's own
    /// namespace) and /proc, and records name the owner's cgroup and container.
    pub fn live(cfg: PipelineConfig) -> Result<Self, SockDiagError> {
        let namespaces = Namespaces::open()?;
        let own_netns = namespaces.own();
        let proc = ProcFs::default();
        let mut offline = Self::offline(cfg);
        // A CLOSE_WAIT socket is a leak only once its owner has also sent nothing for the
        // threshold: asked through tcp_info when the threshold passes (`check_leaks`).
        offline.engine.confirm_leaks(true);
        Ok(Pipeline {
            live: Some(Live {
                attributor: Attributor::new(AttributorConfig::default()),
                namespaces,
                containers: Containers::new(proc.clone(), Duration::from_secs(2), 65_536),
                proc,
                time_wait_total: None,
            }),
            own_netns,
            ..offline
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A process's command line under `--cmdline` (None offline, for a process gone, or
    /// under `--cmdline none`).
    pub fn cmdline_of(&self, pid: u32) -> Option<Cmdline> {
        self.live
            .as_ref()
            .and_then(|live| live.proc.cmdline(pid, self.cmdline_policy))
    }

    /// The per-remote TIME_WAIT table.
    pub fn time_wait(&self) -> &TimeWait {
        &self.tw
    }

    pub fn counts(&self) -> &PathCounts {
        &self.counts
    }

    /// The tracer's own network namespace (0 offline).
    pub fn own_netns(&self) -> u32 {
        self.own_netns
    }

    /// Namespace bookkeeping counters (live only).
    pub fn netns_stats(&self) -> Option<NetnsStats> {
        self.live.as_ref().map(|l| l.namespaces.stats())
    }

    /// The namespace a socket's 4-tuple lives in: unknown (0) is the tracer's own.
    fn ns(&self, netns: u32) -> u32 {
        if netns == 0 { self.own_netns } else { netns }
    }

    /// One raw ring-buffer record. A record that cannot be decoded is counted and logged.
    pub fn on_bytes(&mut self, bytes: &[u8], sink: &mut impl Sink) -> io::Result<()> {
        match self.decode(bytes) {
            Some(e) => self.on_event(&e, sink),
            None => Ok(()),
        }
    }

    /// One event of either kind.
    pub fn on_event(&mut self, e: &Event, sink: &mut impl Sink) -> io::Result<()> {
        match e {
            Event::Transition(t) => self.on_transition(t, None, sink),
            Event::Reset(r) => self.on_reset(r, sink),
        }
    }

    /// Decodes one raw ring-buffer record, for a reader that orders records before they go
    /// down the path ([`Pipeline::on_event`]). One that cannot be decoded is counted and
    /// logged.
    pub fn decode(&mut self, bytes: &[u8]) -> Option<Event> {
        let decoded = event::classify(bytes).and_then(|rec| match rec {
            RingRecord::Transition(ev) => {
                let mut t = event::from_raw(&ev)?;
                let (jiffies, rcv, snd) = event::idle_stamps(&ev);
                if jiffies != 0 {
                    self.hz.observe(t.ts_ns, jiffies);
                    let now = jiffies as u32;
                    let since = |stamp: u32| {
                        (stamp != 0)
                            .then(|| self.hz.ticks_ns(now.wrapping_sub(stamp)))
                            .flatten()
                    };
                    t.idle = Idle {
                        rx_ns: since(rcv),
                        tx_ns: since(snd),
                    };
                }
                Ok(Some(Event::Transition(t)))
            }
            RingRecord::Reset(ev) => Ok(self
                .rst
                .as_ref()
                .map(|d| crate::rst::decode(&d.layout, &d.names, &ev).map(Event::Reset))
                .transpose()
                .map_err(|e| {
                    tracing::warn!("undecodable reset: {e}");
                })
                .ok()
                .flatten()),
        });
        match decoded {
            Ok(Some(e)) => Some(e),
            Ok(None) => {
                self.counts.undecodable += 1;
                None
            }
            Err(e) => {
                self.counts.undecodable += 1;
                tracing::warn!("undecodable event: {e}");
                None
            }
        }
    }

    /// A reset this host sent: counted per remote, handed to the sink, and joined to the close
    /// record of its socket (held, or to come).
    pub fn on_reset(&mut self, r: &ResetSent, sink: &mut impl Sink) -> io::Result<()> {
        self.counts.events += 1;
        // `--pid`: only that process's sockets' resets (the kernel passes every reset).
        if let Some(pid) = self.pid
            && !(r.sk != 0
                && (self.engine.owner(r.sk).is_some_and(|o| o.pid == pid)
                    || self.resets.holds(r.sk)))
        {
            return Ok(());
        }
        let netns = self.ns(r.netns);
        let open = r.sk != 0 && self.engine.state_of(r.sk).is_some();
        let done = self.resets.on_reset(r, netns, open);
        sink.reset(r)?;
        match done {
            Some((c, cx)) => sink.close(&c, &cx),
            None => Ok(()),
        }
    }

    /// Sends every close still held for its reset (at the end of the input or the run).
    pub fn finish(&mut self, sink: &mut impl Sink) -> io::Result<()> {
        while let Some((c, cx)) = self.resets.expired(u64::MAX) {
            sink.close(&c, &cx)?;
        }
        Ok(())
    }

    /// One transition. `hint` is an owner known from elsewhere (a replayed line names one).
    pub fn on_transition(
        &mut self,
        t: &Transition,
        hint: Option<Owner>,
        sink: &mut impl Sink,
    ) -> io::Result<()> {
        self.counts.events += 1;
        self.counts.transitions[t.old.index()][t.new.index()] += 1;
        let netns = self.ns(t.netns);
        // A socket of the startup baseline, seen by its kernel address for the first time.
        // Births are new sockets: the program is attached before the baseline is read, so a
        // baseline socket's own close is always seen before its 4-tuple can be born again.
        if self.stand_ins > 0
            && !crate::engine::classify::is_birth(t.old, t.new)
            && self.engine.state_of(t.sk).is_none()
        {
            let tuple = tuple_of(t);
            let key = baseline::stand_in_key(netns, &tuple);
            if self
                .engine
                .socket_id(key)
                .is_some_and(|id| id.netns == netns && FourTuple::from(&id).normalized() == tuple)
                && self.engine.rekey(key, t.sk)
            {
                self.stand_ins -= 1;
            }
        }
        let revealed = hint.or_else(|| self.owners.revealed_by(t, netns));
        self.owners.track_listener(t, netns, revealed);
        // The owner as known after the step, or before it (a socket that reaches CLOSE leaves
        // the engine with it), or as revealed now.
        let owner = self
            .engine
            .on_transition_owned(t, revealed, &mut self.records);
        if self.passes(owner.as_ref()) {
            // The kernel measures no dwell: the engine's, from this socket's event times.
            match (t.dwell_ns, self.engine.last_dwell_ns()) {
                (None, Some(d)) => {
                    let shown = Transition {
                        dwell_ns: Some(d),
                        ..*t
                    };
                    sink.transition(&shown, owner.as_ref())?;
                }
                _ => sink.transition(t, owner.as_ref())?,
            }
        }
        self.emit(sink)
    }

    /// A clock reading (kernel monotonic ns): leaks now due are emitted.
    pub fn tick(&mut self, now_ns: u64, sink: &mut impl Sink) -> io::Result<()> {
        self.engine.tick(now_ns, &mut self.records);
        self.emit(sink)?;
        while let Some((c, cx)) = self.resets.expired(now_ns) {
            sink.close(&c, &cx)?;
        }
        Ok(())
    }

    /// Forgets every tracked socket and the owners the trace taught, emitting nothing (a
    /// replayed input that starts over: the sockets of the part before are not those of the
    /// part after). Counters and histograms stay. Returns how many sockets were tracked.
    pub fn forget_all(&mut self) -> u64 {
        self.owners = Owners::default();
        self.stand_ins = 0;
        self.engine.forget_all()
    }

    /// Gives freed heap pages back to the system once the socket table has grown by a MiB
    /// since the last time: when it has stopped growing (the table was the same size at the
    /// previous call), or every 5 s while it keeps growing. Called on the drain tick. Growing,
    /// the table's index is rebuilt at twice its size and the old one freed, and glibc keeps
    /// such freed memory resident: 8 MiB of 46 after growing to 200,000 sockets.
    pub fn trim_after_growth(&mut self, now: Instant) {
        let bytes = self.engine.heap_bytes();
        let Trimmed {
            bytes: last,
            at,
            seen,
        } = self.trimmed;
        self.trimmed.seen = bytes;
        let settled = bytes == seen;
        let due = at.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(5));
        if bytes >= last + (1 << 20) && (settled || due) {
            release_freed_memory();
            self.trimmed = Trimmed {
                bytes,
                at: Some(now),
                seen: bytes,
            };
        }
    }

    /// Starts (`Some`, with the clock read now) or ends (`None`) a batch of events, such as
    /// one drain of the rings: records emitted meanwhile take their cache ages from it.
    pub fn set_batch_now(&mut self, now: Option<Instant>) {
        self.batch_now = now;
    }

    /// When the next leak is due, if any (replay ticks at exact due times).
    pub fn next_leak_due_ns(&self) -> Option<u64> {
        self.engine.next_leak_due_ns()
    }

    fn passes(&self, owner: Option<&Owner>) -> bool {
        self.pid.is_none_or(|p| owner.is_some_and(|o| o.pid == p))
    }

    /// Sends the records the engine produced to the sink: leak owners confirmed first (so
    /// per-owner counts see every confirmed holder), then each record with its context.
    fn emit(&mut self, sink: &mut impl Sink) -> io::Result<()> {
        if self.engine.has_leak_checks() {
            self.check_leaks();
        }
        if self.records.is_empty() {
            return Ok(());
        }
        // The drain's clock reading when there is one: the owner cache and the cgroup cache
        // keep answers for seconds, and a clock read per record was 2 % of the daemon.
        let now = self.batch_now.unwrap_or_else(Instant::now);
        // Taken out (capacity kept) so the loops can use the rest of `self`.
        let mut records = std::mem::take(&mut self.records);
        for rec in records.iter_mut() {
            if let Record::Leak(l) = rec
                && let Some(o) = self.confirm_owner(l, now)
            {
                l.owner = Some(o);
                self.engine.set_owner(l.id.sk, o);
            }
        }
        let mut held: Option<HashMap<u32, u64>> = None;
        let clock = self.engine.clock_ns();
        let mut result = Ok(());
        for rec in records.drain(..) {
            if result.is_err() {
                continue;
            }
            result = match rec {
                Record::Close(mut c) => {
                    if c.time_wait {
                        let id = &c.id;
                        let ns = self.ns(id.netns);
                        self.tw
                            .on_handover(ns, id.saddr, id.sport, id.daddr, id.dport, c.ts_ns);
                    }
                    if !self.passes(c.owner.as_ref()) {
                        continue;
                    }
                    let cx = RecordContext {
                        cgroup: self.cgroup(c.owner.as_ref(), now, false),
                        ..RecordContext::default()
                    };
                    if c.rst_reason.is_none() {
                        c.rst_reason = self.resets.take_reason(c.id.sk, c.ts_ns);
                    }
                    if self.resets.must_wait(&c) {
                        match self.resets.hold(c, cx) {
                            Some((old, ocx)) => sink.close(&old, &ocx),
                            None => Ok(()),
                        }
                    } else {
                        sink.close(&c, &cx)
                    }
                }
                Record::Leak(l) => {
                    if !self.passes(l.owner.as_ref()) {
                        continue;
                    }
                    let counts = held.get_or_insert_with(|| held_by_pid(&self.engine, clock));
                    let cx = self.leak_context(&l, counts, now);
                    sink.leak(&l, &cx)
                }
            };
        }
        self.records = records;
        self.leak_facts.clear();
        result
    }

    /// Answers the engine's leak checks against the kernel: a CLOSE_WAIT socket past the
    /// threshold is a leak only if the kernel still has it in CLOSE_WAIT, looked up by its
    /// 4-tuple in its own namespace, and its owner has also sent nothing for the threshold
    /// (`tcpi_last_data_sent`; data still queued counts as sending now). A socket still sending
    /// is re-checked when it will have been idle for the threshold. A socket the kernel no
    /// longer has, or has in another state, is asked again [`KERNEL_RECHECK_NS`] later (its
    /// events may still be in a ring buffer); the second such answer is taken: it leaves as a
    /// close of kind `unknown` (`closed_unseen`), or takes the kernel's state. Only when the
    /// kernel cannot be asked (namespace unreachable, sock_diag error) does the age alone
    /// decide, with `idle_ns: null` (counted apart). One lookup per socket per threshold period.
    fn check_leaks(&mut self) {
        let mut checks = std::mem::take(&mut self.checks);
        self.engine.take_leak_checks(&mut checks);
        let thr = self.engine.config().close_wait_threshold_ns;
        let now = Instant::now();
        for c in &checks {
            self.counts.leak_checks += 1;
            let answer = self.ask_about_leak(&c.id, c.owner, now);
            let decision = match answer {
                // tcp_info's stamps have one-jiffy resolution: an owner that sent nothing
                // since before CLOSE_WAIT began can read a few ms short of the threshold.
                LeakAnswer::CloseWait {
                    idle_ns: Some(idle),
                    ..
                } if idle.saturating_add(IDLE_RESOLUTION_NS) < thr => {
                    self.counts.leak_checks_deferred += 1;
                    LeakDecision::RecheckAt {
                        at_ns: c.at_ns.saturating_add(thr - idle),
                    }
                }
                LeakAnswer::CloseWait { idle_ns, facts } => {
                    self.keep_leak_facts(facts);
                    LeakDecision::Leak { idle_ns }
                }
                LeakAnswer::Unasked => {
                    self.counts.leak_checks_unanswered += 1;
                    LeakDecision::Leak { idle_ns: None }
                }
                LeakAnswer::Gone | LeakAnswer::InState(_) if self.kernel_said_once(c.id.sk) => {
                    self.counts.leak_checks_reasked += 1;
                    LeakDecision::RecheckAt {
                        at_ns: c.at_ns.saturating_add(KERNEL_RECHECK_NS),
                    }
                }
                LeakAnswer::Gone => {
                    self.counts.leak_checks_gone += 1;
                    LeakDecision::Gone
                }
                LeakAnswer::InState(state) => {
                    self.counts.leak_checks_other_state += 1;
                    LeakDecision::InState { state }
                }
            };
            if matches!(
                decision,
                LeakDecision::Leak { .. } | LeakDecision::Gone | LeakDecision::InState { .. }
            ) {
                self.kernel_said.retain(|&(sk, _)| sk != c.id.sk);
            }
            self.engine.decide_leak(c, decision, &mut self.records);
        }
        checks.clear();
        self.checks = checks;
    }

    /// Whether this is the kernel's first "not in CLOSE_WAIT" about `sk`: remembered, so that
    /// the re-check's answer is taken. Entries older than a minute are dropped (their socket
    /// left CLOSE_WAIT through its own events meanwhile).
    fn kernel_said_once(&mut self, sk: u64) -> bool {
        let now = self.engine.clock_ns();
        self.kernel_said
            .retain(|&(_, at)| now.saturating_sub(at) < 60_000_000_000);
        if self.kernel_said.iter().any(|&(s, _)| s == sk) {
            return false;
        }
        self.kernel_said.push((sk, now));
        true
    }

    /// A socket whose namespace can no longer be found, and whose owner (as the trace knew
    /// it) is gone or was never known, is gone too: a live socket keeps its namespace alive,
    /// and only a process holding it (a passed fd) could keep it out of sight.
    fn namespace_gone_for(&mut self, netns: u32, owner: Option<Owner>, now: Instant) -> bool {
        let Some(live) = self.live.as_mut() else {
            return false;
        };
        !live.namespaces.is_known(netns, now)
            && owner.is_none_or(|o| !attribution::process_alive(o.pid))
    }

    /// What the kernel says of a leak candidate, asked in the socket's own namespace.
    fn ask_about_leak(&mut self, id: &SocketId, owner: Option<Owner>, now: Instant) -> LeakAnswer {
        let netns = self.ns(id.netns);
        if self.namespace_gone_for(netns, owner, now) {
            return LeakAnswer::Gone;
        }
        let Some(live) = self.live.as_mut() else {
            return LeakAnswer::Unasked;
        };
        let Some(diag) = live.namespaces.diag(netns, now) else {
            return LeakAnswer::Unasked;
        };
        let found = match diag.lookup(&FourTuple::from(id)) {
            Ok(Some(f)) => f,
            Ok(None) => return LeakAnswer::Gone,
            Err(e) => {
                tracing::debug!("leak check: sock_diag lookup: {e}");
                return LeakAnswer::Unasked;
            }
        };
        if found.state != TcpState::CloseWait {
            return LeakAnswer::InState(found.state);
        }
        let idle_ns = if found.send_queue > 0 {
            Some(0)
        } else {
            found
                .info
                .map(|info| u64::from(info.last_data_sent_ms) * 1_000_000)
        };
        LeakAnswer::CloseWait {
            idle_ns,
            facts: forensics::LeakFacts::of(id.sk, &found),
        }
    }

    /// The owner's cgroup: read afresh for a leak, from the short-lived cache otherwise.
    fn cgroup(
        &mut self,
        owner: Option<&Owner>,
        now: Instant,
        fresh: bool,
    ) -> Option<crate::container::Cgroup> {
        let (live, o) = self.live.as_mut().zip(owner)?;
        if fresh {
            live.containers.fresh(o.pid, now)
        } else {
            live.containers.get(o.pid, now)
        }
    }

    /// The owner a leak names must be the process holding the socket now: confirmed through
    /// the socket's inode, looked up in the socket's own namespace (fds can be passed,
    /// listeners shared, children forked; 4-tuples repeat across namespaces).
    fn confirm_owner(&mut self, l: &LeakRecord, now: Instant) -> Option<Owner> {
        // The leak check has just asked the kernel: its inode answers without a second lookup,
        // and a socket handed to another process since its holder was confirmed is named by
        // its holder now (a cached answer is checked with one `readlink`).
        if let Some(f) = self.leak_facts_of(l.id.sk) {
            let live = self.live.as_mut()?;
            return live.attributor.resolve_inode(f.inode, now);
        }
        if l.owner.is_some_and(|o| o.source == OwnerSource::Inode) {
            return l.owner;
        }
        let netns = self.ns(l.id.netns);
        let live = self.live.as_mut()?;
        let diag = live.namespaces.diag(netns, now)?;
        live.attributor.resolve(diag, &l.id, now)
    }
}

/// CLOSE_WAIT sockets per owning pid now.
fn held_by_pid(engine: &Engine, now_ns: u64) -> HashMap<u32, u64> {
    engine
        .close_wait_by_owner(now_ns)
        .into_iter()
        .filter_map(|o| Some((o.owner?.pid, o.close_wait)))
        .fold(HashMap::new(), |mut m, (p, n)| {
            *m.entry(p).or_insert(0) += n;
            m
        })
}
