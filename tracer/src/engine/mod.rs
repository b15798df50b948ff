//! The engine: a pure state machine over decoded transitions.
//!
//! Consumes [`Transition`]s (from the ring buffer or a replayed recording), explicit clock
//! [`Engine::tick`]s and startup [`Seed`]s; produces [`Record`]s (one [`CloseRecord`] per socket
//! that reaches CLOSE, at most one [`LeakRecord`] per socket whose CLOSE_WAIT age reaches the
//! threshold) and aggregates (counters, per-state dwell histograms, sockets per state, CLOSE_WAIT
//! per owner, a [`Summary`]). No aya, no tokio, no I/O, no clock reads: time comes only from the
//! events' `ts_ns` (kernel CLOCK_MONOTONIC) and from ticks. What it assumes of the tracepoint
//! (keyed by socket address, recycled addresses, TIME_WAIT never shown, the task on CPU not the
//! owner) is in docs/kernel.md.
//!
//! # Design
//! - Sockets are keyed by kernel socket address (`sk`), never by 4-tuple. An entry lives from the
//!   first transition seen (or its seed) until its `X→CLOSE`, which emits the close record and
//!   frees the entry.
//! - Memory is bounded by [`EngineConfig::capacity`]: entries live in a slab with an intrusive
//!   least-recently-updated list; a new socket arriving when full evicts the stalest entry that is
//!   not leaking, or, if every entry is leaking, the socket that started leaking first. O(1).
//! - CLOSE_WAIT sockets not yet over the threshold sit in a min-heap by entry time (lazy deletion,
//!   compacted when stale items outnumber live ones), so a tick with nothing due is one peek.
//!   Leaking sockets move to their own list, which is what protects them from eviction.
//! - The engine clock is the largest time seen (events and ticks); it never goes back. Every
//!   event is a tick at its own `ts_ns`: leaks fire from whichever comes first.
//!
//! # Events that do not fit
//! - **Recycled address**: a birth (`CLOSE→X` or `LISTEN→SYN_RECV`) on a tracked `sk` at or after
//!   its last event means the old socket's CLOSE was lost: the old entry is dropped without a
//!   record (nothing fake is emitted; counted in [`Stats::recycled`]) and a new one starts.
//!   A birth that is older than what the entry has seen and matches its first seen state is the
//!   late start of the same life (or, for a seeded socket, the startup race): it is adopted
//!   ([`Stats::late_births`]).
//! - **Gap** (`old` differs from the tracked state, counted in [`Stats::gaps`]): the event's `old`
//!   is taken as truth and added to the path; the tracked state's dwell stays unknown (its end
//!   was not seen).
//! - **Late event** (`ts_ns` earlier than the entry's last transition): the state never moves
//!   backwards; the event is dropped and counted ([`Stats::out_of_order`], or
//!   [`Stats::stale_dropped`] when it predates the socket's life). Durations saturate at 0.
//! - **Untracked socket** first seen mid-life: tracked from there, role from what the first
//!   state tells ([`classify::role_of_first`]). First seen by its `X→CLOSE`: a close record is
//!   emitted at once, nothing is tracked. `X→X` transitions only refresh the entry. (A late
//!   event arriving after its socket's close looks like a new mid-life socket; such an entry
//!   lingers until it is evicted. The ring buffer keeps per-socket order, so this needs a
//!   reordering the kernel facts do not show.)
//! - **Time itself** is trusted: live, `ts_ns` is the kernel's monotonic clock. A replayed
//!   recording is untrusted input whose clock may jump ahead or start over (files
//!   concatenated); [`crate::replay`] guards it before it reaches the engine (an outlier is fed at
//!   the clock, a restart calls [`Engine::forget_all`] and shifts the new part's times), so the
//!   engine stays one pure state machine for both.
//!
//! # Leaks
//! A socket leaks when its CLOSE_WAIT age (engine clock − entry time) is `>=` the threshold:
//! exactly at the threshold fires. One [`LeakRecord`] per socket life, from whichever of a tick,
//! any event, or a seed first shows the crossing; the record's `ts_ns` is that clock reading and
//! `age_ns` the age then. Its close record then has `leaked: true` and the full CLOSE_WAIT dwell.
//! A socket whose CLOSE_WAIT entry was not tracked (first seen, or a gap) but whose exit carries
//! a kernel-measured CLOSE_WAIT dwell `>=` the threshold gets its leak record at that exit.
//!
//! # Memory
//! An entry is 176 bytes (`Engine::entry_size`): 4-tuple as two 16-byte arrays and the network
//! namespace, per-state dwell
//! as 12 compact u32s (exact to the ns below 1.07 s, to the µs below 17.9 min, to the ms below
//! 12.4 days, then seconds), the path inline, owner inline, list links as u32 slab indices. With
//! the hash index (hashbrown: 2^21 buckets of 16 + 1 bytes at 1M sockets) that is 211 bytes per
//! socket at 1M ([`Engine::bytes_per_socket_at`]); a socket in CLOSE_WAIT adds a 16-byte heap
//! item. [`Engine::approx_bytes_per_socket`] measures the allocated capacity at run time.

pub mod classify;
pub mod histogram;
mod snapshot;
pub mod summary;
pub mod synthetic;
mod table;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::event::{Comm, Idle, TcpState, Transition};
use crate::record::{AgeSource, CloseKind, CloseRecord, LeakRecord, Owner, Record, Role, SocketId};

pub use histogram::Histogram;
pub use snapshot::CloseWaitSocket;
pub use summary::{BaselineSummary, HolderSummary, ReconcileSummary, Summary};
pub use synthetic::{SyntheticStream, synthetic_stream};

use classify::{is_birth, role_of_first, role_of_state};
use table::{Entry, NIL, Table, Which, flag};

/// Engine limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Most sockets tracked at once (at least 1).
    pub capacity: usize,
    /// CLOSE_WAIT age at which a socket is reported as leaking (age `>=` threshold fires).
    pub close_wait_threshold_ns: u64,
}

impl EngineConfig {
    pub const DEFAULT_CAPACITY: usize = 1_000_000;
    pub const DEFAULT_CLOSE_WAIT_THRESHOLD_NS: u64 = 30_000_000_000;
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            capacity: Self::DEFAULT_CAPACITY,
            close_wait_threshold_ns: Self::DEFAULT_CLOSE_WAIT_THRESHOLD_NS,
        }
    }
}

/// A socket that existed before tracing began (from the sock_diag baseline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed {
    pub id: SocketId,
    /// Its state now. CLOSE, TIME_WAIT and NEW_SYN_RECV are not tracked (no transition of them
    /// ever reaches the tracepoint) and are ignored.
    pub state: TcpState,
    pub owner: Option<Owner>,
    /// Estimate (kernel monotonic ns) of when it entered `state`. Used only as the start of a
    /// CLOSE_WAIT age ([`AgeSource::Estimate`]); not as a dwell. Without it, the age counts from
    /// the engine clock at seeding.
    pub state_since_ns: Option<u64>,
}

/// Counters. Monotonic over the engine's life.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Transitions fed to [`Engine::on_transition`].
    pub transitions: u64,
    /// Close records emitted.
    pub closes: u64,
    /// Close records per kind, indexed by `CloseKind as usize` (order of [`CloseKind::ALL`]).
    pub closes_by_kind: [u64; 9],
    /// Close records per role, indexed by `Role as usize` (order of [`Role::ALL`]).
    pub closes_by_role: [u64; 4],
    /// Close records with `time_wait` (handed to a timewait socket).
    pub closes_time_wait: u64,
    /// Leak records emitted.
    pub leaks: u64,
    /// CLOSE_WAIT sockets whose threshold passed and whose owner's activity was asked about
    /// (with [`Engine::confirm_leaks`]).
    pub leak_checks: u64,
    /// Of those answers, "still sending: re-check later".
    pub leaks_deferred: u64,
    /// Of those answers, "a leak".
    pub leaks_confirmed: u64,
    /// Entries evicted (not leaking) to stay within capacity.
    pub evicted: u64,
    /// Leaking entries evicted because every entry left was leaking.
    pub evicted_leaking: u64,
    /// Births on a tracked address (the old socket's CLOSE was lost): old entry dropped.
    pub recycled: u64,
    /// Sockets seeded from the baseline.
    pub seeded: u64,
    /// Seeds ignored (already tracked, or an untracked state).
    pub seed_ignored: u64,
    /// Sockets whose first seen transition was not a birth.
    pub first_seen_midlife: u64,
    /// Births seen after later events of the same socket (or after its seed) and adopted.
    pub late_births: u64,
    /// Transitions whose old state differed from the tracked state.
    pub gaps: u64,
    /// Transitions older than the socket's last one, dropped.
    pub out_of_order: u64,
    /// Transitions older than the socket's life (a previous socket at the same address), dropped.
    pub stale_dropped: u64,
    /// `X→X` transitions, and `CLOSE→CLOSE` on untracked sockets.
    pub ignored: u64,
    /// Sockets the kernel no longer had when asked (a leak check, a reconciliation): their
    /// close was never seen (events lost). Each left as a close of kind `unknown` with
    /// `closed_unseen`.
    pub closed_unseen: u64,
    /// Sockets the kernel had in another state than the engine believed, when asked: the
    /// kernel's state was taken.
    pub state_corrected: u64,
}

impl Stats {
    pub fn closes_of(&self, k: CloseKind) -> u64 {
        self.closes_by_kind[k as usize]
    }

    pub fn closes_as(&self, r: Role) -> u64 {
        self.closes_by_role[r as usize]
    }
}

/// The part of an [`Owner`] that metrics group by. Ordered by pid, then comm bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OwnerKey {
    pub pid: u32,
    pub comm: Comm,
}

impl PartialOrd for OwnerKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OwnerKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.pid, self.comm.0).cmp(&(other.pid, other.comm.0))
    }
}

impl From<Owner> for OwnerKey {
    fn from(o: Owner) -> Self {
        OwnerKey {
            pid: o.pid,
            comm: o.comm,
        }
    }
}

/// CLOSE_WAIT sockets of one owner (or of no known owner), for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerCloseWait {
    pub owner: Option<OwnerKey>,
    /// Sockets in CLOSE_WAIT now.
    pub close_wait: u64,
    /// Of which over the threshold now.
    pub leaking: u64,
    /// Age of the oldest (ns).
    pub oldest_age_ns: u64,
    /// Of which still in their listener's accept queue (never accepted; no owner then).
    pub not_accepted: u64,
}

/// A CLOSE_WAIT socket waiting for its threshold (or for a re-check). Ordered by due time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct CwItem {
    /// When it is due: entry time + threshold, or the re-check time a [`LeakDecision`] set.
    due_ns: u64,
    entered_ns: u64,
    ticket: u32,
    idx: u32,
}

/// A CLOSE_WAIT socket whose age reached the threshold, waiting for the caller to say whether
/// its owner is still sending ([`Engine::confirm_leaks`], [`Engine::decide_leak`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeakCheck {
    pub id: SocketId,
    pub owner: Option<Owner>,
    /// Time in CLOSE_WAIT at the engine clock.
    pub age_ns: u64,
    /// The engine clock when the check was asked for.
    pub at_ns: u64,
    idx: u32,
    ticket: u32,
}

/// The caller's answer to a [`LeakCheck`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakDecision {
    /// It is a leak: the owner has sent nothing for `idle_ns` (`>=` the threshold), or `None`
    /// when that could not be learnt (the age alone decides).
    Leak { idle_ns: Option<u64> },
    /// Not yet: the owner sent data recently. Check again at `at_ns` (engine clock), when it
    /// will have been idle for the threshold if it sends nothing more.
    RecheckAt { at_ns: u64 },
    /// Not a leak: the kernel has no such socket (it closed while its events were lost). It
    /// leaves as a close of kind `unknown`, marked `closed_unseen`.
    Gone,
    /// Not a leak: the kernel has the socket in `state` (it left CLOSE_WAIT while its events
    /// were lost). The engine takes that state.
    InState { state: TcpState },
}

/// The state machine. See the module documentation.
pub struct Engine {
    cfg: EngineConfig,
    table: Table,
    /// Pending CLOSE_WAIT sockets; its top is always valid (stale items below it are removed
    /// lazily).
    cw_heap: BinaryHeap<Reverse<CwItem>>,
    /// Valid items in `cw_heap`.
    cw_pending: usize,
    next_ticket: u32,
    /// Seeded CLOSE_WAIT entries waiting for the first clock reading.
    unclocked: Vec<u32>,
    clock_ns: u64,
    start_ns: Option<u64>,
    stats: Stats,
    per_state: [u64; 12],
    dwell_hist: [Histogram; 12],
    /// Idle time before close (since the last segment received), per close kind.
    idle_hist: [Histogram; 9],
    /// Time in the old state of the last transition fed, when known.
    last_dwell_ns: Option<u64>,
    /// Leaks wait for [`Engine::decide_leak`] instead of being reported at the threshold.
    confirm_leaks: bool,
    /// Checks asked for and not yet decided.
    checks: Vec<LeakCheck>,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Self {
        let cfg = EngineConfig {
            capacity: cfg.capacity.max(1),
            ..cfg
        };
        Engine {
            cfg,
            table: Table::new(cfg.capacity),
            cw_heap: BinaryHeap::new(),
            cw_pending: 0,
            next_ticket: 0,
            unclocked: Vec::new(),
            clock_ns: 0,
            start_ns: None,
            stats: Stats::default(),
            per_state: [0; 12],
            dwell_hist: std::array::from_fn(|_| Histogram::new()),
            idle_hist: std::array::from_fn(|_| Histogram::with_bounds(&histogram::IDLE_BOUNDS_NS)),
            last_dwell_ns: None,
            confirm_leaks: false,
            checks: Vec::new(),
        }
    }

    /// With `on`, a CLOSE_WAIT socket whose age reaches the threshold is not reported at
    /// once: it becomes a [`LeakCheck`] ([`Engine::take_leak_checks`]) and is reported only
    /// when the caller answers [`LeakDecision::Leak`]; [`LeakDecision::RecheckAt`] puts it
    /// back to wait. The engine stays pure: whoever can ask the kernel (the live pipeline,
    /// through tcp_info) decides. Off by default (replay: the age alone decides).
    pub fn confirm_leaks(&mut self, on: bool) {
        self.confirm_leaks = on;
    }

    /// Whether checks are waiting for a decision. O(1).
    pub fn has_leak_checks(&self) -> bool {
        !self.checks.is_empty()
    }

    /// Moves the waiting checks into `into` (which is cleared first); the engine keeps its
    /// buffer's capacity by swapping.
    pub fn take_leak_checks(&mut self, into: &mut Vec<LeakCheck>) {
        into.clear();
        std::mem::swap(into, &mut self.checks);
    }

    /// Answers a check. A check whose socket has since left CLOSE_WAIT (or was replaced) is
    /// ignored. A confirmed leak is pushed into `out`.
    pub fn decide_leak(&mut self, c: &LeakCheck, d: LeakDecision, out: &mut Vec<Record>) {
        let e = self.table.get(c.idx);
        if e.flags & (flag::FREE | flag::CW_CHECKING) != flag::CW_CHECKING
            || e.sk != c.id.sk
            || e.cw_ticket != c.ticket
        {
            return;
        }
        match d {
            LeakDecision::Leak { .. }
            | LeakDecision::InState {
                state: TcpState::CloseWait,
            } => {
                let idle_ns = match d {
                    LeakDecision::Leak { idle_ns } => idle_ns,
                    _ => None,
                };
                self.table.get_mut(c.idx).flags &= !(flag::CW_CHECKING | flag::CW_DEFERRED);
                self.stats.leaks_confirmed += 1;
                self.start_leak_now(c.idx, idle_ns, out);
            }
            LeakDecision::RecheckAt { at_ns } => {
                self.stats.leaks_deferred += 1;
                let e = self.table.get_mut(c.idx);
                e.flags &= !flag::CW_CHECKING;
                e.flags |= flag::CW_DEFERRED;
                self.push_cw(c.idx, at_ns.max(self.clock_ns.saturating_add(1)));
            }
            LeakDecision::Gone => self.close_unseen_at(c.idx, out),
            LeakDecision::InState { state } => self.correct_state_at(c.idx, state, out),
        }
    }

    /// The kernel no longer has socket `sk` (asked by sock_diag in its namespace): its close
    /// happened while its events were lost. It leaves as a close of kind `unknown` with
    /// `closed_unseen` (counted in [`Stats::closed_unseen`]). Returns whether it was tracked.
    pub fn close_unseen(&mut self, sk: u64, out: &mut Vec<Record>) -> bool {
        let Some(i) = self.table.find(sk) else {
            return false;
        };
        self.close_unseen_at(i, out);
        true
    }

    /// The kernel has socket `sk` in `state`, which is not what the engine believes: the
    /// kernel's state is taken (its start unknown), counted in [`Stats::state_corrected`]. A
    /// state the tracepoint never shows (CLOSE, TIME_WAIT, NEW_SYN_RECV) means the engine's
    /// socket is gone ([`Engine::close_unseen`]). Returns whether it was tracked.
    pub fn correct_state(&mut self, sk: u64, state: TcpState, out: &mut Vec<Record>) -> bool {
        let Some(i) = self.table.find(sk) else {
            return false;
        };
        self.correct_state_at(i, state, out);
        true
    }

    fn close_unseen_at(&mut self, i: u32, out: &mut Vec<Record>) {
        let st = self.table.get(i).state;
        if st == TcpState::CloseWait {
            self.exit_cw(i);
        }
        self.per_state[st.index()] -= 1;
        let e = self.table.get(i);
        let mut states = e.path;
        states.push(TcpState::Close);
        out.push(Record::Close(CloseRecord {
            ts_ns: self.clock_ns,
            id: self.table.id(i),
            role: e.role,
            kind: CloseKind::Unknown,
            states,
            dwell_ns: e.dwell_record(),
            // When it ended is not known.
            lifetime_ns: None,
            time_wait: false,
            reset_by: None,
            sk_err: None,
            leaked: e.has(flag::LEAKED),
            owner: e.owner,
            closed_unseen: true,
            idle: Idle::NONE,
            rst_reason: None,
        }));
        let s = &mut self.stats;
        s.closes += 1;
        s.closes_by_kind[CloseKind::Unknown as usize] += 1;
        s.closes_by_role[e.role as usize] += 1;
        s.closed_unseen += 1;
        self.table.remove(i, Which::Lru);
    }

    fn correct_state_at(&mut self, i: u32, state: TcpState, out: &mut Vec<Record>) {
        if matches!(
            state,
            TcpState::Close | TcpState::TimeWait | TcpState::NewSynRecv
        ) {
            self.close_unseen_at(i, out);
            return;
        }
        let cur = self.table.get(i).state;
        if cur == state {
            return;
        }
        if cur == TcpState::CloseWait {
            self.exit_cw(i);
        }
        self.per_state[cur.index()] -= 1;
        self.per_state[state.index()] += 1;
        self.stats.state_corrected += 1;
        let clock = self.clock_ns;
        let e = self.table.get_mut(i);
        e.state = state;
        e.since_ns = clock;
        e.flags |= flag::SINCE_UNKNOWN;
        e.path.push(state);
        if !e.has(flag::LEAKING) {
            self.table.touch(i);
        }
        if state == TcpState::CloseWait {
            // Its CLOSE_WAIT began while events were lost: its age counts from now.
            self.table.get_mut(i).flags |= flag::AGE_ESTIMATE;
            self.enter_cw(i);
            self.fire_due(out);
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Feeds one transition; pushes the records it causes into `out`: leaks now due (this event
    /// is also a clock reading), then this socket's close record if it reached CLOSE. No
    /// allocation in the steady state beyond `out`'s own growth.
    pub fn on_transition(&mut self, t: &Transition, out: &mut Vec<Record>) {
        self.stats.transitions += 1;
        self.last_dwell_ns = t.dwell_ns;
        self.advance_clock(t.ts_ns);
        self.fire_due(out);
        match self.table.find(t.sk) {
            Some(i) => self.on_tracked(i, t, out),
            None => self.on_untracked(t, out),
        }
        // A socket that just entered CLOSE_WAIT with an old timestamp may already be due.
        self.fire_due(out);
    }

    /// [`Engine::on_transition`] with the owner the transition reveals (`revealed`, recorded
    /// for the socket before the step and, for a socket the step creates, after it); returns
    /// the socket's owner: as the engine knows it after the step, else as it knew it before
    /// (a socket that reached CLOSE), else `revealed`. Two table look-ups for what took five
    /// calls (owner, set, step, set, owner).
    pub fn on_transition_owned(
        &mut self,
        t: &Transition,
        revealed: Option<Owner>,
        out: &mut Vec<Record>,
    ) -> Option<Owner> {
        self.stats.transitions += 1;
        self.last_dwell_ns = t.dwell_ns;
        self.advance_clock(t.ts_ns);
        self.fire_due(out);
        let known = match self.table.find(t.sk) {
            Some(i) => {
                let e = self.table.get_mut(i);
                let known = e.owner;
                if revealed.is_some() {
                    e.owner = revealed;
                }
                self.on_tracked(i, t, out);
                known
            }
            None => {
                self.on_untracked(t, out);
                None
            }
        };
        self.fire_due(out);
        let after = self.table.find(t.sk).and_then(|i| {
            let e = self.table.get_mut(i);
            if revealed.is_some() {
                e.owner = revealed;
            }
            e.owner
        });
        after.or(known).or(revealed)
    }

    /// The time the last transition fed spent in its old state: the kernel's measure when the
    /// event carried one, else the difference of this socket's event times; `None` when the
    /// start of the old state was not seen (first sight of a socket, a gap in its events, a
    /// seeded state). For a self-transition (`X→X`), the time in `X` so far.
    pub fn last_dwell_ns(&self) -> Option<u64> {
        self.last_dwell_ns
    }

    /// Clock reading `now_ns` (kernel monotonic): emits a leak record for every socket whose
    /// CLOSE_WAIT age is now `>=` the threshold. One heap peek when nothing is due. A `now_ns`
    /// older than the engine clock changes nothing.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Record>) {
        self.advance_clock(now_ns);
        self.fire_due(out);
    }

    /// Seeds a socket that existed before tracing began. A CLOSE_WAIT seed already over the
    /// threshold at the engine clock (the latest tick or event) emits its leak here, with
    /// [`AgeSource::Estimate`]; otherwise it fires at a later tick or event. Call [`Engine::tick`]
    /// with the current time before seeding so the clock is set: a CLOSE_WAIT seed without an
    /// estimate made before any clock reading starts its age at the first one.
    ///
    /// A seed for an already tracked socket only fills in a missing owner (the traced state is
    /// fresher).
    pub fn seed(&mut self, s: &Seed, out: &mut Vec<Record>) {
        if matches!(
            s.state,
            TcpState::Close | TcpState::TimeWait | TcpState::NewSynRecv
        ) {
            self.stats.seed_ignored += 1;
            return;
        }
        if let Some(i) = self.table.find(s.id.sk) {
            let e = self.table.get_mut(i);
            if e.owner.is_none() {
                e.owner = s.owner;
            }
            self.stats.seed_ignored += 1;
            return;
        }
        self.make_room();
        let clocked = self.start_ns.is_some();
        let mut e = Entry::new(s.id.sk, s.state, role_of_state(s.state));
        e.owner = s.owner;
        e.path.push(s.state);
        e.flags |= flag::SEEDED | flag::SINCE_UNKNOWN;
        // The seeding time bounds which births are adopted as this socket's own.
        e.first_ns = if clocked { self.clock_ns } else { u64::MAX };
        e.since_ns = s.state_since_ns.unwrap_or(self.clock_ns);
        let cw = s.state == TcpState::CloseWait;
        if cw {
            e.flags |= flag::AGE_ESTIMATE;
        }
        let i = self.table.insert(e);
        self.table.set_id(i, &s.id);
        self.per_state[s.state.index()] += 1;
        self.stats.seeded += 1;
        if cw {
            if s.state_since_ns.is_none() && !clocked {
                // `cw_ticket` holds the position in `unclocked` (a slot freed and reused before
                // the first clock leaves a stale position behind, recognised by it).
                let e = self.table.get_mut(i);
                e.flags |= flag::CW_UNCLOCKED;
                e.cw_ticket = self.unclocked.len() as u32;
                self.unclocked.push(i);
            } else {
                self.enter_cw(i);
                self.fire_due(out);
            }
        }
    }

    /// Moves a tracked socket from key `from` to key `to` (a seed keyed by a stand-in such as
    /// the sock_diag cookie, matched to its kernel address at its first traced event). Everything
    /// about the socket is kept. Returns `false`, changing nothing, when `from` is not tracked or
    /// `to` already is.
    pub fn rekey(&mut self, from: u64, to: u64) -> bool {
        self.table.rekey(from, to)
    }

    /// Stops tracking a socket without emitting anything (e.g. a seed whose stand-in key will
    /// never be matched). Returns whether it was tracked.
    pub fn forget(&mut self, sk: u64) -> bool {
        match self.table.find(sk) {
            Some(i) => {
                self.remove_entry(i);
                true
            }
            None => false,
        }
    }

    /// Stops tracking every socket without emitting anything; counters and dwell histograms
    /// stay. For a replayed input that starts over (a second recording appended to the first):
    /// the sockets of the part before are not those of the part after. Returns how many were
    /// tracked.
    pub fn forget_all(&mut self) -> u64 {
        let all: Vec<u32> = self
            .table
            .iter_list(Which::Lru)
            .chain(self.table.iter_list(Which::Leaks))
            .collect();
        for &i in &all {
            self.remove_entry(i);
        }
        self.cw_heap.clear();
        self.cw_pending = 0;
        self.unclocked.clear();
        all.len() as u64
    }

    /// Records who owns a tracked socket; later records about it carry the owner. Ignored for
    /// untracked sockets.
    pub fn set_owner(&mut self, sk: u64, owner: Owner) {
        if let Some(i) = self.table.find(sk) {
            self.table.get_mut(i).owner = Some(owner);
        }
    }

    pub fn owner(&self, sk: u64) -> Option<Owner> {
        self.table.find(sk).and_then(|i| self.table.get(i).owner)
    }

    /// The identity and endpoints of a tracked socket.
    pub fn socket_id(&self, sk: u64) -> Option<SocketId> {
        self.table.find(sk).map(|i| self.table.id(i))
    }

    /// Current state of a tracked socket.
    pub fn state_of(&self, sk: u64) -> Option<TcpState> {
        self.table.find(sk).map(|i| self.table.get(i).state)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Tracked sockets in each state now, indexed by [`TcpState::index`]. O(1).
    pub fn sockets_per_state(&self) -> [u64; 12] {
        self.per_state
    }

    /// Sockets in CLOSE_WAIT now.
    pub fn close_wait_now(&self) -> u64 {
        self.per_state[TcpState::CloseWait.index()]
    }

    /// Sockets for which a leak record was emitted and that are still in CLOSE_WAIT.
    pub fn leaking_now(&self) -> u64 {
        self.table.leaks.len as u64
    }

    /// The engine clock: the latest event or tick time seen (0 before any).
    pub fn clock_ns(&self) -> u64 {
        self.clock_ns
    }

    /// When the next leak is due (kernel monotonic ns), if any socket is waiting in
    /// CLOSE_WAIT. Lets a replayer tick exactly at due times.
    pub fn next_leak_due_ns(&self) -> Option<u64> {
        self.cw_heap.peek().map(|Reverse(it)| it.due_ns)
    }

    /// CLOSE_WAIT sockets per owner: count, how many are over the threshold at `now_ns` (or
    /// already reported leaking), oldest age. Sorted by owner (unknown first).
    /// O(CLOSE_WAIT sockets), not O(table).
    pub fn close_wait_by_owner(&self, now_ns: u64) -> Vec<OwnerCloseWait> {
        let thr = self.cfg.close_wait_threshold_ns;
        let mut by: HashMap<Option<OwnerKey>, OwnerCloseWait> = HashMap::new();
        self.for_each_close_wait(|e| {
            let key = e.owner.map(OwnerKey::from);
            let age = if e.has(flag::CW_UNCLOCKED) {
                0
            } else {
                now_ns.saturating_sub(e.since_ns)
            };
            let o = by.entry(key).or_insert(OwnerCloseWait {
                owner: key,
                close_wait: 0,
                leaking: 0,
                oldest_age_ns: 0,
                not_accepted: 0,
            });
            o.close_wait += 1;
            if e.has(flag::NOT_ACCEPTED) {
                o.not_accepted += 1;
            }
            // A socket whose owner is still sending (deferred, or being checked) is not leaking.
            if e.has(flag::LEAKING)
                || (e.flags & (flag::CW_UNCLOCKED | flag::CW_DEFERRED | flag::CW_CHECKING) == 0
                    && age >= thr)
            {
                o.leaking += 1;
            }
            o.oldest_age_ns = o.oldest_age_ns.max(age);
        });
        let mut v: Vec<_> = by.into_values().collect();
        v.sort_by_key(|o| o.owner);
        v
    }

    /// Age at `now_ns` of the oldest socket in CLOSE_WAIT. O(leaking sockets).
    pub fn oldest_close_wait_ns(&self, now_ns: u64) -> Option<u64> {
        let mut oldest: Option<u64> = None;
        self.for_each_close_wait(|e| {
            let since = if e.has(flag::CW_UNCLOCKED) {
                now_ns
            } else {
                e.since_ns
            };
            oldest = Some(oldest.map_or(since, |o| o.min(since)));
        });
        oldest.map(|s| now_ns.saturating_sub(s))
    }

    /// Dwell histogram of `st`: one sample each time a socket leaves `st` with a known dwell
    /// (kernel-measured, else the difference of event times).
    pub fn dwell_histogram(&self, st: TcpState) -> &Histogram {
        &self.dwell_hist[st.index()]
    }

    /// Idle time before close ([`CloseRecord::idle`]'s `rx_ns`) of the closes of kind `k`,
    /// over [`histogram::IDLE_BOUNDS_NS`].
    pub fn idle_histogram(&self, k: CloseKind) -> &Histogram {
        &self.idle_hist[k as usize]
    }

    /// Tracked sockets owned by `pid` now. O(tracked sockets): for rare questions (the end of
    /// `--pid`'s process), never per event.
    pub fn sockets_owned_by(&self, pid: u32) -> usize {
        [Which::Lru, Which::Leaks]
            .into_iter()
            .flat_map(|w| self.table.iter_list(w))
            .filter(|&i| self.table.get(i).owner.is_some_and(|o| o.pid == pid))
            .count()
    }

    /// Every tracked socket in CLOSE_WAIT, with when it entered CLOSE_WAIT (engine clock), into
    /// `out` (cleared first): what a reconciliation compares with the kernel's CLOSE_WAIT
    /// sockets.
    pub fn close_wait_ids(&self, out: &mut Vec<(SocketId, u64)>) {
        out.clear();
        let v6 = &self.table.v6;
        self.for_each_close_wait(|e| out.push((e.id(v6), e.since_ns)));
    }

    /// CLOSE_WAIT sockets whose holder has not been confirmed during this stay and that
    /// entered CLOSE_WAIT at or before `entered_by_ns` (engine clock), at most `max`, into
    /// `out` (cleared first): what the holder confirmation looks up. A socket still in its
    /// listener's accept queue stays due until it is accepted. Most CLOSE_WAIT stays last
    /// microseconds and end before they are ever due.
    pub fn holders_due(&self, entered_by_ns: u64, max: usize, out: &mut Vec<SocketId>) {
        out.clear();
        let v6 = &self.table.v6;
        self.for_each_close_wait(|e| {
            if out.len() < max
                && !e.has(flag::HOLDER_CHECKED)
                && !e.has(flag::CW_UNCLOCKED)
                && e.since_ns <= entered_by_ns
            {
                out.push(e.id(v6));
            }
        });
    }

    /// Makes every CLOSE_WAIT socket's holder due for confirmation again (a socket can be
    /// handed to another process after its holder was confirmed). O(CLOSE_WAIT sockets).
    pub fn recheck_holders(&mut self) {
        let mut idx = Vec::with_capacity(self.close_wait_now() as usize);
        self.for_each_close_wait_idx(|i| idx.push(i));
        for i in idx {
            self.table.get_mut(i).flags &= !flag::HOLDER_CHECKED;
        }
    }

    /// The holder confirmation's answer for CLOSE_WAIT socket `sk`: the process whose fd table
    /// holds it (`Some`, replacing what the trace guessed), or, with `accepted == false`, none
    /// because it is still in its listener's accept queue (the owner is then cleared: nobody
    /// holds it). Only an accepted socket's answer is final for this CLOSE_WAIT stay.
    pub fn set_holder(&mut self, sk: u64, owner: Option<Owner>, accepted: bool) {
        let Some(i) = self.table.find(sk) else {
            return;
        };
        let e = self.table.get_mut(i);
        if e.state != TcpState::CloseWait {
            return;
        }
        if accepted {
            e.flags &= !flag::NOT_ACCEPTED;
            e.flags |= flag::HOLDER_CHECKED;
            if owner.is_some() {
                e.owner = owner;
            }
        } else {
            e.flags |= flag::NOT_ACCEPTED;
            e.owner = None;
        }
    }

    /// Whether CLOSE_WAIT socket `sk` was, at the last holder confirmation, still in its
    /// listener's accept queue.
    pub fn not_accepted(&self, sk: u64) -> bool {
        self.table
            .find(sk)
            .is_some_and(|i| self.table.get(i).has(flag::NOT_ACCEPTED))
    }

    /// When tracked socket `sk` entered CLOSE_WAIT (engine clock), if it is in CLOSE_WAIT.
    pub fn close_wait_since(&self, sk: u64) -> Option<u64> {
        let e = self.table.get(self.table.find(sk)?);
        (e.state == TcpState::CloseWait).then_some(e.since_ns)
    }

    /// The tracked socket with these endpoints in namespace `netns`, and its state: a scan of
    /// the whole table, for reconciliation only (when the kernel has a socket the engine does
    /// not hold where it expected it).
    pub fn find_by_endpoints(&self, netns: u32, id: &SocketId) -> Option<(u64, TcpState)> {
        [Which::Lru, Which::Leaks]
            .into_iter()
            .flat_map(|w| self.table.iter_list(w))
            .map(|i| self.table.get(i))
            .find(|e| {
                let o = e.id(&self.table.v6);
                o.netns == netns
                    && o.sport == id.sport
                    && o.dport == id.dport
                    && o.saddr == id.saddr
                    && o.daddr == id.daddr
            })
            .map(|e| (e.sk, e.state))
    }

    /// Sockets tracked now (never more than the capacity).
    pub fn tracked(&self) -> usize {
        self.table.len()
    }

    /// Size of one table entry (bytes).
    pub fn entry_size() -> usize {
        size_of::<Entry>()
    }

    /// Bytes the socket table holds (slab and index, allocated capacity).
    pub fn heap_bytes(&self) -> usize {
        self.table.heap_bytes()
    }

    /// Bytes per tracked socket now: allocated slab + hash index + CLOSE_WAIT heap, divided by
    /// the sockets tracked (allocated capacity counts, so this includes growth slack).
    pub fn approx_bytes_per_socket(&self) -> usize {
        let bytes = self.table.heap_bytes()
            + self.cw_heap.capacity() * size_of::<Reverse<CwItem>>()
            + self.unclocked.capacity() * size_of::<u32>();
        bytes / self.tracked().max(1)
    }

    /// Bytes per socket of a full table of `capacity` sockets with none in CLOSE_WAIT: entry
    /// plus the hash index at its bucket count (power of two ≥ capacity·8/7, a 4-byte slot
    /// number + 1 control byte each). A socket in CLOSE_WAIT adds a 16-byte heap item (32 worst case with
    /// stale items before compaction).
    pub fn bytes_per_socket_at(capacity: usize) -> usize {
        let capacity = capacity.max(1);
        let buckets = (capacity * 8 / 7).max(1).next_power_of_two();
        let index = buckets * (size_of::<u32>() + 1);
        size_of::<Entry>() + index.div_ceil(capacity)
    }

    // ---- internals -------------------------------------------------------------------------

    fn advance_clock(&mut self, ts: u64) {
        if self.start_ns.is_none() {
            self.start_ns = Some(ts);
            self.clock_ns = ts;
            self.clock_unclocked();
        } else if ts > self.clock_ns {
            self.clock_ns = ts;
        }
    }

    /// First clock reading: CLOSE_WAIT seeds without an estimate start their age now.
    fn clock_unclocked(&mut self) {
        let pending = std::mem::take(&mut self.unclocked);
        for (k, &i) in pending.iter().enumerate() {
            let e = self.table.get_mut(i);
            if e.flags & (flag::FREE | flag::CW_UNCLOCKED) == flag::CW_UNCLOCKED
                && e.cw_ticket as usize == k
                && e.state == TcpState::CloseWait
            {
                e.flags &= !flag::CW_UNCLOCKED;
                e.since_ns = self.clock_ns;
                self.enter_cw(i);
            }
        }
        self.unclocked = pending;
        self.unclocked.clear();
    }

    fn on_untracked(&mut self, t: &Transition, out: &mut Vec<Record>) {
        if t.old == t.new {
            self.stats.ignored += 1;
            return;
        }
        let birth = is_birth(t.old, t.new);
        if !birth {
            self.stats.first_seen_midlife += 1;
        }
        let role = role_of_first(t.old, t.new);
        let thr = self.cfg.close_wait_threshold_ns;
        if t.new == TcpState::Close {
            // First seen by its closing transition: emit at once, track nothing.
            let mut e = Entry::new(t.sk, t.old, role);
            e.first_ns = t.ts_ns;
            e.path.push(t.old);
            if let Some(d) = t.dwell_ns {
                note_dwell(&mut e, &mut self.dwell_hist, t.old, d);
            }
            if t.old == TcpState::CloseWait && t.dwell_ns.is_some_and(|d| d >= thr) {
                e.flags |= flag::LEAKED;
                self.push_kernel_leak(id_of(t), e.owner, t, out);
            }
            Self::emit_close(&mut self.stats, &mut self.idle_hist, &e, id_of(t), t, out);
            return;
        }
        self.make_room();
        let mut e = Entry::new(t.sk, t.new, role);
        e.first_ns = t.ts_ns;
        e.since_ns = t.ts_ns;
        // A birth's old state (CLOSE, or the listener's LISTEN for a child) is not a state
        // this socket was in: its path starts at the new state.
        if !birth {
            e.path.push(t.old);
        }
        e.path.push(t.new);
        if birth {
            e.flags |= flag::BORN_TRACED;
        } else if let Some(d) = t.dwell_ns {
            note_dwell(&mut e, &mut self.dwell_hist, t.old, d);
            if t.old == TcpState::CloseWait && d >= thr {
                e.flags |= flag::LEAKED;
                self.push_kernel_leak(id_of(t), e.owner, t, out);
            }
        }
        let i = self.table.insert(e);
        self.table.set_endpoints(i, t);
        self.per_state[t.new.index()] += 1;
        if t.new == TcpState::CloseWait {
            self.enter_cw(i);
        }
    }

    fn on_tracked(&mut self, i: u32, t: &Transition, out: &mut Vec<Record>) {
        if t.old == t.new {
            self.stats.ignored += 1;
            let e = self.table.get_mut(i);
            if self.last_dwell_ns.is_none() && !e.has(flag::SINCE_UNKNOWN) && e.state == t.old {
                self.last_dwell_ns = Some(t.ts_ns.saturating_sub(e.since_ns));
            }
            let leaking = e.has(flag::LEAKING);
            self.table.set_endpoints(i, t);
            if !leaking {
                self.table.touch(i);
            }
            return;
        }
        let e = self.table.get(i);
        if is_birth(t.old, t.new) {
            let adopt = !e.has(flag::BORN_TRACED)
                && e.path.iter().next() == Some(t.new)
                && if e.has(flag::SEEDED) {
                    e.path.len() == 1 && t.ts_ns <= e.first_ns
                } else {
                    t.ts_ns <= e.first_ns
                };
            if adopt {
                self.adopt_birth(i, t);
            } else if e.has(flag::SINCE_UNKNOWN) || t.ts_ns >= e.since_ns {
                self.stats.recycled += 1;
                self.remove_entry(i);
                self.on_untracked(t, out);
            } else {
                self.stats.stale_dropped += 1;
            }
            return;
        }
        if !e.has(flag::SINCE_UNKNOWN) && t.ts_ns < e.since_ns {
            if !e.has(flag::SEEDED) && t.ts_ns < e.first_ns {
                self.stats.stale_dropped += 1;
            } else {
                self.stats.out_of_order += 1;
            }
            return;
        }

        let thr = self.cfg.close_wait_threshold_ns;
        let cur = e.state;
        if t.old != cur {
            self.stats.gaps += 1;
            let e = self.table.get_mut(i);
            // The tracked state's end was not seen: its dwell stays unknown.
            if e.path.last() != Some(t.old) {
                e.path.push(t.old);
            }
            if let Some(d) = t.dwell_ns {
                note_dwell(e, &mut self.dwell_hist, t.old, d);
                if t.old == TcpState::CloseWait && d >= thr && !e.has(flag::LEAKED) {
                    e.flags |= flag::LEAKED;
                    let owner = e.owner;
                    let id = self.table.id(i);
                    self.push_kernel_leak(id, owner, t, out);
                }
            }
        } else {
            let e = self.table.get_mut(i);
            let d = t.dwell_ns.or(if e.has(flag::SINCE_UNKNOWN) {
                None
            } else {
                Some(t.ts_ns.saturating_sub(e.since_ns))
            });
            if let Some(d) = d {
                note_dwell(e, &mut self.dwell_hist, cur, d);
            }
            self.last_dwell_ns = d;
        }
        if cur == TcpState::CloseWait {
            self.exit_cw(i);
        }
        self.per_state[cur.index()] -= 1;
        if t.new == TcpState::Close {
            self.table.set_endpoints(i, t);
            let id = self.table.id(i);
            Self::emit_close(
                &mut self.stats,
                &mut self.idle_hist,
                self.table.get(i),
                id,
                t,
                out,
            );
            self.table.remove(i, Which::Lru);
            return;
        }
        self.per_state[t.new.index()] += 1;
        let e = self.table.get_mut(i);
        e.state = t.new;
        e.since_ns = t.ts_ns;
        e.flags &= !flag::SINCE_UNKNOWN;
        e.path.push(t.new);
        self.table.set_endpoints(i, t);
        self.table.touch(i);
        if t.new == TcpState::CloseWait {
            self.enter_cw(i);
        }
    }

    /// A birth seen after the socket's first seen transition (or after its seed) that matches
    /// its first seen state: the start of the same life.
    fn adopt_birth(&mut self, i: u32, t: &Transition) {
        self.stats.late_births += 1;
        let e = self.table.get_mut(i);
        // The birth's old state (CLOSE or LISTEN) was never this socket's: the path already
        // starts at the birth's new state.
        let mut path = crate::record::StatePath::default();
        for s in e.path.iter() {
            path.push(s);
        }
        path.truncated = path.truncated.saturating_add(e.path.truncated);
        e.path = path;
        e.role = role_of_first(t.old, t.new);
        e.flags |= flag::BORN_TRACED;
        if e.has(flag::SEEDED) {
            // Seeded and nothing seen since: it is a traced socket after all.
            e.flags &= !flag::SEEDED;
            e.first_ns = t.ts_ns;
            // A CLOSE_WAIT entry keeps its leak clock (its heap item is keyed on it).
            if e.state != TcpState::CloseWait {
                e.since_ns = t.ts_ns;
                e.flags &= !flag::SINCE_UNKNOWN;
            }
        } else {
            // First seen mid-life: `t.new` was entered at `t.ts_ns` and left at `first_ns`.
            if !e.has_dwell(t.new) {
                let d = e.first_ns.saturating_sub(t.ts_ns);
                note_dwell(e, &mut self.dwell_hist, t.new, d);
            }
            e.first_ns = t.ts_ns;
            self.stats.first_seen_midlife = self.stats.first_seen_midlife.saturating_sub(1);
        }
        if !self.table.get(i).has(flag::LEAKING) {
            self.table.touch(i);
        }
    }

    /// A socket left CLOSE_WAIT ≥ threshold after entering it, by the kernel's own dwell, but
    /// the engine had not tracked its entry (first seen, or gap): report the leak now.
    fn push_kernel_leak(
        &mut self,
        id: SocketId,
        owner: Option<Owner>,
        t: &Transition,
        out: &mut Vec<Record>,
    ) {
        self.stats.leaks += 1;
        out.push(Record::Leak(LeakRecord {
            ts_ns: t.ts_ns,
            id,
            age_ns: t.dwell_ns.unwrap_or(0),
            age_source: AgeSource::Traced,
            owner,
            idle_ns: None,
            accepted: None,
        }));
    }

    fn emit_close(
        stats: &mut Stats,
        idle_hist: &mut [Histogram; 9],
        e: &Entry,
        id: SocketId,
        t: &Transition,
        out: &mut Vec<Record>,
    ) {
        let mut states = e.path;
        states.push(TcpState::Close);
        let sk_err = t.sk_err_known();
        let classify::Verdict {
            kind,
            reset_by,
            time_wait,
        } = classify::verdict(&states, t.old, sk_err);
        let lifetime_ns = (!e.has(flag::SEEDED)).then(|| t.ts_ns.saturating_sub(e.first_ns));
        let idle = idle_at_close(kind, t.idle, lifetime_ns);
        if let Some(ns) = idle.rx_ns {
            idle_hist[kind as usize].record(ns);
        }
        let rec = CloseRecord {
            ts_ns: t.ts_ns,
            id,
            role: e.role,
            kind,
            states,
            dwell_ns: e.dwell_record(),
            lifetime_ns,
            time_wait,
            reset_by,
            sk_err,
            leaked: e.has(flag::LEAKED),
            owner: e.owner,
            closed_unseen: false,
            idle,
            rst_reason: None,
        };
        let s = stats;
        s.closes += 1;
        s.closes_by_kind[kind as usize] += 1;
        s.closes_by_role[e.role as usize] += 1;
        if time_wait {
            s.closes_time_wait += 1;
        }
        out.push(Record::Close(rec));
    }

    /// Evicts one entry if the table is full.
    fn make_room(&mut self) {
        if self.table.len() < self.table.capacity() {
            return;
        }
        let victim = if self.table.lru.head != NIL {
            self.stats.evicted += 1;
            self.table.lru.head
        } else {
            self.stats.evicted_leaking += 1;
            self.table.leaks.head
        };
        if victim != NIL {
            self.remove_entry(victim);
        }
    }

    /// Drops a live entry without a record.
    fn remove_entry(&mut self, i: u32) {
        let st = self.table.get(i).state;
        if st == TcpState::CloseWait {
            self.exit_cw(i);
        }
        self.per_state[st.index()] -= 1;
        self.table.remove(i, Which::Lru);
    }

    fn enter_cw(&mut self, i: u32) {
        let e = self.table.get_mut(i);
        e.flags &= !(flag::HOLDER_CHECKED | flag::NOT_ACCEPTED);
        if e.has(flag::LEAKED) {
            // At most one leak per socket: back in CLOSE_WAIT after leaking (only on nonsense
            // streams) counts as leaking at once.
            e.flags |= flag::LEAKING;
            self.table.unlink(Which::Lru, i);
            self.table.link_newest(Which::Leaks, i);
            return;
        }
        let due = e.since_ns.saturating_add(self.cfg.close_wait_threshold_ns);
        self.push_cw(i, due);
    }

    /// Puts a CLOSE_WAIT entry (back) in the pending heap, due at `due_ns`.
    fn push_cw(&mut self, i: u32, due_ns: u64) {
        let ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        let e = self.table.get_mut(i);
        e.cw_ticket = ticket;
        e.flags |= flag::CW_PENDING;
        let entered_ns = e.since_ns;
        self.cw_heap.push(Reverse(CwItem {
            due_ns,
            entered_ns,
            ticket,
            idx: i,
        }));
        self.cw_pending += 1;
    }

    /// Leaves CLOSE_WAIT (state change or removal): out of the heap or the leak list, back on
    /// the LRU list.
    fn exit_cw(&mut self, i: u32) {
        let e = self.table.get_mut(i);
        let f = e.flags;
        e.flags &= !(flag::CW_PENDING
            | flag::LEAKING
            | flag::CW_UNCLOCKED
            | flag::AGE_ESTIMATE
            | flag::CW_CHECKING
            | flag::CW_DEFERRED
            | flag::HOLDER_CHECKED
            | flag::NOT_ACCEPTED);
        if f & flag::CW_PENDING != 0 {
            self.cw_pending = self.cw_pending.saturating_sub(1);
            self.clean_heap_top();
            self.maybe_compact_heap();
        }
        if f & flag::LEAKING != 0 {
            self.table.unlink(Which::Leaks, i);
            self.table.link_newest(Which::Lru, i);
        }
    }

    fn item_valid(table: &Table, it: &CwItem) -> bool {
        let e = table.get(it.idx);
        e.flags & (flag::FREE | flag::CW_PENDING) == flag::CW_PENDING
            && e.cw_ticket == it.ticket
            && e.since_ns == it.entered_ns
    }

    fn clean_heap_top(&mut self) {
        while let Some(Reverse(top)) = self.cw_heap.peek() {
            if Self::item_valid(&self.table, top) {
                break;
            }
            self.cw_heap.pop();
        }
    }

    fn maybe_compact_heap(&mut self) {
        let stale = self.cw_heap.len().saturating_sub(self.cw_pending);
        if stale > 1024 && stale > self.cw_pending {
            let table = &self.table;
            self.cw_heap
                .retain(|Reverse(it)| Self::item_valid(table, it));
        }
    }

    fn fire_due(&mut self, out: &mut Vec<Record>) {
        while let Some(&Reverse(top)) = self.cw_heap.peek() {
            if top.due_ns > self.clock_ns {
                break;
            }
            self.cw_heap.pop();
            if Self::item_valid(&self.table, &top) {
                if self.confirm_leaks {
                    self.ask_check(top.idx);
                } else {
                    self.start_leak(top.idx, out);
                }
            }
            self.clean_heap_top();
        }
    }

    /// Takes a due entry off the heap and asks the caller about it.
    fn ask_check(&mut self, i: u32) {
        self.cw_pending = self.cw_pending.saturating_sub(1);
        let clock = self.clock_ns;
        let id = self.table.id(i);
        let e = self.table.get_mut(i);
        e.flags &= !flag::CW_PENDING;
        e.flags |= flag::CW_CHECKING;
        self.checks.push(LeakCheck {
            id,
            owner: e.owner,
            age_ns: clock.saturating_sub(e.since_ns),
            at_ns: clock,
            idx: i,
            ticket: e.cw_ticket,
        });
        self.stats.leak_checks += 1;
    }

    fn start_leak(&mut self, i: u32, out: &mut Vec<Record>) {
        self.cw_pending = self.cw_pending.saturating_sub(1);
        self.start_leak_now(i, None, out);
    }

    /// Reports entry `i` (off the heap) as leaking now.
    fn start_leak_now(&mut self, i: u32, idle_ns: Option<u64>, out: &mut Vec<Record>) {
        let id = self.table.id(i);
        let e = self.table.get_mut(i);
        e.flags &= !flag::CW_PENDING;
        e.flags |= flag::LEAKING | flag::LEAKED;
        let rec = LeakRecord {
            idle_ns,
            ts_ns: self.clock_ns,
            id,
            age_ns: self.clock_ns.saturating_sub(e.since_ns),
            age_source: if e.has(flag::AGE_ESTIMATE) {
                AgeSource::Estimate
            } else {
                AgeSource::Traced
            },
            owner: e.owner,
            accepted: e.accepted(),
        };
        self.table.unlink(Which::Lru, i);
        self.table.link_newest(Which::Leaks, i);
        self.stats.leaks += 1;
        out.push(Record::Leak(rec));
    }

    /// Calls `f` for every tracked socket in CLOSE_WAIT: pending (heap), leaking (list), and
    /// seeds waiting for a clock.
    fn for_each_close_wait(&self, mut f: impl FnMut(&Entry)) {
        self.for_each_close_wait_idx(|i| f(self.table.get(i)));
    }

    /// [`Engine::for_each_close_wait`], by table index.
    fn for_each_close_wait_idx(&self, mut f: impl FnMut(u32)) {
        for Reverse(it) in self.cw_heap.iter() {
            if Self::item_valid(&self.table, it) {
                f(it.idx);
            }
        }
        for i in self.table.iter_list(Which::Leaks) {
            f(i);
        }
        for (k, &i) in self.unclocked.iter().enumerate() {
            let e = self.table.get(i);
            if e.flags & (flag::FREE | flag::CW_UNCLOCKED) == flag::CW_UNCLOCKED
                && e.cw_ticket as usize == k
            {
                f(i);
            }
        }
        for c in &self.checks {
            let e = self.table.get(c.idx);
            if e.flags & (flag::FREE | flag::CW_CHECKING) == flag::CW_CHECKING
                && e.cw_ticket == c.ticket
            {
                f(c.idx);
            }
        }
    }
}

#[cfg(test)]
impl Engine {
    /// Checks the internal invariants (tests only).
    pub(crate) fn check_internal(&self) {
        let valid = self
            .cw_heap
            .iter()
            .filter(|Reverse(it)| Self::item_valid(&self.table, it))
            .count();
        assert_eq!(valid, self.cw_pending, "pending count");
        if let Some(Reverse(top)) = self.cw_heap.peek() {
            assert!(Self::item_valid(&self.table, top), "heap top valid");
        }
        assert_eq!(
            self.table.lru.len + self.table.leaks.len,
            self.tracked(),
            "every entry on one list"
        );
        assert_eq!(self.table.iter_list(Which::Lru).count(), self.table.lru.len);
        assert_eq!(
            self.table.iter_list(Which::Leaks).count(),
            self.table.leaks.len
        );
        let mut per = [0u64; 12];
        for i in self.table.iter_list(Which::Lru) {
            let e = self.table.get(i);
            assert!(!e.has(flag::LEAKING) && !e.has(flag::FREE));
            assert_eq!(self.table.find(e.sk), Some(i));
            per[e.state.index()] += 1;
        }
        for i in self.table.iter_list(Which::Leaks) {
            let e = self.table.get(i);
            assert!(e.has(flag::LEAKING) && e.state == TcpState::CloseWait);
            assert!(!e.has(flag::CW_PENDING));
            per[e.state.index()] += 1;
        }
        assert_eq!(per, self.per_state, "per-state counts");
        let mut cw = 0;
        self.for_each_close_wait(|e| {
            assert_eq!(e.state, TcpState::CloseWait);
            cw += 1;
        });
        assert_eq!(
            cw,
            self.close_wait_now(),
            "every CLOSE_WAIT socket indexed once"
        );
    }
}

/// A transition's socket identity and endpoints.
fn id_of(t: &Transition) -> SocketId {
    SocketId {
        sk: t.sk,
        netns: t.netns,
        family: t.family,
        saddr: t.saddr,
        sport: t.sport,
        daddr: t.daddr,
        dport: t.dport,
    }
}

/// The stamps count whole ticks (10 ms at the slowest rate, 100 Hz): an idle time may pass
/// the connection's traced life by this much.
const IDLE_TICK_SLACK_NS: u64 = 10_000_000;

/// The idle times a close record reports: none for a connection that never got established
/// (a failed connect, a listener: the kernel's stamps are then from no segment at all); one
/// longer than the connection's traced life by more than a tick is not one (a stamp never set),
/// and one longer by less is the life itself (tick rounding).
fn idle_at_close(kind: CloseKind, idle: Idle, lifetime_ns: Option<u64>) -> Idle {
    if matches!(kind, CloseKind::ConnectFailed | CloseKind::Listener) {
        return Idle::NONE;
    }
    let fits = |ns: Option<u64>| {
        ns.and_then(|v| match lifetime_ns {
            None => Some(v),
            Some(l) if v <= l => Some(v),
            Some(l) if v <= l + IDLE_TICK_SLACK_NS => Some(l),
            Some(_) => None,
        })
    };
    Idle {
        rx_ns: fits(idle.rx_ns),
        tx_ns: fits(idle.tx_ns),
    }
}

/// Adds a dwell sample for `st` to the entry and the histogram. CLOSE (before a birth) has no
/// meaningful dwell and is skipped.
fn note_dwell(e: &mut Entry, hist: &mut [Histogram; 12], st: TcpState, ns: u64) {
    if st == TcpState::Close {
        return;
    }
    e.add_dwell(st, ns);
    hist[st.index()].record(ns);
}
