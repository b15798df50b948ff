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

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use crate::attribution::{self, Attributor, AttributorConfig, ProcFs};
use crate::container::Containers;
use crate::engine::{
    BaselineSummary, Engine, EngineConfig, LeakCheck, LeakDecision, Seed, Summary,
};
use crate::event::{self, TcpState, Transition};
use crate::metrics::{HistogramSnapshot, MetricsSnapshot, OwnerCloseWait};
use crate::netns::{Namespaces, NetnsStats};
use crate::record::{CloseKind, CloseRecord, LeakRecord, Owner, OwnerSource, Record, SocketId};
use crate::sockdiag::{DiagSocket, FourTuple, SockDiagError, StateMask};
use crate::timewait::{PortUse, RemoteCount, TimeWait};

mod reconcile;
pub use reconcile::{ReconcileConfig, ReconcileStats};

/// Facts about a record's owner that the engine does not know (gathered from /proc by the
/// per-event path; empty in replay).
#[derive(Clone, Debug, Default)]
pub struct RecordContext {
    /// Command line of the owning process (leaks only).
    pub cmdline: Option<String>,
    /// CLOSE_WAIT sockets the owner holds now (leaks only).
    pub close_wait_held: Option<u64>,
    /// The owner's cgroup v2 path and container.
    pub cgroup: Option<crate::container::Cgroup>,
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

/// What the startup baseline found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaselineReport {
    /// Sockets seeded into the engine.
    pub seeded: usize,
    /// Network namespaces dumped (the tracer's own included).
    pub namespaces: usize,
    /// Namespaces that could not be entered or dumped (counted, never silent).
    pub namespaces_failed: usize,
    /// With `--pid`: the (netns, local port) pairs of that process's sockets, for the
    /// in-kernel filter.
    pub pid_ports: Vec<(u32, u16)>,
    /// Wall time the baseline took.
    pub elapsed: Duration,
}

/// Configuration of a [`Pipeline`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineConfig {
    pub engine: EngineConfig,
    /// `--pid`: only this process's sockets reach the sink.
    pub pid: Option<u32>,
}

/// Limits of the per-remote TIME_WAIT and ephemeral-port accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWaitConfig {
    /// Most (namespace, local address, remote endpoint) tuples tracked.
    pub capacity: usize,
    /// Most remotes (and tuples) named in the metrics; the rest are summed under `other`.
    pub series: usize,
    /// Least time between two re-syncs from sock_diag. A re-sync is also never closer to the
    /// last than 20 times what the last one took.
    pub resync_every: Duration,
}

impl Default for TimeWaitConfig {
    fn default() -> Self {
        TimeWaitConfig {
            capacity: TimeWait::DEFAULT_CAPACITY,
            series: 20,
            resync_every: Duration::from_secs(30),
        }
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
    /// `None` without tcp_info.
    CloseWait { idle_ns: Option<u64> },
    /// The kernel has no such socket.
    Gone,
    /// The kernel has it in another state.
    InState(TcpState),
    /// The kernel could not be asked (namespace unreachable, sock_diag error, offline).
    Unasked,
}

/// A re-sync takes at most this share of the reader's time.
const RESYNC_DUTY: u32 = 20;

/// Who owns what, as the trace and the baseline show it.
#[derive(Default)]
struct Owners {
    /// (netns, local port) → owner of the listener(s) on it.
    listeners: HashMap<(u32, u16), Owner>,
    /// Baseline sockets by (netns, 4-tuple) → the stand-in key the engine knows them by until
    /// their first traced event names their kernel address.
    baseline: HashMap<(u32, FourTuple), u64>,
}

impl Owners {
    /// The owner a transition reveals by running in the owner's own context, or by being a
    /// child of a listener whose owner is known.
    fn revealed_by(&self, t: &Transition, netns: u32) -> Option<Owner> {
        use TcpState::*;
        let context = matches!(
            (t.old, t.new),
            (Close, SynSent) | (Close, Listen) | (Established, FinWait1) | (CloseWait, LastAck)
        );
        if context && t.task_pid != 0 {
            return Some(Owner {
                pid: t.task_pid,
                comm: t.task_comm,
                source: OwnerSource::Context,
            });
        }
        if (t.old, t.new) == (Listen, SynRecv) {
            return self.listeners.get(&(netns, t.sport)).map(|o| Owner {
                source: if o.source == OwnerSource::Shared {
                    OwnerSource::Shared
                } else {
                    OwnerSource::Listener
                },
                ..*o
            });
        }
        None
    }

    fn track_listener(&mut self, t: &Transition, netns: u32, owner: Option<Owner>) {
        match (t.old, t.new) {
            (TcpState::Close, TcpState::Listen) => {
                if let Some(o) = owner {
                    self.listeners.insert((netns, t.sport), o);
                }
            }
            (TcpState::Listen, TcpState::Close) => {
                self.listeners.remove(&(netns, t.sport));
            }
            _ => {}
        }
    }
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

/// The host-wide TIME_WAIT count is read again after this long.
const TIME_WAIT_TOTAL_EVERY: Duration = Duration::from_secs(1);
/// The list of namespaces it sums over is made again after this long.
const NAMESPACES_REDISCOVER: Duration = Duration::from_secs(10);

/// Stand-in keys for baseline sockets: below 2^63, so never a kernel address (those are in the
/// upper half), and unique across namespaces (sock_diag cookies are per namespace on older
/// kernels).
const STAND_IN_BASE: u64 = 0x7000_0000_0000_0000;

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
    /// TIME_WAIT sockets and ephemeral ports per remote endpoint.
    tw: TimeWait,
    tw_cfg: TimeWaitConfig,
    /// When the TIME_WAIT table was last re-synced from sock_diag, and how long that took.
    tw_last_resync: Option<(Instant, Duration)>,
    counts: PathCounts,
    own_netns: u32,
    next_stand_in: u64,
    baseline: Option<BaselineSummary>,
    /// The engine's CLOSE_WAIT sockets checked against the kernel's.
    reconcile: reconcile::Reconciler,
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
            tw: TimeWait::new(TimeWait::DEFAULT_CAPACITY),
            tw_cfg: TimeWaitConfig::default(),
            tw_last_resync: None,
            counts: PathCounts::default(),
            own_netns: 0,
            next_stand_in: STAND_IN_BASE,
            baseline: None,
            reconcile: reconcile::Reconciler::default(),
        }
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

    /// Sets the limits of the TIME_WAIT accounting (before the baseline).
    pub fn set_time_wait_config(&mut self, cfg: TimeWaitConfig) {
        self.tw_cfg = cfg;
        self.tw = TimeWait::new(cfg.capacity);
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
            Some(t) => self.on_transition(&t, None, sink),
            None => Ok(()),
        }
    }

    /// Decodes one raw ring-buffer record, for a reader that orders records before they go
    /// down the path ([`Pipeline::on_transition`]). One that cannot be decoded is counted and
    /// logged.
    pub fn decode(&mut self, bytes: &[u8]) -> Option<Transition> {
        match event::decode(bytes) {
            Ok(t) => Some(t),
            Err(e) => {
                self.counts.undecodable += 1;
                tracing::warn!("undecodable event: {e}");
                None
            }
        }
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
        if !self.owners.baseline.is_empty()
            && !crate::engine::classify::is_birth(t.old, t.new)
            && self.engine.state_of(t.sk).is_none()
            && let Some(key) = self.owners.baseline.remove(&(netns, tuple_of(t)))
        {
            self.engine.rekey(key, t.sk);
        }
        let revealed = hint.or_else(|| self.owners.revealed_by(t, netns));
        // Read before the step: a socket that reaches CLOSE leaves the engine with it.
        let known = self.engine.owner(t.sk);
        self.owners.track_listener(t, netns, revealed);
        if let Some(o) = revealed {
            self.engine.set_owner(t.sk, o);
        }
        self.engine.on_transition(t, &mut self.records);
        if let Some(o) = revealed {
            // A socket born by this transition exists in the engine only now.
            self.engine.set_owner(t.sk, o);
        }
        let owner = self.engine.owner(t.sk).or(known).or(revealed);
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
        self.emit(sink)
    }

    /// Forgets every tracked socket and the owners the trace taught, emitting nothing (a
    /// replayed input that starts over: the sockets of the part before are not those of the
    /// part after). Counters and histograms stay. Returns how many sockets were tracked.
    pub fn forget_all(&mut self) -> u64 {
        self.owners = Owners::default();
        self.engine.forget_all()
    }

    /// When the next leak is due, if any (replay ticks at exact due times).
    pub fn next_leak_due_ns(&self) -> Option<u64> {
        self.engine.next_leak_due_ns()
    }

    pub fn summary(&self, now_ns: u64) -> Summary {
        let mut s = Summary {
            baseline: self.baseline,
            ..self.engine.summary(now_ns)
        };
        s.time_wait_top = self.time_wait_top(now_ns, 5);
        s
    }

    fn passes(&self, owner: Option<&Owner>) -> bool {
        self.pid.is_none_or(|p| owner.is_some_and(|o| o.pid == p))
    }

    /// Seeds the engine with the TCP sockets that exist now in every network namespace that
    /// has a process in it or a name under /run/netns (sock_diag inside each), with their
    /// owners from one /proc scan. Call after the program is attached (a socket that changes
    /// state in between is seen by both; the traced state wins), then [`Pipeline::tick`] to
    /// emit leaks found. With `--pid`, only that process's sockets are seeded.
    pub fn baseline(&mut self, now_ns: u64) -> Result<BaselineReport, SockDiagError> {
        let started = Instant::now();
        let Some(live) = self.live.as_mut() else {
            return Ok(BaselineReport::default());
        };
        let mut report = BaselineReport::default();
        let mut sockets: Vec<(u32, DiagSocket)> = Vec::new();
        let mut buf = Vec::new();
        for ns in live.namespaces.discover(started) {
            let Some(diag) = live.namespaces.diag(ns, started) else {
                report.namespaces_failed += 1;
                continue;
            };
            buf.clear();
            match diag.dump(StateMask::ALL) {
                Ok(v) => buf = v,
                Err(e) if ns == self.own_netns => return Err(e),
                Err(e) => {
                    tracing::warn!("network namespace {ns}: reading its TCP sockets: {e}");
                    report.namespaces_failed += 1;
                    continue;
                }
            }
            report.namespaces += 1;
            read_port_range(&mut live.namespaces, &mut self.tw, ns, started);
            // With --pid the TIME_WAIT counts are that process's hand-overs only (timewait
            // sockets have no owner to filter a dump by).
            if self.pid.is_none() {
                self.tw.resync(ns, now_ns, &buf);
            }
            sockets.extend(buf.drain(..).map(|s| (ns, s)));
        }
        // With --pid only that process's fd table is read.
        let index = attribution::scan_inodes(self.pid);
        let diag_only: Vec<DiagSocket> = sockets.iter().map(|(_, s)| *s).collect();
        let found = attribution::owners_of_baseline(&diag_only, &index);
        drop(diag_only);
        self.engine.tick(now_ns, &mut self.records);
        for ((ns, s), owner) in sockets.iter().zip(found) {
            if self.pid.is_some() && owner.map(|o| o.pid) != self.pid {
                continue;
            }
            if matches!(s.state, TcpState::TimeWait | TcpState::Close) {
                continue;
            }
            if self.pid.is_some() {
                report.pid_ports.push((*ns, s.sport));
            }
            self.seed_diag(*ns, s, owner, now_ns);
            report.seeded += 1;
        }
        if let Some(live) = self.live.as_mut() {
            live.attributor.adopt_index(index, Instant::now());
        }
        report.elapsed = started.elapsed();
        self.baseline = Some(BaselineSummary {
            sockets: report.seeded as u64,
            namespaces: report.namespaces as u64,
            namespaces_failed: report.namespaces_failed as u64,
            took_us: report.elapsed.as_micros() as u64,
        });
        self.tw_last_resync = Some((started, report.elapsed));
        Ok(report)
    }

    /// Seeds one socket that sock_diag reported in namespace `ns` (the startup baseline, and
    /// reconciliation). The engine keys sockets by kernel address, which sock_diag does not
    /// give: a stand-in key is used until the socket's first traced event.
    fn seed_diag(&mut self, ns: u32, s: &DiagSocket, owner: Option<Owner>, now_ns: u64) {
        let key = self.next_stand_in;
        self.next_stand_in += 1;
        self.owners
            .baseline
            .insert((ns, s.tuple().normalized()), key);
        if s.state == TcpState::Listen
            && let Some(o) = owner
        {
            self.owners.listeners.insert((ns, s.sport), o);
        }
        let since = s
            .close_wait_since_estimate_ms()
            .map(|ms| now_ns.saturating_sub(u64::from(ms) * 1_000_000));
        self.engine.seed(
            &Seed {
                id: SocketId {
                    sk: key,
                    netns: ns,
                    family: s.family,
                    saddr: s.saddr,
                    sport: s.sport,
                    daddr: s.daddr,
                    dport: s.dport,
                },
                state: s.state,
                owner,
                state_since_ns: since,
            },
            &mut self.records,
        );
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
        let now = Instant::now();
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
                Record::Close(c) => {
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
                    sink.close(&c, &cx)
                }
                Record::Leak(l) => {
                    if !self.passes(l.owner.as_ref()) {
                        continue;
                    }
                    let counts = held.get_or_insert_with(|| held_by_pid(&self.engine, clock));
                    let cx = RecordContext {
                        cmdline: self
                            .live
                            .as_ref()
                            .zip(l.owner)
                            .and_then(|(live, o)| live.proc.cmdline(o.pid)),
                        close_wait_held: l.owner.and_then(|o| counts.get(&o.pid).copied()),
                        cgroup: self.cgroup(l.owner.as_ref(), now, true),
                    };
                    sink.leak(&l, &cx)
                }
            };
        }
        self.records = records;
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
                } if idle.saturating_add(IDLE_RESOLUTION_NS) < thr => {
                    self.counts.leak_checks_deferred += 1;
                    LeakDecision::RecheckAt {
                        at_ns: c.at_ns.saturating_add(thr - idle),
                    }
                }
                LeakAnswer::CloseWait { idle_ns } => LeakDecision::Leak { idle_ns },
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
        LeakAnswer::CloseWait { idle_ns }
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
        if l.owner.is_some_and(|o| o.source == OwnerSource::Inode) {
            return l.owner;
        }
        let netns = self.ns(l.id.netns);
        let live = self.live.as_mut()?;
        let diag = live.namespaces.diag(netns, now)?;
        live.attributor.resolve(diag, &l.id, now)
    }

    /// Re-syncs the per-remote TIME_WAIT counts and the ephemeral-port use with the kernel:
    /// one sock_diag dump (every state, streamed one datagram at a time) per network
    /// namespace, each read inside its namespace with its `ip_local_port_range`. Rate-limited:
    /// does nothing until `resync_every` has passed since the last one, and at least 20 times
    /// what the last one took. Returns how long it took when it ran. Call after draining the
    /// ring buffer, so that closes the dump already reflects are not counted twice.
    pub fn resync_time_wait(&mut self, now_ns: u64) -> Option<Duration> {
        // `--pid` follows one process: host-wide dumps are not its business.
        if self.pid.is_some() {
            return None;
        }
        let started = Instant::now();
        // A namespace that hands over its first socket before its port range is known (it
        // came after the last re-sync) is read at once, not at the next round: until then its
        // ephemeral ports would be counted against the default range.
        let unranged = self.tw.take_unranged();
        if !unranged.is_empty() && self.live.is_some() {
            let mut known = match self.live.as_mut() {
                Some(live) => live.namespaces.discover(started),
                None => Vec::new(),
            };
            known.retain(|ns| unranged.contains(ns));
            for ns in known {
                self.resync_namespace(ns, started, now_ns);
            }
        }
        if let Some((at, took)) = self.tw_last_resync {
            let gap = self.tw_cfg.resync_every.max(took * RESYNC_DUTY);
            if started.saturating_duration_since(at) < gap {
                return None;
            }
        }
        let namespaces = self.live.as_mut()?.namespaces.discover(started);
        for ns in namespaces {
            self.resync_namespace(ns, started, now_ns);
        }
        self.tw.prune(now_ns);
        let took = started.elapsed();
        self.tw_last_resync = Some((started, took));
        Some(took)
    }

    /// One namespace's part of [`Pipeline::resync_time_wait`]: its port range, then a dump of
    /// its sockets in place of what was counted.
    fn resync_namespace(&mut self, ns: u32, started: Instant, now_ns: u64) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        read_port_range(&mut live.namespaces, &mut self.tw, ns, started);
        let Some(diag) = live.namespaces.diag(ns, started) else {
            self.tw.resync_failed();
            return;
        };
        let tw = &mut self.tw;
        let mut r = tw.begin_resync(ns, now_ns);
        match diag.dump_each(StateMask::ALL, |s| tw.feed(&mut r, s)) {
            Ok(()) => tw.finish_resync(r),
            Err(e) => {
                // What was read so far stands until the next re-sync.
                tracing::warn!("network namespace {ns}: TIME_WAIT re-sync: {e}");
                tw.finish_resync(r);
                tw.resync_failed();
            }
        }
    }

    /// The `n` remote endpoints with the most TIME_WAIT sockets now, most first, each with its
    /// busiest local address's ephemeral port use (the summary's `time_wait_top`, and top's
    /// panel).
    pub fn time_wait_top(
        &self,
        now_ns: u64,
        n: usize,
    ) -> Vec<crate::engine::summary::RemoteSummary> {
        self.time_wait_top_of(now_ns, n).0
    }

    /// [`Pipeline::time_wait_top`], and how many remote endpoints have TIME_WAIT sockets now.
    pub fn time_wait_top_of(
        &self,
        now_ns: u64,
        n: usize,
    ) -> (Vec<crate::engine::summary::RemoteSummary>, usize) {
        let ports = self.tw.port_use(now_ns);
        let remotes = self.tw.remotes(now_ns);
        let total = remotes.len();
        let top = remotes
            .into_iter()
            .take(n)
            .map(|r| {
                let busiest = ports
                    .iter()
                    .filter(|p| (p.netns, p.remote, p.rport) == (r.netns, r.remote, r.rport))
                    .max_by_key(|p| p.used);
                let (lo, hi) = self.tw.range(r.netns);
                crate::engine::summary::RemoteSummary {
                    remote: crate::event::EndpointFmt(r.remote, r.rport).to_string(),
                    netns: (r.netns != self.own_netns && r.netns != 0).then_some(r.netns),
                    time_wait: r.time_wait,
                    ephemeral_ports_used: busiest.map_or(0, |p| p.used),
                    ephemeral_port_range: busiest.map_or(u64::from(hi - lo) + 1, |p| p.range),
                }
            })
            .collect();
        (top, total)
    }

    /// Counters of the per-remote TIME_WAIT accounting.
    pub fn time_wait_stats(&self) -> crate::timewait::TimeWaitStats {
        self.tw.stats()
    }

    /// The metrics view, taken at scrape time. Kernel and reader counters are the caller's.
    pub fn metrics(&mut self, now_ns: u64) -> MetricsSnapshot {
        let now = Instant::now();
        let threshold_ns = self.engine.config().close_wait_threshold_ns;
        let owners = self.engine.close_wait_by_owner(now_ns);
        let close_wait = owners
            .into_iter()
            .map(|o| {
                let container = match (self.live.as_mut(), o.owner) {
                    (Some(live), Some(k)) => {
                        live.containers.get(k.pid, now).and_then(|c| c.container_id)
                    }
                    _ => None,
                };
                OwnerCloseWait {
                    pid: o.owner.map(|k| k.pid),
                    comm: o.owner.map(|k| k.comm),
                    container,
                    sockets: o.close_wait,
                    leaking: o.leaking,
                }
            })
            .collect();
        let sockets = self.sockets_now(now_ns);
        let e = &self.engine;
        MetricsSnapshot {
            transitions: self.counts.transitions,
            dwell: TcpState::ALL
                .into_iter()
                .map(|st| {
                    let h = e.dwell_histogram(st);
                    (
                        st,
                        HistogramSnapshot {
                            buckets: h.buckets().filter(|(le, _)| le.is_finite()).collect(),
                            count: h.count(),
                            sum_seconds: h.sum_seconds(),
                        },
                    )
                })
                .collect(),
            closes: CloseKind::ALL
                .into_iter()
                .map(|k| (k, e.stats().closes_of(k)))
                .collect(),
            sockets,
            close_wait,
            close_wait_oldest_seconds: e.oldest_close_wait_ns(now_ns).map(|ns| ns as f64 / 1e9),
            leak_threshold_seconds: Some(threshold_ns as f64 / 1e9),
            leaks_detected_total: e.stats().leaks,
            events_total: self.counts.events,
            events_malformed_total: self.counts.undecodable,
            tracked_sockets: e.tracked() as u64,
            evictions_total: e.stats().evicted + e.stats().evicted_leaking,
            time_wait_remotes: remote_series(
                &self.tw.remotes(now_ns),
                self.tw_cfg.series,
                self.own_netns,
            ),
            ephemeral_ports: port_series(
                &self.tw.port_use(now_ns),
                self.tw_cfg.series,
                self.own_netns,
            ),
            time_wait_table_full_total: self.tw.stats().table_full,
            time_wait_resync_failures_total: self.tw.stats().resync_failures,
            leak_checks_unanswered_total: self.counts.leak_checks_unanswered,
            ..MetricsSnapshot::default()
        }
    }
}

/// What a redrawing view (`tracer top`) reads once per redraw, besides the engine's own
/// snapshots.
impl Pipeline {
    /// The container of a process (live only; from the short-lived cgroup cache).
    pub fn container_id(&mut self, pid: u32) -> Option<crate::container::ContainerId> {
        let live = self.live.as_mut()?;
        live.containers
            .get(pid, Instant::now())
            .and_then(|c| c.container_id)
    }

    /// Sockets per state now, indexed by [`TcpState::index`]: the engine's, and TIME_WAIT,
    /// which the tracepoint never shows (a separate timewait socket runs it). Live, TIME_WAIT
    /// is the kernel's own count summed over every network namespace (re-read at most once a
    /// second); with `--pid`, the per-remote accounting's, which counts that process's
    /// hand-overs only. Offline it is absent.
    pub fn sockets_now(&mut self, now_ns: u64) -> [u64; 12] {
        let mut sockets = self.engine.sockets_per_state();
        if self.pid.is_some() {
            sockets[TcpState::TimeWait.index()] = self.tw.total(now_ns);
            return sockets;
        }
        let Some(live) = self.live.as_mut() else {
            return sockets;
        };
        let now = Instant::now();
        let fresh = live
            .time_wait_total
            .filter(|(at, _)| now.saturating_duration_since(*at) < TIME_WAIT_TOTAL_EVERY);
        let total = match fresh {
            Some((_, t)) => t,
            None => {
                // Namespaces that could not be read are counted in the namespace counters.
                let t = live.namespaces.time_wait_total(now, NAMESPACES_REDISCOVER);
                live.time_wait_total = Some((now, t));
                t
            }
        };
        sockets[TcpState::TimeWait.index()] = total.sockets;
        sockets
    }
}

/// `ip_local_port_range` of the namespace the reading task is in.
const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The namespace as a label: none for the tracer's own.
fn ns_label(netns: u32, own: u32) -> Option<u32> {
    (netns != 0 && netns != own).then_some(netns)
}

/// The first `cap` remotes (already sorted, most first) as series, the rest summed under
/// `other`.
fn remote_series(all: &[RemoteCount], cap: usize, own: u32) -> Vec<crate::metrics::RemoteSeries> {
    let mut v: Vec<_> = all
        .iter()
        .take(cap)
        .map(|r| crate::metrics::RemoteSeries {
            netns: ns_label(r.netns, own),
            remote: crate::event::EndpointFmt(r.remote, r.rport).to_string(),
            sockets: r.time_wait,
        })
        .collect();
    if all.len() > cap {
        v.push(crate::metrics::RemoteSeries {
            netns: None,
            remote: "other".into(),
            sockets: all[cap..].iter().map(|r| r.time_wait).sum(),
        });
    }
    v
}

/// The first `cap` tuples (sorted, highest share first) as series, the rest's shares summed
/// under `other`.
fn port_series(all: &[PortUse], cap: usize, own: u32) -> Vec<crate::metrics::PortSeries> {
    let mut v: Vec<_> = all
        .iter()
        .take(cap)
        .map(|p| crate::metrics::PortSeries {
            netns: ns_label(p.netns, own),
            local: crate::event::AddrFmt(p.local).to_string(),
            remote: crate::event::EndpointFmt(p.remote, p.rport).to_string(),
            ratio: p.ratio(),
        })
        .collect();
    if all.len() > cap {
        v.push(crate::metrics::PortSeries {
            netns: None,
            local: "other".into(),
            remote: "other".into(),
            ratio: all[cap..].iter().map(PortUse::ratio).sum(),
        });
    }
    v
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

/// Reads namespace `ns`'s `ip_local_port_range` from inside it into the TIME_WAIT accounting
/// (left at the default when it cannot be read).
fn read_port_range(namespaces: &mut Namespaces, tw: &mut TimeWait, ns: u32, at: Instant) {
    if let Some((lo, hi)) = namespaces
        .read_in(ns, std::path::Path::new(PORT_RANGE), at)
        .as_deref()
        .and_then(TimeWait::parse_range)
    {
        tw.set_range(ns, lo, hi);
    }
}

fn tuple_of(t: &Transition) -> FourTuple {
    FourTuple {
        family: t.family,
        saddr: t.saddr,
        sport: t.sport,
        daddr: t.daddr,
        dport: t.dport,
    }
    .normalized()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Comm, Family};
    use std::net::{IpAddr, Ipv4Addr};

    #[derive(Default)]
    struct Collect {
        transitions: Vec<(Transition, Option<Owner>)>,
        closes: Vec<CloseRecord>,
        leaks: Vec<LeakRecord>,
    }

    impl Sink for Collect {
        fn transition(&mut self, t: &Transition, owner: Option<&Owner>) -> io::Result<()> {
            self.transitions.push((*t, owner.copied()));
            Ok(())
        }
        fn close(&mut self, c: &CloseRecord, _: &RecordContext) -> io::Result<()> {
            self.closes.push(*c);
            Ok(())
        }
        fn leak(&mut self, l: &LeakRecord, _: &RecordContext) -> io::Result<()> {
            self.leaks.push(*l);
            Ok(())
        }
    }

    fn tr(ts: u64, sk: u64, netns: u32, old: TcpState, new: TcpState, pid: u32) -> Transition {
        Transition {
            ts_ns: ts,
            sk,
            family: Family::V4,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 8080,
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport: 40000,
            old,
            new,
            dwell_ns: None,
            netns,
            sk_err: 0,
            task_pid: pid,
            task_tid: pid,
            task_comm: Comm::new(&format!("p{pid}")),
        }
    }

    /// Two listeners on the same port in two namespaces: each child takes its own
    /// namespace's listener owner.
    #[test]
    fn listener_owners_are_per_namespace() {
        use TcpState::*;
        let mut p = Pipeline::offline(PipelineConfig::default());
        let mut s = Collect::default();
        p.on_transition(&tr(1, 0xa, 100, Close, Listen, 11), None, &mut s)
            .unwrap();
        p.on_transition(&tr(2, 0xb, 200, Close, Listen, 22), None, &mut s)
            .unwrap();
        p.on_transition(&tr(3, 0xc, 200, Listen, SynRecv, 0), None, &mut s)
            .unwrap();
        p.on_transition(&tr(4, 0xd, 100, Listen, SynRecv, 0), None, &mut s)
            .unwrap();
        assert_eq!(p.engine().owner(0xc).unwrap().pid, 22);
        assert_eq!(p.engine().owner(0xd).unwrap().pid, 11);
        assert_eq!(p.engine().owner(0xd).unwrap().source, OwnerSource::Listener);
        // The first listener closes: the other namespace's listener keeps its owner.
        p.on_transition(&tr(5, 0xa, 100, Listen, Close, 11), None, &mut s)
            .unwrap();
        p.on_transition(&tr(6, 0xe, 200, Listen, SynRecv, 0), None, &mut s)
            .unwrap();
        p.on_transition(&tr(7, 0xf, 100, Listen, SynRecv, 0), None, &mut s)
            .unwrap();
        assert_eq!(p.engine().owner(0xe).unwrap().pid, 22);
        assert_eq!(p.engine().owner(0xf), None);
        assert_eq!(p.counts().events, 7);
    }

    #[test]
    fn pid_filter_passes_only_its_owner() {
        use TcpState::*;
        let mut p = Pipeline::offline(PipelineConfig {
            pid: Some(11),
            ..PipelineConfig::default()
        });
        let mut s = Collect::default();
        p.on_transition(&tr(1, 0xa, 1, Close, SynSent, 11), None, &mut s)
            .unwrap();
        p.on_transition(&tr(2, 0xb, 1, Close, SynSent, 22), None, &mut s)
            .unwrap();
        p.on_transition(&tr(3, 0xa, 1, SynSent, Close, 0), None, &mut s)
            .unwrap();
        p.on_transition(&tr(4, 0xb, 1, SynSent, Close, 0), None, &mut s)
            .unwrap();
        assert_eq!(s.transitions.len(), 2);
        assert!(s.transitions.iter().all(|(_, o)| o.unwrap().pid == 11));
        assert_eq!(s.closes.len(), 1);
        assert_eq!(s.closes[0].id.sk, 0xa);
        assert_eq!(s.closes[0].id.netns, 1);
    }

    #[test]
    fn hints_name_owners_and_undecodable_bytes_are_counted() {
        use TcpState::*;
        let mut p = Pipeline::offline(PipelineConfig::default());
        let mut s = Collect::default();
        let hint = Owner {
            pid: 77,
            comm: Comm::new("hinted"),
            source: OwnerSource::Inode,
        };
        p.on_transition(
            &tr(1, 0xa, 1, Established, CloseWait, 0),
            Some(hint),
            &mut s,
        )
        .unwrap();
        assert_eq!(p.engine().owner(0xa), Some(hint));
        p.on_bytes(&[1, 2, 3], &mut s).unwrap();
        assert_eq!(p.counts().undecodable, 1);
    }

    /// Active closes are counted per remote endpoint, in the summary (JSON and text) and in
    /// the metrics, with the rest of the remotes summed under `other`.
    #[test]
    fn time_wait_per_remote_in_summary_and_metrics() {
        use TcpState::*;
        let mut p = Pipeline::offline(PipelineConfig::default());
        p.set_time_wait_config(TimeWaitConfig {
            series: 1,
            ..TimeWaitConfig::default()
        });
        let mut s = Collect::default();
        let mut sk = 0x100;
        for (dport, n) in [(5432u16, 3u64), (80, 1)] {
            for i in 0..n {
                sk += 1;
                let mut t = tr(1_000 + sk, sk, 0, FinWait1, FinWait2, 0);
                (t.sport, t.dport) = (40_000 + i as u16, dport);
                p.on_transition(&t, None, &mut s).unwrap();
                t.ts_ns += 1;
                (t.old, t.new) = (FinWait2, Close);
                p.on_transition(&t, None, &mut s).unwrap();
            }
        }
        let sum = p.summary(2_000 + sk);
        assert_eq!(sum.time_wait_top.len(), 2);
        assert_eq!(
            (
                sum.time_wait_top[0].remote.as_str(),
                sum.time_wait_top[0].time_wait
            ),
            ("127.0.0.1:5432", 3)
        );
        assert_eq!(sum.time_wait_top[0].ephemeral_ports_used, 3);
        let json = serde_json::to_value(&sum).unwrap();
        assert_eq!(json["time_wait_top"][1]["remote"], "127.0.0.1:80");
        assert!(json["time_wait_top"][0].get("netns").is_none());
        let text = sum.render_text();
        assert!(text.contains("TIME_WAIT by remote (top 2):"), "{text}");
        assert!(text.contains("127.0.0.1:5432"), "{text}");
        let m = p.metrics(2_000 + sk);
        let got: Vec<_> = m
            .time_wait_remotes
            .iter()
            .map(|r| (r.remote.as_str(), r.sockets))
            .collect();
        assert_eq!(got, [("127.0.0.1:5432", 3), ("other", 1)]);
        // 60 s later they are gone.
        assert!(
            p.summary(2_000 + sk + 62_000_000_000)
                .time_wait_top
                .is_empty()
        );
    }
}
