//! Reconciliation: the engine's CLOSE_WAIT sockets checked against the kernel's, after events
//! were lost and periodically at a low rate. Periodic (called on the drain tick, after the
//! drain); does nothing between its runs.
//!
//! A run has two phases, one drain apart, so that an event still in a ring buffer at the
//! moment of the dump is never taken for a lost one:
//! 1. **Dump.** One sock_diag dump filtered to CLOSE_WAIT per network namespace (the kernel
//!    filters by state: it copies out only those sockets), compared with the engine's
//!    CLOSE_WAIT set. What differs becomes a suspect: a socket the engine holds in CLOSE_WAIT
//!    that the kernel does not, or one the kernel has in CLOSE_WAIT that the engine does not.
//! 2. **Confirm**, at the next drain tick, after the events up to it have been fed: each suspect
//!    that the engine still holds as it did is looked up alone, in its own namespace. The
//!    kernel's answer is taken: a socket it no longer has leaves the engine as a close of kind
//!    `unknown` with `closed_unseen`; one it has in another state takes that state; one the
//!    engine lacks is seeded as the startup baseline seeds (its age an estimate).
//!
//! Cost: a filtered dump per namespace (the kernel still walks its socket hash, but copies
//! only CLOSE_WAIT sockets), two hash sets of the CLOSE_WAIT sockets, and one lookup per
//! suspect — none when nothing was lost. Rate: after a loss at most once per
//! [`ReconcileConfig::after_loss`], and never sooner than [`DUTY`] times what the last run took;
//! else once per [`ReconcileConfig::every`].

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::Pipeline;
pub use crate::engine::ReconcileSummary as ReconcileStats;
use crate::event::TcpState;
use crate::record::SocketId;
use crate::sockdiag::{FourTuple, StateMask};

/// A reconciliation takes at most this share of the reader's time: the next one waits at
/// least this many times as long as the last took (as the TIME_WAIT re-sync does).
const DUTY: u32 = 20;

/// How often reconciliation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// A periodic run, to catch what no loss counter reports. `None` turns it off.
    pub every: Option<Duration>,
    /// After events were lost: a run at most this often while the losses go on, and one this
    /// long after the last.
    pub after_loss: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            every: Some(Duration::from_secs(60)),
            after_loss: Duration::from_secs(1),
        }
    }
}

/// A difference found by a dump, confirmed (or not) at the next drain tick.
#[derive(Clone, Copy, Debug)]
enum Suspect {
    /// The engine holds `id` in CLOSE_WAIT since `since_ns`; the dump did not have it.
    Missing { id: SocketId, since_ns: u64 },
    /// The dump had this CLOSE_WAIT socket (namespace, endpoints); the engine did not.
    Extra { netns: u32, tuple: FourTuple },
}

/// Reconciliation's state, kept by the path.
#[derive(Debug, Default)]
pub(super) struct Reconciler {
    cfg: ReconcileConfig,
    stats: ReconcileStats,
    last_run: Option<Instant>,
    /// The lost-event total at the last run.
    lost_at_last_run: u64,
    /// Events were lost since the last run, first seen then.
    loss_seen: Option<Instant>,
    suspects: Vec<Suspect>,
    /// A dump was made and its suspects wait for their confirmation at the next drain tick.
    dumped: bool,
    /// Phase 1 and 2 times of the run in progress (µs).
    run_us: u64,
    /// Scratch, reused: the engine's CLOSE_WAIT sockets.
    engine_cw: Vec<(SocketId, u64)>,
}

impl Reconciler {
    pub(super) fn set_config(&mut self, cfg: ReconcileConfig) {
        self.cfg = cfg;
    }

    pub(super) fn stats(&self) -> ReconcileStats {
        self.stats
    }

    /// Whether a run should start now, given the lost-event total (`lost`) as of this tick.
    fn due(&mut self, lost: u64, now: Instant) -> bool {
        if lost > self.lost_at_last_run && self.loss_seen.is_none() {
            self.loss_seen = Some(now);
        }
        let since_last = self.last_run.map(|t| now.duration_since(t));
        // Never more than 1/DUTY of the reader's time, however large the tables.
        let min_gap = Duration::from_micros(self.run_us.saturating_mul(u64::from(DUTY)));
        if self.loss_seen.is_some() {
            return since_last.is_none_or(|d| d >= self.cfg.after_loss.max(min_gap));
        }
        match (self.cfg.every, since_last) {
            (Some(every), Some(d)) => d >= every.max(min_gap),
            // The first periodic run is one period after start (the baseline has just read
            // everything).
            (Some(_), None) => {
                self.last_run = Some(now);
                false
            }
            (None, _) => false,
        }
    }
}

fn key(netns: u32, t: FourTuple) -> (u32, FourTuple) {
    (netns, t.normalized())
}

impl Pipeline {
    /// Sets how often reconciliation runs (before the first drain).
    pub fn set_reconcile_config(&mut self, cfg: ReconcileConfig) {
        self.reconcile.set_config(cfg);
    }

    /// What reconciliation has done.
    pub fn reconcile_stats(&self) -> ReconcileStats {
        self.reconcile.stats()
    }

    /// The drain tick's reconciliation step (call after the drain, with the lost-event total
    /// as of now): confirms the last dump's suspects, or dumps when a run is due. Records it
    /// produces (closes of sockets gone unseen, leaks of seeded sockets) go out at the next
    /// [`Pipeline::tick`]. Live only; rate-limited inside.
    pub fn reconcile(&mut self, lost: u64) {
        if self.live.is_none() {
            return;
        }
        let now = Instant::now();
        if self.reconcile.dumped {
            self.confirm_suspects(now);
            return;
        }
        if !self.reconcile.due(lost, now) {
            return;
        }
        let r = &mut self.reconcile;
        if r.loss_seen.take().is_some() {
            r.stats.after_loss += 1;
        }
        r.lost_at_last_run = lost;
        r.last_run = Some(now);
        self.dump_and_compare(now);
        self.reconcile.run_us = now.elapsed().as_micros() as u64;
        self.reconcile.dumped = true;
    }

    /// Phase 1: the kernel's CLOSE_WAIT sockets against the engine's.
    fn dump_and_compare(&mut self, now: Instant) {
        let mut engine_cw = std::mem::take(&mut self.reconcile.engine_cw);
        self.engine.close_wait_ids(&mut engine_cw);
        let own = self.own_netns;
        let ns_of = |netns: u32| if netns == 0 { own } else { netns };
        let mut kernel: HashSet<(u32, FourTuple)> = HashSet::new();
        let mut asked: HashSet<u32> = HashSet::new();
        let Some(live) = self.live.as_mut() else {
            return;
        };
        // Every namespace the engine has CLOSE_WAIT sockets in, and (not with --pid, which
        // seeds nothing host-wide) every namespace there is.
        let mut namespaces: Vec<u32> = engine_cw.iter().map(|(id, _)| ns_of(id.netns)).collect();
        if self.pid.is_none() {
            namespaces.extend(live.namespaces.discover(now));
        }
        namespaces.sort_unstable();
        namespaces.dedup();
        for ns in namespaces {
            let Some(diag) = live.namespaces.diag(ns, now) else {
                self.reconcile.stats.unreachable += 1;
                continue;
            };
            match diag.dump(StateMask::only(TcpState::CloseWait)) {
                Ok(v) => {
                    asked.insert(ns);
                    kernel.extend(v.iter().map(|s| key(ns, s.tuple())));
                }
                Err(e) => {
                    tracing::debug!("reconcile: network namespace {ns}: {e}");
                    self.reconcile.stats.unreachable += 1;
                }
            }
        }
        let mut engine_keys: HashSet<(u32, FourTuple)> = HashSet::with_capacity(engine_cw.len());
        let r = &mut self.reconcile;
        for &(id, since_ns) in &engine_cw {
            let ns = ns_of(id.netns);
            let k = key(ns, FourTuple::from(&id));
            engine_keys.insert(k);
            // A namespace that could not be asked is never answered by its absence; one that
            // can no longer be found is looked at again at the confirmation.
            if !asked.contains(&ns) || !kernel.contains(&k) {
                r.suspects.push(Suspect::Missing { id, since_ns });
            }
        }
        if self.pid.is_none() {
            for &(netns, tuple) in &kernel {
                if !engine_keys.contains(&(netns, tuple)) {
                    r.suspects.push(Suspect::Extra { netns, tuple });
                }
            }
        }
        r.stats.suspects += r.suspects.len() as u64;
        engine_cw.clear();
        r.engine_cw = engine_cw;
    }

    /// Phase 2: each suspect still as it was is looked up alone, and the kernel's answer taken.
    fn confirm_suspects(&mut self, now: Instant) {
        let started = Instant::now();
        let suspects = std::mem::take(&mut self.reconcile.suspects);
        for s in &suspects {
            match *s {
                Suspect::Missing { id, since_ns } => self.confirm_missing(&id, since_ns, now),
                Suspect::Extra { netns, tuple } => self.confirm_extra(netns, &tuple, now),
            }
        }
        let r = &mut self.reconcile;
        r.suspects = suspects;
        r.suspects.clear();
        r.dumped = false;
        let us = r.run_us + started.elapsed().as_micros() as u64;
        r.stats.runs += 1;
        r.stats.total_us += us;
        r.stats.max_us = r.stats.max_us.max(us);
    }

    fn confirm_missing(&mut self, id: &SocketId, since_ns: u64, now: Instant) {
        // Changed since the dump (its events arrived): the trace has spoken.
        let still = self.engine.state_of(id.sk) == Some(TcpState::CloseWait)
            && self
                .engine
                .close_wait_since(id.sk)
                .is_some_and(|s| s == since_ns);
        if !still {
            return;
        }
        let owner = self.engine.owner(id.sk);
        let answer = if self.namespace_gone_for(self.ns(id.netns), owner, now) {
            None
        } else {
            let Some(answer) = self.ask_kernel(id.netns, &FourTuple::from(id), now) else {
                return;
            };
            answer
        };
        match answer {
            None => {
                self.engine.close_unseen(id.sk, &mut self.records);
                self.reconcile.stats.closed_unseen += 1;
            }
            Some(TcpState::CloseWait) => {}
            Some(state) => {
                self.engine.correct_state(id.sk, state, &mut self.records);
                self.reconcile.stats.state_corrected += 1;
            }
        }
    }

    fn confirm_extra(&mut self, netns: u32, tuple: &FourTuple, now: Instant) {
        let probe = SocketId {
            sk: 0,
            netns,
            family: tuple.family,
            saddr: tuple.saddr,
            sport: tuple.sport,
            daddr: tuple.daddr,
            dport: tuple.dport,
        };
        let held = self.engine.find_by_endpoints(netns, &probe).or_else(|| {
            (netns == self.own_netns)
                .then(|| self.engine.find_by_endpoints(0, &probe))
                .flatten()
        });
        if held.is_some_and(|(_, st)| st == TcpState::CloseWait) {
            return;
        }
        let Some(Some(found)) = self.ask_kernel_socket(netns, tuple, now) else {
            return;
        };
        if found.state != TcpState::CloseWait {
            return;
        }
        match held {
            Some((sk, _)) => {
                self.engine
                    .correct_state(sk, TcpState::CloseWait, &mut self.records);
                self.reconcile.stats.state_corrected += 1;
            }
            None => {
                self.seed_found(netns, &found, now);
                self.reconcile.stats.seeded += 1;
            }
        }
    }

    /// The kernel's state for these endpoints in `netns`: `Some(None)` when it has no such
    /// socket, `None` when it could not be asked.
    fn ask_kernel(
        &mut self,
        netns: u32,
        tuple: &FourTuple,
        now: Instant,
    ) -> Option<Option<TcpState>> {
        self.ask_kernel_socket(netns, tuple, now)
            .map(|found| found.map(|s| s.state))
    }

    fn ask_kernel_socket(
        &mut self,
        netns: u32,
        tuple: &FourTuple,
        now: Instant,
    ) -> Option<Option<crate::sockdiag::DiagSocket>> {
        let ns = self.ns(netns);
        let live = self.live.as_mut()?;
        let Some(diag) = live.namespaces.diag(ns, now) else {
            self.reconcile.stats.unreachable += 1;
            return None;
        };
        match diag.lookup(tuple) {
            Ok(found) => Some(found),
            Err(e) => {
                tracing::debug!("reconcile: lookup in network namespace {ns}: {e}");
                self.reconcile.stats.unreachable += 1;
                None
            }
        }
    }
}

impl Pipeline {
    /// Seeds one socket the kernel has and the engine does not, with its owner looked up
    /// through its inode, keyed by a stand-in until its first traced event (as the startup
    /// baseline does).
    fn seed_found(&mut self, netns: u32, s: &crate::sockdiag::DiagSocket, now: Instant) {
        let owner = self
            .live
            .as_mut()
            .and_then(|live| live.attributor.resolve_inode(s.inode, now));
        let now_ns = self.engine.clock_ns();
        self.seed_diag(netns, s, owner, now_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_after_a_loss_and_periodically_within_its_duty() {
        let mut r = Reconciler::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // No loss: the first periodic run is one period after start.
        assert!(!r.due(0, t0));
        assert!(!r.due(0, t0 + s(59)));
        assert!(r.due(0, t0 + s(60)));
        r.last_run = Some(t0 + s(60));
        // A loss: a run within a second of the last, then at once when the last is older.
        assert!(!r.due(5, t0 + s(60) + Duration::from_millis(500)));
        assert!(r.due(5, t0 + s(61)));
        r.loss_seen = None;
        r.lost_at_last_run = 5;
        r.last_run = Some(t0 + s(61));
        // Nothing new lost: back to the period.
        assert!(!r.due(5, t0 + s(62)));
        assert!(r.due(5, t0 + s(121)));
        // A run that took 200 ms keeps the next at least 4 s away, loss or not.
        r.last_run = Some(t0 + s(121));
        r.run_us = 200_000;
        assert!(!r.due(9, t0 + s(123)));
        assert!(r.due(9, t0 + s(125)));
        // Periodic runs off: only after losses.
        let mut off = Reconciler::default();
        off.set_config(ReconcileConfig {
            every: None,
            ..ReconcileConfig::default()
        });
        assert!(!off.due(0, t0 + s(3600)));
        assert!(off.due(1, t0 + s(3601)));
    }
}
